//! The SSRF guard: deliveries never reach loopback, link-local, private, metadata or otherwise
//! non-public addresses unless an allow-list (`HERALD_ALLOW_TARGETS`) exempts them. The check
//! runs on the addresses a name resolves to, right before connecting, so DNS cannot smuggle an
//! internal address past it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

#[derive(Debug, Clone, Default)]
pub struct TargetGuard {
    allow: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("target address {addr} is {class} and not in HERALD_ALLOW_TARGETS")]
pub struct Blocked {
    pub addr: IpAddr,
    pub class: &'static str,
}

impl TargetGuard {
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// Parses a comma-separated CIDR list (a bare address means that one address).
    pub fn parse_allow_list(s: &str) -> Result<Vec<IpNet>, String> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("invalid CIDR {p:?} in HERALD_ALLOW_TARGETS"))
            })
            .collect()
    }

    pub fn check(&self, addr: IpAddr) -> Result<(), Blocked> {
        let addr = canonical(addr);
        match classify(addr) {
            None => Ok(()),
            Some(_) if self.allow.iter().any(|net| net.contains(&addr)) => Ok(()),
            Some(class) => Err(Blocked { addr, class }),
        }
    }

    /// Keeps the resolved addresses that may be reached; an error when none may.
    pub fn filter(&self, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Blocked> {
        let mut first_err = None;
        let ok: Vec<_> = addrs
            .into_iter()
            .filter(|a| match self.check(a.ip()) {
                Ok(()) => true,
                Err(e) => {
                    first_err.get_or_insert(e);
                    false
                }
            })
            .collect();
        match (ok.is_empty(), first_err) {
            (true, Some(e)) => Err(e),
            _ => Ok(ok),
        }
    }
}

/// IPv4-mapped and -compatible IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Why an address is not public, or `None` when it is.
pub fn classify(addr: IpAddr) -> Option<&'static str> {
    match canonical(addr) {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => classify_v6(a),
    }
}

fn classify_v4(a: Ipv4Addr) -> Option<&'static str> {
    let o = a.octets();
    if a.is_loopback() {
        Some("loopback")
    } else if a.is_link_local() {
        // 169.254.0.0/16 holds the cloud metadata endpoint 169.254.169.254.
        Some("link-local")
    } else if a.is_private() {
        Some("private")
    } else if o[0] == 0 {
        Some("unspecified")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared address space (CGNAT)")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol assignment")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmarking")
    } else if a.is_documentation() {
        Some("documentation")
    } else if a.is_multicast() || o[0] >= 240 {
        Some("multicast or reserved")
    } else {
        None
    }
}

fn classify_v6(a: Ipv6Addr) -> Option<&'static str> {
    let s = a.segments();
    if a.is_loopback() {
        Some("loopback")
    } else if a.is_unspecified() {
        Some("unspecified")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        // Unique local addresses, fd00:ec2::254 (a metadata endpoint) among them.
        Some("unique local (private)")
    } else if (s[0] & 0xffc0) == 0xfec0 {
        Some("site-local")
    } else if a.is_multicast() {
        Some("multicast")
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        Some("documentation")
    } else if s[0] == 0x0064 && s[1] == 0xff9b {
        // NAT64 can reach any IPv4 address, private ones included.
        Some("NAT64")
    } else if s[0..6] == [0, 0, 0, 0, 0, 0] {
        Some("IPv4-compatible")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_non_public_addresses() {
        for (addr, class) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("100.64.0.1", "shared address space (CGNAT)"),
            ("224.0.0.1", "multicast or reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fd00:ec2::254", "unique local (private)"),
            ("fc00::1", "unique local (private)"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::a00:1", "NAT64"),
        ] {
            let g = TargetGuard::default();
            let err = g.check(ip(addr)).unwrap_err();
            assert_eq!(err.class, class, "{addr}");
        }
    }

    #[test]
    fn admits_public_addresses() {
        let g = TargetGuard::default();
        for addr in [
            "93.184.216.34",
            "1.1.1.1",
            "172.32.0.1",
            "2606:4700::1111",
            "8.8.8.8",
        ] {
            assert_eq!(g.check(ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn allow_list_exempts_ranges() {
        let allow = TargetGuard::parse_allow_list("127.0.0.0/8, ::1/128,10.9.9.9").unwrap();
        let g = TargetGuard::new(allow);
        assert!(g.check(ip("127.0.0.1")).is_ok());
        assert!(g.check(ip("::1")).is_ok());
        assert!(g.check(ip("::ffff:127.0.0.1")).is_ok());
        assert!(g.check(ip("10.9.9.9")).is_ok());
        assert!(g.check(ip("10.9.9.8")).is_err());
        assert!(g.check(ip("192.168.0.1")).is_err());
        assert!(TargetGuard::parse_allow_list("nonsense").is_err());
    }

    #[test]
    fn filter_drops_blocked_resolutions() {
        let g = TargetGuard::default();
        let sa = |s: &str| SocketAddr::new(ip(s), 443);
        // A name that resolves to a private address only is refused ...
        assert_eq!(g.filter(vec![sa("10.0.0.5")]).unwrap_err().class, "private");
        // ... and a mixed answer keeps only the public addresses.
        assert_eq!(
            g.filter(vec![sa("192.168.1.2"), sa("93.184.216.34")])
                .unwrap(),
            vec![sa("93.184.216.34")]
        );
    }
}

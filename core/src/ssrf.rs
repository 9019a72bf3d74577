//! The SSRF guard: deliveries never reach loopback, link-local, private, metadata or otherwise
//! non-public addresses unless an allow-list (`HERALD_ALLOW_TARGETS`) exempts them. The check
//! runs on the addresses a name resolves to, right before connecting, so DNS cannot smuggle an
//! internal address past it.
//!
//! IPv6 forms that carry an IPv4 address: IPv4-mapped (`::ffff:a.b.c.d`) is the IPv4 address
//! itself (that is how a dual-stack socket connects to it) and is judged as such, the allow list
//! included. The tunnelling and translation forms are refused as whole blocks, whatever they
//! embed: IPv4-compatible (`::/96`, deprecated), SIIT-translated (`::ffff:0:0:0/96`), 6to4
//! (`2002::/16`, deprecated by RFC 7526; a relay forwards to the embedded address, which could
//! be private, and no legitimate webhook receiver needs it), Teredo (`2001::/32`, which embeds
//! the server's and the client's IPv4 addresses) and NAT64 (`64:ff9b::/96` and the local-use
//! `64:ff9b:1::/48`, which reach any IPv4 address through the translator). An operator who
//! needs one of them lists its range in `HERALD_ALLOW_TARGETS`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use crate::target::TargetUrl;

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

    /// Judges a target whose host is a literal address: such a target never reaches the
    /// resolver, whose filter judges every name (see [`TargetGuard::filter`]). A name passes
    /// here.
    pub fn check_target(&self, target: &TargetUrl) -> Result<(), Blocked> {
        match target.literal_ip() {
            Some(ip) => self.check(ip),
            None => Ok(()),
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

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
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
    } else if (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] & 0xfff0) == 0x3ff0 {
        // 2001:db8::/32 and 3fff::/20 (RFC 9637).
        Some("documentation")
    } else if s[0] == 0x0064 && s[1] == 0xff9b && (s[2] == 0 || s[2] == 1) {
        // 64:ff9b::/96 (well-known) and 64:ff9b:1::/48 (local use): NAT64 reaches any IPv4
        // address, private ones included.
        Some("NAT64")
    } else if s[0] == 0x2002 {
        Some("6to4")
    } else if s[0] == 0x2001 && s[1] == 0 {
        Some("Teredo")
    } else if s[0..4] == [0x0100, 0, 0, 0] {
        Some("discard-only")
    } else if s[0..6] == [0, 0, 0, 0, 0, 0] {
        Some("IPv4-compatible")
    } else if s[0..6] == [0, 0, 0, 0, 0xffff, 0] {
        Some("IPv4-translated")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
            ("64:ff9b::808:808", "NAT64"),
            ("64:ff9b:1::a00:1", "NAT64"),
            ("2002:7f00:1::1", "6to4"),
            ("2002:808:808::1", "6to4"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
            ("::127.0.0.1", "IPv4-compatible"),
            ("::8.8.8.8", "IPv4-compatible"),
            ("::ffff:0:a00:1", "IPv4-translated"),
            ("100::1", "discard-only"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("192.0.0.8", "IETF protocol assignment"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("192.0.2.1", "documentation"),
            ("240.0.0.1", "multicast or reserved"),
            ("255.255.255.255", "multicast or reserved"),
            ("0.1.2.3", "unspecified"),
            ("100.127.255.255", "shared address space (CGNAT)"),
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
            "::ffff:8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "64:ff9b:2::1",
            "2001:1::1",
            "2003::1",
            "101::1",
            "::1:0:0:1",
            "fe7f::1",
            "fbff::1",
            "fe00::1",
            "3fef::1",
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

    /// Every IPv6 form that carries an IPv4 address.
    fn embeddings(v4: Ipv4Addr) -> Vec<Ipv6Addr> {
        let [a, b, c, d] = v4.octets();
        let hi = u16::from_be_bytes([a, b]);
        let lo = u16::from_be_bytes([c, d]);
        vec![
            v4.to_ipv6_mapped(),
            v4.to_ipv6_compatible(),
            Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, hi, lo),
            Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 1),
            Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo),
            Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, hi, lo),
            Ipv6Addr::new(0x2001, 0, 0x4136, 0xe378, 0x8000, 0x63bf, !hi, !lo),
        ]
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(n))),
            any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
            any::<u32>().prop_map(|n| IpAddr::V6(Ipv4Addr::from(n).to_ipv6_mapped())),
            // Near the special blocks, where random 128-bit numbers rarely land.
            (0usize..8, any::<u64>()).prop_map(|(i, low)| {
                let top: [u16; 8] = [0, 0x64, 0x2001, 0x2002, 0xfe80, 0xfc00, 0x100, 0xff00];
                let seg1: u16 = if i == 1 { 0xff9b } else { 0 };
                let hi = (u128::from(top[i]) << 112) | (u128::from(seg1) << 96);
                IpAddr::V6(Ipv6Addr::from(hi | u128::from(low)))
            }),
        ]
    }

    proptest! {
        /// A non-public IPv4 address is refused in every IPv6 form that carries it.
        #[test]
        fn embedded_private_ipv4_is_refused(i in 0usize..11, host: u32) {
            // Every non-public IPv4 block, with random host bits.
            const BLOCKS: [(u32, u32); 11] = [
                (0x7f00_0000, 8), (0x0a00_0000, 8), (0xac10_0000, 12), (0xc0a8_0000, 16),
                (0xa9fe_0000, 16), (0x0000_0000, 8), (0x6440_0000, 10), (0xc000_0000, 24),
                (0xc612_0000, 15), (0xe000_0000, 4), (0xf000_0000, 4),
            ];
            let (base, len) = BLOCKS[i];
            let v4 = Ipv4Addr::from(base | (host & (u32::MAX >> len)));
            prop_assert!(classify_v4(v4).is_some(), "{}", v4);
            let g = TargetGuard::default();
            prop_assert!(g.check(IpAddr::V4(v4)).is_err());
            for v6 in embeddings(v4) {
                prop_assert!(g.check(IpAddr::V6(v6)).is_err(), "{} carries {}", v6, v4);
            }
        }

        /// Only the mapped form of a public IPv4 address is admitted; tunnels never are.
        #[test]
        fn embedded_public_ipv4_is_admitted_only_when_mapped(n: u32) {
            let v4 = Ipv4Addr::from(n);
            prop_assume!(classify_v4(v4).is_none());
            let g = TargetGuard::default();
            let forms = embeddings(v4);
            prop_assert_eq!(g.check(IpAddr::V6(forms[0])), Ok(()));
            for v6 in &forms[1..] {
                prop_assert!(g.check(IpAddr::V6(*v6)).is_err(), "{}", v6);
            }
        }

        /// The guard decides on the canonical address: both spellings get one answer.
        #[test]
        fn decision_equals_the_canonical_decision(addr in any_ip(), allow_v4 in any::<u32>(), len in 0u8..=32) {
            let net = IpNet::new(IpAddr::V4(Ipv4Addr::from(allow_v4)), len).unwrap();
            for g in [TargetGuard::default(), TargetGuard::new(vec![net])] {
                prop_assert_eq!(g.check(addr), g.check(canonical(addr)));
                prop_assert_eq!(classify(addr), classify(canonical(addr)));
            }
        }

        /// The allow list admits exactly the blocked addresses inside its ranges.
        #[test]
        fn allow_list_exempts_exactly_its_ranges(addr in any_ip(), base in any_ip(), len in 0u8..=128) {
            let max = if base.is_ipv4() { 32 } else { 128 };
            let net = IpNet::new(base, len.min(max)).unwrap().trunc();
            let g = TargetGuard::new(vec![net]);
            let c = canonical(addr);
            let want = classify(c).is_none() || net.contains(&c);
            prop_assert_eq!(g.check(addr).is_ok(), want);
            if let Err(b) = g.check(addr) {
                prop_assert_eq!(b.addr, c);
                prop_assert_eq!(Some(b.class), classify(c));
            }
        }
    }

    #[test]
    fn literal_targets_are_judged_and_names_left_to_the_resolver() {
        let g = TargetGuard::default();
        let t = |raw: &str| TargetUrl::parse(raw).unwrap();
        for blocked in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://[::1]:8080/",
            "http://[::ffff:10.0.0.1]/",
        ] {
            assert!(g.check_target(&t(blocked)).is_err(), "{blocked}");
        }
        for passes in [
            "https://93.184.216.34/",
            "https://localhost/",
            "https://example.com/",
        ] {
            assert_eq!(g.check_target(&t(passes)), Ok(()), "{passes}");
        }
        let allowed = TargetGuard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert_eq!(allowed.check_target(&t("http://127.0.0.1/")), Ok(()));
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

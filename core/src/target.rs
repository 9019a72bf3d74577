//! The one parser of subscription target URLs.
//!
//! Validation at creation, the SSRF check at creation and the delivery client must agree on
//! what a URL means: a hand-rolled parser that reads `http://127.1/` as the name "127.1" lets a
//! loopback target through creation that the HTTP client then connects to as 127.0.0.1. So
//! every reader parses with the `url` crate (WHATWG URL parsing, as reqwest and browsers do),
//! and the host the guard judges is the host the client connects to.

use std::net::IpAddr;

use url::{Host, Url};

/// Longest target URL accepted, in bytes.
pub const MAX_LEN: usize = 2048;

/// Why a string is not a deliverable target URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetUrlError {
    #[error("is required")]
    Empty,
    #[error("must be at most {MAX_LEN} characters")]
    TooLong,
    #[error("must not contain spaces or control characters")]
    Whitespace,
    #[error("is not a valid URL: {0}")]
    Syntax(url::ParseError),
    #[error("must be an http:// or https:// URL")]
    Scheme,
    #[error("must name a host")]
    NoHost,
    #[error("must not contain credentials")]
    Credentials,
}

/// An absolute `http`/`https` URL with a host and no credentials, in WHATWG normal form
/// (`http://2130706433/` becomes `http://127.0.0.1/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUrl(Url);

impl TargetUrl {
    pub fn parse(raw: &str) -> Result<Self, TargetUrlError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(TargetUrlError::Empty);
        }
        if raw.len() > MAX_LEN {
            return Err(TargetUrlError::TooLong);
        }
        // The WHATWG parser silently drops tabs and newlines inside a URL; refuse them instead,
        // so that what is stored is what was sent.
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(TargetUrlError::Whitespace);
        }
        // WHATWG parsing forgives `http:host` and `http:///host`; a target spells its
        // authority out.
        let lower = raw.get(..8).unwrap_or(raw).to_ascii_lowercase();
        let rest = if lower.starts_with("https://") {
            &raw[8..]
        } else if lower.starts_with("http://") {
            &raw[7..]
        } else {
            return Err(TargetUrlError::Scheme);
        };
        if rest.starts_with(['/', '\\']) {
            return Err(TargetUrlError::NoHost);
        }
        let url = Url::parse(raw).map_err(TargetUrlError::Syntax)?;
        match url.host() {
            None => return Err(TargetUrlError::NoHost),
            Some(Host::Domain("")) => return Err(TargetUrlError::NoHost),
            Some(_) => {}
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TargetUrlError::Credentials);
        }
        Ok(Self(url))
    }

    /// The IP address the URL names literally (after normalisation), if it names one: names
    /// are judged after DNS resolution instead.
    pub fn literal_ip(&self) -> Option<IpAddr> {
        match self.0.host()? {
            Host::Ipv4(a) => Some(IpAddr::V4(a)),
            Host::Ipv6(a) => Some(IpAddr::V6(a)),
            Host::Domain(_) => None,
        }
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn as_url(&self) -> &Url {
        &self.0
    }

    pub fn into_url(self) -> Url {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn undeliverable_urls_are_refused() {
        for (raw, want) in [
            ("", TargetUrlError::Empty),
            ("   ", TargetUrlError::Empty),
            ("ftp://example.com/", TargetUrlError::Scheme),
            ("file:///etc/passwd", TargetUrlError::Scheme),
            ("http://user:pw@example.com/", TargetUrlError::Credentials),
            ("http://user@example.com/", TargetUrlError::Credentials),
            ("http:///path", TargetUrlError::NoHost),
            ("http:example.com", TargetUrlError::Scheme),
            ("example.com", TargetUrlError::Scheme),
            ("http://exa mple.com/", TargetUrlError::Whitespace),
            ("http://example.com/\tx", TargetUrlError::Whitespace),
        ] {
            assert_eq!(TargetUrl::parse(raw).unwrap_err(), want, "{raw:?}");
        }
        for raw in [
            "http://example.com:99999/",
            "http://a<b>.example/",
            "http://[::1/",
            "http://",
            "http://256.0.0.1/",
        ] {
            assert!(
                matches!(
                    TargetUrl::parse(raw),
                    Err(TargetUrlError::Syntax(_)) | Err(TargetUrlError::NoHost)
                ),
                "{raw:?}: {:?}",
                TargetUrl::parse(raw)
            );
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_LEN));
        assert_eq!(
            TargetUrl::parse(&long).unwrap_err(),
            TargetUrlError::TooLong
        );
    }

    #[test]
    fn alternate_ipv4_spellings_normalise() {
        for raw in [
            "http://2130706433/",
            "http://127.1/",
            "http://0x7f.0.0.1/",
            "http://127.0.0.1./",
            "http://0177.0.0.1/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            let t = TargetUrl::parse(raw).unwrap();
            let ip = t.literal_ip().unwrap();
            let canonical = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
                v4 => v4,
            };
            assert_eq!(canonical, "127.0.0.1".parse::<IpAddr>().unwrap(), "{raw}");
        }
        let t = TargetUrl::parse("HTTPS://Example.COM:443/a?b#c").unwrap();
        assert_eq!(t.as_str(), "https://example.com/a?b#c");
        assert_eq!(t.literal_ip(), None);
    }

    proptest! {
        /// Every IPv4 address, in decimal, hex or single-number form, parses to itself.
        #[test]
        fn every_ipv4_spelling_is_the_same_address(n: u32) {
            let addr = std::net::Ipv4Addr::from(n);
            let o = addr.octets();
            for raw in [
                format!("http://{addr}/"),
                format!("http://{n}/"),
                format!("http://0x{n:x}/"),
                format!("http://0x{:x}.0x{:x}.0x{:x}.0x{:x}/", o[0], o[1], o[2], o[3]),
                format!("http://{addr}./"),
            ] {
                let t = TargetUrl::parse(&raw).unwrap();
                prop_assert_eq!(t.literal_ip(), Some(IpAddr::V4(addr)), "{}", raw);
            }
        }

        /// Parsing the normal form again changes nothing.
        #[test]
        fn normal_form_is_stable(host in "[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){0,3}", port in proptest::option::of(1u16..), path in "(/[a-zA-Z0-9._~-]{0,8}){0,3}") {
            let raw = match port {
                Some(p) => format!("https://{host}:{p}{path}"),
                None => format!("https://{host}{path}"),
            };
            if let Ok(t) = TargetUrl::parse(&raw) {
                prop_assert_eq!(TargetUrl::parse(t.as_str()).unwrap(), t);
            }
        }
    }
}

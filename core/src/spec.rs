//! What a client may ask of a subscription (a create or replace request, a patch) and its
//! validation: the one place that decides which targets, secrets, headers, limits and retry
//! schedules a subscription may have, for the REST API and the Kubernetes operator alike.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ValidationError;
use crate::model::Subscription;
use crate::retry::parse_schedule;
use crate::target::TargetUrl;

pub const SECRET_MIN_LEN: usize = 16;
pub const SECRET_MAX_LEN: usize = 256;
pub const MAX_ATTEMPTS_LIMIT: u32 = 50;
pub const TIMEOUT_MS_LIMIT: u64 = 120_000;

/// The writable fields of a subscription, as a create request carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// `http` or `https` URL that receives the deliveries.
    pub target_url: String,
    /// Event types to deliver; empty or absent means all.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// HMAC secret, 16 to 256 bytes; `whsec_<base64>` for Standard Webhooks receivers.
    #[serde(default)]
    pub secret: Option<String>,
    /// Extra headers sent with every delivery.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Attempts in all, the first included (default: the schedule's length plus one).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout in milliseconds (default: `HERALD_DELIVERY_TIMEOUT`).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Delays between attempts, e.g. `["10s", "30s", "1m"]`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub retry_schedule: Option<Vec<String>>,
    /// A paused subscription keeps its queued deliveries until it is resumed.
    #[serde(default)]
    pub paused: bool,
}

/// A partial update (`PATCH`): absent fields stay as they are; `null` clears an optional field.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionPatch {
    pub target_url: Option<String>,
    pub event_types: Option<Vec<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub secret: Option<Option<String>>,
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u32>)]
    pub max_attempts: Option<Option<u32>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u64>)]
    pub timeout_ms: Option<Option<u64>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Vec<String>>)]
    pub retry_schedule: Option<Option<Vec<String>>>,
    pub paused: Option<bool>,
}

fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl SubscriptionSpec {
    /// Checks every field and returns the normalized values a subscription stores.
    pub fn validate(&self) -> Result<ValidSpec, ValidationError> {
        let url = target_url(&self.target_url)?;
        let mut event_types = Vec::with_capacity(self.event_types.len());
        for t in &self.event_types {
            let t = t.trim();
            if t.is_empty() || t.len() > 256 {
                return Err(ValidationError::new(
                    "event_types",
                    "event types must be 1 to 256 characters",
                ));
            }
            if !event_types.iter().any(|e: &String| e == t) {
                event_types.push(t.to_string());
            }
        }
        if let Some(secret) = &self.secret {
            if secret.len() < SECRET_MIN_LEN || secret.len() > SECRET_MAX_LEN {
                return Err(ValidationError::new(
                    "secret",
                    format!("must be {SECRET_MIN_LEN} to {SECRET_MAX_LEN} bytes"),
                ));
            }
            crate::signing::SigningKey::from_secret(secret)?;
        }
        validate_headers(&self.headers)?;
        if let Some(n) = self.max_attempts {
            if n == 0 || n > MAX_ATTEMPTS_LIMIT {
                return Err(ValidationError::new(
                    "max_attempts",
                    format!("must be 1 to {MAX_ATTEMPTS_LIMIT}"),
                ));
            }
        }
        if let Some(ms) = self.timeout_ms {
            if ms == 0 || ms > TIMEOUT_MS_LIMIT {
                return Err(ValidationError::new(
                    "timeout_ms",
                    format!("must be 1 to {TIMEOUT_MS_LIMIT}"),
                ));
            }
        }
        let retry_schedule_ms = match &self.retry_schedule {
            None => None,
            Some(items) => Some(
                parse_schedule(&items.join(","))
                    .map_err(|m| ValidationError::new("retry_schedule", m))?
                    .into_iter()
                    .map(|d| d.as_millis() as u64)
                    .collect(),
            ),
        };
        Ok(ValidSpec {
            target_url: url,
            event_types,
            secret: self.secret.clone(),
            headers: self.headers.clone(),
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            retry_schedule_ms,
            paused: self.paused,
        })
    }

    /// The spec of an existing subscription, for applying a patch to it.
    pub fn of(sub: &Subscription) -> Self {
        Self {
            target_url: sub.target_url.clone(),
            event_types: sub.event_types.clone(),
            secret: sub.secret.clone(),
            headers: sub.headers.clone(),
            max_attempts: sub.max_attempts,
            timeout_ms: sub.timeout_ms,
            retry_schedule: sub
                .retry_schedule_ms
                .as_ref()
                .map(|v| v.iter().map(|ms| format!("{ms}ms")).collect()),
            paused: sub.paused,
        }
    }

    pub fn apply(mut self, patch: SubscriptionPatch) -> Self {
        if let Some(v) = patch.target_url {
            self.target_url = v;
        }
        if let Some(v) = patch.event_types {
            self.event_types = v;
        }
        if let Some(v) = patch.secret {
            self.secret = v;
        }
        if let Some(v) = patch.headers {
            self.headers = v;
        }
        if let Some(v) = patch.max_attempts {
            self.max_attempts = v;
        }
        if let Some(v) = patch.timeout_ms {
            self.timeout_ms = v;
        }
        if let Some(v) = patch.retry_schedule {
            self.retry_schedule = v;
        }
        if let Some(v) = patch.paused {
            self.paused = v;
        }
        self
    }
}

/// A spec that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidSpec {
    pub target_url: String,
    pub event_types: Vec<String>,
    pub secret: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub max_attempts: Option<u32>,
    pub timeout_ms: Option<u64>,
    pub retry_schedule_ms: Option<Vec<u64>>,
    pub paused: bool,
}

/// Headers Herald sets on every delivery; a subscription may not override them.
const HERALD_HEADERS: &[&str] = &[
    "content-type",
    "user-agent",
    "event-type",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-hub-signature-256",
];

/// Hop-by-hop and message-framing headers (RFC 9110 §7.6.1, §6.4; RFC 9112): they describe one
/// connection or how the body is framed and encoded, which the HTTP client decides. Set by a
/// subscription they would be dropped, duplicated or contradict the real framing.
const FRAMING_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "connection",
    "keep-alive",
    "content-encoding",
    "http2-settings",
];

pub const HEADER_NAME_MAX: usize = 256;
pub const HEADER_VALUE_MAX: usize = 4096;

/// Checks a subscription's custom headers: names are HTTP tokens that Herald or the connection
/// do not own, unique ignoring case (HTTP names are case-insensitive, so `X-A` and `x-a` would
/// be one header sent twice); values hold no control characters. Every refusal names the
/// header: a header is never dropped at delivery time.
pub fn validate_headers(headers: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    let mut seen = std::collections::HashSet::with_capacity(headers.len());
    for (name, value) in headers {
        validate_header(name, value)?;
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(ValidationError::new(
                "headers",
                format!("header {name:?} is given more than once (names are case-insensitive)"),
            ));
        }
    }
    Ok(())
}

fn validate_header(name: &str, value: &str) -> Result<(), ValidationError> {
    let token_ok = !name.is_empty()
        && name.len() <= HEADER_NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token_ok {
        return Err(ValidationError::new(
            "headers",
            format!("invalid header name {name:?}"),
        ));
    }
    let lower = name.to_ascii_lowercase();
    if HERALD_HEADERS.contains(&lower.as_str()) {
        return Err(ValidationError::new(
            "headers",
            format!("header {name:?} is set by Herald and cannot be overridden"),
        ));
    }
    if FRAMING_HEADERS.contains(&lower.as_str()) || lower.starts_with("proxy-") {
        return Err(ValidationError::new(
            "headers",
            format!("header {name:?} is a hop-by-hop or framing header and cannot be set"),
        ));
    }
    if value.len() > HEADER_VALUE_MAX {
        return Err(ValidationError::new(
            "headers",
            format!("the value of header {name:?} is over {HEADER_VALUE_MAX} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "headers",
            format!("the value of header {name:?} contains a control character"),
        ));
    }
    Ok(())
}

fn target_url(raw: &str) -> Result<String, ValidationError> {
    TargetUrl::parse(raw)
        .map(|t| t.as_str().to_string())
        .map_err(|e| ValidationError::new("target_url", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;

    fn spec(url: &str) -> SubscriptionSpec {
        SubscriptionSpec {
            target_url: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn urls_must_be_http_with_a_host() {
        assert!(spec("https://example.com/hook").validate().is_ok());
        assert!(spec("http://127.0.0.1:9000/x").validate().is_ok());
        assert!(spec("http://[::1]:9000/x").validate().is_ok());
        for bad in [
            "",
            "ftp://example.com",
            "example.com",
            "http://",
            "http:///path",
            "http://user:pw@example.com/",
            "http://exa mple.com/",
            "http://[::1/",
        ] {
            let e = spec(bad).validate().unwrap_err();
            assert_eq!(e.field, "target_url", "{bad}");
        }
    }

    #[test]
    fn secrets_headers_and_limits_are_checked() {
        let mut s = spec("https://example.com");
        s.secret = Some("short".into());
        assert_eq!(s.validate().unwrap_err().field, "secret");
        s.secret = Some("a".repeat(16));
        assert!(s.validate().is_ok());
        s.headers.insert("Webhook-Id".into(), "x".into());
        assert_eq!(s.validate().unwrap_err().field, "headers");
        s.headers.clear();
        s.headers.insert("X-Team".into(), "a\r\nb".into());
        assert_eq!(s.validate().unwrap_err().field, "headers");
        s.headers.clear();
        s.max_attempts = Some(0);
        assert_eq!(s.validate().unwrap_err().field, "max_attempts");
        s.max_attempts = Some(3);
        s.retry_schedule = Some(vec!["10s".into(), "soon".into()]);
        assert_eq!(s.validate().unwrap_err().field, "retry_schedule");
        s.retry_schedule = Some(vec!["10ms".into(), "1m".into()]);
        assert_eq!(
            s.validate().unwrap().retry_schedule_ms,
            Some(vec![10, 60_000])
        );
    }

    #[test]
    fn urls_are_stored_in_normal_form() {
        for (raw, want) in [
            ("http://2130706433/x", "http://127.0.0.1/x"),
            ("http://127.1:8080", "http://127.0.0.1:8080/"),
            ("http://0x7f.0.0.1/", "http://127.0.0.1/"),
            ("http://127.0.0.1./", "http://127.0.0.1/"),
        ] {
            assert_eq!(spec(raw).validate().unwrap().target_url, want, "{raw}");
        }
        for bad in ["http://127.0.0.1:99999/", "http://a<b>.example/"] {
            assert_eq!(
                spec(bad).validate().unwrap_err().field,
                "target_url",
                "{bad}"
            );
        }
    }

    fn with_headers(pairs: &[(&str, &str)]) -> Result<ValidSpec, ValidationError> {
        let mut s = spec("https://example.com/");
        s.headers = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        s.validate()
    }

    #[test]
    fn framing_herald_and_duplicate_headers_are_refused_by_name() {
        for name in [
            "Host",
            "Content-Length",
            "Transfer-Encoding",
            "TE",
            "Upgrade",
            "Expect",
            "Trailer",
            "Content-Encoding",
            "Connection",
            "Keep-Alive",
            "Proxy-Authorization",
            "proxy-connection",
            "Content-Type",
            "webhook-signature",
        ] {
            let e = with_headers(&[(name, "x")]).unwrap_err();
            assert_eq!(e.field, "headers");
            assert!(e.message.contains(name), "{name}: {}", e.message);
        }
        let e = with_headers(&[("X-Team", "a"), ("x-team", "b")]).unwrap_err();
        assert!(e.message.contains("more than once"), "{}", e.message);
        for value in ["a\u{7f}b", "a\tb", "a\u{1}", "\u{85}"] {
            let e = with_headers(&[("X-Team", value)]).unwrap_err();
            assert!(
                e.message.contains("X-Team") && e.message.contains("control"),
                "{value:?}"
            );
        }
        assert!(with_headers(&[("Authorization", "Bearer abc"), ("X-Tenant", "café")]).is_ok());
    }

    proptest::proptest! {
        /// A value with any control character is refused, whatever the name.
        #[test]
        fn control_characters_are_refused(
            name in "X-[A-Za-z0-9-]{1,20}",
            before in "[ -~]{0,10}",
            c in proptest::char::range('\u{0}', '\u{9f}').prop_filter("control", |c| c.is_control()),
            after in "[ -~]{0,10}",
        ) {
            let value = format!("{before}{c}{after}");
            let e = with_headers(&[(&name, &value)]).unwrap_err();
            proptest::prop_assert!(e.message.contains(&name));
        }

        /// Reserved names are refused in any letter case; printable values on other names pass.
        #[test]
        fn reserved_names_are_refused_in_any_case(
            i in 0..(FRAMING_HEADERS.len() + HERALD_HEADERS.len()),
            flips in proptest::collection::vec(proptest::bool::ANY, 32),
            value in "[ -~]{0,40}",
        ) {
            let base = FRAMING_HEADERS.iter().chain(HERALD_HEADERS).nth(i).unwrap();
            let name: String = base
                .chars()
                .zip(flips.iter().cycle())
                .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
                .collect();
            proptest::prop_assert!(with_headers(&[(&name, "x")]).is_err());
            proptest::prop_assert!(with_headers(&[("X-Custom", &value)]).is_ok());
        }
    }

    #[test]
    fn patches_apply_and_clear() {
        let base = SubscriptionSpec {
            target_url: "https://a.example/".into(),
            secret: Some("s".repeat(20)),
            max_attempts: Some(3),
            ..Default::default()
        };
        let patch: SubscriptionPatch =
            serde_json::from_str(r#"{"secret": null, "event_types": ["a"]}"#).unwrap();
        let out = base.apply(patch);
        assert_eq!(out.secret, None);
        assert_eq!(out.max_attempts, Some(3));
        assert_eq!(out.event_types, vec!["a".to_string()]);
    }
}

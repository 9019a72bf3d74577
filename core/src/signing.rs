//! Signatures, both directions.
//!
//! Incoming: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(body)>`, keyed with the secret's
//! UTF-8 bytes, compared in constant time. Outgoing: the Standard Webhooks headers
//! (`webhook-signature: v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>`) plus the same
//! `X-Hub-Signature-256` over the body. For a `whsec_<base64>` secret the Standard Webhooks key is
//! the decoded bytes, so receivers' Standard Webhooks libraries verify unchanged.
//!
//! During a secret rotation a subscription has two active secrets ([`SigningKeys`]): outgoing
//! `webhook-signature` carries one `v1,` signature per secret, newest first and space-separated,
//! so receivers that know either secret verify; `X-Hub-Signature-256` holds one value and uses the
//! newest; incoming `X-Hub-Signature-256` is accepted when made with either.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::ValidationError;

type HmacSha256 = Hmac<Sha256>;

pub const HUB_SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// The keys derived from one subscription secret.
#[derive(Clone)]
pub struct SigningKey {
    /// Key for the Standard Webhooks signature.
    standard: Vec<u8>,
    /// Key for `X-Hub-Signature-256`: always the secret's UTF-8 bytes.
    hub: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    pub fn from_secret(secret: &str) -> Result<Self, ValidationError> {
        let standard = match secret.strip_prefix("whsec_") {
            Some(b64) => B64.decode(b64).map_err(|_| {
                ValidationError::new("secret", "a whsec_ secret must be followed by base64")
            })?,
            None => secret.as_bytes().to_vec(),
        };
        if standard.is_empty() {
            return Err(ValidationError::new("secret", "must not be empty"));
        }
        Ok(Self {
            standard,
            hub: secret.as_bytes().to_vec(),
        })
    }

    /// `v1,<base64>` over `{id}.{timestamp}.{body}`.
    pub fn standard_signature(&self, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.standard).expect("HMAC takes any key");
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
    }

    /// `sha256=<hex>` over the body.
    pub fn hub_signature(&self, body: &[u8]) -> String {
        format!("sha256={}", hex::encode(hub_mac(&self.hub, body)))
    }

    /// Checks an incoming `X-Hub-Signature-256` header in constant time.
    pub fn verify_hub(&self, header: Option<&str>, body: &[u8]) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?.trim();
        let hex_sig = header
            .strip_prefix("sha256=")
            .ok_or(SignatureError::Malformed)?;
        let given = hex::decode(hex_sig).map_err(|_| SignatureError::Malformed)?;
        let mut mac = HmacSha256::new_from_slice(&self.hub).expect("HMAC takes any key");
        mac.update(body);
        mac.verify_slice(&given)
            .map_err(|_| SignatureError::Mismatch)
    }
}

/// The keys of every secret active at one moment, newest first.
#[derive(Debug, Clone)]
pub struct SigningKeys(Vec<SigningKey>);

impl SigningKeys {
    pub fn from_secrets<'a>(
        secrets: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, ValidationError> {
        secrets
            .into_iter()
            .map(SigningKey::from_secret)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `webhook-signature` value: one `v1,<base64>` per key, space-separated, newest first.
    pub fn standard_signatures(&self, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
        self.0
            .iter()
            .map(|k| k.standard_signature(webhook_id, timestamp, body))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `X-Hub-Signature-256` has room for one signature: the newest secret's.
    pub fn hub_signature(&self, body: &[u8]) -> Option<String> {
        self.0.first().map(|k| k.hub_signature(body))
    }

    /// Accepts an `X-Hub-Signature-256` made with any active secret.
    pub fn verify_hub(&self, header: Option<&str>, body: &[u8]) -> Result<(), SignatureError> {
        let mut result = Err(SignatureError::Mismatch);
        for key in &self.0 {
            match key.verify_hub(header, body) {
                Ok(()) => return Ok(()),
                Err(SignatureError::Mismatch) => {}
                Err(other) => result = Err(other),
            }
        }
        result
    }
}

/// The `(version, signature)` pairs of a `webhook-signature` value; entries without a comma are
/// skipped, as Standard Webhooks verifiers do.
pub fn parse_signatures(header: &str) -> Vec<(&str, &str)> {
    header
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .collect()
}

/// A new secret for a rotation: `whsec_` and the base64 of 32 random bytes, the form Standard
/// Webhooks libraries take as is.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system provides random bytes");
    format!("whsec_{}", B64.encode(bytes))
}

fn hub_mac(key: &[u8], body: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("X-Hub-Signature-256 must be sha256=<hex>")]
    Malformed,
    #[error("signature does not match the body")]
    Mismatch,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_published_test_vector() {
        // The test vector published with the Standard Webhooks reference libraries.
        let key = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            key.standard_signature(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn hub_signature_matches_a_known_hmac() {
        // HMAC-SHA256 test case 2 of RFC 4231: key "Jefe".
        let key = SigningKey::from_secret("Jefe").unwrap();
        assert_eq!(
            key.hub_signature(b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hub_uses_utf8_bytes_even_for_whsec_secrets() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let key = SigningKey::from_secret(secret).unwrap();
        let plain = SigningKey {
            standard: secret.as_bytes().to_vec(),
            hub: secret.as_bytes().to_vec(),
        };
        assert_eq!(key.hub_signature(b"{}"), plain.hub_signature(b"{}"));
        assert_ne!(
            key.standard_signature("m", 1, b"{}"),
            plain.standard_signature("m", 1, b"{}")
        );
    }

    #[test]
    fn verifies_incoming_signatures() {
        let key = SigningKey::from_secret("a-very-secret-secret").unwrap();
        let body = br#"{"order": 1}"#;
        let good = key.hub_signature(body);
        assert_eq!(key.verify_hub(Some(&good), body), Ok(()));
        assert_eq!(key.verify_hub(None, body), Err(SignatureError::Missing));
        assert_eq!(
            key.verify_hub(Some("sha1=abcd"), body),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            key.verify_hub(Some("sha256=zz"), body),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            key.verify_hub(Some(&good), br#"{"order": 2}"#),
            Err(SignatureError::Mismatch)
        );
        assert!(SigningKey::from_secret("whsec_not*base64").is_err());
    }

    #[test]
    fn during_a_rotation_both_secrets_sign_and_verify() {
        let new = generate_secret();
        let old = "an-old-secret-of-20b";
        assert!(new.starts_with("whsec_"));
        assert_eq!(B64.decode(&new["whsec_".len()..]).unwrap().len(), 32);
        assert_ne!(new, generate_secret());
        let keys = SigningKeys::from_secrets([new.as_str(), old]).unwrap();
        let body = b"{}";
        let header = keys.standard_signatures("msg_1", 7, body);
        let sigs = parse_signatures(&header);
        let each = |s: &str| SigningKey::from_secret(s).unwrap();
        assert_eq!(
            header,
            format!(
                "{} {}",
                each(&new).standard_signature("msg_1", 7, body),
                each(old).standard_signature("msg_1", 7, body)
            ),
            "newest first"
        );
        assert_eq!(sigs.len(), 2);
        assert_eq!(
            keys.hub_signature(body),
            Some(each(&new).hub_signature(body))
        );
        for secret in [new.as_str(), old] {
            let sig = each(secret).hub_signature(body);
            assert_eq!(keys.verify_hub(Some(&sig), body), Ok(()));
        }
        let other = each("a-third-secret-xxxx").hub_signature(body);
        assert_eq!(
            keys.verify_hub(Some(&other), body),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(keys.verify_hub(None, body), Err(SignatureError::Missing));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn secret() -> impl Strategy<Value = String> {
            prop_oneof![
                "[ -~]{16,64}",
                proptest::collection::vec(any::<u8>(), 16..48)
                    .prop_map(|b| format!("whsec_{}", B64.encode(b))),
            ]
        }

        proptest! {
            #[test]
            fn verify_hub_accepts_what_hub_signature_made(
                secret in secret(),
                body in proptest::collection::vec(any::<u8>(), 0..256),
            ) {
                let key = SigningKey::from_secret(&secret).unwrap();
                let sig = key.hub_signature(&body);
                prop_assert_eq!(key.verify_hub(Some(&sig), &body), Ok(()));
                prop_assert_eq!(key.verify_hub(Some(&format!("  {sig} ")), &body), Ok(()));
            }

            #[test]
            fn any_changed_byte_of_body_signature_or_key_is_refused(
                secret in secret(),
                body in proptest::collection::vec(any::<u8>(), 1..256),
                at in any::<prop::sample::Index>(),
                flip in 1u8..=255,
            ) {
                let key = SigningKey::from_secret(&secret).unwrap();
                let sig = key.hub_signature(&body);

                let mut changed = body.clone();
                let i = at.index(changed.len());
                changed[i] ^= flip;
                prop_assert_eq!(key.verify_hub(Some(&sig), &changed), Err(SignatureError::Mismatch));

                // One hex digit of the signature replaced by another hex digit.
                let mut hex_sig: Vec<u8> = sig["sha256=".len()..].bytes().collect();
                let j = at.index(hex_sig.len());
                let digits = b"0123456789abcdef";
                let pos = digits.iter().position(|d| *d == hex_sig[j]).unwrap();
                hex_sig[j] = digits[(pos + 1 + (flip as usize % 15)) % 16];
                let bad = format!("sha256={}", String::from_utf8(hex_sig).unwrap());
                prop_assert_eq!(key.verify_hub(Some(&bad), &body), Err(SignatureError::Mismatch));

                let mut other = secret.clone().into_bytes();
                let k = at.index(other.len());
                other[k] = if other[k] == b'x' { b'y' } else { b'x' };
                let other = String::from_utf8(other).unwrap();
                let other_key = SigningKey {
                    standard: other.as_bytes().to_vec(),
                    hub: other.as_bytes().to_vec(),
                };
                prop_assert_eq!(other_key.verify_hub(Some(&sig), &body), Err(SignatureError::Mismatch));
            }

            #[test]
            fn malformed_headers_are_refused_without_panicking(
                header in "\\PC{0,80}",
                body in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let key = SigningKey::from_secret("a-very-secret-secret").unwrap();
                let keys = SigningKeys::from_secrets(["a-very-secret-secret", "another-secret-123"]).unwrap();
                let good = key.hub_signature(&body);
                let r = key.verify_hub(Some(&header), &body);
                prop_assert!(r.is_err() || header.trim() == good);
                prop_assert_eq!(keys.verify_hub(Some(&header), &body).is_ok(), r.is_ok());
            }

            #[test]
            fn the_multi_signature_header_parses_back_into_its_signatures(
                secrets in proptest::collection::vec(secret(), 1..4),
                id in "msg_[0-9A-Z]{1,26}",
                ts in 0i64..4_000_000_000,
                body in proptest::collection::vec(any::<u8>(), 0..128),
            ) {
                let keys = SigningKeys::from_secrets(secrets.iter().map(String::as_str)).unwrap();
                let header = keys.standard_signatures(&id, ts, &body);
                let parsed = parse_signatures(&header);
                prop_assert_eq!(parsed.len(), secrets.len());
                for ((version, sig), secret) in parsed.iter().zip(&secrets) {
                    prop_assert_eq!(*version, "v1");
                    let one = SigningKey::from_secret(secret).unwrap().standard_signature(&id, ts, &body);
                    prop_assert_eq!(format!("v1,{sig}"), one);
                    prop_assert_eq!(B64.decode(sig).unwrap().len(), 32);
                }
            }
        }
    }
}

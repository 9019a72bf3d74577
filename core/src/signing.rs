//! Signatures, both directions.
//!
//! Incoming: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(body)>`, keyed with the secret's
//! UTF-8 bytes, compared in constant time. Outgoing: the Standard Webhooks headers
//! (`webhook-signature: v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>`) plus the same
//! `X-Hub-Signature-256` over the body. For a `whsec_<base64>` secret the Standard Webhooks key is
//! the decoded bytes, so receivers' Standard Webhooks libraries verify unchanged.

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
}

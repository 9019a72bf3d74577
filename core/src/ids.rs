//! Identifiers: prefixed ULIDs, so they sort by creation time (cursor pagination relies on it)
//! and say what they name. A monotonic generator keeps ids made within one millisecond in order.
//!
//! The parse functions let the api refuse a string that cannot be an id (answer 404) before
//! any store round trip. Only the canonical form is accepted, exactly as [`subscription_id`] and
//! [`webhook_id`] print it: the prefix, then 26 upper-case Crockford base-32 characters whose
//! value fits 128 bits. Lower case and Crockford's aliases (`I`, `L`, `O`) are refused, since
//! stores compare ids as strings: an alias spelling would name nothing.

use parking_lot::Mutex;

use ulid::Ulid;

/// Declares an id type: a `String` underneath that reads as a `str` wherever one is expected
/// (`Deref`, `AsRef`, `Borrow`, comparisons with strings), serializes as the bare string, and is
/// built unchecked from a string (stores read back what they wrote). With `parse = f`, `FromStr`
/// is the checked parse for ids that come from outside (the api's path parameters): `f` says why
/// a string is not one.
macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident $(, parse = $parse:path)?) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash,
            serde::Serialize, serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // `Hash` and `Ord` above are those of the inner string, so maps keyed by the id can be
        // looked up with a `&str`.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_string())
            }
        }

        impl From<&String> for $name {
            fn from(s: &String) -> Self {
                Self(s.clone())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        $(
            impl std::str::FromStr for $name {
                type Err = IdError;

                fn from_str(s: &str) -> Result<Self, IdError> {
                    $parse(s)?;
                    Ok(Self(s.to_string()))
                }
            }
        )?
    };
}

string_id!(
    /// A subscription's id: `sub_` and a ULID.
    SubscriptionId,
    parse = parse_subscription_id
);
string_id!(
    /// An ingested event's id: `msg_` and a ULID.
    WebhookId,
    parse = parse_webhook_id
);
string_id!(
    /// A delivery worker's id, which its heartbeats and leases carry.
    WorkerId
);
string_id!(
    /// The handle of one lease on one delivery, which only the backend that issued it reads.
    Receipt
);

/// Prefix of subscription ids.
pub const SUBSCRIPTION_PREFIX: &str = "sub_";
/// Prefix of webhook (event) ids.
pub const WEBHOOK_PREFIX: &str = "msg_";
/// Length of a ULID in its text form.
const ULID_LEN: usize = 26;

static GENERATOR: Mutex<Option<ulid::Generator>> = Mutex::new(None);

fn next() -> Ulid {
    let mut g = GENERATOR.lock();
    let g = g.get_or_insert_with(ulid::Generator::new);
    // Overflow needs 2^80 ids in one millisecond; fall back to a fresh random id then.
    g.generate().unwrap_or_else(|_| Ulid::new())
}

pub fn subscription_id() -> SubscriptionId {
    SubscriptionId(format!("{SUBSCRIPTION_PREFIX}{}", next()))
}

/// The id of a subscription an owner manages, derived from the owner's unique key (the
/// operator passes the resource's UID) and its creation time: every process that applies the
/// same owner computes the same id, so two of them racing to create it insert one record (the
/// store's unique id refuses the second) instead of two. The time keeps ids roughly in
/// creation order; the key's SHA-256 fills the ULID's 80 random bits.
pub fn owned_subscription_id(created_ms: u64, key: &str) -> SubscriptionId {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    let mut random = [0u8; 16];
    random[6..].copy_from_slice(&digest[..10]);
    // A ULID's time is 48 bits; later times are clamped (year 10889).
    let ms = created_ms.min((1u64 << 48) - 1);
    let ulid = Ulid::from_parts(ms, u128::from_be_bytes(random));
    SubscriptionId(format!("{SUBSCRIPTION_PREFIX}{ulid}"))
}

pub fn webhook_id() -> WebhookId {
    WebhookId(format!("{WEBHOOK_PREFIX}{}", next()))
}

/// Why a string is not an id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("an id starts with {0:?}")]
    Prefix(&'static str),
    #[error("an id is its prefix followed by a 26-character ULID")]
    Length,
    #[error("an id's ULID is upper-case Crockford base 32 within 128 bits")]
    Ulid,
}

/// The ULID of a subscription id, or why the string cannot be one.
pub fn parse_subscription_id(s: &str) -> Result<Ulid, IdError> {
    parse_prefixed(s, SUBSCRIPTION_PREFIX)
}

/// The ULID of a webhook id, or why the string cannot be one.
pub fn parse_webhook_id(s: &str) -> Result<Ulid, IdError> {
    parse_prefixed(s, WEBHOOK_PREFIX)
}

fn parse_prefixed(s: &str, prefix: &'static str) -> Result<Ulid, IdError> {
    let rest = s.strip_prefix(prefix).ok_or(IdError::Prefix(prefix))?;
    if rest.len() != ULID_LEN {
        return Err(IdError::Length);
    }
    let ulid = Ulid::from_string(rest).map_err(|_| IdError::Ulid)?;
    // The decoder also takes lower case and aliases; only the canonical spelling names an id.
    if ulid.to_string() != rest {
        return Err(IdError::Ulid);
    }
    Ok(ulid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CROCKFORD: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

    #[test]
    fn ids_are_prefixed_and_sortable() {
        let ids: Vec<SubscriptionId> = (0..1000).map(|_| subscription_id()).collect();
        assert!(ids[0].starts_with("sub_") && ids[0].len() == 30);
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "monotonic within a millisecond"
        );
        assert!(webhook_id().starts_with("msg_"));
    }

    #[test]
    fn owned_ids_depend_on_the_key_and_time_only_and_parse() {
        let a = owned_subscription_id(1_700_000_000_000, "kubernetes/uid-1");
        assert_eq!(
            a,
            owned_subscription_id(1_700_000_000_000, "kubernetes/uid-1")
        );
        assert_ne!(
            a,
            owned_subscription_id(1_700_000_000_000, "kubernetes/uid-2")
        );
        assert_ne!(
            a,
            owned_subscription_id(1_700_000_000_001, "kubernetes/uid-1")
        );
        let ulid = parse_subscription_id(&a).expect("a canonical id");
        assert_eq!(ulid.timestamp_ms(), 1_700_000_000_000);
        assert!(parse_subscription_id(&owned_subscription_id(u64::MAX, "k")).is_ok());
    }

    #[test]
    fn known_bad_ids_are_refused() {
        let good = subscription_id();
        let ulid = &good[4..];
        assert!(parse_subscription_id(&good).is_ok());
        for (bad, why) in [
            (String::new(), IdError::Prefix("sub_")),
            ("sub_".into(), IdError::Length),
            (format!("msg_{ulid}"), IdError::Prefix("sub_")),
            (format!("SUB_{ulid}"), IdError::Prefix("sub_")),
            (format!(" sub_{ulid}"), IdError::Prefix("sub_")),
            (format!("sub_{ulid} "), IdError::Length),
            (format!("sub_{}", &ulid[1..]), IdError::Length),
            (format!("sub_{}", ulid.to_ascii_lowercase()), IdError::Ulid),
            // Above 2^128 - 1: the first character of a ULID is at most 7.
            (format!("sub_8{}", &ulid[1..]), IdError::Ulid),
            (format!("sub_{}U", &ulid[..25]), IdError::Ulid),
            (format!("sub_{}O", &ulid[..25]), IdError::Ulid),
            (format!("sub_{}é", &ulid[..24]), IdError::Ulid),
        ] {
            assert_eq!(parse_subscription_id(&bad), Err(why), "{bad:?}");
        }
        assert_eq!(
            parse_webhook_id(&good),
            Err(IdError::Prefix("msg_")),
            "kinds do not mix"
        );
    }

    #[test]
    fn typed_ids_read_as_strings_and_parse_checked() {
        use std::collections::HashMap;
        let id = subscription_id();
        let text = id.to_string();
        assert_eq!(id, text.as_str());
        assert_eq!(text.as_str(), id);
        assert_eq!(id, text);
        assert_eq!(text, id);
        assert_eq!(id.as_str(), &*id);
        assert_eq!(AsRef::<str>::as_ref(&id), text);
        assert_eq!(SubscriptionId::from(text.as_str()), id);
        assert_eq!(SubscriptionId::from(&text), id);
        assert_eq!(String::from(id.clone()), text);
        assert_eq!(id.clone().into_string(), text);
        assert_eq!(text.parse::<SubscriptionId>(), Ok(id.clone()));
        assert_eq!(
            text.parse::<WebhookId>(),
            Err(IdError::Prefix("msg_")),
            "the checked parse is the kind's"
        );
        assert_eq!("sub_x".parse::<SubscriptionId>(), Err(IdError::Length));
        let w = webhook_id();
        assert_eq!(w.parse::<WebhookId>(), Ok(w.clone()));
        // Unchecked construction is for a store's own data, which is trusted.
        assert_eq!(WorkerId::from("wrk_1"), "wrk_1");
        assert_ne!(Receipt::from("a"), "b");
        // Serialized as the bare string, both ways.
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<SubscriptionId>(&json).unwrap(), id);
        // Looked up by `&str` in a map keyed by the id.
        let map: HashMap<SubscriptionId, u8> = [(id.clone(), 1)].into();
        assert_eq!(map.get(text.as_str()), Some(&1));
        let a = SubscriptionId::from("sub_a");
        let b = SubscriptionId::from("sub_b");
        assert!(a < b && "sub_a" < "sub_b", "ordered as the strings are");
    }

    /// The canonical text of a ULID: a first character 0-7, then 25 of the alphabet.
    fn canonical_ulid() -> impl Strategy<Value = String> {
        "[0-7][0-9A-HJKMNP-TV-Z]{25}"
    }

    proptest! {
        #[test]
        fn every_generated_id_parses(n in 1usize..50) {
            for _ in 0..n {
                let s = subscription_id();
                let w = webhook_id();
                prop_assert_eq!(parse_subscription_id(&s).map(|u| u.to_string()), Ok(s[4..].to_string()));
                prop_assert_eq!(parse_webhook_id(&w).map(|u| u.to_string()), Ok(w[4..].to_string()));
            }
        }

        #[test]
        fn ids_sort_in_creation_order(n in 2usize..200) {
            let ids: Vec<String> = (0..n).map(|i| if i % 2 == 0 { subscription_id().into_string() } else { webhook_id().into_string() }).collect();
            let ulids: Vec<Ulid> = ids.iter().map(|id| {
                parse_subscription_id(id).or_else(|_| parse_webhook_id(id)).expect("generated ids parse")
            }).collect();
            prop_assert!(ulids.windows(2).all(|w| w[0] < w[1]), "ULIDs increase");
            // The text of one kind sorts as its value does (cursor pagination compares strings).
            let subs: Vec<&String> = ids.iter().step_by(2).collect();
            prop_assert!(subs.windows(2).all(|w| w[0] < w[1]));
        }

        #[test]
        fn a_canonical_ulid_after_the_prefix_parses_back_to_itself(u in canonical_ulid()) {
            let parsed = parse_subscription_id(&format!("sub_{u}"));
            prop_assert_eq!(parsed.map(|x| x.to_string()), Ok(u.clone()));
            let webhook = format!("msg_{u}");
            prop_assert!(parse_webhook_id(&webhook).is_ok());
        }

        #[test]
        fn anything_but_prefix_and_canonical_ulid_is_refused(s in any::<String>()) {
            // Never panics, and accepts exactly the strings the canonical form describes.
            let canonical = s.strip_prefix("sub_").is_some_and(|r| {
                r.len() == ULID_LEN
                    && r.chars().all(|c| CROCKFORD.contains(c))
                    && r.as_bytes()[0] <= b'7'
            });
            prop_assert_eq!(parse_subscription_id(&s).is_ok(), canonical, "{:?}", s);
        }

        #[test]
        fn one_changed_character_is_refused_or_another_valid_id(
            u in canonical_ulid(),
            at in 0usize..30,
            c in any::<char>(),
        ) {
            let mut chars: Vec<char> = format!("sub_{u}").chars().collect();
            if chars[at] != c {
                chars[at] = c;
                let s: String = chars.into_iter().collect();
                let still_valid = at >= 4
                    && CROCKFORD.contains(c)
                    && (at != 4 || c <= '7');
                prop_assert_eq!(parse_subscription_id(&s).is_ok(), still_valid, "{:?}", s);
            }
        }

        #[test]
        fn near_misses_are_refused(u in canonical_ulid(), junk in "[^0-9A-HJKMNP-TV-Z]{1,3}") {
            prop_assert_eq!(parse_subscription_id(&format!("sub_{u}{junk}")), Err(IdError::Length));
            // Three characters cannot spell the four of the prefix, so this never starts with it.
            prop_assert_eq!(parse_subscription_id(&format!("{junk}sub_{u}")), Err(IdError::Prefix("sub_")));
            let lower = u.to_ascii_lowercase();
            if lower != u {
                prop_assert_eq!(parse_subscription_id(&format!("sub_{lower}")), Err(IdError::Ulid));
            }
        }
    }
}

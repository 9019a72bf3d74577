//! Key names and receipts. The Lua scripts build the same names from the prefix (see
//! `scripts/common.lua`); this module is the Rust side of that layout.

/// The names under one installation's prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The hash of one event while any delivery of it is open.
    pub fn event(&self, webhook_id: &str) -> String {
        format!("{}:e:{webhook_id}", self.prefix)
    }

    /// The hash of one delivery.
    pub fn delivery(&self, webhook_id: &str, subscription_id: &str) -> String {
        format!("{}:d:{webhook_id}:{subscription_id}", self.prefix)
    }

    /// The idempotency record of `key` in `scope`. Scopes are subscription ids or `events`,
    /// which hold no `:`, so the first `:` after `idem:` ends the scope.
    pub fn idempotency(&self, scope: &str, key: &str) -> String {
        format!("{}:idem:{scope}:{key}", self.prefix)
    }

    /// The list of accepted events waiting to be fanned out into their deliveries.
    pub fn intake(&self) -> String {
        format!("{}:intake", self.prefix)
    }

    /// The channel that tells waiting workers that something became due.
    pub fn wake(&self) -> String {
        format!("{}:wake", self.prefix)
    }

    /// The channel of subscription changes.
    pub fn subscriptions(&self) -> String {
        format!("{}:subscriptions", self.prefix)
    }
}

/// A receipt names a delivery and the token of its lease: `{webhook id}|{subscription id}|{token}`.
pub(crate) fn receipt(webhook_id: &str, subscription_id: &str, token: i64) -> String {
    format!("{webhook_id}|{subscription_id}|{token}")
}

/// The parts of a receipt. Webhook ids never contain `|` (Herald makes them) and the token is
/// a number, so the first and the last `|` split it whatever the subscription id holds.
pub(crate) fn parse_receipt(receipt: &str) -> Option<(&str, &str, &str)> {
    let (webhook_id, rest) = receipt.split_once('|')?;
    let (subscription_id, token) = rest.rsplit_once('|')?;
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((webhook_id, subscription_id, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip() {
        let r = receipt("msg_1", "sub_a|b", 42);
        assert_eq!(parse_receipt(&r), Some(("msg_1", "sub_a|b", "42")));
        assert_eq!(parse_receipt("msg_1|sub_a|"), None);
        assert_eq!(parse_receipt("msg_1|sub_a|x"), None);
        assert_eq!(parse_receipt("12:34"), None);
    }
}

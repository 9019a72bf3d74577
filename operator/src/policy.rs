//! Which event types the resources of a namespace may subscribe to
//! (`HERALD_OPERATOR_ALLOWED_EVENT_TYPES`).
//!
//! Herald's tenancy model: `/events` fans an event out to every subscription whose event types
//! include its type, and a subscription with no event types receives every event, from every
//! producer. So whoever may create a `WebhookSubscription` in a namespace may, without a policy,
//! receive every event Herald fans out. The policy maps namespaces to the event-type patterns
//! their resources may name; a resource that names anything else, or names nothing (every
//! type), is refused with `Ready=False`, reason `EventTypesNotAllowed`.
//!
//! Syntax: `namespace=pattern,pattern;namespace=pattern`. A pattern is an event type
//! (`order.paid`), a prefix ending in `*` (`order.*` covers `order.paid` and `order.x.y`), or
//! `*` alone (every type, which also allows an empty `eventTypes`). The namespace `*` is the
//! rule of every namespace not named; without it, namespaces not named are not restricted.

use std::collections::BTreeMap;

/// The parsed setting; the default restricts nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventTypePolicy {
    rules: BTreeMap<String, Vec<String>>,
    others: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HERALD_OPERATOR_ALLOWED_EVENT_TYPES: {0}")]
pub struct PolicyError(String);

impl std::str::FromStr for EventTypePolicy {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, PolicyError> {
        let mut policy = EventTypePolicy::default();
        for entry in s.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (ns, patterns) = entry.split_once('=').ok_or_else(|| {
                PolicyError(format!("{entry:?} is not namespace=pattern,pattern"))
            })?;
            let ns = ns.trim();
            if ns.is_empty() {
                return Err(PolicyError(format!("{entry:?} names no namespace")));
            }
            let patterns: Vec<String> = patterns
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect();
            if let Some(bad) = patterns
                .iter()
                .find(|p| p.trim_end_matches('*').contains('*'))
            {
                return Err(PolicyError(format!(
                    "pattern {bad:?}: `*` may only end a pattern"
                )));
            }
            let slot = if ns == "*" {
                policy.others.get_or_insert_with(Vec::new)
            } else {
                policy.rules.entry(ns.to_string()).or_default()
            };
            slot.extend(patterns);
        }
        Ok(policy)
    }
}

fn covers(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

impl EventTypePolicy {
    /// Whether any namespace is restricted.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.others.is_none()
    }

    /// The patterns `namespace` is held to; `None`: not restricted.
    pub fn patterns(&self, namespace: &str) -> Option<&[String]> {
        self.rules
            .get(namespace)
            .or(self.others.as_ref())
            .map(Vec::as_slice)
    }

    /// `Err` with the message the resource's status shows when `namespace` may not subscribe
    /// to `event_types` (empty: every type).
    pub fn check(&self, namespace: &str, event_types: &[String]) -> Result<(), String> {
        let Some(allowed) = self.patterns(namespace) else {
            return Ok(());
        };
        let shown = if allowed.is_empty() {
            "none".to_string()
        } else {
            allowed.join(", ")
        };
        if event_types.is_empty() {
            if allowed.iter().any(|p| p == "*") {
                return Ok(());
            }
            return Err(format!(
                "eventTypes is empty, which means every event type; resources in namespace \
                 {namespace} may subscribe only to: {shown}"
            ));
        }
        let refused: Vec<&str> = event_types
            .iter()
            .filter(|t| !allowed.iter().any(|p| covers(p, t)))
            .map(String::as_str)
            .collect();
        if refused.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "event types {} are not allowed in namespace {namespace}, which may subscribe \
                 only to: {shown}",
                refused.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn namespaces_are_held_to_their_patterns() {
        let p: EventTypePolicy = "shop = order.*, invoice.paid ; ops=*; *=public.*"
            .parse()
            .unwrap();
        assert!(p
            .check("shop", &types(&["order.paid", "order.x.y"]))
            .is_ok());
        assert!(p.check("shop", &types(&["invoice.paid"])).is_ok());
        let e = p
            .check(
                "shop",
                &types(&["order.paid", "invoice.void", "user.created"]),
            )
            .unwrap_err();
        assert!(e.contains("invoice.void, user.created"), "{e}");
        assert!(e.contains("order.*, invoice.paid"), "{e}");
        // Empty means every type: only `*` allows it.
        assert!(p
            .check("shop", &[])
            .unwrap_err()
            .contains("every event type"));
        assert!(p.check("ops", &[]).is_ok());
        // The `*` namespace rules every namespace not named.
        assert!(p.check("team-x", &types(&["public.news"])).is_ok());
        assert!(p.check("team-x", &types(&["order.paid"])).is_err());
        // A prefix pattern is a prefix, not a glob over segments.
        assert!(p.check("shop", &types(&["orders.paid"])).is_err());
    }

    #[test]
    fn without_a_rule_nothing_is_restricted() {
        let p: EventTypePolicy = "shop=order.*".parse().unwrap();
        assert!(p.check("other", &[]).is_ok());
        assert!(EventTypePolicy::default().check("shop", &[]).is_ok());
        assert!(EventTypePolicy::default().is_empty());
        // A namespace with no patterns may subscribe to nothing.
        let none: EventTypePolicy = "locked=".parse().unwrap();
        assert!(none
            .check("locked", &types(&["a"]))
            .unwrap_err()
            .contains("only to: none"));
    }

    #[test]
    fn malformed_settings_are_refused() {
        for bad in ["shop", "=a", "shop=a*b", "shop=*.paid"] {
            assert!(bad.parse::<EventTypePolicy>().is_err(), "{bad}");
        }
        assert_eq!(
            "".parse::<EventTypePolicy>().unwrap(),
            EventTypePolicy::default()
        );
    }
}

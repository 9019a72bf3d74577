//! The domain model: subscriptions, events, queued deliveries and delivery attempts.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{Receipt, SubscriptionId, WebhookId, WorkerId};

/// Who manages a subscription when it is not the REST API (the Kubernetes operator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Owner {
    /// `kubernetes` for subscriptions reconciled from a `WebhookSubscription`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// A subscriber: where deliveries go and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub id: SubscriptionId,
    pub target_url: String,
    /// Event types delivered to this subscriber; empty means every type.
    pub event_types: Vec<String>,
    pub secret: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub max_attempts: Option<u32>,
    pub timeout_ms: Option<u64>,
    /// Delays between attempts, overriding the global schedule.
    pub retry_schedule_ms: Option<Vec<u64>>,
    pub paused: bool,
    pub owner: Option<Owner>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set when Herald stopped delivering to the endpoint (it answered 410 Gone, or every
    /// attempt failed for `HERALD_DISABLE_AFTER`); a PUT or PATCH clears it.
    #[serde(default)]
    pub disabled_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub disabled_reason: Option<String>,
    /// The first failed attempt since the last success; written only on that transition.
    #[serde(default)]
    pub failing_since: Option<DateTime<Utc>>,
    /// The secret before the last rotation, still signing and verifying until it expires.
    #[serde(default)]
    pub previous_secret: Option<String>,
    #[serde(default)]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Bumped by every write to the stored record. A replace applies only while the record is
    /// still at the version it was read at (optimistic concurrency), so a write never reverts
    /// another one made meanwhile (see `SubscriptionStore::replace`). Not shown by the API.
    #[serde(default)]
    pub version: u64,
}

impl Subscription {
    pub fn is_disabled(&self) -> bool {
        self.disabled_at.is_some()
    }

    /// The secrets that sign and verify at `now`, newest first. An expired previous secret is
    /// ignored here rather than removed by a write when it expires.
    pub fn active_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        let mut out = Vec::with_capacity(2);
        if let Some(s) = &self.secret {
            out.push(s.as_str());
        }
        if let (Some(prev), Some(until)) = (&self.previous_secret, self.previous_secret_expires_at)
        {
            if now < until && self.secret.as_deref() != Some(prev.as_str()) {
                out.push(prev.as_str());
            }
        }
        out
    }

    /// When the previous secret stops being valid, if it is still valid at `now`.
    pub fn previous_secret_valid_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.previous_secret
            .as_ref()
            .and(self.previous_secret_expires_at)
            .filter(|until| now < *until)
    }

    pub fn accepts(&self, event_type: Option<&str>) -> bool {
        self.event_types.is_empty()
            || event_type.is_some_and(|t| self.event_types.iter().any(|e| e == t))
    }

    pub fn timeout(&self, default: Duration) -> Duration {
        self.timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(default)
    }

    pub fn retry_schedule(&self) -> Option<Vec<Duration>> {
        self.retry_schedule_ms
            .as_ref()
            .map(|s| s.iter().copied().map(Duration::from_millis).collect())
    }
}

/// One ingested event, stored as the exact bytes received.
#[derive(Debug, Clone)]
pub struct Event {
    pub webhook_id: WebhookId,
    pub event_type: Option<String>,
    pub payload: Bytes,
    pub received_at: DateTime<Utc>,
}

/// Scope and key of an `Idempotency-Key` header: the same pair within
/// [`IDEMPOTENCY_WINDOW`](crate::backend::IDEMPOTENCY_WINDOW) is one ingest, as long as it
/// comes with the same request. The fingerprint tells a retried request (same event
/// type, same body: answered with the first answer) from a different request that reuses the key
/// (refused: dropping it silently would lose an event the producer believes accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The subscription id for `/ingest/{id}`, `events` for fan-out.
    pub scope: String,
    pub key: String,
    /// SHA-256 over the event type and the body, see [`IdempotencyKey::fingerprint`].
    pub fingerprint: [u8; 32],
}

impl IdempotencyKey {
    pub fn new(
        scope: impl Into<String>,
        key: impl Into<String>,
        event_type: Option<&str>,
        body: &[u8],
    ) -> Self {
        Self {
            scope: scope.into(),
            key: key.into(),
            fingerprint: Self::fingerprint(event_type, body),
        }
    }

    /// SHA-256 of the request: the event type, length-prefixed so that no type/body split of
    /// the same bytes collides, and absent distinct from empty; then the body.
    pub fn fingerprint(event_type: Option<&str>, body: &[u8]) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        match event_type {
            None => h.update([0u8]),
            Some(t) => {
                h.update([1u8]);
                h.update((t.len() as u64).to_be_bytes());
                h.update(t.as_bytes());
            }
        }
        h.update(body);
        h.finalize().into()
    }
}

/// What ingest hands to the queue: one event, one delivery per listed subscription.
#[derive(Debug, Clone)]
pub struct Publish {
    pub event: Event,
    pub subscription_ids: Vec<SubscriptionId>,
    pub idempotency: Option<IdempotencyKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    Accepted,
    /// The idempotency key was seen within its window: nothing new was queued.
    Duplicate {
        webhook_id: WebhookId,
        matched: usize,
    },
    /// The idempotency key was seen within its window with a different request (event type or
    /// body): nothing was queued, and the caller must use a new key.
    KeyReused {
        webhook_id: WebhookId,
    },
}

/// A delivery taken off the queue by a worker, holding a lease until settled.
#[derive(Debug, Clone)]
pub struct Job {
    pub webhook_id: WebhookId,
    pub subscription_id: SubscriptionId,
    pub event_type: Option<String>,
    pub payload: Bytes,
    /// The number this attempt will have (1 for the first).
    pub attempt_no: u32,
    /// Set by a manual replay: the number of the attempt after which the delivery fails for
    /// good.
    pub final_attempt_no: Option<u32>,
    /// Backend-specific handle that identifies this lease (the delivery and its lease token)
    /// when settling: a settle under an older lease changes nothing.
    pub receipt: Receipt,
}

/// How a worker finishes a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    Delivered,
    /// The attempt failed; try again at the given time.
    RetryAt(DateTime<Utc>),
    /// The last attempt failed, or the delivery cannot be made at all.
    Failed,
    /// No attempt was made (e.g. the subscription is paused); look again at the given time.
    Defer(DateTime<Utc>),
}

/// How a claimed delivery ends, with the record of the attempt that ended it (none for a
/// deferral, which is no attempt).
#[derive(Debug, Clone)]
pub struct Settlement {
    pub attempt: Option<Attempt>,
    pub webhook_id: WebhookId,
    pub subscription_id: SubscriptionId,
    pub receipt: Receipt,
    /// Attempts made so far, this one included.
    pub attempts_made: u32,
    pub disposition: Disposition,
    pub last_error: Option<String>,
}

/// What a worker asks of one claim. The caps make a claim fair: a subscription never gets more
/// than its free concurrency, so a backlogged subscriber cannot take every slot of a worker.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// Most deliveries to take in all.
    pub max: usize,
    /// How long the claimed deliveries are held without a heartbeat renewing them.
    pub lease: Duration,
    /// The claiming worker: its heartbeats renew the leases, and the reaper frees them once its
    /// heartbeats stop.
    pub worker: WorkerId,
    /// Deliveries one subscription may have in flight with this worker.
    pub per_subscription: usize,
    /// Deliveries this worker has in flight now, per subscription.
    pub in_flight: std::collections::HashMap<SubscriptionId, usize>,
    /// Payload bytes (of distinct payloads) the claim may add; one job is taken even past it.
    pub byte_budget: usize,
}

/// Jobs claimed in one call, and when the next not-yet-due job becomes due.
#[derive(Debug, Default)]
pub struct Claimed {
    pub jobs: Vec<Job>,
    pub next_due: Option<DateTime<Utc>>,
}

// How one attempt ended; its name (`as_str`) is what the API shows and the stores keep. (A
// plain comment: a doc comment here would change the OpenAPI document.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Outcome {
    Success,
    FailedAttempt,
    Failure,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Success, Outcome::FailedAttempt, Outcome::Failure];

    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "Success",
            Outcome::FailedAttempt => "FailedAttempt",
            Outcome::Failure => "Failure",
        }
    }

    /// The `outcome` label of the attempts counter.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::FailedAttempt => "failed_attempt",
            Outcome::Failure => "failure",
        }
    }
}

impl std::str::FromStr for Outcome {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| UnknownName::new("outcome", s))
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored name that names no variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a known {kind}")]
pub struct UnknownName {
    pub kind: &'static str,
    pub name: String,
}

impl UnknownName {
    fn new(kind: &'static str, name: &str) -> Self {
        Self {
            kind,
            name: name.to_string(),
        }
    }
}

/// One delivery attempt, as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    #[schema(value_type = String)]
    pub webhook_id: WebhookId,
    #[schema(value_type = String)]
    pub subscription_id: SubscriptionId,
    pub event_type: Option<String>,
    pub target_url: String,
    pub attempted_at: DateTime<Utc>,
    /// 1 for the first attempt.
    #[serde(rename = "attempt")]
    pub attempt_no: u32,
    pub outcome: Outcome,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
    /// The first 1 KiB of the response body.
    pub response_excerpt: Option<String>,
}

pub const RESPONSE_EXCERPT_BYTES: usize = 1024;

/// Where one delivery (one event to one subscription) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Queued,
    Delivering,
    Succeeded,
    Failed,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 4] = [
        DeliveryState::Queued,
        DeliveryState::Delivering,
        DeliveryState::Succeeded,
        DeliveryState::Failed,
    ];

    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Queued => "queued",
            DeliveryState::Delivering => "delivering",
            DeliveryState::Succeeded => "succeeded",
            DeliveryState::Failed => "failed",
        }
    }
}

impl std::str::FromStr for DeliveryState {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| UnknownName::new("delivery state", s))
    }
}

impl std::fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryStatus {
    #[schema(value_type = String)]
    pub subscription_id: SubscriptionId,
    pub status: DeliveryState,
    // Attempts made so far (not a doc comment: that would change the OpenAPI document).
    #[serde(rename = "attempts")]
    pub attempts_made: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// An ingested event with the state of each of its deliveries.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRecord {
    pub webhook_id: WebhookId,
    pub event_type: Option<String>,
    pub received_at: DateTime<Utc>,
    pub deliveries: Vec<DeliveryStatus>,
}

impl WebhookRecord {
    /// One state for the whole webhook: settled only when every delivery is.
    pub fn status(&self) -> DeliveryState {
        let all = |s| self.deliveries.iter().all(|d| d.status == s);
        if self.deliveries.is_empty() || all(DeliveryState::Succeeded) {
            DeliveryState::Succeeded
        } else if all(DeliveryState::Queued) {
            DeliveryState::Queued
        } else if self
            .deliveries
            .iter()
            .all(|d| matches!(d.status, DeliveryState::Succeeded | DeliveryState::Failed))
        {
            DeliveryState::Failed
        } else {
            DeliveryState::Delivering
        }
    }
}

/// Queue counts for metrics and readiness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct QueueStats {
    /// Deliveries due now, waiting for a worker.
    pub ready: u64,
    /// Deliveries waiting for a retry (or their first attempt) at a later time.
    pub scheduled: u64,
    /// Deliveries held by a worker.
    pub in_flight: u64,
    /// How long the longest-waiting due delivery has been due, in milliseconds (0 when none
    /// is due): deliveries that nobody picks up show here first.
    pub oldest_ready_age_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Equal requests have equal fingerprints; any change of type or body changes it, and
        /// moving bytes between the type and the body does too.
        #[test]
        fn fingerprints_tell_requests_apart(
            t in proptest::option::of("[ -~]{0,12}"),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            split in 0usize..12,
        ) {
            let f = IdempotencyKey::fingerprint;
            proptest::prop_assert_eq!(f(t.as_deref(), &body), f(t.as_deref(), &body));
            let mut other = body.clone();
            other.push(b' ');
            proptest::prop_assert_ne!(f(t.as_deref(), &body), f(t.as_deref(), &other));
            if let Some(t) = &t {
                proptest::prop_assert_ne!(f(None, &body), f(Some(t), &body));
                let cut = split.min(t.len());
                let moved: Vec<u8> = t.as_bytes()[cut..].iter().chain(&body).copied().collect();
                if cut < t.len() {
                    proptest::prop_assert_ne!(f(Some(t), &body), f(Some(&t[..cut]), &moved));
                }
            }
        }
    }

    #[test]
    fn a_previous_secret_is_active_until_it_expires() {
        let now = Utc::now();
        let mut s = crate::testkit::subscription("sub_x");
        assert!(s.active_secrets(now).is_empty());
        s.secret = Some("new-secret-0123456".into());
        s.previous_secret = Some("old-secret-0123456".into());
        s.previous_secret_expires_at = Some(now + chrono::Duration::seconds(1));
        assert_eq!(
            s.active_secrets(now),
            vec!["new-secret-0123456", "old-secret-0123456"]
        );
        assert_eq!(
            s.previous_secret_valid_until(now),
            s.previous_secret_expires_at
        );
        let later = now + chrono::Duration::seconds(1);
        assert_eq!(s.active_secrets(later), vec!["new-secret-0123456"]);
        assert_eq!(s.previous_secret_valid_until(later), None);
    }

    #[test]
    fn stored_documents_without_the_health_fields_still_load() {
        let doc = serde_json::json!({
            "id": "sub_1", "target_url": "https://a.example/", "event_types": [],
            "secret": null, "headers": {}, "max_attempts": null, "timeout_ms": null,
            "retry_schedule_ms": null, "paused": false, "owner": null,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        });
        let s: Subscription = serde_json::from_value(doc).unwrap();
        assert!(!s.is_disabled() && s.failing_since.is_none() && s.previous_secret.is_none());
    }

    #[test]
    fn event_type_matching() {
        let mut s = crate::testkit::subscription("sub_x");
        assert!(s.accepts(None) && s.accepts(Some("a")));
        s.event_types = vec!["order.created".into()];
        assert!(s.accepts(Some("order.created")));
        assert!(!s.accepts(Some("order.paid")) && !s.accepts(None));
    }

    #[test]
    fn names_are_the_serialized_ones_and_parse_back() {
        for o in Outcome::ALL {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
            assert_eq!(o.as_str().parse::<Outcome>(), Ok(o));
            assert_eq!(o.to_string(), o.as_str());
        }
        for d in DeliveryState::ALL {
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
            assert_eq!(d.as_str().parse::<DeliveryState>(), Ok(d));
            assert_eq!(d.to_string(), d.as_str());
        }
        // The stored names, which must never change.
        let names: Vec<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names, ["Success", "FailedAttempt", "Failure"]);
        let labels: Vec<_> = Outcome::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(labels, ["success", "failed_attempt", "failure"]);
        let states: Vec<_> = DeliveryState::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(states, ["queued", "delivering", "succeeded", "failed"]);
        for bad in ["", "success", "FAILURE", "Queued", "done"] {
            assert!(bad.parse::<Outcome>().is_err(), "{bad}");
            assert_eq!(
                bad.parse::<DeliveryState>(),
                Err(UnknownName {
                    kind: "delivery state",
                    name: bad.into()
                })
            );
        }
    }

    #[test]
    fn webhook_status_aggregates_deliveries() {
        let d = |status| DeliveryStatus {
            subscription_id: "s".into(),
            status,
            attempts_made: 0,
            next_attempt_at: None,
            last_error: None,
        };
        let rec = |v: Vec<DeliveryState>| WebhookRecord {
            webhook_id: "m".into(),
            event_type: None,
            received_at: Utc::now(),
            deliveries: v.into_iter().map(d).collect(),
        };
        use DeliveryState::*;
        assert_eq!(rec(vec![Queued, Queued]).status(), Queued);
        assert_eq!(rec(vec![Queued, Succeeded]).status(), Delivering);
        assert_eq!(rec(vec![Succeeded, Succeeded]).status(), Succeeded);
        assert_eq!(rec(vec![Failed, Succeeded]).status(), Failed);
        assert_eq!(rec(vec![Delivering]).status(), Delivering);
    }
}

//! The JSON shapes the API answers with (and documents in its OpenAPI description).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use herald_core::model::{
    Attempt, DeliveryState, DeliveryStatus, Owner, QueueStats, Subscription, WebhookRecord,
};
use herald_core::retry::format_duration;
use herald_core::subscriptions::MASKED_HEADER_VALUE;
use serde::Serialize;
use utoipa::ToSchema;

/// A subscription as the API shows it: the secret is never returned, only whether there is one,
/// and custom header values are masked (they often hold the receiver's credentials).
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    pub id: String,
    pub target_url: String,
    pub event_types: Vec<String>,
    pub has_secret: bool,
    /// Header names with every value shown as `********`. Sending `********` back for a header
    /// in a PUT or PATCH keeps its stored value.
    pub headers: BTreeMap<String, String>,
    pub max_attempts: Option<u32>,
    pub timeout_ms: Option<u64>,
    pub retry_schedule: Option<Vec<String>>,
    pub paused: bool,
    pub owner: Option<Owner>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When Herald stopped delivering to the endpoint (it answered `410 Gone`, or every attempt
    /// failed for `HERALD_DISABLE_AFTER`); null while enabled. A PUT or PATCH re-enables.
    pub disabled_at: Option<DateTime<Utc>>,
    /// Why it was disabled; null while enabled.
    pub disabled_reason: Option<String>,
    /// The first failed attempt of the current run of failures; null after a success.
    pub failing_since: Option<DateTime<Utc>>,
    /// Until when the secret before the last rotation still signs and verifies; null when there
    /// is none or it has expired. The previous secret itself is never shown.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

impl From<Subscription> for SubscriptionView {
    fn from(s: Subscription) -> Self {
        Self {
            previous_secret_expires_at: s.previous_secret_valid_until(Utc::now()),
            has_secret: s.secret.is_some(),
            retry_schedule: s
                .retry_schedule()
                .map(|v| v.into_iter().map(format_duration).collect()),
            id: s.id.into(),
            target_url: s.target_url,
            event_types: s.event_types,
            headers: s
                .headers
                .into_keys()
                .map(|name| (name, MASKED_HEADER_VALUE.to_string()))
                .collect(),
            max_attempts: s.max_attempts,
            timeout_ms: s.timeout_ms,
            paused: s.paused,
            owner: s.owner,
            created_at: s.created_at,
            updated_at: s.updated_at,
            disabled_at: s.disabled_at,
            disabled_reason: s.disabled_reason,
            failing_since: s.failing_since,
        }
    }
}

/// The answer of a secret rotation: the only time the new secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretRotated {
    /// The new secret; store it now, it is never shown again.
    pub secret: String,
    /// Until when the previous secret stays valid; null when the overlap was zero or there was
    /// no previous secret.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub subscription: SubscriptionView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionPage {
    pub data: Vec<SubscriptionView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IngestAccepted {
    pub webhook_id: String,
    /// Always `queued`: the event is durably queued, delivery follows.
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FanoutAccepted {
    pub webhook_id: String,
    /// How many subscriptions the event was queued for.
    pub matched: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookStatus {
    pub webhook_id: String,
    pub event_type: Option<String>,
    pub received_at: DateTime<Utc>,
    pub status: DeliveryState,
    pub deliveries: Vec<DeliveryStatus>,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
}

impl WebhookStatus {
    pub fn new(rec: WebhookRecord, attempts: Vec<Attempt>) -> Self {
        Self {
            status: rec.status(),
            webhook_id: rec.webhook_id.into(),
            event_type: rec.event_type,
            received_at: rec.received_at,
            deliveries: rec.deliveries,
            attempts,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptList {
    pub subscription_id: String,
    /// Newest first.
    pub data: Vec<Attempt>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Requeued {
    pub webhook_id: String,
    pub requeued: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    /// Events ingested by this process since it started.
    pub ingested: u64,
    /// Deliveries that succeeded in this process since it started.
    pub delivered: u64,
    /// Deliveries that failed for good in this process since it started.
    pub failed: u64,
    pub queue: QueueStats,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

//! Fixtures for tests: a subscription, a publish and a claim request with values that do not
//! matter to the test at hand. The behavioural suite every backend must pass is in
//! `herald-testenv` (`suite`).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;

use crate::model::{ClaimRequest, Event, Publish, Subscription};

/// A claim request of `worker` without caps that matter.
pub fn claim_request(worker: &str, max: usize, lease: Duration) -> ClaimRequest {
    ClaimRequest {
        max,
        lease,
        worker: worker.into(),
        per_subscription: 1000,
        in_flight: HashMap::new(),
        byte_budget: usize::MAX,
    }
}

pub fn subscription(id: &str) -> Subscription {
    Subscription {
        id: id.into(),
        target_url: "https://receiver.example/hook".into(),
        event_types: vec![],
        secret: None,
        headers: Default::default(),
        max_attempts: None,
        timeout_ms: None,
        retry_schedule_ms: None,
        paused: false,
        owner: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
        disabled_at: None,
        disabled_reason: None,
        failing_since: None,
        previous_secret: None,
        previous_secret_expires_at: None,
        version: 0,
    }
}

pub fn publish(webhook_id: &str, subs: &[&str], payload: &[u8]) -> Publish {
    Publish {
        event: Event {
            webhook_id: webhook_id.into(),
            event_type: Some("order.created".into()),
            payload: Bytes::copy_from_slice(payload),
            received_at: Utc::now(),
        },
        subscription_ids: subs.iter().map(|s| (*s).into()).collect(),
        idempotency: None,
    }
}

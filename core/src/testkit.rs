//! The behavioural suite every backend must pass. Each check takes a fresh, empty [`Backend`];
//! a backend's integration test calls [`run_all`] with a factory for one.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use chrono::{Duration as ChronoDuration, Utc};

use crate::backend::Backend;
use crate::model::{
    Attempt, DeliveryState, Disposition, Event, IdempotencyKey, Outcome, Publish, PublishOutcome,
    Settlement, Subscription,
};

const LEASE: Duration = Duration::from_secs(60);

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
        subscription_ids: subs.iter().map(|s| s.to_string()).collect(),
        idempotency: None,
    }
}

fn attempt(webhook: &str, sub: &str, n: u32, outcome: Outcome, age: ChronoDuration) -> Attempt {
    Attempt {
        webhook_id: webhook.into(),
        subscription_id: sub.into(),
        event_type: Some("order.created".into()),
        target_url: "https://receiver.example/hook".into(),
        attempted_at: Utc::now() - age,
        attempt: n,
        outcome,
        http_status: Some(500),
        error: Some("HTTP 500".into()),
        duration_ms: 12,
        response_excerpt: Some("oops".into()),
    }
}

fn settle(job: &crate::model::Job, disposition: Disposition) -> Settlement {
    Settlement {
        attempt: None,
        webhook_id: job.webhook_id.clone(),
        subscription_id: job.subscription_id.clone(),
        receipt: job.receipt.clone(),
        attempts: job.attempt,
        disposition,
        last_error: None,
    }
}

/// Runs every check, each on a fresh backend from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Backend>,
{
    subscriptions_crud(make().await).await;
    publish_claim_settle(make().await).await;
    payload_bytes_are_kept_exactly(make().await).await;
    retries_wait_until_due(make().await).await;
    expired_leases_are_reclaimed(make().await).await;
    idempotency_keys_dedupe(make().await).await;
    replay_and_expedite(make().await).await;
    claim_skips_subscriptions(make().await).await;
    attempt_log_order_and_retention(make().await).await;
    purge_keeps_open_deliveries(make().await).await;
}

pub async fn subscriptions_crud(b: Backend) {
    let s = &b.subscriptions;
    s.ping().await.unwrap();
    let mut a = subscription("sub_a");
    s.insert(&a).await.unwrap();
    assert!(matches!(
        s.insert(&a).await,
        Err(crate::StoreError::Conflict(_))
    ));
    s.insert(&subscription("sub_b")).await.unwrap();
    s.insert(&subscription("sub_c")).await.unwrap();
    assert_eq!(s.get("sub_a").await.unwrap().unwrap(), a);
    assert!(s.get("sub_zz").await.unwrap().is_none());
    let page: Vec<_> = s
        .list(2, None)
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(page, vec!["sub_a", "sub_b"]);
    let page: Vec<_> = s
        .list(2, Some("sub_b"))
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(page, vec!["sub_c"]);
    a.target_url = "https://other.example/".into();
    a.event_types = vec!["x.y".into()];
    a.headers.insert("X-Team".into(), "shop".into());
    s.replace(&a).await.unwrap();
    assert_eq!(s.get("sub_a").await.unwrap().unwrap(), a);
    assert!(matches!(
        s.replace(&subscription("sub_missing")).await,
        Err(crate::StoreError::NotFound)
    ));
    assert_eq!(s.list_all().await.unwrap().len(), 3);
    assert!(s.remove("sub_a").await.unwrap());
    assert!(!s.remove("sub_a").await.unwrap());
    assert_eq!(s.list_all().await.unwrap().len(), 2);
}

pub async fn publish_claim_settle(b: Backend) {
    let q = &b.queue;
    q.ping().await.unwrap();
    let out = q
        .publish(publish("msg_1", &["sub_a", "sub_b"], b"{\"n\":1}"))
        .await
        .unwrap();
    assert_eq!(out, PublishOutcome::Accepted);
    let rec = q.webhook("msg_1").await.unwrap().unwrap();
    assert_eq!(rec.status(), DeliveryState::Queued);
    assert_eq!(rec.deliveries.len(), 2);
    assert_eq!(q.stats().await.unwrap().ready, 2);

    let claimed = q.claim(10, LEASE, &[]).await.unwrap();
    assert_eq!(claimed.jobs.len(), 2);
    assert!(claimed.jobs.iter().all(|j| j.attempt == 1));
    assert_eq!(q.claim(10, LEASE, &[]).await.unwrap().jobs.len(), 0);
    assert_eq!(q.stats().await.unwrap().in_flight, 2);
    assert_eq!(
        q.webhook("msg_1").await.unwrap().unwrap().status(),
        DeliveryState::Delivering
    );

    let (a, bb) = (&claimed.jobs[0], &claimed.jobs[1]);
    let mut delivered = settle(a, Disposition::Delivered);
    let mut logged = attempt(
        &a.webhook_id,
        &a.subscription_id,
        1,
        Outcome::Success,
        ChronoDuration::zero(),
    );
    logged.http_status = Some(200);
    // Stores keep milliseconds.
    logged.attempted_at =
        chrono::DateTime::from_timestamp_millis(logged.attempted_at.timestamp_millis()).unwrap();
    delivered.attempt = Some(logged.clone());
    q.settle(vec![delivered, settle(bb, Disposition::Failed)])
        .await
        .unwrap();
    assert_eq!(
        b.attempts.by_webhook("msg_1").await.unwrap(),
        vec![logged],
        "settling logs the attempt it carries"
    );
    let rec = q.webhook("msg_1").await.unwrap().unwrap();
    assert_eq!(rec.status(), DeliveryState::Failed);
    let states: Vec<_> = rec.deliveries.iter().map(|d| d.status).collect();
    assert!(states.contains(&DeliveryState::Succeeded) && states.contains(&DeliveryState::Failed));
    assert_eq!(q.stats().await.unwrap(), Default::default());
    assert!(q.webhook("msg_unknown").await.unwrap().is_none());
}

pub async fn payload_bytes_are_kept_exactly(b: Backend) {
    // Keys with dots and dollars, odd spacing and unicode: stored and returned byte for byte.
    let payload = "{ \"a.b\": 1, \"$set\": {\"x\" :  \"é\\u00e9\"},\n \"n\": 1.50 }".as_bytes();
    b.queue
        .publish(publish("msg_p", &["sub_a"], payload))
        .await
        .unwrap();
    let job = b.queue.claim(1, LEASE, &[]).await.unwrap().jobs.remove(0);
    assert_eq!(&job.payload[..], payload);
    assert_eq!(job.event_type.as_deref(), Some("order.created"));
}

pub async fn retries_wait_until_due(b: Backend) {
    let q = &b.queue;
    q.publish(publish("msg_r", &["sub_a"], b"{}"))
        .await
        .unwrap();
    let job = q.claim(1, LEASE, &[]).await.unwrap().jobs.remove(0);
    let due = Utc::now() + ChronoDuration::milliseconds(300);
    q.settle(vec![settle(&job, Disposition::RetryAt(due))])
        .await
        .unwrap();
    let claimed = q.claim(1, LEASE, &[]).await.unwrap();
    assert!(
        claimed.jobs.is_empty(),
        "a retry is not claimable before it is due"
    );
    let next = claimed.next_due.expect("next due time known");
    assert!((next - due).num_milliseconds().abs() < 5);
    assert_eq!(q.stats().await.unwrap().scheduled, 1);
    let rec = q.webhook("msg_r").await.unwrap().unwrap();
    assert_eq!(rec.deliveries[0].attempts, 1);
    assert!(rec.deliveries[0].next_attempt_at.is_some());
    tokio::time::sleep(Duration::from_millis(350)).await;
    let again = q.claim(1, LEASE, &[]).await.unwrap().jobs;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
}

pub async fn expired_leases_are_reclaimed(b: Backend) {
    let q = &b.queue;
    q.publish(publish("msg_l", &["sub_a"], b"{}"))
        .await
        .unwrap();
    let first = q
        .claim(1, Duration::from_millis(200), &[])
        .await
        .unwrap()
        .jobs;
    assert_eq!(first.len(), 1);
    assert!(q.claim(1, LEASE, &[]).await.unwrap().jobs.is_empty());
    tokio::time::sleep(Duration::from_millis(250)).await;
    let second = q.claim(1, LEASE, &[]).await.unwrap().jobs;
    assert_eq!(second.len(), 1, "a dead worker's lease expires");
    assert_eq!(second[0].webhook_id, "msg_l");
    assert_eq!(
        second[0].attempt, 1,
        "no attempt was recorded by the dead worker"
    );
}

pub async fn idempotency_keys_dedupe(b: Backend) {
    let q = &b.queue;
    let key = IdempotencyKey {
        scope: "sub_a".into(),
        key: "k-1".into(),
    };
    let mut p = publish("msg_i1", &["sub_a"], b"{}");
    p.idempotency = Some(key.clone());
    assert_eq!(q.publish(p).await.unwrap(), PublishOutcome::Accepted);
    let mut p = publish("msg_i2", &["sub_a"], b"{}");
    p.idempotency = Some(key.clone());
    assert_eq!(
        q.publish(p).await.unwrap(),
        PublishOutcome::Duplicate {
            webhook_id: "msg_i1".into(),
            matched: 1
        }
    );
    assert!(q.webhook("msg_i2").await.unwrap().is_none());
    let mut p = publish("msg_i3", &["sub_b"], b"{}");
    p.idempotency = Some(IdempotencyKey {
        scope: "sub_b".into(),
        key: "k-1".into(),
    });
    assert_eq!(q.publish(p).await.unwrap(), PublishOutcome::Accepted);
    assert_eq!(q.claim(10, LEASE, &[]).await.unwrap().jobs.len(), 2);
}

pub async fn replay_and_expedite(b: Backend) {
    let q = &b.queue;
    q.publish(publish("msg_x", &["sub_a"], b"{}"))
        .await
        .unwrap();
    let job = q.claim(1, LEASE, &[]).await.unwrap().jobs.remove(0);
    assert_eq!(q.replay("msg_x").await.unwrap(), 0, "nothing failed yet");
    q.settle(vec![settle(&job, Disposition::Failed)])
        .await
        .unwrap();
    assert_eq!(q.replay("msg_x").await.unwrap(), 1);
    let again = q.claim(1, LEASE, &[]).await.unwrap().jobs.remove(0);
    assert_eq!(again.attempt, 2);
    assert_eq!(again.final_attempt, Some(2));

    q.publish(publish("msg_y", &["sub_b"], b"{}"))
        .await
        .unwrap();
    let job = q.claim(1, LEASE, &[]).await.unwrap().jobs.remove(0);
    let later = Utc::now() + ChronoDuration::hours(1);
    q.settle(vec![settle(&job, Disposition::RetryAt(later))])
        .await
        .unwrap();
    assert!(q.claim(1, LEASE, &[]).await.unwrap().jobs.is_empty());
    q.expedite("sub_b").await.unwrap();
    let now = q.claim(1, LEASE, &[]).await.unwrap().jobs;
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].subscription_id, "sub_b");
}

pub async fn claim_skips_subscriptions(b: Backend) {
    let q = &b.queue;
    for i in 0..3 {
        q.publish(publish(&format!("msg_s{i}"), &["sub_slow"], b"{}"))
            .await
            .unwrap();
    }
    q.publish(publish("msg_f", &["sub_fast"], b"{}"))
        .await
        .unwrap();
    let jobs = q.claim(1, LEASE, &["sub_slow".into()]).await.unwrap().jobs;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].subscription_id, "sub_fast");
}

pub async fn attempt_log_order_and_retention(b: Backend) {
    let log = &b.attempts;
    let h = ChronoDuration::hours;
    log.record(vec![
        attempt("msg_1", "sub_a", 1, Outcome::FailedAttempt, h(80)),
        attempt("msg_1", "sub_a", 2, Outcome::Failure, h(73)),
        attempt("msg_2", "sub_a", 1, Outcome::Success, h(1)),
        attempt("msg_3", "sub_b", 1, Outcome::Success, h(0)),
    ])
    .await
    .unwrap();
    let recent = log.by_subscription("sub_a", 20).await.unwrap();
    assert_eq!(
        recent
            .iter()
            .map(|a| a.webhook_id.as_str())
            .collect::<Vec<_>>(),
        vec!["msg_2", "msg_1", "msg_1"],
        "newest first"
    );
    assert_eq!(recent[2].attempt, 1);
    assert_eq!(log.by_subscription("sub_a", 1).await.unwrap().len(), 1);
    let by_webhook = log.by_webhook("msg_1").await.unwrap();
    assert_eq!(
        by_webhook.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let a = &by_webhook[1];
    assert_eq!(a.outcome, Outcome::Failure);
    assert_eq!(a.http_status, Some(500));
    assert_eq!(a.error.as_deref(), Some("HTTP 500"));
    assert_eq!(a.response_excerpt.as_deref(), Some("oops"));
    assert_eq!(a.duration_ms, 12);
    let deleted = log.delete_older_than(Utc::now() - h(72)).await.unwrap();
    assert_eq!(deleted, 2);
    assert!(log.by_webhook("msg_1").await.unwrap().is_empty());
    assert_eq!(log.by_subscription("sub_a", 20).await.unwrap().len(), 1);
    assert_eq!(log.by_subscription("sub_b", 20).await.unwrap().len(), 1);
}

pub async fn purge_keeps_open_deliveries(b: Backend) {
    let q = &b.queue;
    q.publish(publish("msg_done", &["sub_a"], b"{}"))
        .await
        .unwrap();
    q.publish(publish("msg_open", &["sub_b"], b"{}"))
        .await
        .unwrap();
    let jobs = q.claim(10, LEASE, &[]).await.unwrap().jobs;
    let done = jobs.iter().find(|j| j.webhook_id == "msg_done").unwrap();
    q.settle(vec![settle(done, Disposition::Delivered)])
        .await
        .unwrap();
    // Nothing is older than an hour ago: nothing goes.
    q.purge(Utc::now() - ChronoDuration::hours(1))
        .await
        .unwrap();
    assert!(q.webhook("msg_done").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(5)).await;
    q.purge(Utc::now()).await.unwrap();
    assert!(
        q.webhook("msg_done").await.unwrap().is_none(),
        "settled and old"
    );
    assert!(
        q.webhook("msg_open").await.unwrap().is_some(),
        "still in flight"
    );
}

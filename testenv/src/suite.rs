//! The behavioural suite every backend must pass. Each check takes a fresh, empty [`Backend`];
//! a backend's integration test expands [`backend_suite!`](crate::backend_suite) with a factory
//! for one, which makes each check its own test.

use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};

use herald_core::backend::WorkQueue;
use herald_core::backend::{Backend, ReplaceHealth, IDEMPOTENCY_WINDOW};
use herald_core::model::{
    Attempt, Claimed, DeliveryState, Disposition, IdempotencyKey, Job, Outcome, PublishOutcome,
    Settlement,
};
use herald_core::testkit::{claim_request, publish, subscription};

const LEASE: Duration = Duration::from_secs(60);
const WORKER: &str = "wrk_suite";

async fn claim(q: &std::sync::Arc<dyn WorkQueue>, max: usize, lease: Duration) -> Claimed {
    q.claim(&claim_request(WORKER, max, lease)).await.unwrap()
}

fn attempt(webhook: &str, sub: &str, n: u32, outcome: Outcome, age: ChronoDuration) -> Attempt {
    Attempt {
        webhook_id: webhook.into(),
        subscription_id: sub.into(),
        event_type: Some("order.created".into()),
        target_url: "https://receiver.example/hook".into(),
        attempted_at: Utc::now() - age,
        attempt_no: n,
        outcome,
        http_status: Some(500),
        error: Some("HTTP 500".into()),
        duration_ms: 12,
        response_excerpt: Some("oops".into()),
    }
}

fn settle(job: &herald_core::model::Job, disposition: Disposition) -> Settlement {
    Settlement {
        attempt: None,
        webhook_id: job.webhook_id.clone(),
        subscription_id: job.subscription_id.clone(),
        receipt: job.receipt.clone(),
        attempts_made: job.attempt_no,
        disposition,
        last_error: None,
    }
}

/// What a suite's factory returns: a fresh backend with a guard (e.g. a temporary directory)
/// that lives as long as the check, or `None` when the backend's servers are absent and the
/// check is skipped (the factory prints why, and fails instead in CI).
pub trait Fresh {
    type Guard;
    fn into_option(self) -> Option<(Backend, Self::Guard)>;
}

impl<G> Fresh for (Backend, G) {
    type Guard = G;
    fn into_option(self) -> Option<(Backend, G)> {
        Some(self)
    }
}

impl<G> Fresh for Option<(Backend, G)> {
    type Guard = G;
    fn into_option(self) -> Option<(Backend, G)> {
        self
    }
}

/// What the checks of a store's own clock need beyond the backend's traits: the factory's guard
/// moves the store's record of time back (for the checks listed after `@rewound` in
/// [`backend_suite!`](crate::backend_suite)).
pub trait Rewind {
    /// Makes every idempotency key recorded so far `by` older, as the store reckons its age
    /// (a timestamp moved back, or an expiry brought forward).
    fn age_idempotency_keys(&self, by: Duration) -> impl std::future::Future<Output = ()> + Send;
}

/// Expands into one `#[tokio::test]` per check of the suite. `$make` is an async function
/// returning a [`Fresh`] backend whose guard is a [`Rewind`].
#[macro_export]
macro_rules! backend_suite {
    (@rewound $make:path; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some((backend, guard)) = $crate::suite::Fresh::into_option($make().await)
                else {
                    return;
                };
                $crate::suite::$check(backend, &guard).await;
            }
        )+
    };
    ($make:path) => {
        $crate::backend_suite!(@rewound $make; idempotency_keys_expire_with_the_window);
        $crate::backend_suite!($make;
            subscriptions_crud,
            subscriptions_by_owner,
            publish_claim_settle,
            payload_bytes_are_kept_exactly,
            retries_wait_until_due,
            expired_leases_are_reclaimed,
            stale_settlements_are_fenced,
            heartbeats_renew_leases,
            reaping_frees_only_dead_workers,
            reaped_deliveries_keep_their_place,
            claims_honour_per_subscription_caps,
            claims_serve_subscriptions_in_turn,
            fan_out_shares_one_payload,
            claims_respect_the_byte_budget,
            idempotency_keys_dedupe,
            replay_and_expedite,
            attempt_log_order_and_retention,
            purge_keeps_open_deliveries,
            purge_keeps_events_whose_deliveries_are_open,
            replaces_are_versioned,
            concurrent_writes_lose_nothing,
        );
    };
    ($make:path; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some((backend, _guard)) = $crate::suite::Fresh::into_option($make().await)
                else {
                    return;
                };
                $crate::suite::$check(backend).await;
            }
        )+
    };
}

pub async fn subscriptions_crud(b: Backend) {
    let s = &b.subscriptions;
    s.ping().await.unwrap();
    let mut a = subscription("sub_a");
    s.insert(&a).await.unwrap();
    assert!(matches!(
        s.insert(&a).await,
        Err(herald_core::StoreError::Conflict(_))
    ));
    s.insert(&subscription("sub_b")).await.unwrap();
    s.insert(&subscription("sub_c")).await.unwrap();
    assert_eq!(s.get(&"sub_a".into()).await.unwrap().unwrap(), a);
    assert!(s.get(&"sub_zz".into()).await.unwrap().is_none());
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
    s.replace(&a, ReplaceHealth::Write).await.unwrap();
    a.version += 1;
    assert_eq!(s.get(&"sub_a".into()).await.unwrap().unwrap(), a);
    assert!(matches!(
        s.replace(&subscription("sub_missing"), ReplaceHealth::Write)
            .await,
        Err(herald_core::StoreError::NotFound)
    ));
    assert_eq!(s.list_all().await.unwrap().len(), 3);
    assert!(s.remove(&"sub_a".into()).await.unwrap());
    assert!(!s.remove(&"sub_a".into()).await.unwrap());
    assert_eq!(s.list_all().await.unwrap().len(), 2);
}

/// An owned subscription is found by its owner (kind, namespace and name all count), and
/// follows its record through replace and remove.
pub async fn subscriptions_by_owner(b: Backend) {
    use herald_core::model::Owner;
    let s = &b.subscriptions;
    let owner = |kind: &str, ns: &str, name: &str| Owner {
        kind: kind.into(),
        namespace: ns.into(),
        name: name.into(),
    };
    let shop = owner("kubernetes", "shop", "orders");
    let mut a = subscription("sub_own_a");
    a.owner = Some(shop.clone());
    s.insert(&subscription("sub_own_free")).await.unwrap();
    assert!(s.find_by_owner(&shop).await.unwrap().is_none());
    s.insert(&a).await.unwrap();
    let mut other = subscription("sub_own_b");
    other.owner = Some(owner("kubernetes", "billing", "orders"));
    s.insert(&other).await.unwrap();
    assert_eq!(s.find_by_owner(&shop).await.unwrap().unwrap(), a);
    for miss in [
        owner("kubernetes", "shop", "order"),
        owner("kubernetes", "sho", "orders"),
        owner("other", "shop", "orders"),
    ] {
        assert!(s.find_by_owner(&miss).await.unwrap().is_none(), "{miss:?}");
    }
    a.event_types = vec!["order.paid".into()];
    s.replace(&a, ReplaceHealth::Write).await.unwrap();
    a.version += 1;
    assert_eq!(s.find_by_owner(&shop).await.unwrap().unwrap(), a);
    assert!(s.remove(&a.id).await.unwrap());
    assert!(s.find_by_owner(&shop).await.unwrap().is_none());
    assert_eq!(
        s.find_by_owner(&other.owner.clone().unwrap())
            .await
            .unwrap()
            .unwrap()
            .id,
        "sub_own_b"
    );
}

pub async fn publish_claim_settle(b: Backend) {
    let q = &b.queue;
    b.intake.ping().await.unwrap();
    let out = b
        .intake
        .publish(publish("msg_1", &["sub_a", "sub_b"], b"{\"n\":1}"))
        .await
        .unwrap();
    assert_eq!(out, PublishOutcome::Accepted);
    let rec = b.intake.webhook("msg_1").await.unwrap().unwrap();
    assert_eq!(rec.status(), DeliveryState::Queued);
    assert_eq!(rec.deliveries.len(), 2);
    assert_eq!(b.intake.stats().await.unwrap().ready, 2);
    // Due and not picked up: the oldest ready delivery's wait shows (the on-call's alert).
    tokio::time::sleep(Duration::from_millis(150)).await;
    let waited = b.intake.stats().await.unwrap().oldest_ready_age_ms;
    assert!((150..60_000).contains(&waited), "{waited} ms");

    let claimed = claim(q, 10, LEASE).await;
    assert_eq!(claimed.jobs.len(), 2);
    assert!(claimed.jobs.iter().all(|j| j.attempt_no == 1));
    assert_eq!(claim(q, 10, LEASE).await.jobs.len(), 0);
    assert_eq!(b.intake.stats().await.unwrap().in_flight, 2);
    assert_eq!(
        b.intake.webhook("msg_1").await.unwrap().unwrap().status(),
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
    let rec = b.intake.webhook("msg_1").await.unwrap().unwrap();
    assert_eq!(rec.status(), DeliveryState::Failed);
    let states: Vec<_> = rec.deliveries.iter().map(|d| d.status).collect();
    assert!(states.contains(&DeliveryState::Succeeded) && states.contains(&DeliveryState::Failed));
    assert_eq!(b.intake.stats().await.unwrap(), Default::default());
    assert!(b.intake.webhook("msg_unknown").await.unwrap().is_none());
}

pub async fn payload_bytes_are_kept_exactly(b: Backend) {
    // Keys with dots and dollars, odd spacing and unicode: stored and returned byte for byte.
    let payload = "{ \"a.b\": 1, \"$set\": {\"x\" :  \"é\\u00e9\"},\n \"n\": 1.50 }".as_bytes();
    b.intake
        .publish(publish("msg_p", &["sub_a"], payload))
        .await
        .unwrap();
    let job = claim(&b.queue, 1, LEASE).await.jobs.remove(0);
    assert_eq!(&job.payload[..], payload);
    assert_eq!(job.event_type.as_deref(), Some("order.created"));
}

pub async fn retries_wait_until_due(b: Backend) {
    let q = &b.queue;
    b.intake
        .publish(publish("msg_r", &["sub_a"], b"{}"))
        .await
        .unwrap();
    let job = claim(q, 1, LEASE).await.jobs.remove(0);
    let due = Utc::now() + ChronoDuration::milliseconds(300);
    q.settle(vec![settle(&job, Disposition::RetryAt(due))])
        .await
        .unwrap();
    let claimed = claim(q, 1, LEASE).await;
    assert!(
        claimed.jobs.is_empty(),
        "a retry is not claimable before it is due"
    );
    let next = claimed.next_due.expect("next due time known");
    assert!((next - due).num_milliseconds().abs() < 5);
    assert_eq!(b.intake.stats().await.unwrap().scheduled, 1);
    let rec = b.intake.webhook("msg_r").await.unwrap().unwrap();
    assert_eq!(rec.deliveries[0].attempts_made, 1);
    assert!(rec.deliveries[0].next_attempt_at.is_some());
    tokio::time::sleep(Duration::from_millis(350)).await;
    let again = claim(q, 1, LEASE).await.jobs;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt_no, 2);
}

pub async fn expired_leases_are_reclaimed(b: Backend) {
    let q = &b.queue;
    b.intake
        .publish(publish("msg_l", &["sub_a"], b"{}"))
        .await
        .unwrap();
    let first = claim(q, 1, Duration::from_millis(200)).await.jobs;
    assert_eq!(first.len(), 1);
    assert!(claim(q, 1, LEASE).await.jobs.is_empty());
    tokio::time::sleep(Duration::from_millis(250)).await;
    let second = claim(q, 1, LEASE).await.jobs;
    assert_eq!(second.len(), 1, "a dead worker's lease expires");
    assert_eq!(second[0].webhook_id, "msg_l");
    assert_eq!(
        second[0].attempt_no, 1,
        "no attempt was recorded by the dead worker"
    );
}

pub async fn idempotency_keys_dedupe(b: Backend) {
    let q = &b.queue;
    let key = IdempotencyKey::new("sub_a", "k-1", None, b"{}");
    let mut p = publish("msg_i1", &["sub_a"], b"{}");
    p.idempotency = Some(key.clone());
    assert_eq!(b.intake.publish(p).await.unwrap(), PublishOutcome::Accepted);
    let mut p = publish("msg_i2", &["sub_a"], b"{}");
    p.idempotency = Some(key.clone());
    assert_eq!(
        b.intake.publish(p).await.unwrap(),
        PublishOutcome::Duplicate {
            webhook_id: "msg_i1".into(),
            matched: 1
        }
    );
    assert!(b.intake.webhook("msg_i2").await.unwrap().is_none());
    // The same key with another body or event type is refused and queues nothing.
    for other in [
        IdempotencyKey::new("sub_a", "k-1", None, b"{\"a\":1}"),
        IdempotencyKey::new("sub_a", "k-1", Some("t"), b"{}"),
    ] {
        let mut p = publish("msg_i4", &["sub_a"], b"{}");
        p.idempotency = Some(other);
        assert_eq!(
            b.intake.publish(p).await.unwrap(),
            PublishOutcome::KeyReused {
                webhook_id: "msg_i1".into()
            }
        );
        assert!(b.intake.webhook("msg_i4").await.unwrap().is_none());
    }
    let mut p = publish("msg_i3", &["sub_b"], b"{}");
    p.idempotency = Some(IdempotencyKey::new("sub_b", "k-1", None, b"{}"));
    assert_eq!(b.intake.publish(p).await.unwrap(), PublishOutcome::Accepted);
    assert_eq!(claim(q, 10, LEASE).await.jobs.len(), 2);
}

/// Every store keeps core's [`IDEMPOTENCY_WINDOW`]: a key a minute short of it still answers
/// the first event, and a minute past it the key is free for a new event (held anew from then).
pub async fn idempotency_keys_expire_with_the_window(b: Backend, clock: &impl Rewind) {
    const MINUTE: Duration = Duration::from_secs(60);
    let key = IdempotencyKey::new("sub_a", "k-window", None, b"{}");
    let keyed = |id: &str| {
        let mut p = publish(id, &["sub_a"], b"{}");
        p.idempotency = Some(key.clone());
        p
    };
    let duplicate_of = |id: &str| PublishOutcome::Duplicate {
        webhook_id: id.into(),
        matched: 1,
    };
    let q = &b.intake;
    assert_eq!(
        q.publish(keyed("msg_w1")).await.unwrap(),
        PublishOutcome::Accepted
    );
    clock
        .age_idempotency_keys(IDEMPOTENCY_WINDOW - MINUTE)
        .await;
    assert_eq!(
        q.publish(keyed("msg_w2")).await.unwrap(),
        duplicate_of("msg_w1"),
        "a key younger than the window holds"
    );
    clock.age_idempotency_keys(2 * MINUTE).await;
    assert_eq!(
        q.publish(keyed("msg_w3")).await.unwrap(),
        PublishOutcome::Accepted,
        "a key older than the window is free again"
    );
    assert_eq!(
        q.publish(keyed("msg_w4")).await.unwrap(),
        duplicate_of("msg_w3")
    );
    let mut queued: Vec<String> = claim(&b.queue, 10, LEASE)
        .await
        .jobs
        .into_iter()
        .map(|j| j.webhook_id.to_string())
        .collect();
    queued.sort();
    assert_eq!(queued, ["msg_w1", "msg_w3"]);
}

pub async fn replay_and_expedite(b: Backend) {
    let q = &b.queue;
    b.intake
        .publish(publish("msg_x", &["sub_a"], b"{}"))
        .await
        .unwrap();
    let job = claim(q, 1, LEASE).await.jobs.remove(0);
    assert_eq!(
        b.intake.replay("msg_x").await.unwrap(),
        0,
        "nothing failed yet"
    );
    q.settle(vec![settle(&job, Disposition::Failed)])
        .await
        .unwrap();
    assert_eq!(b.intake.replay("msg_x").await.unwrap(), 1);
    let again = claim(q, 1, LEASE).await.jobs.remove(0);
    assert_eq!(again.attempt_no, 2);
    assert_eq!(again.final_attempt_no, Some(2));

    b.intake
        .publish(publish("msg_y", &["sub_b"], b"{}"))
        .await
        .unwrap();
    let job = claim(q, 1, LEASE).await.jobs.remove(0);
    let later = Utc::now() + ChronoDuration::hours(1);
    q.settle(vec![settle(&job, Disposition::RetryAt(later))])
        .await
        .unwrap();
    assert!(claim(q, 1, LEASE).await.jobs.is_empty());
    b.intake.expedite("sub_b").await.unwrap();
    let now = claim(q, 1, LEASE).await.jobs;
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].subscription_id, "sub_b");
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
    assert_eq!(recent[2].attempt_no, 1);
    assert_eq!(log.by_subscription("sub_a", 1).await.unwrap().len(), 1);
    let by_webhook = log.by_webhook("msg_1").await.unwrap();
    assert_eq!(
        by_webhook.iter().map(|a| a.attempt_no).collect::<Vec<_>>(),
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
    b.intake
        .publish(publish("msg_done", &["sub_a"], b"{}"))
        .await
        .unwrap();
    b.intake
        .publish(publish("msg_open", &["sub_b"], b"{}"))
        .await
        .unwrap();
    let jobs = claim(q, 10, LEASE).await.jobs;
    let done = jobs.iter().find(|j| j.webhook_id == "msg_done").unwrap();
    q.settle(vec![settle(done, Disposition::Delivered)])
        .await
        .unwrap();
    // Nothing is older than an hour ago: nothing goes.
    q.purge(Utc::now() - ChronoDuration::hours(1))
        .await
        .unwrap();
    assert!(b.intake.webhook("msg_done").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(5)).await;
    q.purge(Utc::now()).await.unwrap();
    assert!(
        b.intake.webhook("msg_done").await.unwrap().is_none(),
        "settled and old"
    );
    assert!(
        b.intake.webhook("msg_open").await.unwrap().is_some(),
        "still in flight"
    );
}

/// An event older than the retention whose delivery is still open (waiting for a retry, then
/// for a paused subscription) survives every sweep; once the delivery ends, the webhook can
/// still be read and replayed.
pub async fn purge_keeps_events_whose_deliveries_are_open(b: Backend) {
    let q = &b.queue;
    let payload = b"{\"kept\": true}";
    b.intake
        .publish(publish("msg_kept", &["sub_slow"], payload))
        .await
        .unwrap();
    let soon = || Utc::now() + ChronoDuration::milliseconds(200);
    // Attempt 1 fails; the retry waits (a long retry schedule).
    let job = claim(q, 1, LEASE).await.jobs.remove(0);
    let mut retry = settle(&job, Disposition::RetryAt(soon()));
    retry.attempt = Some(attempt(
        "msg_kept",
        "sub_slow",
        1,
        Outcome::FailedAttempt,
        ChronoDuration::zero(),
    ));
    retry.attempts_made = 1;
    q.settle(vec![retry]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Everything received until now is past the retention.
    q.purge(Utc::now()).await.unwrap();
    assert!(b.intake.webhook("msg_kept").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(250)).await;
    // The subscription is paused: the delivery is deferred, unattempted.
    let job = claim(q, 1, LEASE).await.jobs.remove(0);
    assert_eq!(job.attempt_no, 2);
    q.settle(vec![settle(&job, Disposition::Defer(soon()))])
        .await
        .unwrap();
    q.purge(Utc::now()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Resumed: attempt 2 fails for good.
    let job = claim(q, 1, LEASE).await.jobs.remove(0);
    assert_eq!(&job.payload[..], payload);
    let mut failed = settle(&job, Disposition::Failed);
    failed.attempt = Some(attempt(
        "msg_kept",
        "sub_slow",
        2,
        Outcome::Failure,
        ChronoDuration::zero(),
    ));
    failed.attempts_made = 2;
    failed.last_error = Some("HTTP 500".into());
    q.settle(vec![failed]).await.unwrap();
    let rec = b
        .intake
        .webhook("msg_kept")
        .await
        .unwrap()
        .expect("an event kept while its delivery was open can be read after it ended");
    assert_eq!(rec.status(), DeliveryState::Failed);
    assert_eq!(
        b.intake.replay("msg_kept").await.unwrap(),
        1,
        "and replayed"
    );
    let again = claim(q, 1, LEASE).await.jobs.remove(0);
    assert_eq!((again.attempt_no, &again.payload[..]), (3, &payload[..]));
}

fn success(job: &Job) -> Settlement {
    let mut s = settle(job, Disposition::Delivered);
    let mut a = attempt(
        &job.webhook_id,
        &job.subscription_id,
        job.attempt_no,
        Outcome::Success,
        ChronoDuration::zero(),
    );
    a.http_status = Some(200);
    s.attempt = Some(a);
    s
}

pub async fn stale_settlements_are_fenced(b: Backend) {
    let q = &b.queue;
    b.intake
        .publish(publish("msg_fence", &["sub_a"], b"{}"))
        .await
        .unwrap();
    let old = claim(q, 1, Duration::from_millis(200)).await.jobs.remove(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = claim(q, 1, LEASE).await.jobs.remove(0);
    assert_eq!(new.webhook_id, "msg_fence");
    assert_ne!(old.receipt, new.receipt, "every claim is a new lease");

    assert_eq!(q.settle(vec![success(&old)]).await.unwrap(), 1, "stale");
    assert!(
        b.attempts.by_webhook("msg_fence").await.unwrap().is_empty(),
        "a stale settlement logs no attempt"
    );
    let rec = b.intake.webhook("msg_fence").await.unwrap().unwrap();
    assert_eq!(rec.status(), DeliveryState::Delivering, "nothing changed");
    assert_eq!(b.intake.stats().await.unwrap().in_flight, 1);

    assert_eq!(q.settle(vec![success(&new)]).await.unwrap(), 0);
    let rec = b.intake.webhook("msg_fence").await.unwrap().unwrap();
    assert_eq!(rec.status(), DeliveryState::Succeeded);
    assert_eq!(b.attempts.by_webhook("msg_fence").await.unwrap().len(), 1);
    // Settling twice under the same lease is stale too: a settled delivery never goes back.
    let again = settle(&new, Disposition::RetryAt(Utc::now()));
    assert_eq!(q.settle(vec![again]).await.unwrap(), 1);
    let rec = b.intake.webhook("msg_fence").await.unwrap().unwrap();
    assert_eq!(rec.status(), DeliveryState::Succeeded);
}

pub async fn heartbeats_renew_leases(b: Backend) {
    let q = &b.queue;
    b.intake
        .publish(publish("msg_hb", &["sub_a", "sub_b"], b"{}"))
        .await
        .unwrap();
    let short = Duration::from_millis(300);
    let held = q
        .claim(&claim_request("wrk_live", 10, short))
        .await
        .unwrap()
        .jobs;
    assert_eq!(held.len(), 2);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(q.heartbeat("wrk_live", short).await.unwrap(), 2);
    }
    // 600 ms after a 300 ms lease began: renewed, so nobody else may take the deliveries, and
    // a live worker is not reaped.
    assert_eq!(q.reap(Duration::from_secs(10)).await.unwrap(), 0);
    let other = q
        .claim(&claim_request("wrk_other", 10, LEASE))
        .await
        .unwrap();
    assert!(other.jobs.is_empty(), "renewed leases hold");
    assert_eq!(b.intake.stats().await.unwrap().in_flight, 2);
    // Once settled, a delivery is no longer renewed.
    q.settle(vec![success(&held[0])]).await.unwrap();
    assert_eq!(q.heartbeat("wrk_live", short).await.unwrap(), 1);
    // Without heartbeats the lease still ends: it is the hard cap.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let taken = q
        .claim(&claim_request("wrk_other", 10, LEASE))
        .await
        .unwrap()
        .jobs;
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].subscription_id, held[1].subscription_id);
}

pub async fn reaping_frees_only_dead_workers(b: Backend) {
    let q = &b.queue;
    b.intake
        .publish(publish("msg_dead", &["sub_a", "sub_b"], b"{}"))
        .await
        .unwrap();
    let dead = q
        .claim(&claim_request("wrk_dead", 2, LEASE))
        .await
        .unwrap()
        .jobs;
    assert_eq!(dead.len(), 2);
    b.intake
        .publish(publish("msg_live", &["sub_c"], b"{}"))
        .await
        .unwrap();
    let live = q
        .claim(&claim_request("wrk_live", 10, LEASE))
        .await
        .unwrap()
        .jobs;
    assert_eq!(live.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    q.heartbeat("wrk_live", LEASE).await.unwrap();
    assert_eq!(q.reap(Duration::from_millis(200)).await.unwrap(), 2);
    assert_eq!(q.reap(Duration::from_millis(200)).await.unwrap(), 0);
    let rec = b.intake.webhook("msg_dead").await.unwrap().unwrap();
    assert_eq!(
        rec.status(),
        DeliveryState::Queued,
        "back in the queue, due now"
    );
    let again = q
        .claim(&claim_request("wrk_live", 10, LEASE))
        .await
        .unwrap()
        .jobs;
    assert_eq!(
        again.len(),
        2,
        "a dead worker's deliveries are claimable at once"
    );
    assert!(again
        .iter()
        .all(|j| j.webhook_id == "msg_dead" && j.attempt_no == 1));
    // The dead worker's late settlements are stale; the live worker's lease was untouched.
    let late: Vec<_> = dead.iter().map(success).collect();
    assert_eq!(q.settle(late).await.unwrap(), 2);
    assert_eq!(q.settle(vec![success(&live[0])]).await.unwrap(), 0);
    assert!(b.attempts.by_webhook("msg_dead").await.unwrap().is_empty());
}

/// A dead worker's delivery goes back to where it was in its queue, not behind what was
/// queued while it was held: otherwise a backlog and a slow receiver push its next attempt past
/// the recovery bound.
pub async fn reaped_deliveries_keep_their_place(b: Backend) {
    let q = &b.queue;
    // Named so that an order by id would put it last.
    b.intake
        .publish(publish("msg_z_held", &["sub_a"], b"{}"))
        .await
        .unwrap();
    let held = q
        .claim(&claim_request("wrk_dead", 1, LEASE))
        .await
        .unwrap()
        .jobs;
    assert_eq!(held.len(), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    for i in 0..3 {
        b.intake
            .publish(publish(&format!("msg_a_later{i}"), &["sub_a"], b"{}"))
            .await
            .unwrap();
    }
    // Queued now, before the reap (a count fans out what a transport holds back until then).
    assert_eq!(b.intake.stats().await.unwrap().ready, 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(q.reap(Duration::from_millis(200)).await.unwrap(), 1);
    let next = q
        .claim(&claim_request("wrk_live", 1, LEASE))
        .await
        .unwrap()
        .jobs;
    assert_eq!(next.len(), 1);
    assert_eq!(
        next[0].webhook_id, "msg_z_held",
        "the returned delivery is first in its queue again"
    );
}

pub async fn claims_honour_per_subscription_caps(b: Backend) {
    let q = &b.queue;
    for i in 0..10 {
        b.intake
            .publish(publish(&format!("msg_a{i}"), &["sub_a"], b"{}"))
            .await
            .unwrap();
    }
    for i in 0..3 {
        b.intake
            .publish(publish(&format!("msg_b{i}"), &["sub_b"], b"{}"))
            .await
            .unwrap();
    }
    b.intake
        .publish(publish("msg_c", &["sub_c"], b"{}"))
        .await
        .unwrap();
    let mut req = claim_request(WORKER, 100, LEASE);
    req.per_subscription = 2;
    req.in_flight.insert("sub_a".into(), 1);
    req.in_flight.insert("sub_c".into(), 2);
    let jobs = q.claim(&req).await.unwrap().jobs;
    let count = |s: &str| jobs.iter().filter(|j| j.subscription_id == s).count();
    assert_eq!(count("sub_a"), 1, "free concurrency of sub_a");
    assert_eq!(count("sub_b"), 2);
    assert_eq!(count("sub_c"), 0, "saturated");
    // Within a subscription the earliest deliveries go first.
    assert!(jobs.iter().any(|j| j.webhook_id == "msg_a0"));
    // A saturated subscription's due rows do not count as work to wake up for.
    let mut req = claim_request(WORKER, 100, LEASE);
    req.per_subscription = 1;
    req.in_flight = ["sub_a", "sub_b", "sub_c"]
        .iter()
        .map(|s| ((*s).into(), 1))
        .collect();
    let none = q.claim(&req).await.unwrap();
    assert!(none.jobs.is_empty());
    assert!(none.next_due.is_none_or(|d| d > Utc::now()));
}

pub async fn claims_serve_subscriptions_in_turn(b: Backend) {
    let q = &b.queue;
    for i in 0..50 {
        b.intake
            .publish(publish(&format!("msg_big{i}"), &["sub_a_big"], b"{}"))
            .await
            .unwrap();
    }
    b.intake
        .publish(publish("msg_small", &["sub_b_small"], b"{}"))
        .await
        .unwrap();
    // Two claims of three: the subscription behind the backlog is served by the second.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let mut req = claim_request(WORKER, 3, LEASE);
        req.per_subscription = 16;
        seen.extend(q.claim(&req).await.unwrap().jobs);
    }
    assert!(
        seen.iter().any(|j| j.subscription_id == "sub_b_small"),
        "a backlog does not hold every claim"
    );
    fair_turns_within_caps(&b).await;
}

/// The fairness rule of `WorkQueue::claim`, which the SQLite claim and the Redis lease script
/// each implement: claims of one job take three backlogged subscriptions in turn (none twice
/// before the others once), and stop at each one's cap of two in flight.
async fn fair_turns_within_caps(b: &Backend) {
    const SUBS: [&str; 3] = ["sub_turn_a", "sub_turn_b", "sub_turn_c"];
    for sub in SUBS {
        for i in 0..4 {
            b.intake
                .publish(publish(&format!("msg_{sub}_{i}"), &[sub], b"{}"))
                .await
                .unwrap();
        }
    }
    let mut req = claim_request(WORKER, 1, LEASE);
    req.per_subscription = 2;
    // Leftovers of the backlog above take their turns too: they are held here, at the cap.
    let mut turns = Vec::new();
    loop {
        let jobs = b.queue.claim(&req).await.unwrap().jobs;
        let [job] = &jobs[..] else {
            assert!(jobs.is_empty(), "{} jobs in a claim of one", jobs.len());
            break;
        };
        *req.in_flight
            .entry(job.subscription_id.clone())
            .or_default() += 1;
        if SUBS.contains(&job.subscription_id.as_str()) {
            turns.push(job.subscription_id.clone());
        }
        assert!(turns.len() <= 6, "claims went past the caps: {turns:?}");
    }
    assert_eq!(turns.len(), 6, "two of each, up to the caps: {turns:?}");
    for (i, window) in turns.windows(3).enumerate() {
        assert!(
            window[0] != window[1] && window[1] != window[2] && window[0] != window[2],
            "claim {i} served a subscription twice before the others once: {turns:?}"
        );
    }
    for sub in SUBS {
        assert_eq!(req.in_flight[sub], 2, "{sub} is held at its cap: {turns:?}");
    }
    // Raising a cap frees exactly that much, for that subscription only.
    req.max = 10;
    req.in_flight.insert(SUBS[1].into(), 1);
    let freed = b.queue.claim(&req).await.unwrap().jobs;
    let subs: Vec<_> = freed.iter().map(|j| j.subscription_id.as_str()).collect();
    assert_eq!(subs, [SUBS[1]]);
}

pub async fn fan_out_shares_one_payload(b: Backend) {
    let q = &b.queue;
    let subs: Vec<String> = (0..20).map(|i| format!("sub_{i:02}")).collect();
    let refs: Vec<&str> = subs.iter().map(String::as_str).collect();
    let payload = vec![b'x'; 64 * 1024];
    b.intake
        .publish(publish("msg_fan", &refs, &payload))
        .await
        .unwrap();
    b.intake
        .publish(publish("msg_other", &["sub_00"], b"{}"))
        .await
        .unwrap();
    let jobs = claim(q, 100, LEASE).await.jobs;
    assert_eq!(jobs.len(), 21);
    let fan: Vec<_> = jobs.iter().filter(|j| j.webhook_id == "msg_fan").collect();
    assert_eq!(fan.len(), 20);
    assert!(fan.iter().all(|j| j.payload == payload[..]));
    let ptr = fan[0].payload.as_ptr();
    assert!(
        fan.iter().all(|j| j.payload.as_ptr() == ptr),
        "one buffer for every job of one event"
    );
}

pub async fn claims_respect_the_byte_budget(b: Backend) {
    let q = &b.queue;
    let kib = vec![b'y'; 1000];
    for i in 0..3 {
        b.intake
            .publish(publish(
                &format!("msg_kib{i}"),
                &[&format!("sub_{i}")],
                &kib,
            ))
            .await
            .unwrap();
    }
    let mut req = claim_request(WORKER, 10, LEASE);
    req.byte_budget = 2500;
    assert_eq!(q.claim(&req).await.unwrap().jobs.len(), 2, "2000 bytes fit");
    req.byte_budget = 0;
    assert_eq!(
        q.claim(&req).await.unwrap().jobs.len(),
        1,
        "one job even past the budget"
    );
    // Jobs sharing a payload already loaded cost nothing more.
    b.intake
        .publish(publish("msg_shared", &["sub_x", "sub_y", "sub_z"], &kib))
        .await
        .unwrap();
    req.byte_budget = 1000;
    assert_eq!(q.claim(&req).await.unwrap().jobs.len(), 3);
}

/// A replace applies only to the version it read. A health write changes only its fields and
/// leaves the version alone; a later replace keeps the stored health (`Keep`) or writes its
/// own (`Write`), never the health it read before.
pub async fn replaces_are_versioned(b: Backend) {
    use herald_core::backend::HealthChange;
    let s = &b.subscriptions;
    let mut a = subscription("sub_v");
    s.insert(&a).await.unwrap();
    let stale = a.clone();
    a.event_types = vec!["one".into()];
    s.replace(&a, ReplaceHealth::Write).await.unwrap();
    let stored = s.get(&"sub_v".into()).await.unwrap().unwrap();
    assert_eq!((stored.version, &stored.event_types), (1, &a.event_types));
    assert!(
        matches!(
            s.replace(&stale, ReplaceHealth::Keep).await,
            Err(herald_core::StoreError::Conflict(_))
        ),
        "a replace based on version 0 after version 1 was written"
    );
    let since = chrono::DateTime::from_timestamp(1_800_000_000, 123_456_789).unwrap();
    assert!(s
        .record_health(&"sub_v".into(), &HealthChange::FailingSince(Some(since)))
        .await
        .unwrap());
    let stored = s.get(&"sub_v".into()).await.unwrap().unwrap();
    assert_eq!(stored.failing_since, Some(since));
    assert_eq!(stored.event_types, a.event_types, "only the health fields");
    assert_eq!(stored.version, 1);
    // A rotation read before the health write keeps it.
    let mut rotated = a.clone();
    rotated.version = 1;
    rotated.secret = Some("rotated-secret-0123456789".into());
    rotated.updated_at = chrono::DateTime::from_timestamp(1_800_000_100, 0).unwrap();
    s.replace(&rotated, ReplaceHealth::Keep).await.unwrap();
    let stored = s.get(&"sub_v".into()).await.unwrap().unwrap();
    assert_eq!(stored.failing_since, Some(since), "health kept");
    assert_eq!(stored.secret, rotated.secret);
    assert_eq!(stored.updated_at, rotated.updated_at);
    assert_eq!(stored.version, 2);
    let disable = HealthChange::Disable {
        at: since,
        reason: "gone".into(),
    };
    assert!(s.record_health(&"sub_v".into(), &disable).await.unwrap());
    assert!(
        !s.record_health(&"sub_v".into(), &disable).await.unwrap(),
        "disabled once"
    );
    let stored = s.get(&"sub_v".into()).await.unwrap().unwrap();
    assert_eq!(stored.disabled_reason.as_deref(), Some("gone"));
    assert_eq!(stored.disabled_at, Some(since));
    // A PUT writes its own health: cleared, the subscription is enabled again.
    let mut put = stored.clone();
    put.failing_since = None;
    put.disabled_at = None;
    put.disabled_reason = None;
    s.replace(&put, ReplaceHealth::Write).await.unwrap();
    let stored = s.get(&"sub_v".into()).await.unwrap().unwrap();
    assert!(!stored.is_disabled() && stored.failing_since.is_none());
    assert_eq!(stored.version, 3);
    assert!(!s
        .record_health(&"sub_gone".into(), &HealthChange::FailingSince(None))
        .await
        .unwrap());
}

/// Rotations, PATCHes and two delivery workers' health writes race on one subscription through
/// the subscription service: none is lost. Each rotation finds the secret the previous one set
/// (else a health write or a PATCH reverted it), each PATCH's change is still there when the
/// next one starts, and the last of each is in the final record.
pub async fn concurrent_writes_lose_nothing(b: Backend) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use herald_core::cache::SubscriptionCache;
    use herald_core::spec::{SubscriptionPatch, SubscriptionSpec};
    use herald_core::subscriptions::{Caller, Subscriptions};

    const ROUNDS: usize = 40;
    let service = |b: &Backend| {
        let cache = Arc::new(SubscriptionCache::for_backend(b));
        Arc::new(Subscriptions::new(
            cache,
            b.intake.clone(),
            herald_core::ssrf::TargetGuard::new(Vec::new()),
        ))
    };
    let api = service(&b);
    let mut spec = SubscriptionSpec::of(&subscription("x"));
    spec.secret = Some("first-secret-0123456789".into());
    let id = api.create(&spec, None).await.unwrap().id;
    let done = Arc::new(AtomicBool::new(false));
    let health_writes = Arc::new(AtomicUsize::new(0));
    // Two delivery workers of a flapping endpoint, each with its own service (and cache).
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (svc, id, done, n) = (service(&b), id.clone(), done.clone(), health_writes.clone());
            tokio::spawn(async move {
                let mut i = 0i64;
                while !done.load(Ordering::Relaxed) {
                    i += 1;
                    let since = (i % 2 == 0).then(|| {
                        chrono::DateTime::from_timestamp(1_800_000_000 + i * 2 + w, 0).unwrap()
                    });
                    svc.set_failing_since(&id, since).await.unwrap();
                    n.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let rotator = {
        let (svc, id) = (api.clone(), id.clone());
        tokio::spawn(async move {
            let mut last = "first-secret-0123456789".to_string();
            let mut lost = 0;
            for i in 0..ROUNDS {
                let next = format!("rotated-secret-{i:04}-0123456789");
                let r = svc
                    .rotate_secret(&id, Some(next.clone()), None, &Caller::Api)
                    .await
                    .unwrap();
                if r.subscription.previous_secret.as_deref() != Some(last.as_str()) {
                    lost += 1;
                }
                last = next;
            }
            (lost, last)
        })
    };
    let patcher = {
        let (svc, id) = (api.clone(), id.clone());
        tokio::spawn(async move {
            let mut lost = 0;
            let mut last = Vec::new();
            for i in 0..ROUNDS {
                if svc.get(&id).await.unwrap().event_types != last {
                    lost += 1;
                }
                last = vec![format!("order.v{i}")];
                let patch: SubscriptionPatch =
                    serde_json::from_value(serde_json::json!({ "event_types": last })).unwrap();
                svc.patch(&id, patch, &Caller::Api).await.unwrap();
            }
            (lost, last)
        })
    };
    let (lost_rotations, secret) = rotator.await.unwrap();
    let (lost_patches, event_types) = patcher.await.unwrap();
    done.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(
        health_writes.load(Ordering::Relaxed) > ROUNDS,
        "the health writes raced the others"
    );
    assert_eq!(
        (lost_rotations, lost_patches),
        (0, 0),
        "rotations and PATCHes reverted by a concurrent write"
    );
    let last = api.get(&id).await.unwrap();
    assert_eq!(last.secret.as_deref(), Some(secret.as_str()));
    assert_eq!(last.event_types, event_types);
    // A health write after the race lands on the latest record and keeps the rest.
    let since = chrono::DateTime::from_timestamp(1_900_000_000, 0).unwrap();
    api.set_failing_since(&id, Some(since)).await.unwrap();
    let after = api.get(&id).await.unwrap();
    assert_eq!(after.failing_since, Some(since));
    assert_eq!(after.secret, last.secret);
    assert_eq!(after.event_types, event_types);
}

//! The Redis transport and change feed against a real Redis (`scripts/testenv.sh -- cargo test
//! -p herald-backends --test it redis_transport::`). Each test works under its own key prefix; the
//! restart tests run a Redis of their own from the test server's config, so that stopping it
//! disturbs no other test.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use herald_backends::redis::{open, RedisParts};
use herald_core::backend::{ArchivedEvent, Transport};
use herald_core::model::{
    ClaimRequest, DeliveryState, DeliveryStatus, Disposition, IdempotencyKey, Job, PublishOutcome,
    QueueStats, Settlement,
};
use herald_core::testkit::{claim_request, publish};
use herald_core::StoreError;

const LEASE: Duration = Duration::from_secs(60);

/// Held by the tests that time pub/sub: one of them kills every pub/sub connection of the
/// shared server, whose resubscription wakes waiting workers early.
static PUBSUB: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn parts(url: &str) -> (RedisParts, String) {
    let prefix = herald_testenv::unique_name("herald-test");
    let parts = open(url, &prefix).await.expect("open Redis");
    (parts, prefix)
}

macro_rules! redis_or_skip {
    () => {
        match herald_testenv::redis_url() {
            Some(url) => url,
            None => return,
        }
    };
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn lease(t: &Arc<dyn Transport>, req: &ClaimRequest) -> herald_core::backend::Leased {
    t.lease(req).await.expect("lease")
}

/// The counts of a [`QueueStats`], its age left out (it depends on timing).
fn counts(s: QueueStats) -> QueueStats {
    QueueStats {
        oldest_ready_age_ms: 0,
        ..s
    }
}

fn settle(job: &Job, disposition: Disposition) -> Settlement {
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

#[tokio::test]
async fn stale_settlements_after_a_lease_ran_out_change_nothing() {
    let url = redis_or_skip!();
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    t.publish(publish("msg_f", &["sub_a"], b"{}"))
        .await
        .unwrap();
    let old = lease(t, &claim_request("w1", 1, Duration::from_millis(150)))
        .await
        .jobs
        .remove(0);
    assert!(lease(t, &claim_request("w2", 1, LEASE))
        .await
        .jobs
        .is_empty());
    tokio::time::sleep(Duration::from_millis(250)).await;
    let got = lease(t, &claim_request("w2", 1, LEASE)).await;
    assert_eq!(got.jobs.len(), 1);
    assert_eq!(
        got.redelivered,
        vec![0],
        "a lease that ran out is redelivered"
    );
    let new = &got.jobs[0];
    assert_ne!(old.receipt, new.receipt);
    assert_eq!(new.attempt, 1);
    assert_eq!(
        t.held(&[old.receipt.clone(), new.receipt.clone(), "junk".into()])
            .await
            .unwrap(),
        vec![false, true, false]
    );

    assert_eq!(
        t.settle(&[settle(&old, Disposition::Delivered)])
            .await
            .unwrap(),
        1
    );
    let live = t.live("msg_f").await.unwrap().expect("still open");
    assert_eq!(live.open[0].status, DeliveryState::Delivering);
    assert_eq!(t.stats().await.unwrap().in_flight, 1);
    let retry = settle(&old, Disposition::RetryAt(Utc::now()));
    assert_eq!(t.settle(&[retry]).await.unwrap(), 1, "a stale retry too");
    assert_eq!(t.stats().await.unwrap().ready, 0);

    assert_eq!(
        t.settle(&[settle(new, Disposition::Delivered)])
            .await
            .unwrap(),
        0
    );
    assert!(
        t.live("msg_f").await.unwrap().is_none(),
        "gone with its last delivery"
    );
    assert_eq!(
        t.settle(&[settle(new, Disposition::Failed)]).await.unwrap(),
        1
    );
    assert_eq!(t.stats().await.unwrap(), QueueStats::default());
}

#[tokio::test]
async fn reaping_frees_only_silent_workers_and_marks_redelivery() {
    let url = redis_or_skip!();
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    t.publish(publish("msg_dead", &["sub_a", "sub_b"], b"{}"))
        .await
        .unwrap();
    let dead = lease(t, &claim_request("w_dead", 10, LEASE)).await.jobs;
    assert_eq!(dead.len(), 2);
    t.publish(publish("msg_live", &["sub_c"], b"{}"))
        .await
        .unwrap();
    let live = lease(t, &claim_request("w_live", 10, LEASE)).await.jobs;
    assert_eq!(live.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.heartbeat("w_live", LEASE).await.unwrap(), 1);
    assert_eq!(t.reap(Duration::from_millis(200)).await.unwrap(), 2);
    assert_eq!(t.reap(Duration::from_millis(200)).await.unwrap(), 0);
    assert_eq!(
        t.heartbeat("w_dead", LEASE).await.unwrap(),
        0,
        "a reaped worker holds nothing"
    );
    let rec = t.live("msg_dead").await.unwrap().unwrap();
    assert!(rec.open.iter().all(|d| d.status == DeliveryState::Queued));
    let again = lease(t, &claim_request("w_live", 10, LEASE)).await;
    assert_eq!(again.jobs.len(), 2);
    assert_eq!(again.redelivered, vec![0, 1]);
    assert!(again
        .jobs
        .iter()
        .all(|j| j.webhook_id == "msg_dead" && j.attempt == 1));
    let late: Vec<_> = dead
        .iter()
        .map(|j| settle(j, Disposition::Delivered))
        .collect();
    assert_eq!(t.settle(&late).await.unwrap(), 2);
    assert_eq!(
        t.settle(&[settle(&live[0], Disposition::Delivered)])
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn the_redelivered_mark_survives_a_deferral_and_ends_with_a_retry() {
    let url = redis_or_skip!();
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    t.publish(publish("msg_m", &["sub_a"], b"{}"))
        .await
        .unwrap();
    lease(t, &claim_request("w_gone", 1, LEASE)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(t.reap(Duration::from_millis(20)).await.unwrap(), 1);
    let got = lease(t, &claim_request("w", 1, LEASE)).await;
    assert_eq!(got.redelivered, vec![0]);
    let mut back = settle(&got.jobs[0], Disposition::Defer(Utc::now()));
    back.attempts = 0;
    assert_eq!(t.settle(&[back]).await.unwrap(), 0);
    let got = lease(t, &claim_request("w", 1, LEASE)).await;
    assert_eq!(got.redelivered, vec![0], "a hand-back is no attempt");
    let mut retry = settle(&got.jobs[0], Disposition::RetryAt(Utc::now()));
    retry.last_error = Some("HTTP 503".into());
    t.settle(&[retry]).await.unwrap();
    let got = lease(t, &claim_request("w", 1, LEASE)).await;
    assert!(got.redelivered.is_empty());
    assert_eq!(got.jobs[0].attempt, 2);
    // A deferral without an error keeps the recorded one.
    let mut back = settle(
        &got.jobs[0],
        Disposition::Defer(Utc::now() + chrono::Duration::hours(1)),
    );
    back.attempts = 1;
    t.settle(&[back]).await.unwrap();
    let d = &t.live("msg_m").await.unwrap().unwrap().open[0];
    assert_eq!(d.last_error.as_deref(), Some("HTTP 503"));
    assert_eq!(d.attempts, 1);
    assert_eq!(d.status, DeliveryState::Delivering);
    assert!(d.next_attempt_at.unwrap() > Utc::now() + chrono::Duration::minutes(59));
}

#[tokio::test]
async fn heartbeats_renew_and_unrenewed_leases_end() {
    let url = redis_or_skip!();
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    t.publish(publish("msg_hb", &["sub_a", "sub_b"], b"{}"))
        .await
        .unwrap();
    let short = Duration::from_millis(300);
    let held = lease(t, &claim_request("w_live", 10, short)).await.jobs;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(t.heartbeat("w_live", short).await.unwrap(), 2);
    }
    assert_eq!(t.reap(Duration::from_secs(10)).await.unwrap(), 0);
    assert!(lease(t, &claim_request("w_other", 10, LEASE))
        .await
        .jobs
        .is_empty());
    t.settle(&[settle(&held[0], Disposition::Delivered)])
        .await
        .unwrap();
    assert_eq!(t.heartbeat("w_live", short).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let taken = lease(t, &claim_request("w_other", 10, LEASE)).await;
    assert_eq!(taken.jobs.len(), 1);
    assert_eq!(taken.jobs[0].subscription_id, held[1].subscription_id);
    assert_eq!(taken.redelivered, vec![0]);
}

#[tokio::test]
async fn claims_honour_caps_and_serve_subscriptions_in_turn() {
    let url = redis_or_skip!();
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    for i in 0..10 {
        t.publish(publish(&format!("msg_a{i:02}"), &["sub_a"], b"{}"))
            .await
            .unwrap();
    }
    for i in 0..3 {
        t.publish(publish(&format!("msg_b{i}"), &["sub_b"], b"{}"))
            .await
            .unwrap();
    }
    t.publish(publish("msg_c", &["sub_c"], b"{}"))
        .await
        .unwrap();
    let mut req = claim_request("w", 100, LEASE);
    req.per_subscription = 2;
    req.in_flight = HashMap::from([("sub_a".to_string(), 1), ("sub_c".to_string(), 2)]);
    let got = lease(t, &req).await;
    let count = |s: &str| got.jobs.iter().filter(|j| j.subscription_id == s).count();
    assert_eq!((count("sub_a"), count("sub_b"), count("sub_c")), (1, 2, 0));
    assert_eq!(
        got.jobs
            .iter()
            .find(|j| j.subscription_id == "sub_a")
            .unwrap()
            .webhook_id,
        "msg_a00",
        "earliest first"
    );
    let mut req = claim_request("w", 100, LEASE);
    req.per_subscription = 1;
    req.in_flight = ["sub_a", "sub_b", "sub_c"]
        .iter()
        .map(|s| (s.to_string(), 1))
        .collect();
    let none = lease(t, &req).await;
    assert!(none.jobs.is_empty());
    assert!(
        none.next_due.is_none_or(|d| d > Utc::now()),
        "capped subscriptions are no work to wake up for"
    );

    // Claims of three with a backlog in front: every subscription is served within two.
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    for i in 0..50 {
        t.publish(publish(&format!("msg_big{i}"), &["sub_a_big"], b"{}"))
            .await
            .unwrap();
    }
    for s in ["sub_b_small", "sub_c_small"] {
        t.publish(publish(&format!("msg_{s}"), &[s], b"{}"))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..2 {
        let mut req = claim_request("w", 2, LEASE);
        req.per_subscription = 16;
        seen.extend(lease(t, &req).await.jobs);
    }
    for s in ["sub_a_big", "sub_b_small", "sub_c_small"] {
        assert!(
            seen.iter().any(|j| j.subscription_id == s),
            "{s} served: {seen:?}"
        );
    }
}

#[tokio::test]
async fn the_byte_budget_counts_distinct_payloads_and_jobs_share_one_buffer() {
    let url = redis_or_skip!();
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    let kib = vec![b'y'; 1000];
    for i in 0..3 {
        t.publish(publish(&format!("msg_k{i}"), &[&format!("sub_{i}")], &kib))
            .await
            .unwrap();
    }
    let mut req = claim_request("w", 10, LEASE);
    req.byte_budget = 2500;
    let got = lease(t, &req).await;
    assert_eq!(got.jobs.len(), 2, "2000 bytes fit");
    assert_eq!(got.next_due, None, "a spent budget names no due time");
    req.byte_budget = 0;
    assert_eq!(
        lease(t, &req).await.jobs.len(),
        1,
        "one job even past the budget"
    );

    let subs: Vec<String> = (0..20).map(|i| format!("sub_f{i:02}")).collect();
    let refs: Vec<&str> = subs.iter().map(String::as_str).collect();
    let payload = vec![b'x'; 64 * 1024];
    t.publish(publish("msg_fan", &refs, &payload))
        .await
        .unwrap();
    req.byte_budget = 64 * 1024;
    let got = lease(t, &req).await;
    assert_eq!(got.jobs.len(), 10);
    let ptr = got.jobs[0].payload.as_ptr();
    assert!(got
        .jobs
        .iter()
        .all(|j| j.payload == payload[..] && j.payload.as_ptr() == ptr));
    assert_eq!(got.unarchived.len(), 1, "each event listed once");
    let ev = &got.unarchived[0];
    assert_eq!(ev.event.webhook_id, "msg_fan");
    assert_eq!(ev.subscription_ids, subs);
    assert_eq!(ev.event.payload, payload[..]);
    assert_eq!(ev.event.event_type.as_deref(), Some("order.created"));
    t.archived(&["msg_fan".to_string(), "msg_gone".to_string()])
        .await
        .unwrap();
    let rest = lease(t, &claim_request("w", 100, LEASE)).await;
    assert_eq!(rest.jobs.len(), 10);
    assert!(
        rest.unarchived.is_empty(),
        "archived events are not listed again"
    );
    assert!(t.live("msg_gone").await.unwrap().is_none(), "not recreated");
}

#[tokio::test]
async fn payloads_and_types_are_kept_exactly() {
    let url = redis_or_skip!();
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    let payload: Vec<u8> = (0..=255u8).chain(*b"{\"a\": \"\xc3\xa9\"}").collect();
    let mut pb = publish("msg_bin", &["sub_a"], &payload);
    pb.event.event_type = None;
    t.publish(pb.clone()).await.unwrap();
    let got = lease(t, &claim_request("w", 1, LEASE)).await;
    assert_eq!(&got.jobs[0].payload[..], &payload[..]);
    assert_eq!(got.jobs[0].event_type, None);
    let ev = &got.unarchived[0].event;
    assert_eq!(
        ev.received_at.timestamp_millis(),
        pb.event.received_at.timestamp_millis()
    );
}

#[tokio::test]
async fn idempotency_keys_answer_like_the_first_publish() {
    let url = redis_or_skip!();
    let (p, prefix) = parts(&url).await;
    let t = &p.transport;
    let key = IdempotencyKey::new("sub_a", "k:1", None, b"{}");
    let mut pb = publish("msg_i1", &["sub_a", "sub_b"], b"{}");
    pb.idempotency = Some(key.clone());
    assert_eq!(t.publish(pb).await.unwrap(), PublishOutcome::Accepted);
    let mut again = publish("msg_i2", &["sub_a"], b"{}");
    again.idempotency = Some(key.clone());
    assert_eq!(
        t.publish(again).await.unwrap(),
        PublishOutcome::Duplicate {
            webhook_id: "msg_i1".into(),
            matched: 2
        }
    );
    assert!(t.live("msg_i2").await.unwrap().is_none());
    let mut other = publish("msg_i3", &["sub_a"], b"{\"a\":1}");
    other.idempotency = Some(IdempotencyKey::new("sub_a", "k:1", None, b"{\"a\":1}"));
    assert_eq!(
        t.publish(other).await.unwrap(),
        PublishOutcome::KeyReused {
            webhook_id: "msg_i1".into()
        }
    );
    assert!(t.live("msg_i3").await.unwrap().is_none());
    // Another scope is another key; no subscriptions stores the key alone.
    let mut none = publish("msg_i4", &[], b"{}");
    none.idempotency = Some(IdempotencyKey::new("events", "k:1", None, b"{}"));
    assert_eq!(
        t.publish(none.clone()).await.unwrap(),
        PublishOutcome::Accepted
    );
    assert!(t.live("msg_i4").await.unwrap().is_none());
    let mut none2 = publish("msg_i5", &[], b"{}");
    none2.idempotency = none.idempotency.clone();
    assert_eq!(
        t.publish(none2).await.unwrap(),
        PublishOutcome::Duplicate {
            webhook_id: "msg_i4".into(),
            matched: 0
        }
    );
    let mut conn = raw(&url).await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}:idem:sub_a:k:1"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 23 * 3600 * 1000 && ttl <= 24 * 3600 * 1000,
        "24 h expiry: {ttl}"
    );
    // A webhook id that is taken is refused without recording its key.
    let mut dup = publish("msg_i1", &["sub_c"], b"{}");
    dup.idempotency = Some(IdempotencyKey::new("sub_c", "k-2", None, b"{}"));
    assert!(matches!(t.publish(dup).await, Err(StoreError::Conflict(_))));
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("{prefix}:idem:sub_c:k-2"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0);
}

/// Concurrent publishes share script runs (see `publisher`): each event still gets the answer
/// it would get alone, in the order the batch applies them.
#[tokio::test]
async fn concurrent_publishes_are_batched_and_each_answered_on_its_own() {
    let url = redis_or_skip!();
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    let shared_key = IdempotencyKey::new("sub_a", "shared", None, b"{}");
    let mut calls = Vec::new();
    for i in 0..300 {
        let mut pb = publish(&format!("msg_c{i:03}"), &["sub_a"], b"{}");
        match i % 10 {
            // Many copies of one request under one key: one is stored.
            0 => pb.idempotency = Some(shared_key.clone()),
            // The same key with another body: refused, or stored if it came first.
            5 => {
                pb.event.payload = b"{\"other\":1}".to_vec().into();
                pb.idempotency = Some(IdempotencyKey::new(
                    "sub_a",
                    "shared",
                    None,
                    b"{\"other\":1}",
                ));
            }
            _ => {}
        }
        calls.push(pb);
    }
    // A webhook id used twice without a key: both go to the intake unchecked, and the fan-out
    // stores the first and drops the second (see `publisher`).
    calls.push(publish("msg_c001", &["sub_a"], b"{}"));
    let outcomes = futures::future::join_all(calls.iter().map(|pb| t.publish(pb.clone()))).await;
    let mut accepted = Vec::new();
    let mut keyed_first = None;
    let mut conflicts = 0;
    for (pb, out) in calls.iter().zip(&outcomes) {
        match out {
            Ok(PublishOutcome::Accepted) => {
                if pb.idempotency.is_some() {
                    assert!(keyed_first.is_none(), "two events stored under one key");
                    keyed_first = Some(pb.event.webhook_id.clone());
                }
                accepted.push(pb.event.webhook_id.clone());
            }
            Ok(PublishOutcome::Duplicate { .. } | PublishOutcome::KeyReused { .. }) => {
                assert!(
                    pb.idempotency.is_some(),
                    "{out:?} for an event without a key"
                )
            }
            Err(StoreError::Conflict(_)) => conflicts += 1,
            Err(e) => panic!("publish failed: {e}"),
        }
    }
    let first = keyed_first.expect("one event under the shared key is stored");
    let first_is_other = calls
        .iter()
        .any(|c| c.event.webhook_id == first && &c.event.payload[..] != b"{}");
    for (pb, out) in calls.iter().zip(&outcomes) {
        let Some(k) = &pb.idempotency else { continue };
        if pb.event.webhook_id == first {
            continue;
        }
        let same_request = k.fingerprint
            == if first_is_other {
                IdempotencyKey::new("sub_a", "shared", None, b"{\"other\":1}").fingerprint
            } else {
                shared_key.fingerprint
            };
        let want = if same_request {
            PublishOutcome::Duplicate {
                webhook_id: first.clone(),
                matched: 1,
            }
        } else {
            PublishOutcome::KeyReused {
                webhook_id: first.clone(),
            }
        };
        assert_eq!(out.as_ref().unwrap(), &want);
    }
    assert_eq!(
        conflicts, 0,
        "ids are not checked on the way into the intake"
    );
    // 241 without a key (msg_c001 twice) and one under the shared key.
    assert_eq!(accepted.len(), 242);
    let mut leased = lease_all(t).await;
    leased.sort();
    accepted.sort();
    accepted.dedup();
    assert_eq!(
        leased, accepted,
        "exactly the accepted events are queued, a reused id once"
    );
}

#[tokio::test]
async fn a_batch_to_a_subscription_waiting_for_a_retry_is_due_at_once_and_wakes_once() {
    let url = redis_or_skip!();
    let _serial = PUBSUB.lock().await;
    let (parts, prefix) = parts(&url).await;
    let t = parts.transport;
    // sub_a's only delivery waits for a retry an hour away: its score in the due set is then.
    t.publish(publish("msg_later", &["sub_a"], b"{}"))
        .await
        .unwrap();
    let job = lease(&t, &claim_request("wrk_b", 10, LEASE)).await.jobs;
    assert_eq!(job.len(), 1);
    let later = Disposition::RetryAt(Utc::now() + chrono::Duration::hours(1));
    t.settle(&[settle(&job[0], later)]).await.unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe(format!("{prefix}:wake")).await.unwrap();
    let mut messages = sub.into_on_message();

    // Published together, so that they share script runs: the first lowers the score, the
    // others find it lowered.
    let ids: Vec<String> = (0..50).map(|i| format!("msg_now{i:02}")).collect();
    let outcomes = futures::future::join_all(
        ids.iter()
            .map(|id| t.publish(publish(id, &["sub_a"], b"{}"))),
    )
    .await;
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, Ok(PublishOutcome::Accepted))));
    let mut leased = lease_all(&t).await;
    leased.sort();
    assert_eq!(
        leased, ids,
        "every new delivery is due now, the retry is not"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut wakes = 0;
    while let Some(Some(_)) =
        futures::FutureExt::now_or_never(futures::StreamExt::next(&mut messages))
    {
        wakes += 1;
    }
    assert_eq!(
        wakes, 1,
        "one wake: only the first run made sub_a due sooner"
    );
}

#[tokio::test]
async fn requeue_replays_settled_deliveries_once() {
    let url = redis_or_skip!();
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    let pb = publish("msg_r", &["sub_a", "sub_b"], b"{\"r\":1}");
    t.publish(pb.clone()).await.unwrap();
    let jobs = lease(t, &claim_request("w", 10, LEASE)).await.jobs;
    let mut failed: Vec<_> = jobs
        .iter()
        .map(|j| settle(j, Disposition::Failed))
        .collect();
    failed[0].attempts = 3;
    t.settle(&failed).await.unwrap();
    assert!(t.live("msg_r").await.unwrap().is_none());

    let event = ArchivedEvent {
        event: pb.event.clone(),
        subscription_ids: pb.subscription_ids.clone(),
        payload_omitted: None,
    };
    let status = |sid: &str, attempts| DeliveryStatus {
        subscription_id: sid.into(),
        status: DeliveryState::Failed,
        attempts,
        next_attempt_at: None,
        last_error: Some("HTTP 500".into()),
    };
    let sa = jobs[0].subscription_id.clone();
    assert_eq!(t.requeue(&event, &[status(&sa, 3)]).await.unwrap(), 1);
    assert_eq!(
        t.requeue(&event, &[status(&sa, 3)]).await.unwrap(),
        0,
        "open already"
    );
    let live = t.live("msg_r").await.unwrap().unwrap();
    assert_eq!(live.subscription_ids, pb.subscription_ids);
    assert_eq!(live.open.len(), 1);
    assert_eq!(live.open[0].last_error.as_deref(), Some("HTTP 500"));
    let got = lease(t, &claim_request("w", 10, LEASE)).await;
    assert_eq!(got.jobs.len(), 1);
    let job = &got.jobs[0];
    assert_eq!((job.attempt, job.final_attempt), (4, Some(4)));
    assert_eq!(&job.payload[..], b"{\"r\":1}");
    assert!(got.redelivered.is_empty(), "a replay is no redelivery");
    assert!(got.unarchived.is_empty(), "the event came from the archive");
    // A second delivery of the same event joins the recreated event.
    let sb = jobs[1].subscription_id.clone();
    assert_eq!(t.requeue(&event, &[status(&sb, 1)]).await.unwrap(), 1);
    t.settle(&[settle(job, Disposition::Delivered)])
        .await
        .unwrap();
    assert_eq!(t.live("msg_r").await.unwrap().unwrap().open.len(), 1);
}

#[tokio::test]
async fn expedite_makes_waiting_deliveries_due_and_stats_count_them() {
    let url = redis_or_skip!();
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    for i in 0..3 {
        t.publish(publish(&format!("msg_e{i}"), &["sub_a", "sub_b"], b"{}"))
            .await
            .unwrap();
    }
    assert_eq!(
        counts(t.stats().await.unwrap()),
        QueueStats {
            ready: 6,
            scheduled: 0,
            in_flight: 0,
            ..Default::default()
        }
    );
    let mut req = claim_request("w", 10, LEASE);
    req.in_flight = HashMap::from([("sub_b".to_string(), 1000)]);
    let jobs = lease(t, &req).await.jobs;
    assert_eq!(jobs.len(), 3);
    assert_eq!(
        counts(t.stats().await.unwrap()),
        QueueStats {
            ready: 3,
            scheduled: 0,
            in_flight: 3,
            ..Default::default()
        }
    );
    let later = Utc::now() + chrono::Duration::hours(1);
    let retries: Vec<_> = jobs
        .iter()
        .map(|j| settle(j, Disposition::RetryAt(later)))
        .collect();
    t.settle(&retries).await.unwrap();
    assert_eq!(
        counts(t.stats().await.unwrap()),
        QueueStats {
            ready: 3,
            scheduled: 3,
            in_flight: 0,
            ..Default::default()
        }
    );
    let got = lease(t, &req).await;
    assert!(got.jobs.is_empty());
    let next = got.next_due.expect("the retries' time");
    assert!((next - later).num_milliseconds().abs() < 5);
    t.expedite("sub_a").await.unwrap();
    t.expedite("sub_unknown").await.unwrap();
    assert_eq!(
        counts(t.stats().await.unwrap()),
        QueueStats {
            ready: 6,
            scheduled: 0,
            in_flight: 0,
            ..Default::default()
        }
    );
    let got = lease(t, &req).await.jobs;
    assert_eq!(got.len(), 3);
    assert!(got
        .iter()
        .all(|j| j.subscription_id == "sub_a" && j.attempt == 2));
}

#[tokio::test]
async fn a_queue_entry_without_its_event_is_dropped() {
    let url = redis_or_skip!();
    let (p, prefix) = parts(&url).await;
    let t = &p.transport;
    t.publish(publish("msg_lost", &["sub_a"], b"{}"))
        .await
        .unwrap();
    t.publish(publish("msg_kept", &["sub_a"], b"{}"))
        .await
        .unwrap();
    // A read fans the intake out: the events and their queue entries exist from here on.
    assert!(t.live("msg_kept").await.unwrap().is_some());
    let mut conn = raw(&url).await;
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{prefix}:e:msg_lost"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let got = lease(t, &claim_request("w", 10, LEASE)).await;
    assert_eq!(got.jobs.len(), 1);
    assert_eq!(got.jobs[0].webhook_id, "msg_kept");
    assert_eq!(
        counts(t.stats().await.unwrap()),
        QueueStats {
            ready: 0,
            scheduled: 0,
            in_flight: 1,
            ..Default::default()
        }
    );
}

#[tokio::test]
async fn wait_for_work_wakes_on_a_publish_from_another_process() {
    let url = redis_or_skip!();
    let _serial = PUBSUB.lock().await;
    let prefix = herald_testenv::unique_name("herald-test");
    let waiter = open(&url, &prefix).await.unwrap();
    let publisher = open(&url, &prefix).await.unwrap();
    // Let the listener subscribe, and use up the wake-up it gives when it does.
    tokio::time::sleep(Duration::from_millis(300)).await;
    waiter
        .transport
        .wait_for_work(Duration::from_millis(10))
        .await;
    let started = Instant::now();
    waiter
        .transport
        .wait_for_work(Duration::from_millis(300))
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(290),
        "no work: the full wait"
    );

    let w = waiter.transport.clone();
    let wait = tokio::spawn(async move {
        let started = Instant::now();
        w.wait_for_work(Duration::from_secs(5)).await;
        started.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = Instant::now();
    publisher
        .transport
        .publish(publish("msg_wake", &["sub_a"], b"{}"))
        .await
        .unwrap();
    let waited = wait.await.unwrap();
    let latency = sent.elapsed();
    assert!(waited < Duration::from_secs(1), "woken after {waited:?}");
    assert!(
        latency < Duration::from_millis(500),
        "wake-up latency {latency:?}"
    );
}

async fn intake_len(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> usize {
    redis::cmd("LLEN")
        .arg(format!("{prefix}:intake"))
        .query_async(conn)
        .await
        .unwrap()
}

/// The hot path: an event without an idempotency key is one intake record until a step fans it
/// out; its payload may hold the record's separator and any byte, its type is kept, and a
/// subscription listed twice gets one delivery.
#[tokio::test]
async fn an_event_without_a_key_waits_in_the_intake_until_a_lease_fans_it_out() {
    let url = redis_or_skip!();
    let (p, prefix) = parts(&url).await;
    let t = &p.transport;
    let mut conn = raw(&url).await;
    let payload: &[u8] = b"{\"a\":\"line\nbreak\"}\n\x00\xff\n\n";
    let mut untyped = publish("msg_plain", &["sub_b"], b"[]");
    untyped.event.event_type = None;
    for p in [
        publish("msg_in", &["sub_a", "sub_b", "sub_a"], payload),
        untyped,
    ] {
        assert_eq!(t.publish(p).await.unwrap(), PublishOutcome::Accepted);
    }
    assert_eq!(intake_len(&mut conn, &prefix).await, 2);
    let stored: i64 = redis::cmd("EXISTS")
        .arg(format!("{prefix}:e:msg_in"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, 0, "nothing but the record before the fan-out");

    let mut jobs = lease(t, &claim_request("w", 10, LEASE)).await.jobs;
    jobs.sort_by(|a, b| {
        (&a.webhook_id, &a.subscription_id).cmp(&(&b.webhook_id, &b.subscription_id))
    });
    let got: Vec<_> = jobs
        .iter()
        .map(|j| {
            (
                j.webhook_id.as_str(),
                j.subscription_id.as_str(),
                j.event_type.as_deref(),
                &j.payload[..],
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("msg_in", "sub_a", Some("order.created"), payload),
            ("msg_in", "sub_b", Some("order.created"), payload),
            ("msg_plain", "sub_b", None, &b"[]"[..]),
        ]
    );
    assert_eq!(intake_len(&mut conn, &prefix).await, 0);
}

/// Read your own write: right after its publish, with no worker running, an event behind more
/// records than one script run fans out reads as queued; an unknown id reads as absent once
/// the intake is empty.
#[tokio::test]
async fn a_read_right_after_publish_finds_the_event_behind_a_long_intake() {
    let url = redis_or_skip!();
    let (p, prefix) = parts(&url).await;
    let t = &p.transport;
    let mut conn = raw(&url).await;
    let ids: Vec<String> = (0..3000).map(|i| format!("msg_r{i:04}")).collect();
    for chunk in ids.chunks(500) {
        let outs = futures::future::join_all(
            chunk
                .iter()
                .map(|id| t.publish(publish(id, &["sub_a"], b"{}"))),
        )
        .await;
        assert!(outs
            .iter()
            .all(|o| matches!(o, Ok(PublishOutcome::Accepted))));
    }
    assert_eq!(intake_len(&mut conn, &prefix).await, 3000);
    let last = t.live("msg_r2999").await.unwrap().expect("the last event");
    assert_eq!(last.subscription_ids, ["sub_a"]);
    assert_eq!(last.open.len(), 1);
    assert_eq!(last.open[0].status, DeliveryState::Queued);
    assert!(t.live("msg_unknown").await.unwrap().is_none());
    assert_eq!(intake_len(&mut conn, &prefix).await, 0);
    assert_eq!(
        counts(t.stats().await.unwrap()),
        QueueStats {
            ready: 3000,
            scheduled: 0,
            in_flight: 0,
            ..Default::default()
        }
    );
}

/// An intake record whose webhook id a live event holds is dropped when fanned out: the live
/// event is left as it was.
#[tokio::test]
async fn an_intake_record_whose_webhook_id_is_taken_is_dropped_at_fan_out() {
    let url = redis_or_skip!();
    let (p, prefix) = parts(&url).await;
    let t = &p.transport;
    let mut first = publish("msg_taken", &["sub_a"], b"\"first\"");
    first.idempotency = Some(IdempotencyKey::new("sub_a", "k", None, b"\"first\""));
    assert_eq!(t.publish(first).await.unwrap(), PublishOutcome::Accepted);
    let again = publish("msg_taken", &["sub_a", "sub_b"], b"\"second\"");
    assert_eq!(t.publish(again).await.unwrap(), PublishOutcome::Accepted);
    let jobs = lease(t, &claim_request("w", 10, LEASE)).await.jobs;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(
        (jobs[0].subscription_id.as_str(), &jobs[0].payload[..]),
        ("sub_a", &b"\"first\""[..])
    );
    assert_eq!(intake_len(&mut raw(&url).await, &prefix).await, 0);
}

/// A record Herald did not write (no layout, bad subscription ids) is dropped when fanned out,
/// and the records around it are stored as usual.
#[tokio::test]
async fn a_malformed_intake_record_is_dropped_and_the_others_are_kept() {
    let url = redis_or_skip!();
    let (p, prefix) = parts(&url).await;
    let t = &p.transport;
    let mut conn = raw(&url).await;
    t.publish(publish("msg_before", &["sub_a"], b"{}"))
        .await
        .unwrap();
    let _: i64 = redis::cmd("RPUSH")
        .arg(format!("{prefix}:intake"))
        .arg("no newline at all")
        .arg("msg_x\n0\n1\nnot json\n{}")
        .arg("msg_y\n0\n1\n[1]\n{}")
        .arg("msg_z\n0\n1\n[]\n{}")
        .arg("\n0\n1\n[\"sub_a\"]\n{}")
        .query_async(&mut conn)
        .await
        .unwrap();
    t.publish(publish("msg_after", &["sub_a"], b"{}"))
        .await
        .unwrap();
    assert_eq!(intake_len(&mut conn, &prefix).await, 7);
    let leased = lease_all(t).await;
    assert_eq!(leased, ["msg_after", "msg_before"]);
    assert_eq!(intake_len(&mut conn, &prefix).await, 0);
}

/// A fan-out step stops after about a mebibyte of records, so that a backlog of large events
/// does not make one script copy hundreds of megabytes; reads and leases still reach them all.
#[tokio::test]
async fn a_fan_out_step_takes_about_a_mebibyte_of_large_records() {
    let url = redis_or_skip!();
    let (p, prefix) = parts(&url).await;
    let t = &p.transport;
    let mut conn = raw(&url).await;
    let big = vec![b'x'; 200 * 1024];
    let ids: Vec<String> = (0..40).map(|i| format!("msg_big{i:02}")).collect();
    for id in &ids {
        t.publish(publish(id, &["sub_a"], &big)).await.unwrap();
    }
    assert_eq!(intake_len(&mut conn, &prefix).await, 40);
    t.stats().await.unwrap();
    let left = intake_len(&mut conn, &prefix).await;
    // Chunks of 8 records until 1 MiB is reached: 8 records of 200 KiB (1.6 MiB) here.
    assert_eq!(left, 32, "one step took one chunk of large records");
    let last = t
        .live("msg_big39")
        .await
        .unwrap()
        .expect("found behind them");
    assert_eq!(last.open.len(), 1);
    let mut leased = lease_all(t).await;
    leased.sort();
    assert_eq!(leased, ids);
}

/// A lease fans out one batch of the intake; while records are left it answers "due now", so
/// that its caller comes back for them at once instead of waiting for a wake-up.
#[tokio::test]
async fn a_lease_that_leaves_records_in_the_intake_asks_to_be_called_again_at_once() {
    let url = redis_or_skip!();
    let (p, prefix) = parts(&url).await;
    let t = &p.transport;
    let mut conn = raw(&url).await;
    let ids: Vec<String> = (0..300).map(|i| format!("msg_l{i:03}")).collect();
    futures::future::join_all(
        ids.iter()
            .map(|id| t.publish(publish(id, &["sub_a"], b"{}"))),
    )
    .await;
    assert_eq!(intake_len(&mut conn, &prefix).await, 300);
    let before = Utc::now();
    let got = lease(t, &claim_request("w", 1, LEASE)).await;
    assert_eq!(got.jobs.len(), 1);
    assert_eq!(got.jobs[0].webhook_id, "msg_l000", "oldest first");
    let left = intake_len(&mut conn, &prefix).await;
    assert!(left > 0 && left < 300, "one batch fanned out: {left} left");
    let due = got
        .next_due
        .expect("due now while the intake holds records");
    assert!(
        (due - before).num_milliseconds().abs() < 1000,
        "{due} vs {before}"
    );
    // Leasing on drains the intake, oldest first, and every event is leased once.
    let mut leased = vec![got.jobs[0].webhook_id.clone()];
    while intake_len(&mut conn, &prefix).await > 0 {
        let jobs = lease(t, &claim_request("w", 1, LEASE)).await.jobs;
        leased.extend(jobs.into_iter().map(|j| j.webhook_id));
    }
    leased.extend(lease_all(t).await);
    leased.sort();
    assert_eq!(leased, ids);
}

/// Counts the messages that arrived on `stream` so far.
fn arrived(stream: &mut (dyn futures::Stream<Item = redis::Msg> + Unpin + Send)) -> usize {
    let mut n = 0;
    while let Some(Some(_)) = futures::FutureExt::now_or_never(futures::StreamExt::next(stream)) {
        n += 1;
    }
    n
}

async fn wake_messages(
    url: &str,
    prefix: &str,
) -> impl futures::Stream<Item = redis::Msg> + Unpin + Send {
    let client = redis::Client::open(url).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe(format!("{prefix}:wake")).await.unwrap();
    sub.into_on_message()
}

#[tokio::test]
async fn a_publish_wakes_workers_only_when_it_finds_the_intake_empty() {
    let url = redis_or_skip!();
    let _serial = PUBSUB.lock().await;
    let (parts, prefix) = parts(&url).await;
    let t = parts.transport;
    let mut messages = wake_messages(&url, &prefix).await;
    // The first event into an empty intake wakes; more while it holds events do not, for any
    // subscription: the workers told of the first fan out all of them.
    for (id, sub) in [
        ("msg_w1", "sub_a"),
        ("msg_w2", "sub_a"),
        ("msg_w3", "sub_a"),
        ("msg_w4", "sub_b"),
    ] {
        t.publish(publish(id, &[sub], b"{}")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(arrived(&mut messages), 1);
    // A claim fans the intake out (it wakes nobody: its caller takes the work).
    let leased = lease(&t, &claim_request("wrk_w", 10, LEASE)).await;
    assert_eq!(leased.jobs.len(), 4);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(arrived(&mut messages), 0);
    // The intake is empty again: the next event wakes.
    t.publish(publish("msg_w5", &["sub_a"], b"{}"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(arrived(&mut messages), 1);
}

#[tokio::test]
async fn a_keyed_publish_wakes_workers_only_when_its_subscription_becomes_due_sooner() {
    let url = redis_or_skip!();
    let _serial = PUBSUB.lock().await;
    let (parts, prefix) = parts(&url).await;
    let t = parts.transport;
    let mut messages = wake_messages(&url, &prefix).await;
    let keyed = |id: &str, sub: &str| {
        let mut p = publish(id, &[sub], b"{}");
        p.idempotency = Some(IdempotencyKey::new(sub, id, None, b"{}"));
        p
    };
    // The first event of a subscription wakes; more for the same, already due, do not.
    for id in ["msg_k1", "msg_k2", "msg_k3"] {
        t.publish(keyed(id, "sub_a")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(arrived(&mut messages), 1);
    // Another subscription's first event does.
    t.publish(keyed("msg_k4", "sub_b")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(arrived(&mut messages), 1);
    // Once a claim emptied the queue, the next event wakes again.
    let leased = lease(&t, &claim_request("wrk_w", 10, LEASE)).await;
    assert_eq!(leased.jobs.len(), 4);
    t.publish(keyed("msg_k5", "sub_a")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(arrived(&mut messages), 1);
}

#[tokio::test]
async fn subscription_changes_reach_another_process_and_survive_a_lost_connection() {
    let url = redis_or_skip!();
    let _serial = PUBSUB.lock().await;
    let prefix = herald_testenv::unique_name("herald-test");
    let announcer = open(&url, &prefix).await.unwrap();
    let follower = open(&url, &prefix).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
    let changes = follower.changes.clone();
    let follow = tokio::spawn(async move {
        changes
            .follow(Box::new(move |id| {
                let _ = tx.send(id.map(str::to_string));
            }))
            .await
    });
    async fn next(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Option<String>>,
        within: Duration,
    ) -> Option<String> {
        tokio::time::timeout(within, rx.recv())
            .await
            .expect("a change in time")
            .expect("the feed runs")
    }
    // Until the listener is subscribed, resets come (and announcements may be missed).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut announced = 0;
    'subscribed: loop {
        assert!(
            Instant::now() < deadline,
            "the follower never saw an announcement"
        );
        announced += 1;
        announcer
            .changes
            .announce(&format!("sub_{announced}"))
            .await
            .unwrap();
        let sent = Instant::now();
        while let Ok(Some(got)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
        {
            if got.as_deref() == Some(format!("sub_{announced}").as_str()) {
                assert!(sent.elapsed() < Duration::from_secs(1));
                break 'subscribed;
            }
        }
    }
    let sent = Instant::now();
    announcer.changes.announce("sub_x").await.unwrap();
    assert_eq!(
        next(&mut rx, Duration::from_secs(1)).await.as_deref(),
        Some("sub_x")
    );
    assert!(sent.elapsed() < Duration::from_secs(1));

    let mut conn = raw(&url).await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(killed >= 2, "both processes' listeners were subscribed");
    assert_eq!(
        next(&mut rx, Duration::from_secs(3)).await,
        None,
        "after a reconnect the follower forgets its cache"
    );
    let sent = Instant::now();
    announcer.changes.announce("sub_y").await.unwrap();
    assert_eq!(
        next(&mut rx, Duration::from_secs(1)).await.as_deref(),
        Some("sub_y")
    );
    assert!(sent.elapsed() < Duration::from_secs(1));
    follow.abort();
}

#[tokio::test]
async fn a_wrong_password_or_no_server_fails_open_clearly_and_in_time() {
    let url = redis_or_skip!();
    let user = herald_testenv::unique_name("herald-user");
    let mut conn = raw(&url).await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">right-password")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut conn)
        .await
        .unwrap();
    let hostport = url.trim_start_matches("redis://").trim_end_matches('/');
    let wrong = format!("redis://{user}:wrong-password@{hostport}/");
    let started = Instant::now();
    let err = open(&wrong, "herald-test").await.err().expect("refused");
    assert!(started.elapsed() < Duration::from_secs(3));
    let msg = err.chain();
    assert!(matches!(err, StoreError::Unavailable(..)), "{msg}");
    assert!(msg.contains("refused the credentials"), "{msg}");
    assert!(
        !msg.contains("wrong-password"),
        "the password stays out of messages: {msg}"
    );
    let right = format!("redis://{user}:right-password@{hostport}/");
    let parts = open(&right, &herald_testenv::unique_name("herald-test"))
        .await
        .unwrap();
    parts.transport.ping().await.unwrap();
    let _: i64 = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut conn)
        .await
        .unwrap();

    let port = free_port();
    let started = Instant::now();
    let err = open(&format!("redis://127.0.0.1:{port}/"), "herald-test")
        .await
        .err()
        .expect("no server");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, StoreError::Unavailable(..)),
        "{}",
        err.chain()
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Redis of the test's own, with the test server's settings (AOF) but another port and
/// directory.
struct OwnRedis {
    conf: PathBuf,
    url: String,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    fn start(fsync: Option<&str>) -> Option<Self> {
        let base = herald_testenv::redis_conf()?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut conf: String = std::fs::read_to_string(base)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("port ") && !l.starts_with("dir "))
            .filter(|l| fsync.is_none() || !l.starts_with("appendfsync "))
            .map(|l| format!("{l}\n"))
            .collect();
        conf.push_str(&format!("port {port}\ndir {}\n", dir.path().display()));
        if let Some(f) = fsync {
            conf.push_str(&format!("appendfsync {f}\n"));
        }
        assert!(
            conf.contains("appendonly yes"),
            "the test server runs with AOF"
        );
        let path = dir.path().join("redis.conf");
        std::fs::write(&path, conf).unwrap();
        let mut r = Self {
            conf: path,
            url: format!("redis://127.0.0.1:{port}/"),
            child: None,
            _dir: dir,
        };
        r.run();
        Some(r)
    }

    fn run(&mut self) {
        let child = Command::new("redis-server")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Command::new("redis-cli")
            .args(["-u", &self.url, "ping"])
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
        {
            assert!(Instant::now() < deadline, "own Redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn shutdown(&mut self) {
        let out = Command::new("redis-cli")
            .args(["-u", &self.url, "shutdown"])
            .output()
            .expect("redis-cli");
        // A successful SHUTDOWN closes the connection without a reply.
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        self.wait_exit();
    }

    fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
        self.wait_exit();
    }

    /// Sends a signal (`STOP`, `CONT`) to the server.
    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }

    fn wait_exit(&mut self) {
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "own Redis did not stop");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How a test's own Redis goes down.
#[derive(Clone, Copy)]
enum Stop {
    /// `redis-cli shutdown`: the AOF is flushed.
    Shutdown,
    /// SIGKILL: only what was fsynced survives.
    Kill,
}

/// Stops `redis`; calls during the outage fail as `Unavailable`, with the driver's error, within
/// 2 s; once Redis is back the same transport works again (within a bounded time).
async fn outage_then_recovery(t: &Arc<dyn Transport>, redis: &mut OwnRedis, stop: Stop) {
    match stop {
        Stop::Shutdown => redis.shutdown(),
        Stop::Kill => redis.kill(),
    }
    let bound = Duration::from_millis(2100);
    for _ in 0..3 {
        let started = Instant::now();
        let err = t
            .publish(publish("msg_during", &["sub_a"], b"{}"))
            .await
            .unwrap_err();
        assert!(started.elapsed() < bound, "{:?}", started.elapsed());
        assert!(
            matches!(err, StoreError::Unavailable(..)),
            "{}",
            err.chain()
        );
        assert!(
            std::error::Error::source(&err).is_some(),
            "the driver's error is kept"
        );
        let started = Instant::now();
        let err = t.lease(&claim_request("w", 1, LEASE)).await.unwrap_err();
        assert!(started.elapsed() < bound, "{:?}", started.elapsed());
        assert!(
            matches!(err, StoreError::Unavailable(..)),
            "{}",
            err.chain()
        );
        let started = Instant::now();
        assert!(t.stats().await.is_err());
        assert!(started.elapsed() < bound, "{:?}", started.elapsed());
    }
    redis.run();
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the transport did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Announces `id` until the follower hears it (within 6 s); whether a reset came first.
async fn announce_until_heard(
    feed: &Arc<dyn herald_core::backend::ChangeFeed>,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Option<String>>,
    id: &str,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut reset = false;
    loop {
        assert!(Instant::now() < deadline, "{id} never reached the follower");
        // Fails while Redis is still coming back; the next round tries again.
        let _ = feed.announce(id).await;
        while let Ok(Some(got)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
        {
            match got.as_deref() {
                None => reset = true,
                Some(g) if g == id => return reset,
                Some(_) => {}
            }
        }
    }
}

async fn publish_many(t: &Arc<dyn Transport>, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("msg_{i:04}");
        let subs = [format!("sub_{}", i % 3)];
        let subs: Vec<&str> = subs.iter().map(String::as_str).collect();
        assert_eq!(
            t.publish(publish(&id, &subs, b"{}")).await.unwrap(),
            PublishOutcome::Accepted
        );
        ids.push(id);
    }
    ids
}

/// Leases everything due, however long the intake (a lease fans out one batch of it).
async fn lease_all(t: &Arc<dyn Transport>) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let jobs = lease(t, &claim_request("w_after", 10_000, LEASE))
            .await
            .jobs;
        if jobs.is_empty() {
            break;
        }
        got.extend(jobs.into_iter().map(|j| j.webhook_id));
    }
    got.sort();
    got
}

#[tokio::test]
async fn acknowledged_publishes_survive_a_redis_restart() {
    let Some(mut redis) = OwnRedis::start(None) else {
        return;
    };
    let (p, _) = parts(&redis.url).await;
    let t = p.transport.clone();
    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
    let feed = p.changes.clone();
    let follow = tokio::spawn(async move {
        feed.follow(Box::new(move |id| {
            let _ = tx.send(id.map(str::to_string));
        }))
        .await
    });
    // Subscribed (and everything the feed said so far read) before Redis goes down.
    announce_until_heard(&p.changes, &mut changes, "sub_before").await;
    let ids = publish_many(&t, 300).await;
    // One delivery in flight before the restart stays leased to its worker.
    let held = lease(&t, &claim_request("w_before", 1, LEASE))
        .await
        .jobs
        .remove(0);
    outage_then_recovery(&t, &mut redis, Stop::Shutdown).await;

    // The change feed resubscribed by itself: its follower was told to forget its cache, and
    // announcements reach it again (the listener backs off 2 s at most between tries).
    let reset = announce_until_heard(&p.changes, &mut changes, "sub_after").await;
    assert!(reset, "after the restart the follower forgets its cache");
    follow.abort();

    let mut expect: Vec<String> = ids.into_iter().filter(|i| *i != held.webhook_id).collect();
    expect.sort();
    assert_eq!(
        lease_all(&t).await,
        expect,
        "every queued delivery is still leasable"
    );
    assert_eq!(
        t.held(std::slice::from_ref(&held.receipt)).await.unwrap(),
        vec![true]
    );
    assert_eq!(
        t.settle(&[settle(&held, Disposition::Delivered)])
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn with_fsync_always_acknowledged_publishes_survive_a_kill() {
    let Some(mut redis) = OwnRedis::start(Some("always")) else {
        return;
    };
    let (p, _) = parts(&redis.url).await;
    let t = p.transport.clone();
    let mut ids = publish_many(&t, 200).await;
    outage_then_recovery(&t, &mut redis, Stop::Kill).await;
    ids.sort();
    assert_eq!(lease_all(&t).await, ids);
}

#[tokio::test]
async fn a_redis_that_stops_answering_fails_calls_in_time() {
    let Some(redis) = OwnRedis::start(None) else {
        return;
    };
    let (p, _) = parts(&redis.url).await;
    let t = p.transport.clone();
    publish_many(&t, 3).await;
    // Stopped, the server still accepts connections (the kernel does) but answers nothing.
    redis.signal("STOP");
    let bound = Duration::from_millis(2100);
    for _ in 0..2 {
        let started = Instant::now();
        let err = t
            .publish(publish("msg_stopped", &["sub_a"], b"{}"))
            .await
            .unwrap_err();
        assert!(started.elapsed() < bound, "{:?}", started.elapsed());
        assert!(
            matches!(err, StoreError::Unavailable(..)),
            "{}",
            err.chain()
        );
        let started = Instant::now();
        let err = t.lease(&claim_request("w", 10, LEASE)).await.unwrap_err();
        assert!(started.elapsed() < bound, "{:?}", started.elapsed());
        assert!(
            matches!(err, StoreError::Unavailable(..)),
            "{}",
            err.chain()
        );
    }
    let started = Instant::now();
    p.changes.announce("sub_a").await.unwrap_err();
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
    redis.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the transport did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A publish that timed out may still apply once the server resumes (it had the command):
    // an Unavailable publish is not known to be lost, which is why clients retry with their
    // idempotency key. The ones acknowledged before are all there.
    let got = lease_all(&t).await;
    assert!(got.len() >= 3, "{got:?}");
    for id in ["msg_0000", "msg_0001", "msg_0002"] {
        assert!(got.iter().any(|g| g == id), "{id} in {got:?}");
    }
}

/// The incremental AOF file of a Redis 7 (multi-part AOF) in `dir`.
fn incremental_aof(dir: &std::path::Path) -> PathBuf {
    let aof_dir = dir.join("appendonlydir");
    std::fs::read_dir(&aof_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", aof_dir.display()))
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".incr.aof"))
        .expect("an incremental AOF file")
}

#[tokio::test]
async fn lease_tokens_keep_rising_after_a_restart_that_lost_the_aofs_tail() {
    let Some(mut redis) = OwnRedis::start(Some("always")) else {
        return;
    };
    let (p, _) = parts(&redis.url).await;
    let t = p.transport.clone();
    t.publish(publish("msg_fenced", &["sub_a"], b"{}"))
        .await
        .unwrap();
    // Everything up to here is in the AOF (fsync always); what the lease writes is the tail
    // that a crash with `appendfsync everysec` may lose.
    let aof = incremental_aof(redis._dir.path());
    let before_lease = std::fs::metadata(&aof).unwrap().len();
    let first = lease(&t, &claim_request("w_old", 1, LEASE)).await.jobs;
    assert_eq!(first.len(), 1);
    assert!(std::fs::metadata(&aof).unwrap().len() > before_lease);
    redis.kill();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&aof)
        .unwrap()
        .set_len(before_lease)
        .unwrap();
    redis.run();
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the transport did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The lease is gone with the tail, so the delivery is leased again: under a new token, never
    // the one the old holder (still sending, as far as it knows) has.
    let second = lease(&t, &claim_request("w_new", 1, LEASE)).await.jobs;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].webhook_id, "msg_fenced");
    let token = |j: &Job| {
        j.receipt
            .rsplit('|')
            .next()
            .unwrap()
            .parse::<i64>()
            .unwrap()
    };
    assert!(
        token(&second[0]) > token(&first[0]),
        "{} after {}",
        second[0].receipt,
        first[0].receipt
    );
    // The old holder's settle is stale and changes nothing; the new holder's counts.
    assert_eq!(
        t.settle(&[settle(&first[0], Disposition::Delivered)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        t.held(std::slice::from_ref(&second[0].receipt))
            .await
            .unwrap(),
        vec![true]
    );
    assert_eq!(
        t.settle(&[settle(&second[0], Disposition::Delivered)])
            .await
            .unwrap(),
        0
    );
}

/// Runs one Redis command behind the scripts' back.
async fn cmd(conn: &mut redis::aio::MultiplexedConnection, name: &str, args: &[&str]) {
    let _: redis::Value = redis::cmd(name).arg(args).query_async(conn).await.unwrap();
}

#[tokio::test]
async fn stats_read_counts_kept_by_the_scripts_not_the_queues() {
    let url = redis_or_skip!();
    let (p, prefix) = parts(&url).await;
    let t = &p.transport;
    let mut conn = raw(&url).await;
    for i in 0..4 {
        t.publish(publish(&format!("msg_k{i}"), &["sub_a", "sub_b"], b"{}"))
            .await
            .unwrap();
    }
    let jobs = lease(t, &claim_request("w", 3, LEASE)).await.jobs;
    assert_eq!(jobs.len(), 3);
    let later = Utc::now() + chrono::Duration::hours(1);
    t.settle(&[
        settle(&jobs[0], Disposition::RetryAt(later)),
        settle(&jobs[1], Disposition::Defer(later)),
        settle(&jobs[2], Disposition::Delivered),
    ])
    .await
    .unwrap();
    let expect = QueueStats {
        ready: 5,
        scheduled: 2,
        in_flight: 0,
        ..Default::default()
    };
    assert_eq!(counts(t.stats().await.unwrap()), expect);

    // A queue entry written behind the scripts' back is not seen: stats reads the counts, it
    // does not walk the queues (one read per scrape, whatever the number of subscriptions).
    cmd(
        &mut conn,
        "ZADD",
        &[&format!("{prefix}:q:sub_c"), "0", "msg_behind"],
    )
    .await;
    cmd(&mut conn, "ZADD", &[&format!("{prefix}:due"), "0", "sub_c"]).await;
    assert_eq!(counts(t.stats().await.unwrap()), expect);
    // The periodic recount (and the first run after an upgrade) takes the counts from the
    // queues again.
    cmd(&mut conn, "DEL", &[&format!("{prefix}:counted")]).await;
    assert_eq!(
        counts(t.stats().await.unwrap()),
        QueueStats { ready: 6, ..expect }
    );
    // An installation that ran before the counts existed: everything is counted from the
    // queues once, the deliveries waiting for later included, and kept from then on.
    for key in ["queued", "later", "counted", "counts-rebuilt"] {
        cmd(&mut conn, "DEL", &[&format!("{prefix}:{key}")]).await;
    }
    assert_eq!(
        counts(t.stats().await.unwrap()),
        QueueStats { ready: 6, ..expect }
    );
    t.expedite("sub_a").await.unwrap();
    t.expedite("sub_b").await.unwrap();
    assert_eq!(
        counts(t.stats().await.unwrap()),
        QueueStats {
            ready: 8,
            scheduled: 0,
            ..expect
        }
    );
    let all = lease(t, &claim_request("w", 100, LEASE)).await.jobs;
    assert_eq!(
        all.len(),
        7,
        "the entry written behind the scripts is dropped"
    );
    assert_eq!(
        counts(t.stats().await.unwrap()),
        QueueStats {
            ready: 0,
            scheduled: 0,
            in_flight: 7,
            ..Default::default()
        }
    );
}

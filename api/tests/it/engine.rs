//! The delivery engine's guarantees end to end: fairness under a backlog, retry delays counted
//! from the end of an attempt, a hard shutdown deadline, bounded retry schedules and the lease
//! check at start-up.

use crate::common;

use std::time::{Duration, Instant};

use common::{Behaviour, Receiver, TestHerald};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlogged_slow_subscriber_does_not_delay_another() {
    let h = TestHerald::start(&["--subscription-concurrency=4", "--delivery-concurrency=64"]).await;
    let rx = Receiver::start().await;
    rx.on("/slow", Behaviour::Delay(Duration::from_secs(1)));
    let slow = h
        .create_id(json!({"target_url": rx.url("/slow"), "paused": true}))
        .await;
    let fast = h.subscribe(&rx.url("/fast")).await;
    // A backlog of the slow subscriber, released at once by resuming it (as after a restart
    // with a full queue); at 4 answers per second it lasts minutes.
    let mut ingests = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let api = common::Api::new(h.base.clone());
        let slow = slow.clone();
        ingests.spawn(async move {
            for i in 0..250 {
                api.ingest_ok(&slow, &format!("{{\"w\":{worker},\"i\":{i}}}"))
                    .await;
            }
        });
    }
    while let Some(r) = ingests.join_next().await {
        r.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = h
        .patch(&format!("/subscriptions/{slow}"), json!({"paused": false}))
        .await;
    assert_eq!(r.status(), 200);
    rx.wait_for("/slow", 4, Duration::from_secs(10)).await;
    let started = Instant::now();
    for i in 0..10 {
        h.ingest_ok(&fast, &format!("{{\"fast\":{i}}}")).await;
    }
    rx.wait_for("/fast", 10, Duration::from_secs(20)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "the other subscriber's events waited {took:?} behind the backlog"
    );
    // The fast subscriber's last delivery may still be settling when its receipt arrives, so
    // give in-flight a moment to fall back to the slow subscriber's share (4, not the 64
    // global slots the backlog would take without the per-subscription cap).
    let what = "the slow subscriber to hold no more than its concurrency";
    herald_testenv::wait_ok(what, Duration::from_secs(3), || async {
        let (_, stats) = h.get("/stats").await;
        if stats["queue"]["in_flight"].as_u64().unwrap() <= 4 {
            Ok(())
        } else {
            Err(stats)
        }
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn retry_delay_counts_from_the_end_of_a_timed_out_attempt() {
    let h = TestHerald::start(&[]).await;
    let rx = Receiver::start().await;
    rx.on("/hang", Behaviour::Delay(Duration::from_secs(30)));
    let sub = h
        .create_id(json!({
            "target_url": rx.url("/hang"),
            "timeout_ms": 1000,
            "retry_schedule": ["1s"],
            "max_attempts": 2
        }))
        .await;
    let id = h.ingest_ok(&sub, "{}").await;
    let got = rx.wait_for("/hang", 2, Duration::from_secs(15)).await;
    // The first attempt ends at its 1 s timeout; the retry is due 1 s after that.
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "second attempt {gap:?} after the first"
    );
    h.wait_status(&id, "failed", Duration::from_secs(10)).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_is_a_hard_deadline_and_hands_deliveries_back() {
    let h = TestHerald::start(&["--shutdown-grace=2s"]).await;
    let rx = Receiver::start().await;
    rx.on("/slow", Behaviour::Delay(Duration::from_secs(40)));
    let sub = h
        .create_id(json!({"target_url": rx.url("/slow"), "timeout_ms": 60000}))
        .await;
    let id = h.ingest_ok(&sub, "{}").await;
    rx.wait_for("/slow", 1, Duration::from_secs(10)).await;
    let stopping = Instant::now();
    let dir = h.stop_keeping_dir().await;
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "stopping took {took:?} with a 2 s grace"
    );

    // The cancelled attempt counts for nothing: after a restart the delivery is made again.
    rx.on("/slow", Behaviour::Status(200));
    let h = TestHerald::start_with(dir, |_| {}, &[]).await;
    let status = h
        .wait_status(&id, "succeeded", Duration::from_secs(15))
        .await;
    let attempts = status["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{status}");
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(rx.received("/slow").len(), 2);
    h.stop().await;
}

#[tokio::test]
async fn retry_schedules_beyond_seven_days_are_refused() {
    let h = TestHerald::start(&[]).await;
    let rx = Receiver::start().await;
    for schedule in [json!(["300000y"]), json!(["10s", "8d"])] {
        let r = h
            .http
            .post(h.url("/subscriptions"))
            .json(&json!({"target_url": rx.url("/x"), "retry_schedule": schedule}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{schedule}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body.to_string().contains("retry_schedule"), "{body}");
    }
    let sub = h
        .create_id(json!({"target_url": rx.url("/x"), "retry_schedule": ["7d"]}))
        .await;
    let r = h
        .patch(
            &format!("/subscriptions/{sub}"),
            json!({"retry_schedule": ["300000y"]}),
        )
        .await;
    assert_eq!(r.status(), 422);
    h.stop().await;
}

#[tokio::test]
async fn a_lease_shorter_than_the_longest_timeout_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let s = common::settings(dir.path(), &["--delivery-lease=2m"]);
    let err = herald_api::App::build(s).await.err().expect("refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("HERALD_DELIVERY_LEASE"), "{msg}");
}

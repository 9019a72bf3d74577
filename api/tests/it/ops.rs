//! Operations against a real server: readiness while the store is full, queue gauges kept off
//! the scrape path. Metrics are process-wide: the gauge test has them to itself (see
//! [`common::gauges_to_itself`]).

use crate::common;

use std::time::{Duration, Instant};

use common::{gauges_to_itself, Receiver, TestHerald};
use serde_json::Value;

#[tokio::test]
async fn a_full_store_makes_ingest_and_readiness_503_until_space_is_freed() {
    // A size limit a few dozen events fill: writes then fail with SQLITE_FULL, as on a full disk.
    let h = TestHerald::start(&["--sqlite-max-size=262144", "--workers=false"]).await;
    let rx = Receiver::start().await;
    let sub = h.subscribe(&rx.url("/full")).await;
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(20_000));
    let mut full = None;
    for i in 0..200 {
        let r = h.ingest(&sub, "t", &body).await;
        match r.status().as_u16() {
            202 => continue,
            503 => {
                full = Some((i, r.json::<Value>().await.unwrap()));
                break;
            }
            other => panic!("ingest {i} answered {other}"),
        }
    }
    let (accepted, err) = full.expect("the store filled up within 200 events");
    assert!(accepted > 0, "some events fitted before the limit");
    assert!(err["error"].as_str().unwrap().contains("full"), "{err}");
    let r = h.http.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("full"), "{v}");
    // Reads still work while writes fail.
    assert_eq!(h.get(&format!("/subscriptions/{sub}")).await.0, 200);

    // Free space the way retention would: drop the queued rows from another connection.
    let db = rusqlite::Connection::open(h.dir.path().join("herald.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute_batch("DELETE FROM deliveries; DELETE FROM events;")
        .unwrap();
    drop(db);
    assert_eq!(h.ingest(&sub, "t", "{}").await.status(), 202);
    let r = h.http.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "ready again once a write succeeded");
    h.stop().await;
}

fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn scrape(h: &TestHerald) -> String {
    let r = h.http.get(h.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

#[tokio::test]
async fn queue_gauges_are_counted_in_the_background_not_per_scrape() {
    let alone = gauges_to_itself().await;
    let rx = Receiver::start().await;
    // A recount interval longer than the test: scrapes serve the count taken at start.
    let slow =
        TestHerald::start_reading_gauges(&alone, &["--metrics-interval=1h", "--workers=false"])
            .await;
    let sub = slow.subscribe(&rx.url("/g")).await;
    // Lets the count taken at start come before the ingests. Not a condition wait: a scrape
    // cannot tell this Herald's first count from an earlier Herald's (the gauges are
    // process-wide and keep their last values).
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        assert_eq!(slow.ingest(&sub, "t", "{}").await.status(), 202);
    }
    for _ in 0..5 {
        let m = scrape(&slow).await;
        assert_eq!(gauge(&m, "herald_queue_ready"), Some(0.0), "{m}");
        assert!(
            gauge(&m, "herald_queue_gauges_age_seconds").is_some(),
            "{m}"
        );
    }
    slow.stop().await;

    // A short interval: the gauges follow the queue without a scrape asking for it.
    let fast =
        TestHerald::start_reading_gauges(&alone, &["--metrics-interval=100ms", "--workers=false"])
            .await;
    let sub = fast.subscribe(&rx.url("/g")).await;
    for _ in 0..3 {
        assert_eq!(fast.ingest(&sub, "t", "{}").await.status(), 202);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(&fast).await;
        if gauge(&m, "herald_queue_ready") == Some(3.0) {
            let age = gauge(&m, "herald_queue_gauges_age_seconds").unwrap();
            assert!(age < 5.0, "{age}");
            // Nothing delivers (no workers): the oldest ready delivery's wait grows.
            let waiting = gauge(&m, "herald_queue_oldest_ready_age_seconds").unwrap();
            assert!((0.0..60.0).contains(&waiting), "{waiting}");
            // Time is the point: the oldest ready delivery ages.
            tokio::time::sleep(Duration::from_millis(400)).await;
            let later = gauge(
                &scrape(&fast).await,
                "herald_queue_oldest_ready_age_seconds",
            );
            assert!(later.unwrap() >= waiting + 0.2, "{later:?} after {waiting}");
            break;
        }
        assert!(Instant::now() < deadline, "the gauges never reached 3: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fast.stop().await;
}

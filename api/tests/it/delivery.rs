//! Delivery semantics end to end: a real Herald delivering to real receivers on loopback.

use crate::common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::{Behaviour, Receiver, TestHerald};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn accepted_event_is_delivered_with_headers_and_exact_bytes() {
    let h = TestHerald::start(&[]).await;
    let rx = Receiver::start().await;
    let sub = h
        .create_id(json!({"target_url": rx.url("/hook"), "headers": {"X-Team": "shop"}}))
        .await;
    let payload = "{ \"order.id\": 7, \"$meta\": {\"note\": \"é\"} }";
    let r = h.ingest(&sub, "order.created", payload).await;
    assert_eq!(r.status(), 202);
    let webhook_id = r.json::<Value>().await.unwrap()["webhook_id"]
        .as_str()
        .unwrap()
        .to_string();
    let got = rx.wait_for("/hook", 1, WAIT).await;
    let req = &got[0];
    assert_eq!(
        &req.body[..],
        payload.as_bytes(),
        "payload delivered byte for byte"
    );
    assert_eq!(req.headers["webhook-id"], webhook_id.as_str());
    assert_eq!(req.headers["event-type"], "order.created");
    assert_eq!(req.headers["x-team"], "shop");
    assert_eq!(req.headers["content-type"], "application/json");
    assert!(req.headers["user-agent"]
        .to_str()
        .unwrap()
        .starts_with("herald/"));
    assert!(
        req.headers.get("webhook-signature").is_none(),
        "no secret, no signature"
    );
    let ts: i64 = req.headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 10);

    let status = h.wait_status(&webhook_id, "succeeded", WAIT).await;
    assert_eq!(status["attempts"][0]["outcome"], "Success");
    assert_eq!(status["attempts"][0]["http_status"], 200);
    let (_, logs) = h.get(&format!("/subscription/logs/{sub}")).await;
    assert_eq!(logs["data"][0]["webhook_id"], webhook_id.as_str());
    h.stop().await;
}

/// Verifies a Standard Webhooks signature the way the reference libraries do, independently of
/// Herald's signing code: key = base64-decoded part after `whsec_`.
fn standard_webhooks_verify(secret: &str, id: &str, ts: &str, body: &[u8], header: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|sig| sig == expected)
}

#[tokio::test]
async fn outgoing_signatures_verify_like_standard_webhooks() {
    let h = TestHerald::start(&[]).await;
    let rx = Receiver::start().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let sub = h
        .create_id(json!({"target_url": rx.url("/signed"), "secret": secret}))
        .await;
    let body = r#"{"test": 2432232314}"#;
    let sig = common::hub_signature(secret, body.as_bytes());
    let r = h
        .http
        .post(h.url(&format!("/ingest/{sub}")))
        .header("Content-Type", "application/json")
        .header("X-Hub-Signature-256", &sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let req = rx.wait_for("/signed", 1, WAIT).await.remove(0);
    let id = req.headers["webhook-id"].to_str().unwrap();
    let ts = req.headers["webhook-timestamp"].to_str().unwrap();
    let header = req.headers["webhook-signature"].to_str().unwrap();
    assert!(
        standard_webhooks_verify(secret, id, ts, &req.body, header),
        "{header}"
    );
    // X-Hub-Signature-256 uses the secret's UTF-8 bytes: the same value the producer sent.
    assert_eq!(req.headers["x-hub-signature-256"].to_str().unwrap(), sig);
    h.stop().await;
}

#[tokio::test]
async fn fan_out_by_event_type() {
    let h = TestHerald::start(&["--ingest-key=fanout-key"]).await;
    let rx = Receiver::start().await;
    h.create(
        json!({"target_url": rx.url("/orders"), "event_types": ["order.created", "order.paid"]}),
    )
    .await;
    h.create(json!({"target_url": rx.url("/all")})).await;
    h.create(json!({"target_url": rx.url("/users"), "event_types": ["user.created"]}))
        .await;
    let send = |t: &'static str| {
        h.http
            .post(h.url("/events"))
            .bearer_auth("fanout-key")
            .header("Content-Type", "application/json")
            .header("Event-Type", t)
            .body(format!("{{\"type\":\"{t}\"}}"))
            .send()
    };
    let r: Value = send("order.paid").await.unwrap().json().await.unwrap();
    assert_eq!(r["matched"], 2);
    let r: Value = send("user.created").await.unwrap().json().await.unwrap();
    assert_eq!(r["matched"], 2);
    let r: Value = send("nobody.listens").await.unwrap().json().await.unwrap();
    assert_eq!(r["matched"], 1);
    rx.wait_for("/all", 3, WAIT).await;
    rx.wait_for("/orders", 1, WAIT).await;
    rx.wait_for("/users", 1, WAIT).await;
    // A quiet window: what must not happen has no event to wait for.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received("/orders").len(), 1);
    assert_eq!(rx.received("/users").len(), 1);
    // One webhook id per event, the same for every subscriber.
    let orders = &rx.received("/orders")[0];
    assert!(rx
        .received("/all")
        .iter()
        .any(|r| r.headers["webhook-id"] == orders.headers["webhook-id"]));
    h.stop().await;
}

#[tokio::test]
async fn direct_ingest_respects_the_subscription_filter() {
    let h = TestHerald::start(&[]).await;
    let rx = Receiver::start().await;
    let sub = h
        .create_id(json!({"target_url": rx.url("/f"), "event_types": ["a.b"]}))
        .await;
    assert_eq!(h.ingest(&sub, "other.type", "{}").await.status(), 422);
    assert_eq!(h.ingest(&sub, "a.b", "{}").await.status(), 202);
    rx.wait_for("/f", 1, WAIT).await;
    h.stop().await;
}

#[tokio::test]
async fn retries_until_success_on_the_schedule() {
    let h = TestHerald::start(&[]).await;
    let rx = Receiver::start().await;
    rx.on("/flaky", Behaviour::FailTimes(2));
    let sub = h.subscribe(&rx.url("/flaky")).await;
    let id = h.ingest_ok(&sub, "{}").await;
    let status = h.wait_status(&id, "succeeded", WAIT).await;
    let got = rx.received("/flaky");
    assert_eq!(got.len(), 3);
    // Schedule 100ms, 200ms: each retry waits at least its delay.
    assert!(got[1].at - got[0].at >= Duration::from_millis(95));
    assert!(got[2].at - got[1].at >= Duration::from_millis(195));
    assert!(
        got.iter().all(|r| r.headers["webhook-id"] == id.as_str()),
        "same id on every attempt"
    );
    let outcomes: Vec<_> = status["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap(),
                a["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (1, "FailedAttempt".into()),
            (2, "FailedAttempt".into()),
            (3, "Success".into())
        ]
    );
    h.stop().await;
}

#[tokio::test]
async fn gives_up_after_the_last_attempt_with_every_attempt_logged() {
    let h = TestHerald::start(&[]).await;
    let rx = Receiver::start().await;
    rx.on(
        "/down",
        Behaviour::Full(500, None, "database on fire".into()),
    );
    let sub = h.subscribe(&rx.url("/down")).await;
    let id = h.ingest_ok(&sub, "{\"n\":1}").await;
    let status = h.wait_status(&id, "failed", WAIT).await;
    let attempts = status["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "schedule of 2 delays: 3 attempts");
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a["webhook_id"], id.as_str());
        assert_eq!(a["subscription_id"], sub.as_str());
        assert_eq!(a["event_type"], "order.created");
        assert_eq!(a["target_url"], rx.url("/down"));
        assert_eq!(a["attempt"], i as u64 + 1);
        assert_eq!(a["http_status"], 500);
        assert_eq!(a["error"], "HTTP 500");
        assert_eq!(a["response_excerpt"], "database on fire");
        assert!(a["duration_ms"].is_u64());
        assert!(a["attempted_at"].is_string());
    }
    assert_eq!(attempts[0]["outcome"], "FailedAttempt");
    assert_eq!(attempts[1]["outcome"], "FailedAttempt");
    assert_eq!(attempts[2]["outcome"], "Failure");
    assert_eq!(status["deliveries"][0]["status"], "failed");
    // A quiet window: what must not happen has no event to wait for.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(rx.received("/down").len(), 3, "no attempt after the last");

    // Manual retry: one more attempt now.
    rx.on("/down", Behaviour::Status(200));
    let r = h.post_empty(&format!("/webhooks/{id}/retry")).await;
    assert_eq!(r.status(), 202);
    let status = h.wait_status(&id, "succeeded", WAIT).await;
    let last = status["attempts"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["attempt"], 4);
    assert_eq!(last["outcome"], "Success");
    // Nothing failed any more: a second retry is a conflict.
    let r = h.post_empty(&format!("/webhooks/{id}/retry")).await;
    assert_eq!(r.status(), 409);
    h.stop().await;
}

#[tokio::test]
async fn per_subscription_max_attempts_and_schedule() {
    let h = TestHerald::start(&[]).await;
    let rx = Receiver::start().await;
    rx.on("/once", Behaviour::Status(503));
    let sub = h
        .create(
            json!({"target_url": rx.url("/once"), "max_attempts": 2, "retry_schedule": ["50ms"]}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let id = h.ingest_ok(&sub, "{}").await;
    let status = h.wait_status(&id, "failed", WAIT).await;
    assert_eq!(status["attempts"].as_array().unwrap().len(), 2);
    h.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured_when_longer() {
    let h = TestHerald::start(&[]).await;
    let rx = Receiver::start().await;
    rx.on(
        "/busy",
        Behaviour::Full(429, Some("1".into()), "slow down".into()),
    );
    let sub = h.subscribe(&rx.url("/busy")).await;
    let id = h.ingest_ok(&sub, "{}").await;
    let first = rx.wait_for("/busy", 1, WAIT).await;
    rx.on("/busy", Behaviour::Status(200));
    let got = rx.wait_for("/busy", 2, WAIT).await;
    let gap = got[1].at - first[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After: 1 beats the 100ms schedule (waited {gap:?})"
    );
    h.wait_status(&id, "succeeded", WAIT).await;
    h.stop().await;
}

#[tokio::test]
async fn a_hanging_receiver_times_out() {
    let h = TestHerald::start(&[]).await;
    let rx = Receiver::start().await;
    rx.on("/hang", Behaviour::Delay(Duration::from_secs(30)));
    let sub = h
        .create_id(json!({"target_url": rx.url("/hang"), "timeout_ms": 300, "max_attempts": 1}))
        .await;
    let started = Instant::now();
    let id = h.ingest_ok(&sub, "{}").await;
    let status = h.wait_status(&id, "failed", WAIT).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let a = &status["attempts"][0];
    assert_eq!(a["outcome"], "Failure");
    assert_eq!(a["http_status"], Value::Null);
    assert!(a["error"].as_str().unwrap().contains("timed out"), "{a}");
    assert!(a["duration_ms"].as_u64().unwrap() >= 290);
    h.stop().await;
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let h = TestHerald::start(&[]).await;
    let rx = Receiver::start().await;
    rx.on("/moved", Behaviour::Full(302, None, String::new()));
    let sub = h
        .create_id(json!({"target_url": rx.url("/moved"), "max_attempts": 1}))
        .await;
    let id = h.ingest_ok(&sub, "{}").await;
    let status = h.wait_status(&id, "failed", WAIT).await;
    assert_eq!(status["attempts"][0]["http_status"], 302);
    h.stop().await;
}

#[tokio::test]
async fn status_is_queued_before_the_first_attempt() {
    let h = TestHerald::start(&[]).await;
    let rx = Receiver::start().await;
    // A paused subscription holds its deliveries: the webhook stays queued.
    let sub = h
        .create_id(json!({"target_url": rx.url("/later"), "paused": true}))
        .await;
    let id = h.ingest_ok(&sub, "{}").await;
    // A worker looks at it once (briefly `delivering`), finds the subscription paused and puts
    // it back without an attempt: from then on it is `queued`.
    let v = h.wait_status(&id, "queued", WAIT).await;
    assert_eq!(v["deliveries"][0]["attempts"], 0);
    // A quiet window: what must not happen has no event to wait for.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, v) = h.get(&format!("/webhooks/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(v["status"], "queued", "{v}");
    assert_eq!(v["attempts"], json!([]));
    assert!(rx.received("/later").is_empty());
    // Resuming delivers at once.
    let r = h
        .patch(&format!("/subscriptions/{sub}"), json!({"paused": false}))
        .await;
    assert_eq!(r.status(), 200);
    h.wait_status(&id, "succeeded", WAIT).await;
    h.stop().await;
}

/// Resuming a subscription while its deliveries are being put off (claimed while it was paused,
/// settled after the resume made the waiting ones due) delivers every one of them at once, none
/// left for the minute a paused delivery waits before it is looked at again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resume_amid_put_off_deliveries_leaves_none_behind() {
    const EVENTS: usize = 3000;
    let h = TestHerald::start(&[]).await;
    let rx = Receiver::start().await;
    let sub = h
        .create_id(json!({"target_url": rx.url("/resumed"), "paused": true}))
        .await;
    // Events keep arriving (and workers keep putting them off) while the resume lands.
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..8 {
        let (api, sub, sent) = (h.api.clone(), sub.clone(), sent.clone());
        senders.push(tokio::spawn(async move {
            while sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < EVENTS {
                api.ingest_ok(&sub, "{}").await;
            }
        }));
    }
    herald_testenv::wait_for("half the events accepted", WAIT, || async {
        sent.load(std::sync::atomic::Ordering::Relaxed) >= EVENTS / 2
    })
    .await;
    let r = h
        .patch(&format!("/subscriptions/{sub}"), json!({"paused": false}))
        .await;
    assert_eq!(r.status(), 200);
    for s in senders {
        s.await.unwrap();
    }
    // Well inside the minute a put-off delivery would otherwise wait.
    rx.wait_for("/resumed", EVENTS, Duration::from_secs(20))
        .await;
    h.stop().await;
}

#[tokio::test]
async fn recent_deliveries_are_the_last_twenty_newest_first() {
    let h = TestHerald::start(&[]).await;
    let rx = Receiver::start().await;
    let sub = h.subscribe(&rx.url("/many")).await;
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(h.ingest_ok(&sub, &format!("{{\"i\":{i}}}")).await);
        // Distinct attempt times make the order observable.
        rx.wait_for("/many", i + 1, WAIT).await;
    }
    // The last attempt is recorded just after its answer arrived.
    let want: Vec<&str> = ids.iter().rev().take(20).map(String::as_str).collect();
    herald_testenv::wait_ok("the last twenty attempts, newest first", WAIT, || async {
        let (_, v) = h.get(&format!("/subscriptions/{sub}/deliveries")).await;
        let got: Vec<String> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["webhook_id"].as_str().unwrap().to_string())
            .collect();
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    let (_, v) = h
        .get(&format!("/subscriptions/{sub}/deliveries?limit=5"))
        .await;
    assert_eq!(v["data"].as_array().unwrap().len(), 5);
    h.stop().await;
}

#[tokio::test]
async fn a_slow_subscriber_does_not_stop_a_fast_one() {
    let h = TestHerald::start(&["--subscription-concurrency=4", "--delivery-concurrency=32"]).await;
    let rx = Receiver::start().await;
    rx.on("/slow", Behaviour::Delay(Duration::from_secs(3)));
    let slow = h.subscribe(&rx.url("/slow")).await;
    let fast = h.subscribe(&rx.url("/fast")).await;
    for _ in 0..40 {
        h.ingest_ok(&slow, "{}").await;
    }
    let started = Instant::now();
    for _ in 0..20 {
        h.ingest_ok(&fast, "{}").await;
    }
    rx.wait_for("/fast", 20, WAIT).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "fast deliveries waited {:?} behind the slow subscriber",
        started.elapsed()
    );
    assert!(
        rx.received("/slow").len() <= 4,
        "slow subscriber bounded to its concurrency"
    );
    h.stop().await;
}

#[tokio::test]
async fn deleting_a_subscription_fails_its_queued_deliveries_clearly() {
    let h = TestHerald::start(&[]).await;
    let rx = Receiver::start().await;
    rx.on("/gone", Behaviour::Status(500));
    let sub = h
        .create_id(json!({"target_url": rx.url("/gone"), "retry_schedule": ["1h"]}))
        .await;
    let id = h.ingest_ok(&sub, "{}").await;
    rx.wait_for("/gone", 1, WAIT).await;
    h.wait_status(&id, "delivering", WAIT).await;
    let r = h.delete(&format!("/subscriptions/{sub}")).await;
    assert_eq!(r.status(), 204);
    let status = h.wait_status(&id, "failed", WAIT).await;
    let last = status["attempts"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["outcome"], "Failure");
    assert!(
        last["error"].as_str().unwrap().contains("deleted"),
        "{last}"
    );
    // The log stays readable after the subscription is gone.
    let (code, _) = h.get(&format!("/subscriptions/{sub}/deliveries")).await;
    assert_eq!(code, 200);
    h.stop().await;
}

#[tokio::test]
async fn ssrf_guard_refuses_internal_targets_unless_allowed() {
    // No allow-list: loopback and private literal targets are refused at creation ...
    let h = TestHerald::start_with(
        tempfile::tempdir().unwrap(),
        |s| s.targets.allow_targets = Default::default(),
        &[],
    )
    .await;
    let rx = Receiver::start().await;
    let rx6 = Receiver::start_on("[::1]:0").await;
    for target in [
        rx.url("/x"),
        rx6.url("/x"),
        "http://10.0.0.1/x".to_string(),
        "http://192.168.1.10/x".to_string(),
        "http://169.254.169.254/latest/meta-data".to_string(),
        "http://[fe80::1]/x".to_string(),
        "http://[::ffff:127.0.0.1]/x".to_string(),
    ] {
        let r = h
            .http
            .post(h.url("/subscriptions"))
            .json(&json!({"target_url": target}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{target}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("HERALD_ALLOW_TARGETS"),
            "{v}"
        );
    }
    // ... and a name that resolves to loopback is refused after DNS resolution, at delivery.
    let port = rx.addr.port();
    let sub = h
        .create(json!({"target_url": format!("http://localhost:{port}/x"), "max_attempts": 1}))
        .await;
    let id = h.ingest_ok(sub["id"].as_str().unwrap(), "{}").await;
    let status = h.wait_status(&id, "failed", WAIT).await;
    let err = status["attempts"][0]["error"].as_str().unwrap();
    assert!(err.contains("loopback"), "{err}");
    assert!(rx.received("/x").is_empty(), "nothing reached the receiver");
    h.stop().await;
}

#[tokio::test]
async fn ipv6_loopback_receivers_work_when_allowed() {
    let h = TestHerald::start(&[]).await;
    let rx6 = Receiver::start_on("[::1]:0").await;
    let sub = h.subscribe(&rx6.url("/v6")).await;
    let id = h.ingest_ok(&sub, "{}").await;
    rx6.wait_for("/v6", 1, WAIT).await;
    h.wait_status(&id, "succeeded", WAIT).await;
    h.stop().await;
}

#[tokio::test]
async fn retention_deletes_old_attempts_and_keeps_newer_ones() {
    let h = TestHerald::start(&["--retention=3s", "--retention-interval=200ms"]).await;
    let rx = Receiver::start().await;
    let sub = h.subscribe(&rx.url("/ret")).await;
    let old = h.ingest_ok(&sub, "{}").await;
    h.wait_status(&old, "succeeded", WAIT).await;
    // Age is the point: the first attempt must be older than the second by about 2 s.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let new = h.ingest_ok(&sub, "{}").await;
    h.wait_status(&new, "succeeded", WAIT).await;
    // The old attempt passes 3 s of age while the new one is about 1.5 s old.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (_, v) = h.get(&format!("/subscriptions/{sub}/deliveries")).await;
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["webhook_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![new.as_str()], "old attempt deleted, newer kept");
    let (code, _) = h.get(&format!("/webhooks/{old}")).await;
    assert_eq!(code, 404, "the settled event is gone too");
    h.stop().await;
}

#[tokio::test]
async fn metrics_and_stats_count_deliveries() {
    let h = TestHerald::start(&[]).await;
    let rx = Receiver::start().await;
    let sub = h.subscribe(&rx.url("/m")).await;
    let id = h.ingest_ok(&sub, "{}").await;
    h.wait_status(&id, "succeeded", WAIT).await;
    let text = h
        .http
        .get(h.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "herald_events_ingested_total",
        "herald_deliveries_succeeded_total",
        "herald_attempt_duration_seconds_bucket",
        "herald_queue_ready",
        "herald_queue_retry_backlog",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    // This Herald's own counts, whatever the other tests of the process did.
    let (_, stats) = h.get("/stats").await;
    assert_eq!(
        (&stats["ingested"], &stats["delivered"], &stats["failed"]),
        (&json!(1), &json!(1), &json!(0)),
        "{stats}"
    );
    let (code, ready) = h.get("/readyz").await;
    assert_eq!((code, ready["status"].as_str()), (200, Some("ok")));
    h.stop().await;
}

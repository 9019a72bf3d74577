//! Endpoint health and secret rotation end to end: a real Herald, real receivers on loopback,
//! and the `standardwebhooks` reference library verifying what Herald sends.

use crate::common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{Behaviour, Receiver, TestHerald};
use herald_backends::sqlite::{Sqlite, Sync};
use herald_core::model::Owner;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);
const INGEST_KEY: &str = "health-ingest-key";
/// Standard Webhooks secrets (`whsec_` + base64), so the reference library takes them as is.
const OLD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW_SECRET: &str = "whsec_c2Vjb25kLXNlY3JldC1mb3ItaGVyYWxkLXRlc3Rz";

async fn start(extra: &[&str]) -> TestHerald {
    let key = format!("--ingest-key={INGEST_KEY}");
    let mut args = vec![key.as_str()];
    args.extend_from_slice(extra);
    TestHerald::start(&args).await
}

/// `POST /ingest/{sub}` with the ingest key and, when given, a signature made with `secret`.
async fn ingest(h: &TestHerald, sub: &str, body: &str, secret: Option<&str>) -> reqwest::Response {
    let mut req = h
        .http
        .post(h.url(&format!("/ingest/{sub}")))
        .bearer_auth(INGEST_KEY)
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(secret) = secret {
        req = req.header(
            "X-Hub-Signature-256",
            common::hub_signature(secret, body.as_bytes()),
        );
    }
    req.send().await.unwrap()
}

async fn ingest_id(h: &TestHerald, sub: &str, body: &str, secret: Option<&str>) -> String {
    let r = ingest(h, sub, body, secret).await;
    assert_eq!(r.status(), 202, "ingest to {sub}");
    let v: Value = r.json().await.unwrap();
    v["webhook_id"].as_str().unwrap().to_string()
}

async fn fanout(h: &TestHerald, event_type: &str) -> Value {
    let r = h
        .http
        .post(h.url("/events"))
        .bearer_auth(INGEST_KEY)
        .header("Content-Type", "application/json")
        .header("Event-Type", event_type)
        .body(r#"{"fan":"out"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json().await.unwrap()
}

async fn rotate(h: &TestHerald, sub: &str, body: Option<Value>) -> reqwest::Response {
    let req = h
        .http
        .post(h.url(&format!("/subscriptions/{sub}/secret/rotate")));
    match body {
        Some(b) => req.json(&b),
        None => req,
    }
    .send()
    .await
    .unwrap()
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("a timestamp, not {v}"))
        .parse()
        .unwrap()
}

/// Verifies a delivery with the Standard Webhooks reference library.
fn verifies_with(secret: &str, req: &common::Received) -> bool {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&req.body, &req.headers)
        .is_ok()
}

#[tokio::test]
async fn gone_disables_at_once_and_patch_re_enables() {
    let h = start(&[]).await;
    let rx = Receiver::start().await;
    rx.on("/gone", Behaviour::Status(410));
    let gone = h.create_id(json!({"target_url": rx.url("/gone")})).await;
    let other = h.create_id(json!({"target_url": rx.url("/other")})).await;

    let id = ingest_id(&h, &gone, r#"{"n":1}"#, None).await;
    let status = h.wait_status(&id, "failed", WAIT).await;
    let attempts = status["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "a 410 is not retried: {status}");
    assert_eq!(attempts[0]["http_status"], 410);
    let (_, sub) = h.get(&format!("/subscriptions/{gone}")).await;
    time(&sub["disabled_at"]);
    assert!(
        sub["disabled_reason"].as_str().unwrap().contains("410"),
        "{sub}"
    );
    let (_, healthy) = h.get(&format!("/subscriptions/{other}")).await;
    assert!(healthy["disabled_at"].is_null() && healthy["disabled_reason"].is_null());
    let (_, list) = h.get("/subscriptions").await;
    assert!(list["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == gone.as_str() && s["disabled_at"].is_string()));

    // Ingest refuses it with the reason; fan-out leaves it out.
    let r = ingest(&h, &gone, r#"{"n":2}"#, None).await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("410 Gone"), "{v}");
    let v = fanout(&h, "any.type").await;
    assert_eq!(v["matched"], 1, "{v}");
    rx.wait_for("/other", 1, WAIT).await;
    // A quiet window: what must not happen has no event to wait for.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received("/gone").len(), 1);

    let r = h.http.get(h.url("/metrics")).send().await.unwrap();
    let text = r.text().await.unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("herald_subscriptions_disabled_total{reason=\"gone\"}")),
        "{text}"
    );

    // The endpoint is fixed; a PATCH re-enables and deliveries resume.
    rx.on("/gone", Behaviour::Status(200));
    let r = h
        .patch(&format!("/subscriptions/{gone}"), json!({"paused": false}))
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["disabled_at"].is_null()
            && v["disabled_reason"].is_null()
            && v["failing_since"].is_null(),
        "{v}"
    );
    let id = ingest_id(&h, &gone, r#"{"n":3}"#, None).await;
    h.wait_status(&id, "succeeded", WAIT).await;
    assert_eq!(rx.received("/gone").len(), 2);
    assert_eq!(fanout(&h, "any.type").await["matched"], 2);
    rx.wait_for("/gone", 3, WAIT).await;
    h.stop().await;
}

#[tokio::test]
async fn failing_for_the_disable_period_disables() {
    let h = start(&["--disable-after=1s"]).await;
    let rx = Receiver::start().await;
    rx.on("/down", Behaviour::Status(500));
    let sub = h
        .create_id(json!({
            "target_url": rx.url("/down"),
            "retry_schedule": ["700ms", "700ms", "700ms", "700ms"],
        }))
        .await;
    let id = ingest_id(&h, &sub, "{}", None).await;
    rx.wait_for("/down", 1, WAIT).await;
    let (_, v) = h.get(&format!("/subscriptions/{sub}")).await;
    let since = time(&v["failing_since"]);
    assert!(
        v["disabled_at"].is_null(),
        "one failure does not disable: {v}"
    );

    let status = h.wait_status(&id, "failed", WAIT).await;
    let attempts = status["attempts"].as_array().unwrap();
    // The attempt at or past one second of failures disables; none follows it.
    assert!(
        (2..5).contains(&attempts.len()),
        "stopped before the schedule ran out: {status}"
    );
    let last = attempts.last().unwrap();
    assert_eq!(last["outcome"], "Failure");
    assert!(
        last["error"].as_str().unwrap().contains("disabled"),
        "{last}"
    );
    let (_, v) = h.get(&format!("/subscriptions/{sub}")).await;
    let reason = v["disabled_reason"].as_str().unwrap();
    assert!(reason.contains("every attempt failed for 1s"), "{v}");
    assert!(time(&v["disabled_at"]) >= since + chrono::Duration::seconds(1));
    let seen = rx.received("/down").len();
    // A quiet window: what must not happen has no event to wait for.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        rx.received("/down").len(),
        seen,
        "no attempt after disabling"
    );

    let r = ingest(&h, &sub, "{}", None).await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("every attempt failed"));
    assert_eq!(fanout(&h, "x").await["matched"], 0);

    // A PUT re-enables too, and starts the failure period afresh.
    rx.on("/down", Behaviour::Status(204));
    let r = h
        .put(
            &format!("/subscriptions/{sub}"),
            json!({"target_url": rx.url("/down")}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["disabled_at"].is_null() && v["failing_since"].is_null(),
        "{v}"
    );
    let id = ingest_id(&h, &sub, "{}", None).await;
    h.wait_status(&id, "succeeded", WAIT).await;
    h.stop().await;
}

#[tokio::test]
async fn during_the_overlap_deliveries_verify_with_each_secret() {
    let h = start(&[]).await;
    let rx = Receiver::start().await;
    let sub = h
        .create_id(json!({"target_url": rx.url("/rot"), "secret": OLD_SECRET}))
        .await;
    let before = Utc::now();
    let r = rotate(&h, &sub, Some(json!({"overlap": "1h"}))).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains(OLD_SECRET),
        "the previous secret is never shown"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    let new = v["secret"].as_str().unwrap().to_string();
    assert!(new.starts_with("whsec_") && new != OLD_SECRET, "{v}");
    let until = time(&v["previous_secret_expires_at"]);
    assert!(until >= before + chrono::Duration::minutes(59));
    assert!(until <= Utc::now() + chrono::Duration::minutes(61));
    let view = &v["subscription"];
    assert_eq!(view["has_secret"], true);
    assert_eq!(time(&view["previous_secret_expires_at"]), until);
    assert!(view.get("secret").is_none() && view.get("previous_secret").is_none());
    let r = h
        .http
        .get(h.url(&format!("/subscriptions/{sub}")))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(!text.contains(OLD_SECRET) && !text.contains(&new), "{text}");

    // Ingest takes a signature made with either secret, and only those.
    let by_old = ingest_id(&h, &sub, r#"{"signed":"old"}"#, Some(OLD_SECRET)).await;
    let by_new = ingest_id(&h, &sub, r#"{"signed":"new"}"#, Some(&new)).await;
    let r = ingest(&h, &sub, "{}", Some("whsec_bm90LXRoZS1zZWNyZXQtYXQtYWxs")).await;
    assert_eq!(r.status(), 401);
    assert_eq!(ingest(&h, &sub, "{}", None).await.status(), 401);

    let got = rx.wait_for("/rot", 2, WAIT).await;
    for req in &got {
        let id = req.headers["webhook-id"].to_str().unwrap();
        assert!(id == by_old || id == by_new);
        let sigs = req.headers["webhook-signature"].to_str().unwrap();
        assert_eq!(
            sigs.split(' ').filter(|s| s.starts_with("v1,")).count(),
            2,
            "{sigs}"
        );
        assert!(verifies_with(&new, req), "new secret: {sigs}");
        assert!(verifies_with(OLD_SECRET, req), "old secret: {sigs}");
        assert!(!verifies_with("whsec_bm90LXRoZS1zZWNyZXQtYXQtYWxs", req));
        // X-Hub-Signature-256 has room for one value: the new secret's.
        assert_eq!(
            req.headers["x-hub-signature-256"].to_str().unwrap(),
            common::hub_signature(&new, &req.body)
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn the_old_secret_is_refused_once_the_overlap_has_passed() {
    let h = start(&[]).await;
    let rx = Receiver::start().await;
    let sub = h
        .create_id(json!({"target_url": rx.url("/short"), "secret": OLD_SECRET}))
        .await;
    let r = rotate(
        &h,
        &sub,
        Some(json!({"secret": NEW_SECRET, "overlap": "1s"})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["secret"], NEW_SECRET);
    let until = time(&v["previous_secret_expires_at"]);
    ingest_id(&h, &sub, r#"{"during":true}"#, Some(OLD_SECRET)).await;
    let during = rx.wait_for("/short", 1, WAIT).await.remove(0);
    assert!(verifies_with(OLD_SECRET, &during) && verifies_with(NEW_SECRET, &during));

    let wait = (until - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(100);
    assert!(wait <= Duration::from_millis(1100));
    tokio::time::sleep(wait).await;
    let r = ingest(&h, &sub, r#"{"after":true}"#, Some(OLD_SECRET)).await;
    assert_eq!(r.status(), 401);
    let (_, view) = h.get(&format!("/subscriptions/{sub}")).await;
    assert!(view["previous_secret_expires_at"].is_null(), "{view}");
    ingest_id(&h, &sub, r#"{"after":true}"#, Some(NEW_SECRET)).await;
    let after = rx.wait_for("/short", 2, WAIT).await.remove(1);
    let sigs = after.headers["webhook-signature"].to_str().unwrap();
    assert_eq!(sigs.split(' ').count(), 1, "{sigs}");
    assert!(verifies_with(NEW_SECRET, &after));
    assert!(!verifies_with(OLD_SECRET, &after));
    h.stop().await;
}

#[tokio::test]
async fn rotation_answers_and_refusals() {
    let h = start(&["--secret-overlap=2h"]).await;
    let rx = Receiver::start().await;
    let sub = h
        .create_id(json!({"target_url": rx.url("/r"), "secret": OLD_SECRET}))
        .await;

    // An empty body: a generated secret and the configured overlap.
    let before = Utc::now();
    let r = rotate(&h, &sub, None).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let generated = v["secret"].as_str().unwrap();
    assert!(standardwebhooks::Webhook::new(generated).is_ok(), "{v}");
    let until = time(&v["previous_secret_expires_at"]);
    assert!(until >= before + chrono::Duration::minutes(119));
    assert!(until <= Utc::now() + chrono::Duration::minutes(121));
    let r = rotate(&h, &sub, Some(json!({}))).await;
    assert_eq!(r.status(), 200);

    for (body, status) in [
        (json!({"overlap": "soon"}), 400),
        (json!({"overlap": "8d"}), 400),
        (json!({"overlap": 5}), 422),
        (json!({"secret": "short"}), 422),
        (json!({"unknown": true}), 422),
    ] {
        let r = rotate(&h, &sub, Some(body.clone())).await;
        assert_eq!(r.status(), status, "{body}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].is_string(), "{body}: {v}");
        if status == 400 {
            assert!(v["error"].as_str().unwrap().contains("overlap"), "{v}");
        }
    }
    let r = rotate(&h, &sub, Some(json!({"secret": NEW_SECRET}))).await;
    assert_eq!(r.status(), 200);
    let r = rotate(&h, &sub, Some(json!({"secret": NEW_SECRET}))).await;
    assert_eq!(r.status(), 422, "the current secret again");
    let r = h
        .http
        .post(h.url(&format!("/subscriptions/{sub}/secret/rotate")))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("secret=abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = h
        .http
        .post(h.url(&format!("/subscriptions/{sub}/secret/rotate")))
        .header("Content-Type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A zero overlap, and a subscription that had no secret: nothing stays valid.
    let r = rotate(&h, &sub, Some(json!({"overlap": "0s"}))).await;
    let v: Value = r.json().await.unwrap();
    assert!(v["previous_secret_expires_at"].is_null(), "{v}");
    let unsigned = h.create_id(json!({"target_url": rx.url("/u")})).await;
    let r = rotate(&h, &unsigned, None).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["previous_secret_expires_at"].is_null(), "{v}");
    assert_eq!(v["subscription"]["has_secret"], true);

    let unknown = herald_core::ids::subscription_id();
    assert_eq!(rotate(&h, &unknown, None).await.status(), 404);
    assert_eq!(rotate(&h, "not-an-id", None).await.status(), 404);

    // The operator's subscriptions change only through the operator.
    let db = Sqlite::open(&h.dir.path().join("herald.db"), Sync::Normal)
        .unwrap()
        .backend();
    let owned = herald_core::ids::subscription_id();
    let mut s = herald_core::testkit::subscription(&owned);
    s.owner = Some(Owner {
        kind: "kubernetes".into(),
        namespace: "shop".into(),
        name: "orders".into(),
    });
    db.subscriptions.insert(&s).await.unwrap();
    let r = rotate(&h, &owned, None).await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("shop/orders"), "{v}");

    let (_, doc) = h.get("/openapi.json").await;
    let op = &doc["paths"]["/subscriptions/{id}/secret/rotate"]["post"];
    for code in ["200", "400", "404", "409"] {
        assert!(op["responses"][code].is_object(), "{code}: {op}");
    }
    let view = &doc["components"]["schemas"]["SubscriptionView"]["properties"];
    for field in [
        "disabled_at",
        "disabled_reason",
        "failing_since",
        "previous_secret_expires_at",
    ] {
        assert!(view[field].is_object(), "{field} documented");
    }
    assert!(view.get("previous_secret").is_none());
    assert!(doc["paths"]["/ingest/{subscription_id}"]["post"]["responses"]["409"].is_object());
    h.stop().await;
}

//! The api's edge against a real server: who may call what (fan-out credentials, Origin),
//! connection timeouts and cap, masked credentials, the self-contained reference page.

mod common;

use common::TestHerald;
use serde_json::Value;

async fn fanout(h: &TestHerald, key: Option<&str>, event_type: Option<&str>) -> (u16, Value) {
    let mut r = h
        .http
        .post(h.url("/events"))
        .header("Content-Type", "application/json")
        .body("{}");
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    if let Some(t) = event_type {
        r = r.header("Event-Type", t);
    }
    let r = r.send().await.unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn fanout_without_any_key_configured_is_refused_naming_the_setting() {
    let h = TestHerald::start(&[]).await;
    let (code, v) = fanout(&h, None, Some("a")).await;
    assert_eq!(code, 401, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("HERALD_INGEST_KEY"),
        "{v}"
    );
    // No key can be guessed: any bearer is refused too.
    let (code, _) = fanout(&h, Some("anything"), Some("a")).await;
    assert_eq!(code, 401);
    // Direct ingest keeps its rules (open without an ingest key; signatures apply).
    let sub = h.subscribe("http://127.0.0.1:9/x").await;
    assert_eq!(h.ingest(&sub, "a", "{}").await.status(), 202);
    h.stop().await;
}

#[tokio::test]
async fn fanout_with_only_an_api_key_takes_the_api_key() {
    let h = TestHerald::start(&["--api-key=the-api-key"]).await;
    assert_eq!(fanout(&h, None, Some("a")).await.0, 401);
    assert_eq!(fanout(&h, Some("wrong"), Some("a")).await.0, 401);
    let (code, v) = fanout(&h, Some("the-api-key"), Some("a")).await;
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["matched"], 0);
    // Authenticated, then validated: no event type is a 400.
    assert_eq!(fanout(&h, Some("the-api-key"), None).await.0, 400);
    h.stop().await;
}

#[tokio::test]
async fn fanout_with_an_ingest_key_takes_only_the_ingest_key() {
    let h = TestHerald::start(&["--api-key=the-api-key", "--ingest-key=the-ingest-key"]).await;
    assert_eq!(fanout(&h, None, Some("a")).await.0, 401);
    assert_eq!(
        fanout(&h, Some("the-api-key"), Some("a")).await.0,
        401,
        "the API key does not open fan-out when an ingest key exists"
    );
    assert_eq!(fanout(&h, Some("the-ingest-key"), Some("a")).await.0, 202);
    h.stop().await;
}

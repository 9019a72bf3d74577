//! The management API and ingest validation against a real server: CRUD, pagination, error
//! answers, auth, idempotency, ownership.

use crate::common;

use std::time::Duration;

use common::{Receiver, TestHerald};
use herald_backends::sqlite::{Sqlite, Sync};
use herald_core::model::Owner;
use serde_json::{json, Value};

#[tokio::test]
async fn seed_curl_flow_and_crud() {
    let h = TestHerald::start(&[]).await;
    let rx = Receiver::start().await;
    let (code, v) = h.get("/ping").await;
    assert_eq!((code, v), (200, json!({"status": "working"})));

    let created = h
        .create(json!({
            "target_url": rx.url("/hook"),
            "event_types": ["order.created"],
            "secret": "0123456789abcdef-secret",
            "headers": {"X-Team": "shop"},
            "max_attempts": 3,
            "timeout_ms": 1500,
            "retry_schedule": ["1s", "1m"]
        }))
        .await;
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("sub_"));
    assert_eq!(created["has_secret"], true);
    assert!(
        created.get("secret").is_none(),
        "the secret is never returned"
    );
    assert_eq!(created["retry_schedule"], json!(["1s", "1m"]));
    assert_eq!(
        created["headers"],
        json!({"X-Team": "********"}),
        "values masked"
    );

    let (code, got) = h.get(&format!("/subscriptions/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(got, created);

    // PATCH changes only what it names; null clears.
    let r = h
        .patch(
            &format!("/subscriptions/{id}"),
            json!({"event_types": [], "secret": null, "paused": true}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let patched: Value = r.json().await.unwrap();
    assert_eq!(patched["has_secret"], false);
    assert_eq!(patched["paused"], true);
    assert_eq!(patched["max_attempts"], 3);
    assert_eq!(patched["event_types"], json!([]));

    // PUT replaces the whole spec.
    let r = h
        .put(
            &format!("/subscriptions/{id}"),
            json!({"target_url": rx.url("/other")}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let put: Value = r.json().await.unwrap();
    assert_eq!(put["target_url"], rx.url("/other"));
    assert_eq!(put["max_attempts"], Value::Null);
    assert_eq!(put["created_at"], created["created_at"]);

    let r = h.delete(&format!("/subscriptions/{id}")).await;
    assert_eq!(r.status(), 204);
    let (code, body) = h.get(&format!("/subscriptions/{id}")).await;
    assert_eq!(code, 404);
    assert!(body["error"].as_str().unwrap().contains("not found"));
    let r = h.delete(&format!("/subscriptions/{id}")).await;
    assert_eq!(r.status(), 404);
    h.stop().await;
}

#[tokio::test]
async fn list_is_paginated_with_a_cursor() {
    let h = TestHerald::start(&[]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(h.subscribe(&format!("http://127.0.0.1:9/{i}")).await);
    }
    let (_, p1) = h.get("/subscriptions?limit=2").await;
    let cursor = p1["next_cursor"].as_str().unwrap().to_string();
    let (_, p2) = h
        .get(&format!("/subscriptions?limit=2&cursor={cursor}"))
        .await;
    let cursor2 = p2["next_cursor"].as_str().unwrap().to_string();
    let (_, p3) = h
        .get(&format!("/subscriptions?limit=2&cursor={cursor2}"))
        .await;
    assert_eq!(p3["next_cursor"], Value::Null);
    let seen: Vec<String> = [p1, p2, p3]
        .iter()
        .flat_map(|p| p["data"].as_array().unwrap().clone())
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, ids, "every subscription once, in creation order");
    h.stop().await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let h = TestHerald::start(&["--max-payload=1024"]).await;
    let rx = Receiver::start().await;
    let sub = h.subscribe(&rx.url("/hook")).await;
    let post = |path: &str, ct: &str, body: Vec<u8>| {
        h.http
            .post(h.url(path))
            .header("Content-Type", ct)
            .body(body)
            .send()
    };
    let expect = |r: reqwest::Response, code: u16| async move {
        assert_eq!(r.status().as_u16(), code);
        let v: Value = r.json().await.expect("errors are JSON");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        v
    };

    let ingest = format!("/ingest/{sub}");
    let json = "application/json";
    let big = format!("{{\"x\":\"{}\"}}", "a".repeat(2000));
    // (path, content type, body, expected status)
    let posts: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        // 400: malformed JSON, on management and on ingest; an empty body.
        ("/subscriptions", json, b"{nope".to_vec(), 400),
        (&ingest, json, b"{\"a\":".to_vec(), 400),
        (&ingest, json, vec![], 400),
        // 404: unknown subscription.
        ("/ingest/sub_nope", json, b"{}".to_vec(), 404),
        // 413: over the payload limit.
        (&ingest, json, big.into_bytes(), 413),
        // 415: a declared non-JSON type.
        (&ingest, "text/plain", b"{}".to_vec(), 415),
        ("/subscriptions", "application/xml", b"<a/>".to_vec(), 415),
    ];
    for (path, ct, body, code) in posts {
        expect(post(path, ct, body).await.unwrap(), code).await;
    }
    // 404: unknown ids and routes.
    for path in [
        "/webhooks/msg_nope",
        "/subscriptions/sub_nope/deliveries",
        "/no/such/route",
    ] {
        expect(h.http.get(h.url(path)).send().await.unwrap(), 404).await;
    }
    expect(h.post_empty("/webhooks/msg_nope/retry").await, 404).await;
    // 422: invalid fields.
    for body in [
        json!({"target_url": "ftp://example.com"}),
        json!({"target_url": "not a url"}),
        json!({}),
        json!({"target_url": "https://example.com", "secret": "short"}),
        json!({"target_url": "https://example.com", "max_attempts": 0}),
        json!({"target_url": "https://example.com", "unknown": 1}),
        json!({"target_url": "https://example.com", "headers": {"Webhook-Id": "x"}}),
    ] {
        let v = expect(
            post(
                "/subscriptions",
                "application/json",
                body.to_string().into_bytes(),
            )
            .await
            .unwrap(),
            422,
        )
        .await;
        assert!(v["detail"]["field"].is_string(), "{v}");
    }

    // Nothing of the above was queued.
    let (_, stats) = h.get("/stats").await;
    assert_eq!(
        stats["queue"],
        json!({"ready": 0, "scheduled": 0, "in_flight": 0, "oldest_ready_age_ms": 0})
    );
    h.stop().await;
}

#[tokio::test]
async fn only_json_content_types_are_accepted() {
    let h = TestHerald::start(&["--ingest-key=k"]).await;
    let rx = Receiver::start().await;
    let sub = h.subscribe(&rx.url("/ct")).await;
    let body = json!({"target_url": rx.url("/hook")}).to_string();
    let send = |path: String, ct: Option<&'static str>| {
        let mut r = h
            .http
            .post(h.url(&path))
            .bearer_auth("k")
            .header("Event-Type", "t")
            .body(body.clone());
        if let Some(ct) = ct {
            r = r.header("Content-Type", ct);
        }
        r.send()
    };
    let paths = [
        "/subscriptions".to_string(),
        format!("/ingest/{sub}"),
        "/events".into(),
    ];
    // What a browser may send cross-origin without a preflight, and no type at all: 415.
    for ct in [
        Some("application/x-www-form-urlencoded"),
        Some("text/plain"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        for path in &paths {
            let r = send(path.clone(), ct).await.unwrap();
            assert_eq!(r.status(), 415, "{path} with {ct:?}");
            let v: Value = r.json().await.expect("a JSON error");
            assert!(
                v["error"].as_str().unwrap().contains("application/json"),
                "{v}"
            );
        }
    }
    for ct in [
        "application/json; charset=utf-8",
        "application/merge-patch+json",
    ] {
        assert_eq!(
            send(paths[0].clone(), Some(ct)).await.unwrap().status(),
            201,
            "{ct}"
        );
        assert_eq!(
            send(paths[1].clone(), Some(ct)).await.unwrap().status(),
            202,
            "{ct}"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn invalid_utf8_and_bad_queries_get_json_400s() {
    let h = TestHerald::start(&["--ingest-key=k"]).await;
    let rx = Receiver::start().await;
    let sub = h.subscribe(&rx.url("/utf8")).await;
    // Well-formed JSON syntax around bytes that are not UTF-8.
    let body = b"{\"name\": \"caf\xe9\"}".to_vec();
    for path in [
        format!("/ingest/{sub}"),
        "/subscriptions".into(),
        "/events".into(),
    ] {
        let r = h
            .http
            .post(h.url(&path))
            .bearer_auth("k")
            .header("Content-Type", "application/json")
            .header("Event-Type", "t")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains("UTF-8"), "{v}");
    }
    for path in [
        "/subscriptions?limit=abc".to_string(),
        format!("/subscriptions/{sub}/deliveries?limit=-1"),
        format!("/subscription/logs/{sub}?limit=x"),
    ] {
        let r = h.http.get(h.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"].as_str().unwrap().contains("limit"),
            "{path}: {v}"
        );
    }
    let (_, stats) = h.get("/stats").await;
    assert_eq!(
        stats["queue"]["ready"].as_u64().unwrap() + stats["queue"]["scheduled"].as_u64().unwrap(),
        0
    );
    h.stop().await;
}

#[tokio::test]
async fn api_key_protects_management_but_not_health() {
    let h = TestHerald::start(&["--api-key=s3cret-key", "--ingest-key=ingest-key"]).await;
    let r = h.http.get(h.url("/subscriptions")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = h
        .http
        .get(h.url("/subscriptions"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = h
        .http
        .get(h.url("/subscriptions"))
        .bearer_auth("s3cret-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = h
        .http
        .post(h.url("/events"))
        .header("Event-Type", "a")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "ingest has its own key");
    let r = h
        .http
        .post(h.url("/events"))
        .header("Content-Type", "application/json")
        .header("Event-Type", "a")
        .bearer_auth("ingest-key")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let rotate = format!(
        "/subscriptions/{}/secret/rotate",
        herald_core::ids::subscription_id()
    );
    let r = h.http.post(h.url(&rotate)).send().await.unwrap();
    assert_eq!(r.status(), 401, "rotation is a management write");
    for open in ["/ping", "/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let r = h.http.get(h.url(open)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{open}");
    }
    h.stop().await;
}

#[tokio::test]
async fn ingest_signatures_are_enforced() {
    let h = TestHerald::start(&[]).await;
    let rx = Receiver::start().await;
    let secret = "a-subscription-secret-1";
    let sub = h
        .create_id(json!({"target_url": rx.url("/signed"), "secret": secret}))
        .await;
    let body = r#"{"amount": 42}"#;
    let sig = common::hub_signature(secret, body.as_bytes());
    let send = |sig: Option<String>| {
        let mut r = h
            .http
            .post(h.url(&format!("/ingest/{sub}")))
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(s) = sig {
            r = r.header("X-Hub-Signature-256", s);
        }
        r.send()
    };
    assert_eq!(send(None).await.unwrap().status(), 401);
    assert_eq!(
        send(Some("sha256=".to_string() + &"0".repeat(64)))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(send(Some("garbage".into())).await.unwrap().status(), 401);
    let (_, stats) = h.get("/stats").await;
    assert_eq!(
        stats["queue"],
        json!({"ready": 0, "scheduled": 0, "in_flight": 0, "oldest_ready_age_ms": 0}),
        "nothing queued for bad signatures"
    );
    let ok = send(Some(sig)).await.unwrap();
    assert_eq!(ok.status(), 202);
    rx.wait_for("/signed", 1, Duration::from_secs(5)).await;
    h.stop().await;
}

#[tokio::test]
async fn idempotency_key_returns_the_first_answer() {
    let h = TestHerald::start(&["--ingest-key=k"]).await;
    let rx = Receiver::start().await;
    let sub = h.subscribe(&rx.url("/idem")).await;
    let send = |key: &str| {
        h.http
            .post(h.url(&format!("/ingest/{sub}")))
            .bearer_auth("k")
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", key)
            .body("{}")
            .send()
    };
    let first: Value = send("key-1").await.unwrap().json().await.unwrap();
    let again = send("key-1").await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["webhook_id"], again["webhook_id"]);
    let other: Value = send("key-2").await.unwrap().json().await.unwrap();
    assert_ne!(first["webhook_id"], other["webhook_id"]);
    // The same key with a different body or event type: 422, nothing queued.
    for (event_type, body) in [("order.created", r#"{"x":1}"#), ("order.paid", "{}")] {
        let r = h
            .http
            .post(h.url(&format!("/ingest/{sub}")))
            .bearer_auth("k")
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", "key-1")
            .header("Event-Type", event_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{event_type} {body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["detail"]["field"], "Idempotency-Key", "{v}");
        assert!(
            v["error"].as_str().unwrap().contains("different request"),
            "{v}"
        );
    }
    // Fan-out keys follow the same rule.
    let fan = |body: &'static str| {
        h.http
            .post(h.url("/events"))
            .bearer_auth("k")
            .header("Content-Type", "application/json")
            .header("Event-Type", "order.created")
            .header("Idempotency-Key", "fan-1")
            .body(body)
            .send()
    };
    assert_eq!(fan("{}").await.unwrap().status(), 202);
    let again = fan("{}").await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(fan(r#"{"y":2}"#).await.unwrap().status(), 422);
    rx.wait_for("/idem", 3, Duration::from_secs(5)).await;
    // A quiet window: what must not happen has no event to wait for.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received("/idem").len(), 3, "the repeats queued nothing");
    h.stop().await;
}

#[tokio::test]
async fn operator_owned_subscriptions_refuse_rest_changes() {
    let h = TestHerald::start(&[]).await;
    // The operator writes through the store; here a second handle on the same file does.
    let db = Sqlite::open(&h.dir.path().join("herald.db"), Sync::Normal)
        .unwrap()
        .backend();
    // An id as the api makes them: the routes refuse any other form.
    let id = herald_core::ids::subscription_id();
    let mut sub = herald_core::testkit::subscription(&id);
    sub.owner = Some(Owner {
        kind: "kubernetes".into(),
        namespace: "shop".into(),
        name: "orders".into(),
    });
    db.subscriptions.insert(&sub).await.unwrap();
    let (code, v) = h.get(&format!("/subscriptions/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(v["owner"]["name"], "orders");
    let r = h.delete(&format!("/subscriptions/{id}")).await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("shop/orders"), "{v}");
    let r = h
        .patch(&format!("/subscriptions/{id}"), json!({"paused": true}))
        .await;
    assert_eq!(r.status(), 409);
    h.stop().await;
}

#[tokio::test]
async fn rate_limit_answers_429() {
    let h = TestHerald::start(&["--ingest-rate-limit=3"]).await;
    let rx = Receiver::start().await;
    let sub = h.subscribe(&rx.url("/rl")).await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(h.ingest(&sub, "t", "{}").await.status().as_u16());
    }
    assert_eq!(&codes[..3], &[202, 202, 202]);
    assert!(codes[3..].contains(&429), "{codes:?}");
    h.stop().await;
}

#[tokio::test]
async fn openapi_document_describes_the_api() {
    let h = TestHerald::start(&[]).await;
    let (code, doc) = h.get("/openapi.json").await;
    assert_eq!(code, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/subscriptions",
        "/subscriptions/{id}",
        "/ingest/{subscription_id}",
        "/events",
        "/webhooks/{webhook_id}",
        "/webhooks/{webhook_id}/retry",
        "/subscription/logs/{id}",
        "/subscriptions/{id}/secret/rotate",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
    // Every parameter sits where the route reads it: a path parameter only when the path
    // names it, and `limit`/`cursor` in the query.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let (name, place) = (p["name"].as_str().unwrap(), p["in"].as_str().unwrap());
                let in_path = path.contains(&format!("{{{name}}}"));
                assert_eq!(
                    place == "path",
                    in_path,
                    "{method} {path}: {name} is in {place}"
                );
            }
        }
    }
    let r = h.http.get(h.url("/docs")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("openapi"));
    h.stop().await;
}

#[tokio::test]
async fn target_urls_are_parsed_once_and_judged_at_creation() {
    // No allow list: loopback targets are refused however they are spelt.
    let dir = tempfile::tempdir().unwrap();
    let h = TestHerald::start_with(
        dir,
        |s| s.targets.allow_targets = herald_runtime::config::AllowList(Vec::new()),
        &[],
    )
    .await;
    let post = |body: Value| h.http.post(h.url("/subscriptions")).json(&body).send();
    for url in [
        "http://2130706433/",
        "http://127.1/",
        "http://0x7f.0.0.1/",
        "http://127.0.0.1./",
        "http://[::ffff:7f00:1]/",
        "http://example.com:99999/",
        "http://a<b>.example/",
    ] {
        let r = post(json!({ "target_url": url })).await.unwrap();
        assert_eq!(r.status(), 422, "{url}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["detail"]["field"], "target_url", "{url}: {v}");
    }
    let r = post(json!({ "target_url": "http://127.1/" }))
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("127.0.0.1"), "{v}");
    // Headers that are framing, duplicated by case or carry control characters: 422 naming them.
    for (headers, named) in [
        (json!({"Transfer-Encoding": "chunked"}), "Transfer-Encoding"),
        (json!({"Host": "internal"}), "Host"),
        (json!({"Proxy-Authorization": "x"}), "Proxy-Authorization"),
        (json!({"X-Team": "a", "x-team": "b"}), "x-team"),
        (json!({"X-Team": "a\u{1}b"}), "X-Team"),
    ] {
        let r = post(json!({ "target_url": "https://example.com/", "headers": headers }))
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{headers}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains(named), "{v}");
    }
    h.stop().await;
}

/// Strings that cannot be ids are answered 404 on every route that takes one, with the JSON
/// error body, and a bad query string is a JSON 400 (it used to be axum's plain-text answer).
#[tokio::test]
async fn malformed_ids_are_404_and_bad_query_strings_json_400() {
    let h = TestHerald::start(&[]).await;
    let rx = Receiver::start().await;
    let sub = h.subscribe(&rx.url("/hook")).await;
    let ulid = &sub[4..];
    let not_ids = [
        sub.to_ascii_lowercase(),
        format!("{sub}%20"),
        format!("{sub}0"),
        sub[..sub.len() - 1].to_string(),
        format!("msg_{ulid}"),
        format!("sub_8{}", &ulid[1..]),
        format!("sub_{}%C3%A9", &ulid[..24]),
        "0".into(),
        "x".repeat(4000),
    ];
    let json_error = |r: reqwest::Response, code: u16, what: &'static str| async move {
        let url = r.url().to_string();
        assert_eq!(r.status().as_u16(), code, "{url}");
        let ct = r.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(ct.starts_with("application/json"), "{url}: {ct}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains(what), "{url}: {v}");
    };
    let body = json!({"target_url": rx.url("/hook")});
    for id in &not_ids {
        for r in [
            h.http
                .get(h.url(&format!("/subscriptions/{id}")))
                .send()
                .await,
            h.http
                .put(h.url(&format!("/subscriptions/{id}")))
                .json(&body)
                .send()
                .await,
            h.http
                .patch(h.url(&format!("/subscriptions/{id}")))
                .json(&json!({}))
                .send()
                .await,
            h.http
                .delete(h.url(&format!("/subscriptions/{id}")))
                .send()
                .await,
            h.http
                .get(h.url(&format!("/subscriptions/{id}/deliveries")))
                .send()
                .await,
            h.http
                .get(h.url(&format!("/subscription/logs/{id}")))
                .send()
                .await,
            h.http
                .post(h.url(&format!("/ingest/{id}")))
                .json(&json!({}))
                .send()
                .await,
        ] {
            json_error(r.unwrap(), 404, "subscription not found").await;
        }
    }
    let webhook = h.ingest_ok(&sub, "{}").await;
    for id in [
        webhook.to_ascii_lowercase(),
        format!("sub_{}", &webhook[4..]),
        "msg_".into(),
    ] {
        json_error(
            h.http
                .get(h.url(&format!("/webhooks/{id}")))
                .send()
                .await
                .unwrap(),
            404,
            "webhook not found",
        )
        .await;
        json_error(
            h.post_empty(&format!("/webhooks/{id}/retry")).await,
            404,
            "webhook not found",
        )
        .await;
    }
    // The real ones still answer: nothing above touched them.
    assert_eq!(h.get(&format!("/subscriptions/{sub}")).await.0, 200);
    assert_eq!(h.get(&format!("/webhooks/{webhook}")).await.0, 200);

    for path in [
        "/subscriptions?limit=abc".to_string(),
        "/subscriptions?limit=-1".into(),
        format!("/subscriptions/{sub}/deliveries?limit=abc"),
        format!("/subscription/logs/{sub}?limit=1.5"),
    ] {
        json_error(h.http.get(h.url(&path)).send().await.unwrap(), 400, "limit").await;
    }
}

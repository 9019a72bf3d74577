//! The api's edge against a real server: who may call what (fan-out credentials, Origin),
//! connection timeouts and cap, masked credentials, the self-contained reference page.

use crate::common;

use std::time::Duration;

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

async fn create_with_origin(h: &TestHerald, origin: Option<&str>) -> (u16, Value) {
    let mut r = h
        .http
        .post(h.url("/subscriptions"))
        .header("Content-Type", "application/json")
        .body(r#"{"target_url": "http://127.0.0.1:9/o"}"#);
    if let Some(o) = origin {
        r = r.header("Origin", o);
    }
    let r = r.send().await.unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn cross_origin_state_changes_are_refused_same_origin_and_originless_pass() {
    let h = TestHerald::start(&["--allowed-origins=https://admin.example.com"]).await;
    for foreign in ["https://evil.example", "null", "http://127.0.0.1:1"] {
        let (code, v) = create_with_origin(&h, Some(foreign)).await;
        assert_eq!(code, 403, "{foreign}: {v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("HERALD_ALLOWED_ORIGINS"),
            "{v}"
        );
    }
    let (_, page) = h.get("/subscriptions").await;
    assert_eq!(page["data"], serde_json::json!([]), "nothing was created");
    // The dashboard: its page is served from Herald, so Origin is Herald's own address.
    let own = h.base.clone();
    assert_eq!(create_with_origin(&h, Some(&own)).await.0, 201);
    assert_eq!(
        create_with_origin(&h, None).await.0,
        201,
        "curl and servers"
    );
    assert_eq!(
        create_with_origin(&h, Some("https://admin.example.com"))
            .await
            .0,
        201
    );
    // Reads are not state changes.
    let r = h
        .http
        .get(h.url("/subscriptions"))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Every state-changing route is covered, ingest included.
    let sub = h.subscribe("http://127.0.0.1:9/x").await;
    let r = h
        .http
        .post(h.url(&format!("/ingest/{sub}")))
        .header("Origin", "https://evil.example")
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = h
        .http
        .delete(h.url(&format!("/subscriptions/{sub}")))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    h.stop().await;
}

// Raw connections: every read is bounded in time, every loop in count.
mod raw {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub async fn connect(addr: std::net::SocketAddr) -> TcpStream {
        TcpStream::connect(addr).await.unwrap()
    }

    /// Reads one response (head and `Content-Length` body); `None` if nothing came in `within`.
    /// `Some("")` means the server closed the connection without answering.
    pub async fn response(s: &mut TcpStream, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..1000 {
            let left = deadline.saturating_duration_since(Instant::now());
            let n = match tokio::time::timeout(left, s.read(&mut buf)).await {
                Err(_) => return (!got.is_empty()).then(|| String::from_utf8_lossy(&got).into()),
                Ok(Err(_)) | Ok(Ok(0)) => return Some(String::from_utf8_lossy(&got).into()),
                Ok(Ok(n)) => n,
            };
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    return Some(text);
                }
            }
        }
        panic!("response never ended");
    }

    /// Waits for the server to close the connection; the time it took, or `None` if it did not
    /// within `within`. Bytes that arrive before the close are returned too.
    pub async fn closed(s: &mut TcpStream, within: Duration) -> Option<(Duration, String)> {
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..1000 {
            let left = (start + within).saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, s.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Err(_)) | Ok(Ok(0)) => {
                    return Some((start.elapsed(), String::from_utf8_lossy(&got).into()))
                }
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
        None
    }

    pub const PING: &[u8] = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n";

    pub async fn ping(s: &mut TcpStream) -> Option<String> {
        s.write_all(PING).await.ok()?;
        response(s, Duration::from_secs(5)).await
    }
}

const TIMEOUTS: &[&str] = &[
    "--header-timeout=1s",
    "--body-timeout=1s",
    "--idle-timeout=1s",
];

#[tokio::test]
async fn slow_headers_are_cut_off_after_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let h = TestHerald::start(TIMEOUTS).await;
    let addr: std::net::SocketAddr = h.base.trim_start_matches("http://").parse().unwrap();
    let mut s = raw::connect(addr).await;
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // One header byte every 100 ms: the head never completes.
    let mut closed = false;
    for _ in 0..60 {
        if s.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        if let Some((_, got)) = raw::closed(&mut s, Duration::from_millis(100)).await {
            assert!(!got.contains("200 OK"), "{got}");
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "the connection stayed open for 6 s of trickled headers"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before the timeout"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_trickled_body_gets_408_after_the_body_timeout() {
    use tokio::io::AsyncWriteExt;
    let h = TestHerald::start(TIMEOUTS).await;
    let addr: std::net::SocketAddr = h.base.trim_start_matches("http://").parse().unwrap();
    let mut s = raw::connect(addr).await;
    s.write_all(
        b"POST /subscriptions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let mut answer = None;
    for _ in 0..60 {
        if s.write_all(b" ").await.is_err() {
            break;
        }
        if let Some((_, got)) = raw::closed(&mut s, Duration::from_millis(100)).await {
            answer = Some(got);
            break;
        }
    }
    let answer = answer.expect("the connection stayed open for 6 s of trickled body");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("HERALD_BODY_TIMEOUT"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    h.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let h = TestHerald::start(&["--header-timeout=1s", "--idle-timeout=2s"]).await;
    let addr: std::net::SocketAddr = h.base.trim_start_matches("http://").parse().unwrap();
    let mut s = raw::connect(addr).await;
    let first = raw::ping(&mut s).await.unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // Kept alive: idle for longer than the header timeout, shorter than the idle timeout.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let second = raw::ping(&mut s).await.unwrap();
    assert!(second.starts_with("HTTP/1.1 200"), "kept alive: {second}");
    let (took, got) = raw::closed(&mut s, Duration::from_secs(10))
        .await
        .expect("an idle connection stays open");
    assert!(got.is_empty(), "{got}");
    assert!(took >= Duration::from_millis(1900), "closed after {took:?}");
    h.stop().await;
}

#[tokio::test]
async fn beyond_the_connection_cap_new_clients_wait_while_open_ones_work() {
    let h = TestHerald::start(&["--max-connections=2"]).await;
    let addr: std::net::SocketAddr = h.base.trim_start_matches("http://").parse().unwrap();
    let mut a = raw::connect(addr).await;
    let mut b = raw::connect(addr).await;
    assert!(raw::ping(&mut a).await.unwrap().starts_with("HTTP/1.1 200"));
    assert!(raw::ping(&mut b).await.unwrap().starts_with("HTTP/1.1 200"));
    // The third connects (the kernel's backlog) but is not served while two are open.
    let mut c = raw::connect(addr).await;
    {
        use tokio::io::AsyncWriteExt;
        c.write_all(raw::PING).await.unwrap();
    }
    assert_eq!(
        raw::response(&mut c, Duration::from_millis(800)).await,
        None,
        "served beyond the cap"
    );
    // The open ones keep working.
    assert!(raw::ping(&mut a).await.unwrap().starts_with("HTTP/1.1 200"));
    // One closes: the waiting client is served.
    drop(b);
    let answer = raw::response(&mut c, Duration::from_secs(5)).await;
    assert!(
        answer
            .as_deref()
            .is_some_and(|r| r.starts_with("HTTP/1.1 200")),
        "{answer:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn header_values_are_masked_and_a_masked_round_trip_keeps_them() {
    let h = TestHerald::start(&[]).await;
    let rx = common::Receiver::start().await;
    let created = h
        .create(serde_json::json!({
            "target_url": rx.url("/masked"),
            "headers": {"Authorization": "Bearer receiver-secret", "X-Team": "shop"}
        }))
        .await;
    let masked = serde_json::json!({"Authorization": "********", "X-Team": "********"});
    assert_eq!(created["headers"], masked, "create");
    let id = created["id"].as_str().unwrap().to_string();
    let (_, got) = h.get(&format!("/subscriptions/{id}")).await;
    assert_eq!(got["headers"], masked, "GET");
    let (_, page) = h.get("/subscriptions").await;
    assert_eq!(page["data"][0]["headers"], masked, "list");
    for v in [&created, &got, &page] {
        assert!(!v.to_string().contains("receiver-secret"), "{v}");
    }

    // The dashboard's edit: what it was shown comes back, plus a change.
    let r = h
        .patch(
            &format!("/subscriptions/{id}"),
            serde_json::json!({"headers": {"Authorization": "********", "X-Team": "ops"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    // PUT with the placeholder keeps it too.
    let r = h
        .put(
            &format!("/subscriptions/{id}"),
            serde_json::json!({"target_url": rx.url("/masked"),
                "headers": {"Authorization": "********", "X-Team": "********"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    h.ingest_ok(&id, "{}").await;
    let got = rx.wait_for("/masked", 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].headers["authorization"], "Bearer receiver-secret");
    assert_eq!(got[0].headers["x-team"], "ops");

    // The placeholder cannot stand for a value that does not exist.
    let r = h
        .patch(
            &format!("/subscriptions/{id}"),
            serde_json::json!({"headers": {"X-Other": "********"}}),
        )
        .await;
    assert_eq!(r.status(), 422);
    let r = h
        .http
        .post(h.url("/subscriptions"))
        .json(&serde_json::json!({"target_url": rx.url("/m2"), "headers": {"X-A": "********"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    h.stop().await;
}

#[tokio::test]
async fn docs_page_is_self_contained_under_the_dashboards_csp() {
    let h = TestHerald::start(&[]).await;
    let (_, dashboard) = {
        let r = h.http.get(h.url("/")).send().await.unwrap();
        (r.status(), r.headers()["content-security-policy"].clone())
    };
    let page = h.http.get(h.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-security-policy"], dashboard);
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("//"),
        "no external or protocol-relative URL: {html}"
    );
    // Every script and stylesheet it names is served here, under the same policy.
    let mut assets = 0;
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            let path = part.split('"').next().unwrap();
            if !path.starts_with('/') {
                continue;
            }
            let r = h.http.get(h.url(path)).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            if path.ends_with(".js") || path.ends_with(".css") {
                assert_eq!(r.headers()["content-security-policy"], dashboard, "{path}");
                assets += 1;
            }
        }
    }
    assert!(assets >= 2, "the script and the stylesheet");
    let js = h
        .http
        .get(h.url("/docs/docs.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(js.contains("/openapi.json"), "renders the served document");
    h.stop().await;
}

#[tokio::test]
async fn openapi_documents_the_edge_answers() {
    let h = TestHerald::start(&[]).await;
    let (_, doc) = h.get("/openapi.json").await;
    let events = &doc["paths"]["/events"]["post"]["responses"];
    for code in ["401", "403", "408"] {
        assert!(events[code].is_object(), "/events {code}: {events}");
    }
    assert!(doc["paths"]["/subscriptions/{id}"]["delete"]["responses"]["403"].is_object());
    assert!(
        doc["paths"]["/ping"]["get"]["responses"]["403"].is_null(),
        "reads are not refused"
    );
    h.stop().await;
}

//! Test harness: a real Herald on a random loopback port with a temporary SQLite file, and real
//! HTTP receivers on loopback whose behaviour each test scripts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use clap::Parser;
use herald_api::Settings;
use herald_testenv::{wait_for, wait_ok};
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    settings: Settings,
}

/// Settings for a test server: loopback, fast retries, loopback receivers allowed.
pub fn settings(dir: &std::path::Path, extra: &[&str]) -> Settings {
    let db = dir.join("herald.db");
    let mut args = vec![
        "herald".to_string(),
        "--addr=127.0.0.1:0".into(),
        format!("--sqlite-path={}", db.display()),
        "--allow-targets=127.0.0.0/8,::1/128".into(),
        "--retry-schedule=100ms,200ms".into(),
        "--delivery-timeout=2s".into(),
        "--sqlite-sync=normal".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Args::try_parse_from(args)
        .expect("test settings parse")
        .settings
}

/// A client for one Herald's API, in-process or a separate process.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn create(&self, body: Value) -> Value {
        let r = self
            .http
            .post(self.url("/subscriptions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "create {body}");
        r.json().await.unwrap()
    }

    /// Creates a subscription and returns its id.
    pub async fn create_id(&self, body: Value) -> String {
        self.create(body).await["id"].as_str().unwrap().to_string()
    }

    pub async fn patch(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .patch(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn put(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .put(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.http.delete(self.url(path)).send().await.unwrap()
    }

    pub async fn post_empty(&self, path: &str) -> reqwest::Response {
        self.http.post(self.url(path)).send().await.unwrap()
    }

    pub async fn subscribe(&self, target: &str) -> String {
        self.create(json!({ "target_url": target })).await["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn ingest(&self, sub: &str, event_type: &str, body: &str) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/ingest/{sub}")))
            .header("Content-Type", "application/json")
            .header("Event-Type", event_type)
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    /// Ingests and returns the webhook id of the 202.
    pub async fn ingest_ok(&self, sub: &str, body: &str) -> String {
        let r = self.ingest(sub, "order.created", body).await;
        assert_eq!(r.status(), 202);
        let v: Value = r.json().await.unwrap();
        v["webhook_id"].as_str().unwrap().to_string()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls a webhook until its status is `want` (or panics after `within`).
    pub async fn wait_status(&self, webhook_id: &str, want: &str, within: Duration) -> Value {
        let what = format!("webhook {webhook_id} to reach {want}");
        wait_ok(&what, within, || async {
            let (code, v) = self.get(&format!("/webhooks/{webhook_id}")).await;
            if code == 200 && v["status"] == want {
                Ok(v)
            } else {
                Err(v)
            }
        })
        .await
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        wait_for(
            &format!("{} to become ready", self.base),
            Duration::from_secs(20),
            || async {
                matches!(
                    self.http.get(self.url("/readyz")).send().await,
                    Ok(r) if r.status() == 200
                )
            },
        )
        .await
    }
}

/// `sha256=<hex HMAC-SHA256>` of a body, computed here independently of Herald's code.
pub fn hub_signature(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The queue gauges (`herald_queue_*`) are process-wide, and every in-process Herald of this
/// test binary sets them from its own queue. A test that reads them takes this lock exclusively
/// ([`gauges_to_itself`]); every other in-process Herald holds it shared while it runs.
static GAUGES: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Held by a test that reads the queue gauges: no other in-process Herald runs meanwhile.
pub struct GaugesToItself {
    _held: tokio::sync::RwLockWriteGuard<'static, ()>,
}

/// Waits until no other in-process Herald runs, and keeps others from starting until dropped.
pub async fn gauges_to_itself() -> GaugesToItself {
    GaugesToItself {
        _held: GAUGES.write().await,
    }
}

/// Herald in this process on a random loopback port, with its own temporary SQLite file.
pub struct TestHerald {
    pub api: Api,
    pub dir: tempfile::TempDir,
    herald: Option<herald_api::App>,
    _gauges: Option<tokio::sync::RwLockReadGuard<'static, ()>>,
}

impl std::ops::Deref for TestHerald {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl TestHerald {
    pub async fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_with(dir, |_| {}, extra).await
    }

    /// Starts with settings adjusted by `adjust` after parsing `extra`.
    pub async fn start_with(
        dir: tempfile::TempDir,
        adjust: impl FnOnce(&mut Settings),
        extra: &[&str],
    ) -> Self {
        let gauges = GAUGES.read().await;
        Self::launch(dir, adjust, extra, Some(gauges)).await
    }

    /// Starts while the caller has the queue gauges to itself.
    pub async fn start_reading_gauges(_: &GaugesToItself, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::launch(dir, |_| {}, extra, None).await
    }

    async fn launch(
        dir: tempfile::TempDir,
        adjust: impl FnOnce(&mut Settings),
        extra: &[&str],
        gauges: Option<tokio::sync::RwLockReadGuard<'static, ()>>,
    ) -> Self {
        let mut s = settings(dir.path(), extra);
        adjust(&mut s);
        let herald = herald_api::App::build(s).await.expect("Herald starts");
        Self {
            api: Api::new(format!("http://{}", herald.addr)),
            dir,
            herald: Some(herald),
            _gauges: gauges,
        }
    }

    pub async fn stop(mut self) {
        if let Some(h) = self.herald.take() {
            h.stop().await.unwrap();
        }
    }

    /// Stops and keeps the data directory, to start again on the same file.
    pub async fn stop_keeping_dir(mut self) -> tempfile::TempDir {
        if let Some(h) = self.herald.take() {
            h.stop().await.unwrap();
        }
        self.dir
    }
}

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

/// What a receiver answers on a path.
#[derive(Debug, Clone)]
pub enum Behaviour {
    Status(u16),
    /// Fails with 500 this many times, then answers 200.
    FailTimes(u32),
    /// Answers with this status, header value for Retry-After and body.
    Full(u16, Option<String>, String),
    /// Waits, then answers 200.
    Delay(Duration),
}

#[derive(Clone, Default)]
struct ReceiverState {
    log: Arc<Mutex<Vec<Received>>>,
    behaviours: Arc<Mutex<HashMap<String, Behaviour>>>,
    counts: Arc<Mutex<HashMap<String, u32>>>,
}

/// A real HTTP receiver on 127.0.0.1 (or ::1).
pub struct Receiver {
    pub addr: SocketAddr,
    state: ReceiverState,
}

impl Receiver {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(bind: &str) -> Self {
        let state = ReceiverState::default();
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        match self.addr {
            SocketAddr::V4(a) => format!("http://{a}{path}"),
            SocketAddr::V6(a) => format!("http://[{}]:{}{path}", a.ip(), a.port()),
        }
    }

    pub fn on(&self, path: &str, b: Behaviour) {
        self.state
            .behaviours
            .lock()
            .unwrap()
            .insert(path.to_string(), b);
    }

    pub fn received(&self, path: &str) -> Vec<Received> {
        self.state
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    pub async fn wait_for(&self, path: &str, n: usize, within: Duration) -> Vec<Received> {
        wait_ok(&format!("{n} requests at {path}"), within, || async {
            let got = self.received(path);
            if got.len() >= n {
                Ok(got)
            } else {
                Err(format!("{} arrived", got.len()))
            }
        })
        .await
    }
}

async fn receive(
    State(st): State<ReceiverState>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/{path}");
    st.log.lock().unwrap().push(Received {
        path: path.clone(),
        headers,
        body,
        at: Instant::now(),
    });
    let n = {
        let mut counts = st.counts.lock().unwrap();
        let c = counts.entry(path.clone()).or_insert(0);
        *c += 1;
        *c
    };
    let behaviour = st
        .behaviours
        .lock()
        .unwrap()
        .get(&path)
        .cloned()
        .unwrap_or(Behaviour::Status(200));
    match behaviour {
        Behaviour::Status(s) => StatusCode::from_u16(s).unwrap().into_response(),
        Behaviour::FailTimes(k) if n <= k => {
            (StatusCode::INTERNAL_SERVER_ERROR, "not yet").into_response()
        }
        Behaviour::FailTimes(_) => (StatusCode::OK, "ok").into_response(),
        Behaviour::Full(s, retry_after, body) => {
            let mut r = (StatusCode::from_u16(s).unwrap(), body).into_response();
            if let Some(ra) = retry_after {
                r.headers_mut().insert("retry-after", ra.parse().unwrap());
            }
            r
        }
        Behaviour::Delay(d) => {
            tokio::time::sleep(d).await;
            (StatusCode::OK, "late").into_response()
        }
    }
}

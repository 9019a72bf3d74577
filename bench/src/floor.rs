//! Floors: what the same client gets from an empty axum handler (the HTTP ceiling on this
//! machine) and from a handler doing one Redis XADD per request (the HTTP + Redis floor of a
//! Redis-backed ingest), plus a local `redis-server` when none is given.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;

use crate::http;
use crate::serve::ServerThread;

const ACCEPTED: &str = r#"{"webhook_id":"msg_01FLOOR000000000000000000","status":"queued"}"#;

/// An empty ingest handler: 202 and a constant body, nothing stored.
pub fn empty_server() -> Result<ServerThread> {
    async fn ingest(_body: Bytes) -> (StatusCode, [(&'static str, &'static str); 1], &'static str) {
        (
            StatusCode::ACCEPTED,
            [("content-type", "application/json")],
            ACCEPTED,
        )
    }
    let router = Router::new().route("/ingest/{sub}", post(ingest));
    ServerThread::start("floor-http", router, 2)
}

/// An ingest handler that appends each body to a Redis stream (one XADD per request) before
/// answering 202.
pub fn redis_server_handler(conn: redis::aio::MultiplexedConnection) -> Result<ServerThread> {
    async fn ingest(
        State(conn): State<Arc<redis::aio::MultiplexedConnection>>,
        body: Bytes,
    ) -> (StatusCode, [(&'static str, &'static str); 1], &'static str) {
        let mut c = (*conn).clone();
        let r: redis::RedisResult<String> = redis::cmd("XADD")
            .arg("herald:bench:floor")
            .arg("MAXLEN")
            .arg("~")
            .arg(1_000_000)
            .arg("*")
            .arg("p")
            .arg(body.as_ref())
            .query_async(&mut c)
            .await;
        match r {
            Ok(_) => (
                StatusCode::ACCEPTED,
                [("content-type", "application/json")],
                ACCEPTED,
            ),
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                [("content-type", "application/json")],
                r#"{"error":"redis"}"#,
            ),
        }
    }
    let router = Router::new()
        .route("/ingest/{sub}", post(ingest))
        .with_state(Arc::new(conn));
    ServerThread::start("floor-redis", router, 2)
}

/// A `redis-server` the harness started on a free loopback port, with AOF on
/// (`appendfsync everysec`, as the compose file and chart run it).
pub struct LocalRedis {
    pub url: String,
    child: Child,
    dir: PathBuf,
}

impl LocalRedis {
    pub async fn start(data_root: &std::path::Path) -> Result<Self> {
        let bin = which("redis-server").ok_or_else(|| {
            anyhow!("redis-server not found (apt-get install redis-server), and neither --redis-url nor HERALD_TEST_REDIS_URL is set")
        })?;
        let port = http::free_port()?;
        let dir = data_root.join(format!("herald-bench-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut cmd = Command::new(bin);
        crate::procs::die_with_parent(&mut cmd);
        let child = cmd
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start redis-server")?;
        let mut me = Self {
            url: format!("redis://127.0.0.1:{port}/"),
            child,
            dir,
        };
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if connect(&me.url).await.is_ok() {
                return Ok(me);
            }
            if let Some(status) = me.child.try_wait()? {
                bail!("redis-server exited during start-up ({status})");
            }
            if Instant::now() >= end {
                bail!("redis-server on port {port} not ready within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl LocalRedis {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects, refusing any Redis that is not on loopback.
pub async fn connect(url: &str) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let host = match &client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, _) => host.clone(),
        redis::ConnectionAddr::Unix(_) => "localhost".to_owned(),
        other => bail!("unsupported Redis address {other:?}"),
    };
    let loopback = tokio::net::lookup_host((host.as_str(), 0))
        .await
        .map(|mut addrs| addrs.all(|a| a.ip().is_loopback()))
        .unwrap_or(false);
    if !loopback {
        bail!("refusing Redis at {host}: the harness only talks to loopback");
    }
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| anyhow!("Redis at {url}: connect timed out"))??;
    let mut c = conn.clone();
    let _: String = redis::cmd("PING").query_async(&mut c).await?;
    Ok(conn)
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

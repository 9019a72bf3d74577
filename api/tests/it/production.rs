//! Production mode as real processes: `herald` api processes (`HERALD_WORKERS=false`) and
//! `herald-delivery` processes sharing FerretDB (the MongoDB wire protocol) and Redis, the
//! servers `scripts/testenv.sh` starts. Each test has its own MongoDB database and Redis key
//! prefix; the outage tests run private Redis and FerretDB servers that they stop and restart.
//!
//! `herald-delivery` is another package's binary: `cargo test --workspace` builds it before
//! any test runs; a narrower run needs `cargo build -p herald-delivery` first.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Api, Behaviour, Receiver};
use herald_testenv::process::{self, Child as Proc};
use herald_testenv::{free_port, wait_for, wait_ok, wait_until, wait_until_blocking, Scratch};
use serde_json::{json, Value};

fn herald_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_herald"))
}

fn delivery_bin() -> PathBuf {
    process::sibling(herald_bin(), "herald-delivery", "herald-delivery")
}

/// How long a private server has to open its port.
const SERVER_START: Duration = Duration::from_secs(20);

/// One installation: a MongoDB database and a Redis key prefix of its own (removed when it is
/// dropped), and the settings every process of it shares.
struct Installation {
    scratch: Scratch,
    extra: Vec<(String, String)>,
    /// Configure Redis as `REDIS_ADDR` + `REDIS_PASSWORD` instead of `REDIS_URL`.
    redis_by_addr: Option<(String, String)>,
}

impl Installation {
    fn new() -> Option<Self> {
        let mongo_uri = herald_testenv::mongo_uri()?;
        let redis_url = herald_testenv::redis_url()?;
        Some(Self::on(mongo_uri, redis_url))
    }

    fn on(mongo_uri: String, redis_url: String) -> Self {
        Self {
            scratch: Scratch::new(mongo_uri, redis_url, "proc"),
            extra: Vec::new(),
            redis_by_addr: None,
        }
    }

    fn with(mut self, key: &str, value: &str) -> Self {
        self.extra.push((key.into(), value.into()));
        self
    }

    fn command(&self, bin: &Path) -> Command {
        let mut cmd = process::command(bin);
        cmd.env("MONGO_URI", &self.scratch.mongo_uri)
            .env("HERALD_MONGO_DATABASE", &self.scratch.database)
            .env("HERALD_REDIS_PREFIX", &self.scratch.prefix)
            .env("HERALD_ALLOW_TARGETS", "127.0.0.0/8,::1/128")
            .env("HERALD_RETRY_SCHEDULE", "200ms,200ms,200ms")
            .env("HERALD_DELIVERY_TIMEOUT", "5s")
            .env("HERALD_WORKER_HEARTBEAT", "1s")
            .env("HERALD_WORKER_STALE_AFTER", "3s");
        match &self.redis_by_addr {
            Some((addr, password)) => cmd.env("REDIS_ADDR", addr).env("REDIS_PASSWORD", password),
            None => cmd.env("REDIS_URL", &self.scratch.redis_url),
        };
        for (k, v) in &self.extra {
            cmd.env(k, v);
        }
        cmd
    }

    /// An api process without workers; answers once ready.
    async fn api(&self) -> (Proc, Api) {
        let port = free_port();
        let proc = Proc::spawn(
            self.command(&herald_bin())
                .env("HERALD_ADDR", format!("127.0.0.1:{port}"))
                .env("HERALD_WORKERS", "false"),
            "herald",
        );
        let api = Api::new(format!("http://127.0.0.1:{port}"));
        api.wait_ready().await;
        (proc, api)
    }

    fn delivery(&self) -> Proc {
        self.delivery_with(&[])
    }

    fn delivery_with(&self, env: &[(&str, &str)]) -> Proc {
        let mut cmd = self.command(&delivery_bin());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::spawn(&mut cmd, "herald-delivery")
    }
}

/// Waits until every id in `ids` reached the receiver at `path`, or panics after `within`.
async fn wait_received(rx: &Receiver, path: &str, ids: &HashSet<String>, within: Duration) {
    let what = format!("{} accepted events at {path}", ids.len());
    wait_ok(&what, within, || async {
        match ids.difference(&received_ids(rx, path)).count() {
            0 => Ok(()),
            missing => Err(format!("{missing} not delivered")),
        }
    })
    .await
}

fn received_ids(rx: &Receiver, path: &str) -> HashSet<String> {
    rx.received(path)
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_string())
        .collect()
}

/// How many receipts at `path` repeated a webhook id already received.
fn duplicates(rx: &Receiver, path: &str) -> usize {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in rx.received(path) {
        *seen
            .entry(r.headers["webhook-id"].to_str().unwrap().to_string())
            .or_default() += 1;
    }
    seen.values().map(|n| n - 1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_flow_works_across_api_and_delivery_processes() {
    let Some(inst) = Installation::new() else {
        return;
    };
    let rx = Receiver::start().await;
    let (_api_proc, api) = inst.api().await;
    let health = free_port();
    let _worker = inst.delivery_with(&[("HERALD_HEALTH_ADDR", &format!("127.0.0.1:{health}"))]);

    let created = api
        .create(json!({"target_url": rx.url("/orders"), "event_types": ["order.created"]}))
        .await;
    let sub = created["id"].as_str().unwrap().to_string();
    let (status, read) = api.get(&format!("/subscriptions/{sub}")).await;
    assert_eq!(status, 200);
    assert_eq!(read["target_url"], rx.url("/orders"));

    let r = api.ingest(&sub, "order.created", r#"{"order":42}"#).await;
    assert_eq!(r.status(), 202);
    let webhook: Value = r.json().await.unwrap();
    let webhook = webhook["webhook_id"].as_str().unwrap().to_string();
    let got = rx.wait_for("/orders", 1, Duration::from_secs(15)).await;
    assert_eq!(&got[0].body[..], br#"{"order":42}"#, "the exact bytes sent");
    let status = api
        .wait_status(&webhook, "succeeded", Duration::from_secs(10))
        .await;
    assert_eq!(
        status["deliveries"][0]["subscription_id"],
        sub.as_str(),
        "{status}"
    );

    // The README's paths, the original project's log path included.
    let (_, ping) = api.get("/ping").await;
    assert_eq!(ping["status"], "working");
    for path in [
        format!("/subscription/logs/{sub}"),
        format!("/subscriptions/{sub}/deliveries"),
    ] {
        let (status, logs) = api.get(&path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(logs["data"][0]["outcome"], "Success", "{path}: {logs}");
        assert_eq!(logs["data"][0]["attempt"], 1, "{path}: {logs}");
        assert_eq!(logs["data"][0]["http_status"], 200, "{path}: {logs}");
        assert_eq!(
            logs["data"][0]["webhook_id"],
            webhook.as_str(),
            "{path}: {logs}"
        );
    }

    // The delivery process counts its own attempts on its health listener's /metrics.
    let metrics = api
        .http
        .get(format!("http://127.0.0.1:{health}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("herald_attempts_total") && l.ends_with(" 1")),
        "{metrics}"
    );

    // An event type the subscription does not take is refused, not queued.
    let r = api.ingest(&sub, "order.deleted", "{}").await;
    assert_ne!(r.status(), 202);

    let r = api.delete(&format!("/subscriptions/{sub}")).await;
    assert_eq!(r.status(), 204);
    let (status, _) = api.get(&format!("/subscriptions/{sub}")).await;
    assert_eq!(status, 404);
    let r = api.ingest(&sub, "order.created", "{}").await;
    assert_eq!(r.status(), 404, "ingest to a deleted subscription");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_reads_queued_right_after_its_202_before_any_worker_runs() {
    let Some(inst) = Installation::new() else {
        return;
    };
    let rx = Receiver::start().await;
    let (_api_proc, api) = inst.api().await;
    let sub = api.subscribe(&rx.url("/later")).await;
    let id = api.ingest_ok(&sub, r#"{"n":1}"#).await;
    let (status, v) = api.get(&format!("/webhooks/{id}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["deliveries"][0]["status"], "queued", "{v}");
    // A delivery process started later takes it.
    let _worker = inst.delivery();
    rx.wait_for("/later", 1, Duration::from_secs(15)).await;
    api.wait_status(&id, "succeeded", Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_delivery_process_hands_its_deliveries_to_the_other() {
    let Some(inst) = Installation::new() else {
        return;
    };
    // The default heartbeat (5 s) and silence limit (15 s): the bound stated in the README.
    let inst = inst
        .with("HERALD_SUBSCRIPTION_CONCURRENCY", "64")
        .with("HERALD_WORKER_HEARTBEAT", "5s")
        .with("HERALD_WORKER_STALE_AFTER", "15s");
    let rx = Receiver::start().await;
    // Slow answers keep deliveries in flight when the process dies.
    rx.on("/slow", Behaviour::Delay(Duration::from_millis(100)));
    let (_api_proc, api) = inst.api().await;
    let sub = api.subscribe(&rx.url("/slow")).await;

    let mut ingests = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let api = Api::new(api.base.clone());
        let sub = sub.clone();
        ingests.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..250 {
                ids.push(
                    api.ingest_ok(&sub, &format!("{{\"w\":{worker},\"i\":{i}}}"))
                        .await,
                );
            }
            ids
        });
    }
    let mut accepted = HashSet::new();
    while let Some(ids) = ingests.join_next().await {
        accepted.extend(ids.unwrap());
    }
    assert_eq!(accepted.len(), 2000);

    let mut a = inst.delivery();
    let _b = inst.delivery();
    rx.wait_for("/slow", 300, Duration::from_secs(30)).await;
    a.kill();
    let killed_at = Instant::now();
    let before_kill = rx.received("/slow").len();
    // The survivor clears the backlog in a few seconds, then idles; it takes over what the
    // dead one held once that has been silent for 15 s (the reaper runs with every 5 s
    // heartbeat), so about 20 s after the kill.
    wait_received(&rx, "/slow", &accepted, Duration::from_secs(45)).await;
    let all_delivered = killed_at.elapsed();
    // Every redelivery has been made once nothing is queued or leased any more (bounded: a
    // redelivery later than the bound fails below anyway).
    let left = Duration::from_secs(120).saturating_sub(killed_at.elapsed());
    wait_ok("the queue to empty", left, || async {
        let (_, stats) = api.get("/stats").await;
        let q = &stats["queue"];
        if q["ready"] == 0 && q["scheduled"] == 0 && q["in_flight"] == 0 {
            Ok(())
        } else {
            Err(stats)
        }
    })
    .await;
    // A duplicate is a delivery the killed process had sent but not settled (in flight, or
    // answered and not yet settled), which the survivor sends again: never one first
    // answered after the kill, which would be a duplicate without a crash.
    let receipts = rx.received("/slow");
    let mut first: HashMap<String, Instant> = HashMap::new();
    let mut takeover: Option<Duration> = None;
    let mut last_redelivery: Option<Duration> = None;
    let mut dups = 0;
    for r in &receipts {
        let id = r.headers["webhook-id"].to_str().unwrap().to_string();
        match first.get(&id) {
            None => {
                first.insert(id, r.at);
            }
            Some(&at) => {
                dups += 1;
                assert!(
                    at < killed_at,
                    "{id} was sent twice, first {:?} after the kill",
                    at - killed_at
                );
                let after = r.at.saturating_duration_since(killed_at);
                takeover = Some(takeover.map_or(after, |t| t.min(after)));
                last_redelivery = Some(last_redelivery.map_or(after, |t| t.max(after)));
            }
        }
    }
    println!(
        "2000 events, one of two delivery processes SIGKILLed after {before_kill} receipts: \
         its deliveries sent again from {takeover:?} to {last_redelivery:?} after the kill \
         ({dups} duplicate deliveries), all delivered after {all_delivered:?}"
    );
    // The killed process had deliveries in flight (100 ms each, 16 at a time), and every one
    // of them reaches the receiver again within the recovery bound, measured from the kill.
    let last = last_redelivery.expect("the killed process's deliveries were sent again");
    assert!(
        last <= Duration::from_secs(30),
        "the last delivery the killed process held was sent again {last:?} after the kill"
    );
    assert_eq!(dups, duplicates(&rx, "/slow"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_through_one_api_process_reaches_another_within_a_second() {
    let Some(inst) = Installation::new() else {
        return;
    };
    let rx = Receiver::start().await;
    let (_p1, one) = inst.api().await;
    let (_p2, two) = inst.api().await;
    let sub = one
        .create_id(json!({"target_url": rx.url("/c"), "event_types": ["a"]}))
        .await;
    // The second process caches the subscription by serving an ingest for it.
    assert_eq!(two.ingest(&sub, "a", "{}").await.status(), 202);
    assert_ne!(two.ingest(&sub, "b", "{}").await.status(), 202);

    let r = one
        .patch(
            &format!("/subscriptions/{sub}"),
            json!({"event_types": ["a", "b"]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    wait_for(
        "the other process to serve the changed subscription",
        Duration::from_secs(1),
        || async { two.ingest(&sub, "b", "{}").await.status() == 202 },
    )
    .await;

    assert_eq!(
        one.delete(&format!("/subscriptions/{sub}")).await.status(),
        204
    );
    wait_for(
        "the other process to refuse events for the deleted subscription",
        Duration::from_secs(1),
        || async { two.ingest(&sub, "a", "{}").await.status() == 404 },
    )
    .await;
}

/// Runs a binary with `env` until it exits (at most 30 s) and returns its status and stderr.
fn run_to_exit(bin: &Path, env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let mut cmd = process::command(bin);
    cmd.env("HERALD_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("RUST_LOG", "off")
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = Proc::spawn(&mut cmd, &bin.display().to_string());
    let status = wait_until_blocking(
        &format!("{} with {env:?} to exit", bin.display()),
        Duration::from_secs(30),
        || child.try_wait().unwrap(),
    );
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

#[test]
fn bad_production_configuration_is_one_error_line_and_a_failed_exit() {
    // A port nothing listens on (bound, then released).
    let dead = format!("127.0.0.1:{}", free_port());
    let dead_mongo = format!("mongodb://{dead}/?serverSelectionTimeoutMS=1000");
    let dead_redis = format!("redis://{dead}/");
    let live_mongo = herald_testenv::mongo_uri();
    let live_redis = herald_testenv::redis_url();
    // A node of a Redis Cluster: Herald's single-node client would lose events there.
    let cluster_node = herald_testenv::redis_cluster_nodes().map(|n| format!("redis://{}/", n[0]));
    let mut cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("MONGO_URI", dead_mongo.as_str())], "REDIS_URL"),
        (vec![("REDIS_URL", dead_redis.as_str())], "MONGO_URI"),
        (vec![("REDIS_ADDR", dead.as_str())], "MONGO_URI"),
    ];
    if let (Some(m), Some(r)) = (&live_mongo, &live_redis) {
        cases.push((
            vec![
                ("MONGO_URI", dead_mongo.as_str()),
                ("REDIS_URL", r.as_str()),
            ],
            "MongoDB",
        ));
        cases.push((
            vec![
                ("MONGO_URI", m.as_str()),
                ("REDIS_URL", dead_redis.as_str()),
            ],
            "Redis",
        ));
        cases.push((
            vec![("MONGO_URI", m.as_str()), ("REDIS_URL", "not a url")],
            "Redis",
        ));
        if let Some(node) = &cluster_node {
            cases.push((
                vec![("MONGO_URI", m.as_str()), ("REDIS_URL", node.as_str())],
                "Redis Cluster",
            ));
        }
    }
    for bin in [herald_bin(), delivery_bin()] {
        for (env, names) in &cases {
            let started = Instant::now();
            let (status, err) = run_to_exit(&bin, env);
            assert!(!status.success(), "{} {env:?} exited 0", bin.display());
            assert_eq!(status.code(), Some(1), "{env:?}: {err}");
            let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "{env:?}: one error line, got {err:?}");
            assert!(
                lines[0].contains(names),
                "{env:?}: {:?} names {names}",
                lines[0]
            );
            assert!(!err.contains("panicked"), "{err}");
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{env:?} took {:?} to fail",
                started.elapsed()
            );
        }
    }
}

/// A private server process for the outage tests, stopped when dropped.
struct Server {
    proc: Option<Proc>,
    start: Box<dyn Fn() -> Child + Send>,
}

impl Server {
    fn new(start: impl Fn() -> Child + Send + 'static) -> Self {
        let proc = Some(Proc(start()));
        Self {
            proc,
            start: Box::new(start),
        }
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            // SIGTERM: Redis flushes its AOF, FerretDB closes its files.
            p.terminate();
            let _ = p.wait();
        }
    }

    fn restart(&mut self) {
        self.stop();
        self.proc = Some(Proc((self.start)()));
    }
}

async fn wait_port(port: u16) {
    process::wait_port(port, SERVER_START).await
}

/// The private Redis asks for a password, as the compose file's does; this one holds every
/// character that ends a URL's userinfo, so `REDIS_ADDR` + `REDIS_PASSWORD` must encode it.
const PRIVATE_REDIS_PASSWORD: &str = "p/a#s?s%w@rd";

/// The URL of the private Redis on `addr`, its password percent-encoded.
fn private_redis_url(addr: &str) -> String {
    let encoded: String = PRIVATE_REDIS_PASSWORD
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("redis://:{encoded}@{addr}/")
}

fn private_redis(dir: &Path, port: u16) -> Server {
    let dir = dir.to_path_buf();
    Server::new(move || {
        Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--requirepass",
                PRIVATE_REDIS_PASSWORD,
                "--dir",
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (on PATH under scripts/testenv.sh)")
    })
}

fn private_ferretdb(dir: &Path, port: u16) -> Server {
    let data = dir.join("data");
    let state = dir.join("state");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    Server::new(move || {
        Command::new("ferretdb")
            .arg("--handler=sqlite")
            .arg(format!("--sqlite-url=file:{}/", data.display()))
            .arg(format!("--listen-addr=127.0.0.1:{port}"))
            .arg("--debug-addr=-")
            .arg(format!("--state-dir={}", state.display()))
            .arg("--telemetry=disable")
            .arg("--log-level=ERROR")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ferretdb (on PATH under scripts/testenv.sh)")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_ingest_answers_503_and_every_acknowledged_event_arrives_later() {
    let Some(mongo) = herald_testenv::mongo_uri() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut redis = private_redis(dir.path(), port);
    wait_port(port).await;
    let addr = format!("127.0.0.1:{port}");
    // A wrong password stops both binaries at start with one line that names the cause.
    for bin in [herald_bin(), delivery_bin()] {
        let (status, err) = run_to_exit(
            &bin,
            &[
                ("MONGO_URI", mongo.as_str()),
                ("REDIS_ADDR", addr.as_str()),
                ("REDIS_PASSWORD", "wrong"),
            ],
        );
        assert_eq!(status.code(), Some(1), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("Redis"), "{err}");
        assert!(!err.contains("wrong"), "the password is not printed: {err}");
    }
    // The original project's REDIS_ADDR + REDIS_PASSWORD, not a URL.
    let mut inst = Installation::on(mongo, private_redis_url(&addr));
    inst.redis_by_addr = Some((addr.clone(), PRIVATE_REDIS_PASSWORD.into()));
    let rx = Receiver::start().await;
    let (_api_proc, api) = inst.api().await;
    let sub = api.subscribe(&rx.url("/r")).await;
    let mut accepted = HashSet::new();
    for i in 0..50 {
        accepted.insert(api.ingest_ok(&sub, &format!("{{\"before\":{i}}}")).await);
    }

    redis.stop();
    let mut refused = 0;
    for i in 0..20 {
        let started = Instant::now();
        let r = api
            .ingest(&sub, "order.created", &format!("{{\"during\":{i}}}"))
            .await;
        let status = r.status().as_u16();
        if status == 202 {
            panic!("a 202 while Redis is down");
        }
        assert_eq!(status, 503);
        assert!(
            r.headers().contains_key("retry-after"),
            "503 carries Retry-After"
        );
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].is_string(), "JSON error: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refused in {:?}, not hung",
            started.elapsed()
        );
        refused += 1;
    }
    assert_eq!(refused, 20);
    let (ready, _) = api.get("/readyz").await;
    assert_eq!(ready, 503, "not ready while Redis is down");

    redis.restart();
    wait_port(port).await;
    // The same AOF: every event acknowledged before the outage is delivered.
    let _worker = inst.delivery();
    wait_received(&rx, "/r", &accepted, Duration::from_secs(30)).await;
    // And ingest works again without restarting the api.
    wait_for(
        "ingest to recover after Redis came back",
        Duration::from_secs(10),
        || async {
            api.ingest(&sub, "order.created", "{\"after\":1}")
                .await
                .status()
                == 202
        },
    )
    .await;
    let extra: HashSet<String> = received_ids(&rx, "/r")
        .difference(&accepted)
        .cloned()
        .collect();
    assert!(extra.len() <= 1, "nothing refused was delivered: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mongodb_down_ingest_keeps_accepting_and_deliveries_catch_up() {
    let Some(redis) = herald_testenv::redis_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut mongo = private_ferretdb(dir.path(), port);
    wait_port(port).await;
    let inst = Installation::on(
        format!("mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=2000"),
        redis,
    );
    let rx = Receiver::start().await;
    let (_api_proc, api) = inst.api().await;
    let _worker = inst.delivery();
    let sub = api.subscribe(&rx.url("/m")).await;
    let mut accepted = HashSet::new();
    for i in 0..20 {
        accepted.insert(api.ingest_ok(&sub, &format!("{{\"before\":{i}}}")).await);
    }
    wait_received(&rx, "/m", &accepted, Duration::from_secs(20)).await;

    mongo.stop();
    // Ingest needs no MongoDB round trip: the subscription comes from the cache, which serves
    // it on past its 30 s lifetime while the store does not answer. The outage outlasts it.
    let outage = Instant::now();
    let mut during = HashSet::new();
    while outage.elapsed() < Duration::from_secs(32) {
        let r = api
            .ingest(
                &sub,
                "order.created",
                &format!("{{\"during\":{}}}", during.len()),
            )
            .await;
        assert_eq!(
            r.status(),
            202,
            "ingest {:?} into the MongoDB outage",
            outage.elapsed()
        );
        let v: Value = r.json().await.unwrap();
        during.insert(v["webhook_id"].as_str().unwrap().to_string());
        // Ingests spread over the outage.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ready, health) = api.get("/readyz").await;
    assert_eq!(ready, 200, "the api stays in service: {health}");
    assert_eq!(health["status"], "degraded", "{health}");
    mongo.restart();
    wait_port(port).await;
    // Deliveries paused or not, none is lost and every attempt is recorded.
    wait_received(&rx, "/m", &during, Duration::from_secs(60)).await;
    for id in during.iter().take(5) {
        let v = api
            .wait_status(id, "succeeded", Duration::from_secs(30))
            .await;
        assert_eq!(v["deliveries"][0]["attempts"], 1, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_disconnect_mid_request_leave_nothing_stored_and_undelivered() {
    let Some(inst) = Installation::new() else {
        return;
    };
    let rx = Receiver::start().await;
    let (_api_proc, api) = inst.api().await;
    let _worker = inst.delivery();
    let sub = api.subscribe(&rx.url("/d")).await;
    let port: u16 = api.base.rsplit(':').next().unwrap().parse().unwrap();
    let body = "{\"disconnect\":true}";
    // Half the clients hang up before the body is complete, half right after sending it whole
    // without waiting for the answer.
    for i in 0..200 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let head = format!(
            "POST /ingest/{sub} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        if i % 2 == 0 {
            s.write_all(&body.as_bytes()[..5]).unwrap();
        } else {
            s.write_all(body.as_bytes()).unwrap();
        }
        drop(s);
    }
    // Every event the queue holds is delivered, and the queue ends empty: nothing was stored
    // half-way. The complete half may or may not have been stored (the client left before the
    // answer); a truncated body never is.
    // Not a wait for a state: right after the hang-ups the queue may read idle with nothing
    // stored yet, while the server still reads the last bodies.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let what = "the stored events delivered";
    let ingested = wait_ok(what, Duration::from_secs(20), || async {
        let (_, stats) = api.get("/stats").await;
        let q = &stats["queue"];
        let idle = q["ready"] == 0 && q["scheduled"] == 0 && q["in_flight"] == 0;
        // Counted by the api process, which took every ingest.
        let ingested = stats["ingested"].as_u64().unwrap() as usize;
        let delivered = received_ids(&rx, "/d").len();
        if idle && delivered == ingested {
            Ok(ingested)
        } else {
            Err(format!(
                "queue {q}, stored {ingested}, delivered {delivered}"
            ))
        }
    })
    .await;
    assert!(ingested <= 100, "truncated bodies are never accepted");
    for r in rx.received("/d") {
        assert_eq!(&r.body[..], body.as_bytes());
    }
}

/// A private Redis (see [`private_redis`]) started on a free port and answering: the server,
/// its port and its URL (password encoded), and its directory (removed when dropped).
struct PrivateRedis {
    server: Server,
    port: u16,
    url: String,
    _dir: tempfile::TempDir,
}

impl PrivateRedis {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let server = private_redis(dir.path(), port);
        wait_port(port).await;
        Self {
            server,
            port,
            url: private_redis_url(&format!("127.0.0.1:{port}")),
            _dir: dir,
        }
    }
}

/// Runs `redis-cli` against the private Redis on `port` and answers its output, trimmed.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--no-auth-warning",
        ])
        .args(["-a", PRIVATE_REDIS_PASSWORD])
        .args(args)
        .output()
        .expect("redis-cli (on PATH under scripts/testenv.sh)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Debian's libfaketime (package `libfaketime`, installed by `scripts/testenv.sh`).
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists());
    found.expect("libfaketime.so.1 under /usr/lib/*/faketime (apt-get install libfaketime)")
}

/// The calls of scripts Redis has run since it started (`INFO commandstats`).
fn script_calls(port: u16) -> u64 {
    redis_cli(port, &["info", "commandstats"])
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|v| v.split(',').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_longer_than_the_silence_limit_makes_no_worker_reap_a_live_one() {
    let Some(mongo) = herald_testenv::mongo_uri() else {
        return;
    };
    let PrivateRedis {
        server: mut redis,
        port,
        url,
        _dir,
    } = PrivateRedis::start().await;
    // Heartbeats every 1 s, silent after 3 s (the installation's settings); the outage lasts
    // 5 s, longer than the limit, while every delivery is held by the receiver for 7 s.
    let inst = Installation::on(mongo, url.clone())
        .with("HERALD_DELIVERY_TIMEOUT", "30s")
        .with("HERALD_SUBSCRIPTION_CONCURRENCY", "16");
    let rx = Receiver::start().await;
    rx.on("/held", Behaviour::Delay(Duration::from_secs(7)));
    let (_api_proc, api) = inst.api().await;
    let sub = api.subscribe(&rx.url("/held")).await;
    let health = free_port();
    let _a = inst.delivery_with(&[("HERALD_HEALTH_ADDR", &format!("127.0.0.1:{health}"))]);
    let _b = inst.delivery();
    let mut accepted = HashSet::new();
    for i in 0..24 {
        accepted.insert(api.ingest_ok(&sub, &format!("{{\"i\":{i}}}")).await);
    }
    // Every delivery leased: at most 16 per process, so both hold some.
    let leases = format!("{}:leases", inst.scratch.prefix);
    wait_until_blocking(
        "the 24 deliveries to be leased",
        Duration::from_secs(10),
        || (redis_cli(port, &["zcard", &leases]) == "24").then_some(()),
    );

    redis.stop();
    // The outage lasts: both workers live through 5 s without Redis.
    tokio::time::sleep(Duration::from_secs(5)).await;
    redis.restart();
    wait_port(port).await;

    // Each request is answered (and logged by the receiver) 7 s after it arrived, so all were
    // still in flight when Redis came back: a worker that reaped the other then would have
    // sent some again at once, and those are answered 7 s later.
    wait_received(&rx, "/held", &accepted, Duration::from_secs(40)).await;
    // A quiet window: a duplicate would arrive up to 7 s after a redelivery.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(
        duplicates(&rx, "/held"),
        0,
        "no delivery is sent twice because of an outage both workers lived through"
    );
    assert_eq!(rx.received("/held").len(), 24);
    // The outage shows in the failure counters a dashboard alerts on.
    let metrics = reqwest::get(format!("http://127.0.0.1:{health}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failed_heartbeats = metrics
        .lines()
        .find(|l| l.starts_with("herald_store_failures_total{operation=\"heartbeat\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(
        failed_heartbeats.is_some_and(|n| n >= 2.0),
        "failed heartbeats counted: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_process_whose_clock_is_five_minutes_behind_retries_and_defers_on_schedule() {
    let Some(mongo) = herald_testenv::mongo_uri() else {
        return;
    };
    let PrivateRedis {
        server: _redis,
        port,
        url,
        _dir,
    } = PrivateRedis::start().await;
    let inst = Installation::on(mongo, url.clone())
        .with("HERALD_RETRY_SCHEDULE", "2s")
        .with("HERALD_MAX_ATTEMPTS", "4");
    let rx = Receiver::start().await;
    rx.on("/fail", Behaviour::Status(500));
    let (_api_proc, api) = inst.api().await;
    let failing = api.subscribe(&rx.url("/fail")).await;
    let paused = api
        .create_id(json!({"target_url": rx.url("/paused"), "paused": true}))
        .await;
    api.ingest_ok(&paused, "{\"held\":true}").await;
    // Debian's libfaketime (preloaded directly: the `faketime` command forks, and its child
    // would outlive the test): this process's wall clock runs 300 s behind Redis's.
    let mut cmd = inst.command(&delivery_bin());
    cmd.env("LD_PRELOAD", libfaketime())
        .env("FAKETIME", "-300s")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let _skewed = Proc::spawn(&mut cmd, "herald-delivery");
    // The paused subscription's delivery is claimed and deferred for a minute: on Redis's
    // clock, not due again at once (which would claim it in a loop).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = script_calls(port);
    api.ingest_ok(&failing, "{\"order\":1}").await;
    let got = rx.wait_for("/fail", 4, Duration::from_secs(30)).await;
    let calls = script_calls(port) - before;
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    for gap in &gaps {
        assert!(
            *gap >= Duration::from_millis(1800),
            "retries 2 s apart by Redis's clock, whatever the worker's: {gaps:?}"
        );
    }
    // ~6 s of work: heartbeats, reaps, polls and 4 attempts, tens of script calls; a deferral
    // due at once would make it thousands.
    assert!(
        calls < 300,
        "{calls} script calls in {:?}",
        gaps.iter().sum::<Duration>()
    );
    assert!(rx.received("/paused").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_may_evict_keys_is_refused_at_start_and_while_running() {
    let Some(mongo) = herald_testenv::mongo_uri() else {
        return;
    };
    let PrivateRedis {
        server: _redis,
        port,
        url,
        _dir,
    } = PrivateRedis::start().await;
    let set_policy = |p: &str| {
        assert_eq!(
            redis_cli(port, &["config", "set", "maxmemory-policy", p]),
            "OK"
        )
    };
    // At start: one error line that names the setting and the fix; nothing starts.
    set_policy("allkeys-lru");
    for bin in [herald_bin(), delivery_bin()] {
        let (status, err) = run_to_exit(
            &bin,
            &[("MONGO_URI", mongo.as_str()), ("REDIS_URL", url.as_str())],
        );
        assert_eq!(status.code(), Some(1), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("maxmemory-policy is allkeys-lru") && err.contains("noeviction"),
            "{err}"
        );
    }
    // While running: a policy changed to one that evicts (a managed default such as
    // volatile-lru) makes ingest refuse with 503 and the api not ready, within seconds.
    set_policy("noeviction");
    let inst = Installation::on(mongo, url.clone());
    let (_api_proc, api) = inst.api().await;
    let sub = api.subscribe("http://127.0.0.1:9/never").await;
    api.ingest_ok(&sub, "{\"before\":1}").await;
    set_policy("volatile-lru");
    let what = "ingest to be refused while Redis may evict";
    let body = wait_until(what, Duration::from_secs(10), || async {
        let r = api.ingest(&sub, "order.created", "{\"during\":1}").await;
        match r.status().as_u16() {
            202 => None,
            503 => Some(r.json::<Value>().await.unwrap()),
            other => panic!("ingest answered {other} while Redis may evict"),
        }
    })
    .await;
    // Clients are told to retry; why is the operator's to read (readiness below, and the log).
    assert_eq!(
        body["error"], "the store is unavailable, retry later",
        "{body}"
    );
    let (ready, health) = api.get("/readyz").await;
    assert_eq!(ready, 503, "not ready while Redis may evict");
    assert!(
        health["error"]
            .as_str()
            .is_some_and(|e| e.contains("maxmemory-policy")),
        "readiness says why: {health}"
    );
    set_policy("noeviction");
    wait_for("ingest to resume", Duration::from_secs(10), || async {
        api.ingest(&sub, "order.created", "{\"after\":1}")
            .await
            .status()
            == 202
    })
    .await;
    assert_eq!(api.get("/readyz").await.0, 200);
}

#[test]
fn help_never_shows_connection_strings_or_passwords() {
    for bin in [herald_bin(), delivery_bin()] {
        let out = Command::new(&bin)
            .arg("--help")
            .env("MONGO_URI", "mongodb://herald:hunter2-mongo@db.internal/")
            .env("REDIS_URL", "redis://:hunter2-redis@cache.internal/")
            .env("REDIS_PASSWORD", "hunter2-password")
            .output()
            .expect("--help runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("MONGO_URI"), "{text}");
        assert!(!text.contains("hunter2"), "{}: {text}", bin.display());
    }
}

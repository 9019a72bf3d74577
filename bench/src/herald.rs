//! Finding, starting and stopping a Herald under test, and reading its CPU time and memory
//! from /proc.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hyper::{Method, StatusCode};

use crate::http::{self, Base};
use crate::procs::{die_with_parent, ProcRef};
use crate::servers::Servers;

/// The modes Herald runs in.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One process: api + delivery workers + retention on an embedded SQLite file.
    #[default]
    Standalone,
    /// api and delivery processes on Redis (queue) + MongoDB (storage).
    RedisMongo,
}

/// A Herald under test: one the harness started (and stops on drop), or one at `--url`.
pub struct Herald {
    pub base: Base,
    /// The process serving the api (standalone: the only one), when known.
    pub pid: Option<u32>,
    /// Every process whose CPU and RSS a phase records: Herald's own and, in redis-mongo mode,
    /// the servers the harness started for it.
    pub procs: Vec<ProcRef>,
    /// Processes the harness started, stopped in this order.
    children: Vec<Child>,
    dir: Option<PathBuf>,
    /// The api's log (standalone: Herald's).
    log: Option<PathBuf>,
    /// redis-mongo: (Redis URL, key prefix) to remove once stopped.
    redis_keys: Option<(String, String)>,
}

/// How to start the Herald under test.
#[derive(Clone)]
pub struct Launch {
    pub mode: Mode,
    pub bin: PathBuf,
    /// redis-mongo: the `herald-delivery` binary.
    pub delivery_bin: PathBuf,
    /// redis-mongo: how many delivery processes.
    pub deliveries: usize,
    /// redis-mongo: the Redis and MongoDB shared by the run's scenarios.
    pub servers: Option<Arc<Servers>>,
    /// Parent directory of the per-run data directory (the SQLite file lives on real disk
    /// there, so durability costs what it costs).
    pub data_root: PathBuf,
    /// Extra environment (`RUST_LOG`, `HERALD_RETRY_SCHEDULE`, ...).
    pub env: Vec<(String, String)>,
}

/// The binary a `cargo build --release -p herald-api` leaves in the workspace target dir.
pub fn default_bin(profile: &str) -> PathBuf {
    target_dir().join(profile).join("herald")
}

/// The workspace's target directory (`CARGO_TARGET_DIR` when set).
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.join("target"))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// `herald-delivery` beside a `herald` binary.
pub fn delivery_beside(herald: &Path) -> PathBuf {
    herald.with_file_name(format!("herald-delivery{}", std::env::consts::EXE_SUFFIX))
}

impl Herald {
    /// redis-mongo: the pids of the delivery processes (empty in standalone mode).
    pub fn delivery_pids(&self) -> Vec<u32> {
        self.procs
            .iter()
            .filter(|p| p.name.starts_with("delivery-"))
            .map(|p| p.pid)
            .collect()
    }

    /// Uses an already-running Herald.
    pub async fn external(url: &str, pid: Option<u32>) -> Result<Self> {
        let base = Base::parse(url).await?;
        wait_ready(&base, Duration::from_secs(10), &mut []).await?;
        Ok(Self {
            base,
            pid,
            procs: pid
                .map(|p| ProcRef::server("herald", p))
                .into_iter()
                .collect(),
            children: Vec::new(),
            dir: None,
            log: None,
            redis_keys: None,
        })
    }

    /// Starts the Herald of `launch.mode`.
    pub async fn spawn(launch: &Launch, extra_env: &[(String, String)]) -> Result<Self> {
        match launch.mode {
            Mode::Standalone => Self::spawn_standalone(launch, extra_env).await,
            Mode::RedisMongo => Self::spawn_redis_mongo(launch, extra_env).await,
        }
    }

    /// Starts a standalone Herald on a free loopback port with a fresh SQLite file.
    async fn spawn_standalone(launch: &Launch, extra_env: &[(String, String)]) -> Result<Self> {
        if !launch.bin.is_file() {
            bail!(
                "Herald binary {} not found: build it with `cargo build --release -p herald-api` \
                 (or `cargo build -p herald-api` and pass --herald-bin target/debug/herald)",
                launch.bin.display()
            );
        }
        let port = http::free_port()?;
        let dir = launch
            .data_root
            .join(format!("herald-bench-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let log = dir.join("herald.log");
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(&launch.bin);
        cmd.env("HERALD_ADDR", format!("127.0.0.1:{port}"))
            .env("HERALD_SQLITE_PATH", dir.join("herald.db"))
            .env("HERALD_ALLOW_TARGETS", "127.0.0.0/8,::1/128")
            // Neither Redis nor MongoDB: standalone, whatever the calling shell has set.
            .env_remove("MONGO_URI")
            .env_remove("REDIS_URL")
            .env_remove("REDIS_ADDR")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in launch.env.iter().chain(extra_env) {
            cmd.env(k, v);
        }
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", launch.bin.display()))?;
        let pid = child.id();
        let mut herald = Self {
            base: Base::from_addr(([127, 0, 0, 1], port).into()),
            pid: Some(pid),
            procs: vec![ProcRef::server("herald", pid)],
            children: vec![child],
            dir: Some(dir),
            log: Some(log),
            redis_keys: None,
        };
        let ready = wait_ready(&herald.base, Duration::from_secs(30), &mut herald.children).await;
        if let Err(e) = ready {
            let tail = herald.log_tail(2000);
            bail!("{e:#}\n--- herald log (tail) ---\n{tail}");
        }
        Ok(herald)
    }

    /// Starts one api process (`HERALD_WORKERS=false`) and `launch.deliveries` delivery
    /// processes on the run's Redis and MongoDB, with a database and key prefix of their own.
    async fn spawn_redis_mongo(launch: &Launch, extra_env: &[(String, String)]) -> Result<Self> {
        let servers = launch
            .servers
            .as_ref()
            .ok_or_else(|| anyhow!("redis-mongo mode without its Redis and MongoDB"))?;
        for bin in [&launch.bin, &launch.delivery_bin] {
            if !bin.is_file() {
                bail!(
                    "{} not found: build it with `cargo build --release -p herald-api -p herald-delivery` \
                     (or pass --herald-bin / --delivery-bin)",
                    bin.display()
                );
            }
        }
        let port = http::free_port()?;
        let tag = format!("{}_{port}", std::process::id());
        let database = format!("herald_bench_{tag}");
        let prefix = format!("herald-bench-{tag}");
        let dir = launch.data_root.join(format!("herald-bench-{tag}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let command = |bin: &Path, log: &Path| -> Result<Command> {
            let out = File::create(log)?;
            let err = out.try_clone()?;
            let mut cmd = Command::new(bin);
            cmd.env("MONGO_URI", &servers.mongo_uri)
                .env("HERALD_MONGO_DATABASE", &database)
                .env("REDIS_URL", &servers.redis_url)
                .env("HERALD_REDIS_PREFIX", &prefix)
                .env("HERALD_ALLOW_TARGETS", "127.0.0.0/8,::1/128")
                // REDIS_URL wins here, whatever the calling shell has set.
                .env_remove("REDIS_ADDR")
                .env_remove("REDIS_PASSWORD")
                .env_remove("HERALD_SQLITE_PATH")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            for (k, v) in launch.env.iter().chain(extra_env) {
                cmd.env(k, v);
            }
            die_with_parent(&mut cmd);
            Ok(cmd)
        };
        let log = dir.join("api.log");
        let mut herald = Self {
            base: Base::from_addr(([127, 0, 0, 1], port).into()),
            pid: None,
            procs: Vec::new(),
            children: Vec::new(),
            dir: Some(dir.clone()),
            log: Some(log.clone()),
            redis_keys: Some((servers.redis_url.clone(), prefix.clone())),
        };
        let api = command(&launch.bin, &log)?
            .env("HERALD_ADDR", format!("127.0.0.1:{port}"))
            .env("HERALD_WORKERS", "false")
            .spawn()
            .with_context(|| format!("start {}", launch.bin.display()))?;
        herald.pid = Some(api.id());
        herald.procs.push(ProcRef::server("api", api.id()));
        herald.children.push(api);
        for i in 1..=launch.deliveries.max(1) {
            let child = command(&launch.delivery_bin, &dir.join(format!("delivery-{i}.log")))?
                .spawn()
                .with_context(|| format!("start {}", launch.delivery_bin.display()))?;
            herald
                .procs
                .push(ProcRef::server(&format!("delivery-{i}"), child.id()));
            herald.children.push(child);
        }
        herald.procs.extend(servers.procs());
        let ready = wait_ready(&herald.base, Duration::from_secs(30), &mut herald.children).await;
        if let Err(e) = ready {
            let mut tails = String::new();
            for name in ["api", "delivery-1", "delivery-2"] {
                let text =
                    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
                let start = text.len().saturating_sub(1500);
                let start = (start..text.len())
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(text.len());
                tails += &format!("\n--- {name} log (tail) ---\n{}", &text[start..]);
            }
            bail!("{e:#}{tails}");
        }
        Ok(herald)
    }

    /// The end of Herald's log, for error messages.
    pub fn log_tail(&self, max: usize) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let start = text.len().saturating_sub(max);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }

    /// Stops the processes the harness started: SIGTERM to all, then SIGKILL to any still
    /// running after 10 s.
    pub fn stop(&mut self) {
        for child in &self.children {
            // SAFETY: kill(2) on the pid of a child this process started and has not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let end = Instant::now() + Duration::from_secs(10);
        for mut child in self.children.drain(..) {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < end => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        if let Some((url, prefix)) = self.redis_keys.take() {
            Servers::forget_prefix(&url, &prefix);
        }
        if let Some(dir) = self.dir.take() {
            if std::env::var_os("HERALD_BENCH_KEEP").is_none() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn wait_ready(base: &Base, timeout: Duration, children: &mut [Child]) -> Result<()> {
    let end = Instant::now() + timeout;
    loop {
        for c in children.iter_mut() {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "a Herald process (pid {}) exited during start-up ({status})",
                    c.id()
                );
            }
        }
        let last = match http::call_json(base, Method::GET, "/ping", None).await {
            Ok((StatusCode::OK, _)) => return Ok(()),
            Ok((s, body)) => format!("GET /ping answered {s}: {body}"),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= end {
            return Err(anyhow!(
                "Herald at {} not ready within {timeout:?}: {last}",
                base.url()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

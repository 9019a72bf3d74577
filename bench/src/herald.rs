//! Finding, starting and stopping a Herald under test, and reading its CPU time and memory
//! from /proc.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hyper::{Method, StatusCode};

use crate::http::{self, Base};

/// The modes Herald runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One process: api + delivery workers + retention on an embedded SQLite file.
    Standalone,
    /// api and delivery processes on Redis (queue) + MongoDB (storage).
    RedisMongo,
}

pub const NOT_AVAILABLE: &str = "redis-mongo mode: not available yet (Herald has no Redis/MongoDB backend in this build); nothing was measured";

/// A Herald under test: one the harness started (and stops on drop), or one at `--url`.
pub struct Herald {
    pub base: Base,
    /// The process to read /proc from, when known.
    pub pid: Option<u32>,
    child: Option<Child>,
    dir: Option<PathBuf>,
    log: Option<PathBuf>,
}

/// How to start a standalone Herald.
#[derive(Debug, Clone)]
pub struct Launch {
    pub bin: PathBuf,
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

impl Herald {
    /// Uses an already-running Herald.
    pub async fn external(url: &str, pid: Option<u32>) -> Result<Self> {
        let base = Base::parse(url).await?;
        wait_ready(&base, Duration::from_secs(10), None).await?;
        Ok(Self {
            base,
            pid,
            child: None,
            dir: None,
            log: None,
        })
    }

    /// Starts a standalone Herald on a free loopback port with a fresh SQLite file.
    pub async fn spawn(launch: &Launch, extra_env: &[(String, String)]) -> Result<Self> {
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
            child: Some(child),
            dir: Some(dir),
            log: Some(log),
        };
        let ready = wait_ready(&herald.base, Duration::from_secs(30), herald.child.as_mut()).await;
        if let Err(e) = ready {
            let tail = herald.log_tail(2000);
            bail!("{e:#}\n--- herald log (tail) ---\n{tail}");
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

    /// Stops a Herald the harness started: SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child this process started and has not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let end = Instant::now() + Duration::from_secs(10);
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

async fn wait_ready(base: &Base, timeout: Duration, mut child: Option<&mut Child>) -> Result<()> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(c) = child.as_deref_mut() {
            if let Some(status) = c.try_wait()? {
                bail!("herald exited during start-up ({status})");
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

/// Makes a child the harness starts get SIGTERM if the harness dies first (killed by a
/// timeout, Ctrl-C), so no Herald or Redis outlives a run.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe, and the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some((utime + stime) as f64 / hz)
}

/// Busy CPU time of the whole machine (all cores, /proc/stat), in seconds.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some(busy as f64 / hz)
}

/// (VmRSS, VmHWM) of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_proc() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        let (rss, hwm) = rss_kib(pid).unwrap();
        assert!(rss > 0 && hwm >= rss);
    }
}

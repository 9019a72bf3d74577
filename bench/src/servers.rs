//! The servers redis-mongo mode runs on: a Redis (`--redis-url`, or a `redis-server` the
//! harness starts with AOF `everysec`) and a MongoDB (`--mongo-uri`, or a local FerretDB on
//! SQLite), started once per run and shared by every scenario (each scenario has its own
//! database name and key prefix).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::floor::{self, LocalRedis};
use crate::http;
use crate::procs::ProcRef;

/// Redis and MongoDB for one run.
pub struct Servers {
    pub redis_url: String,
    pub mongo_uri: String,
    /// What the MongoDB is, for the results ("FerretDB v1.24 on SQLite, started here", ...).
    pub mongo_desc: String,
    pub redis_desc: String,
    redis: Option<LocalRedis>,
    ferret: Option<LocalFerret>,
}

impl Servers {
    pub async fn start(
        data_root: &Path,
        redis_url: Option<&str>,
        mongo_uri: Option<&str>,
    ) -> Result<Self> {
        let (redis_url, redis, redis_desc) = match redis_url {
            Some(u) => {
                floor::connect(u).await?;
                (u.to_owned(), None, format!("Redis at {u} (given)"))
            }
            None => {
                let r = LocalRedis::start(data_root).await?;
                let desc = format!(
                    "redis-server {} started here (AOF on, appendfsync everysec)",
                    version_of("redis-server", &["--version"]).unwrap_or_default()
                );
                (r.url.clone(), Some(r), desc)
            }
        };
        let (mongo_uri, ferret, mongo_desc) = match mongo_uri {
            Some(u) => {
                check_mongo_uri(u).await?;
                (
                    u.to_owned(),
                    None,
                    format!("MongoDB at {} (given)", redact(u)),
                )
            }
            None => {
                let f = LocalFerret::start(data_root).await?;
                let desc = format!(
                    "FerretDB {} on SQLite started here ({}): a MongoDB wire-protocol stand-in, slower than a real MongoDB",
                    f.version,
                    f.bin.display()
                );
                (f.uri.clone(), Some(f), desc)
            }
        };
        Ok(Self {
            redis_url,
            mongo_uri,
            mongo_desc,
            redis_desc,
            redis,
            ferret,
        })
    }

    /// The processes the harness started (their CPU and RSS are followed).
    pub fn procs(&self) -> Vec<ProcRef> {
        let mut v = Vec::new();
        if let Some(r) = &self.redis {
            v.push(ProcRef::backing("redis-server", r.pid()));
        }
        if let Some(f) = &self.ferret {
            v.push(ProcRef::backing("ferretdb", f.child.id()));
        }
        v
    }

    pub fn redis_pid(&self) -> Option<u32> {
        self.redis.as_ref().map(LocalRedis::pid)
    }

    /// Removes one installation's Redis keys (`prefix:*`), so that later scenarios run on a
    /// Redis no bigger than their own data. Bounded: at most 10,000 SCAN rounds, 5 s per call.
    pub fn forget_prefix(redis_url: &str, prefix: &str) {
        let Ok(client) = redis::Client::open(redis_url) else {
            return;
        };
        let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(5)) else {
            return;
        };
        let _ = con.set_read_timeout(Some(Duration::from_secs(5)));
        let pattern = format!("{prefix}:*");
        let mut cursor: u64 = 0;
        for _ in 0..10_000 {
            let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query(&mut con)
            else {
                return;
            };
            if !keys.is_empty() {
                let _: redis::RedisResult<u64> = redis::cmd("UNLINK").arg(keys).query(&mut con);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

/// A FerretDB (MongoDB wire protocol on SQLite) on a free loopback port, its data in a
/// directory of its own, killed and removed on drop.
pub struct LocalFerret {
    pub uri: String,
    pub bin: PathBuf,
    pub version: String,
    child: Child,
    dir: PathBuf,
}

impl LocalFerret {
    pub async fn start(data_root: &Path) -> Result<Self> {
        let bin = find_ferretdb().ok_or_else(|| {
            anyhow!(
                "ferretdb not found on PATH nor in ~/.cache/herald-testenv/ferretdb-*/ \
                 (`scripts/testenv.sh --build-only` builds it), and --mongo-uri is not set"
            )
        })?;
        let port = http::free_port()?;
        let dir = data_root.join(format!(
            "herald-bench-ferretdb-{}-{port}",
            std::process::id()
        ));
        let (data, state) = (dir.join("data"), dir.join("state"));
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(&state)?;
        let mut cmd = Command::new(&bin);
        crate::procs::die_with_parent(&mut cmd);
        let log = std::fs::File::create(dir.join("ferretdb.log"))?;
        let child = cmd
            .arg("--handler=sqlite")
            .arg(format!("--sqlite-url=file:{}/", data.display()))
            .arg(format!("--listen-addr=127.0.0.1:{port}"))
            .arg("--debug-addr=-")
            .arg(format!("--state-dir={}", state.display()))
            .arg("--telemetry=disable")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let version = version_of(bin.to_str().unwrap_or("ferretdb"), &["--version"])
            .and_then(|v| {
                v.lines()
                    .find(|l| l.starts_with("version:"))
                    .map(|l| l.trim_start_matches("version:").trim().to_owned())
            })
            .unwrap_or_else(|| "(version unknown)".into());
        let mut me = Self {
            uri: format!("mongodb://127.0.0.1:{port}/"),
            bin,
            version,
            child,
            dir,
        };
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(me);
            }
            if let Some(status) = me.child.try_wait()? {
                let log = std::fs::read_to_string(me.dir.join("ferretdb.log")).unwrap_or_default();
                bail!("ferretdb exited during start-up ({status}): {}", log.trim());
            }
            if Instant::now() >= end {
                bail!("ferretdb on port {port} not listening within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LocalFerret {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("HERALD_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn find_ferretdb() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&path)
            .map(|d| d.join("ferretdb"))
            .find(|p| p.is_file())
        {
            return Some(p);
        }
    }
    let cache = std::env::var_os("HERALD_TESTENV_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(|d| PathBuf::from(d).join("herald-testenv"))
                .or_else(|| {
                    std::env::var_os("HOME")
                        .map(|h| PathBuf::from(h).join(".cache").join("herald-testenv"))
                })
        })?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(&cache)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("ferretdb-"))
        .map(|e| e.path().join("ferretdb"))
        .filter(|p| p.is_file())
        .collect();
    // The newest version's name sorts last for same-width versions; good enough for a cache
    // that normally holds one.
    found.sort();
    found.pop()
}

fn version_of(bin: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(bin).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// `mongodb://user:secret@host/` without the secret.
fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &uri[..s], &uri[at + 1..]),
        _ => uri.to_owned(),
    }
}

/// The hosts of a `mongodb://` URI must all be on loopback (`mongodb+srv` asks DNS for them,
/// so it is refused).
async fn check_mongo_uri(uri: &str) -> Result<()> {
    let rest = uri
        .strip_prefix("mongodb://")
        .ok_or_else(|| anyhow!("--mongo-uri must start with mongodb:// (loopback only)"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    for host in hosts.split(',') {
        let (name, port) = match host.strip_prefix('[') {
            Some(v6) => {
                let (h, p) = v6.split_once(']').unwrap_or((v6, ""));
                (h, p.trim_start_matches(':'))
            }
            None => host.rsplit_once(':').unwrap_or((host, "")),
        };
        let port: u16 = if port.is_empty() {
            27017
        } else {
            port.parse()?
        };
        let loopback = tokio::net::lookup_host((name, port))
            .await
            .map(|mut a| a.all(|a| a.ip().is_loopback()))
            .unwrap_or(false);
        if !loopback {
            bail!("refusing MongoDB at {name}: the harness only talks to loopback");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mongo_uri_must_be_loopback() {
        assert!(check_mongo_uri("mongodb://127.0.0.1:27017/").await.is_ok());
        assert!(check_mongo_uri("mongodb://u:p@[::1]:1/db?x=y")
            .await
            .is_ok());
        assert!(check_mongo_uri("mongodb://10.1.2.3:27017/").await.is_err());
        assert!(check_mongo_uri("mongodb+srv://cluster.example/")
            .await
            .is_err());
        assert_eq!(redact("mongodb://u:p@h:1/"), "mongodb://***@h:1/");
    }
}

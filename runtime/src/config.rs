//! Configuration shared by every binary: flags with environment fallbacks, the same names
//! everywhere (`HERALD_*`, plus the original `MONGO_URI`, `REDIS_ADDR`, `REDIS_PASSWORD`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use herald_core::retry::{parse_duration, parse_schedule, RetryPolicy, DEFAULT_SCHEDULE};
use herald_core::ssrf::TargetGuard;

#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Listen address of the api.
    #[arg(long, env = "HERALD_ADDR", default_value = "0.0.0.0:8000")]
    pub addr: SocketAddr,

    /// SQLite file of standalone mode.
    #[arg(long, env = "HERALD_SQLITE_PATH", default_value = "herald.db")]
    pub sqlite_path: PathBuf,

    /// `full` makes every acknowledged event survive a power loss; `normal` only a crash.
    #[arg(long, env = "HERALD_SQLITE_SYNC", default_value = "full", value_parser = ["full", "normal"])]
    pub sqlite_sync: String,

    /// MongoDB connection string (production mode). It may hold a password: `--help` never
    /// shows its value.
    #[arg(long, env = "MONGO_URI", hide_env_values = true)]
    pub mongo_uri: Option<String>,

    /// Redis URL (production mode), e.g. `redis://redis:6379/0`; its value is never shown.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Redis `host:port`, the original README's form; used when `REDIS_URL` is unset.
    #[arg(long, env = "REDIS_ADDR")]
    pub redis_addr: Option<String>,

    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,

    /// MongoDB database; when unset, the one the connection string names, else `herald`.
    #[arg(long, env = "HERALD_MONGO_DATABASE")]
    pub mongo_database: Option<String>,

    /// Prefix of every Redis key and channel Herald uses, so that several Herald installations
    /// (or test runs) can share one Redis.
    #[arg(long, env = "HERALD_REDIS_PREFIX", default_value = "herald")]
    pub redis_prefix: String,

    /// Comma-separated CIDRs exempt from the SSRF guard, e.g. `127.0.0.0/8,::1/128`.
    #[arg(long, env = "HERALD_ALLOW_TARGETS", default_value = "", value_parser = parse_allow)]
    pub allow_targets: AllowList,

    /// Delays between attempts, e.g. `10s,30s,1m,5m,15m` (`ms` allowed).
    #[arg(long, env = "HERALD_RETRY_SCHEDULE", default_value = DEFAULT_SCHEDULE, value_parser = parse_schedule_arg)]
    pub retry_schedule: Schedule,

    /// Attempts in all (default: the schedule's length plus one).
    #[arg(long, env = "HERALD_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,

    /// Per-attempt timeout.
    #[arg(long, env = "HERALD_DELIVERY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,

    /// How long a worker holds a delivery before another may take it over.
    #[arg(long, env = "HERALD_DELIVERY_LEASE", default_value = "3m", value_parser = parse_duration)]
    pub delivery_lease: Duration,

    /// Deliveries in flight at once per process.
    #[arg(long, env = "HERALD_DELIVERY_CONCURRENCY", default_value_t = 256)]
    pub delivery_concurrency: usize,

    /// Deliveries in flight at once per subscription and process.
    #[arg(long, env = "HERALD_SUBSCRIPTION_CONCURRENCY", default_value_t = 16)]
    pub subscription_concurrency: usize,

    /// Run delivery workers and the retention sweep in the api process (standalone). Set to
    /// `false` when separate `herald-delivery` processes deliver.
    #[arg(long, env = "HERALD_WORKERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub workers: bool,

    /// Attempt-log retention.
    #[arg(long, env = "HERALD_RETENTION", default_value = "72h", value_parser = parse_duration)]
    pub retention: Duration,

    /// How often the retention task runs.
    #[arg(long, env = "HERALD_RETENTION_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub retention_interval: Duration,

    /// Bearer key for the management API; unset leaves it open.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Bearer key for ingest; unset leaves ingest open (signatures still apply).
    #[arg(long, env = "HERALD_INGEST_KEY", hide_env_values = true)]
    pub ingest_key: Option<String>,

    /// Largest accepted payload in bytes (at most 15 MiB: see `MAX_PAYLOAD_LIMIT`).
    #[arg(long, env = "HERALD_MAX_PAYLOAD", default_value_t = 1024 * 1024)]
    pub max_payload: usize,

    /// Ingest requests per second per subscription before 429 (0: unlimited).
    #[arg(long, env = "HERALD_INGEST_RATE_LIMIT", default_value_t = 0)]
    pub ingest_rate_limit: u32,

    /// `text` or `json`.
    #[arg(long, env = "HERALD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Largest size the SQLite file may grow to, in bytes (0: no limit but the disk's). When it
    /// is reached, writes fail as on a full disk: ingest answers 503 and `/readyz` says why.
    #[arg(long, env = "HERALD_SQLITE_MAX_SIZE", default_value_t = 0)]
    pub sqlite_max_size: u64,
    /// How often the queue gauges of `/metrics` are recounted, off the scrape path.
    #[arg(long, env = "HERALD_METRICS_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub metrics_interval: Duration,

    /// Origins besides Herald's own whose browsers may send state-changing requests, comma-
    /// separated, e.g. `https://admin.example.com`. Requests without an `Origin` always pass.
    #[arg(long, env = "HERALD_ALLOWED_ORIGINS", default_value = "", value_parser = parse_origins)]
    pub allowed_origins: OriginList,

    /// Time a client has to send a request's headers, from its first byte (or from connecting).
    #[arg(long, env = "HERALD_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Time a request has from its headers to its answer, which bounds reading the body; past it
    /// the answer is 408 and the connection closes.
    #[arg(long, env = "HERALD_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// How long a kept-alive connection may wait for its next request before it is closed.
    #[arg(long, env = "HERALD_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Open connections at most; further clients wait in the listen backlog until one closes.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// How often a delivery worker renews its leases and looks for workers that stopped.
    #[arg(long, env = "HERALD_WORKER_HEARTBEAT", default_value = "5s", value_parser = parse_duration)]
    pub worker_heartbeat: Duration,

    /// A worker silent for this long is taken for dead: its deliveries go back to the queue.
    #[arg(long, env = "HERALD_WORKER_STALE_AFTER", default_value = "15s", value_parser = parse_duration)]
    pub worker_stale_after: Duration,

    /// Payload bytes held by deliveries in flight per process; claims take fewer deliveries
    /// while it is spent (always at least one).
    #[arg(long, env = "HERALD_MAX_INFLIGHT_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_inflight_bytes: usize,

    /// After SIGTERM, how long requests and deliveries in flight may take before the process
    /// exits regardless.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// A subscription whose every attempt failed for this long is disabled (`0`: never; a
    /// `410 Gone` answer disables at once regardless).
    #[arg(long, env = "HERALD_DISABLE_AFTER", default_value = "5d", value_parser = parse_duration)]
    pub disable_after: Duration,

    /// How long the previous secret stays valid after a rotation, unless the rotation says.
    #[arg(long, env = "HERALD_SECRET_OVERLAP", default_value = "24h", value_parser = parse_overlap)]
    pub secret_overlap: Duration,
}

/// The largest `HERALD_MAX_PAYLOAD` Herald accepts: 15 MiB. MongoDB refuses documents over
/// 16 MiB, and an event's document holds its payload plus its type, times and the ids of the
/// subscriptions it fans out to; the MiB left covers some 20,000 subscription ids. A larger
/// payload could be acknowledged and then never be stored.
pub const MAX_PAYLOAD_LIMIT: usize = 15 * 1024 * 1024;

impl Settings {
    /// Refuses a `HERALD_MAX_PAYLOAD` above [`MAX_PAYLOAD_LIMIT`]; checked when the api starts,
    /// so the refusal is the process's one error line.
    pub fn check_max_payload(&self) -> Result<(), String> {
        if self.max_payload > MAX_PAYLOAD_LIMIT {
            return Err(format!(
                "HERALD_MAX_PAYLOAD ({}) must be at most {MAX_PAYLOAD_LIMIT} bytes (15 MiB): an \
                 event must fit in one MongoDB document (16 MiB with its other fields)",
                self.max_payload
            ));
        }
        Ok(())
    }
}

fn parse_overlap(s: &str) -> Result<Duration, String> {
    herald_core::subscriptions::check_overlap(parse_duration(s)?)
}

/// Normalized origins (`scheme://host[:port]`, lower case, no trailing slash).
#[derive(Debug, Clone, Default)]
pub struct OriginList(pub Vec<String>);

fn parse_origins(s: &str) -> Result<OriginList, String> {
    let mut out = Vec::new();
    for raw in s.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let origin = raw.trim_end_matches('/').to_ascii_lowercase();
        let host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        match host {
            Some(h) if !h.is_empty() && !h.contains(['/', '?', '#', '@']) => out.push(origin),
            _ => return Err(format!("{raw:?} is not an origin like https://host[:port]")),
        }
    }
    Ok(OriginList(out))
}

#[derive(Debug, Clone, Default)]
pub struct AllowList(pub Vec<IpNet>);

#[derive(Debug, Clone)]
pub struct Schedule(pub Vec<Duration>);

fn parse_allow(s: &str) -> Result<AllowList, String> {
    TargetGuard::parse_allow_list(s).map(AllowList)
}

fn parse_schedule_arg(s: &str) -> Result<Schedule, String> {
    parse_schedule(s).map(Schedule)
}

impl Settings {
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::from_schedule(self.retry_schedule.0.clone())
            .with_overrides(None, self.max_attempts)
    }

    pub fn target_guard(&self) -> TargetGuard {
        TargetGuard::new(self.allow_targets.0.clone())
    }

    /// The Redis URL from `REDIS_URL`, or from `REDIS_ADDR` + `REDIS_PASSWORD`. The password
    /// is percent-encoded: written as it is, a `/`, `#`, `?` or `@` in it would end the
    /// userinfo and name another host.
    pub fn redis(&self) -> Option<String> {
        if let Some(url) = &self.redis_url {
            return Some(url.clone());
        }
        self.redis_addr
            .as_ref()
            .map(|addr| match &self.redis_password {
                Some(pw) if !pw.is_empty() => {
                    let pw = percent_encoding::utf8_percent_encode(
                        pw,
                        percent_encoding::NON_ALPHANUMERIC,
                    );
                    format!("redis://:{pw}@{addr}/")
                }
                _ => format!("redis://{addr}/"),
            })
    }

    /// Standalone when neither MongoDB nor Redis is configured.
    pub fn standalone(&self) -> bool {
        self.mongo_uri.is_none() && self.redis().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        s: Settings,
    }

    #[test]
    fn defaults_follow_the_spec() {
        let s = Cli::try_parse_from(["herald"]).unwrap().s;
        assert_eq!(s.addr.to_string(), "0.0.0.0:8000");
        assert_eq!(s.retry_policy(), RetryPolicy::default());
        assert_eq!(s.retention, Duration::from_secs(72 * 3600));
        assert_eq!(s.delivery_timeout, Duration::from_secs(10));
        assert_eq!(s.max_payload, 1 << 20);
        assert!(s.allow_targets.0.is_empty());
        assert!(s.allowed_origins.0.is_empty());
        assert_eq!(s.header_timeout, Duration::from_secs(10));
        assert_eq!(s.body_timeout, Duration::from_secs(30));
        assert_eq!(s.idle_timeout, Duration::from_secs(60));
        assert_eq!(s.max_connections, 10_000);
        assert_eq!(s.shutdown_grace, Duration::from_secs(20));
    }

    #[test]
    fn allowed_origins_are_normalized_and_checked() {
        let s = Cli::try_parse_from([
            "herald",
            "--allowed-origins",
            "https://Admin.Example.com/, http://localhost:3000",
        ])
        .unwrap()
        .s;
        assert_eq!(
            s.allowed_origins.0,
            ["https://admin.example.com", "http://localhost:3000"]
        );
        for bad in [
            "admin.example.com",
            "https://",
            "https://a.example/path",
            "null",
        ] {
            assert!(
                Cli::try_parse_from(["herald", "--allowed-origins", bad]).is_err(),
                "{bad}"
            );
        }
        assert_eq!(s.delivery_lease, Duration::from_secs(180));
        assert_eq!(s.worker_heartbeat, Duration::from_secs(5));
        assert_eq!(s.worker_stale_after, Duration::from_secs(15));
        assert_eq!(s.max_inflight_bytes, 64 << 20);
        assert_eq!(s.disable_after, Duration::from_secs(5 * 24 * 3600));
        assert_eq!(s.secret_overlap, Duration::from_secs(24 * 3600));
        assert!(Cli::try_parse_from(["herald", "--secret-overlap", "8d"]).is_err());
    }

    #[test]
    fn flags_parse_and_bad_values_are_refused() {
        let s = Cli::try_parse_from([
            "herald",
            "--retry-schedule",
            "100ms,200ms",
            "--allow-targets",
            "127.0.0.0/8,::1/128",
            "--redis-addr",
            "redis:6379",
            "--redis-password",
            "pw",
        ])
        .unwrap()
        .s;
        assert_eq!(s.retry_policy().max_attempts, 3);
        assert_eq!(s.allow_targets.0.len(), 2);
        assert_eq!(s.redis().as_deref(), Some("redis://:pw@redis:6379/"));
        assert!(!s.standalone());
        assert!(Cli::try_parse_from(["herald", "--retry-schedule", "1x"]).is_err());
        assert!(Cli::try_parse_from(["herald", "--retry-schedule", "300000y"]).is_err());
        assert!(Cli::try_parse_from(["herald", "--allow-targets", "nope"]).is_err());
    }

    #[test]
    fn a_redis_password_with_url_metacharacters_stays_the_password() {
        let password = "p/a#s?s%w@rd:x y";
        let s = Cli::try_parse_from([
            "herald",
            "--redis-addr",
            "redis.internal:6380",
            "--redis-password",
            password,
        ])
        .unwrap()
        .s;
        let url = url::Url::parse(&s.redis().unwrap()).unwrap();
        assert_eq!(url.host_str(), Some("redis.internal"));
        assert_eq!(url.port(), Some(6380));
        assert_eq!(url.path(), "/");
        assert_eq!(url.fragment(), None);
        assert_eq!(url.query(), None);
        let decoded = percent_encoding::percent_decode_str(url.password().unwrap())
            .decode_utf8()
            .unwrap();
        assert_eq!(decoded, password);
    }

    #[test]
    fn the_payload_limit_is_bounded_below_the_document_limit() {
        let ok = Cli::try_parse_from(["herald", "--max-payload", "15728640"]).unwrap();
        assert_eq!(ok.s.max_payload, MAX_PAYLOAD_LIMIT);
        assert!(ok.s.check_max_payload().is_ok());
        let big = Cli::try_parse_from(["herald", "--max-payload", "17000000"]).unwrap();
        let err = big.s.check_max_payload().expect_err("17 MB refused");
        assert!(err.contains("at most 15728640 bytes"), "{err}");
    }
}

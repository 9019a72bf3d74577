//! Configuration: flags with environment fallbacks, the same names in every binary (`HERALD_*`,
//! plus the original `MONGO_URI`, `REDIS_ADDR`, `REDIS_PASSWORD`). The flags come in groups, one
//! per concern; each binary flattens the groups it reads, so its `--help` lists only those.
//!
//! | group               | `herald` | `herald-delivery` | `herald-operator` |
//! |---------------------|----------|-------------------|-------------------|
//! | [`StoreArgs`]        | yes      | yes               | yes               |
//! | [`TargetArgs`]       | yes      | yes               | yes               |
//! | [`SubscriptionArgs`] | yes      |                   | yes               |
//! | [`HttpArgs`]         | yes      |                   |                   |
//! | [`DeliveryArgs`]     | yes      | yes               |                   |
//! | [`RetentionArgs`]    | yes      | yes               |                   |
//! | [`ShutdownArgs`]     | yes      | yes               | yes               |
//! | [`LogArgs`]          | yes      | yes               | yes               |

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use herald_core::retry::{parse_duration, parse_schedule, RetryPolicy, DEFAULT_SCHEDULE};
use herald_core::ssrf::TargetGuard;

/// A configuration a process refuses to start with; its message is the process's one error
/// line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{set} is set but {missing} is not: production mode needs both MongoDB (MONGO_URI) and \
         Redis (REDIS_URL, or REDIS_ADDR with REDIS_PASSWORD); standalone mode needs neither"
    )]
    Incomplete {
        set: &'static str,
        missing: &'static str,
    },
    #[error(
        "neither MONGO_URI nor REDIS_URL is set, and this binary is built without standalone \
         mode (SQLite): set both"
    )]
    NoStandalone,
    #[error(
        "HERALD_MAX_PAYLOAD ({0}) must be at most {MAX_PAYLOAD_LIMIT} bytes (15 MiB): an event \
         must fit in one MongoDB document (16 MiB with its other fields)"
    )]
    PayloadTooLarge(usize),
}

/// Where the data lives: which backends the process opens, and with what.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Store")]
pub struct StoreArgs {
    /// SQLite file of standalone mode.
    #[arg(long, env = "HERALD_SQLITE_PATH", default_value = "herald.db")]
    pub sqlite_path: PathBuf,

    /// `full` makes every acknowledged event survive a power loss; `normal` only a crash.
    #[arg(long, env = "HERALD_SQLITE_SYNC", default_value = "full", value_enum)]
    pub sqlite_sync: Durability,

    /// Largest size the SQLite file may grow to, in bytes (0: no limit but the disk's). When it
    /// is reached, writes fail as on a full disk: ingest answers 503 and `/readyz` says why.
    #[arg(long, env = "HERALD_SQLITE_MAX_SIZE", default_value_t = 0)]
    pub sqlite_max_size: u64,

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
}

/// How much of SQLite's durability a write waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Every acknowledged write survives a power loss.
    Full,
    /// Every acknowledged write survives a crash of the process.
    Normal,
}

/// The store a process runs on, decided once from [`StoreArgs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// One SQLite file: no MongoDB or Redis configured. Only binaries built with SQLite have it.
    #[cfg(feature = "sqlite")]
    Standalone {
        path: PathBuf,
        durability: Durability,
        /// `None`: no limit but the disk's.
        max_size: Option<u64>,
    },
    /// MongoDB (the archive) and Redis (the transport), both configured.
    Production {
        mongo_uri: String,
        /// `None`: the one the connection string names, else `herald`.
        mongo_database: Option<String>,
        redis_url: String,
        redis_prefix: String,
    },
}

impl StoreArgs {
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

    /// Standalone when neither MongoDB nor Redis is configured, production when both are;
    /// one of the two alone is refused, and so is standalone in a binary built without SQLite.
    pub fn mode(&self) -> Result<Mode, ConfigError> {
        match (&self.mongo_uri, self.redis()) {
            #[cfg(feature = "sqlite")]
            (None, None) => Ok(Mode::Standalone {
                path: self.sqlite_path.clone(),
                durability: self.sqlite_sync,
                max_size: (self.sqlite_max_size > 0).then_some(self.sqlite_max_size),
            }),
            #[cfg(not(feature = "sqlite"))]
            (None, None) => Err(ConfigError::NoStandalone),
            (Some(_), None) => Err(ConfigError::Incomplete {
                set: "MONGO_URI",
                missing: "REDIS_URL",
            }),
            (None, Some(_)) => Err(ConfigError::Incomplete {
                set: "REDIS_URL",
                missing: "MONGO_URI",
            }),
            (Some(mongo_uri), Some(redis_url)) => Ok(Mode::Production {
                mongo_uri: mongo_uri.clone(),
                mongo_database: self.mongo_database.clone(),
                redis_url,
                redis_prefix: self.redis_prefix.clone(),
            }),
        }
    }
}

impl std::fmt::Display for Mode {
    /// What the start-up log names as the store: the SQLite file, or MongoDB and Redis with
    /// their credentials left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            #[cfg(feature = "sqlite")]
            Mode::Standalone { path, .. } => write!(f, "sqlite {}", path.display()),
            Mode::Production {
                mongo_uri,
                redis_url,
                ..
            } => write!(
                f,
                "mongodb {} + redis {}",
                without_credentials(mongo_uri),
                without_credentials(redis_url)
            ),
        }
    }
}

/// A connection string without its user information (`user:password@`) and query (which may
/// hold passwords too): `mongodb://u:p@h1,h2/db?tls=true` gives `mongodb://h1,h2/db`.
fn without_credentials(uri: &str) -> String {
    let uri = uri.split('?').next().unwrap_or_default();
    let Some((scheme, rest)) = uri.split_once("://") else {
        return "(unparsed address)".into();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{hosts}{path}")
}

/// Which webhook targets the SSRF guard lets through, at creation and at every attempt.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Targets")]
pub struct TargetArgs {
    /// Comma-separated CIDRs exempt from the SSRF guard, e.g. `127.0.0.0/8,::1/128`.
    #[arg(long, env = "HERALD_ALLOW_TARGETS", default_value = "", value_parser = parse_allow)]
    pub allow_targets: AllowList,
}

impl TargetArgs {
    pub fn target_guard(&self) -> TargetGuard {
        TargetGuard::new(self.allow_targets.0.clone())
    }
}

/// Rules of the subscription service, which the api and the operator both write through.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Subscriptions")]
pub struct SubscriptionArgs {
    /// How long the previous secret stays valid after a rotation, unless the rotation says.
    #[arg(long, env = "HERALD_SECRET_OVERLAP", default_value = "24h", value_parser = parse_overlap)]
    pub secret_overlap: Duration,
}

/// The api's listener, its keys and its limits.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "HTTP")]
pub struct HttpArgs {
    /// Listen address of the api.
    #[arg(long, env = "HERALD_ADDR", default_value = "0.0.0.0:8000")]
    pub addr: SocketAddr,

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
}

/// The largest `HERALD_MAX_PAYLOAD` Herald accepts: 15 MiB. MongoDB refuses documents over
/// 16 MiB, and an event's document holds its payload plus its type, times and the ids of the
/// subscriptions it fans out to; the MiB left covers some 20,000 subscription ids. A larger
/// payload could be acknowledged and then never be stored.
pub const MAX_PAYLOAD_LIMIT: usize = 15 * 1024 * 1024;

impl HttpArgs {
    /// Refuses a `HERALD_MAX_PAYLOAD` above [`MAX_PAYLOAD_LIMIT`]; checked when the api starts,
    /// so the refusal is the process's one error line.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.max_payload > MAX_PAYLOAD_LIMIT {
            return Err(ConfigError::PayloadTooLarge(self.max_payload));
        }
        Ok(())
    }

    /// The management key; an empty value counts as unset.
    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref().filter(|k| !k.is_empty())
    }

    /// The ingest key; an empty value counts as unset.
    pub fn ingest_key(&self) -> Option<&str> {
        self.ingest_key.as_deref().filter(|k| !k.is_empty())
    }
}

/// The delivery engine: retries, timeouts, leases, concurrency.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Delivery")]
pub struct DeliveryArgs {
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

    /// A subscription whose every attempt failed for this long is disabled (`0`: never; a
    /// `410 Gone` answer disables at once regardless).
    #[arg(long, env = "HERALD_DISABLE_AFTER", default_value = "5d", value_parser = parse_duration)]
    pub disable_after: Duration,
}

impl DeliveryArgs {
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::from_schedule(self.retry_schedule.0.clone())
            .with_overrides(None, self.max_attempts)
    }
}

/// How long attempt records and settled deliveries are kept.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Retention")]
pub struct RetentionArgs {
    /// Attempt-log retention.
    #[arg(long, env = "HERALD_RETENTION", default_value = "72h", value_parser = parse_duration)]
    pub retention: Duration,

    /// How often the retention task runs.
    #[arg(long, env = "HERALD_RETENTION_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub retention_interval: Duration,
}

/// How a process stops.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Shutdown")]
pub struct ShutdownArgs {
    /// After SIGTERM, how long requests and deliveries in flight may take before the process
    /// exits regardless.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

/// Past the grace, how long the last writes of stopping tasks may take before exit.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(1);

impl ShutdownArgs {
    /// How long a process's tasks may take after the stop request before they are abandoned:
    /// the grace, plus a moment for the last writes.
    pub fn drain(&self) -> Duration {
        self.shutdown_grace + SHUTDOWN_MARGIN
    }
}

/// How a process logs.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log line format (`RUST_LOG` sets the filter).
    #[arg(long, env = "HERALD_LOG_FORMAT", default_value = "text", value_enum)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Every group, as the `herald` binary flattens them.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        targets: TargetArgs,
        #[command(flatten)]
        subscriptions: SubscriptionArgs,
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        delivery: DeliveryArgs,
        #[command(flatten)]
        retention: RetentionArgs,
        #[command(flatten)]
        shutdown: ShutdownArgs,
        #[command(flatten)]
        log: LogArgs,
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("herald").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_follow_the_spec() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.http.addr.to_string(), "0.0.0.0:8000");
        assert_eq!(s.delivery.retry_policy(), RetryPolicy::default());
        assert_eq!(s.retention.retention, Duration::from_secs(72 * 3600));
        assert_eq!(s.retention.retention_interval, Duration::from_secs(600));
        assert_eq!(s.delivery.delivery_timeout, Duration::from_secs(10));
        assert_eq!(s.http.max_payload, 1 << 20);
        assert!(s.targets.allow_targets.0.is_empty());
        assert!(s.http.allowed_origins.0.is_empty());
        assert_eq!(s.http.header_timeout, Duration::from_secs(10));
        assert_eq!(s.http.body_timeout, Duration::from_secs(30));
        assert_eq!(s.http.idle_timeout, Duration::from_secs(60));
        assert_eq!(s.http.max_connections, 10_000);
        assert_eq!(s.shutdown.shutdown_grace, Duration::from_secs(20));
        assert_eq!(s.delivery.delivery_lease, Duration::from_secs(180));
        assert_eq!(s.delivery.worker_heartbeat, Duration::from_secs(5));
        assert_eq!(s.delivery.worker_stale_after, Duration::from_secs(15));
        assert_eq!(s.delivery.max_inflight_bytes, 64 << 20);
        assert_eq!(s.delivery.disable_after, Duration::from_secs(5 * 24 * 3600));
        assert_eq!(
            s.subscriptions.secret_overlap,
            Duration::from_secs(24 * 3600)
        );
        assert_eq!(s.store.sqlite_sync, Durability::Full);
        assert_eq!(s.store.redis_prefix, "herald");
        assert_eq!(s.log.log_format, LogFormat::Text);
    }

    #[test]
    fn allowed_origins_are_normalized_and_checked() {
        let s = parse(&[
            "--allowed-origins",
            "https://Admin.Example.com/, http://localhost:3000",
        ])
        .unwrap();
        assert_eq!(
            s.http.allowed_origins.0,
            ["https://admin.example.com", "http://localhost:3000"]
        );
        for bad in [
            "admin.example.com",
            "https://",
            "https://a.example/path",
            "null",
        ] {
            assert!(parse(&["--allowed-origins", bad]).is_err(), "{bad}");
        }
        assert!(parse(&["--secret-overlap", "8d"]).is_err());
    }

    #[test]
    fn flags_parse_and_bad_values_are_refused() {
        let s = parse(&[
            "--retry-schedule",
            "100ms,200ms",
            "--allow-targets",
            "127.0.0.0/8,::1/128",
            "--redis-addr",
            "redis:6379",
            "--redis-password",
            "pw",
        ])
        .unwrap();
        assert_eq!(s.delivery.retry_policy().max_attempts, 3);
        assert_eq!(s.targets.allow_targets.0.len(), 2);
        assert_eq!(s.store.redis().as_deref(), Some("redis://:pw@redis:6379/"));
        assert!(parse(&["--retry-schedule", "1x"]).is_err());
        assert!(parse(&["--retry-schedule", "300000y"]).is_err());
        assert!(parse(&["--allow-targets", "nope"]).is_err());
    }

    #[test]
    fn durability_and_log_format_take_their_named_values_only() {
        let s = parse(&["--sqlite-sync", "normal", "--log-format", "json"]).unwrap();
        assert_eq!(s.store.sqlite_sync, Durability::Normal);
        assert_eq!(s.log.log_format, LogFormat::Json);
        assert!(parse(&["--sqlite-sync", "off"]).is_err());
        assert!(parse(&["--log-format", "yaml"]).is_err());
    }

    #[test]
    fn a_redis_password_with_url_metacharacters_stays_the_password() {
        for password in ["p/a#s?s%w@rd", "p/a#s?s%w@rd:x y"] {
            let s = parse(&[
                "--redis-addr",
                "redis.internal:6380",
                "--redis-password",
                password,
            ])
            .unwrap();
            let url = url::Url::parse(&s.store.redis().unwrap()).unwrap();
            assert_eq!(url.host_str(), Some("redis.internal"), "{password}");
            assert_eq!(url.port(), Some(6380), "{password}");
            assert_eq!(url.path(), "/");
            assert_eq!(url.fragment(), None);
            assert_eq!(url.query(), None);
            let decoded = percent_encoding::percent_decode_str(url.password().unwrap())
                .decode_utf8()
                .unwrap();
            assert_eq!(decoded, password);
        }
    }

    #[test]
    fn the_mode_is_standalone_with_neither_server_and_production_with_both() {
        let standalone = parse(&["--sqlite-path", "/data/h.db", "--sqlite-max-size", "4096"])
            .unwrap()
            .store
            .mode();
        #[cfg(feature = "sqlite")]
        assert_eq!(
            standalone.unwrap(),
            Mode::Standalone {
                path: "/data/h.db".into(),
                durability: Durability::Full,
                max_size: Some(4096),
            }
        );
        #[cfg(not(feature = "sqlite"))]
        assert!(matches!(standalone, Err(ConfigError::NoStandalone)));
        let production = parse(&[
            "--mongo-uri",
            "mongodb://m/",
            "--redis-addr",
            "r:6379",
            "--redis-prefix",
            "p",
        ])
        .unwrap()
        .store
        .mode()
        .unwrap();
        assert_eq!(
            production,
            Mode::Production {
                mongo_uri: "mongodb://m/".into(),
                mongo_database: None,
                redis_url: "redis://r:6379/".into(),
                redis_prefix: "p".into(),
            }
        );
    }

    #[test]
    fn one_server_alone_is_refused_naming_the_missing_one() {
        for (args, set, missing) in [
            (
                &["--mongo-uri", "mongodb://m/"][..],
                "MONGO_URI",
                "REDIS_URL",
            ),
            (&["--redis-url", "redis://r/"][..], "REDIS_URL", "MONGO_URI"),
            (&["--redis-addr", "r:6379"][..], "REDIS_URL", "MONGO_URI"),
        ] {
            let err = parse(args).unwrap().store.mode().unwrap_err();
            let line = err.to_string();
            assert!(
                line.starts_with(&format!("{set} is set but {missing} is not")),
                "{line}"
            );
        }
    }

    #[test]
    fn the_store_summary_leaves_credentials_out() {
        let s = parse(&[
            "--mongo-uri",
            "mongodb://herald:s3cret@mongo-0:27017,mongo-1:27017/herald?authSource=admin&password=x",
            "--redis-url",
            "redis://:hunter2@redis:6379/0",
        ])
        .unwrap();
        let summary = s.store.mode().unwrap().to_string();
        assert_eq!(
            summary,
            "mongodb mongodb://mongo-0:27017,mongo-1:27017/herald + redis redis://redis:6379/0"
        );
        #[cfg(feature = "sqlite")]
        {
            let standalone = Mode::Standalone {
                path: "/data/herald.db".into(),
                durability: Durability::Full,
                max_size: None,
            };
            assert_eq!(standalone.to_string(), "sqlite /data/herald.db");
        }
    }

    #[test]
    fn the_payload_limit_is_bounded_below_the_document_limit() {
        let ok = parse(&["--max-payload", "15728640"]).unwrap();
        assert_eq!(ok.http.max_payload, MAX_PAYLOAD_LIMIT);
        assert!(ok.http.check().is_ok());
        let big = parse(&["--max-payload", "17000000"]).unwrap();
        let err = big.http.check().expect_err("17 MB refused").to_string();
        assert!(err.contains("at most 15728640 bytes"), "{err}");
    }
}

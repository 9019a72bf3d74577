//! Redis: the transport of the delivery queue (with the idempotency keys) and the change feed
//! that invalidates every process's subscription cache.
//!
//! Every change of the queue is one Lua script (`scripts/*.lua`, each prefixed with
//! `scripts/common.lua`), so each [`Transport`] method is one atomic step of Redis. The scripts
//! read the clock with `TIME`: leases, heartbeats and due times compare against the server's
//! clock, whichever host the caller runs on. Callers send durations (a lease's length, a
//! retry's or a deferral's delay) and get durations back (how long until the next due
//! time), never a time of their own clock, so a worker whose clock is off by minutes retries
//! on schedule.
//!
//! ## Keys
//! Everything lives under `{p}:` (`HERALD_REDIS_PREFIX`, one per installation):
//!
//! | key | type | holds |
//! |-----|------|-------|
//! | `{p}:intake` | list | accepted events without an idempotency key that no step has fanned out yet, oldest first: one record each (`{wid}\n{0\|1}{type}\n{at ms}\n{subs JSON}\n{payload}`, see `publisher`) |
//! | `{p}:e:{wid}` | hash | an event while any of its deliveries is open: `payload` (the exact bytes), `type` (absent for none), `at` (received, ms), `subs` (JSON array of the subscription ids), `open` (open deliveries; the hash goes with the last), `archived` (`1` once the archive holds the event) |
//! | `{p}:d:{wid}:{sid}` | hash | one open delivery: `state` (`queued` or `delivering`), `attempts` (absent until the first lease: 0), `due` (ms), `last_error`, `final_attempt` (set by a replay), `token` (of the current lease), `worker` (holder), `redelivered` (`1` after its lease ran out or its worker was reaped) |
//! | `{p}:q:{sid}` | sorted set | the queued deliveries of one subscription: webhook ids scored by due time (ms) |
//! | `{p}:due` | sorted set | subscriptions with queued deliveries, scored by the earliest due time in their queue |
//! | `{p}:leases` | sorted set | leased deliveries (`{wid}\|{sid}`) scored by the end of their lease |
//! | `{p}:w:{worker}` | set | the deliveries a worker holds (`{wid}\|{sid}`) |
//! | `{p}:workers` | sorted set | workers scored by their last heartbeat or claim |
//! | `{p}:token` | string | the lease token counter: every lease gets a fresh one, never below Redis's clock in ms × 1000, so tokens keep rising across a restart that lost the AOF's tail (see `next_token` in `common.lua`) |
//! | `{p}:cursor` | string | the subscription the last claim stopped at, so claims serve subscriptions in turn |
//! | `{p}:idem:{scope}:{key}` | string, 24 h expiry | an idempotency key: `{fingerprint hex}:{matched}:{wid}` |
//! | `{p}:queued` | string | how many deliveries are queued, in all queues (kept by the scripts, see `common.lua`) |
//! | `{p}:later` | sorted set | queued deliveries (`{wid}\|{sid}`) enqueued for a later time (retries, deferrals), by due time; their hash has `later` = 1 |
//! | `{p}:counted`, `{p}:counts-rebuilt` | strings | set by `stats` when it recounted from the queues (expires after 5 minutes), and once it built `later` |
//! | `{p}:wake` | channel | a message whenever deliveries became due now (publish, requeue, reap, a retry due now) |
//! | `{p}:subscriptions` | channel | the id of every created, updated or deleted subscription |
//!
//! A delivery is always in exactly one place: `queued` in its subscription's queue, or
//! `delivering` in `{p}:leases` and its worker's set. Per-subscription sorted sets (rather than
//! a stream with a consumer group) let a claim take each subscription's free concurrency
//! without reading past a backlog, and make a delayed retry nothing but a later score.
//!
//! ## Scripts and their invariants
//! - The intake (see `publisher`): an event without an idempotency key is appended as one
//!   record (`RPUSH`, one per batch of events) and answered; the append that found the intake
//!   empty publishes one wake-up. `fan_out` (in `common.lua`) pops up to 256 records (or about 1 MiB of them) and stores
//!   each event with one delivery per subscription, due now, inside the script that pops them:
//!   a record is never both gone and not stored. `lease`, `live` and `stats` fan out first.
//! - `publish`: for each event of a batch that carries an idempotency key, checks and records
//!   the key, stores the event and one delivery per subscription, due now; then publishes one
//!   wake-up if a subscription became due sooner. Each event in one step, nothing of it written
//!   unless its checks passed. A key seen with the same fingerprint answers `Duplicate`, with
//!   another `KeyReused`; with no subscriptions only the key is stored.
//! - `lease`: fans out one batch of the intake (and answers "due now" while records are left),
//!   returns leases that ended to their queues (due now, redelivered), then
//!   leases due deliveries as [`herald_core::backend::WorkQueue::claim`] describes, each under a
//!   fresh token, recording the worker and the lease end; every distinct payload is returned
//!   once. A queue entry whose delivery or event is missing is dropped (and logged here).
//! - `settle`: fenced by the token: a settlement applies only while the delivery is leased
//!   under it; others are counted stale and change nothing.
//! - `heartbeat` renews every lease the worker holds; `reap` returns the deliveries of workers
//!   silent past the limit to their queues and forgets those workers. Both only touch
//!   deliveries whose `worker` field names the worker.
//! - `requeue` (a replay), `expedite`, `live`, `stats`, `archived`: see each script's header.
//!
//! Scripts build their key names from the prefix, so the keys of one installation must live
//! on one Redis node (no Redis Cluster).
//!
//! ## Durability of an acknowledged publish
//! `publish` answers once Redis has applied the `RPUSH` or the script; what survives then depends on the
//! server's persistence (the test server and the compose file use AOF):
//! - `appendonly yes` + `appendfsync always`: the script's writes are fsynced before the reply,
//!   so an acknowledged event survives a crash of Redis and of the machine.
//! - `appendfsync everysec` (the usual setting): the writes reach the AOF file (the OS) before
//!   the reply and are fsynced within about a second: an acknowledged event survives a crash
//!   or kill of Redis, but a power loss or kernel crash can lose the last second or two.
//! - `appendfsync no`: like `everysec` for a Redis crash; on a machine crash the OS decides
//!   (typically up to 30 s are lost).
//! - Without AOF (RDB snapshots only): everything since the last snapshot can be lost.
//!
//! Replication is asynchronous: a failover to a replica can lose acknowledged writes whatever
//! the fsync policy.
//!
//! Redis must not evict: `maxmemory-policy noeviction` is required, checked at start, on every
//! reconnect and every few seconds; any other policy stops the process from starting, and a
//! running one refuses to publish (503) and reports not ready until it is fixed (`eviction`).
//!
//! ## Failures
//! Every call is bounded: connecting takes at most [`CONNECT_TIMEOUT`], an answer at most
//! [`RESPONSE_TIMEOUT`], a whole call at most [`CALL_TIMEOUT`]; a dead Redis makes calls fail
//! with `StoreError::Unavailable` carrying the driver's error, and the connection manager
//! reconnects on the next call. A wrong password fails [`open`]. A call that timed out may
//! still take effect if Redis had received it (a server that stalled and resumed): a publish
//! answered `Unavailable` is not known to be lost, and a client's retry with its idempotency
//! key answers `Duplicate` if it was stored.
//!
//! ## Change feed
//! One pub/sub connection per process (see `changes`) carries both channels. An announcement
//! reaches every follower within about a second while Redis is up (in practice a few
//! milliseconds); after a lost connection the follower resubscribes (backing off up to
//! 2 s, `changes::MAX_BACKOFF`) and is told to forget its cache, since it may have missed some.

mod changes;
mod eviction;
mod keys;
mod locks;
mod publisher;
mod scripts;
mod transport;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use herald_core::backend::{ChangeFeed, Result, Transport};
use herald_core::StoreError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, ServerErrorKind};
use tokio::sync::{broadcast, watch, Notify};

pub use changes::RedisChanges;
pub use transport::RedisTransport;

use eviction::EvictionGuard;
use keys::Keys;

/// How long connecting to Redis may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long Redis may take to answer one command or script.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1500);
/// The bound on a whole call, reconnection included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The Redis parts of a production backend.
pub struct RedisParts {
    pub transport: Arc<dyn Transport>,
    pub changes: Arc<dyn ChangeFeed>,
    shared: Arc<Shared>,
}

impl RedisParts {
    /// `store` with its replaces and health writes serialized per subscription by a Redis
    /// lock (see `locks`: FerretDB does not apply a filtered update atomically).
    pub fn serialized(
        &self,
        store: Arc<dyn herald_core::backend::SubscriptionStore>,
    ) -> Arc<dyn herald_core::backend::SubscriptionStore> {
        Arc::new(locks::Serialized::new(store, self.shared.clone()))
    }
}

/// Connects and checks the server answers (and accepts the password).
pub async fn open(url: &str, prefix: &str) -> Result<RedisParts> {
    let shared = Shared::connect(url, prefix).await?;
    Ok(RedisParts {
        transport: Arc::new(RedisTransport::new(shared.clone())),
        changes: Arc::new(RedisChanges::new(shared.clone())),
        shared,
    })
}

/// What the transport and the change feed of one `open` share.
pub(crate) struct Shared {
    conn: ConnectionManager,
    keys: Keys,
    /// Woken by the pub/sub listener on every message of `{p}:wake`.
    wake: Arc<Notify>,
    changes: broadcast::Sender<changes::Change>,
    /// Whether Redis may evict keys (see `eviction`): publishing is refused while it may.
    eviction: EvictionGuard,
    /// Dropped with the last user: ends the pub/sub listener and the eviction watcher.
    _stop: watch::Sender<()>,
}

impl Shared {
    async fn connect(url: &str, prefix: &str) -> Result<Arc<Self>> {
        // The URL may hold the password: never part of a message.
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::unavailable_by("the Redis URL is not valid", e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            // One retry, briefly: callers retry on their own, and a call must fail in time.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(200));
        let conn = call(
            "connecting to Redis",
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await?;
        let mut check = conn.clone();
        call(
            "checking the Redis connection (PING)",
            redis::cmd("PING").query_async::<String>(&mut check),
        )
        .await?;
        let eviction = EvictionGuard::new();
        eviction.check(&mut check).await?;
        let keys = Keys::new(prefix);
        let wake = Arc::new(Notify::new());
        let (changes, _) = broadcast::channel(1024);
        let (stop, stopped) = watch::channel(());
        tokio::spawn(eviction.clone().watch(conn.clone(), stopped.clone()));
        tokio::spawn(changes::listen(
            client,
            keys.clone(),
            wake.clone(),
            changes.clone(),
            eviction.clone(),
            stopped,
        ));
        Ok(Arc::new(Self {
            conn,
            keys,
            wake,
            changes,
            eviction,
            _stop: stop,
        }))
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

/// Runs one Redis call within [`CALL_TIMEOUT`], converting its error.
pub(crate) async fn call<T>(
    what: &str,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(store_error(what, e)),
        Err(elapsed) => Err(StoreError::unavailable_by(
            format!("{what}: Redis did not answer within {CALL_TIMEOUT:?}"),
            elapsed,
        )),
    }
}

/// Maps a driver error to the store's kinds, keeping it as the source: unreachable or
/// refusing for now → `Unavailable`; out of memory or unable to persist → `Full`; anything
/// else (a script error, an unexpected answer) → `Backend`.
pub(crate) fn store_error(what: &str, e: RedisError) -> StoreError {
    let code = e.code().unwrap_or_default().to_string();
    if e.kind() == ErrorKind::AuthenticationFailed
        || matches!(code.as_str(), "WRONGPASS" | "NOAUTH" | "NOPERM")
    {
        return StoreError::Unavailable(
            format!(
                "{what}: Redis refused the credentials (check the user and password in \
                 REDIS_URL, or REDIS_PASSWORD)"
            ),
            Some(Box::new(e)),
        );
    }
    if code == "OOM" {
        return StoreError::Full(
            format!("{what}: Redis is out of memory (maxmemory)"),
            Some(Box::new(e)),
        );
    }
    if matches!(code.as_str(), "MOVED" | "ASK" | "CROSSSLOT") {
        // A cluster's answer (refused at start and while running, see `eviction`): the key is
        // on another node, or a script's keys span nodes. Nothing was written by this call.
        return StoreError::Unavailable(
            format!("{what}: Redis answered as a cluster node ({code})"),
            Some(Box::new(e)),
        );
    }
    if code == "MISCONF" {
        return StoreError::Full(
            format!("{what}: Redis cannot persist its data"),
            Some(Box::new(e)),
        );
    }
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::ClusterDown
            )
        );
    if transient {
        StoreError::Unavailable(format!("{what}: Redis is unreachable"), Some(Box::new(e)))
    } else {
        StoreError::Backend(format!("{what}: Redis failed"), Some(Box::new(e)))
    }
}

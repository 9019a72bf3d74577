//! Refusing a Redis that evicts keys, or a Redis Cluster node.
//!
//! Herald keeps its queue in Redis: an evicted key is an acknowledged event that is never
//! delivered, or a queue entry that silently goes missing, and with a `volatile-*` policy the
//! idempotency keys (the only keys with an expiry) go first and deduplication stops. None of
//! that leaves a trace. So Herald works only on a Redis whose `maxmemory-policy` is
//! `noeviction`, where a full Redis refuses writes (`OOM`, a 503 with Retry-After) and drains
//! again once deliveries free memory.
//!
//! When the policy is read: at `open` (a wrong one is one error line and no start), whenever the
//! pub/sub listener (re)connects (Redis restarted, perhaps with another configuration), every
//! [`CHECK_EVERY`] (a `CONFIG SET` needs no restart), and on every `ping` (readiness). It is read
//! from `INFO memory`, which managed services answer where they refuse `CONFIG GET`. While the
//! policy is wrong, publishing is refused (`Unavailable`, so nothing is acknowledged that Redis
//! may drop) and `ping` fails (readiness false); deliveries already queued go on being
//! delivered.
//!
//! A node of a Redis Cluster (`cluster_enabled:1` in `INFO cluster`) is refused the same way:
//! Herald's client speaks to one Redis, and its scripts touch keys that a cluster spreads over
//! several nodes, so a script would stop at the first key another node owns, with its earlier
//! writes kept: acknowledged events lost. Read at the same moments as the policy (a restart may
//! turn a node into a cluster node).

use std::sync::Arc;
use std::time::Duration;

use herald_core::backend::Result;
use herald_core::StoreError;
use redis::aio::ConnectionManager;
use tokio::sync::{watch, Notify};

use super::call;

/// How often a running process reads the policy again.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The one policy under which Redis never drops a key.
const REQUIRED: &str = "noeviction";

/// What Herald last learned of the server's eviction policy: `None` while it is acceptable,
/// otherwise the refusal to answer with.
#[derive(Clone)]
pub(crate) struct EvictionGuard {
    refusal: watch::Sender<Option<String>>,
    /// Notified to read the policy now (the pub/sub listener reconnected).
    recheck: Arc<Notify>,
}

impl EvictionGuard {
    pub fn new() -> Self {
        Self {
            refusal: watch::Sender::new(None),
            recheck: Arc::new(Notify::new()),
        }
    }

    /// Fails while the last reading found a policy that evicts.
    pub fn ensure_safe(&self) -> Result<()> {
        match &*self.refusal.borrow() {
            None => Ok(()),
            Some(refusal) => Err(StoreError::unavailable(refusal.clone())),
        }
    }

    /// Asks the watcher to read the policy at once.
    pub fn recheck_soon(&self) {
        self.recheck.notify_one();
    }

    /// Reads the policy and records the verdict; fails when it evicts (or cannot be read).
    pub async fn check(&self, conn: &mut ConnectionManager) -> Result<()> {
        let info: String = call(
            "reading Redis's eviction policy (INFO memory)",
            redis::cmd("INFO").arg("memory").query_async(conn),
        )
        .await?;
        let cluster: String = call(
            "reading Redis's cluster mode (INFO cluster)",
            redis::cmd("INFO").arg("cluster").query_async(conn),
        )
        .await?;
        let verdict = cluster_verdict(&cluster).or_else(|| verdict(policy_of(&info)));
        self.refusal.send_if_modified(|old| {
            if *old == verdict {
                return false;
            }
            match &verdict {
                Some(refusal) => tracing::error!("{refusal}"),
                None => tracing::info!(
                    "Redis's maxmemory-policy is noeviction again; publishing resumes"
                ),
            }
            *old = verdict.clone();
            true
        });
        self.ensure_safe()
    }

    /// Reads the policy every [`CHECK_EVERY`] and when asked to, until `stop` is dropped.
    pub async fn watch(self, mut conn: ConnectionManager, mut stop: watch::Receiver<()>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {},
                _ = self.recheck.notified() => {},
                _ = stop.changed() => return,
            }
            // An unreachable Redis is reported by the calls themselves.
            let _ = self.check(&mut conn).await;
        }
    }
}

/// The `maxmemory_policy` line of `INFO memory`, if there is one.
fn policy_of(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("maxmemory_policy:"))
        .map(str::trim)
}

/// The refusal for a cluster node (`cluster_enabled:1`), `None` for a single Redis.
fn cluster_verdict(info: &str) -> Option<String> {
    let enabled = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("cluster_enabled:"))
        .map(str::trim);
    (enabled == Some("1")).then(|| {
        "Redis is a node of a Redis Cluster (cluster_enabled:1), and Herald's Redis client \
         speaks to a single Redis: its scripts would stop at keys other nodes own, losing \
         accepted events. Point REDIS_URL at a Redis without cluster mode (a primary, with \
         replicas if you like); until then Herald refuses to accept events"
            .to_string()
    })
}

/// The refusal for a policy, `None` for `noeviction`.
fn verdict(policy: Option<&str>) -> Option<String> {
    match policy {
        Some(REQUIRED) => None,
        Some(other) => Some(format!(
            "Redis may evict Herald's keys (maxmemory-policy is {other}): an evicted key is a \
             lost event. Set maxmemory-policy to noeviction (redis.conf, CONFIG SET, or the \
             managed service's parameter group); until then Herald refuses to accept events"
        )),
        None => Some(
            "Redis does not report its maxmemory-policy (INFO memory): Herald needs \
             noeviction to keep every accepted event and refuses to accept events until it \
             can see it"
                .to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_noeviction_is_accepted() {
        let info = |p: &str| format!("# Memory\r\nused_memory:1\r\nmaxmemory_policy:{p}\r\n");
        assert_eq!(verdict(policy_of(&info("noeviction"))), None);
        for evicting in [
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ] {
            let refusal = verdict(policy_of(&info(evicting))).expect(evicting);
            assert!(refusal.contains(evicting), "{refusal}");
            assert!(refusal.contains("noeviction"), "{refusal}");
        }
        assert!(verdict(policy_of("# Memory\r\nused_memory:1\r\n")).is_some());
    }

    #[test]
    fn only_a_redis_without_cluster_mode_is_accepted() {
        let info = |v: &str| format!("# Cluster\r\ncluster_enabled:{v}\r\n");
        let refusal = cluster_verdict(&info("1")).expect("a cluster node is refused");
        assert!(refusal.contains("cluster_enabled:1"), "{refusal}");
        assert!(refusal.contains("REDIS_URL"), "{refusal}");
        assert_eq!(cluster_verdict(&info("0")), None);
        // Servers that report no cluster section are not clusters.
        assert_eq!(cluster_verdict("# Cluster\r\n"), None);
    }
}

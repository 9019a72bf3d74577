//! Subscription writes serialized per subscription by a short Redis lock.
//!
//! Why: the MongoDB store makes each subscription write one filtered update (the version check
//! of a replace, the `$set` of a health write), which MongoDB applies atomically. FerretDB 1.24,
//! the test environment's MongoDB, does not: it applies an update as a read and a write without
//! isolation (measured: two tasks making 200 `$inc` each left 234, and compare-and-set updates
//! on one version succeeded twice). Taking `{p}:lock:sub:{id}` around every replace and health
//! write makes them one at a time per subscription on either server, for two Redis round trips
//! per write (subscription writes are rare: client changes and health transitions).
//!
//! Protocol: `SET key token NX PX` ([`LOCK_TTL`]), retried every few milliseconds for up to
//! [`LOCK_WAIT`] (then `Unavailable`); the write; a script deletes the key only if it still
//! holds this token. Failure points: a writer that dies holding the lock holds up the others
//! for at most [`LOCK_TTL`]; a write slower than [`LOCK_TTL`] may overlap the next one, and then
//! only the store's own atomicity (MongoDB's) keeps the version check.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::backend::{HealthChange, ReplaceHealth, Result, SubscriptionStore};
use herald_core::ids::SubscriptionId;
use herald_core::model::{Owner, Subscription};
use herald_core::StoreError;

use super::{call, Shared};

/// How long a lock holds if its holder never releases it.
pub const LOCK_TTL: Duration = Duration::from_secs(5);
/// How long a writer waits for the lock before it fails as `Unavailable`.
pub const LOCK_WAIT: Duration = Duration::from_secs(3);

const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// A [`SubscriptionStore`] whose replaces and health writes take the subscription's lock.
pub struct Serialized {
    inner: Arc<dyn SubscriptionStore>,
    shared: Arc<Shared>,
}

impl Serialized {
    pub(crate) fn new(inner: Arc<dyn SubscriptionStore>, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    async fn locked<T>(
        &self,
        id: &str,
        write: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let key = format!("{}:lock:sub:{id}", self.shared.keys.prefix());
        let token = ulid::Ulid::new().to_string();
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            let mut conn = self.shared.conn();
            let got: Option<String> = call(
                "locking a subscription for a write",
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(LOCK_TTL.as_millis() as u64)
                    .query_async(&mut conn),
            )
            .await?;
            if got.is_some() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::unavailable(format!(
                    "subscription {id} stayed locked by another writer for {LOCK_WAIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let out = write.await;
        let mut conn = self.shared.conn();
        let released: Result<i64> = call(
            "unlocking a subscription",
            redis::Script::new(RELEASE)
                .key(&key)
                .arg(&token)
                .invoke_async(&mut conn),
        )
        .await;
        if let Err(e) = released {
            tracing::warn!(subscription = id, error = %e.chain(), "unlocking a subscription failed; the lock ends by itself");
        }
        out
    }
}

#[async_trait]
impl SubscriptionStore for Serialized {
    async fn insert(&self, sub: &Subscription) -> Result<()> {
        self.inner.insert(sub).await
    }
    async fn get(&self, id: &SubscriptionId) -> Result<Option<Subscription>> {
        self.inner.get(id).await
    }
    async fn find_by_owner(&self, owner: &Owner) -> Result<Option<Subscription>> {
        self.inner.find_by_owner(owner).await
    }
    async fn list(&self, limit: usize, after: Option<&str>) -> Result<Vec<Subscription>> {
        self.inner.list(limit, after).await
    }
    async fn list_all(&self) -> Result<Vec<Subscription>> {
        self.inner.list_all().await
    }
    async fn replace(&self, sub: &Subscription, health: ReplaceHealth) -> Result<()> {
        self.locked(&sub.id, self.inner.replace(sub, health)).await
    }
    async fn record_health(&self, id: &SubscriptionId, change: &HealthChange) -> Result<bool> {
        self.locked(id, self.inner.record_health(id, change)).await
    }
    async fn remove(&self, id: &SubscriptionId) -> Result<bool> {
        self.locked(id, self.inner.remove(id)).await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}

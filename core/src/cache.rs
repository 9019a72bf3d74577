//! The in-process subscription cache that ingest and delivery read through, so the hot paths
//! make no per-event database lookups. Writes made through [`crate::subscriptions`] invalidate it
//! at once. Other processes (api replicas, delivery workers, the operator) learn of a change
//! through the backend's [`ChangeFeed`] when it has one (Redis pub/sub: within about a second);
//! the short TTL bounds staleness when announcements are lost or the backend has no feed.
//!
//! Protocol: a writer stores the change, drops its own entry, then announces the id. A
//! follower drops the entry on the announcement, and everything when it may have missed some
//! (start, reconnect). A load that started before an invalidation is not cached (generation
//! counter), so a follower never keeps a value older than the last announcement it saw.
//!
//! Stale if unavailable: an entry whose TTL ran out is served on for [`STALE_RETRY`] at a time
//! while the store does not answer (`StoreError::Unavailable`), so that ingest keeps accepting
//! events for known subscriptions through a MongoDB outage. Only expiry is forgiven this way:
//! an entry dropped by an announcement or a local write is gone, and its next read needs the
//! store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::backend::{ChangeFeed, Result, SubscriptionStore};
use crate::ids::SubscriptionId;
use crate::model::Subscription;
use crate::StoreError;

/// Unknown ids are cached too (so a flood of bad ids cannot reach the store); past this many
/// entries the map starts over.
const MAX_ENTRIES: usize = 100_000;

/// Entry lifetime without a change feed: how soon other processes' writes show up.
pub const UNFOLLOWED_TTL: Duration = Duration::from_secs(2);
/// Entry lifetime with a change feed, which drops changed entries at once and everything after
/// a reconnect: the TTL is only the backstop for an announcement lost while the feed seemed up.
pub const FOLLOWED_TTL: Duration = Duration::from_secs(30);

/// While the store does not answer, how long an expired entry is served before the next try:
/// one slow failing lookup per entry and interval, not one per request.
pub const STALE_RETRY: Duration = Duration::from_secs(1);

type Entry = (Instant, Option<Arc<Subscription>>);
type Snapshot = (Instant, Arc<Vec<Arc<Subscription>>>);

pub struct SubscriptionCache {
    store: Arc<dyn SubscriptionStore>,
    ttl: Duration,
    /// Bumped by every invalidation; a load started before a bump must not be cached.
    generation: AtomicU64,
    /// The same for the fan-out snapshot, which health-only invalidations leave alone.
    snapshot_generation: AtomicU64,
    by_id: RwLock<HashMap<String, Entry>>,
    all: RwLock<Option<Snapshot>>,
    /// Held while the snapshot loads: concurrent fan-outs after a change wait for one load
    /// and share it (single flight) instead of each reading the whole collection.
    loading: tokio::sync::Mutex<()>,
    snapshot_loads: AtomicU64,
    changes: Option<Arc<dyn ChangeFeed>>,
}

impl SubscriptionCache {
    pub fn new(store: Arc<dyn SubscriptionStore>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            generation: AtomicU64::new(0),
            snapshot_generation: AtomicU64::new(0),
            by_id: RwLock::new(HashMap::new()),
            all: RwLock::new(None),
            loading: tokio::sync::Mutex::new(()),
            snapshot_loads: AtomicU64::new(0),
            changes: None,
        }
    }

    /// The cache of one process of `backend`: announced through its change feed when it has
    /// one, with a TTL that only covers lost announcements; else with a short TTL, which is
    /// then the bound for changes made by other processes.
    pub fn for_backend(backend: &crate::backend::Backend) -> Self {
        let ttl = if backend.changes.is_some() {
            FOLLOWED_TTL
        } else {
            UNFOLLOWED_TTL
        };
        Self::new(backend.subscriptions.clone(), ttl).with_changes(backend.changes.clone())
    }

    /// Announces this process's writes on `feed` (see [`Self::follow`] for the other side).
    pub fn with_changes(mut self, feed: Option<Arc<dyn ChangeFeed>>) -> Self {
        self.changes = feed;
        self
    }

    /// Follows the change feed until the process ends, dropping what other processes changed.
    /// Without a feed there is nothing to follow and `None` comes back.
    pub fn follow(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let feed = self.changes.clone()?;
        let cache = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            feed.follow(Box::new(move |changed| {
                if let Some(cache) = cache.upgrade() {
                    match changed {
                        Some(message) => cache.announced(message),
                        None => cache.invalidate_all(),
                    }
                }
            }))
            .await
        }))
    }

    /// What a follower does with one announcement: a health-only one drops that entry alone
    /// (the fan-out snapshot does not depend on it), any other the entry and the snapshot.
    pub fn announced(&self, message: &str) {
        match message.strip_prefix(crate::backend::HEALTH_ONLY) {
            Some(id) => self.invalidate_entry(id),
            None => self.invalidate(message),
        }
    }

    /// Only the health fields of a subscription (`failing_since`) were written by this
    /// process: drop its entry here and tell the others, keeping every fan-out snapshot.
    pub async fn changed_health(&self, id: &str) {
        self.invalidate_entry(id);
        if let Some(feed) = &self.changes {
            if let Err(e) = feed.announce_health(id).await {
                tracing::warn!(subscription = id, error = %e.chain(), "announcing a subscription change failed; other processes see it after the cache TTL");
            }
        }
    }

    /// How many times the fan-out snapshot was loaded from the store.
    pub fn snapshot_loads(&self) -> u64 {
        self.snapshot_loads.load(Ordering::Relaxed)
    }

    /// A subscription was written by this process: drop it here and tell the others. A failed
    /// announcement is logged; the others then see the change after their TTL.
    pub async fn changed(&self, id: &str) {
        self.invalidate(id);
        if let Some(feed) = &self.changes {
            if let Err(e) = feed.announce(id).await {
                tracing::warn!(subscription = id, error = %e.chain(), "announcing a subscription change failed; other processes see it after the cache TTL");
            }
        }
    }

    pub fn store(&self) -> &Arc<dyn SubscriptionStore> {
        &self.store
    }

    /// When an expired entry, if it was stored at `at`, counts as fresh again for
    /// [`STALE_RETRY`].
    fn retried_at(&self) -> Instant {
        let now = Instant::now();
        now.checked_sub(self.ttl.saturating_sub(STALE_RETRY))
            .unwrap_or(now)
    }

    pub async fn get(&self, id: &SubscriptionId) -> Result<Option<Arc<Subscription>>> {
        let stale = match self.by_id.read().get(id.as_str()) {
            Some((at, sub)) if at.elapsed() < self.ttl => return Ok(sub.clone()),
            Some((_, sub)) => Some(sub.clone()),
            None => None,
        };
        let generation = self.generation.load(Ordering::Acquire);
        let loaded = match self.store.get(id).await {
            Ok(loaded) => loaded.map(Arc::new),
            Err(e @ StoreError::Unavailable(..)) => {
                let Some(sub) = stale else { return Err(e) };
                let mut map = self.by_id.write();
                if self.generation.load(Ordering::Acquire) == generation {
                    map.insert(id.to_string(), (self.retried_at(), sub.clone()));
                }
                tracing::warn!(subscription = %id, error = %e.chain(), "subscription store unavailable: serving the cached subscription");
                return Ok(sub);
            }
            Err(e) => return Err(e),
        };
        let mut map = self.by_id.write();
        if self.generation.load(Ordering::Acquire) == generation {
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert(id.to_string(), (Instant::now(), loaded.clone()));
        }
        Ok(loaded)
    }

    /// Every enabled subscription that accepts `event_type`, from a snapshot refreshed after
    /// the TTL: fan-out queues nothing for a disabled endpoint.
    pub async fn matching(&self, event_type: Option<&str>) -> Result<Vec<Arc<Subscription>>> {
        let all = self.all().await?;
        Ok(all
            .iter()
            .filter(|s| !s.is_disabled() && s.accepts(event_type))
            .cloned()
            .collect())
    }

    fn fresh_snapshot(&self) -> Option<Arc<Vec<Arc<Subscription>>>> {
        match &*self.all.read() {
            Some((at, all)) if at.elapsed() < self.ttl => Some(all.clone()),
            _ => None,
        }
    }

    /// The fan-out snapshot, loaded at most once at a time: callers that find it missing
    /// while a load runs wait for that load and take its result, so a burst of fan-outs
    /// after a burst of changes costs one read of the collection (once the changes have
    /// stopped arriving: a change during the load discards it, and the next caller loads).
    async fn all(&self) -> Result<Arc<Vec<Arc<Subscription>>>> {
        if let Some(all) = self.fresh_snapshot() {
            return Ok(all);
        }
        let _loading = self.loading.lock().await;
        if let Some(all) = self.fresh_snapshot() {
            return Ok(all);
        }
        let stale = self.all.read().as_ref().map(|(_, all)| all.clone());
        let generation = self.snapshot_generation.load(Ordering::Acquire);
        self.snapshot_loads.fetch_add(1, Ordering::Relaxed);
        let loaded: Arc<Vec<_>> = match self.store.list_all().await {
            Ok(all) => Arc::new(all.into_iter().map(Arc::new).collect()),
            Err(e @ StoreError::Unavailable(..)) => {
                let Some(all) = stale else { return Err(e) };
                let mut slot = self.all.write();
                if self.snapshot_generation.load(Ordering::Acquire) == generation {
                    *slot = Some((self.retried_at(), all.clone()));
                }
                tracing::warn!(error = %e.chain(), "subscription store unavailable: fan-out uses the cached subscriptions");
                return Ok(all);
            }
            Err(e) => return Err(e),
        };
        let mut slot = self.all.write();
        if self.snapshot_generation.load(Ordering::Acquire) == generation {
            *slot = Some((Instant::now(), loaded.clone()));
        }
        Ok(loaded)
    }

    /// Forgets one subscription's entry, keeping the fan-out snapshot (a change fan-out does
    /// not see: its health).
    pub fn invalidate_entry(&self, id: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.by_id.write().remove(id);
    }

    /// Forgets one subscription (and the fan-out snapshot, which may hold it).
    pub fn invalidate(&self, id: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.snapshot_generation.fetch_add(1, Ordering::AcqRel);
        self.by_id.write().remove(id);
        *self.all.write() = None;
    }

    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.snapshot_generation.fetch_add(1, Ordering::AcqRel);
        self.by_id.write().clear();
        *self.all.write() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{HealthChange, ReplaceHealth};
    use crate::model::Owner;

    /// Subscriptions in memory: reads only, which is all the cache does.
    struct Fixed(Vec<Subscription>);

    #[async_trait::async_trait]
    impl SubscriptionStore for Fixed {
        async fn insert(&self, _: &Subscription) -> Result<()> {
            unimplemented!("the cache only reads")
        }
        async fn get(&self, id: &SubscriptionId) -> Result<Option<Subscription>> {
            Ok(self.0.iter().find(|s| &s.id == id).cloned())
        }
        async fn find_by_owner(&self, _: &Owner) -> Result<Option<Subscription>> {
            Ok(None)
        }
        async fn list(&self, _: usize, _: Option<&str>) -> Result<Vec<Subscription>> {
            Ok(self.0.clone())
        }
        async fn list_all(&self) -> Result<Vec<Subscription>> {
            Ok(self.0.clone())
        }
        async fn replace(&self, _: &Subscription, _: ReplaceHealth) -> Result<()> {
            unimplemented!("the cache only reads")
        }
        async fn record_health(&self, _: &SubscriptionId, _: &HealthChange) -> Result<bool> {
            unimplemented!("the cache only reads")
        }
        async fn remove(&self, _: &SubscriptionId) -> Result<bool> {
            unimplemented!("the cache only reads")
        }
        async fn ping(&self) -> Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_panic_while_the_cache_is_locked_leaves_it_usable() {
        let store = Arc::new(Fixed(vec![crate::testkit::subscription("sub_a")]));
        let cache = Arc::new(SubscriptionCache::new(store, Duration::from_secs(60)));
        assert!(cache.get(&"sub_a".into()).await.unwrap().is_some());
        assert_eq!(cache.matching(None).await.unwrap().len(), 1);

        let held = cache.clone();
        let panicked = std::thread::spawn(move || {
            let _by_id = held.by_id.write();
            let _all = held.all.write();
            panic!("a panic while the cache's locks are held");
        })
        .join();
        assert!(panicked.is_err());

        // Every later lookup, load and invalidation takes the same locks again.
        assert!(cache.get(&"sub_a".into()).await.unwrap().is_some());
        assert_eq!(cache.matching(None).await.unwrap().len(), 1);
        cache.invalidate("sub_a");
        assert!(cache.get(&"sub_a".into()).await.unwrap().is_some());
        assert_eq!(cache.matching(None).await.unwrap().len(), 1);
        cache.invalidate_all();
        assert!(cache.get(&"sub_b".into()).await.unwrap().is_none());
    }
}

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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::backend::{ChangeFeed, Result, SubscriptionStore};
use crate::model::Subscription;

/// Unknown ids are cached too (so a flood of bad ids cannot reach the store); past this many
/// entries the map starts over.
const MAX_ENTRIES: usize = 100_000;

/// Entry lifetime without a change feed: how soon other processes' writes show up.
pub const UNFOLLOWED_TTL: Duration = Duration::from_secs(2);
/// Entry lifetime with a change feed, which drops changed entries at once and everything after
/// a reconnect: the TTL is only the backstop for an announcement lost while the feed seemed up.
pub const FOLLOWED_TTL: Duration = Duration::from_secs(30);

type Entry = (Instant, Option<Arc<Subscription>>);
type Snapshot = (Instant, Arc<Vec<Arc<Subscription>>>);

pub struct SubscriptionCache {
    store: Arc<dyn SubscriptionStore>,
    ttl: Duration,
    /// Bumped by every invalidation; a load started before a bump must not be cached.
    generation: AtomicU64,
    by_id: RwLock<HashMap<String, Entry>>,
    all: RwLock<Option<Snapshot>>,
    changes: Option<Arc<dyn ChangeFeed>>,
}

impl SubscriptionCache {
    pub fn new(store: Arc<dyn SubscriptionStore>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            generation: AtomicU64::new(0),
            by_id: RwLock::new(HashMap::new()),
            all: RwLock::new(None),
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
                        Some(id) => cache.invalidate(id),
                        None => cache.invalidate_all(),
                    }
                }
            }))
            .await
        }))
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

    pub async fn get(&self, id: &str) -> Result<Option<Arc<Subscription>>> {
        if let Some((at, sub)) = self.by_id.read().unwrap().get(id) {
            if at.elapsed() < self.ttl {
                return Ok(sub.clone());
            }
        }
        let generation = self.generation.load(Ordering::Acquire);
        let loaded = self.store.get(id).await?.map(Arc::new);
        let mut map = self.by_id.write().unwrap();
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

    async fn all(&self) -> Result<Arc<Vec<Arc<Subscription>>>> {
        if let Some((at, all)) = &*self.all.read().unwrap() {
            if at.elapsed() < self.ttl {
                return Ok(all.clone());
            }
        }
        let generation = self.generation.load(Ordering::Acquire);
        let loaded: Arc<Vec<_>> = Arc::new(
            self.store
                .list_all()
                .await?
                .into_iter()
                .map(Arc::new)
                .collect(),
        );
        let mut slot = self.all.write().unwrap();
        if self.generation.load(Ordering::Acquire) == generation {
            *slot = Some((Instant::now(), loaded.clone()));
        }
        Ok(loaded)
    }

    /// Forgets one subscription (and the fan-out snapshot, which may hold it).
    pub fn invalidate(&self, id: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.by_id.write().unwrap().remove(id);
        *self.all.write().unwrap() = None;
    }

    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.by_id.write().unwrap().clear();
        *self.all.write().unwrap() = None;
    }
}

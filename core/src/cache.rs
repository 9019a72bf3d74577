//! The in-process subscription cache that ingest and delivery read through, so the hot paths
//! make no per-event database lookups. Writes made through [`crate::subscriptions`] invalidate it
//! at once; entries also expire after a short TTL so that changes made by other processes
//! (another api replica, the operator) show up quickly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::backend::{Result, SubscriptionStore};
use crate::model::Subscription;

/// Unknown ids are cached too (so a flood of bad ids cannot reach the store); past this many
/// entries the map starts over.
const MAX_ENTRIES: usize = 100_000;

type Entry = (Instant, Option<Arc<Subscription>>);
type Snapshot = (Instant, Arc<Vec<Arc<Subscription>>>);

pub struct SubscriptionCache {
    store: Arc<dyn SubscriptionStore>,
    ttl: Duration,
    /// Bumped by every invalidation; a load started before a bump must not be cached.
    generation: AtomicU64,
    by_id: RwLock<HashMap<String, Entry>>,
    all: RwLock<Option<Snapshot>>,
}

impl SubscriptionCache {
    pub fn new(store: Arc<dyn SubscriptionStore>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            generation: AtomicU64::new(0),
            by_id: RwLock::new(HashMap::new()),
            all: RwLock::new(None),
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

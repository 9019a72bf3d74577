//! The subscription cache (`herald_core::cache`) over the SQLite store, made to fail on demand:
//! what it serves while the store is down, and how often it reloads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_core::backend::{Result, SubscriptionStore};
use herald_core::cache::*;
use herald_core::ids::SubscriptionId;
use herald_core::model::Subscription;
use herald_core::testkit;
use herald_core::StoreError;

use super::{Sqlite, Sync};

/// The SQLite store, made to answer `Unavailable` (or another error) on demand.
struct Flaky {
    inner: Arc<dyn SubscriptionStore>,
    down: AtomicBool,
    broken: AtomicBool,
    /// Reads of the whole collection (fan-out snapshot loads).
    lists: std::sync::atomic::AtomicUsize,
}

impl Flaky {
    fn check(&self) -> Result<()> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(StoreError::backend("corrupt"));
        }
        if self.down.load(Ordering::Relaxed) {
            return Err(StoreError::unavailable("down"));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl SubscriptionStore for Flaky {
    async fn insert(&self, sub: &Subscription) -> Result<()> {
        self.inner.insert(sub).await
    }
    async fn get(&self, id: &SubscriptionId) -> Result<Option<Subscription>> {
        self.check()?;
        self.inner.get(id).await
    }
    async fn find_by_owner(
        &self,
        owner: &herald_core::model::Owner,
    ) -> Result<Option<Subscription>> {
        self.check()?;
        self.inner.find_by_owner(owner).await
    }
    async fn list(&self, limit: usize, after: Option<&str>) -> Result<Vec<Subscription>> {
        self.inner.list(limit, after).await
    }
    async fn list_all(&self) -> Result<Vec<Subscription>> {
        self.check()?;
        self.lists.fetch_add(1, Ordering::SeqCst);
        // A read of a real collection takes a moment: concurrent callers overlap it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.inner.list_all().await
    }
    async fn replace(
        &self,
        sub: &Subscription,
        health: herald_core::backend::ReplaceHealth,
    ) -> Result<()> {
        self.inner.replace(sub, health).await
    }
    async fn record_health(
        &self,
        id: &SubscriptionId,
        change: &herald_core::backend::HealthChange,
    ) -> Result<bool> {
        self.inner.record_health(id, change).await
    }
    async fn remove(&self, id: &SubscriptionId) -> Result<bool> {
        self.inner.remove(id).await
    }
    async fn ping(&self) -> Result<()> {
        self.check()
    }
}

fn flaky() -> (Arc<Flaky>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = Sqlite::open(&dir.path().join("c.db"), Sync::Normal).unwrap();
    let store = Arc::new(Flaky {
        inner: db.backend().subscriptions,
        down: AtomicBool::new(false),
        broken: AtomicBool::new(false),
        lists: Default::default(),
    });
    (store, dir)
}

#[tokio::test]
async fn expired_entries_are_served_while_the_store_is_unavailable() {
    let (store, _dir) = flaky();
    store.insert(&testkit::subscription("sub_a")).await.unwrap();
    let cache = SubscriptionCache::new(store.clone(), Duration::from_millis(50));
    assert!(cache.get(&"sub_a".into()).await.unwrap().is_some());
    assert_eq!(cache.matching(None).await.unwrap().len(), 1);
    store.down.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(
        cache.get(&"sub_a".into()).await.unwrap().unwrap().id,
        "sub_a"
    );
    assert_eq!(cache.matching(None).await.unwrap().len(), 1);
    // What was never cached, or was dropped by a change, needs the store.
    assert!(matches!(
        cache.get(&"sub_b".into()).await,
        Err(StoreError::Unavailable(..))
    ));
    cache.invalidate("sub_a");
    assert!(cache.get(&"sub_a".into()).await.is_err());
    assert!(cache.matching(None).await.is_err());
}

#[tokio::test]
async fn other_store_errors_are_not_hidden_by_stale_entries() {
    let (store, _dir) = flaky();
    store.insert(&testkit::subscription("sub_a")).await.unwrap();
    let cache = SubscriptionCache::new(store.clone(), Duration::from_millis(50));
    cache.get(&"sub_a".into()).await.unwrap();
    cache.matching(None).await.unwrap();
    store.broken.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(matches!(
        cache.get(&"sub_a".into()).await,
        Err(StoreError::Backend(..))
    ));
    assert!(cache.matching(None).await.is_err());
}

#[tokio::test]
async fn a_stale_entry_is_retried_after_the_stale_interval_and_refreshed_when_the_store_is_back() {
    let (store, _dir) = flaky();
    let mut sub = testkit::subscription("sub_a");
    store.insert(&sub).await.unwrap();
    let ttl = STALE_RETRY + Duration::from_millis(100);
    let cache = SubscriptionCache::new(store.clone(), ttl);
    cache.get(&"sub_a".into()).await.unwrap();
    store.down.store(true, Ordering::Relaxed);
    tokio::time::sleep(ttl + Duration::from_millis(20)).await;
    assert!(cache.get(&"sub_a".into()).await.unwrap().is_some());
    // The store comes back with a change this process did not hear of.
    store.down.store(false, Ordering::Relaxed);
    sub.target_url = "http://127.0.0.1:9/changed".into();
    store
        .replace(&sub, herald_core::backend::ReplaceHealth::Write)
        .await
        .unwrap();
    // Within the stale interval the old value is still served; after it, the new one.
    assert_ne!(
        cache
            .get(&"sub_a".into())
            .await
            .unwrap()
            .unwrap()
            .target_url,
        sub.target_url
    );
    tokio::time::sleep(STALE_RETRY + Duration::from_millis(50)).await;
    assert_eq!(
        cache
            .get(&"sub_a".into())
            .await
            .unwrap()
            .unwrap()
            .target_url,
        sub.target_url
    );
}

/// A burst of changes followed by a burst of fan-outs reads the collection once; health-only
/// announcements (a worker's `failing_since`) make no fan-out read it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_changes_reloads_the_snapshot_once_and_health_changes_not_at_all() {
    const CHANGES: usize = 50;
    const FAN_OUTS: usize = 20;
    let (store, _dir) = flaky();
    for i in 0..5 {
        store
            .insert(&testkit::subscription(&format!("sub_{i}")))
            .await
            .unwrap();
    }
    let cache = Arc::new(SubscriptionCache::new(
        store.clone(),
        Duration::from_secs(3600),
    ));
    assert_eq!(cache.matching(None).await.unwrap().len(), 5);
    assert_eq!(store.lists.load(Ordering::SeqCst), 1);
    let fan_outs = |n: usize| {
        let cache = cache.clone();
        async move {
            let all: Vec<_> = (0..n)
                .map(|_| {
                    let cache = cache.clone();
                    tokio::spawn(async move { cache.matching(Some("t")).await.unwrap().len() })
                })
                .collect();
            for f in all {
                assert_eq!(f.await.unwrap(), 5);
            }
        }
    };
    for i in 0..CHANGES {
        cache.announced(&format!("sub_{}", i % 5));
    }
    fan_outs(FAN_OUTS).await;
    assert_eq!(
        store.lists.load(Ordering::SeqCst),
        2,
        "one load for the burst"
    );
    assert_eq!(cache.snapshot_loads(), 2);
    for i in 0..CHANGES {
        cache.announced(&format!(
            "{}sub_{}",
            herald_core::backend::HEALTH_ONLY,
            i % 5
        ));
    }
    fan_outs(FAN_OUTS).await;
    assert_eq!(
        store.lists.load(Ordering::SeqCst),
        2,
        "health-only changes keep the snapshot"
    );
    // They do drop the entry itself.
    cache.get(&"sub_1".into()).await.unwrap();
    let mut changed = store.get(&"sub_1".into()).await.unwrap().unwrap();
    changed.failing_since = Some(chrono::Utc::now());
    store
        .replace(&changed, herald_core::backend::ReplaceHealth::Write)
        .await
        .unwrap();
    cache.announced(&format!("{}sub_1", herald_core::backend::HEALTH_ONLY));
    let got = cache.get(&"sub_1".into()).await.unwrap().unwrap();
    assert_eq!(got.failing_since, changed.failing_since);
}

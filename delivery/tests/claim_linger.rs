//! The claim linger ends early once a claim is worth making: a backend that asks for a long
//! linger (production mode asks for a few milliseconds) must not hold a busy subscription's
//! freed slots idle for the whole linger at every round.
//!
//! The engine runs on the SQLite backend with its queue wrapped to ask for a 10 s linger, and
//! delivers to a receiver on loopback. Three rounds of one subscription's concurrency take
//! about 20 s of lingering if the linger runs out each time, and milliseconds if it ends when
//! the round's jobs are done.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use clap::Parser;
use herald_core::backend::{Queue, Result};
use herald_core::cache::SubscriptionCache;
use herald_core::config::Settings;
use herald_core::model::{
    ClaimRequest, Claimed, Publish, PublishOutcome, QueueStats, Settlement, WebhookRecord,
};
use herald_core::sqlite::{Sqlite, Sync};
use herald_core::testkit;
use herald_delivery::{Engine, EngineConfig};
use tokio_util::sync::CancellationToken;

const LINGER: Duration = Duration::from_secs(10);

/// The SQLite queue, asking for a long claim linger.
struct Lingering(Arc<dyn Queue>);

#[async_trait]
impl Queue for Lingering {
    async fn publish(&self, publish: Publish) -> Result<PublishOutcome> {
        self.0.publish(publish).await
    }
    async fn claim(&self, req: &ClaimRequest) -> Result<Claimed> {
        self.0.claim(req).await
    }
    async fn settle(&self, settlements: Vec<Settlement>) -> Result<u64> {
        self.0.settle(settlements).await
    }
    async fn heartbeat(&self, worker: &str, lease: Duration) -> Result<u64> {
        self.0.heartbeat(worker, lease).await
    }
    async fn reap(&self, stale_after: Duration) -> Result<u64> {
        self.0.reap(stale_after).await
    }
    async fn wait_for_work(&self, max_wait: Duration) {
        self.0.wait_for_work(max_wait).await
    }
    fn claim_linger(&self) -> Duration {
        LINGER
    }
    async fn webhook(&self, webhook_id: &str) -> Result<Option<WebhookRecord>> {
        self.0.webhook(webhook_id).await
    }
    async fn replay(&self, webhook_id: &str) -> Result<usize> {
        self.0.replay(webhook_id).await
    }
    async fn expedite(&self, subscription_id: &str) -> Result<()> {
        self.0.expedite(subscription_id).await
    }
    async fn stats(&self) -> Result<QueueStats> {
        self.0.stats().await
    }
    async fn purge(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        self.0.purge(cutoff).await
    }
    async fn ping(&self) -> Result<()> {
        self.0.ping().await
    }
}

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    settings: Settings,
}

/// Counts the POSTs it gets and answers 200 at once.
async fn receiver() -> (String, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_subscription_claims_again_as_soon_as_its_slots_are_free() {
    const PER_SUBSCRIPTION: usize = 4;
    const EVENTS: usize = 3 * PER_SUBSCRIPTION;
    let dir = tempfile::tempdir().unwrap();
    let store = Sqlite::open(&dir.path().join("herald.db"), Sync::Normal).unwrap();
    let mut backend = store.backend();
    backend.queue = Arc::new(Lingering(backend.queue.clone()));
    let (url, received) = receiver().await;
    let mut sub = testkit::subscription("sub_linger");
    sub.target_url = url;
    backend.subscriptions.insert(&sub).await.unwrap();
    for i in 0..EVENTS {
        let publish = testkit::publish(&format!("msg_linger{i}"), &["sub_linger"], b"{}");
        assert_eq!(
            backend.queue.publish(publish).await.unwrap(),
            PublishOutcome::Accepted
        );
    }
    let settings = Args::try_parse_from([
        "herald-delivery",
        "--allow-targets=127.0.0.0/8",
        &format!("--subscription-concurrency={PER_SUBSCRIPTION}"),
    ])
    .unwrap()
    .settings;
    let config = EngineConfig::from_settings(&settings).unwrap();
    let cache = Arc::new(SubscriptionCache::for_backend(&backend));
    let stop = CancellationToken::new();
    let started = Instant::now();
    let engine = tokio::spawn(Engine::run(backend, cache, config, stop.clone()));
    let deadline = started + Duration::from_secs(60);
    while received.load(Ordering::SeqCst) < EVENTS {
        assert!(Instant::now() < deadline, "not all delivered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    stop.cancel();
    engine.await.unwrap();
    // Lingering out each of the two later rounds would take 2 × 10 s.
    assert!(
        took < LINGER,
        "{EVENTS} deliveries at {PER_SUBSCRIPTION} at a time took {took:?}: the freed slots waited for the linger"
    );
}

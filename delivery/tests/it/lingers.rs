//! The engine's lingers, on the SQLite backend with its tuning set to ask for them
//! (production mode asks for a few milliseconds of each), delivering to receivers on loopback.
//!
//! - The claim linger ends early once a claim is worth making: a backend that asks for a long
//!   linger must not hold a busy subscription's freed slots idle for the whole linger at every
//!   round. Three rounds of one subscription's concurrency take about 20 s of lingering if the
//!   linger runs out each time, and milliseconds if it ends when the round's jobs are done.
//! - The settle linger gathers jobs that finish apart into one settle, and holds no slot: the
//!   next jobs are claimed and sent while the finished ones wait to be settled.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use clap::Parser;
use herald_backends::sqlite::{Sqlite, Sync};
use herald_core::backend::{Result, WorkQueue};
use herald_core::cache::SubscriptionCache;
use herald_core::model::{ClaimRequest, Claimed, DeliveryState, PublishOutcome, Settlement};
use herald_core::testkit;
use herald_delivery::{Engine, EngineConfig};
use herald_runtime::config::{DeliveryArgs, ShutdownArgs, TargetArgs};
use herald_testenv::wait_for;
use tokio_util::sync::CancellationToken;

const LINGER: Duration = Duration::from_secs(10);

/// The SQLite work queue, noting the size of every settle.
struct Counting {
    queue: Arc<dyn WorkQueue>,
    settles: Mutex<Vec<usize>>,
}

#[async_trait]
impl WorkQueue for Counting {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claimed> {
        self.queue.claim(req).await
    }
    async fn settle(&self, settlements: Vec<Settlement>) -> Result<u64> {
        self.settles.lock().unwrap().push(settlements.len());
        self.queue.settle(settlements).await
    }
    async fn heartbeat(&self, worker: &str, lease: Duration) -> Result<u64> {
        self.queue.heartbeat(worker, lease).await
    }
    async fn reap(&self, stale_after: Duration) -> Result<u64> {
        self.queue.reap(stale_after).await
    }
    async fn wait_for_work(&self, max_wait: Duration) {
        self.queue.wait_for_work(max_wait).await
    }
    async fn purge(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        self.queue.purge(cutoff).await
    }
}

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    delivery: DeliveryArgs,
    #[command(flatten)]
    targets: TargetArgs,
    #[command(flatten)]
    shutdown: ShutdownArgs,
}

/// The engine's configuration for these flags, loopback targets allowed.
fn engine_config(flags: &[&str]) -> EngineConfig {
    let args = ["herald-delivery", "--allow-targets=127.0.0.0/8"]
        .into_iter()
        .chain(flags.iter().copied());
    let a = Args::try_parse_from(args).unwrap();
    EngineConfig::from_args(&a.delivery, &a.targets, &a.shutdown).unwrap()
}

/// Serves `app` on a free loopback port; returns the URL of its `/hook`.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
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
    (serve(app).await, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_subscription_claims_again_as_soon_as_its_slots_are_free() {
    const PER_SUBSCRIPTION: usize = 4;
    const EVENTS: usize = 3 * PER_SUBSCRIPTION;
    let dir = tempfile::tempdir().unwrap();
    let store = Sqlite::open(&dir.path().join("herald.db"), Sync::Normal).unwrap();
    let mut backend = store.backend();
    backend.tuning.claim_linger = LINGER;
    let (url, received) = receiver().await;
    let mut sub = testkit::subscription("sub_linger");
    sub.target_url = url;
    backend.subscriptions.insert(&sub).await.unwrap();
    for i in 0..EVENTS {
        let publish = testkit::publish(&format!("msg_linger{i}"), &["sub_linger"], b"{}");
        assert_eq!(
            backend.intake.publish(publish).await.unwrap(),
            PublishOutcome::Accepted
        );
    }
    let config = engine_config(&[&format!("--subscription-concurrency={PER_SUBSCRIPTION}")]);
    let metrics = config.metrics.clone();
    let cache = Arc::new(SubscriptionCache::for_backend(&backend));
    let stop = CancellationToken::new();
    let started = Instant::now();
    let engine = tokio::spawn(Engine::run(backend, cache, config, stop.clone()));
    wait_for("every event delivered", Duration::from_secs(60), || async {
        received.load(Ordering::SeqCst) >= EVENTS
    })
    .await;
    let took = started.elapsed();
    stop.cancel();
    engine.await.unwrap();
    // The engine settled every delivery before it returned, and counted each once.
    let counts = metrics.counts();
    assert_eq!((counts.delivered, counts.failed), (EVENTS as u64, 0));
    // Lingering out each of the two later rounds would take 2 × 10 s.
    assert!(
        took < LINGER,
        "{EVENTS} deliveries at {PER_SUBSCRIPTION} at a time took {took:?}: the freed slots waited for the linger"
    );
}

/// Answers the POST whose JSON body is `{"i": n}` after `n` × `step`, and notes when each
/// request arrived.
async fn staggered_receiver(step: Duration) -> (String, Arc<Mutex<Vec<Instant>>>) {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let noted = arrivals.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::Json<serde_json::Value>| {
            let noted = noted.clone();
            async move {
                noted.lock().unwrap().push(Instant::now());
                let n = body["i"].as_u64().unwrap_or(0);
                tokio::time::sleep(step * u32::try_from(n).unwrap()).await;
                "ok"
            }
        }),
    );
    (serve(app).await, arrivals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settle_linger_gathers_jobs_that_finish_apart_and_holds_no_slot() {
    const SETTLE_LINGER: Duration = Duration::from_secs(3);
    const STEP: Duration = Duration::from_millis(40);
    const FIRST: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let store = Sqlite::open(&dir.path().join("herald.db"), Sync::Normal).unwrap();
    let mut backend = store.backend();
    let counting = Arc::new(Counting {
        queue: backend.queue.clone(),
        settles: Mutex::default(),
    });
    backend.queue = counting.clone();
    backend.tuning.settle_linger = SETTLE_LINGER;
    let (url, arrivals) = staggered_receiver(STEP).await;
    let mut sub = testkit::subscription("sub_settle");
    sub.target_url = url;
    backend.subscriptions.insert(&sub).await.unwrap();
    // The first round finishes over FIRST × STEP (~300 ms), well inside the linger.
    for i in 0..FIRST {
        let publish = testkit::publish(
            &format!("msg_settle{i}"),
            &["sub_settle"],
            format!(r#"{{"i":{i}}}"#).as_bytes(),
        );
        backend.intake.publish(publish).await.unwrap();
    }
    let config = engine_config(&[
        &format!("--subscription-concurrency={FIRST}"),
        &format!("--delivery-concurrency={FIRST}"),
    ]);
    let cache = Arc::new(SubscriptionCache::for_backend(&backend));
    let stop = CancellationToken::new();
    let started = Instant::now();
    let engine = tokio::spawn(Engine::run(backend.clone(), cache, config, stop.clone()));
    wait_for("the first round sent", Duration::from_secs(30), || async {
        arrivals.lock().unwrap().len() >= FIRST
    })
    .await;
    // Wait until the whole first round has been answered, then publish one more event: with
    // every slot taken by the first round, it can only be sent once a slot is free again.
    tokio::time::sleep(STEP * u32::try_from(FIRST).unwrap() + Duration::from_millis(100)).await;
    let publish = testkit::publish("msg_settle_next", &["sub_settle"], br#"{"i":0}"#);
    backend.intake.publish(publish).await.unwrap();
    wait_for("the next event sent", Duration::from_secs(30), || async {
        arrivals.lock().unwrap().len() > FIRST
    })
    .await;
    let next_sent = started.elapsed();
    let first_settles: Vec<usize> = counting.settles.lock().unwrap().clone();
    // The first round's jobs finished but are still lingering, unsettled: their slots were
    // free all the same.
    assert!(
        first_settles.is_empty(),
        "settled before the linger ran out: {first_settles:?} (next event sent after {next_sent:?})"
    );
    // Every delivery ends, the first round in one settle.
    for i in 0..FIRST {
        let id = format!("msg_settle{i}");
        wait_for(&format!("{id} to end"), Duration::from_secs(30), || async {
            let record = backend.intake.webhook(&id).await.unwrap().unwrap();
            record.status() == DeliveryState::Succeeded
        })
        .await;
    }
    stop.cancel();
    engine.await.unwrap();
    let settles = counting.settles.lock().unwrap().clone();
    assert_eq!(settles.iter().sum::<usize>(), FIRST + 1, "{settles:?}");
    // The next event's job finished inside the same linger, so it may have joined them.
    assert!(
        settles.first().is_some_and(|&n| n >= FIRST),
        "the first round, finishing {STEP:?} apart, was not settled at once: {settles:?}"
    );
}

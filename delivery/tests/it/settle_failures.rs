//! The recorder when settles fail, on the production backend (FerretDB + Redis from
//! `scripts/testenv.sh`) with its queue wrapped to refuse chosen settles, delivering to a
//! receiver on loopback.
//!
//! - A settlement the store refuses for good no longer holds up the batch it is in: the others
//!   settle, and the refused one ends as `Failure` with the refusal as its error.
//! - A recorder that cannot write what it holds (the store keeps failing) makes the delivery
//!   process's `/healthz` answer 503 after the stall bound, and 200 again once it writes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use clap::Parser;
use herald_core::backend::{Backend, Result, WorkQueue};
use herald_core::cache::SubscriptionCache;
use herald_core::model::{ClaimRequest, Claimed, DeliveryState, QueueStats, Settlement};
use herald_core::{testkit, StoreError};
use herald_delivery::{Engine, EngineConfig, RecorderWatch};
use herald_runtime::config::{DeliveryArgs, ShutdownArgs, TargetArgs};
use herald_testenv::{wait_for, wait_until, Scratch};
use tokio_util::sync::CancellationToken;

/// The production queue, refusing for good any settle that logs an attempt of `poison`, and
/// failing every settle (as an unreachable store does) while `down` is set.
struct Refusing {
    queue: Arc<dyn WorkQueue>,
    poison: String,
    down: AtomicBool,
}

#[async_trait]
impl WorkQueue for Refusing {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claimed> {
        self.queue.claim(req).await
    }
    async fn settle(&self, settlements: Vec<Settlement>) -> Result<u64> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("test hook: the store is down"));
        }
        if settlements
            .iter()
            .any(|s| s.webhook_id == self.poison && s.attempt.is_some())
        {
            return Err(StoreError::Rejected(
                "test hook: this attempt record can never be stored".into(),
                None,
            ));
        }
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

fn engine_config() -> EngineConfig {
    let args = ["herald-delivery", "--allow-targets=127.0.0.0/8"];
    let a = Args::try_parse_from(args).unwrap();
    EngineConfig::from_args(&a.delivery, &a.targets, &a.shutdown).unwrap()
}

/// Serves `app` on a free loopback port; returns its address.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The production backend with its queue wrapped, a subscription `sub_rec` delivering to a
/// receiver that answers 200, and `events` events published to it (`msg_0` first).
async fn rig(events: usize) -> Option<(Backend, Arc<Refusing>, Scratch)> {
    let scratch = Scratch::new(
        herald_testenv::mongo_uri()?,
        herald_testenv::redis_url()?,
        "recorder",
    );
    let mut backend = herald_backends::open_production(
        &scratch.mongo_uri,
        Some(&scratch.database),
        &scratch.redis_url,
        &scratch.prefix,
    )
    .await
    .expect("open the production backend");
    let refusing = Arc::new(Refusing {
        queue: backend.queue.clone(),
        poison: "msg_0".into(),
        down: AtomicBool::new(false),
    });
    backend.queue = refusing.clone();
    let receiver =
        serve(axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }))).await;
    let mut sub = testkit::subscription("sub_rec");
    sub.target_url = format!("{receiver}/hook");
    backend.subscriptions.insert(&sub).await.unwrap();
    for i in 0..events {
        let p = testkit::publish(&format!("msg_{i}"), &["sub_rec"], b"{}");
        backend.intake.publish(p).await.unwrap();
    }
    Some((backend, refusing, scratch))
}

async fn status(backend: &Backend, id: &str) -> Option<(DeliveryState, Option<String>)> {
    let rec = backend.intake.webhook(id).await.unwrap()?;
    let d = rec.deliveries.first()?;
    Some((d.status, d.last_error.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_refused_for_good_ends_alone_and_the_rest_of_its_batch_settles() {
    let Some((backend, _refusing, _scratch)) = rig(21).await else {
        return;
    };
    let cache = Arc::new(SubscriptionCache::for_backend(&backend));
    let stop = CancellationToken::new();
    let engine = tokio::spawn(Engine::run(
        backend.clone(),
        cache,
        engine_config(),
        stop.clone(),
    ));
    for i in 1..21 {
        let id = format!("msg_{i}");
        wait_for(
            &format!("{id} to settle"),
            Duration::from_secs(30),
            || async { status(&backend, &id).await.map(|s| s.0) == Some(DeliveryState::Succeeded) },
        )
        .await;
    }
    let (state, error) = wait_until("msg_0 to end", Duration::from_secs(30), || async {
        match status(&backend, "msg_0").await {
            Some((DeliveryState::Failed, e)) => Some((DeliveryState::Failed, e)),
            _ => None,
        }
    })
    .await;
    assert_eq!(state, DeliveryState::Failed);
    let error = error.unwrap_or_default();
    assert!(
        error.contains("refused by the store") && error.contains("can never be stored"),
        "{error}"
    );
    assert_eq!(backend.intake.stats().await.unwrap(), QueueStats::default());
    stop.cancel();
    engine.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorder_that_cannot_write_flips_healthz_until_it_writes_again() {
    let Some((backend, refusing, _scratch)) = rig(0).await else {
        return;
    };
    refusing.down.store(true, Ordering::SeqCst);
    let mut config = engine_config();
    config.recorder = RecorderWatch::new(Duration::from_secs(1));
    let health = serve(herald_delivery::health_routes(config.recorder.clone())).await;
    let healthz = || async {
        let r = reqwest::get(format!("{health}/healthz")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let cache = Arc::new(SubscriptionCache::for_backend(&backend));
    let stop = CancellationToken::new();
    let engine = tokio::spawn(Engine::run(backend.clone(), cache, config, stop.clone()));
    assert_eq!(healthz().await.0, 200, "idle is healthy");
    let p = testkit::publish("msg_stuck", &["sub_rec"], b"{}");
    backend.intake.publish(p).await.unwrap();
    let body = wait_until("/healthz to flip", Duration::from_secs(20), || async {
        let (code, body) = healthz().await;
        (code == 503).then_some(body)
    })
    .await;
    assert!(
        body.contains("stuck") && body.contains("recorder"),
        "{body}"
    );
    // The store is back: the recorder writes, and the process is healthy again.
    refusing.down.store(false, Ordering::SeqCst);
    wait_for("/healthz to recover", Duration::from_secs(20), || async {
        healthz().await.0 == 200
    })
    .await;
    wait_for("msg_stuck to settle", Duration::from_secs(20), || async {
        status(&backend, "msg_stuck").await.map(|s| s.0) == Some(DeliveryState::Succeeded)
    })
    .await;
    stop.cancel();
    engine.await.unwrap();
}

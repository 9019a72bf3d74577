//! The `herald` process's composition root: its settings, and [`App::build`], which opens the
//! store the settings name, binds the api and starts every task under one
//! [`Supervisor`]. With `HERALD_WORKERS` (the default, standalone mode) the same process runs
//! the delivery engine and the retention sweep; production deployments set it to `false` and
//! run `herald-delivery` processes instead.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use herald_core::cache::SubscriptionCache;
use herald_core::subscriptions::Subscriptions;
use herald_delivery::{retention, Engine, EngineConfig};
use herald_runtime::config::{
    DeliveryArgs, HttpArgs, LogArgs, RetentionArgs, ShutdownArgs, StoreArgs, SubscriptionArgs,
    TargetArgs,
};
use herald_runtime::shutdown::Supervisor;
use tokio_util::sync::CancellationToken;

use crate::{Limits, Services};

/// Everything the `herald` binary reads.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub targets: TargetArgs,
    #[command(flatten)]
    pub subscriptions: SubscriptionArgs,
    /// Run delivery workers and the retention sweep in the api process (standalone). Set to
    /// `false` when separate `herald-delivery` processes deliver.
    #[arg(long, env = "HERALD_WORKERS", default_value_t = true, action = clap::ArgAction::Set, help_heading = "Delivery")]
    pub workers: bool,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// A running Herald: the api, and with workers the delivery engine and retention sweep.
pub struct App {
    /// Where the api listens (the port the system chose, for `:0`).
    pub addr: SocketAddr,
    supervisor: Supervisor,
}

impl App {
    /// Checks the settings, opens the store, binds the listener and starts every task.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        settings.http.check()?;
        let mode = settings.store.mode()?;
        let engine = settings
            .workers
            .then(|| {
                EngineConfig::from_args(&settings.delivery, &settings.targets, &settings.shutdown)
            })
            .transpose()?;
        // One set of counts for the process: the api's `/stats` shows what its engine delivered.
        let telemetry = herald_core::telemetry::Metrics::new();
        let engine = engine.map(|config| EngineConfig {
            metrics: telemetry.clone(),
            ..config
        });
        let backend = herald_runtime::store::open(&mode).await?;
        let listener = tokio::net::TcpListener::bind(settings.http.addr)
            .await
            .with_context(|| format!("binding {}", settings.http.addr))?;
        let addr = listener.local_addr()?;

        // The grace is one deadline for the whole process, counted from the stop request: the
        // HTTP drain and the workers run at once.
        let mut supervisor = Supervisor::new(settings.shutdown.drain());
        let stop = supervisor.token();
        let cache = Arc::new(SubscriptionCache::for_backend(&backend));
        if let Some(follower) = cache.follow() {
            let stop = stop.clone();
            supervisor.spawn("change feed", async move {
                stop.cancelled().await;
                follower.abort();
                Ok(())
            });
        }
        let subscriptions = Subscriptions::new(
            cache.clone(),
            backend.intake.clone(),
            settings.targets.target_guard(),
        )
        .with_secret_overlap(settings.subscriptions.secret_overlap);
        let services = Services {
            telemetry,
            backend: backend.clone(),
            cache: cache.clone(),
            subscriptions: Arc::new(subscriptions),
        };
        let router = crate::router(&settings.http, services, stop.clone());
        let limits = Limits::new(&settings.http, settings.shutdown.shutdown_grace);
        let serving = crate::serve(listener, router, limits, stop.clone());
        supervisor.spawn("HTTP server", async move { Ok(serving.await?) });
        if let Some(config) = engine {
            let engine = Engine::run(backend.clone(), cache, config, stop.clone());
            supervisor.spawn("delivery engine", async move {
                engine.await;
                Ok(())
            });
            let kept = settings.retention;
            let sweep =
                retention::run_periodic(backend, kept.retention, kept.retention_interval, stop);
            supervisor.spawn("retention sweep", async move {
                sweep.await;
                Ok(())
            });
        }
        tracing::info!(%addr, store = %mode, workers = settings.workers, "Herald is listening");
        Ok(App { addr, supervisor })
    }

    /// Cancelling it stops the process, as SIGTERM does.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.supervisor.token()
    }

    /// Runs until SIGTERM or Ctrl-C, then drains: what the binary does.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.supervisor
            .stop_on_signal("finishing deliveries in flight");
        self.wait().await
    }

    /// Stops taking new work, finishes what is in flight, and waits for every task.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.supervisor.stop().await
    }

    /// Waits until the process is stopped and its tasks have drained (or the deadline passed).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.supervisor.wait().await
    }
}

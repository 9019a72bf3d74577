//! `herald-delivery`: delivery workers and the retention sweep without the api, for deployments
//! that scale delivery apart from ingest; `cleanup` runs one retention sweep (the CronJob).

// The ingest and delivery paths allocate per request: under herald-bench's ingest, the api's
// time in the allocator fell from ~20 % of its CPU with glibc malloc to ~9 % with mimalloc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;

use clap::{Parser, Subcommand};
use herald_core::cache::SubscriptionCache;
use herald_delivery::{retention, Engine, EngineConfig, HealthArgs, RecorderWatch};
use herald_runtime::config::{
    DeliveryArgs, LogArgs, RetentionArgs, ShutdownArgs, StoreArgs, TargetArgs,
};
use herald_runtime::shutdown::Supervisor;

#[derive(Parser)]
#[command(name = "herald-delivery", version, about = "Herald delivery workers")]
struct Cli {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    targets: TargetArgs,
    #[command(flatten)]
    delivery: DeliveryArgs,
    #[command(flatten)]
    retention: RetentionArgs,
    #[command(flatten)]
    health: HealthArgs,
    #[command(flatten)]
    shutdown: ShutdownArgs,
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Deliver queued webhooks and run the periodic retention sweep (the default).
    Run {
        /// Leave retention to a separate job (the chart's CronJob).
        #[arg(long)]
        no_retention: bool,
    },
    /// Run the retention sweep once and exit.
    Cleanup,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    herald_runtime::telemetry::init_tracing(cli.log.log_format);
    let result = match cli.command {
        Some(Command::Cleanup) => retention::cleanup(&cli.store, &cli.retention).await,
        Some(Command::Run { no_retention }) => run(cli, !no_retention).await,
        None => run(cli, true).await,
    };
    herald_runtime::exit("herald-delivery", result)
}

/// The process: the engine, the periodic retention sweep unless the CronJob runs it, and the
/// health listener when it has an address.
async fn run(cli: Cli, with_retention: bool) -> anyhow::Result<()> {
    let backend = herald_runtime::store::open(&cli.store.mode()?).await?;
    // Installed before the first attempt, so that /metrics counts from the start.
    herald_runtime::telemetry::prometheus();
    let mut config = EngineConfig::from_args(&cli.delivery, &cli.targets, &cli.shutdown)?;
    config.recorder = RecorderWatch::new(cli.health.recorder_stall);
    let mut supervisor = Supervisor::new(config.stop_bound().max(cli.shutdown.drain()));
    let stop = supervisor.token();
    if let Some(addr) = cli.health.health_addr {
        let probes = herald_delivery::health_routes(config.recorder.clone());
        let listener = herald_runtime::health::bind(addr, "HERALD_HEALTH_ADDR", probes).await?;
        supervisor.spawn("health listener", listener.serve(stop.clone()));
    }
    let cache = Arc::new(SubscriptionCache::for_backend(&backend));
    let _follower = cache.follow();
    if with_retention {
        let (backend, kept, stop) = (backend.clone(), cli.retention, stop.clone());
        supervisor.spawn("retention sweep", async move {
            retention::run_periodic(backend, kept.retention, kept.retention_interval, stop).await;
            Ok(())
        });
    }
    supervisor.spawn("delivery engine", async move {
        Engine::run(backend, cache, config, stop).await;
        Ok(())
    });
    supervisor.stop_on_signal("finishing deliveries in flight");
    tracing::info!("delivery workers running");
    supervisor.wait().await
}

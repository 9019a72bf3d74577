//! `herald-delivery`: delivery workers and the retention sweep without the api, for deployments
//! that scale delivery apart from ingest; `cleanup` runs one retention sweep (the CronJob).

// The ingest and delivery paths allocate per request: under herald-bench's ingest, the api's
// time in the allocator fell from ~20 % of its CPU with glibc malloc to ~9 % with mimalloc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;

use clap::{Parser, Subcommand};
use herald_core::cache::SubscriptionCache;
use herald_delivery::{retention, Engine, EngineConfig};
use herald_runtime::config::Settings;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "herald-delivery", version, about = "Herald delivery workers")]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    /// Serve `GET /healthz` (container and Kubernetes liveness checks) and `GET /metrics`
    /// (Prometheus) on this address while the workers run; this process has no other HTTP
    /// listener. Unset: no listener.
    #[arg(long, env = "HERALD_HEALTH_ADDR")]
    health_addr: Option<std::net::SocketAddr>,
    /// `/healthz` answers 503 once the delivery recorder has held settlements it could not
    /// write for this long (the store keeps failing), so that the process is restarted and its
    /// deliveries handed to other workers.
    #[arg(long, env = "HERALD_RECORDER_STALL", default_value = "2m", value_parser = herald_core::retry::parse_duration)]
    recorder_stall: std::time::Duration,
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

/// A failure is one line on stderr (the whole cause chain, `a: b: c`) and exit status 1, so
/// that a bad `MONGO_URI` reads the same in a terminal, `docker logs` and `kubectl logs`.
#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    herald_runtime::telemetry::init_tracing(&cli.settings.log_format);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-delivery: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = cli.settings;
    let backend = herald_runtime::store::open(&settings).await?;
    match cli.command.unwrap_or(Command::Run {
        no_retention: false,
    }) {
        Command::Cleanup => {
            let swept = retention::run_once(&backend, settings.retention).await?;
            tracing::info!(
                attempts = swept.attempts,
                queue_rows = swept.queue_rows,
                "retention sweep done"
            );
            Ok(())
        }
        Command::Run { no_retention } => {
            // Installed before the first attempt, so that /metrics counts from the start.
            herald_runtime::telemetry::prometheus();
            let shutdown = CancellationToken::new();
            let cache = Arc::new(SubscriptionCache::for_backend(&backend));
            let _follower = cache.follow();
            let sweeper = (!no_retention).then(|| {
                tokio::spawn(retention::run_periodic(
                    backend.clone(),
                    settings.retention,
                    settings.retention_interval,
                    shutdown.clone(),
                ))
            });
            let mut config = EngineConfig::from_settings(&settings)?;
            config.recorder = herald_delivery::RecorderWatch::new(cli.recorder_stall);
            if let Some(addr) = cli.health_addr {
                serve_health(addr, shutdown.clone(), config.recorder.clone()).await?;
            }
            let stop = shutdown.clone();
            tokio::spawn(async move {
                herald_runtime::shutdown::signal().await;
                tracing::info!("shutting down: finishing deliveries in flight");
                stop.cancel();
            });
            tracing::info!("delivery workers running");
            Engine::run(backend, cache, config, shutdown).await;
            if let Some(s) = sweeper {
                s.await?;
            }
            Ok(())
        }
    }
}

/// Binds before the workers start, so a port already taken fails start-up instead of leaving a
/// worker that every liveness check reports dead.
async fn serve_health(
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    recorder: Arc<herald_delivery::RecorderWatch>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on HERALD_HEALTH_ADDR {addr}"))?;
    let metrics = herald_runtime::telemetry::prometheus();
    let app = herald_delivery::health_routes(recorder)
        // This process's own counters (attempts, deliveries, latency): Prometheus scrapes every
        // delivery pod, the api's /metrics holds only the api's.
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        metrics.render(),
                    )
                }
            }),
        );
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "health listener stopped");
        }
    });
    Ok(())
}

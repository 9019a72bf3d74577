//! Retention: deletes attempt records, settled deliveries and their events older than the
//! retention period (72 h by default), and expired idempotency keys. Runs as a background task
//! in standalone and compose modes, and once per run as the chart's CronJob ([`cleanup`]).

use std::time::Duration;

use chrono::Utc;
use herald_core::backend::Backend;
use herald_core::error::chain;
use herald_core::telemetry;
use herald_core::StoreError;
use herald_runtime::config::{RetentionArgs, StoreArgs};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub attempts: u64,
    pub queue_rows: u64,
}

pub async fn run_once(backend: &Backend, retention: Duration) -> Result<Swept, StoreError> {
    let cutoff =
        Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::hours(72));
    let attempts = backend.attempts.delete_older_than(cutoff).await?;
    let queue_rows = backend.queue.purge(cutoff).await?;
    metrics::counter!(telemetry::RETENTION_DELETED).increment(attempts + queue_rows);
    Ok(Swept {
        attempts,
        queue_rows,
    })
}

pub async fn run_periodic(
    backend: Backend,
    retention: Duration,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match run_once(&backend, retention).await {
            Ok(s) if s.attempts + s.queue_rows > 0 => {
                tracing::info!(
                    attempts = s.attempts,
                    queue_rows = s.queue_rows,
                    "retention sweep"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %chain(&e), "retention sweep failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {},
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The `cleanup` subcommand of `herald` and `herald-delivery` (what the chart's CronJob runs):
/// opens the store, sweeps once, and logs what went.
pub async fn cleanup(store: &StoreArgs, retention: &RetentionArgs) -> anyhow::Result<()> {
    let backend = herald_runtime::store::open(&store.mode()?).await?;
    let swept = run_once(&backend, retention.retention).await?;
    tracing::info!(
        attempts = swept.attempts,
        queue_rows = swept.queue_rows,
        "retention sweep done"
    );
    Ok(())
}

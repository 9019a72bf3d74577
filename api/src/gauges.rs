//! Queue gauges for `/metrics`, recounted by a background task.
//!
//! Counting the queue is a scan of the store; doing it on every scrape lets a scraper (or many
//! Prometheus replicas) load the store, and makes `/metrics` hang when the store is slow. The
//! task recounts every `HERALD_METRICS_INTERVAL`; a scrape only copies the last counts, with
//! their age, so it never waits for the store. A failed or slow count keeps the last values
//! and the age shows how old they are.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::backend::Intake;
use herald_core::error::chain;
use herald_core::model::QueueStats;
use herald_core::telemetry;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// Seconds since the queue gauges were last counted.
pub const QUEUE_GAUGES_AGE: &str = "herald_queue_gauges_age_seconds";

#[derive(Default)]
pub struct QueueGauges {
    last: Mutex<Option<(QueueStats, Instant)>>,
}

impl QueueGauges {
    /// Starts the recount task; it ends with `shutdown`.
    pub fn spawn(
        queue: Arc<dyn Intake>,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let gauges = Arc::new(Self::default());
        let this = gauges.clone();
        let interval = interval.max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                // Bounded by the interval, so a hung store cannot pile up counts.
                match tokio::time::timeout(interval, queue.stats()).await {
                    Ok(Ok(q)) => this.record(q),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %chain(&e), "counting the queue for metrics failed")
                    }
                    Err(_) => tracing::warn!("counting the queue for metrics timed out"),
                }
            }
        });
        gauges
    }

    fn record(&self, q: QueueStats) {
        *self.last.lock() = Some((q, Instant::now()));
    }

    /// Sets the process's gauges from the last count; never touches the store.
    pub fn publish(&self) {
        let last = *self.last.lock();
        if let Some((q, at)) = last {
            metrics::gauge!(telemetry::QUEUE_READY).set(q.ready as f64);
            metrics::gauge!(telemetry::QUEUE_SCHEDULED).set(q.scheduled as f64);
            metrics::gauge!(telemetry::QUEUE_IN_FLIGHT).set(q.in_flight as f64);
            metrics::gauge!(telemetry::QUEUE_OLDEST_READY_AGE)
                .set(q.oldest_ready_age_ms as f64 / 1000.0);
            metrics::gauge!(QUEUE_GAUGES_AGE).set(at.elapsed().as_secs_f64());
        }
    }
}

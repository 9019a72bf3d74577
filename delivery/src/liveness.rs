//! Worker heartbeats and the reaper: how a crashed worker's deliveries are attempted again
//! within seconds, instead of after the lease, without a live worker losing what it holds.
//!
//! Protocol (the queue's side is in `Queue::heartbeat` and `Queue::reap`):
//! - Every `interval` this worker renews its heartbeat and every lease it holds, so a lease
//!   never ends under a live worker however long its job waits or runs.
//! - On the same tick it reaps: deliveries of workers silent for `stale_after` go back to the
//!   queue, due now. Each worker reaps, so one live process is enough for recovery; a restarted
//!   process reaps its own previous incarnation (a new worker id) once that one goes stale.
//! - Bound: a SIGKILLed worker's deliveries are claimable again at most `stale_after +
//!   interval` after its last heartbeat.
//!
//! Failure points: a heartbeat that fails (the store is unavailable) is retried on the next
//! tick; if the store stays unavailable past `stale_after`, other workers may reap this one
//! while it still sends, which means a second attempt and a stale (ignored) settlement, never
//! a lost delivery. The lease remains the hard cap if every heartbeat stops.

use std::time::Duration;

use herald_core::backend::Backend;
use tokio_util::sync::CancellationToken;

pub struct Liveness {
    pub worker: String,
    pub lease: Duration,
    pub interval: Duration,
    pub stale_after: Duration,
}

impl Liveness {
    /// Heartbeats and reaps until `stop` is cancelled, starting at once.
    pub async fn run(self, backend: Backend, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {},
                _ = stop.cancelled() => return,
            }
            if let Err(e) = backend.queue.heartbeat(&self.worker, self.lease).await {
                tracing::warn!(error = %e, worker = %self.worker, "heartbeat failed; retrying");
            }
            match backend.queue.reap(self.stale_after).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deliveries = n, "returned deliveries of stopped workers"),
                Err(e) => tracing::warn!(error = %e, "reaping stopped workers failed"),
            }
        }
    }
}

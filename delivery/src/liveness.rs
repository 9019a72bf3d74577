//! Worker heartbeats and the reaper: how a crashed worker's deliveries are attempted again
//! within seconds, instead of after the lease, without a live worker losing what it holds.
//!
//! Protocol (the queue's side is in `WorkQueue::heartbeat` and `WorkQueue::reap`):
//! - Every `interval` this worker renews its heartbeat and every lease it holds, so a lease
//!   never ends under a live worker however long its job waits or runs.
//! - On the same tick it reaps: deliveries of workers silent for `stale_after` go back to the
//!   queue, due now. Each worker reaps, so one live process is enough for recovery; a restarted
//!   process reaps its own previous incarnation (a new worker id) once that one goes stale.
//! - Bound: a SIGKILLed worker's deliveries are claimable again at most `stale_after +
//!   interval` after its last heartbeat.
//!
//! - A worker reaps only once its own heartbeats have succeeded without a break for
//!   `stale_after`: after an outage of the store (or at start), every other worker's last
//!   heartbeat is old for the same reason as its own, and reaping at once would take all their
//!   deliveries while they are still being sent (each sent twice). Waiting `stale_after` gives
//!   every live worker the time to heartbeat again; only the silent ones stay stale. The
//!   decision is this process's own (monotonic clock), not a comparison with the store's.
//!
//! Failure points: a heartbeat that fails (the store is unavailable) is retried on the next
//! tick and restarts the wait before this worker may reap; if the store stays unavailable to
//! this worker alone past `stale_after`, others may reap it while it still sends, which means
//! a second attempt and a stale (ignored) settlement, never a lost delivery. The lease remains
//! the hard cap if every heartbeat stops. A restarted process reaps its previous incarnation
//! `stale_after` after it started (plus one interval at most).

use std::time::Duration;

use tokio::time::Instant;

use herald_core::backend::Backend;
use herald_core::error::chain;
use herald_core::telemetry;
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
        let mut reaper = ReapGate::new(self.stale_after);
        loop {
            tokio::select! {
                _ = tick.tick() => {},
                _ = stop.cancelled() => return,
            }
            let sent = Instant::now();
            match backend.queue.heartbeat(&self.worker, self.lease).await {
                Ok(_) => reaper.heartbeat_ok(sent),
                Err(e) => {
                    reaper.heartbeat_failed();
                    telemetry::count_store_failure("heartbeat");
                    tracing::warn!(error = %chain(&e), worker = %self.worker, "heartbeat failed; retrying");
                }
            }
            if !reaper.may_reap(Instant::now()) {
                continue;
            }
            match backend.queue.reap(self.stale_after).await {
                Ok(0) => {}
                Ok(n) => {
                    metrics::counter!(telemetry::DELIVERIES_RETURNED).increment(n);
                    tracing::info!(deliveries = n, "returned deliveries of stopped workers");
                }
                Err(e) => {
                    telemetry::count_store_failure("reap");
                    tracing::warn!(error = %chain(&e), "reaping stopped workers failed");
                }
            }
        }
    }
}

/// When this worker may reap: once its heartbeats have succeeded without a break for
/// `stale_after` (see the module docs). Pure, so the rule is tested without a clock.
#[derive(Debug)]
struct ReapGate {
    stale_after: Duration,
    /// When the first heartbeat of the current unbroken run was sent.
    healthy_since: Option<Instant>,
}

impl ReapGate {
    fn new(stale_after: Duration) -> Self {
        Self {
            stale_after,
            healthy_since: None,
        }
    }

    fn heartbeat_ok(&mut self, sent: Instant) {
        self.healthy_since.get_or_insert(sent);
    }

    fn heartbeat_failed(&mut self) {
        self.healthy_since = None;
    }

    fn may_reap(&self, now: Instant) -> bool {
        self.healthy_since
            .is_some_and(|since| now.saturating_duration_since(since) >= self.stale_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALE: Duration = Duration::from_secs(15);

    #[test]
    fn a_worker_reaps_only_after_heartbeating_for_stale_after_without_a_break() {
        let t0 = Instant::now();
        let mut gate = ReapGate::new(STALE);
        assert!(!gate.may_reap(t0), "nothing heartbeated yet");
        gate.heartbeat_ok(t0);
        assert!(!gate.may_reap(t0 + STALE - Duration::from_millis(1)));
        gate.heartbeat_ok(t0 + Duration::from_secs(5));
        assert!(
            gate.may_reap(t0 + STALE),
            "the run counts from its first heartbeat"
        );
        // An outage (a failed heartbeat) starts the wait again from the next success.
        gate.heartbeat_failed();
        let back = t0 + Duration::from_secs(40);
        assert!(!gate.may_reap(back));
        gate.heartbeat_ok(back);
        assert!(!gate.may_reap(back + Duration::from_secs(10)));
        assert!(gate.may_reap(back + STALE));
    }
}

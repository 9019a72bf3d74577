//! Metric names, in one place for every binary, and the [`Metrics`] each app counts with (the
//! dashboard's totals and the handles of the hot-path counters).

pub const EVENTS_INGESTED: &str = "herald_events_ingested_total";
pub const DELIVERIES_QUEUED: &str = "herald_deliveries_queued_total";
pub const DELIVERIES_SUCCEEDED: &str = "herald_deliveries_succeeded_total";
pub const DELIVERIES_FAILED: &str = "herald_deliveries_failed_total";
pub const ATTEMPTS: &str = "herald_attempts_total";
pub const ATTEMPT_DURATION: &str = "herald_attempt_duration_seconds";
pub const QUEUE_READY: &str = "herald_queue_ready";
pub const QUEUE_SCHEDULED: &str = "herald_queue_retry_backlog";
pub const QUEUE_IN_FLIGHT: &str = "herald_queue_in_flight";
/// Disable events, labelled `reason`: `gone` (a 410 answer) or `failing` (the failure period).
pub const SUBSCRIPTIONS_DISABLED: &str = "herald_subscriptions_disabled_total";
pub const RETENTION_DELETED: &str = "herald_retention_deleted_total";
/// Settlements ignored because the delivery was no longer leased to the settling worker.
pub const STALE_SETTLEMENTS: &str = "herald_stale_settlements_total";
/// Events the archive refused for good (their document over its limit), kept without payload.
pub const EVENTS_STORED_WITHOUT_PAYLOAD: &str = "herald_events_stored_without_payload_total";
/// Settlements a store refused for good, ended without their record (see the engine).
pub const SETTLEMENTS_REFUSED: &str = "herald_settlements_refused_total";
/// Failed calls of the delivery side's store operations, labelled `operation`: `claim`,
/// `settle`, `heartbeat`, `reap`, `archive` (storing leased events in MongoDB). Each is retried;
/// a rate that stays above zero is an outage the deliveries are waiting on.
pub const STORE_FAILURES: &str = "herald_store_failures_total";
/// Deliveries handed back to the queue because their worker went silent (reaped).
pub const DELIVERIES_RETURNED: &str = "herald_deliveries_returned_total";
/// How long the longest-waiting delivery that is due has waited (0 when none is due): the
/// alert for deliveries that are not being picked up.
pub const QUEUE_OLDEST_READY_AGE: &str = "herald_queue_oldest_ready_age_seconds";

/// Counts one failed call of a store operation (see [`STORE_FAILURES`]).
pub fn count_store_failure(operation: &'static str) {
    metrics::counter!(STORE_FAILURES, "operation" => operation).increment(1);
}

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::model::Outcome;

/// Totals since a [`Metrics`] was made, for the dashboard's counters (`GET /stats`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub ingested: u64,
    pub delivered: u64,
    pub failed: u64,
}

/// What one Herald counts: the dashboard's totals, and the Prometheus handles of the counters
/// its hot paths bump. Made once by a process (or by each app a test starts) and handed to the
/// api's state and the delivery engine, which in standalone mode share one.
#[derive(Debug, Default)]
pub struct Metrics {
    ingested: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    handles: OnceLock<Handles>,
}

/// Handles looked up in the recorder once instead of on every event (a lookup hashes the name
/// and the labels and takes a lock).
#[derive(Debug)]
struct Handles {
    ingested: metrics::Counter,
    queued: metrics::Counter,
    succeeded: metrics::Counter,
    failed: metrics::Counter,
    /// By outcome: success, failed attempt, failure.
    attempts: [metrics::Counter; 3],
    attempt_duration: metrics::Histogram,
}

impl Handles {
    fn lookup() -> Self {
        Self {
            ingested: metrics::counter!(EVENTS_INGESTED),
            queued: metrics::counter!(DELIVERIES_QUEUED),
            succeeded: metrics::counter!(DELIVERIES_SUCCEEDED),
            failed: metrics::counter!(DELIVERIES_FAILED),
            attempts: [Outcome::Success, Outcome::FailedAttempt, Outcome::Failure]
                .map(|o| metrics::counter!(ATTEMPTS, "outcome" => outcome(o).0)),
            attempt_duration: metrics::histogram!(ATTEMPT_DURATION),
        }
    }
}

/// The `outcome` label of [`ATTEMPTS`], and the index of its handle.
fn outcome(o: Outcome) -> (&'static str, usize) {
    match o {
        Outcome::Success => ("success", 0),
        Outcome::FailedAttempt => ("failed_attempt", 1),
        Outcome::Failure => ("failure", 2),
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Runs `f` with the handles. Before the process's recorder is installed a handle would be
    /// a no-op for good, so until then they are looked up afresh on each call.
    fn with<R>(&self, f: impl FnOnce(&Handles) -> R) -> R {
        if !RECORDER_INSTALLED.load(Ordering::Acquire) {
            return f(&Handles::lookup());
        }
        f(self.handles.get_or_init(Handles::lookup))
    }

    /// `n` events accepted by ingest.
    pub fn count_ingested(&self, n: u64) {
        self.ingested.fetch_add(n, Ordering::Relaxed);
        self.with(|h| h.ingested.increment(n));
    }

    /// `n` deliveries queued by ingest.
    pub fn count_queued(&self, n: u64) {
        self.with(|h| h.queued.increment(n));
    }

    /// One delivery ended: delivered, or failed for good.
    pub fn count_final(&self, succeeded: bool) {
        if succeeded {
            self.delivered.fetch_add(1, Ordering::Relaxed);
            self.with(|h| h.succeeded.increment(1));
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.with(|h| h.failed.increment(1));
        }
    }

    /// One attempt made, with how long it took.
    pub fn count_attempt(&self, o: Outcome, took: Duration) {
        self.with(|h| {
            h.attempt_duration.record(took.as_secs_f64());
            h.attempts[outcome(o).1].increment(1);
        });
    }

    /// The dashboard's totals so far.
    pub fn counts(&self) -> Counts {
        Counts {
            ingested: self.ingested.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// Set once the process installed its metrics recorder (see [`recorder_installed`]).
static RECORDER_INSTALLED: AtomicBool = AtomicBool::new(false);

/// Says that the process's metrics recorder is installed, so that [`Metrics`] may keep the
/// handles it looks up from now on.
pub fn recorder_installed() {
    RECORDER_INSTALLED.store(true, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_metrics_counts_its_own() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.count_ingested(3);
        a.count_queued(6);
        a.count_final(true);
        a.count_final(true);
        a.count_final(false);
        a.count_attempt(Outcome::Success, Duration::from_millis(5));
        b.count_ingested(1);
        assert_eq!(
            a.counts(),
            Counts {
                ingested: 3,
                delivered: 2,
                failed: 1
            }
        );
        assert_eq!(
            b.counts(),
            Counts {
                ingested: 1,
                delivered: 0,
                failed: 0
            }
        );
    }
}

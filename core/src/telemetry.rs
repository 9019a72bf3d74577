//! Metric names, in one place for every binary and the dashboard's counters.

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
use std::sync::OnceLock;

/// Totals since this process started, for the dashboard's counters (`GET /stats`).
#[derive(Debug, Default)]
pub struct Counts {
    pub ingested: AtomicU64,
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
}

pub static COUNTS: Counts = Counts {
    ingested: AtomicU64::new(0),
    delivered: AtomicU64::new(0),
    failed: AtomicU64::new(0),
};

/// Set once the process installed its metrics recorder (see [`recorder_installed`]).
static RECORDER_INSTALLED: AtomicBool = AtomicBool::new(false);

/// Says that the process's metrics recorder is installed, so the counters below may keep the
/// handles they look up from now on.
pub fn recorder_installed() {
    RECORDER_INSTALLED.store(true, Ordering::Release);
}

/// The counter `name`, looked up in the recorder once instead of on every event (a lookup
/// hashes the name and takes a lock). Before the recorder is installed the handle would be a
/// no-op for good, so until then each call looks it up afresh.
fn counter(cell: &'static OnceLock<metrics::Counter>, name: &'static str) -> metrics::Counter {
    if !RECORDER_INSTALLED.load(Ordering::Acquire) {
        return metrics::counter!(name);
    }
    cell.get_or_init(|| metrics::counter!(name)).clone()
}

pub fn count_ingested(n: u64) {
    static C: OnceLock<metrics::Counter> = OnceLock::new();
    COUNTS.ingested.fetch_add(n, Ordering::Relaxed);
    counter(&C, EVENTS_INGESTED).increment(n);
}

pub fn count_queued(n: u64) {
    static C: OnceLock<metrics::Counter> = OnceLock::new();
    counter(&C, DELIVERIES_QUEUED).increment(n);
}

pub fn count_final(succeeded: bool) {
    static OK: OnceLock<metrics::Counter> = OnceLock::new();
    static FAILED: OnceLock<metrics::Counter> = OnceLock::new();
    if succeeded {
        COUNTS.delivered.fetch_add(1, Ordering::Relaxed);
        counter(&OK, DELIVERIES_SUCCEEDED).increment(1);
    } else {
        COUNTS.failed.fetch_add(1, Ordering::Relaxed);
        counter(&FAILED, DELIVERIES_FAILED).increment(1);
    }
}

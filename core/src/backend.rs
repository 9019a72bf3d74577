//! The storage, queue and attempt-log traits. Every backend (SQLite for standalone; MongoDB and
//! Redis for production) implements them and passes the same behavioural suite (`testkit`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::model::{
    Attempt, ClaimRequest, Claimed, Publish, PublishOutcome, QueueStats, Settlement, Subscription,
    WebhookRecord,
};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Durable subscription records. Reads on hot paths go through [`crate::cache::SubscriptionCache`].
#[async_trait]
pub trait SubscriptionStore: Send + Sync {
    /// Stores a new subscription; `Conflict` if the id exists.
    async fn insert(&self, sub: &Subscription) -> Result<()>;
    async fn get(&self, id: &str) -> Result<Option<Subscription>>;
    /// Up to `limit` subscriptions with ids greater than `after`, in id order.
    async fn list(&self, limit: usize, after: Option<&str>) -> Result<Vec<Subscription>>;
    /// Every subscription: the fan-out snapshot the cache keeps.
    async fn list_all(&self) -> Result<Vec<Subscription>>;
    /// Replaces a stored subscription; `NotFound` if it is gone.
    async fn replace(&self, sub: &Subscription) -> Result<()>;
    /// Removes a subscription; `false` if there was none.
    async fn remove(&self, id: &str) -> Result<bool>;
    async fn ping(&self) -> Result<()>;
}

/// The delivery queue: events go in once with their deliveries, workers claim due deliveries
/// under a lease, and settle each one. Delivery is at least once.
///
/// Invariants every backend keeps:
/// - **Fencing.** Each claim gives the delivery a fresh lease, identified by the job's receipt.
///   A settlement changes the delivery only while it is still leased under that receipt; a
///   stale one (the lease expired or was reaped and the delivery claimed again, or it was
///   settled already) changes nothing, logs no attempt, and is counted in `settle`'s answer.
///   So one attempt number is never logged twice and a settled delivery never goes back.
/// - **Liveness.** Claims record the worker. A worker renews the leases of everything it holds
///   with [`Queue::heartbeat`]; [`Queue::reap`] (run by every worker) returns the deliveries of
///   workers whose heartbeat stopped to the queue, due now. A live worker's leases are never
///   reaped. The lease remains a hard cap: an unrenewed lease expires and its delivery is
///   claimable again.
/// - **Fairness.** A claim takes at most each subscription's free concurrency
///   (`per_subscription - in_flight`), so one subscription's backlog never fills a worker.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Durably stores the event and queues one delivery per listed subscription, all or nothing.
    /// With an idempotency key seen in the last 24 h nothing is queued and the first answer
    /// comes back as `Duplicate`.
    async fn publish(&self, publish: Publish) -> Result<PublishOutcome>;

    /// Claims due deliveries as `req` allows: at most `req.max`, at most each subscription's
    /// free concurrency, serving subscriptions in turn (a claim that cannot serve all of them
    /// starts the next one where it stopped). The jobs of one event share one payload buffer;
    /// the claim stops adding jobs once their distinct payloads exceed `req.byte_budget`, but
    /// takes at least one.
    async fn claim(&self, req: &ClaimRequest) -> Result<Claimed>;

    /// Finishes claimed deliveries (acknowledged, rescheduled, handed back or failed for good)
    /// and logs the attempt each one carries, both only under the lease the receipt names (see
    /// fencing above). Returns how many settlements were stale. The attempt is logged no later
    /// than its delivery is settled; backends that hold both in one store do it in one write.
    async fn settle(&self, settlements: Vec<Settlement>) -> Result<u64>;

    /// Records that `worker` is alive and extends every lease it holds to `lease` from now, in
    /// one write. Returns how many leases were renewed. Failure point: a heartbeat that fails
    /// or comes too late lets the reaper free the worker's deliveries while it still sends them
    /// (a second attempt; its settlement is then stale and changes nothing).
    async fn heartbeat(&self, worker: &str, lease: Duration) -> Result<u64>;

    /// Returns the leased deliveries of every worker whose last heartbeat (or claim) is older
    /// than `stale_after` to the queue, due now, and forgets those workers. Returns how many
    /// deliveries went back. `stale_after` must be several heartbeat intervals.
    async fn reap(&self, stale_after: Duration) -> Result<u64>;

    /// Waits until new work may be available, at most `max_wait`. Backends that know when the
    /// next delivery is due (or are told of new ones in-process) return early.
    async fn wait_for_work(&self, max_wait: Duration);

    /// The event and the state of each of its deliveries.
    async fn webhook(&self, webhook_id: &str) -> Result<Option<WebhookRecord>>;

    /// Re-queues the failed deliveries of a webhook for one more attempt now (manual replay);
    /// returns how many were re-queued.
    async fn replay(&self, webhook_id: &str) -> Result<usize>;

    /// Makes a subscription's waiting deliveries due now, so workers settle them promptly
    /// (used when the subscription is deleted: they end as `Failure`).
    async fn expedite(&self, subscription_id: &str) -> Result<()>;

    async fn stats(&self) -> Result<QueueStats>;

    /// Deletes settled events and idempotency records older than `cutoff`.
    async fn purge(&self, cutoff: DateTime<Utc>) -> Result<u64>;

    async fn ping(&self) -> Result<()>;
}

/// The record of every delivery attempt.
#[async_trait]
pub trait AttemptLog: Send + Sync {
    async fn record(&self, attempts: Vec<Attempt>) -> Result<()>;
    /// The most recent attempts for a subscription, newest first.
    async fn by_subscription(&self, subscription_id: &str, limit: usize) -> Result<Vec<Attempt>>;
    /// Every attempt for a webhook, oldest first.
    async fn by_webhook(&self, webhook_id: &str) -> Result<Vec<Attempt>>;
    /// Deletes attempts older than `cutoff`; returns how many.
    async fn delete_older_than(&self, cutoff: DateTime<Utc>) -> Result<u64>;
}

/// The set of backends one Herald process runs on.
#[derive(Clone)]
pub struct Backend {
    pub name: &'static str,
    pub subscriptions: Arc<dyn SubscriptionStore>,
    pub queue: Arc<dyn Queue>,
    pub attempts: Arc<dyn AttemptLog>,
}

/// Opens the backends the settings name: SQLite when neither MongoDB nor Redis is configured.
pub fn open(settings: &crate::config::Settings) -> Result<Backend> {
    if !settings.standalone() {
        return Err(StoreError::Unavailable(
            "MONGO_URI / REDIS_URL are set, but this build of Herald runs on SQLite only; \
             unset them to use HERALD_SQLITE_PATH"
                .into(),
        ));
    }
    let sync = if settings.sqlite_sync == "normal" {
        crate::sqlite::Sync::Normal
    } else {
        crate::sqlite::Sync::Full
    };
    let max_size = (settings.sqlite_max_size > 0).then_some(settings.sqlite_max_size);
    Ok(crate::sqlite::Sqlite::open_with_limit(&settings.sqlite_path, sync, max_size)?.backend())
}

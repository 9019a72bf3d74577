//! The storage, queue and attempt-log traits. Every backend (SQLite for standalone; MongoDB and
//! Redis for production) implements them and passes the same behavioural suite (`testkit`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::model::{
    Attempt, Claimed, Publish, PublishOutcome, QueueStats, Settlement, Subscription, WebhookRecord,
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
/// under a lease, and settle each one. A lease that expires (a dead worker) makes the delivery
/// claimable again, so delivery is at least once.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Durably stores the event and queues one delivery per listed subscription, all or nothing.
    /// With an idempotency key seen in the last 24 h nothing is queued and the first answer
    /// comes back as `Duplicate`.
    async fn publish(&self, publish: Publish) -> Result<PublishOutcome>;

    /// Claims up to `max` due deliveries for `lease`. Deliveries of the subscriptions in
    /// `skip` are left for later when the backend can filter them (a hint, not a guarantee).
    async fn claim(&self, max: usize, lease: Duration, skip: &[String]) -> Result<Claimed>;

    /// Finishes claimed deliveries (acknowledged, rescheduled or failed for good) and logs the
    /// attempt each one carries. The attempt is logged no later than its delivery is settled, so
    /// a settled delivery always has its attempts in the log; backends that hold both in one
    /// store do it in one write.
    async fn settle(&self, settlements: Vec<Settlement>) -> Result<()>;

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

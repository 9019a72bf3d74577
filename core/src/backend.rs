//! The storage, queue and attempt-log traits; the queue has one trait per client: [`Intake`]
//! for the api, [`WorkQueue`] for delivery workers. Every backend (SQLite for standalone;
//! MongoDB and Redis for production) implements them and passes the same behavioural suite
//! (`herald-testenv`'s `suite`).

use std::sync::Arc;
use std::time::Duration;

use crate::error::StoreError;
use crate::ids::SubscriptionId;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::model::{
    Attempt, ClaimRequest, Claimed, DeliveryStatus, Event, Job, Owner, Publish, PublishOutcome,
    QueueStats, Settlement, Subscription, WebhookRecord,
};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Durable subscription records. Reads on hot paths go through [`crate::cache::SubscriptionCache`].
#[async_trait]
pub trait SubscriptionStore: Send + Sync {
    /// Stores a new subscription; `Conflict` if the id exists. Backends that can check it in
    /// the same atomic step also answer `Conflict` when the subscription's owner has one
    /// already (SQLite does; the MongoDB store relies on the operator's single leader).
    async fn insert(&self, sub: &Subscription) -> Result<()>;
    async fn get(&self, id: &SubscriptionId) -> Result<Option<Subscription>>;
    /// The subscription `owner` manages (matched on kind, namespace and name), if any: how the
    /// operator finds the record of a resource without keeping the id anywhere but in status.
    async fn find_by_owner(&self, owner: &Owner) -> Result<Option<Subscription>>;
    /// Up to `limit` subscriptions with ids greater than `after`, in id order.
    async fn list(&self, limit: usize, after: Option<&str>) -> Result<Vec<Subscription>>;
    /// Every subscription: the fan-out snapshot the cache keeps.
    async fn list_all(&self) -> Result<Vec<Subscription>>;
    /// Replaces a stored subscription in one atomic step, if it is still at the version the
    /// caller read (`sub.version`), storing it as `sub.version + 1`. `NotFound` if it is gone;
    /// `Conflict` if another client write changed it since it was read: read it again and
    /// redo the change (a read-modify-replace without this check would revert the other
    /// write). The health fields (`failing_since`, `disabled_at`, `disabled_reason`) are
    /// Herald's own, written by [`Self::record_health`] without a version: `health` says
    /// whether this replace keeps the stored ones (a rotation) or writes `sub`'s (a PUT or
    /// PATCH, which re-enables), so a replace never carries health read before over a newer
    /// health write.
    async fn replace(&self, sub: &Subscription, health: ReplaceHealth) -> Result<()>;
    /// Herald's own health write (a delivery worker's): sets only the fields `change` names,
    /// in one atomic step on the stored record, leaving the rest and the version alone, so it
    /// never reverts a client's write and never makes one redo its change. Returns whether
    /// the record changed: `false` when it is gone, or for [`HealthChange::Disable`] when it
    /// is disabled already (so one disable is counted once however many workers ask).
    async fn record_health(&self, id: &SubscriptionId, change: &HealthChange) -> Result<bool>;
    /// Removes a subscription; `false` if there was none.
    async fn remove(&self, id: &SubscriptionId) -> Result<bool>;
    async fn ping(&self) -> Result<()>;
}

/// What a [`SubscriptionStore::replace`] does with the health fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplaceHealth {
    /// Keep the stored ones, whatever `sub` holds (a secret rotation).
    Keep,
    /// Write `sub`'s (a PUT or PATCH: cleared, which re-enables the subscription).
    Write,
}

/// A change Herald makes to a subscription's health fields (see
/// [`SubscriptionStore::record_health`]).
#[derive(Debug, Clone, PartialEq)]
pub enum HealthChange {
    /// The start (`Some`) or end (`None`) of a run of failed attempts: `failing_since`.
    FailingSince(Option<DateTime<Utc>>),
    /// Stop delivering: `disabled_at` and `disabled_reason`, unless disabled already.
    Disable { at: DateTime<Utc>, reason: String },
}

/// How long an idempotency key holds: a publish with the key (in its scope) of one accepted
/// less than this long ago is not queued again; one accepted longer ago is a new event. Every
/// backend keeps this one window (SQLite compares the key's age, Redis gives the key this
/// expiry), and the retention sweep may drop keys once they are this old.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The queue as the api sees it: events go in once with their deliveries, and are looked at,
/// replayed and counted.
#[async_trait]
pub trait Intake: Send + Sync {
    /// Durably stores the event and queues one delivery per listed subscription, all or nothing.
    /// With an idempotency key seen within [`IDEMPOTENCY_WINDOW`] nothing is queued and the
    /// first answer comes back as `Duplicate` (or `KeyReused` for another body or event type);
    /// the key and the event are recorded in one atomic step, so a key never stands for an
    /// event that was not stored.
    async fn publish(&self, publish: Publish) -> Result<PublishOutcome>;

    /// The event and the state of each of its deliveries.
    async fn webhook(&self, webhook_id: &str) -> Result<Option<WebhookRecord>>;

    /// Re-queues the failed deliveries of a webhook for one more attempt now (manual replay);
    /// returns how many were re-queued.
    async fn replay(&self, webhook_id: &str) -> Result<usize>;

    /// Makes a subscription's waiting deliveries due now, so workers take them up promptly:
    /// when it is deleted or disabled (they end as `Failure`) and when it is resumed (what was
    /// deferred while it was paused goes out). The subscription service calls it, for the api,
    /// the operator and the delivery workers' health writes alike.
    async fn expedite(&self, subscription_id: &str) -> Result<()>;

    async fn stats(&self) -> Result<QueueStats>;

    async fn ping(&self) -> Result<()>;
}

/// The queue as delivery workers see it: they claim due deliveries under a lease, settle each
/// one, keep their leases alive, and purge what retention lets go. Delivery is at least once.
///
/// Invariants every backend keeps:
/// - **Fencing.** Each claim gives the delivery a fresh lease, identified by the job's receipt.
///   A settlement changes the delivery only while it is still leased under that receipt; a
///   stale one (the lease expired or was reaped and the delivery claimed again, or it was
///   settled already) changes nothing, logs no attempt, and is counted in `settle`'s answer.
///   So one attempt number is never logged twice and a settled delivery never goes back.
/// - **Liveness.** Claims record the worker. A worker renews the leases of everything it holds
///   with [`WorkQueue::heartbeat`]; [`WorkQueue::reap`] (run by every worker) returns the
///   deliveries of workers whose heartbeat stopped to the queue, due now. A live worker's
///   leases are never reaped. The lease remains a hard cap: an unrenewed lease expires and its
///   delivery is claimable again.
/// - **Fairness.** One rule, which the SQLite claim and the Redis `lease` script both follow
///   (and the behavioural suite pins):
///   1. The subscriptions with due deliveries are served in id order, starting after the one
///      where the previous claim stopped (a cursor the backend keeps across claims and
///      workers) and wrapping around once. So a claim that cannot serve all of them leaves the
///      rest to the next: with claims of one job, no subscription is served twice before
///      every other one with due work and free concurrency is served once.
///   2. Each subscription gives at most its free concurrency (`req.per_subscription` less its
///      `req.in_flight`) of its earliest due deliveries, so one subscription's backlog never
///      fills a worker; a subscription with none free is passed over, and its due deliveries
///      are no work to wake up for (`next_due`).
///   3. The claim stops at `req.max` jobs, or once the distinct payloads of its jobs would pass
///      `req.byte_budget` (it takes at least one job; `next_due` is then `None`, as the caller
///      asks again once payloads are released).
#[async_trait]
pub trait WorkQueue: Send + Sync {
    /// Claims due deliveries as `req` allows, by the fairness rule above. The jobs of one event
    /// share one payload buffer. `next_due` says when the next delivery not yet due becomes
    /// due (or a lease ends), so the worker knows how long it may wait.
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

    /// Deletes settled deliveries and events older than `cutoff` (never an event with an open
    /// delivery), and idempotency records older than [`IDEMPOTENCY_WINDOW`].
    async fn purge(&self, cutoff: DateTime<Utc>) -> Result<u64>;
}

/// How a backend's queue wants delivery workers to pace their calls: fixed per backend, handed
/// out with it (see [`Backend::tuning`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueTuning {
    /// How long a worker lets work gather after a wake-up before it claims. Zero where a claim
    /// is cheap; a few milliseconds where one claim costs several round trips to more than one
    /// server, so that a stream of events becomes a few claims of many jobs instead of one
    /// claim (and one archive write) per event.
    pub claim_linger: Duration,
    /// How long a worker lets finished jobs gather before it settles them. Zero where a settle
    /// is cheap; a few milliseconds where each settle costs fixed work on more than one server
    /// (round trips, a transaction, a script call), so that settles come in fewer, larger
    /// batches. The jobs' slots are free meanwhile: only the lease (renewed by heartbeats) and
    /// the moment reads show the end wait for it.
    pub settle_linger: Duration,
}

/// The record of every delivery attempt.
#[async_trait]
pub trait AttemptLog: Send + Sync {
    /// Logs attempts. An attempt is identified by webhook, subscription and number: recording
    /// one that is logged already keeps the first record (so a settlement repeated after a
    /// crash cannot log one attempt twice).
    async fn record(&self, attempts: Vec<Attempt>) -> Result<()>;
    /// The most recent attempts for a subscription, newest first.
    async fn by_subscription(&self, subscription_id: &str, limit: usize) -> Result<Vec<Attempt>>;
    /// Every attempt for a webhook, oldest first.
    async fn by_webhook(&self, webhook_id: &str) -> Result<Vec<Attempt>>;
    /// Every attempt for any of these webhooks, each webhook's oldest first. A claim that takes
    /// over a dead worker's deliveries asks for all their webhooks at once: one read per
    /// webhook would hold every one of those deliveries back by as many round trips (and, on a
    /// store that scans for them, as many scans). Stores with a cheap batched read override it.
    async fn by_webhooks(&self, webhook_ids: &[String]) -> Result<Vec<Attempt>> {
        let mut all = Vec::new();
        for id in webhook_ids {
            all.extend(self.by_webhook(id).await?);
        }
        Ok(all)
    }
    /// Deletes attempts older than `cutoff`; returns how many.
    async fn delete_older_than(&self, cutoff: DateTime<Utc>) -> Result<u64>;
}

/// The set of backends one Herald process runs on.
#[derive(Clone)]
pub struct Backend {
    pub name: &'static str,
    pub subscriptions: Arc<dyn SubscriptionStore>,
    /// The queue's api side: publishing, reading, replaying, counting.
    pub intake: Arc<dyn Intake>,
    /// The queue's delivery side: claims, settlements, leases, retention.
    pub queue: Arc<dyn WorkQueue>,
    /// How delivery workers pace their calls to `queue`.
    pub tuning: QueueTuning,
    pub attempts: Arc<dyn AttemptLog>,
    /// How subscription changes reach the caches of other processes; `None` when the backend
    /// serves one process only (SQLite), where the cache's TTL covers outside writers.
    pub changes: Option<Arc<dyn ChangeFeed>>,
}

/// The mark of a health-only announcement (see [`ChangeFeed::announce_health`]); subscription
/// ids never start with it.
pub const HEALTH_ONLY: &str = "health:";

/// Announces subscription changes to every process sharing the backend, so their caches drop
/// the changed entry at once instead of after their TTL.
#[async_trait]
pub trait ChangeFeed: Send + Sync {
    /// Tells every follower that `subscription_id` changed (created, updated or deleted).
    async fn announce(&self, subscription_id: &str) -> Result<()>;

    /// Tells every follower that only the health fields of `subscription_id` changed
    /// (`failing_since`), which fan-out does not look at: followers drop that one entry but
    /// keep their fan-out snapshot. Sent as the id behind [`HEALTH_ONLY`] on the same channel,
    /// so a feed carries it unchanged (a follower of an older version drops its snapshot).
    async fn announce_health(&self, subscription_id: &str) -> Result<()> {
        self.announce(&format!("{HEALTH_ONLY}{subscription_id}"))
            .await
    }

    /// Runs until the process ends, calling `on_change(Some(id))` for every announcement and
    /// `on_change(None)` whenever announcements may have been missed (at start and after every
    /// reconnect), on which the follower must forget everything it cached. (The callback's
    /// lifetime is spelled out: `async_trait` would otherwise tie the id to the call, and no
    /// implementation could pass an id it received while following.)
    async fn follow(&self, on_change: Box<dyn for<'a> Fn(Option<&'a str>) + Send + Sync>);
}

// ---------------------------------------------------------------------------------------------
// Production mode splits the queue over two stores: a transport (Redis) that holds what is
// queued and leased, and an archive (MongoDB) that keeps events and settled deliveries for the
// retention period. Each trait makes only promises its one store can keep in one atomic step;
// `herald-backends`' `split::SplitQueue` composes them into the two sides of the queue, fixing
// the write order and the recovery from a crash between two writes.
// ---------------------------------------------------------------------------------------------

/// An event with the subscriptions it was queued for, as the archive keeps it.
#[derive(Debug, Clone)]
pub struct ArchivedEvent {
    pub event: Event,
    pub subscription_ids: Vec<String>,
    /// Set when the archive refused the whole event for good (its document over the store's
    /// limit): it then holds the event without its payload, and this says why. Its deliveries
    /// go on from the transport's copy; once they end it cannot be replayed.
    pub payload_omitted: Option<String>,
}

/// A delivery that ended (succeeded, or failed for good), as the archive keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct SettledDelivery {
    pub webhook_id: String,
    pub status: DeliveryStatus,
    pub settled_at: DateTime<Utc>,
}

/// What the transport holds of an event while any of its deliveries is open.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveWebhook {
    pub event_type: Option<String>,
    pub received_at: DateTime<Utc>,
    /// Every subscription the event was queued for.
    pub subscription_ids: Vec<String>,
    /// The open (queued or delivering) deliveries; the others have settled.
    pub open: Vec<DeliveryStatus>,
}

/// Deliveries leased by one [`Transport::lease`] call.
#[derive(Debug, Default)]
pub struct Leased {
    pub jobs: Vec<Job>,
    /// When the next not-yet-due delivery becomes due.
    pub next_due: Option<DateTime<Utc>>,
    /// Events of these jobs that the archive may not hold yet: store them before any attempt.
    pub unarchived: Vec<ArchivedEvent>,
    /// Indexes into `jobs` of deliveries leased before (a lease that ran out or was reaped):
    /// their holder may have settled them in the archive and died before acknowledging.
    pub redelivered: Vec<usize>,
}

/// The queue's transport: open deliveries, their due times and leases, and the idempotency
/// keys of recent publishes (Redis). Every method is one atomic step of the store.
///
/// Fencing, liveness and fairness are those of [`WorkQueue`], idempotency that of
/// [`Intake::publish`]: a lease is named by the job's receipt, and every change to a leased
/// delivery checks that receipt.
#[async_trait]
pub trait Transport: Send + Sync {
    /// In one atomic step: checks and records the idempotency key (for
    /// [`IDEMPOTENCY_WINDOW`]), stores the event and queues one delivery per subscription.
    /// Returns once the store has the write (how durable that is depends on the store's fsync
    /// policy). The key and the event are written together so that a key can never stand for
    /// an event that was not stored.
    ///
    /// A transport may hold an event without a key in an intake and make its deliveries (due
    /// then) at its next `lease`, `live` or `stats`, which must see it: Redis does, so that the
    /// ingest's write is one append. Webhook ids are unique (Herald mints them): an event whose
    /// id a live event holds is refused with `Conflict` when the transport checks at once, and
    /// dropped when its intake is fanned out otherwise.
    async fn publish(&self, publish: Publish) -> Result<PublishOutcome>;

    /// Leases due deliveries as [`WorkQueue::claim`] describes.
    async fn lease(&self, req: &ClaimRequest) -> Result<Leased>;

    /// Notes that the archive holds these events now, so later leases do not list them.
    async fn archived(&self, webhook_ids: &[String]) -> Result<()>;

    /// Which of these receipts name a lease that is still held (in order).
    async fn held(&self, receipts: &[String]) -> Result<Vec<bool>>;

    /// Acknowledges (`Delivered`, `Failed`) or reschedules (`RetryAt`, `Defer`) leased
    /// deliveries, each only under its receipt's lease; the attempts in the settlements are not
    /// the transport's business. Returns how many were stale. An acknowledged delivery leaves
    /// the transport (and the event with its last open delivery).
    async fn settle(&self, settlements: &[Settlement]) -> Result<u64>;

    async fn heartbeat(&self, worker: &str, lease: Duration) -> Result<u64>;
    async fn reap(&self, stale_after: Duration) -> Result<u64>;
    async fn wait_for_work(&self, max_wait: Duration);

    /// The event and its open deliveries, while it has any.
    async fn live(&self, webhook_id: &str) -> Result<Option<LiveWebhook>>;

    /// Queues settled deliveries of `event` again, due now, each for one more attempt after
    /// the ones it made (a manual replay); deliveries open already are left alone. Returns how
    /// many were queued.
    async fn requeue(&self, event: &ArchivedEvent, deliveries: &[DeliveryStatus]) -> Result<usize>;

    async fn expedite(&self, subscription_id: &str) -> Result<()>;
    async fn stats(&self) -> Result<QueueStats>;

    /// For each webhook id (in order), whether the transport holds its event still, i.e. a
    /// delivery of it is open: see [`OpenEvents`]. One round trip for the whole batch.
    async fn open_among(&self, webhook_ids: &[String]) -> Result<Vec<bool>>;

    async fn ping(&self) -> Result<()>;
}

/// Events and settled deliveries for the retention period (MongoDB). Every write is
/// idempotent, so a write repeated after a crash changes nothing.
#[async_trait]
pub trait Archive: Send + Sync {
    /// Stores events; an event stored already is left as it is.
    async fn store_events(&self, events: &[ArchivedEvent]) -> Result<()>;
    /// Records deliveries that ended; a later record of the same delivery (after a replay)
    /// replaces the earlier one.
    async fn record_settled(&self, deliveries: &[SettledDelivery]) -> Result<()>;
    async fn event(&self, webhook_id: &str) -> Result<Option<ArchivedEvent>>;
    /// The settled deliveries of one event.
    async fn settled(&self, webhook_id: &str) -> Result<Vec<DeliveryStatus>>;
    /// Of these (webhook, subscription) pairs, the ones that settled, with how they ended.
    async fn settled_among(&self, pairs: &[(String, String)]) -> Result<Vec<SettledDelivery>>;
    /// Deletes deliveries settled before `cutoff`, and events received before it unless
    /// `open` names them as open (a delivery of theirs is still queued or leased: a paused
    /// subscription, a long retry schedule), so that an event is never deleted while its
    /// delivery can still be attempted, read or replayed. `open` is asked once per batch of
    /// candidates, never per event. Returns how many documents went.
    async fn purge(&self, cutoff: DateTime<Utc>, open: &dyn OpenEvents) -> Result<u64>;
    async fn ping(&self) -> Result<()>;
}

/// Which events still have open deliveries: what the retention sweep must keep.
#[async_trait]
pub trait OpenEvents: Send + Sync {
    /// For each webhook id (in order), whether its event has a delivery still open. One call
    /// answers a whole batch (one round trip to the transport).
    async fn open_among(&self, webhook_ids: &[String]) -> Result<Vec<bool>>;
}

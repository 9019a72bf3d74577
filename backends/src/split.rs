//! The queue of production mode: a [`Transport`] (Redis) for what is queued and leased, an
//! [`Archive`] (MongoDB) for events and settled deliveries, and the [`AttemptLog`], composed
//! into the two sides of one queue, [`Intake`] and [`WorkQueue`]. Neither store has
//! transactions across the other, so this module fixes the order of the writes and recovers
//! what a crash between two of them leaves behind.
//!
//! ## Write order
//! - **Publish**: one atomic transport write (idempotency key, event, deliveries). Nothing else
//!   is on the ingest path.
//! - **Claim**: lease in the transport, and return the jobs at once. The events the archive
//!   lacks are stored in the background (then noted as archived in the transport): a claim is
//!   one transport round trip, so a worker is never held up by the archive's latency. One
//!   background write runs at a time, each after [`ARCHIVE_LINGER`]; the events of the claims
//!   made meanwhile go together in the next.
//! - **Settle** (a worker gathers finished jobs for [`SETTLE_LINGER`] first): check the leases
//!   → wait until the archive holds the events of these attempts (storing them again if the
//!   background write failed) → log the attempts → record the deliveries that ended, where
//!   their attempt does not tell it → acknowledge or reschedule in the transport (fenced by the
//!   receipt once more). So every logged attempt names a stored event.
//!
//! ## Where an end is kept
//! A delivery that ends with a terminal attempt (`Success`, or `Failure` with the same error)
//! is ended by that attempt's log record alone: the usual end costs no archive write of its
//! own. The archive records the other ends: ends without an attempt, and those of redelivered
//! jobs, whose attempt number may be logged already with another outcome (the log keeps the
//! first record). Reads merge the two: per subscription, the end with the most attempts.
//!
//! ## Failure points
//! | crash or failure after…            | what is left                          | what happens then |
//! |------------------------------------|---------------------------------------|-------------------|
//! | publish, before it answered        | the event queued, or nothing          | the producer retries; with an idempotency key no second copy |
//! | the lease                          | a leased delivery nobody works on     | the reaper (dead worker) or the lease's end queues it again, in the place it had (due when it was leased); the claim that takes a dead worker's deliveries over reads the log once for all of them, so they are sent within the recovery bound |
//! | storing events fails               | attempts made, their event not archived | the settle stores it again first and fails (to be retried) while the archive does not answer; nothing is logged before the event is stored |
//! | storing events is refused for good (a document over the store's limit) | the same | the settle stores the events one by one; one refused on its own is stored without its payload, with the reason (`payload_omitted`), and the settle goes on: nothing blocks behind it. Its deliveries go on from the transport's copy; it cannot be replayed once they end |
//! | the attempt, before its settle (crash) | an event perhaps unarchived, the lease held | redelivered after the reaper; the lease lists the event as unarchived again |
//! | logging the attempts               | an attempt logged, the lease held     | redelivered later under the same number; the log keeps the first record. A terminal one is the delivery's end: the redelivery is acknowledged without sending |
//! | recording the settled delivery (an end its attempt does not tell) | archive says settled, transport leased | the redelivery is noticed at the next claim and acknowledged without sending |
//! | acknowledging                      | the same as the previous two rows     | the same |
//! | the transport, at any write        | nothing new is lost: the transport's own persistence holds leased and queued deliveries | deliveries resume when it is back |
//! | retention: an event old enough to go, its delivery still open (paused subscription, long retry schedule) | — | kept: the sweep asks the transport which candidates are open (one call per batch) and deletes only the others; it goes in the first sweep after its last delivery ended |
//! | retention: a replay of an event older than the retention, between the sweep's check and its delete | the replayed delivery queued, its event deleted from the archive | the delivery is made from the transport's copy; its attempts are logged, but once it ends `GET /webhooks/{id}` finds no event (the same end the sweep would have given it a moment earlier) |
//!
//! A settlement whose lease was lost after the check and before the acknowledgement has logged
//! its attempt (under its number, kept once) and possibly its end; the transport then counts it
//! stale and the new holder's outcome is recorded after it. Delivery is at least once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use herald_core::backend::{
    Archive, ArchivedEvent, AttemptLog, Intake, Leased, OpenEvents, QueueTuning, Result,
    SettledDelivery, Transport, WorkQueue,
};
use herald_core::ids::Receipt;
use herald_core::model::{
    Attempt, ClaimRequest, Claimed, DeliveryState, DeliveryStatus, Disposition, Job, Outcome,
    Publish, PublishOutcome, QueueStats, Settlement, WebhookRecord,
};

/// How long deliveries leased by a claim that could not reach the archive wait before they are
/// due again.
pub const HAND_BACK_DELAY: Duration = Duration::from_secs(1);

/// A claim here is a round trip to the transport and starts a write to the archive: letting
/// work gather for this long after a wake-up batches a stream of events into few claims (and
/// few archive writes), for at most this much added latency.
pub const CLAIM_LINGER: Duration = Duration::from_millis(5);

/// A settle here is a lease check and a script call in the transport and an insert into the
/// attempt log. Each has a fixed cost, the archive's most of all (an insert is a transaction of
/// its own: on FerretDB ~1 ms of its CPU, more than ten attempt records cost). Letting finished
/// jobs gather this long makes the batches larger: on the benchmark's host, with
/// [`ARCHIVE_LINGER`], it cut the inserts per delivery to about a third in a burst and halved
/// FerretDB's CPU at 1,000 deliveries/s. Reads show an end this much later; no slot or due time
/// waits for it.
pub const SETTLE_LINGER: Duration = Duration::from_millis(25);

/// The pace this queue asks of delivery workers.
pub const TUNING: QueueTuning = QueueTuning {
    claim_linger: CLAIM_LINGER,
    settle_linger: SETTLE_LINGER,
};

/// How long the background writer lets leased events gather before it stores them, for the
/// same trade as [`SETTLE_LINGER`]; the settles of their attempts wait for it. A writer that
/// has [`ARCHIVE_BATCH`] events waiting already does not wait.
pub const ARCHIVE_LINGER: Duration = Duration::from_millis(25);
pub const ARCHIVE_BATCH: usize = 1024;

pub struct SplitQueue {
    transport: Arc<dyn Transport>,
    archive: Arc<dyn Archive>,
    attempts: Arc<dyn AttemptLog>,
    /// Events this process leased unarchived and is storing in the background, by webhook id:
    /// the event (to store it again if that write fails) and the write's outcome (`Some(true)`
    /// once stored). An entry goes when its write succeeds, or when a settle stored it again.
    archiving: Arc<Mutex<HashMap<String, Archiving>>>,
    /// The events waiting for the next background write, and whether a writer runs.
    writes: Arc<Mutex<Writes>>,
    /// Receipts of the jobs this process leased as redelivered, until they are settled or
    /// handed back: the attempt log may hold an earlier record under their attempt number, so
    /// their end is recorded in the archive even when their attempt is terminal.
    redelivered: Mutex<HashSet<Receipt>>,
}

#[derive(Default)]
struct Writes {
    next: Option<Generation>,
    writing: bool,
}

/// Events stored by one background write, and the outcome their settles wait for.
struct Generation {
    events: Vec<ArchivedEvent>,
    stored: tokio::sync::watch::Sender<Option<bool>>,
}

impl Generation {
    fn new() -> Self {
        Self {
            events: Vec::new(),
            stored: tokio::sync::watch::Sender::new(None),
        }
    }
}

/// The background writer: stores one generation after the other until none waits. Its
/// `writing` flag is cleared under the same lock that hands it the next generation, so an
/// event added meanwhile is either taken by this writer or starts a new one.
async fn write_generations(
    archive: Arc<dyn Archive>,
    transport: Arc<dyn Transport>,
    archiving: Arc<Mutex<HashMap<String, Archiving>>>,
    writes: Arc<Mutex<Writes>>,
) {
    /// Should a write panic, the next claim starts a new writer for what waits.
    struct Unwinding(Arc<Mutex<Writes>>);
    impl Drop for Unwinding {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.lock().writing = false;
            }
        }
    }
    let _unwinding = Unwinding(writes.clone());
    loop {
        let waiting = writes.lock().next.as_ref().map_or(0, |g| g.events.len());
        if waiting < ARCHIVE_BATCH {
            tokio::time::sleep(ARCHIVE_LINGER).await;
        }
        let Some(generation) = ({
            let mut w = writes.lock();
            let next = w.next.take();
            if next.is_none() {
                w.writing = false;
            }
            next
        }) else {
            return;
        };
        let ids: Vec<String> = generation
            .events
            .iter()
            .map(|e| e.event.webhook_id.to_string())
            .collect();
        let stored = match archive.store_events(&generation.events).await {
            Ok(()) => {
                // Not fatal: the next lease lists them again and storing is idempotent.
                if let Err(e) = transport.archived(&ids).await {
                    tracing::warn!(error = %e.chain(), "noting archived events failed");
                }
                let mut map = archiving.lock();
                for id in &ids {
                    map.remove(id);
                }
                true
            }
            Err(e) => {
                herald_core::telemetry::count_store_failure("archive");
                tracing::warn!(error = %e.chain(), events = ids.len(), "archiving leased events failed; their settles store them again");
                false
            }
        };
        generation.stored.send_replace(Some(stored));
    }
}

#[derive(Clone)]
struct Archiving {
    event: ArchivedEvent,
    stored: tokio::sync::watch::Receiver<Option<bool>>,
}

impl SplitQueue {
    pub fn new(
        transport: Arc<dyn Transport>,
        archive: Arc<dyn Archive>,
        attempts: Arc<dyn AttemptLog>,
    ) -> Self {
        Self {
            transport,
            archive,
            attempts,
            archiving: Arc::default(),
            writes: Arc::default(),
            redelivered: Mutex::default(),
        }
    }

    /// Stores `events` in the archive in the background, then notes them as archived in the
    /// transport. Settles of their attempts wait for it (see [`Self::ensure_archived`]).
    ///
    /// Group commit: the events of every claim made while a write runs wait for the next
    /// write, which takes them all. A claim is bounded by the subscriptions' free concurrency
    /// (a few dozen jobs), so one write per claim would make many small archive writes whose
    /// fixed cost bounds the delivery rate; one write at a time makes as few as the archive's
    /// latency allows.
    fn archive_in_background(&self, events: Vec<ArchivedEvent>) {
        let start = {
            let mut w = self.writes.lock();
            let next = w.next.get_or_insert_with(Generation::new);
            let stored = next.stored.subscribe();
            {
                let mut map = self.archiving.lock();
                for e in &events {
                    map.insert(
                        e.event.webhook_id.to_string(),
                        Archiving {
                            event: e.clone(),
                            stored: stored.clone(),
                        },
                    );
                }
            }
            next.events.extend(events);
            !std::mem::replace(&mut w.writing, true)
        };
        if start {
            tokio::spawn(write_generations(
                self.archive.clone(),
                self.transport.clone(),
                self.archiving.clone(),
                self.writes.clone(),
            ));
        }
    }

    /// Waits until the archive holds the events of `settlements` that this process is still
    /// archiving, storing again those whose background write failed. An error leaves them to
    /// the next try.
    async fn ensure_archived(&self, settlements: &[Settlement]) -> Result<()> {
        let pending: Vec<Archiving> = {
            let map = self.archiving.lock();
            let mut seen = HashSet::new();
            settlements
                .iter()
                // What the archive will be asked to name: logged attempts and ended deliveries
                // (a hand-back without an attempt needs nothing).
                .filter(|s| s.attempt.is_some() || is_end(&s.disposition).is_some())
                .filter(|s| seen.insert(s.webhook_id.as_str()))
                .filter_map(|s| map.get(s.webhook_id.as_str()).cloned())
                .collect()
        };
        let mut failed = Vec::new();
        for mut p in pending {
            let ok = match p.stored.wait_for(|v| v.is_some()).await {
                Ok(v) => *v == Some(true),
                Err(_) => false,
            };
            if !ok {
                failed.push(p.event);
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = failed
            .iter()
            .map(|e| e.event.webhook_id.to_string())
            .collect();
        match self.archive.store_events(&failed).await {
            Ok(()) => {}
            Err(e) if e.is_permanent() => self.store_apart(failed).await?,
            Err(e) => return Err(e),
        }
        if let Err(e) = self.transport.archived(&ids).await {
            tracing::warn!(error = %e.chain(), "noting archived events failed");
        }
        let mut map = self.archiving.lock();
        for id in &ids {
            map.remove(id);
        }
        Ok(())
    }

    /// Stores `events` after the archive refused a write of them all for good: one by one, so
    /// that the others go in; an event refused on its own is stored without its payload, the
    /// refusal as the reason (see [`ArchivedEvent::payload_omitted`]), so that its attempts can
    /// be logged and it blocks no settle. Its deliveries go on from the transport's copy. A
    /// transient error, or a refusal of the event without its payload, goes back to the caller.
    async fn store_apart(&self, events: Vec<ArchivedEvent>) -> Result<()> {
        for e in events {
            match self.archive.store_events(std::slice::from_ref(&e)).await {
                Ok(()) => {}
                Err(err) if err.is_permanent() => {
                    let reason = format!(
                        "the event ({} payload bytes) could not be stored: {}",
                        e.event.payload.len(),
                        err.chain()
                    );
                    tracing::error!(webhook_id = %e.event.webhook_id, reason, "storing the event without its payload");
                    metrics::counter!(herald_core::telemetry::EVENTS_STORED_WITHOUT_PAYLOAD)
                        .increment(1);
                    let stub = ArchivedEvent {
                        event: herald_core::model::Event {
                            payload: bytes::Bytes::new(),
                            ..e.event
                        },
                        subscription_ids: e.subscription_ids,
                        payload_omitted: Some(reason),
                    };
                    self.archive.store_events(&[stub]).await?;
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Gives leased jobs back unattempted, due at `at`. Best effort: if the transport fails
    /// too, the leases run out or the reaper frees them.
    async fn hand_back(&self, jobs: &[Job], at: DateTime<Utc>) {
        {
            let mut redelivered = self.redelivered.lock();
            for j in jobs {
                redelivered.remove(&j.receipt);
            }
        }
        let back: Vec<Settlement> = jobs
            .iter()
            .map(|j| Settlement {
                attempt: None,
                webhook_id: j.webhook_id.clone(),
                subscription_id: j.subscription_id.clone(),
                receipt: j.receipt.clone(),
                attempts_made: j.attempt_no.saturating_sub(1),
                disposition: Disposition::Defer(at),
                last_error: None,
            })
            .collect();
        if let Err(e) = self.transport.settle(&back).await {
            tracing::warn!(error = %e.chain(), jobs = jobs.len(), "handing leased deliveries back failed; their leases will run out");
        }
    }

    /// The ended deliveries of `webhook_id`: the archive's records and the terminal attempts of
    /// the attempt log, the later end (more attempts) of each subscription winning.
    async fn ended(&self, webhook_id: &str) -> Result<Vec<DeliveryStatus>> {
        let recorded = self.archive.settled(webhook_id).await?;
        let attempts = self.attempts.by_webhook(webhook_id).await?;
        Ok(merge_ends(recorded, &attempts))
    }

    /// Drops redelivered jobs that have ended already (their holder died between logging the
    /// end and acknowledging it), acknowledging them in the transport. Only an end that covers
    /// the job's attempt counts: an older one was replayed since.
    async fn drop_settled(&self, jobs: &mut Vec<Job>, redelivered: &[usize]) -> Result<()> {
        let pairs: Vec<(String, String)> = redelivered
            .iter()
            .filter_map(|&i| jobs.get(i))
            .map(|j| (j.webhook_id.to_string(), j.subscription_id.to_string()))
            .collect();
        let mut records = self.archive.settled_among(&pairs).await?;
        let mut seen = HashSet::new();
        let webhooks: Vec<String> = pairs
            .iter()
            .filter(|(wid, _)| seen.insert(wid.as_str()))
            .map(|(wid, _)| wid.clone())
            .collect();
        // One read of the log for all of them: the jobs of a reaped worker come back together,
        // and a read per webhook held them all back (each a collection scan on FerretDB: seconds for
        // a hundred jobs, a minute with a large log).
        let mut attempts = self.attempts.by_webhooks(&webhooks).await?;
        let mut ends: Vec<(String, DeliveryStatus)> = Vec::new();
        for wid in webhooks {
            let recorded = records
                .extract_if(.., |r| r.webhook_id == wid)
                .map(|r| r.status)
                .collect();
            let of_webhook: Vec<Attempt> =
                attempts.extract_if(.., |a| a.webhook_id == wid).collect();
            for end in merge_ends(recorded, &of_webhook) {
                ends.push((wid.clone(), end));
            }
        }
        let redelivered: HashSet<usize> = redelivered.iter().copied().collect();
        let mut acks = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            if !redelivered.contains(&i) {
                continue;
            }
            let Some((_, end)) = ends.iter().find(|(w, e)| {
                *w == job.webhook_id
                    && e.subscription_id == job.subscription_id
                    && e.attempts_made >= job.attempt_no
            }) else {
                continue;
            };
            acks.push(Settlement {
                attempt: None,
                webhook_id: job.webhook_id.clone(),
                subscription_id: job.subscription_id.clone(),
                receipt: job.receipt.clone(),
                attempts_made: end.attempts_made,
                disposition: if end.status == DeliveryState::Succeeded {
                    Disposition::Delivered
                } else {
                    Disposition::Failed
                },
                last_error: end.last_error.clone(),
            });
        }
        if acks.is_empty() {
            return Ok(());
        }
        self.transport.settle(&acks).await?;
        tracing::info!(
            deliveries = acks.len(),
            "acknowledged redelivered deliveries that had settled before their worker died"
        );
        let acked: HashSet<&str> = acks.iter().map(|a| a.receipt.as_str()).collect();
        {
            let mut set = self.redelivered.lock();
            for r in &acked {
                set.remove(*r);
            }
        }
        jobs.retain(|j| !acked.contains(j.receipt.as_str()));
        Ok(())
    }
}

/// Whether the attempt log alone tells how this settlement ends the delivery: its attempt is
/// terminal with the same outcome and error, and its number was not logged before (the job
/// was not redelivered; the log keeps the first record of a number).
fn end_implied_by_attempt(s: &Settlement, redelivered: bool) -> bool {
    let Some(a) = &s.attempt else { return false };
    let same_outcome = matches!(
        (a.outcome, &s.disposition),
        (Outcome::Success, Disposition::Delivered) | (Outcome::Failure, Disposition::Failed)
    );
    same_outcome && !redelivered && a.attempt_no == s.attempts_made && a.error == s.last_error
}

/// The ends of one webhook's deliveries: `recorded` (the archive's records) and the terminal
/// attempts among `attempts`; per subscription the end with the most attempts, a record
/// before an attempt of the same number.
fn merge_ends(recorded: Vec<DeliveryStatus>, attempts: &[Attempt]) -> Vec<DeliveryStatus> {
    let mut ends: Vec<DeliveryStatus> = Vec::new();
    let terminal = attempts.iter().filter_map(|a| {
        let status = match a.outcome {
            Outcome::Success => DeliveryState::Succeeded,
            Outcome::Failure => DeliveryState::Failed,
            Outcome::FailedAttempt => return None,
        };
        Some(DeliveryStatus {
            subscription_id: a.subscription_id.clone(),
            status,
            attempts_made: a.attempt_no,
            next_attempt_at: None,
            last_error: a.error.clone(),
        })
    });
    for end in recorded.into_iter().chain(terminal) {
        match ends
            .iter_mut()
            .find(|e| e.subscription_id == end.subscription_id)
        {
            Some(e) if end.attempts_made > e.attempts_made => *e = end,
            Some(_) => {}
            None => ends.push(end),
        }
    }
    ends
}

fn is_end(d: &Disposition) -> Option<DeliveryState> {
    match d {
        Disposition::Delivered => Some(DeliveryState::Succeeded),
        Disposition::Failed => Some(DeliveryState::Failed),
        Disposition::RetryAt(_) | Disposition::Defer(_) => None,
    }
}

/// The transport answering the retention sweep: an event it still holds has an open delivery.
struct OpenInTransport<'a>(&'a dyn Transport);

#[async_trait]
impl OpenEvents for OpenInTransport<'_> {
    async fn open_among(&self, webhook_ids: &[String]) -> Result<Vec<bool>> {
        self.0.open_among(webhook_ids).await
    }
}

#[async_trait]
impl Intake for SplitQueue {
    async fn publish(&self, publish: Publish) -> Result<PublishOutcome> {
        self.transport.publish(publish).await
    }

    /// Reads the transport first, then the archive: a delivery that leaves the transport
    /// between the two reads is in the archive by then, which is written before the ack.
    async fn webhook(&self, webhook_id: &str) -> Result<Option<WebhookRecord>> {
        let live = self.transport.live(webhook_id).await?;
        let settled = self.ended(webhook_id).await?;
        let (event_type, received_at, subscription_ids, open) = match live {
            Some(l) => (l.event_type, l.received_at, l.subscription_ids, l.open),
            None => match self.archive.event(webhook_id).await? {
                Some(a) => (
                    a.event.event_type,
                    a.event.received_at,
                    a.subscription_ids,
                    Vec::new(),
                ),
                None => return Ok(None),
            },
        };
        let deliveries = subscription_ids
            .iter()
            .filter_map(|sid| {
                open.iter()
                    .find(|d| &d.subscription_id == sid)
                    .or_else(|| settled.iter().find(|d| &d.subscription_id == sid))
                    .cloned()
            })
            .collect();
        Ok(Some(WebhookRecord {
            webhook_id: webhook_id.into(),
            event_type,
            received_at,
            deliveries,
        }))
    }

    async fn replay(&self, webhook_id: &str) -> Result<usize> {
        let failed: Vec<_> = self
            .ended(webhook_id)
            .await?
            .into_iter()
            .filter(|d| d.status == DeliveryState::Failed)
            .collect();
        if failed.is_empty() {
            return Ok(0);
        }
        let Some(event) = self.archive.event(webhook_id).await? else {
            return Ok(0);
        };
        if let Some(reason) = &event.payload_omitted {
            return Err(herald_core::StoreError::Conflict(format!(
                "webhook {webhook_id} cannot be replayed: its payload was not kept ({reason})"
            )));
        }
        self.transport.requeue(&event, &failed).await
    }

    async fn expedite(&self, subscription_id: &str) -> Result<()> {
        self.transport.expedite(subscription_id).await
    }

    async fn stats(&self) -> Result<QueueStats> {
        self.transport.stats().await
    }

    /// The transport only: it is what ingest needs. With the archive (MongoDB) down, ingest
    /// still accepts events and deliveries pause; readiness must not take the api out of
    /// service for that.
    async fn ping(&self) -> Result<()> {
        self.transport.ping().await
    }
}

#[async_trait]
impl WorkQueue for SplitQueue {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claimed> {
        let Leased {
            mut jobs,
            next_due,
            unarchived,
            redelivered,
        } = self.transport.lease(req).await?;
        if !unarchived.is_empty() {
            self.archive_in_background(unarchived);
        }
        if !redelivered.is_empty() {
            {
                let mut set = self.redelivered.lock();
                for j in redelivered.iter().filter_map(|&i| jobs.get(i)) {
                    set.insert(j.receipt.clone());
                }
            }
            if let Err(e) = self.drop_settled(&mut jobs, &redelivered).await {
                self.hand_back(&jobs, Utc::now() + HAND_BACK_DELAY).await;
                return Err(e);
            }
        }
        Ok(Claimed { jobs, next_due })
    }

    async fn settle(&self, settlements: Vec<Settlement>) -> Result<u64> {
        if settlements.is_empty() {
            return Ok(0);
        }
        let receipts: Vec<String> = settlements.iter().map(|s| s.receipt.to_string()).collect();
        let held = self.transport.held(&receipts).await?;
        let mut stale = 0;
        let mut live = Vec::with_capacity(settlements.len());
        for (s, held) in settlements.into_iter().zip(held) {
            if held {
                live.push(s);
            } else {
                stale += 1;
            }
        }
        self.ensure_archived(&live).await?;
        let attempts: Vec<_> = live.iter().filter_map(|s| s.attempt.clone()).collect();
        if !attempts.is_empty() {
            self.attempts.record(attempts).await?;
        }
        let redelivered: HashSet<Receipt> = {
            let set = self.redelivered.lock();
            live.iter()
                .filter(|s| set.contains(&s.receipt))
                .map(|s| s.receipt.clone())
                .collect()
        };
        let now = Utc::now();
        let ended: Vec<SettledDelivery> = live
            .iter()
            .filter(|s| !end_implied_by_attempt(s, redelivered.contains(&s.receipt)))
            .filter_map(|s| {
                is_end(&s.disposition).map(|status| SettledDelivery {
                    webhook_id: s.webhook_id.to_string(),
                    status: herald_core::model::DeliveryStatus {
                        subscription_id: s.subscription_id.clone(),
                        status,
                        attempts_made: s.attempts_made,
                        next_attempt_at: None,
                        last_error: s.last_error.clone(),
                    },
                    settled_at: now,
                })
            })
            .collect();
        if !ended.is_empty() {
            self.archive.record_settled(&ended).await?;
        }
        let acked = self.transport.settle(&live).await?;
        let mut set = self.redelivered.lock();
        for r in &receipts {
            set.remove(r.as_str());
        }
        Ok(stale + acked)
    }

    async fn heartbeat(&self, worker: &str, lease: Duration) -> Result<u64> {
        self.transport.heartbeat(worker, lease).await
    }

    async fn reap(&self, stale_after: Duration) -> Result<u64> {
        self.transport.reap(stale_after).await
    }

    async fn wait_for_work(&self, max_wait: Duration) {
        self.transport.wait_for_work(max_wait).await
    }

    /// The archive deletes what is older than `cutoff`, asking the transport in batches which
    /// of its candidate events are still open (kept).
    async fn purge(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        self.archive
            .purge(cutoff, &OpenInTransport(self.transport.as_ref()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(sid: &str, n: u32, outcome: Outcome, error: Option<&str>) -> Attempt {
        Attempt {
            webhook_id: "msg_1".into(),
            subscription_id: sid.into(),
            event_type: None,
            target_url: "http://127.0.0.1:9/hook".into(),
            attempted_at: Utc::now(),
            attempt_no: n,
            outcome,
            http_status: None,
            error: error.map(Into::into),
            duration_ms: 1,
            response_excerpt: None,
        }
    }

    fn settlement(a: Option<Attempt>, disposition: Disposition, error: Option<&str>) -> Settlement {
        Settlement {
            attempts_made: a.as_ref().map_or(0, |a| a.attempt_no),
            attempt: a,
            webhook_id: "msg_1".into(),
            subscription_id: "sub_a".into(),
            receipt: "r".into(),
            disposition,
            last_error: error.map(Into::into),
        }
    }

    fn end(sid: &str, status: DeliveryState, attempts: u32, error: Option<&str>) -> DeliveryStatus {
        DeliveryStatus {
            subscription_id: sid.into(),
            status,
            attempts_made: attempts,
            next_attempt_at: None,
            last_error: error.map(Into::into),
        }
    }

    #[test]
    fn only_a_terminal_attempt_with_the_same_outcome_and_error_tells_the_end() {
        let ok = || Some(attempt("sub_a", 1, Outcome::Success, None));
        let failure = || Some(attempt("sub_a", 1, Outcome::Failure, Some("HTTP 500")));
        assert!(end_implied_by_attempt(
            &settlement(ok(), Disposition::Delivered, None),
            false
        ));
        assert!(end_implied_by_attempt(
            &settlement(failure(), Disposition::Failed, Some("HTTP 500")),
            false
        ));
        // A redelivered job's number may be logged already with another outcome.
        assert!(!end_implied_by_attempt(
            &settlement(ok(), Disposition::Delivered, None),
            true
        ));
        assert!(!end_implied_by_attempt(
            &settlement(None, Disposition::Failed, Some("gone")),
            false
        ));
        assert!(!end_implied_by_attempt(
            &settlement(failure(), Disposition::Failed, Some("disabled")),
            false
        ));
        assert!(!end_implied_by_attempt(
            &settlement(failure(), Disposition::Delivered, Some("HTTP 500")),
            false
        ));
        assert!(!end_implied_by_attempt(
            &settlement(ok(), Disposition::Failed, None),
            false
        ));
        let retried = Some(attempt("sub_a", 1, Outcome::FailedAttempt, None));
        assert!(!end_implied_by_attempt(
            &settlement(retried, Disposition::Delivered, None),
            false
        ));
        let mut other_count = settlement(ok(), Disposition::Delivered, None);
        other_count.attempts_made = 2;
        assert!(!end_implied_by_attempt(&other_count, false));
    }

    #[test]
    fn ends_merge_per_subscription_with_the_most_attempts_winning() {
        let attempts = [
            attempt("sub_a", 1, Outcome::FailedAttempt, Some("HTTP 500")),
            attempt("sub_a", 2, Outcome::Failure, Some("HTTP 500")),
            attempt("sub_b", 1, Outcome::Success, None),
            attempt("sub_c", 1, Outcome::FailedAttempt, Some("timeout")),
            attempt("sub_d", 1, Outcome::Success, None),
        ];
        let recorded = vec![
            // Replayed and ended again by a later attempt: the log's end is newer.
            end("sub_b", DeliveryState::Failed, 0, Some("gone")),
            // Same number as the log's: the record wins (it is written when the log's record
            // of that number may be another outcome's).
            end("sub_d", DeliveryState::Failed, 1, Some("disabled")),
            end("sub_e", DeliveryState::Failed, 3, Some("deleted")),
        ];
        let mut got = merge_ends(recorded, &attempts);
        got.sort_by(|a, b| a.subscription_id.cmp(&b.subscription_id));
        assert_eq!(
            got,
            vec![
                end("sub_a", DeliveryState::Failed, 2, Some("HTTP 500")),
                end("sub_b", DeliveryState::Succeeded, 1, None),
                end("sub_d", DeliveryState::Failed, 1, Some("disabled")),
                end("sub_e", DeliveryState::Failed, 3, Some("deleted")),
            ],
            "sub_c has no end yet"
        );
    }

    /// A panic while the queue's locks are held (a bug in code run under them) must not make
    /// every later claim and settle of the process panic too.
    #[tokio::test]
    async fn a_panic_while_the_queue_is_locked_leaves_it_usable() {
        let (Some(mongo), Some(redis)) = (herald_testenv::mongo_uri(), herald_testenv::redis_url())
        else {
            return;
        };
        let scratch = herald_testenv::Scratch::new(mongo, redis, "split-lock");
        let mongo = crate::mongo::open(&scratch.mongo_uri, Some(&scratch.database))
            .await
            .expect("MongoDB");
        let redis = crate::redis::open(&scratch.redis_url, &scratch.prefix)
            .await
            .expect("Redis");
        let q = Arc::new(SplitQueue::new(
            redis.transport,
            mongo.archive,
            mongo.attempts,
        ));
        let lease = Duration::from_secs(60);
        let request = herald_core::testkit::claim_request("wrk_1", 10, lease);
        q.publish(herald_core::testkit::publish("msg_1", &["sub_a"], b"{}"))
            .await
            .unwrap();
        let jobs = q.claim(&request).await.unwrap().jobs;
        assert_eq!(jobs.len(), 1);

        let held = q.clone();
        let panicked = std::thread::spawn(move || {
            let _writes = held.writes.lock();
            let _archiving = held.archiving.lock();
            let _redelivered = held.redelivered.lock();
            panic!("a panic while the queue's locks are held");
        })
        .join();
        assert!(panicked.is_err());

        // Settling waits for the background write (archiving) and checks redeliveries.
        let job = &jobs[0];
        let mut a = attempt("sub_a", job.attempt_no, Outcome::Success, None);
        a.webhook_id = job.webhook_id.clone();
        let mut done = settlement(Some(a), Disposition::Delivered, None);
        done.receipt = job.receipt.clone();
        assert_eq!(q.settle(vec![done]).await.unwrap(), 0);
        let rec = q.webhook("msg_1").await.unwrap().expect("recorded");
        assert_eq!(rec.status(), DeliveryState::Succeeded);
        // A new claim hands its events to the background writer again.
        q.publish(herald_core::testkit::publish("msg_2", &["sub_a"], b"{}"))
            .await
            .unwrap();
        assert_eq!(q.claim(&request).await.unwrap().jobs.len(), 1);
    }
}

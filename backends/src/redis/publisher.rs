//! Publishing in batches (group commit): concurrent publishes share one Redis round trip, so
//! its cost is paid once per batch instead of once per event.
//!
//! ## Two ways in
//! - **The intake** (`{p}:intake`, a list): an event without an idempotency key is one record
//!   appended by one `RPUSH` for the whole batch. That is the api's hot path, and it costs Redis
//!   about as much as one `XADD`. Its deliveries are made later by the next step that fans the
//!   intake out (`fan_out` in `scripts/common.lua`: each `lease`, and a `live` read that missed),
//!   oldest record first, due at that moment.
//! - **`scripts/publish.lua`**: an event with an idempotency key, whose key must be checked and
//!   recorded in the same step as the event. It stores the event and its deliveries at once.
//!
//! A record is `{webhook id}\n{0|1}{event type}\n{received_at ms}\n{subscription ids as a JSON
//! array}\n{payload}`: the payload comes last and may hold any byte. An event whose id or type
//! holds a newline (never one Herald made: ids are ULIDs, header values cannot hold one) goes
//! through the script instead, so a record always parses. A record that does not (written to
//! the key by something else) is dropped at fan-out and logged by Redis, never an error that
//! would end the fan-out's script half-way.
//!
//! ## Protocol
//! Callers hand their event to one batching task over a bounded channel and wait for their
//! own answer. The task takes what is waiting (at most [`MAX_BATCH`] events or about
//! [`MAX_BATCH_BYTES`] of payload), sends the intake's records and the script's events (one
//! call each, concurrently) and answers each caller. At most [`MAX_IN_FLIGHT`] batches run at
//! once; while they do, new events gather for the next one. A lone event is sent at once:
//! batching adds no wait, only load makes batches.
//!
//! ## Invariants and failure points
//! - A caller is answered 'accepted' only after Redis applied the write that stored its event:
//!   the `RPUSH` of its record (one command, so all of a batch's records or none) or the script.
//! - A record leaves the intake only inside the script that stores its event and deliveries, so
//!   no crash point loses one or stores it twice.
//! - The script applies its events one after the other, each with its own checks (see its
//!   header): one event's answer (a duplicate, a reused key) does not touch another's.
//! - A call fails as a whole (Redis down, timeout): each of its callers gets the error and none
//!   is told its event was accepted; the other call of the batch answers its own callers. As
//!   with a single call, the write may still have happened if Redis received it (a lost
//!   answer); a producer's retry with its idempotency key then answers `Duplicate`.
//! - Wake-ups: an `RPUSH` that found the intake empty publishes one wake-up afterwards (a
//!   command of its own, not awaited by the callers). A record added to a non-empty intake
//!   needs none: the one that made it non-empty woke the workers, and a lease that leaves
//!   records behind answers "due now". If the api dies between the `RPUSH` and the wake-up,
//!   workers find the records at their next poll.
//! - Webhook ids: the script refuses an id that a live event holds (`exists`); an intake record
//!   is not checked when appended, and is dropped (and logged by Redis) at fan-out if its id is
//!   taken. Herald mints a fresh id for every event, so only a caller reusing one sees this.
//! - A caller that stops waiting (its future dropped) does not stop the batch: its event is
//!   stored or not as if it had waited.
//! - The task ends when the transport (every sender) is dropped, after its batches finish.

use std::sync::Arc;

use herald_core::backend::{Result, IDEMPOTENCY_WINDOW};
use herald_core::error::chain;
use herald_core::model::{Publish, PublishOutcome};
use herald_core::StoreError;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::scripts::SCRIPTS;
use super::{call, Shared};

/// The most events one script run stores.
pub const MAX_BATCH: usize = 64;
/// A batch stops growing once its payloads reach this many bytes (one large event still goes
/// alone).
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// How many batches may wait for Redis at once. With one, the api idles while Redis runs a
/// batch; measured on the api alone at 32 connections, 4 ingested ~10 % more than 1 and a few
/// % more than 2 or 16.
pub const MAX_IN_FLIGHT: usize = 4;
/// Events waiting for a batch; callers beyond it wait to hand theirs over.
const QUEUE: usize = 4096;

struct Pending {
    publish: Publish,
    answer: oneshot::Sender<Result<PublishOutcome>>,
}

/// The handle callers publish through.
pub(crate) struct Publisher {
    tx: mpsc::Sender<Pending>,
}

impl Publisher {
    /// Starts the batching task (on the current tokio runtime).
    pub fn start(shared: Arc<Shared>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(shared, rx));
        Self { tx }
    }

    pub async fn publish(&self, publish: Publish) -> Result<PublishOutcome> {
        let (answer, rx) = oneshot::channel();
        let gone = || StoreError::unavailable("the Redis publisher stopped");
        self.tx
            .send(Pending { publish, answer })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut carried: Option<Pending> = None;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = first.publish.event.payload.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let Ok(p) = rx.try_recv() else { break };
            bytes += p.publish.event.payload.len();
            if bytes > MAX_BATCH_BYTES {
                carried = Some(p);
                break;
            }
            batch.push(p);
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let outcomes = store(&shared, &batch).await;
            for (p, out) in batch.into_iter().zip(outcomes) {
                let _ = p.answer.send(out);
            }
            drop(permit);
        });
    }
}

/// Whether an event goes through the intake (see the module docs).
fn via_intake(p: &Publish) -> bool {
    p.idempotency.is_none()
        && !p.event.webhook_id.contains('\n')
        && !p.event.event_type.as_deref().unwrap_or("").contains('\n')
}

/// Stores a batch: an outcome per event, in order.
async fn store(shared: &Shared, batch: &[Pending]) -> Vec<Result<PublishOutcome>> {
    let (plain, keyed): (Vec<usize>, Vec<usize>) =
        (0..batch.len()).partition(|&i| via_intake(&batch[i].publish));
    let (appended, scripted) = tokio::join!(
        append(shared, plain.iter().map(|&i| &batch[i].publish)),
        run_script(shared, keyed.iter().map(|&i| &batch[i].publish)),
    );
    let mut out: Vec<Option<Result<PublishOutcome>>> = (0..batch.len()).map(|_| None).collect();
    spread(&mut out, &plain, appended);
    spread(&mut out, &keyed, scripted);
    out.into_iter()
        .map(|o| o.unwrap_or_else(|| Err(StoreError::backend("publish left an event unanswered"))))
        .collect()
}

/// Puts the answers of one call at the places of its events; a failed call answers each of
/// them with its error.
fn spread(
    out: &mut [Option<Result<PublishOutcome>>],
    places: &[usize],
    answers: Result<Vec<Result<PublishOutcome>>>,
) {
    match answers {
        Ok(answers) => {
            for (&i, a) in places.iter().zip(answers) {
                out[i] = Some(a);
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for &i in places {
                out[i] = Some(Err(same_kind(&e)));
            }
        }
    }
}

/// Appends the records of `events` to the intake with one `RPUSH` (see the module docs).
async fn append<'a>(
    shared: &Shared,
    events: impl Iterator<Item = &'a Publish>,
) -> Result<Vec<Result<PublishOutcome>>> {
    let mut cmd = redis::cmd("RPUSH");
    cmd.arg(shared.keys.intake());
    let (mut records, mut answers) = (0, Vec::new());
    for p in events {
        if !p.subscription_ids.is_empty() {
            cmd.arg(record(p)?);
            records += 1;
        }
        // An event for no subscription (a fan-out that matched none) has nothing to store.
        answers.push(Ok(PublishOutcome::Accepted));
    }
    if records == 0 {
        return Ok(answers);
    }
    let mut conn = shared.conn();
    let len: usize = call("publishing events", cmd.query_async(&mut conn)).await?;
    if len == records {
        let mut conn = shared.conn();
        let wake = shared.keys.wake();
        tokio::spawn(async move {
            let mut publish = redis::cmd("PUBLISH");
            publish.arg(wake).arg("1");
            if let Err(e) = call("waking workers", publish.query_async::<i64>(&mut conn)).await {
                tracing::debug!(error = %chain(&e), "no wake-up for new events; workers find them at their next poll");
            }
        });
    }
    Ok(answers)
}

/// One intake record (layout in the module docs); subscription ids once each, in order. Written
/// straight into one buffer: this runs for every ingested event.
fn record(p: &Publish) -> Result<Vec<u8>> {
    use std::io::Write;
    let e = &p.event;
    let event_type = e.event_type.as_deref().unwrap_or("");
    let ids: usize = p.subscription_ids.iter().map(|s| s.len() + 3).sum();
    let mut r =
        Vec::with_capacity(e.webhook_id.len() + event_type.len() + ids + 32 + e.payload.len());
    r.extend_from_slice(e.webhook_id.as_bytes());
    r.push(b'\n');
    r.push(if e.event_type.is_some() { b'1' } else { b'0' });
    r.extend_from_slice(event_type.as_bytes());
    // Writing to a Vec cannot fail; the error type is io's.
    let encoded = write!(r, "\n{}\n", e.received_at.timestamp_millis()).and_then(|()| {
        // An ingest names one subscription; only a fan-out's list can repeat one.
        if p.subscription_ids.len() <= 1 {
            serde_json::to_writer(&mut r, &p.subscription_ids)
        } else {
            let mut seen = std::collections::HashSet::with_capacity(p.subscription_ids.len());
            let distinct: Vec<&str> = p
                .subscription_ids
                .iter()
                .map(|s| s.as_str())
                .filter(|s| seen.insert(*s))
                .collect();
            serde_json::to_writer(&mut r, &distinct)
        }
        .map_err(std::io::Error::from)
    });
    encoded.map_err(|err| StoreError::backend_by("encoding an intake record", err))?;
    r.push(b'\n');
    r.extend_from_slice(&e.payload);
    Ok(r)
}

/// One script run for `events`: an outcome per event, in order, or the error of the call.
async fn run_script<'a>(
    shared: &Shared,
    events: impl Iterator<Item = &'a Publish>,
) -> Result<Vec<Result<PublishOutcome>>> {
    let mut inv = SCRIPTS.publish.prepare_invoke();
    inv.arg(shared.keys.prefix())
        .arg(IDEMPOTENCY_WINDOW.as_millis() as u64);
    let mut ids = Vec::new();
    for p in events {
        let (e, idem) = (&p.event, &p.idempotency);
        inv.arg(e.webhook_id.as_str())
            .arg(u8::from(e.event_type.is_some()))
            .arg(e.event_type.as_deref().unwrap_or(""))
            .arg(e.received_at.timestamp_millis())
            .arg(&e.payload[..]);
        match idem {
            Some(k) => inv
                .arg(shared.keys.idempotency(&k.scope, &k.key))
                .arg(hex(&k.fingerprint)),
            None => inv.arg("").arg(""),
        };
        inv.arg(p.subscription_ids.len());
        for sid in &p.subscription_ids {
            inv.arg(sid.as_str());
        }
        ids.push(e.webhook_id.as_str());
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut conn = shared.conn();
    let replies: Vec<Vec<redis::Value>> =
        call("publishing events", inv.invoke_async(&mut conn)).await?;
    if replies.len() != ids.len() {
        return Err(StoreError::backend(format!(
            "publish answered {} replies for {} events",
            replies.len(),
            ids.len()
        )));
    }
    Ok(replies
        .into_iter()
        .zip(ids)
        .map(|(r, id)| outcome(r, id))
        .collect())
}

fn outcome(reply: Vec<redis::Value>, webhook_id: &str) -> Result<PublishOutcome> {
    let mut it = reply.into_iter();
    let mut next = || it.next().unwrap_or(redis::Value::Nil);
    let parse = |what| StoreError::backend(format!("unexpected answer of publish: {what}"));
    let kind: String = redis::from_redis_value(next()).map_err(|_| parse("kind"))?;
    let first: Option<String> = redis::from_redis_value(next()).map_err(|_| parse("webhook id"))?;
    let matched: Option<usize> = redis::from_redis_value(next()).map_err(|_| parse("matched"))?;
    match (kind.as_str(), first) {
        ("accepted", _) => Ok(PublishOutcome::Accepted),
        ("duplicate", Some(webhook_id)) => Ok(PublishOutcome::Duplicate {
            webhook_id: webhook_id.into(),
            matched: matched.unwrap_or(0),
        }),
        ("reused", Some(webhook_id)) => Ok(PublishOutcome::KeyReused {
            webhook_id: webhook_id.into(),
        }),
        ("exists", _) => Err(StoreError::Conflict(format!(
            "webhook {webhook_id} is stored already"
        ))),
        (other, _) => Err(StoreError::backend(format!(
            "unexpected answer of publish: {other}"
        ))),
    }
}

/// The error of a batch's call, for each of its callers: the same kind and message, and the
/// same causes (shared, as a driver error cannot be cloned).
fn same_kind(e: &Arc<StoreError>) -> StoreError {
    let cause = || -> Option<herald_core::error::Cause> {
        std::error::Error::source(&**e).map(|_| Box::new(BatchCause(e.clone())) as _)
    };
    match &**e {
        StoreError::NotFound => StoreError::NotFound,
        StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
        StoreError::Unavailable(m, _) => StoreError::Unavailable(m.clone(), cause()),
        StoreError::Full(m, _) => StoreError::Full(m.clone(), cause()),
        StoreError::Backend(m, _) => StoreError::Backend(m.clone(), cause()),
        StoreError::Rejected(m, _) => StoreError::Rejected(m.clone(), cause()),
    }
}

/// The cause of a batch's error, shown and chained as the original cause.
#[derive(Debug)]
struct BatchCause(Arc<StoreError>);

impl std::fmt::Display for BatchCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::error::Error::source(&*self.0) {
            Some(c) => write!(f, "{c}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for BatchCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0).and_then(|c| c.source())
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

//! [`Transport`] over the keys and scripts described in the module docs of `redis`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use herald_core::backend::{ArchivedEvent, Leased, LiveWebhook, Result, Transport};
use herald_core::model::{
    ClaimRequest, DeliveryState, DeliveryStatus, Disposition, Event, Job, Publish, PublishOutcome,
    QueueStats, Settlement,
};
use herald_core::StoreError;

use super::changes::wake_up;
use super::keys::{parse_receipt, receipt};
use super::publisher::Publisher;
use super::scripts::SCRIPTS;
use super::{call, Shared};

/// How many deliveries one `expedite` script moves; it runs again while batches are full.
const EXPEDITE_BATCH: usize = 1000;

/// How many `live` script runs one read may take while the event may still be in the intake
/// (each fans out up to 1,024 records).
const LIVE_ROUNDS: usize = 1000;

/// Redis caps a claim's byte budget here: Lua numbers are doubles, exact up to 2^53.
const MAX_BUDGET: usize = 1 << 53;

/// The queue's transport on Redis.
pub struct RedisTransport {
    shared: Arc<Shared>,
    publisher: Publisher,
}

impl RedisTransport {
    /// Starts the publisher's batching task: call on a tokio runtime.
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            publisher: Publisher::start(shared.clone()),
            shared,
        }
    }

    fn prefix(&self) -> &str {
        self.shared.keys.prefix()
    }
}

/// What the lease script answers (see `scripts/lease.lua`).
type LeaseReply = (
    Option<i64>,
    Vec<(Vec<u8>, Option<String>, i64, String, i64)>,
    Vec<(String, String, u32, Option<u32>, i64, i64, usize)>,
    Vec<String>,
);

/// What the live script answers (see `scripts/live.lua`).
type LiveReply = Option<(
    Option<String>,
    i64,
    String,
    Vec<(String, String, u32, i64, Option<String>)>,
)>;

fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// How long from now on this host's clock until `at`, in ms (0 for a time passed). Both
/// `at` and now come from this host's clock, so its offset from Redis's cancels out.
fn delay_ms(at: DateTime<Utc>) -> i64 {
    (at - Utc::now()).num_milliseconds().max(0)
}

fn subscription_ids(json: &str) -> Result<Vec<String>> {
    serde_json::from_str(json).map_err(|e| {
        StoreError::backend_by("an event's subscription ids in Redis are not valid", e)
    })
}

#[async_trait]
impl Transport for RedisTransport {
    async fn publish(&self, p: Publish) -> Result<PublishOutcome> {
        // Nothing is acknowledged that an evicting Redis may drop.
        self.shared.eviction.ensure_safe()?;
        let queues = !p.subscription_ids.is_empty();
        let out = self.publisher.publish(p).await?;
        if out == PublishOutcome::Accepted && queues {
            wake_up(&self.shared.wake);
        }
        Ok(out)
    }

    async fn lease(&self, req: &ClaimRequest) -> Result<Leased> {
        if req.max == 0 {
            return Ok(Leased::default());
        }
        let mut inv = SCRIPTS.lease.prepare_invoke();
        inv.arg(self.prefix())
            .arg(req.worker.as_str())
            .arg(req.lease.as_millis() as u64)
            .arg(req.max)
            .arg(req.per_subscription.min(MAX_BUDGET))
            .arg(req.byte_budget.min(MAX_BUDGET));
        for (sid, n) in &req.in_flight {
            inv.arg(sid.as_str()).arg(*n);
        }
        let mut conn = self.shared.conn();
        let (next_due, payloads, jobs, dropped): LeaseReply =
            call("leasing deliveries", inv.invoke_async(&mut conn)).await?;
        if !dropped.is_empty() {
            tracing::warn!(deliveries = ?dropped, "dropped queued deliveries whose delivery or event record is missing in Redis");
        }
        let mut buffers = Vec::with_capacity(payloads.len());
        let mut unarchived = Vec::new();
        for (payload, event_type, received_at, subs, archived) in payloads {
            buffers.push((
                event_type.clone(),
                Bytes::from(payload),
                received_at,
                subs,
                archived,
            ));
        }
        let mut out = Vec::with_capacity(jobs.len());
        let mut redelivered = Vec::new();
        let mut listed = vec![false; buffers.len()];
        for (webhook_id, subscription_id, attempts, final_attempt, token, redel, idx) in jobs {
            let Some((event_type, payload, received_at, subs, archived)) =
                idx.checked_sub(1).and_then(|i| buffers.get(i))
            else {
                return Err(StoreError::backend(
                    "unexpected answer of lease: payload index",
                ));
            };
            if *archived == 0 && !listed[idx - 1] {
                listed[idx - 1] = true;
                unarchived.push(ArchivedEvent {
                    event: Event {
                        webhook_id: webhook_id.clone().into(),
                        event_type: event_type.clone(),
                        payload: payload.clone(),
                        received_at: from_ms(*received_at),
                    },
                    subscription_ids: subscription_ids(subs)?,
                    payload_omitted: None,
                });
            }
            if redel == 1 {
                redelivered.push(out.len());
            }
            out.push(Job {
                receipt: receipt(&webhook_id, &subscription_id, token).into(),
                webhook_id: webhook_id.into(),
                subscription_id: subscription_id.into(),
                event_type: event_type.clone(),
                payload: payload.clone(),
                attempt_no: attempts + 1,
                final_attempt_no: final_attempt,
            });
        }
        Ok(Leased {
            jobs: out,
            // The script answers a delay from its clock; on this host's clock that is from now.
            next_due: next_due.map(|ms| Utc::now() + chrono::Duration::milliseconds(ms.max(0))),
            unarchived,
            redelivered,
        })
    }

    async fn archived(&self, webhook_ids: &[String]) -> Result<()> {
        if webhook_ids.is_empty() {
            return Ok(());
        }
        let mut inv = SCRIPTS.archived.prepare_invoke();
        inv.arg(self.prefix());
        for id in webhook_ids {
            inv.arg(id);
        }
        let mut conn = self.shared.conn();
        call("noting archived events", inv.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    /// One pipelined `EXISTS` per event hash, all in one round trip: the event hash lives
    /// while any delivery of the event is open (see `scripts/common.lua`).
    async fn open_among(&self, webhook_ids: &[String]) -> Result<Vec<bool>> {
        if webhook_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in webhook_ids {
            pipe.exists(self.shared.keys.event(id));
        }
        let mut conn = self.shared.conn();
        call("asking which events are open", pipe.query_async(&mut conn)).await
    }

    async fn held(&self, receipts: &[String]) -> Result<Vec<bool>> {
        let parsed: Vec<_> = receipts.iter().map(|r| parse_receipt(r)).collect();
        let mut pipe = redis::pipe();
        for (wid, sid, _) in parsed.iter().flatten() {
            pipe.cmd("HMGET")
                .arg(self.shared.keys.delivery(wid, sid))
                .arg("state")
                .arg("token");
        }
        let mut conn = self.shared.conn();
        let states: Vec<(Option<String>, Option<String>)> = if pipe.is_empty() {
            Vec::new()
        } else {
            call("checking leases", pipe.query_async(&mut conn)).await?
        };
        let mut states = states.into_iter();
        Ok(parsed
            .iter()
            .map(|p| match p {
                None => false,
                Some((_, _, token)) => matches!(
                    states.next(),
                    Some((Some(state), Some(t))) if state == "delivering" && t == *token
                ),
            })
            .collect())
    }

    async fn settle(&self, settlements: &[Settlement]) -> Result<u64> {
        let mut inv = SCRIPTS.settle.prepare_invoke();
        inv.arg(self.prefix());
        let mut unparsed = 0;
        let mut any = false;
        for s in settlements {
            let Some((wid, sid, token)) = parse_receipt(&s.receipt) else {
                unparsed += 1;
                continue;
            };
            // A delay, not this host's time: Redis adds it to its own clock (see settle.lua).
            let (kind, delay) = match s.disposition {
                Disposition::Delivered => ("D", 0),
                Disposition::Failed => ("F", 0),
                Disposition::RetryAt(t) => ("R", delay_ms(t)),
                Disposition::Defer(t) => ("W", delay_ms(t)),
            };
            inv.arg(wid)
                .arg(sid)
                .arg(token)
                .arg(kind)
                .arg(delay)
                .arg(s.attempts_made)
                .arg(u8::from(s.last_error.is_some()))
                .arg(s.last_error.as_deref().unwrap_or(""));
            any = true;
        }
        if !any {
            return Ok(unparsed);
        }
        let mut conn = self.shared.conn();
        let stale: u64 = call("settling deliveries", inv.invoke_async(&mut conn)).await?;
        Ok(stale + unparsed)
    }

    async fn heartbeat(&self, worker: &str, lease: Duration) -> Result<u64> {
        let mut conn = self.shared.conn();
        call(
            "renewing leases",
            SCRIPTS
                .heartbeat
                .prepare_invoke()
                .arg(self.prefix())
                .arg(worker)
                .arg(lease.as_millis() as u64)
                .invoke_async(&mut conn),
        )
        .await
    }

    async fn reap(&self, stale_after: Duration) -> Result<u64> {
        let mut conn = self.shared.conn();
        call(
            "reaping silent workers",
            SCRIPTS
                .reap
                .prepare_invoke()
                .arg(self.prefix())
                .arg(stale_after.as_millis() as u64)
                .invoke_async(&mut conn),
        )
        .await
    }

    async fn wait_for_work(&self, max_wait: Duration) {
        let _ = tokio::time::timeout(max_wait, self.shared.wake.notified()).await;
    }

    async fn live(&self, webhook_id: &str) -> Result<Option<LiveWebhook>> {
        // Each 'pending' answer fanned out at least one intake record, so this ends; the bound
        // keeps a read from chasing an intake that producers fill as fast as it drains.
        let mut reply = None;
        for _ in 0..LIVE_ROUNDS {
            let mut conn = self.shared.conn();
            let value: redis::Value = call(
                "reading an event",
                SCRIPTS
                    .live
                    .prepare_invoke()
                    .arg(self.prefix())
                    .arg(webhook_id)
                    .invoke_async(&mut conn),
            )
            .await?;
            if matches!(&value, redis::Value::BulkString(b) if b == b"pending") {
                continue;
            }
            reply =
                Some(redis::from_redis_value::<LiveReply>(value).map_err(|e| {
                    StoreError::backend_by("unexpected answer of the live script", e)
                })?);
            break;
        }
        let Some(reply) = reply else {
            return Err(StoreError::unavailable(format!(
                "webhook {webhook_id}: events are still waiting to be fanned out; try again"
            )));
        };
        let Some((event_type, received_at, subs, open)) = reply else {
            return Ok(None);
        };
        Ok(Some(LiveWebhook {
            event_type,
            received_at: from_ms(received_at),
            subscription_ids: subscription_ids(&subs)?,
            open: open
                .into_iter()
                .map(|(subscription_id, state, attempts, due, last_error)| {
                    let queued = state == "queued";
                    DeliveryStatus {
                        subscription_id: subscription_id.into(),
                        status: if queued && attempts == 0 {
                            DeliveryState::Queued
                        } else {
                            DeliveryState::Delivering
                        },
                        attempts_made: attempts,
                        next_attempt_at: queued.then(|| from_ms(due)),
                        last_error,
                    }
                })
                .collect(),
        }))
    }

    async fn requeue(&self, event: &ArchivedEvent, deliveries: &[DeliveryStatus]) -> Result<usize> {
        if deliveries.is_empty() {
            return Ok(0);
        }
        let e = &event.event;
        let subs = serde_json::to_string(&event.subscription_ids)
            .map_err(|e| StoreError::backend_by("encoding subscription ids", e))?;
        let mut inv = SCRIPTS.requeue.prepare_invoke();
        inv.arg(self.prefix())
            .arg(e.webhook_id.as_str())
            .arg(u8::from(e.event_type.is_some()))
            .arg(e.event_type.as_deref().unwrap_or(""))
            .arg(e.received_at.timestamp_millis())
            .arg(&e.payload[..])
            .arg(subs);
        for d in deliveries {
            inv.arg(d.subscription_id.as_str())
                .arg(d.attempts_made)
                .arg(u8::from(d.last_error.is_some()))
                .arg(d.last_error.as_deref().unwrap_or(""));
        }
        let mut conn = self.shared.conn();
        let n: usize = call("queuing a replay", inv.invoke_async(&mut conn)).await?;
        if n > 0 {
            wake_up(&self.shared.wake);
        }
        Ok(n)
    }

    async fn expedite(&self, subscription_id: &str) -> Result<()> {
        // Bounded: a subscription's queue cannot outgrow this many batches in practice, and
        // what is left stays queued at its own time.
        for _ in 0..10_000 {
            let mut conn = self.shared.conn();
            let moved: usize = call(
                "expediting deliveries",
                SCRIPTS
                    .expedite
                    .prepare_invoke()
                    .arg(self.prefix())
                    .arg(subscription_id)
                    .arg(EXPEDITE_BATCH)
                    .invoke_async(&mut conn),
            )
            .await?;
            if moved > 0 {
                wake_up(&self.shared.wake);
            }
            if moved < EXPEDITE_BATCH {
                break;
            }
        }
        Ok(())
    }

    async fn stats(&self) -> Result<QueueStats> {
        let mut conn = self.shared.conn();
        let (ready, scheduled, in_flight, oldest_ready_age_ms): (u64, u64, u64, u64) = call(
            "reading queue counts",
            SCRIPTS
                .stats
                .prepare_invoke()
                .arg(self.prefix())
                .invoke_async(&mut conn),
        )
        .await?;
        Ok(QueueStats {
            ready,
            scheduled,
            in_flight,
            oldest_ready_age_ms,
        })
    }

    /// One round trip that also reads the eviction policy: not ready while Redis may evict.
    async fn ping(&self) -> Result<()> {
        let mut conn = self.shared.conn();
        self.shared.eviction.check(&mut conn).await
    }
}

//! The delivery queue on SQLite (see the module docs of `sqlite` for the row life cycle).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::schema::{FAILED, LEASED, PENDING, SUCCEEDED};
use super::store::{delete_in_chunks, insert_attempts};
use super::{from_ms, now_ms, Sqlite};
use herald_core::backend::{Intake, Result, WorkQueue, IDEMPOTENCY_WINDOW};
use herald_core::ids::WebhookId;
use herald_core::model::{
    ClaimRequest, Claimed, DeliveryState, DeliveryStatus, Disposition, IdempotencyKey, Job,
    Publish, PublishOutcome, QueueStats, Settlement, WebhookRecord,
};

/// [`IDEMPOTENCY_WINDOW`] as the stores' millisecond timestamps count it.
const IDEMPOTENCY_WINDOW_MS: i64 = IDEMPOTENCY_WINDOW.as_millis() as i64;

#[async_trait]
impl Intake for Sqlite {
    async fn publish(&self, p: Publish) -> Result<PublishOutcome> {
        let out = self
            .write(move |c| {
                let now = now_ms();
                // In the same transaction as the insert it guards: a key is either recorded
                // with its event or not at all.
                if let Some(idem) = &p.idempotency {
                    let matched = p.subscription_ids.len();
                    if let Some(first) = idempotent(c, idem, &p.event.webhook_id, matched, now)? {
                        return Ok(first);
                    }
                }
                if p.subscription_ids.is_empty() {
                    return Ok(PublishOutcome::Accepted);
                }
                let e = &p.event;
                c.prepare_cached(
                    "INSERT INTO events (webhook_id, event_type, payload, received_at)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(super::sql)?
                .execute(params![
                    e.webhook_id.as_str(),
                    e.event_type,
                    &e.payload[..],
                    e.received_at.timestamp_millis()
                ])
                .map_err(super::sql)?;
                let mut st = c.prepare_cached(
                    "INSERT INTO deliveries (webhook_id, subscription_id, state, due_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?4)",
                ).map_err(super::sql)?;
                for sub in &p.subscription_ids {
                    st.execute(params![e.webhook_id.as_str(), sub.as_str(), PENDING, now])
                        .map_err(super::sql)?;
                }
                Ok(PublishOutcome::Accepted)
            })
            .await?;
        if out == PublishOutcome::Accepted {
            self.work.notify_one();
        }
        Ok(out)
    }

    async fn webhook(&self, webhook_id: &str) -> Result<Option<WebhookRecord>> {
        let id = webhook_id.to_string();
        self.read(move |c| {
            let event: Option<(Option<String>, i64)> = c
                .prepare_cached("SELECT event_type, received_at FROM events WHERE webhook_id = ?1")
                .map_err(super::sql)?
                .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(super::sql)?;
            let Some((event_type, received_at)) = event else {
                return Ok(None);
            };
            let mut st = c
                .prepare_cached(
                    "SELECT subscription_id, state, attempts, due_at, last_error FROM deliveries
                 WHERE webhook_id = ?1 ORDER BY id",
                )
                .map_err(super::sql)?;
            let deliveries = st
                .query_map([&id], |r| {
                    let state: i64 = r.get(1)?;
                    let attempts: u32 = r.get(2)?;
                    let due: i64 = r.get(3)?;
                    let status = match state {
                        PENDING if attempts == 0 => DeliveryState::Queued,
                        PENDING | LEASED => DeliveryState::Delivering,
                        SUCCEEDED => DeliveryState::Succeeded,
                        _ => DeliveryState::Failed,
                    };
                    Ok(DeliveryStatus {
                        subscription_id: r.get::<_, String>(0)?.into(),
                        status,
                        attempts_made: attempts,
                        next_attempt_at: (state == PENDING).then(|| from_ms(due)),
                        last_error: r.get(4)?,
                    })
                })
                .map_err(super::sql)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(super::sql)?;
            Ok(Some(WebhookRecord {
                webhook_id: id.into(),
                event_type,
                received_at: from_ms(received_at),
                deliveries,
            }))
        })
        .await
    }

    async fn replay(&self, webhook_id: &str) -> Result<usize> {
        let id = webhook_id.to_string();
        let n = self
            .write(move |c| {
                let now = now_ms();
                c.prepare_cached(
                    "UPDATE deliveries SET state = ?2, due_at = ?3, final_attempt = attempts + 1,
                            updated_at = ?3
                     WHERE webhook_id = ?1 AND state = ?4",
                )
                .map_err(super::sql)?
                .execute(params![id, PENDING, now, FAILED])
                .map_err(super::sql)
            })
            .await?;
        if n > 0 {
            self.work.notify_one();
        }
        Ok(n)
    }

    async fn expedite(&self, subscription_id: &str) -> Result<()> {
        let id = subscription_id.to_string();
        let n = self
            .write(move |c| {
                let now = now_ms();
                c.prepare_cached(
                    "UPDATE deliveries SET due_at = ?2
                     WHERE subscription_id = ?1 AND state = ?3 AND due_at > ?2",
                )
                .map_err(super::sql)?
                .execute(params![id, now, PENDING])
                .map_err(super::sql)
            })
            .await?;
        if n > 0 {
            self.work.notify_one();
        }
        Ok(())
    }

    async fn stats(&self) -> Result<QueueStats> {
        self.read(|c| {
            let now = now_ms();
            c.prepare_cached(
                "SELECT
                   COALESCE(SUM(state = 0 AND due_at <= ?1), 0),
                   COALESCE(SUM(state = 0 AND due_at > ?1), 0),
                   COALESCE(SUM(state = 1), 0),
                   MIN(CASE WHEN state = 0 AND due_at <= ?1 THEN due_at END)
                 FROM deliveries WHERE state < 2",
            )
            .map_err(super::sql)?
            .query_row([now], |r| {
                Ok(QueueStats {
                    ready: r.get::<_, i64>(0)? as u64,
                    scheduled: r.get::<_, i64>(1)? as u64,
                    in_flight: r.get::<_, i64>(2)? as u64,
                    oldest_ready_age_ms: r
                        .get::<_, Option<i64>>(3)?
                        .map_or(0, |due| now.saturating_sub(due).max(0) as u64),
                })
            })
            .map_err(super::sql)
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        self.ready().await
    }
}

#[async_trait]
impl WorkQueue for Sqlite {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claimed> {
        let req = req.clone();
        let cursor = self.claim_cursor.clone();
        self.write_relaxed(move |c| {
            let mut cursor = cursor.lock();
            claim_fairly(c, &req, &mut cursor)
        })
        .await
    }

    async fn settle(&self, settlements: Vec<Settlement>) -> Result<u64> {
        if settlements.is_empty() {
            return Ok(0);
        }
        let any_due_now = settlements.iter().any(|s| match s.disposition {
            Disposition::RetryAt(t) | Disposition::Defer(t) => t <= Utc::now(),
            _ => false,
        });
        let stale = self
            .write_relaxed(move |c| {
                let now = now_ms();
                let mut st = c.prepare_cached(
                    "UPDATE deliveries SET state = ?2, attempts = ?3, due_at = ?4, last_error = ?5,
                            updated_at = ?6, worker = NULL
                     WHERE id = ?1 AND state = ?7 AND lease_token = ?8",
                ).map_err(super::sql)?;
                let mut stale = 0;
                let mut attempts = Vec::with_capacity(settlements.len());
                for s in settlements {
                    let Some((id, token)) = parse_receipt(&s.receipt) else {
                        stale += 1;
                        continue;
                    };
                    let (state, due) = match s.disposition {
                        Disposition::Delivered => (SUCCEEDED, now),
                        Disposition::Failed => (FAILED, now),
                        Disposition::RetryAt(t) | Disposition::Defer(t) => {
                            (PENDING, t.timestamp_millis())
                        }
                    };
                    let changed = st
                        .execute(params![
                            id,
                            state,
                            s.attempts_made,
                            due,
                            s.last_error,
                            now,
                            LEASED,
                            token
                        ])
                        .map_err(super::sql)?;
                    if changed == 0 {
                        stale += 1;
                    } else if let Some(a) = s.attempt {
                        attempts.push(a);
                    }
                }
                insert_attempts(c, &attempts)?;
                Ok(stale)
            })
            .await?;
        if any_due_now {
            self.work.notify_one();
        }
        Ok(stale)
    }

    async fn heartbeat(&self, worker: &str, lease: Duration) -> Result<u64> {
        let worker = worker.to_string();
        let lease_ms = lease.as_millis() as i64;
        self.write_relaxed(move |c| {
            let now = now_ms();
            touch_worker(c, &worker, now)?;
            Ok(c.prepare_cached(
                "UPDATE deliveries SET due_at = ?2 WHERE state = ?3 AND worker = ?1",
            )
            .map_err(super::sql)?
            .execute(params![worker, now + lease_ms, LEASED])
            .map_err(super::sql)? as u64)
        })
        .await
    }

    async fn reap(&self, stale_after: Duration) -> Result<u64> {
        let stale_ms = stale_after.as_millis() as i64;
        let n = self
            .write_relaxed(move |c| {
                let now = now_ms();
                let cutoff = now - stale_ms;
                // A returned row gets back the due time it had when it was leased: it was at
                // the head of its subscription's queue then, and due `now` would put it behind
                // every delivery queued since, so a backlog and a slow receiver could push its
                // next attempt past the recovery bound (tens of seconds after the reap).
                let n = c
                    .prepare_cached(
                        "UPDATE deliveries SET state = ?1, due_at = MIN(COALESCE(leased_due, ?2), ?2),
                                worker = NULL, updated_at = ?2
                         WHERE state = ?3 AND worker IN
                           (SELECT id FROM workers WHERE heartbeat_at < ?4)",
                    ).map_err(super::sql)?
                    .execute(params![PENDING, now, LEASED, cutoff]).map_err(super::sql)?;
                c.prepare_cached("DELETE FROM workers WHERE heartbeat_at < ?1").map_err(super::sql)?
                    .execute([cutoff]).map_err(super::sql)?;
                Ok(n as u64)
            })
            .await?;
        if n > 0 {
            self.work.notify_one();
        }
        Ok(n)
    }

    async fn wait_for_work(&self, max_wait: Duration) {
        let _ = tokio::time::timeout(max_wait, self.work.notified()).await;
    }

    async fn purge(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        let cutoff = cutoff.timestamp_millis();
        let mut n = delete_in_chunks(
            self,
            "deliveries",
            "SELECT id FROM deliveries WHERE state >= 2 AND updated_at < ?1 LIMIT ?2",
            cutoff,
        )
        .await?;
        n += delete_in_chunks(
            self,
            "events",
            "SELECT e.rowid FROM events e WHERE e.received_at < ?1 AND NOT EXISTS
               (SELECT 1 FROM deliveries d WHERE d.webhook_id = e.webhook_id) LIMIT ?2",
            cutoff,
        )
        .await?;
        n += delete_in_chunks(
            self,
            "idempotency",
            "SELECT rowid FROM idempotency WHERE created_at < ?1 LIMIT ?2",
            now_ms() - IDEMPOTENCY_WINDOW_MS,
        )
        .await?;
        Ok(n)
    }
}

/// A receipt is `<row id>:<lease token>`.
fn receipt(id: i64, token: i64) -> String {
    format!("{id}:{token}")
}

fn parse_receipt(r: &str) -> Option<(i64, i64)> {
    let (id, token) = r.split_once(':')?;
    Some((id.parse().ok()?, token.parse().ok()?))
}

fn touch_worker(c: &rusqlite::Connection, worker: &str, now: i64) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO workers (id, heartbeat_at) VALUES (?1, ?2)
         ON CONFLICT(id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
    )
    .map_err(super::sql)?
    .execute(params![worker, now])
    .map_err(super::sql)?;
    Ok(())
}

/// Checks and records an idempotency key (see [`Intake::publish`]): the first answer when the
/// key was seen within the window (`KeyReused` when the fingerprint differs; rows written
/// before fingerprints existed, NULL, count as matching), else `None` with the key recorded for
/// `webhook_id`.
fn idempotent(
    c: &rusqlite::Connection,
    idem: &IdempotencyKey,
    webhook_id: &WebhookId,
    matched: usize,
    now: i64,
) -> Result<Option<PublishOutcome>> {
    let seen: Option<(String, i64, i64, Option<Vec<u8>>)> = c
        .prepare_cached(
            "SELECT webhook_id, matched, created_at, fingerprint FROM idempotency
             WHERE scope = ?1 AND key = ?2",
        )
        .map_err(super::sql)?
        .query_row(params![idem.scope, idem.key], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()
        .map_err(super::sql)?;
    if let Some((webhook_id, matched, at, fingerprint)) = seen {
        if now - at < IDEMPOTENCY_WINDOW_MS {
            if fingerprint.is_some_and(|f| f[..] != idem.fingerprint[..]) {
                return Ok(Some(PublishOutcome::KeyReused {
                    webhook_id: webhook_id.into(),
                }));
            }
            return Ok(Some(PublishOutcome::Duplicate {
                webhook_id: webhook_id.into(),
                matched: matched as usize,
            }));
        }
    }
    c.prepare_cached(
        "INSERT OR REPLACE INTO idempotency
            (scope, key, webhook_id, matched, created_at, fingerprint)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .map_err(super::sql)?
    .execute(params![
        idem.scope,
        idem.key,
        webhook_id.as_str(),
        matched as i64,
        now,
        &idem.fingerprint[..]
    ])
    .map_err(super::sql)?;
    Ok(None)
}

/// One open row of a subscription, as the claim reads it.
struct Candidate {
    id: i64,
    webhook_id: String,
    attempts: u32,
    final_attempt: Option<u32>,
    due_at: i64,
}

/// The claim of [`WorkQueue::claim`], by the fairness rule written there (the Redis `lease`
/// script follows the same one): a loose index scan over the subscriptions with open rows,
/// starting after `cursor` and wrapping around. Each subscription costs two index seeks plus
/// the rows taken, so a large backlog is never read whole. Leasing happens after the reads (no
/// writes under an open cursor).
fn claim_fairly(
    c: &rusqlite::Connection,
    req: &ClaimRequest,
    cursor: &mut String,
) -> Result<Claimed> {
    let now = now_ms();
    let lease_until = now + req.lease.as_millis() as i64;
    touch_worker(c, &req.worker, now)?;
    let mut next_sub = c
        .prepare_cached(
            "SELECT subscription_id FROM deliveries WHERE state < 2 AND subscription_id > ?1
         ORDER BY subscription_id LIMIT 1",
        )
        .map_err(super::sql)?;
    // A literal LIMIT: a bound one makes SQLite re-prepare the statement every time. Rows
    // stream in due order, so taking a few reads no more than that.
    let mut rows_of = c
        .prepare_cached(
            "SELECT id, webhook_id, attempts, final_attempt, due_at FROM deliveries
         WHERE subscription_id = ?1 AND state < 2 ORDER BY due_at LIMIT 100000",
        )
        .map_err(super::sql)?;
    let mut event_of = c
        .prepare_cached("SELECT event_type, payload FROM events WHERE webhook_id = ?1")
        .map_err(super::sql)?;
    // `leased_due` keeps the due time the row had in the queue (for the reaper); a lease taken
    // over after it ran out keeps the first one.
    let mut lease = c
        .prepare_cached(
            "UPDATE deliveries SET state = ?2, due_at = ?3, updated_at = ?4, worker = ?5,
                lease_token = lease_token + 1,
                leased_due = CASE WHEN state = ?2 THEN COALESCE(leased_due, due_at) ELSE due_at END
         WHERE id = ?1 RETURNING lease_token",
        )
        .map_err(super::sql)?;

    let start = cursor.clone();
    let mut after = start.clone();
    let mut wrapped = false;
    let mut payloads: HashMap<String, (Option<String>, Bytes)> = HashMap::new();
    let mut bytes = 0usize;
    let mut jobs = Vec::new();
    let mut next_due: Option<i64> = None;
    'subs: while jobs.len() < req.max {
        let sub: Option<String> = next_sub
            .query_row([&after], |r| r.get(0))
            .optional()
            .map_err(super::sql)?;
        let sub = match sub {
            Some(s) if wrapped && s > start => break,
            Some(s) => s,
            None if wrapped || start.is_empty() => break,
            None => {
                wrapped = true;
                after.clear();
                continue;
            }
        };
        after.clone_from(&sub);
        let busy = req.in_flight.get(sub.as_str()).copied().unwrap_or(0);
        let free = req.per_subscription.saturating_sub(busy);
        if free == 0 {
            continue;
        }
        let rows: Vec<Candidate> = rows_of
            .query_map([&sub], |r| {
                Ok(Candidate {
                    id: r.get(0)?,
                    webhook_id: r.get(1)?,
                    attempts: r.get(2)?,
                    final_attempt: r.get(3)?,
                    due_at: r.get(4)?,
                })
            })
            .map_err(super::sql)?
            .take(free + 1)
            .collect::<rusqlite::Result<_>>()
            .map_err(super::sql)?;
        let mut taken = 0;
        for row in rows {
            if row.due_at > now {
                next_due = Some(next_due.map_or(row.due_at, |d| d.min(row.due_at)));
                break;
            }
            if taken == free {
                break;
            }
            if !payloads.contains_key(&row.webhook_id) {
                let Some((event_type, payload)) = event_of
                    .query_row([&row.webhook_id], |r| {
                        Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Vec<u8>>(1)?))
                    })
                    .optional()
                    .map_err(super::sql)?
                else {
                    continue;
                };
                if !jobs.is_empty() && bytes + payload.len() > req.byte_budget {
                    // The budget is spent: the engine asks again once payloads are released.
                    *cursor = sub;
                    next_due = None;
                    break 'subs;
                }
                bytes += payload.len();
                payloads.insert(row.webhook_id.clone(), (event_type, Bytes::from(payload)));
            }
            let (event_type, payload) = &payloads[&row.webhook_id];
            let token: i64 = lease
                .query_row(
                    params![row.id, LEASED, lease_until, now, req.worker.as_str()],
                    |r| r.get(0),
                )
                .map_err(super::sql)?;
            jobs.push(Job {
                receipt: receipt(row.id, token).into(),
                webhook_id: row.webhook_id.into(),
                subscription_id: sub.clone().into(),
                attempt_no: row.attempts + 1,
                final_attempt_no: row.final_attempt,
                event_type: event_type.clone(),
                payload: payload.clone(),
            });
            taken += 1;
            if jobs.len() == req.max {
                break;
            }
        }
        cursor.clone_from(&sub);
    }
    Ok(Claimed {
        jobs,
        next_due: next_due.map(from_ms),
    })
}

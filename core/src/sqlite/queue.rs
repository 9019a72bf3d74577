//! The delivery queue on SQLite (see the module docs of `sqlite` for the row life cycle).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::schema::{FAILED, LEASED, PENDING, SUCCEEDED};
use super::store::{delete_in_chunks, insert_attempts};
use super::{from_ms, now_ms, Sqlite};
use crate::backend::{Queue, Result};
use crate::model::{
    Claimed, DeliveryState, DeliveryStatus, Disposition, Job, Publish, PublishOutcome, QueueStats,
    Settlement, WebhookRecord,
};

/// How long an idempotency key holds.
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 3600 * 1000;

#[async_trait]
impl Queue for Arc<Sqlite> {
    async fn publish(&self, p: Publish) -> Result<PublishOutcome> {
        let out = self
            .write(move |c| {
                let now = now_ms();
                // Idempotency, in the same transaction as the insert it guards: a key is either
                // recorded with its event or not at all. A key seen within the window answers
                // the first result when the fingerprint matches, `KeyReused` when it does not;
                // rows written before fingerprints existed (NULL) count as matching.
                if let Some(idem) = &p.idempotency {
                    let seen: Option<(String, i64, i64, Option<Vec<u8>>)> = c
                        .prepare_cached(
                            "SELECT webhook_id, matched, created_at, fingerprint FROM idempotency
                             WHERE scope = ?1 AND key = ?2",
                        )?
                        .query_row(params![idem.scope, idem.key], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                        })
                        .optional()?;
                    if let Some((webhook_id, matched, at, fingerprint)) = seen {
                        if now - at < IDEMPOTENCY_WINDOW_MS {
                            if fingerprint.is_some_and(|f| f[..] != idem.fingerprint[..]) {
                                return Ok(PublishOutcome::KeyReused { webhook_id });
                            }
                            return Ok(PublishOutcome::Duplicate {
                                webhook_id,
                                matched: matched as usize,
                            });
                        }
                    }
                    c.prepare_cached(
                        "INSERT OR REPLACE INTO idempotency
                            (scope, key, webhook_id, matched, created_at, fingerprint)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        idem.scope,
                        idem.key,
                        p.event.webhook_id,
                        p.subscription_ids.len() as i64,
                        now,
                        &idem.fingerprint[..]
                    ])?;
                }
                if p.subscription_ids.is_empty() {
                    return Ok(PublishOutcome::Accepted);
                }
                let e = &p.event;
                c.prepare_cached(
                    "INSERT INTO events (webhook_id, event_type, payload, received_at)
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    e.webhook_id,
                    e.event_type,
                    &e.payload[..],
                    e.received_at.timestamp_millis()
                ])?;
                let mut st = c.prepare_cached(
                    "INSERT INTO deliveries (webhook_id, subscription_id, state, due_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?4)",
                )?;
                for sub in &p.subscription_ids {
                    st.execute(params![e.webhook_id, sub, PENDING, now])?;
                }
                Ok(PublishOutcome::Accepted)
            })
            .await?;
        if out == PublishOutcome::Accepted {
            self.work.notify_one();
        }
        Ok(out)
    }

    async fn claim(&self, max: usize, lease: Duration, skip: &[String]) -> Result<Claimed> {
        let skip = serde_json::to_string(skip).expect("strings serialize");
        let lease_ms = lease.as_millis() as i64;
        self.write_relaxed(move |c| {
            let now = now_ms();
            let mut jobs = Vec::new();
            {
                // A literal LIMIT: a bound one makes SQLite re-prepare the statement every time.
                // Rows stream in due order, so taking `max` of them reads no more than that.
                let mut st = c.prepare_cached(
                    "SELECT d.id, d.webhook_id, d.subscription_id, d.attempts, d.final_attempt,
                            e.event_type, e.payload
                     FROM deliveries d JOIN events e ON e.webhook_id = d.webhook_id
                     WHERE d.state < 2 AND d.due_at <= ?1
                       AND d.subscription_id NOT IN (SELECT value FROM json_each(?2))
                     ORDER BY d.due_at LIMIT 100000",
                )?;
                let rows = st.query_map(params![now, skip], |r| {
                    let id: i64 = r.get(0)?;
                    let attempts: u32 = r.get(3)?;
                    Ok(Job {
                        receipt: id.to_string(),
                        webhook_id: r.get(1)?,
                        subscription_id: r.get(2)?,
                        attempt: attempts + 1,
                        final_attempt: r.get(4)?,
                        event_type: r.get(5)?,
                        payload: Bytes::from(r.get::<_, Vec<u8>>(6)?),
                    })
                })?;
                for job in rows.take(max) {
                    jobs.push(job?);
                }
            }
            let mut lease_st = c.prepare_cached(
                "UPDATE deliveries SET state = ?2, due_at = ?3, updated_at = ?4 WHERE id = ?1",
            )?;
            for j in &jobs {
                lease_st.execute(params![j.receipt, LEASED, now + lease_ms, now])?;
            }
            // When the next delivery this caller may claim becomes due (skipped ones excluded,
            // or a caller waiting on a saturated subscription would spin).
            let next_due: Option<i64> = c
                .prepare_cached(
                    "SELECT MIN(due_at) FROM deliveries WHERE state < 2
                       AND subscription_id NOT IN (SELECT value FROM json_each(?1))",
                )?
                .query_row([&skip], |r| r.get(0))?;
            Ok(Claimed {
                jobs,
                next_due: next_due.map(from_ms),
            })
        })
        .await
    }

    async fn settle(&self, settlements: Vec<Settlement>) -> Result<()> {
        if settlements.is_empty() {
            return Ok(());
        }
        let any_due_now = settlements.iter().any(|s| match s.disposition {
            Disposition::RetryAt(t) | Disposition::Defer(t) => t <= Utc::now(),
            _ => false,
        });
        self.write_relaxed(move |c| {
            let now = now_ms();
            let attempts: Vec<_> = settlements
                .iter()
                .filter_map(|s| s.attempt.clone())
                .collect();
            insert_attempts(c, &attempts)?;
            let mut st = c.prepare_cached(
                "UPDATE deliveries SET state = ?2, attempts = ?3, due_at = ?4, last_error = ?5,
                        updated_at = ?6
                 WHERE id = ?1",
            )?;
            for s in &settlements {
                let (state, due) = match s.disposition {
                    Disposition::Delivered => (SUCCEEDED, now),
                    Disposition::Failed => (FAILED, now),
                    Disposition::RetryAt(t) | Disposition::Defer(t) => {
                        (PENDING, t.timestamp_millis())
                    }
                };
                st.execute(params![
                    s.receipt,
                    state,
                    s.attempts,
                    due,
                    s.last_error,
                    now
                ])?;
            }
            Ok(())
        })
        .await?;
        if any_due_now {
            self.work.notify_one();
        }
        Ok(())
    }

    async fn wait_for_work(&self, max_wait: Duration) {
        let _ = tokio::time::timeout(max_wait, self.work.notified()).await;
    }

    async fn webhook(&self, webhook_id: &str) -> Result<Option<WebhookRecord>> {
        let id = webhook_id.to_string();
        self.read(move |c| {
            let event: Option<(Option<String>, i64)> = c
                .prepare_cached("SELECT event_type, received_at FROM events WHERE webhook_id = ?1")?
                .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((event_type, received_at)) = event else {
                return Ok(None);
            };
            let mut st = c.prepare_cached(
                "SELECT subscription_id, state, attempts, due_at, last_error FROM deliveries
                 WHERE webhook_id = ?1 ORDER BY id",
            )?;
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
                        subscription_id: r.get(0)?,
                        status,
                        attempts,
                        next_attempt_at: (state == PENDING).then(|| from_ms(due)),
                        last_error: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some(WebhookRecord {
                webhook_id: id,
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
                Ok(c.prepare_cached(
                    "UPDATE deliveries SET state = ?2, due_at = ?3, final_attempt = attempts + 1,
                            updated_at = ?3
                     WHERE webhook_id = ?1 AND state = ?4",
                )?
                .execute(params![id, PENDING, now, FAILED])?)
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
                Ok(c.prepare_cached(
                    "UPDATE deliveries SET due_at = ?2
                     WHERE subscription_id = ?1 AND state = ?3 AND due_at > ?2",
                )?
                .execute(params![id, now, PENDING])?)
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
            Ok(c.prepare_cached(
                "SELECT
                   COALESCE(SUM(state = 0 AND due_at <= ?1), 0),
                   COALESCE(SUM(state = 0 AND due_at > ?1), 0),
                   COALESCE(SUM(state = 1), 0)
                 FROM deliveries WHERE state < 2",
            )?
            .query_row([now], |r| {
                Ok(QueueStats {
                    ready: r.get::<_, i64>(0)? as u64,
                    scheduled: r.get::<_, i64>(1)? as u64,
                    in_flight: r.get::<_, i64>(2)? as u64,
                })
            })?)
        })
        .await
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

    async fn ping(&self) -> Result<()> {
        self.ready().await
    }
}

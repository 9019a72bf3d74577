//! Subscriptions and the attempt log on SQLite.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{from_ms, Sqlite};
use herald_core::backend::{AttemptLog, HealthChange, ReplaceHealth, Result, SubscriptionStore};
use herald_core::error::StoreError;
use herald_core::ids::SubscriptionId;
use herald_core::model::{Attempt, Outcome, Owner, Subscription};

/// Rows deleted per transaction, so retention never holds the writer for long.
const DELETE_CHUNK: i64 = 5_000;

/// The `owner_key` column: kind, namespace and name, none of which may contain a `/` (they are
/// Kubernetes names), so the key names one owner only.
fn owner_key(o: &Owner) -> String {
    format!("{}/{}/{}", o.kind, o.namespace, o.name)
}

fn encode(sub: &Subscription) -> Result<(Option<String>, String)> {
    let owner = sub.owner.as_ref().map(owner_key);
    let doc = serde_json::to_string(sub)
        .map_err(|e| StoreError::backend_by("encoding a subscription", e))?;
    Ok((owner, doc))
}

fn decode(doc: String) -> rusqlite::Result<Subscription> {
    serde_json::from_str(&doc).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// The subscription `id` as stored, on whichever connection (a reader, or the writer inside its
/// transaction).
fn load(c: &Connection, id: &str) -> rusqlite::Result<Option<Subscription>> {
    c.prepare_cached("SELECT doc FROM subscriptions WHERE id = ?1")?
        .query_row([id], |r| decode(r.get(0)?))
        .optional()
}

#[async_trait]
impl SubscriptionStore for Sqlite {
    async fn insert(&self, sub: &Subscription) -> Result<()> {
        let (owner, doc) = encode(sub)?;
        let id = sub.id.to_string();
        self.write(move |c| {
            // The owner check and the insert are one statement on the single writer, so two
            // racing applies for one owner cannot both insert.
            let n = c
                .prepare_cached(
                    "INSERT INTO subscriptions (id, owner_key, doc)
                     SELECT ?1, ?2, ?3
                     WHERE ?2 IS NULL
                        OR NOT EXISTS (SELECT 1 FROM subscriptions WHERE owner_key = ?2)
                     ON CONFLICT(id) DO NOTHING",
                )
                .map_err(super::sql)?
                .execute(params![id, owner, doc])
                .map_err(super::sql)?;
            if n == 0 {
                return Err(StoreError::Conflict(match owner {
                    Some(key) => format!("subscription {id} exists, or {key} has one"),
                    None => format!("subscription {id} exists"),
                }));
            }
            Ok(())
        })
        .await
    }

    async fn get(&self, id: &SubscriptionId) -> Result<Option<Subscription>> {
        let id = id.to_string();
        self.read(move |c| load(c, &id).map_err(super::sql)).await
    }

    async fn find_by_owner(&self, owner: &Owner) -> Result<Option<Subscription>> {
        let key = owner_key(owner);
        self.read(move |c| {
            c.prepare_cached(
                "SELECT doc FROM subscriptions WHERE owner_key = ?1 ORDER BY id LIMIT 1",
            )
            .map_err(super::sql)?
            .query_row([key], |r| decode(r.get(0)?))
            .optional()
            .map_err(super::sql)
        })
        .await
    }

    async fn list(&self, limit: usize, after: Option<&str>) -> Result<Vec<Subscription>> {
        let after = after.unwrap_or("").to_string();
        self.read(move |c| {
            let mut st = c
                .prepare_cached("SELECT doc FROM subscriptions WHERE id > ?1 ORDER BY id LIMIT ?2")
                .map_err(super::sql)?;
            let rows = st
                .query_map(params![after, limit as i64], |r| decode(r.get(0)?))
                .map_err(super::sql)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(super::sql)
        })
        .await
    }

    async fn list_all(&self) -> Result<Vec<Subscription>> {
        self.read(|c| {
            let mut st = c
                .prepare_cached("SELECT doc FROM subscriptions ORDER BY id")
                .map_err(super::sql)?;
            let rows = st
                .query_map([], |r| decode(r.get(0)?))
                .map_err(super::sql)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(super::sql)
        })
        .await
    }

    async fn replace(&self, sub: &Subscription, health: ReplaceHealth) -> Result<()> {
        let mut next = sub.clone();
        next.version = sub.version + 1;
        let expected = sub.version;
        let id = sub.id.to_string();
        self.write(move |c| {
            // Read, check and write inside one writer transaction: nothing comes between. A
            // record written before versions existed has none: it counts as version 0.
            let Some(stored) = load(c, &id).map_err(super::sql)? else {
                return Err(StoreError::NotFound);
            };
            if stored.version != expected {
                return Err(StoreError::Conflict(format!(
                    "subscription {id} changed since it was read (version {expected})"
                )));
            }
            if health == ReplaceHealth::Keep {
                next.failing_since = stored.failing_since;
                next.disabled_at = stored.disabled_at;
                next.disabled_reason = stored.disabled_reason;
            }
            let (owner, doc) = encode(&next)?;
            c.prepare_cached("UPDATE subscriptions SET owner_key = ?2, doc = ?3 WHERE id = ?1")
                .map_err(super::sql)?
                .execute(params![id, owner, doc])
                .map_err(super::sql)?;
            Ok(())
        })
        .await
    }

    async fn record_health(&self, id: &SubscriptionId, change: &HealthChange) -> Result<bool> {
        let id = id.to_string();
        let change = change.clone();
        self.write(move |c| {
            // Read, change and write back inside one writer transaction: no other write can
            // come between, so only the health fields change.
            let Some(mut sub) = load(c, &id).map_err(super::sql)? else {
                return Ok(false);
            };
            match change {
                HealthChange::FailingSince(since) => sub.failing_since = since,
                HealthChange::Disable { .. } if sub.is_disabled() => return Ok(false),
                HealthChange::Disable { at, reason } => {
                    sub.disabled_at = Some(at);
                    sub.disabled_reason = Some(reason);
                }
            }
            let (_, doc) = encode(&sub)?;
            c.prepare_cached("UPDATE subscriptions SET doc = ?2 WHERE id = ?1")
                .map_err(super::sql)?
                .execute(params![id, doc])
                .map_err(super::sql)?;
            Ok(true)
        })
        .await
    }

    async fn remove(&self, id: &SubscriptionId) -> Result<bool> {
        let id = id.to_string();
        self.write(move |c| {
            Ok(c.prepare_cached("DELETE FROM subscriptions WHERE id = ?1")
                .map_err(super::sql)?
                .execute([id])
                .map_err(super::sql)?
                > 0)
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(super::sql))
            .await
    }
}

fn attempt_row(r: &Row<'_>) -> rusqlite::Result<Attempt> {
    let outcome: String = r.get(6)?;
    Ok(Attempt {
        webhook_id: r.get::<_, String>(0)?.into(),
        subscription_id: r.get::<_, String>(1)?.into(),
        event_type: r.get(2)?,
        target_url: r.get(3)?,
        attempted_at: from_ms(r.get(4)?),
        attempt_no: r.get(5)?,
        outcome: outcome.parse().unwrap_or(Outcome::Failure),
        http_status: r.get(7)?,
        error: r.get(8)?,
        duration_ms: r.get::<_, i64>(9)? as u64,
        response_excerpt: r.get(10)?,
    })
}

const ATTEMPT_COLUMNS: &str = "webhook_id, subscription_id, event_type, target_url, attempted_at, \
     attempt, outcome, http_status, error, duration_ms, response_excerpt";

/// Appends attempt records; runs inside a writer operation.
pub(super) fn insert_attempts(c: &Connection, attempts: &[Attempt]) -> Result<()> {
    let mut st = c.prepare_cached(&format!(
        "INSERT INTO attempts ({ATTEMPT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
    )).map_err(super::sql)?;
    for a in attempts {
        st.execute(params![
            a.webhook_id.as_str(),
            a.subscription_id.as_str(),
            a.event_type,
            a.target_url,
            a.attempted_at.timestamp_millis(),
            a.attempt_no,
            a.outcome.as_str(),
            a.http_status,
            a.error,
            a.duration_ms as i64,
            a.response_excerpt,
        ])
        .map_err(super::sql)?;
    }
    Ok(())
}

/// Deletes rows chosen by `select_ids` (which must take one `?1` cutoff and a `LIMIT ?2`) in
/// chunks, one writer transaction each.
pub(super) async fn delete_in_chunks(
    db: &Sqlite,
    table: &'static str,
    select_ids: &'static str,
    cutoff: i64,
) -> Result<u64> {
    let mut total = 0u64;
    loop {
        let n = db
            .write_relaxed(move |c: &Connection| {
                let sql = format!("DELETE FROM {table} WHERE rowid IN ({select_ids})");
                Ok(c.prepare_cached(&sql)
                    .map_err(super::sql)?
                    .execute(params![cutoff, DELETE_CHUNK])
                    .map_err(super::sql)? as u64)
            })
            .await?;
        total += n;
        if n < DELETE_CHUNK as u64 {
            return Ok(total);
        }
    }
}

#[async_trait]
impl AttemptLog for Sqlite {
    async fn record(&self, attempts: Vec<Attempt>) -> Result<()> {
        if attempts.is_empty() {
            return Ok(());
        }
        self.write_relaxed(move |c| insert_attempts(c, &attempts))
            .await
    }

    async fn by_subscription(&self, subscription_id: &str, limit: usize) -> Result<Vec<Attempt>> {
        let id = subscription_id.to_string();
        self.read(move |c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE subscription_id = ?1
                 ORDER BY attempted_at DESC, id DESC LIMIT ?2"
                ))
                .map_err(super::sql)?;
            let rows = st
                .query_map(params![id, limit as i64], attempt_row)
                .map_err(super::sql)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(super::sql)
        })
        .await
    }

    async fn by_webhook(&self, webhook_id: &str) -> Result<Vec<Attempt>> {
        let id = webhook_id.to_string();
        self.read(move |c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE webhook_id = ?1
                 ORDER BY attempted_at, id"
                ))
                .map_err(super::sql)?;
            let rows = st.query_map([id], attempt_row).map_err(super::sql)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(super::sql)
        })
        .await
    }

    async fn delete_older_than(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        delete_in_chunks(
            self,
            "attempts",
            "SELECT id FROM attempts WHERE attempted_at < ?1 LIMIT ?2",
            cutoff.timestamp_millis(),
        )
        .await
    }
}

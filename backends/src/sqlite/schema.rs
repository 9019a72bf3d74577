//! Tables, indexes and connection settings of the SQLite backend.

use rusqlite::Connection;

use super::Sync;
use herald_core::backend::Result;

/// Delivery states stored in `deliveries.state`.
pub const PENDING: i64 = 0;
pub const LEASED: i64 = 1;
pub const SUCCEEDED: i64 = 2;
pub const FAILED: i64 = 3;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS subscriptions (
    id        TEXT PRIMARY KEY,
    owner_key TEXT,
    doc       TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS subscriptions_owner ON subscriptions(owner_key) WHERE owner_key IS NOT NULL;

-- One row per ingested event: the payload exactly as received.
CREATE TABLE IF NOT EXISTS events (
    webhook_id  TEXT PRIMARY KEY,
    event_type  TEXT,
    payload     BLOB NOT NULL,
    received_at INTEGER NOT NULL
);

-- The queue: one row per (event, subscription). While LEASED, `worker` holds it under
-- `lease_token`, which every claim increments: settlements name the token they were given;
-- `due_at` is then the lease's end and `leased_due` the due time the row had when it was
-- leased, which it gets back if its worker dies (it keeps its place in the queue).
CREATE TABLE IF NOT EXISTS deliveries (
    id              INTEGER PRIMARY KEY,
    webhook_id      TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    state           INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    final_attempt   INTEGER,
    due_at          INTEGER NOT NULL,
    last_error      TEXT,
    updated_at      INTEGER NOT NULL,
    lease_token     INTEGER NOT NULL DEFAULT 0,
    worker          TEXT,
    leased_due      INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS deliveries_webhook ON deliveries(webhook_id, subscription_id);
-- Retention of settled rows.
CREATE INDEX IF NOT EXISTS deliveries_settled ON deliveries(updated_at) WHERE state >= 2;

-- Workers that claim deliveries, with their last sign of life (heartbeat or claim).
CREATE TABLE IF NOT EXISTS workers (
    id           TEXT PRIMARY KEY,
    heartbeat_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS attempts (
    id               INTEGER PRIMARY KEY,
    webhook_id       TEXT NOT NULL,
    subscription_id  TEXT NOT NULL,
    event_type       TEXT,
    target_url       TEXT NOT NULL,
    attempted_at     INTEGER NOT NULL,
    attempt          INTEGER NOT NULL,
    outcome          TEXT NOT NULL,
    http_status      INTEGER,
    error            TEXT,
    duration_ms      INTEGER NOT NULL,
    response_excerpt TEXT
);
CREATE INDEX IF NOT EXISTS attempts_by_subscription ON attempts(subscription_id, attempted_at);
CREATE INDEX IF NOT EXISTS attempts_by_webhook ON attempts(webhook_id);
CREATE INDEX IF NOT EXISTS attempts_by_age ON attempts(attempted_at);

CREATE TABLE IF NOT EXISTS idempotency (
    scope      TEXT NOT NULL,
    key        TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    matched    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    -- SHA-256 of event type and body; NULL in rows from before it was recorded.
    fingerprint BLOB,
    PRIMARY KEY (scope, key)
);
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency(created_at);
"#;

/// Indexes over columns that older files gain in [`migrate`], so they run after it.
const QUEUE_INDEXES: &str = r#"
-- Claiming walks the subscriptions with open rows (a loose index scan) and reads each one's
-- earliest rows, so a backlog of one subscription is never read whole.
DROP INDEX IF EXISTS deliveries_due;
DROP INDEX IF EXISTS deliveries_due_sub;
DROP INDEX IF EXISTS deliveries_open_by_sub;
CREATE INDEX IF NOT EXISTS deliveries_claim ON deliveries(subscription_id, due_at, state)
    WHERE state < 2;
-- Heartbeats renew, and the reaper frees, the leases of one worker.
CREATE INDEX IF NOT EXISTS deliveries_leased_by ON deliveries(worker) WHERE state = 1;
"#;

pub fn configure_writer(conn: &Connection, sync: Sync) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(super::sql)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(super::sql)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(herald_core::StoreError::unavailable(format!(
            "SQLite refused WAL mode (got {mode})"
        )));
    }
    conn.execute_batch(match sync {
        Sync::Full => "PRAGMA synchronous=FULL;",
        Sync::Normal => "PRAGMA synchronous=NORMAL;",
    })
    .map_err(super::sql)?;
    conn.execute_batch("PRAGMA temp_store=MEMORY; PRAGMA cache_size=-32000;")
        .map_err(super::sql)?;
    // Without a limit the WAL file keeps the size of the largest burst it ever held; with one,
    // SQLite truncates it back to this size when a checkpoint resets it.
    conn.execute_batch(&format!("PRAGMA journal_size_limit={WAL_SIZE_LIMIT};"))
        .map_err(super::sql)?;
    Ok(())
}

/// Size the WAL file is truncated to after a checkpoint, in bytes.
pub const WAL_SIZE_LIMIT: u64 = 16 * 1024 * 1024;

/// Caps the database file at `bytes` (rounded up to whole pages, never below what it holds).
pub fn limit_size(conn: &Connection, bytes: u64) -> Result<()> {
    let page: u64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(super::sql)?;
    let pages = bytes.div_ceil(page.max(1)).max(1);
    conn.query_row(&format!("PRAGMA max_page_count={pages}"), [], |_| Ok(()))
        .map_err(super::sql)?;
    Ok(())
}

pub fn configure_reader(conn: &Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(super::sql)?;
    conn.execute_batch("PRAGMA cache_size=-8000;")
        .map_err(super::sql)?;
    Ok(())
}

pub fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch(SCHEMA).map_err(super::sql)?;
    add_column_if_missing(conn, "idempotency", "fingerprint", "BLOB")?;
    add_column_if_missing(
        conn,
        "deliveries",
        "lease_token",
        "INTEGER NOT NULL DEFAULT 0",
    )?;
    add_column_if_missing(conn, "deliveries", "worker", "TEXT")?;
    add_column_if_missing(conn, "deliveries", "leased_due", "INTEGER")?;
    conn.execute_batch(QUEUE_INDEXES).map_err(super::sql)?;
    Ok(())
}

/// `CREATE TABLE IF NOT EXISTS` leaves a table from an older version as it was.
fn add_column_if_missing(conn: &Connection, table: &str, column: &str, decl: &str) -> Result<()> {
    let present: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
            [table, column],
            |r| r.get(0),
        )
        .map_err(super::sql)?;
    if !present {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))
            .map_err(super::sql)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrate_adds_the_fingerprint_to_an_older_idempotency_table() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE idempotency (scope TEXT NOT NULL, key TEXT NOT NULL,
                webhook_id TEXT NOT NULL, matched INTEGER NOT NULL, created_at INTEGER NOT NULL,
                PRIMARY KEY (scope, key));
             INSERT INTO idempotency VALUES ('s', 'k', 'msg_old', 1, 0);",
        )
        .unwrap();
        migrate(&conn).unwrap();
        migrate(&conn).unwrap();
        let f: Option<Vec<u8>> = conn
            .query_row("SELECT fingerprint FROM idempotency", [], |r| r.get(0))
            .unwrap();
        assert_eq!(f, None, "older rows keep working, without a fingerprint");
    }
}

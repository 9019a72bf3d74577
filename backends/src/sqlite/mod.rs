//! The standalone backend: subscriptions, queue and attempt log in one SQLite file.
//!
//! All writes go through one writer thread that commits whatever has arrived in one transaction
//! (group commit, WAL), so many concurrent ingests cost one fsync; an acknowledgement is sent
//! only after its transaction committed. Reads run on a small pool of read-only connections.
//!
//! The queue is the `deliveries` table. `due_at` is when a row may be claimed: the time of its
//! next attempt while pending, the end of its lease while a worker holds it. Heartbeats of the
//! holding worker push the lease end forward; once they stop, the reaper (or, as a last resort,
//! the lease's end) makes the row claimable again (at least once). The reaper gives a row back
//! the due time it had when it was leased (`leased_due`), so it is at the head of its queue
//! again rather than behind what was queued meanwhile: a backlog and a slow receiver would
//! otherwise hold its next attempt well past the reap.

mod queue;
mod schema;
mod store;
mod writer;

#[cfg(test)]
mod cache_tests;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Notify, Semaphore};

use herald_core::backend::{Backend, Result};
use herald_core::error::StoreError;
pub use writer::Writer;

const READERS: usize = 4;

/// The shared handle every SQLite trait implementation holds.
pub struct Sqlite {
    writer: Writer,
    readers: Arc<Mutex<Vec<Connection>>>,
    reader_permits: Arc<Semaphore>,
    /// Wakes in-process workers when new work is committed.
    work: Notify,
    /// The subscription the last claim stopped at: the next one starts after it, so claims
    /// that cannot serve every subscription serve them in turn.
    claim_cursor: Arc<Mutex<String>>,
}

/// Durability of commits: `Full` survives power loss, `Normal` survives a process crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    Full,
    Normal,
}

impl Sqlite {
    pub fn open(path: &Path, sync: Sync) -> Result<Arc<Self>> {
        Self::open_with_limit(path, sync, None)
    }

    /// Opens with the file capped at `max_size` bytes (`HERALD_SQLITE_MAX_SIZE`).
    pub fn open_with_limit(path: &Path, sync: Sync, max_size: Option<u64>) -> Result<Arc<Self>> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(StoreError::unavailable(format!(
                    "directory {} of HERALD_SQLITE_PATH does not exist",
                    dir.display()
                )));
            }
        }
        let conn = Connection::open(path)
            .map_err(|e| StoreError::unavailable(format!("open {}: {e}", path.display())))?;
        schema::configure_writer(&conn, sync)?;
        schema::migrate(&conn)?;
        // After the migration, so that a limit below the current size cannot stop the start.
        if let Some(bytes) = max_size {
            schema::limit_size(&conn, bytes)?;
        }
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(sql)?;
            schema::configure_reader(&r)?;
            readers.push(r);
        }
        Ok(Arc::new(Self {
            writer: Writer::start(conn, sync)?,
            readers: Arc::new(Mutex::new(readers)),
            reader_permits: Arc::new(Semaphore::new(READERS)),
            work: Notify::new(),
            claim_cursor: Arc::default(),
        }))
    }

    /// The backend set of standalone mode.
    pub fn backend(self: &Arc<Self>) -> Backend {
        Backend {
            name: "sqlite",
            subscriptions: self.clone(),
            queue: self.clone(),
            attempts: self.clone(),
            changes: None,
        }
    }

    /// Runs `f` on the writer thread inside the next group commit; returns once it committed
    /// durably (with `Sync::Full`, fsynced): for what an acknowledgement promises to keep.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.writer.run(true, f).await
    }

    /// Like [`Self::write`], for writes whose loss in a power cut only repeats work: claims,
    /// settlements, attempt records, retention. Their commits skip the fsync unless a durable
    /// write shares the transaction; a later durable commit makes them durable too.
    async fn write_relaxed<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.writer.run(false, f).await
    }

    /// Why the store cannot take writes, while the last write failed for lack of space or with
    /// an I/O error and no write has succeeded since.
    pub fn storage_fault(&self) -> Option<String> {
        self.writer.fault()
    }

    /// Readiness of the store: reachable, and able to take writes.
    async fn ready(&self) -> Result<()> {
        if let Some(fault) = self.storage_fault() {
            return Err(StoreError::full(fault));
        }
        self.write_relaxed(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(sql))
            .await
    }

    /// Runs `f` on a pooled read-only connection off the async runtime.
    ///
    /// The blocking task owns the permit and the connection and gives the connection back
    /// before the permit goes, so a caller that is cancelled mid-read (a client that hung up)
    /// cannot shrink the pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let permit = self
            .reader_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::unavailable("store closed"))?;
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .expect("a permit means a reader");
            let out = f(&conn);
            readers.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            drop(permit);
            out
        })
        .await
        .map_err(|e| StoreError::backend(format!("reader task: {e}")))?
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn from_ms(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The store's error for a driver error (`.map_err(sql)`).
pub(crate) fn sql(e: rusqlite::Error) -> StoreError {
    {
        match e {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                StoreError::Unavailable("the database is busy".into(), Some(Box::new(e)))
            }
            e if is_storage_fault(&e) => {
                StoreError::Full("the database cannot grow".into(), Some(Box::new(e)))
            }
            other => StoreError::Backend("sqlite".into(), Some(Box::new(other))),
        }
    }
}

/// A write failed because the disk or the size limit is full, or the file gives I/O errors.
pub(crate) fn is_storage_fault(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure)
    )
}

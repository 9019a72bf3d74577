//! The single writer thread: group commit for every write of the SQLite backend.
//!
//! Callers send closures; the thread takes all that are waiting (up to a cap), runs each in its
//! own savepoint inside one transaction, commits once, and only then answers each caller. A
//! failing closure rolls back its own savepoint and leaves the others in the batch intact.
//!
//! Storage faults: when an operation or the commit fails because the disk (or the size limit)
//! is full or the file gives I/O errors, the writer records the fault; readiness reports it.
//! The fault clears only when a later transaction that changed rows commits, because a batch
//! of reads commits fine on a full disk and proves nothing.

use std::sync::Arc;
use std::thread;

use parking_lot::Mutex;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::Sync;
use herald_core::backend::Result;
use herald_core::error::chain;
use herald_core::error::StoreError;

/// Most operations one transaction takes.
const MAX_BATCH: usize = 4096;
const QUEUE: usize = 16 * 1024;

type Reply = Box<dyn FnOnce(Option<&str>) + Send>;
/// Runs an operation; its reply, and the storage fault it hit, if any.
type Run = Box<dyn FnOnce(&Connection) -> (Reply, Option<String>) + Send>;

struct Op {
    /// Needs an fsync before it is acknowledged (with `Sync::Full`).
    durable: bool,
    run: Run,
}

/// The last storage fault, shared by the writer thread and readiness.
type Fault = Arc<Mutex<Option<String>>>;

pub struct Writer {
    tx: mpsc::Sender<Op>,
    fault: Fault,
}

impl Writer {
    pub fn start(conn: Connection, sync: Sync) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Op>(QUEUE);
        let fault = Fault::default();
        let shared = fault.clone();
        thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || run(conn, sync, rx, shared))
            .map_err(|e| StoreError::backend(format!("spawn writer: {e}")))?;
        Ok(Self { tx, fault })
    }

    /// The storage fault of the last write, until a write succeeds again.
    pub fn fault(&self) -> Option<String> {
        self.fault.lock().clone()
    }

    pub async fn run<T, F>(&self, durable: bool, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel::<Result<T>>();
        let op = Op {
            durable,
            run: Box::new(move |conn: &Connection| {
                let out = in_savepoint(conn, f);
                let fault = match &out {
                    Err(e @ StoreError::Full(..)) => Some(e.chain()),
                    _ => None,
                };
                let reply: Reply = Box::new(move |commit_error: Option<&str>| {
                    // An operation's own error says more than the commit failure it caused.
                    let out = match (commit_error, out) {
                        (_, Err(e)) => Err(e),
                        (None, ok) => ok,
                        (Some(e), Ok(_)) => {
                            Err(StoreError::unavailable(format!("commit failed: {e}")))
                        }
                    };
                    let _ = reply_tx.send(out);
                });
                (reply, fault)
            }),
        };
        self.tx
            .send(op)
            .await
            .map_err(|_| StoreError::unavailable("SQLite writer stopped"))?;
        reply_rx
            .await
            .map_err(|_| StoreError::unavailable("the SQLite transaction could not start"))?
    }
}

fn in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    statement(conn, "SAVEPOINT op").map_err(super::sql)?;
    match f(conn) {
        Ok(v) => {
            statement(conn, "RELEASE op").map_err(super::sql)?;
            Ok(v)
        }
        // SQLite already rolled the whole transaction back: nothing is left to undo.
        Err(e) if conn.is_autocommit() => Err(e),
        Err(e) => {
            statement(conn, "ROLLBACK TO op").map_err(super::sql)?;
            statement(conn, "RELEASE op").map_err(super::sql)?;
            Err(e)
        }
    }
}

fn run(conn: Connection, sync: Sync, mut rx: mpsc::Receiver<Op>, fault: Fault) {
    let mut batch: Vec<Op> = Vec::with_capacity(MAX_BATCH);
    let mut replies: Vec<Reply> = Vec::with_capacity(MAX_BATCH);
    let mut full = sync == Sync::Full;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        // fsync only transactions that carry a durable write.
        let want_full = sync == Sync::Full && batch.iter().any(|op| op.durable);
        if want_full != full {
            let pragma = if want_full {
                "PRAGMA synchronous=FULL"
            } else {
                "PRAGMA synchronous=NORMAL"
            };
            match conn.execute_batch(pragma) {
                Ok(()) => full = want_full,
                Err(e) => tracing::error!(error = %chain(&e), "SQLite synchronous switch failed"),
            }
        }
        if let Err(e) = statement(&conn, "BEGIN IMMEDIATE") {
            // Nothing ran; dropping the operations tells each caller the store is unavailable.
            tracing::error!(error = %chain(&e), ops = batch.len(), "SQLite BEGIN failed");
            batch.clear();
            continue;
        }
        let changes_before = conn.total_changes();
        let mut hit = None;
        for op in batch.drain(..) {
            // SQLite rolls the whole transaction back on some errors (SQLITE_FULL, I/O errors).
            // Later operations would then run and commit one by one outside it, so they are
            // dropped instead: their callers hear that the transaction failed.
            if conn.is_autocommit() {
                continue;
            }
            let (reply, op_fault) = (op.run)(&conn);
            replies.push(reply);
            hit = hit.or(op_fault);
        }
        let commit = statement(&conn, "COMMIT");
        if let Err(e) = &commit {
            if super::is_storage_fault(e) {
                hit = hit.or(Some(e.to_string()));
            }
        }
        let err = commit.err().map(|e| e.to_string());
        if err.is_some() {
            let _ = statement(&conn, "ROLLBACK");
            tracing::error!(error = ?err, "SQLite commit failed");
        }
        {
            let mut f = fault.lock();
            if let Some(m) = hit {
                if f.is_none() {
                    tracing::error!(error = %m, "SQLite storage fault: writes fail until space is freed");
                }
                *f = Some(m);
            } else if err.is_none() && conn.total_changes() > changes_before && f.is_some() {
                tracing::info!("SQLite writes succeed again");
                *f = None;
            }
        }
        for reply in replies.drain(..) {
            reply(err.as_deref());
        }
    }
}

/// Runs a parameterless statement through the statement cache (these run on every batch).
fn statement(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

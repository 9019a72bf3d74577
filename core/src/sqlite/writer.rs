//! The single writer thread: group commit for every write of the SQLite backend.
//!
//! Callers send closures; the thread takes all that are waiting (up to a cap), runs each in its
//! own savepoint inside one transaction, commits once, and only then answers each caller. A
//! failing closure rolls back its own savepoint and leaves the others in the batch intact.

use std::thread;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::Sync;
use crate::backend::Result;
use crate::error::StoreError;

/// Most operations one transaction takes.
const MAX_BATCH: usize = 4096;
const QUEUE: usize = 16 * 1024;

type Reply = Box<dyn FnOnce(Option<&str>) + Send>;

struct Op {
    /// Needs an fsync before it is acknowledged (with `Sync::Full`).
    durable: bool,
    run: Box<dyn FnOnce(&Connection) -> Reply + Send>,
}

pub struct Writer {
    tx: mpsc::Sender<Op>,
}

impl Writer {
    pub fn start(conn: Connection, sync: Sync) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Op>(QUEUE);
        thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || run(conn, sync, rx))
            .map_err(|e| StoreError::Backend(format!("spawn writer: {e}")))?;
        Ok(Self { tx })
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
                Box::new(move |commit_error: Option<&str>| {
                    let out = match commit_error {
                        None => out,
                        Some(e) => Err(StoreError::Unavailable(format!("commit failed: {e}"))),
                    };
                    let _ = reply_tx.send(out);
                })
            }),
        };
        self.tx
            .send(op)
            .await
            .map_err(|_| StoreError::Unavailable("SQLite writer stopped".into()))?;
        reply_rx
            .await
            .map_err(|_| StoreError::Unavailable("the SQLite transaction could not start".into()))?
    }
}

fn in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    statement(conn, "SAVEPOINT op")?;
    match f(conn) {
        Ok(v) => {
            statement(conn, "RELEASE op")?;
            Ok(v)
        }
        Err(e) => {
            statement(conn, "ROLLBACK TO op")?;
            statement(conn, "RELEASE op")?;
            Err(e)
        }
    }
}

fn run(conn: Connection, sync: Sync, mut rx: mpsc::Receiver<Op>) {
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
                Err(e) => tracing::error!(error = %e, "SQLite synchronous switch failed"),
            }
        }
        if let Err(e) = statement(&conn, "BEGIN IMMEDIATE") {
            // Nothing ran; dropping the operations tells each caller the store is unavailable.
            tracing::error!(error = %e, ops = batch.len(), "SQLite BEGIN failed");
            batch.clear();
            continue;
        }
        for op in batch.drain(..) {
            replies.push((op.run)(&conn));
        }
        let err = statement(&conn, "COMMIT").err().map(|e| e.to_string());
        if err.is_some() {
            let _ = statement(&conn, "ROLLBACK");
            tracing::error!(error = ?err, "SQLite commit failed");
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

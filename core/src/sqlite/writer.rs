//! The single writer thread: group commit for every write of the SQLite backend.
//!
//! Callers send closures; the thread takes all that are waiting (up to a cap), runs each in its
//! own savepoint inside one transaction, commits once, and only then answers each caller. A
//! failing closure rolls back its own savepoint and leaves the others in the batch intact.

use std::thread;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::backend::Result;
use crate::error::StoreError;

/// Most operations one transaction takes.
const MAX_BATCH: usize = 4096;
const QUEUE: usize = 16 * 1024;

type Reply = Box<dyn FnOnce(Option<&str>) + Send>;
type Op = Box<dyn FnOnce(&Connection) -> Reply + Send>;

pub struct Writer {
    tx: mpsc::Sender<Op>,
}

impl Writer {
    pub fn start(conn: Connection) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Op>(QUEUE);
        thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || run(conn, rx))
            .map_err(|e| StoreError::Backend(format!("spawn writer: {e}")))?;
        Ok(Self { tx })
    }

    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel::<Result<T>>();
        let op: Op = Box::new(move |conn: &Connection| {
            let out = in_savepoint(conn, f);
            Box::new(move |commit_error: Option<&str>| {
                let out = match commit_error {
                    None => out,
                    Some(e) => Err(StoreError::Unavailable(format!("commit failed: {e}"))),
                };
                let _ = reply_tx.send(out);
            })
        });
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
    // Cached statements: this runs once per operation on the hot path.
    conn.prepare_cached("SAVEPOINT op")?.execute([])?;
    match f(conn) {
        Ok(v) => {
            conn.prepare_cached("RELEASE op")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            conn.prepare_cached("ROLLBACK TO op")?.execute([])?;
            conn.prepare_cached("RELEASE op")?.execute([])?;
            Err(e)
        }
    }
}

fn run(conn: Connection, mut rx: mpsc::Receiver<Op>) {
    let mut batch: Vec<Op> = Vec::with_capacity(MAX_BATCH);
    let mut replies: Vec<Reply> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            // Nothing ran; dropping the operations tells each caller the store is unavailable.
            tracing::error!(error = %e, ops = batch.len(), "SQLite BEGIN failed");
            batch.clear();
            continue;
        }
        for op in batch.drain(..) {
            replies.push(op(&conn));
        }
        let committed = conn.execute_batch("COMMIT");
        let err = committed.as_ref().err().map(|e| e.to_string());
        if err.is_some() {
            let _ = conn.execute_batch("ROLLBACK");
            tracing::error!(error = ?err, "SQLite commit failed");
        }
        for reply in replies.drain(..) {
            reply(err.as_deref());
        }
    }
}

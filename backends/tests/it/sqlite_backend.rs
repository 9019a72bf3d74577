//! The SQLite backend against the shared behavioural suite, on real files.

use std::time::Duration;

use herald_backends::sqlite::{Sqlite, Sync};
use herald_core::testkit;

/// The directory of a suite check's database, which lives as long as the check.
struct Files(tempfile::TempDir);

impl Files {
    fn db(&self) -> std::path::PathBuf {
        self.0.path().join("suite.db")
    }
}

impl herald_testenv::suite::Rewind for Files {
    /// Moves the keys' recorded time back, through a connection of its own (the store's
    /// writer waits for it like for any other writer).
    async fn age_idempotency_keys(&self, by: Duration) {
        let c = rusqlite::Connection::open(self.db()).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute(
            "UPDATE idempotency SET created_at = created_at - ?1",
            [by.as_millis() as i64],
        )
        .unwrap();
    }
}

/// A fresh backend on its own file.
async fn fresh() -> (herald_core::backend::Backend, Files) {
    let files = Files(tempfile::tempdir().unwrap());
    let backend = Sqlite::open(&files.db(), Sync::Full).unwrap().backend();
    (backend, files)
}

herald_testenv::backend_suite!(fresh);

#[tokio::test]
async fn sqlite_reopens_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reopen.db");
    {
        let db = Sqlite::open(&path, Sync::Full).unwrap().backend();
        db.subscriptions
            .insert(&testkit::subscription("sub_keep"))
            .await
            .unwrap();
        db.intake
            .publish(testkit::publish("msg_keep", &["sub_keep"], b"{\"k\":1}"))
            .await
            .unwrap();
    }
    let db = Sqlite::open(&path, Sync::Full).unwrap().backend();
    assert!(db
        .subscriptions
        .get(&"sub_keep".into())
        .await
        .unwrap()
        .is_some());
    let jobs = db
        .queue
        .claim(&testkit::claim_request(
            "wrk_reopen",
            10,
            std::time::Duration::from_secs(5),
        ))
        .await
        .unwrap()
        .jobs;
    assert_eq!(jobs.len(), 1);
    assert_eq!(&jobs[0].payload[..], b"{\"k\":1}");
}

#[test]
fn a_missing_directory_is_a_clear_error() {
    let err = Sqlite::open(
        std::path::Path::new("/nonexistent-dir/x/herald.db"),
        Sync::Full,
    )
    .err()
    .expect("fails");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_reads_do_not_shrink_the_reader_pool() {
    let dir = tempfile::tempdir().unwrap();
    let db = Sqlite::open(&dir.path().join("cancel.db"), Sync::Normal)
        .unwrap()
        .backend();
    db.subscriptions
        .insert(&testkit::subscription("sub_c"))
        .await
        .unwrap();
    // Callers that go away mid-read, as an axum handler does when its client hangs up: many
    // reads in flight, all cancelled a moment later, some while a connection is in use.
    for _ in 0..20 {
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let store = db.subscriptions.clone();
                tokio::spawn(async move { store.list_all().await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_micros(300)).await;
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
    for _ in 0..50 {
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            db.subscriptions.get(&"sub_c".into()),
        )
        .await
        .expect("a reader is free")
        .unwrap();
        assert!(got.is_some());
    }
}

#[tokio::test]
async fn the_wal_shrinks_after_a_burst() {
    use herald_core::model::{Event, Publish};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.db");
    let db = Sqlite::open(&path, Sync::Normal).unwrap().backend();
    let wal = dir.path().join("wal.db-wal");
    let payload = bytes::Bytes::from(vec![b'7'; 100_000]);
    // A burst of concurrent ingests lands in few large transactions: a WAL of tens of MiB.
    let publish = |i: usize| {
        let q = db.intake.clone();
        let payload = payload.clone();
        tokio::spawn(async move {
            q.publish(Publish {
                event: Event {
                    webhook_id: format!("msg_{i}").into(),
                    event_type: None,
                    payload,
                    received_at: chrono::Utc::now(),
                },
                subscription_ids: vec!["sub_a".into()],
                idempotency: None,
            })
            .await
            .unwrap()
        })
    };
    let burst: Vec<_> = (0..600).map(publish).collect();
    for t in burst {
        t.await.unwrap();
    }
    let peak = std::fs::metadata(&wal).unwrap().len();
    // At the limit already means a checkpoint during the burst truncated it to the limit.
    assert!(peak >= WAL_LIMIT, "the burst grew the WAL to {peak}");
    // Small writes after the burst: each commit checkpoints, and a reset truncates the file.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut i = 1000;
    loop {
        publish(i).await.unwrap();
        i += 1;
        let size = std::fs::metadata(&wal).unwrap().len();
        if size <= WAL_LIMIT {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL stayed at {size} bytes after the burst (peak {peak})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `journal_size_limit` of the SQLite backend.
const WAL_LIMIT: u64 = 16 * 1024 * 1024;

//! The SQLite backend against the shared behavioural suite, on real files.

use herald_core::sqlite::{Sqlite, Sync};
use herald_core::testkit;

/// A fresh backend on its own file; the directory lives as long as the test.
async fn fresh() -> (herald_core::backend::Backend, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Sqlite::open(&dir.path().join("suite.db"), Sync::Full)
        .unwrap()
        .backend();
    (backend, dir)
}

herald_core::backend_suite!(fresh);

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
        db.queue
            .publish(testkit::publish("msg_keep", &["sub_keep"], b"{\"k\":1}"))
            .await
            .unwrap();
    }
    let db = Sqlite::open(&path, Sync::Full).unwrap().backend();
    assert!(db.subscriptions.get("sub_keep").await.unwrap().is_some());
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
            db.subscriptions.get("sub_c"),
        )
        .await
        .expect("a reader is free")
        .unwrap();
        assert!(got.is_some());
    }
}

//! The `herald-delivery` binary as a process of its own: it delivers what another process queued
//! in the same SQLite file, stops cleanly on SIGTERM, and `cleanup` sweeps old records.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use herald_backends::sqlite::{Sqlite, Sync};
use herald_core::testkit;
use herald_testenv::process::{self, Child};
use herald_testenv::{free_port, wait_for, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_herald-delivery");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_what_another_process_queued_and_stops_on_sigterm() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap| {
            let log = log.clone();
            async move {
                log.lock()
                    .unwrap()
                    .push(headers["webhook-id"].to_str().unwrap().to_string());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let db = Sqlite::open(&path, Sync::Normal).unwrap().backend();
    let mut sub = testkit::subscription("sub_worker");
    sub.target_url = format!("http://127.0.0.1:{port}/hook");
    db.subscriptions.insert(&sub).await.unwrap();
    for i in 0..20 {
        db.intake
            .publish(testkit::publish(
                &format!("msg_w{i}"),
                &["sub_worker"],
                b"{}",
            ))
            .await
            .unwrap();
    }

    let mut child = Child::spawn(
        process::command(BIN)
            .env("HERALD_SQLITE_PATH", &path)
            .env("HERALD_ALLOW_TARGETS", "127.0.0.0/8"),
        "herald-delivery",
    );
    wait_for("20 deliveries", Duration::from_secs(15), || async {
        seen.lock().unwrap().len() >= 20
    })
    .await;
    // The worker recorded the attempts in the shared file.
    wait_for("20 attempts recorded", Duration::from_secs(5), || async {
        db.attempts
            .by_subscription("sub_worker", 100)
            .await
            .unwrap()
            .len()
            >= 20
    })
    .await;
    let status = child.terminate_and_wait(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");

    // `cleanup` with a zero retention sweeps every settled record.
    let out = Command::new(BIN)
        .env_clear()
        .env("HERALD_SQLITE_PATH", &path)
        .env("HERALD_RETENTION", "0s")
        .arg("cleanup")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(db
        .attempts
        .by_subscription("sub_worker", 100)
        .await
        .unwrap()
        .is_empty());
    assert!(db.intake.webhook("msg_w0").await.unwrap().is_none());
}

#[test]
fn a_missing_store_directory_is_a_clear_error() {
    let out = Command::new(BIN)
        .env_clear()
        .env("HERALD_SQLITE_PATH", "/nonexistent-herald-dir/h.db")
        .arg("cleanup")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_listener_answers_while_workers_run() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Child::spawn(
        process::command(BIN)
            .env("HERALD_SQLITE_PATH", dir.path().join("h.db"))
            .env("HERALD_HEALTH_ADDR", format!("127.0.0.1:{port}")),
        "herald-delivery",
    );
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let r = wait_until("the health listener", Duration::from_secs(15), || async {
        client.get(&url).send().await.ok()
    })
    .await;
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert_eq!(body, r#"{"status":"ok"}"#);
    let metrics = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));

    assert!(child.terminate_and_wait(Duration::from_secs(15)).success());
    assert!(client.get(&url).send().await.is_err(), "listener closed");
}

#[test]
fn a_taken_health_port_fails_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = Command::new(BIN)
        .env_clear()
        .env("HERALD_SQLITE_PATH", dir.path().join("h.db"))
        .env(
            "HERALD_HEALTH_ADDR",
            taken.local_addr().unwrap().to_string(),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HERALD_HEALTH_ADDR"), "{err}");
}

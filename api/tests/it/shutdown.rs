//! The `herald` binary under SIGTERM with a client that never finishes its request: the grace
//! is a hard deadline.

use crate::common;

use std::time::{Duration, Instant};

use common::Api;
use herald_testenv::process::{self, Child};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_grace_although_a_request_body_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let port = herald_testenv::free_port();
    let mut child = Child::spawn(
        process::command(env!("CARGO_BIN_EXE_herald"))
            .env("HERALD_ADDR", format!("127.0.0.1:{port}"))
            .env("HERALD_SQLITE_PATH", dir.path().join("grace.db"))
            .env("HERALD_SHUTDOWN_GRACE", "2s")
            // Longer than the test: only the grace can end the stuck request.
            .env("HERALD_HEADER_TIMEOUT", "5m")
            .env("HERALD_BODY_TIMEOUT", "5m"),
        "the herald binary",
    );
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    api.wait_ready().await;

    let mut stuck = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stuck
        .write_all(
            b"POST /subscriptions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    // Let the server take the request into a handler.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    child.terminate();
    let status = herald_testenv::wait_until(
        "herald to exit after SIGTERM with a 2 s grace",
        Duration::from_secs(15),
        || std::future::ready(child.try_wait().unwrap()),
    )
    .await;
    let took = started.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took < Duration::from_secs(2 + 5),
        "exited {took:?} after SIGTERM"
    );
    assert!(
        took >= Duration::from_millis(1900),
        "exited after {took:?}: the open request got less than its grace"
    );
    drop(stuck);
}

//! The `herald` binary under SIGTERM with a client that never finishes its request: the grace
//! is a hard deadline.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Api;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_grace_although_a_request_body_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HERALD_ADDR", format!("127.0.0.1:{port}"))
        .env("HERALD_SQLITE_PATH", dir.path().join("grace.db"))
        .env("HERALD_SHUTDOWN_GRACE", "2s")
        // Longer than the test: only the grace can end the stuck request.
        .env("HERALD_HEADER_TIMEOUT", "5m")
        .env("HERALD_BODY_TIMEOUT", "5m")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the herald binary starts");
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
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut status = None;
    for _ in 0..300 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    let Some(status) = status else {
        child.kill().unwrap();
        child.wait().unwrap();
        panic!("still running {took:?} after SIGTERM with a 2 s grace");
    };
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

//! `herald healthcheck`, the container HEALTHCHECK: exit 0 only while the api answers 200.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use herald_testenv::process::{self, Child};
use herald_testenv::{free_port, wait_until_blocking};

fn healthcheck(envs: &[(&str, String)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg("healthcheck")
        .args(args)
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run herald healthcheck")
}

#[test]
fn healthcheck_passes_against_a_running_api_and_fails_once_it_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let herald = Child::spawn(
        process::command(env!("CARGO_BIN_EXE_herald"))
            .env("HERALD_ADDR", &addr)
            .env("HERALD_SQLITE_PATH", dir.path().join("hc.db"))
            .env("HERALD_WORKERS", "false"),
        "herald",
    );

    // Without --url the check derives the endpoint from HERALD_ADDR, as in the image.
    let env = [("HERALD_ADDR", addr.clone())];
    wait_until_blocking("herald healthy", Duration::from_secs(30), || {
        let out = healthcheck(&env, &["--timeout", "1s"]);
        assert!(
            out.status.success() || out.status.code() == Some(1),
            "{out:?}"
        );
        out.status.success().then_some(())
    });
    let url = format!("http://{addr}/healthz");
    assert!(healthcheck(&[], &["--url", &url]).status.success());

    drop(herald);
    let out = healthcheck(&env, &["--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unhealthy"), "{stderr}");
}

/// One HTTP answer per connection, `conns` times, on a loopback port.
fn answer_with(status_line: &'static str, conns: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(conns) {
            let mut s = stream.unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let body = r#"{"status":"unavailable"}"#;
            let _ = write!(
                s,
                "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn healthcheck_fails_on_any_answer_but_200() {
    for status in [
        "HTTP/1.1 503 Service Unavailable",
        "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:1/healthz",
        "HTTP/1.1 404 Not Found",
    ] {
        let port = answer_with(status, 1);
        let url = format!("http://127.0.0.1:{port}/healthz");
        let out = healthcheck(&[], &["--url", &url, "--timeout", "2s"]);
        assert_eq!(out.status.code(), Some(1), "{status}: {out:?}");
    }
}

#[test]
fn healthcheck_gives_up_within_its_timeout() {
    // A listener that accepts and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/healthz", listener.local_addr().unwrap());
    let start = Instant::now();
    let out = healthcheck(&[], &["--url", &url, "--timeout", "500ms"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    drop(listener);
}

//! End to end with every binary as a local process: `herald-operator`, a `herald` api process
//! (`HERALD_WORKERS=false`) and a `herald-delivery` process on FerretDB + Redis, against the
//! test control plane, driven with kubectl and plain HTTP as a person would:
//!
//! the example manifest → `Ready=True` and `subscriptionId` → an event ingested at
//! `/ingest/<subscriptionId>` reaches a loopback receiver signed with the Secret's key →
//! changed `eventTypes` and a rotated Secret take effect on the next ingests and deliveries →
//! REST `DELETE` of the operator's subscription is 409 → `kubectl delete` removes the record.
//!
//! `herald` and `herald-delivery` are other packages' binaries: `cargo test --workspace`
//! builds them first; a narrower run needs `cargo build -p herald-api -p herald-delivery`.

use crate::common::kubectl;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::signing::SigningKey;
use herald_testenv::process::{self, Child as Proc};
use herald_testenv::{free_port, wait_until_blocking as eventually};

const OLD_SECRET: &str = "change-me-to-a-long-random-secret";
const NEW_SECRET: &str = "the-rotated-secret-0123456789";
const API_KEY: &str = "full-stack-api-key";

fn sibling(name: &str, package: &str) -> PathBuf {
    process::sibling(env!("CARGO_BIN_EXE_herald-operator"), name, package)
}

/// One HTTP/1.1 request on the loopback: the status and the body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[derive(Debug, Clone)]
struct Delivery {
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A receiver on the loopback that answers 200 to everything and keeps what it got.
fn receiver() -> (u16, Arc<Mutex<Vec<Delivery>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let keep = keep.clone();
            std::thread::spawn(move || serve(conn, &keep));
        }
    });
    (port, got)
}

fn serve(conn: TcpStream, keep: &Mutex<Vec<Delivery>>) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        keep.lock().unwrap().push(Delivery { headers, body });
        let mut w = &conn;
        if w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

/// Whether the delivery carries a valid Standard Webhooks signature made with `secret`.
fn signed_with(d: &Delivery, secret: &str) -> bool {
    let (Some(id), Some(ts), Some(sigs)) = (
        d.headers.get("webhook-id"),
        d.headers.get("webhook-timestamp"),
        d.headers.get("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(ts) = ts.parse::<i64>() else {
        return false;
    };
    let want = SigningKey::from_secret(secret)
        .unwrap()
        .standard_signature(id, ts, &d.body);
    sigs.split_whitespace().any(|s| s == want)
}

fn hub(secret: &str, body: &[u8]) -> String {
    SigningKey::from_secret(secret).unwrap().hub_signature(body)
}

fn status_of(kubeconfig: &Path, ns: &str, path: &str) -> String {
    kubectl(
        kubeconfig,
        &[
            "get",
            "whs",
            "orders",
            "-n",
            ns,
            "-o",
            &format!("jsonpath={path}"),
        ],
        None,
    )
}

#[test]
fn kubectl_to_signed_delivery_and_back() {
    let Some(kubeconfig) = herald_testenv::kubeconfig() else {
        return;
    };
    let (Some(mongo), Some(redis)) = (herald_testenv::mongo_uri(), herald_testenv::redis_url())
    else {
        return;
    };
    let (api_bin, delivery_bin) = (
        sibling("herald", "herald-api"),
        sibling("herald-delivery", "herald-delivery"),
    );
    let database = herald_testenv::unique_name("stack").replace('-', "_");
    let prefix = herald_testenv::unique_name("stack");
    let ns = herald_testenv::unique_name("whs-stack");
    let env = |cmd: &mut Command| {
        cmd.env("MONGO_URI", &mongo)
            .env("HERALD_MONGO_DATABASE", &database)
            .env("REDIS_URL", &redis)
            .env("HERALD_REDIS_PREFIX", &prefix)
            .env("HERALD_ALLOW_TARGETS", "127.0.0.0/8")
            .env("HERALD_API_KEY", API_KEY)
            .env("HERALD_RETRY_SCHEDULE", "200ms,200ms");
    };

    let crd = Command::new(env!("CARGO_BIN_EXE_herald-operator"))
        .arg("crd")
        .output()
        .unwrap()
        .stdout;
    kubectl(
        &kubeconfig,
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&crd),
    );
    kubectl(
        &kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/webhooksubscriptions.herald.dev",
        ],
        None,
    );
    kubectl(&kubeconfig, &["create", "namespace", &ns], None);

    let api_port = free_port();
    let mut cmd = process::command(&api_bin);
    env(&mut cmd);
    let _api = Proc::spawn(
        cmd.env("HERALD_ADDR", format!("127.0.0.1:{api_port}"))
            .env("HERALD_WORKERS", "false"),
        "herald",
    );
    let mut cmd = process::command(&delivery_bin);
    env(&mut cmd);
    let _delivery = Proc::spawn(
        cmd.env("HERALD_HEALTH_ADDR", format!("127.0.0.1:{}", free_port())),
        "herald-delivery",
    );
    let op_port = free_port();
    let mut cmd = process::command(env!("CARGO_BIN_EXE_herald-operator"));
    env(&mut cmd);
    let _operator = Proc::spawn(
        cmd.env("KUBECONFIG", &kubeconfig)
            .env("HERALD_OPERATOR_ADDR", format!("127.0.0.1:{op_port}"))
            .env("HERALD_OPERATOR_WATCH_NAMESPACE", &ns),
        "herald-operator",
    );
    eventually("the api to be ready", Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", api_port))
            .ok()
            .and_then(|_| (http(api_port, "GET", "/readyz", &[], b"").0 == 200).then_some(()))
    });

    // The example, pointed at this test's receiver.
    let (rport, got) = receiver();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/webhooksubscription.yaml"),
    )
    .unwrap();
    assert!(example.contains("http://127.0.0.1:9000/hooks/orders"));
    let manifest = example.replace(
        "http://127.0.0.1:9000/hooks/orders",
        &format!("http://127.0.0.1:{rport}/hooks/orders"),
    );
    kubectl(
        &kubeconfig,
        &["apply", "-n", &ns, "-f", "-"],
        Some(manifest.as_bytes()),
    );
    let id = eventually(
        "orders to be Ready with an id",
        Duration::from_secs(30),
        || {
            let ready = status_of(
                &kubeconfig,
                &ns,
                r#"{.status.conditions[?(@.type=="Ready")].status}"#,
            );
            let id = status_of(&kubeconfig, &ns, "{.status.subscriptionId}");
            (ready == "True" && !id.is_empty()).then_some(id)
        },
    );

    // The record is in MongoDB, behind the api.
    let auth = format!("Bearer {API_KEY}");
    let (code, body) = http(
        api_port,
        "GET",
        &format!("/subscriptions/{id}"),
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("order.created") && body.contains("X-Team"),
        "{body}"
    );

    // An ingested event reaches the receiver, signed with the Secret's key.
    let ingest = |event_type: &str, secret: &str, n: u32| {
        let body = format!(r#"{{"order":{n}}}"#);
        http(
            api_port,
            "POST",
            &format!("/ingest/{id}"),
            &[
                ("Content-Type", "application/json"),
                ("Event-Type", event_type),
                ("X-Hub-Signature-256", &hub(secret, body.as_bytes())),
            ],
            body.as_bytes(),
        )
    };
    let (code, body) = ingest("order.created", OLD_SECRET, 1);
    assert_eq!(code, 202, "{body}");
    let first = eventually("the first delivery", Duration::from_secs(20), || {
        got.lock().unwrap().first().cloned()
    });
    assert_eq!(first.body, br#"{"order":1}"#);
    assert!(signed_with(&first, OLD_SECRET), "{:?}", first.headers);

    // Changed event types reach the api: the old type is refused, the new one accepted.
    kubectl(
        &kubeconfig,
        &[
            "patch",
            "whs",
            "orders",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"eventTypes":["order.refunded"]}}"#,
        ],
        None,
    );
    eventually(
        "order.created to be refused",
        Duration::from_secs(20),
        || (ingest("order.created", OLD_SECRET, 2).0 == 422).then_some(()),
    );
    assert_eq!(ingest("order.refunded", OLD_SECRET, 3).0, 202);

    // A rotated Secret reaches the deliveries; the old key still signs during the overlap.
    let rotated = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: orders-webhook, labels: {{herald.dev/webhook-secret: \"true\"}}}}\nstringData: {{secret: {NEW_SECRET}}}\n"
    );
    kubectl(
        &kubeconfig,
        &["apply", "-n", &ns, "-f", "-"],
        Some(rotated.as_bytes()),
    );
    let mut n = 10;
    let signed = eventually(
        "a delivery signed with the rotated secret",
        Duration::from_secs(30),
        || {
            n += 1;
            // The old key stays valid for ingest through the overlap, before and after the change.
            assert_eq!(ingest("order.refunded", OLD_SECRET, n).0, 202);
            std::thread::sleep(Duration::from_millis(300));
            got.lock()
                .unwrap()
                .iter()
                .find(|d| signed_with(d, NEW_SECRET))
                .cloned()
        },
    );
    assert!(
        signed_with(&signed, OLD_SECRET),
        "both keys sign during the overlap"
    );

    // The REST API may not change or delete what the operator owns.
    let (code, body) = http(
        api_port,
        "DELETE",
        &format!("/subscriptions/{id}"),
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("WebhookSubscription") || body.contains(&ns),
        "{body}"
    );

    // kubectl delete: the finalizer removes the record, then the resource goes.
    kubectl(
        &kubeconfig,
        &["delete", "whs", "orders", "-n", &ns, "--timeout=30s"],
        None,
    );
    let (code, _) = http(
        api_port,
        "GET",
        &format!("/subscriptions/{id}"),
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(code, 404);
    let left = kubectl(&kubeconfig, &["get", "whs", "-n", &ns, "-o", "name"], None);
    assert_eq!(left.trim(), "");
}

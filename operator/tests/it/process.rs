//! The `herald-operator` binary as a process: `crd` prints what `crds/` holds and the API
//! server accepts it; `run` (the default) on the production store reconciles the example through
//! kubectl, serves its probes, and on SIGTERM finishes, frees its Lease and exits 0; a SIGKILLed
//! leader is replaced by its standby once its Lease runs out.

use crate::common::kubectl;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herald_testenv::process::Child;
use herald_testenv::{free_port, wait_until_blocking, Scratch};

const BIN: &str = env!("CARGO_BIN_EXE_herald-operator");

fn repo(relative: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

#[test]
fn the_crd_subcommand_prints_the_checked_in_crd() {
    let out = Command::new(BIN).arg("crd").output().unwrap();
    assert!(out.status.success());
    let on_disk = std::fs::read(repo("crds/webhooksubscription.yaml")).unwrap();
    assert!(
        out.stdout == on_disk,
        "`herald-operator crd` differs from crds/"
    );
}

/// Applies the CRD `crd` prints and waits until the API server serves it.
fn install_crd(kubeconfig: &Path) {
    let crd = Command::new(BIN).arg("crd").output().unwrap().stdout;
    kubectl(
        kubeconfig,
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&crd),
    );
    kubectl(
        kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/webhooksubscriptions.herald.dev",
        ],
        None,
    );
}

fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    wait_until_blocking(what, limit, || check().then_some(()))
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn run_reconciles_serves_probes_and_stops_cleanly_on_sigterm() {
    let Some(kubeconfig) = herald_testenv::kubeconfig() else {
        return;
    };
    let Some(store) = store() else {
        return;
    };
    install_crd(&kubeconfig);
    let ns = herald_testenv::unique_name("whs-proc");
    kubectl(&kubeconfig, &["create", "namespace", &ns], None);
    let port = free_port();
    let mut child = Child::spawn(
        with_store(&mut Command::new(BIN), &store)
            .env("KUBECONFIG", &kubeconfig)
            .env("HERALD_ALLOW_TARGETS", "127.0.0.0/8")
            .env("HERALD_OPERATOR_ADDR", format!("127.0.0.1:{port}"))
            .env("HERALD_OPERATOR_LEASE", "herald-operator")
            .env("HERALD_OPERATOR_WATCH_NAMESPACE", &ns)
            .env("POD_NAMESPACE", &ns)
            .env("POD_NAME", "proc-a")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
        "herald-operator",
    );
    eventually("/readyz to answer 200", Duration::from_secs(30), || {
        http_status(port, "/readyz") == Some(200)
    });
    assert_eq!(http_status(port, "/healthz"), Some(200));

    apply_example(&kubeconfig, &ns);
    let id = kubectl(
        &kubeconfig,
        &[
            "get",
            "whs",
            "orders",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.subscriptionId}",
        ],
        None,
    );
    assert!(id.starts_with("sub_"), "{id:?}");

    let status = child.terminate_and_wait(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
    // The lease was freed, so a standby need not wait for it to run out.
    let holder = kubectl(
        &kubeconfig,
        &[
            "get",
            "lease",
            "herald-operator",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    );
    assert_eq!(holder, "", "the lease is still held");
    // The finalizer would block deletion with no operator running: remove the resource's
    // namespace contents by dropping the finalizer, as an uninstall guide would.
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
            r#"{"metadata":{"finalizers":null}}"#,
        ],
        None,
    );
}

/// A database and key prefix of the test's own on the shared FerretDB and Redis, or `None`
/// outside `scripts/testenv.sh` (a failure in CI).
fn store() -> Option<Scratch> {
    Some(Scratch::new(
        herald_testenv::mongo_uri()?,
        herald_testenv::redis_url()?,
        "operator",
    ))
}

/// `cmd` on the production store `store` (the operator builds without SQLite).
fn with_store<'a>(cmd: &'a mut Command, store: &Scratch) -> &'a mut Command {
    cmd.env_remove("REDIS_ADDR")
        .env_remove("HERALD_SQLITE_PATH")
        .env("MONGO_URI", &store.mongo_uri)
        .env("HERALD_MONGO_DATABASE", &store.database)
        .env("REDIS_URL", &store.redis_url)
        .env("HERALD_REDIS_PREFIX", &store.prefix)
}

/// An operator process with leader election in `ns`, on `store`.
fn spawn_replica(kubeconfig: &Path, ns: &str, store: &Scratch, name: &str) -> (Child, u16) {
    let port = free_port();
    let mut cmd = Command::new(BIN);
    with_store(&mut cmd, store)
        .env("KUBECONFIG", kubeconfig)
        .env("HERALD_ALLOW_TARGETS", "127.0.0.0/8")
        .env("HERALD_OPERATOR_ADDR", format!("127.0.0.1:{port}"))
        .env("HERALD_OPERATOR_LEASE", "herald-operator")
        .env("HERALD_OPERATOR_WATCH_NAMESPACE", ns)
        .env("POD_NAMESPACE", ns)
        .env("POD_NAME", name)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    (Child::spawn(&mut cmd, "herald-operator"), port)
}

#[test]
fn a_sigkilled_leader_is_replaced_once_its_lease_runs_out() {
    let Some(kubeconfig) = herald_testenv::kubeconfig() else {
        return;
    };
    let Some(store) = store() else {
        return;
    };
    install_crd(&kubeconfig);
    let ns = herald_testenv::unique_name("whs-kill");
    kubectl(&kubeconfig, &["create", "namespace", &ns], None);
    let holder = || {
        kubectl(
            &kubeconfig,
            &[
                "get",
                "lease",
                "herald-operator",
                "-n",
                &ns,
                "-o",
                "jsonpath={.spec.holderIdentity}",
                "--ignore-not-found",
            ],
            None,
        )
    };
    let (mut a, a_port) = spawn_replica(&kubeconfig, &ns, &store, "kill-a");
    eventually("kill-a to hold the lease", Duration::from_secs(30), || {
        holder() == "kill-a"
    });
    let (mut b, b_port) = spawn_replica(&kubeconfig, &ns, &store, "kill-b");
    eventually("kill-b to answer", Duration::from_secs(30), || {
        http_status(b_port, "/healthz") == Some(200)
    });
    assert_eq!(http_status(a_port, "/healthz"), Some(200));

    // SIGKILL: no chance to free the lease. The standby takes it once it runs out (15 s).
    a.kill();
    let killed = Instant::now();
    eventually("kill-b to take the lease", Duration::from_secs(45), || {
        holder() == "kill-b"
    });
    let took = killed.elapsed();
    assert!(took <= Duration::from_secs(30), "taken over after {took:?}");
    println!("a SIGKILLed operator leader was replaced after {took:?}");

    // The new leader reconciles.
    apply_example(&kubeconfig, &ns);
    b.kill();
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
            r#"{"metadata":{"finalizers":null}}"#,
        ],
        None,
    );
}

/// Applies the README's example resource (`orders`) in `ns` and waits until it is Ready.
fn apply_example(kubeconfig: &Path, ns: &str) {
    let example = std::fs::read(repo("examples/webhooksubscription.yaml")).unwrap();
    kubectl(kubeconfig, &["apply", "-n", ns, "-f", "-"], Some(&example));
    let ready = r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#;
    eventually("orders to be Ready", Duration::from_secs(30), || {
        kubectl(
            kubeconfig,
            &["get", "whs", "orders", "-n", ns, "-o", ready],
            None,
        ) == "True"
    });
}

//! charts/herald on a real node (`scripts/testenv.sh` with the `node` server: containerd, kubelet,
//! kube-proxy, the controller manager and the scheduler around the test control plane). The
//! image is built from this workspace's binaries without Docker (scripts/build-image.sh) and
//! imported into the node's containerd; the chart is installed with the test environment's
//! FerretDB and Redis as its external stores, reached by the pods at the node's bridge address,
//! and then driven as a user would:
//!
//! 1. every pod Ready; the api's start-up log names MongoDB and Redis;
//! 2. the README's "On kind" commands, run as printed from `kubectl port-forward` on (the
//!    example subscription pointed at a receiver on the bridge address, allowed by
//!    HERALD_ALLOW_TARGETS), the signed delivery verified with the Standard Webhooks library;
//! 3. the operator's leader pod deleted: another replica takes the Lease and reconciles;
//! 4. a delivery pod deleted while a load is delivered: nothing lost (duplicates counted);
//! 5. the retention CronJob run once (`kubectl create job --from=cronjob/...`);
//! 6. `helm upgrade` with another API key: the pods roll and only the new key is accepted;
//! 7. NOTES.txt's commands run as printed, with the operator and (after an upgrade) without;
//! 8. `helm uninstall` leaves no Herald object behind.
//!
//! Without the node (HERALD_TESTENV_SERVERS without `node`) the test is skipped, or fails when
//! CI=true: scripts/test starts the node.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const RELEASE: &str = "herald";
const IMAGE_REPO: &str = "herald.local/herald";
const IMAGE_TAG: &str = "node-test";
/// The example's signing secret (examples/webhooksubscription.yaml).
const EXAMPLE_SECRET: &str = "change-me-to-a-long-random-secret";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn check(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn step(t0: Instant, what: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "node test: {:>5.1}s {what}",
        t0.elapsed().as_secs_f64()
    );
}

/// `until` polled every 250 ms for at most `secs`; panics with `what` and the last value.
fn wait_until<T: std::fmt::Debug>(
    secs: u64,
    what: &str,
    mut until: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match until() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what} within {secs}s; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// kubectl and helm against the test cluster, in the test's namespace (its own kubeconfig copy
/// has that namespace as the context's default, so the README's commands need no -n).
struct Cluster {
    kubeconfig: PathBuf,
    helm: PathBuf,
    ns: String,
    dir: PathBuf,
}

impl Cluster {
    fn kubectl_cmd(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }
    fn kubectl(&self, args: &[&str]) -> String {
        check(self.kubectl_cmd().args(args))
    }
    fn helm(&self, args: &[&str]) -> String {
        check(
            Command::new(&self.helm)
                .current_dir(root())
                .env("KUBECONFIG", &self.kubeconfig)
                .args(args),
        )
    }
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all)).expect("kubectl JSON")
    }
    /// Pods of one component, (name, ready, deleting).
    fn pods(&self, component: &str) -> Vec<(String, bool, bool)> {
        let list = self.json(&[
            "get",
            "pods",
            "-l",
            &format!(
                "app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={component}"
            ),
        ]);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let ready = p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                (
                    p["metadata"]["name"].as_str().unwrap().to_string(),
                    ready,
                    !p["metadata"]["deletionTimestamp"].is_null(),
                )
            })
            .collect()
    }
    /// Waits until the component has `n` pods, all Ready and none terminating; their names.
    fn ready(&self, component: &str, n: usize, secs: u64) -> Vec<String> {
        wait_until(secs, &format!("{n} ready {component} pods"), || {
            let pods = self.pods(component);
            if pods.len() == n && pods.iter().all(|(_, ready, deleting)| *ready && !deleting) {
                Ok(pods.into_iter().map(|p| p.0).collect())
            } else {
                Err(format!("{pods:?}"))
            }
        })
    }
    fn port_forward(&self, local: u16) -> PortForward {
        PortForward::start(self, local)
    }
}

impl Drop for Cluster {
    /// However the test ends: the release (its cluster-wide RBAC too) and the namespace go.
    fn drop(&mut self) {
        let _ = Command::new(&self.helm)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(["uninstall", RELEASE, "--ignore-not-found"])
            .output();
        let _ = self
            .kubectl_cmd()
            .args(["delete", "namespace", &self.ns, "--wait=false"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `kubectl port-forward svc/herald-api LOCAL:8000`, stopped when dropped.
struct PortForward {
    child: Child,
    port: u16,
}

impl PortForward {
    fn start(c: &Cluster, local: u16) -> Self {
        let mut child = c
            .kubectl_cmd()
            .args([
                "port-forward",
                &format!("svc/{RELEASE}-api"),
                &format!("{local}:8000"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kubectl port-forward");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Forwarding from 127.0.0.1:PORT -> 8000"
        let port = line
            .split_whitespace()
            .nth(2)
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("port-forward said: {line:?}"));
        PortForward { child, port }
    }
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test's directory (the image archive, the edited example), removed however the test ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

/// A webhook receiver on the node's bridge address (where pods reach the machine): answers 200
/// to every POST and keeps what it got.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start(ip: &str) -> Self {
        let listener = TcpListener::bind((ip, 0)).expect("bind the receiver on the node address");
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &sink);
                });
            }
        });
        Receiver { addr, got }
    }
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    fn received(&self, path: &str) -> Vec<Received> {
        self.got
            .lock()
            .expect("receiver lock")
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

/// HTTP/1.1 with keep-alive: requests with a Content-Length body, each answered 200.
fn serve(stream: std::net::TcpStream, sink: &Mutex<Vec<Received>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let mut headers = http::HeaderMap::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(k.trim().as_bytes()),
                    http::HeaderValue::from_str(v.trim()),
                ) {
                    headers.append(k, v);
                }
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        sink.lock().expect("receiver lock").push(Received {
            path,
            headers,
            body,
        });
        writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")?;
    }
}

/// Verifies a delivery with the Standard Webhooks reference library (a secret not written
/// `whsec_...` is keyed with its UTF-8 bytes, as Herald documents).
fn verifies(secret: &str, r: &Received) -> bool {
    standardwebhooks::Webhook::from_bytes(secret.as_bytes().to_vec())
        .unwrap()
        .verify(&r.body, &r.headers)
        .is_ok()
}

/// The README's "On kind" block: its commands, `\`-continued lines joined, comments kept.
fn readme_kind_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("### On kind")
        .nth(1)
        .expect("README: ### On kind");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a sh block in README's On kind");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head);
            continue;
        }
        current.push_str(line);
        out.push(std::mem::take(&mut current));
    }
    out
}

/// Whether nothing listens on 127.0.0.1:port.
fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A bash script from documented commands, run with the cluster's kubeconfig: `kubectl
/// port-forward ... &` jobs are stopped when it ends. Its output (stdout and stderr).
fn run_script(c: &Cluster, cwd: &Path, lines: &[String]) -> String {
    let script = format!(
        "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{}\n",
        lines.join("\n")
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(cwd)
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("run bash");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the script failed:\n{script}\n---\n{text}"
    );
    text
}

/// Documented commands that use `localhost:8000` for the port-forward, on another port if 8000
/// is taken on this machine (the only change made to them).
fn on_free_port(lines: Vec<String>) -> Vec<String> {
    if port_free(8000) {
        return lines;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    lines
        .into_iter()
        .map(|l| {
            l.replace(" 8000:", &format!(" {port}:"))
                .replace("localhost:8000", &format!("localhost:{port}"))
        })
        .collect()
}

/// Commands of a NOTES.txt as printed: the indented lines, continuations joined, a heredoc
/// kept whole; the port-forward put in the background (the notes leave that to the reader),
/// then a wait until it listens.
fn notes_commands(notes: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = notes.lines().peekable();
    let mut current = String::new();
    while let Some(line) = lines.next() {
        if !line.starts_with("     ") {
            continue;
        }
        let line = line.trim_start();
        if line.starts_with("cat <<'YAML'") {
            let mut doc = vec![line.to_string()];
            for l in lines.by_ref() {
                doc.push(l.strip_prefix("     ").unwrap_or(l).to_string());
                if l.trim() == "YAML" {
                    break;
                }
            }
            out.push(doc.join("\n"));
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head);
            continue;
        }
        current.push_str(line);
        let cmd = std::mem::take(&mut current);
        // A comment after the command (`# {"status":"working"}`) is the expected output.
        if cmd.contains("port-forward") {
            out.push(format!("{cmd} &"));
            out.push("for _ in $(seq 50); do curl -s localhost:8000/ping >/dev/null && break; sleep 0.2; done".into());
        } else {
            out.push(cmd);
        }
    }
    out
}

fn ingest_status(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    url: &str,
    body: String,
) -> u16 {
    rt.block_on(async {
        client
            .post(url)
            .header("content-type", "application/json")
            .header("event-type", "load.test")
            .body(body)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    })
}

#[test]
fn the_chart_runs_on_a_real_node() {
    let Some(node) = herald_testenv::node_addr() else {
        return;
    };
    let (Some(helm), Some(kubeconfig), Some(mongo_uri), Some(redis_url), Some(containerd)) = (
        herald_testenv::helm(),
        herald_testenv::kubeconfig(),
        herald_testenv::mongo_uri(),
        herald_testenv::redis_url(),
        herald_testenv::node_containerd(),
    ) else {
        return;
    };
    let t0 = Instant::now();
    let dir = std::env::temp_dir().join(herald_testenv::unique_name("herald-node"));
    std::fs::create_dir_all(dir.join("examples")).unwrap();
    let _remove_dir = RemoveOnDrop(dir.clone());

    // The image: this workspace's binaries, laid out as the Dockerfile does. They are the ones
    // `cargo test --workspace` built before running any test (beside this test's executable's
    // directory); a narrower run needs `cargo build --workspace --bins` first.
    let bin_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    for b in ["herald", "herald-delivery", "herald-operator"] {
        assert!(
            bin_dir.join(b).exists(),
            "{} is missing: run `cargo build --workspace --bins` (cargo test --workspace builds it)",
            bin_dir.join(b).display()
        );
    }
    let archive = dir.join("herald.oci.tar");
    check(
        Command::new(root().join("scripts/build-image.sh"))
            .arg("--bin-dir")
            .arg(&bin_dir)
            .args(["--name", &format!("{IMAGE_REPO}:{IMAGE_TAG}")])
            .arg(&archive),
    );
    check(
        Command::new("ctr")
            .arg("--address")
            .arg(&containerd)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(&archive),
    );
    step(t0, "image built and imported");

    // A namespace, and a kubeconfig whose context uses it.
    let ns = herald_testenv::unique_name("node");
    let ns_kubeconfig = dir.join("kubeconfig");
    std::fs::copy(&kubeconfig, &ns_kubeconfig).unwrap();
    let c = Cluster {
        kubeconfig: ns_kubeconfig,
        helm,
        ns: ns.clone(),
        dir: dir.clone(),
    };
    c.kubectl(&["create", "namespace", &ns]);
    c.kubectl(&["config", "set-context", "--current", "--namespace", &ns]);

    // External stores: the test environment's FerretDB and Redis, at the node address (a
    // database and key prefix of this test's own).
    let scratch = herald_testenv::Scratch::new(mongo_uri.clone(), redis_url.clone(), "node");
    let pod_redis = redis_url.replace("127.0.0.1", &node);
    assert!(
        mongo_uri.contains(&node),
        "FerretDB listens on the node address: {mongo_uri}"
    );
    let api_key = "first-api-key-0123456789";
    // Strings (a key of digits stays a string); numbers and booleans with --set.
    let strings = [
        format!("image.tag={IMAGE_TAG}"),
        format!("mongodb.uri={mongo_uri}"),
        format!("mongodb.database={}", scratch.database),
        format!("redis.url={pod_redis}"),
        format!("config.HERALD_REDIS_PREFIX={}", scratch.prefix),
        format!("config.HERALD_ALLOW_TARGETS={node}/32"),
        format!("apiKey.value={api_key}"),
    ];
    let plain = [
        format!("image.repository={IMAGE_REPO}"),
        "image.pullPolicy=Never".to_string(),
        "operator.replicas=2".to_string(),
    ];
    let mut install = vec![
        "install",
        RELEASE,
        "charts/herald",
        "--wait",
        "--timeout",
        "180s",
    ];
    for v in &strings {
        install.extend(["--set-string", v]);
    }
    for v in &plain {
        install.extend(["--set", v]);
    }
    let notes = c.helm(&install);
    step(t0, "helm install --wait returned");

    // 1. Every pod Ready; the api names the stores it uses.
    let api_pods = c.ready("api", 2, 120);
    c.ready("delivery", 2, 120);
    c.ready("operator", 2, 120);
    let log = c.kubectl(&["logs", &api_pods[0]]);
    let listening = log
        .lines()
        .find(|l| l.contains("Herald is listening"))
        .unwrap_or_else(|| panic!("no start-up line in the api's log:\n{log}"));
    assert!(
        listening.contains("mongodb mongodb://") && listening.contains("redis redis://"),
        "the start-up log names MongoDB and Redis: {listening}"
    );
    assert!(!listening.contains("herald.db"), "{listening}");
    // The chart's NetworkPolicies (on by default) are applied. This node's CNI (the bridge
    // plugin) does not enforce them: their selectors are checked against the pods' labels in
    // chart.rs, not by traffic here.
    let policies = c.kubectl(&[
        "get",
        "networkpolicies",
        "-l",
        &format!("app.kubernetes.io/instance={RELEASE}"),
        "-o",
        "name",
    ]);
    for component in ["api", "delivery", "operator"] {
        assert!(
            policies
                .lines()
                .any(|l| l.ends_with(&format!("-{component}"))),
            "a NetworkPolicy for the {component} pods: {policies}"
        );
    }
    step(t0, "every pod Ready");

    // 2. The README's flow: the example pointed at the receiver, then its commands as printed.
    let rx = Receiver::start(&node);
    let example =
        std::fs::read_to_string(root().join("examples/webhooksubscription.yaml")).unwrap();
    let target = rx.url("/hooks/orders");
    let edited = example.replace("http://127.0.0.1:9000/hooks/orders", &target);
    assert_ne!(edited, example, "the example's targetUrl was edited");
    std::fs::write(dir.join("examples/webhooksubscription.yaml"), edited).unwrap();
    let commands = readme_kind_commands();
    let from = commands
        .iter()
        .position(|l| l.starts_with("kubectl port-forward"))
        .expect("README: kubectl port-forward");
    let flow = on_free_port(commands[from..].to_vec());
    let out = run_script(&c, &dir, &flow);
    assert!(
        out.contains("\"status\":\"queued\""),
        "the signed ingest was queued:\n{out}"
    );
    let delivered = wait_until(60, "the README's event delivered", || {
        let got = rx.received("/hooks/orders");
        if got.is_empty() {
            Err("nothing yet".into())
        } else {
            Ok(got)
        }
    });
    let first = &delivered[0];
    assert_eq!(first.body, br#"{"order_id": 42}"#);
    assert!(
        verifies(EXAMPLE_SECRET, first),
        "Standard Webhooks signature: {first:?}"
    );
    assert_eq!(
        first.headers.get("x-team").map(|v| v.to_str().unwrap()),
        Some("shop")
    );
    step(t0, "README flow delivered and verified");

    // A private target outside HERALD_ALLOW_TARGETS is refused, and the resource says why.
    let refused = dir.join("refused.yaml");
    std::fs::write(
        &refused,
        "apiVersion: herald.dev/v1alpha1\nkind: WebhookSubscription\nmetadata:\n  name: private\n\
         spec:\n  targetUrl: http://192.168.0.10/hooks\n",
    )
    .unwrap();
    c.kubectl(&["apply", "-f", refused.to_str().unwrap()]);
    let status = wait_until(60, "the refused target reported", || {
        let w = c.json(&["get", "whs", "private"]);
        let ready = w["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .cloned()
            .unwrap_or_default();
        if ready["status"] == "False" {
            Ok(ready)
        } else {
            Err(w["status"].to_string())
        }
    });
    let message = status["message"].as_str().unwrap_or_default();
    assert!(message.contains("HERALD_ALLOW_TARGETS"), "{status}");
    let _ = writeln!(
        std::io::stderr(),
        "node test: a refused target's Ready condition: {status}"
    );
    c.kubectl(&["delete", "whs", "private"]);

    // 3. Operator failover: delete the leader; another replica (the standby, or the pod that
    // replaces the deleted one, whichever is first) takes the Lease and reconciles.
    let lease = || {
        let l = c.json(&["get", "lease", &format!("{RELEASE}-operator")]);
        l["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let leader = lease();
    let operators = c.pods("operator");
    assert!(
        operators.iter().any(|p| p.0 == leader),
        "leader {leader} is a pod: {operators:?}"
    );
    assert_eq!(operators.len(), 2, "{operators:?}");
    let failover = Instant::now();
    c.kubectl(&["delete", "pod", &leader, "--wait=false"]);
    let next = wait_until(60, "another replica holds the Lease", || {
        let holder = lease();
        if !holder.is_empty() && holder != leader {
            Ok(holder)
        } else {
            Err(holder)
        }
    });
    assert!(
        c.pods("operator").iter().any(|p| p.0 == next),
        "the new holder {next} is an operator pod"
    );
    let took = failover.elapsed();
    c.kubectl(&[
        "patch",
        "whs",
        "orders",
        "--type=merge",
        "-p",
        r#"{"spec":{"eventTypes":["order.created","order.shipped"]}}"#,
    ]);
    wait_until(60, "the new leader reconciled the change", || {
        let w = c.json(&["get", "whs", "orders"]);
        let generation = &w["metadata"]["generation"];
        let ready = w["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .cloned()
            .unwrap_or_default();
        if ready["status"] == "True" && &w["status"]["observedGeneration"] == generation {
            Ok(())
        } else {
            Err(w["status"].to_string())
        }
    });
    step(
        t0,
        &format!(
            "operator failover: Lease moved from {leader} to {next} in {:.1}s",
            took.as_secs_f64()
        ),
    );

    // 4. A delivery pod deleted mid-load: every event delivered, duplicates counted.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    let pf = c.port_forward(0);
    let created: Value = rt.block_on(async {
        client
            .post(pf.url("/subscriptions"))
            .bearer_auth(api_key)
            .json(&serde_json::json!({"target_url": rx.url("/load")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let sub = created["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_string();
    const LOAD: usize = 300;
    let delivery = c.pods("delivery");
    let mut deleted = false;
    for i in 0..LOAD {
        let status = ingest_status(
            &rt,
            &client,
            &pf.url(&format!("/ingest/{sub}")),
            format!(r#"{{"n":{i}}}"#),
        );
        assert_eq!(status, 202, "ingest {i}");
        if i == LOAD / 3 && !deleted {
            c.kubectl(&["delete", "pod", &delivery[0].0, "--wait=false"]);
            deleted = true;
        }
    }
    let (distinct, total) = wait_until(120, "every loaded event delivered", || {
        let got = rx.received("/load");
        let mut ids: HashMap<String, usize> = HashMap::new();
        for r in &got {
            let id = r
                .headers
                .get("webhook-id")
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            *ids.entry(id).or_default() += 1;
        }
        if ids.len() >= LOAD {
            Ok((ids.len(), got.len()))
        } else {
            Err(format!("{} of {LOAD}", ids.len()))
        }
    });
    assert_eq!(distinct, LOAD, "nothing lost, nothing extra");
    step(
        t0,
        &format!(
            "delivery pod deleted mid-load: {distinct} events delivered, {} duplicates",
            total - distinct
        ),
    );
    drop(pf);
    c.ready("delivery", 2, 120);

    // 5. The retention CronJob, once.
    c.kubectl(&[
        "create",
        "job",
        "--from",
        &format!("cronjob/{RELEASE}-retention"),
        "retention-now",
    ]);
    c.kubectl(&[
        "wait",
        "--for=condition=Complete",
        "job/retention-now",
        "--timeout=120s",
    ]);
    step(t0, "retention job completed");

    // 7a. NOTES.txt as printed by the install (operator on): port-forward, the key, a
    // WebhookSubscription (its example.com target is refused here: no DNS), an ingest.
    let notes_dir = dir.join("notes");
    std::fs::create_dir_all(&notes_dir).unwrap();
    let mut lines = on_free_port(notes_commands(&notes));
    // The subscription id appears once the operator made it (the notes show `get` first).
    let id_line = lines
        .iter()
        .position(|l| l.starts_with("ID="))
        .expect("NOTES: ID=...");
    lines.insert(id_line, "kubectl wait --for=jsonpath='{.status.subscriptionId}' whs/orders --timeout=60s 2>/dev/null || true".into());
    let out = run_script(&c, &notes_dir, &lines);
    assert!(
        out.contains(r#"{"status":"working"}"#),
        "NOTES: ping\n{out}"
    );
    assert!(
        out.contains(r#""data":"#) || out.contains("sub_"),
        "NOTES: the keyed list answered\n{out}"
    );

    // 6. helm upgrade with another API key: the pods roll, the old key is refused.
    let before = c.pods("api").into_iter().map(|p| p.0).collect::<Vec<_>>();
    let new_key = "second-api-key-9876543210";
    let mut upgrade = vec![
        "upgrade",
        RELEASE,
        "charts/herald",
        "--reuse-values",
        "--wait",
        "--timeout",
        "180s",
        "--set-string",
    ];
    let key_value = format!("apiKey.value={new_key}");
    upgrade.push(&key_value);
    c.helm(&upgrade);
    let after = c.ready("api", 2, 180);
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "the api pods rolled: {before:?} -> {after:?}"
    );
    c.ready("delivery", 2, 180);
    let pf = c.port_forward(0);
    let status_with = |key: &str| {
        rt.block_on(async {
            client
                .get(pf.url("/subscriptions"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    assert_eq!(status_with(new_key), 200, "the new key works");
    assert_eq!(status_with(api_key), 401, "the old key is refused");
    drop(pf);
    step(t0, "helm upgrade rolled the pods with the new key");

    // 7b. NOTES.txt with the operator off (step 3 through the REST API, with the key).
    c.kubectl(&["delete", "whs", "--all", "--wait=true", "--timeout=60s"]);
    let notes = c.helm(&[
        "upgrade",
        RELEASE,
        "charts/herald",
        "--reuse-values",
        "--wait",
        "--timeout",
        "180s",
        "--set",
        "operator.enabled=false",
    ]);
    c.ready("api", 2, 180);
    let lines = on_free_port(notes_commands(&notes));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("/subscriptions") && l.contains("Authorization")),
        "{lines:?}"
    );
    let out = run_script(&c, &notes_dir, &lines);
    assert!(
        out.contains("\"status\":\"queued\""),
        "NOTES (operator off): the event was queued\n{out}"
    );
    step(t0, "NOTES commands ran as printed");

    // 8. helm uninstall leaves nothing of Herald behind.
    c.helm(&["uninstall", RELEASE, "--wait", "--timeout", "120s"]);
    let left = wait_until(60, "every Herald object gone", || {
        let left = c.kubectl(&[
            "get",
            "all,configmaps,secrets,serviceaccounts,roles,rolebindings,poddisruptionbudgets,leases,jobs,cronjobs,networkpolicies",
            "-l",
            &format!("app.kubernetes.io/instance={RELEASE}"),
            "-o",
            "name",
        ]);
        if left.trim().is_empty() {
            Ok(left)
        } else {
            Err(left)
        }
    });
    assert_eq!(left.trim(), "");
    let cluster_wide = c.kubectl(&["get", "clusterroles,clusterrolebindings", "-o", "name"]);
    assert!(
        !cluster_wide.contains(&format!("{RELEASE}-operator")) || !cluster_wide.contains(&ns),
        "{cluster_wide}"
    );
    step(t0, "helm uninstall left nothing");

    drop(c);
    drop(scratch);
}

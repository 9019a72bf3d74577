//! Where Herald's tests find the real servers started by `scripts/testenv.sh`.
//!
//! `scripts/testenv.sh COMMAND` builds (once) and starts Redis, FerretDB (a
//! MongoDB wire-protocol server), an etcd + kube-apiserver control plane,
//! helm and check-jsonschema, exports their addresses and runs `COMMAND`.
//! Tests ask this crate for an address:
//!
//! ```no_run
//! let Some(url) = herald_testenv::redis_url() else {
//!     return; // not under scripts/testenv.sh and not in CI: skipped (a message was printed)
//! };
//! # let _ = url;
//! ```
//!
//! When the variable is missing, each helper **panics if `CI=true`** (a test
//! whose server is absent must fail in CI) and otherwise prints a message naming
//! `scripts/testenv.sh` and returns `None`, so that the test can return early.

pub mod process;
pub mod scratch;
pub mod suite;
pub mod wait;

pub use process::free_port;
pub use scratch::Scratch;
pub use wait::{wait_for, wait_ok, wait_until, wait_until_blocking, wait_until_every};

use std::io::Write;
use std::path::PathBuf;

/// Environment variable holding the Redis URL (`redis://127.0.0.1:PORT`).
pub const REDIS_URL_VAR: &str = "HERALD_TEST_REDIS_URL";
/// Environment variable holding the Redis config file of the test server, for
/// tests that restart Redis (`redis-server $HERALD_TEST_REDIS_CONF`); AOF is on.
pub const REDIS_CONF_VAR: &str = "HERALD_TEST_REDIS_CONF";
/// Environment variable holding every node of the Redis Cluster test server (3 masters, 3
/// replicas), as `127.0.0.1:PORT` separated by commas.
pub const REDIS_CLUSTER_NODES_VAR: &str = "HERALD_TEST_REDIS_CLUSTER_NODES";
/// Environment variable holding the MongoDB URI of FerretDB (`mongodb://127.0.0.1:PORT/`).
pub const MONGO_URI_VAR: &str = "HERALD_TEST_MONGO_URI";
/// Environment variable holding the kubeconfig of the test control plane.
/// `scripts/testenv.sh` also exports it as `KUBECONFIG` for kubectl and helm, but
/// tests read this one so that a developer's own `KUBECONFIG` (a real cluster)
/// is never mistaken for the test control plane.
pub const KUBECONFIG_VAR: &str = "HERALD_TEST_KUBECONFIG";
/// Environment variable holding the path of the pinned helm binary.
pub const HELM_VAR: &str = "HERALD_TEST_HELM";
/// Environment variable holding the path of the pinned `check-jsonschema` (it validates
/// docker-compose.yml against the Compose specification's schema).
pub const CHECK_JSONSCHEMA_VAR: &str = "HERALD_TEST_CHECK_JSONSCHEMA";

/// Environment variable holding the test node's address (the gateway of its pods' bridge, where
/// kube-apiserver, Redis and FerretDB listen too): set when `scripts/testenv.sh` runs with the
/// `node` server.
pub const NODE_ADDR_VAR: &str = "HERALD_TEST_NODE_ADDR";
/// Environment variable holding the socket of the test node's containerd (images are imported
/// with `ctr --address SOCKET -n k8s.io images import`).
pub const NODE_CONTAINERD_VAR: &str = "HERALD_TEST_NODE_CONTAINERD";

/// The command that provides the servers, named in skip messages.
pub const COMMAND: &str = "scripts/testenv.sh";

/// Whether this is a CI run (`CI=true`), where missing servers are failures.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The value of `var` if it is set and not empty. Otherwise panics in CI, or
/// prints a skip message naming [`COMMAND`] and returns `None`.
pub fn required(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ => {
            let msg = format!(
                "{var} is not set: {what} is not available. Run the tests inside \
                 `{COMMAND} cargo test ...` (it builds and starts the test servers)"
            );
            if in_ci() {
                panic!("{msg} (CI=true, so a missing server is a failure)");
            }
            // Written to the process's stderr directly (not `eprintln!`) so that
            // the test harness does not capture it: skips stay visible.
            let _ = writeln!(std::io::stderr(), "SKIPPED: {msg}");
            None
        }
    }
}

/// Redis URL of the test server (`redis://127.0.0.1:PORT`).
pub fn redis_url() -> Option<String> {
    required(REDIS_URL_VAR, "the Redis test server")
}

/// Redis config file of the test server, for tests that restart Redis.
pub fn redis_conf() -> Option<PathBuf> {
    required(REDIS_CONF_VAR, "the Redis test server's config").map(PathBuf::from)
}

/// The nodes of the Redis Cluster test server (`127.0.0.1:PORT` each), masters and replicas.
pub fn redis_cluster_nodes() -> Option<Vec<String>> {
    required(REDIS_CLUSTER_NODES_VAR, "the Redis Cluster test server")
        .map(|v| v.split(',').map(str::to_string).collect())
}

/// MongoDB URI of the FerretDB test server (`mongodb://127.0.0.1:PORT/`).
pub fn mongo_uri() -> Option<String> {
    required(MONGO_URI_VAR, "the MongoDB (FerretDB) test server")
}

/// Path of the kubeconfig for the test control plane (etcd + kube-apiserver).
///
/// Build the client from this file explicitly (not `Client::try_default()`):
///
/// ```ignore
/// let path = herald_testenv::kubeconfig()?;
/// let kc = kube::config::Kubeconfig::read_from(&path)?;
/// let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
/// let client = kube::Client::try_from(config)?;
/// ```
pub fn kubeconfig() -> Option<PathBuf> {
    required(KUBECONFIG_VAR, "the Kubernetes test control plane").map(PathBuf::from)
}

/// Address of the test node's bridge gateway (pods reach the machine there).
pub fn node_addr() -> Option<String> {
    required(
        NODE_ADDR_VAR,
        "the Kubernetes test node (HERALD_TESTENV_SERVERS with `node`)",
    )
}

/// Socket of the test node's containerd.
pub fn node_containerd() -> Option<PathBuf> {
    required(NODE_CONTAINERD_VAR, "the Kubernetes test node's containerd").map(PathBuf::from)
}

/// Path of the pinned helm binary.
pub fn helm() -> Option<PathBuf> {
    required(HELM_VAR, "helm").map(PathBuf::from)
}

/// Path of the pinned `check-jsonschema`.
pub fn check_jsonschema() -> Option<PathBuf> {
    required(CHECK_JSONSCHEMA_VAR, "check-jsonschema").map(PathBuf::from)
}

/// A name unique within this machine and run, for databases, collections,
/// streams and namespaces that tests create (`prefix-<pid>-<nanos>-<n>`).
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("t"), unique_name("t"));
        assert!(unique_name("herald").starts_with("herald-"));
    }
}

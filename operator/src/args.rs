//! The command line of `herald-operator run`: where its probes listen, leader election, and
//! what it watches.

use std::net::SocketAddr;

use kube::runtime::events::Reporter;

use crate::{LeaseOptions, Options};

/// The operator's own settings (the store and the subscription rules are the shared groups of
/// `herald_runtime::config`).
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArgs {
    /// Listen address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HERALD_OPERATOR_ADDR", default_value = "0.0.0.0:8080")]
    pub operator_addr: SocketAddr,
    /// Name of the Lease for leader election; unset: no election (run one replica only).
    #[arg(long, env = "HERALD_OPERATOR_LEASE")]
    pub lease: Option<String>,
    /// Namespace of the Lease (default: the kubeconfig's or the service account's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's name in the Lease and in Events (default: the host name and process id).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Watch WebhookSubscriptions (and opted-in Secrets) in these namespaces only
    /// (comma-separated); unset: every namespace.
    #[arg(long, env = "HERALD_OPERATOR_WATCH_NAMESPACE", value_delimiter = ',')]
    pub watch_namespace: Vec<String>,
    /// The event types each namespace's resources may subscribe to:
    /// `namespace=pattern,pattern;namespace=pattern` (`order.*` a prefix, `*` every type; the
    /// namespace `*` rules the ones not named). Unset: no namespace is restricted.
    #[arg(long, env = "HERALD_OPERATOR_ALLOWED_EVENT_TYPES", default_value = "")]
    pub allowed_event_types: crate::policy::EventTypePolicy,
}

impl OperatorArgs {
    /// The options of [`crate::start`]; `default_namespace` holds the Lease when none is named.
    pub fn options(self, default_namespace: String) -> Options {
        let identity = self.identity.unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "herald-operator".into());
            format!("{host}-{}", std::process::id())
        });
        Options {
            addr: self.operator_addr,
            lease: self.lease.map(|name| LeaseOptions {
                name,
                namespace: self.lease_namespace.unwrap_or(default_namespace),
                identity: identity.clone(),
            }),
            watch_namespaces: self
                .watch_namespace
                .into_iter()
                .map(|ns| ns.trim().to_string())
                .filter(|ns| !ns.is_empty())
                .collect(),
            policy: self.allowed_event_types,
            reporter: Reporter {
                controller: "herald-operator".into(),
                instance: Some(identity),
            },
        }
    }
}

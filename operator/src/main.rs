//! `herald-operator [run]`: reconcile WebhookSubscriptions; `herald-operator crd`: print the CRD.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use herald_core::cache::SubscriptionCache;
use herald_core::subscriptions::Subscriptions;
use herald_operator::{LeaseOptions, Options};
use herald_runtime::config::{LogArgs, ShutdownArgs, StoreArgs, SubscriptionArgs, TargetArgs};
use herald_runtime::shutdown::Supervisor;
use kube::runtime::events::Reporter;

#[derive(Parser)]
#[command(name = "herald-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    targets: TargetArgs,
    #[command(flatten)]
    subscriptions: SubscriptionArgs,
    #[command(flatten)]
    shutdown: ShutdownArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile WebhookSubscriptions (the default).
    Run,
    /// Print the WebhookSubscription CRD as YAML.
    Crd,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Listen address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HERALD_OPERATOR_ADDR", default_value = "0.0.0.0:8080")]
    operator_addr: SocketAddr,
    /// Name of the Lease for leader election; unset: no election (run one replica only).
    #[arg(long, env = "HERALD_OPERATOR_LEASE")]
    lease: Option<String>,
    /// Namespace of the Lease (default: the kubeconfig's or the service account's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's name in the Lease and in Events (default: the host name and process id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Watch WebhookSubscriptions (and opted-in Secrets) in these namespaces only
    /// (comma-separated); unset: every namespace.
    #[arg(long, env = "HERALD_OPERATOR_WATCH_NAMESPACE", value_delimiter = ',')]
    watch_namespace: Vec<String>,
    /// The event types each namespace's resources may subscribe to:
    /// `namespace=pattern,pattern;namespace=pattern` (`order.*` a prefix, `*` every type; the
    /// namespace `*` rules the ones not named). Unset: no namespace is restricted.
    #[arg(long, env = "HERALD_OPERATOR_ALLOWED_EVENT_TYPES", default_value = "")]
    allowed_event_types: herald_operator::policy::EventTypePolicy,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Crd) = cli.command {
        print!("{}", herald_operator::crd::crd_yaml());
        return std::process::ExitCode::SUCCESS;
    }
    herald_runtime::telemetry::init_tracing(cli.log.log_format);
    herald_runtime::exit("herald-operator", run(cli).await)
}

/// The process: the subscription service on the configured store, driven by the controller.
async fn run(cli: Cli) -> anyhow::Result<()> {
    let backend = herald_runtime::store::open(&cli.store.mode()?)
        .await
        .context("opening the subscription store")?;
    let cache = Arc::new(SubscriptionCache::for_backend(&backend));
    let _follower = cache.follow();
    let subscriptions = Arc::new(
        Subscriptions::new(cache, backend.queue.clone(), cli.targets.target_guard())
            .with_secret_overlap(cli.subscriptions.secret_overlap),
    );
    let config = kube::Config::infer()
        .await
        .context("finding the Kubernetes API (in-cluster service account or KUBECONFIG)")?;
    let opts = options(cli.run, config.default_namespace.clone());
    let client = kube::Client::try_from(config)?;
    let mut supervisor = Supervisor::new(cli.shutdown.drain());
    let running = herald_operator::start(
        opts,
        client,
        subscriptions,
        backend.subscriptions.clone(),
        supervisor.token(),
    )
    .await?;
    tracing::info!(addr = %running.addr, store = backend.name, "herald-operator started");
    supervisor.spawn("operator", async move { running.task.await? });
    supervisor.stop_on_signal("finishing reconciles in flight");
    supervisor.wait().await
}

fn options(args: RunArgs, default_namespace: String) -> Options {
    let identity = args.identity.unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "herald-operator".into());
        format!("{host}-{}", std::process::id())
    });
    Options {
        addr: args.operator_addr,
        lease: args.lease.map(|name| LeaseOptions {
            name,
            namespace: args.lease_namespace.unwrap_or(default_namespace),
            identity: identity.clone(),
        }),
        watch_namespaces: args
            .watch_namespace
            .into_iter()
            .map(|ns| ns.trim().to_string())
            .filter(|ns| !ns.is_empty())
            .collect(),
        policy: args.allowed_event_types,
        reporter: Reporter {
            controller: "herald-operator".into(),
            instance: Some(identity),
        },
    }
}

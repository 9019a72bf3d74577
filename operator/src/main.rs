//! `herald-operator [run]`: reconcile WebhookSubscriptions; `herald-operator crd`: print the CRD.

use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use herald_core::cache::SubscriptionCache;
use herald_core::subscriptions::Subscriptions;
use herald_operator::OperatorArgs;
use herald_runtime::config::{LogArgs, ShutdownArgs, StoreArgs, SubscriptionArgs, TargetArgs};
use herald_runtime::shutdown::Supervisor;

#[derive(Parser)]
#[command(name = "herald-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: OperatorArgs,
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
        Subscriptions::new(cache, backend.intake.clone(), cli.targets.target_guard())
            .with_secret_overlap(cli.subscriptions.secret_overlap),
    );
    let config = kube::Config::infer()
        .await
        .context("finding the Kubernetes API (in-cluster service account or KUBECONFIG)")?;
    let opts = cli.run.options(config.default_namespace.clone());
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

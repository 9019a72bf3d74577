//! The Herald operator: reconciles `WebhookSubscription` resources into Herald subscriptions
//! through core's `Subscriptions` service, the same validation, ownership rules and cache
//! invalidation the REST API uses.

mod args;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod policy;
pub mod server;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use herald_core::backend::SubscriptionStore;
use herald_core::subscriptions::Subscriptions;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PartialObjectMeta};
use kube::runtime::events::Reporter;
use kube::Client;
use policy::EventTypePolicy;
use tokio_util::sync::CancellationToken;

use crate::crd::WebhookSubscription;

pub use args::OperatorArgs;

/// The Lease replicas compete for, and who this replica is.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    pub name: String,
    pub namespace: String,
    pub identity: String,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    pub addr: SocketAddr,
    /// Leader election; `None` reconciles at once (one replica).
    pub lease: Option<LeaseOptions>,
    /// Watch these namespaces only (one controller each, so namespaced Roles suffice); empty:
    /// every namespace.
    pub watch_namespaces: Vec<String>,
    /// The event types each namespace's resources may subscribe to.
    pub policy: EventTypePolicy,
    /// Who the Events name as their reporter.
    pub reporter: Reporter,
}

/// A running operator: its health listener's address, and the task that ends after
/// `shutdown` is cancelled (reconciles in flight finish, the lease is released).
pub struct Running {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Checks that the CRD is installed, binds the health listener and starts reconciling (after
/// winning the lease, when there is one).
pub async fn start(
    opts: Options,
    client: Client,
    subscriptions: Arc<Subscriptions>,
    store: Arc<dyn SubscriptionStore>,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let scopes = controller::scopes(&client, &opts.watch_namespaces);
    for (api, _) in &scopes {
        api.list(&ListParams::default().limit(1)).await.context(
            "listing webhooksubscriptions.herald.dev failed; is the CRD installed, and may the \
             operator list them in every namespace it watches? \
             (`herald-operator crd | kubectl apply -f -`)",
        )?;
    }
    let health = Arc::new(server::Health {
        ready: AtomicBool::new(false),
        store,
    });
    let listener = herald_runtime::health::bind(
        opts.addr,
        "HERALD_OPERATOR_ADDR",
        server::router(health.clone()),
    )
    .await?;
    let addr = listener.addr;
    let http = tokio::spawn(listener.serve(shutdown.clone()));
    let ctx = Arc::new(
        controller::Context::new(client.clone(), subscriptions, opts.reporter.clone())
            .with_policy(opts.policy.clone()),
    );
    let task = tokio::spawn(async move {
        match opts.lease {
            None => {
                let h = health.clone();
                controller::run(scopes, ctx, shutdown.clone(), move || {
                    h.ready.store(true, Ordering::Release)
                })
                .await;
            }
            Some(lease) => lead(lease, client, scopes, ctx, &health, &shutdown).await?,
        }
        http.await??;
        Ok(())
    });
    Ok(Running { addr, task })
}

/// Reconciles while this replica holds the lease; waits while another one does.
async fn lead(
    lease: LeaseOptions,
    client: Client,
    scopes: Vec<(Api<WebhookSubscription>, Api<PartialObjectMeta<Secret>>)>,
    ctx: Arc<controller::Context>,
    health: &server::Health,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let election = leader::Election::start(client, &lease.namespace, &lease.name, &lease.identity)
        .await
        .with_context(|| {
            format!(
                "leader election on Lease {}/{}",
                lease.namespace, lease.name
            )
        })?;
    // A standby replica is ready: it serves probes, and takes over when the leader goes.
    health.ready.store(true, Ordering::Release);
    let mut leading = election.leading.clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = leading.wait_for(|l| *l) => {
                if changed.is_err() {
                    anyhow::bail!("the lease manager stopped");
                }
            }
        }
        tracing::info!(lease = %lease.name, identity = %lease.identity, "holding the lease: reconciling");
        let stop = shutdown.child_token();
        let mut watch = leading.clone();
        let lost = stop.clone();
        let watcher = tokio::spawn(async move {
            let _ = watch.wait_for(|l| !*l).await;
            lost.cancel();
        });
        controller::run(scopes.clone(), ctx.clone(), stop.clone(), || {}).await;
        watcher.abort();
        if shutdown.is_cancelled() {
            break;
        }
        tracing::warn!(lease = %lease.name, "lost the lease: stopped reconciling, waiting for it");
    }
    drop(leading);
    election.release().await;
    Ok(())
}

//! Leader election over a `coordination.k8s.io` Lease (kube-lease-manager): one replica
//! reconciles, the others wait and take over when the holder stops renewing.

use herald_core::error::chain;
use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, Result};
use tokio::sync::watch;

/// Lease timings in seconds: the holder renews `GRACE` before `DURATION` runs out; a replica
/// that stops renewing loses the lease after at most `DURATION`.
pub const DURATION: u64 = 15;
pub const GRACE: u64 = 5;

/// A running election: `leading` tells whether this replica holds the lease now.
pub struct Election {
    pub leading: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<Result<kube_lease_manager::LeaseManager>>,
}

impl Election {
    pub async fn start(
        client: Client,
        namespace: &str,
        lease: &str,
        identity: &str,
    ) -> Result<Self> {
        let manager = LeaseManagerBuilder::new(client, lease)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(DURATION)
            .with_grace(GRACE)
            .build()
            .await?;
        let (leading, task) = manager.watch().await;
        Ok(Self { leading, task })
    }

    /// Stops competing and frees the lease at once if this replica holds it, so a standby
    /// takes over without waiting for the lease to run out.
    pub async fn release(self) {
        drop(self.leading);
        match self.task.await {
            Ok(Ok(manager)) => {
                if let Err(e) = manager.release().await {
                    tracing::warn!(error = %chain(&e), "releasing the lease failed; it runs out by itself");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %chain(&e), "the lease manager stopped"),
            Err(e) => tracing::warn!(error = %chain(&e), "the lease manager task failed"),
        }
    }
}

//! The pub/sub listener of one process and the change feed on top of it.
//!
//! One dedicated pub/sub connection subscribes to `{p}:wake` (fed to the workers' `Notify`)
//! and `{p}:subscriptions` (fanned out to every follower). It pings the server every
//! [`PING_EVERY`] so that a connection that died silently is noticed, and reconnects with a
//! backoff from [`MIN_BACKOFF`] to [`MAX_BACKOFF`], forever. After every (re)subscription the
//! followers are told to forget their caches (they may have missed announcements) and waiting
//! workers are woken (they may have missed wake-ups).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use herald_core::backend::{ChangeFeed, Result};
use tokio::sync::{broadcast, watch, Notify};

use super::keys::Keys;
use super::{call, Shared, CALL_TIMEOUT};

pub const PING_EVERY: Duration = Duration::from_secs(5);
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// Announcements may have been missed: forget everything cached.
    Reset,
    Changed(String),
}

/// Runs until `stop`'s sender is dropped.
pub(crate) async fn listen(
    client: redis::Client,
    keys: Keys,
    wake: Arc<Notify>,
    changes: broadcast::Sender<Change>,
    eviction: super::eviction::EvictionGuard,
    mut stop: watch::Receiver<()>,
) {
    let (wake_channel, change_channel) = (keys.wake(), keys.subscriptions());
    let mut backoff = MIN_BACKOFF;
    loop {
        let subscribed = async {
            let pubsub = client.get_async_pubsub().await?;
            let (mut sink, stream) = pubsub.split();
            sink.subscribe(&[&wake_channel, &change_channel]).await?;
            Ok::<_, redis::RedisError>((sink, stream))
        };
        let connected = tokio::select! {
            r = call("subscribing to Redis pub/sub", subscribed) => r,
            _ = stop.changed() => return,
        };
        let (mut sink, mut stream) = match connected {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e.chain(), retry_in = ?backoff, "Redis pub/sub unavailable; subscription changes and wake-ups wait for it");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {},
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        // Perhaps a restarted Redis, perhaps with another configuration.
        eviction.recheck_soon();
        let _ = changes.send(Change::Reset);
        wake_up(&wake);
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    if msg.get_channel_name() == wake_channel {
                        wake_up(&wake);
                    } else if let Ok(id) = std::str::from_utf8(msg.get_payload_bytes()) {
                        let _ = changes.send(Change::Changed(id.to_string()));
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(CALL_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break;
                    }
                }
                _ = stop.changed() => return,
            }
        }
        tracing::warn!("Redis pub/sub connection lost; resubscribing");
    }
}

/// Wakes every waiting worker, and the next one to wait if none is waiting right now (it may
/// be between a claim and its wait).
pub(crate) fn wake_up(wake: &Notify) {
    wake.notify_waiters();
    wake.notify_one();
}

/// The change feed over `{p}:subscriptions`.
pub struct RedisChanges {
    shared: Arc<Shared>,
}

impl RedisChanges {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[async_trait]
impl ChangeFeed for RedisChanges {
    async fn announce(&self, subscription_id: &str) -> Result<()> {
        let mut conn = self.shared.conn();
        call(
            "announcing a subscription change",
            redis::cmd("PUBLISH")
                .arg(self.shared.keys.subscriptions())
                .arg(subscription_id)
                .query_async::<i64>(&mut conn),
        )
        .await?;
        Ok(())
    }

    async fn follow(&self, on_change: Box<dyn for<'a> Fn(Option<&'a str>) + Send + Sync>) {
        let mut rx = self.shared.changes.subscribe();
        on_change(None);
        loop {
            match rx.recv().await {
                Ok(Change::Changed(id)) => on_change(Some(&id)),
                Ok(Change::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => on_change(None),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

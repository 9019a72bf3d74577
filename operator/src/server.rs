//! `/healthz` and `/readyz`, which the health listener serves beside `/metrics` (see
//! [`herald_runtime::health`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use herald_core::backend::SubscriptionStore;

/// What the probes report.
pub struct Health {
    /// Set once this replica can do its work: the controller's cache synced (leader), or it
    /// waits for the lease (standby: serving probes is all it does).
    pub ready: AtomicBool,
    pub store: Arc<dyn SubscriptionStore>,
}

pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn readyz(State(h): State<Arc<Health>>) -> (StatusCode, String) {
    if !h.ready.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the controller's cache is not synced yet".into(),
        );
    }
    match h.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready".into()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the subscription store does not answer: {}", e.chain()),
        ),
    }
}

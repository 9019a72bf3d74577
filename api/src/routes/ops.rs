//! Liveness, readiness, metrics and the dashboard's counters.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use crate::error::ApiError;
use crate::state::AppState;
use crate::views::{Health, Stats};

#[utoipa::path(get, path = "/ping", tag = "ops", responses((status = 200, description = r#"{"status":"working"}"#)))]
pub async fn ping() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "working" }))
}

#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        error: None,
    })
}

/// Ready while the queue accepts events, which is all ingest needs. A subscription store that
/// does not answer (MongoDB down in production mode, while subscriptions come from the cache)
/// leaves the process ready but `degraded`, with the error: taking every api pod out of
/// service for it would refuse events that can still be stored.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, body = Health, description = "`ok`, or `degraded` with the store's error"),
        (status = 503, body = Health)))]
pub async fn readyz(State(st): State<AppState>) -> (StatusCode, Json<Health>) {
    let within = std::time::Duration::from_secs(2);
    let (queue, store) = tokio::join!(
        tokio::time::timeout(within, st.backend.intake.ping()),
        tokio::time::timeout(within, st.backend.subscriptions.ping()),
    );
    let failure = |r: Result<herald_core::backend::Result<()>, _>, what: &str| match r {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("{what} did not answer within 2 s")),
    };
    match (failure(queue, "the queue"), failure(store, "the store")) {
        (None, None) => (
            StatusCode::OK,
            Json(Health {
                status: "ok",
                error: None,
            }),
        ),
        (None, Some(store)) => (
            StatusCode::OK,
            Json(Health {
                status: "degraded",
                error: Some(store),
            }),
        ),
        (Some(queue), _) => unready(queue),
    }
}

fn unready(error: String) -> (StatusCode, Json<Health>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(Health {
            status: "unavailable",
            error: Some(error),
        }),
    )
}

#[utoipa::path(get, path = "/stats", tag = "ops", responses((status = 200, body = Stats),
    (status = 401, body = crate::error::ErrorBody, description = "HERALD_API_KEY is set and the request lacks it")))]
pub async fn stats(State(st): State<AppState>) -> Result<Json<Stats>, ApiError> {
    let queue = st.backend.intake.stats().await?;
    let counts = st.telemetry.counts();
    Ok(Json(Stats {
        ingested: counts.ingested,
        delivered: counts.delivered,
        failed: counts.failed,
        queue,
    }))
}

#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    st.queue_gauges.publish();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
}

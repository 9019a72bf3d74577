//! Liveness, readiness, metrics and the dashboard's counters.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use herald_core::telemetry;

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

#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(st): State<AppState>) -> (StatusCode, Json<Health>) {
    let checked = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        st.backend.subscriptions.ping().await?;
        st.backend.queue.ping().await
    })
    .await;
    match checked {
        Ok(Ok(())) => (
            StatusCode::OK,
            Json(Health {
                status: "ok",
                error: None,
            }),
        ),
        Ok(Err(e)) => unready(e.to_string()),
        Err(_) => unready("storage did not answer within 2 s".into()),
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
    let queue = st.backend.queue.stats().await?;
    Ok(Json(Stats {
        ingested: telemetry::COUNTS.ingested.load(Ordering::Relaxed),
        delivered: telemetry::COUNTS.delivered.load(Ordering::Relaxed),
        failed: telemetry::COUNTS.failed.load(Ordering::Relaxed),
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

//! Herald's delivery side: the engine that claims, sends and settles deliveries, the outgoing
//! HTTP client with its SSRF guard, and the retention sweep.

pub mod attempt;
pub mod engine;
pub mod health;
pub mod http;
mod inflight;
mod liveness;
pub mod retention;

pub use engine::{ConfigError, Engine, EngineConfig, RecorderWatch, RECORDER_STALL};

/// `GET /healthz` of a delivery process: 200 `{"status":"ok"}` while its recorder writes what
/// it holds, 503 `{"status":"stuck","reason":...}` once it has held settlements it could not
/// write for longer than its stall bound (see [`RecorderWatch`]), so that a liveness probe
/// restarts the process and the reaper hands its deliveries to the other workers.
pub fn health_routes(recorder: std::sync::Arc<RecorderWatch>) -> axum::Router {
    axum::Router::new().route(
        "/healthz",
        axum::routing::get(move || {
            let recorder = recorder.clone();
            async move {
                match recorder.check() {
                    Ok(()) => (
                        axum::http::StatusCode::OK,
                        axum::Json(serde_json::json!({ "status": "ok" })),
                    ),
                    Err(reason) => (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(serde_json::json!({ "status": "stuck", "reason": reason })),
                    ),
                }
            }
        }),
    )
}

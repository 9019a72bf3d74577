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

/// The liveness side of a delivery process: its health listener, and when its recorder counts
/// as stuck.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Health")]
pub struct HealthArgs {
    /// Serve `GET /healthz` (container and Kubernetes liveness checks) and `GET /metrics`
    /// (Prometheus) on this address while the workers run; this process has no other HTTP
    /// listener. Unset: no listener.
    #[arg(long, env = "HERALD_HEALTH_ADDR")]
    pub health_addr: Option<std::net::SocketAddr>,
    /// `/healthz` answers 503 once the delivery recorder has held settlements it could not
    /// write for this long (the store keeps failing), so that the process is restarted and its
    /// deliveries handed to other workers.
    #[arg(long, env = "HERALD_RECORDER_STALL", default_value = "2m", value_parser = herald_core::retry::parse_duration)]
    pub recorder_stall: std::time::Duration,
}

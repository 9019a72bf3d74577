//! Herald's HTTP server: management API, ingest, status, dashboard, metrics and OpenAPI: its
//! [`router`], and [`serve`], the loop that serves it. The `herald` process around them, which
//! in standalone mode also runs the delivery engine and the retention sweep on one SQLite
//! file, is composed in [`app`].

mod auth;
mod error;
mod extract;
mod gauges;
mod origin;
mod routes;
mod server;
mod state;
mod ui;
mod views;

pub mod app;
pub mod healthcheck;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{middleware, Router};
use herald_core::backend::Backend;
use herald_core::cache::SubscriptionCache;
use herald_core::subscriptions::Subscriptions;
use herald_runtime::config::HttpArgs;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

pub use app::{App, Settings};
pub use error::ApiError;
pub use server::{serve, Limits};
use state::{AppState, RateLimiter};

/// Largest management request body (subscriptions are small).
pub const MANAGEMENT_BODY_LIMIT: usize = 256 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(title = "Herald", description = "Webhook delivery service: ingest once, delivered to every subscriber with retries."),
    paths(
        routes::ops::ping,
        routes::ops::healthz,
        routes::ops::readyz,
        routes::ops::metrics,
        routes::ops::stats,
        routes::subscriptions::create,
        routes::subscriptions::list,
        routes::subscriptions::get,
        routes::subscriptions::replace,
        routes::subscriptions::patch,
        routes::subscriptions::delete,
        routes::subscriptions::rotate_secret,
        routes::ingest::ingest,
        routes::ingest::fanout,
        routes::webhooks::status,
        routes::webhooks::retry,
        routes::webhooks::recent,
        routes::webhooks::logs_alias,
    ),
    tags(
        (name = "subscriptions", description = "who receives what"),
        (name = "ingest", description = "events in"),
        (name = "status", description = "what happened to them"),
        (name = "ops", description = "health and metrics"),
    ),
    modifiers(&EdgeResponses)
)]
pub struct ApiDoc;

/// Documents the answers the server's edge gives on any route, before a handler runs: 408
/// past `HERALD_BODY_TIMEOUT`, and 403 for a cross-origin state-changing request.
struct EdgeResponses;

impl utoipa::Modify for EdgeResponses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, ResponseBuilder};
        let response = |text: &str| RefOr::T(ResponseBuilder::new().description(text).build());
        for item in doc.paths.paths.values_mut() {
            let changes_state = [
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for op in changes_state.into_iter().flatten() {
                op.responses
                    .responses
                    .entry("403".into())
                    .or_insert_with(|| {
                        response(
                            "a browser request from another origin (see HERALD_ALLOWED_ORIGINS)",
                        )
                    });
            }
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                op.responses
                    .responses
                    .entry("408".into())
                    .or_insert_with(|| {
                        response("the request was not completed within HERALD_BODY_TIMEOUT")
                    });
            }
        }
    }
}

/// The OpenAPI document served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

fn build_router(state: AppState, origins: origin::Origins) -> Router {
    let management = Router::new()
        .route(
            "/subscriptions",
            post(routes::subscriptions::create).get(routes::subscriptions::list),
        )
        .route(
            "/subscriptions/{id}",
            get(routes::subscriptions::get)
                .put(routes::subscriptions::replace)
                .patch(routes::subscriptions::patch)
                .delete(routes::subscriptions::delete),
        )
        .route(
            "/subscriptions/{id}/secret/rotate",
            post(routes::subscriptions::rotate_secret),
        )
        .route(
            "/subscriptions/{id}/deliveries",
            get(routes::webhooks::recent),
        )
        .route("/subscription/logs/{id}", get(routes::webhooks::logs_alias))
        .route("/webhooks/{webhook_id}", get(routes::webhooks::status))
        .route(
            "/webhooks/{webhook_id}/retry",
            post(routes::webhooks::retry),
        )
        .route("/stats", get(routes::ops::stats))
        .layer(DefaultBodyLimit::max(MANAGEMENT_BODY_LIMIT))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::management,
        ));
    let ingest = Router::new()
        .route("/ingest/{subscription_id}", post(routes::ingest::ingest))
        .layer(DefaultBodyLimit::max(state.max_payload))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::ingest));
    let fanout = Router::new()
        .route("/events", post(routes::ingest::fanout))
        .layer(DefaultBodyLimit::max(state.max_payload))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::fanout));
    let doc = openapi();
    let public = Router::new()
        .route("/ping", get(routes::ops::ping))
        .route("/healthz", get(routes::ops::healthz))
        .route("/readyz", get(routes::ops::readyz))
        .route("/metrics", get(routes::ops::metrics))
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc) }
            }),
        );
    Router::new()
        .merge(management)
        .merge(ingest)
        .merge(fanout)
        .merge(public)
        .with_state(state)
        .merge(ui::router())
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(middleware::from_fn_with_state(origins, origin::check))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// What the api's handlers work on: the store, and the subscription service with its cache.
pub struct Services {
    pub backend: Backend,
    /// The counts `/stats` shows and the counters behind them; in standalone mode shared with
    /// the delivery engine of the same process.
    pub telemetry: Arc<herald_core::telemetry::Metrics>,
    pub cache: Arc<SubscriptionCache>,
    pub subscriptions: Arc<Subscriptions>,
}

/// The api's routes, served with [`serve`]. The queue gauges of `/metrics` are recounted by a
/// task of their own, which ends with `shutdown`.
pub fn router(http: &HttpArgs, services: Services, shutdown: CancellationToken) -> Router {
    let queue_gauges = gauges::QueueGauges::spawn(
        services.backend.intake.clone(),
        http.metrics_interval,
        shutdown,
    );
    let state = AppState::new(state::Shared {
        telemetry: services.telemetry,
        queue_gauges,
        backend: services.backend,
        cache: services.cache,
        subscriptions: services.subscriptions,
        max_payload: http.max_payload,
        api_key: http.api_key().map(Into::into),
        ingest_key: http.ingest_key().map(Into::into),
        rate_limiter: (http.ingest_rate_limit > 0)
            .then(|| Arc::new(RateLimiter::new(http.ingest_rate_limit))),
        metrics: herald_runtime::telemetry::prometheus(),
    });
    if auth::fanout_key(&state).is_none() {
        tracing::warn!(
            "neither HERALD_INGEST_KEY nor HERALD_API_KEY is set: POST /events refuses every \
             request (401) until one is; the management API is open to anyone who reaches {}",
            http.addr
        );
    }
    build_router(
        state,
        origin::Origins(http.allowed_origins.0.clone().into()),
    )
}

//! Herald's HTTP server: management API, ingest, status, dashboard, metrics and OpenAPI. In
//! standalone mode (no MongoDB/Redis configured) the same process also runs the delivery
//! engine and the retention sweep on one SQLite file.

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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{middleware, Router};
use herald_core::backend::Backend;
use herald_core::cache::SubscriptionCache;
use herald_core::subscriptions::Subscriptions;
use herald_delivery::{retention, Engine, EngineConfig};
use herald_runtime::config::Settings;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

pub use error::ApiError;
use state::{AppState, RateLimiter};

/// Largest management request body (subscriptions are small).
pub const MANAGEMENT_BODY_LIMIT: usize = 256 * 1024;
/// Past the grace, how long the last writes of stopping tasks may take before exit.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(1);

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

/// The process-wide Prometheus recorder (see [`herald_runtime::telemetry::prometheus`]).
pub fn metrics_handle() -> PrometheusHandle {
    herald_runtime::telemetry::prometheus()
}

pub use herald_runtime::telemetry::init_tracing;

/// Opens the backends the settings name (SQLite, or MongoDB + Redis).
pub async fn open_backend(settings: &Settings) -> anyhow::Result<Backend> {
    Ok(herald_runtime::store::open(settings).await?)
}

/// What the start-up log names as the store: the stores [`open_backend`] opens for these
/// settings (the SQLite file, or MongoDB and Redis with their credentials left out).
pub fn store_summary(settings: &Settings) -> String {
    match (&settings.mongo_uri, settings.redis()) {
        (Some(mongo), Some(redis)) => format!(
            "mongodb {} + redis {}",
            without_credentials(mongo),
            without_credentials(&redis)
        ),
        _ => format!("sqlite {}", settings.sqlite_path.display()),
    }
}

/// A connection string without its user information (`user:password@`) and query (which may
/// hold passwords too): `mongodb://u:p@h1,h2/db?tls=true` gives `mongodb://h1,h2/db`.
fn without_credentials(uri: &str) -> String {
    let uri = uri.split('?').next().unwrap_or_default();
    let Some((scheme, rest)) = uri.split_once("://") else {
        return "(unparsed address)".into();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{hosts}{path}")
}

/// A running Herald: the api, and in standalone mode the delivery engine and retention sweep.
pub struct Herald {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: JoinHandle<anyhow::Result<()>>,
}

impl Herald {
    /// Opens the store, binds the listener and starts every task.
    pub async fn start(settings: Settings) -> anyhow::Result<Herald> {
        settings.check_max_payload().map_err(anyhow::Error::msg)?;
        let backend = open_backend(&settings).await?;
        let listener = tokio::net::TcpListener::bind(settings.addr)
            .await
            .with_context(|| format!("binding {}", settings.addr))?;
        let addr = listener.local_addr()?;
        let cache = Arc::new(SubscriptionCache::for_backend(&backend));
        let subscriptions = Arc::new(
            Subscriptions::new(
                cache.clone(),
                backend.queue.clone(),
                settings.target_guard(),
            )
            .with_secret_overlap(settings.secret_overlap),
        );
        let shutdown = CancellationToken::new();
        if let Some(follower) = cache.follow() {
            let stop = shutdown.clone();
            tokio::spawn(async move {
                stop.cancelled().await;
                follower.abort();
            });
        }
        let queue_gauges = crate::gauges::QueueGauges::spawn(
            backend.queue.clone(),
            settings.metrics_interval,
            shutdown.clone(),
        );
        let telemetry = herald_core::telemetry::Metrics::new();
        let state = AppState::new(state::Shared {
            telemetry: telemetry.clone(),
            queue_gauges,
            backend: backend.clone(),
            cache: cache.clone(),
            subscriptions,
            max_payload: settings.max_payload,
            api_key: settings
                .api_key
                .clone()
                .filter(|k| !k.is_empty())
                .map(Into::into),
            ingest_key: settings
                .ingest_key
                .clone()
                .filter(|k| !k.is_empty())
                .map(Into::into),
            rate_limiter: (settings.ingest_rate_limit > 0)
                .then(|| Arc::new(RateLimiter::new(settings.ingest_rate_limit))),
            metrics: metrics_handle(),
        });
        if auth::fanout_key(&state).is_none() {
            tracing::warn!(
                "neither HERALD_INGEST_KEY nor HERALD_API_KEY is set: POST /events refuses every \
                 request (401) until one is; the management API is open to anyone who reaches {addr}"
            );
        }
        let app = build_router(
            state,
            origin::Origins(settings.allowed_origins.0.clone().into()),
        );
        let limits = server::Limits {
            header_timeout: settings.header_timeout,
            body_timeout: settings.body_timeout,
            idle_timeout: settings.idle_timeout,
            max_connections: settings.max_connections,
            grace: settings.shutdown_grace,
        };
        let grace = settings.shutdown_grace;

        let engine_config = settings
            .workers
            .then(|| EngineConfig::from_settings(&settings))
            .transpose()?
            .map(|config| EngineConfig {
                metrics: telemetry,
                ..config
            });
        let workers = engine_config.map(|config| {
            (
                tokio::spawn(Engine::run(
                    backend.clone(),
                    cache,
                    config,
                    shutdown.clone(),
                )),
                tokio::spawn(retention::run_periodic(
                    backend,
                    settings.retention,
                    settings.retention_interval,
                    shutdown.clone(),
                )),
            )
        });
        let stop = shutdown.clone();
        // The grace is one deadline for the whole process, counted from the stop request: the
        // HTTP drain and the workers run at once, and what is still running at the deadline
        // (plus a moment for the last settle writes) is abandoned, so the process exits.
        let tasks = tokio::spawn(async move {
            let serving = tokio::spawn(server::serve(listener, app, limits, stop.clone()));
            stop.cancelled().await;
            let deadline = tokio::time::Instant::now() + grace + SHUTDOWN_MARGIN;
            let bounded = |what: &'static str, task: JoinHandle<()>| async move {
                if tokio::time::timeout_at(deadline, task).await.is_err() {
                    tracing::warn!(
                        task = what,
                        "still running at the shutdown deadline; exiting anyway"
                    );
                }
            };
            match tokio::time::timeout_at(deadline, serving).await {
                Ok(served) => served
                    .context("HTTP server task")?
                    .context("serving HTTP")?,
                Err(_) => tracing::warn!("HTTP server still draining at the shutdown deadline"),
            }
            if let Some((engine, sweeper)) = workers {
                bounded("delivery engine", engine).await;
                bounded("retention sweep", sweeper).await;
            }
            Ok(())
        });
        tracing::info!(%addr, store = %store_summary(&settings), workers = settings.workers, "Herald is listening");
        Ok(Herald {
            addr,
            shutdown,
            tasks,
        })
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops taking new work, finishes what is in flight, and waits for every task.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }

    pub async fn wait(self) -> anyhow::Result<()> {
        self.tasks.await.context("Herald tasks")?
    }
}

#[cfg(test)]
mod store_summary_tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    fn settings(vars: &[(&str, &str)]) -> Settings {
        let mut args = vec!["herald".to_string()];
        args.extend(vars.iter().map(|(k, v)| format!("--{k}={v}")));
        <Cli as clap::Parser>::try_parse_from(args)
            .unwrap()
            .settings
    }

    #[test]
    fn production_mode_names_mongodb_and_redis_without_credentials() {
        let s = settings(&[
            ("mongo-uri", "mongodb://herald:s3cret@mongo-0:27017,mongo-1:27017/herald?authSource=admin&password=x"),
            ("redis-url", "redis://:hunter2@redis:6379/0"),
        ]);
        let summary = store_summary(&s);
        assert_eq!(
            summary,
            "mongodb mongodb://mongo-0:27017,mongo-1:27017/herald + redis redis://redis:6379/0"
        );
        assert!(!summary.contains("herald.db"), "{summary}");
    }

    #[test]
    fn standalone_names_the_sqlite_file() {
        let s = settings(&[("sqlite-path", "/data/herald.db")]);
        assert_eq!(store_summary(&s), "sqlite /data/herald.db");
    }
}

//! The small HTTP listener of a process whose work is not HTTP (a delivery process, the
//! operator): its probes, and `/metrics` for Prometheus.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::http::header;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The Prometheus text format's content type.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A bound health listener, not yet serving.
pub struct HealthListener {
    pub addr: SocketAddr,
    listener: TcpListener,
    app: Router,
}

/// Binds `addr` for `probes` plus `GET /metrics` (this process's own counters, from
/// [`crate::telemetry::prometheus`]). Binding comes first, so a port already taken fails
/// start-up instead of leaving a process that every liveness check reports dead; the error
/// names `setting`, the variable that chose the address.
pub async fn bind(
    addr: SocketAddr,
    setting: &str,
    probes: Router,
) -> anyhow::Result<HealthListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {setting} {addr}"))?;
    let metrics = crate::telemetry::prometheus();
    let app = probes.route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
                    metrics.render(),
                )
            }
        }),
    );
    Ok(HealthListener {
        addr: listener.local_addr()?,
        listener,
        app,
    })
}

impl HealthListener {
    /// Serves until `shutdown` is cancelled and the requests in flight are answered.
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        axum::serve(self.listener, self.app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .context("health listener")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_probes_and_metrics_until_stopped() {
        let probes = Router::new().route("/healthz", get(|| async { "ok" }));
        let listener = bind("127.0.0.1:0".parse().unwrap(), "TEST_ADDR", probes)
            .await
            .unwrap();
        let addr = listener.addr;
        let stop = CancellationToken::new();
        let served = tokio::spawn(listener.serve(stop.clone()));
        let get = |path: &str| {
            let path = path.to_string();
            async move {
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                stream.write_all(req.as_bytes()).await.unwrap();
                let mut answer = String::new();
                stream.read_to_string(&mut answer).await.unwrap();
                answer
            }
        };
        let health = get("/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(health.ends_with("ok"), "{health}");
        let metrics = get("/metrics").await.to_ascii_lowercase();
        assert!(metrics.starts_with("http/1.1 200"), "{metrics}");
        assert!(
            metrics.contains("content-type: text/plain; version=0.0.4"),
            "{metrics}"
        );
        stop.cancel();
        served.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_taken_port_names_the_setting() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = bind(taken.local_addr().unwrap(), "HERALD_X_ADDR", Router::new())
            .await
            .err()
            .expect("refused");
        assert!(err
            .to_string()
            .starts_with("cannot listen on HERALD_X_ADDR 127.0.0.1:"));
    }
}

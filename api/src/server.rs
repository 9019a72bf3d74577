//! The HTTP/1.1 server loop: Herald's own accept loop instead of `axum::serve`, which hides the
//! settings a public-facing server needs (timeouts per connection phase, a connection cap, a
//! bounded shutdown).
//!
//! Each connection is in one phase at a time, and each phase has its limit:
//! - `Head`: from connecting, or from the first byte after an idle period, until hyper has
//!   parsed the request head: `header_timeout` (slow-header clients are closed);
//! - `Request`: from the head to the end of the answer: `body_timeout` bounds the handler,
//!   body read included, and answers 408 with `Connection: close`;
//! - `Idle`: a kept-alive connection between an answer and the next request's first byte:
//!   `idle_timeout`.
//!
//! Hyper's own `header_read_timeout` is not used: it runs from the moment a connection is ready
//! for a request, so it would merge the idle and header limits into one.
//!
//! Connection cap: a permit is taken before `accept`, so beyond `max_connections` clients wait
//! in the kernel's listen backlog (their connect may succeed, nothing is read) until a
//! connection closes; open connections keep working.
//!
//! Shutdown: on cancel the listener closes first (no new connections), every connection is
//! told to finish its current request and close, and after `grace` the ones still open are
//! dropped. [`serve`] returns when every connection is gone, at most `grace` after cancel.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request};
use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use herald_core::error::chain;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::error::ApiError;

/// The limits of [`serve`]; see the module docs for what each bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub grace: Duration,
}

impl Limits {
    /// The settings' limits, with `grace` to drain after the stop request.
    pub fn new(http: &herald_runtime::config::HttpArgs, grace: Duration) -> Self {
        Self {
            header_timeout: http.header_timeout,
            body_timeout: http.body_timeout,
            idle_timeout: http.idle_timeout,
            max_connections: http.max_connections,
            grace,
        }
    }
}

/// Serves `app` until `shutdown` is cancelled, then drains (see the module docs).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let limits = Arc::new(limits);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %chain(&e), "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(connection(
            stream,
            remote,
            app.clone(),
            limits.clone(),
            closing_rx.clone(),
            permit,
        ));
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let drained = tokio::time::timeout(limits.grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            grace = ?limits.grace,
            "shutdown grace over: closing the connections still open"
        );
        connections.shutdown().await;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Head,
    Request,
    Idle,
}

/// A connection's phase and when it began, shared by its IO, its service and its watchdog.
struct Phase {
    now: Mutex<(Kind, Instant)>,
    changed: Notify,
}

impl Phase {
    fn new() -> Self {
        Self {
            now: Mutex::new((Kind::Head, Instant::now())),
            changed: Notify::new(),
        }
    }

    fn get(&self) -> (Kind, Instant) {
        *self.now.lock()
    }

    /// Moves to `to`, unless `only_from` is given and the phase is another one.
    fn set(&self, to: Kind, only_from: Option<Kind>) {
        {
            let mut now = self.now.lock();
            if only_from.is_some_and(|f| now.0 != f) || now.0 == to {
                return;
            }
            *now = (to, Instant::now());
        }
        self.changed.notify_one();
    }

    /// When the current phase runs out; `None` while a request runs (the service bounds it).
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        let (kind, since) = self.get();
        match kind {
            Kind::Head => Some(since + limits.header_timeout),
            Kind::Idle => Some(since + limits.idle_timeout),
            Kind::Request => None,
        }
    }
}

async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    app: Router,
    limits: Arc<Limits>,
    mut closing: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let phase = Arc::new(Phase::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        phase: phase.clone(),
    });
    let service = {
        let phase = phase.clone();
        let limits = limits.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let app = app.clone();
            let phase = phase.clone();
            let body_timeout = limits.body_timeout;
            async move {
                phase.set(Kind::Request, None);
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(ConnectInfo(remote));
                let resp = match tokio::time::timeout(body_timeout, app.oneshot(req)).await {
                    Ok(Ok(resp)) => resp,
                    Ok(Err(never)) => match never {},
                    Err(_) => {
                        let mut r = ApiError::RequestTimeout(body_timeout).into_response();
                        r.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        r
                    }
                };
                Ok::<_, Infallible>(resp.map(|inner| Answer { inner, phase }))
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut asked_to_close = *closing.borrow();
    if asked_to_close {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        let deadline = phase.deadline(&limits);
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(%remote, error = %chain(&e), "connection ended with an error");
                }
                return;
            }
            _ = phase.changed.notified() => {}
            _ = sleep_until(deadline) => {
                if phase.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(%remote, phase = ?phase.get().0, "closing a connection past its timeout");
                    return;
                }
            }
            changed = closing.changed(), if !asked_to_close => {
                asked_to_close = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The connection's stream; the first byte read while idle starts the next request's head.
struct Watched {
    inner: TcpStream,
    phase: Arc<Phase>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.phase.set(Kind::Head, Some(Kind::Idle));
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// An answer's body; hyper drops it once written, which makes the connection idle.
struct Answer {
    inner: Body,
    phase: Arc<Phase>,
}

impl hyper::body::Body for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.phase.set(Kind::Idle, Some(Kind::Request));
    }
}

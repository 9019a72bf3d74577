//! The harness's own webhook receiver: counts deliveries (unique by `webhook-id`), measures
//! ingest-to-receipt latency from the payload's timestamp, and in fail-first mode answers 500 to
//! the first attempt of every webhook and 200 afterwards, measuring how late each retry is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Router;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::serve::ServerThread;
use crate::stats::{self, Percentiles};

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// 200 to everything.
    Ok,
    /// 500 to the first attempt per `webhook-id`, 200 after; the retry is due `delay` after
    /// the failed answer was sent.
    FailFirst { delay: Duration },
    /// 200 to everything, each answer `delay` late (a slow subscriber).
    Slow { delay: Duration },
}

enum Seen {
    Delivered,
    Failed(Instant),
    Retried,
}

struct Inner {
    seen: HashMap<String, Seen>,
    latency: Histogram<u64>,
    lateness: Histogram<u64>,
    early: u64,
    max_early: Duration,
    duplicates: u64,
    first_failures: u64,
    first_fail_at: Option<Instant>,
    last_first_fail_at: Option<Instant>,
    first_retry_at: Option<Instant>,
    missing_id: u64,
    /// Distinct ids answered 200.
    delivered: u64,
    /// Fail-first mode: per second since the first retry arrived, (retries, max lateness µs).
    lateness_by_second: Vec<(u64, u64)>,
}

struct Shared {
    mode: Mode,
    epoch: Instant,
    requests: AtomicU64,
    /// Nanoseconds since `epoch` of the last request that completed a delivery.
    last_ns: AtomicU64,
    inner: Mutex<Inner>,
}

pub struct Receiver {
    shared: Arc<Shared>,
    server: ServerThread,
}

/// What the receiver has seen so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Snapshot {
    /// Every request received (including duplicates and failed first attempts).
    pub requests: u64,
    /// Distinct webhook ids delivered successfully.
    pub delivered: u64,
    /// Successful deliveries of an id already delivered (at-least-once redeliveries).
    pub duplicates: u64,
    /// Requests without a `webhook-id` header.
    pub missing_id: u64,
    /// Fail-first mode: first attempts answered 500.
    pub first_failures: u64,
    /// Fail-first mode: retries received earlier than due.
    pub early_retries: u64,
    pub max_early_ms: f64,
    /// Ingest-to-receipt latency (payload's intended send time to receipt).
    pub latency: Percentiles,
    /// Fail-first mode: how late each retry arrived after its due time.
    pub lateness: Percentiles,
    /// Fail-first mode: per second since the first retry, (retries received, max lateness ms).
    pub lateness_by_second: Vec<(u64, f64)>,
}

impl Receiver {
    pub fn start(mode: Mode, epoch: Instant) -> Result<Self> {
        let shared = Arc::new(Shared {
            mode,
            epoch,
            requests: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                seen: HashMap::new(),
                latency: stats::new_hist(),
                lateness: stats::new_hist(),
                early: 0,
                max_early: Duration::ZERO,
                duplicates: 0,
                first_failures: 0,
                first_fail_at: None,
                last_first_fail_at: None,
                first_retry_at: None,
                missing_id: 0,
                delivered: 0,
                lateness_by_second: Vec::new(),
            }),
        });
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let server = ServerThread::start("receiver", router, 2)?;
        Ok(Self { shared, server })
    }

    /// The URL to subscribe with.
    pub fn hook_url(&self) -> String {
        format!("{}/hook", self.server.url())
    }

    pub fn snapshot(&self) -> Snapshot {
        let inner = self.shared.inner.lock();
        Snapshot {
            requests: self.shared.requests.load(Ordering::Relaxed),
            delivered: inner.delivered,
            duplicates: inner.duplicates,
            missing_id: inner.missing_id,
            first_failures: inner.first_failures,
            early_retries: inner.early,
            max_early_ms: inner.max_early.as_secs_f64() * 1000.0,
            latency: Percentiles::from_hist(&inner.latency),
            lateness: Percentiles::from_hist(&inner.lateness),
            lateness_by_second: inner
                .lateness_by_second
                .iter()
                .map(|&(n, us)| (n, us as f64 / 1000.0))
                .collect(),
        }
    }

    /// Distinct ids delivered so far (cheap enough to poll every few ms).
    pub fn delivered(&self) -> u64 {
        self.shared.inner.lock().delivered
    }

    pub fn first_failures(&self) -> u64 {
        self.shared.inner.lock().first_failures
    }

    /// (earliest, latest) time a first attempt was failed, and the first retry's arrival.
    pub fn fail_times(&self) -> (Option<Instant>, Option<Instant>, Option<Instant>) {
        let inner = self.shared.inner.lock();
        (
            inner.first_fail_at,
            inner.last_first_fail_at,
            inner.first_retry_at,
        )
    }

    /// When the last delivery arrived.
    pub fn last_delivery_at(&self) -> Option<Instant> {
        match self.shared.last_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.shared.epoch + Duration::from_nanos(ns)),
        }
    }

    /// Polls until `delivered() >= n` or `timeout`; returns whether it got there.
    pub async fn wait_delivered(&self, n: u64, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if self.delivered() >= n {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Resets latency histograms (between phases that share a receiver).
    pub fn reset_latency(&self) {
        let mut inner = self.shared.inner.lock();
        inner.latency.reset();
    }
}

#[derive(Deserialize)]
struct Probe {
    t: Option<u64>,
}

async fn handle(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if let Mode::Slow { delay } = s.mode {
        tokio::time::sleep(delay).await;
    }
    let now = Instant::now();
    s.requests.fetch_add(1, Ordering::Relaxed);
    let Some(id) = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        s.inner.lock().missing_id += 1;
        return StatusCode::OK;
    };
    let sent_ns = serde_json::from_slice::<Probe>(&body)
        .ok()
        .and_then(|p| p.t);
    let now_ns = u64::try_from(now.saturating_duration_since(s.epoch).as_nanos()).unwrap_or(0);
    let mut inner = s.inner.lock();
    let status = match s.mode {
        Mode::Ok | Mode::Slow { .. } => {
            if inner.seen.insert(id, Seen::Delivered).is_some() {
                inner.duplicates += 1;
            } else {
                inner.delivered += 1;
                if let Some(t) = sent_ns {
                    stats::record(
                        &mut inner.latency,
                        Duration::from_nanos(now_ns.saturating_sub(t)),
                    );
                }
            }
            StatusCode::OK
        }
        Mode::FailFirst { delay } => match inner.seen.get(&id) {
            None => {
                inner.seen.insert(id, Seen::Failed(now));
                inner.first_failures += 1;
                inner.first_fail_at.get_or_insert(now);
                inner.last_first_fail_at = Some(now);
                return StatusCode::INTERNAL_SERVER_ERROR;
            }
            Some(Seen::Failed(at)) => {
                let due = *at + delay;
                let late_us = if now >= due {
                    stats::record(&mut inner.lateness, now - due);
                    u64::try_from((now - due).as_micros()).unwrap_or(u64::MAX)
                } else {
                    inner.early += 1;
                    inner.max_early = inner.max_early.max(due - now);
                    0
                };
                let first = *inner.first_retry_at.get_or_insert(now);
                let sec = (now - first).as_secs() as usize;
                if sec < 3600 {
                    if inner.lateness_by_second.len() <= sec {
                        inner.lateness_by_second.resize(sec + 1, (0, 0));
                    }
                    let slot = &mut inner.lateness_by_second[sec];
                    slot.0 += 1;
                    slot.1 = slot.1.max(late_us);
                }
                inner.seen.insert(id, Seen::Retried);
                inner.delivered += 1;
                StatusCode::OK
            }
            Some(_) => {
                inner.duplicates += 1;
                StatusCode::OK
            }
        },
    };
    drop(inner);
    s.last_ns.fetch_max(now_ns, Ordering::Relaxed);
    status
}

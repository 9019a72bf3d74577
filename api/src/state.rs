//! What every handler shares.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use herald_core::backend::Backend;
use herald_core::cache::SubscriptionCache;
use herald_core::subscriptions::Subscriptions;
use herald_core::telemetry::Metrics;
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::Mutex;

/// Cloned by every extractor and middleware of every request: one reference count, not one per
/// field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub backend: Backend,
    pub cache: Arc<SubscriptionCache>,
    pub subscriptions: Arc<Subscriptions>,
    pub max_payload: usize,
    pub api_key: Option<Arc<str>>,
    pub ingest_key: Option<Arc<str>>,
    pub rate_limiter: Option<Arc<RateLimiter>>,
    pub metrics: PrometheusHandle,
    /// This app's counts (`/stats`) and counters; in standalone mode shared with the engine.
    pub telemetry: Arc<Metrics>,
    /// The queue counts `/metrics` serves, kept current off the scrape path.
    pub queue_gauges: Arc<crate::gauges::QueueGauges>,
}

/// A token bucket per subscription (and one for fan-out), refilled at `rate` per second.
pub struct RateLimiter {
    rate: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(rate_per_second: u32) -> Self {
        Self {
            rate: rate_per_second as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`; `false` when the bucket is empty.
    pub fn allow(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() > 100_000 {
            buckets.clear();
        }
        let (tokens, last) = buckets.entry(key.to_string()).or_insert((self.rate, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn buckets_allow_the_rate_then_refuse() {
        let rl = super::RateLimiter::new(3);
        assert!((0..3).all(|_| rl.allow("a")));
        assert!(!rl.allow("a"));
        assert!(rl.allow("b"), "buckets are per key");
    }

    #[test]
    fn a_panic_while_the_buckets_are_locked_leaves_the_limiter_usable() {
        let rl = std::sync::Arc::new(super::RateLimiter::new(3));
        let held = rl.clone();
        let panicked = std::thread::spawn(move || {
            let _buckets = held.buckets.lock();
            panic!("a panic while the buckets are held");
        })
        .join();
        assert!(panicked.is_err());
        assert!((0..3).all(|_| rl.allow("a")));
        assert!(!rl.allow("a"));
    }
}

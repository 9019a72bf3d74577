//! The delivery engine: claims due deliveries in batches, sends them with bounded concurrency
//! (per process and per subscription), and settles them in batches.
//!
//! A waiting retry is only a row in the queue with a due time: it holds no task, thread or
//! connection. Claimed jobs beyond a subscription's concurrency wait in a small per-subscription
//! backlog, and that subscription is skipped by further claims, so one slow subscriber cannot
//! starve the others.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use herald_core::backend::Backend;
use herald_core::cache::SubscriptionCache;
use herald_core::model::{Attempt, Disposition, Job, Outcome, Settlement};
use herald_core::retry::RetryPolicy;
use herald_core::ssrf::TargetGuard;
use herald_core::telemetry;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::attempt::{self, AttemptResult};
use crate::health::Health;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub policy: RetryPolicy,
    pub default_timeout: Duration,
    pub lease: Duration,
    /// Deliveries claimed and not yet settled, per process.
    pub concurrency: usize,
    /// Deliveries in flight per subscription, per process.
    pub per_subscription: usize,
    pub guard: TargetGuard,
    /// Longest idle wait between two looks at the queue.
    pub max_poll_interval: Duration,
    /// How long a shutdown waits for deliveries in flight.
    pub shutdown_grace: Duration,
    /// Failing this long disables a subscription (see `health`).
    pub disable_after: Duration,
}

impl EngineConfig {
    pub fn from_settings(s: &herald_core::config::Settings) -> Self {
        Self {
            policy: s.retry_policy(),
            default_timeout: s.delivery_timeout,
            lease: s.delivery_lease,
            concurrency: s.delivery_concurrency.max(1),
            per_subscription: s.subscription_concurrency.max(1),
            guard: s.target_guard(),
            max_poll_interval: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(20),
            disable_after: s.disable_after,
        }
    }
}

/// How long a delivery of a paused subscription waits before it is looked at again (resuming
/// the subscription makes it due at once).
const PAUSED_RECHECK: Duration = Duration::from_secs(60);
/// How long to wait before retrying a delivery whose subscription could not be read.
const STORE_RETRY: Duration = Duration::from_secs(5);
const SETTLE_BATCH: usize = 1024;

struct Done {
    settlement: Settlement,
    final_outcome: Option<bool>,
}

#[derive(Default)]
struct SubSlot {
    in_flight: usize,
    backlog: VecDeque<(Job, OwnedSemaphorePermit)>,
}

pub struct Engine {
    backend: Backend,
    cache: Arc<SubscriptionCache>,
    client: reqwest::Client,
    config: EngineConfig,
    slots: Mutex<HashMap<String, SubSlot>>,
    done_tx: mpsc::Sender<Done>,
    tasks: TaskTracker,
    /// Signalled when a subscription drops below its concurrency limit, so the dispatcher
    /// claims again instead of polling while it skips saturated subscriptions.
    unsaturated: Notify,
    health: Health,
}

impl Engine {
    /// Runs until `shutdown` is cancelled, then stops claiming, lets deliveries in flight finish
    /// (up to the grace period) and hands the rest back to the queue.
    pub async fn run(
        backend: Backend,
        cache: Arc<SubscriptionCache>,
        config: EngineConfig,
        shutdown: CancellationToken,
    ) {
        let (done_tx, done_rx) = mpsc::channel(SETTLE_BATCH * 4);
        let client = crate::http::client(config.guard.clone(), config.per_subscription.max(8));
        let recorder = tokio::spawn(record(backend.clone(), done_rx));
        let engine = Arc::new(Engine {
            health: Health::new(
                cache.clone(),
                backend.queue.clone(),
                config.guard.clone(),
                config.disable_after,
            ),
            backend,
            cache,
            client,
            config,
            slots: Mutex::new(HashMap::new()),
            done_tx,
            tasks: TaskTracker::new(),
            unsaturated: Notify::new(),
        });
        engine.clone().dispatch(shutdown).await;
        engine.tasks.close();
        if tokio::time::timeout(engine.config.shutdown_grace, engine.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("deliveries still in flight at shutdown; their leases will expire");
        }
        engine.hand_back_backlog().await;
        drop(engine);
        let _ = recorder.await;
    }

    async fn dispatch(self: Arc<Self>, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.config.concurrency));
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            if permits.available_permits() == 0 {
                tokio::select! {
                    p = permits.clone().acquire_owned() => drop(p),
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let want = permits.available_permits();
            let skip = self.saturated();
            let claimed = match self
                .backend
                .queue
                .claim(want, self.config.lease, &skip)
                .await
            {
                Ok(c) => {
                    failures = 0;
                    c
                }
                Err(e) => {
                    failures = (failures + 1).min(6);
                    tracing::warn!(error = %e, "claiming deliveries failed; retrying");
                    let backoff = Duration::from_millis(100 * 2u64.pow(failures));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {},
                        _ = shutdown.cancelled() => break,
                    }
                    continue;
                }
            };
            let got = claimed.jobs.len();
            for job in claimed.jobs {
                let permit = permits
                    .clone()
                    .try_acquire_owned()
                    .expect("only the dispatcher takes permits");
                self.clone().start(job, permit);
            }
            if got < want {
                let mut wait = self.config.max_poll_interval;
                if let Some(due) = claimed.next_due {
                    let until = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                    wait = wait.min(until.max(Duration::from_millis(1)));
                }
                tokio::select! {
                    _ = self.backend.queue.wait_for_work(wait) => {},
                    _ = self.unsaturated.notified(), if !skip.is_empty() => {},
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }

    /// Subscriptions at their concurrency limit: claims leave their deliveries for later.
    fn saturated(&self) -> Vec<String> {
        let slots = self.slots.lock().unwrap();
        slots
            .iter()
            .filter(|(_, s)| s.in_flight >= self.config.per_subscription)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn start(self: Arc<Self>, job: Job, permit: OwnedSemaphorePermit) {
        {
            let mut slots = self.slots.lock().unwrap();
            let slot = slots.entry(job.subscription_id.clone()).or_default();
            if slot.in_flight >= self.config.per_subscription {
                slot.backlog.push_back((job, permit));
                return;
            }
            slot.in_flight += 1;
        }
        let tasks = self.tasks.clone();
        tasks.spawn(self.run_job(job, permit));
    }

    async fn run_job(self: Arc<Self>, mut job: Job, mut permit: OwnedSemaphorePermit) {
        loop {
            let done = self.deliver(&job).await;
            // The channel only closes after the engine is dropped, which waits for this task.
            let _ = self.done_tx.send(done).await;
            drop(permit);
            let next = {
                let mut slots = self.slots.lock().unwrap();
                let slot = slots
                    .get_mut(&job.subscription_id)
                    .expect("slot of a running job");
                match slot.backlog.pop_front() {
                    Some(next) => Some(next),
                    None => {
                        slot.in_flight -= 1;
                        if slot.in_flight == 0 {
                            slots.remove(&job.subscription_id);
                        }
                        self.unsaturated.notify_one();
                        None
                    }
                }
            };
            match next {
                Some((j, p)) => {
                    job = j;
                    permit = p;
                }
                None => return,
            }
        }
    }

    async fn deliver(&self, job: &Job) -> Done {
        let now = Utc::now();
        let sub = match self.cache.get(&job.subscription_id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "reading a subscription failed; deferring");
                return self.defer(job, STORE_RETRY, Some(e.to_string()));
            }
        };
        let Some(sub) = sub else {
            let reason = "subscription deleted before the delivery completed".to_string();
            return self.unattempted_failure(job, "", reason);
        };
        if sub.paused {
            return self.defer(job, PAUSED_RECHECK, Some("subscription paused".into()));
        }
        if let Some(reason) = self.health.refusal(&sub) {
            return self.unattempted_failure(job, &sub.target_url, reason);
        }

        let timeout = sub.timeout(self.config.default_timeout);
        let mut r: AttemptResult =
            attempt::send(&self.client, &self.config.guard, &sub, job, timeout).await;
        metrics::histogram!(telemetry::ATTEMPT_DURATION).record(r.duration.as_secs_f64());
        let disabled = self.health.observe(&sub, &r).await;
        if disabled.is_some() {
            r.error = disabled.clone();
        }

        let policy = self
            .config
            .policy
            .with_overrides(sub.retry_schedule(), sub.max_attempts);
        let last_by_replay = job.final_attempt.is_some_and(|f| job.attempt >= f);
        let (outcome, disposition) = if r.success {
            (Outcome::Success, Disposition::Delivered)
        } else if disabled.is_some() {
            (Outcome::Failure, Disposition::Failed)
        } else {
            match policy.next_delay(job.attempt, r.retry_after) {
                Some(delay) if !last_by_replay => (
                    Outcome::FailedAttempt,
                    Disposition::RetryAt(
                        now + chrono::Duration::from_std(delay).unwrap_or_default(),
                    ),
                ),
                _ => (Outcome::Failure, Disposition::Failed),
            }
        };
        let outcome_label = match outcome {
            Outcome::Success => "success",
            Outcome::FailedAttempt => "failed_attempt",
            Outcome::Failure => "failure",
        };
        metrics::counter!(telemetry::ATTEMPTS, "outcome" => outcome_label).increment(1);
        let final_outcome = match outcome {
            Outcome::Success => Some(true),
            Outcome::Failure => Some(false),
            Outcome::FailedAttempt => None,
        };
        let attempt = Attempt {
            webhook_id: job.webhook_id.clone(),
            subscription_id: job.subscription_id.clone(),
            event_type: job.event_type.clone(),
            target_url: sub.target_url.clone(),
            attempted_at: now,
            attempt: job.attempt,
            outcome,
            http_status: r.http_status,
            error: r.error.clone(),
            duration_ms: r.duration.as_millis() as u64,
            response_excerpt: r.response_excerpt,
        };
        Done {
            settlement: self.settlement(job, Some(attempt), disposition, r.error),
            final_outcome,
        }
    }

    /// Ends a delivery as `Failure` without sending it (its subscription is gone or disabled).
    fn unattempted_failure(&self, job: &Job, target_url: &str, reason: String) -> Done {
        let attempt = Attempt {
            webhook_id: job.webhook_id.clone(),
            subscription_id: job.subscription_id.clone(),
            event_type: job.event_type.clone(),
            target_url: target_url.to_string(),
            attempted_at: Utc::now(),
            attempt: job.attempt,
            outcome: Outcome::Failure,
            http_status: None,
            error: Some(reason.clone()),
            duration_ms: 0,
            response_excerpt: None,
        };
        Done {
            settlement: self.settlement(job, Some(attempt), Disposition::Failed, Some(reason)),
            final_outcome: Some(false),
        }
    }

    fn defer(&self, job: &Job, wait: Duration, reason: Option<String>) -> Done {
        let at = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
        Done {
            settlement: self.settlement(job, None, Disposition::Defer(at), reason),
            final_outcome: None,
        }
    }

    /// The settlement of a job; with an attempt, that attempt counts.
    fn settlement(
        &self,
        job: &Job,
        attempt: Option<Attempt>,
        disposition: Disposition,
        last_error: Option<String>,
    ) -> Settlement {
        Settlement {
            attempts: if attempt.is_some() {
                job.attempt
            } else {
                job.attempt - 1
            },
            attempt,
            webhook_id: job.webhook_id.clone(),
            subscription_id: job.subscription_id.clone(),
            receipt: job.receipt.clone(),
            disposition,
            last_error,
        }
    }

    /// Returns claimed jobs that never started to the queue, due at once.
    async fn hand_back_backlog(&self) {
        let jobs: Vec<Job> = {
            let mut slots = self.slots.lock().unwrap();
            slots
                .values_mut()
                .flat_map(|s| s.backlog.drain(..).map(|(j, _)| j))
                .collect()
        };
        if jobs.is_empty() {
            return;
        }
        let now = Utc::now();
        let settlements = jobs
            .iter()
            .map(|j| self.settlement(j, None, Disposition::Defer(now), None))
            .collect();
        if let Err(e) = self.backend.queue.settle(settlements).await {
            tracing::warn!(error = %e, "handing back unstarted deliveries failed; leases will expire");
        }
    }
}

/// Settles finished jobs (with their attempt records) in batches. A failed write is retried:
/// the leases keep the deliveries from being claimed twice meanwhile, and if the process dies
/// they expire and the deliveries are made again (at least once).
async fn record(backend: Backend, mut rx: mpsc::Receiver<Done>) {
    let mut batch = Vec::with_capacity(SETTLE_BATCH);
    while rx.recv_many(&mut batch, SETTLE_BATCH).await > 0 {
        let mut settlements = Vec::with_capacity(batch.len());
        for d in batch.drain(..) {
            if let Some(succeeded) = d.final_outcome {
                telemetry::count_final(succeeded);
            }
            settlements.push(d.settlement);
        }
        let mut delay = Duration::from_millis(50);
        while let Err(e) = backend.queue.settle(settlements.clone()).await {
            tracing::warn!(error = %e, "settling deliveries failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

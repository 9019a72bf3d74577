//! The delivery engine: claims due deliveries, sends them with bounded concurrency (per
//! process and per subscription), and settles them in batches.
//!
//! A waiting retry is only a row in the queue with a due time: it holds no task, thread or
//! connection. A claim takes at most each subscription's free concurrency, and every claimed
//! job starts at once, so a global slot is never held by a job that only waits and one slow
//! subscriber cannot starve the others.
//!
//! Shutdown: claiming stops; attempts in flight get `shutdown_grace` to finish; then they are
//! cancelled and their deliveries handed back (a fenced settle, due now, no attempt logged);
//! the recorder writes what is left; heartbeats stop last, so no lease lapses before its
//! settlement is written.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use herald_core::backend::Backend;
use herald_core::cache::SubscriptionCache;
use herald_core::error::chain;
use herald_core::ids::SubscriptionId;
use herald_core::model::{Attempt, ClaimRequest, Disposition, Job, Outcome, Settlement};
use herald_core::retry::{self, due_after, AttemptOutcome, RetryPolicy};
use herald_core::spec::TIMEOUT_MS_LIMIT;
use herald_core::ssrf::TargetGuard;
use herald_core::telemetry::{self, Metrics};
use herald_runtime::config::{DeliveryArgs, ShutdownArgs, TargetArgs};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::attempt::{self, AttemptResult};
use crate::health::Health;
use crate::inflight::{Charge, InFlight, Slot};
use crate::liveness::Liveness;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub policy: RetryPolicy,
    pub default_timeout: Duration,
    /// The hard cap on a claim: heartbeats renew it, and it ends if they stop.
    pub lease: Duration,
    /// Deliveries in flight per process.
    pub concurrency: usize,
    /// Deliveries in flight per subscription, per process.
    pub per_subscription: usize,
    pub guard: TargetGuard,
    /// Longest idle wait between two looks at the queue.
    pub max_poll_interval: Duration,
    /// How long a shutdown lets attempts in flight finish before cancelling them.
    pub shutdown_grace: Duration,
    /// How often leases are renewed and stopped workers reaped.
    pub heartbeat: Duration,
    /// Silence after which a worker counts as stopped.
    pub stale_after: Duration,
    /// Payload bytes in flight per process (at least one job always runs).
    pub max_inflight_bytes: usize,
    /// Failing this long disables a subscription (see `health`).
    pub disable_after: Duration,
    /// The recorder's progress, which the process's liveness check reads (see
    /// [`RecorderWatch`]); `from_args` makes one with [`RECORDER_STALL`].
    pub recorder: Arc<RecorderWatch>,
    /// What this engine counts; in standalone mode the api's, so that `/stats` shows its
    /// deliveries. `from_settings` makes a new one.
    pub metrics: Arc<Metrics>,
}

/// A configuration the engine cannot run safely with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "HERALD_DELIVERY_LEASE ({lease:?}) must exceed the longest attempt timeout \
         ({timeout:?}) by at least {LEASE_MARGIN:?}, or a delivery could be taken over while \
         its attempt still runs"
    )]
    LeaseTooShort { lease: Duration, timeout: Duration },
    #[error(
        "HERALD_WORKER_STALE_AFTER ({stale_after:?}) must be at least twice \
         HERALD_WORKER_HEARTBEAT ({heartbeat:?}), or live workers would be taken for dead"
    )]
    StaleTooSoon {
        stale_after: Duration,
        heartbeat: Duration,
    },
}

/// How much longer than the longest attempt a lease must be.
pub const LEASE_MARGIN: Duration = Duration::from_secs(30);

impl EngineConfig {
    /// The longest the engine takes to stop once cancelled: the grace for attempts in flight,
    /// then bounded time for the cancelled ones and for the last settlements.
    pub fn stop_bound(&self) -> Duration {
        self.shutdown_grace + STOP_BOUND * 2
    }

    /// The engine's configuration from the delivery, target and shutdown settings; refuses a
    /// combination it cannot run safely with.
    pub fn from_args(
        s: &DeliveryArgs,
        targets: &TargetArgs,
        shutdown: &ShutdownArgs,
    ) -> Result<Self, ConfigError> {
        // A subscription may ask for up to TIMEOUT_MS_LIMIT, whatever the default is.
        let timeout = s
            .delivery_timeout
            .max(Duration::from_millis(TIMEOUT_MS_LIMIT));
        if s.delivery_lease < timeout + LEASE_MARGIN {
            return Err(ConfigError::LeaseTooShort {
                lease: s.delivery_lease,
                timeout,
            });
        }
        if s.worker_stale_after < s.worker_heartbeat * 2 {
            return Err(ConfigError::StaleTooSoon {
                stale_after: s.worker_stale_after,
                heartbeat: s.worker_heartbeat,
            });
        }
        Ok(Self {
            policy: s.retry_policy(),
            default_timeout: s.delivery_timeout,
            lease: s.delivery_lease,
            concurrency: s.delivery_concurrency.max(1),
            per_subscription: s.subscription_concurrency.max(1),
            guard: targets.target_guard(),
            max_poll_interval: Duration::from_millis(500),
            shutdown_grace: shutdown.shutdown_grace,
            heartbeat: s.worker_heartbeat,
            stale_after: s.worker_stale_after,
            max_inflight_bytes: s.max_inflight_bytes.max(1),
            disable_after: s.disable_after,
            recorder: RecorderWatch::new(RECORDER_STALL),
            metrics: Metrics::new(),
        })
    }
}

/// How long a delivery of a paused subscription waits before it is looked at again (resuming
/// the subscription makes it due at once).
const PAUSED_RECHECK: Duration = Duration::from_secs(60);
/// How long to wait before retrying a delivery whose subscription could not be read.
const STORE_RETRY: Duration = Duration::from_secs(5);
/// How long a delivery whose attempt panicked waits before it is tried again.
const PANIC_RETRY: Duration = Duration::from_secs(60);
const SETTLE_BATCH: usize = 1024;
/// How long cancelled attempts and the last settlements may take after the grace.
const STOP_BOUND: Duration = Duration::from_secs(5);

struct Done {
    settlement: Settlement,
    final_outcome: Option<bool>,
    /// Set for a delivery put off because its subscription was paused (see [`record`]).
    paused: bool,
}

/// A claimed job and what it holds while it runs; dropping it gives everything back.
struct Running {
    job: Job,
    _slot: Slot,
    _charge: Arc<Charge>,
    _permit: OwnedSemaphorePermit,
}

pub struct Engine {
    backend: Backend,
    cache: Arc<SubscriptionCache>,
    client: reqwest::Client,
    config: EngineConfig,
    worker: String,
    in_flight: Arc<InFlight>,
    done_tx: mpsc::Sender<Done>,
    tasks: TaskTracker,
    /// Cancelled at the end of the shutdown grace: attempts still running stop.
    hard_stop: CancellationToken,
    health: Health,
}

impl Engine {
    /// Runs until `shutdown` is cancelled, then stops claiming, lets deliveries in flight finish
    /// for up to the grace period, cancels and hands back the rest, and returns.
    pub async fn run(
        backend: Backend,
        cache: Arc<SubscriptionCache>,
        config: EngineConfig,
        shutdown: CancellationToken,
    ) {
        let (done_tx, done_rx) = mpsc::channel(SETTLE_BATCH * 4);
        let client = crate::http::client(config.guard.clone(), config.per_subscription.max(8));
        let worker = format!("wrk_{}", ulid::Ulid::new());
        let stop_liveness = CancellationToken::new();
        let liveness = tokio::spawn(
            Liveness {
                worker: worker.clone(),
                lease: config.lease,
                interval: config.heartbeat,
                stale_after: config.stale_after,
            }
            .run(backend.clone(), stop_liveness.clone()),
        );
        let recorder = tokio::spawn(record(
            backend.clone(),
            cache.clone(),
            done_rx,
            config.recorder.clone(),
            config.metrics.clone(),
        ));
        let engine = Arc::new(Engine {
            health: Health::new(
                cache.clone(),
                backend.intake.clone(),
                config.guard.clone(),
                config.disable_after,
            ),
            backend,
            cache,
            client,
            config,
            worker,
            in_flight: Arc::default(),
            done_tx,
            tasks: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
        });
        engine.clone().dispatch(shutdown).await;
        engine.tasks.close();
        if tokio::time::timeout(engine.config.shutdown_grace, engine.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = engine.tasks.len(),
                "shutdown grace over: cancelling attempts in flight and handing them back"
            );
            engine.hard_stop.cancel();
            let _ = tokio::time::timeout(STOP_BOUND, engine.tasks.wait()).await;
        }
        drop(engine);
        // The recorder ends once every job's sender is gone; its settlements are bounded work.
        if tokio::time::timeout(STOP_BOUND, recorder).await.is_err() {
            tracing::warn!("settlements still unwritten at exit; the reaper will return them");
        }
        stop_liveness.cancel();
        let _ = liveness.await;
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
            let busy = !self.in_flight.is_empty();
            let bytes = self.in_flight.bytes();
            if busy && bytes >= self.config.max_inflight_bytes {
                tokio::select! {
                    _ = self.in_flight.released() => {},
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let want = permits.available_permits();
            // Read before the claim's snapshot of what is in flight: a slot given back after
            // it is one this claim could not take.
            let freed_at_claim = self.in_flight.slots_freed();
            let req = ClaimRequest {
                max: want,
                lease: self.config.lease,
                worker: self.worker.clone().into(),
                per_subscription: self.config.per_subscription,
                in_flight: self.in_flight.per_subscription(),
                byte_budget: self.config.max_inflight_bytes.saturating_sub(bytes),
            };
            let claimed = match self.backend.queue.claim(&req).await {
                Ok(c) => {
                    failures = 0;
                    c
                }
                Err(e) => {
                    failures = (failures + 1).min(6);
                    telemetry::count_store_failure("claim");
                    tracing::warn!(error = %chain(&e), "claiming deliveries failed; retrying");
                    let backoff = Duration::from_millis(100 * 2u64.pow(failures));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {},
                        _ = shutdown.cancelled() => break,
                    }
                    continue;
                }
            };
            let got = claimed.jobs.len();
            self.start(claimed.jobs, &permits);
            if got < want {
                let mut wait = self.config.max_poll_interval;
                if let Some(due) = claimed.next_due {
                    let until = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                    wait = wait.min(until.max(Duration::from_millis(1)));
                }
                // A subscription below its cap again (or freed budget) may have due work.
                let busy = !self.in_flight.is_empty();
                tokio::select! {
                    _ = self.backend.queue.wait_for_work(wait) => {},
                    _ = self.in_flight.released(), if busy => {},
                    _ = shutdown.cancelled() => break,
                }
                if !self.linger(busy, freed_at_claim, &shutdown).await {
                    break;
                }
            }
        }
    }

    /// Runs claimed jobs, each holding its subscription's slot, a share of the payload budget
    /// and a permit (the claim asked for no more than the free permits).
    fn start(self: &Arc<Self>, jobs: Vec<Job>, permits: &Arc<Semaphore>) {
        // One charge per payload buffer: the jobs of one event share both.
        let mut charges: HashMap<usize, Arc<Charge>> = HashMap::new();
        for job in jobs {
            let charge = charges
                .entry(job.payload.as_ptr() as usize)
                .or_insert_with(|| Arc::new(self.in_flight.charge(job.payload.len())))
                .clone();
            let running = Running {
                _slot: self.in_flight.enter(&job.subscription_id),
                _charge: charge,
                _permit: permits
                    .clone()
                    .try_acquire_owned()
                    .expect("only the dispatcher takes permits"),
                job,
            };
            self.tasks.spawn(self.clone().run_job(running));
        }
    }

    /// Lets work gather before the next claim, for the backend's claim linger at most (see
    /// [`herald_core::backend::QueueTuning::claim_linger`]). It ends early once a claim is worth
    /// making at once: a whole subscription's concurrency has been given back since the last
    /// claim, or every job that was in flight when the wait began has finished. Otherwise a
    /// busy subscription's jobs, which tend to finish together, would leave its slots idle
    /// for the whole linger at every round, and the linger alone would bound its delivery
    /// rate. Returns false on shutdown.
    async fn linger(&self, busy: bool, freed_at_claim: u64, shutdown: &CancellationToken) -> bool {
        let linger = self.backend.tuning.claim_linger;
        if linger.is_zero() {
            return true;
        }
        let until = tokio::time::Instant::now() + linger;
        let enough = || {
            self.in_flight.slots_freed() - freed_at_claim >= self.config.per_subscription as u64
                || (busy && self.in_flight.is_empty())
        };
        while !enough() {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                _ = self.in_flight.released(), if busy => {},
                _ = shutdown.cancelled() => return false,
            }
        }
        true
    }

    async fn run_job(self: Arc<Self>, running: Running) {
        let job = &running.job;
        let done = tokio::select! {
            biased;
            _ = self.hard_stop.cancelled() => self.defer(job, Duration::ZERO, Some("handed back at shutdown".into())),
            r = AssertUnwindSafe(self.deliver(job)).catch_unwind() => match r {
                Ok(done) => done,
                Err(_) => {
                    tracing::error!(webhook_id = %job.webhook_id, subscription_id = %job.subscription_id, "delivery attempt panicked; retrying later");
                    self.defer(job, PANIC_RETRY, Some("internal error during the attempt".into()))
                }
            },
        };
        // The channel only closes after the engine is dropped, which waits for this task.
        let _ = self.done_tx.send(done).await;
        drop(running);
    }

    async fn deliver(&self, job: &Job) -> Done {
        let started = Utc::now();
        let sub = match self.cache.get(&job.subscription_id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %chain(&e), "reading a subscription failed; deferring");
                return self.defer(job, STORE_RETRY, Some(e.to_string()));
            }
        };
        let Some(sub) = sub else {
            let reason = "subscription deleted before the delivery completed".to_string();
            return self.unattempted_failure(job, "", reason);
        };
        if sub.paused {
            return Done {
                paused: true,
                ..self.defer(job, PAUSED_RECHECK, Some("subscription paused".into()))
            };
        }
        if let Some(reason) = self.health.refusal(&sub) {
            return self.unattempted_failure(job, &sub.target_url, reason);
        }

        let timeout = sub.timeout(self.config.default_timeout);
        let mut r: AttemptResult =
            attempt::send(&self.client, &self.config.guard, &sub, job, timeout).await;
        let disabled = self.health.observe(&sub, &r).await;
        if disabled.is_some() {
            r.error = disabled.clone();
        }

        let policy = self
            .config
            .policy
            .with_overrides(sub.retry_schedule(), sub.max_attempts);
        let decision = retry::decide(
            &policy,
            job.attempt_no,
            job.final_attempt_no,
            &AttemptOutcome {
                success: r.success,
                http_status: r.http_status,
                retry_after: r.retry_after,
                endpoint_disabled: disabled.is_some(),
            },
            // Now, the end of the attempt: a timed-out attempt is not retried at once.
            Utc::now(),
        );
        let outcome = decision.outcome();
        self.config.metrics.count_attempt(outcome, r.duration);
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
            attempted_at: started,
            attempt_no: job.attempt_no,
            outcome,
            http_status: r.http_status,
            error: r.error.clone(),
            duration_ms: r.duration.as_millis() as u64,
            response_excerpt: r.response_excerpt,
        };
        Done {
            settlement: self.settlement(job, Some(attempt), decision.disposition(), r.error),
            final_outcome,
            paused: false,
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
            attempt_no: job.attempt_no,
            outcome: Outcome::Failure,
            http_status: None,
            error: Some(reason.clone()),
            duration_ms: 0,
            response_excerpt: None,
        };
        Done {
            settlement: self.settlement(job, Some(attempt), Disposition::Failed, Some(reason)),
            final_outcome: Some(false),
            paused: false,
        }
    }

    fn defer(&self, job: &Job, wait: Duration, reason: Option<String>) -> Done {
        let now = Utc::now();
        let at = due_after(now, wait).unwrap_or(now);
        Done {
            settlement: self.settlement(job, None, Disposition::Defer(at), reason),
            final_outcome: None,
            paused: false,
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
            attempts_made: if attempt.is_some() {
                job.attempt_no
            } else {
                job.attempt_no - 1
            },
            attempt,
            webhook_id: job.webhook_id.clone(),
            subscription_id: job.subscription_id.clone(),
            receipt: job.receipt.clone(),
            disposition,
            last_error,
        }
    }
}

/// Settles finished jobs (with their attempt records) in batches. A failed write is retried:
/// the heartbeats keep the leases meanwhile, and if the process dies the reaper returns the
/// deliveries and they are made again (at least once). A write the store refuses for good
/// (`StoreError::is_permanent`) is not retried: see [`settle_all`].
///
/// Deliveries put off because their subscription was paused wait [`PAUSED_RECHECK`]; resuming
/// makes the waiting ones due at once (`Intake::expedite`). Failure point: a resume whose
/// expedite ran while some of them were still on their way here (claimed while paused,
/// settled after) would leave those for the whole wait. So after settling them the recorder
/// reads their subscription again (the resume invalidated the cache before it expedited),
/// and expedites once more if it is no longer paused.
async fn record(
    backend: Backend,
    cache: Arc<SubscriptionCache>,
    mut rx: mpsc::Receiver<Done>,
    watch: Arc<RecorderWatch>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(SETTLE_BATCH);
    let linger = backend.tuning.settle_linger;
    while rx.recv_many(&mut batch, SETTLE_BATCH).await > 0 {
        watch.busy();
        if !linger.is_zero() {
            let until = tokio::time::Instant::now() + linger;
            while batch.len() < SETTLE_BATCH {
                let room = SETTLE_BATCH - batch.len();
                match tokio::time::timeout_at(until, rx.recv_many(&mut batch, room)).await {
                    Ok(n) if n > 0 => {}
                    // Closed (shutdown) or the linger is over.
                    _ => break,
                }
            }
        }
        let mut settlements = Vec::with_capacity(batch.len());
        let mut paused = HashSet::new();
        for d in batch.drain(..) {
            if let Some(succeeded) = d.final_outcome {
                metrics.count_final(succeeded);
            }
            if d.paused {
                paused.insert(d.settlement.subscription_id.clone());
            }
            settlements.push(d.settlement);
        }
        settle_all(&backend, settlements, &watch).await;
        for id in paused {
            expedite_if_resumed(&backend, &cache, &id).await;
        }
        watch.idle();
    }
}

/// Makes the put-off deliveries of subscription `id` due now unless it is still paused (see
/// [`record`]). A failed read or expedite leaves them to their recheck.
async fn expedite_if_resumed(backend: &Backend, cache: &SubscriptionCache, id: &SubscriptionId) {
    match cache.get(id).await {
        Ok(Some(sub)) if sub.paused => {}
        Ok(_) => {
            if let Err(e) = backend.intake.expedite(id).await {
                tracing::warn!(error = %chain(&e), subscription = %id, "expediting resumed deliveries failed");
            }
        }
        Err(e) => {
            tracing::warn!(error = %chain(&e), subscription = %id, "reading a paused subscription failed")
        }
    }
}

/// Settles `settlements`, retrying transient failures with a growing delay. A settle refused
/// for good is split in halves, and the halves settled on their own, until each refused
/// settlement stands alone: the others are written, and one refused alone is ended
/// ([`end_refused`]). So one write that can never succeed holds up nothing but itself.
///
/// Failure points: a transient failure that never ends (the store stays down) keeps the batch
/// here; the watch then reports the recorder stuck after its stall bound, the liveness check
/// fails and the process is restarted, and the reaper hands its deliveries to the others.
async fn settle_all(backend: &Backend, settlements: Vec<Settlement>, watch: &RecorderWatch) {
    let mut parts = vec![settlements];
    while let Some(mut part) = parts.pop() {
        let mut delay = Duration::from_millis(50);
        loop {
            match backend.queue.settle(part.clone()).await {
                Ok(stale) => {
                    if stale > 0 {
                        // Another worker holds these now (this one was taken for dead, or its
                        // lease ended): their outcome is that worker's to record.
                        tracing::warn!(stale, "settlements under lost leases were ignored");
                        metrics::counter!(telemetry::STALE_SETTLEMENTS).increment(stale);
                    }
                    watch.progressed();
                    break;
                }
                Err(e) if e.is_permanent() && part.len() > 1 => {
                    let half = part.split_off(part.len() / 2);
                    parts.push(half);
                    parts.push(part);
                    break;
                }
                Err(e) if e.is_permanent() => {
                    if let Some(s) = part.pop() {
                        end_refused(backend, s, &e).await;
                    }
                    watch.progressed();
                    break;
                }
                Err(e) => {
                    telemetry::count_store_failure("settle");
                    tracing::warn!(error = %chain(&e), "settling deliveries failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// How long a settlement whose record the store refused is set aside when even ending it
/// without the record is refused.
const PARK_FOR: Duration = Duration::from_secs(3600);

/// Ends a delivery whose settlement the store refused for good: as `Failure`, without the
/// attempt record that could not be written, the refusal as its error (what
/// `GET /webhooks/{id}` shows). If that is refused too, the delivery is handed back for an
/// hour (no attempt counted), so that it holds no lease meanwhile. Transient failures of these
/// writes are retried a few times; after that the lease is left to the reaper.
async fn end_refused(backend: &Backend, s: Settlement, refusal: &herald_core::StoreError) {
    let reason = format!(
        "the delivery's record was refused by the store: {}",
        refusal.chain()
    );
    tracing::error!(webhook_id = %s.webhook_id, subscription_id = %s.subscription_id, reason, "ending the delivery without its record");
    metrics::counter!(telemetry::SETTLEMENTS_REFUSED).increment(1);
    let (webhook_id, subscription_id) = (s.webhook_id.clone(), s.subscription_id.clone());
    let now = Utc::now();
    let ended = Settlement {
        attempt: None,
        disposition: Disposition::Failed,
        last_error: Some(reason.clone()),
        ..s.clone()
    };
    let parked = Settlement {
        attempt: None,
        attempts_made: s
            .attempts_made
            .saturating_sub(u32::from(s.attempt.is_some())),
        disposition: Disposition::Defer(due_after(now, PARK_FOR).unwrap_or(now)),
        last_error: Some(reason),
        ..s
    };
    for settlement in [ended, parked] {
        for _ in 0..5 {
            match backend.queue.settle(vec![settlement.clone()]).await {
                Ok(_) => return,
                Err(e) if e.is_permanent() => break,
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "ending a refused settlement failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    tracing::error!(%webhook_id, %subscription_id, "could not end or hand back a delivery whose record was refused; its lease is left to the reaper");
}

/// How long the recorder may hold settlements it cannot write before the process counts as
/// stuck. A settle normally follows every settle linger (25 ms in production mode) while there
/// is work; two minutes is thousands of lingers, past which only a store that keeps failing
/// (or a bug) explains the wait, and a restart lets the reaper hand the deliveries to others.
/// Longer than a short store outage, which the engine rides out without a restart.
pub const RECORDER_STALL: Duration = Duration::from_secs(120);

/// The recorder's progress, for the process's liveness check (`/healthz` of
/// `herald-delivery`): stuck when it has held settlements for longer than `stall` without
/// writing any. Idle (nothing to write) is never stuck.
#[derive(Debug)]
pub struct RecorderWatch {
    started: std::time::Instant,
    /// When (ms after `started`, plus one) the recorder last made progress while it held
    /// work; 0 while it holds none.
    waiting_since: AtomicU64,
    stall: Duration,
}

impl RecorderWatch {
    pub fn new(stall: Duration) -> Arc<Self> {
        Arc::new(Self {
            started: std::time::Instant::now(),
            waiting_since: AtomicU64::new(0),
            stall,
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// The recorder took work: it has held it since now, unless it held some already.
    fn busy(&self) {
        let _ =
            self.waiting_since
                .compare_exchange(0, self.now(), Ordering::AcqRel, Ordering::Acquire);
    }

    /// A settle went through: what is left has waited from now.
    fn progressed(&self) {
        self.waiting_since.store(self.now(), Ordering::Release);
    }

    /// Nothing left to write.
    fn idle(&self) {
        self.waiting_since.store(0, Ordering::Release);
    }

    /// `Err` with the reason while the recorder has held settlements without writing any for
    /// longer than its stall bound.
    pub fn check(&self) -> Result<(), String> {
        let since = self.waiting_since.load(Ordering::Acquire);
        if since == 0 {
            return Ok(());
        }
        let waited = Duration::from_millis(self.now().saturating_sub(since));
        if waited > self.stall {
            Err(format!(
                "the delivery recorder has not written a settlement for {waited:?} while it \
                 holds some (the limit is {:?}): the store keeps failing",
                self.stall
            ))
        } else {
            Ok(())
        }
    }
}

//! The benchmark scenarios: floors, ingest, end-to-end, retries, memory, fairness.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::floor::{self, LocalRedis};
use crate::herald::{Herald, Launch};
use crate::http::{self, Base};
use crate::load::{self, CpuMeter, CpuUse, LoadResult, Op, ProcCpu, Spec};
use crate::procs::{self, ProcRef};
use crate::receiver::{self, Receiver};
use crate::stats::{self, Percentiles};

/// Where the Herald under test comes from.
#[derive(Clone)]
pub struct Ctx {
    pub epoch: Instant,
    /// An already-running Herald (`--url`) and, optionally, its pid.
    pub url: Option<String>,
    pub pid: Option<u32>,
    /// Otherwise, how to start a standalone one (fresh data directory per scenario).
    pub launch: Launch,
    pub data_root: PathBuf,
}

impl Ctx {
    pub async fn herald(&self, extra_env: &[(String, String)]) -> Result<Herald> {
        match &self.url {
            Some(url) => Herald::external(url, self.pid).await,
            None => Herald::spawn(&self.launch, extra_env).await,
        }
    }
}

fn ingest_op(base: &Base, sub: &str, kind: &'static str) -> Op {
    Op::Http {
        base: base.clone(),
        path: format!("/ingest/{sub}"),
        headers: vec![(
            HeaderName::from_static("event-type"),
            HeaderValue::from_static("bench.event"),
        )],
        body: load::payload(kind),
    }
}

fn cpu_note(c: &CpuUse) -> String {
    let mut s = String::new();
    if let Some(p) = c.server_pct {
        s += &format!(", Herald CPU {p:.0}%");
    }
    for p in &c.procs {
        s += &format!(", {} {:.0}%", p.name, p.pct);
    }
    if let Some(p) = c.harness_pct {
        s += &format!(", harness {p:.0}%");
    }
    if let Some(p) = c.iowait_pct.filter(|&p| p >= 1.0) {
        s += &format!(", iowait {p:.0}%");
    }
    if let Some(p) = c.other_pct.filter(|&p| p >= 10.0) {
        s += &format!(", OTHER PROCESSES {p:.0}% (disturbed)");
    }
    s
}

/// Waits until the receiver has every accepted event; records the wait on the phase.
async fn drain(r: &mut LoadResult, receiver: &Receiver, expected: u64, timeout: Duration) {
    let t = Instant::now();
    let ok = receiver.wait_delivered(expected, timeout).await;
    r.drain_s = Some(t.elapsed().as_secs_f64());
    r.undelivered = Some(if ok {
        0
    } else {
        expected.saturating_sub(receiver.delivered())
    });
}

// ---------------------------------------------------------------------------------------------
// Floors

#[derive(Debug, Clone)]
pub struct FloorOpts {
    pub connections: Vec<usize>,
    pub duration: Duration,
    pub max_requests: u64,
    pub redis_url: Option<String>,
    /// The pid of the Redis at `redis_url`, when the harness started it.
    pub redis_pid: Option<u32>,
    pub no_redis: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FloorResult {
    /// Empty axum handler (HTTP ceiling).
    pub http: Vec<LoadResult>,
    /// An axum handler doing one Redis XADD per request (HTTP + Redis floor).
    pub http_redis: Vec<LoadResult>,
    /// XADD alone, as many concurrent callers as connections, one multiplexed connection.
    pub redis_xadd: Vec<LoadResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_note: Option<String>,
}

pub async fn floor(ctx: &Ctx, o: &FloorOpts) -> Result<FloorResult> {
    let mut out = FloorResult::default();
    println!("== floor: empty axum handler (HTTP ceiling)");
    {
        let server = floor::empty_server()?;
        let op = ingest_op(&Base::from_addr(server.addr), "sub_floor", "floor");
        for &c in &o.connections {
            let spec = Spec {
                label: "floor http (empty handler)".into(),
                connections: c,
                duration: o.duration,
                max_requests: o.max_requests,
                rate: None,
            };
            let r = load::run_measured(&spec, &op, ctx.epoch, &[]).await?;
            r.print();
            out.http.push(r);
        }
    }
    if o.no_redis {
        out.redis_note = Some("skipped (--no-redis)".into());
        return Ok(out);
    }
    let mut _local = None;
    let url = match &o.redis_url {
        Some(u) => u.clone(),
        None => match LocalRedis::start(&ctx.data_root).await {
            Ok(r) => {
                let u = r.url.clone();
                _local = Some(r);
                u
            }
            Err(e) => {
                println!("== floor: Redis skipped: {e:#}");
                out.redis_note = Some(format!("skipped: {e:#}"));
                return Ok(out);
            }
        },
    };
    let redis_procs: Vec<ProcRef> = _local
        .as_ref()
        .map(|r: &LocalRedis| r.pid())
        .or(o.redis_pid)
        .map(|pid| ProcRef::server("redis-server", pid))
        .into_iter()
        .collect();
    let conn = floor::connect(&url).await?;
    println!("== floor: one Redis XADD per request ({url}, AOF everysec when started here)");
    {
        let server = floor::redis_server_handler(conn.clone())?;
        let op = ingest_op(&Base::from_addr(server.addr), "sub_floor", "floor");
        for &c in &o.connections {
            let spec = Spec {
                label: "floor http + redis XADD".into(),
                connections: c,
                duration: o.duration,
                max_requests: o.max_requests,
                rate: None,
            };
            let r = load::run_measured(&spec, &op, ctx.epoch, &redis_procs).await?;
            r.print();
            out.http_redis.push(r);
        }
    }
    {
        let conn = Arc::new(conn.clone());
        let op = Op::Custom(Arc::new(move |seq| {
            let mut c = (*conn).clone();
            Box::pin(async move {
                let body = format!(r#"{{"bench":"xadd","seq":{seq}}}"#);
                redis::cmd("XADD")
                    .arg("herald:bench:xadd")
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(1_000_000)
                    .arg("*")
                    .arg("p")
                    .arg(body)
                    .query_async::<String>(&mut c)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
        }));
        for &c in &o.connections {
            let spec = Spec {
                label: "redis XADD alone".into(),
                connections: c,
                duration: o.duration,
                max_requests: o.max_requests,
                rate: None,
            };
            let r = load::run_measured(&spec, &op, ctx.epoch, &redis_procs).await?;
            r.print();
            out.redis_xadd.push(r);
        }
    }
    // Herald's scenarios may run on this Redis next: leave it as small as it was.
    let mut c = conn.clone();
    let _: redis::RedisResult<u64> = redis::cmd("DEL")
        .arg("herald:bench:floor")
        .arg("herald:bench:xadd")
        .query_async(&mut c)
        .await;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Ingest

#[derive(Debug, Clone)]
pub struct IngestOpts {
    pub connections: Vec<usize>,
    pub duration: Duration,
    pub max_requests: u64,
    pub rate: f64,
    pub open_connections: usize,
    pub open_duration: Duration,
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct IngestResult {
    pub closed: Vec<LoadResult>,
    /// redis-mongo: the same closed-loop runs with the delivery processes stopped (SIGSTOP)
    /// while the load runs and continued (SIGCONT) for the drain, so that the api has the
    /// machine to itself, as the floor does (it delivers nothing). On two cores the `closed`
    /// runs share them with two delivery processes and FerretDB; in a deployment the api pods
    /// run beside neither. Empty in standalone mode (one process does both).
    pub api_alone: Vec<LoadResult>,
    pub open: Option<LoadResult>,
    pub accepted: u64,
    pub delivered: u64,
}

pub async fn ingest(ctx: &Ctx, o: &IngestOpts) -> Result<IngestResult> {
    let herald = ctx.herald(&[]).await?;
    let receiver = Receiver::start(receiver::Mode::Ok, ctx.epoch)?;
    let sub = http::create_subscription(&herald.base, &json!({"target_url": receiver.hook_url()}))
        .await?;
    let op = ingest_op(&herald.base, &sub, "ingest");
    println!(
        "== ingest: POST {}/ingest/{sub} (deliveries go to the harness's receiver)",
        herald.base.url()
    );
    let mut out = IngestResult::default();
    let delivery = herald.delivery_pids();
    // redis-mongo: a second pass with the api alone (see `IngestResult::api_alone`).
    let passes: &[bool] = if delivery.is_empty() {
        &[false]
    } else {
        &[false, true]
    };
    for &alone in passes {
        for &c in &o.connections {
            let spec = Spec {
                label: if alone {
                    "ingest closed loop, api alone (delivery processes stopped)"
                } else {
                    "ingest closed loop"
                }
                .into(),
                connections: c,
                duration: o.duration,
                max_requests: o.max_requests,
                rate: None,
            };
            let stopped = alone.then(|| Stopped::new(&delivery)).transpose()?;
            let r = load::run_measured(&spec, &op, ctx.epoch, &herald.procs).await;
            drop(stopped);
            let mut r = r?;
            out.accepted += r.ok;
            drain(&mut r, &receiver, out.accepted, o.drain_timeout).await;
            r.print();
            if alone {
                out.api_alone.push(r);
            } else {
                out.closed.push(r);
            }
        }
    }
    if o.rate > 0.0 {
        let spec = Spec {
            label: "ingest open loop".into(),
            connections: o.open_connections,
            duration: o.open_duration,
            max_requests: (o.rate * o.open_duration.as_secs_f64()).ceil() as u64 + 1,
            rate: Some(o.rate),
        };
        let mut r = load::run_measured(&spec, &op, ctx.epoch, &herald.procs).await?;
        out.accepted += r.ok;
        drain(&mut r, &receiver, out.accepted, o.drain_timeout).await;
        r.print();
        out.open = Some(r);
    }
    out.delivered = receiver.delivered();
    Ok(out)
}

/// Processes stopped with SIGSTOP until this is dropped (SIGCONT), also when the phase fails.
/// A stop of a few seconds stays well inside the delivery processes' heartbeat bound, so no
/// process takes the other for dead.
struct Stopped(Vec<u32>);

impl Stopped {
    fn new(pids: &[u32]) -> Result<Self> {
        let mut stopped = Self(Vec::with_capacity(pids.len()));
        for &pid in pids {
            signal(pid, libc::SIGSTOP).with_context(|| format!("SIGSTOP {pid}"))?;
            stopped.0.push(pid);
        }
        Ok(stopped)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ = signal(pid, libc::SIGCONT);
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is a child the harness started.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------------------------------------
// End to end

#[derive(Debug, Clone)]
pub struct E2eOpts {
    pub events: u64,
    pub connections: usize,
    pub rate: f64,
    pub steady_duration: Duration,
    pub timeout: Duration,
    /// Events queued to a paused subscription, then released at once (0: skip).
    pub backlog: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct E2eResult {
    pub events: u64,
    /// The burst's ingest phase (closed loop, `events` requests).
    pub burst_ingest: LoadResult,
    /// Distinct webhooks received from the burst.
    pub burst_received: u64,
    pub burst_all_received: bool,
    /// First ingest sent to last delivery received.
    pub burst_total_s: f64,
    /// `burst_received / burst_total_s`.
    pub deliveries_per_s: f64,
    /// Last ingest answered to last delivery received.
    pub drain_s: f64,
    /// Deliveries received after the last ingest was answered, per second of drain (when the
    /// drain lasted at least 100 ms).
    pub drain_rate: Option<f64>,
    /// Herald's CPU from the first ingest to the last delivery, % of one core.
    pub burst_server_cpu_pct: Option<f64>,
    /// CPU from the first ingest to the last delivery (server, harness, other processes).
    pub burst_cpu: CpuUse,
    pub duplicates: u64,
    /// Backlog phase: events queued while the subscription was paused.
    pub backlog_events: u64,
    /// Backlog phase: resume (PATCH paused=false answered) to last delivery received.
    pub backlog_drain_s: f64,
    /// Backlog phase: delivery alone, no ingest competing: `backlog_events / backlog_drain_s`.
    pub backlog_deliveries_per_s: f64,
    pub backlog_all_received: bool,
    pub backlog_server_cpu_pct: Option<f64>,
    pub backlog_cpu: CpuUse,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog_note: Option<String>,
    /// The steady phase's ingest (open loop at `rate`).
    pub steady_ingest: Option<LoadResult>,
    pub steady_all_received: bool,
    /// Ingest (intended send time) to receipt.
    pub steady_latency: Percentiles,
}

pub async fn e2e(ctx: &Ctx, o: &E2eOpts) -> Result<E2eResult> {
    let herald = ctx.herald(&[]).await?;
    let receiver = Receiver::start(receiver::Mode::Ok, ctx.epoch)?;
    let spec_json = json!({"target_url": receiver.hook_url()});
    let burst_sub = http::create_subscription(&herald.base, &spec_json).await?;
    println!(
        "== e2e: burst of {} events, then {:.0}/s for {:?}",
        o.events, o.rate, o.steady_duration
    );
    let meter = CpuMeter::start(&herald.procs);
    let spec = Spec {
        label: "e2e burst ingest".into(),
        connections: o.connections,
        duration: o.timeout,
        max_requests: o.events,
        rate: None,
    };
    let op = ingest_op(&herald.base, &burst_sub, "e2e");
    let mut burst = load::run_measured(&spec, &op, ctx.epoch, &herald.procs).await?;
    let ingest_end = Instant::now();
    let at_end = receiver.delivered();
    let all = receiver.wait_delivered(burst.ok, o.timeout).await;
    let received = receiver.delivered();
    let last = receiver.last_delivery_at().unwrap_or(ingest_end);
    let started = burst.started_at.unwrap_or(ingest_end);
    let burst_cpu = meter.finish();
    let total_s = last
        .saturating_duration_since(started)
        .as_secs_f64()
        .max(1e-9);
    let drain_s = last.saturating_duration_since(ingest_end).as_secs_f64();
    burst.undelivered = Some(burst.ok.saturating_sub(received));
    burst.print();
    let mut out = E2eResult {
        events: o.events,
        burst_received: received,
        burst_all_received: all,
        burst_total_s: total_s,
        deliveries_per_s: received as f64 / total_s,
        drain_s,
        drain_rate: (drain_s >= 0.1).then(|| received.saturating_sub(at_end) as f64 / drain_s),
        burst_server_cpu_pct: burst_cpu.server_pct,
        burst_cpu,
        burst_ingest: burst,
        ..Default::default()
    };
    println!(
        "e2e burst: {received}/{} delivered in {total_s:.2} s = {:.0} deliveries/s (drain after the last 202: {drain_s:.2} s{}){}",
        out.burst_ingest.ok,
        out.deliveries_per_s,
        out.drain_rate
            .map(|r| format!(" at {r:.0}/s"))
            .unwrap_or_default(),
        cpu_note(&out.burst_cpu)
    );
    let mut expected = out.burst_ingest.ok;
    if o.backlog > 0 {
        match backlog(ctx, &herald, &receiver, o, expected).await {
            Ok((events, drain_s, all, cpu)) => {
                expected += events;
                out.backlog_events = events;
                out.backlog_drain_s = drain_s;
                out.backlog_deliveries_per_s = events as f64 / drain_s.max(1e-9);
                out.backlog_all_received = all;
                out.backlog_server_cpu_pct = cpu.server_pct;
                out.backlog_cpu = cpu.clone();
                println!(
                    "e2e backlog: {events} queued while paused, delivered in {drain_s:.2} s after resume = {:.0} deliveries/s{}",
                    out.backlog_deliveries_per_s,
                    cpu_note(&cpu)
                );
            }
            Err(e) => {
                println!("e2e backlog: skipped: {e:#}");
                out.backlog_note = Some(format!("{e:#}"));
                // Whatever it queued still arrives; count it so the steady phase's wait holds.
                expected = receiver.delivered().max(expected);
            }
        }
    }
    if o.rate > 0.0 {
        receiver.reset_latency();
        let steady_sub = http::create_subscription(&herald.base, &spec_json).await?;
        let spec = Spec {
            label: "e2e steady ingest".into(),
            connections: 8,
            duration: o.steady_duration,
            max_requests: (o.rate * o.steady_duration.as_secs_f64()).ceil() as u64 + 1,
            rate: Some(o.rate),
        };
        let op = ingest_op(&herald.base, &steady_sub, "e2e");
        let mut r = load::run_measured(&spec, &op, ctx.epoch, &herald.procs).await?;
        let expected = expected + r.ok;
        drain(&mut r, &receiver, expected, o.timeout).await;
        r.print();
        out.steady_all_received = r.undelivered == Some(0);
        out.steady_ingest = Some(r);
        out.steady_latency = receiver.snapshot().latency;
        let l = &out.steady_latency;
        println!(
            "e2e steady: ingest-to-receipt p50 {:.2} ms  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({} deliveries)",
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
        );
    }
    out.duplicates = receiver.snapshot().duplicates;
    Ok(out)
}

/// Queues `o.backlog` events to a paused subscription, resumes it, and times the delivery of
/// the backlog alone. Returns (events, seconds, all received, Herald CPU %).
/// Resumes a paused subscription: its whole backlog becomes due at once.
async fn resume(herald: &Herald, sub: &str) -> Result<()> {
    let path = format!("/subscriptions/{sub}");
    let (status, body) = http::call_json(
        &herald.base,
        hyper::Method::PATCH,
        &path,
        Some(&json!({"paused": false})),
    )
    .await?;
    if !status.is_success() {
        bail!("PATCH {path} answered {status}: {body}");
    }
    Ok(())
}

async fn backlog(
    ctx: &Ctx,
    herald: &Herald,
    receiver: &Receiver,
    o: &E2eOpts,
    already: u64,
) -> Result<(u64, f64, bool, CpuUse)> {
    let spec = json!({"target_url": receiver.hook_url(), "paused": true});
    let sub = http::create_subscription(&herald.base, &spec).await?;
    let load_spec = Spec {
        label: "e2e backlog ingest (paused)".into(),
        connections: o.connections,
        duration: o.timeout,
        max_requests: o.backlog,
        rate: None,
    };
    let op = ingest_op(&herald.base, &sub, "e2e");
    let r = load::run_measured(&load_spec, &op, ctx.epoch, &herald.procs).await?;
    r.print();
    if r.errors > 0 {
        bail!("{} ingest errors while queueing the backlog", r.errors);
    }
    // Let the paused deliveries settle into "deferred" before resuming.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let early = receiver.delivered().saturating_sub(already);
    if early > 0 {
        bail!("{early} deliveries arrived while the subscription was paused: pausing does not hold deliveries in this Herald");
    }
    let meter = CpuMeter::start(&herald.procs);
    resume(herald, &sub).await?;
    let resumed = Instant::now();
    let all = receiver.wait_delivered(already + r.ok, o.timeout).await;
    let last = receiver.last_delivery_at().unwrap_or(resumed);
    let secs = last.saturating_duration_since(resumed).as_secs_f64();
    Ok((r.ok, secs, all, meter.finish()))
}

// ---------------------------------------------------------------------------------------------
// Retries

#[derive(Debug, Clone)]
pub struct RetryOpts {
    pub count: u64,
    pub delay: Duration,
    pub connections: usize,
    /// Extra time allowed, past the last retry's due time, for every retry to arrive.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryResult {
    pub count: u64,
    pub delay_s: f64,
    pub ingest: LoadResult,
    /// First attempts answered 500.
    pub first_failures: u64,
    /// Retries answered 200.
    pub retried: u64,
    pub all_retried: bool,
    /// Retries waiting (failed once, not yet retried) while CPU was measured.
    pub waiting_during_cpu_window: u64,
    /// Herald's CPU while every retry waited, % of one core (None: no window; see note).
    pub waiting_cpu_pct: Option<f64>,
    /// Other processes' CPU over the same window, % of one core.
    pub waiting_other_cpu_pct: Option<f64>,
    /// Each followed process's CPU over that window (redis-mongo mode).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting_procs: Vec<ProcCpu>,
    pub cpu_window_s: f64,
    /// Retry arrival minus due time (due = the 500 answer + delay).
    pub lateness: Percentiles,
    pub early_retries: u64,
    pub max_early_ms: f64,
    /// Per second since the first retry arrived: (retries received, max lateness ms).
    pub lateness_by_second: Vec<(u64, f64)>,
    pub duplicates: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

pub async fn retries(ctx: &Ctx, o: &RetryOpts) -> Result<RetryResult> {
    let schedule = stats::schedule_string(o.delay);
    let herald = ctx
        .herald(&[("HERALD_RETRY_SCHEDULE".into(), schedule.clone())])
        .await?;
    let receiver = Receiver::start(receiver::Mode::FailFirst { delay: o.delay }, ctx.epoch)?;
    let mut note = None;
    // The per-subscription schedule makes an external Herald (--url) behave too; a Herald
    // that rejects the field still has HERALD_RETRY_SCHEDULE when the harness started it.
    let spec =
        json!({"target_url": receiver.hook_url(), "retry_schedule": [schedule], "max_attempts": 2});
    let sub = match http::create_subscription(&herald.base, &spec).await {
        Ok(s) => s,
        Err(e) => {
            note = Some(format!(
                "per-subscription retry_schedule refused ({e:#}); relying on HERALD_RETRY_SCHEDULE"
            ));
            http::create_subscription(&herald.base, &json!({"target_url": receiver.hook_url()}))
                .await?
        }
    };
    println!(
        "== retries: {} webhooks, first attempt answered 500, retry due {schedule} later",
        o.count
    );
    let spec = Spec {
        label: "retries ingest".into(),
        connections: o.connections,
        duration: o.delay + o.timeout,
        max_requests: o.count,
        rate: None,
    };
    let op = ingest_op(&herald.base, &sub, "retry");
    let ingest = load::run_measured(&spec, &op, ctx.epoch, &herald.procs).await?;
    ingest.print();
    let accepted = ingest.ok;
    // Every first attempt made (and failed)?
    let end = Instant::now() + o.delay + o.timeout;
    while receiver.first_failures() < accepted && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (first_fail, last_fail, _) = receiver.fail_times();
    let mut out = RetryResult {
        count: o.count,
        delay_s: o.delay.as_secs_f64(),
        first_failures: receiver.first_failures(),
        ..Default::default()
    };
    // CPU while they all wait: from 1 s after the last first attempt to 0.5 s before the
    // earliest retry is due.
    if let (Some(_), Some(first)) = (herald.pid, first_fail) {
        let start = Instant::now() + Duration::from_secs(1);
        let stop = first + o.delay - Duration::from_millis(500).min(o.delay);
        if stop > start + Duration::from_secs(1) {
            tokio::time::sleep_until(start.into()).await;
            out.waiting_during_cpu_window = receiver.first_failures() - receiver.delivered();
            let window = stop - Instant::now();
            let meter = CpuMeter::start(&herald.procs);
            tokio::time::sleep(window).await;
            let cpu = meter.finish();
            out.waiting_cpu_pct = cpu.server_pct;
            out.waiting_other_cpu_pct = cpu.other_pct;
            out.waiting_procs = cpu.procs;
            out.cpu_window_s = window.as_secs_f64();
            println!(
                "retries: {} waiting; Herald CPU while they wait {:.2}% of a core (over {:.1} s)",
                out.waiting_during_cpu_window,
                out.waiting_cpu_pct.unwrap_or(f64::NAN),
                out.cpu_window_s
            );
        } else {
            note = Some(format!(
                "no idle window to measure CPU: the first attempts took longer than the delay ({schedule}); use a longer --delay"
            ));
        }
    } else if herald.pid.is_none() {
        note = Some("Herald's pid unknown (--url without --pid): CPU not measured".into());
    }
    let deadline = last_fail.unwrap_or_else(Instant::now) + o.delay + o.timeout;
    let wait = deadline.saturating_duration_since(Instant::now());
    out.all_retried = receiver.wait_delivered(accepted, wait).await;
    let snap = receiver.snapshot();
    out.retried = snap.delivered;
    out.lateness = snap.lateness;
    out.early_retries = snap.early_retries;
    out.max_early_ms = snap.max_early_ms;
    out.lateness_by_second = snap.lateness_by_second;
    out.duplicates = snap.duplicates;
    out.ingest = ingest;
    out.note = note;
    let l = &out.lateness;
    println!(
        "retries: {}/{} retried; lateness p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms; early {}",
        out.retried, out.first_failures, l.p50_ms, l.p99_ms, l.max_ms, out.early_retries
    );
    if !out.lateness_by_second.is_empty() {
        let series: Vec<String> = out
            .lateness_by_second
            .iter()
            .map(|(n, ms)| format!("{n}/{ms:.0}"))
            .collect();
        println!(
            "retries: per second since the first retry (received/max lateness ms): {}",
            series.join(" ")
        );
    }
    if let Some(n) = &out.note {
        println!("retries: note: {n}");
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Memory

#[derive(Debug, Clone)]
pub struct MemoryOpts {
    pub idle: Duration,
    pub duration: Duration,
    pub rate: f64,
    pub connections: usize,
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryResult {
    pub idle_rss_kib: u64,
    /// Highest RSS sampled (every 250 ms) during the run and its drain.
    pub peak_rss_kib: u64,
    /// VmHWM at the end (the kernel's own peak).
    pub hwm_kib: u64,
    /// RSS a quarter of the way into the run (warmed up).
    pub warm_rss_kib: u64,
    /// RSS at the end of the run.
    pub end_rss_kib: u64,
    /// RSS after the backlog drained and 2 s passed.
    pub after_drain_rss_kib: u64,
    /// RSS half way through the run.
    pub mid_rss_kib: u64,
    /// `end / warm - 1`, in percent.
    pub growth_pct: f64,
    /// `end / mid - 1`, in percent: growth over the second half, once bounded caches (SQLite's
    /// page cache) have had time to fill.
    pub growth_second_half_pct: f64,
    pub load: LoadResult,
    /// (seconds since the run started, RSS KiB), one a second.
    pub samples: Vec<(f64, u64)>,
    /// Each followed process on its own (redis-mongo mode: api, each delivery process, Redis,
    /// FerretDB); the fields above are the first one's (the api).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub procs: Vec<ProcMemory>,
}

/// One process's RSS over the memory scenario, in KiB.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcMemory {
    pub name: String,
    /// One of Herald's processes (not the servers it runs on).
    pub herald: bool,
    pub idle_rss_kib: u64,
    pub warm_rss_kib: u64,
    pub mid_rss_kib: u64,
    pub end_rss_kib: u64,
    pub after_drain_rss_kib: u64,
    pub peak_rss_kib: u64,
    pub hwm_kib: u64,
    pub growth_pct: f64,
    pub growth_second_half_pct: f64,
}

pub async fn memory(ctx: &Ctx, o: &MemoryOpts) -> Result<MemoryResult> {
    let herald = ctx.herald(&[]).await?;
    let Some(pid) = herald.pid else {
        bail!("memory needs Herald's pid: pass --pid with --url");
    };
    let pids: Vec<u32> = herald.procs.iter().map(|p| p.pid).collect();
    let rss_all = {
        let pids = pids.clone();
        move || -> Vec<u64> {
            pids.iter()
                .map(|&p| procs::rss_kib(p).map(|(r, _)| r).unwrap_or(0))
                .collect()
        }
    };
    tokio::time::sleep(o.idle).await;
    let idle = rss_all();
    println!(
        "== memory: idle RSS {} KiB (pid {pid}){}",
        idle[0],
        per_proc_kib(&herald.procs, &idle)
    );
    let receiver = Receiver::start(receiver::Mode::Ok, ctx.epoch)?;
    let sub = http::create_subscription(&herald.base, &json!({"target_url": receiver.hook_url()}))
        .await?;
    let spec = Spec {
        label: "memory sustained ingest".into(),
        connections: o.connections,
        duration: o.duration,
        max_requests: (o.rate * o.duration.as_secs_f64()).ceil() as u64 + 1,
        rate: Some(o.rate),
    };
    let op = ingest_op(&herald.base, &sub, "memory");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let rss_all = rss_all.clone();
        let n_procs = pids.len();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let mut samples = Vec::new();
            let mut peak = vec![0u64; n_procs];
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let r = rss_all();
                for (p, v) in peak.iter_mut().zip(&r) {
                    *p = (*p).max(*v);
                }
                if n.is_multiple_of(4) {
                    samples.push((t0.elapsed().as_secs_f64(), r[0]));
                }
                n += 1;
            }
            (peak, samples)
        })
    };
    let t_load = Instant::now();
    let at = |frac: u32| {
        let when = t_load + o.duration / frac;
        let rss_all = rss_all.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(when.into()).await;
            rss_all()
        })
    };
    let warm = at(4);
    let mid = at(2);
    let mut load = load::run_measured(&spec, &op, ctx.epoch, &herald.procs).await?;
    let end_rss = rss_all();
    let accepted = load.ok;
    drain(&mut load, &receiver, accepted, o.drain_timeout).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_all();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (peak, samples) = sampler.await.context("sampler")?;
    let warm = warm.await.context("warm sample")?;
    let mid = mid.await.context("mid sample")?;
    let growth = |from: u64, to: u64| {
        if from > 0 {
            (to as f64 / from as f64 - 1.0) * 100.0
        } else {
            0.0
        }
    };
    load.print();
    let mut procs: Vec<ProcMemory> = herald
        .procs
        .iter()
        .enumerate()
        .map(|(i, p)| ProcMemory {
            name: p.name.clone(),
            herald: p.server,
            idle_rss_kib: idle[i],
            warm_rss_kib: warm[i],
            mid_rss_kib: mid[i],
            end_rss_kib: end_rss[i],
            after_drain_rss_kib: after[i],
            peak_rss_kib: peak[i].max(end_rss[i]).max(after[i]),
            hwm_kib: procs::rss_kib(p.pid).map(|(_, h)| h).unwrap_or(0),
            growth_pct: growth(warm[i], end_rss[i]),
            growth_second_half_pct: growth(mid[i], end_rss[i]),
        })
        .collect();
    let first = procs[0].clone();
    if procs.len() == 1 {
        procs.clear();
    }
    for p in &procs {
        println!(
            "memory {:<14} idle {:.1} MiB, ½ in {:.1} MiB, peak {:.1} MiB, end {:.1} MiB, after drain {:.1} MiB; growth ½->end {:+.1}%",
            p.name,
            mib(p.idle_rss_kib),
            mib(p.mid_rss_kib),
            mib(p.peak_rss_kib),
            mib(p.end_rss_kib),
            mib(p.after_drain_rss_kib),
            p.growth_second_half_pct
        );
    }
    let out = MemoryResult {
        idle_rss_kib: first.idle_rss_kib,
        peak_rss_kib: first.peak_rss_kib,
        hwm_kib: first.hwm_kib,
        warm_rss_kib: first.warm_rss_kib,
        mid_rss_kib: first.mid_rss_kib,
        growth_second_half_pct: first.growth_second_half_pct,
        end_rss_kib: first.end_rss_kib,
        after_drain_rss_kib: first.after_drain_rss_kib,
        growth_pct: first.growth_pct,
        load,
        samples,
        procs,
    };
    println!(
        "memory: idle {:.1} MiB, ¼ in {:.1} MiB, ½ in {:.1} MiB, peak {:.1} MiB (HWM {:.1}), end {:.1} MiB, after drain {:.1} MiB; growth ¼->end {:+.1}%, ½->end {:+.1}%",
        mib(out.idle_rss_kib),
        mib(out.warm_rss_kib),
        mib(out.mid_rss_kib),
        mib(out.peak_rss_kib),
        mib(out.hwm_kib),
        mib(out.end_rss_kib),
        mib(out.after_drain_rss_kib),
        out.growth_pct,
        out.growth_second_half_pct
    );
    Ok(out)
}

fn per_proc_kib(procs: &[ProcRef], kib: &[u64]) -> String {
    if procs.len() < 2 {
        return String::new();
    }
    let parts: Vec<String> = procs
        .iter()
        .zip(kib)
        .map(|(p, k)| format!("{} {:.1} MiB", p.name, mib(*k)))
        .collect();
    format!(": {}", parts.join(", "))
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------------------------------------
// Fairness

#[derive(Debug, Clone)]
pub struct FairnessOpts {
    /// Events queued for the slow subscriber.
    pub backlog: u64,
    /// How long the slow subscriber takes to answer.
    pub slow_delay: Duration,
    /// The other subscriber's steady ingest rate and duration (both phases).
    pub rate: f64,
    pub duration: Duration,
    pub connections: usize,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FairnessResult {
    pub backlog: u64,
    pub slow_delay_s: f64,
    pub backlog_ingest: LoadResult,
    /// The other subscriber alone.
    pub unloaded_ingest: LoadResult,
    pub unloaded_latency: Percentiles,
    /// The other subscriber while the slow one's backlog is being delivered.
    pub loaded_ingest: LoadResult,
    pub loaded_latency: Percentiles,
    /// Loaded p99 over unloaded p99 (the target: at most 2).
    pub p99_ratio: f64,
    /// Slow deliveries made during the loaded phase.
    pub slow_delivered: u64,
    pub all_received: bool,
}

/// One subscriber with a large backlog answering slowly, another at a normal rate: the second's
/// ingest-to-receipt latency, with and without the backlog.
pub async fn fairness(ctx: &Ctx, o: &FairnessOpts) -> Result<FairnessResult> {
    let herald = ctx.herald(&[]).await?;
    let fast_rx = Receiver::start(receiver::Mode::Ok, ctx.epoch)?;
    let slow_rx = Receiver::start(
        receiver::Mode::Slow {
            delay: o.slow_delay,
        },
        ctx.epoch,
    )?;
    let fast =
        http::create_subscription(&herald.base, &json!({"target_url": fast_rx.hook_url()})).await?;
    let slow = http::create_subscription(
        &herald.base,
        &json!({"target_url": slow_rx.hook_url(), "paused": true}),
    )
    .await?;
    println!(
        "== fairness: {:.0}/s to one subscriber, alone and beside {} queued for one answering in {:?}",
        o.rate, o.backlog, o.slow_delay
    );
    let steady = |label: &str| Spec {
        label: label.into(),
        connections: o.connections,
        duration: o.duration,
        max_requests: (o.rate * o.duration.as_secs_f64()).ceil() as u64 + 1,
        rate: Some(o.rate),
    };
    let fast_op = ingest_op(&herald.base, &fast, "fairness");

    let mut unloaded = load::run_measured(
        &steady("fairness unloaded"),
        &fast_op,
        ctx.epoch,
        &herald.procs,
    )
    .await?;
    let mut expected = unloaded.ok;
    drain(&mut unloaded, &fast_rx, expected, o.timeout).await;
    unloaded.print();
    let unloaded_latency = fast_rx.snapshot().latency;

    let backlog_spec = Spec {
        label: "fairness backlog ingest (paused)".into(),
        connections: o.connections,
        duration: o.timeout,
        max_requests: o.backlog,
        rate: None,
    };
    let backlog = load::run_measured(
        &backlog_spec,
        &ingest_op(&herald.base, &slow, "backlog"),
        ctx.epoch,
        &herald.procs,
    )
    .await?;
    backlog.print();
    if backlog.errors > 0 {
        bail!(
            "{} ingest errors while queueing the backlog",
            backlog.errors
        );
    }
    resume(&herald, &slow).await?;
    // Let the released backlog take its slots first.
    tokio::time::sleep(o.slow_delay * 2).await;
    let slow_before = slow_rx.delivered();
    fast_rx.reset_latency();
    let mut loaded = load::run_measured(
        &steady("fairness loaded"),
        &fast_op,
        ctx.epoch,
        &herald.procs,
    )
    .await?;
    expected += loaded.ok;
    drain(&mut loaded, &fast_rx, expected, o.timeout).await;
    loaded.print();
    let loaded_latency = fast_rx.snapshot().latency;
    let slow_delivered = slow_rx.delivered().saturating_sub(slow_before);
    let p99_ratio = if unloaded_latency.p99_ms > 0.0 {
        loaded_latency.p99_ms / unloaded_latency.p99_ms
    } else {
        0.0
    };
    println!(
        "fairness: p99 ingest-to-receipt {:.2} ms alone, {:.2} ms beside the backlog ({p99_ratio:.2}×); {slow_delivered} slow deliveries meanwhile",
        unloaded_latency.p99_ms, loaded_latency.p99_ms
    );
    Ok(FairnessResult {
        backlog: o.backlog,
        slow_delay_s: o.slow_delay.as_secs_f64(),
        all_received: unloaded.undelivered == Some(0) && loaded.undelivered == Some(0),
        backlog_ingest: backlog,
        unloaded_ingest: unloaded,
        unloaded_latency,
        loaded_ingest: loaded,
        loaded_latency,
        p99_ratio,
        slow_delivered,
    })
}

//! The load generator: closed loop (each connection sends its next request as soon as the
//! previous one is answered) and open loop (a fixed rate, wrk2-style: each connection owns an
//! equal share of a fixed schedule, and every latency is measured from the request's *intended*
//! send time, so a stalled server is charged for the requests it kept waiting; no coordinated
//! omission). Every run is bounded both in time and in request count.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::header::{HeaderName, HeaderValue};
use hyper::Method;
use serde::{Deserialize, Serialize};

use crate::http::{self, Base};
use crate::procs::ProcRef;
use crate::stats::{self, Percentiles};

/// Builds the body of request number `seq`; `t_ns` is its intended send time in nanoseconds
/// since the harness's epoch (e2e payloads carry it so the receiver can measure latency).
pub type BodyFn = Arc<dyn Fn(u64, u64) -> Bytes + Send + Sync>;

/// What one request does: the HTTP shape (the usual case) or an arbitrary async operation (the
/// raw Redis floor), judged a success when it returns `Ok`.
#[derive(Clone)]
pub enum Op {
    Http {
        base: Base,
        path: String,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: BodyFn,
    },
    Custom(CustomOp),
}

pub type CustomOp =
    Arc<dyn Fn(u64) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Debug, Clone)]
pub struct Spec {
    pub label: String,
    pub connections: usize,
    pub duration: Duration,
    /// Hard cap on requests started, whatever the duration.
    pub max_requests: u64,
    /// `None`: closed loop. `Some(r)`: open loop at `r` requests/s in total.
    pub rate: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadResult {
    pub label: String,
    pub mode: String,
    pub connections: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rate: Option<f64>,
    pub elapsed_s: f64,
    /// Answered with a 2xx.
    pub ok: u64,
    /// Non-2xx answers, I/O errors, timeouts.
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// `ok / elapsed_s`.
    pub rps: f64,
    pub latency: Percentiles,
    /// CPU of the server under test during the phase, % of one core (when its pid is known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_pct: Option<f64>,
    /// Server CPU time per answered request, in microseconds: unlike req/s, this barely moves
    /// when other work shares the machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_req: Option<f64>,
    /// CPU of the harness process itself (load generator, receiver, in-process floors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub harness_cpu_pct: Option<f64>,
    /// CPU used meanwhile by everything else on the machine (other processes, the kernel's
    /// own threads), % of one core. Over ~10 % means the figures were disturbed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_cpu_pct: Option<f64>,
    /// Ingest phases: seconds after the phase until the receiver had every accepted event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_s: Option<f64>,
    /// Ingest phases: accepted events not delivered when the drain wait gave up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undelivered: Option<u64>,
    /// Time the machine's cores sat idle waiting for disk I/O, % of one core: a phase bound by
    /// fsync (FerretDB's SQLite commits) shows here rather than as CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iowait_pct: Option<f64>,
    /// CPU of each followed process (when there are several: Herald's api and delivery
    /// processes, Redis, FerretDB).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub procs: Vec<ProcCpu>,
    /// When the clock started (not serialized).
    #[serde(skip)]
    pub started_at: Option<Instant>,
}

impl LoadResult {
    pub fn print(&self) {
        let rate = self
            .target_rate
            .map(|r| format!(" @ {r:.0}/s"))
            .unwrap_or_default();
        println!(
            "{:<28} {:>6} conns{rate:<10} {:>10.0} req/s  p50 {:>7.2} ms  p90 {:>7.2}  p99 {:>7.2}  p99.9 {:>7.2}  max {:>8.2}  ok {:>8}  errors {}",
            self.label,
            self.connections,
            self.rps,
            self.latency.p50_ms,
            self.latency.p90_ms,
            self.latency.p99_ms,
            self.latency.p999_ms,
            self.latency.max_ms,
            self.ok,
            self.errors,
        );
        let mut extra = Vec::new();
        if let Some(c) = self.server_cpu_pct {
            extra.push(format!("server CPU {c:.0}%"));
        }
        if let Some(c) = self.server_cpu_us_per_req {
            extra.push(format!("{c:.0} µs server CPU/request"));
        }
        for p in &self.procs {
            extra.push(format!("{} {:.0}%", p.name, p.pct));
        }
        if let Some(c) = self.harness_cpu_pct {
            extra.push(format!("harness CPU {c:.0}%"));
        }
        if let Some(c) = self.iowait_pct.filter(|&c| c >= 1.0) {
            extra.push(format!("iowait {c:.0}%"));
        }
        if let Some(c) = self.other_cpu_pct.filter(|&c| c >= 10.0) {
            extra.push(format!("OTHER PROCESSES {c:.0}% CPU (disturbed)"));
        }
        if let Some(d) = self.drain_s {
            extra.push(format!("drained in {d:.2} s"));
        }
        if let Some(u) = self.undelivered.filter(|&u| u > 0) {
            extra.push(format!("UNDELIVERED {u}"));
        }
        if !extra.is_empty() {
            println!("{:<28} {}", "", extra.join(", "));
        }
        if let Some(e) = &self.first_error {
            println!("{:<28} first error: {e}", "");
        }
    }
}

struct WorkerOut {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Per-request timeout: a request stuck this long counts as an error and its connection is
/// dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One process's CPU over a phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcCpu {
    pub name: String,
    /// % of one core.
    pub pct: f64,
    /// CPU seconds spent.
    pub s: f64,
}

/// CPU use over an interval: the server under test, the harness, everything else.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuUse {
    /// % of one core.
    pub server_pct: Option<f64>,
    pub harness_pct: Option<f64>,
    /// Other processes and the kernel's own threads; over ~10 % the figures were disturbed.
    pub other_pct: Option<f64>,
    /// Server CPU seconds spent.
    pub server_s: Option<f64>,
    /// The machine's cores idle waiting for disk I/O, % of one core.
    pub iowait_pct: Option<f64>,
    /// Each followed process on its own (Herald's processes and the servers it runs on).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub procs: Vec<ProcCpu>,
}

/// Measures [`CpuUse`] from /proc between `start` and `finish`.
pub struct CpuMeter {
    t0: Instant,
    procs: Vec<(ProcRef, Option<f64>)>,
    h0: Option<f64>,
    m0: Option<f64>,
    w0: Option<f64>,
}

impl CpuMeter {
    pub fn start(procs: &[ProcRef]) -> Self {
        Self {
            t0: Instant::now(),
            procs: procs
                .iter()
                .map(|p| (p.clone(), crate::procs::cpu_seconds(p.pid)))
                .collect(),
            h0: crate::procs::cpu_seconds(std::process::id()),
            m0: crate::procs::machine_busy_seconds(),
            w0: crate::procs::machine_iowait_seconds(),
        }
    }

    pub fn finish(&self) -> CpuUse {
        let dt = self.t0.elapsed().as_secs_f64().max(1e-9);
        let h1 = crate::procs::cpu_seconds(std::process::id());
        let m1 = crate::procs::machine_busy_seconds();
        let w1 = crate::procs::machine_iowait_seconds();
        let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        let pct = |d: Option<f64>| d.map(|d| d / dt * 100.0);
        let mut procs = Vec::new();
        let mut server_s: Option<f64> = None;
        let mut followed_s = 0.0;
        for (p, s0) in &self.procs {
            let Some(s) = delta(*s0, crate::procs::cpu_seconds(p.pid)) else {
                continue;
            };
            followed_s += s;
            if p.server {
                server_s = Some(server_s.unwrap_or(0.0) + s);
            }
            procs.push(ProcCpu {
                name: p.name.clone(),
                pct: s / dt * 100.0,
                s,
            });
        }
        let harness = pct(delta(self.h0, h1));
        let server = pct(server_s);
        let other = pct(delta(self.m0, m1))
            .map(|m| (m - harness.unwrap_or(0.0) - followed_s / dt * 100.0).max(0.0));
        CpuUse {
            server_pct: server,
            harness_pct: harness,
            other_pct: other,
            server_s,
            iowait_pct: pct(delta(self.w0, w1)),
            // One process alone is the server figure already.
            procs: if self.procs.len() > 1 {
                procs
            } else {
                Vec::new()
            },
        }
    }
}

/// Runs one load phase and records the CPU used meanwhile by the followed processes, by the
/// harness and by everything else.
pub async fn run_measured(
    spec: &Spec,
    op: &Op,
    epoch: Instant,
    procs: &[ProcRef],
) -> Result<LoadResult> {
    let meter = CpuMeter::start(procs);
    let mut r = run(spec, op, epoch).await?;
    let cpu = meter.finish();
    r.server_cpu_pct = cpu.server_pct;
    r.harness_cpu_pct = cpu.harness_pct;
    r.other_cpu_pct = cpu.other_pct;
    r.server_cpu_us_per_req = cpu
        .server_s
        .filter(|_| r.ok > 0)
        .map(|s| s / r.ok as f64 * 1e6);
    r.iowait_pct = cpu.iowait_pct;
    r.procs = cpu.procs;
    Ok(r)
}

/// Runs one load phase. `epoch` is the harness's time origin for payload timestamps.
pub async fn run(spec: &Spec, op: &Op, epoch: Instant) -> Result<LoadResult> {
    let conns = spec.connections.max(1);
    // Open every connection before the clock starts.
    let mut senders = Vec::with_capacity(conns);
    if let Op::Http { base, .. } = op {
        for _ in 0..conns {
            senders.push(Some(http::connect(base.addr).await?));
        }
    } else {
        senders.resize_with(conns, || None);
    }
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(20);
    let deadline = start + spec.duration;
    let mut tasks = Vec::with_capacity(conns);
    for (idx, sender) in senders.into_iter().enumerate() {
        let op = op.clone();
        let spec = spec.clone();
        let issued = issued.clone();
        tasks.push(tokio::spawn(async move {
            worker(
                idx, conns, sender, &spec, &op, epoch, start, deadline, &issued,
            )
            .await
        }));
    }
    let mut hist = stats::new_hist();
    let (mut ok, mut errors, mut first_error) = (0, 0, None);
    for t in tasks {
        let out = t.await?;
        hist.add(&out.hist).ok();
        ok += out.ok;
        errors += out.errors;
        if first_error.is_none() {
            first_error = out.first_error;
        }
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    Ok(LoadResult {
        label: spec.label.clone(),
        mode: if spec.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .into(),
        connections: conns,
        target_rate: spec.rate,
        elapsed_s: elapsed,
        ok,
        errors,
        first_error,
        rps: ok as f64 / elapsed,
        latency: Percentiles::from_hist(&hist),
        started_at: Some(start),
        ..Default::default()
    })
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    idx: usize,
    conns: usize,
    mut sender: Option<http::Sender>,
    spec: &Spec,
    op: &Op,
    epoch: Instant,
    start: Instant,
    deadline: Instant,
    issued: &AtomicU64,
) -> WorkerOut {
    let mut out = WorkerOut {
        hist: stats::new_hist(),
        ok: 0,
        errors: 0,
        first_error: None,
    };
    // Open loop: this connection's share of the schedule, staggered across connections.
    let interval = spec.rate.map(|r| conns as f64 / r.max(1e-9));
    let offset = interval.map(|iv| iv * idx as f64 / conns as f64);
    tokio::time::sleep_until(start.into()).await;
    let mut k: u64 = 0;
    loop {
        let intended = match (interval, offset) {
            (Some(iv), Some(off)) => start + Duration::from_secs_f64(off + iv * k as f64),
            _ => Instant::now(),
        };
        if intended >= deadline {
            break;
        }
        let seq = issued.fetch_add(1, Ordering::Relaxed);
        if seq >= spec.max_requests {
            break;
        }
        k += 1;
        if interval.is_some() {
            tokio::time::sleep_until(intended.into()).await;
        }
        let t_ns = u64::try_from(intended.saturating_duration_since(epoch).as_nanos()).unwrap_or(0);
        let result = match op {
            Op::Http {
                base,
                path,
                headers,
                body,
            } => http_once(&mut sender, base, path, headers, body(seq, t_ns)).await,
            Op::Custom(f) => match tokio::time::timeout(REQUEST_TIMEOUT, f(seq)).await {
                Ok(r) => r,
                Err(_) => Err("timed out".into()),
            },
        };
        match result {
            Ok(()) => {
                out.ok += 1;
                stats::record(&mut out.hist, intended.elapsed());
            }
            Err(e) => {
                out.errors += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(e);
                }
                if Instant::now() >= deadline {
                    break;
                }
                if sender.is_none() {
                    // Connection failures: back off a little rather than spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    out
}

async fn http_once(
    sender: &mut Option<http::Sender>,
    base: &Base,
    path: &str,
    headers: &[(HeaderName, HeaderValue)],
    body: Bytes,
) -> Result<(), String> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = Some(
            http::connect(base.addr)
                .await
                .map_err(|e| format!("connect: {e:#}"))?,
        );
    }
    let s = sender.as_mut().expect("connected above");
    let fut = http::send(s, Method::POST, &base.authority, path, headers, body);
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok((status, _))) if status.is_success() => Ok(()),
        Ok(Ok((status, bytes))) => Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        )),
        Ok(Err(e)) => {
            *sender = None;
            Err(format!("{e:#}"))
        }
        Err(_) => {
            *sender = None;
            Err("timed out".into())
        }
    }
}

/// The small JSON payload every ingest carries: a sequence number and the intended send time.
pub fn payload(kind: &'static str) -> BodyFn {
    Arc::new(move |seq, t_ns| {
        Bytes::from(format!(
            r#"{{"bench":"{kind}","seq":{seq},"t":{t_ns},"order":{{"id":"ord_{seq}","amount":4200,"currency":"EUR"}}}}"#
        ))
    })
}

//! The matrix's results: the JSON document and its Markdown rendering.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::herald::Mode;
use crate::load::{CpuUse, LoadResult, ProcCpu};
use crate::scenarios::{
    mib, E2eResult, FairnessResult, FloorResult, IngestResult, MemoryResult, RetryResult,
};

/// A phase's result, or why it has none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Phase<T> {
    Done(T),
    Failed { error: String },
}

impl<T> Phase<T> {
    pub fn from_result(r: anyhow::Result<T>) -> Self {
        match r {
            Ok(v) => Phase::Done(v),
            Err(e) => Phase::Failed {
                error: format!("{e:#}"),
            },
        }
    }

    pub fn done(&self) -> Option<&T> {
        match self {
            Phase::Done(v) => Some(v),
            Phase::Failed { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_kib: u64,
    pub kernel: String,
    /// /proc/loadavg when the run started: other work on the machine skews every figure.
    pub loadavg_at_start: String,
}

impl Machine {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|| "unknown".into()),
            mem_total_kib: meminfo
                .lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            loadavg_at_start: std::fs::read_to_string("/proc/loadavg")
                .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModeResults {
    pub ingest: Phase<IngestResult>,
    pub e2e: Phase<E2eResult>,
    pub retries: Phase<RetryResult>,
    pub memory: Phase<MemoryResult>,
    /// Absent in results older than the scenario.
    #[serde(default = "not_run")]
    pub fairness: Phase<FairnessResult>,
}

fn not_run<T>() -> Phase<T> {
    Phase::Failed {
        error: "not run".into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    /// None: not measured (mode missing, phase failed).
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Matrix {
    pub date: String,
    pub commit: String,
    pub command: String,
    pub machine: Machine,
    /// Where the standalone Herald came from (binary path or --url).
    pub herald: String,
    pub settings: serde_json::Value,
    pub floor: Phase<FloorResult>,
    pub standalone: Option<ModeResults>,
    /// What redis-mongo mode ran on (processes, Redis, MongoDB), or why it did not run.
    pub redis_mongo: String,
    /// The mode this run measured (results older than redis-mongo mode: standalone).
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_mongo_results: Option<ModeResults>,
    pub targets: Vec<TargetCheck>,
    pub elapsed_s: f64,
}

fn same_conns(rs: &[LoadResult], c: usize) -> Option<&LoadResult> {
    rs.iter().find(|r| r.connections == c)
}

fn pct(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.0} %", a / b * 100.0)
    } else {
        "–".into()
    }
}

impl Matrix {
    /// Fills `targets` from the results (the targets for the mode measured).
    pub fn check_targets(&mut self) {
        self.targets = match (&self.standalone, &self.redis_mongo_results) {
            (_, Some(rm)) => self.redis_mongo_targets(rm),
            (Some(sa), None) => standalone_targets(sa),
            (None, None) => Vec::new(),
        };
    }

    fn redis_mongo_targets(&self, rm: &ModeResults) -> Vec<TargetCheck> {
        let mut t = Vec::new();
        let nm = || "not measured".to_string();
        // The floor runs alone on the machine; so does the api in the `api_alone` runs (the
        // delivery processes stopped), the like-for-like comparison. Without them (an older
        // result, or Herald at --url), the runs beside delivery.
        let (ingest32, beside) = match rm.ingest.done() {
            Some(i) => match same_conns(&i.api_alone, 32) {
                Some(r) => (Some(r.clone()), false),
                None => (same_conns(&i.closed, 32).cloned(), true),
            },
            None => (None, false),
        };
        let floor32 = self
            .floor
            .done()
            .and_then(|f| same_conns(&f.http_redis, 32))
            .cloned();
        t.push(TargetCheck {
            target: "ingest ≥ 50 % of the HTTP + one-XADD floor at 32 connections, p99 ≤ 5 ms"
                .into(),
            measured: match (&ingest32, &floor32) {
                (Some(i), Some(f)) => format!(
                    "{:.0} req/s = {} of {:.0} req/s, p99 {:.2} ms, {} errors ({})",
                    i.rps,
                    pct(i.rps, f.rps),
                    f.rps,
                    i.latency.p99_ms,
                    i.errors,
                    if beside {
                        "beside the delivery processes"
                    } else {
                        "api alone, delivery processes stopped during the run"
                    }
                ),
                (Some(i), None) => format!(
                    "{:.0} req/s, p99 {:.2} ms (no floor measured)",
                    i.rps, i.latency.p99_ms
                ),
                _ => nm(),
            },
            met: match (&ingest32, &floor32) {
                (Some(i), Some(f)) => Some(
                    f.rps > 0.0 && i.rps / f.rps >= 0.5 && i.latency.p99_ms <= 5.0 && i.errors == 0,
                ),
                _ => None,
            },
        });
        let e2e = rm.e2e.done();
        t.push(TargetCheck {
            target: "end to end ≥ 5,000 deliveries/s".into(),
            measured: e2e
                .map(|e| {
                    format!(
                        "{:.0} deliveries/s end to end (burst of {}); {:.0}/s delivering a backlog alone",
                        e.deliveries_per_s, e.burst_ingest.ok, e.backlog_deliveries_per_s
                    )
                })
                .unwrap_or_else(nm),
            met: e2e.map(|e| e.deliveries_per_s >= 5000.0 && e.burst_all_received),
        });
        let r = rm.retries.done();
        t.push(TargetCheck {
            target: format!(
                "retries: p99 lateness ≤ 1 s with {} waiting",
                r.map(|r| r.count).unwrap_or(100_000)
            ),
            measured: r
                .map(|r| {
                    format!(
                        "p99 {:.0} ms, max {:.0} ms ({} of {} retried; {} waiting while CPU was measured)",
                        r.lateness.p99_ms,
                        r.lateness.max_ms,
                        r.retried,
                        r.first_failures,
                        r.waiting_during_cpu_window
                    )
                })
                .unwrap_or_else(nm),
            met: r.map(|r| r.all_retried && r.lateness.p99_ms <= 1000.0),
        });
        let m = rm.memory.done();
        let herald_mem = |m: &MemoryResult| -> Vec<(String, u64, f64, u64, u64)> {
            if m.procs.is_empty() {
                vec![(
                    "herald".into(),
                    m.idle_rss_kib,
                    m.growth_second_half_pct,
                    m.mid_rss_kib,
                    m.end_rss_kib,
                )]
            } else {
                m.procs
                    .iter()
                    .filter(|p| p.herald)
                    .map(|p| {
                        (
                            p.name.clone(),
                            p.idle_rss_kib,
                            p.growth_second_half_pct,
                            p.mid_rss_kib,
                            p.end_rss_kib,
                        )
                    })
                    .collect()
            }
        };
        t.push(TargetCheck {
            target: "idle RSS ≤ 30 MB per Herald process".into(),
            measured: m
                .map(|m| {
                    herald_mem(m)
                        .iter()
                        .map(|(n, idle, ..)| format!("{n} {:.1} MiB", mib(*idle)))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(nm),
            met: m.map(|m| {
                herald_mem(m)
                    .iter()
                    .all(|(_, idle, ..)| (*idle as f64) * 1024.0 <= 30e6)
            }),
        });
        t.push(TargetCheck {
            target: "no RSS growth over the sustained run (second half), per Herald process".into(),
            measured: m
                .map(|m| {
                    herald_mem(m)
                        .iter()
                        .map(|(n, _, g, mid, end)| {
                            format!("{n} {g:+.1} % ({:.1} → {:.1} MiB)", mib(*mid), mib(*end))
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(nm),
            met: m.map(|m| herald_mem(m).iter().all(|(_, _, g, ..)| *g < 5.0)),
        });
        t
    }

    /// The measured mode's name and results.
    pub fn results(&self) -> Option<(&'static str, &ModeResults)> {
        match (&self.redis_mongo_results, &self.standalone) {
            (Some(rm), _) => Some(("Redis + MongoDB", rm)),
            (None, Some(sa)) => Some(("standalone", sa)),
            (None, None) => None,
        }
    }

    /// Phases during which other processes took ≥ 10 % of a core.
    pub fn disturbed(&self) -> Vec<String> {
        let mut loads: Vec<&LoadResult> = Vec::new();
        if let Some(f) = self.floor.done() {
            loads.extend(f.http.iter().chain(&f.http_redis).chain(&f.redis_xadd));
        }
        let sa = self.results().map(|(_, m)| m);
        if let Some(i) = sa.and_then(|m| m.ingest.done()) {
            loads.extend(i.closed.iter().chain(&i.api_alone).chain(&i.open));
        }
        if let Some(e) = sa.and_then(|m| m.e2e.done()) {
            loads.push(&e.burst_ingest);
            loads.extend(&e.steady_ingest);
        }
        if let Some(r) = sa.and_then(|m| m.retries.done()) {
            loads.push(&r.ingest);
        }
        if let Some(m) = sa.and_then(|m| m.memory.done()) {
            loads.push(&m.load);
        }
        let mut out: Vec<String> = loads
            .into_iter()
            .filter_map(|r| {
                let c = r.other_cpu_pct.filter(|&c| c >= 10.0)?;
                Some(format!("{} ({} conns) {c:.0} %", r.label, r.connections))
            })
            .collect();
        if let Some(e) = sa.and_then(|m| m.e2e.done()) {
            if let Some(c) = e.backlog_cpu.other_pct.filter(|&c| c >= 10.0) {
                out.push(format!("e2e backlog drain {c:.0} %"));
            }
        }
        if let Some(c) = sa
            .and_then(|m| m.retries.done())
            .and_then(|r| r.waiting_other_cpu_pct)
            .filter(|&c| c >= 10.0)
        {
            out.push(format!("retries waiting window {c:.0} %"));
        }
        out
    }

    /// Per-phase CPU of every process, % of one core: which one bounds each phase.
    fn cpu_table(&self, s: &mut String, rm: &ModeResults) {
        let mut rows: Vec<CpuRow> = Vec::new();
        let load = |phase: String, r: &LoadResult| CpuRow {
            phase,
            procs: r.procs.clone(),
            harness: r.harness_cpu_pct,
            iowait: r.iowait_pct,
            other: r.other_cpu_pct,
            rate: (r.ok > 0).then_some(r.rps),
        };
        let cpu = |phase: String, c: &CpuUse, rate: Option<f64>| CpuRow {
            phase,
            procs: c.procs.clone(),
            harness: c.harness_pct,
            iowait: c.iowait_pct,
            other: c.other_pct,
            rate,
        };
        if let Some(f) = self.floor.done() {
            for r in &f.http_redis {
                let mut row = load(format!("floor HTTP + XADD, {} conns", r.connections), r);
                // The floor follows one process, the Redis: its figure is the server's.
                if let (true, Some(pct)) = (row.procs.is_empty(), r.server_cpu_pct) {
                    row.procs.push(ProcCpu {
                        name: "redis-server".into(),
                        pct,
                        s: 0.0,
                    });
                }
                rows.push(row);
            }
        }
        if let Some(i) = rm.ingest.done() {
            for r in &i.closed {
                rows.push(load(format!("ingest, {} conns", r.connections), r));
            }
            for r in &i.api_alone {
                rows.push(load(
                    format!("ingest, api alone, {} conns", r.connections),
                    r,
                ));
            }
            if let Some(r) = &i.open {
                rows.push(load(
                    format!("ingest at {:.0}/s", r.target_rate.unwrap_or(0.0)),
                    r,
                ));
            }
        }
        if let Some(e) = rm.e2e.done() {
            rows.push(cpu(
                "e2e burst (ingest + delivery)".into(),
                &e.burst_cpu,
                Some(e.deliveries_per_s),
            ));
            if e.backlog_events > 0 {
                rows.push(cpu(
                    "e2e backlog (delivery alone)".into(),
                    &e.backlog_cpu,
                    Some(e.backlog_deliveries_per_s),
                ));
            }
            if let Some(r) = &e.steady_ingest {
                rows.push(load(
                    format!("e2e steady {:.0}/s", r.target_rate.unwrap_or(0.0)),
                    r,
                ));
            }
        }
        if let Some(r) = rm.retries.done() {
            rows.push(load(
                "retries ingest (first attempts fail)".into(),
                &r.ingest,
            ));
            if !r.waiting_procs.is_empty() {
                rows.push(CpuRow {
                    phase: format!("retries: {} waiting", r.waiting_during_cpu_window),
                    procs: r.waiting_procs.clone(),
                    harness: None,
                    iowait: None,
                    other: r.waiting_other_cpu_pct,
                    rate: None,
                });
            }
        }
        if let Some(m) = rm.memory.done() {
            rows.push(load(
                format!(
                    "memory: sustained {:.0}/s",
                    m.load.target_rate.unwrap_or(0.0)
                ),
                &m.load,
            ));
        }
        let mut names: Vec<String> = Vec::new();
        for r in &rows {
            for p in &r.procs {
                if !names.contains(&p.name) {
                    names.push(p.name.clone());
                }
            }
        }
        if names.is_empty() {
            return;
        }
        // Herald's processes first, in start order, then the servers they run on.
        let server_rank = |n: &str| match n {
            "redis-server" => 1,
            "ferretdb" => 2,
            _ => 0,
        };
        names.sort_by_key(|n| server_rank(n));
        let _ = writeln!(
            s,
            "\n## CPU per process and phase (% of one core; 200 % is the whole machine)\n"
        );
        let _ = writeln!(
            s,
            "| phase | rate (req/s or deliveries/s) | {} | harness (load + receiver) | other | iowait |",
            names.join(" | ")
        );
        let _ = writeln!(
            s,
            "|---|---:|{}---:|---:|---:|",
            "---:|".repeat(names.len())
        );
        let f = |v: Option<f64>| v.map(|c| format!("{c:.0} %")).unwrap_or_else(|| "–".into());
        for r in &rows {
            let cells: Vec<String> = names
                .iter()
                .map(|n| f(r.procs.iter().find(|p| &p.name == n).map(|p| p.pct)))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                r.phase,
                r.rate
                    .map(|x| format!("{x:.0}"))
                    .unwrap_or_else(|| "–".into()),
                cells.join(" | "),
                f(r.harness),
                f(r.other),
                f(r.iowait)
            );
        }
        let _ = writeln!(
            s,
            "\n*iowait*: time the cores sat idle waiting for the disk (fsync), % of one core; a phase whose processes all stay well under a core while iowait is high is bound by commits, not CPU."
        );
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(
            s,
            "# Herald benchmark: {}, commit `{}`\n",
            self.date, self.commit
        );
        let _ = writeln!(
            s,
            "Machine: {} cores ({}), {:.1} GiB memory, Linux {}, load average {} at the start. The load generator, the receiver, Herald and Redis all share these cores.  ",
            m.nproc,
            m.cpu_model,
            m.mem_total_kib as f64 / 1024.0 / 1024.0,
            m.kernel,
            m.loadavg_at_start
        );
        let _ = writeln!(s, "Command: `{}`  ", self.command);
        if self.redis_mongo_results.is_some() {
            let _ = writeln!(
                s,
                "Herald: Redis + MongoDB mode: {}; `herald` from {}. Every scenario has a MongoDB database and Redis key prefix of its own. Run took {:.0} s.\n",
                self.redis_mongo, self.herald, self.elapsed_s
            );
        } else {
            let _ = writeln!(
                s,
                "Herald: standalone (SQLite) from {}. Redis + MongoDB mode: {}. Run took {:.0} s.\n",
                self.herald, self.redis_mongo, self.elapsed_s
            );
        }

        let _ = writeln!(s, "## Ingest (`POST /ingest/{{sub}}`, ~100-byte JSON)\n");
        let _ = writeln!(
            s,
            "| scenario | conns | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | % of HTTP floor | % of HTTP + Redis floor | server CPU | server CPU µs/req | other processes' CPU |"
        );
        let _ = writeln!(
            s,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let floor = self.floor.done();
        let row = |s: &mut String,
                   name: &str,
                   r: &LoadResult,
                   vs_http: String,
                   vs_redis: String| {
            let rate = r
                .target_rate
                .map(|x| format!(" at {x:.0}/s"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "| {name}{rate} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {vs_http} | {vs_redis} | {} | {} | {} |",
                r.connections,
                r.rps,
                r.latency.p50_ms,
                r.latency.p90_ms,
                r.latency.p99_ms,
                r.latency.p999_ms,
                r.errors,
                r.server_cpu_pct
                    .map(|c| format!("{c:.0} %"))
                    .unwrap_or_else(|| "–".into()),
                r.server_cpu_us_per_req
                    .map(|c| format!("{c:.0}"))
                    .unwrap_or_else(|| "–".into()),
                r.other_cpu_pct
                    .map(|c| format!("{c:.0} %"))
                    .unwrap_or_else(|| "–".into()),
            );
        };
        match &self.floor {
            Phase::Done(f) => {
                for r in &f.http {
                    row(
                        &mut s,
                        "floor: empty axum handler",
                        r,
                        "100 %".into(),
                        "–".into(),
                    );
                }
                for r in &f.http_redis {
                    let vs = same_conns(&f.http, r.connections)
                        .map(|h| pct(r.rps, h.rps))
                        .unwrap_or_default();
                    row(
                        &mut s,
                        "floor: HTTP + one Redis XADD",
                        r,
                        vs,
                        "100 %".into(),
                    );
                }
                for r in &f.redis_xadd {
                    row(
                        &mut s,
                        "Redis XADD alone (no HTTP)",
                        r,
                        "–".into(),
                        "–".into(),
                    );
                }
                if let Some(n) = &f.redis_note {
                    let _ = writeln!(s, "| Redis floors: {n} | | | | | | | | | | | | |");
                }
            }
            Phase::Failed { error } => {
                let _ = writeln!(s, "| floor failed: {error} | | | | | | | | | | | | |");
            }
        }
        let vs = |r: &LoadResult| {
            let http = floor
                .and_then(|f| same_conns(&f.http, r.connections))
                .map(|h| pct(r.rps, h.rps))
                .unwrap_or_else(|| "–".into());
            let redis = floor
                .and_then(|f| same_conns(&f.http_redis, r.connections))
                .map(|h| pct(r.rps, h.rps))
                .unwrap_or_else(|| "–".into());
            (http, redis)
        };
        let sa = self.results().map(|(_, m)| m);
        let mode = self.results().map(|(n, _)| n).unwrap_or("standalone");
        match sa.map(|m| &m.ingest) {
            Some(Phase::Done(i)) => {
                for r in &i.closed {
                    let (a, b) = vs(r);
                    row(&mut s, &format!("**Herald {mode}**, closed loop"), r, a, b);
                }
                for r in &i.api_alone {
                    let (a, b) = vs(r);
                    row(
                        &mut s,
                        &format!("**Herald {mode}**, closed loop, api alone (delivery stopped)"),
                        r,
                        a,
                        b,
                    );
                }
                if let Some(r) = &i.open {
                    row(
                        &mut s,
                        &format!("Herald {mode}, open loop"),
                        r,
                        "–".into(),
                        "–".into(),
                    );
                }
            }
            Some(Phase::Failed { error }) => {
                let _ = writeln!(
                    s,
                    "| Herald {mode} failed: {error} | | | | | | | | | | | | |"
                );
            }
            None => {}
        }
        if self.redis_mongo_results.is_none() {
            let _ = writeln!(
                s,
                "| Herald Redis + MongoDB | – | {} | | | | | | | | | | |",
                self.redis_mongo
            );
        }
        let _ = writeln!(
            s,
            "\nClosed loop: each connection sends its next request when the previous one is answered. Open loop: a fixed rate, latency measured from each request's intended send time (no coordinated omission). After each Herald phase the harness waits until its receiver has every accepted event.\n"
        );

        let _ = writeln!(
            s,
            "## End to end ({})\n",
            if self.redis_mongo_results.is_some() {
                "Redis + MongoDB: api + delivery processes"
            } else {
                "standalone, one process"
            }
        );
        match sa.map(|m| &m.e2e) {
            Some(Phase::Done(e)) => {
                let _ = writeln!(s, "| figure | value |\n|---|---:|");
                let _ = writeln!(
                    s,
                    "| burst: events ingested ({} conns, closed loop) | {} in {:.2} s ({:.0} req/s) |",
                    e.burst_ingest.connections,
                    e.burst_ingest.ok,
                    e.burst_ingest.elapsed_s,
                    e.burst_ingest.rps
                );
                let _ = writeln!(
                    s,
                    "| burst: all received | {} ({} of {}) |",
                    if e.burst_all_received {
                        "yes"
                    } else {
                        "**no**"
                    },
                    e.burst_received,
                    e.burst_ingest.ok
                );
                let _ = writeln!(
                    s,
                    "| burst: first ingest → last delivery | {:.2} s |",
                    e.burst_total_s
                );
                let _ = writeln!(
                    s,
                    "| **deliveries/s** (received ÷ that time) | **{:.0}** |",
                    e.deliveries_per_s
                );
                let _ = writeln!(
                    s,
                    "| drain after the last 202 | {:.2} s{} |",
                    e.drain_s,
                    e.drain_rate
                        .map(|r| format!(" at {r:.0} deliveries/s"))
                        .unwrap_or_default()
                );
                if let Some(c) = e.burst_server_cpu_pct {
                    let _ = writeln!(s, "| Herald CPU during the burst | {c:.0} % |");
                }
                if e.backlog_events > 0 {
                    let _ = writeln!(
                        s,
                        "| backlog: {} queued while paused, then resumed: delivered in | {:.2} s{} |",
                        e.backlog_events,
                        e.backlog_drain_s,
                        if e.backlog_all_received { "" } else { " (**not all**)" }
                    );
                    let _ = writeln!(
                        s,
                        "| **backlog deliveries/s** (delivery alone, no ingest competing) | **{:.0}**{} |",
                        e.backlog_deliveries_per_s,
                        e.backlog_server_cpu_pct
                            .map(|c| format!(", Herald CPU {c:.0} %"))
                            .unwrap_or_default()
                    );
                } else if let Some(n) = &e.backlog_note {
                    let _ = writeln!(s, "| backlog phase | skipped: {n} |");
                }
                if let Some(r) = &e.steady_ingest {
                    let l = &e.steady_latency;
                    let _ = writeln!(
                        s,
                        "| steady {:.0}/s for {:.0} s: ingest → receipt p50 / p90 / p99 / p99.9 / max | {:.1} / {:.1} / {:.1} / {:.1} / {:.1} ms |",
                        r.target_rate.unwrap_or(0.0),
                        r.elapsed_s,
                        l.p50_ms,
                        l.p90_ms,
                        l.p99_ms,
                        l.p999_ms,
                        l.max_ms
                    );
                }
                let _ = writeln!(s, "| duplicate deliveries | {} |", e.duplicates);
                let o = [e.burst_cpu.other_pct, e.backlog_cpu.other_pct];
                if o.iter().flatten().any(|&c| c >= 10.0) {
                    let _ = writeln!(
                        s,
                        "| **disturbed**: other processes' CPU during burst / backlog | {} / {} |",
                        o[0].map(|c| format!("{c:.0} %")).unwrap_or_default(),
                        o[1].map(|c| format!("{c:.0} %")).unwrap_or_default()
                    );
                }
            }
            Some(Phase::Failed { error }) => {
                let _ = writeln!(s, "failed: {error}");
            }
            None => {}
        }

        let _ = writeln!(s, "\n## Retries ({mode})\n");
        match sa.map(|m| &m.retries) {
            Some(Phase::Done(r)) => {
                let _ = writeln!(s, "| figure | value |\n|---|---:|");
                let _ = writeln!(
                    s,
                    "| webhooks whose first attempt got a 500 | {} (ingested at {:.0} req/s) |",
                    r.first_failures, r.ingest.rps
                );
                let _ = writeln!(s, "| retry delay | {:.0} s |", r.delay_s);
                let _ = writeln!(
                    s,
                    "| retried (all?) | {} ({}) |",
                    r.retried,
                    if r.all_retried { "all" } else { "**not all**" }
                );
                let _ = writeln!(
                    s,
                    "| lateness vs due time p50 / p99 / max | {:.0} / {:.0} / {:.0} ms |",
                    r.lateness.p50_ms, r.lateness.p99_ms, r.lateness.max_ms
                );
                let _ = writeln!(
                    s,
                    "| retries earlier than due | {} (max {:.0} ms early) |",
                    r.early_retries, r.max_early_ms
                );
                let _ = writeln!(
                    s,
                    "| Herald CPU while they wait | {} |",
                    r.waiting_cpu_pct
                        .map(|c| format!(
                            "{c:.1} % of a core, {} waiting, {:.0} s window",
                            r.waiting_during_cpu_window, r.cpu_window_s
                        ))
                        .unwrap_or_else(|| "not measured".into())
                );
                if let Some(c) = r.waiting_other_cpu_pct.filter(|&c| c >= 10.0) {
                    let _ = writeln!(
                        s,
                        "| **disturbed**: other processes' CPU in that window | {c:.0} % |"
                    );
                }
                if let Some(n) = &r.note {
                    let _ = writeln!(s, "| note | {n} |");
                }
            }
            Some(Phase::Failed { error }) => {
                let _ = writeln!(s, "failed: {error}");
            }
            None => {}
        }

        let _ = writeln!(
            s,
            "\n## Memory ({mode}, RSS of the {} process)\n",
            if self.redis_mongo_results.is_some() {
                "api"
            } else {
                "Herald"
            }
        );
        match sa.map(|m| &m.memory) {
            Some(Phase::Done(m)) => {
                let _ = writeln!(s, "| idle | ¼ in | ½ in | peak | end of run | after drain | growth ¼ → end | growth ½ → end | sustained load |\n|---:|---:|---:|---:|---:|---:|---:|---:|---|");
                let _ = writeln!(
                    s,
                    "| {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:+.1} % | {:+.1} % | {:.0}/s for {:.0} s, {} errors |",
                    mib(m.idle_rss_kib),
                    mib(m.warm_rss_kib),
                    mib(m.mid_rss_kib),
                    mib(m.peak_rss_kib),
                    mib(m.end_rss_kib),
                    mib(m.after_drain_rss_kib),
                    m.growth_pct,
                    m.growth_second_half_pct,
                    m.load.target_rate.unwrap_or(0.0),
                    m.load.elapsed_s,
                    m.load.errors
                );
            }
            Some(Phase::Failed { error }) => {
                let _ = writeln!(s, "failed: {error}");
            }
            None => {}
        }

        if let Some(m) = sa
            .and_then(|m| m.memory.done())
            .filter(|m| !m.procs.is_empty())
        {
            let _ = writeln!(s, "\n### RSS per process\n\n| process | idle | ¼ in | ½ in | peak | end of run | after drain | growth ½ → end |\n|---|---:|---:|---:|---:|---:|---:|---:|");
            for p in &m.procs {
                let _ = writeln!(
                    s,
                    "| {}{} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:+.1} % |",
                    p.name,
                    if p.herald { "" } else { " (server)" },
                    mib(p.idle_rss_kib),
                    mib(p.warm_rss_kib),
                    mib(p.mid_rss_kib),
                    mib(p.peak_rss_kib),
                    mib(p.end_rss_kib),
                    mib(p.after_drain_rss_kib),
                    p.growth_second_half_pct
                );
            }
        }
        let _ = writeln!(
            s,
            "\n## Fairness ({mode}: one subscriber's latency beside another's slow backlog)\n"
        );
        match sa.map(|m| &m.fairness) {
            Some(Phase::Done(f)) => {
                let _ = writeln!(s, "| backlog | slow answer | rate | p99 alone | p99 beside the backlog | ratio | slow deliveries meanwhile | all received |\n|---:|---:|---:|---:|---:|---:|---:|---|");
                let _ = writeln!(
                    s,
                    "| {} | {:.1} s | {:.0}/s | {:.2} ms | {:.2} ms | {:.2}× | {} | {} |",
                    f.backlog,
                    f.slow_delay_s,
                    f.loaded_ingest.target_rate.unwrap_or(0.0),
                    f.unloaded_latency.p99_ms,
                    f.loaded_latency.p99_ms,
                    f.p99_ratio,
                    f.slow_delivered,
                    f.all_received
                );
            }
            Some(Phase::Failed { error }) => {
                let _ = writeln!(s, "failed: {error}");
            }
            None => {}
        }

        if let Some(rm) = &self.redis_mongo_results {
            self.cpu_table(&mut s, rm);
        }

        let disturbed = self.disturbed();
        if !disturbed.is_empty() {
            let _ = writeln!(
                s,
                "\n**Disturbed phases** (other processes used ≥ 10 % of a core meanwhile; their figures understate Herald): {}.",
                disturbed.join("; ")
            );
        }

        let _ = writeln!(
            s,
            "\n## Targets\n\n| target | measured | met |\n|---|---|---|"
        );
        for t in &self.targets {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            };
            let _ = writeln!(s, "| {} | {} | {met} |", t.target, t.measured);
        }
        s
    }
}

/// One row of the per-process CPU table.
struct CpuRow {
    phase: String,
    procs: Vec<ProcCpu>,
    harness: Option<f64>,
    iowait: Option<f64>,
    other: Option<f64>,
    /// The phase's requests/s or deliveries/s.
    rate: Option<f64>,
}

/// The standalone targets (the performance pass's).
fn standalone_targets(sa: &ModeResults) -> Vec<TargetCheck> {
    let mut t = Vec::new();
    let sa = Some(sa);
    let ingest = sa.and_then(|m| m.ingest.done());
    let best = ingest.and_then(|i| {
        i.closed
            .iter()
            .max_by(|a, b| a.rps.total_cmp(&b.rps))
            .cloned()
    });
    t.push(TargetCheck {
        target: "ingest standalone ≥ 8,000 req/s (every 202 durable)".into(),
        measured: best
            .as_ref()
            .map(|b| format!("{:.0} req/s at {} connections", b.rps, b.connections))
            .unwrap_or_else(|| "not measured".into()),
        met: best.as_ref().map(|b| b.rps >= 8000.0 && b.errors == 0),
    });
    let fair = sa.and_then(|m| m.fairness.done());
    t.push(TargetCheck {
        target: "beside a slow 100k backlog, another subscriber's p99 ≤ 2× alone".into(),
        measured: fair
            .map(|f| {
                format!(
                    "{:.2} ms beside, {:.2} ms alone ({:.2}×)",
                    f.loaded_latency.p99_ms, f.unloaded_latency.p99_ms, f.p99_ratio
                )
            })
            .unwrap_or_else(|| "not measured".into()),
        met: fair.map(|f| f.p99_ratio <= 2.0 && f.all_received),
    });
    let e2e = sa.and_then(|m| m.e2e.done());
    t.push(TargetCheck {
        target: "end to end standalone ≥ 5,000 deliveries/s".into(),
        measured: e2e
            .map(|e| {
                format!(
                    "{:.0} deliveries/s end to end (burst); {:.0}/s delivering a backlog alone",
                    e.deliveries_per_s, e.backlog_deliveries_per_s
                )
            })
            .unwrap_or_else(|| "not measured".into()),
        met: e2e.map(|e| e.deliveries_per_s >= 5000.0 && e.burst_all_received),
    });
    let r = sa.and_then(|m| m.retries.done());
    t.push(TargetCheck {
        target: format!(
            "retries: p99 lateness ≤ 1 s with {} waiting",
            r.map(|r| r.count).unwrap_or(100_000)
        ),
        measured: r
            .map(|r| {
                format!(
                    "p99 {:.0} ms, max {:.0} ms ({} of {} retried)",
                    r.lateness.p99_ms, r.lateness.max_ms, r.retried, r.first_failures
                )
            })
            .unwrap_or_else(|| "not measured".into()),
        met: r.map(|r| r.all_retried && r.lateness.p99_ms <= 1000.0),
    });
    t.push(TargetCheck {
        target: "retries: Herald CPU while they wait ≤ 5 % of a core".into(),
        measured: r
            .and_then(|r| r.waiting_cpu_pct.map(|c| (r, c)))
            .map(|(r, c)| {
                format!(
                    "{c:.1} % with {} waiting ({:.0} s window)",
                    r.waiting_during_cpu_window, r.cpu_window_s
                )
            })
            .unwrap_or_else(|| "not measured".into()),
        met: r.and_then(|r| r.waiting_cpu_pct).map(|c| c <= 5.0),
    });
    let m = sa.and_then(|m| m.memory.done());
    t.push(TargetCheck {
        target: "idle RSS ≤ 30 MB".into(),
        measured: m
            .map(|m| format!("{:.1} MiB", mib(m.idle_rss_kib)))
            .unwrap_or_else(|| "not measured".into()),
        met: m.map(|m| (m.idle_rss_kib as f64) * 1024.0 <= 30e6),
    });
    t.push(TargetCheck {
        target: "no RSS growth over the sustained run (second half)".into(),
        measured: m
            .map(|m| {
                format!(
                    "{:+.1} % ({:.1} → {:.1} MiB; peak {:.1} MiB)",
                    m.growth_second_half_pct,
                    mib(m.mid_rss_kib),
                    mib(m.end_rss_kib),
                    mib(m.peak_rss_kib)
                )
            })
            .unwrap_or_else(|| "not measured".into()),
        // Allocator noise aside: under 5 % from half way to the end.
        met: m.map(|m| m.growth_second_half_pct < 5.0),
    });
    t
}

/// Today's UTC date, `YYYY-MM-DD`, without a date crate.
pub fn utc_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    fn run(connections: usize, rps: f64, p99_ms: f64) -> LoadResult {
        let mut r = LoadResult {
            connections,
            rps,
            ..LoadResult::default()
        };
        r.latency.p99_ms = p99_ms;
        r
    }

    fn redis_mongo(ingest: IngestResult) -> Matrix {
        let floor = FloorResult {
            http_redis: vec![run(32, 10_000.0, 1.0)],
            ..FloorResult::default()
        };
        let mut m = Matrix {
            date: "2026-12-03".into(),
            commit: "test".into(),
            command: String::new(),
            machine: Machine::default(),
            herald: String::new(),
            settings: serde_json::Value::Null,
            floor: Phase::Done(floor),
            standalone: None,
            redis_mongo: String::new(),
            mode: Mode::RedisMongo,
            redis_mongo_results: Some(ModeResults {
                ingest: Phase::Done(ingest),
                e2e: not_run(),
                retries: not_run(),
                memory: not_run(),
                fairness: not_run(),
            }),
            targets: Vec::new(),
            elapsed_s: 0.0,
        };
        m.check_targets();
        m
    }

    #[test]
    fn the_ingest_target_compares_the_api_alone_with_the_floor_when_measured() {
        let beside = vec![run(8, 9_000.0, 1.0), run(32, 3_000.0, 9.0)];
        let m = redis_mongo(IngestResult {
            closed: beside.clone(),
            api_alone: vec![run(32, 5_000.0, 4.0)],
            ..IngestResult::default()
        });
        assert_eq!(m.targets[0].met, Some(true), "{:?}", m.targets[0]);
        assert!(m.targets[0].measured.contains("api alone"));

        // 49 % of the floor, or a p99 over 5 ms, misses it.
        for (rps, p99) in [(4_900.0, 4.0), (6_000.0, 5.5)] {
            let m = redis_mongo(IngestResult {
                closed: beside.clone(),
                api_alone: vec![run(32, rps, p99)],
                ..IngestResult::default()
            });
            assert_eq!(m.targets[0].met, Some(false), "{:?}", m.targets[0]);
        }

        // Without api-alone runs (older results), the runs beside delivery count.
        let m = redis_mongo(IngestResult {
            closed: vec![run(32, 6_000.0, 2.0)],
            ..IngestResult::default()
        });
        assert_eq!(m.targets[0].met, Some(true));
        assert!(m.targets[0]
            .measured
            .contains("beside the delivery processes"));
    }
}

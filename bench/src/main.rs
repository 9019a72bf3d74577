//! `herald-bench`: Herald's benchmark harness. See bench/README.md.

mod floor;
mod herald;
mod http;
mod load;
mod procs;
mod receiver;
mod report;
mod scenarios;
mod serve;
mod servers;
mod stats;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use herald::{Launch, Mode};
use report::{Machine, Matrix, ModeResults, Phase};
use scenarios::{Ctx, E2eOpts, FairnessOpts, FloorOpts, IngestOpts, MemoryOpts, RetryOpts};
use stats::parse_duration;

#[derive(Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Herald's benchmark harness: ingest, end-to-end delivery, retry timing, memory, floors",
    long_about = "Herald's benchmark harness. Starts Herald itself, fresh per scenario: standalone \
                  (a fresh SQLite file) or, with --mode redis-mongo, one api process and two \
                  delivery processes on Redis + MongoDB (a fresh database and key prefix; a local \
                  redis-server and FerretDB unless --redis-url / --mongo-uri are given). Or it \
                  measures one already running (--url). Traffic goes to loopback only; every load \
                  loop is bounded in time and in request count."
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Which Herald deployment to start: `standalone` (one process on SQLite) or `redis-mongo`
    /// (one api process with HERALD_WORKERS=false and --deliveries `herald-delivery` processes
    /// on Redis and MongoDB).
    #[arg(long, global = true, value_enum, default_value_t = Mode::Standalone)]
    mode: Mode,
    /// redis-mongo: the delivery binary [default: `herald-delivery` beside the herald binary].
    #[arg(long, global = true, env = "HERALD_DELIVERY_BIN")]
    delivery_bin: Option<PathBuf>,
    /// redis-mongo: how many delivery processes to start.
    #[arg(long, global = true, default_value_t = 2)]
    deliveries: usize,
    /// Measure an already-running Herald at this base URL (loopback only) instead of starting one.
    #[arg(long, global = true, env = "HERALD_BENCH_URL")]
    url: Option<String>,
    /// With --url: the Herald process's pid, for its CPU time and RSS (/proc/<pid>).
    #[arg(long, global = true)]
    pid: Option<u32>,
    /// The Herald binary to start [default: <workspace>/target/release/herald].
    #[arg(long, global = true, env = "HERALD_BIN")]
    herald_bin: Option<PathBuf>,
    /// Extra environment for a Herald the harness starts (repeatable), e.g. RUST_LOG=warn.
    #[arg(long = "herald-env", global = true, value_parser = parse_kv)]
    herald_env: Vec<(String, String)>,
    /// Where started processes keep their data (SQLite file, Redis AOF) [default: system temp].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Redis for the HTTP + Redis floor and for redis-mongo mode; loopback only. Without it
    /// the harness starts `redis-server` on a free port (AOF on, appendfsync everysec).
    #[arg(long, global = true, env = "HERALD_TEST_REDIS_URL")]
    redis_url: Option<String>,
    /// MongoDB for redis-mongo mode (`mongodb://`, loopback only). Without it the harness
    /// starts FerretDB on SQLite (on PATH, or from scripts/testenv.sh's cache).
    #[arg(long, global = true, env = "HERALD_TEST_MONGO_URI")]
    mongo_uri: Option<String>,
    /// Also write the result as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Ingest throughput (closed loop per connection count) and latency at a fixed rate (open loop).
    Ingest {
        #[arg(long, value_delimiter = ',', default_value = "8,32,128")]
        connections: Vec<usize>,
        /// Duration of each closed-loop run.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Cap on requests per closed-loop run.
        #[arg(long, default_value_t = 2_000_000)]
        max_requests: u64,
        /// Open-loop rate, requests/s in total (0: skip the open-loop run).
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        #[arg(long, default_value_t = 32)]
        open_connections: usize,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        open_duration: Duration,
        /// How long to wait, after each run, for every accepted event to be delivered.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        drain_timeout: Duration,
    },
    /// End to end: a burst of N events until all are received, then ingest-to-receipt latency
    /// at a steady rate.
    E2e {
        #[arg(long, default_value_t = 20_000)]
        events: u64,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Steady-phase rate, requests/s (0: skip).
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        steady_duration: Duration,
        /// Give up waiting for deliveries after this long (per phase).
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        timeout: Duration,
        /// Events queued to a paused subscription and then released, to time delivery alone
        /// (0: skip).
        #[arg(long, default_value_t = 50_000)]
        backlog: u64,
    },
    /// Retry timing: N webhooks whose first attempt gets a 500; how late each retry arrives and
    /// Herald's CPU while they all wait. A started Herald gets HERALD_RETRY_SCHEDULE=<delay>; one
    /// at --url should be started with it (the subscription also asks for it).
    Retries {
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        delay: Duration,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Extra time, past the last retry's due time, allowed for every retry to arrive.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// RSS of the Herald process: idle, peak and at the end of a sustained run.
    Memory {
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        idle: Duration,
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        drain_timeout: Duration,
    },
    /// The floors: the same client against an empty axum handler, and against a handler doing
    /// one Redis XADD per request.
    Floor {
        #[arg(long, value_delimiter = ',', default_value = "8,32,128")]
        connections: Vec<usize>,
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 2_000_000)]
        max_requests: u64,
        /// Skip the Redis floors.
        #[arg(long)]
        no_redis: bool,
    },
    /// Re-renders a matrix's JSON as Markdown (to stdout, or next to it with --write).
    Report {
        json_file: PathBuf,
        /// Write <same name>.md beside the JSON file.
        #[arg(long)]
        write: bool,
    },
    /// The whole matrix (floors, then ingest, e2e, retries, memory, fairness on the --mode),
    /// written as Markdown and JSON to <out-dir>/<date>-<commit>[-redis-mongo].{md,json}.
    Matrix {
        #[arg(long, default_value = "bench/results")]
        out_dir: PathBuf,
        /// Commit to name the results after [default: `git rev-parse --short HEAD`].
        #[arg(long)]
        commit: Option<String>,
        /// Date to name the results after [default: today, UTC].
        #[arg(long)]
        date: Option<String>,
        /// The command line to record in the results.
        #[arg(long, default_value = "scripts/bench.sh")]
        command: String,
        /// A seconds-long version of everything (smoke runs); results are not comparable.
        #[arg(long)]
        quick: bool,
        /// Skip the Redis floors.
        #[arg(long)]
        no_redis: bool,
        /// Webhooks in the retries scenario [default: 100,000 standalone; 20,000 redis-mongo,
        /// whose first attempts each write to MongoDB, so that the matrix stays ~5 minutes].
        #[arg(long)]
        retries_count: Option<u64>,
        /// Retry delay in the retries scenario [default: 60s standalone, 30s redis-mongo].
        #[arg(long, value_parser = parse_duration)]
        retries_delay: Option<Duration>,
        /// Before starting, wait up to this long for the machine to be quiet (other processes
        /// under 15 % of a core over 2 s); each phase still records what else ran meanwhile.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        quiet_wait: Duration,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    Ok((k.to_owned(), v.to_owned()))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(workspace_root())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("write {}", path.display()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let c = &cli.common;
    let data_root = c.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let bin = c
        .herald_bin
        .clone()
        .unwrap_or_else(|| herald::default_bin("release"));
    // redis-mongo: one Redis and one MongoDB for the whole run, each scenario in a database
    // and key prefix of its own.
    let servers = if c.mode == Mode::RedisMongo
        && c.url.is_none()
        && !matches!(cli.cmd, Cmd::Report { .. })
    {
        let s = servers::Servers::start(&data_root, c.redis_url.as_deref(), c.mongo_uri.as_deref())
            .await
            .context("redis-mongo mode: starting its Redis and MongoDB")?;
        println!("redis-mongo: {}; {}", s.redis_desc, s.mongo_desc);
        Some(Arc::new(s))
    } else {
        None
    };
    let ctx = Ctx {
        epoch: Instant::now(),
        url: c.url.clone(),
        pid: c.pid,
        launch: Launch {
            mode: c.mode,
            delivery_bin: c
                .delivery_bin
                .clone()
                .unwrap_or_else(|| herald::delivery_beside(&bin)),
            deliveries: c.deliveries,
            servers: servers.clone(),
            bin,
            data_root: data_root.clone(),
            env: c.herald_env.clone(),
        },
        data_root,
    };
    // The floors measure against the Redis Herald runs on, when there is one.
    let (floor_redis_url, floor_redis_pid) = match &servers {
        Some(s) => (Some(s.redis_url.clone()), s.redis_pid()),
        None => (c.redis_url.clone(), None),
    };
    let json = c.json.clone();
    let value = match cli.cmd {
        Cmd::Ingest {
            connections,
            duration,
            max_requests,
            rate,
            open_connections,
            open_duration,
            drain_timeout,
        } => serde_json::to_value(
            scenarios::ingest(
                &ctx,
                &IngestOpts {
                    connections,
                    duration,
                    max_requests,
                    rate,
                    open_connections,
                    open_duration,
                    drain_timeout,
                },
            )
            .await?,
        )?,
        Cmd::E2e {
            events,
            connections,
            rate,
            steady_duration,
            timeout,
            backlog,
        } => serde_json::to_value(
            scenarios::e2e(
                &ctx,
                &E2eOpts {
                    events,
                    connections,
                    rate,
                    steady_duration,
                    timeout,
                    backlog,
                },
            )
            .await?,
        )?,
        Cmd::Retries {
            count,
            delay,
            connections,
            timeout,
        } => serde_json::to_value(
            scenarios::retries(
                &ctx,
                &RetryOpts {
                    count,
                    delay,
                    connections,
                    timeout,
                },
            )
            .await?,
        )?,
        Cmd::Memory {
            idle,
            duration,
            rate,
            connections,
            drain_timeout,
        } => serde_json::to_value(
            scenarios::memory(
                &ctx,
                &MemoryOpts {
                    idle,
                    duration,
                    rate,
                    connections,
                    drain_timeout,
                },
            )
            .await?,
        )?,
        Cmd::Floor {
            connections,
            duration,
            max_requests,
            no_redis,
        } => serde_json::to_value(
            scenarios::floor(
                &ctx,
                &FloorOpts {
                    connections,
                    duration,
                    max_requests,
                    redis_url: floor_redis_url.clone(),
                    redis_pid: floor_redis_pid,
                    no_redis,
                },
            )
            .await?,
        )?,
        Cmd::Report { json_file, write } => {
            let text = std::fs::read_to_string(&json_file)
                .with_context(|| format!("read {}", json_file.display()))?;
            let m: Matrix = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a matrix result", json_file.display()))?;
            let md = m.markdown();
            if write {
                let path = json_file.with_extension("md");
                std::fs::write(&path, &md)?;
                println!("wrote {}", path.display());
            } else {
                print!("{md}");
            }
            return Ok(());
        }
        Cmd::Matrix {
            out_dir,
            commit,
            date,
            command,
            quick,
            no_redis,
            retries_count,
            retries_delay,
            quiet_wait,
        } => {
            wait_quiet(quiet_wait).await;
            let m = matrix(
                &ctx,
                c,
                (floor_redis_url.clone(), floor_redis_pid),
                servers.as_deref(),
                MatrixOpts {
                    commit,
                    date,
                    command,
                    quick,
                    no_redis,
                    retries_count,
                    retries_delay,
                },
            )
            .await?;
            let stem = match m.mode {
                Mode::Standalone => format!("{}-{}", m.date, m.commit),
                Mode::RedisMongo => format!("{}-{}-redis-mongo", m.date, m.commit),
            };
            std::fs::create_dir_all(&out_dir)?;
            let md = out_dir.join(format!("{stem}.md"));
            let js = out_dir.join(format!("{stem}.json"));
            std::fs::write(&md, m.markdown())?;
            write_json(&js, &m)?;
            println!("\n{}", m.markdown());
            println!("wrote {} and {}", md.display(), js.display());
            serde_json::to_value(&m)?
        }
    };
    if let Some(path) = json {
        write_json(&path, &value)?;
    }
    Ok(())
}

/// Waits (bounded) until the rest of the machine is quiet.
async fn wait_quiet(limit: Duration) {
    let end = Instant::now() + limit;
    loop {
        let meter = load::CpuMeter::start(&[]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let other = meter.finish().other_pct.unwrap_or(0.0);
        if other < 15.0 {
            return;
        }
        if Instant::now() >= end {
            println!("matrix: the machine is still busy (other processes {other:.0}% of a core); starting anyway");
            return;
        }
        println!("matrix: waiting for a quiet machine (other processes {other:.0}% of a core)");
    }
}

struct MatrixOpts {
    commit: Option<String>,
    date: Option<String>,
    command: String,
    quick: bool,
    no_redis: bool,
    retries_count: Option<u64>,
    retries_delay: Option<Duration>,
}

async fn matrix(
    ctx: &Ctx,
    c: &Common,
    (floor_redis_url, floor_redis_pid): (Option<String>, Option<u32>),
    servers: Option<&servers::Servers>,
    o: MatrixOpts,
) -> Result<Matrix> {
    let t0 = Instant::now();
    let machine = Machine::detect();
    if c.url.is_none() && !ctx.launch.bin.is_file() {
        bail!(
            "Herald binary {} not found: run `cargo build --release -p herald-api -p herald-delivery` first (scripts/bench.sh does)",
            ctx.launch.bin.display()
        );
    }
    if c.url.is_none() && c.mode == Mode::RedisMongo && !ctx.launch.delivery_bin.is_file() {
        bail!(
            "{} not found: run `cargo build --release -p herald-delivery` first (scripts/bench.sh does), or pass --delivery-bin",
            ctx.launch.delivery_bin.display()
        );
    }
    let secs = Duration::from_secs;
    let q = o.quick;
    // redis-mongo runs shorter phases so that its matrix, whose deliveries each write to
    // MongoDB, stays within ~5 minutes on 2 cores.
    let rm = c.mode == Mode::RedisMongo;
    let floor_opts = FloorOpts {
        connections: if q { vec![8] } else { vec![8, 32, 128] },
        duration: if q {
            secs(1)
        } else if rm {
            secs(3)
        } else {
            secs(5)
        },
        max_requests: 2_000_000,
        redis_url: floor_redis_url,
        redis_pid: floor_redis_pid,
        no_redis: o.no_redis,
    };
    // Every event accepted is also delivered before the next run starts, at the ~1,000/s
    // FerretDB allows: short closed-loop runs keep those drains short.
    let ingest_opts = IngestOpts {
        connections: if q { vec![8] } else { vec![8, 32, 128] },
        duration: if q {
            secs(1)
        } else if rm {
            secs(3)
        } else {
            secs(10)
        },
        max_requests: if q { 300 } else { 2_000_000 },
        rate: if q { 100.0 } else { 2000.0 },
        open_connections: if q { 4 } else { 32 },
        open_duration: if q {
            secs(1)
        } else if rm {
            secs(5)
        } else {
            secs(10)
        },
        drain_timeout: if q { secs(30) } else { secs(120) },
    };
    let e2e_opts = E2eOpts {
        events: if q { 300 } else { 20_000 },
        connections: if q { 8 } else { 32 },
        rate: if q { 100.0 } else { 1000.0 },
        steady_duration: if q { secs(1) } else { secs(10) },
        timeout: if q { secs(30) } else { secs(120) },
        backlog: if q {
            300
        } else if rm {
            20_000
        } else {
            50_000
        },
    };
    let retry_opts = RetryOpts {
        count: if q {
            200
        } else {
            o.retries_count.unwrap_or(if rm { 20_000 } else { 100_000 })
        },
        delay: if q {
            secs(5)
        } else {
            o.retries_delay
                .unwrap_or(if rm { secs(30) } else { secs(60) })
        },
        connections: if q { 8 } else { 32 },
        timeout: if q { secs(30) } else { secs(60) },
    };
    let memory_opts = MemoryOpts {
        idle: if q { secs(1) } else { secs(3) },
        duration: if q {
            secs(2)
        } else if rm {
            secs(30)
        } else {
            secs(60)
        },
        // A sustained run is one delivery keeps up with.
        rate: if q {
            100.0
        } else if rm {
            500.0
        } else {
            2000.0
        },
        connections: if q { 4 } else { 16 },
        drain_timeout: if q { secs(30) } else { secs(60) },
    };
    let fairness_opts = FairnessOpts {
        backlog: if q {
            200
        } else if rm {
            20_000
        } else {
            100_000
        },
        slow_delay: secs(1),
        rate: if q { 50.0 } else { 200.0 },
        duration: if q {
            secs(2)
        } else if rm {
            secs(10)
        } else {
            secs(20)
        },
        connections: if q { 4 } else { 16 },
        timeout: if q { secs(30) } else { secs(120) },
    };
    let settings = serde_json::json!({
        "quick": q,
        "mode": c.mode,
        "deliveries": if rm { Some(c.deliveries) } else { None },
        "fairness": {"backlog": fairness_opts.backlog, "slow_delay_s": fairness_opts.slow_delay.as_secs_f64(),
                     "rate": fairness_opts.rate, "duration_s": fairness_opts.duration.as_secs_f64()},
        "floor": {"connections": floor_opts.connections, "duration_s": floor_opts.duration.as_secs_f64()},
        "ingest": {"connections": ingest_opts.connections, "duration_s": ingest_opts.duration.as_secs_f64(),
                   "open_rate": ingest_opts.rate, "open_connections": ingest_opts.open_connections,
                   "open_duration_s": ingest_opts.open_duration.as_secs_f64()},
        "e2e": {"events": e2e_opts.events, "connections": e2e_opts.connections, "steady_rate": e2e_opts.rate,
                "steady_duration_s": e2e_opts.steady_duration.as_secs_f64(), "backlog": e2e_opts.backlog},
        "retries": {"count": retry_opts.count, "delay_s": retry_opts.delay.as_secs_f64()},
        "memory": {"rate": memory_opts.rate, "duration_s": memory_opts.duration.as_secs_f64(),
                   "connections": memory_opts.connections},
        "herald_env": c.herald_env,
    });
    let floor = Phase::from_result(scenarios::floor(ctx, &floor_opts).await);
    let ingest = Phase::from_result(scenarios::ingest(ctx, &ingest_opts).await);
    let e2e = Phase::from_result(scenarios::e2e(ctx, &e2e_opts).await);
    let retries = Phase::from_result(scenarios::retries(ctx, &retry_opts).await);
    let memory = Phase::from_result(scenarios::memory(ctx, &memory_opts).await);
    let fairness = Phase::from_result(scenarios::fairness(ctx, &fairness_opts).await);
    for (name, failed) in [
        ("floor", matches!(floor, Phase::Failed { .. })),
        ("ingest", matches!(ingest, Phase::Failed { .. })),
        ("e2e", matches!(e2e, Phase::Failed { .. })),
        ("retries", matches!(retries, Phase::Failed { .. })),
        ("memory", matches!(memory, Phase::Failed { .. })),
        ("fairness", matches!(fairness, Phase::Failed { .. })),
    ] {
        if failed {
            eprintln!("matrix: the {name} phase failed; see the results file");
        }
    }
    let results = ModeResults {
        ingest,
        e2e,
        retries,
        memory,
        fairness,
    };
    let mut m = Matrix {
        date: o.date.unwrap_or_else(report::utc_date),
        commit: o
            .commit
            .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
            .unwrap_or_else(|| "unknown".into()),
        command: o.command,
        machine,
        herald: c
            .url
            .clone()
            .unwrap_or_else(|| ctx.launch.bin.display().to_string()),
        settings,
        floor,
        standalone: (!rm).then(|| results.clone()),
        redis_mongo: match servers {
            Some(s) => format!(
                "one api process (HERALD_WORKERS=false) and {} herald-delivery processes from {}; {}; {}",
                c.deliveries,
                ctx.launch.delivery_bin.display(),
                s.redis_desc,
                s.mongo_desc
            ),
            None if rm => "at --url (topology not known to the harness)".into(),
            None => "not run (scripts/bench.sh --mode redis-mongo)".into(),
        },
        mode: c.mode,
        redis_mongo_results: rm.then_some(results),
        targets: Vec::new(),
        elapsed_s: 0.0,
    };
    m.check_targets();
    m.elapsed_s = t0.elapsed().as_secs_f64();
    Ok(m)
}

//! Smoke runs of the harness: a few hundred requests each, seconds in all. They check that the
//! harness works and counts (non-zero counts, no errors, everything delivered); they never
//! assert performance figures.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_herald-bench");

/// A scratch directory under the target dir (real disk, cleaned at the start of each run).
fn scratch(name: &str) -> PathBuf {
    let dir = target_profile_dir()
        .join("herald-bench-smoke")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// target/<profile>: this test binary lives in target/<profile>/deps.
fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary in target/<profile>/deps")
        .to_path_buf()
}

/// The Herald binary: $HERALD_BIN, else `herald` in this profile's target dir, else in the
/// other profile's. Cargo cannot hand a binary of another crate to this test, so it must have
/// been built first (`cargo test --workspace` does; otherwise `cargo build -p herald-api`).
fn herald_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HERALD_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "HERALD_BIN={} is not a file", p.display());
        return p;
    }
    let profile_dir = target_profile_dir();
    let target = profile_dir.parent().expect("target dir");
    let candidates = [
        profile_dir.join("herald"),
        target.join("debug").join("herald"),
        target.join("release").join("herald"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "the herald binary is missing (looked for {candidates:?}): build it with \
                 `cargo build -p herald-api` (or set HERALD_BIN) and run the test again"
            )
        })
}

fn run(args: &[&str]) -> String {
    let out = Command::new(BENCH)
        .args(args)
        .env_remove("HERALD_BENCH_URL")
        .env_remove("HERALD_TEST_REDIS_URL")
        // Passed as --mongo-uri where a test means it (the harness reads it as a default).
        .env_remove("HERALD_TEST_MONGO_URI")
        .output()
        .expect("run herald-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "herald-bench {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("valid JSON")
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} missing or not a count in {v:#}"))
}

/// Checks one load phase: something was answered, nothing failed.
fn assert_load_ok(v: &Value, path: &str) {
    assert!(
        u(v, &format!("{path}/ok")) > 0,
        "{path}: no requests answered: {v:#}"
    );
    assert_eq!(u(v, &format!("{path}/errors")), 0, "{path}: errors: {v:#}");
}

#[test]
fn floor_counts_requests() {
    let dir = scratch("floor");
    let json = dir.join("floor.json");
    run(&[
        "floor",
        "--connections",
        "4",
        "--duration",
        "1s",
        "--max-requests",
        "300",
        "--no-redis",
        "--json",
        json.to_str().unwrap(),
    ]);
    let v = read_json(&json);
    assert_load_ok(&v, "/http/0");
    assert!(
        u(&v, "/http/0/ok") <= 300,
        "the request cap was not honoured: {v:#}"
    );
    assert!(u(&v, "/http/0/latency/count") > 0);
    let _ = std::fs::remove_dir_all(dir);
}

/// `herald-delivery` beside the herald binary the matrix test uses.
fn delivery_bin(herald: &Path) -> PathBuf {
    let bin = herald.with_file_name("herald-delivery");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p herald-delivery` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// redis-mongo mode over the test environment's Redis and FerretDB: tiny counts, every phase
/// ran, every accepted event delivered, the per-process figures present.
#[test]
fn quick_matrix_against_redis_mongo() {
    let (Some(redis), Some(mongo)) = (herald_testenv::redis_url(), herald_testenv::mongo_uri())
    else {
        return;
    };
    let bin = herald_bin();
    let delivery = delivery_bin(&bin);
    let dir = scratch("redis-mongo");
    // The harness talks to loopback only. With the test environment's Kubernetes node, its
    // FerretDB listens on the node's bridge address instead: the harness then starts a FerretDB
    // of its own on loopback (the test environment puts `ferretdb` on PATH).
    let mongo_loopback = ["mongodb://127.", "mongodb://localhost", "mongodb://[::1]"]
        .iter()
        .any(|p| mongo.starts_with(p));
    let mongo_args: &[&str] = if mongo_loopback {
        &["--mongo-uri", &mongo]
    } else {
        &[]
    };
    let mut args = vec!["--mode", "redis-mongo", "--redis-url", &redis];
    args.extend_from_slice(mongo_args);
    args.extend_from_slice(&[
        "--delivery-bin",
        delivery.to_str().unwrap(),
        "matrix",
        "--quick",
        "--herald-bin",
        bin.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
        "--out-dir",
        dir.to_str().unwrap(),
        "--commit",
        "smoke",
        "--date",
        "today",
        "--quiet-wait",
        "0s",
    ]);
    let stdout = run(&args);
    let v = read_json(&dir.join("today-smoke-redis-mongo.json"));
    assert_eq!(v["mode"], "redis-mongo", "{stdout}");
    assert!(v.get("standalone").is_none_or(Value::is_null), "{v:#}");
    for phase in [
        "floor",
        "redis_mongo_results/ingest",
        "redis_mongo_results/e2e",
        "redis_mongo_results/retries",
        "redis_mongo_results/memory",
        "redis_mongo_results/fairness",
    ] {
        assert!(
            v.pointer(&format!("/{phase}/error")).is_none(),
            "{phase} failed: {:#}\n{stdout}",
            v.pointer(&format!("/{phase}")).unwrap()
        );
    }
    // The floors ran on the same Redis.
    assert_load_ok(&v, "/floor/http_redis/0");

    let rm = v.pointer("/redis_mongo_results").unwrap();
    let ingest = &rm["ingest"];
    assert_load_ok(ingest, "/closed/0");
    assert_eq!(
        u(ingest, "/delivered"),
        u(ingest, "/accepted"),
        "{ingest:#}"
    );
    // CPU of the api and of both delivery processes, each on its own.
    let names: Vec<&str> = ingest["closed"][0]["procs"]
        .as_array()
        .unwrap_or_else(|| panic!("no per-process CPU: {ingest:#}"))
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for want in ["api", "delivery-1", "delivery-2"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }

    let e2e = &rm["e2e"];
    assert_eq!(e2e["burst_all_received"], true, "{e2e:#}");
    assert_eq!(e2e["backlog_all_received"], true, "{e2e:#}");
    assert_eq!(e2e["steady_all_received"], true, "{e2e:#}");

    let retries = &rm["retries"];
    assert_eq!(retries["all_retried"], true, "{retries:#}");
    assert_eq!(u(retries, "/retried"), u(retries, "/ingest/ok"));

    assert_eq!(rm["fairness"]["all_received"], true, "{:#}", rm["fairness"]);

    let memory = &rm["memory"];
    assert_load_ok(memory, "/load");
    let procs = memory["procs"].as_array().expect("RSS per process");
    assert_eq!(
        procs.iter().filter(|p| p["herald"] == true).count(),
        3,
        "api + 2 delivery processes: {memory:#}"
    );
    assert!(
        procs.iter().all(|p| u(p, "/idle_rss_kib") > 0),
        "{memory:#}"
    );

    let md = std::fs::read_to_string(dir.join("today-smoke-redis-mongo.md")).unwrap();
    assert!(md.contains("CPU per process and phase"), "{md}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn quick_matrix_against_standalone_herald() {
    let bin = herald_bin();
    let dir = scratch("matrix");
    let stdout = run(&[
        "matrix",
        "--quick",
        "--no-redis",
        "--herald-bin",
        bin.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
        "--out-dir",
        dir.to_str().unwrap(),
        "--commit",
        "smoke",
        "--date",
        "today",
        "--quiet-wait",
        "0s",
    ]);
    let v = read_json(&dir.join("today-smoke.json"));
    assert!(
        dir.join("today-smoke.md").is_file(),
        "no Markdown written:\n{stdout}"
    );
    for phase in [
        "floor",
        "standalone/ingest",
        "standalone/e2e",
        "standalone/retries",
        "standalone/memory",
        "standalone/fairness",
    ] {
        assert!(
            v.pointer(&format!("/{phase}/error")).is_none(),
            "{phase} failed: {:#}",
            v.pointer(&format!("/{phase}")).unwrap()
        );
    }
    assert_load_ok(&v, "/floor/http/0");

    let ingest = v.pointer("/standalone/ingest").unwrap();
    assert_load_ok(ingest, "/closed/0");
    assert_load_ok(ingest, "/open");
    assert_eq!(u(ingest, "/closed/0/undelivered"), 0, "{ingest:#}");
    assert_eq!(
        u(ingest, "/delivered"),
        u(ingest, "/accepted"),
        "{ingest:#}"
    );

    let e2e = v.pointer("/standalone/e2e").unwrap();
    assert_load_ok(e2e, "/burst_ingest");
    assert_eq!(e2e["burst_all_received"], true, "{e2e:#}");
    assert_eq!(u(e2e, "/burst_received"), u(e2e, "/burst_ingest/ok"));
    assert!(u(e2e, "/backlog_events") > 0, "{e2e:#}");
    assert_eq!(e2e["backlog_all_received"], true, "{e2e:#}");
    assert_load_ok(e2e, "/steady_ingest");
    assert_eq!(e2e["steady_all_received"], true, "{e2e:#}");
    assert!(u(e2e, "/steady_latency/count") > 0, "{e2e:#}");

    let retries = v.pointer("/standalone/retries").unwrap();
    assert_load_ok(retries, "/ingest");
    assert_eq!(retries["all_retried"], true, "{retries:#}");
    assert_eq!(
        u(retries, "/retried"),
        u(retries, "/ingest/ok"),
        "{retries:#}"
    );
    assert_eq!(u(retries, "/first_failures"), u(retries, "/ingest/ok"));
    assert!(u(retries, "/lateness/count") > 0, "{retries:#}");

    let fairness = v.pointer("/standalone/fairness").unwrap();
    assert_load_ok(fairness, "/loaded_ingest");
    assert_eq!(fairness["all_received"], true, "{fairness:#}");
    assert!(u(fairness, "/loaded_latency/count") > 0, "{fairness:#}");
    assert!(u(fairness, "/slow_delivered") > 0, "{fairness:#}");

    let memory = v.pointer("/standalone/memory").unwrap();
    assert_load_ok(memory, "/load");
    assert!(u(memory, "/idle_rss_kib") > 0 && u(memory, "/peak_rss_kib") > 0);

    let _ = std::fs::remove_dir_all(dir);
}

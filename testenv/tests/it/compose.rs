//! docker-compose.yml is valid Compose (the specification's JSON schema, through the pinned
//! check-jsonschema) and describes Herald's single-host topology: MongoDB 7 and Redis 7 with AOF
//! and a password, the api without workers on port 8000, two delivery replicas, a healthcheck on
//! every service and start-up ordered on them.
//!
//! There is no Docker engine on the test machines: the same topology runs as native processes in
//! the production-mode process tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn compose_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml")
}

/// The file as Compose reads it before interpolation (anchors and `<<` merges resolved).
fn compose() -> Value {
    let text = std::fs::read_to_string(compose_path()).expect("read docker-compose.yml");
    serde_saphyr::from_str(&text).expect("docker-compose.yml is YAML")
}

fn check(tool: &Path, file: &Path) -> (bool, String) {
    let out = Command::new(tool)
        .args([
            "--builtin-schema",
            "vendor.compose-spec",
            "--color",
            "never",
        ])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", tool.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn compose_file_matches_the_compose_specification() {
    let Some(tool) = herald_testenv::check_jsonschema() else {
        return;
    };
    let (ok, out) = check(&tool, &compose_path());
    assert!(ok, "docker-compose.yml is not valid Compose:\n{out}");

    // The schema really is applied: the same file with a misspelt key fails.
    let text = std::fs::read_to_string(compose_path()).unwrap();
    let broken = text.replacen("\n    healthcheck:\n", "\n    healtcheck:\n", 1);
    assert_ne!(broken, text);
    let dir = std::env::temp_dir().join(herald_testenv::unique_name("herald-compose"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("docker-compose.yml");
    std::fs::write(&file, broken).unwrap();
    let (ok, out) = check(&tool, &file);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok, "a misspelt key passed the schema:\n{out}");
    assert!(out.contains("healtcheck"), "{out}");
}

fn service<'a>(c: &'a Value, name: &str) -> &'a Value {
    let s = &c["services"][name];
    assert!(s.is_object(), "no service {name}");
    s
}

fn env<'a>(svc: &'a Value, name: &str) -> &'a Value {
    &svc["environment"][name]
}

fn command(svc: &Value) -> Vec<String> {
    svc["command"]
        .as_array()
        .expect("command in list form")
        .iter()
        .map(|v| v.as_str().expect("string arguments").to_string())
        .collect()
}

#[test]
fn databases_are_mongodb_7_and_redis_7_with_aof_and_a_password() {
    let c = compose();
    let mongo = service(&c, "mongo");
    assert!(mongo["image"].as_str().unwrap().starts_with("mongo:7"));
    // Overridable defaults: ${VAR:-default}.
    for var in ["MONGO_INITDB_ROOT_USERNAME", "MONGO_INITDB_ROOT_PASSWORD"] {
        let v = env(mongo, var).as_str().unwrap_or_default();
        assert!(v.starts_with("${") && v.contains(":-"), "{var}: {v:?}");
    }

    let redis = service(&c, "redis");
    assert!(redis["image"].as_str().unwrap().starts_with("redis:7"));
    let cmd = command(redis).join(" ");
    for part in [
        "--appendonly yes",
        "--appendfsync everysec",
        "--maxmemory-policy noeviction",
        "--requirepass ${REDIS_PASSWORD:-",
    ] {
        assert!(cmd.contains(part), "redis command lacks {part:?}: {cmd}");
    }
    for svc in ["mongo", "redis"] {
        let volumes = service(&c, svc)["volumes"].as_array().unwrap();
        assert!(
            !volumes.is_empty(),
            "{svc} keeps its data in a named volume"
        );
    }
}

#[test]
fn api_and_delivery_reach_the_databases_with_their_credentials() {
    let c = compose();
    let mongo = service(&c, "mongo");
    let user = env(mongo, "MONGO_INITDB_ROOT_USERNAME").as_str().unwrap();
    let password = env(mongo, "MONGO_INITDB_ROOT_PASSWORD").as_str().unwrap();
    let redis_cmd = command(service(&c, "redis"));
    let requirepass = redis_cmd
        .iter()
        .position(|a| a == "--requirepass")
        .map(|i| redis_cmd[i + 1].clone())
        .unwrap();
    for name in ["api", "delivery"] {
        let svc = service(&c, name);
        let uri = env(svc, "MONGO_URI").as_str().expect("MONGO_URI");
        assert!(
            uri.starts_with(&format!("mongodb://{user}:{password}@mongo:27017/")),
            "{name}: MONGO_URI {uri}"
        );
        assert_eq!(env(svc, "REDIS_ADDR"), "redis:6379", "{name}");
        assert_eq!(
            env(svc, "REDIS_PASSWORD").as_str(),
            Some(requirepass.as_str())
        );
        for dep in ["mongo", "redis"] {
            assert_eq!(
                svc["depends_on"][dep]["condition"], "service_healthy",
                "{name} starts after {dep} is healthy"
            );
        }
    }
}

#[test]
fn the_api_listens_on_8000_without_workers_and_two_delivery_replicas_deliver() {
    let c = compose();
    let api = service(&c, "api");
    assert_eq!(command(api), ["herald"]);
    assert_eq!(env(api, "HERALD_WORKERS"), "false");
    let ports: Vec<&str> = api["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().expect("ports as strings"))
        .collect();
    assert!(ports.iter().any(|p| p.ends_with(":8000")), "{ports:?}");

    let delivery = service(&c, "delivery");
    assert_eq!(command(delivery), ["herald-delivery"]);
    assert_eq!(delivery["deploy"]["replicas"], 2);
    // Its healthcheck asks the address HERALD_HEALTH_ADDR makes it listen on.
    let health_addr = env(delivery, "HERALD_HEALTH_ADDR").as_str().unwrap();
    let test: Vec<&str> = delivery["healthcheck"]["test"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        test,
        [
            "CMD",
            "herald",
            "healthcheck",
            "--url",
            &format!("http://{health_addr}/healthz")
        ]
    );
}

#[test]
fn every_service_has_a_healthcheck_and_every_volume_is_declared() {
    let c = compose();
    let services = c["services"].as_object().unwrap();
    for name in ["mongo", "redis", "api", "delivery"] {
        assert!(services.contains_key(name), "service {name}");
    }
    for (name, svc) in services {
        let test = &svc["healthcheck"]["test"];
        assert!(
            test.as_array().is_some_and(|t| t.len() >= 2),
            "{name} has a healthcheck"
        );
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let source = v.as_str().unwrap().split(':').next().unwrap();
            assert!(
                c["volumes"].get(source).is_some(),
                "{name} uses volume {source}, not declared under volumes:"
            );
        }
    }
}

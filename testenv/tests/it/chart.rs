//! charts/herald: `helm lint --strict` passes and `helm template` renders with the default values
//! and with the value sets in charts/herald/ci/ (every optional part on; external Secrets, HPA
//! and a namespaced operator); the rendered objects keep the chart's invariants; and the test
//! control plane's API server accepts them (`kubectl apply --dry-run=server`, its own schema
//! validation), after which `helm install` creates them and `helm uninstall` removes them.
//!
//! The WebhookSubscription CRD is in the chart's `crds/` (which `helm install` applies and
//! `helm template` leaves out); the chart renders no WebhookSubscription, and RBAC rules naming
//! `herald.dev` resources are accepted without the CRD. KEDA's ScaledObject and the Prometheus
//! Operator's ServiceMonitor are custom resources too; the test installs schema-less stand-in
//! CRDs for them, so the server checks their envelope (kind, metadata) but not their spec.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/herald")
}

/// (name, values file under charts/herald/ci/), the default values first.
const VALUE_SETS: [(&str, Option<&str>); 3] = [
    ("default", None),
    ("all-on", Some("ci/all-on-values.yaml")),
    ("hpa-external", Some("ci/hpa-external-values.yaml")),
];

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// helm in the chart's directory, never reaching the developer's own KUBECONFIG.
fn helm_cmd(helm: &Path) -> Command {
    let mut cmd = Command::new(helm);
    cmd.current_dir(chart_dir());
    cmd.env_remove("KUBECONFIG");
    cmd
}

fn values_args(values: Option<&str>) -> Vec<String> {
    values
        .map(|v| vec!["--values".to_string(), v.to_string()])
        .unwrap_or_default()
}

fn render(helm: &Path, release: &str, values: Option<&str>) -> String {
    run(helm_cmd(helm)
        .args(["template", release, ".", "--namespace", "default"])
        .args(values_args(values)))
}

fn objects(rendered: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(rendered).expect("rendered YAML");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn kinds(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_string())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name_suffix: &str) -> Option<&'a Value> {
    objects.iter().find(|o| {
        o["kind"] == kind
            && o["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with(name_suffix))
    })
}

fn rendered_sets(helm: &Path) -> Vec<(&'static str, Vec<Value>)> {
    VALUE_SETS
        .iter()
        .map(|(name, values)| (*name, objects(&render(helm, "herald", *values))))
        .collect()
}

#[test]
fn chart_lints_with_every_value_set() {
    let Some(helm) = herald_testenv::helm() else {
        return;
    };
    for (name, values) in VALUE_SETS {
        let out = run(helm_cmd(&helm)
            .args(["lint", "--strict", "."])
            .args(values_args(values)));
        assert!(out.contains("0 chart(s) failed"), "{name}: {out}");
    }
}

/// Pod specs of every workload, with the workload's kind/name.
fn pod_specs(objects: &[Value]) -> Vec<(String, &Value)> {
    objects
        .iter()
        .filter_map(|o| {
            let spec = match o["kind"].as_str()? {
                "Deployment" | "StatefulSet" => &o["spec"]["template"]["spec"],
                "CronJob" => &o["spec"]["jobTemplate"]["spec"]["template"]["spec"],
                _ => return None,
            };
            Some((
                format!(
                    "{}/{}",
                    o["kind"].as_str()?,
                    o["metadata"]["name"].as_str()?
                ),
                spec,
            ))
        })
        .collect()
}

#[test]
fn every_workload_runs_non_root_read_only_with_resources_and_probes() {
    let Some(helm) = herald_testenv::helm() else {
        return;
    };
    for (set, objects) in rendered_sets(&helm) {
        let pods = pod_specs(&objects);
        // api, delivery, operator; the retention CronJob unless the set turns it off.
        assert!(pods.len() >= 3, "{set}: {} workloads", pods.len());
        for (what, pod) in pods {
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{set} {what}");
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{set} {what}"
            );
            for c in pod["containers"].as_array().unwrap() {
                let sc = &c["securityContext"];
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{set} {what}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{set} {what}");
                assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
                assert!(
                    c["resources"]["requests"]["cpu"].is_string()
                        && c["resources"]["requests"]["memory"].is_string()
                        && c["resources"]["limits"]["memory"].is_string(),
                    "{set} {what}: requests and a memory limit"
                );
                if !what.starts_with("CronJob") {
                    assert!(
                        c["livenessProbe"].is_object() && c["readinessProbe"].is_object(),
                        "{set} {what}: probes"
                    );
                }
            }
        }
    }
}

fn env_of<'a>(deployment: &'a Value, name: &str) -> Option<&'a Value> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

#[test]
fn processes_get_their_commands_probes_and_settings() {
    let Some(helm) = herald_testenv::helm() else {
        return;
    };
    for (set, objects) in rendered_sets(&helm) {
        let api = find(&objects, "Deployment", "-api").expect("api Deployment");
        let c = &api["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            c["command"],
            serde_json::json!(["herald", "serve"]),
            "{set}"
        );
        assert_eq!(env_of(api, "HERALD_WORKERS").unwrap()["value"], "false");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        // Credentials come from Secrets, never inline.
        for var in ["MONGO_URI", "HERALD_API_KEY"] {
            let e = env_of(api, var).unwrap_or_else(|| panic!("{set}: {var}"));
            assert!(
                e["valueFrom"]["secretKeyRef"]["name"].is_string(),
                "{set} {var}"
            );
        }
        // Settings and credentials reach the processes as environment variables: a change of
        // either must roll the pods (the template changes with their checksums).
        for d in objects.iter().filter(|o| o["kind"] == "Deployment") {
            let annotations = &d["spec"]["template"]["metadata"]["annotations"];
            for key in ["checksum/config", "checksum/secret"] {
                assert!(
                    annotations[key].is_string(),
                    "{set} {}: {key}",
                    d["metadata"]["name"]
                );
            }
        }
        let svc = find(&objects, "Service", "-api").expect("api Service");
        assert_eq!(svc["spec"]["ports"][0]["port"], 8000);

        let delivery = find(&objects, "Deployment", "-delivery").expect("delivery Deployment");
        let c = &delivery["spec"]["template"]["spec"]["containers"][0];
        let cmd: Vec<&str> = c["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(&cmd[..2], ["herald-delivery", "run"], "{set}");
        let health = env_of(delivery, "HERALD_HEALTH_ADDR").unwrap()["value"]
            .as_str()
            .unwrap();
        let port = health.rsplit(':').next().unwrap().parse::<u64>().unwrap();
        assert_eq!(
            c["ports"][0]["containerPort"], port,
            "{set}: probed port listens"
        );
        // Liveness is the engine's own /healthz (which reports a stalled worker), not a TCP
        // check of the port.
        assert_eq!(
            c["livenessProbe"]["httpGet"],
            serde_json::json!({"path": "/healthz", "port": "health"}),
            "{set}"
        );

        let cron = find(&objects, "CronJob", "-retention");
        let config = find(&objects, "ConfigMap", "herald").expect("ConfigMap");
        assert_eq!(config["data"]["HERALD_RETENTION"], "72h", "{set}");
        match cron {
            Some(cron) => {
                assert_eq!(cron["spec"]["schedule"], "0 * * * *", "{set}: hourly");
                let job = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
                assert_eq!(
                    job["containers"][0]["command"],
                    serde_json::json!(["herald-delivery", "cleanup"])
                );
                assert!(
                    cmd.contains(&"--no-retention"),
                    "{set}: one sweeper, the CronJob"
                );
            }
            None => assert!(!cmd.contains(&"--no-retention"), "{set}: workers sweep"),
        }
    }
}

/// The rules of the operator's role: no `get` on Secrets at all, and list/watch (the
/// label-filtered metadata watch and the name-and-label-filtered read).
fn operator_rules() -> Value {
    serde_json::json!([
        {"apiGroups": ["herald.dev"], "resources": ["webhooksubscriptions"],
         "verbs": ["get", "list", "watch", "patch", "update"]},
        {"apiGroups": ["herald.dev"], "resources": ["webhooksubscriptions/status"],
         "verbs": ["get", "patch", "update"]},
        {"apiGroups": ["herald.dev"], "resources": ["webhooksubscriptions/finalizers"],
         "verbs": ["update"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    ])
}

fn grants_secrets(role: &Value) -> bool {
    role["rules"].as_array().into_iter().flatten().any(|r| {
        let has = |field: &str, want: &str| {
            r[field]
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x == want || x == "*"))
        };
        has("resources", "secrets") && (has("apiGroups", "") || r["apiGroups"].is_null())
    })
}

#[test]
fn operator_rbac_is_least_privilege() {
    let Some(helm) = herald_testenv::helm() else {
        return;
    };
    for (set, objects) in rendered_sets(&helm) {
        let roles: Vec<&Value> = objects
            .iter()
            .filter(|o| {
                (o["kind"] == "ClusterRole" || o["kind"] == "Role")
                    && o["metadata"]["name"]
                        .as_str()
                        .unwrap()
                        .ends_with("-operator")
            })
            .collect();
        let bindings: Vec<&Value> = objects
            .iter()
            .filter(|o| {
                (o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
                    && o["metadata"]["name"]
                        .as_str()
                        .unwrap()
                        .ends_with("-operator")
            })
            .collect();
        for role in &roles {
            assert_eq!(role["rules"], operator_rules(), "{set}");
        }
        let namespaces = |kind: &str| -> Vec<&str> {
            roles
                .iter()
                .filter(|r| r["kind"] == kind)
                .map(|r| r["metadata"]["namespace"].as_str().unwrap_or(""))
                .collect()
        };
        let env = find(&objects, "Deployment", "-operator").expect("operator Deployment");
        let watched = env_of(env, "HERALD_OPERATOR_WATCH_NAMESPACE").map(|e| e["value"].clone());
        match set {
            // The default: a Role in the release namespace only, and the operator told so.
            "default" => {
                assert_eq!(namespaces("Role"), ["default"], "{set}");
                assert_eq!(watched, Some(Value::from("default")), "{set}");
            }
            "hpa-external" => {
                assert_eq!(namespaces("Role"), ["default", "kube-public"], "{set}");
                assert_eq!(watched, Some(Value::from("default,kube-public")), "{set}");
            }
            // The wide mode, chosen explicitly.
            "all-on" => {
                assert_eq!(namespaces("ClusterRole"), [""], "{set}");
                assert!(namespaces("Role").is_empty(), "{set}");
                assert_eq!(watched, None, "{set}");
                assert_eq!(
                    env_of(env, "HERALD_OPERATOR_ALLOWED_EVENT_TYPES").unwrap()["value"],
                    "*=;shop=order.*,invoice.paid",
                    "{set}"
                );
            }
            _ => unreachable!(),
        }
        assert_eq!(bindings.len(), roles.len(), "{set}: one binding per role");
        for b in &bindings {
            assert_eq!(
                b["roleRef"]["kind"],
                if set == "all-on" {
                    "ClusterRole"
                } else {
                    "Role"
                }
            );
            assert_eq!(b["subjects"][0]["namespace"], "default", "{set}");
            assert_eq!(
                b["metadata"]["namespace"],
                roles
                    .iter()
                    .find(|r| r["metadata"]["namespace"] == b["metadata"]["namespace"])
                    .unwrap()["metadata"]["namespace"]
            );
        }
        // Unless the cluster scope is chosen, nothing the chart renders reads Secrets
        // cluster-wide.
        if set != "all-on" {
            for o in objects.iter().filter(|o| o["kind"] == "ClusterRole") {
                assert!(!grants_secrets(o), "{set}: {o}");
            }
        }

        let lease = find(&objects, "Role", "-operator-leader-election").expect("lease Role");
        assert_eq!(
            lease["rules"],
            serde_json::json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                "verbs": ["get", "list", "watch", "create", "update", "patch"]}])
        );
        // The api, delivery and retention pods get no Kubernetes credentials at all.
        for (what, pod) in pod_specs(&objects) {
            if !what.contains("-operator") {
                assert_eq!(pod["automountServiceAccountToken"], false, "{set} {what}");
            }
        }
    }
}

/// Env var names of a pod spec's containers.
fn env_names(pod: &Value) -> Vec<String> {
    pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["env"].as_array().into_iter().flatten())
        .filter_map(|e| e["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn keys_reach_only_the_api_and_a_changed_secret_rolls_the_pods() {
    let Some(helm) = herald_testenv::helm() else {
        return;
    };
    for (set, objects) in rendered_sets(&helm) {
        for (what, pod) in pod_specs(&objects) {
            let names = env_names(pod);
            let keys = ["HERALD_API_KEY", "HERALD_INGEST_KEY"];
            if what.ends_with("-api") {
                assert!(names.iter().any(|n| n == "HERALD_API_KEY"), "{set} {what}");
            } else {
                for k in keys {
                    assert!(!names.iter().any(|n| n == k), "{set} {what} gets {k}");
                }
            }
            // Only the bundled MongoDB gets its root password.
            if !what.ends_with("-mongodb") {
                assert!(
                    !names.iter().any(|n| n.starts_with("MONGO_INITDB")),
                    "{set} {what}"
                );
            }
        }
        if set == "all-on" {
            let api = find(&objects, "Deployment", "-api").unwrap();
            assert!(env_of(api, "HERALD_INGEST_KEY").is_some(), "{set}");
        }
        for component in ["-api", "-delivery", "-operator"] {
            let d = find(&objects, "Deployment", component).unwrap();
            let a = &d["spec"]["template"]["metadata"]["annotations"];
            assert!(
                a["checksum/secret"].as_str().is_some_and(|c| c.len() == 64),
                "{set} {component}: {a}"
            );
        }
    }
    // The checksum follows the Secret's content: another API key, another checksum.
    let checksum = |key: &str| {
        let out = run(helm_cmd(&helm).args([
            "template",
            "herald",
            ".",
            "--set",
            &format!("apiKey.value={key}"),
        ]));
        find(&objects(&out), "Deployment", "-api").unwrap()["spec"]["template"]["metadata"]
            ["annotations"]["checksum/secret"]
            .clone()
    };
    assert_eq!(checksum("key-one"), checksum("key-one"));
    assert_ne!(checksum("key-one"), checksum("key-two"));
}

/// Whether a label selector (matchLabels, matchExpressions with In) selects `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let by_labels = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels[k] == *v);
    let by_expressions = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            assert_eq!(e["operator"], "In", "only In is used");
            e["values"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| labels[e["key"].as_str().unwrap()] == *v)
        });
    by_labels && by_expressions
}

/// (workload name, its pod template's labels).
fn pod_labels(objects: &[Value]) -> Vec<(String, &Value)> {
    objects
        .iter()
        .filter_map(|o| {
            let labels = match o["kind"].as_str()? {
                "Deployment" | "StatefulSet" => &o["spec"]["template"]["metadata"]["labels"],
                "CronJob" => &o["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"],
                _ => return None,
            };
            Some((o["metadata"]["name"].as_str()?.to_string(), labels))
        })
        .collect()
}

#[test]
fn network_policies_admit_only_what_each_component_serves() {
    let Some(helm) = herald_testenv::helm() else {
        return;
    };
    for (set, objects) in rendered_sets(&helm) {
        let policies: Vec<&Value> = objects
            .iter()
            .filter(|o| o["kind"] == "NetworkPolicy")
            .collect();
        if set == "hpa-external" {
            assert!(policies.is_empty(), "{set}: networkPolicy.enabled=false");
            continue;
        }
        let pods = pod_labels(&objects);
        // Every workload is selected by exactly one policy, whose name is its own.
        for (name, labels) in &pods {
            let mine: Vec<&&Value> = policies
                .iter()
                .filter(|p| selects(&p["spec"]["podSelector"], labels))
                .collect();
            assert_eq!(mine.len(), 1, "{set} {name}: {mine:?}");
            assert_eq!(mine[0]["metadata"]["name"], name.as_str(), "{set}");
            assert_eq!(
                mine[0]["spec"]["policyTypes"],
                serde_json::json!(["Ingress"])
            );
        }
        let policy = |suffix: &str| {
            *policies
                .iter()
                .find(|p| p["metadata"]["name"].as_str().unwrap().ends_with(suffix))
                .unwrap_or_else(|| panic!("{set}: a policy for {suffix}"))
        };
        // The api: its port, from anywhere.
        let api = &policy("-api")["spec"]["ingress"];
        assert_eq!(
            api,
            &serde_json::json!([{"ports": [{"port": "http", "protocol": "TCP"}]}]),
            "{set}"
        );
        // Delivery and operator: the metrics port, from the monitoring namespace only.
        let monitoring = serde_json::json!([{"namespaceSelector":
            {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]);
        for (suffix, port) in [("-delivery", "health"), ("-operator", "http")] {
            let ingress = &policy(suffix)["spec"]["ingress"];
            assert_eq!(ingress.as_array().unwrap().len(), 1, "{set} {suffix}");
            assert_eq!(ingress[0]["ports"][0]["port"], port, "{set} {suffix}");
            assert_eq!(ingress[0]["from"], monitoring, "{set} {suffix}");
        }
        assert_eq!(
            policy("-retention")["spec"]["ingress"],
            serde_json::json!([])
        );
        // The bundled stores: only from this release's Herald pods.
        for (suffix, port) in [("-mongodb", "mongodb"), ("-redis", "redis")] {
            let found = policies
                .iter()
                .find(|p| p["metadata"]["name"].as_str().unwrap().ends_with(suffix));
            if set == "default" {
                assert!(found.is_none(), "{set}: no bundled {suffix}");
                continue;
            }
            let ingress = &found.unwrap()["spec"]["ingress"];
            assert_eq!(ingress.as_array().unwrap().len(), 1);
            assert_eq!(ingress[0]["ports"][0]["port"], port);
            let from = ingress[0]["from"].as_array().unwrap();
            assert_eq!(from.len(), 1, "{set} {suffix}: one peer");
            assert!(
                from[0]["namespaceSelector"].is_null(),
                "this namespace only"
            );
            let peer = &from[0]["podSelector"];
            for (name, labels) in &pods {
                let client = ["-api", "-delivery", "-operator", "-retention"]
                    .iter()
                    .any(|c| name.ends_with(c));
                assert_eq!(selects(peer, labels), client, "{set} {suffix} from {name}");
            }
            // Another release's pods are not Herald's.
            let mut other = (*pods[0].1).clone();
            other["app.kubernetes.io/instance"] = "other".into();
            assert!(!selects(peer, &other));
        }
    }
}

/// A Redis memory size in bytes (`1kb` = 1024, `1k` = 1000, as Redis reads them).
fn redis_bytes(v: &str) -> u64 {
    let v = v.to_ascii_lowercase();
    let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = n.parse().unwrap();
    n * match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1 << 10,
        "m" => 1_000_000,
        "mb" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" => 1 << 30,
        u => panic!("unit {u}"),
    }
}

/// A Kubernetes memory quantity in bytes (`Mi`, `Gi`, `M`, `G`).
fn kube_bytes(v: &str) -> u64 {
    let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = n.parse().unwrap();
    n * match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        u => panic!("unit {u}"),
    }
}

fn decode_secret(secret: &Value, key: &str) -> String {
    use base64::Engine as _;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(secret["data"][key].as_str().unwrap())
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn the_bundled_redis_refuses_eviction_and_keeps_its_password_off_the_command_line() {
    let Some(helm) = herald_testenv::helm() else {
        return;
    };
    let objects = objects(&render(&helm, "herald", Some("ci/all-on-values.yaml")));
    let redis = find(&objects, "StatefulSet", "-redis").unwrap();
    let pod = &redis["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let after = |flag: &str| {
        let at = args.iter().position(|a| *a == flag);
        at.map(|i| args[i + 1])
            .unwrap_or_else(|| panic!("{flag} in {args:?}"))
    };
    assert_eq!(after("--maxmemory-policy"), "noeviction");
    assert_eq!(after("--appendonly"), "yes");
    // maxmemory below the container's memory limit.
    let max = redis_bytes(after("--maxmemory"));
    let limit = kube_bytes(c["resources"]["limits"]["memory"].as_str().unwrap());
    assert!(
        max > 0 && max < limit,
        "maxmemory {max} under the limit {limit}"
    );
    // No password in the arguments or the environment; a file of the chart's Secret, mounted
    // alone.
    let all = c.to_string();
    assert!(
        !all.contains("requirepass") && !all.contains("REDIS_PASSWORD"),
        "{all}"
    );
    assert!(c["env"].is_null(), "{all}");
    assert!(args[0].ends_with("/redis-auth.conf"), "{args:?}");
    let auth = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "auth")
        .unwrap();
    assert_eq!(
        auth["secret"]["items"],
        serde_json::json!([{"key": "redis-auth.conf", "path": "redis-auth.conf"}])
    );
    let secret = find(&objects, "Secret", "herald").unwrap();
    let password = decode_secret(secret, "REDIS_PASSWORD");
    assert_eq!(
        decode_secret(secret, "redis-auth.conf"),
        format!("requirepass \"{password}\"\n")
    );
}

/// The rendered Redis arguments and password file, run by a real `redis-server` on the
/// loopback: it starts, wants the password (one with quotes, a space, a backslash and a `#`),
/// refuses eviction under the rendered maxmemory, and its command line holds no password.
#[test]
fn a_real_redis_runs_the_rendered_configuration() {
    let Some(helm) = herald_testenv::helm() else {
        return;
    };
    // The test environment's Redis is what says redis-server is installed here.
    if herald_testenv::redis_url().is_none() {
        return;
    }
    let password = r#"p"a s\w#rd'x"#;
    // A values file (JSON is YAML): `--set` would read the backslash as an escape.
    let dir = std::env::temp_dir().join(herald_testenv::unique_name("chart-redis"));
    std::fs::create_dir_all(&dir).unwrap();
    let values = dir.join("values.json");
    std::fs::write(
        &values,
        serde_json::json!({"redis": {"bundled": {"password": password}}}).to_string(),
    )
    .unwrap();
    let rendered = run(helm_cmd(&helm)
        .args([
            "template",
            "herald",
            ".",
            "--values",
            "ci/all-on-values.yaml",
            "--values",
        ])
        .arg(&values));
    let objects = objects(&rendered);
    let redis = find(&objects, "StatefulSet", "-redis").unwrap();
    let c = &redis["spec"]["template"]["spec"]["containers"][0];
    let mut args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let secret = find(&objects, "Secret", "herald").unwrap();
    assert_eq!(decode_secret(secret, "REDIS_PASSWORD"), password);
    let conf = dir.join("redis-auth.conf");
    std::fs::write(&conf, decode_secret(secret, "redis-auth.conf")).unwrap();
    // The mounted file's path and the data volume, here; a loopback port of its own.
    args[0] = conf.to_str().unwrap().to_string();
    let at = args.iter().position(|a| a == "--dir").unwrap();
    args[at + 1] = dir.to_str().unwrap().to_string();
    let port = herald_testenv::free_port();
    let server = herald_testenv::process::Child::spawn(
        Command::new("redis-server")
            .args(&args)
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
            ])
            .stdout(std::process::Stdio::null()),
        "redis-server",
    );
    let pid = server.id();
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut conn = herald_testenv::wait_until_blocking(
        "the chart's redis-server to start",
        std::time::Duration::from_secs(10),
        || client.get_connection().ok(),
    );
    let unauthenticated: redis::RedisResult<String> = redis::cmd("PING").query(&mut conn);
    assert!(
        unauthenticated.unwrap_err().to_string().contains("NOAUTH"),
        "the password is required"
    );
    let _: () = redis::cmd("AUTH").arg(password).query(&mut conn).unwrap();
    let get = |conn: &mut redis::Connection, key: &str| -> String {
        let v: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(key)
            .query(conn)
            .unwrap();
        v[1].clone()
    };
    assert_eq!(get(&mut conn, "maxmemory-policy"), "noeviction");
    assert_eq!(get(&mut conn, "appendonly"), "yes");
    let max: u64 = get(&mut conn, "maxmemory").parse().unwrap();
    let limit = kube_bytes(c["resources"]["limits"]["memory"].as_str().unwrap());
    assert!(
        max > 0 && max < limit,
        "maxmemory {max} under the limit {limit}"
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        !cmdline.contains(password) && !cmdline.contains("requirepass"),
        "{cmdline}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn optional_parts_render_only_when_enabled() {
    let Some(helm) = herald_testenv::helm() else {
        return;
    };
    let sets = rendered_sets(&helm);
    let (_, default) = &sets[0];
    let (_, all_on) = &sets[1];
    let (_, external) = &sets[2];

    let k = kinds(default);
    for absent in [
        "Ingress",
        "HorizontalPodAutoscaler",
        "ScaledObject",
        "ServiceMonitor",
        "PodMonitor",
        "StatefulSet",
    ] {
        assert!(!k.iter().any(|x| x == absent), "default renders a {absent}");
    }
    for present in ["PodDisruptionBudget", "CronJob", "Secret", "ServiceAccount"] {
        assert!(k.iter().any(|x| x == present), "default lacks a {present}");
    }
    // A single operator replica gets no PDB; api and delivery do.
    assert!(find(default, "PodDisruptionBudget", "-operator").is_none());

    for suffix in ["-mongodb", "-redis"] {
        assert!(
            find(all_on, "StatefulSet", suffix).is_some(),
            "bundled {suffix}"
        );
    }
    let redis = find(all_on, "StatefulSet", "-redis").unwrap();
    let args = redis["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("\"--appendonly\",\"yes\""), "{args}");
    assert!(find(all_on, "Ingress", "-api").is_some());
    assert!(find(all_on, "HorizontalPodAutoscaler", "-api").is_some());
    assert!(find(all_on, "ScaledObject", "-delivery").is_some());
    // KEDA owns the delivery HPA when it scales delivery.
    assert!(find(all_on, "HorizontalPodAutoscaler", "-delivery").is_none());
    assert_eq!(
        kinds(all_on)
            .iter()
            .filter(|k| *k == "ServiceMonitor")
            .count(),
        2
    );
    let monitor = find(all_on, "PodMonitor", "-delivery").expect("delivery PodMonitor");
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], "health");
    assert!(find(all_on, "PodDisruptionBudget", "-operator").is_some());
    let delivery = find(all_on, "Deployment", "-delivery").unwrap();
    assert!(delivery["spec"]["replicas"].is_null(), "KEDA sets replicas");

    let hpa = find(external, "HorizontalPodAutoscaler", "-delivery").expect("delivery HPA");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    let api = find(external, "Deployment", "-api").unwrap();
    assert_eq!(
        env_of(api, "MONGO_URI").unwrap()["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "herald-backends", "key": "mongo-uri"})
    );
    assert_eq!(
        env_of(api, "REDIS_ADDR").unwrap()["value"],
        "redis.example.internal:6379"
    );
}

/// Stand-ins for KEDA's and the Prometheus Operator's CRDs: the real ones are large and not
/// Herald's; these let the server accept (and store) the chart's objects of those kinds.
const STUB_CRDS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: scaledobjects.keda.sh
spec:
  group: keda.sh
  scope: Namespaced
  names: {kind: ScaledObject, plural: scaledobjects, singular: scaledobject, listKind: ScaledObjectList}
  versions:
    - name: v1alpha1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, plural: servicemonitors, singular: servicemonitor, listKind: ServiceMonitorList}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: podmonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: PodMonitor, plural: podmonitors, singular: podmonitor, listKind: PodMonitorList}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

#[test]
fn the_api_server_accepts_install_and_uninstall_of_the_chart() {
    let Some(helm) = herald_testenv::helm() else {
        return;
    };
    let Some(kubeconfig) = herald_testenv::kubeconfig() else {
        return;
    };
    let dir = std::env::temp_dir().join(herald_testenv::unique_name("herald-chart"));
    std::fs::create_dir_all(&dir).unwrap();
    // Against the test control plane only, never the developer's own KUBECONFIG.
    let kubectl = |args: &[&str]| {
        run(Command::new("kubectl")
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args))
    };
    let crds = dir.join("stub-crds.yaml");
    std::fs::write(&crds, STUB_CRDS).unwrap();
    kubectl(&["apply", "-f", crds.to_str().unwrap()]);
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/scaledobjects.keda.sh",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/podmonitors.monitoring.coreos.com",
    ]);

    for (name, values) in VALUE_SETS {
        let release = herald_testenv::unique_name("chart");
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, render(&helm, &release, values)).unwrap();
        // No --namespace: objects without one go to the kubeconfig's (default), and the Roles
        // of other watched namespaces keep theirs (kubectl refuses a mismatch).
        let out = kubectl(&["apply", "--dry-run=server", "-f", file.to_str().unwrap()]);
        let accepted = out
            .lines()
            .filter(|l| l.contains("(server dry run)"))
            .count();
        let rendered = objects(&std::fs::read_to_string(&file).unwrap()).len();
        assert_eq!(accepted, rendered, "{name}: every object accepted:\n{out}");
    }

    // Install for real (no --wait: there are no nodes to run the pods), then uninstall.
    let release = herald_testenv::unique_name("chart");
    let in_cluster = |args: &[&str]| {
        let mut cmd = helm_cmd(&helm);
        cmd.args(args)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--namespace", "default"]);
        run(&mut cmd)
    };
    let notes = in_cluster(&[
        "install",
        &release,
        ".",
        "--values",
        "ci/all-on-values.yaml",
    ]);
    assert!(notes.contains("port-forward") || notes.contains("https://herald.example.test/"));
    assert!(
        notes.contains("kubectl --namespace default get webhooksubscriptions"),
        "{notes}"
    );
    let selector = format!("app.kubernetes.io/instance={release}");
    let listed = kubectl(&[
        "get",
        "deployments,statefulsets,cronjobs,services,scaledobjects,servicemonitors,podmonitors",
        "--namespace",
        "default",
        "-l",
        &selector,
        "-o",
        "name",
    ]);
    assert_eq!(
        listed.lines().count(),
        3 + 2 + 1 + 4 + 1 + 2 + 1,
        "{listed}"
    );
    // A generated API key is kept across upgrades (read back from the installed Secret).
    let secret_name = format!("{release}-herald");
    let key = || {
        kubectl(&[
            "get",
            "secret",
            &secret_name,
            "--namespace",
            "default",
            "-o",
            "jsonpath={.data.HERALD_API_KEY}",
        ])
    };
    let before = key();
    assert!(!before.is_empty());
    in_cluster(&[
        "upgrade",
        &release,
        ".",
        "--values",
        "ci/all-on-values.yaml",
    ]);
    assert_eq!(key(), before, "helm upgrade kept the generated API key");

    in_cluster(&["uninstall", &release]);
    let left = kubectl(&[
        "get",
        "deployments,statefulsets,cronjobs,services,secrets,configmaps",
        "--namespace",
        "default",
        "-l",
        &selector,
        "-o",
        "name",
    ]);
    assert_eq!(left.trim(), "", "helm uninstall removed everything");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Installed with the default values, the operator's ServiceAccount may list and watch Secrets
/// in the release namespace only, and `get` none: the API server's own RBAC answers, asked as
/// that ServiceAccount (`kubectl auth can-i --as`, a SubjectAccessReview).
#[test]
fn the_installed_operator_may_not_read_secrets_of_other_namespaces() {
    let Some(helm) = herald_testenv::helm() else {
        return;
    };
    let Some(kubeconfig) = herald_testenv::kubeconfig() else {
        return;
    };
    let ns = herald_testenv::unique_name("chart-rbac");
    let release = herald_testenv::unique_name("rbac");
    let kubectl = |args: &[&str]| {
        Command::new("kubectl")
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs")
    };
    let mut install = helm_cmd(&helm);
    install
        .args([
            "install",
            &release,
            ".",
            "--namespace",
            &ns,
            "--create-namespace",
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig);
    run(&mut install);
    let sa = format!("system:serviceaccount:{ns}:{release}-herald-operator");
    // `can-i` exits 0 for yes and 1 for no; anything else is an error.
    let can = |verb: &str, scope: &[&str]| -> bool {
        let mut args = vec!["auth", "can-i", verb, "secrets", "--as", &sa];
        args.extend_from_slice(scope);
        let out = kubectl(&args);
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match (out.status.code(), answer.as_str()) {
            (Some(0), "yes") => true,
            (Some(1), "no") => false,
            other => panic!(
                "kubectl auth can-i {verb} secrets {scope:?}: {other:?} {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    };
    assert!(can("list", &["--namespace", &ns]), "its own namespace");
    assert!(can("watch", &["--namespace", &ns]));
    assert!(!can("get", &["--namespace", &ns]), "no get, even at home");
    for other in ["default", "kube-system"] {
        for verb in ["get", "list", "watch"] {
            assert!(!can(verb, &["--namespace", other]), "{verb} in {other}");
        }
    }
    assert!(!can("list", &["--all-namespaces"]), "cluster-wide");
    // The api and delivery ServiceAccount may read none.
    let workers = format!("system:serviceaccount:{ns}:{release}-herald");
    let out = kubectl(&[
        "auth",
        "can-i",
        "list",
        "secrets",
        "--as",
        &workers,
        "--namespace",
        &ns,
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");

    let mut uninstall = helm_cmd(&helm);
    uninstall
        .args(["uninstall", &release, "--namespace", &ns])
        .arg("--kubeconfig")
        .arg(&kubeconfig);
    run(&mut uninstall);
    // The Namespace stays: without a controller-manager a deleted one never goes away.
}

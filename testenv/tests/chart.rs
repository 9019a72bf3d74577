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

#[test]
fn operator_rbac_is_least_privilege() {
    let Some(helm) = herald_testenv::helm() else {
        return;
    };
    for (set, objects) in rendered_sets(&helm) {
        let role = objects
            .iter()
            .find(|o| {
                (o["kind"] == "ClusterRole" || o["kind"] == "Role")
                    && o["metadata"]["name"]
                        .as_str()
                        .unwrap()
                        .ends_with("-operator")
            })
            .unwrap_or_else(|| panic!("{set}: the operator's role"));
        let expected = serde_json::json!([
            {"apiGroups": ["herald.dev"], "resources": ["webhooksubscriptions"],
             "verbs": ["get", "list", "watch", "patch", "update"]},
            {"apiGroups": ["herald.dev"], "resources": ["webhooksubscriptions/status"],
             "verbs": ["get", "patch", "update"]},
            {"apiGroups": ["herald.dev"], "resources": ["webhooksubscriptions/finalizers"],
             "verbs": ["update"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        ]);
        assert_eq!(role["rules"], expected, "{set}");
        let namespaced = set == "hpa-external";
        assert_eq!(
            role["kind"],
            if namespaced { "Role" } else { "ClusterRole" }
        );

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
        let out = kubectl(&[
            "apply",
            "--dry-run=server",
            "--namespace",
            "default",
            "-f",
            file.to_str().unwrap(),
        ]);
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

//! The pinned helm is real: it reports its version, and lints, renders and
//! installs a tiny chart into the test control plane.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The helm version pinned in tools/testenv/helm/go.mod.
fn pinned_helm_version() -> String {
    let go_mod = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/testenv/helm/go.mod");
    let text = std::fs::read_to_string(&go_mod).expect("read tools/testenv/helm/go.mod");
    text.lines()
        .map(|l| l.trim_start_matches("require").trim())
        .find_map(|l| l.strip_prefix("helm.sh/helm/v3 "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("helm.sh/helm/v3 is required in tools/testenv/helm/go.mod")
        .to_string()
}

fn helm(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {} {args:?}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "helm {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn helm_reports_the_pinned_version() {
    let Some(bin) = herald_testenv::helm() else {
        return;
    };
    let version = helm(&bin, &["version", "--short"]);
    let pinned = pinned_helm_version();
    assert!(
        version.trim().starts_with(&format!("{pinned}+")) || version.trim() == pinned,
        "helm reports {version:?}, pinned {pinned}"
    );
}

fn write_chart(dir: &Path) {
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("Chart.yaml"),
        "apiVersion: v2\nname: smoke\ndescription: herald-testenv smoke chart\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(dir.join("values.yaml"), "greeting: hello\n").unwrap();
    std::fs::write(
        dir.join("templates/configmap.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-smoke\n\
         data:\n  greeting: {{ .Values.greeting | quote }}\n",
    )
    .unwrap();
}

#[test]
fn helm_lints_renders_and_installs_a_chart() {
    let Some(bin) = herald_testenv::helm() else {
        return;
    };
    let Some(kubeconfig) = herald_testenv::kubeconfig() else {
        return;
    };
    let kubeconfig = kubeconfig.to_str().expect("utf-8 path");
    let dir: PathBuf = std::env::temp_dir().join(herald_testenv::unique_name("herald-helm-smoke"));
    write_chart(&dir);
    let chart = dir.to_str().unwrap();
    let release = herald_testenv::unique_name("smoke");

    helm(&bin, &["lint", "--strict", chart]);
    let rendered = helm(&bin, &["template", &release, chart, "--set", "greeting=hi"]);
    assert!(rendered.contains("greeting: \"hi\""), "{rendered}");

    // Against the test control plane only, never the developer's own KUBECONFIG.
    let in_cluster = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--kubeconfig", kubeconfig, "--namespace", "default"]);
        helm(&bin, &all)
    };
    in_cluster(&["install", &release, chart, "--wait", "--timeout", "60s"]);
    let status = in_cluster(&["status", &release, "-o", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status).expect("helm status JSON");
    assert_eq!(status["info"]["status"], "deployed");
    in_cluster(&["uninstall", &release, "--wait"]);

    let _ = std::fs::remove_dir_all(&dir);
}

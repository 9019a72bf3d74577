//! The Dockerfile and .dockerignore keep their invariants: a cached multi-stage build of every
//! binary the image promises, a final stage that runs as a numeric non-root user with a
//! HEALTHCHECK that needs no shell, and a build context holding everything cargo reads.
//!
//! There is no Docker engine on the test machines, so these are checks of the text (one
//! instruction per logical line) plus `cargo metadata` for what the workspace really builds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

/// Instructions in order: comment lines dropped (also inside continuations, as BuildKit does),
/// `\`-continued lines joined.
fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let logical = std::mem::take(&mut current);
        let (keyword, args) = logical.split_once(' ').unwrap_or((&logical, ""));
        out.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_string(),
        });
    }
    assert!(
        current.is_empty(),
        "the Dockerfile ends inside a continuation"
    );
    out
}

/// The instructions of each stage (from its FROM up to the next).
fn stages(all: &[Instruction]) -> Vec<&[Instruction]> {
    let starts: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, i)| i.keyword == "FROM")
        .map(|(n, _)| n)
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(k, &s)| &all[s..starts.get(k + 1).copied().unwrap_or(all.len())])
        .collect()
}

fn dockerfile() -> Vec<Instruction> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("read Dockerfile");
    instructions(&text)
}

fn find<'a>(stage: &'a [Instruction], keyword: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|i| i.keyword == keyword)
        .map(|i| i.args.as_str())
        .collect()
}

/// The default of `ARG NAME=...` (quotes removed).
fn arg_default(all: &[Instruction], name: &str) -> Option<String> {
    all.iter()
        .filter(|i| i.keyword == "ARG")
        .find_map(|i| i.args.strip_prefix(&format!("{name}=")))
        .map(|v| v.trim_matches('"').to_string())
}

/// The workspace as cargo sees it: every member's bin targets and manifest directories.
struct Workspace {
    bins: BTreeSet<String>,
    member_dirs: Vec<PathBuf>,
}

fn workspace() -> Workspace {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .arg("--manifest-path")
        .arg(root().join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let root = Path::new(meta["workspace_root"].as_str().unwrap()).to_path_buf();
    let mut bins = BTreeSet::new();
    let mut member_dirs = Vec::new();
    for pkg in meta["packages"].as_array().unwrap() {
        let manifest = Path::new(pkg["manifest_path"].as_str().unwrap());
        member_dirs.push(
            manifest
                .parent()
                .unwrap()
                .strip_prefix(&root)
                .unwrap()
                .to_path_buf(),
        );
        for target in pkg["targets"].as_array().unwrap() {
            if target["kind"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k == "bin")
            {
                bins.insert(target["name"].as_str().unwrap().to_string());
            }
        }
    }
    Workspace { bins, member_dirs }
}

#[test]
fn the_build_stage_builds_every_shipped_binary_with_cached_dependencies() {
    let all = dockerfile();
    let stages = stages(&all);
    assert!(
        stages.len() >= 2,
        "multi-stage: a build and a runtime stage"
    );
    let builder = stages[0];
    assert!(
        builder[0]
            .args
            .to_ascii_lowercase()
            .ends_with(" as builder"),
        "the first stage is `builder`: {}",
        builder[0].args
    );

    let binaries = arg_default(&all, "BINARIES").expect("ARG BINARIES=... with a default");
    let binaries: BTreeSet<&str> = binaries.split_whitespace().collect();
    for required in ["herald", "herald-delivery", "herald-operator"] {
        assert!(binaries.contains(required), "BINARIES lacks {required}");
    }
    let ws = workspace();
    for bin in &binaries {
        assert!(
            ws.bins.contains(*bin),
            "BINARIES names {bin}, which no workspace member builds (bins: {:?})",
            ws.bins
        );
    }

    let runs = find(builder, "RUN");
    let build = runs
        .iter()
        .find(|r| r.contains("cargo build"))
        .expect("a RUN with cargo build");
    // --workspace: `--bin herald-delivery` alone fails, the default member is the api's crate.
    for flag in ["--locked", "--workspace", "--bin $b", "$BINARIES"] {
        assert!(
            build.contains(flag),
            "the cargo build RUN lacks {flag}: {build}"
        );
    }
    for cache in [
        "type=cache,target=/usr/local/cargo/registry",
        "type=cache,target=/src/target",
    ] {
        assert!(
            build.contains(cache),
            "dependencies are cached ({cache}): {build}"
        );
    }
}

#[test]
fn the_runtime_stage_is_small_non_root_and_checks_its_own_health() {
    let all = dockerfile();
    let stages = stages(&all);
    let runtime = *stages.last().unwrap();
    let base = &runtime[0].args;
    assert!(
        base.contains("distroless") || base.contains("-slim"),
        "small final image (distroless or Debian slim): {base}"
    );

    assert!(
        find(runtime, "COPY")
            .iter()
            .any(|c| c.starts_with("--from=builder /out/bin/ /usr/local/bin/")),
        "every built binary is copied to /usr/local/bin"
    );

    // Numeric, so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
    let user = *find(runtime, "USER")
        .last()
        .expect("a USER in the final stage");
    let uid = user.split(':').next().unwrap();
    let uid: u32 = uid
        .parse()
        .unwrap_or_else(|_| panic!("USER {user} is numeric"));
    assert_ne!(uid, 0, "the image does not run as root");
    let gid = user.split(':').nth(1).map(|g| g.parse::<u32>());
    assert!(!matches!(gid, Some(Ok(0)) | Some(Err(_))), "USER {user}");

    let health = *find(runtime, "HEALTHCHECK")
        .last()
        .expect("a HEALTHCHECK in the final stage");
    let cmd = health
        .split_once("CMD ")
        .map(|(_, c)| c.trim())
        .expect("HEALTHCHECK ... CMD [...]");
    // Exec form: the distroless image has no shell for `CMD curl ...` to run in.
    let cmd: Vec<String> = serde_json::from_str(cmd).expect("HEALTHCHECK CMD in exec (JSON) form");
    assert_eq!(cmd, ["herald", "healthcheck"]);

    let expose = find(runtime, "EXPOSE");
    assert!(expose
        .iter()
        .any(|e| e.split_whitespace().any(|p| p == "8000")));
    let env = find(runtime, "ENV").join(" ");
    for setting in [
        "HERALD_ADDR=0.0.0.0:8000",
        "HERALD_SQLITE_PATH=/data/herald.db",
    ] {
        assert!(env.contains(setting), "ENV lacks {setting}: {env}");
    }
    let volume = find(runtime, "VOLUME").join(" ");
    assert!(
        volume.contains("\"/data\""),
        "the SQLite directory is a VOLUME"
    );
    let cmd = *find(runtime, "CMD").last().expect("a CMD");
    assert_eq!(
        serde_json::from_str::<Vec<String>>(cmd).expect("CMD in exec form"),
        ["herald"]
    );
}

/// Whether a .dockerignore pattern (root-anchored, `*` within one segment, a leading `**/` for
/// any depth: the forms this repository uses) excludes `path` or one of its parents.
fn ignored(patterns: &[String], path: &str) -> bool {
    fn glob(p: &str, s: &str) -> bool {
        match p.split_once('*') {
            None => p == s,
            Some((head, tail)) => {
                s.starts_with(head)
                    && (head.len()..=s.len())
                        .any(|k| !s[head.len()..k].contains('/') && glob(tail, &s[k..]))
            }
        }
    }
    let segments: Vec<&str> = path.split('/').collect();
    (1..=segments.len()).any(|n| {
        let prefix = segments[..n].join("/");
        patterns.iter().any(|p| {
            let p = p.trim_start_matches('/');
            match p.strip_prefix("**/") {
                Some(any_depth) => glob(any_depth, segments[n - 1]),
                None => glob(p, &prefix),
            }
        })
    })
}

#[test]
fn the_build_context_holds_what_cargo_reads_and_little_else() {
    let text = std::fs::read_to_string(root().join(".dockerignore")).expect("read .dockerignore");
    let patterns: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    assert!(
        patterns.iter().all(|p| !p.starts_with('!')),
        "re-inclusions are not understood by this check"
    );

    let mut needed = vec!["Cargo.toml".to_string(), "Cargo.lock".to_string()];
    for dir in workspace().member_dirs {
        let dir = dir.to_str().unwrap().to_string();
        if dir.is_empty() {
            continue;
        }
        needed.push(format!("{dir}/Cargo.toml"));
        needed.push(format!("{dir}/src"));
    }
    // Compiled into the api by include_str!.
    needed.push("api/ui/index.html".into());
    for path in &needed {
        assert!(!ignored(&patterns, path), ".dockerignore excludes {path}");
    }
    for path in [
        "target/debug/herald",
        ".git/HEAD",
        "herald.db",
        "ui-tests/node_modules/x",
    ] {
        assert!(ignored(&patterns, path), ".dockerignore keeps {path}");
    }
}

#[test]
fn the_ignore_matcher_agrees_with_docker_on_these_forms() {
    let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(ignored(&p(&["/target"]), "target/release/herald"));
    assert!(!ignored(&p(&["/target"]), "api/target"));
    assert!(ignored(&p(&["*.db"]), "herald.db"));
    assert!(!ignored(&p(&["*.db"]), "data/herald.db"));
    assert!(ignored(&p(&["**/node_modules"]), "a/b/node_modules/c"));
    assert!(!ignored(&p(&["/docs"]), "docs-not/x"));
}

/// Seconds or minutes (`10s`, `1m`) as Docker stores a healthcheck's times: nanoseconds.
fn duration_ns(v: &str) -> u64 {
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("a duration: {v}"));
    n * match unit {
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        _ => panic!("unit of {v}"),
    }
}

/// One entry of `tar -tv` output: (path without `./`, mode string, "uid/gid").
fn tar_listing(archive: &Path) -> Vec<(String, String, String)> {
    let out = Command::new("tar")
        .args(["--numeric-owner", "-tvzf"])
        .arg(archive)
        .output()
        .expect("run tar");
    assert!(out.status.success(), "tar -tvzf {archive:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f[5]
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string();
            (path, f[0].to_string(), f[1].to_string())
        })
        .collect()
}

/// scripts/build-image.sh (Herald's image without Docker) lays the image out as the Dockerfile's
/// runtime stage does: the archive it writes is unpacked and compared with the Dockerfile's
/// instructions, so that neither can change alone.
#[test]
fn the_image_built_without_docker_matches_the_dockerfile() {
    let all = dockerfile();
    let runtime = *stages(&all).last().unwrap();
    let binaries = arg_default(&all, "BINARIES").expect("ARG BINARIES");
    let binaries: Vec<&str> = binaries.split_whitespace().collect();

    let dir = std::env::temp_dir().join(herald_testenv::unique_name("herald-image"));
    let bins = dir.join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    // Stand-ins for the binaries: any dynamically linked executable (its libraries come along).
    let stand_in = ["/bin/true", "/usr/bin/true"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a `true` executable");
    for b in &binaries {
        std::fs::copy(stand_in, bins.join(b)).unwrap();
    }
    let archive = dir.join("herald.oci.tar");
    let out = Command::new(root().join("scripts/build-image.sh"))
        .arg("--bin-dir")
        .arg(&bins)
        .args(["--name", "herald.local/herald:layout-test"])
        .arg(&archive)
        .output()
        .expect("run scripts/build-image.sh");
    assert!(
        out.status.success(),
        "build-image.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unpacked = dir.join("oci");
    std::fs::create_dir_all(&unpacked).unwrap();
    let status = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(status.success());
    let blob = |digest: &str| {
        unpacked
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"))).unwrap()
    };
    let index = json(unpacked.join("index.json"));
    let manifest_ref = &index["manifests"][0];
    assert_eq!(
        manifest_ref["annotations"]["io.containerd.image.name"],
        "herald.local/herald:layout-test"
    );
    let manifest = json(blob(manifest_ref["digest"].as_str().unwrap()));
    let image = json(blob(manifest["config"]["digest"].as_str().unwrap()));
    let config = &image["config"];
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer");
    let listing = tar_listing(&blob(layers[0]["digest"].as_str().unwrap()));
    let entry = |path: &str| {
        listing
            .iter()
            .find(|(p, _, _)| p == path)
            .unwrap_or_else(|| panic!("the image has no {path}: {listing:?}"))
    };

    // USER and WORKDIR.
    let user = *find(runtime, "USER").last().unwrap();
    assert_eq!(config["User"], user);
    let workdir = *find(runtime, "WORKDIR").last().unwrap();
    assert_eq!(config["WorkingDir"], workdir);
    // ENV: the Dockerfile's settings, plus only what the distroless base sets (PATH, the CA file).
    let env: Vec<&str> = find(runtime, "ENV")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .collect();
    let image_env: Vec<&str> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let from_base: Vec<&str> = image_env
        .iter()
        .copied()
        .filter(|e| !env.contains(e))
        .collect();
    for e in &env {
        assert!(
            image_env.contains(e),
            "the image lacks ENV {e}: {image_env:?}"
        );
    }
    for e in &from_base {
        assert!(
            e.starts_with("PATH=") || e.starts_with("SSL_CERT_FILE="),
            "ENV {e} is in neither the Dockerfile nor its base"
        );
    }
    // CMD, no ENTRYPOINT.
    let cmd: serde_json::Value =
        serde_json::from_str(find(runtime, "CMD").last().unwrap()).unwrap();
    assert_eq!(config["Cmd"], cmd);
    assert!(find(runtime, "ENTRYPOINT").is_empty());
    assert!(config["Entrypoint"].is_null());
    // VOLUME and EXPOSE.
    let volumes: Vec<String> =
        serde_json::from_str(find(runtime, "VOLUME").last().unwrap()).unwrap();
    let image_volumes: Vec<&String> = config["Volumes"].as_object().unwrap().keys().collect();
    assert_eq!(image_volumes, volumes.iter().collect::<Vec<_>>());
    let ports: Vec<String> = find(runtime, "EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .map(|p| {
            if p.contains('/') {
                p.to_string()
            } else {
                format!("{p}/tcp")
            }
        })
        .collect();
    let image_ports: Vec<&String> = config["ExposedPorts"].as_object().unwrap().keys().collect();
    assert_eq!(image_ports, ports.iter().collect::<Vec<_>>());
    // HEALTHCHECK: its options and its exec-form command.
    let health = *find(runtime, "HEALTHCHECK").last().unwrap();
    let (options, hc_cmd) = health.split_once("CMD ").unwrap();
    let hc_cmd: Vec<String> = serde_json::from_str(hc_cmd.trim()).unwrap();
    let mut test = vec!["CMD".to_string()];
    test.extend(hc_cmd);
    let hc = &config["Healthcheck"];
    assert_eq!(hc["Test"], serde_json::json!(test));
    for option in options.split_whitespace() {
        let (name, value) = option.trim_start_matches("--").split_once('=').unwrap();
        let (key, expected) = match name {
            "interval" => ("Interval", duration_ns(value)),
            "timeout" => ("Timeout", duration_ns(value)),
            "start-period" => ("StartPeriod", duration_ns(value)),
            "retries" => ("Retries", value.parse().unwrap()),
            other => panic!("HEALTHCHECK option {other} is not compared"),
        };
        assert_eq!(hc[key], expected, "HEALTHCHECK --{name}");
    }
    // COPY: every binary into /usr/local/bin, root-owned and executable; the data directory
    // owned as its --chown says.
    let copies = find(runtime, "COPY");
    let bin_copy = copies
        .iter()
        .find(|c| c.contains("/out/bin/"))
        .expect("COPY of the binaries");
    let bin_dest = bin_copy
        .split_whitespace()
        .last()
        .unwrap()
        .trim_matches('/');
    for b in &binaries {
        let (_, mode, owner) = entry(&format!("{bin_dest}/{b}"));
        assert_eq!(
            (mode.as_str(), owner.as_str()),
            ("-rwxr-xr-x", "0/0"),
            "{b}"
        );
    }
    let data_copy = copies
        .iter()
        .find(|c| c.contains("/out/data"))
        .expect("COPY of the data directory");
    let chown = data_copy
        .split_whitespace()
        .find_map(|w| w.strip_prefix("--chown="))
        .expect("--chown on the data COPY")
        .replace(':', "/");
    let data_dest = data_copy
        .split_whitespace()
        .last()
        .unwrap()
        .trim_matches('/');
    let (_, mode, owner) = entry(data_dest);
    assert!(mode.starts_with('d'), "{data_dest} is a directory");
    assert_eq!(owner, &chown, "{data_dest} is owned as --chown says");
    // The runtime user exists in the image (as in distroless' `nonroot`), and /tmp is there.
    let uid = user.split(':').next().unwrap();
    let passwd = Command::new("tar")
        .args(["-xzOf"])
        .arg(blob(layers[0]["digest"].as_str().unwrap()))
        .arg("./etc/passwd")
        .output()
        .unwrap();
    let passwd = String::from_utf8(passwd.stdout).unwrap();
    assert!(
        passwd.lines().any(|l| l.split(':').nth(2) == Some(uid)),
        "{passwd}"
    );
    assert_eq!(entry("tmp").1, "drwxrwxrwt");
    let _ = std::fs::remove_dir_all(&dir);
}

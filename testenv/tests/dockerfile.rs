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

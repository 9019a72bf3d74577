//! Helpers the operator's process tests share.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `kubectl` against the test control plane with `stdin`, and returns its output; fails
/// the test when it fails.
pub fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&[u8]>) -> String {
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs (on PATH under scripts/testenv.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or_default())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

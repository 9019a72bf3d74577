//! Herald's binaries (and servers) as child processes of a test: a free loopback port to give
//! them, a guard that kills the child however the test ends, a clean environment to start them
//! in, and waits for their port.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A loopback port free right now: bound, read and released. Another process may take it before
/// the child binds it; on a test machine that is rare enough.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// A command for `bin` with an empty environment but `PATH` (so that a developer's own
/// `MONGO_URI`, `REDIS_URL` or `HERALD_*` never leak into a test), `RUST_LOG=warn`, stdout
/// discarded and stderr shared with the test (its log shows up when the test fails).
pub fn command(bin: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

/// Another package's binary next to `bin` (e.g. `herald-delivery` next to `herald`). Cargo
/// hands a test only its own package's binaries; `cargo test --workspace` builds the others
/// first, so a missing one names the command that builds it.
pub fn sibling(bin: impl AsRef<Path>, name: &str, package: &str) -> PathBuf {
    let path = bin
        .as_ref()
        .with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p {package}` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// A child process killed (SIGKILL) and reaped when dropped, so that a failing test leaves
/// nothing running.
#[derive(Debug)]
pub struct Child(pub std::process::Child);

impl Child {
    /// Spawns `cmd`, panicking with `what` if it cannot start.
    pub fn spawn(cmd: &mut Command, what: &str) -> Self {
        Self(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("{what} does not start: {e}")),
        )
    }

    /// SIGKILL: no chance to clean up. Waits until the process is gone.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, the way an orchestrator stops a process.
    pub fn terminate(&self) {
        signal(&self.0, "TERM");
    }

    /// SIGTERM, then the exit status, or a panic if the process is still running after
    /// `within`.
    pub fn terminate_and_wait(&mut self, within: Duration) -> std::process::ExitStatus {
        self.terminate();
        self.wait_exit(within)
    }

    /// The exit status once the process exits, or a panic after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        crate::wait::wait_until_blocking("the process to exit", within, || {
            self.0.try_wait().expect("try_wait")
        })
    }
}

impl std::ops::Deref for Child {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Child {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `SIG<name>` to `child` with kill(1) (std can only SIGKILL).
pub fn signal(child: &std::process::Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -{name} {}", child.id());
}

/// Waits until something accepts connections on the loopback `port`, or panics after `within`.
pub async fn wait_port(port: u16, within: Duration) {
    crate::wait::wait_until(&format!("port {port} to open"), within, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(drop)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held by the tests that take ephemeral ports: the kernel may hand the port `free_port` just
    /// released to the other test's `bind(0)` before this one binds it again.
    static EPHEMERAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[test]
    fn free_ports_can_be_bound() {
        let _ports = EPHEMERAL.blocking_lock();
        let port = free_port();
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    }

    #[test]
    fn a_dropped_child_is_killed() {
        let mut cmd = command("sleep");
        cmd.arg("30");
        let child = Child::spawn(&mut cmd, "sleep");
        let pid = child.id();
        drop(child);
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        assert!(!alive, "pid {pid} still runs");
    }

    #[test]
    fn terminate_and_wait_returns_the_exit_status() {
        let mut cmd = command("sleep");
        cmd.arg("30");
        let mut child = Child::spawn(&mut cmd, "sleep");
        let status = child.terminate_and_wait(Duration::from_secs(10));
        assert!(!status.success(), "{status:?}");
    }

    #[tokio::test]
    async fn wait_port_returns_once_the_port_listens() {
        let _ports = EPHEMERAL.lock().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        wait_port(port, Duration::from_secs(5)).await;
    }
}

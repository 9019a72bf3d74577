//! How a Herald process stops: on SIGTERM (Kubernetes, `docker stop`) or Ctrl-C, its
//! [`Supervisor`] cancels one token that every task watches, then gives the tasks a bounded
//! time to finish what they hold.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Resolves when the process is asked to stop.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The long-running tasks of one process and the token that stops them.
///
/// The drain time is one deadline for the whole process, counted from the stop request: the
/// tasks drain at once, and what is still running at the deadline is abandoned (aborted), so
/// the process exits. A task that fails before the stop stops the others the same way, and its
/// error is what [`Supervisor::wait`] returns.
pub struct Supervisor {
    token: CancellationToken,
    drain: Duration,
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, &'static str>,
}

impl Supervisor {
    /// `drain`: how long the tasks may take, from the stop request, before they are abandoned.
    pub fn new(drain: Duration) -> Self {
        Self {
            token: CancellationToken::new(),
            drain,
            tasks: JoinSet::new(),
            names: HashMap::new(),
        }
    }

    /// The token every task watches; cancelling it asks the process to stop.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Runs `task` until it ends; it is expected to end soon after the token is cancelled.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Cancels the token when the process gets SIGTERM or Ctrl-C, logging `why` (what the
    /// process finishes before it exits).
    pub fn stop_on_signal(&self, why: &'static str) {
        let token = self.token.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = signal() => {
                    tracing::info!("shutting down: {why}");
                    token.cancel();
                }
                _ = token.cancelled() => {}
            }
        });
    }

    /// Cancels the token and waits for the tasks (see [`Supervisor::wait`]).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.token.cancel();
        self.wait().await
    }

    /// Waits until every task has ended, or until the token is cancelled (by a signal, a caller
    /// or a failed task) and then the drain time is over. Returns the first task's error.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut failure = None;
        while !self.token.is_cancelled() {
            tokio::select! {
                _ = self.token.cancelled() => {}
                joined = self.tasks.join_next_with_id() => match joined {
                    None => return Ok(()),
                    Some(joined) => {
                        if let Err(e) = self.outcome(joined) {
                            failure = Some(e);
                            self.token.cancel();
                        }
                    }
                },
            }
        }
        let deadline = Instant::now() + self.drain;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(None) => break,
                Ok(Some(joined)) => {
                    if let Err(e) = self.outcome(joined) {
                        failure.get_or_insert(e);
                    }
                }
                Err(_) => {
                    for name in self.names.values() {
                        tracing::warn!(
                            task = name,
                            "still running at the shutdown deadline; exiting anyway"
                        );
                    }
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    fn outcome(
        &mut self,
        joined: Result<(Id, anyhow::Result<()>), tokio::task::JoinError>,
    ) -> anyhow::Result<()> {
        let (id, result) = match joined {
            Ok((id, result)) => (id, result),
            Err(e) => {
                let id = e.id();
                (id, Err(anyhow::Error::new(e)))
            }
        };
        let name = self.names.remove(&id).unwrap_or("task");
        result.map_err(|e| e.context(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_that_stop_on_the_token_end_the_wait_cleanly() {
        let mut s = Supervisor::new(Duration::from_secs(5));
        for name in ["a", "b"] {
            let token = s.token();
            s.spawn(name, async move {
                token.cancelled().await;
                Ok(())
            });
        }
        s.stop().await.unwrap();
    }

    #[tokio::test]
    async fn a_task_still_running_at_the_deadline_is_abandoned() {
        let drain = Duration::from_millis(200);
        let mut s = Supervisor::new(drain);
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        s.spawn("stuck", async move {
            let _dropped = dropped_tx;
            std::future::pending().await
        });
        let started = Instant::now();
        s.stop().await.unwrap();
        let took = started.elapsed();
        assert!(took >= drain && took < Duration::from_secs(5), "{took:?}");
        // Aborted: the task's state is gone, so the channel's sender is dropped.
        assert!(dropped_rx.await.is_err());
    }

    #[tokio::test]
    async fn a_failed_task_stops_the_others_and_is_the_error() {
        let mut s = Supervisor::new(Duration::from_secs(5));
        let token = s.token();
        s.spawn("waiter", async move {
            token.cancelled().await;
            Ok(())
        });
        s.spawn("failing", async { anyhow::bail!("broke") });
        let err = s.wait().await.unwrap_err();
        assert_eq!(format!("{err:#}"), "failing: broke");
    }

    #[tokio::test]
    async fn the_wait_ends_when_every_task_has_ended_on_its_own() {
        let mut s = Supervisor::new(Duration::from_secs(5));
        s.spawn("short", async { Ok(()) });
        let token = s.token();
        s.wait().await.unwrap();
        assert!(!token.is_cancelled());
    }
}

//! Waiting for a state instead of sleeping for a guessed time: poll a condition at a short
//! interval until it holds, and fail at the deadline with a message saying what never happened.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is checked again by [`wait_until`] and [`wait_for`].
pub const POLL: Duration = Duration::from_millis(25);
/// How often [`wait_until_blocking`] checks again: its checks usually run a command.
pub const POLL_BLOCKING: Duration = Duration::from_millis(100);

/// Polls `check` until it returns `Some`, and returns that value; panics after `within` with
/// "timed out after … waiting for {what}". The check runs at least once, even when `within` is
/// zero.
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_until_every(what, within, POLL, check).await
}

/// [`wait_until`] checking every `every`, for checks that cost a server something.
pub async fn wait_until_every<T, F, Fut>(
    what: &str,
    within: Duration,
    every: Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// [`wait_until`] for a check that says why it is not done yet: panics after `within` with
/// "timed out after … waiting for {what}: {the last Err}".
pub async fn wait_ok<T, E, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) => assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}: {e}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_until`] for a condition that is only true or false.
pub async fn wait_for<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_until(what, within, || {
        let f = check();
        async move { f.await.then_some(()) }
    })
    .await
}

/// [`wait_until`] outside an async runtime (the thread sleeps between checks).
pub fn wait_until_blocking<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(POLL_BLOCKING);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn returns_the_value_once_the_condition_holds() {
        let n = AtomicUsize::new(0);
        let v = wait_until("three checks", Duration::from_secs(5), || async {
            (n.fetch_add(1, Ordering::Relaxed) >= 2).then_some("done")
        })
        .await;
        assert_eq!((v, n.load(Ordering::Relaxed)), ("done", 3));
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 100ms waiting for the impossible")]
    async fn fails_at_the_deadline_naming_what_it_waited_for() {
        wait_for("the impossible", Duration::from_millis(100), || async {
            false
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for a yes: still no")]
    async fn wait_ok_fails_with_the_last_reason() {
        wait_ok::<(), _, _, _>("a yes", Duration::from_millis(50), || async {
            Err("still no")
        })
        .await;
    }

    #[test]
    #[should_panic(expected = "waiting for nothing to change")]
    fn the_blocking_wait_fails_at_the_deadline_too() {
        wait_until_blocking::<()>("nothing to change", Duration::from_millis(50), || None);
    }
}

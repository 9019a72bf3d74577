//! Endpoint health: deciding, from the outcome of each attempt, when Herald stops delivering to
//! an endpoint. A `410 Gone` answer disables the subscription at once; so does a failure that
//! arrives `disable_after` past the first failure of an unbroken run of failures
//! (`failing_since`). The engine asks [`Health::refusal`] before an attempt and
//! [`Health::observe`] after one; both answer with the reason a delivery ends as `Failure`.
//!
//! Invariants:
//! - `failing_since` is written only on a transition (first failure after a success, first
//!   success after a failure) and at most once per transition per process: the last transition
//!   this process wrote is kept in `marks`, decided under one lock, so a burst of concurrent
//!   attempts (or a cache that still shows the old record) causes one write, not one per attempt.
//! - A mark is trusted only while the stored record is not newer than it (`updated_at`): a PUT
//!   or PATCH (which re-enables and clears `failing_since`) wins over what this process wrote.
//!
//! Writes are field-level (`SubscriptionStore::record_health`): they change only the health
//! fields, so they never revert a rotation or an edit made meanwhile, and a client's replace
//! never writes back health it read before.
//!
//! Failure points: a write that fails drops its mark, so the next attempt decides again; two
//! processes may each write the same transition once (harmless: the same fields); disabling
//! counts one event because the store disables only a record that is not disabled yet, in one
//! step.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_core::backend::Intake;
use herald_core::cache::SubscriptionCache;
use herald_core::error::chain;
use herald_core::ids::SubscriptionId;
use herald_core::model::Subscription;
use herald_core::ssrf::TargetGuard;
use herald_core::subscriptions::Subscriptions;
use parking_lot::Mutex;

use crate::attempt::AttemptResult;

/// Past this many subscriptions the marks start over (they only save writes).
const MAX_MARKS: usize = 100_000;

/// What this process last wrote for one subscription.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Mark {
    written_at: DateTime<Utc>,
    state: Known,
}

/// A subscription's health as far as the decision needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Known {
    Healthy,
    FailingSince(DateTime<Utc>),
    Disabled,
}

/// The write an attempt's outcome calls for.
#[derive(Debug, Clone, PartialEq)]
enum Decision {
    Nothing,
    StartFailing(DateTime<Utc>),
    ClearFailing,
    Disable { reason: String, kind: &'static str },
}

/// The pure rule: from what is known and one attempt's outcome, what to write.
fn decide(
    known: Known,
    success: bool,
    http_status: Option<u16>,
    now: DateTime<Utc>,
    disable_after: Duration,
) -> Decision {
    if known == Known::Disabled {
        return Decision::Nothing;
    }
    if http_status == Some(410) {
        return Decision::Disable {
            reason: "endpoint answered 410 Gone".into(),
            kind: "gone",
        };
    }
    match (known, success) {
        (Known::FailingSince(_), true) => Decision::ClearFailing,
        (_, true) => Decision::Nothing,
        (Known::FailingSince(since), false) => {
            let deadline = chrono::Duration::from_std(disable_after)
                .ok()
                .and_then(|d| since.checked_add_signed(d));
            match deadline {
                Some(at) if !disable_after.is_zero() && now >= at => Decision::Disable {
                    reason: format!(
                        "every attempt failed for {} (since {})",
                        herald_core::retry::format_duration(disable_after),
                        since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                    kind: "failing",
                },
                _ => Decision::Nothing,
            }
        }
        (_, false) => Decision::StartFailing(now),
    }
}

fn disabled_message(reason: &str) -> String {
    format!("subscription disabled: {reason}")
}

pub struct Health {
    subscriptions: Subscriptions,
    disable_after: Duration,
    marks: Mutex<HashMap<SubscriptionId, Mark>>,
}

impl Health {
    pub fn new(
        cache: Arc<SubscriptionCache>,
        queue: Arc<dyn Intake>,
        guard: TargetGuard,
        disable_after: Duration,
    ) -> Self {
        Self {
            subscriptions: Subscriptions::new(cache, queue, guard),
            disable_after,
            marks: Mutex::new(HashMap::new()),
        }
    }

    /// Why a delivery to `sub` must end as `Failure` without an attempt, if it must.
    pub fn refusal(&self, sub: &Subscription) -> Option<String> {
        sub.is_disabled()
            .then(|| disabled_message(sub.disabled_reason.as_deref().unwrap_or("disabled")))
    }

    /// Takes in one attempt's outcome; returns the error the delivery ends with as `Failure`
    /// when the subscription is (now) disabled.
    pub async fn observe(&self, sub: &Subscription, r: &AttemptResult) -> Option<String> {
        let now = Utc::now();
        let decision = {
            let mut marks = self.marks.lock();
            let known = match marks.get(&sub.id) {
                Some(m) if m.written_at >= sub.updated_at => m.state,
                _ => known_from(sub),
            };
            let d = decide(known, r.success, r.http_status, now, self.disable_after);
            let next = match &d {
                Decision::Nothing => None,
                Decision::StartFailing(at) => Some(Known::FailingSince(*at)),
                Decision::ClearFailing => Some(Known::Healthy),
                Decision::Disable { .. } => Some(Known::Disabled),
            };
            if let Some(state) = next {
                if marks.len() >= MAX_MARKS {
                    marks.clear();
                }
                marks.insert(
                    sub.id.clone(),
                    Mark {
                        written_at: now,
                        state,
                    },
                );
            }
            if known == Known::Disabled && !r.success {
                // Disabled while this attempt was in flight: it ends here too.
                return Some(disabled_message(
                    sub.disabled_reason.as_deref().unwrap_or("disabled"),
                ));
            }
            d
        };
        let written = match &decision {
            Decision::Nothing => return None,
            Decision::StartFailing(at) => {
                self.subscriptions
                    .set_failing_since(&sub.id, Some(*at))
                    .await
            }
            Decision::ClearFailing => self.subscriptions.set_failing_since(&sub.id, None).await,
            Decision::Disable { reason, kind } => self
                .subscriptions
                .disable(&sub.id, reason, kind)
                .await
                .map(|_| ()),
        };
        if let Err(e) = written {
            tracing::warn!(error = %chain(&e), subscription = %sub.id, "recording endpoint health failed");
            self.marks.lock().remove(&sub.id);
        }
        match decision {
            Decision::Disable { reason, .. } => Some(format!(
                "{}; {}",
                r.error.as_deref().unwrap_or("failed"),
                disabled_message(&reason)
            )),
            _ => None,
        }
    }
}

fn known_from(sub: &Subscription) -> Known {
    match (sub.disabled_at, sub.failing_since) {
        (Some(_), _) => Known::Disabled,
        (None, Some(since)) => Known::FailingSince(since),
        (None, None) => Known::Healthy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn gone_disables_at_once() {
        for known in [Known::Healthy, Known::FailingSince(at(0))] {
            let d = decide(known, false, Some(410), at(1), DAY);
            assert!(
                matches!(d, Decision::Disable { kind: "gone", ref reason } if reason.contains("410 Gone")),
                "{d:?}"
            );
        }
        assert_eq!(
            decide(Known::Disabled, false, Some(410), at(1), DAY),
            Decision::Nothing
        );
    }

    #[test]
    fn failing_since_starts_and_clears_only_on_transitions() {
        assert_eq!(
            decide(Known::Healthy, false, Some(500), at(5), DAY),
            Decision::StartFailing(at(5))
        );
        assert_eq!(
            decide(Known::FailingSince(at(0)), false, None, at(5), DAY),
            Decision::Nothing
        );
        assert_eq!(
            decide(Known::FailingSince(at(0)), true, Some(200), at(5), DAY),
            Decision::ClearFailing
        );
        assert_eq!(
            decide(Known::Healthy, true, Some(200), at(5), DAY),
            Decision::Nothing
        );
    }

    #[test]
    fn a_failure_after_the_period_disables() {
        let day = DAY.as_secs() as i64;
        assert_eq!(
            decide(
                Known::FailingSince(at(0)),
                false,
                Some(500),
                at(day - 1),
                DAY
            ),
            Decision::Nothing
        );
        let d = decide(Known::FailingSince(at(0)), false, Some(500), at(day), DAY);
        assert!(
            matches!(
                d,
                Decision::Disable {
                    kind: "failing",
                    ..
                }
            ),
            "{d:?}"
        );
        // Zero turns the period rule off.
        assert_eq!(
            decide(
                Known::FailingSince(at(0)),
                false,
                Some(500),
                at(10 * day),
                Duration::ZERO
            ),
            Decision::Nothing
        );
    }

    #[tokio::test]
    async fn a_panic_while_the_marks_are_locked_leaves_health_usable() {
        use herald_backends::sqlite::{Sqlite, Sync};

        let dir = tempfile::tempdir().unwrap();
        let backend = Sqlite::open(&dir.path().join("h.db"), Sync::Normal)
            .unwrap()
            .backend();
        let sub = herald_core::testkit::subscription("sub_h");
        backend.subscriptions.insert(&sub).await.unwrap();
        let cache = Arc::new(SubscriptionCache::for_backend(&backend));
        let health = Arc::new(Health::new(
            cache,
            backend.intake.clone(),
            TargetGuard::default(),
            DAY,
        ));
        let held = health.clone();
        let panicked = std::thread::spawn(move || {
            let _marks = held.marks.lock();
            panic!("a panic while the marks are held");
        })
        .join();
        assert!(panicked.is_err());

        let failed = AttemptResult {
            success: false,
            http_status: Some(500),
            error: Some("HTTP 500".into()),
            retry_after: None,
            duration: Duration::ZERO,
            response_excerpt: None,
        };
        assert_eq!(health.observe(&sub, &failed).await, None);
        let stored = backend
            .subscriptions
            .get(&"sub_h".into())
            .await
            .unwrap()
            .unwrap();
        assert!(stored.failing_since.is_some(), "the failure was recorded");
    }
}

//! The retry policy: when a failed attempt is tried again, and when a delivery gives up.
//!
//! The default schedule is 10 s, 30 s, 1 min, 5 min, 15 min: six attempts in all. A subscription
//! may carry its own schedule and attempt count. A `Retry-After` on 429/503 is honoured when it
//! asks for longer than the schedule. Every delay is bounded, so a due time can always be
//! computed (a schedule of `300000y` would overflow the clock and wedge a delivery).
//!
//! [`decide`] is the whole rule for what follows an attempt; the delivery engine only carries
//! it out.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};

use crate::model::{Disposition, Outcome};

pub const DEFAULT_SCHEDULE: &str = "10s,30s,1m,5m,15m";
/// A `Retry-After` never postpones a retry beyond this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// The longest delay a schedule may hold.
pub const MAX_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Parses a comma-separated list of delays such as `10s,30s,1m,5m,15m` or `100ms,200ms`; each
/// at most [`MAX_DELAY`].
pub fn parse_schedule(s: &str) -> Result<Vec<Duration>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let d = parse_duration(part)?;
        if d > MAX_DELAY {
            return Err(format!("delay {part:?} is longer than 7 days"));
        }
        out.push(d);
    }
    if out.len() > 49 {
        return Err("at most 49 delays".into());
    }
    Ok(out)
}

/// Parses one duration such as `250ms`, `10s`, `1m`, `72h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Formats a delay the way the schedule is written (`10s`, `1m`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delays between attempts: `schedule[0]` after the first attempt, and so on.
    pub schedule: Vec<Duration>,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::from_schedule(parse_schedule(DEFAULT_SCHEDULE).expect("default schedule parses"))
    }
}

impl RetryPolicy {
    /// A schedule of n delays allows n + 1 attempts. Delays beyond [`MAX_DELAY`] (stored before
    /// the bound existed) count as `MAX_DELAY`.
    pub fn from_schedule(mut schedule: Vec<Duration>) -> Self {
        for d in &mut schedule {
            *d = (*d).min(MAX_DELAY);
        }
        let max_attempts = schedule.len() as u32 + 1;
        Self {
            schedule,
            max_attempts,
        }
    }

    /// The policy for one subscription: its own schedule and attempt count where it has them.
    pub fn with_overrides(
        &self,
        schedule: Option<Vec<Duration>>,
        max_attempts: Option<u32>,
    ) -> Self {
        let mut p = match schedule {
            Some(s) => Self::from_schedule(s),
            None => self.clone(),
        };
        if let Some(n) = max_attempts {
            p.max_attempts = n.max(1);
        }
        p
    }

    /// After attempt number `attempt` (1-based) failed: the delay before the next one, or `None`
    /// when that was the last. Past the end of the schedule the last delay repeats.
    pub fn next_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let idx = (attempt.max(1) - 1) as usize;
        let base = self
            .schedule
            .get(idx)
            .or(self.schedule.last())
            .copied()
            .unwrap_or(Duration::ZERO);
        Some(match retry_after {
            Some(ra) => base.max(ra.min(MAX_RETRY_AFTER)),
            None => base,
        })
    }
}

/// What came of one attempt, as far as the decision after it needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttemptOutcome {
    /// The endpoint answered 2xx.
    pub success: bool,
    /// The endpoint's status, when it answered at all (none for a timeout or a connection
    /// error).
    pub http_status: Option<u16>,
    /// The response's `Retry-After`, when it had a readable one.
    pub retry_after: Option<Duration>,
    /// The subscription is disabled (by this attempt, or while it was in flight).
    pub endpoint_disabled: bool,
}

/// Statuses whose `Retry-After` is honoured: the endpoint says when it can take more.
pub fn honours_retry_after(status: u16) -> bool {
    status == 429 || status == 503
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Delivered,
    /// Try again at this time.
    RetryAt(DateTime<Utc>),
    /// The delivery ends as a failure.
    GiveUp(GiveUp),
}

/// Why a failed delivery is not tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The endpoint answered `410 Gone`.
    Gone,
    /// The subscription is disabled.
    Disabled,
    /// That was the last attempt the policy allows.
    Exhausted,
    /// That was the last attempt a manual replay allows.
    ReplayEnded,
    /// The retry would be due past what the clock can represent.
    Unschedulable,
}

impl Decision {
    /// The attempt record's outcome.
    pub fn outcome(&self) -> Outcome {
        match self {
            Decision::Delivered => Outcome::Success,
            Decision::RetryAt(_) => Outcome::FailedAttempt,
            Decision::GiveUp(_) => Outcome::Failure,
        }
    }

    /// How the claimed delivery is settled.
    pub fn disposition(&self) -> Disposition {
        match self {
            Decision::Delivered => Disposition::Delivered,
            Decision::RetryAt(at) => Disposition::RetryAt(*at),
            Decision::GiveUp(_) => Disposition::Failed,
        }
    }
}

/// The rule after attempt number `attempt_no` (1-based) of a delivery ended at `ended`:
/// delivered on success; otherwise given up when the endpoint is gone or disabled, when the
/// policy has no attempt left, or when a manual replay's last attempt (`final_attempt_no`) was
/// made; otherwise retried after the policy's delay, which counts from the end of the attempt
/// (so a timed-out attempt is not retried at once) and which a `Retry-After` on 429/503 only
/// lengthens.
pub fn decide(
    policy: &RetryPolicy,
    attempt_no: u32,
    final_attempt_no: Option<u32>,
    outcome: &AttemptOutcome,
    ended: DateTime<Utc>,
) -> Decision {
    if outcome.success {
        return Decision::Delivered;
    }
    if outcome.http_status == Some(410) {
        return Decision::GiveUp(GiveUp::Gone);
    }
    if outcome.endpoint_disabled {
        return Decision::GiveUp(GiveUp::Disabled);
    }
    let retry_after = outcome
        .retry_after
        .filter(|_| outcome.http_status.is_some_and(honours_retry_after));
    let Some(delay) = policy.next_delay(attempt_no, retry_after) else {
        return Decision::GiveUp(GiveUp::Exhausted);
    };
    if final_attempt_no.is_some_and(|last| attempt_no >= last) {
        return Decision::GiveUp(GiveUp::ReplayEnded);
    }
    match due_after(ended, delay) {
        Some(at) => Decision::RetryAt(at),
        None => Decision::GiveUp(GiveUp::Unschedulable),
    }
}

/// The time `delay` after `from`, or `None` if the clock cannot represent it.
pub fn due_after(from: DateTime<Utc>, delay: Duration) -> Option<DateTime<Utc>> {
    from.checked_add_signed(chrono::TimeDelta::from_std(delay).ok()?)
}

/// Reads a `Retry-After` value: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

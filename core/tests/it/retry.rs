//! The retry policy as a client of `herald_core::retry` sees it: the schedule, the limits, and
//! the decision after each attempt, branch by branch.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use herald_core::model::{Disposition, Outcome};
use herald_core::retry::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn default_schedule_is_the_documented_one() {
    let p = RetryPolicy::default();
    assert_eq!(p.max_attempts, 6);
    let delays: Vec<_> = (1..=6).map(|a| p.next_delay(a, None)).collect();
    assert_eq!(
        delays,
        vec![
            Some(secs(10)),
            Some(secs(30)),
            Some(secs(60)),
            Some(secs(300)),
            Some(secs(900)),
            None
        ]
    );
}

#[test]
fn overrides_and_repeat_of_last_delay() {
    let p = RetryPolicy::default().with_overrides(None, Some(8));
    assert_eq!(p.next_delay(6, None), Some(secs(900)));
    assert_eq!(p.next_delay(7, None), Some(secs(900)));
    assert_eq!(p.next_delay(8, None), None);
    let p = RetryPolicy::default().with_overrides(Some(vec![Duration::from_millis(5)]), None);
    assert_eq!(p.max_attempts, 2);
    assert_eq!(p.next_delay(1, None), Some(Duration::from_millis(5)));
    assert_eq!(p.next_delay(2, None), None);
    let single = RetryPolicy::default().with_overrides(None, Some(1));
    assert_eq!(single.next_delay(1, None), None);
}

#[test]
fn retry_after_only_lengthens() {
    let p = RetryPolicy::default();
    assert_eq!(p.next_delay(1, Some(secs(120))), Some(secs(120)));
    assert_eq!(p.next_delay(1, Some(secs(2))), Some(secs(10)));
    assert_eq!(
        p.next_delay(1, Some(secs(10_000_000))),
        Some(MAX_RETRY_AFTER)
    );
}

#[test]
fn parses_schedules_and_retry_after() {
    assert_eq!(
        parse_schedule("100ms, 1s,2m,1h").unwrap(),
        vec![Duration::from_millis(100), secs(1), secs(120), secs(3600)]
    );
    assert!(parse_schedule("10s,x").is_err());
    assert_eq!(parse_schedule("").unwrap(), vec![]);
    let now = SystemTime::UNIX_EPOCH + secs(1_000_000);
    assert_eq!(parse_retry_after("7", now), Some(secs(7)));
    let later = httpdate::fmt_http_date(now + secs(90));
    assert_eq!(parse_retry_after(&later, now), Some(secs(90)));
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(format_duration(secs(60)), "1m");
    assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    assert_eq!(format_duration(secs(10)), "10s");
}

#[test]
fn huge_delays_are_refused_and_due_times_never_overflow() {
    assert!(parse_schedule("300000y").is_err());
    assert!(parse_schedule("10s,8d").is_err());
    assert_eq!(parse_schedule("7d").unwrap(), vec![MAX_DELAY]);
    let p = RetryPolicy::from_schedule(vec![Duration::from_secs(u64::MAX / 4)]);
    assert_eq!(
        p.next_delay(1, None),
        Some(MAX_DELAY),
        "stored values clamp"
    );
    assert_eq!(due_after(DateTime::<Utc>::MAX_UTC, secs(1)), None);
    assert_eq!(due_after(Utc::now(), Duration::MAX), None);
}

fn at(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
}

fn failed(http_status: Option<u16>, retry_after: Option<Duration>) -> AttemptOutcome {
    AttemptOutcome {
        success: false,
        http_status,
        retry_after,
        endpoint_disabled: false,
    }
}

/// Three attempts, 10 s then 30 s apart.
fn three() -> RetryPolicy {
    RetryPolicy::from_schedule(vec![secs(10), secs(30)])
}

fn retry_in(s: i64) -> Decision {
    Decision::RetryAt(at(s))
}

#[test]
fn a_success_is_delivered_whatever_else_holds() {
    let ok = AttemptOutcome {
        success: true,
        http_status: Some(200),
        ..Default::default()
    };
    let p = three();
    assert_eq!(decide(&p, 1, None, &ok, at(0)), Decision::Delivered);
    assert_eq!(
        decide(&p, 3, Some(1), &ok, at(0)),
        Decision::Delivered,
        "last attempt"
    );
    let disabled = AttemptOutcome {
        endpoint_disabled: true,
        ..ok
    };
    assert_eq!(decide(&p, 1, None, &disabled, at(0)), Decision::Delivered);
}

#[test]
fn gone_and_disabled_endpoints_are_given_up_with_attempts_left() {
    let p = three();
    for ra in [None, Some(secs(5))] {
        assert_eq!(
            decide(&p, 1, None, &failed(Some(410), ra), at(0)),
            Decision::GiveUp(GiveUp::Gone)
        );
    }
    let disabled = AttemptOutcome {
        endpoint_disabled: true,
        ..failed(Some(500), None)
    };
    assert_eq!(
        decide(&p, 1, None, &disabled, at(0)),
        Decision::GiveUp(GiveUp::Disabled)
    );
    let timed_out = AttemptOutcome {
        endpoint_disabled: true,
        ..failed(None, None)
    };
    assert_eq!(
        decide(&p, 1, None, &timed_out, at(0)),
        Decision::GiveUp(GiveUp::Disabled)
    );
    assert_eq!(
        decide(&p, 1, None, &failed(Some(409), None), at(0)),
        retry_in(10),
        "only 410 means gone"
    );
}

#[test]
fn failures_retry_after_the_schedule_until_the_last_attempt() {
    let p = three();
    for status in [Some(500), Some(404), Some(302), None] {
        let f = failed(status, None);
        assert_eq!(decide(&p, 1, None, &f, at(0)), retry_in(10), "{status:?}");
        assert_eq!(decide(&p, 2, None, &f, at(7)), retry_in(37), "{status:?}");
        assert_eq!(
            decide(&p, 3, None, &f, at(0)),
            Decision::GiveUp(GiveUp::Exhausted),
            "{status:?}"
        );
        assert_eq!(
            decide(&p, 4, None, &f, at(0)),
            Decision::GiveUp(GiveUp::Exhausted)
        );
    }
    let once = RetryPolicy::default().with_overrides(None, Some(1));
    assert_eq!(
        decide(&once, 1, None, &failed(Some(500), None), at(0)),
        Decision::GiveUp(GiveUp::Exhausted)
    );
}

#[test]
fn a_replay_ends_at_its_final_attempt() {
    let p = RetryPolicy::default();
    let f = failed(Some(500), None);
    assert_eq!(decide(&p, 2, Some(3), &f, at(0)), retry_in(30));
    assert_eq!(
        decide(&p, 3, Some(3), &f, at(0)),
        Decision::GiveUp(GiveUp::ReplayEnded)
    );
    assert_eq!(
        decide(&p, 4, Some(3), &f, at(0)),
        Decision::GiveUp(GiveUp::ReplayEnded)
    );
    // The policy's own end still applies to a replay.
    assert_eq!(
        decide(&three(), 3, Some(9), &f, at(0)),
        Decision::GiveUp(GiveUp::Exhausted)
    );
}

#[test]
fn retry_after_lengthens_only_on_429_and_503() {
    let p = three();
    for status in [429, 503] {
        let longer = failed(Some(status), Some(secs(120)));
        assert_eq!(decide(&p, 1, None, &longer, at(0)), retry_in(120));
        let shorter = failed(Some(status), Some(secs(3)));
        assert_eq!(decide(&p, 1, None, &shorter, at(0)), retry_in(10));
        let huge = failed(Some(status), Some(secs(10_000_000)));
        assert_eq!(
            decide(&p, 1, None, &huge, at(0)),
            retry_in(MAX_RETRY_AFTER.as_secs() as i64)
        );
        // No attempt left: a Retry-After does not add one.
        assert_eq!(
            decide(&p, 3, None, &longer, at(0)),
            Decision::GiveUp(GiveUp::Exhausted)
        );
    }
    for status in [Some(500), Some(502), Some(504), Some(428), Some(430), None] {
        let f = failed(status, Some(secs(120)));
        assert_eq!(decide(&p, 1, None, &f, at(0)), retry_in(10), "{status:?}");
    }
    assert!(honours_retry_after(429) && honours_retry_after(503));
    for s in [200, 410, 428, 430, 500, 502, 504] {
        assert!(!honours_retry_after(s), "{s}");
    }
}

#[test]
fn a_retry_past_the_clock_gives_up() {
    let f = failed(Some(500), None);
    assert_eq!(
        decide(&three(), 1, None, &f, DateTime::<Utc>::MAX_UTC),
        Decision::GiveUp(GiveUp::Unschedulable)
    );
    let zero = RetryPolicy::from_schedule(vec![Duration::ZERO]);
    assert_eq!(
        decide(&zero, 1, None, &f, DateTime::<Utc>::MAX_UTC),
        Decision::RetryAt(DateTime::<Utc>::MAX_UTC)
    );
}

#[test]
fn decisions_map_to_outcomes_and_dispositions() {
    assert_eq!(Decision::Delivered.outcome(), Outcome::Success);
    assert_eq!(Decision::Delivered.disposition(), Disposition::Delivered);
    assert_eq!(retry_in(5).outcome(), Outcome::FailedAttempt);
    assert_eq!(retry_in(5).disposition(), Disposition::RetryAt(at(5)));
    for why in [
        GiveUp::Gone,
        GiveUp::Disabled,
        GiveUp::Exhausted,
        GiveUp::ReplayEnded,
        GiveUp::Unschedulable,
    ] {
        assert_eq!(Decision::GiveUp(why).outcome(), Outcome::Failure);
        assert_eq!(Decision::GiveUp(why).disposition(), Disposition::Failed);
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    const MAX_MS: u64 = 7 * 24 * 3600 * 1000;

    fn delay() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (0..MAX_MS).prop_map(Duration::from_millis),
            (0..=MAX_MS / 1000).prop_map(Duration::from_secs),
            (0..=MAX_MS / 3_600_000).prop_map(|h| Duration::from_secs(h * 3600)),
        ]
    }

    proptest! {
        #[test]
        fn format_then_parse_is_the_identity(d in delay()) {
            let text = format_duration(d);
            prop_assert_eq!(parse_duration(&text).unwrap(), d, "{}", text);
        }

        #[test]
        fn schedules_round_trip(ds in proptest::collection::vec(delay(), 0..=49)) {
            let text = ds.iter().map(|d| format_duration(*d)).collect::<Vec<_>>().join(", ");
            prop_assert_eq!(parse_schedule(&text).unwrap(), ds);
        }

        #[test]
        fn delays_beyond_the_bound_are_refused(ms in MAX_MS + 1..u64::MAX / 2) {
            let text = format!("10s,{ms}ms");
            prop_assert!(parse_schedule(&text).is_err());
        }

        #[test]
        fn too_many_delays_are_refused(n in 50usize..80) {
            prop_assert!(parse_schedule(&vec!["1s"; n].join(",")).is_err());
        }

        #[test]
        fn next_delay_is_bounded_and_ends_after_max_attempts(
            schedule in proptest::collection::vec(0u64..u64::MAX / 4, 0..10),
            max in 1u32..=50,
            attempt in 0u32..60,
            retry_after in proptest::option::of(0u64..u64::MAX / 4),
        ) {
            let p = RetryPolicy::from_schedule(
                schedule.into_iter().map(Duration::from_millis).collect(),
            )
            .with_overrides(None, Some(max));
            let d = p.next_delay(attempt, retry_after.map(Duration::from_millis));
            prop_assert_eq!(d.is_none(), attempt >= max);
            if let Some(d) = d {
                prop_assert!(d <= MAX_DELAY.max(MAX_RETRY_AFTER));
                prop_assert!(due_after(Utc::now(), d).is_some());
            }
        }

        #[test]
        fn a_failure_is_retried_between_the_schedule_and_the_retry_after_bound(
            schedule in proptest::collection::vec(delay(), 1..10),
            attempt_no in 1u32..12,
            status in proptest::option::of(100u16..600),
            retry_after in proptest::option::of(0u64..u64::MAX / 4),
        ) {
            let p = RetryPolicy::from_schedule(schedule);
            let ended = at(0);
            let outcome = AttemptOutcome {
                success: false,
                http_status: status.filter(|s| *s != 410),
                retry_after: retry_after.map(Duration::from_millis),
                endpoint_disabled: false,
            };
            let d = decide(&p, attempt_no, None, &outcome, ended);
            match p.next_delay(attempt_no, None) {
                None => prop_assert_eq!(d, Decision::GiveUp(GiveUp::Exhausted)),
                Some(base) => {
                    let Decision::RetryAt(when) = d else {
                        return Err(TestCaseError::fail(format!("{d:?}")));
                    };
                    let waited = (when - ended).to_std().unwrap();
                    prop_assert!(waited >= base);
                    prop_assert!(waited <= base.max(MAX_RETRY_AFTER));
                    if !outcome.http_status.is_some_and(honours_retry_after) {
                        prop_assert_eq!(waited, base);
                    }
                }
            }
        }

        #[test]
        fn next_delay_grows_with_attempts_on_a_growing_schedule(
            mut schedule in proptest::collection::vec(delay(), 1..10),
            extra in 0u32..5,
        ) {
            schedule.sort();
            let p = RetryPolicy::from_schedule(schedule.clone())
                .with_overrides(None, Some(schedule.len() as u32 + 1 + extra));
            let delays: Vec<_> = (1..p.max_attempts).map(|a| p.next_delay(a, None).unwrap()).collect();
            prop_assert!(delays.windows(2).all(|w| w[0] <= w[1]));
            prop_assert_eq!(delays[0], schedule[0]);
            prop_assert_eq!(p.next_delay(p.max_attempts, None), None);
        }
    }
}

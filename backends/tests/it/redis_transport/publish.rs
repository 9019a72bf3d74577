//! Publishing and the intake: payloads kept exactly, idempotency keys, batched concurrent
//! publishes, and the intake records a lease fans out.

use super::*;

#[tokio::test]
async fn payloads_and_types_are_kept_exactly() {
    let url = redis_or_skip!();
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    let payload: Vec<u8> = (0..=255u8).chain(*b"{\"a\": \"\xc3\xa9\"}").collect();
    let mut pb = publish("msg_bin", &["sub_a"], &payload);
    pb.event.event_type = None;
    t.publish(pb.clone()).await.unwrap();
    let got = lease(t, &claim_request("w", 1, LEASE)).await;
    assert_eq!(&got.jobs[0].payload[..], &payload[..]);
    assert_eq!(got.jobs[0].event_type, None);
    let ev = &got.unarchived[0].event;
    assert_eq!(
        ev.received_at.timestamp_millis(),
        pb.event.received_at.timestamp_millis()
    );
}

#[tokio::test]
async fn idempotency_keys_answer_like_the_first_publish() {
    let url = redis_or_skip!();
    let (p, prefix) = parts(&url).await;
    let t = &p.transport;
    let key = IdempotencyKey::new("sub_a", "k:1", None, b"{}");
    let mut pb = publish("msg_i1", &["sub_a", "sub_b"], b"{}");
    pb.idempotency = Some(key.clone());
    assert_eq!(t.publish(pb).await.unwrap(), PublishOutcome::Accepted);
    let mut again = publish("msg_i2", &["sub_a"], b"{}");
    again.idempotency = Some(key.clone());
    assert_eq!(
        t.publish(again).await.unwrap(),
        PublishOutcome::Duplicate {
            webhook_id: "msg_i1".into(),
            matched: 2
        }
    );
    assert!(t.live("msg_i2").await.unwrap().is_none());
    let mut other = publish("msg_i3", &["sub_a"], b"{\"a\":1}");
    other.idempotency = Some(IdempotencyKey::new("sub_a", "k:1", None, b"{\"a\":1}"));
    assert_eq!(
        t.publish(other).await.unwrap(),
        PublishOutcome::KeyReused {
            webhook_id: "msg_i1".into()
        }
    );
    assert!(t.live("msg_i3").await.unwrap().is_none());
    // Another scope is another key; no subscriptions stores the key alone.
    let mut none = publish("msg_i4", &[], b"{}");
    none.idempotency = Some(IdempotencyKey::new("events", "k:1", None, b"{}"));
    assert_eq!(
        t.publish(none.clone()).await.unwrap(),
        PublishOutcome::Accepted
    );
    assert!(t.live("msg_i4").await.unwrap().is_none());
    let mut none2 = publish("msg_i5", &[], b"{}");
    none2.idempotency = none.idempotency.clone();
    assert_eq!(
        t.publish(none2).await.unwrap(),
        PublishOutcome::Duplicate {
            webhook_id: "msg_i4".into(),
            matched: 0
        }
    );
    let mut conn = raw(&url).await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}:idem:sub_a:k:1"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 23 * 3600 * 1000 && ttl <= 24 * 3600 * 1000,
        "24 h expiry: {ttl}"
    );
    // A webhook id that is taken is refused without recording its key.
    let mut dup = publish("msg_i1", &["sub_c"], b"{}");
    dup.idempotency = Some(IdempotencyKey::new("sub_c", "k-2", None, b"{}"));
    assert!(matches!(t.publish(dup).await, Err(StoreError::Conflict(_))));
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("{prefix}:idem:sub_c:k-2"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0);
}

/// Concurrent publishes share script runs (see `publisher`): each event still gets the answer
/// it would get alone, in the order the batch applies them.
#[tokio::test]
async fn concurrent_publishes_are_batched_and_each_answered_on_its_own() {
    let url = redis_or_skip!();
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    let shared_key = IdempotencyKey::new("sub_a", "shared", None, b"{}");
    let mut calls = Vec::new();
    for i in 0..300 {
        let mut pb = publish(&format!("msg_c{i:03}"), &["sub_a"], b"{}");
        match i % 10 {
            // Many copies of one request under one key: one is stored.
            0 => pb.idempotency = Some(shared_key.clone()),
            // The same key with another body: refused, or stored if it came first.
            5 => {
                pb.event.payload = b"{\"other\":1}".to_vec().into();
                pb.idempotency = Some(IdempotencyKey::new(
                    "sub_a",
                    "shared",
                    None,
                    b"{\"other\":1}",
                ));
            }
            _ => {}
        }
        calls.push(pb);
    }
    // A webhook id used twice without a key: both go to the intake unchecked, and the fan-out
    // stores the first and drops the second (see `publisher`).
    calls.push(publish("msg_c001", &["sub_a"], b"{}"));
    let outcomes = futures::future::join_all(calls.iter().map(|pb| t.publish(pb.clone()))).await;
    let mut accepted = Vec::new();
    let mut keyed_first = None;
    let mut conflicts = 0;
    for (pb, out) in calls.iter().zip(&outcomes) {
        match out {
            Ok(PublishOutcome::Accepted) => {
                if pb.idempotency.is_some() {
                    assert!(keyed_first.is_none(), "two events stored under one key");
                    keyed_first = Some(pb.event.webhook_id.clone());
                }
                accepted.push(pb.event.webhook_id.clone());
            }
            Ok(PublishOutcome::Duplicate { .. } | PublishOutcome::KeyReused { .. }) => {
                assert!(
                    pb.idempotency.is_some(),
                    "{out:?} for an event without a key"
                )
            }
            Err(StoreError::Conflict(_)) => conflicts += 1,
            Err(e) => panic!("publish failed: {e}"),
        }
    }
    let first = keyed_first.expect("one event under the shared key is stored");
    let first_is_other = calls
        .iter()
        .any(|c| c.event.webhook_id == first && &c.event.payload[..] != b"{}");
    for (pb, out) in calls.iter().zip(&outcomes) {
        let Some(k) = &pb.idempotency else { continue };
        if pb.event.webhook_id == first {
            continue;
        }
        let same_request = k.fingerprint
            == if first_is_other {
                IdempotencyKey::new("sub_a", "shared", None, b"{\"other\":1}").fingerprint
            } else {
                shared_key.fingerprint
            };
        let want = if same_request {
            PublishOutcome::Duplicate {
                webhook_id: first.clone(),
                matched: 1,
            }
        } else {
            PublishOutcome::KeyReused {
                webhook_id: first.clone(),
            }
        };
        assert_eq!(out.as_ref().unwrap(), &want);
    }
    assert_eq!(
        conflicts, 0,
        "ids are not checked on the way into the intake"
    );
    // 241 without a key (msg_c001 twice) and one under the shared key.
    assert_eq!(accepted.len(), 242);
    let mut leased = lease_all(t).await;
    leased.sort();
    accepted.sort();
    accepted.dedup();
    assert_eq!(
        leased, accepted,
        "exactly the accepted events are queued, a reused id once"
    );
}

async fn intake_len(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> usize {
    redis::cmd("LLEN")
        .arg(format!("{prefix}:intake"))
        .query_async(conn)
        .await
        .unwrap()
}

/// The hot path: an event without an idempotency key is one intake record until a step fans it
/// out; its payload may hold the record's separator and any byte, its type is kept, and a
/// subscription listed twice gets one delivery.
#[tokio::test]
async fn an_event_without_a_key_waits_in_the_intake_until_a_lease_fans_it_out() {
    let url = redis_or_skip!();
    let (p, prefix) = parts(&url).await;
    let t = &p.transport;
    let mut conn = raw(&url).await;
    let payload: &[u8] = b"{\"a\":\"line\nbreak\"}\n\x00\xff\n\n";
    let mut untyped = publish("msg_plain", &["sub_b"], b"[]");
    untyped.event.event_type = None;
    for p in [
        publish("msg_in", &["sub_a", "sub_b", "sub_a"], payload),
        untyped,
    ] {
        assert_eq!(t.publish(p).await.unwrap(), PublishOutcome::Accepted);
    }
    assert_eq!(intake_len(&mut conn, &prefix).await, 2);
    let stored: i64 = redis::cmd("EXISTS")
        .arg(format!("{prefix}:e:msg_in"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, 0, "nothing but the record before the fan-out");

    let mut jobs = lease(t, &claim_request("w", 10, LEASE)).await.jobs;
    jobs.sort_by(|a, b| {
        (&a.webhook_id, &a.subscription_id).cmp(&(&b.webhook_id, &b.subscription_id))
    });
    let got: Vec<_> = jobs
        .iter()
        .map(|j| {
            (
                j.webhook_id.as_str(),
                j.subscription_id.as_str(),
                j.event_type.as_deref(),
                &j.payload[..],
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("msg_in", "sub_a", Some("order.created"), payload),
            ("msg_in", "sub_b", Some("order.created"), payload),
            ("msg_plain", "sub_b", None, &b"[]"[..]),
        ]
    );
    assert_eq!(intake_len(&mut conn, &prefix).await, 0);
}

/// Read your own write: right after its publish, with no worker running, an event behind more
/// records than one script run fans out reads as queued; an unknown id reads as absent once
/// the intake is empty.
#[tokio::test]
async fn a_read_right_after_publish_finds_the_event_behind_a_long_intake() {
    let url = redis_or_skip!();
    let (p, prefix) = parts(&url).await;
    let t = &p.transport;
    let mut conn = raw(&url).await;
    let ids: Vec<String> = (0..3000).map(|i| format!("msg_r{i:04}")).collect();
    for chunk in ids.chunks(500) {
        let outs = futures::future::join_all(
            chunk
                .iter()
                .map(|id| t.publish(publish(id, &["sub_a"], b"{}"))),
        )
        .await;
        assert!(outs
            .iter()
            .all(|o| matches!(o, Ok(PublishOutcome::Accepted))));
    }
    assert_eq!(intake_len(&mut conn, &prefix).await, 3000);
    let last = t.live("msg_r2999").await.unwrap().expect("the last event");
    assert_eq!(last.subscription_ids, ["sub_a"]);
    assert_eq!(last.open.len(), 1);
    assert_eq!(last.open[0].status, DeliveryState::Queued);
    assert!(t.live("msg_unknown").await.unwrap().is_none());
    assert_eq!(intake_len(&mut conn, &prefix).await, 0);
    assert_eq!(
        counts(t.stats().await.unwrap()),
        QueueStats {
            ready: 3000,
            scheduled: 0,
            in_flight: 0,
            ..Default::default()
        }
    );
}

/// An intake record whose webhook id a live event holds is dropped when fanned out: the live
/// event is left as it was.
#[tokio::test]
async fn an_intake_record_whose_webhook_id_is_taken_is_dropped_at_fan_out() {
    let url = redis_or_skip!();
    let (p, prefix) = parts(&url).await;
    let t = &p.transport;
    let mut first = publish("msg_taken", &["sub_a"], b"\"first\"");
    first.idempotency = Some(IdempotencyKey::new("sub_a", "k", None, b"\"first\""));
    assert_eq!(t.publish(first).await.unwrap(), PublishOutcome::Accepted);
    let again = publish("msg_taken", &["sub_a", "sub_b"], b"\"second\"");
    assert_eq!(t.publish(again).await.unwrap(), PublishOutcome::Accepted);
    let jobs = lease(t, &claim_request("w", 10, LEASE)).await.jobs;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(
        (jobs[0].subscription_id.as_str(), &jobs[0].payload[..]),
        ("sub_a", &b"\"first\""[..])
    );
    assert_eq!(intake_len(&mut raw(&url).await, &prefix).await, 0);
}

/// A record Herald did not write (no layout, bad subscription ids) is dropped when fanned out,
/// and the records around it are stored as usual.
#[tokio::test]
async fn a_malformed_intake_record_is_dropped_and_the_others_are_kept() {
    let url = redis_or_skip!();
    let (p, prefix) = parts(&url).await;
    let t = &p.transport;
    let mut conn = raw(&url).await;
    t.publish(publish("msg_before", &["sub_a"], b"{}"))
        .await
        .unwrap();
    let _: i64 = redis::cmd("RPUSH")
        .arg(format!("{prefix}:intake"))
        .arg("no newline at all")
        .arg("msg_x\n0\n1\nnot json\n{}")
        .arg("msg_y\n0\n1\n[1]\n{}")
        .arg("msg_z\n0\n1\n[]\n{}")
        .arg("\n0\n1\n[\"sub_a\"]\n{}")
        .query_async(&mut conn)
        .await
        .unwrap();
    t.publish(publish("msg_after", &["sub_a"], b"{}"))
        .await
        .unwrap();
    assert_eq!(intake_len(&mut conn, &prefix).await, 7);
    let leased = lease_all(t).await;
    assert_eq!(leased, ["msg_after", "msg_before"]);
    assert_eq!(intake_len(&mut conn, &prefix).await, 0);
}

/// A fan-out step stops after about a mebibyte of records, so that a backlog of large events
/// does not make one script copy hundreds of megabytes; reads and leases still reach them all.
#[tokio::test]
async fn a_fan_out_step_takes_about_a_mebibyte_of_large_records() {
    let url = redis_or_skip!();
    let (p, prefix) = parts(&url).await;
    let t = &p.transport;
    let mut conn = raw(&url).await;
    let big = vec![b'x'; 200 * 1024];
    let ids: Vec<String> = (0..40).map(|i| format!("msg_big{i:02}")).collect();
    for id in &ids {
        t.publish(publish(id, &["sub_a"], &big)).await.unwrap();
    }
    assert_eq!(intake_len(&mut conn, &prefix).await, 40);
    t.stats().await.unwrap();
    let left = intake_len(&mut conn, &prefix).await;
    // Chunks of 8 records until 1 MiB is reached: 8 records of 200 KiB (1.6 MiB) here.
    assert_eq!(left, 32, "one step took one chunk of large records");
    let last = t
        .live("msg_big39")
        .await
        .unwrap()
        .expect("found behind them");
    assert_eq!(last.open.len(), 1);
    let mut leased = lease_all(t).await;
    leased.sort();
    assert_eq!(leased, ids);
}

/// A lease fans out one batch of the intake; while records are left it answers "due now", so
/// that its caller comes back for them at once instead of waiting for a wake-up.
#[tokio::test]
async fn a_lease_that_leaves_records_in_the_intake_asks_to_be_called_again_at_once() {
    let url = redis_or_skip!();
    let (p, prefix) = parts(&url).await;
    let t = &p.transport;
    let mut conn = raw(&url).await;
    let ids: Vec<String> = (0..300).map(|i| format!("msg_l{i:03}")).collect();
    futures::future::join_all(
        ids.iter()
            .map(|id| t.publish(publish(id, &["sub_a"], b"{}"))),
    )
    .await;
    assert_eq!(intake_len(&mut conn, &prefix).await, 300);
    let before = Utc::now();
    let got = lease(t, &claim_request("w", 1, LEASE)).await;
    assert_eq!(got.jobs.len(), 1);
    assert_eq!(got.jobs[0].webhook_id, "msg_l000", "oldest first");
    let left = intake_len(&mut conn, &prefix).await;
    assert!(left > 0 && left < 300, "one batch fanned out: {left} left");
    let due = got
        .next_due
        .expect("due now while the intake holds records");
    assert!(
        (due - before).num_milliseconds().abs() < 1000,
        "{due} vs {before}"
    );
    // Leasing on drains the intake, oldest first, and every event is leased once.
    let mut leased = vec![got.jobs[0].webhook_id.to_string()];
    while intake_len(&mut conn, &prefix).await > 0 {
        let jobs = lease(t, &claim_request("w", 1, LEASE)).await.jobs;
        leased.extend(jobs.into_iter().map(|j| j.webhook_id.into_string()));
    }
    leased.extend(lease_all(t).await);
    leased.sort();
    assert_eq!(leased, ids);
}

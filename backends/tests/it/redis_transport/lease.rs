//! Leasing: per-subscription caps and turns, the byte budget, entries whose event is gone.

use super::*;

#[tokio::test]
async fn claims_honour_caps_and_serve_subscriptions_in_turn() {
    let url = redis_or_skip!();
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    for i in 0..10 {
        t.publish(publish(&format!("msg_a{i:02}"), &["sub_a"], b"{}"))
            .await
            .unwrap();
    }
    for i in 0..3 {
        t.publish(publish(&format!("msg_b{i}"), &["sub_b"], b"{}"))
            .await
            .unwrap();
    }
    t.publish(publish("msg_c", &["sub_c"], b"{}"))
        .await
        .unwrap();
    let mut req = claim_request("w", 100, LEASE);
    req.per_subscription = 2;
    req.in_flight = HashMap::from([("sub_a".into(), 1), ("sub_c".into(), 2)]);
    let got = lease(t, &req).await;
    let count = |s: &str| got.jobs.iter().filter(|j| j.subscription_id == s).count();
    assert_eq!((count("sub_a"), count("sub_b"), count("sub_c")), (1, 2, 0));
    assert_eq!(
        got.jobs
            .iter()
            .find(|j| j.subscription_id == "sub_a")
            .unwrap()
            .webhook_id,
        "msg_a00",
        "earliest first"
    );
    let mut req = claim_request("w", 100, LEASE);
    req.per_subscription = 1;
    req.in_flight = ["sub_a", "sub_b", "sub_c"]
        .iter()
        .map(|s| ((*s).into(), 1))
        .collect();
    let none = lease(t, &req).await;
    assert!(none.jobs.is_empty());
    assert!(
        none.next_due.is_none_or(|d| d > Utc::now()),
        "capped subscriptions are no work to wake up for"
    );

    // Claims of three with a backlog in front: every subscription is served within two.
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    for i in 0..50 {
        t.publish(publish(&format!("msg_big{i}"), &["sub_a_big"], b"{}"))
            .await
            .unwrap();
    }
    for s in ["sub_b_small", "sub_c_small"] {
        t.publish(publish(&format!("msg_{s}"), &[s], b"{}"))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..2 {
        let mut req = claim_request("w", 2, LEASE);
        req.per_subscription = 16;
        seen.extend(lease(t, &req).await.jobs);
    }
    for s in ["sub_a_big", "sub_b_small", "sub_c_small"] {
        assert!(
            seen.iter().any(|j| j.subscription_id == s),
            "{s} served: {seen:?}"
        );
    }
}

#[tokio::test]
async fn the_byte_budget_counts_distinct_payloads_and_jobs_share_one_buffer() {
    let url = redis_or_skip!();
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    let kib = vec![b'y'; 1000];
    for i in 0..3 {
        t.publish(publish(&format!("msg_k{i}"), &[&format!("sub_{i}")], &kib))
            .await
            .unwrap();
    }
    let mut req = claim_request("w", 10, LEASE);
    req.byte_budget = 2500;
    let got = lease(t, &req).await;
    assert_eq!(got.jobs.len(), 2, "2000 bytes fit");
    assert_eq!(got.next_due, None, "a spent budget names no due time");
    req.byte_budget = 0;
    assert_eq!(
        lease(t, &req).await.jobs.len(),
        1,
        "one job even past the budget"
    );

    let subs: Vec<String> = (0..20).map(|i| format!("sub_f{i:02}")).collect();
    let refs: Vec<&str> = subs.iter().map(String::as_str).collect();
    let payload = vec![b'x'; 64 * 1024];
    t.publish(publish("msg_fan", &refs, &payload))
        .await
        .unwrap();
    req.byte_budget = 64 * 1024;
    let got = lease(t, &req).await;
    assert_eq!(got.jobs.len(), 10);
    let ptr = got.jobs[0].payload.as_ptr();
    assert!(got
        .jobs
        .iter()
        .all(|j| j.payload == payload[..] && j.payload.as_ptr() == ptr));
    assert_eq!(got.unarchived.len(), 1, "each event listed once");
    let ev = &got.unarchived[0];
    assert_eq!(ev.event.webhook_id, "msg_fan");
    assert_eq!(ev.subscription_ids, subs);
    assert_eq!(ev.event.payload, payload[..]);
    assert_eq!(ev.event.event_type.as_deref(), Some("order.created"));
    t.archived(&["msg_fan".to_string(), "msg_gone".to_string()])
        .await
        .unwrap();
    let rest = lease(t, &claim_request("w", 100, LEASE)).await;
    assert_eq!(rest.jobs.len(), 10);
    assert!(
        rest.unarchived.is_empty(),
        "archived events are not listed again"
    );
    assert!(t.live("msg_gone").await.unwrap().is_none(), "not recreated");
}

#[tokio::test]
async fn a_queue_entry_without_its_event_is_dropped() {
    let url = redis_or_skip!();
    let (p, prefix) = parts(&url).await;
    let t = &p.transport;
    t.publish(publish("msg_lost", &["sub_a"], b"{}"))
        .await
        .unwrap();
    t.publish(publish("msg_kept", &["sub_a"], b"{}"))
        .await
        .unwrap();
    // A read fans the intake out: the events and their queue entries exist from here on.
    assert!(t.live("msg_kept").await.unwrap().is_some());
    let mut conn = raw(&url).await;
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{prefix}:e:msg_lost"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let got = lease(t, &claim_request("w", 10, LEASE)).await;
    assert_eq!(got.jobs.len(), 1);
    assert_eq!(got.jobs[0].webhook_id, "msg_kept");
    assert_eq!(
        counts(t.stats().await.unwrap()),
        QueueStats {
            ready: 0,
            scheduled: 0,
            in_flight: 1,
            ..Default::default()
        }
    );
}

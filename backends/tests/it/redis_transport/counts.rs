//! Counts: expedite and the queue stats, kept by the scripts rather than read off the queues.

use super::*;

#[tokio::test]
async fn expedite_makes_waiting_deliveries_due_and_stats_count_them() {
    let url = redis_or_skip!();
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    for i in 0..3 {
        t.publish(publish(&format!("msg_e{i}"), &["sub_a", "sub_b"], b"{}"))
            .await
            .unwrap();
    }
    assert_eq!(
        counts(t.stats().await.unwrap()),
        QueueStats {
            ready: 6,
            scheduled: 0,
            in_flight: 0,
            ..Default::default()
        }
    );
    let mut req = claim_request("w", 10, LEASE);
    req.in_flight = HashMap::from([("sub_b".into(), 1000)]);
    let jobs = lease(t, &req).await.jobs;
    assert_eq!(jobs.len(), 3);
    assert_eq!(
        counts(t.stats().await.unwrap()),
        QueueStats {
            ready: 3,
            scheduled: 0,
            in_flight: 3,
            ..Default::default()
        }
    );
    let later = Utc::now() + chrono::Duration::hours(1);
    let retries: Vec<_> = jobs
        .iter()
        .map(|j| settle(j, Disposition::RetryAt(later)))
        .collect();
    t.settle(&retries).await.unwrap();
    assert_eq!(
        counts(t.stats().await.unwrap()),
        QueueStats {
            ready: 3,
            scheduled: 3,
            in_flight: 0,
            ..Default::default()
        }
    );
    let got = lease(t, &req).await;
    assert!(got.jobs.is_empty());
    let next = got.next_due.expect("the retries' time");
    assert!((next - later).num_milliseconds().abs() < 5);
    t.expedite("sub_a").await.unwrap();
    t.expedite("sub_unknown").await.unwrap();
    assert_eq!(
        counts(t.stats().await.unwrap()),
        QueueStats {
            ready: 6,
            scheduled: 0,
            in_flight: 0,
            ..Default::default()
        }
    );
    let got = lease(t, &req).await.jobs;
    assert_eq!(got.len(), 3);
    assert!(got
        .iter()
        .all(|j| j.subscription_id == "sub_a" && j.attempt_no == 2));
}

/// Runs one Redis command behind the scripts' back.
async fn cmd(conn: &mut redis::aio::MultiplexedConnection, name: &str, args: &[&str]) {
    let _: redis::Value = redis::cmd(name).arg(args).query_async(conn).await.unwrap();
}

#[tokio::test]
async fn stats_read_counts_kept_by_the_scripts_not_the_queues() {
    let url = redis_or_skip!();
    let (p, prefix) = parts(&url).await;
    let t = &p.transport;
    let mut conn = raw(&url).await;
    for i in 0..4 {
        t.publish(publish(&format!("msg_k{i}"), &["sub_a", "sub_b"], b"{}"))
            .await
            .unwrap();
    }
    let jobs = lease(t, &claim_request("w", 3, LEASE)).await.jobs;
    assert_eq!(jobs.len(), 3);
    let later = Utc::now() + chrono::Duration::hours(1);
    t.settle(&[
        settle(&jobs[0], Disposition::RetryAt(later)),
        settle(&jobs[1], Disposition::Defer(later)),
        settle(&jobs[2], Disposition::Delivered),
    ])
    .await
    .unwrap();
    let expect = QueueStats {
        ready: 5,
        scheduled: 2,
        in_flight: 0,
        ..Default::default()
    };
    assert_eq!(counts(t.stats().await.unwrap()), expect);

    // A queue entry written behind the scripts' back is not seen: stats reads the counts, it
    // does not walk the queues (one read per scrape, whatever the number of subscriptions).
    cmd(
        &mut conn,
        "ZADD",
        &[&format!("{prefix}:q:sub_c"), "0", "msg_behind"],
    )
    .await;
    cmd(&mut conn, "ZADD", &[&format!("{prefix}:due"), "0", "sub_c"]).await;
    assert_eq!(counts(t.stats().await.unwrap()), expect);
    // The periodic recount (and the first run after an upgrade) takes the counts from the
    // queues again.
    cmd(&mut conn, "DEL", &[&format!("{prefix}:counted")]).await;
    assert_eq!(
        counts(t.stats().await.unwrap()),
        QueueStats { ready: 6, ..expect }
    );
    // An installation that ran before the counts existed: everything is counted from the
    // queues once, the deliveries waiting for later included, and kept from then on.
    for key in ["queued", "later", "counted", "counts-rebuilt"] {
        cmd(&mut conn, "DEL", &[&format!("{prefix}:{key}")]).await;
    }
    assert_eq!(
        counts(t.stats().await.unwrap()),
        QueueStats { ready: 6, ..expect }
    );
    t.expedite("sub_a").await.unwrap();
    t.expedite("sub_b").await.unwrap();
    assert_eq!(
        counts(t.stats().await.unwrap()),
        QueueStats {
            ready: 8,
            scheduled: 0,
            ..expect
        }
    );
    let all = lease(t, &claim_request("w", 100, LEASE)).await.jobs;
    assert_eq!(
        all.len(),
        7,
        "the entry written behind the scripts is dropped"
    );
    assert_eq!(
        counts(t.stats().await.unwrap()),
        QueueStats {
            ready: 0,
            scheduled: 0,
            in_flight: 7,
            ..Default::default()
        }
    );
}

//! Worker liveness: reaping silent workers, the redelivered mark, heartbeats renewing leases.

use super::*;

#[tokio::test]
async fn reaping_frees_only_silent_workers_and_marks_redelivery() {
    let url = redis_or_skip!();
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    t.publish(publish("msg_dead", &["sub_a", "sub_b"], b"{}"))
        .await
        .unwrap();
    let dead = lease(t, &claim_request("w_dead", 10, LEASE)).await.jobs;
    assert_eq!(dead.len(), 2);
    t.publish(publish("msg_live", &["sub_c"], b"{}"))
        .await
        .unwrap();
    let live = lease(t, &claim_request("w_live", 10, LEASE)).await.jobs;
    assert_eq!(live.len(), 1);
    // Time is the point: both workers go silent for longer than the reap limit below.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.heartbeat("w_live", LEASE).await.unwrap(), 1);
    assert_eq!(t.reap(Duration::from_millis(200)).await.unwrap(), 2);
    assert_eq!(t.reap(Duration::from_millis(200)).await.unwrap(), 0);
    assert_eq!(
        t.heartbeat("w_dead", LEASE).await.unwrap(),
        0,
        "a reaped worker holds nothing"
    );
    let rec = t.live("msg_dead").await.unwrap().unwrap();
    assert!(rec.open.iter().all(|d| d.status == DeliveryState::Queued));
    let again = lease(t, &claim_request("w_live", 10, LEASE)).await;
    assert_eq!(again.jobs.len(), 2);
    assert_eq!(again.redelivered, vec![0, 1]);
    assert!(again
        .jobs
        .iter()
        .all(|j| j.webhook_id == "msg_dead" && j.attempt_no == 1));
    let late: Vec<_> = dead
        .iter()
        .map(|j| settle(j, Disposition::Delivered))
        .collect();
    assert_eq!(t.settle(&late).await.unwrap(), 2);
    assert_eq!(
        t.settle(&[settle(&live[0], Disposition::Delivered)])
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn the_redelivered_mark_survives_a_deferral_and_ends_with_a_retry() {
    let url = redis_or_skip!();
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    t.publish(publish("msg_m", &["sub_a"], b"{}"))
        .await
        .unwrap();
    lease(t, &claim_request("w_gone", 1, LEASE)).await;
    // Time is the point: the worker is silent for longer than the reap limit below.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(t.reap(Duration::from_millis(20)).await.unwrap(), 1);
    let got = lease(t, &claim_request("w", 1, LEASE)).await;
    assert_eq!(got.redelivered, vec![0]);
    let mut back = settle(&got.jobs[0], Disposition::Defer(Utc::now()));
    back.attempts_made = 0;
    assert_eq!(t.settle(&[back]).await.unwrap(), 0);
    let got = lease(t, &claim_request("w", 1, LEASE)).await;
    assert_eq!(got.redelivered, vec![0], "a hand-back is no attempt");
    let mut retry = settle(&got.jobs[0], Disposition::RetryAt(Utc::now()));
    retry.last_error = Some("HTTP 503".into());
    t.settle(&[retry]).await.unwrap();
    let got = lease(t, &claim_request("w", 1, LEASE)).await;
    assert!(got.redelivered.is_empty());
    assert_eq!(got.jobs[0].attempt_no, 2);
    // A deferral without an error keeps the recorded one.
    let mut back = settle(
        &got.jobs[0],
        Disposition::Defer(Utc::now() + chrono::Duration::hours(1)),
    );
    back.attempts_made = 1;
    t.settle(&[back]).await.unwrap();
    let d = &t.live("msg_m").await.unwrap().unwrap().open[0];
    assert_eq!(d.last_error.as_deref(), Some("HTTP 503"));
    assert_eq!(d.attempts_made, 1);
    assert_eq!(d.status, DeliveryState::Delivering);
    assert!(d.next_attempt_at.unwrap() > Utc::now() + chrono::Duration::minutes(59));
}

#[tokio::test]
async fn heartbeats_renew_and_unrenewed_leases_end() {
    let url = redis_or_skip!();
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    t.publish(publish("msg_hb", &["sub_a", "sub_b"], b"{}"))
        .await
        .unwrap();
    let short = Duration::from_millis(300);
    let held = lease(t, &claim_request("w_live", 10, short)).await.jobs;
    for _ in 0..4 {
        // Time is the point: each heartbeat comes after half the lease.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(t.heartbeat("w_live", short).await.unwrap(), 2);
    }
    assert_eq!(t.reap(Duration::from_secs(10)).await.unwrap(), 0);
    assert!(lease(t, &claim_request("w_other", 10, LEASE))
        .await
        .jobs
        .is_empty());
    t.settle(&[settle(&held[0], Disposition::Delivered)])
        .await
        .unwrap();
    assert_eq!(t.heartbeat("w_live", short).await.unwrap(), 1);
    // Time is the point: the unrenewed 300 ms lease runs out.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let taken = lease(t, &claim_request("w_other", 10, LEASE)).await;
    assert_eq!(taken.jobs.len(), 1);
    assert_eq!(taken.jobs[0].subscription_id, held[1].subscription_id);
    assert_eq!(taken.redelivered, vec![0]);
}

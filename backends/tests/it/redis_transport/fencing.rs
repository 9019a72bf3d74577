//! Settling under fencing: stale settlements after a lease ran out, replays of settled
//! deliveries.

use super::*;

#[tokio::test]
async fn stale_settlements_after_a_lease_ran_out_change_nothing() {
    let url = redis_or_skip!();
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    t.publish(publish("msg_f", &["sub_a"], b"{}"))
        .await
        .unwrap();
    let old = lease(t, &claim_request("w1", 1, Duration::from_millis(150)))
        .await
        .jobs
        .remove(0);
    assert!(lease(t, &claim_request("w2", 1, LEASE))
        .await
        .jobs
        .is_empty());
    // Time is the point: the 150 ms lease runs out.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let got = lease(t, &claim_request("w2", 1, LEASE)).await;
    assert_eq!(got.jobs.len(), 1);
    assert_eq!(
        got.redelivered,
        vec![0],
        "a lease that ran out is redelivered"
    );
    let new = &got.jobs[0];
    assert_ne!(old.receipt, new.receipt);
    assert_eq!(new.attempt_no, 1);
    assert_eq!(
        t.held(&[
            old.receipt.to_string(),
            new.receipt.to_string(),
            "junk".into()
        ])
        .await
        .unwrap(),
        vec![false, true, false]
    );

    assert_eq!(
        t.settle(&[settle(&old, Disposition::Delivered)])
            .await
            .unwrap(),
        1
    );
    let live = t.live("msg_f").await.unwrap().expect("still open");
    assert_eq!(live.open[0].status, DeliveryState::Delivering);
    assert_eq!(t.stats().await.unwrap().in_flight, 1);
    let retry = settle(&old, Disposition::RetryAt(Utc::now()));
    assert_eq!(t.settle(&[retry]).await.unwrap(), 1, "a stale retry too");
    assert_eq!(t.stats().await.unwrap().ready, 0);

    assert_eq!(
        t.settle(&[settle(new, Disposition::Delivered)])
            .await
            .unwrap(),
        0
    );
    assert!(
        t.live("msg_f").await.unwrap().is_none(),
        "gone with its last delivery"
    );
    assert_eq!(
        t.settle(&[settle(new, Disposition::Failed)]).await.unwrap(),
        1
    );
    assert_eq!(t.stats().await.unwrap(), QueueStats::default());
}

#[tokio::test]
async fn requeue_replays_settled_deliveries_once() {
    let url = redis_or_skip!();
    let (p, _) = parts(&url).await;
    let t = &p.transport;
    let pb = publish("msg_r", &["sub_a", "sub_b"], b"{\"r\":1}");
    t.publish(pb.clone()).await.unwrap();
    let jobs = lease(t, &claim_request("w", 10, LEASE)).await.jobs;
    let mut failed: Vec<_> = jobs
        .iter()
        .map(|j| settle(j, Disposition::Failed))
        .collect();
    failed[0].attempts_made = 3;
    t.settle(&failed).await.unwrap();
    assert!(t.live("msg_r").await.unwrap().is_none());

    let event = ArchivedEvent {
        event: pb.event.clone(),
        subscription_ids: pb.subscription_ids.iter().map(|s| s.to_string()).collect(),
        payload_omitted: None,
    };
    let status = |sid: &str, attempts| DeliveryStatus {
        subscription_id: sid.into(),
        status: DeliveryState::Failed,
        attempts_made: attempts,
        next_attempt_at: None,
        last_error: Some("HTTP 500".into()),
    };
    let sa = jobs[0].subscription_id.clone();
    assert_eq!(t.requeue(&event, &[status(&sa, 3)]).await.unwrap(), 1);
    assert_eq!(
        t.requeue(&event, &[status(&sa, 3)]).await.unwrap(),
        0,
        "open already"
    );
    let live = t.live("msg_r").await.unwrap().unwrap();
    assert_eq!(live.subscription_ids, pb.subscription_ids);
    assert_eq!(live.open.len(), 1);
    assert_eq!(live.open[0].last_error.as_deref(), Some("HTTP 500"));
    let got = lease(t, &claim_request("w", 10, LEASE)).await;
    assert_eq!(got.jobs.len(), 1);
    let job = &got.jobs[0];
    assert_eq!((job.attempt_no, job.final_attempt_no), (4, Some(4)));
    assert_eq!(&job.payload[..], b"{\"r\":1}");
    assert!(got.redelivered.is_empty(), "a replay is no redelivery");
    assert!(got.unarchived.is_empty(), "the event came from the archive");
    // A second delivery of the same event joins the recreated event.
    let sb = jobs[1].subscription_id.clone();
    assert_eq!(t.requeue(&event, &[status(&sb, 1)]).await.unwrap(), 1);
    t.settle(&[settle(job, Disposition::Delivered)])
        .await
        .unwrap();
    assert_eq!(t.live("msg_r").await.unwrap().unwrap().open.len(), 1);
}

//! Pub/sub: wake-ups of waiting workers and the subscription change feed. These tests hold
//! [`super::PUBSUB`].

use super::*;

#[tokio::test]
async fn a_batch_to_a_subscription_waiting_for_a_retry_is_due_at_once_and_wakes_once() {
    let url = redis_or_skip!();
    let _serial = PUBSUB.lock().await;
    let (parts, prefix) = parts(&url).await;
    let t = parts.transport;
    // sub_a's only delivery waits for a retry an hour away: its score in the due set is then.
    t.publish(publish("msg_later", &["sub_a"], b"{}"))
        .await
        .unwrap();
    let job = lease(&t, &claim_request("wrk_b", 10, LEASE)).await.jobs;
    assert_eq!(job.len(), 1);
    let later = Disposition::RetryAt(Utc::now() + chrono::Duration::hours(1));
    t.settle(&[settle(&job[0], later)]).await.unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe(format!("{prefix}:wake")).await.unwrap();
    let mut messages = sub.into_on_message();

    // Published together, so that they share script runs: the first lowers the score, the
    // others find it lowered.
    let ids: Vec<String> = (0..50).map(|i| format!("msg_now{i:02}")).collect();
    let outcomes = futures::future::join_all(
        ids.iter()
            .map(|id| t.publish(publish(id, &["sub_a"], b"{}"))),
    )
    .await;
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, Ok(PublishOutcome::Accepted))));
    let mut leased = lease_all(&t).await;
    leased.sort();
    assert_eq!(
        leased, ids,
        "every new delivery is due now, the retry is not"
    );
    // A window for the wake-ups to arrive, long enough that one too many would show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut wakes = 0;
    while let Some(Some(_)) =
        futures::FutureExt::now_or_never(futures::StreamExt::next(&mut messages))
    {
        wakes += 1;
    }
    assert_eq!(
        wakes, 1,
        "one wake: only the first run made sub_a due sooner"
    );
}

#[tokio::test]
async fn wait_for_work_wakes_on_a_publish_from_another_process() {
    let url = redis_or_skip!();
    let _serial = PUBSUB.lock().await;
    let prefix = herald_testenv::unique_name("herald-test");
    let waiter = open(&url, &prefix).await.unwrap();
    let publisher = open(&url, &prefix).await.unwrap();
    // Let the listener subscribe, and use up the wake-up it gives when it does.
    tokio::time::sleep(Duration::from_millis(300)).await;
    waiter
        .transport
        .wait_for_work(Duration::from_millis(10))
        .await;
    let started = Instant::now();
    waiter
        .transport
        .wait_for_work(Duration::from_millis(300))
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(290),
        "no work: the full wait"
    );

    let w = waiter.transport.clone();
    let wait = tokio::spawn(async move {
        let started = Instant::now();
        w.wait_for_work(Duration::from_secs(5)).await;
        started.elapsed()
    });
    // Let the spawned waiter begin its wait (nothing to observe from outside).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = Instant::now();
    publisher
        .transport
        .publish(publish("msg_wake", &["sub_a"], b"{}"))
        .await
        .unwrap();
    let waited = wait.await.unwrap();
    let latency = sent.elapsed();
    assert!(waited < Duration::from_secs(1), "woken after {waited:?}");
    assert!(
        latency < Duration::from_millis(500),
        "wake-up latency {latency:?}"
    );
}

/// Counts the messages that arrived on `stream` so far.
fn arrived(stream: &mut (dyn futures::Stream<Item = redis::Msg> + Unpin + Send)) -> usize {
    let mut n = 0;
    while let Some(Some(_)) = futures::FutureExt::now_or_never(futures::StreamExt::next(stream)) {
        n += 1;
    }
    n
}

async fn wake_messages(
    url: &str,
    prefix: &str,
) -> impl futures::Stream<Item = redis::Msg> + Unpin + Send {
    let client = redis::Client::open(url).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe(format!("{prefix}:wake")).await.unwrap();
    sub.into_on_message()
}

#[tokio::test]
async fn a_publish_wakes_workers_only_when_it_finds_the_intake_empty() {
    let url = redis_or_skip!();
    let _serial = PUBSUB.lock().await;
    let (parts, prefix) = parts(&url).await;
    let t = parts.transport;
    let mut messages = wake_messages(&url, &prefix).await;
    // The first event into an empty intake wakes; more while it holds events do not, for any
    // subscription: the workers told of the first fan out all of them.
    for (id, sub) in [
        ("msg_w1", "sub_a"),
        ("msg_w2", "sub_a"),
        ("msg_w3", "sub_a"),
        ("msg_w4", "sub_b"),
    ] {
        t.publish(publish(id, &[sub], b"{}")).await.unwrap();
    }
    // A window for the wake-ups to arrive, long enough that one too many would show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(arrived(&mut messages), 1);
    // A claim fans the intake out (it wakes nobody: its caller takes the work).
    let leased = lease(&t, &claim_request("wrk_w", 10, LEASE)).await;
    assert_eq!(leased.jobs.len(), 4);
    // A window for the wake-ups to arrive, long enough that one too many would show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(arrived(&mut messages), 0);
    // The intake is empty again: the next event wakes.
    t.publish(publish("msg_w5", &["sub_a"], b"{}"))
        .await
        .unwrap();
    // A window for the wake-ups to arrive, long enough that one too many would show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(arrived(&mut messages), 1);
}

#[tokio::test]
async fn a_keyed_publish_wakes_workers_only_when_its_subscription_becomes_due_sooner() {
    let url = redis_or_skip!();
    let _serial = PUBSUB.lock().await;
    let (parts, prefix) = parts(&url).await;
    let t = parts.transport;
    let mut messages = wake_messages(&url, &prefix).await;
    let keyed = |id: &str, sub: &str| {
        let mut p = publish(id, &[sub], b"{}");
        p.idempotency = Some(IdempotencyKey::new(sub, id, None, b"{}"));
        p
    };
    // The first event of a subscription wakes; more for the same, already due, do not.
    for id in ["msg_k1", "msg_k2", "msg_k3"] {
        t.publish(keyed(id, "sub_a")).await.unwrap();
    }
    // A window for the wake-ups to arrive, long enough that one too many would show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(arrived(&mut messages), 1);
    // Another subscription's first event does.
    t.publish(keyed("msg_k4", "sub_b")).await.unwrap();
    // A window for the wake-ups to arrive, long enough that one too many would show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(arrived(&mut messages), 1);
    // Once a claim emptied the queue, the next event wakes again.
    let leased = lease(&t, &claim_request("wrk_w", 10, LEASE)).await;
    assert_eq!(leased.jobs.len(), 4);
    t.publish(keyed("msg_k5", "sub_a")).await.unwrap();
    // A window for the wake-ups to arrive, long enough that one too many would show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(arrived(&mut messages), 1);
}

#[tokio::test]
async fn subscription_changes_reach_another_process_and_survive_a_lost_connection() {
    let url = redis_or_skip!();
    let _serial = PUBSUB.lock().await;
    let prefix = herald_testenv::unique_name("herald-test");
    let announcer = open(&url, &prefix).await.unwrap();
    let follower = open(&url, &prefix).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
    let changes = follower.changes.clone();
    let follow = tokio::spawn(async move {
        changes
            .follow(Box::new(move |id| {
                let _ = tx.send(id.map(str::to_string));
            }))
            .await
    });
    async fn next(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Option<String>>,
        within: Duration,
    ) -> Option<String> {
        tokio::time::timeout(within, rx.recv())
            .await
            .expect("a change in time")
            .expect("the feed runs")
    }
    // Until the listener is subscribed, resets come (and announcements may be missed).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut announced = 0;
    'subscribed: loop {
        assert!(
            Instant::now() < deadline,
            "the follower never saw an announcement"
        );
        announced += 1;
        announcer
            .changes
            .announce(&format!("sub_{announced}"))
            .await
            .unwrap();
        let sent = Instant::now();
        while let Ok(Some(got)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
        {
            if got.as_deref() == Some(format!("sub_{announced}").as_str()) {
                assert!(sent.elapsed() < Duration::from_secs(1));
                break 'subscribed;
            }
        }
    }
    let sent = Instant::now();
    announcer.changes.announce("sub_x").await.unwrap();
    assert_eq!(
        next(&mut rx, Duration::from_secs(1)).await.as_deref(),
        Some("sub_x")
    );
    assert!(sent.elapsed() < Duration::from_secs(1));

    let mut conn = raw(&url).await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(killed >= 2, "both processes' listeners were subscribed");
    assert_eq!(
        next(&mut rx, Duration::from_secs(3)).await,
        None,
        "after a reconnect the follower forgets its cache"
    );
    let sent = Instant::now();
    announcer.changes.announce("sub_y").await.unwrap();
    assert_eq!(
        next(&mut rx, Duration::from_secs(1)).await.as_deref(),
        Some("sub_y")
    );
    assert!(sent.elapsed() < Duration::from_secs(1));
    follow.abort();
}

//! The Redis test server is real: a stream consumer-group round trip, with AOF on.

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamPendingReply, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;

/// A connection to the test Redis, or `None` (outside CI) when it is not running.
async fn connect() -> Option<MultiplexedConnection> {
    let url = herald_testenv::redis_url()?;
    let client = redis::Client::open(url.as_str()).expect("valid Redis URL");
    Some(
        client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the Redis test server"),
    )
}

#[tokio::test]
async fn stream_consumer_group_round_trip() {
    let Some(mut con) = connect().await else {
        return;
    };

    let stream = herald_testenv::unique_name("herald-testenv-stream");
    let group = "workers";
    let () = con
        .xgroup_create_mkstream(&stream, group, "$")
        .await
        .expect("XGROUP CREATE ... MKSTREAM");

    let id: String = con
        .xadd(&stream, "*", &[("event", "order.created"), ("body", "{}")])
        .await
        .expect("XADD");

    let opts = StreamReadOptions::default()
        .group(group, "worker-1")
        .count(10)
        .block(1000);
    let reply: Option<StreamReadReply> = con
        .xread_options(&[&stream], &[">"], &opts)
        .await
        .expect("XREADGROUP");
    let reply = reply.expect("XREADGROUP returned the new entry");
    assert_eq!(reply.keys.len(), 1);
    let entries = &reply.keys[0].ids;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].id, id);
    let event: String = entries[0].get("event").expect("field `event`");
    assert_eq!(event, "order.created");

    let pending: StreamPendingReply = con.xpending(&stream, group).await.expect("XPENDING");
    assert_eq!(
        pending.count(),
        1,
        "the entry is pending until acknowledged"
    );

    let acked: usize = con.xack(&stream, group, &[&id]).await.expect("XACK");
    assert_eq!(acked, 1);
    let pending: StreamPendingReply = con.xpending(&stream, group).await.expect("XPENDING");
    assert_eq!(pending.count(), 0, "nothing pending after XACK");

    let _: usize = con.del(&stream).await.expect("DEL");
}

#[tokio::test]
async fn append_only_file_is_enabled() {
    let Some(mut con) = connect().await else {
        return;
    };
    let (key, value): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query_async(&mut con)
        .await
        .expect("CONFIG GET appendonly");
    assert_eq!((key.as_str(), value.as_str()), ("appendonly", "yes"));
}

//! The MongoDB backend against a real server (FerretDB from `scripts/testenv.sh`), one fresh
//! database per test.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use futures::TryStreamExt;
use herald_backends::mongo::{self, MongoParts, INDEXES};
use herald_core::backend::{ArchivedEvent, OpenEvents, ReplaceHealth, SettledDelivery};
use herald_core::model::{
    Attempt, DeliveryState, DeliveryStatus, Event, Outcome, Owner, Subscription,
};
use herald_core::StoreError;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;

/// A fresh database on the test server, and the parts opened on it.
async fn fresh() -> Option<(MongoParts, mongodb::Database)> {
    let uri = herald_testenv::mongo_uri()?;
    let name = herald_testenv::unique_name("herald").replace('-', "_");
    let parts = mongo::open(&uri, Some(&name)).await.expect("open MongoDB");
    let client = Client::with_uri_str(&uri)
        .await
        .expect("a client for checks");
    Some((parts, client.database(&name)))
}

/// A time with nanoseconds below the millisecond, which BSON dates alone would lose.
fn at(secs: i64, nanos: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, nanos).unwrap()
}

fn subscription(id: &str) -> Subscription {
    Subscription {
        id: id.into(),
        target_url: "https://receiver.example/hook".into(),
        event_types: vec![],
        secret: None,
        headers: BTreeMap::new(),
        max_attempts: None,
        timeout_ms: None,
        retry_schedule_ms: None,
        paused: false,
        owner: None,
        created_at: at(1_760_000_000, 0),
        updated_at: at(1_760_000_000, 0),
        disabled_at: None,
        disabled_reason: None,
        failing_since: None,
        previous_secret: None,
        previous_secret_expires_at: None,
        version: 0,
    }
}

/// Every field set, with the values most likely to be mangled by a store.
fn full_subscription(id: &str) -> Subscription {
    let headers = [
        ("Authorization", "Bearer abc"),
        ("X-Hdr.v", "dotted name"),
        ("x-lower", "café"),
        ("X-UPPER", ""),
    ];
    Subscription {
        id: id.into(),
        target_url: "http://127.0.0.1:9000/hook?x=1".into(),
        event_types: vec!["order.created".into(), "$odd.type".into()],
        secret: Some("whsec_current_0123456789".into()),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        max_attempts: Some(7),
        timeout_ms: Some(15_000),
        retry_schedule_ms: Some(vec![10, 60_000, 3_600_000]),
        paused: true,
        owner: Some(Owner {
            kind: "kubernetes".into(),
            namespace: "shop".into(),
            name: "orders".into(),
        }),
        created_at: at(1_760_000_000, 123_456_789),
        updated_at: at(1_760_000_100, 1),
        disabled_at: Some(at(1_760_000_200, 999_999_999)),
        disabled_reason: Some("the endpoint answered 410 Gone".into()),
        failing_since: Some(at(1_760_000_150, 500_000)),
        previous_secret: Some("whsec_previous_0123456789".into()),
        previous_secret_expires_at: Some(at(1_760_086_400, 42)),
        version: 0,
    }
}

fn attempt(webhook: &str, sub: &str, n: u32, at: DateTime<Utc>) -> Attempt {
    Attempt {
        webhook_id: webhook.into(),
        subscription_id: sub.into(),
        event_type: Some("order.created".into()),
        target_url: "https://receiver.example/hook".into(),
        attempted_at: at,
        attempt_no: n,
        outcome: Outcome::FailedAttempt,
        http_status: Some(500),
        error: Some("HTTP 500".into()),
        duration_ms: 12,
        response_excerpt: Some("oops".into()),
    }
}

fn event(id: &str, payload: &[u8], received_at: DateTime<Utc>) -> ArchivedEvent {
    ArchivedEvent {
        event: Event {
            webhook_id: id.into(),
            event_type: Some("order.created".into()),
            payload: Bytes::copy_from_slice(payload),
            received_at,
        },
        subscription_ids: vec!["sub_a".into(), "sub_b".into()],
        payload_omitted: None,
    }
}

fn settled(
    webhook: &str,
    sub: &str,
    status: DeliveryState,
    attempts: u32,
    at: DateTime<Utc>,
) -> SettledDelivery {
    SettledDelivery {
        webhook_id: webhook.into(),
        status: DeliveryStatus {
            subscription_id: sub.into(),
            status,
            attempts_made: attempts,
            next_attempt_at: None,
            last_error: (status == DeliveryState::Failed).then(|| "HTTP 500".into()),
        },
        settled_at: at,
    }
}

fn ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap()
}

#[tokio::test]
async fn subscriptions_round_trip_every_field() {
    let Some((m, db)) = fresh().await else { return };
    let s = &m.subscriptions;
    s.ping().await.unwrap();

    let full = full_subscription("sub_full");
    s.insert(&full).await.unwrap();
    assert_eq!(s.get(&"sub_full".into()).await.unwrap().unwrap(), full);
    let bare = subscription("sub_bare");
    s.insert(&bare).await.unwrap();
    assert_eq!(s.get(&"sub_bare".into()).await.unwrap().unwrap(), bare);
    assert!(s.get(&"sub_missing".into()).await.unwrap().is_none());

    let again = s.insert(&subscription("sub_full")).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    assert_eq!(
        s.get(&"sub_full".into()).await.unwrap().unwrap(),
        full,
        "a refused insert changes nothing"
    );

    // Headers are pairs in the stored document (user-chosen names are never document keys),
    // and the owner is a sub-document the operator's index covers.
    let raw = db
        .collection::<Document>("subscriptions")
        .find_one(doc! { "_id": "sub_full" })
        .await
        .unwrap()
        .unwrap();
    let headers = raw.get_array("headers").unwrap();
    assert_eq!(headers.len(), 4);
    assert_eq!(
        headers[1],
        Bson::Document(doc! { "name": "X-Hdr.v", "value": "dotted name" })
    );
    assert_eq!(
        raw.get_document("owner").unwrap().get_str("namespace"),
        Ok("shop")
    );
    assert!(matches!(raw.get("created_at"), Some(Bson::DateTime(_))));

    // Replace clears what the new version lacks and sets what it adds.
    let mut changed = full.clone();
    changed.headers.remove("X-Hdr.v");
    changed.headers.insert("X-New".into(), "1".into());
    changed.disabled_at = None;
    changed.disabled_reason = None;
    changed.previous_secret = None;
    changed.previous_secret_expires_at = None;
    changed.owner = None;
    changed.retry_schedule_ms = None;
    changed.paused = false;
    changed.updated_at = at(1_760_000_300, 7);
    s.replace(&changed, ReplaceHealth::Write).await.unwrap();
    changed.version += 1;
    assert_eq!(s.get(&"sub_full".into()).await.unwrap().unwrap(), changed);
    let mut back = changed.clone();
    back.owner = full.owner.clone();
    back.retry_schedule_ms = Some(vec![]);
    s.replace(&back, ReplaceHealth::Write).await.unwrap();
    back.version += 1;
    assert_eq!(s.get(&"sub_full".into()).await.unwrap().unwrap(), back);

    let gone = s
        .replace(&subscription("sub_missing"), ReplaceHealth::Write)
        .await;
    assert!(matches!(gone, Err(StoreError::NotFound)), "{gone:?}");
    assert!(
        s.get(&"sub_missing".into()).await.unwrap().is_none(),
        "no upsert"
    );

    assert!(s.remove(&"sub_full".into()).await.unwrap());
    assert!(!s.remove(&"sub_full".into()).await.unwrap());
    assert!(s.get(&"sub_full".into()).await.unwrap().is_none());
    assert_eq!(s.list_all().await.unwrap(), vec![bare]);
    db.drop().await.unwrap();
}

#[tokio::test]
async fn subscriptions_page_in_id_order() {
    let Some((m, db)) = fresh().await else { return };
    let s = &m.subscriptions;
    for id in ["sub_d", "sub_b", "sub_e", "sub_a", "sub_c"] {
        s.insert(&subscription(id)).await.unwrap();
    }
    let ids = |v: Vec<Subscription>| v.into_iter().map(|x| x.id).collect::<Vec<_>>();
    assert_eq!(ids(s.list(2, None).await.unwrap()), ["sub_a", "sub_b"]);
    assert_eq!(
        ids(s.list(2, Some("sub_b")).await.unwrap()),
        ["sub_c", "sub_d"]
    );
    assert_eq!(ids(s.list(2, Some("sub_d")).await.unwrap()), ["sub_e"]);
    assert!(s.list(2, Some("sub_e")).await.unwrap().is_empty());
    assert_eq!(
        ids(s.list(10, Some("sub_bb")).await.unwrap()),
        ["sub_c", "sub_d", "sub_e"],
        "after an id that does not exist"
    );
    assert!(s.list(0, None).await.unwrap().is_empty(), "limit 0 is none");
    assert_eq!(
        ids(s.list_all().await.unwrap()),
        ["sub_a", "sub_b", "sub_c", "sub_d", "sub_e"]
    );
    db.drop().await.unwrap();
}

#[tokio::test]
async fn attempts_order_keep_the_first_record_and_expire() {
    let Some((m, db)) = fresh().await else { return };
    let log = &m.attempts;
    let t0 = Utc::now() - chrono::Duration::hours(100);
    let h = chrono::Duration::hours;
    log.record(vec![
        attempt("msg_1", "sub_a", 1, t0),
        attempt("msg_1", "sub_b", 1, t0 + h(1)),
        attempt("msg_1", "sub_a", 2, t0 + h(90)),
        attempt("msg_2", "sub_a", 1, t0 + h(99)),
    ])
    .await
    .unwrap();
    log.record(vec![]).await.unwrap();

    // Re-recording attempt 2 (a settlement repeated after a crash) keeps the first record,
    // and the new attempt in the same batch is stored all the same.
    let mut replayed = attempt("msg_1", "sub_a", 2, t0 + h(95));
    replayed.outcome = Outcome::Success;
    replayed.http_status = Some(200);
    let mut third = attempt("msg_1", "sub_a", 3, t0 + h(98));
    third.outcome = Outcome::Failure;
    third.http_status = None;
    third.error = Some("connection refused".into());
    third.response_excerpt = None;
    third.event_type = None;
    log.record(vec![replayed, third.clone()]).await.unwrap();

    let recent = log.by_subscription("sub_a", 10).await.unwrap();
    let keys: Vec<_> = recent
        .iter()
        .map(|a| (a.webhook_id.as_str(), a.attempt_no))
        .collect();
    assert_eq!(
        keys,
        [("msg_2", 1), ("msg_1", 3), ("msg_1", 2), ("msg_1", 1)],
        "newest first"
    );
    let second = &recent[2];
    assert_eq!(
        second.outcome,
        Outcome::FailedAttempt,
        "the first record stays"
    );
    assert_eq!(second.attempted_at, ms(t0 + h(90)));
    assert_eq!(
        recent[1],
        Attempt {
            attempted_at: ms(third.attempted_at),
            ..third
        }
    );
    // Absent values are left out of the document, not stored as null.
    let raw = db
        .collection::<Document>("attempts")
        .find_one(doc! { "webhook_id": "msg_1", "attempt": 3_i64 })
        .await
        .unwrap()
        .unwrap();
    for absent in ["http_status", "response_excerpt", "event_type"] {
        assert!(!raw.contains_key(absent), "{absent} in {raw:?}");
    }
    assert_eq!(raw.get_str("error"), Ok("connection refused"));
    assert_eq!(log.by_subscription("sub_a", 2).await.unwrap().len(), 2);
    assert!(log.by_subscription("sub_a", 0).await.unwrap().is_empty());

    let by_webhook = log.by_webhook("msg_1").await.unwrap();
    let keys: Vec<_> = by_webhook
        .iter()
        .map(|a| (a.subscription_id.as_str(), a.attempt_no))
        .collect();
    assert_eq!(
        keys,
        [("sub_a", 1), ("sub_b", 1), ("sub_a", 2), ("sub_a", 3)],
        "oldest first"
    );
    let first = &by_webhook[0];
    assert_eq!(first.http_status, Some(500));
    assert_eq!(first.error.as_deref(), Some("HTTP 500"));
    assert_eq!(first.response_excerpt.as_deref(), Some("oops"));
    assert_eq!(first.duration_ms, 12);
    assert_eq!(first.event_type.as_deref(), Some("order.created"));

    // Retention: everything attempted before the cutoff goes, the rest stays.
    assert_eq!(log.delete_older_than(t0 + h(2)).await.unwrap(), 2);
    assert_eq!(log.delete_older_than(t0 + h(2)).await.unwrap(), 0);
    let left: Vec<_> = log
        .by_webhook("msg_1")
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.subscription_id, a.attempt_no))
        .collect();
    assert_eq!(left, [("sub_a".into(), 2), ("sub_a".into(), 3)]);
    assert!(log.by_subscription("sub_b", 10).await.unwrap().is_empty());
    assert_eq!(log.by_subscription("sub_a", 10).await.unwrap().len(), 3);
    db.drop().await.unwrap();
}

#[tokio::test]
async fn payloads_are_kept_byte_for_byte() {
    let Some((m, db)) = fresh().await else { return };
    let a = &m.archive;
    let t = at(1_760_000_000, 250_000_000);
    let binary: Vec<u8> = (0..=255u8).chain([0xff, 0xfe, 0x00, 0xc3, 0x28]).collect();
    let big: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let json = br#"{"a":1,  "b" : [1.50, "\u00e9"], "c":null}"#.to_vec();
    let cases = [
        ("msg_binary", binary),
        ("msg_big", big),
        ("msg_json", json),
        ("msg_empty", Vec::new()),
    ];
    let events: Vec<_> = cases.iter().map(|(id, p)| event(id, p, t)).collect();
    a.store_events(&events).await.unwrap();
    for (id, payload) in &cases {
        let got = a.event(id).await.unwrap().expect(id);
        assert_eq!(got.event.payload.as_ref(), payload.as_slice(), "{id}");
        assert_eq!(got.event.webhook_id, *id);
        assert_eq!(got.event.event_type.as_deref(), Some("order.created"));
        assert_eq!(got.event.received_at, ms(t));
        assert_eq!(got.subscription_ids, ["sub_a", "sub_b"]);
    }
    let raw = db
        .collection::<Document>("events")
        .find_one(doc! { "_id": "msg_binary" })
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(raw.get("payload"), Some(Bson::Binary(_))),
        "{raw:?}"
    );
    assert!(a.event("msg_missing").await.unwrap().is_none());
    db.drop().await.unwrap();
}

#[tokio::test]
async fn storing_events_again_changes_nothing() {
    let Some((m, db)) = fresh().await else { return };
    let a = &m.archive;
    let t = Utc::now();
    a.store_events(&[event("msg_1", b"first", t)])
        .await
        .unwrap();
    // A claim repeated after a crash stores the same event again, alongside new ones.
    let mut again = event("msg_1", b"second", t);
    again.subscription_ids = vec!["sub_z".into()];
    a.store_events(&[
        again,
        event("msg_2", b"two", t),
        event("msg_1", b"third", t),
    ])
    .await
    .unwrap();
    a.store_events(&[]).await.unwrap();
    let first = a.event("msg_1").await.unwrap().unwrap();
    assert_eq!(first.event.payload.as_ref(), b"first");
    assert_eq!(first.subscription_ids, ["sub_a", "sub_b"]);
    assert_eq!(
        a.event("msg_2")
            .await
            .unwrap()
            .unwrap()
            .event
            .payload
            .as_ref(),
        b"two"
    );
    let count = db
        .collection::<Document>("events")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(count, 2);
    db.drop().await.unwrap();
}

#[tokio::test]
async fn settled_deliveries_are_replaced_on_replay() {
    let Some((m, db)) = fresh().await else { return };
    let a = &m.archive;
    let t = Utc::now();
    let s = chrono::Duration::seconds;
    a.record_settled(&[
        settled("msg_1", "sub_a", DeliveryState::Failed, 5, t),
        settled("msg_1", "sub_b", DeliveryState::Succeeded, 1, t),
        settled("msg_2", "sub_a", DeliveryState::Succeeded, 2, t),
    ])
    .await
    .unwrap();
    a.record_settled(&[]).await.unwrap();
    let got = a.settled("msg_1").await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].subscription_id, "sub_a");
    assert_eq!(got[0].status, DeliveryState::Failed);
    assert_eq!(got[0].attempts_made, 5);
    assert_eq!(got[0].last_error.as_deref(), Some("HTTP 500"));
    assert_eq!(got[1].status, DeliveryState::Succeeded);

    // A replayed delivery ends again: the later record replaces the first, in a batch with a
    // delivery that settles for the first time; of two records in one batch the later stays.
    a.record_settled(&[
        settled("msg_1", "sub_a", DeliveryState::Failed, 6, t + s(1)),
        settled("msg_3", "sub_a", DeliveryState::Failed, 1, t + s(1)),
        settled("msg_1", "sub_a", DeliveryState::Succeeded, 7, t + s(2)),
    ])
    .await
    .unwrap();
    let got = a.settled("msg_1").await.unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].status, DeliveryState::Succeeded);
    assert_eq!(got[0].attempts_made, 7);
    assert_eq!(got[0].last_error, None);
    assert_eq!(a.settled("msg_3").await.unwrap().len(), 1);
    assert!(a.settled("msg_missing").await.unwrap().is_empty());

    let pairs = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(w, s)| (w.to_string(), s.to_string()))
            .collect::<Vec<_>>()
    };
    let among = a
        .settled_among(&pairs(&[
            ("msg_1", "sub_a"),
            ("msg_2", "sub_a"),
            ("msg_2", "sub_b"),
            ("msg_9", "sub_a"),
            ("msg_1/sub", "a"),
        ]))
        .await
        .unwrap();
    let mut keys: Vec<_> = among
        .iter()
        .map(|d| {
            (
                d.webhook_id.as_str(),
                d.status.subscription_id.as_str(),
                d.status.status,
            )
        })
        .collect();
    keys.sort_by_key(|k| (k.0, k.1));
    assert_eq!(
        keys,
        [
            ("msg_1", "sub_a", DeliveryState::Succeeded),
            ("msg_2", "sub_a", DeliveryState::Succeeded)
        ]
    );
    let one = among.iter().find(|d| d.webhook_id == "msg_1").unwrap();
    assert_eq!(one.settled_at, ms(t + s(2)));
    assert!(a.settled_among(&[]).await.unwrap().is_empty());
    db.drop().await.unwrap();
}

#[tokio::test]
async fn purge_deletes_only_what_is_older_than_the_cutoff() {
    let Some((m, db)) = fresh().await else { return };
    let a = &m.archive;
    let now = Utc::now();
    let old = now - chrono::Duration::days(8);
    a.store_events(&[event("msg_old", b"o", old), event("msg_new", b"n", now)])
        .await
        .unwrap();
    a.record_settled(&[
        settled("msg_old", "sub_a", DeliveryState::Succeeded, 1, old),
        settled("msg_old", "sub_b", DeliveryState::Failed, 3, now),
        settled("msg_new", "sub_a", DeliveryState::Succeeded, 1, now),
    ])
    .await
    .unwrap();
    let cutoff = now - chrono::Duration::days(7);
    let none_open = OpenSet::default();
    assert_eq!(
        a.purge(cutoff, &none_open).await.unwrap(),
        2,
        "one event, one delivery"
    );
    assert_eq!(a.purge(cutoff, &none_open).await.unwrap(), 0);
    assert!(a.event("msg_old").await.unwrap().is_none());
    assert!(a.event("msg_new").await.unwrap().is_some());
    let left = a.settled("msg_old").await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].subscription_id, "sub_b", "settled after the cutoff");
    assert_eq!(a.settled("msg_new").await.unwrap().len(), 1);
    a.ping().await.unwrap();
    db.drop().await.unwrap();
}

#[tokio::test]
async fn indexes_exist_after_open_and_opening_twice_is_fine() {
    let Some(uri) = herald_testenv::mongo_uri() else {
        return;
    };
    let name = herald_testenv::unique_name("herald").replace('-', "_");
    let first = mongo::open(&uri, Some(&name)).await.unwrap();
    first
        .subscriptions
        .insert(&full_subscription("sub_1"))
        .await
        .unwrap();
    let second = mongo::open(&uri, Some(&name)).await.expect("a second open");
    assert!(second
        .subscriptions
        .get(&"sub_1".into())
        .await
        .unwrap()
        .is_some());

    let db = Client::with_uri_str(&uri).await.unwrap().database(&name);
    for collection in ["subscriptions", "attempts", "events", "deliveries"] {
        let specs: Vec<_> = db
            .collection::<Document>(collection)
            .list_indexes()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let names: Vec<String> = specs
            .iter()
            .filter_map(|i| i.options.as_ref().and_then(|o| o.name.clone()))
            .collect();
        for (c, index) in INDEXES.iter().filter(|(c, _)| *c == collection) {
            assert!(names.iter().any(|n| n == index), "{c}.{index}: {names:?}");
        }
    }
    let owner = db
        .collection::<Document>("subscriptions")
        .list_indexes()
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .find(|i| {
            i.options.as_ref().and_then(|o| o.name.as_deref()) == Some("owner_namespace_name")
        })
        .unwrap();
    assert_eq!(owner.keys, doc! { "owner.namespace": 1, "owner.name": 1 });
    db.drop().await.unwrap();
}

#[tokio::test]
async fn the_uri_default_database_is_used_when_none_is_given() {
    let Some(uri) = herald_testenv::mongo_uri() else {
        return;
    };
    let name = herald_testenv::unique_name("herald").replace('-', "_");
    let with_db = format!("{}/{name}", uri.trim_end_matches('/'));
    let parts = mongo::open(&with_db, None).await.unwrap();
    parts
        .subscriptions
        .insert(&subscription("sub_1"))
        .await
        .unwrap();
    let db = Client::with_uri_str(&uri).await.unwrap().database(&name);
    let count = db
        .collection::<Document>("subscriptions")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(count, 1);
    db.drop().await.unwrap();
}

/// Needs no server: nothing listens on the port.
#[tokio::test]
async fn opening_an_unreachable_server_fails_promptly_as_unavailable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        mongo::open(&format!("mongodb://127.0.0.1:{port}/"), Some("herald")),
    )
    .await
    .expect("open must not hang");
    let took = started.elapsed();
    let Err(e) = result else {
        panic!("open succeeded against a port with nothing listening")
    };
    assert!(matches!(e, StoreError::Unavailable(..)), "{}", e.chain());
    assert!(
        std::error::Error::source(&e).is_some(),
        "the driver's error is kept: {}",
        e.chain()
    );
    assert!(took < Duration::from_secs(7), "took {took:?}");
    assert!(e.chain().contains("MongoDB"), "{}", e.chain());
}

/// The open events a test names, and the batches the sweep asked about.
#[derive(Default)]
struct OpenSet {
    open: std::collections::HashSet<String>,
    asked: std::sync::Mutex<Vec<usize>>,
}

#[async_trait::async_trait]
impl OpenEvents for OpenSet {
    async fn open_among(&self, ids: &[String]) -> herald_core::backend::Result<Vec<bool>> {
        self.asked.lock().unwrap().push(ids.len());
        Ok(ids.iter().map(|id| self.open.contains(id)).collect())
    }
}

/// The sweep keeps every event the transport names open, asks about the candidates in
/// batches (never one by one), and pages past the kept ones even when thousands share one
/// millisecond.
#[tokio::test]
async fn purge_keeps_open_events_and_asks_in_batches() {
    let Some((m, db)) = fresh().await else { return };
    let a = &m.archive;
    let old = ms(Utc::now() - chrono::Duration::days(8));
    let events: Vec<ArchivedEvent> = (0..2_100)
        .map(|i| {
            event(
                &format!("msg_{i:05}"),
                b"{}",
                old + chrono::Duration::milliseconds(i / 900),
            )
        })
        .collect();
    a.store_events(&events).await.unwrap();
    let open = OpenSet {
        open: (0..2_100)
            .filter(|i| i % 3 == 0)
            .map(|i| format!("msg_{i:05}"))
            .collect(),
        ..OpenSet::default()
    };
    let cutoff = Utc::now() - chrono::Duration::days(7);
    assert_eq!(a.purge(cutoff, &open).await.unwrap(), 1_400);
    assert_eq!(*open.asked.lock().unwrap(), vec![1000, 1000, 100]);
    for i in [0, 1, 2, 899, 900, 1_799, 1_800, 2_097, 2_098] {
        let kept = a.event(&format!("msg_{i:05}")).await.unwrap().is_some();
        assert_eq!(kept, i % 3 == 0, "msg_{i:05}");
    }
    // Once they are no longer open, the next sweep takes them.
    assert_eq!(a.purge(cutoff, &OpenSet::default()).await.unwrap(), 700);
    db.drop().await.unwrap();
}

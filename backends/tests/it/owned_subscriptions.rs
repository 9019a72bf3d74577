//! Subscriptions managed by an owner (the Kubernetes operator): `apply_owned` and
//! `delete_owned` on the SQLite store, through the same service the REST API uses.

use std::sync::Arc;
use std::time::Duration;

use herald_backends::sqlite::{Sqlite, Sync};
use herald_core::cache::SubscriptionCache;
use herald_core::error::Error;
use herald_core::model::Owner;
use herald_core::spec::SubscriptionSpec;
use herald_core::ssrf::TargetGuard;
use herald_core::subscriptions::{Caller, Subscriptions};

struct Fixture {
    subs: Subscriptions,
    cache: Arc<SubscriptionCache>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let backend = Sqlite::open(&dir.path().join("owned.db"), Sync::Normal)
        .unwrap()
        .backend();
    // A TTL far longer than the test: only invalidation can make the cache see a change.
    let cache = Arc::new(SubscriptionCache::new(
        backend.subscriptions.clone(),
        Duration::from_secs(3600),
    ));
    let subs = Subscriptions::new(
        cache.clone(),
        backend.intake.clone(),
        TargetGuard::new(vec![]),
    )
    .with_secret_overlap(Duration::from_secs(60));
    Fixture {
        subs,
        cache,
        _dir: dir,
    }
}

fn owner(name: &str) -> Owner {
    Owner {
        kind: "kubernetes".into(),
        namespace: "shop".into(),
        name: name.into(),
    }
}

/// The id a new subscription of the resource with this UID gets.
fn id(uid: &str) -> String {
    herald_core::ids::owned_subscription_id(1_700_000_000_000, uid).into_string()
}

fn spec(types: &[&str]) -> SubscriptionSpec {
    SubscriptionSpec {
        target_url: "https://receiver.example/hook".into(),
        event_types: types.iter().map(|t| t.to_string()).collect(),
        secret: Some("first-secret-0123456789".into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn apply_creates_once_then_updates_in_place() {
    let f = fixture();
    let o = owner("orders");
    let first = f
        .subs
        .apply_owned(&o, &id(&o.name), &spec(&["order.created"]))
        .await
        .unwrap();
    assert_eq!(first.owner.as_ref(), Some(&o));
    // A retried reconcile with the same spec: same record, nothing written.
    let again = f
        .subs
        .apply_owned(&o, &id(&o.name), &spec(&["order.created"]))
        .await
        .unwrap();
    assert_eq!(again, first);
    // The cache holds the record now; a change must reach it without waiting for the TTL.
    assert_eq!(
        f.cache.get(&first.id).await.unwrap().unwrap().event_types,
        vec!["order.created"]
    );
    let changed = f
        .subs
        .apply_owned(&o, &id(&o.name), &spec(&["order.created", "order.paid"]))
        .await
        .unwrap();
    assert_eq!(changed.id, first.id);
    assert_eq!(changed.created_at, first.created_at);
    assert_eq!(
        f.cache.get(&first.id).await.unwrap().unwrap().event_types,
        vec!["order.created", "order.paid"]
    );
    assert_eq!(f.cache.store().list_all().await.unwrap().len(), 1);
    // Another owner gets its own subscription.
    let other = f
        .subs
        .apply_owned(&owner("refunds"), &id("refunds"), &spec(&[]))
        .await
        .unwrap();
    assert_ne!(other.id, first.id);
    assert_eq!(f.cache.store().list_all().await.unwrap().len(), 2);
}

#[tokio::test]
async fn concurrent_applies_for_one_owner_make_one_subscription() {
    let f = fixture();
    let o = owner("orders");
    let s = spec(&["a"]);
    let results = futures_join(&f.subs, &o, &s).await;
    let ids: Vec<_> = results.into_iter().map(|r| r.unwrap().id).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(f.cache.store().list_all().await.unwrap().len(), 1);
}

async fn futures_join(
    subs: &Subscriptions,
    o: &Owner,
    s: &SubscriptionSpec,
) -> Vec<Result<herald_core::model::Subscription, Error>> {
    let new_id = id(&o.name);
    let (a, b, c, d) = tokio::join!(
        subs.apply_owned(o, &new_id, s),
        subs.apply_owned(o, &new_id, s),
        subs.apply_owned(o, &new_id, s),
        subs.apply_owned(o, &new_id, s)
    );
    vec![a, b, c, d]
}

#[tokio::test]
async fn the_secret_is_kept_unless_given_and_a_new_one_overlaps_the_old() {
    let f = fixture();
    let o = owner("orders");
    let first = f
        .subs
        .apply_owned(&o, &id(&o.name), &spec(&[]))
        .await
        .unwrap();
    let mut no_secret = spec(&["x"]);
    no_secret.secret = None;
    let kept = f
        .subs
        .apply_owned(&o, &id(&o.name), &no_secret)
        .await
        .unwrap();
    assert_eq!(kept.secret, first.secret);
    assert!(kept.previous_secret.is_none());
    let mut rotated = spec(&["x"]);
    rotated.secret = Some("second-secret-0123456789".into());
    let after = f
        .subs
        .apply_owned(&o, &id(&o.name), &rotated)
        .await
        .unwrap();
    assert_eq!(after.secret.as_deref(), Some("second-secret-0123456789"));
    assert_eq!(after.previous_secret, first.secret);
    let now = chrono::Utc::now();
    assert_eq!(
        after.active_secrets(now),
        vec!["second-secret-0123456789", "first-secret-0123456789"]
    );
    // Reapplying the rotated spec keeps the overlap as it is.
    let same = f
        .subs
        .apply_owned(&o, &id(&o.name), &rotated)
        .await
        .unwrap();
    assert_eq!(
        same.previous_secret_expires_at,
        after.previous_secret_expires_at
    );
}

#[tokio::test]
async fn invalid_specs_are_refused_and_store_nothing() {
    let f = fixture();
    let mut bad = spec(&[]);
    bad.target_url = "ftp://receiver.example/".into();
    let e = f
        .subs
        .apply_owned(&owner("orders"), &id("orders"), &bad)
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Invalid(ref v) if v.field == "target_url"),
        "{e}"
    );
    assert!(f.cache.store().list_all().await.unwrap().is_empty());
}

#[tokio::test]
async fn delete_owned_removes_once_and_the_api_may_not_touch_owned_ones() {
    let f = fixture();
    let o = owner("orders");
    let sub = f
        .subs
        .apply_owned(&o, &id(&o.name), &spec(&[]))
        .await
        .unwrap();
    assert!(matches!(
        f.subs.delete(&sub.id, &Caller::Api).await,
        Err(Error::Conflict(_))
    ));
    assert!(f.cache.get(&sub.id).await.unwrap().is_some());
    assert!(f.subs.delete_owned(&o).await.unwrap());
    assert!(f.cache.get(&sub.id).await.unwrap().is_none());
    assert!(!f.subs.delete_owned(&o).await.unwrap());
    // A new resource of the same name (a new UID) makes a new subscription.
    let new = f
        .subs
        .apply_owned(&o, &id("orders-recreated"), &spec(&[]))
        .await
        .unwrap();
    assert_ne!(new.id, sub.id);
}

#[tokio::test]
async fn a_changed_spec_re_enables_an_unchanged_one_does_not() {
    let f = fixture();
    let o = owner("orders");
    let sub = f
        .subs
        .apply_owned(&o, &id(&o.name), &spec(&[]))
        .await
        .unwrap();
    assert!(f.subs.disable(&sub.id, "410 Gone", "gone").await.unwrap());
    let same = f
        .subs
        .apply_owned(&o, &id(&o.name), &spec(&[]))
        .await
        .unwrap();
    assert!(same.is_disabled());
    let changed = f
        .subs
        .apply_owned(&o, &id(&o.name), &spec(&["x"]))
        .await
        .unwrap();
    assert!(!changed.is_disabled());
}

//! Two operator leaders for a moment (a lease handover, a paused process that wakes up) run
//! the same reconcile at once, each with its own cache: the upsert path must still make one
//! subscription per resource, on the production store the operator runs on (FerretDB, whose
//! owner index is not unique; SQLite's unique one is tested with herald-backends). And
//! `delete_owned` removes every record of an owner, including duplicates an older version could
//! leave.

use std::sync::Arc;
use std::time::Duration;

use herald_core::backend::Backend;
use herald_core::cache::SubscriptionCache;
use herald_core::model::Owner;
use herald_core::ssrf::TargetGuard;
use herald_core::subscriptions::Subscriptions;
use herald_operator::controller::{owned_id, owner_of};
use herald_operator::crd::{WebhookSubscription, WebhookSubscriptionSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;

/// Resources raced for, each by two appliers.
const RESOURCES: usize = 40;

/// One operator process's service: its own cache over the shared store.
fn replica(backend: &Backend) -> Subscriptions {
    let cache = Arc::new(SubscriptionCache::new(
        backend.subscriptions.clone(),
        Duration::from_secs(3600),
    ));
    Subscriptions::new(cache, backend.intake.clone(), TargetGuard::new(vec![]))
}

fn resource(i: usize) -> WebhookSubscription {
    let mut w = WebhookSubscription::new(
        &format!("orders-{i}"),
        WebhookSubscriptionSpec {
            target_url: "https://receiver.example/hook".into(),
            event_types: vec!["order.created".into()],
            secret_ref: None,
            headers: Default::default(),
            delivery: None,
            paused: false,
        },
    );
    let m = w.meta_mut();
    m.namespace = Some("shop".into());
    m.uid = Some(format!("6f0c1e2a-0000-4000-8000-{i:012}"));
    m.creation_timestamp = Some(Time("2026-12-07T10:00:00Z".parse().unwrap()));
    w
}

/// The reconcile's store write for `w`, as `controller::reconcile` makes it.
async fn upsert(subs: &Subscriptions, w: &WebhookSubscription) -> String {
    let owner = owner_of(w).unwrap();
    subs.apply_owned(
        &owner,
        &owned_id(w).unwrap(),
        &w.spec.to_subscription_spec(None),
    )
    .await
    .unwrap()
    .id
    .into_string()
}

async fn two_leaders_make_one_subscription_per_resource(backend: Backend) {
    let a = Arc::new(replica(&backend));
    let b = Arc::new(replica(&backend));
    let mut tasks = Vec::new();
    for i in 0..RESOURCES {
        let w = resource(i);
        let (a, b) = (a.clone(), b.clone());
        // Both replicas reconcile the new resource at the same moment.
        tasks.push(tokio::spawn(async move {
            let barrier = Arc::new(tokio::sync::Barrier::new(2));
            let (w1, w2, b1, b2) = (w.clone(), w.clone(), barrier.clone(), barrier);
            let x = tokio::spawn(async move {
                b1.wait().await;
                upsert(&a, &w1).await
            });
            let y = tokio::spawn(async move {
                b2.wait().await;
                upsert(&b, &w2).await
            });
            (x.await.unwrap(), y.await.unwrap())
        }));
    }
    for t in tasks {
        let (x, y) = t.await.unwrap();
        assert_eq!(x, y, "both replicas name one subscription");
    }
    let all = backend.subscriptions.list_all().await.unwrap();
    assert_eq!(
        all.len(),
        RESOURCES,
        "one subscription per resource: {:?}",
        all.iter()
            .map(|s| (&s.id, &s.owner.as_ref().unwrap().name))
            .collect::<Vec<_>>()
    );
    for i in 0..RESOURCES {
        let w = resource(i);
        let owner = owner_of(&w).unwrap();
        let sub = backend
            .subscriptions
            .find_by_owner(&owner)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sub.id, owned_id(&w).unwrap());
    }
}

/// Two records of one owner (as two racing inserts of an older version left them, with random
/// ids): deleting the resource removes both.
async fn delete_owned_removes_every_record_of_the_owner(backend: Backend) {
    let owner = Owner {
        kind: "kubernetes".into(),
        namespace: "shop".into(),
        name: "dup".into(),
    };
    let mut inserted = Vec::new();
    for _ in 0..2 {
        let mut s = herald_core::testkit::subscription(&herald_core::ids::subscription_id());
        s.owner = Some(owner.clone());
        match backend.subscriptions.insert(&s).await {
            Ok(()) => inserted.push(s.id),
            // A store with a unique owner index refuses a second record in the insert itself.
            Err(herald_core::StoreError::Conflict(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(!inserted.is_empty());
    let subs = replica(&backend);
    assert!(subs.delete_owned(&owner).await.unwrap());
    for id in &inserted {
        assert!(
            backend.subscriptions.get(id).await.unwrap().is_none(),
            "{id} of {} records removed",
            inserted.len()
        );
    }
    assert!(!subs.delete_owned(&owner).await.unwrap());
}

async fn production() -> Option<Backend> {
    let mongo = herald_testenv::mongo_uri()?;
    let redis = herald_testenv::redis_url()?;
    let name = herald_testenv::unique_name("owner_race").replace('-', "_");
    Some(
        herald_backends::open_production(&mongo, Some(&name), &redis, &name)
            .await
            .expect("open the production store"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn production_two_leaders_make_one_subscription_per_resource() {
    let Some(backend) = production().await else {
        return;
    };
    two_leaders_make_one_subscription_per_resource(backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_delete_owned_removes_every_record_of_the_owner() {
    let Some(backend) = production().await else {
        return;
    };
    delete_owned_removes_every_record_of_the_owner(backend).await;
}

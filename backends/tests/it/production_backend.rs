//! The production backend (MongoDB + Redis, composed by core's `SplitQueue`) against the shared
//! behavioural suite, on the real servers of `scripts/testenv.sh` (FerretDB and Redis). Each
//! check gets its own MongoDB database and Redis key prefix.

use herald_core::backend::Backend;
use herald_core::testkit;

use herald_testenv::Scratch;

/// A fresh backend, or `None` outside `scripts/testenv.sh` (a failure in CI).
async fn fresh() -> Option<(Backend, Scratch)> {
    let scratch = Scratch::new(
        herald_testenv::mongo_uri()?,
        herald_testenv::redis_url()?,
        "suite",
    );
    let backend = herald_backends::open_production(
        &scratch.mongo_uri,
        Some(&scratch.database),
        &scratch.redis_url,
        &scratch.prefix,
    )
    .await
    .expect("open the production backend");
    Some((backend, scratch))
}

herald_testenv::backend_suite!(fresh);

#[tokio::test]
async fn backend_is_named() {
    let Some((b, _s)) = fresh().await else {
        return;
    };
    assert_eq!(b.name, "mongodb+redis");
    assert!(b.changes.is_some());
    b.subscriptions
        .insert(&testkit::subscription("sub_named"))
        .await
        .unwrap();
    assert!(b.subscriptions.get("sub_named").await.unwrap().is_some());
}

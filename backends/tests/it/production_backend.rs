//! The production backend (MongoDB + Redis, composed by core's `SplitQueue`) against the shared
//! behavioural suite, on the real servers of `scripts/testenv.sh` (FerretDB and Redis). Each
//! check gets its own MongoDB database and Redis key prefix.

use std::time::Duration;

use herald_core::backend::Backend;
use herald_core::testkit;

use herald_testenv::Scratch;

/// A suite check's database and key prefix.
struct Servers(Scratch);

impl herald_testenv::suite::Rewind for Servers {
    /// Brings the keys' expiry forward (Redis keeps a key exactly as long as its expiry, set
    /// to the window when it is recorded); one whose expiry would have passed goes.
    async fn age_idempotency_keys(&self, by: Duration) {
        let client = redis::Client::open(self.0.redis_url.as_str()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:idem:*", self.0.prefix))
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(!keys.is_empty(), "no idempotency key to age");
        for key in keys {
            let left: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap();
            assert!(left > 0, "{key} has no expiry ({left})");
            let left = left - by.as_millis() as i64;
            let cmd = if left > 0 {
                let mut cmd = redis::cmd("PEXPIRE");
                cmd.arg(&key).arg(left);
                cmd
            } else {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(&key);
                cmd
            };
            let _: () = cmd.query_async(&mut c).await.unwrap();
        }
    }
}

/// A fresh backend, or `None` outside `scripts/testenv.sh` (a failure in CI).
async fn fresh() -> Option<(Backend, Servers)> {
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
    Some((backend, Servers(scratch)))
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
    assert!(b
        .subscriptions
        .get(&"sub_named".into())
        .await
        .unwrap()
        .is_some());
}

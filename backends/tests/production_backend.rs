//! The production backend (MongoDB + Redis, composed by core's `SplitQueue`) against the shared
//! behavioural suite, on the real servers of `scripts/testenv.sh` (FerretDB and Redis). Each
//! check gets its own MongoDB database and Redis key prefix.

use herald_core::backend::Backend;
use herald_core::testkit;

/// Drops the check's MongoDB database and Redis keys when the check ends.
struct Scratch {
    mongo_uri: String,
    database: String,
    redis_url: String,
    prefix: String,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let (uri, db, url, prefix) = (
            self.mongo_uri.clone(),
            self.database.clone(),
            self.redis_url.clone(),
            self.prefix.clone(),
        );
        // Its own thread and runtime: the test's runtime is shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(client) = mongodb::Client::with_uri_str(&uri).await {
                    let _ = client.database(&db).drop().await;
                }
                if let Ok(client) = redis::Client::open(url.as_str()) {
                    if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                        let keys: Vec<String> = redis::cmd("KEYS")
                            .arg(format!("{prefix}:*"))
                            .query_async(&mut c)
                            .await
                            .unwrap_or_default();
                        if !keys.is_empty() {
                            let _: redis::RedisResult<()> =
                                redis::cmd("DEL").arg(keys).query_async(&mut c).await;
                        }
                    }
                }
            })
        })
        .join();
    }
}

/// A fresh backend, or `None` outside `scripts/testenv.sh` (a failure in CI).
async fn fresh() -> Option<(Backend, Scratch)> {
    let mongo_uri = herald_testenv::mongo_uri()?;
    let redis_url = herald_testenv::redis_url()?;
    let database = herald_testenv::unique_name("suite");
    let prefix = herald_testenv::unique_name("suite");
    let backend =
        herald_backends::open_production(&mongo_uri, Some(&database), &redis_url, &prefix)
            .await
            .expect("open the production backend");
    Some((
        backend,
        Scratch {
            mongo_uri,
            database,
            redis_url,
            prefix,
        },
    ))
}

herald_core::backend_suite!(fresh);

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

//! A test's own MongoDB database and Redis key prefix on the shared servers, removed when the
//! test ends (however it ends), so that runs do not pile up data on the servers they share.

use std::time::Duration;

/// Names a MongoDB database and a Redis key prefix; dropping it drops the database and
/// deletes every key under the prefix. Servers that are gone (a test stopped them) are given
/// up on after a few seconds.
pub struct Scratch {
    pub mongo_uri: String,
    pub database: String,
    pub redis_url: String,
    pub prefix: String,
}

impl Scratch {
    /// Fresh names (from [`crate::unique_name`]) on the given servers. MongoDB database names
    /// get `_` for `-`, which every server accepts.
    pub fn new(mongo_uri: impl Into<String>, redis_url: impl Into<String>, name: &str) -> Self {
        Self {
            mongo_uri: mongo_uri.into(),
            database: crate::unique_name(name).replace('-', "_"),
            redis_url: redis_url.into(),
            prefix: crate::unique_name(name),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let (uri, db, url, prefix) = (
            self.mongo_uri.clone(),
            self.database.clone(),
            self.redis_url.clone(),
            self.prefix.clone(),
        );
        // Its own thread and runtime: the test's runtime may be shutting down.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let cleanup = async {
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
                };
                let _ = tokio::time::timeout(Duration::from_secs(5), cleanup).await;
            })
        })
        .join();
    }
}

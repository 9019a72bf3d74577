//! The backends behind core's traits: SQLite for standalone mode ([`sqlite`], behind the
//! `sqlite` feature, so a binary that never runs standalone does not bundle it), MongoDB and
//! Redis for production mode, and [`split::SplitQueue`], which composes Redis (the transport)
//! and MongoDB (the archive) into one queue. Their drivers are dependencies of this crate only,
//! so `herald-core` holds the domain alone.

pub mod mongo;
pub mod redis;
pub mod split;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use std::sync::Arc;

use herald_core::backend::Backend;
use herald_core::StoreError;
use split::SplitQueue;
use thiserror::Error;

/// Why the configured backends could not be opened (which ones to open is settled before, by
/// the settings).
#[derive(Debug, Error)]
pub enum OpenError {
    #[error("opening the SQLite store (HERALD_SQLITE_PATH={path})")]
    Sqlite {
        path: String,
        #[source]
        source: StoreError,
    },
    #[error("connecting to MongoDB (MONGO_URI)")]
    Mongo(#[source] StoreError),
    #[error("connecting to Redis (REDIS_URL / REDIS_ADDR)")]
    Redis(#[source] StoreError),
}

/// The production backend on MongoDB (database `database`, else the URI's) and Redis (keys
/// under `prefix`), both checked before it answers.
pub async fn open_production(
    mongo_uri: &str,
    database: Option<&str>,
    redis_url: &str,
    prefix: &str,
) -> Result<Backend, OpenError> {
    let (mongo, redis) = tokio::join!(
        mongo::open(mongo_uri, database),
        redis::open(redis_url, prefix)
    );
    let mongo = mongo.map_err(OpenError::Mongo)?;
    let redis = redis.map_err(OpenError::Redis)?;
    let subscriptions = redis.serialized(mongo.subscriptions);
    let queue = Arc::new(SplitQueue::new(
        redis.transport,
        mongo.archive,
        mongo.attempts.clone(),
    ));
    Ok(Backend {
        name: "mongodb+redis",
        subscriptions,
        intake: queue.clone(),
        queue,
        tuning: split::TUNING,
        attempts: mongo.attempts,
        changes: Some(redis.changes),
    })
}

/// The standalone backend: one SQLite file at `path`.
#[cfg(feature = "sqlite")]
pub fn open_sqlite(
    path: &std::path::Path,
    sync: sqlite::Sync,
    max_size: Option<u64>,
) -> Result<Backend, OpenError> {
    sqlite::Sqlite::open_with_limit(path, sync, max_size)
        .map(|db| db.backend())
        .map_err(|source| OpenError::Sqlite {
            path: path.display().to_string(),
            source,
        })
}

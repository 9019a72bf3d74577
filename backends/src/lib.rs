//! The backends behind core's traits, and [`open`], which picks them from the settings:
//! SQLite when neither MongoDB nor Redis is configured (standalone), MongoDB + Redis when both
//! are (production). Their drivers are dependencies of this crate only, so `herald-core` stays
//! light for the operator.

pub mod mongo;
pub mod redis;

use std::sync::Arc;

use herald_core::backend::Backend;
use herald_core::config::Settings;
use herald_core::split::SplitQueue;
use herald_core::StoreError;
use thiserror::Error;

/// Why the configured backends could not be opened.
#[derive(Debug, Error)]
pub enum OpenError {
    #[error(
        "{set} is set but {missing} is not: production mode needs both MongoDB (MONGO_URI) and \
         Redis (REDIS_URL, or REDIS_ADDR with REDIS_PASSWORD); standalone mode needs neither"
    )]
    Incomplete {
        set: &'static str,
        missing: &'static str,
    },
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

/// Opens the backends the settings name. Production mode checks both servers before it
/// answers, so a wrong address or password stops the process at start with one clear error.
pub async fn open(settings: &Settings) -> Result<Backend, OpenError> {
    match (&settings.mongo_uri, settings.redis()) {
        (None, None) => open_sqlite(settings),
        (Some(_), None) => Err(OpenError::Incomplete {
            set: "MONGO_URI",
            missing: "REDIS_URL",
        }),
        (None, Some(_)) => Err(OpenError::Incomplete {
            set: "REDIS_URL",
            missing: "MONGO_URI",
        }),
        (Some(uri), Some(redis_url)) => {
            open_production(
                uri,
                settings.mongo_database.as_deref(),
                &redis_url,
                &settings.redis_prefix,
            )
            .await
        }
    }
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
    Ok(Backend {
        name: "mongodb+redis",
        subscriptions: redis.serialized(mongo.subscriptions),
        queue: Arc::new(SplitQueue::new(
            redis.transport,
            mongo.archive,
            mongo.attempts.clone(),
        )),
        attempts: mongo.attempts,
        changes: Some(redis.changes),
    })
}

fn open_sqlite(settings: &Settings) -> Result<Backend, OpenError> {
    use herald_core::sqlite::{Sqlite, Sync};
    let sync = if settings.sqlite_sync == "normal" {
        Sync::Normal
    } else {
        Sync::Full
    };
    let max_size = (settings.sqlite_max_size > 0).then_some(settings.sqlite_max_size);
    Sqlite::open_with_limit(&settings.sqlite_path, sync, max_size)
        .map(|db| db.backend())
        .map_err(|source| OpenError::Sqlite {
            path: settings.sqlite_path.display().to_string(),
            source,
        })
}

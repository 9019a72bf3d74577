//! Opens the backends the settings name: SQLite when neither MongoDB nor Redis is configured
//! (standalone), MongoDB + Redis when both are (production).

use herald_backends::OpenError;
use herald_core::backend::Backend;

use crate::config::Settings;

/// Opens the backends the settings name. Production mode checks both servers before it
/// answers, so a wrong address or password stops the process at start with one clear error.
pub async fn open(settings: &Settings) -> Result<Backend, OpenError> {
    match (&settings.mongo_uri, settings.redis()) {
        #[cfg(feature = "sqlite")]
        (None, None) => open_sqlite(settings),
        #[cfg(not(feature = "sqlite"))]
        (None, None) => Err(OpenError::NoStandalone),
        (Some(_), None) => Err(OpenError::Incomplete {
            set: "MONGO_URI",
            missing: "REDIS_URL",
        }),
        (None, Some(_)) => Err(OpenError::Incomplete {
            set: "REDIS_URL",
            missing: "MONGO_URI",
        }),
        (Some(uri), Some(redis_url)) => {
            herald_backends::open_production(
                uri,
                settings.mongo_database.as_deref(),
                &redis_url,
                &settings.redis_prefix,
            )
            .await
        }
    }
}

#[cfg(feature = "sqlite")]
fn open_sqlite(settings: &Settings) -> Result<Backend, OpenError> {
    use herald_backends::sqlite::Sync;
    let sync = if settings.sqlite_sync == "normal" {
        Sync::Normal
    } else {
        Sync::Full
    };
    let max_size = (settings.sqlite_max_size > 0).then_some(settings.sqlite_max_size);
    herald_backends::open_sqlite(&settings.sqlite_path, sync, max_size)
}

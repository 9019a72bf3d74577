//! Opens the backends a [`Mode`] names: SQLite (standalone), or MongoDB + Redis (production).

use herald_backends::OpenError;
use herald_core::backend::Backend;

use crate::config::Mode;

/// Opens the backends of `mode`. Production mode checks both servers before it answers, so a
/// wrong address or password stops the process at start with one clear error.
pub async fn open(mode: &Mode) -> Result<Backend, OpenError> {
    match mode {
        #[cfg(feature = "sqlite")]
        Mode::Standalone {
            path,
            durability,
            max_size,
        } => {
            use crate::config::Durability;
            use herald_backends::sqlite::Sync;
            let sync = match durability {
                Durability::Full => Sync::Full,
                Durability::Normal => Sync::Normal,
            };
            herald_backends::open_sqlite(path, sync, *max_size)
        }
        Mode::Production {
            mongo_uri,
            mongo_database,
            redis_url,
            redis_prefix,
        } => {
            herald_backends::open_production(
                mongo_uri,
                mongo_database.as_deref(),
                redis_url,
                redis_prefix,
            )
            .await
        }
    }
}

//! MongoDB: subscriptions, the attempt log, and the archive of events and settled deliveries.

use std::sync::Arc;

use herald_core::backend::{Archive, AttemptLog, Result, SubscriptionStore};
use herald_core::StoreError;

/// The MongoDB parts of a production backend.
pub struct MongoParts {
    pub subscriptions: Arc<dyn SubscriptionStore>,
    pub attempts: Arc<dyn AttemptLog>,
    pub archive: Arc<dyn Archive>,
}

/// Connects, checks the server answers, and creates the indexes.
pub async fn open(_uri: &str, _database: Option<&str>) -> Result<MongoParts> {
    Err(StoreError::unavailable(
        "the MongoDB backend is not built yet",
    ))
}

//! Redis: the transport of the delivery queue (with the idempotency keys) and the change feed
//! that invalidates every process's subscription cache.

use std::sync::Arc;

use herald_core::backend::{ChangeFeed, Result, Transport};
use herald_core::StoreError;

/// The Redis parts of a production backend.
pub struct RedisParts {
    pub transport: Arc<dyn Transport>,
    pub changes: Arc<dyn ChangeFeed>,
}

/// Connects and checks the server answers (and accepts the password).
pub async fn open(_url: &str, _prefix: &str) -> Result<RedisParts> {
    Err(StoreError::unavailable(
        "the Redis backend is not built yet",
    ))
}

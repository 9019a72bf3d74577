pub mod ingest;
pub mod ops;
pub mod subscriptions;
pub mod webhooks;

use herald_core::ids;

use crate::error::ApiError;

/// A path id that cannot name a subscription is answered 404 here, before any store round trip.
pub(crate) fn subscription_id(id: &str) -> Result<&str, ApiError> {
    ids::parse_subscription_id(id)
        .map(|_| id)
        .map_err(|_| ApiError::NotFound("subscription"))
}

/// As [`subscription_id`], for webhook ids.
pub(crate) fn webhook_id(id: &str) -> Result<&str, ApiError> {
    ids::parse_webhook_id(id)
        .map(|_| id)
        .map_err(|_| ApiError::NotFound("webhook"))
}

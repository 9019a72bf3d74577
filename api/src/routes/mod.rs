pub mod ingest;
pub mod ops;
pub mod subscriptions;
pub mod webhooks;

use herald_core::ids::{SubscriptionId, WebhookId};

use crate::error::ApiError;

/// A path id that cannot name a subscription is answered 404 here, before any store round trip.
pub(crate) fn subscription_id(id: &str) -> Result<SubscriptionId, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound("subscription"))
}

/// As [`subscription_id`], for webhook ids.
pub(crate) fn webhook_id(id: &str) -> Result<WebhookId, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound("webhook"))
}

pub mod ingest;
pub mod ops;
pub mod subscriptions;
pub mod webhooks;

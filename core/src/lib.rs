//! Herald's core: the domain model, the storage / queue / log traits with their backends,
//! request signing, the retry policy, the SSRF guard and the configuration shared by every binary.

pub mod backend;
pub mod cache;
pub mod config;
pub mod error;
pub mod ids;
pub mod model;
pub mod retry;
pub mod shutdown;
pub mod signing;
pub mod split;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod ssrf;
pub mod subscriptions;
pub mod target;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

pub use backend::{Archive, AttemptLog, Backend, ChangeFeed, Queue, SubscriptionStore, Transport};
pub use error::{StoreError, ValidationError};
pub mod telemetry;

//! Herald's domain, and nothing that depends on where it runs: no database driver, no command
//! line, no process set-up (those are in `herald-backends` and `herald-runtime`).
//!
//! # Layout
//!
//! | module | holds |
//! |---|---|
//! | [`model`] | subscriptions, events, deliveries, attempts, claims and settlements |
//! | [`spec`] | what a client may ask of a subscription, and its validation |
//! | [`ids`] | the id types, id minting and parsing (prefixed ULIDs) |
//! | [`retry`] | the retry schedule and the decision after each attempt |
//! | [`signing`] | signatures of incoming events and outgoing deliveries |
//! | [`ssrf`], [`target`] | which delivery targets are allowed, and the one URL parser |
//! | [`subscriptions`] | managing subscriptions: validation, ownership, versioned writes |
//! | [`cache`] | the in-process subscription cache the hot paths read through |
//! | [`backend`] | the storage, queue and attempt-log traits every backend implements |
//! | [`error`] | the store's and validation's error types |
//! | [`telemetry`] | metric names and the counters the dashboard reads |
//! | [`testkit`] | fixtures for other crates' tests (feature `testkit`) |
//!
//! # Where each protocol's invariants are written
//!
//! - **Queue** (fencing, liveness, fairness): the docs of [`backend::WorkQueue`]; idempotency:
//!   [`backend::Intake::publish`] and [`backend::IDEMPOTENCY_WINDOW`]; for production mode
//!   [`backend::Transport`] and [`backend::Archive`]; the write order across Redis and MongoDB
//!   and its failure points in `herald-backends`' `split` module.
//! - **Subscription writes** (versioned replace, health writes that never revert a client's):
//!   [`backend::SubscriptionStore::replace`] and [`subscriptions`].
//! - **Cache invalidation**: [`cache`] and [`backend::ChangeFeed`].
//! - **Retry scheduling**: [`retry`].
//! - **Ingest** (answer 202 only once stored), **liveness** (heartbeats and reaping) and
//!   **reconcile** live beside the code that runs them: `herald-api`'s `routes::ingest`,
//!   `herald-delivery`'s `liveness`, `herald-operator`'s `controller`.

pub mod backend;
pub mod cache;
pub mod error;
pub mod ids;
pub mod model;
pub mod retry;
pub mod signing;
pub mod spec;
pub mod ssrf;
pub mod subscriptions;
pub mod target;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

pub use backend::{
    Archive, AttemptLog, Backend, ChangeFeed, Intake, SubscriptionStore, Transport, WorkQueue,
};
pub use error::{StoreError, ValidationError};
pub mod telemetry;

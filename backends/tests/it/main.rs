//! herald-backends's integration tests, one test binary: one module per area (run one with
//! `cargo test -p herald-backends --test it <module>::`).

mod mongo_store;
mod owned_subscriptions;
mod production_backend;
mod redis_transport;
mod split_failures;
mod sqlite_backend;

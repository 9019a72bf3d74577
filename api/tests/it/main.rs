//! herald-api's integration tests, one test binary: one module per area (run one with
//! `cargo test -p herald-api --test it <module>::`).

mod api;
mod common;
mod delivery;
mod edge;
mod engine;
mod health;
mod healthcheck;
mod openapi;
mod ops;
mod process;
mod production;
mod shutdown;

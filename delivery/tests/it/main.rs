//! herald-delivery's integration tests, one test binary: one module per area (run one with
//! `cargo test -p herald-delivery --test it <module>::`).

mod lingers;
mod settle_failures;
mod worker_process;

//! herald-operator's integration tests, one test binary: one module per area (run one with
//! `cargo test -p herald-operator --test it <module>::`).

mod common;
mod control_plane;
mod crd;
mod full_stack;
mod mocked_api;
mod owner_race;
mod process;

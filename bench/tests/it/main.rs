//! herald-bench's integration tests, one test binary: one module per area (run one with
//! `cargo test -p herald-bench --test it <module>::`).

mod smoke;

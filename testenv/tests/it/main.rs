//! herald-testenv's integration tests, one test binary: one module per area (run one with
//! `cargo test -p herald-testenv --test it <module>::`).

mod chart;
mod compose;
mod dockerfile;
mod helm;
mod kube;
mod mongo;
mod node;
mod redis;
mod redis_cluster;

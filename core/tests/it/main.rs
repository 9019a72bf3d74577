//! herald-core's integration tests: one binary, one module per concern.

mod retry;

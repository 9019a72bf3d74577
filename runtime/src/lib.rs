//! What Herald's binaries share as processes, apart from the domain (`herald-core`) and the
//! backends (`herald-backends`): the settings ([`config`]), opening the configured backends
//! ([`store`]), logging and the metrics recorder ([`telemetry`]), and shutdown ([`shutdown`]).

pub mod config;
pub mod shutdown;
pub mod store;
pub mod telemetry;

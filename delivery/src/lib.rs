//! Herald's delivery side: the engine that claims, sends and settles deliveries, the outgoing
//! HTTP client with its SSRF guard, and the retention sweep.

pub mod attempt;
pub mod engine;
pub mod health;
pub mod http;
mod inflight;
mod liveness;
pub mod retention;

pub use engine::{ConfigError, Engine, EngineConfig};

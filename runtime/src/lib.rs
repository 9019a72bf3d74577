//! What Herald's binaries share as processes, apart from the domain (`herald-core`) and the
//! backends (`herald-backends`): the settings ([`config`]), opening the configured backends
//! ([`store`]), logging and the metrics recorder ([`telemetry`]), the health listener of the
//! processes that serve no API ([`health`]), and shutdown ([`shutdown`]), with the failure
//! report every binary ends with ([`exit`]).

pub mod config;
pub mod health;
pub mod shutdown;
pub mod store;
pub mod telemetry;

/// Ends a binary's `main`: success, or the failure as one line on stderr (the whole cause
/// chain, `a: b: c`) and exit status 1, so that a bad `MONGO_URI` reads the same in a
/// terminal, `docker logs` and `kubectl logs`.
pub fn exit(binary: &str, result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{binary}: {e:#}");
            // Exit here, not by returning: dropping the runtime ends the background tasks of
            // clients opened before the failure (the MongoDB driver's), and one that panics
            // while it ends would add its message to the one error line.
            std::process::exit(1)
        }
    }
}

//! `herald`: runs Herald standalone (api, delivery workers and retention in one process on
//! SQLite), or one maintenance task.

use clap::{Parser, Subcommand};
use herald_core::config::Settings;

#[derive(Parser)]
#[command(name = "herald", version, about = "Herald webhook delivery service")]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API with in-process delivery workers and retention (the default).
    Serve,
    /// Run the retention sweep once and exit (what the chart's CronJob runs).
    Cleanup,
    /// Print the OpenAPI document and exit.
    Openapi,
}

/// A failure is one line on stderr (the whole cause chain, `a: b: c`) and exit status 1, so
/// that a bad `MONGO_URI` reads the same in a terminal, `docker logs` and `kubectl logs`.
#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    herald_api::init_tracing(&cli.settings.log_format);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let herald = herald_api::Herald::start(cli.settings).await?;
            let stop = herald.shutdown_token();
            tokio::spawn(async move {
                herald_core::shutdown::signal().await;
                tracing::info!("shutting down: finishing deliveries in flight");
                stop.cancel();
            });
            herald.wait().await
        }
        Command::Cleanup => {
            let backend = herald_api::open_backend(&cli.settings).await?;
            let swept =
                herald_delivery::retention::run_once(&backend, cli.settings.retention).await?;
            tracing::info!(
                attempts = swept.attempts,
                queue_rows = swept.queue_rows,
                "retention sweep done"
            );
            Ok(())
        }
        Command::Openapi => {
            println!("{}", herald_api::openapi().to_pretty_json()?);
            Ok(())
        }
    }
}

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    herald_api::init_tracing(&cli.settings.log_format);
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

//! `herald`: runs Herald standalone (api, delivery workers and retention in one process on
//! SQLite), or one maintenance task.

// The ingest and delivery paths allocate per request: under herald-bench's ingest, the api's
// time in the allocator fell from ~20 % of its CPU with glibc malloc to ~9 % with mimalloc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use herald_api::{healthcheck, App, Settings};

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
    /// GET a health endpoint and exit 0 when it answers 200, 1 otherwise: the container
    /// HEALTHCHECK, since the runtime image has no curl or shell.
    Healthcheck {
        /// Endpoint to check; default `/healthz` of this process's `HERALD_ADDR`, on loopback
        /// when that address listens on every interface.
        #[arg(long)]
        url: Option<String>,
        /// How long to wait for the answer.
        #[arg(long, default_value = "3s", value_parser = herald_core::retry::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    herald_runtime::telemetry::init_tracing(cli.settings.log.log_format);
    herald_runtime::exit("herald", run(cli).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = cli.settings;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => App::build(settings).await?.run_until_stopped().await,
        Command::Cleanup => {
            herald_delivery::retention::cleanup(&settings.store, &settings.retention).await
        }
        Command::Openapi => {
            println!("{}", herald_api::openapi().to_pretty_json()?);
            Ok(())
        }
        Command::Healthcheck { url, timeout } => {
            let url = url.unwrap_or_else(|| healthcheck::default_url(settings.http.addr));
            if let Err(e) = healthcheck::check(&url, timeout).await {
                eprintln!("unhealthy: {url}: {e}");
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

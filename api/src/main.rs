//! `herald`: runs Herald standalone (api, delivery workers and retention in one process on
//! SQLite), or one maintenance task.

// The ingest and delivery paths allocate per request: under herald-bench's ingest, the api's
// time in the allocator fell from ~20 % of its CPU with glibc malloc to ~9 % with mimalloc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use herald_runtime::config::Settings;

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
                herald_runtime::shutdown::signal().await;
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
        Command::Healthcheck { url, timeout } => {
            let url = url.unwrap_or_else(|| default_health_url(cli.settings.addr));
            match healthcheck(&url, timeout).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    eprintln!("unhealthy: {url}: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
}

/// `/healthz` of the api at `addr`, reached over loopback when `addr` is a wildcard (the
/// container's `0.0.0.0:8000`): the check runs inside the same network namespace.
fn default_health_url(addr: std::net::SocketAddr) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/healthz", SocketAddr::new(ip, addr.port()))
}

async fn healthcheck(url: &str, timeout: std::time::Duration) -> anyhow::Result<()> {
    // No proxy: a proxy variable in the container's environment must not reroute a loopback
    // check; no redirects: only the endpoint's own answer counts.
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()?;
    let status = client.get(url).send().await?.status();
    anyhow::ensure!(status == reqwest::StatusCode::OK, "answered {status}");
    Ok(())
}

//! The `redis-ambassador` binary: command line, logging, signals. Everything else is in
//! the library.
//!
//! Exit status: 0 after a clean shutdown (the first SIGTERM/SIGINT, or an enabled `POST
//! /quitquitquit`, starts the drain of `shutdown`); 1 for a start-up error (bad config,
//! missing secret, an address that cannot be bound) and when a signal cuts the drain
//! short. `wait`: 0 once the ambassador is ready, 1 at its timeout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use redis_ambassador::config::{Config, Log, LogFormat};
use redis_ambassador::credentials::Secrets;
use redis_ambassador::shutdown::Signals;
use redis_ambassador::wait;

/// A protocol-aware Redis proxy that runs beside your application.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Path of the TOML config file.
    #[arg(long, value_name = "PATH", required = true)]
    config: Option<PathBuf>,
    /// Validate the config (and read the secrets it names), then exit.
    #[arg(long)]
    check: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Wait until the ambassador is ready (/readyz answers 200); exit 1 at the timeout.
    ///
    /// For an application's entrypoint, where the ambassador is not a native sidecar:
    /// `redis-ambassador wait && exec app`.
    Wait(WaitArgs),
}

#[derive(Args, Debug)]
struct WaitArgs {
    /// Give up after this long: 500ms, 30s, 2m.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = wait::parse_duration)]
    timeout: Duration,
    /// The ambassador's config: its [metrics] address is asked (0.0.0.0 on loopback).
    #[arg(long, value_name = "PATH", conflicts_with = "admin")]
    config: Option<PathBuf>,
    /// The admin endpoint, host:port [default: 127.0.0.1:9121].
    #[arg(long, value_name = "HOST:PORT")]
    admin: Option<String>,
}

/// How long the runtime's blocking threads (a DNS lookup) may delay the exit.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Wait(args)) => wait_ready(&args),
        None => run(cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("redis-ambassador: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `redis-ambassador wait`: polls `/readyz` (see the library's `wait`).
fn wait_ready(args: &WaitArgs) -> anyhow::Result<()> {
    let admin = match (&args.config, &args.admin) {
        (Some(path), _) => wait::admin_from_bound(Config::load(path)?.metrics.address),
        (None, Some(address)) => wait::resolve_admin(address).map_err(anyhow::Error::msg)?,
        (None, None) => wait::resolve_admin(wait::DEFAULT_ADMIN).map_err(anyhow::Error::msg)?,
    };
    wait::until_ready(admin, args.timeout).map_err(|reason| {
        anyhow::anyhow!("wait: not ready after {}: {reason}", humane(args.timeout))
    })
}

/// A duration as `wait --timeout` takes it.
fn humane(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // clap requires --config without a subcommand.
    let path = cli.config.context("--config PATH is required")?;
    let config = Config::load(&path)?;
    init_logging(&config.log);
    let secrets = Secrets::load(&config)?;
    if cli.check {
        println!("{}: configuration is valid", path.display());
        return Ok(());
    }
    let threads = config.runtime.threads();
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let mut signals = Signals::register().context("cannot install signal handlers")?;
        let shutdown = CancellationToken::new();
        let first = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                signal = signals.recv() => {
                    tracing::info!(signal, "shutdown signal received");
                    first.cancel();
                }
                // POST /quitquitquit: the drain has begun without a signal.
                () = first.cancelled() => {}
            }
            let signal = signals.recv().await;
            tracing::warn!(signal, "second signal during shutdown: exiting at once");
            std::process::exit(1);
        });
        redis_ambassador::run(config, secrets, shutdown).await?;
        anyhow::Ok(())
    });
    // Sessions still open after the grace period are dropped here.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    result
}

/// Logs go to stderr, as text or JSON lines. `RUST_LOG`, when set, overrides `[log] level`.
fn init_logging(log: &Log) {
    use tracing_subscriber::EnvFilter;
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let (filter, bad_env) = match from_env.as_deref().map(EnvFilter::try_new) {
        Some(Ok(filter)) => (filter, None),
        Some(Err(error)) => (EnvFilter::new(&log.level), Some(error)),
        None => (EnvFilter::new(&log.level), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    if let Some(error) = bad_env {
        tracing::warn!(%error, level = %log.level, "RUST_LOG is not valid; using [log] level");
    }
}

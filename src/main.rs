//! The `redis-ambassador` binary: command line, logging, signals. Everything else is in
//! the library.
//!
//! Exit status: 0 after a clean shutdown (the first SIGTERM/SIGINT starts the drain of
//! `shutdown`); 1 for a start-up error (bad config, missing secret, an address that cannot
//! be bound) and when a second signal cuts the drain short.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use redis_ambassador::config::{Config, Log, LogFormat};
use redis_ambassador::credentials::Secrets;
use redis_ambassador::shutdown::Signals;

/// A protocol-aware Redis proxy that runs beside your application.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Path of the TOML config file.
    #[arg(long, value_name = "PATH")]
    config: PathBuf,
    /// Validate the config (and read the secrets it names), then exit.
    #[arg(long)]
    check: bool,
}

/// How long the runtime's blocking threads (a DNS lookup) may delay the exit.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("redis-ambassador: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config)?;
    init_logging(&config.log);
    let secrets = Secrets::load(&config)?;
    if cli.check {
        println!("{}: configuration is valid", cli.config.display());
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
            let signal = signals.recv().await;
            tracing::info!(signal, "shutdown signal received");
            first.cancel();
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

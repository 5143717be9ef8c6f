//! redis-ambassador: a protocol-aware Redis (RESP) proxy that runs beside an application as
//! its ambassador. The application talks to `localhost:6379` as it always did; the
//! ambassador answers the connection-scoped commands itself and forwards the rest to the
//! real Redis over a pool of connections authenticated with credentials the application
//! never sees.
//!
//! # Layout
//!
//! - [`config`]: the TOML config, strict, with defaults and validation.
//! - [`secret`]: the redacted `Secret` type and where secrets are read from.
//! - [`protocol`]: RESP — the client request scanner, the upstream reply scanner, encoders.
//! - [`command`]: the command table (what is local, refused, or forwarded).
//! - [`session`]: one client's state machine and its read–plan–execute loop.
//! - [`upstream`]: the bb8 pool of authenticated upstream connections.
//! - [`metrics`]: metric names and the handles the hot path records through.
//! - [`replies`]: every reply the proxy writes itself, with Redis's wording.
//! - [`server`]: the listener and `max_clients`.
//!
//! [`run`] ties them together.

pub mod command;
pub mod config;
pub mod metrics;
pub mod protocol;
pub mod replies;
pub mod secret;
pub mod server;
pub mod session;
pub mod upstream;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use config::{Config, Secrets};
use session::Shared;
use upstream::Upstream;

/// Runs the proxy until `shutdown` fires. Fails only if the listener cannot be bound.
pub async fn run(
    config: Config,
    secrets: Secrets,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(config.listen.address)
        .await
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", config.listen.address),
            )
        })?;
    tracing::info!(
        address = %config.listen.address,
        upstream = %config.upstream.address,
        client_auth = secrets.client_password.is_some(),
        "redis-ambassador listening"
    );
    let upstream = Upstream::new(&config, secrets.upstream_password);
    let shared = Arc::new(Shared::new(
        upstream,
        secrets.client_password,
        config.client_username().to_owned(),
        config.request_limits(),
    ));
    let warm = shared.clone();
    tokio::spawn(async move { warm.upstream.warm_up().await });
    server::serve(listener, shared, config.listen.max_clients, shutdown).await;
    Ok(())
}

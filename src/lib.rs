//! redis-ambassador: a protocol-aware Redis (RESP) proxy that runs beside an application as
//! its ambassador. The application talks to `localhost:6379` as it always did; the
//! ambassador answers the connection-scoped commands itself and forwards the rest to the
//! real Redis over a pool of connections authenticated with credentials the application
//! never sees.
//!
//! # Layout
//!
//! A request's path, top to bottom; each layer imports only from the layers below it
//! (`scripts/layers` checks that the import graph has no circle and no upward edge):
//!
//! - app — [`server`]: the listener, `max_clients`, the TLS handshake with clients, one
//!   session per client; [`admin`]: `/metrics`, `/healthz`, `/readyz`, `/startup`,
//!   `/quitquitquit` and the readiness prober; [`shutdown`]: signals and the drain;
//!   [`rotation`]: watches secret files; [`wait`]: the `wait` command's client of
//!   `/readyz`.
//! - [`session`]: one client, as a short loop over named steps: `io` (read, write),
//!   `plan` (classify once, then `local` answers, `transaction` queues, `route` to a
//!   cluster node), `execute` (run the batch upstream, replies in order), `relay` (pub/sub,
//!   MONITOR, tracking); `state` holds what the session knows; `clients` is the registry
//!   of the application's connections (CLIENT LIST, KILL, UNBLOCK, TRACKING … REDIRECT).
//! - [`policy`]: per-user command rules (Redis ACL syntax), resolved against the
//!   upstream's own `COMMAND` catalogue and checked as Redis's ACL checks them.
//! - [`cluster`]: Redis Cluster — slots, key positions, the slot map, where a request goes
//!   (`route`), commands answered by several nodes (`scatter`), `-MOVED`/`-ASK` settled
//!   (`router`), shard-channel links (`shards`).
//! - [`upstream`]: connections to Redis — the shared multiplexed lanes (`mux`), the bb8
//!   pool of dedicated connections (`manager`, `mod`), Sentinel (`sentinel`), and the
//!   layer's typed error (`UpstreamError`: side, may it have run, retry safety).
//! - [`credentials`] reads what the config names (passwords, TLS certificates and keys)
//!   into `Secrets`; [`auth`]: the users clients may authenticate as, in constant time.
//! - [`tls`]: TLS settings and handshake failures explained; [`secret`]: the redacted
//!   `Secret`, how a secret is read, the `RotatingSecret` holder.
//! - [`config`]: the TOML schema, strict, with defaults, settings and validation; it names
//!   where secrets and TLS files are, and reads none of them.
//! - [`metrics`]: metric names and the handles the hot path records through; [`replies`]:
//!   every reply the proxy writes itself, with Redis's wording; [`command`]: the command
//!   table (local, blocking, subscribing, spread over cluster nodes, refused, forwarded).
//! - [`protocol`]: RESP — the request scanner, the reply scanner, encoders; [`net`]: the
//!   byte streams, plain TCP or TLS, and their halves.
//!
//! [`run`] ties them together.

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod command;
pub mod config;
pub mod credentials;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod protocol;
pub mod replies;
pub mod rotation;
pub mod secret;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod tls;
pub mod upstream;
pub mod wait;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use admin::{Admin, Credentials, ProbeSettings, Readiness};
use auth::ClientAuth;
use config::Config;
use credentials::Secrets;
use session::Shared;
use shutdown::Lifecycle;
use upstream::Upstream;

/// The client listener's accept queue, as Redis's `tcp-backlog` default (the kernel caps it
/// at `net.core.somaxconn`): a burst of connects waits there instead of being refused.
const LISTEN_BACKLOG: u32 = 511;

/// Runs the proxy: installs the metrics recorder, binds the admin address and the Redis
/// listener, serves until `shutdown` fires (the first SIGTERM/SIGINT, or an enabled `POST
/// /quitquitquit`, which cancels it), then drains as [`shutdown`] describes and returns.
/// Fails only at start-up, when an address cannot be bound.
pub async fn run(
    config: Config,
    secrets: Secrets,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // Before anything records: handles made earlier would be no-ops for good.
    let metrics_handle = metrics::install();
    let admin_listener = admin::bind(config.metrics.address).await?;
    let listener = net::listen(config.listen.address, LISTEN_BACKLOG).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot listen on {} ([listen] address): {e}",
                config.listen.address
            ),
        )
    })?;
    // What was bound (port 0 picks one), not what was asked for.
    let bound = listener.local_addr().unwrap_or(config.listen.address);
    let admin_bound = admin_listener
        .local_addr()
        .unwrap_or(config.metrics.address);
    // The first line of the log: what runs, from which file, where it listens (as bound),
    // what it forwards to (redacted), how.
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config.loaded_from().map_or("-".into(), |p| p.display().to_string()),
        address = %bound,
        admin = %admin_bound,
        upstream = %config.upstream.printable_addresses(),
        mode = %config.upstream.mode,
        worker_threads = config.runtime.threads(),
        upstream_tls = config.upstream.tls_enabled(),
        client_tls = secrets.listen_tls.is_some(),
        client_auth = secrets.client_users.is_some(),
        "redis-ambassador started"
    );
    let all_secrets = secrets.all();
    let credentials = Credentials::new(
        &config.upstream,
        secrets.upstream_password.as_ref().map(|s| s.describe()),
        secrets.sentinel_password.as_ref().map(|s| s.describe()),
    );
    rotation::warn_unwatchable(&all_secrets, &config.secrets);
    // Validated with the config already; an error here is still a start-up error, never
    // users running without their rules.
    let policies = match &config.client {
        Some(client) => client
            .policies()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?,
        None => Vec::new(),
    };
    let upstream = Upstream::new(&config, &secrets);
    let identities = upstream::identities::Identities::new(&upstream, &secrets.identities);
    let upstream_auth = config.client.as_ref().is_some_and(|c| c.upstream_auth);
    let cluster = (config.upstream.mode == config::Mode::Cluster)
        .then(|| cluster::Cluster::new(&config, &secrets));
    let mut shared = Shared::new(
        upstream,
        ClientAuth::new(secrets.client_users),
        config.request_limits(),
    )
    .with_output_limits(config.output_limits())
    .with_max_in_flight(config.limits.max_in_flight)
    .with_policies(Arc::new(policy::Policies::new(policies)))
    .with_identities(identities, upstream_auth);
    if let Some(cluster) = cluster {
        shared = shared.with_cluster(cluster);
    }
    let shared = Arc::new(shared);
    if !shared.policies.is_empty() {
        // The users' command rules need the upstream's command table: read it now, in the
        // background, so the first request of such a user rarely waits for it (it is read
        // then if this fails; see `policy::users`).
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = shared.policies.get(0, &shared.upstream).await;
        });
    }

    // The admin endpoint, the prober and the secret watcher live as long as this function.
    let admin_stop = CancellationToken::new();
    let _admin_guard = admin_stop.clone().drop_guard();
    rotation::spawn(all_secrets, config.secrets.clone(), admin_stop.clone());
    let probe = ProbeSettings::new(&config, credentials);
    let readiness = Arc::new(Readiness::new(
        probe.stale_after(config.upstream.pool_wait_timeout()),
    ));
    // An enabled POST /quitquitquit cancels `shutdown`, as the first signal does.
    let quit = config.metrics.quitquitquit.then(|| shutdown.clone());
    let admin = Arc::new(Admin::new(
        metrics_handle.clone(),
        shared.clone(),
        readiness.clone(),
        quit,
    ));
    tokio::spawn(admin.serve(admin_listener, config.metrics.clone(), admin_stop.clone()));
    // The first probe runs at once: it also opens the pool's first connection, so that
    // HELLO and SELECT can answer without waiting for a connect.
    tokio::spawn(admin::probe_upstream(
        shared.clone(),
        readiness.clone(),
        probe,
        admin_stop.clone(),
    ));

    let lifecycle = Lifecycle::new();
    readiness.set_listening();
    let server = tokio::spawn(server::serve(
        listener,
        shared,
        secrets.listen_tls,
        config.listen.max_clients,
        lifecycle.clone(),
    ));
    shutdown.cancelled().await;
    lifecycle.drain(&config.shutdown, &readiness, server).await;
    Ok(())
}

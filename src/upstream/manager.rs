//! How one upstream connection is made and kept honest: where connections go (`Target`:
//! a fixed address, or the master the Sentinels name), the bb8 manager that opens and
//! checks them (`Manager`), and the connect failures and reconnect backoff shared by
//! every checkout (`Health`). The pool and the lanes (in `mod.rs` and `mux.rs`) use these;
//! nothing here knows about them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bb8::{ErrorSink, ManageConnection, PooledConnection};
use tokio::sync::watch;
use tokio::time::Instant;

use super::conn::{ServerInfo, UpstreamConn};
use super::error::{UnavailableReason, UpstreamError};
use super::{conn, sentinel};
use crate::config::{Config, Mode};
use crate::credentials::Secrets;
use crate::secret::{Reload, RotatingSecret, Secret};

/// Connect failures, published for checkouts that are waiting, and the reconnect backoff.
///
/// After a failed connect every checkout fails fast with that error until `retry_at`; the
/// wait doubles with each failed round (from `reconnect_backoff_ms` up to
/// `reconnect_backoff_max_ms`) and is jittered down to half, so that many proxies in front of
/// one Redis that restarts do not all dial it again at the same instant.
#[derive(Debug)]
pub(super) struct Health {
    pub(super) state: Mutex<HealthState>,
    pub(super) failures: watch::Sender<u64>,
    pub(super) backoff: Duration,
    pub(super) backoff_max: Duration,
}

#[derive(Debug, Default)]
pub(super) struct HealthState {
    /// The last connect failure; cleared by a successful connect.
    last_failure: Option<UpstreamError>,
    /// Until when checkouts fail fast instead of dialling.
    retry_at: Option<Instant>,
    /// Failed rounds since the last success (failures that end while a backoff is already
    /// running belong to the round that started it).
    rounds: u32,
}

impl Health {
    pub(super) fn new(backoff: Duration, backoff_max: Duration) -> Health {
        Health {
            state: Mutex::new(HealthState::default()),
            failures: watch::Sender::new(0),
            backoff,
            backoff_max: backoff_max.max(backoff),
        }
    }

    /// Records a failed connect: logged when the upstream goes down or its error changes
    /// (not at every retry), counted, and published to waiting checkouts.
    pub(super) fn connect_failed(&self, error: UpstreamError) {
        let repeated = self.last().as_ref() == Some(&error);
        if repeated {
            tracing::debug!(%error, "upstream connect failed again");
        } else {
            tracing::warn!(%error, "upstream connect failed");
        }
        let global = crate::metrics::global();
        match error {
            UpstreamError::AuthFailed(_) => global.upstream_connect_failures_auth.increment(1),
            _ => global.upstream_connect_failures_unavailable.increment(1),
        }
        self.failed(error);
    }

    pub(super) fn failed(&self, error: UpstreamError) {
        if let Ok(mut state) = self.state.lock() {
            let now = Instant::now();
            let in_backoff = state.retry_at.is_some_and(|at| now < at);
            if !in_backoff {
                state.rounds = state.rounds.saturating_add(1);
                state.retry_at = Some(now + self.delay(state.rounds));
            }
            state.last_failure = Some(error);
        }
        self.failures.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The wait after `rounds` failed rounds: `backoff · 2^(rounds-1)`, capped, then a
    /// uniformly random point in its upper half.
    pub(super) fn delay(&self, rounds: u32) -> Duration {
        let doubling = 1u32 << rounds.saturating_sub(1).min(16);
        let full = self.backoff.saturating_mul(doubling).min(self.backoff_max);
        full / 2 + full.mul_f64(fastrand::f64() / 2.0)
    }

    pub(super) fn succeeded(&self) {
        if let Ok(mut state) = self.state.lock() {
            *state = HealthState::default();
        }
    }

    /// The last failure while its backoff runs: checkouts fail fast with it.
    pub(super) fn backing_off(&self) -> Option<UpstreamError> {
        let state = self.state.lock().ok()?;
        match (&state.last_failure, state.retry_at) {
            (Some(error), Some(at)) if Instant::now() < at => Some(error.clone()),
            _ => None,
        }
    }

    pub(super) fn last(&self) -> Option<UpstreamError> {
        self.state.lock().ok()?.last_failure.clone()
    }

    /// For a request that needs a connection while the backoff runs: instead of the last
    /// failure (which may be older than a Redis that has just come back), waits until the
    /// backoff ends — at most `limit` (the connect timeout) — and lets the caller dial.
    /// The backoff still paces the attempts: waiters dial when it ends, not before. `Some`:
    /// an attempt made after this request arrived failed meanwhile, and its error is the
    /// request's (fresh, and one dial instead of one per waiter).
    pub(super) async fn wait_for_retry(&self, limit: Duration) -> Option<UpstreamError> {
        let retry_at = {
            let state = self.state.lock().ok()?;
            match (&state.last_failure, state.retry_at) {
                (Some(_), Some(at)) if Instant::now() < at => at,
                _ => return None,
            }
        };
        let mut failures = self.failures.subscribe();
        failures.borrow_and_update();
        let until = retry_at.min(Instant::now() + limit);
        tokio::select! {
            () = tokio::time::sleep_until(until) => None,
            _ = failures.changed() => self.last(),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct HealthSink(pub(super) Arc<Health>);

impl ErrorSink<UpstreamError> for HealthSink {
    fn sink(&self, error: UpstreamError) {
        if error.is_connect_failure() {
            self.0.connect_failed(error);
        } else {
            if matches!(error, UpstreamError::Stale(_)) {
                crate::metrics::global().stale_connections.increment(1);
            }
            tracing::debug!(%error, "pooled upstream connection dropped");
        }
    }

    fn boxed_clone(&self) -> Box<dyn ErrorSink<UpstreamError>> {
        Box::new(self.clone())
    }
}

/// Where connections go.
#[derive(Debug, Clone)]
pub enum Target {
    /// One server (`[upstream] mode = "standalone"`).
    Address(Arc<str>),
    /// The master the Sentinels name (`mode = "sentinel"`).
    Sentinel(Arc<sentinel::Sentinels>),
}

impl Target {
    /// `address` (a cluster node), or where `config` says; in sentinel mode this starts
    /// the task that follows the Sentinels.
    pub(super) fn new(config: &Config, secrets: &Secrets, address: Option<&str>) -> Target {
        if let Some(address) = address {
            return Target::Address(address.into());
        }
        match config.upstream.mode {
            Mode::Sentinel => {
                let dialer = conn::Dialer {
                    tls: secrets.upstream_tls.clone(),
                    username: config.upstream.sentinel_username.clone(),
                    connect_timeout: config.upstream.connect_timeout(),
                    max_reply_depth: config.limits.max_reply_depth,
                    readonly: false,
                    enter_as: None,
                };
                let sentinels = Arc::new(sentinel::Sentinels::new(
                    config.upstream.seeds().map(str::to_owned).collect(),
                    config.upstream.master_name.clone().unwrap_or_default(),
                    dialer,
                    secrets.sentinel_password.clone(),
                ));
                tokio::spawn(sentinels.clone().watch());
                Target::Sentinel(sentinels)
            }
            Mode::Standalone | Mode::Cluster => Target::Address(config.upstream.endpoint().into()),
        }
    }

    /// Changes when the address connections should go to changes: a connection made in
    /// another generation is replaced before its next use.
    pub fn generation(&self) -> u64 {
        match self {
            Target::Address(_) => 0,
            Target::Sentinel(sentinels) => sentinels.generation(),
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Target::Address(address) => address.to_string(),
            Target::Sentinel(sentinels) => format!("master `{}`", sentinels.master_name()),
        }
    }
}

/// The bb8 manager: knows how to open and check one upstream connection.
pub struct Manager {
    pub(super) target: Target,
    /// TLS, the user, the handshake's limits, and (a cluster replica serving reads) the
    /// `READONLY` every connection says, lanes and pooled connections alike.
    pub(super) dialer: conn::Dialer,
    pub(super) password: Option<Arc<RotatingSecret>>,
    /// The last password the upstream accepted: tried when the current one is refused.
    pub(super) last_good: Arc<Mutex<Option<Secret>>>,
    /// Connections are being opened with `last_good` because the current password is
    /// refused (logged as a warning once per episode).
    pub(super) on_fallback: Arc<AtomicBool>,
    pub(super) health: Arc<Health>,
    pub(super) info: Arc<Mutex<Option<ServerInfo>>>,
}

impl Manager {
    /// One attempt with one password.
    pub(super) async fn connect_with(
        &self,
        password: Option<&Secret>,
    ) -> Result<UpstreamConn, UpstreamError> {
        let (address, generation) = match &self.target {
            Target::Address(address) => (address.to_string(), 0),
            Target::Sentinel(sentinels) => sentinels.master().await?,
        };
        let connected = UpstreamConn::connect(&self.dialer, &address, password).await;
        let (mut conn, info) = match (connected, &self.target) {
            (Ok(pair), _) => pair,
            (Err(error), Target::Sentinel(sentinels)) => {
                if !matches!(error, UpstreamError::AuthFailed(_)) {
                    sentinels.forget(&address);
                }
                return Err(error);
            }
            (Err(error), Target::Address(_)) => return Err(error),
        };
        if let Target::Sentinel(sentinels) = &self.target {
            // A demoted master that came back is a replica now: never write to it.
            if &info.role[..] != b"master" {
                sentinels.forget(&address);
                return Err(UnavailableReason::NotMaster {
                    address,
                    role: String::from_utf8_lossy(&info.role).into_owned(),
                    master: sentinels.master_name().to_owned(),
                }
                .into());
            }
        }
        conn.target = generation;
        if let Ok(mut slot) = self.info.lock() {
            *slot = Some(info);
        }
        Ok(conn)
    }

    /// Connects with the current password; when the server refuses it, re-reads the
    /// secret (and tries the new value if it changed), then tries the last password that
    /// worked. Returns the first error if nothing gets in.
    pub(super) async fn connect_rotating(
        &self,
        secret: &RotatingSecret,
    ) -> Result<UpstreamConn, UpstreamError> {
        let current = secret.current();
        let error = match self.connect_with(Some(&current)).await {
            Ok(conn) => {
                self.accepted(current, false);
                return Ok(conn);
            }
            Err(error @ UpstreamError::AuthFailed(_)) => error,
            Err(other) => return Err(other),
        };
        let mut tried = vec![current];
        // The secret may have rotated since it was last read: do not wait for the watcher.
        if secret.reload() == Reload::Changed {
            let new = secret.current();
            tracing::info!("upstream refused the password; retrying with the rotated one");
            match self.connect_with(Some(&new)).await {
                Ok(conn) => {
                    self.accepted(new, false);
                    return Ok(conn);
                }
                Err(UpstreamError::AuthFailed(_)) => tried.push(new),
                Err(other) => return Err(other),
            }
        }
        let last_good = self.last_good.lock().ok().and_then(|g| g.clone());
        if let Some(good) = last_good.filter(|g| !tried.contains(g)) {
            if let Ok(conn) = self.connect_with(Some(&good)).await {
                self.accepted(good, true);
                return Ok(conn);
            }
        }
        Err(error)
    }

    /// Records the password a connect succeeded with.
    pub(super) fn accepted(&self, password: Secret, fallback: bool) {
        let was = self.on_fallback.swap(fallback, Ordering::Relaxed);
        if fallback && !was {
            tracing::warn!(
                "upstream refuses the current password but still accepts the previous one; \
                 using the previous one for new connections until the current one works"
            );
        } else if !fallback && was {
            tracing::info!("upstream accepts the current password again");
        }
        if !fallback && let Ok(mut good) = self.last_good.lock() {
            *good = Some(password);
        }
    }
}

impl ManageConnection for Manager {
    type Connection = UpstreamConn;
    type Error = UpstreamError;

    async fn connect(&self) -> Result<UpstreamConn, UpstreamError> {
        // Read first: a rotation during the connect makes this connection an old one.
        let generation = self.password.as_ref().map_or(0, |s| s.generation());
        let mut conn = match &self.password {
            Some(secret) => self.connect_rotating(secret).await?,
            None => self.connect_with(None).await?,
        };
        conn.credentials = generation;
        self.health.succeeded();
        tracing::debug!(target = %self.target.describe(), "upstream connection established");
        Ok(conn)
    }

    async fn is_valid(&self, conn: &mut UpstreamConn) -> Result<(), UpstreamError> {
        if self
            .password
            .as_ref()
            .is_some_and(|s| s.generation() != conn.credentials)
        {
            // The password rotated since this connection logged in: replace it now, while
            // nobody uses it (Redis would keep it working, but the old password may go).
            return Err(UpstreamError::Stale("the upstream password rotated"));
        }
        if conn.target != self.target.generation() {
            return Err(UpstreamError::Stale("the master changed"));
        }
        conn.probe().map_err(UpstreamError::Stale)
    }

    fn has_broken(&self, conn: &mut UpstreamConn) -> bool {
        conn.broken || conn.retired
    }
}

pub type PooledConn<'a> = PooledConnection<'a, Manager>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::IoFailure;

    fn refused() -> UpstreamError {
        UnavailableReason::Connect {
            address: "h:1".to_owned(),
            error: IoFailure::from(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        }
        .into()
    }

    #[test]
    fn backoff_doubles_per_round_with_jitter_and_a_cap() {
        let health = Health::new(Duration::from_millis(100), Duration::from_millis(1000));
        for (rounds, full_ms) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let full = Duration::from_millis(full_ms);
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..200 {
                let delay = health.delay(rounds);
                assert!(delay >= full / 2 && delay <= full, "{rounds}: {delay:?}");
                seen.insert(delay);
            }
            assert!(seen.len() > 1, "no jitter after {rounds} rounds");
        }
    }

    #[test]
    fn failures_during_a_backoff_belong_to_its_round() {
        let health = Health::new(Duration::from_secs(60), Duration::from_secs(600));
        assert!(health.backing_off().is_none());
        // Four lanes failing together are one round, not four doublings.
        for _ in 0..4 {
            health.failed(refused());
        }
        let state = health.state.lock().map(|s| s.rounds).ok();
        assert_eq!(state, Some(1));
        assert!(health.backing_off().is_some());
        health.succeeded();
        assert!(health.backing_off().is_none());
        assert!(health.last().is_none());
    }

    #[test]
    fn a_backoff_ends() {
        let health = Health::new(Duration::from_millis(2), Duration::from_millis(2));
        health.failed(refused());
        std::thread::sleep(Duration::from_millis(5));
        assert!(health.backing_off().is_none());
        // Still unhealthy until a connect succeeds.
        assert!(health.last().is_some());
        health.failed(refused());
        let rounds = health.state.lock().map(|s| s.rounds).ok();
        assert_eq!(rounds, Some(2));
    }
}

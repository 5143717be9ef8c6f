//! The upstream side: the shared, multiplexed lanes (`mux`) that carry most traffic, a bb8
//! pool of dedicated connections for clients in a connection-bound state (`Pinned`), what
//! the proxy knows about the server, and the health that makes failures fast and distinct.
//!
//! bb8 on its own makes a waiter sit out the whole pool timeout when connecting fails
//! (bb8#141). Every connect failure is therefore also published here, and a checkout that
//! sees one returns that error at once; for a backoff after a failure (doubling from
//! `reconnect_backoff_ms` to `reconnect_backoff_max_ms` with each failed round, jittered)
//! further checkouts fail fast with the same error instead of dialling again, which caps the
//! reconnect rate while the upstream is down.
//!
//! The upstream password may rotate (see `rotation`): every connect reads the current
//! value, so new connections use new credentials while established ones keep working
//! (Redis does not drop authenticated connections when a password changes). A connect the
//! server refuses re-reads the secret file at once and, if it changed, tries again; if the
//! current password is still refused, the last password that worked is tried too, which
//! covers a Secret updated before Redis was.
//!
//! With `[upstream] tls` every connection, shared lanes and pinned ones alike, runs the TLS
//! handshake inside `connect_timeout_ms` (see `tls` for the settings and `net` for the
//! streams); a TLS failure is `UpstreamError::Tls`, one line saying what to check.
//!
//! Every failure is an `UpstreamError` (see `error`): typed, with the side that failed and
//! whether the command may have run; its text is rendered for the client in `replies`.

pub mod conn;
mod error;
pub mod mux;
pub mod sentinel;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bb8::{ErrorSink, ManageConnection, Pool, PooledConnection, RunError};
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

pub use conn::{ConnState, UpstreamConn};
pub use error::{
    AuthFailure, IoFailure, IoOp, LostReason, Side, TlsFailure, UnavailableReason, UpstreamError,
};

use crate::config::{Config, Mode, Secrets};
use crate::secret::{Reload, RotatingSecret, Secret};

/// What the proxy learned about the upstream server at connect time.
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    pub server: Bytes,
    pub version: Bytes,
    pub mode: Bytes,
    pub role: Bytes,
    /// From `CONFIG GET databases`; `None` when the server would not say.
    pub databases: Option<u32>,
    /// Whether the server speaks RESP3 (has HELLO).
    pub resp3: bool,
}

/// Connect failures, published for checkouts that are waiting, and the reconnect backoff.
///
/// After a failed connect every checkout fails fast with that error until `retry_at`; the
/// wait doubles with each failed round (from `reconnect_backoff_ms` up to
/// `reconnect_backoff_max_ms`) and is jittered down to half, so that many proxies in front of
/// one Redis that restarts do not all dial it again at the same instant.
#[derive(Debug)]
struct Health {
    state: Mutex<HealthState>,
    failures: watch::Sender<u64>,
    backoff: Duration,
    backoff_max: Duration,
}

#[derive(Debug, Default)]
struct HealthState {
    /// The last connect failure; cleared by a successful connect.
    last_failure: Option<UpstreamError>,
    /// Until when checkouts fail fast instead of dialling.
    retry_at: Option<Instant>,
    /// Failed rounds since the last success (failures that end while a backoff is already
    /// running belong to the round that started it).
    rounds: u32,
}

impl Health {
    fn new(backoff: Duration, backoff_max: Duration) -> Health {
        Health {
            state: Mutex::new(HealthState::default()),
            failures: watch::Sender::new(0),
            backoff,
            backoff_max: backoff_max.max(backoff),
        }
    }

    /// Records a failed connect: logged when the upstream goes down or its error changes
    /// (not at every retry), counted, and published to waiting checkouts.
    fn connect_failed(&self, error: UpstreamError) {
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

    fn failed(&self, error: UpstreamError) {
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
    fn delay(&self, rounds: u32) -> Duration {
        let doubling = 1u32 << rounds.saturating_sub(1).min(16);
        let full = self.backoff.saturating_mul(doubling).min(self.backoff_max);
        full / 2 + full.mul_f64(fastrand::f64() / 2.0)
    }

    fn succeeded(&self) {
        if let Ok(mut state) = self.state.lock() {
            *state = HealthState::default();
        }
    }

    /// The last failure while its backoff runs: checkouts fail fast with it.
    fn backing_off(&self) -> Option<UpstreamError> {
        let state = self.state.lock().ok()?;
        match (&state.last_failure, state.retry_at) {
            (Some(error), Some(at)) if Instant::now() < at => Some(error.clone()),
            _ => None,
        }
    }

    fn last(&self) -> Option<UpstreamError> {
        self.state.lock().ok()?.last_failure.clone()
    }
}

#[derive(Debug, Clone)]
struct HealthSink(Arc<Health>);

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
    fn new(config: &Config, secrets: &Secrets, address: Option<&str>) -> Target {
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

    fn describe(&self) -> String {
        match self {
            Target::Address(address) => address.to_string(),
            Target::Sentinel(sentinels) => format!("master `{}`", sentinels.master_name()),
        }
    }
}

/// The bb8 manager: knows how to open and check one upstream connection.
pub struct Manager {
    target: Target,
    /// TLS, the user, the handshake's limits, and (a cluster replica serving reads) the
    /// `READONLY` every connection says, lanes and pooled connections alike.
    dialer: conn::Dialer,
    password: Option<Arc<RotatingSecret>>,
    /// The last password the upstream accepted: tried when the current one is refused.
    last_good: Arc<Mutex<Option<Secret>>>,
    /// Connections are being opened with `last_good` because the current password is
    /// refused (logged as a warning once per episode).
    on_fallback: Arc<AtomicBool>,
    health: Arc<Health>,
    info: Arc<Mutex<Option<ServerInfo>>>,
}

impl Manager {
    /// One attempt with one password.
    async fn connect_with(&self, password: Option<&Secret>) -> Result<UpstreamConn, UpstreamError> {
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
    async fn connect_rotating(
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
    fn accepted(&self, password: Secret, fallback: bool) {
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
        conn.broken
    }
}

pub type PooledConn<'a> = PooledConnection<'a, Manager>;

/// A dedicated upstream connection held by one client for as long as its connection-bound
/// state lasts (MULTI, WATCH, a blocking command, pub/sub, MONITOR, tracking). Dropping it
/// returns the connection to the pinned pool if it is clean, and frees the pin.
pub struct Pinned {
    conn: PooledConnection<'static, Manager>,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for Pinned {
    type Target = UpstreamConn;
    fn deref(&self) -> &UpstreamConn {
        &self.conn
    }
}

impl std::ops::DerefMut for Pinned {
    fn deref_mut(&mut self) -> &mut UpstreamConn {
        &mut self.conn
    }
}

/// The pool and what is known about the server behind it.
pub struct Upstream {
    /// The shared path: multiplexed lanes (see `mux`).
    pub mux: mux::Mux,
    target: Target,
    /// Cluster mode: requests sent to this node (`node` label: its address).
    requests: Option<metrics::Counter>,
    lanes: usize,
    /// Dedicated connections: a separate pool, so clients holding one never starve the
    /// shared pool, bounded by `pins`.
    pinned_pool: Pool<Manager>,
    pins: Arc<Semaphore>,
    max_pinned: usize,
    health: Arc<Health>,
    info: Arc<Mutex<Option<ServerInfo>>>,
    pool_wait_timeout: Duration,
    /// `None` when disabled.
    pub command_timeout: Option<Duration>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// The passwords are read again at every connect, so a rotated secret reaches new
    /// connections. In sentinel mode this starts the task that follows the Sentinels.
    pub fn new(config: &Config, secrets: &Secrets) -> Upstream {
        Upstream::build(config, secrets, None, false)
    }

    /// An upstream at `address` (one node of a cluster), with `config`'s other settings.
    pub fn for_address(config: &Config, secrets: &Secrets, address: &str) -> Upstream {
        Upstream::build(config, secrets, Some(address), false)
    }

    /// Like [`for_address`](Upstream::for_address), for a cluster replica that serves
    /// reads: every connection it opens sends `READONLY` after authenticating.
    pub fn for_replica(config: &Config, secrets: &Secrets, address: &str) -> Upstream {
        Upstream::build(config, secrets, Some(address), true)
    }

    fn build(
        config: &Config,
        secrets: &Secrets,
        address: Option<&str>,
        readonly: bool,
    ) -> Upstream {
        let password = secrets.upstream_password.clone();
        let target = Target::new(config, secrets, address);
        let health = Arc::new(Health::new(
            config.upstream.reconnect_backoff(),
            config.upstream.reconnect_backoff_max(),
        ));
        let info = Arc::new(Mutex::new(None));
        let manager = Manager {
            target: target.clone(),
            dialer: conn::Dialer {
                tls: secrets.upstream_tls.clone(),
                username: config.upstream.username.clone(),
                connect_timeout: config.upstream.connect_timeout(),
                max_reply_depth: config.limits.max_reply_depth,
                readonly,
            },
            password: password.clone(),
            last_good: Arc::new(Mutex::new(None)),
            on_fallback: Arc::new(AtomicBool::new(false)),
            health: health.clone(),
            info: info.clone(),
        };

        let max_pinned = config.upstream.max_pinned;
        let pinned_pool = Pool::builder()
            .max_size(u32::try_from(max_pinned).unwrap_or(u32::MAX))
            .min_idle(None)
            .idle_timeout(Some(Duration::from_secs(60)))
            .connection_timeout(config.upstream.pool_wait_timeout())
            .retry_connection(false)
            .test_on_check_out(true)
            .error_sink(Box::new(HealthSink(health.clone())))
            .build_unchecked(manager);
        let mux = mux::Mux::new(
            config.upstream.pool_size as usize,
            mux::LaneContext {
                pool: pinned_pool.clone(),
                password: password.clone(),
                health: health.clone(),
                target: target.clone(),
                command_timeout: config.upstream.command_timeout(),
                output_limit: config.limits.client_output_hard_limit,
            },
        );
        let requests = address.map(|address| {
            metrics::counter!(crate::metrics::CLUSTER_NODE_REQUESTS_TOTAL, "node" => address.to_owned())
        });
        Upstream {
            mux,
            target,
            requests,
            lanes: config.upstream.pool_size as usize,
            pinned_pool,
            pins: Arc::new(Semaphore::new(max_pinned)),
            max_pinned,
            health,
            info,
            pool_wait_timeout: config.upstream.pool_wait_timeout(),
            command_timeout: config.upstream.command_timeout(),
        }
    }

    /// Sends `chunks` (whole requests expecting `replies` replies) on a shared lane, in
    /// connection state `state`, and returns the replies.
    pub async fn call(
        &self,
        state: ConnState,
        chunks: Vec<Bytes>,
        replies: usize,
    ) -> Result<Vec<(Bytes, crate::protocol::ReplyFrame)>, UpstreamError> {
        let (reply_tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        self.mux
            .submit(mux::Job {
                first: state,
                last: state,
                db_unknown: false,
                chunks,
                replies,
                reply_tx,
                pending: pending.clone(),
                overflow: Arc::new(tokio::sync::Notify::new()),
            })
            .await?;
        let mut out = Vec::with_capacity(replies);
        while out.len() < replies {
            match rx.recv().await {
                Some(reply) => {
                    let reply = reply?;
                    pending.fetch_sub(reply.0.len(), Ordering::AcqRel);
                    out.push(reply);
                }
                None => return Err(LostReason::LaneStopped.into()),
            }
        }
        Ok(out)
    }

    /// Like [`call`](Upstream::call), on a dedicated connection (for a blocking command,
    /// which must not hold up a shared lane). No timeout: the command's own applies.
    pub async fn call_pinned(
        &self,
        state: ConnState,
        chunks: Vec<Bytes>,
        replies: usize,
    ) -> Result<Vec<(Bytes, crate::protocol::ReplyFrame)>, UpstreamError> {
        let mut pinned = self.pin().await?;
        let conn: &mut UpstreamConn = &mut pinned;
        let mut all = Vec::with_capacity(chunks.len() + 1);
        let swallow = conn::push_transition(&mut all, conn.state, state);
        all.extend(chunks);
        // Armed until every reply is read.
        conn.broken = true;
        conn.write_all(&all, None).await?;
        conn.read_state_changes(swallow, None, |reply| {
            UnavailableReason::StateChangeRefused { reply }.into()
        })
        .await?;
        let mut out = Vec::with_capacity(replies);
        for _ in 0..replies {
            out.push(conn.read_reply(None).await?);
        }
        conn.state = state;
        conn.broken = false;
        Ok(out)
    }

    /// Counts `n` requests sent to this node (cluster mode; nothing otherwise).
    pub fn count_requests(&self, n: usize) {
        if let Some(counter) = &self.requests {
            counter.increment(n as u64);
        }
    }

    /// Whether a connect has just failed and the reconnect backoff runs: a request sent
    /// now would fail at once with that error.
    pub fn backing_off(&self) -> bool {
        self.health.backing_off().is_some()
    }

    /// The address this upstream dials (a description in sentinel mode).
    pub fn address(&self) -> String {
        self.target.describe()
    }

    /// Checks a connection out of the dedicated pool for a short exchange (the readiness
    /// probe, server information). Fails at once with the connect error when the upstream
    /// cannot be reached or refuses the credentials.
    pub async fn get(&self) -> Result<PooledConn<'_>, UpstreamError> {
        let started = Instant::now();
        let result = self.checkout(self.pinned_pool.get()).await;
        let global = crate::metrics::global();
        global.pool_wait.record(started.elapsed().as_secs_f64());
        if matches!(result, Err(UpstreamError::PoolExhausted(_))) {
            global.pool_exhausted.increment(1);
        }
        result
    }

    /// Waits for `checkout` (a `get` from the dedicated pool, borrowed or owned), failing at
    /// once with the connect error while the reconnect backoff runs, or as soon as a connect
    /// fails meanwhile (bb8 alone would wait out the pool timeout: see the module's notes).
    async fn checkout<C>(
        &self,
        checkout: impl Future<Output = Result<C, RunError<UpstreamError>>>,
    ) -> Result<C, UpstreamError> {
        if let Some(error) = self.health.backing_off() {
            return Err(error);
        }
        let mut failures = self.health.failures.subscribe();
        failures.borrow_and_update();
        tokio::select! {
            biased;
            conn = checkout => conn.map_err(|e| match e {
                RunError::User(e) => e,
                RunError::TimedOut => self.health.last().unwrap_or(
                    UpstreamError::PoolExhausted(self.pool_wait_timeout.as_millis() as u64)),
            }),
            _ = failures.changed() => Err(self.health.last()
                .unwrap_or_else(|| UnavailableReason::ConnectFailed.into())),
        }
    }

    /// Sets the upstream-connection gauges (called at scrape time): `in_use` counts the
    /// shared lanes, `idle` the dedicated connections waiting in their pool, `pinned` those
    /// held by clients.
    pub fn update_gauges(&self) {
        let state = self.pinned_pool.state();
        let global = crate::metrics::global();
        global.upstream_idle.set(f64::from(state.idle_connections));
        global.upstream_in_use.set(self.lanes as f64);
        let pinned = self.max_pinned - self.pins.available_permits();
        global.upstream_pinned.set(pinned as f64);
    }

    /// Whether the upstream is usable: a connection has authenticated and no connect has
    /// failed since. `Err` carries a one-line reason (for `/readyz`).
    pub fn health(&self) -> Result<(), String> {
        match self.health.last() {
            Some(error) => Err(error.to_string()),
            None if self.cached_info().is_none() => Err("no upstream connection yet".to_owned()),
            None => Ok(()),
        }
    }

    /// A dedicated connection for one client, or `TooManyPinned` at once when the cap is
    /// reached (never a wait).
    pub async fn pin(&self) -> Result<Pinned, UpstreamError> {
        let permit = self
            .pins
            .clone()
            .try_acquire_owned()
            .map_err(|_| UpstreamError::TooManyPinned(self.max_pinned))?;
        let conn = self.checkout(self.pinned_pool.get_owned()).await?;
        Ok(Pinned {
            conn,
            _permit: permit,
        })
    }

    /// What the server said about itself; connects first if no connection has succeeded
    /// yet.
    pub async fn info(&self) -> Result<ServerInfo, UpstreamError> {
        if let Some(info) = self.cached_info() {
            return Ok(info);
        }
        drop(self.get().await?);
        self.cached_info()
            .ok_or_else(|| UnavailableReason::NoServerInfo.into())
    }

    fn cached_info(&self) -> Option<ServerInfo> {
        self.info.lock().ok()?.clone()
    }

    /// Opens a connection ahead of the first client, so HELLO and SELECT can answer at once.
    /// Failure is logged, not fatal: the upstream may come up after the proxy.
    pub async fn warm_up(&self) {
        match self.get().await {
            Ok(conn) => drop(conn),
            Err(error) => {
                tracing::warn!(%error, "upstream not reachable at start-up; will retry on demand")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

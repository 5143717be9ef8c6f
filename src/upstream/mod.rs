//! The upstream side: the shared, multiplexed lanes (`mux`) that carry most traffic, a bb8
//! pool of dedicated connections for clients in a connection-bound state (`Pinned`), what
//! the proxy knows about the server, and the health that makes failures fast and distinct.
//!
//! bb8 on its own makes a waiter sit out the whole pool timeout when connecting fails
//! (bb8#141). Every connect failure is therefore also published here, and a checkout that
//! sees one returns that error at once. For a backoff after a failure (doubling from
//! `reconnect_backoff_ms` to `reconnect_backoff_max_ms` with each failed round, jittered)
//! nothing dials: a request that needs a connection waits for the backoff to end (at most
//! `connect_timeout_ms`), then dials — or gets the error of an attempt that failed while it
//! waited. So the reconnect rate stays capped while the upstream is down, and no request
//! gets an error older than itself (Redis may have come back a moment ago).
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
pub mod identities;
mod manager;
pub mod mux;
pub mod sentinel;
pub mod slot;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bb8::{Pool, PooledConnection, RunError};
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

pub use conn::{ConnState, ServerInfo, UpstreamConn};
pub use error::{
    AuthFailure, IoFailure, IoOp, LostReason, Side, TlsFailure, UnavailableReason, UpstreamError,
};
use manager::{Health, HealthSink};
pub use manager::{Manager, PooledConn, Target};

use crate::config::Config;
use crate::credentials::Secrets;
use crate::protocol::Proto;
use crate::secret::{RotatingSecret, Secret};

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
    /// What this upstream was built from, for [`as_user`](Upstream::as_user).
    template: Arc<Template>,
    /// How long a request waits for the reconnect backoff to end before it dials anyway.
    connect_timeout: Duration,
    /// Who its connections log in as (see [`login_request`](Upstream::login_request)).
    username: Option<String>,
    password: Option<Arc<RotatingSecret>>,
}

/// Brings `conn` to `state` (SELECT/HELLO as needed), sends `chunks` behind the change and
/// reads their `replies`; the connection stays armed (`broken`) until every reply is read.
async fn exchange(
    conn: &mut UpstreamConn,
    state: ConnState,
    chunks: Vec<Bytes>,
    replies: usize,
    timeout: Option<Duration>,
) -> Result<Vec<(Bytes, crate::protocol::ReplyFrame)>, UpstreamError> {
    let mut all = Vec::with_capacity(chunks.len() + 1);
    let swallow = conn::push_transition(&mut all, conn.state, state);
    all.extend(chunks);
    conn.broken = true;
    conn.write_all(&all, timeout).await?;
    conn.read_state_changes(swallow, timeout, |reply| {
        UnavailableReason::StateChangeRefused { reply }.into()
    })
    .await?;
    let mut out = Vec::with_capacity(replies);
    for _ in 0..replies {
        out.push(conn.read_reply(timeout).await?);
    }
    conn.state = state;
    conn.broken = false;
    Ok(out)
}

/// The settings an upstream is built from, kept for building the same server's upstream
/// for another Redis user.
struct Template {
    config: Config,
    tls: Option<crate::tls::UpstreamTls>,
    /// The ambassador's own password (see `as_user`).
    password: Option<Arc<RotatingSecret>>,
    target: Target,
    readonly: bool,
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
        let template = Arc::new(Template {
            config: config.clone(),
            tls: secrets.upstream_tls.clone(),
            password: secrets.upstream_password.clone(),
            target: Target::new(config, secrets, address),
            readonly,
        });
        let requests = address.map(|address| {
            metrics::counter!(crate::metrics::CLUSTER_NODE_REQUESTS_TOTAL, "node" => address.to_owned())
        });
        Upstream::assemble(
            template,
            config.upstream.username.clone(),
            secrets.upstream_password.clone(),
            requests,
            None,
        )
    }

    /// The same server, reached as another Redis user: for a client that authenticated
    /// as a user the ambassador does not know, so that Redis's ACLs apply to it (its own
    /// lanes and dedicated connections; nothing shared with the ambassador's identity).
    ///
    /// Its connections select `db` as the ambassador before logging in as the user, as the
    /// client's own connection, in that database when it sent `AUTH`, would be.
    pub fn as_user(&self, username: &str, password: Secret, db: u32) -> Upstream {
        let enter_as = conn::EnterAs {
            username: self.template.config.upstream.username.clone(),
            password: self.template.password.as_ref().map(|p| p.current()),
            db,
        };
        Upstream::assemble(
            self.template.clone(),
            Some(username.to_owned()),
            Some(Arc::new(RotatingSecret::fixed(password))),
            None,
            Some(enter_as),
        )
    }

    /// The same server, reached as Redis user `username` with a password that may rotate:
    /// a configured client user's own identity (`[[client.users]] upstream_username`).
    pub fn as_identity(&self, username: &str, password: Arc<RotatingSecret>) -> Upstream {
        Upstream::assemble(
            self.template.clone(),
            Some(username.to_owned()),
            Some(password),
            None,
            None,
        )
    }

    fn assemble(
        template: Arc<Template>,
        username: Option<String>,
        password: Option<Arc<RotatingSecret>>,
        requests: Option<metrics::Counter>,
        enter_as: Option<conn::EnterAs>,
    ) -> Upstream {
        let config = &template.config;
        let target = template.target.clone();
        let health = Arc::new(Health::new(
            config.upstream.reconnect_backoff(),
            config.upstream.reconnect_backoff_max(),
        ));
        let info = Arc::new(Mutex::new(None));
        let manager = Manager {
            target: target.clone(),
            dialer: conn::Dialer {
                tls: template.tls.clone(),
                username: username.clone(),
                connect_timeout: config.upstream.connect_timeout(),
                max_reply_depth: config.limits.max_reply_depth,
                readonly: template.readonly,
                enter_as,
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
                connect_timeout: config.upstream.connect_timeout(),
                output_limit: config.limits.client_output_hard_limit,
            },
        );
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
            connect_timeout: config.upstream.connect_timeout(),
            template,
            username,
            password,
        }
    }

    /// The `AUTH` that logs a connection in as this upstream's identity: for a dedicated
    /// connection of another identity that a client keeps (WATCH, CLIENT NO-TOUCH) when it
    /// authenticates as a user of this one. Without a password, the default user, which
    /// is then `nopass` (any password is accepted).
    pub fn login_request(&self) -> Bytes {
        let password = self.password.as_ref().map(|p| p.current());
        let password = password.as_ref().map_or(&b"nopass"[..], |p| p.expose());
        let username = self
            .username
            .as_deref()
            .unwrap_or(crate::auth::DEFAULT_USER);
        crate::protocol::encode::command(&[&b"AUTH"[..], username.as_bytes(), password])
    }

    /// Sends `chunks` (whole requests expecting `replies` replies) on a shared lane, in
    /// connection state `state`, and returns the replies.
    pub async fn call(
        &self,
        state: ConnState,
        chunks: Vec<Bytes>,
        replies: usize,
    ) -> Result<Vec<(Bytes, crate::protocol::ReplyFrame)>, UpstreamError> {
        let slot = slot::ReplySlot::new();
        self.mux
            .submit(mux::Job {
                first: state,
                last: state,
                db_unknown: false,
                chunks,
                replies,
                woven: Vec::new(),
                slow: false,
                ticket: slot.begin(),
            })
            .await?;
        let mut out = Vec::with_capacity(replies);
        while out.len() < replies {
            out.push(slot.next().await?);
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
        exchange(&mut pinned, state, chunks, replies, None).await
    }

    /// Sends one request on an idle dedicated connection, in whatever state that
    /// connection is in, and returns its reply: for the commands Redis runs while a script
    /// is busy (SCRIPT KILL, FUNCTION KILL, FUNCTION STATS, SHUTDOWN), which must not wait
    /// behind it.
    /// Only the protocol is changed to `proto` (with HELLO, which Redis also runs while
    /// busy): the reply's shape depends on it, not on the database.
    pub async fn call_now(&self, request: Bytes, proto: Proto) -> Result<Bytes, UpstreamError> {
        let mut conn = self.get().await?;
        let state = ConnState {
            db: conn.state.db,
            proto,
        };
        let timeout = self.command_timeout;
        let mut replies = exchange(&mut conn, state, vec![request], 1, timeout).await?;
        replies
            .pop()
            .map(|(reply, _)| reply)
            .ok_or_else(|| LostReason::NoReply.into())
    }

    /// A new connection, authenticated, outside every pool: for a client that becomes a
    /// replica (SYNC/PSYNC), whose connection is never used for anything else.
    pub async fn dedicated(&self) -> Result<UpstreamConn, UpstreamError> {
        if let Some(error) = self.health.wait_for_retry(self.connect_timeout).await {
            return Err(error);
        }
        self.pinned_pool.dedicated_connection().await
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

    /// Waits for `checkout` (a `get` from the dedicated pool, borrowed or owned). While the
    /// reconnect backoff runs it first waits for the backoff to end (see
    /// `Health::wait_for_retry`), failing with the error of an attempt made meanwhile; then
    /// fails as soon as a connect fails (bb8 alone would wait out the pool timeout: see the
    /// module's notes).
    async fn checkout<C>(
        &self,
        checkout: impl Future<Output = Result<C, RunError<UpstreamError>>>,
    ) -> Result<C, UpstreamError> {
        if let Some(error) = self.health.wait_for_retry(self.connect_timeout).await {
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

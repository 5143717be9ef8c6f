//! What a session knows: the state every session shares (`Shared`: the upstream, the
//! client credentials, the limits, and `clients`, what each client publishes for the
//! others' CLIENT LIST/KILL/TRACKING REDIRECT — no client's working state), and one
//! client's own (`Session`:
//! authentication, user, database, protocol, name, an open transaction, the dedicated
//! upstream connection while a connection-bound state lasts). The other files of this
//! module act on this state; this file only holds it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;

use crate::auth::{ClientAuth, LoginThrottle};
use crate::cluster::{Binding, Cluster};
use crate::config::{DEFAULT_MAX_IN_FLIGHT, OutputLimits};
use crate::net::ClientStream;
use crate::policy::{Permissions, Policies};
use crate::protocol::{Proto, Request, RequestLimits, encode};
use crate::upstream::identities::Identities;
use crate::upstream::slot::ReplySlot;
use crate::upstream::{ConnState, Pinned, Upstream};

use super::clients::{self, Client, Clients};

/// What every session shares: the upstream, the client credentials, the limits.
pub struct Shared {
    pub upstream: Upstream,
    /// The users clients may authenticate as; none is Redis's `nopass`.
    pub client_auth: ClientAuth,
    /// The users' command rules (`commands`, `read_only`).
    pub policies: Arc<Policies>,
    pub limits: RequestLimits,
    /// Bounds on what is buffered for a relayed (pub/sub, MONITOR) client.
    pub output_limits: OutputLimits,
    /// `[limits] max_in_flight`: requests of one client planned into one batch at most.
    pub max_in_flight: usize,
    /// Cluster mode: where each key's node is (`upstream` is then the first seed, for
    /// server information, the readiness probe and pub/sub).
    pub cluster: Option<Arc<Cluster>>,
    next_client_id: AtomicU64,
    /// The application's connections, as CLIENT LIST, CLIENT KILL and CLIENT TRACKING
    /// REDIRECT see them.
    pub(super) clients: Clients,
    /// MONITOR lines for the commands the ambassador answers itself (Redis never sees
    /// them), to every client in MONITOR mode (see `relay`).
    /// Each line with the id of the client whose command it shows.
    pub(super) monitors: tokio::sync::broadcast::Sender<(u64, Bytes)>,
    /// The Redis users the ambassador speaks as besides its own: configured users'
    /// `upstream_username`s, and the users clients logged in as (see `upstream_auth`).
    pub identities: Identities,
    /// `AUTH` as a user not configured here is checked by Redis, and the client then runs
    /// as that Redis user: `[client] upstream_auth`, and always without a `[client]`
    /// section (Redis's `nopass` default user; not in cluster mode).
    pub upstream_auth: bool,
    /// Failed logins that Redis checked, per client address.
    pub(super) login_throttle: LoginThrottle,
    /// `redis_ambassador_user_commands_total` handles, by user label.
    user_commands: HashMap<Arc<str>, metrics::Counter>,
}

impl Shared {
    pub fn new(upstream: Upstream, client_auth: ClientAuth, limits: RequestLimits) -> Shared {
        let labels = client_auth.names().map(|name| name.to_string()).chain([
            crate::auth::DEFAULT_USER.to_owned(),
            crate::metrics::UPSTREAM_USER_LABEL.to_owned(),
        ]);
        let user_commands = labels
            .map(|label| {
                let counter = crate::metrics::user_commands(&label);
                (Arc::from(label), counter)
            })
            .collect();
        let upstream_auth = !client_auth.required();
        Shared {
            upstream,
            client_auth,
            policies: Arc::default(),
            limits,
            output_limits: OutputLimits::default(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            cluster: None,
            next_client_id: AtomicU64::new(1),
            clients: Clients::default(),
            monitors: tokio::sync::broadcast::Sender::new(1024),
            identities: Identities::default(),
            upstream_auth,
            login_throttle: LoginThrottle::default(),
            user_commands,
        }
    }

    /// The configured users' own upstream identities, and whether clients may log in as
    /// Redis users the ambassador does not know (`[client] upstream_auth`; always so
    /// without client users).
    pub fn with_identities(mut self, identities: Identities, upstream_auth: bool) -> Shared {
        self.identities = identities;
        self.upstream_auth = upstream_auth || !self.client_auth.required();
        self
    }

    /// The command counter of `user` (a configured user or `default`), or the shared one
    /// of users logged in through Redis.
    pub(super) fn user_commands(&self, user: &str) -> metrics::Counter {
        let label = match self.user_commands.get(user) {
            Some(counter) => return counter.clone(),
            None => crate::metrics::UPSTREAM_USER_LABEL,
        };
        self.user_commands
            .get(label)
            .cloned()
            .unwrap_or_else(metrics::Counter::noop)
    }

    /// Sets the bounds for relayed clients' output (Redis's defaults otherwise).
    pub fn with_output_limits(mut self, limits: OutputLimits) -> Shared {
        self.output_limits = limits;
        self
    }

    /// Checks the users' commands against their rules.
    pub fn with_policies(mut self, policies: Arc<Policies>) -> Shared {
        self.policies = policies;
        self
    }

    /// What a user who just authenticated may run.
    pub(super) fn access(&self, user: &str) -> Access {
        match self.policies.user(user) {
            None => Access::Any,
            Some(index) => match self.policies.ready(index) {
                Some(Ok(permissions)) => Access::Checked(permissions.clone()),
                _ => Access::Pending(index),
            },
        }
    }

    /// Routes by key slot over `cluster`'s nodes (cluster mode).
    pub fn with_cluster(mut self, cluster: Arc<Cluster>) -> Shared {
        self.cluster = Some(cluster);
        self
    }

    /// Caps the requests of one client in flight at once (4096 otherwise).
    pub fn with_max_in_flight(mut self, max: usize) -> Shared {
        self.max_in_flight = max.max(1);
        self
    }

    /// Checks a username/password pair against every configured user (see `auth`);
    /// returns the user's name. Without a client password the only user is `default`,
    /// who needs none (Redis's `nopass`).
    pub(super) fn authenticate(&self, username: &[u8], password: &[u8]) -> Option<Arc<str>> {
        self.client_auth.authenticate(username, password)
    }
}

/// Whether the session goes on after a request.
pub(super) enum Flow {
    Continue,
    /// Flush what is owed, then close (QUIT).
    Close,
    /// Close at once with no reply (an HTTP request).
    Drop,
    /// Run what is planned, then relay this request and what follows to a dedicated
    /// connection (SUBSCRIBE, MONITOR, CLIENT TRACKING ON, CLIENT REPLY OFF|SKIP).
    Relay(Request),
    /// Run what is planned, then join the client to an upstream connection of its own,
    /// byte for byte, for good (SYNC, PSYNC: the client is a replica).
    Replicate(Request),
    /// Cluster mode: run what is planned (it goes to another node), then plan this request
    /// first in the next batch.
    Defer(Request),
    /// Cluster mode: run what is planned, then answer this request from several nodes
    /// (keys in several slots, or a command every master must run).
    Scatter(Request),
}

/// What the session's user may run (see `crate::policy`).
#[derive(Debug, Clone)]
pub(super) enum Access {
    /// Everything: a user without rules (no check at all).
    Any,
    /// A user with rules whose permissions are not known yet (the catalogue is not loaded,
    /// or the rules do not apply to this upstream): its requests wait for them, or are
    /// refused.
    Pending(usize),
    /// A user with rules: every request is checked.
    Checked(Arc<Permissions>),
}

/// A command queued inside MULTI, as far as the proxy must remember it.
#[derive(Debug)]
pub(super) enum Queued {
    /// Queued upstream; its result comes in EXEC's array as it is.
    Forwarded,
    /// A SELECT queued upstream: if EXEC's array says `+OK`, the client's database changes.
    Select(Option<u32>),
    /// A command the proxy answers itself (AUTH, HELLO, CLIENT SETNAME, …): run at EXEC
    /// time and its reply spliced into EXEC's array, as Redis would.
    Local(Request),
}

/// An open transaction.
#[derive(Debug, Default)]
pub(super) struct Multi {
    pub queue: Vec<Queued>,
    /// A command was refused while queuing: EXEC must abort, as Redis's does.
    pub error: bool,
    /// No dedicated connection could be had when the transaction began: it lives in the
    /// ambassador alone, every command is answered `+QUEUED`, and EXEC aborts with this.
    pub detached: Option<crate::upstream::UpstreamError>,
}

impl Multi {
    /// Whether EXEC's reply needs the session's help (local commands or SELECT queued).
    pub fn needs_finishing(&self) -> bool {
        self.queue.iter().any(|q| !matches!(q, Queued::Forwarded))
    }
}

/// One client connection's state.
pub struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) id: u64,
    pub(super) authenticated: bool,
    /// The user the client authenticated as (`default` until then), for CLIENT INFO.
    pub(super) user: Arc<str>,
    /// What `user` may run, set when the client authenticates.
    pub(super) access: Access,
    pub(super) db: u32,
    pub(super) proto: Proto,
    pub(super) name: Option<Bytes>,
    pub(super) lib_name: Option<Bytes>,
    pub(super) lib_ver: Option<Bytes>,
    pub(super) peer: SocketAddr,
    pub(super) last_activity: Instant,
    /// The client socket's descriptor, for CLIENT INFO.
    pub(super) fd: i64,
    /// Inside MULTI (as planned: the batch carrying MULTI may not have run yet).
    pub(super) multi: Option<Multi>,
    /// WATCH is in force.
    pub(super) watching: bool,
    /// The transaction whose EXEC is held for finishing.
    pub(super) exec_queue: Option<Vec<Queued>>,
    /// The dedicated upstream connection, while a connection-bound state lasts.
    pub(super) pinned: Option<Pinned>,
    /// Cluster mode: the node `pinned` is on.
    pub(super) pinned_on: Option<Arc<Upstream>>,
    /// The pinned connection must be dropped after the running batch (RESET or QUIT
    /// inside a connection-bound state left it dirty).
    pub(super) drop_pin: bool,
    /// Cluster mode: the node the connection-bound state is on.
    pub(super) binding: Binding,
    /// The client authenticated as a Redis user the ambassador does not know: its commands
    /// go to the server as that user, over an upstream of its own (see `Upstream::as_user`).
    pub(super) identity: Option<Arc<Upstream>>,
    /// The client authenticated as another upstream identity: a dedicated connection it
    /// holds (WATCH, CLIENT NO-TOUCH, a relay) is logged in as the new identity before its
    /// next command (see `Upstream::login_request`).
    pub(super) rebind: bool,
    /// The user's `redis_ambassador_user_commands_total`.
    pub(super) user_commands: metrics::Counter,
    /// What other clients see of this one (CLIENT LIST, KILL, TRACKING REDIRECT).
    pub(super) client: Arc<Client>,
    /// CLIENT NO-EVICT is on.
    pub(super) no_evict: bool,
    /// CLIENT NO-TOUCH is on: the client's commands run on its dedicated connection, where
    /// the flag is set.
    pub(super) no_touch: bool,
    /// The row of the last CLIENT subcommand planned (for CLIENT LIST's `cmd`).
    pub(super) client_sub: Option<u16>,
    /// Where the shared lanes hand this client its replies, batch after batch.
    pub(super) slot: Arc<ReplySlot>,
}

impl Session {
    pub fn new(shared: Arc<Shared>, peer: SocketAddr, local_addr: SocketAddr) -> Session {
        let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed);
        let authenticated = !shared.client_auth.required();
        let now = Instant::now();
        let user: Arc<str> = Arc::from(crate::auth::DEFAULT_USER);
        let client = Arc::new(Client::new(id, peer, local_addr, user));
        let user_commands = shared.user_commands(crate::auth::DEFAULT_USER);
        shared.clients.register(client.clone());
        Session {
            shared,
            id,
            authenticated,
            user: Arc::from(crate::auth::DEFAULT_USER),
            access: Access::Any,
            db: 0,
            proto: Proto::Resp2,
            name: None,
            lib_name: None,
            lib_ver: None,
            peer,
            last_activity: now,
            fd: -1,
            multi: None,
            watching: false,
            exec_queue: None,
            pinned: None,
            pinned_on: None,
            drop_pin: false,
            binding: Binding::default(),
            identity: None,
            rebind: false,
            user_commands,
            client,
            no_evict: false,
            no_touch: false,
            client_sub: None,
            slot: ReplySlot::new(),
        }
    }

    /// Where this client's commands go: the server as the client's own Redis user, or as
    /// the ambassador's.
    pub(super) fn upstream(&self) -> &Upstream {
        self.identity.as_deref().unwrap_or(&self.shared.upstream)
    }

    pub(super) fn requires_auth(&self) -> bool {
        !self.authenticated
    }

    /// The state (database, protocol) an upstream connection must be in for this client.
    pub(super) fn conn_state(&self) -> ConnState {
        ConnState {
            db: self.db,
            proto: self.proto,
        }
    }

    /// Whether the client's state needs its own upstream connection after this batch.
    pub(super) fn needs_pin(&self) -> bool {
        self.multi.is_some() || self.watching || self.no_touch
    }

    /// Back to a new connection's state (RESET): no transaction, no watch, database 0,
    /// RESP2, no name, not authenticated when a password is required.
    pub(super) fn reset(&mut self) {
        self.multi = None;
        self.watching = false;
        self.binding.multi_pending = false;
        self.binding.held.clear();
        self.db = 0;
        self.proto = Proto::Resp2;
        self.name = None;
        self.authenticated = !self.shared.client_auth.required();
        self.user = Arc::from(crate::auth::DEFAULT_USER);
        self.access = Access::Any;
        self.identity = None;
        self.user_commands = self.shared.user_commands(crate::auth::DEFAULT_USER);
        // As Redis 7.2+ (7.0 keeps NO-EVICT): the pinned connection that carried NO-TOUCH
        // is dropped with the rest of the connection-bound state.
        self.no_evict = false;
        self.no_touch = false;
        self.client
            .set_flag(clients::flag::NO_EVICT | clients::flag::NO_TOUCH, false);
        self.publish_text();
        self.publish_state();
    }

    /// Publishes the name, user and client library (after they change).
    pub(super) fn publish_text(&self) {
        self.client.set_text(clients::Text {
            name: self.name.clone(),
            user: self.user.clone(),
            lib_name: self.lib_name.clone(),
            lib_ver: self.lib_ver.clone(),
        });
    }

    /// Publishes the database, protocol and transaction (once per batch: a few stores).
    pub(super) fn publish_state(&self) {
        let queued = self.multi.as_ref().map(|m| m.queue.len());
        self.client.set_state(self.db, self.proto, queued);
    }

    /// Marks the open transaction as failed (a command was refused while queuing).
    pub(super) fn flag_multi(&mut self) {
        if let Some(multi) = self.multi.as_mut() {
            multi.error = true;
        }
    }

    /// Cluster mode: once no connection-bound state is left, the node it was on no longer
    /// binds anything. Also when a new state starts in the batch that ended the last one
    /// (a pipelined `EXEC` then `MULTI`): the new state picks its own node.
    pub(super) fn unbind_if_idle(&mut self) {
        if !self.needs_pin() && !self.binding.multi_pending {
            self.binding = Binding::default();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.clients.remove(self.id);
    }
}

/// The bytes to send upstream for a request: as received when canonical, else re-encoded.
pub(super) fn request_bytes(request: Request) -> Bytes {
    match request.canonical {
        Some(frame) => frame,
        None => encode::command(&request.args),
    }
}

#[cfg(unix)]
pub(super) fn fd_of(stream: &ClientStream) -> i64 {
    use std::os::fd::AsRawFd;
    let tcp = match stream {
        ClientStream::Plain(tcp) => tcp,
        ClientStream::Tls(tls) => tls.get_ref().0,
    };
    i64::from(tcp.as_raw_fd())
}

#[cfg(not(unix))]
pub(super) fn fd_of(_: &ClientStream) -> i64 {
    -1
}

//! The application's connections, as Redis shows and acts on its own clients: every
//! session registers here when it starts and leaves when it ends, publishing what `CLIENT
//! LIST` and `CLIENT INFO` print (addresses, name, database, user, protocol, flags, last
//! command, last activity, subscription counts) and the token that ends it (`CLIENT
//! KILL`). It also holds what `CLIENT TRACKING … REDIRECT <id>` needs: the upstream
//! connection a client relays on, found by the client's own (the ambassador's) id.
//!
//! Cheap on the hot path: a session stores a few atomics once per batch; a mutex guards
//! only what changes rarely (name, user, library; the redirect-target state). This file
//! owns the registry and the `CLIENT LIST` line; it never holds a session and never acts
//! on one: a session watches its own token and its own wake-up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU8, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use atomic_waker::AtomicWaker;
use bytes::Bytes;

use crate::command::{self, CommandId};
use crate::protocol::Proto;

/// The flags a client can have, as bits of [`Client`]'s flag word. CLIENT LIST prints
/// them as Redis's letters (see [`flag_letters`]).
pub mod flag {
    /// SYNC/PSYNC: the client is a replica (`S`).
    pub const REPLICA: u32 = 1;
    /// MONITOR (`O`).
    pub const MONITOR: u32 = 1 << 1;
    /// Subscribed to a channel, pattern or shard channel (`P`).
    pub const PUBSUB: u32 = 1 << 2;
    /// Inside MULTI (`x`).
    pub const MULTI: u32 = 1 << 3;
    /// Waiting in a blocking command (`b`).
    pub const BLOCKED: u32 = 1 << 4;
    /// CLIENT TRACKING on (`t`).
    pub const TRACKING: u32 = 1 << 5;
    /// CLIENT TRACKING in BCAST mode (`B`).
    pub const BCAST: u32 = 1 << 6;
    /// Closes once its reply is written (`c`).
    pub const CLOSE_AFTER_REPLY: u32 = 1 << 7;
    /// CLIENT NO-EVICT on (`e`).
    pub const NO_EVICT: u32 = 1 << 8;
    /// CLIENT NO-TOUCH on (`T`, Redis 7.2+).
    pub const NO_TOUCH: u32 = 1 << 9;
    /// Blocked alone in its batch, in a command whose timeout reply the ambassador can
    /// give (not shown): CLIENT UNBLOCK may end it.
    pub const UNBLOCKABLE: u32 = 1 << 10;
}

/// A client's type, as `CLIENT LIST TYPE` and `CLIENT KILL TYPE` name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientType {
    Normal,
    Replica,
    PubSub,
    /// The master of a replica: never a client of the ambassador.
    Master,
}

impl ClientType {
    /// Redis's `getClientTypeByName`, case-insensitively.
    pub fn parse(name: &[u8]) -> Option<ClientType> {
        let known: [(&[u8], ClientType); 5] = [
            (b"normal", ClientType::Normal),
            (b"slave", ClientType::Replica),
            (b"replica", ClientType::Replica),
            (b"pubsub", ClientType::PubSub),
            (b"master", ClientType::Master),
        ];
        known
            .into_iter()
            .find(|(n, _)| name.eq_ignore_ascii_case(n))
            .map(|(_, t)| t)
    }
}

/// Which Redis's `CLIENT LIST` line to print: the upstream's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layout {
    /// 6.2: no `ssub`, `multi-mem`, `rbs`, `rbp` or `resp`.
    V6,
    /// 7.0: adds `ssub`, `multi-mem`, `rbs`, `rbp`, `resp`.
    V7_0,
    /// 7.2: adds `lib-name`, `lib-ver`.
    V7_2,
    /// 7.4: adds `watch`.
    V7_4,
    /// 8.0: adds `io-thread`.
    V8,
}

impl Layout {
    /// The layout of the Redis that says it is `version` (`7.0.15`); the newest when the
    /// version cannot be read.
    pub fn for_version(version: &[u8]) -> Layout {
        let text = std::str::from_utf8(version).unwrap_or("");
        let mut parts = text.split('.').map(|p| p.parse::<u32>().ok());
        match (parts.next().flatten(), parts.next().flatten()) {
            (Some(major), _) if major >= 8 => Layout::V8,
            (Some(7), Some(minor)) if minor >= 4 => Layout::V7_4,
            (Some(7), Some(minor)) if minor >= 2 => Layout::V7_2,
            (Some(7), _) => Layout::V7_0,
            (Some(_), _) => Layout::V6,
            (None, _) => Layout::V8,
        }
    }
}

/// What changes rarely: name, user, client library.
#[derive(Clone, Debug)]
pub struct Text {
    pub name: Option<Bytes>,
    pub user: Arc<str>,
    pub lib_name: Option<Bytes>,
    pub lib_ver: Option<Bytes>,
}

/// Whether a client is a redirect target and which upstream connection it relays on.
#[derive(Default)]
struct Target {
    /// Some client redirects (or is about to redirect) its invalidations here: the client
    /// keeps a dedicated connection for as long as it lives.
    wanted: bool,
    /// The real Redis's id of the connection the client relays on, while it relays.
    upstream: Option<u64>,
}

/// One client, as the other clients may see it.
pub struct Client {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    created: Instant,
    fd: AtomicI64,
    /// The last command: its [`CommandId`] index, and for CLIENT the subcommand's row
    /// plus one in the high half.
    cmd: AtomicU32,
    /// The last interaction, in milliseconds after `created`.
    active_ms: AtomicU64,
    db: AtomicU32,
    resp: AtomicU8,
    flags: AtomicU32,
    /// Commands queued in MULTI, or -1.
    multi: AtomicI32,
    sub: AtomicI32,
    psub: AtomicI32,
    ssub: AtomicI32,
    /// CLIENT TRACKING's redirect: -1 when off, 0 without redirect, else a client id.
    redir: AtomicI64,
    text: Mutex<Text>,
    /// What other clients ask of this one's session: [`KILLED`], [`WAKE`]. The session
    /// watches them without a lock (a few atomics per read).
    signals: AtomicU8,
    waker: AtomicWaker,
    target: Mutex<Target>,
}

/// CLIENT KILL ended the client.
const KILLED: u8 = 1;
/// Another client wants this one as a redirect target.
const WAKE: u8 = 2;
/// CLIENT UNBLOCK … TIMEOUT, and … ERROR.
const UNBLOCK_TIMEOUT: u8 = 4;
const UNBLOCK_ERROR: u8 = 8;

/// What [`Client::signal`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Killed,
    Woken,
    /// CLIENT UNBLOCK: with ERROR when true, else TIMEOUT.
    Unblocked(bool),
}

/// The caller's own request, for its own line: Redis shows the query buffer holding it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Own {
    /// Its bytes on the wire.
    pub qbuf: usize,
    /// The sum of its arguments' lengths.
    pub argv_mem: usize,
}

/// What `CLIENT KILL` (the filter form) selects; `None` matches any.
#[derive(Clone, Debug, Default)]
pub struct KillFilter {
    pub id: Option<u64>,
    pub addr: Option<Bytes>,
    pub laddr: Option<Bytes>,
    pub user: Option<Bytes>,
    pub kind: Option<ClientType>,
    /// Only clients connected at least this many seconds ago (7.4's MAXAGE).
    pub max_age: Option<u64>,
    /// The calling client is spared (the filter form's default).
    pub skip_me: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind: still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Client {
    pub fn new(id: u64, peer: SocketAddr, local: SocketAddr, user: Arc<str>) -> Client {
        Client {
            id,
            peer,
            local,
            created: Instant::now(),
            fd: AtomicI64::new(-1),
            cmd: AtomicU32::new(u32::from(u16::MAX)),
            active_ms: AtomicU64::new(0),
            db: AtomicU32::new(0),
            resp: AtomicU8::new(2),
            flags: AtomicU32::new(0),
            multi: AtomicI32::new(-1),
            sub: AtomicI32::new(0),
            psub: AtomicI32::new(0),
            ssub: AtomicI32::new(0),
            redir: AtomicI64::new(-1),
            text: Mutex::new(Text {
                name: None,
                user,
                lib_name: None,
                lib_ver: None,
            }),
            signals: AtomicU8::new(0),
            waker: AtomicWaker::new(),
            target: Mutex::new(Target::default()),
        }
    }

    pub fn set_fd(&self, fd: i64) {
        self.fd.store(fd, Relaxed);
    }

    /// The last command (once per batch): `sub` is CLIENT's subcommand row when the
    /// command is CLIENT.
    pub fn set_command(&self, id: CommandId, sub: Option<u16>) {
        let index = u32::try_from(id.index()).unwrap_or(u32::from(u16::MAX));
        let sub = sub.map_or(0, |s| u32::from(s) + 1);
        self.cmd.store(index | (sub << 16), Relaxed);
    }

    /// Data arrived from the client at `now`.
    pub fn touch(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.created).as_millis();
        self.active_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Relaxed);
    }

    /// The database, protocol and transaction after a batch.
    pub fn set_state(&self, db: u32, proto: Proto, multi: Option<usize>) {
        self.db.store(db, Relaxed);
        self.resp
            .store(if proto == Proto::Resp3 { 3 } else { 2 }, Relaxed);
        let queued = multi.map_or(-1, |n| i32::try_from(n).unwrap_or(i32::MAX));
        self.multi.store(queued, Relaxed);
        self.set_flag(flag::MULTI, multi.is_some());
    }

    pub fn set_flag(&self, flag: u32, on: bool) {
        // A load first: most batches change nothing, and a plain load keeps the cache
        // line shared with the readers.
        if (self.flags.load(Relaxed) & flag != 0) != on {
            if on {
                self.flags.fetch_or(flag, Relaxed);
            } else {
                self.flags.fetch_and(!flag, Relaxed);
            }
        }
    }

    /// Channels, patterns and shard channels subscribed.
    pub fn set_subscriptions(&self, sub: i64, psub: i64, ssub: i64) {
        let clamp = |n: i64| i32::try_from(n.max(0)).unwrap_or(i32::MAX);
        self.sub.store(clamp(sub), Relaxed);
        self.psub.store(clamp(psub), Relaxed);
        self.ssub.store(clamp(ssub), Relaxed);
        self.set_flag(flag::PUBSUB, sub > 0 || psub > 0 || ssub > 0);
    }

    /// CLIENT TRACKING's state: `None` when off, else the redirect (0 for none).
    pub fn set_tracking(&self, tracking: Option<(u64, bool)>) {
        match tracking {
            None => {
                self.redir.store(-1, Relaxed);
                self.set_flag(flag::TRACKING | flag::BCAST, false);
            }
            Some((redirect, bcast)) => {
                self.redir
                    .store(i64::try_from(redirect).unwrap_or(0), Relaxed);
                self.set_flag(flag::TRACKING, true);
                self.set_flag(flag::BCAST, bcast);
            }
        }
    }

    pub fn set_text(&self, text: Text) {
        *lock(&self.text) = text;
    }

    pub fn user(&self) -> Arc<str> {
        lock(&self.text).user.clone()
    }

    fn raise(&self, signal: u8) {
        self.signals.fetch_or(signal, Relaxed);
        self.waker.wake();
    }

    /// Ends the client's session (CLIENT KILL): it stops at its next look.
    pub fn kill(&self) {
        self.raise(KILLED);
    }

    pub fn is_killed(&self) -> bool {
        self.signals.load(Relaxed) & KILLED != 0
    }

    /// Resolves once CLIENT KILL has ended the client. For the session's own task only
    /// (one waker is kept).
    pub async fn killed(&self) {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.is_killed() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
    }

    /// The client waits in a blocking command (`b`); `unblockable` when CLIENT UNBLOCK may
    /// end it. A stale CLIENT UNBLOCK (one for a command already over) is forgotten.
    pub fn set_blocked(&self, blocked: bool, unblockable: bool) {
        self.signals
            .fetch_and(!(UNBLOCK_TIMEOUT | UNBLOCK_ERROR), Relaxed);
        self.set_flag(flag::BLOCKED, blocked);
        self.set_flag(flag::UNBLOCKABLE, blocked && unblockable);
    }

    /// CLIENT UNBLOCK: `true` when the client was blocked and will end its command.
    pub fn unblock(&self, error: bool) -> bool {
        if self.flags.load(Relaxed) & flag::UNBLOCKABLE == 0 {
            return false;
        }
        self.raise(if error {
            UNBLOCK_ERROR
        } else {
            UNBLOCK_TIMEOUT
        });
        true
    }

    /// Resolves when CLIENT KILL ended the client or CLIENT UNBLOCK ended its blocking
    /// command. For the session's own task only.
    pub async fn blocked_signal(&self) -> Signal {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            let signals = self.signals.load(Relaxed);
            if signals & KILLED != 0 {
                std::task::Poll::Ready(Signal::Killed)
            } else if signals & (UNBLOCK_TIMEOUT | UNBLOCK_ERROR) != 0 {
                std::task::Poll::Ready(Signal::Unblocked(signals & UNBLOCK_ERROR != 0))
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// Resolves when CLIENT KILL ended the client, or another client wants it as a
    /// redirect target (the wake-up is then taken). For the session's own task only.
    pub async fn signal(&self) -> Signal {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            let signals = self.signals.load(Relaxed);
            if signals & KILLED != 0 {
                std::task::Poll::Ready(Signal::Killed)
            } else if signals & WAKE != 0 {
                self.signals.fetch_and(!WAKE, Relaxed);
                std::task::Poll::Ready(Signal::Woken)
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// Another client redirects its invalidations here: from now on this client keeps a
    /// dedicated connection. Its upstream id if it has one now; otherwise the client is
    /// woken to get one (call again later).
    pub fn claim_target(&self) -> Option<u64> {
        let upstream = {
            let mut target = lock(&self.target);
            target.wanted = true;
            target.upstream
        };
        if upstream.is_none() {
            self.raise(WAKE);
        }
        upstream
    }

    /// Whether some client redirects (or is about to redirect) here.
    pub fn target_wanted(&self) -> bool {
        lock(&self.target).wanted
    }

    /// The client now relays on the upstream connection with this id.
    pub fn publish_upstream(&self, id: Option<u64>) {
        lock(&self.target).upstream = id;
    }

    /// The client's relay would end: `true` (and the connection is no longer published)
    /// unless the client is a redirect target, whose connection must stay.
    pub fn release_upstream(&self) -> bool {
        let mut target = lock(&self.target);
        if target.wanted {
            return false;
        }
        target.upstream = None;
        true
    }

    /// The connection redirect targets pointed at is gone (RESET dropped it): the client
    /// is an ordinary one again, and the clients that redirected here are broken.
    pub fn forget_target(&self) {
        *lock(&self.target) = Target::default();
    }

    fn kind(&self) -> ClientType {
        let flags = self.flags.load(Relaxed);
        if flags & flag::REPLICA != 0 {
            ClientType::Replica
        } else if flags & flag::PUBSUB != 0 {
            ClientType::PubSub
        } else {
            ClientType::Normal
        }
    }

    /// The last command's full name as Redis prints it (`get`, `client|list`, `NULL`).
    fn command_name(&self) -> &'static str {
        let cmd = self.cmd.load(Relaxed);
        let sub = cmd >> 16;
        if sub != 0 {
            if let Some(name) = u16::try_from(sub - 1)
                .ok()
                .and_then(command::client_subcommand_name)
            {
                return name;
            }
        }
        let index = usize::try_from(cmd & 0xffff).unwrap_or(usize::MAX);
        command::NAMES.get(index).copied().unwrap_or("NULL")
    }

    fn age_secs(&self) -> u64 {
        self.created.elapsed().as_secs()
    }

    fn idle_secs(&self) -> u64 {
        let now = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(self.active_ms.load(Relaxed)) / 1000
    }

    /// Appends this client's `CLIENT LIST` line (no newline). `live` says whether a
    /// client id is still connected (for the broken-redirect flag); `own` is the caller's
    /// request when the line is the caller's own.
    pub fn line(
        &self,
        out: &mut Vec<u8>,
        layout: Layout,
        own: Option<Own>,
        live: &dyn Fn(u64) -> bool,
    ) {
        use std::io::Write;
        let text = lock(&self.text).clone();
        let redir = self.redir.load(Relaxed);
        let broken = redir > 0 && u64::try_from(redir).is_ok_and(|r| !live(r));
        let own = own.unwrap_or_default();
        let field = |v: &Option<Bytes>| v.clone().unwrap_or_default();
        // Writes to a Vec cannot fail.
        let _ = write!(
            out,
            "id={} addr={} laddr={} fd={} name=",
            self.id,
            self.peer,
            self.local,
            self.fd.load(Relaxed)
        );
        out.extend_from_slice(&field(&text.name));
        let _ = write!(
            out,
            " age={} idle={} flags=",
            self.age_secs(),
            self.idle_secs()
        );
        flag_letters(out, self.flags.load(Relaxed), broken, layout);
        let _ = write!(
            out,
            " db={} sub={} psub={}",
            self.db.load(Relaxed),
            self.sub.load(Relaxed),
            self.psub.load(Relaxed)
        );
        if layout >= Layout::V7_0 {
            let _ = write!(out, " ssub={}", self.ssub.load(Relaxed));
        }
        let _ = write!(out, " multi={}", self.multi.load(Relaxed));
        if layout >= Layout::V7_4 {
            out.extend_from_slice(b" watch=0");
        }
        // Redis's query buffer holds the request being run (its reply's own client) and
        // keeps a 20 KiB allocation for a while; the proxy keeps no such accounting, so
        // the values are those of a client that has just sent a small request.
        let qbuf_free = 20474usize.saturating_sub(own.qbuf);
        let _ = write!(
            out,
            " qbuf={} qbuf-free={} argv-mem={}",
            own.qbuf, qbuf_free, own.argv_mem
        );
        if layout >= Layout::V7_0 {
            out.extend_from_slice(b" multi-mem=0 rbs=1024 rbp=0");
        }
        let _ = write!(
            out,
            " obl=0 oll=0 omem=0 tot-mem={} events=r cmd={} user={} redir={}",
            22272 + own.qbuf,
            self.command_name(),
            text.user,
            redir
        );
        if layout >= Layout::V7_0 {
            let _ = write!(out, " resp={}", self.resp.load(Relaxed));
        }
        if layout >= Layout::V7_2 {
            out.extend_from_slice(b" lib-name=");
            out.extend_from_slice(&field(&text.lib_name));
            out.extend_from_slice(b" lib-ver=");
            out.extend_from_slice(&field(&text.lib_ver));
        }
        if layout >= Layout::V8 {
            out.extend_from_slice(b" io-thread=0");
        }
    }

    fn matches(&self, filter: &KillFilter, me: u64) -> bool {
        let text = |s: &dyn std::fmt::Display, want: &Option<Bytes>| {
            want.as_ref()
                .is_none_or(|want| s.to_string().as_bytes() == &want[..])
        };
        text(&self.peer, &filter.addr)
            && text(&self.local, &filter.laddr)
            && filter.kind.is_none_or(|kind| kind == self.kind())
            && filter.id.is_none_or(|id| id == self.id)
            && filter
                .user
                .as_ref()
                .is_none_or(|user| self.user().as_bytes() == &user[..])
            && filter.max_age.is_none_or(|max| self.age_secs() > max)
            && !(filter.skip_me && self.id == me)
    }
}

/// Redis's flag letters, in its order; `N` for none.
fn flag_letters(out: &mut Vec<u8>, flags: u32, broken: bool, layout: Layout) {
    let start = out.len();
    let letters: [(bool, u8); 11] = [
        (flags & flag::MONITOR != 0, b'O'),
        (
            flags & flag::REPLICA != 0 && flags & flag::MONITOR == 0,
            b'S',
        ),
        (flags & flag::PUBSUB != 0, b'P'),
        (flags & flag::MULTI != 0, b'x'),
        (flags & flag::BLOCKED != 0, b'b'),
        (flags & flag::TRACKING != 0, b't'),
        (flags & flag::TRACKING != 0 && broken, b'R'),
        (flags & flag::BCAST != 0, b'B'),
        (flags & flag::CLOSE_AFTER_REPLY != 0, b'c'),
        (flags & flag::NO_EVICT != 0, b'e'),
        (flags & flag::NO_TOUCH != 0 && layout >= Layout::V7_2, b'T'),
    ];
    out.extend(letters.iter().filter(|(on, _)| *on).map(|(_, l)| *l));
    if out.len() == start {
        out.push(b'N');
    }
}

/// Every client of the ambassador, by id (the order of `CLIENT LIST`: oldest first).
#[derive(Default)]
pub struct Clients {
    all: Mutex<BTreeMap<u64, Arc<Client>>>,
}

impl Clients {
    pub fn register(&self, client: Arc<Client>) {
        lock(&self.all).insert(client.id, client);
    }

    pub fn remove(&self, id: u64) {
        lock(&self.all).remove(&id);
    }

    pub fn get(&self, id: u64) -> Option<Arc<Client>> {
        lock(&self.all).get(&id).cloned()
    }

    /// The clients connected now, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<Client>> {
        lock(&self.all).values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        lock(&self.all).len()
    }

    /// Whether a client with this name is connected (CLIENT KILL USER).
    pub fn has_user(&self, user: &[u8]) -> bool {
        self.snapshot().iter().any(|c| c.user().as_bytes() == user)
    }

    /// CLIENT KILL: ends every client `filter` selects, `me` (the caller) excepted, which
    /// is only counted: its session closes after its reply. Returns how many matched and
    /// whether `me` is among them. The others leave the registry at once (a CLIENT LIST
    /// that follows does not show them) and their sessions end as soon as they look.
    pub fn kill(&self, filter: &KillFilter, me: u64) -> (usize, bool) {
        let victims: Vec<Arc<Client>> = self
            .snapshot()
            .into_iter()
            .filter(|c| c.matches(filter, me))
            .collect();
        let mut killed_me = false;
        for victim in &victims {
            if victim.id == me {
                killed_me = true;
                continue;
            }
            self.remove(victim.id);
            victim.kill();
        }
        (victims.len(), killed_me)
    }

    /// The `CLIENT LIST` text: every client whose type is `kind` (all when `None`), one
    /// line each, `me`'s own with its request `own`.
    pub fn list(&self, kind: Option<ClientType>, layout: Layout, me: u64, own: Own) -> Vec<u8> {
        let all = self.snapshot();
        let chosen = all
            .iter()
            .filter(|c| kind.is_none_or(|k| k == c.kind()))
            .cloned()
            .collect::<Vec<_>>();
        lines(&all, &chosen, layout, me, own)
    }

    /// The `CLIENT LIST ID …` text: the lines of the clients among `ids` still connected,
    /// in the order asked.
    pub fn list_ids(&self, ids: &[u64], layout: Layout, me: u64, own: Own) -> Vec<u8> {
        let all = self.snapshot();
        let chosen = ids
            .iter()
            .filter_map(|id| all.iter().find(|c| c.id == *id).cloned())
            .collect::<Vec<_>>();
        lines(&all, &chosen, layout, me, own)
    }
}

fn lines(
    all: &[Arc<Client>],
    chosen: &[Arc<Client>],
    layout: Layout,
    me: u64,
    own: Own,
) -> Vec<u8> {
    let live = |id: u64| all.binary_search_by_key(&id, |c| c.id).is_ok();
    let mut out = Vec::with_capacity(chosen.len() * 300);
    for client in chosen {
        let own = (client.id == me).then_some(own);
        client.line(&mut out, layout, own, &live);
        out.push(b'\n');
    }
    out
}

/// INFO's reply with `connected_clients` set to `count`: a bulk string (RESP2) or a
/// verbatim string (RESP3) rebuilt with its new length; anything else unchanged.
pub fn patch_connected_clients(reply: &[u8], count: usize) -> Bytes {
    let unchanged = || Bytes::copy_from_slice(reply);
    let (Some(&kind @ (b'$' | b'=')), Some(header)) =
        (reply.first(), memchr::memmem::find(reply, b"\r\n"))
    else {
        return unchanged();
    };
    let Some(payload) = reply.get(header + 2..reply.len().saturating_sub(2)) else {
        return unchanged();
    };
    const KEY: &[u8] = b"\nconnected_clients:";
    let Some(at) = memchr::memmem::find(payload, KEY).map(|i| i + KEY.len()) else {
        return unchanged();
    };
    let Some(end) = memchr::memchr(b'\r', &payload[at..]).map(|i| at + i) else {
        return unchanged();
    };
    let mut body = Vec::with_capacity(payload.len() + 8);
    body.extend_from_slice(&payload[..at]);
    body.extend_from_slice(itoa::Buffer::new().format(count).as_bytes());
    body.extend_from_slice(&payload[end..]);
    let mut out = Vec::with_capacity(body.len() + 16);
    out.push(kind);
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// What CLIENT TRACKING's options say, as far as the ambassador must know: Redis's parse
/// loop (`clientCommand`), stopped where Redis would stop with an error (the command then
/// goes to Redis, which gives that error itself).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackingOptions {
    pub on: bool,
    pub bcast: bool,
    /// The first `REDIRECT <id>` before any error: the argument's index and the id.
    pub redirect: Option<(usize, i64)>,
    /// A second REDIRECT follows the first (Redis's "only redirect to a single" error).
    pub twice: bool,
    /// Redis refuses the options (a syntax error, an id that is not a number, options
    /// that exclude each other): the command changes nothing.
    pub refused: bool,
}

/// Parses `CLIENT TRACKING on|off [options]` (`args` is the whole request).
pub fn tracking_options(args: &[Bytes]) -> TrackingOptions {
    let mut options = TrackingOptions {
        on: args.get(2).is_some_and(|a| a.eq_ignore_ascii_case(b"on")),
        ..TrackingOptions::default()
    };
    let (mut prefixes, mut optin, mut optout) = (false, false, false);
    let mut j = 3;
    while j < args.len() {
        let more = j + 1 < args.len();
        let option = &args[j];
        if option.eq_ignore_ascii_case(b"redirect") && more {
            j += 1;
            if options.redirect.is_some() {
                options.twice = true;
                break;
            }
            match crate::protocol::number::parse_i64(&args[j]) {
                Some(id) => options.redirect = Some((j, id)),
                None => {
                    options.refused = true;
                    break;
                }
            }
        } else if option.eq_ignore_ascii_case(b"bcast") {
            options.bcast = true;
        } else if option.eq_ignore_ascii_case(b"prefix") && more {
            prefixes = true;
            j += 1;
        } else if option.eq_ignore_ascii_case(b"optin") {
            optin = true;
        } else if option.eq_ignore_ascii_case(b"optout") {
            optout = true;
        } else if !option.eq_ignore_ascii_case(b"noloop") {
            options.refused = true;
            break;
        }
        j += 1;
    }
    let off = args.get(2).is_some_and(|a| a.eq_ignore_ascii_case(b"off"));
    options.refused |= !(options.on || off)
        || options.twice
        || (options.on
            && ((prefixes && !options.bcast)
                || (options.bcast && (optin || optout))
                || (optin && optout)));
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: u64, port: u16) -> Arc<Client> {
        let peer: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let local: SocketAddr = "127.0.0.1:6379".parse().unwrap();
        Arc::new(Client::new(id, peer, local, Arc::from("default")))
    }

    fn keys(line: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(line)
            .trim_end()
            .split(' ')
            .map(|f| f.split('=').next().unwrap_or("").to_owned())
            .collect()
    }

    #[test]
    fn redis_7_0_layout() {
        let c = client(7, 50000);
        let get = command::id(b"get");
        c.set_command(get, None);
        let mut line = Vec::new();
        c.line(&mut line, Layout::V7_0, None, &|_| true);
        let want = "id addr laddr fd name age idle flags db sub psub ssub multi qbuf qbuf-free \
                    argv-mem multi-mem rbs rbp obl oll omem tot-mem events cmd user redir resp";
        assert_eq!(keys(&line).join(" "), want);
        let text = String::from_utf8(line).unwrap();
        assert!(text.starts_with("id=7 addr=127.0.0.1:50000 laddr=127.0.0.1:6379 fd=-1 name= "));
        assert!(text.contains(" flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 "));
        assert!(
            text.contains(" cmd=get user=default redir=-1 resp=2"),
            "{text}"
        );
    }

    #[test]
    fn later_layouts_add_fields() {
        let c = client(1, 50001);
        let mut line = Vec::new();
        c.line(&mut line, Layout::V8, None, &|_| true);
        let keys = keys(&line);
        assert!(keys.ends_with(&[
            "resp".into(),
            "lib-name".into(),
            "lib-ver".into(),
            "io-thread".into()
        ]));
        assert_eq!(keys[13], "watch");
        assert_eq!(Layout::for_version(b"7.0.15"), Layout::V7_0);
        assert_eq!(Layout::for_version(b"7.2.4"), Layout::V7_2);
        assert_eq!(Layout::for_version(b"7.4.0"), Layout::V7_4);
        assert_eq!(Layout::for_version(b"8.0.2"), Layout::V8);
        assert_eq!(Layout::for_version(b"6.2.14"), Layout::V6);
    }

    #[test]
    fn flags_and_commands() {
        let c = client(2, 50002);
        let sub = command::client_subcommand(b"list").unwrap();
        c.set_command(command::id(b"client"), Some(sub.index));
        c.set_state(3, Proto::Resp3, Some(2));
        c.set_tracking(Some((9, true)));
        c.set_flag(flag::NO_EVICT, true);
        let mut line = Vec::new();
        c.line(
            &mut line,
            Layout::V7_0,
            Some(Own {
                qbuf: 26,
                argv_mem: 10,
            }),
            &|id| id != 9,
        );
        let text = String::from_utf8(line).unwrap();
        assert!(text.contains(" flags=xtRBe db=3 "), "{text}");
        assert!(
            text.contains(" multi=2 qbuf=26 qbuf-free=20448 argv-mem=10 "),
            "{text}"
        );
        assert!(text.contains(" cmd=client|list "), "{text}");
        assert!(text.contains(" redir=9 resp=3"), "{text}");
        c.set_command(CommandId::OTHER, None);
        assert_eq!(c.command_name(), "NULL");
    }

    #[test]
    fn kill_filters() {
        let clients = Clients::default();
        let a = client(1, 50010);
        let b = client(2, 50011);
        let c = client(3, 50012);
        c.set_subscriptions(1, 0, 0);
        for x in [&a, &b, &c] {
            clients.register(x.clone());
        }
        let by_type = KillFilter {
            kind: Some(ClientType::PubSub),
            skip_me: true,
            ..KillFilter::default()
        };
        assert_eq!(clients.kill(&by_type, 1), (1, false));
        assert!(c.is_killed());
        assert_eq!(clients.len(), 2);
        let by_addr = KillFilter {
            addr: Some(Bytes::from_static(b"127.0.0.1:50010")),
            ..KillFilter::default()
        };
        // The caller is counted, not ended here: it closes after its reply.
        assert_eq!(clients.kill(&by_addr, 1), (1, true));
        assert!(!a.is_killed());
        let everyone_else = KillFilter {
            skip_me: true,
            ..KillFilter::default()
        };
        assert_eq!(clients.kill(&everyone_else, 1), (1, false));
        assert!(b.is_killed());
        assert_eq!(clients.len(), 1);
    }

    #[test]
    fn tracking_options_follow_redis_parse_order() {
        let args = |s: &str| {
            s.split(' ')
                .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                .collect::<Vec<_>>()
        };
        let o = tracking_options(&args(
            "CLIENT TRACKING on BCAST PREFIX redirect REDIRECT 7 NOLOOP",
        ));
        assert_eq!(
            (o.on, o.bcast, o.redirect, o.twice),
            (true, true, Some((7, 7)), false)
        );
        // A syntax error before REDIRECT: Redis answers it, the id is never looked at.
        let o = tracking_options(&args("CLIENT TRACKING on FOO REDIRECT 7"));
        assert_eq!((o.redirect, o.refused), (None, true));
        let o = tracking_options(&args("CLIENT TRACKING on PREFIX a"));
        assert!(o.refused, "PREFIX needs BCAST");
        let o = tracking_options(&args("CLIENT TRACKING off REDIRECT x"));
        assert_eq!((o.on, o.redirect), (false, None));
        let o = tracking_options(&args("CLIENT TRACKING on REDIRECT 3 REDIRECT 4"));
        assert_eq!((o.redirect, o.twice), (Some((4, 3)), true));
    }

    #[test]
    fn info_counts_the_applications_connections() {
        let body = "# Clients\r\nconnected_clients:12\r\ncluster_connections:0\r\n";
        let reply = format!("${}\r\n{body}\r\n", body.len());
        let want_body = body.replace(":12\r\n", ":3\r\n");
        let want = format!("${}\r\n{want_body}\r\n", want_body.len());
        assert_eq!(
            &patch_connected_clients(reply.as_bytes(), 3)[..],
            want.as_bytes()
        );
        let verbatim = format!("={}\r\ntxt:{body}\r\n", body.len() + 4);
        let want = format!("={}\r\ntxt:{want_body}\r\n", want_body.len() + 4);
        assert_eq!(
            &patch_connected_clients(verbatim.as_bytes(), 3)[..],
            want.as_bytes()
        );
        let server_only = b"$13\r\n# Server\r\nx:1\r\n\r\n";
        assert_eq!(
            &patch_connected_clients(server_only, 3)[..],
            &server_only[..]
        );
        assert_eq!(
            &patch_connected_clients(b"-ERR x\r\n", 3)[..],
            b"-ERR x\r\n"
        );
    }

    #[test]
    fn a_redirect_target_keeps_its_connection() {
        let c = client(5, 50020);
        c.publish_upstream(Some(42));
        assert!(c.release_upstream(), "not a target: may leave");
        assert_eq!(c.claim_target(), None, "left: no connection to point at");
        c.publish_upstream(Some(43));
        assert_eq!(c.claim_target(), Some(43));
        assert!(!c.release_upstream(), "a target must keep its connection");
        c.forget_target();
        assert!(!c.target_wanted());
    }
}

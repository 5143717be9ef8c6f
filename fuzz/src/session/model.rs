//! What the proxy must answer to a byte stream: the requests are found with the project's
//! request scanner (fed one byte at a time, so the model also knows where each request —
//! and a protocol error — ends), and each is run through a model of the session's state
//! (authentication, database, protocol, name, MULTI queue, WATCH) written from Redis's
//! documented behaviour, with forwarded commands answered by the fake upstream's own logic
//! on a connection in the client's state.
//!
//! The model gives up — stops predicting, and the checks fall back to "what was predicted
//! before is a prefix of what came" — at the first command that puts the session in relay
//! mode (SUBSCRIBE family, MONITOR, CLIENT TRACKING ON, CLIENT REPLY OFF|SKIP), where one
//! reply per request no longer holds.
//!
//! Deliberate differences from Redis that the model follows (they are the proxy's
//! documented behaviour, not bugs): commands the proxy refuses (CLIENT NO-EVICT/NO-TOUCH,
//! SYNC/PSYNC, REDIRECT tracking; SUBSCRIBE, CLIENT TRACKING/REPLY inside MULTI) get an
//! error and abort the transaction; a HELLO queued in MULTI changes the protocol of the
//! replies after EXEC, not of the forwarded replies inside EXEC's array (they were made
//! upstream before the proxy ran the HELLO); unknown commands before authentication get
//! NOAUTH (the proxy cannot tell unknown commands from forwarded ones).

use bytes::{Bytes, BytesMut};
use redis_ambassador::command::{self, ClientSub, Kind, Local};
use redis_ambassador::protocol::{RequestLimits, RequestScanner};
use redis_ambassador::replies;

use super::fake::{self, Answer, FakeConn, bulk, redis_int};

/// What one reply must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Exact(Vec<u8>),
    /// Starts with these bytes (a HELLO map, CLIENT ID's integer, CLIENT INFO).
    Prefix(Vec<u8>),
    /// Any error reply.
    Error,
    /// An array whose elements are these (EXEC).
    Array(Vec<Expect>),
}

/// How the connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Every request answered; the session closes when the client half-closes.
    Open,
    /// The session closes after the last expected reply (QUIT, HTTP probe, protocol error).
    Closes,
    /// Relay mode started: only the replies predicted before it are known.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Expected {
    /// Each reply, and the input offset at which its request (or error) is complete.
    pub replies: Vec<(Expect, usize)>,
    pub end: End,
    /// Bytes after this offset are not read by the session (after a close).
    pub send_len: usize,
    /// A blocking command ran outside MULTI: the session reads the client meanwhile, so an
    /// early half-close may legitimately cut the replies short.
    pub blocking: bool,
    /// Where each blocking command (outside MULTI) ends in the input.
    pub blocking_ends: Vec<usize>,
    /// After relay mode started: where the client stops sending (known bugs 3 to 6).
    pub relay_cut: Option<usize>,
    /// The requests the model saw (for failure reports).
    pub requests: Vec<Vec<Bytes>>,
}

impl Expected {
    /// How many replies are owed once the first `offset` bytes have been sent.
    pub fn owed_by(&self, offset: usize) -> usize {
        self.replies
            .iter()
            .take_while(|(_, at)| *at <= offset)
            .count()
    }
}

/// A request's effect on the reply stream.
enum Outcome {
    Reply(Expect),
    /// This reply (if any), then the session closes.
    Close(Option<Expect>),
    /// Relay mode: the model stops.
    Stop,
}

/// A command queued inside MULTI.
#[derive(Debug, Clone)]
enum Queued {
    /// Queued upstream (and run there by EXEC).
    Upstream(Vec<Bytes>),
    /// Answered by the proxy itself when EXEC runs.
    Local(Vec<Bytes>),
}

#[derive(Debug, Default)]
struct Multi {
    queue: Vec<Queued>,
    error: bool,
    /// Known bug 1: MULTI or WATCH was sent inside the transaction; the proxy counts it as
    /// a queued command although Redis does not queue it.
    phantom: bool,
}

struct State {
    auth_required: bool,
    authenticated: bool,
    db: u32,
    proto: u8,
    name: Option<Vec<u8>>,
    multi: Option<Multi>,
    watching: bool,
    blocking: bool,
}

/// The users the fuzzed proxy is configured with when authentication is required.
pub const USERS: &[(&str, &str)] = &[("default", "pw"), ("app", "apppw")];

/// Runs the model over the whole stream.
pub fn expect(bytes: &[u8], auth_required: bool) -> Expected {
    let mut state = State {
        auth_required,
        authenticated: !auth_required,
        db: 0,
        proto: 2,
        name: None,
        multi: None,
        watching: false,
        blocking: false,
    };
    let mut out = Expected {
        replies: Vec::new(),
        end: End::Open,
        send_len: bytes.len(),
        blocking: false,
        blocking_ends: Vec::new(),
        relay_cut: None,
        requests: Vec::new(),
    };
    let mut scanner = RequestScanner::new(RequestLimits::default());
    let mut buf = BytesMut::new();
    'bytes: for (i, &b) in bytes.iter().enumerate() {
        let offset = i + 1;
        buf.extend_from_slice(&[b]);
        loop {
            match scanner.next(&mut buf, !state.authenticated) {
                Ok(Some(request)) => {
                    out.requests.push(request.args.clone());
                    let was_blocking = state.blocking;
                    state.blocking = false;
                    let outcome = state.request(&request.args);
                    if state.blocking {
                        out.blocking_ends.push(offset);
                    }
                    state.blocking |= was_blocking;
                    match outcome {
                        Outcome::Reply(e) => out.replies.push((e, offset)),
                        Outcome::Close(reply) => {
                            if let Some(e) = reply {
                                out.replies.push((e, offset));
                            }
                            out.end = End::Closes;
                            out.send_len = offset;
                            break 'bytes;
                        }
                        Outcome::Stop => {
                            out.end = End::Unknown;
                            out.relay_cut =
                                relay_cut(&bytes[offset..], !state.authenticated, &request.args)
                                    .map(|at| offset + at);
                            break 'bytes;
                        }
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    if let Some(reply) = error.reply() {
                        out.replies.push((Expect::Exact(reply), offset));
                    }
                    out.end = End::Closes;
                    out.send_len = offset;
                    break 'bytes;
                }
            }
        }
    }
    out.blocking = state.blocking;
    out
}

/// Where the client stops sending once relay mode may have started, to step around known
/// bugs 3 to 6: before the first MULTI; before a protocol error or a RESET that directly
/// follows CLIENT REPLY SKIP; before a CLIENT REPLY ON once a SUBSCRIBE was sent under
/// CLIENT REPLY OFF. `first` is the request that started relay mode.
fn relay_cut(bytes: &[u8], unauthenticated: bool, first: &[Bytes]) -> Option<usize> {
    let mut scanner = RequestScanner::new(RequestLimits::default());
    let mut buf = BytesMut::from(bytes);
    let mut start = 0;
    let mut after_skip = is_reply_mode(first, b"skip");
    let mut reply_off = is_reply_mode(first, b"off");
    let mut subscribed_while_off = false;
    loop {
        let before = buf.len();
        match scanner.next(&mut buf, unauthenticated) {
            Ok(Some(request)) => {
                let args = &request.args;
                let name = &args[0];
                if name.eq_ignore_ascii_case(b"multi")
                    || (after_skip && name.eq_ignore_ascii_case(b"reset"))
                    || (subscribed_while_off && is_reply_mode(args, b"on"))
                {
                    return Some(start);
                }
                after_skip = is_reply_mode(args, b"skip");
                if is_reply_mode(args, b"off") {
                    reply_off = true;
                } else if is_reply_mode(args, b"on") || name.eq_ignore_ascii_case(b"reset") {
                    reply_off = false;
                }
                subscribed_while_off |=
                    reply_off && name.to_ascii_lowercase().ends_with(b"subscribe");
                start += before - buf.len();
            }
            Ok(None) => return None,
            Err(_) => return after_skip.then_some(start),
        }
    }
}

/// Whether the request is `CLIENT REPLY <mode>`.
fn is_reply_mode(args: &[Bytes], mode: &[u8]) -> bool {
    args.len() == 3
        && args[0].eq_ignore_ascii_case(b"client")
        && args[1].eq_ignore_ascii_case(b"reply")
        && args[2].eq_ignore_ascii_case(mode)
}

fn exact(bytes: &[u8]) -> Outcome {
    Outcome::Reply(Expect::Exact(bytes.to_vec()))
}

fn error() -> Outcome {
    Outcome::Reply(Expect::Error)
}

/// Redis's `validateClientAttr`, read as a C string: printable ASCII without spaces.
fn valid_attribute(value: &[u8]) -> bool {
    value
        .iter()
        .take_while(|&&b| b != 0)
        .all(|&b| (b'!'..=b'~').contains(&b))
}

fn null(proto: u8) -> Vec<u8> {
    if proto == 3 {
        b"_\r\n".to_vec()
    } else {
        b"$-1\r\n".to_vec()
    }
}

impl State {
    fn credentials_ok(&self, user: &[u8], password: &[u8]) -> bool {
        if !self.auth_required {
            // Any other user is checked by the upstream itself (the fake accepts all).
            return user == b"default"
                || (!user.eq_ignore_ascii_case(b"default") && std::str::from_utf8(user).is_ok());
        }
        USERS
            .iter()
            .any(|(u, p)| u.as_bytes() == user && p.as_bytes() == password)
    }

    fn reset(&mut self) {
        self.multi = None;
        self.watching = false;
        self.db = 0;
        self.proto = 2;
        self.name = None;
        self.authenticated = !self.auth_required;
    }

    fn request(&mut self, args: &[Bytes]) -> Outcome {
        let Some(cmd) = command::lookup(&args[0]) else {
            if let Some(multi) = self.multi.as_mut() {
                multi.queue.push(Queued::Upstream(args.to_vec()));
                return exact(replies::QUEUED);
            }
            return self.forward(args);
        };
        if cmd.kind == Kind::HttpProbe {
            return Outcome::Close(None);
        }
        if !command::arity_ok(cmd.arity, args.len()) {
            self.flag_multi();
            return error();
        }
        if self.multi.is_some() {
            return self.in_multi(cmd.kind, args);
        }
        match cmd.kind {
            Kind::Local(local) => self.local(local, args),
            Kind::HttpProbe | Kind::Forward => self.forward(args),
            _ if !self.authenticated => exact(replies::NOAUTH),
            Kind::Multi => {
                self.multi = Some(Multi::default());
                self.forward(args)
            }
            Kind::Watch => {
                self.watching = true;
                self.forward(args)
            }
            // WAIT's fence (see the session's plan) is answered upstream and not shown.
            Kind::Blocking | Kind::WaitReplicas => {
                self.blocking = true;
                self.forward(args)
            }
            Kind::StreamRead => {
                self.blocking |= command::stream_read_blocks(args);
                self.forward(args)
            }
            // SYNC/PSYNC: the client becomes a replica, relayed byte for byte.
            Kind::Subscribe(_) | Kind::Monitor | Kind::Replication => Outcome::Stop,
            Kind::Interrupt => self.forward(args),
        }
    }

    fn flag_multi(&mut self) {
        if let Some(multi) = self.multi.as_mut() {
            multi.error = true;
        }
    }

    /// A forwarded command: what the upstream answers on a connection in the client's state.
    fn forward(&mut self, args: &[Bytes]) -> Outcome {
        if !self.authenticated {
            return exact(replies::NOAUTH);
        }
        match FakeConn::at(self.db, self.proto).execute(args) {
            Answer::Reply(reply) => Outcome::Reply(Expect::Exact(reply)),
            Answer::Silent | Answer::Close(_) => Outcome::Stop,
        }
    }

    fn local(&mut self, local: Local, args: &[Bytes]) -> Outcome {
        match local {
            Local::Auth => self.auth(args),
            Local::Hello => self.hello(args),
            Local::Quit => Outcome::Close(Some(Expect::Exact(replies::OK.to_vec()))),
            Local::Reset => {
                self.reset();
                exact(replies::RESET)
            }
            Local::Client => self.client(args),
            // The upstream's reply, its `connected_clients` (if any) counting the clients.
            Local::Info => self.forward(args),
            _ if !self.authenticated => exact(replies::NOAUTH),
            Local::Select => match redis_int(&args[1]).and_then(|n| i32::try_from(n).ok()) {
                None => exact(replies::NOT_AN_INTEGER),
                Some(n) if (0..fake::DATABASES as i32).contains(&n) => {
                    self.db = n as u32;
                    exact(replies::OK)
                }
                Some(_) => exact(replies::DB_OUT_OF_RANGE),
            },
            // Forwarded: Redis answers them.
            Local::Ping | Local::Echo => self.forward(args),
            Local::Exec => exact(replies::EXEC_WITHOUT_MULTI),
            Local::Discard => exact(replies::DISCARD_WITHOUT_MULTI),
            Local::Unwatch => {
                self.watching = false;
                exact(replies::OK)
            }
        }
    }

    fn auth(&mut self, args: &[Bytes]) -> Outcome {
        if args.len() > 3 {
            return exact(replies::SYNTAX_ERROR);
        }
        let (user, password) = if args.len() == 2 {
            if !self.auth_required {
                return exact(replies::AUTH_WITHOUT_PASSWORD);
            }
            (&b"default"[..], &args[1][..])
        } else {
            (&args[1][..], &args[2][..])
        };
        if self.credentials_ok(user, password) {
            self.authenticated = true;
            exact(replies::OK)
        } else {
            exact(replies::WRONGPASS)
        }
    }

    fn hello(&mut self, args: &[Bytes]) -> Outcome {
        let mut version = None;
        let mut next = 1;
        if let Some(v) = args.get(1) {
            match redis_int(v) {
                None => return exact(replies::HELLO_BAD_VERSION),
                Some(2) => version = Some(2),
                Some(3) => version = Some(3),
                Some(_) => return exact(replies::NOPROTO),
            }
            next = 2;
        }
        let mut credentials = None;
        let mut name = None;
        let mut j = next;
        while j < args.len() {
            let more = args.len() - 1 - j;
            if args[j].eq_ignore_ascii_case(b"AUTH") && more >= 2 {
                credentials = Some((args[j + 1].clone(), args[j + 2].clone()));
                j += 3;
            } else if args[j].eq_ignore_ascii_case(b"SETNAME") && more >= 1 {
                if !valid_attribute(&args[j + 1]) {
                    return exact(replies::BAD_CLIENT_NAME);
                }
                name = Some(args[j + 1].to_vec());
                j += 2;
            } else {
                return error();
            }
        }
        if let Some((user, password)) = credentials {
            if !self.credentials_ok(&user, &password) {
                return exact(replies::WRONGPASS);
            }
            self.authenticated = true;
        }
        if !self.authenticated {
            return exact(replies::HELLO_NOAUTH);
        }
        if let Some(name) = name {
            self.name = (!name.is_empty()).then_some(name);
        }
        if let Some(v) = version {
            self.proto = v;
        }
        let header: &[u8] = if self.proto == 3 {
            b"%7\r\n"
        } else {
            b"*14\r\n"
        };
        Outcome::Reply(Expect::Prefix(header.to_vec()))
    }

    fn client(&mut self, args: &[Bytes]) -> Outcome {
        let Some(sub) = command::client_subcommand(&args[1]) else {
            return error();
        };
        if !command::arity_ok(sub.arity, args.len()) {
            return error();
        }
        if !self.authenticated {
            return exact(replies::NOAUTH);
        }
        match sub.kind {
            ClientSub::GetName => match &self.name {
                Some(name) => Outcome::Reply(Expect::Exact(bulk(name))),
                None => Outcome::Reply(Expect::Exact(null(self.proto))),
            },
            ClientSub::SetName => {
                if !valid_attribute(&args[2]) {
                    return exact(replies::BAD_CLIENT_NAME);
                }
                self.name = (!args[2].is_empty()).then(|| args[2].to_vec());
                exact(replies::OK)
            }
            ClientSub::Id => Outcome::Reply(Expect::Prefix(b":".to_vec())),
            ClientSub::Info => {
                let first: &[u8] = if self.proto == 3 { b"=" } else { b"$" };
                Outcome::Reply(Expect::Prefix(first.to_vec()))
            }
            ClientSub::SetInfo => {
                let known = args[2].eq_ignore_ascii_case(b"lib-name")
                    || args[2].eq_ignore_ascii_case(b"lib-ver");
                if known && valid_attribute(&args[3]) {
                    exact(replies::OK)
                } else {
                    error()
                }
            }
            ClientSub::Tracking if args[2].eq_ignore_ascii_case(b"on") => Outcome::Stop,
            // A REDIRECT names a client id the model does not follow.
            ClientSub::Tracking
                if args[3..]
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(b"redirect")) =>
            {
                Outcome::Stop
            }
            ClientSub::Reply if !args[2].eq_ignore_ascii_case(b"on") => Outcome::Stop,
            ClientSub::List if args.len() == 2 => {
                let first: &[u8] = if self.proto == 3 { b"=" } else { b"$" };
                Outcome::Reply(Expect::Prefix(first.to_vec()))
            }
            // Filters, other clients, and a KILL that may end this one: not modelled.
            ClientSub::List | ClientSub::Kill | ClientSub::NoTouch | ClientSub::Unblock => {
                Outcome::Stop
            }
            ClientSub::NoEvict => {
                if args[2].eq_ignore_ascii_case(b"on") || args[2].eq_ignore_ascii_case(b"off") {
                    exact(replies::OK)
                } else {
                    exact(replies::SYNTAX_ERROR)
                }
            }
            ClientSub::Tracking
            | ClientSub::Reply
            | ClientSub::GetRedir
            | ClientSub::TrackingInfo
            | ClientSub::Forward => self.forward(args),
        }
    }

    /// A command while MULTI is open, as Redis's processCommand treats it.
    fn in_multi(&mut self, kind: Kind, args: &[Bytes]) -> Outcome {
        let queue = |state: &mut State, q: Queued| {
            if let Some(multi) = state.multi.as_mut() {
                multi.queue.push(q);
            }
            exact(replies::QUEUED)
        };
        match kind {
            Kind::Local(Local::Exec) => self.exec(),
            Kind::Local(Local::Discard) => {
                self.multi = None;
                self.watching = false;
                exact(replies::OK)
            }
            Kind::Local(Local::Quit) => Outcome::Close(Some(Expect::Exact(replies::OK.to_vec()))),
            Kind::Local(Local::Reset) => {
                self.reset();
                exact(replies::RESET)
            }
            Kind::Local(Local::Select | Local::Ping | Local::Echo | Local::Unwatch) => {
                queue(self, Queued::Upstream(args.to_vec()))
            }
            Kind::Local(Local::Client) => match command::client_subcommand(&args[1]) {
                None => {
                    self.flag_multi();
                    error()
                }
                Some(sub) if !command::arity_ok(sub.arity, args.len()) => {
                    self.flag_multi();
                    error()
                }
                Some(sub) => match sub.kind {
                    ClientSub::Forward | ClientSub::GetRedir | ClientSub::TrackingInfo => {
                        queue(self, Queued::Upstream(args.to_vec()))
                    }
                    ClientSub::Tracking | ClientSub::Reply | ClientSub::NoTouch => {
                        self.flag_multi();
                        error()
                    }
                    _ => queue(self, Queued::Local(args.to_vec())),
                },
            },
            Kind::Local(Local::Auth | Local::Hello) => queue(self, Queued::Local(args.to_vec())),
            Kind::Subscribe(_) => {
                self.flag_multi();
                error()
            }
            // Redis runs MULTI and WATCH at once inside a transaction: an error, nothing
            // queued, the transaction goes on.
            Kind::Multi | Kind::Watch => {
                if let Some(multi) = self.multi.as_mut() {
                    multi.phantom = true;
                }
                let reply: &[u8] = if kind == Kind::Multi {
                    b"-ERR MULTI calls can not be nested\r\n"
                } else {
                    b"-ERR WATCH inside MULTI is not allowed\r\n"
                };
                Outcome::Reply(Expect::Exact(reply.to_vec()))
            }
            _ => queue(self, Queued::Upstream(args.to_vec())),
        }
    }

    fn exec(&mut self) -> Outcome {
        let multi = self.multi.take().unwrap_or_default();
        self.watching = false;
        if multi.error {
            return exact(replies::EXECABORT);
        }
        let mut upstream = FakeConn::at(self.db, self.proto);
        let mut elements = Vec::new();
        let needs_finishing = multi.queue.iter().any(|q| match q {
            Queued::Local(_) => true,
            Queued::Upstream(args) => args[0].eq_ignore_ascii_case(b"select"),
        });
        if multi.phantom && needs_finishing && !super::strict() {
            // Known bug 1: EXEC's array has one element fewer than the proxy expects, so it
            // passes the array through: the local commands never run, a SELECT is not
            // followed.
            for queued in multi.queue {
                if let Queued::Upstream(args) = queued {
                    elements.push(Expect::Exact(upstream.in_exec(&args)));
                }
            }
            return Outcome::Reply(Expect::Array(elements));
        }
        for queued in multi.queue {
            match queued {
                Queued::Upstream(args) => {
                    let reply = upstream.in_exec(&args);
                    if args[0].eq_ignore_ascii_case(b"select") && reply == replies::OK {
                        self.db = upstream.db;
                    }
                    elements.push(Expect::Exact(reply));
                }
                Queued::Local(args) => match self.request(&args) {
                    Outcome::Reply(e) => elements.push(e),
                    Outcome::Close(_) | Outcome::Stop => return Outcome::Stop,
                },
            }
        }
        Outcome::Reply(Expect::Array(elements))
    }
}

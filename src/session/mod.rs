//! One client connection: its state machine (authentication, database, protocol, name)
//! and its loop — read, scan every complete request, answer the local ones and plan the
//! forwarded ones into a batch, run the batch, write the replies in request order.
//!
//! The session owns everything that is per-client; nothing here is shared with another
//! client except through `Shared`, which holds no client state. A protocol error is
//! answered after the replies owed to earlier requests, and then the connection closes.

mod batch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::command::{self, ClientSub, Kind, Local};
use crate::metrics::{self, ErrorClass};
use crate::protocol::number::{parse_i32, parse_i64};
use crate::protocol::{Proto, Request, RequestLimits, RequestScanner, encode};
use crate::replies;
use crate::secret::Secret;
use crate::upstream::{ConnState, Upstream};
use batch::Batch;

/// What every session shares: the upstream, the client credentials, the limits.
pub struct Shared {
    pub upstream: Upstream,
    /// The password clients must present; `None` is Redis's `nopass`.
    pub client_password: Option<Secret>,
    pub client_username: String,
    pub limits: RequestLimits,
    next_client_id: AtomicU64,
}

impl Shared {
    pub fn new(
        upstream: Upstream,
        client_password: Option<Secret>,
        client_username: String,
        limits: RequestLimits,
    ) -> Shared {
        Shared {
            upstream,
            client_password,
            client_username,
            limits,
            next_client_id: AtomicU64::new(1),
        }
    }

    /// Checks a username/password pair. Without a client password the only user is
    /// `default`, who needs none (Redis's `nopass`).
    fn authenticate(&self, username: &[u8], password: &[u8]) -> bool {
        match &self.client_password {
            None => username == b"default",
            Some(secret) => {
                // Evaluate both so timing does not tell which one was wrong.
                let user_ok = username == self.client_username.as_bytes();
                let pass_ok = secret.matches(password);
                user_ok & pass_ok
            }
        }
    }
}

/// Whether the session goes on after a request.
enum Flow {
    Continue,
    /// Flush what is owed, then close (QUIT).
    Close,
    /// Close at once with no reply (an HTTP request).
    Drop,
}

const READ_CHUNK: usize = 16 * 1024;

pub struct Session {
    shared: Arc<Shared>,
    id: u64,
    authenticated: bool,
    db: u32,
    proto: Proto,
    name: Option<Bytes>,
    lib_name: Option<Bytes>,
    lib_ver: Option<Bytes>,
    peer: SocketAddr,
    local_addr: SocketAddr,
    created: Instant,
    last_activity: Instant,
    /// The client socket's descriptor, for CLIENT INFO.
    fd: i64,
}

impl Session {
    pub fn new(shared: Arc<Shared>, peer: SocketAddr, local_addr: SocketAddr) -> Session {
        let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed);
        let authenticated = shared.client_password.is_none();
        let now = Instant::now();
        Session {
            shared,
            id,
            authenticated,
            db: 0,
            proto: Proto::Resp2,
            name: None,
            lib_name: None,
            lib_ver: None,
            peer,
            local_addr,
            created: now,
            last_activity: now,
            fd: -1,
        }
    }

    fn requires_auth(&self) -> bool {
        !self.authenticated
    }

    fn conn_state(&self) -> ConnState {
        ConnState {
            db: self.db,
            proto: self.proto,
        }
    }

    /// Serves the client until it leaves, breaks the protocol, QUITs, or `closing` fires.
    /// `closing` is honoured between batches: requests already read are answered first.
    pub async fn run(mut self, stream: TcpStream, closing: CancellationToken) {
        let global = metrics::global();
        global.client_connections.increment(1.0);
        global.client_connections_total.increment(1);
        self.serve(stream, closing).await;
        global.client_connections.decrement(1.0);
    }

    async fn serve(&mut self, stream: TcpStream, closing: CancellationToken) {
        let global = metrics::global();
        self.fd = fd_of(&stream);
        let (mut reader, mut writer) = stream.into_split();
        let mut scanner = RequestScanner::new(self.shared.limits);
        let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
        let mut out = BytesMut::with_capacity(READ_CHUNK);
        loop {
            let mut batch = Batch::new();
            let mut flow = Flow::Continue;
            while !batch.is_full() {
                match scanner.next(&mut inbuf, self.requires_auth()) {
                    Ok(Some(request)) => {
                        flow = self.handle(request, &mut batch).await;
                        if !matches!(flow, Flow::Continue) {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(error) => {
                        tracing::debug!(%error, "protocol error from client");
                        global.protocol_errors.increment(1);
                        match error.reply() {
                            Some(reply) => {
                                batch.reply(&reply);
                                flow = Flow::Close;
                            }
                            None => flow = Flow::Drop,
                        }
                        break;
                    }
                }
            }
            if matches!(flow, Flow::Drop) {
                // Redis answers earlier requests before dropping; so do we.
                let _ = batch
                    .execute(&self.shared.upstream, &mut out, &mut writer)
                    .await;
                global.bytes_out.increment(out.len() as u64);
                let _ = writer.write_all(&out).await;
                return;
            }
            if !batch.is_empty() {
                if batch
                    .execute(&self.shared.upstream, &mut out, &mut writer)
                    .await
                    .is_err()
                {
                    return;
                }
                global.bytes_out.increment(out.len() as u64);
                if writer.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
            if matches!(flow, Flow::Close) {
                let _ = writer.shutdown().await;
                return;
            }
            if batch_was_full(&scanner, &inbuf) {
                continue;
            }
            inbuf.reserve(READ_CHUNK);
            let read = tokio::select! {
                read = reader.read_buf(&mut inbuf) => read,
                _ = closing.cancelled() => {
                    tracing::debug!("closing an idle client for shutdown");
                    let _ = writer.shutdown().await;
                    return;
                }
            };
            match read {
                Ok(0) => return,
                Ok(n) => {
                    global.bytes_in.increment(n as u64);
                    self.last_activity = Instant::now();
                    if let Err(error) = scanner.check_buffer(&inbuf, self.requires_auth()) {
                        tracing::warn!(%error, bytes = inbuf.len(), "closing client over the query buffer limit");
                        return;
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "client read failed");
                    return;
                }
            }
        }
    }

    /// Dispatches one request: a local answer, a refusal, or a place in the batch.
    async fn handle(&mut self, request: Request, batch: &mut Batch) -> Flow {
        batch.begin(command::id(request.name()));
        let Some(command) = command::lookup(request.name()) else {
            return self.forward(request, batch);
        };
        if command.kind == Kind::HttpProbe {
            tracing::warn!(peer = %self.peer, "HTTP request on the Redis port; closing the connection");
            return Flow::Drop;
        }
        if !command::arity_ok(command.arity, request.args.len()) {
            replies::wrong_arity(batch.local(), command.name);
            batch.end_local();
            return Flow::Continue;
        }
        match command.kind {
            Kind::Local(local) => self.local(local, &request, batch).await,
            Kind::Stateful => {
                self.refuse(command.name, batch);
                Flow::Continue
            }
            Kind::StreamRead if command::stream_read_blocks(&request.args) => {
                self.refuse(command.name, batch);
                Flow::Continue
            }
            Kind::StreamRead | Kind::Forward | Kind::HttpProbe => self.forward(request, batch),
        }
    }

    fn refuse(&self, name: &str, batch: &mut Batch) {
        if self.requires_auth() {
            batch.reply(replies::NOAUTH);
        } else {
            replies::unsupported(batch.local(), name);
            batch.end_local_as(Some(ErrorClass::Unsupported));
        }
    }

    fn forward(&self, request: Request, batch: &mut Batch) -> Flow {
        if self.requires_auth() {
            batch.reply(replies::NOAUTH);
            return Flow::Continue;
        }
        let bytes = match request.canonical {
            Some(frame) => frame,
            None => encode::command(&request.args),
        };
        batch.forward(bytes, self.conn_state());
        Flow::Continue
    }

    async fn local(&mut self, local: Local, request: &Request, batch: &mut Batch) -> Flow {
        let args = &request.args;
        match local {
            Local::Auth => self.auth(args, batch),
            Local::Hello => self.hello(args, batch).await,
            Local::Quit => {
                batch.reply(replies::OK);
                return Flow::Close;
            }
            Local::Reset => {
                self.reset();
                batch.reply(replies::RESET);
            }
            Local::Client => self.client(args, batch),
            _ if self.requires_auth() => batch.reply(replies::NOAUTH),
            Local::Select => self.select(&args[1], batch).await,
            // PING's own check, made after authentication, as in Redis's pingCommand.
            Local::Ping if args.len() > 2 => {
                replies::wrong_arity(batch.local(), "ping");
                batch.end_local();
            }
            Local::Ping => match args.get(1) {
                None => batch.reply(replies::PONG),
                Some(message) => {
                    encode::bulk(batch.local(), message);
                    batch.end_local();
                }
            },
            Local::Echo => {
                encode::bulk(batch.local(), &args[1]);
                batch.end_local();
            }
            Local::Exec => batch.reply(replies::EXEC_WITHOUT_MULTI),
            Local::Discard => batch.reply(replies::DISCARD_WITHOUT_MULTI),
            Local::Unwatch => batch.reply(replies::OK),
        }
        Flow::Continue
    }

    fn auth(&mut self, args: &[Bytes], batch: &mut Batch) {
        if args.len() > 3 {
            return batch.reply(replies::SYNTAX_ERROR);
        }
        let (username, password) = if args.len() == 2 {
            if self.shared.client_password.is_none() {
                return batch.reply(replies::AUTH_WITHOUT_PASSWORD);
            }
            (&b"default"[..], &args[1][..])
        } else {
            (&args[1][..], &args[2][..])
        };
        if self.shared.authenticate(username, password) {
            self.authenticated = true;
            batch.reply(replies::OK);
        } else {
            // A failed AUTH does not undo an earlier success (Redis 6+).
            tracing::debug!(peer = %self.peer, "client authentication failed");
            metrics::global().client_auth_failures.increment(1);
            batch.reply(replies::WRONGPASS);
        }
    }

    async fn hello(&mut self, args: &[Bytes], batch: &mut Batch) {
        let mut version = None;
        let mut next = 1;
        if let Some(arg) = args.get(1) {
            match parse_i64(arg) {
                None => return batch.reply(replies::HELLO_BAD_VERSION),
                Some(2) => version = Some(Proto::Resp2),
                Some(3) => version = Some(Proto::Resp3),
                Some(_) => return batch.reply(replies::NOPROTO),
            }
            next = 2;
        }
        let mut credentials = None;
        let mut new_name = None;
        let mut j = next;
        while j < args.len() {
            let more = args.len() - 1 - j;
            let option = &args[j];
            if option.eq_ignore_ascii_case(b"AUTH") && more >= 2 {
                credentials = Some((&args[j + 1], &args[j + 2]));
                j += 3;
            } else if option.eq_ignore_ascii_case(b"SETNAME") && more >= 1 {
                if !valid_client_attribute(&args[j + 1]) {
                    return batch.reply(replies::BAD_CLIENT_NAME);
                }
                new_name = Some(args[j + 1].clone());
                j += 2;
            } else {
                replies::hello_syntax(batch.local(), option);
                return batch.end_local();
            }
        }
        if let Some((username, password)) = credentials {
            if !self.shared.authenticate(username, password) {
                tracing::debug!(peer = %self.peer, "client authentication failed (HELLO)");
                metrics::global().client_auth_failures.increment(1);
                return batch.reply(replies::WRONGPASS);
            }
            self.authenticated = true;
        }
        if self.requires_auth() {
            return batch.reply(replies::HELLO_NOAUTH);
        }
        let info = match self.shared.upstream.info().await {
            Ok(info) => info,
            Err(error) => {
                replies::proxy_error(batch.local(), &error.to_string());
                return batch.end_local();
            }
        };
        if version == Some(Proto::Resp3) && !info.resp3 {
            return batch.reply(replies::NOPROTO);
        }
        if let Some(name) = new_name {
            self.name = (!name.is_empty()).then_some(name);
        }
        if let Some(version) = version {
            self.proto = version;
        }
        let out = batch.local();
        encode::map_header(out, 7, self.proto);
        encode::bulk(out, b"server");
        encode::bulk(
            out,
            if info.server.is_empty() {
                b"redis"
            } else {
                &info.server
            },
        );
        encode::bulk(out, b"version");
        encode::bulk(out, &info.version);
        encode::bulk(out, b"proto");
        encode::integer(out, self.proto.number());
        encode::bulk(out, b"id");
        encode::integer(out, self.id as i64);
        encode::bulk(out, b"mode");
        encode::bulk(
            out,
            if info.mode.is_empty() {
                b"standalone"
            } else {
                &info.mode
            },
        );
        encode::bulk(out, b"role");
        encode::bulk(
            out,
            if info.role.is_empty() {
                b"master"
            } else {
                &info.role
            },
        );
        encode::bulk(out, b"modules");
        encode::array_header(out, 0);
        batch.end_local();
    }

    async fn select(&mut self, arg: &[u8], batch: &mut Batch) {
        let Some(index) = parse_i32(arg) else {
            return batch.reply(replies::NOT_AN_INTEGER);
        };
        let info = match self.shared.upstream.info().await {
            Ok(info) => info,
            Err(error) => {
                replies::proxy_error(batch.local(), &error.to_string());
                return batch.end_local();
            }
        };
        if &info.mode[..] == b"cluster" && index != 0 {
            return batch.reply(replies::SELECT_IN_CLUSTER);
        }
        // Without `CONFIG GET databases` (an ACL may forbid it) assume Redis's default.
        let databases = info.databases.unwrap_or(16);
        match u32::try_from(index) {
            Ok(db) if db < databases => {
                self.db = db;
                batch.reply(replies::OK);
            }
            _ => batch.reply(replies::DB_OUT_OF_RANGE),
        }
    }

    fn reset(&mut self) {
        self.db = 0;
        self.proto = Proto::Resp2;
        self.name = None;
        self.authenticated = self.shared.client_password.is_none();
    }

    fn client(&mut self, args: &[Bytes], batch: &mut Batch) {
        let Some(sub) = command::client_subcommand(&args[1]) else {
            replies::unknown_subcommand(batch.local(), &args[0], &args[1]);
            return batch.end_local();
        };
        if !command::arity_ok(sub.arity, args.len()) {
            replies::wrong_arity(batch.local(), sub.full_name);
            return batch.end_local();
        }
        if self.requires_auth() {
            return batch.reply(replies::NOAUTH);
        }
        match sub.kind {
            ClientSub::GetName => {
                match &self.name {
                    Some(name) => encode::bulk(batch.local(), name),
                    None => encode::null(batch.local(), self.proto),
                }
                batch.end_local();
            }
            ClientSub::SetName => {
                if !valid_client_attribute(&args[2]) {
                    return batch.reply(replies::BAD_CLIENT_NAME);
                }
                self.name = (!args[2].is_empty()).then(|| args[2].clone());
                batch.reply(replies::OK);
            }
            ClientSub::Id => {
                encode::integer(batch.local(), self.id as i64);
                batch.end_local();
            }
            ClientSub::SetInfo => {
                let slot = if args[2].eq_ignore_ascii_case(b"lib-name") {
                    &mut self.lib_name
                } else if args[2].eq_ignore_ascii_case(b"lib-ver") {
                    &mut self.lib_ver
                } else {
                    replies::setinfo_unknown(batch.local(), &args[2]);
                    return batch.end_local();
                };
                if !valid_client_attribute(&args[3]) {
                    replies::setinfo_bad_value(batch.local(), &args[2]);
                    return batch.end_local();
                }
                *slot = (!args[3].is_empty()).then(|| args[3].clone());
                batch.reply(replies::OK);
            }
            ClientSub::Info => {
                let line = self.info_line();
                match self.proto {
                    Proto::Resp2 => encode::bulk(batch.local(), &line),
                    Proto::Resp3 => {
                        let mut verbatim = b"txt:".to_vec();
                        verbatim.extend_from_slice(&line);
                        let out = batch.local();
                        out.extend_from_slice(b"=");
                        out.extend_from_slice(
                            itoa::Buffer::new().format(verbatim.len()).as_bytes(),
                        );
                        out.extend_from_slice(b"\r\n");
                        out.extend_from_slice(&verbatim);
                        out.extend_from_slice(b"\r\n");
                    }
                }
                batch.end_local();
            }
            ClientSub::Stateful => self.refuse(sub.full_name, batch),
            ClientSub::Forward => {
                let bytes = encode::command(args);
                batch.forward(bytes, self.conn_state());
            }
        }
    }

    /// The `CLIENT INFO` line, in Redis 7.2's field order, with this session's own values
    /// where the proxy has them and zero for the memory accounting it does not keep.
    fn info_line(&self) -> Vec<u8> {
        let text = |v: &Option<Bytes>| {
            v.as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let user = if self.authenticated {
            self.shared.client_username.as_str()
        } else {
            "default"
        };
        format!(
            "id={} addr={} laddr={} fd={} name={} age={} idle={} flags=N db={} sub=0 psub=0 \
             ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 \
             omem=0 tot-mem=0 events=r cmd=client|info user={} redir=-1 resp={} lib-name={} \
             lib-ver={}\n",
            self.id,
            self.peer,
            self.local_addr,
            self.fd,
            text(&self.name),
            self.created.elapsed().as_secs(),
            self.last_activity.elapsed().as_secs(),
            self.db,
            user,
            self.proto.number(),
            text(&self.lib_name),
            text(&self.lib_ver),
        )
        .into_bytes()
    }
}

/// Redis's `validateClientAttr`: printable ASCII without spaces (`!`..=`~`), read as a C
/// string (it stops at a NUL).
fn valid_client_attribute(value: &[u8]) -> bool {
    value
        .iter()
        .take_while(|&&b| b != 0)
        .all(|&b| (b'!'..=b'~').contains(&b))
}

/// Whether the scanner may already hold another complete request (the batch stopped
/// because it was full, not because the buffer ran out).
fn batch_was_full(scanner: &RequestScanner, inbuf: &BytesMut) -> bool {
    !inbuf.is_empty() && !scanner.in_progress()
}

#[cfg(unix)]
fn fd_of(stream: &TcpStream) -> i64 {
    use std::os::fd::AsRawFd;
    i64::from(stream.as_raw_fd())
}

#[cfg(not(unix))]
fn fd_of(_: &TcpStream) -> i64 {
    -1
}

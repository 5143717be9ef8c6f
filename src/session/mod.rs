//! One client connection: its state machine (authentication, database, protocol, name)
//! and its loop — read, scan every complete request, answer the local ones and plan the
//! forwarded ones into a batch, run the batch, write the replies in request order.
//!
//! The session owns everything that is per-client; nothing here is shared with another
//! client except through `Shared`, which holds no client state. A protocol error is
//! answered after the replies owed to earlier requests, and then the connection closes.

mod batch;
mod cluster;
mod exec;
mod relay;
mod shards;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::auth::ClientAuth;
use crate::command::{self, ClientSub, Kind, Local};
use crate::config::{DEFAULT_MAX_IN_FLIGHT, OutputLimits};
use crate::metrics::{self, ErrorClass};
use crate::net::{ClientRead, ClientStream, ClientWrite};
use crate::protocol::number::{parse_i32, parse_i64};
use crate::protocol::{Proto, Request, RequestLimits, RequestScanner, encode};
use crate::replies;
use crate::upstream::{ConnState, Pinned, Upstream};
use batch::Batch;

/// What every session shares: the upstream, the client credentials, the limits.
pub struct Shared {
    pub upstream: Upstream,
    /// The users clients may authenticate as; none is Redis's `nopass`.
    pub client_auth: ClientAuth,
    pub limits: RequestLimits,
    /// Bounds on what is buffered for a relayed (pub/sub, MONITOR) client.
    pub output_limits: OutputLimits,
    /// `[limits] max_in_flight`: requests of one client planned into one batch at most.
    pub max_in_flight: usize,
    /// Cluster mode: where each key's node is (`upstream` is then the first seed, for
    /// server information, the readiness probe and pub/sub).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    next_client_id: AtomicU64,
}

impl Shared {
    /// Sets the bounds for relayed clients' output (Redis's defaults otherwise).
    pub fn with_output_limits(mut self, limits: OutputLimits) -> Shared {
        self.output_limits = limits;
        self
    }

    /// Routes by key slot over `cluster`'s nodes (cluster mode).
    pub fn with_cluster(mut self, cluster: Arc<crate::cluster::Cluster>) -> Shared {
        self.cluster = Some(cluster);
        self
    }

    /// Caps the requests of one client in flight at once (4096 otherwise).
    pub fn with_max_in_flight(mut self, max: usize) -> Shared {
        self.max_in_flight = max.max(1);
        self
    }

    pub fn new(upstream: Upstream, client_auth: ClientAuth, limits: RequestLimits) -> Shared {
        Shared {
            upstream,
            client_auth,
            limits,
            output_limits: OutputLimits::default(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            cluster: None,
            next_client_id: AtomicU64::new(1),
        }
    }

    /// Checks a username/password pair against every configured user (see `auth`);
    /// returns the user's name. Without a client password the only user is `default`,
    /// who needs none (Redis's `nopass`).
    fn authenticate(&self, username: &[u8], password: &[u8]) -> Option<Arc<str>> {
        self.client_auth.authenticate(username, password)
    }
}

/// Whether the session goes on after a request.
enum Flow {
    Continue,
    /// Flush what is owed, then close (QUIT).
    Close,
    /// Close at once with no reply (an HTTP request).
    Drop,
    /// Run what is planned, then relay this request and what follows to a dedicated
    /// connection (SUBSCRIBE, MONITOR, CLIENT TRACKING ON, CLIENT REPLY OFF|SKIP).
    Relay(Request),
    /// Cluster mode: run what is planned (it goes to another node), then plan this request
    /// first in the next batch.
    Defer(Request),
    /// Cluster mode: run what is planned, then answer this request from several nodes
    /// (keys in several slots, or a command every master must run).
    Scatter(Request),
}

/// A command queued inside MULTI, as far as the proxy must remember it.
#[derive(Debug)]
enum Queued {
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
struct Multi {
    queue: Vec<Queued>,
    /// A command was refused while queuing: EXEC must abort, as Redis's does.
    error: bool,
}

impl Multi {
    /// Whether EXEC's reply needs the session's help (local commands or SELECT queued).
    fn needs_finishing(&self) -> bool {
        self.queue.iter().any(|q| !matches!(q, Queued::Forwarded))
    }
}

const READ_CHUNK: usize = 16 * 1024;
/// The first reads of a client are this small, so 10 000 idle clients cost little; each
/// read that fills the buffer doubles it, up to `4 * READ_CHUNK`.
const FIRST_READ: usize = 512;

pub struct Session {
    shared: Arc<Shared>,
    id: u64,
    authenticated: bool,
    /// The user the client authenticated as (`default` until then), for CLIENT INFO.
    user: Arc<str>,
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
    /// Inside MULTI (as planned: the batch carrying MULTI may not have run yet).
    multi: Option<Multi>,
    /// WATCH is in force.
    watching: bool,
    /// The transaction whose EXEC is held for finishing.
    exec_queue: Option<Vec<Queued>>,
    /// The dedicated upstream connection, while a connection-bound state lasts.
    pinned: Option<Pinned>,
    /// Cluster mode: the node `pinned` is on.
    pinned_on: Option<Arc<Upstream>>,
    /// The pinned connection must be dropped after the running batch (RESET or QUIT
    /// inside a connection-bound state left it dirty).
    drop_pin: bool,
    /// Cluster mode: the node the connection-bound state is on.
    binding: cluster::Binding,
}

impl Session {
    pub fn new(shared: Arc<Shared>, peer: SocketAddr, local_addr: SocketAddr) -> Session {
        let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed);
        let authenticated = !shared.client_auth.required();
        let now = Instant::now();
        Session {
            shared,
            id,
            authenticated,
            user: Arc::from(crate::auth::DEFAULT_USER),
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
            multi: None,
            watching: false,
            exec_queue: None,
            pinned: None,
            pinned_on: None,
            drop_pin: false,
            binding: cluster::Binding::default(),
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

    /// Whether the client's state needs its own upstream connection after this batch.
    fn needs_pin(&self) -> bool {
        self.multi.is_some() || self.watching
    }

    /// Serves the client until it leaves, breaks the protocol, QUITs, or `closing` fires.
    /// `closing` is honoured between batches: requests already read are answered first.
    pub fn run(
        self,
        stream: ClientStream,
        closing: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        // On the heap, not in the task: a future keeps a by-value `self` twice over (the
        // argument and the moved-in local), and every idle client pays for its task's size.
        Box::new(self).run_boxed(stream, closing)
    }

    async fn run_boxed(mut self: Box<Self>, stream: ClientStream, closing: CancellationToken) {
        let global = metrics::global();
        global.client_connections.increment(1.0);
        global.client_connections_total.increment(1);
        self.serve(stream, closing).await;
        // A client that leaves mid-transaction (or mid-anything) must not hand its
        // dedicated connection, still in that state, to the next client.
        if let Some(pinned) = self.pinned.as_mut() {
            if self.multi.is_some() || self.watching || self.drop_pin {
                pinned.broken = true;
            }
        }
        global.client_connections.decrement(1.0);
    }

    async fn serve(&mut self, stream: ClientStream, closing: CancellationToken) {
        let global = metrics::global();
        self.fd = fd_of(&stream);
        let (mut reader, mut writer) = stream.into_split();
        let mut scanner = RequestScanner::new(self.shared.limits);
        let mut inbuf = BytesMut::new();
        let mut out = BytesMut::new();
        let mut read_size = FIRST_READ;
        let mut deferred: Option<Request> = None;
        // Cluster mode: a pipeline's requests for several nodes are planned side by side,
        // one batch per node (see `Spread`).
        let mut spread = batch::Spread::default();
        loop {
            let mut batch = Batch::new(self.shared.max_in_flight);
            // Where this batch is in `spread`, if it was set aside there before, and where
            // its current part began.
            let mut spread_at = None;
            let mut part = batch.mark();
            let mut flow = Flow::Continue;
            if let Some(request) = deferred.take() {
                if let Some(at) = self.spread_batch(&mut spread, &request) {
                    if let Some(resumed) = spread.batches[at].take() {
                        batch = resumed;
                        spread_at = Some(at);
                        part = batch.mark();
                    }
                }
                flow = self.handle(request, &mut batch).await;
            }
            while matches!(flow, Flow::Continue)
                && !batch.is_full()
                && !batch.barrier
                && spread.steps + batch.len() - part.step() < self.shared.max_in_flight
            {
                match scanner.next(&mut inbuf, self.requires_auth()) {
                    Ok(Some(request)) => {
                        if spread_at.is_some() && !self.may_join_spread(&request) {
                            // A batch taken back from `spread` stays one that may go
                            // ahead: the request starts a batch of its own.
                            flow = Flow::Defer(request);
                            break;
                        }
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
            // Cluster mode: a request for another node than this batch's sets the batch
            // aside, to be sent with the other nodes' batches; the request goes to its
            // node's batch.
            if let Flow::Defer(request) = flow {
                if spread.takes(&batch, spread_at, self.pinned.is_some())
                    && spread.steps + batch.len() - part.step() <= self.shared.max_in_flight
                {
                    spread.set_aside(batch, spread_at, part);
                    deferred = Some(request);
                    continue;
                }
                flow = Flow::Defer(request);
            }
            if !spread.is_empty() {
                // A batch taken back from `spread` only had requests that may go ahead
                // added (see `spread_batch`); a new one goes with the others if it can.
                if spread.takes(&batch, spread_at, self.pinned.is_some()) {
                    spread.set_aside(batch, spread_at, part);
                    batch = Batch::new(self.shared.max_in_flight);
                }
                // Every node's batch goes out, then the replies are written in order.
                if !Box::pin(spread.run(&mut out, &mut writer)).await {
                    return;
                }
                if let (true, Some(cluster)) = (spread.failed, &self.shared.cluster) {
                    cluster.refresh_soon();
                }
                spread = batch::Spread::default();
            }
            // Replies already had go out now, not after a blocking command returns (Redis
            // writes them before it blocks).
            if (batch.is_empty() || batch.blocking) && !out.is_empty() {
                global.bytes_out.increment(out.len() as u64);
                if writer.send(&out).await.is_err() {
                    return;
                }
                out.clear();
                crate::net::shrink_if_empty(&mut out);
            }
            // A blocking command's execution reads on (to see the client leave): bytes that
            // arrive meanwhile must be scanned before the next read.
            let unscanned = inbuf.len();
            if !batch.is_empty() {
                // Boxed: a batch's execution is the task's largest state, and an idle
                // client's task would carry its size (one allocation per batch instead:
                // 10 000 idle clients take about 8 MiB less).
                let execute =
                    self.execute(&mut batch, &mut out, &mut writer, &mut reader, &mut inbuf);
                let ok = Box::pin(execute).await;
                global.bytes_out.increment(out.len() as u64);
                if !ok || writer.send(&out).await.is_err() {
                    return;
                }
                out.clear();
                crate::net::shrink_if_empty(&mut out);
            }
            match flow {
                Flow::Drop => return,
                Flow::Close => {
                    let _ = writer.shutdown().await;
                    return;
                }
                Flow::Defer(request) => {
                    deferred = Some(request);
                    continue;
                }
                Flow::Scatter(request) => {
                    Box::pin(self.scatter(request, &mut out)).await;
                    global.bytes_out.increment(out.len() as u64);
                    if writer.send(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                    crate::net::shrink_if_empty(&mut out);
                    continue;
                }
                Flow::Relay(request) => {
                    // Boxed, like the other rare paths, so that an idle client's task stays
                    // small (the task is as large as its largest state).
                    let relay =
                        self.relay(request, &mut reader, &mut writer, &mut inbuf, &mut scanner);
                    match Box::pin(relay).await {
                        relay::Exit::Resume => continue,
                        relay::Exit::Close => {
                            let _ = writer.shutdown().await;
                            return;
                        }
                    }
                }
                Flow::Continue => {}
            }
            if batch_was_full(&scanner, &inbuf) || inbuf.len() > unscanned {
                continue;
            }
            crate::net::shrink_if_empty(&mut inbuf);
            inbuf.reserve(read_size);
            let spare = inbuf.capacity() - inbuf.len();
            // A client holding a connection-bound state is not idle: it is left to the
            // end of the grace period.
            let read = tokio::select! {
                // Bytes already sent are served before a shutdown closes the client.
                biased;
                read = reader.read_buf(&mut inbuf) => read,
                _ = closing.cancelled(), if self.pinned.is_none() => {
                    tracing::debug!("closing an idle client for shutdown");
                    let _ = writer.shutdown().await;
                    return;
                }
            };
            match read {
                Ok(0) => return,
                Ok(n) => {
                    if n == spare && read_size < 4 * READ_CHUNK {
                        read_size *= 2;
                    }
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

    /// Runs a planned batch and settles the connection-bound state it leaves behind.
    /// Returns `false` when the client cannot be written to any more.
    async fn execute(
        &mut self,
        batch: &mut Batch,
        out: &mut BytesMut,
        writer: &mut ClientWrite,
        reader: &mut ClientRead,
        inbuf: &mut BytesMut,
    ) -> bool {
        let pin = self.needs_pin();
        let blocking = batch.blocking;
        // Cluster mode: the node the batch's keys live on.
        let node = batch.node.clone();
        if let (Some(node), Some(on)) = (&node, &self.pinned_on) {
            if !Arc::ptr_eq(node, on) {
                if let Some(mut pinned) = self.pinned.take() {
                    // The state the connection held ended in the last batch, and the
                    // next one starts on another node (a pipelined EXEC, then MULTI or
                    // WATCH for other keys). Not trusted as clean: closed.
                    pinned.broken = true;
                }
            }
        }
        let upstream = node.as_deref().unwrap_or(&self.shared.upstream);
        if self.pinned.is_none() {
            self.pinned_on = node.clone();
        }
        let run = batch.execute(upstream, &mut self.pinned, pin, out, writer);
        let result = if blocking {
            // A blocking command may wait for ever: watch the client meanwhile, so one that
            // leaves releases its connection (and Redis its block) at once. Bytes it sends
            // meanwhile are kept for after.
            tokio::pin!(run);
            loop {
                inbuf.reserve(READ_CHUNK);
                tokio::select! {
                    result = &mut run => break Some(result),
                    read = reader.read_buf(inbuf), if inbuf.len() < self.shared.limits.query_buffer_limit => {
                        match read {
                            Ok(n) if n > 0 => metrics::global().bytes_in.increment(n as u64),
                            _ => break None,
                        }
                    }
                }
            }
        } else {
            Some(run.await)
        };
        let Some(result) = result else {
            // The client closed (or half-closed) its side while the command blocked: Redis
            // frees such a client, its block with it. What was answered before the blocking
            // command still goes out; the pinned connection, still armed, is dropped.
            tracing::debug!("client left during a blocking command");
            // The batch may not even have started (the client's EOF can win the race
            // before it is first polled, leaving the connection unarmed, with a MULTI
            // sent earlier and its EXEC never written): it is dropped whatever happened.
            if let Some(pinned) = self.pinned.as_mut() {
                pinned.broken = true;
            }
            let _ = writer.send(out).await;
            return false;
        };
        let outcome = match result {
            Ok(outcome) if outcome.close => {
                if let Some(pinned) = self.pinned.as_mut() {
                    pinned.broken = true;
                }
                return false;
            }
            Ok(outcome) => outcome,
            Err(_) => {
                if let Some(pinned) = self.pinned.as_mut() {
                    pinned.broken = true;
                }
                return false;
            }
        };
        if outcome.failed {
            // Cluster mode: a node that failed may have been replaced by a replica.
            if let Some(cluster) = &self.shared.cluster {
                cluster.refresh_soon();
            }
            // The connection (and any transaction or watch on it) is gone.
            self.multi = None;
            self.watching = false;
            self.exec_queue = None;
            self.drop_pin = true;
        }
        if let Some(reply) = outcome.held {
            let queue = self.exec_queue.take().unwrap_or_default();
            Box::pin(self.finish_exec(&reply, queue, out)).await;
        }
        self.exec_queue = None;
        if self.drop_pin {
            if let Some(pinned) = self.pinned.as_mut() {
                pinned.broken = true;
            }
            self.pinned = None;
            self.drop_pin = false;
        } else if !self.needs_pin() {
            // Back to the pinned pool: the state it held (transaction, watch, blocking
            // command) is over.
            self.pinned = None;
        }
        self.unbind_if_idle();
        true
    }

    /// Cluster mode: once no connection-bound state is left, the node it was on no longer
    /// binds anything. Also when a new state starts in the batch that ended the last one
    /// (a pipelined `EXEC` then `MULTI`): the new state picks its own node.
    fn unbind_if_idle(&mut self) {
        if !self.needs_pin() && !self.binding.multi_pending {
            self.binding = cluster::Binding::default();
        }
    }

    /// Dispatches one request: a local answer, a refusal, or a place in the batch.
    async fn handle(&mut self, request: Request, batch: &mut Batch) -> Flow {
        batch.begin(command::id(request.name()));
        if let Some(cluster) = &self.shared.cluster {
            if cluster.topology().is_none() {
                // Until the first slot map is read (just after start): read it now; an
                // error shows up in the command's own reply.
                let _ = Box::pin(cluster.ready()).await;
            }
        }
        let Some(command) = command::lookup(request.name()) else {
            if self.multi.is_some() {
                return self.queue_forward(request, batch);
            }
            if let Some(cluster) = self.shared.cluster.clone() {
                let request =
                    match self.route_fast(&cluster, request, batch, cluster::Blocks::Never) {
                        Ok(flow) => return flow,
                        Err(request) => request,
                    };
                // Boxed: only cluster mode pays for this future's size.
                let route = self.route_cluster(cluster, request, batch, cluster::Blocks::Never);
                return Box::pin(route).await;
            }
            return self.forward(request, batch);
        };
        if command.kind == Kind::HttpProbe {
            tracing::warn!(peer = %self.peer, "HTTP request on the Redis port; closing the connection");
            return Flow::Drop;
        }
        if !command::arity_ok(command.arity, request.args.len()) {
            replies::wrong_arity(batch.local(), command.name);
            batch.end_local();
            self.flag_multi();
            return Flow::Continue;
        }
        if self.multi.is_some() {
            return self
                .handle_in_multi(command.kind, command.name, request, batch)
                .await;
        }
        if let Some(cluster) = self.shared.cluster.clone() {
            let blocks = match command.kind {
                Kind::Forward => Some(cluster::Blocks::Never),
                Kind::Blocking => Some(cluster::Blocks::Always),
                Kind::StreamRead => Some(cluster::Blocks::StreamRead),
                _ => None,
            };
            if let Some(blocks) = blocks {
                let request = match self.route_fast(&cluster, request, batch, blocks) {
                    Ok(flow) => return flow,
                    Err(request) => request,
                };
                return Box::pin(self.route_cluster(cluster, request, batch, blocks)).await;
            }
        }
        match command.kind {
            Kind::Local(local) => self.local(local, &request, batch).await,
            Kind::HttpProbe | Kind::Forward => self.forward(request, batch),
            _ if self.requires_auth() => {
                batch.reply(replies::NOAUTH);
                Flow::Continue
            }
            Kind::Multi => {
                self.unbind_if_idle();
                self.multi = Some(Multi::default());
                if self.shared.cluster.is_some() && self.binding.node.is_none() {
                    // Cluster mode: the transaction's node is its first key's; MULTI goes
                    // with the first command that has one.
                    self.binding.multi_pending = true;
                    batch.reply(replies::OK);
                    return Flow::Continue;
                }
                self.forward(request, batch)
            }
            Kind::Watch => {
                self.unbind_if_idle();
                self.watching = true;
                self.forward(request, batch)
            }
            Kind::Blocking => {
                batch.blocking = true;
                let name = request.name();
                if name.eq_ignore_ascii_case(b"wait") || name.eq_ignore_ascii_case(b"waitaof") {
                    // WAIT counts the replicas that have the writes of its connection,
                    // and the client's went over other connections: a shard-channel
                    // publish nobody hears (shard channels have no patterns) moves this
                    // connection's write offset past them first. Its reply, or the error
                    // of a server or user that cannot, is not shown.
                    batch.forward_ignored(Bytes::from_static(WAIT_FENCE), self.conn_state());
                }
                self.forward(request, batch)
            }
            Kind::StreamRead => {
                batch.blocking = command::stream_read_blocks(&request.args);
                self.forward(request, batch)
            }
            Kind::Relay => Flow::Relay(request),
            Kind::Refused => {
                replies::unsupported(
                    batch.local(),
                    command.name,
                    "replication cannot go through a proxy",
                );
                batch.end_local_as(Some(ErrorClass::Unsupported));
                Flow::Continue
            }
        }
    }

    /// A command while MULTI is open: queued upstream, queued locally, or run at once
    /// (EXEC, DISCARD, QUIT, RESET), as Redis's processCommand does.
    async fn handle_in_multi(
        &mut self,
        kind: Kind,
        name: &str,
        request: Request,
        batch: &mut Batch,
    ) -> Flow {
        match kind {
            Kind::Local(Local::Exec) => {
                match self.before_exec(batch) {
                    cluster::BeforeExec::Ready => {}
                    cluster::BeforeExec::Defer => return Flow::Defer(request),
                    cluster::BeforeExec::Replied => {
                        self.multi = None;
                        self.watching = false;
                        return Flow::Continue;
                    }
                }
                let Some(multi) = self.multi.take() else {
                    return Flow::Continue;
                };
                self.watching = false;
                batch.pin_required = true;
                if multi.error {
                    // End the upstream transaction, answer as Redis does.
                    batch.forward_swallowed(encode::command(&[&b"DISCARD"[..]]), self.conn_state());
                    batch.reply(replies::EXECABORT);
                    return Flow::Continue;
                }
                if multi.needs_finishing() {
                    if multi.queue.iter().any(|q| matches!(q, Queued::Select(_))) {
                        // Which SELECT ran is known only from EXEC's reply.
                        batch.db_unknown_after();
                    }
                    self.exec_queue = Some(multi.queue);
                    batch.forward_held(request_bytes(request), self.conn_state());
                    return Flow::Continue;
                }
                self.forward(request, batch)
            }
            Kind::Local(Local::Discard) => {
                self.multi = None;
                self.watching = false;
                if std::mem::take(&mut self.binding.multi_pending) {
                    // Cluster mode: MULTI never left the proxy.
                    self.binding.held.clear();
                    batch.reply(replies::OK);
                    return Flow::Continue;
                }
                self.forward(request, batch)
            }
            Kind::Local(Local::Quit) => {
                self.drop_pin = true;
                batch.reply(replies::OK);
                Flow::Close
            }
            Kind::Local(Local::Reset) => {
                // The upstream transaction is abandoned with the connection; planning
                // stops so nothing after RESET reaches that connection.
                self.drop_pin = true;
                self.reset();
                batch.reply(replies::RESET);
                batch.barrier = true;
                Flow::Continue
            }
            Kind::Local(Local::Select) => {
                let index = parse_i32(&request.args[1]).and_then(|i| u32::try_from(i).ok());
                if let Some(multi) = self.multi.as_mut() {
                    multi.queue.push(Queued::Select(index));
                }
                batch.pin_required = true;
                batch.forward(request_bytes(request), self.conn_state());
                Flow::Continue
            }
            Kind::Local(Local::Ping | Local::Echo | Local::Unwatch) => {
                self.queue_forward(request, batch)
            }
            Kind::Local(Local::Client) => match command::client_subcommand(&request.args[1]) {
                None => {
                    replies::unknown_subcommand(batch.local(), &request.args[0], &request.args[1]);
                    batch.end_local();
                    self.flag_multi();
                    Flow::Continue
                }
                Some(sub) if !command::arity_ok(sub.arity, request.args.len()) => {
                    replies::wrong_arity(batch.local(), sub.full_name);
                    batch.end_local();
                    self.flag_multi();
                    Flow::Continue
                }
                Some(sub) => match sub.kind {
                    ClientSub::Forward => self.queue_forward(request, batch),
                    ClientSub::Tracking | ClientSub::Reply | ClientSub::Refused => {
                        replies::unsupported(batch.local(), sub.full_name, "not inside MULTI");
                        batch.end_local_as(Some(ErrorClass::Unsupported));
                        self.flag_multi();
                        Flow::Continue
                    }
                    _ => self.queue_local(request, batch),
                },
            },
            Kind::Local(Local::Auth | Local::Hello) => self.queue_local(request, batch),
            Kind::Relay if name.ends_with("subscribe") => {
                replies::unsupported(batch.local(), name, "not inside MULTI");
                batch.end_local_as(Some(ErrorClass::Unsupported));
                self.flag_multi();
                Flow::Continue
            }
            Kind::Refused => {
                replies::unsupported(batch.local(), name, "replication cannot go through a proxy");
                batch.end_local_as(Some(ErrorClass::Unsupported));
                self.flag_multi();
                Flow::Continue
            }
            // Redis answers these at once and queues nothing (nor aborts the transaction):
            // forwarded and queued, they would put EXEC's array out of step with the queue.
            Kind::Multi => {
                batch.reply(b"-ERR MULTI calls can not be nested\r\n");
                Flow::Continue
            }
            Kind::Watch => {
                batch.reply(b"-ERR WATCH inside MULTI is not allowed\r\n");
                Flow::Continue
            }
            // Blocking commands and MONITOR are queued and run (or fail) inside EXEC, as in
            // Redis.
            _ => self.queue_forward(request, batch),
        }
    }

    /// Marks the open transaction as failed (a command was refused while queuing).
    fn flag_multi(&mut self) {
        if let Some(multi) = self.multi.as_mut() {
            multi.error = true;
        }
    }

    fn queue_forward(&mut self, request: Request, batch: &mut Batch) -> Flow {
        if let Some(multi) = self.multi.as_mut() {
            multi.queue.push(Queued::Forwarded);
        }
        self.forward(request, batch)
    }

    fn queue_local(&mut self, request: Request, batch: &mut Batch) -> Flow {
        batch.reply(replies::QUEUED);
        if let Some(multi) = self.multi.as_mut() {
            multi.queue.push(Queued::Local(request));
        }
        Flow::Continue
    }

    fn forward(&mut self, request: Request, batch: &mut Batch) -> Flow {
        if self.requires_auth() {
            batch.reply(replies::NOAUTH);
            return Flow::Continue;
        }
        let request = match self.forward_bound(request, batch) {
            Ok(flow) => return flow,
            Err(request) => request,
        };
        if self.needs_pin() {
            batch.pin_required = true;
        }
        if batch.node.is_none() {
            // Cluster mode: what ends a connection-bound state (EXEC, DISCARD, UNWATCH)
            // goes where the state is, and so does the rest of its batch.
            if let (Some(node), Some(cluster)) = (&self.binding.node, &self.shared.cluster) {
                batch.node = Some(node.clone());
                batch.cluster = Some(cluster.clone());
            }
        }
        batch.forward(request_bytes(request), self.conn_state());
        Flow::Continue
    }

    async fn local(&mut self, local: Local, request: &Request, batch: &mut Batch) -> Flow {
        let args = &request.args;
        match local {
            Local::Auth => self.auth(args, batch),
            Local::Hello => Box::pin(self.hello(args, batch)).await,
            Local::Quit => {
                if self.needs_pin() {
                    self.drop_pin = true;
                }
                batch.reply(replies::OK);
                return Flow::Close;
            }
            Local::Reset => {
                if self.needs_pin() {
                    // WATCH is on the pinned connection: drop it, and plan nothing more
                    // on it.
                    self.drop_pin = true;
                    batch.barrier = true;
                }
                self.reset();
                batch.reply(replies::RESET);
            }
            Local::Client => return self.client(request, batch),
            _ if self.requires_auth() => batch.reply(replies::NOAUTH),
            Local::Select => Box::pin(self.select(&args[1], batch)).await,
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
            Local::Unwatch if self.watching => {
                batch.pin_required = true;
                self.watching = false;
                batch.forward(request_bytes(request.clone()), self.conn_state());
            }
            Local::Unwatch => batch.reply(replies::OK),
        }
        Flow::Continue
    }

    fn auth(&mut self, args: &[Bytes], batch: &mut Batch) {
        if args.len() > 3 {
            return batch.reply(replies::SYNTAX_ERROR);
        }
        let (username, password) = if args.len() == 2 {
            if !self.shared.client_auth.required() {
                return batch.reply(replies::AUTH_WITHOUT_PASSWORD);
            }
            (&b"default"[..], &args[1][..])
        } else {
            (&args[1][..], &args[2][..])
        };
        if let Some(user) = self.shared.authenticate(username, password) {
            self.authenticated = true;
            self.user = user;
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
            let Some(user) = self.shared.authenticate(username, password) else {
                tracing::debug!(peer = %self.peer, "client authentication failed (HELLO)");
                metrics::global().client_auth_failures.increment(1);
                return batch.reply(replies::WRONGPASS);
            };
            self.authenticated = true;
            self.user = user;
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
        // In cluster mode the application sees one server, as it would a standalone Redis.
        encode::bulk(
            out,
            if info.mode.is_empty() || self.shared.cluster.is_some() {
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
        self.multi = None;
        self.watching = false;
        self.binding.multi_pending = false;
        self.binding.held.clear();
        self.db = 0;
        self.proto = Proto::Resp2;
        self.name = None;
        self.authenticated = !self.shared.client_auth.required();
        self.user = Arc::from(crate::auth::DEFAULT_USER);
    }

    fn client(&mut self, request: &Request, batch: &mut Batch) -> Flow {
        let args = &request.args[..];
        let Some(sub) = command::client_subcommand(&args[1]) else {
            replies::unknown_subcommand(batch.local(), &args[0], &args[1]);
            batch.end_local();
            return Flow::Continue;
        };
        if !command::arity_ok(sub.arity, args.len()) {
            replies::wrong_arity(batch.local(), sub.full_name);
            batch.end_local();
            return Flow::Continue;
        }
        if self.requires_auth() {
            batch.reply(replies::NOAUTH);
            return Flow::Continue;
        }
        self.client_sub(sub, request, batch)
    }

    fn client_sub(
        &mut self,
        sub: command::Subcommand,
        request: &Request,
        batch: &mut Batch,
    ) -> Flow {
        let args = &request.args[..];
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
                    batch.reply(replies::BAD_CLIENT_NAME);
                    return Flow::Continue;
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
                    batch.end_local();
                    return Flow::Continue;
                };
                if !valid_client_attribute(&args[3]) {
                    replies::setinfo_bad_value(batch.local(), &args[2]);
                    batch.end_local();
                    return Flow::Continue;
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
            ClientSub::Tracking if args[2].eq_ignore_ascii_case(b"on") => {
                if args
                    .iter()
                    .skip(3)
                    .any(|a| a.eq_ignore_ascii_case(b"redirect"))
                {
                    replies::unsupported(
                        batch.local(),
                        sub.full_name,
                        "REDIRECT names a connection the proxy shares; use RESP3 tracking",
                    );
                    batch.end_local_as(Some(ErrorClass::Unsupported));
                } else if self.shared.cluster.is_some() {
                    // Keys of the other masters would be read without tracking: a client
                    // cache would go stale without a word. Refused instead.
                    replies::unsupported(
                        batch.local(),
                        sub.full_name,
                        "in cluster mode (keys on other masters would not be tracked)",
                    );
                    batch.end_local_as(Some(ErrorClass::Unsupported));
                } else {
                    return Flow::Relay(request.clone());
                }
            }
            ClientSub::Reply if !args[2].eq_ignore_ascii_case(b"on") => {
                return Flow::Relay(request.clone());
            }
            ClientSub::Refused => {
                replies::unsupported(
                    batch.local(),
                    sub.full_name,
                    "it would set a flag on a shared upstream connection",
                );
                batch.end_local_as(Some(ErrorClass::Unsupported));
            }
            ClientSub::Tracking | ClientSub::Reply | ClientSub::Forward => {
                if self.needs_pin() {
                    batch.pin_required = true;
                }
                batch.forward(encode::command(args), self.conn_state());
            }
        }
        Flow::Continue
    }

    /// The `CLIENT INFO` line, in Redis 7.2's field order, with this session's own values
    /// where the proxy has them and zero for the memory accounting it does not keep.
    fn info_line(&self) -> Vec<u8> {
        let text = |v: &Option<Bytes>| {
            v.as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let user = &*self.user;
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

/// The bytes to send upstream for a request: as received when canonical, else re-encoded.
fn request_bytes(request: Request) -> Bytes {
    match request.canonical {
        Some(frame) => frame,
        None => encode::command(&request.args),
    }
}

/// Sent before WAIT/WAITAOF (see `handle`): `SPUBLISH redis-ambassador:wait ""`.
const WAIT_FENCE: &[u8] = b"*3\r\n$8\r\nSPUBLISH\r\n$21\r\nredis-ambassador:wait\r\n$0\r\n\r\n";

/// Whether the scanner may already hold another complete request (the batch stopped
/// because it was full, not because the buffer ran out).
fn batch_was_full(scanner: &RequestScanner, inbuf: &BytesMut) -> bool {
    !inbuf.is_empty() && !scanner.in_progress()
}

#[cfg(unix)]
fn fd_of(stream: &ClientStream) -> i64 {
    use std::os::fd::AsRawFd;
    let tcp = match stream {
        ClientStream::Plain(tcp) => tcp,
        ClientStream::Tls(tls) => tls.get_ref().0,
    };
    i64::from(tcp.as_raw_fd())
}

#[cfg(not(unix))]
fn fd_of(_: &ClientStream) -> i64 {
    -1
}

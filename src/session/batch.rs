//! A batch: the requests scanned from one client read, in order, as a plan — local replies
//! already computed, forwarded requests encoded — then executed on one pooled upstream
//! connection in a single write, replies matched back first-in first-out.
//!
//! The plan carries the connection state (database, protocol) each forwarded request needs.
//! Where it changes inside the batch (a SELECT between two GETs) the commands that change
//! it are woven into the upstream stream and their replies swallowed; where the pooled
//! connection's own state differs from what the first request needs, the same commands go
//! first. So every forwarded request runs on a connection in its client's state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::cluster::Cluster;
use crate::command::{self, CommandId};
use crate::metrics::{self, ErrorClass};
use crate::net::ClientWrite;
use crate::protocol::ReplyFrame;
use crate::replies;
use crate::upstream::conn::{error_text, transition};
use crate::upstream::slot::{ReplySlot, Ticket};
use crate::upstream::{
    ConnState, Pinned, UnavailableReason, Upstream, UpstreamConn, UpstreamError, mux,
};

/// Replies buffered for a client beyond this are written out before reading more from
/// the upstream, so a pipeline of large replies does not pile up in memory.
const CLIENT_FLUSH_BYTES: usize = 1024 * 1024;
/// Forwarded bytes below this size are copied into a shared buffer; larger ones travel as
/// their own chunk, uncopied.
const COPY_BELOW: usize = 16 * 1024;
/// A batch stops growing at `[limits] max_in_flight` steps or at this many forwarded
/// bytes; the rest of the read waits for the next batch.
pub const MAX_UPSTREAM_BYTES: usize = 8 * 1024 * 1024;

/// What happens to one upstream reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Written to the client, in its place.
    Client,
    /// A state change the proxy added (SELECT, HELLO): checked, not shown.
    Swallow,
    /// A command whose reply was already given (a transaction's command the proxy
    /// answered `+QUEUED` before its node was known): read, not shown, whatever it is.
    Ignore,
    /// Kept for the session to finish (an EXEC whose queued local commands must be
    /// spliced into its reply). Always the batch's last step.
    Hold,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    /// A local reply ending at this offset of `local`.
    Local(usize),
    /// One upstream reply, counted for `command`.
    Upstream { pass: Pass, command: CommandId },
}

/// A batch sent ahead on a lane (cluster mode), its replies still to be read.
pub struct Submitted {
    batch: Batch,
    /// Where its replies come (a slot of its own: the client has several such batches
    /// in flight at once).
    slot: Arc<ReplySlot>,
    emitting: Emitting,
}

/// A point in a batch's plan: its steps, local replies and routed requests so far. The
/// part of a batch between two marks can be answered on its own (see
/// [`Submitted::emit_part`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Mark {
    step: usize,
    local: usize,
    routed: usize,
}

impl Mark {
    pub fn step(&self) -> usize {
        self.step
    }
}

/// What answering a batch carries from one part of it to the next.
#[derive(Debug, Default)]
struct Emitting {
    /// Every forwarded request left is answered with this error.
    failure: Option<UpstreamError>,
    /// Reads on a replica that failed: the master answers the rest (see `fallback`).
    replica_lost: Option<UpstreamError>,
}

impl Emitting {
    fn new(fallback: bool, failure: Option<UpstreamError>) -> Emitting {
        if fallback {
            Emitting {
                failure: None,
                replica_lost: failure,
            }
        } else {
            Emitting {
                failure,
                replica_lost: None,
            }
        }
    }
}

/// Gives up on a lane batch's replies when dropped: whatever the lane still delivers for
/// it (the batch ended early, or its future was dropped) is discarded, never taken for the
/// next batch's.
struct Abandon<'a>(&'a ReplySlot);

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

impl Submitted {
    /// Writes the replies of the steps from `from` to step `to`, in order, into `out`; the
    /// parts of a batch must be written in their order, each once.
    pub async fn emit_part(
        &mut self,
        from: Mark,
        to: usize,
        out: &mut BytesMut,
        client: &mut ClientWrite,
    ) -> std::io::Result<Outcome> {
        let source = Source::Lane(&self.slot);
        self.batch
            .emit_steps(from, to, out, client, &mut self.emitting, source)
            .await
    }
}

/// How a batch ended, for the session to update its state.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The reply of a held EXEC, when it arrived.
    pub held: Option<Bytes>,
    /// The upstream failed (or no connection could be had): the connection-bound state the
    /// plan assumed did not come about.
    pub failed: bool,
    /// The client must be closed now, without the rest of its replies (output limit).
    pub close: bool,
    /// No dedicated connection could be had and the batch ends inside the transaction it
    /// opened: the transaction goes on in the ambassador alone, its EXEC aborted with
    /// this error (Redis never refuses MULTI).
    pub detached: Option<UpstreamError>,
}

impl Outcome {
    fn failed() -> Outcome {
        Outcome {
            failed: true,
            ..Outcome::default()
        }
    }
}

#[derive(Debug)]
pub struct Batch {
    steps: Vec<Step>,
    /// Steps (requests answered, locally or upstream, and state changes woven in) at which
    /// the batch is full: what one client may have in flight.
    max_steps: usize,
    local: BytesMut,
    chunks: Vec<Bytes>,
    pending: BytesMut,
    upstream_bytes: usize,
    first: Option<ConnState>,
    last: ConnState,
    /// The command being planned, for metrics, and when the batch was read.
    current: CommandId,
    /// Requests planned (for the per-user count).
    pub requests: u32,
    started: Instant,
    /// A blocking command is in the batch: no command timeout, and a dedicated connection.
    pub blocking: bool,
    /// Planning must stop: the next request's meaning depends on this batch's replies.
    pub barrier: bool,
    /// A request was planned inside a connection-bound state (MULTI, WATCH): the batch
    /// must run on the client's dedicated connection, whatever state it ends in.
    pub pin_required: bool,
    db_unknown: bool,
    /// Cluster mode: the node every forwarded request of this batch goes to, the cluster
    /// (to follow -MOVED/-ASK), and each forwarded request with the state it needs, in
    /// the order of the client-visible upstream steps.
    pub node: Option<Arc<Upstream>>,
    pub cluster: Option<Arc<Cluster>>,
    routed: Vec<(usize, Bytes, ConnState)>,
    /// Cluster mode, reads sent to a replica (`read_from_replicas`): the slot's master.
    /// When the replica cannot answer (unreachable, connection lost, loading), the reads
    /// it has not answered are sent to the master, one by one, instead of failing.
    pub fallback: Option<Arc<Upstream>>,
}

impl Batch {
    pub fn new(max_steps: usize) -> Batch {
        Batch {
            steps: Vec::new(),
            max_steps,
            local: BytesMut::new(),
            chunks: Vec::new(),
            pending: BytesMut::new(),
            upstream_bytes: 0,
            first: None,
            last: ConnState::INITIAL,
            current: CommandId::OTHER,
            requests: 0,
            started: Instant::now(),
            blocking: false,
            barrier: false,
            pin_required: false,
            db_unknown: false,
            node: None,
            cluster: None,
            routed: Vec::new(),
            fallback: None,
        }
    }

    /// Sets the command the next reply or forward belongs to (for metrics).
    pub fn begin(&mut self, command: CommandId) {
        self.current = command;
        self.requests += 1;
    }

    /// The command planned last (what CLIENT LIST shows as a client's `cmd`).
    pub fn current(&self) -> CommandId {
        self.current
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Steps planned (requests answered, and state changes woven in).
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether the batch is big enough to run before scanning further.
    pub fn is_full(&self) -> bool {
        self.steps.len() >= self.max_steps || self.upstream_bytes >= MAX_UPSTREAM_BYTES
    }

    /// The buffer the next local reply is written to; call [`end_local`] after writing.
    ///
    /// [`end_local`]: Batch::end_local
    pub fn local(&mut self) -> &mut BytesMut {
        &mut self.local
    }

    /// Marks the bytes written to [`local`](Batch::local) since the last step as one reply.
    pub fn end_local(&mut self) {
        let start = self.local_start();
        let class = match self.local.get(start) {
            Some(b'-') => Some(ErrorClass::of_reply(&self.local[start..])),
            _ => None,
        };
        self.end_local_as(class);
    }

    /// Like [`end_local`](Batch::end_local), with the error class given.
    pub fn end_local_as(&mut self, class: Option<ErrorClass>) {
        metrics::record_command(self.current, class, self.started.elapsed());
        self.steps.push(Step::Local(self.local.len()));
    }

    /// Where the reply being written to `local` starts.
    fn local_start(&self) -> usize {
        self.steps
            .iter()
            .rev()
            .find_map(|step| match step {
                Step::Local(end) => Some(*end),
                Step::Upstream { .. } => None,
            })
            .unwrap_or(0)
    }

    /// Appends a whole local reply.
    pub fn reply(&mut self, bytes: &[u8]) {
        self.local.extend_from_slice(bytes);
        self.end_local();
    }

    /// Appends an EXEC whose reply the session finishes itself; planning stops after it.
    pub fn forward_held(&mut self, request: Bytes, state: ConnState) {
        self.forward(request, state);
        if let Some(Step::Upstream { pass, .. }) = self.steps.last_mut() {
            *pass = Pass::Hold;
        }
        self.barrier = true;
    }

    /// Appends a request the proxy adds itself (DISCARD for an aborted transaction):
    /// checked, not shown to the client.
    pub fn forward_swallowed(&mut self, request: Bytes, state: ConnState) {
        self.forward(request, state);
        if let Some(Step::Upstream { pass, .. }) = self.steps.last_mut() {
            *pass = Pass::Swallow;
        }
    }

    /// Appends a request whose reply the client already has (see `Pass::Ignore`).
    pub fn forward_ignored(&mut self, request: Bytes, state: ConnState) {
        self.forward(request, state);
        if let Some(Step::Upstream { pass, .. }) = self.steps.last_mut() {
            *pass = Pass::Ignore;
        }
    }

    /// After this batch the connection's database is not known (a transaction with a
    /// queued SELECT ran): the next use selects it again.
    pub fn db_unknown_after(&mut self) {
        self.db_unknown = true;
    }

    /// The local replies written so far (for a scratch batch that never goes upstream).
    pub fn into_local(self) -> BytesMut {
        self.local
    }

    /// Whether anything in the batch goes upstream.
    /// Cluster mode: whether the batch already goes to another node than `node` (a
    /// request for `node` must wait for the next batch).
    pub fn goes_elsewhere(&self, node: &Arc<Upstream>) -> bool {
        self.has_upstream()
            && self
                .node
                .as_ref()
                .is_some_and(|current| !Arc::ptr_eq(current, node))
    }

    pub fn has_upstream(&self) -> bool {
        self.first.is_some()
    }

    /// Cluster mode: appends a request for this batch's node, kept so that a redirect can
    /// send it again.
    pub fn forward_routed(&mut self, request: Bytes, state: ConnState) {
        self.forward(request.clone(), state);
        // Its step is the last one (after any state change the forward added).
        self.routed.push((self.steps.len() - 1, request, state));
    }

    /// Appends a request to forward on a connection in `state`.
    pub fn forward(&mut self, request: Bytes, state: ConnState) {
        match self.first {
            None => self.first = Some(state),
            Some(_) if self.last != state => {
                let n = transition(&mut self.pending, self.last, state);
                self.steps.extend(std::iter::repeat_n(
                    Step::Upstream {
                        pass: Pass::Swallow,
                        command: CommandId::OTHER,
                    },
                    n,
                ));
            }
            Some(_) => {}
        }
        self.last = state;
        self.upstream_bytes += request.len();
        if request.len() < COPY_BELOW {
            self.pending.extend_from_slice(&request);
        } else {
            if !self.pending.is_empty() {
                self.chunks.push(self.pending.split().freeze());
            }
            self.chunks.push(request);
        }
        self.steps.push(Step::Upstream {
            pass: Pass::Client,
            command: self.current,
        });
    }

    /// Runs the batch: forwards its requests — on the client's pinned connection if it has
    /// one or `pin` asks for one, else on a shared pooled connection — and writes every
    /// reply, local and upstream, in request order into `out`, flushing to `client` when
    /// `out` grows large. A shared lane hands the replies to `slot`, the client's own.
    pub async fn execute(
        &mut self,
        upstream: &Upstream,
        pinned: &mut Option<Pinned>,
        pin: bool,
        (out, client): (&mut BytesMut, &mut ClientWrite),
        slot: &Arc<ReplySlot>,
    ) -> std::io::Result<Outcome> {
        if self.first.is_none() {
            out.extend_from_slice(&self.local);
            return Ok(Outcome::default());
        }
        if !self.pending.is_empty() {
            self.chunks.push(self.pending.split().freeze());
        }
        upstream.count_requests(self.routed.len());
        // A blocking command waits as long as its own timeout says: never cut it short.
        let timeout = if self.blocking {
            None
        } else {
            upstream.command_timeout
        };
        if pin || self.pin_required || self.blocking || pinned.is_some() {
            if pinned.is_none() {
                // Rare paths are boxed so that every client's task stays small while idle.
                match Box::pin(upstream.pin()).await {
                    Ok(conn) => *pinned = Some(conn),
                    Err(error) => {
                        tracing::debug!(%error, "no dedicated upstream connection");
                        let open = self.emit_without_upstream(out, &error);
                        return Ok(Outcome {
                            detached: open.then_some(error),
                            ..Outcome::failed()
                        });
                    }
                }
            }
            match pinned.as_mut() {
                Some(conn) => Box::pin(self.run_on(conn, timeout, out, client)).await,
                None => Ok(Outcome::failed()),
            }
        } else {
            let first = self.first.unwrap_or(ConnState::INITIAL);
            self.run_shared(upstream, first, out, client, slot).await
        }
    }

    /// Cluster mode: whether this batch can go to its node's lane now and have its replies
    /// read later (after other nodes' batches are sent): shared lanes only, nothing pinned.
    pub fn can_submit_ahead(&self, pinned: bool) -> bool {
        self.node.is_some()
            && self.has_upstream()
            && !self.blocking
            && !self.pin_required
            && !pinned
    }

    /// Hands the batch to a lane of its node without waiting for the replies; see
    /// [`Submitted::emit`].
    pub async fn submit(mut self) -> Submitted {
        if !self.pending.is_empty() {
            self.chunks.push(self.pending.split().freeze());
        }
        let slot = ReplySlot::new();
        let job = self.lane_job(self.first.unwrap_or(ConnState::INITIAL), slot.begin());
        let failure = match &self.node {
            Some(node) => {
                node.count_requests(self.routed.len());
                node.mux.submit(job).await.err()
            }
            None => Some(UnavailableReason::NoNodeForBatch.into()),
        };
        Submitted {
            emitting: Emitting::new(self.fallback.is_some(), failure),
            batch: self,
            slot,
        }
    }

    /// Where the plan is now (see [`Mark`]).
    pub fn mark(&self) -> Mark {
        Mark {
            step: self.steps.len(),
            local: self.local.len(),
            routed: self.routed.len(),
        }
    }

    /// Runs the batch on a shared, multiplexed lane.
    async fn run_shared(
        &mut self,
        upstream: &Upstream,
        first: ConnState,
        out: &mut BytesMut,
        client: &mut ClientWrite,
        slot: &Arc<ReplySlot>,
    ) -> std::io::Result<Outcome> {
        if slot.can_go_direct() && self.may_go_direct(out) {
            // Replies written straight to the client by the lane (see `upstream::slot`):
            // the session does not wait for them.
            let commands = self.steps.iter().filter_map(|step| match step {
                Step::Upstream { command, .. } => Some(*command),
                Step::Local(_) => None,
            });
            let ticket = slot.begin_direct(commands, self.started);
            let job = self.lane_job(first, ticket);
            let Err(error) = upstream.mux.submit(job).await else {
                return Ok(Outcome::default());
            };
            slot.abandon();
            return self
                .emit(out, client, Some(error), Source::Lane(slot))
                .await;
        }
        let job = self.lane_job(first, slot.begin());
        let _abandon = Abandon(slot);
        let failure = upstream.mux.submit(job).await.err();
        self.emit(out, client, failure, Source::Lane(slot)).await
    }

    /// Whether the lane may write this batch's replies straight to the client: nothing
    /// owed before them, every step a forwarded command whose reply goes to the client as
    /// it is (no local reply, state change, held EXEC, cluster routing or blocking).
    fn may_go_direct(&self, out: &BytesMut) -> bool {
        out.is_empty()
            && self.local.is_empty()
            && self.node.is_none()
            && self.cluster.is_none()
            && self.fallback.is_none()
            && !self.blocking
            && self.steps.iter().all(|step| {
                matches!(
                    step,
                    Step::Upstream {
                        pass: Pass::Client,
                        ..
                    }
                )
            })
    }

    /// The lane job for this batch's forwarded requests (in state `first`), its replies
    /// for `ticket`.
    fn lane_job(&mut self, first: ConnState, ticket: Ticket) -> mux::Job {
        let mut expected = 0;
        let mut slow = false;
        // The state changes woven in, by their place among the replies (rare: none is
        // the rule, and an empty Vec does not allocate).
        let mut woven = Vec::new();
        for step in &self.steps {
            if let Step::Upstream { pass, command } = step {
                if *pass == Pass::Swallow {
                    woven.push(expected);
                }
                slow |= command::may_hold_lane(*command);
                expected += 1;
            }
        }
        mux::Job {
            first,
            last: self.last,
            db_unknown: self.db_unknown,
            chunks: std::mem::take(&mut self.chunks),
            replies: expected,
            woven,
            slow,
            ticket,
        }
    }

    /// Runs the batch on the client's dedicated connection.
    async fn run_on(
        &mut self,
        conn: &mut UpstreamConn,
        timeout: Option<Duration>,
        out: &mut BytesMut,
        client: &mut ClientWrite,
    ) -> std::io::Result<Outcome> {
        let Some(first) = self.first else {
            return Ok(Outcome::default());
        };
        // Armed until every reply has been read: if this future is dropped or returns early
        // (the client went away mid-batch), the connection must be dropped, never handed
        // out with replies still in flight.
        conn.broken = true;
        let mut prelude = BytesMut::new();
        let prelude_replies = transition(&mut prelude, conn.state, first);
        if prelude_replies > 0 {
            self.chunks.insert(0, prelude.freeze());
        }
        // Once set, every remaining forwarded request is answered with this error.
        let mut failure = conn.write_all(&self.chunks, timeout).await.err();
        for _ in 0..prelude_replies {
            if failure.is_some() {
                break;
            }
            match conn.read_reply(timeout).await {
                Ok((reply, frame)) if frame.error => {
                    // Redis refused to move the connection to the client's state (`BUSY`
                    // while a script runs): nothing after it may be trusted, and the
                    // connection (armed) is dropped, taking anything it queued with it.
                    // The client sees what Redis would have said to its own commands.
                    let error = state_change_failed(&reply);
                    let open = self.emit_without_upstream(out, &error);
                    return Ok(Outcome {
                        detached: open.then_some(error),
                        ..Outcome::failed()
                    });
                }
                Ok(_) => {}
                Err(error) => failure = Some(error),
            }
        }
        let outcome = self
            .emit(out, client, failure, Source::Conn(conn, timeout))
            .await?;
        if !outcome.failed {
            conn.state = self.last;
            if self.db_unknown {
                conn.state.db = ConnState::UNKNOWN_DB;
            }
            conn.broken = false;
        }
        Ok(outcome)
    }

    /// No connection could be had: local replies as planned, the error for each forwarded
    /// request, nothing for the state changes. A transaction the batch opens is answered
    /// as Redis would answer one that is bound to fail: `+OK`, `+QUEUED` for each command,
    /// and `-EXECABORT` (with the reason) for its EXEC — no command of a transaction ever
    /// runs outside it. Returns whether the batch ends inside such a transaction.
    fn emit_without_upstream(&self, out: &mut BytesMut, error: &UpstreamError) -> bool {
        let class = Some(error.class());
        let (multi, exec, discard) = (
            command::id(b"multi"),
            command::id(b"exec"),
            command::id(b"discard"),
        );
        let mut in_transaction = false;
        let mut start = 0;
        for step in &self.steps {
            match *step {
                Step::Local(end) => {
                    out.extend_from_slice(&self.local[start..end]);
                    start = end;
                }
                Step::Upstream {
                    pass: Pass::Swallow | Pass::Ignore,
                    ..
                } => {}
                Step::Upstream { command, .. } if in_transaction && command == exec => {
                    in_transaction = false;
                    replies::execabort_because(out, error);
                    metrics::record_command(command, class, self.started.elapsed());
                }
                Step::Upstream { command, .. } if in_transaction => {
                    in_transaction = command != discard;
                    let reply = if in_transaction {
                        replies::QUEUED
                    } else {
                        replies::OK
                    };
                    out.extend_from_slice(reply);
                    metrics::record_command(command, None, self.started.elapsed());
                }
                Step::Upstream { command, .. } if command == multi => {
                    in_transaction = true;
                    out.extend_from_slice(replies::OK);
                    metrics::record_command(command, None, self.started.elapsed());
                }
                Step::Upstream { command, .. } => {
                    error.reply_to(out);
                    metrics::record_command(command, class, self.started.elapsed());
                }
            }
        }
        in_transaction
    }

    /// Writes every reply in request order: local ones from the plan, upstream ones as
    /// `next` yields them. After the first failure (`failure`, or one met on the way) every
    /// forwarded request left gets that error. Flushes to `client` when `out` grows large.
    async fn emit(
        &self,
        out: &mut BytesMut,
        client: &mut ClientWrite,
        failure: Option<UpstreamError>,
        source: Source<'_>,
    ) -> std::io::Result<Outcome> {
        let mut emitting = Emitting::new(self.fallback.is_some(), failure);
        let end = self.steps.len();
        self.emit_steps(Mark::default(), end, out, client, &mut emitting, source)
            .await
    }

    /// [`emit`](Batch::emit) for the steps from `from` to step `to`, the state carried
    /// over in `emitting`.
    async fn emit_steps(
        &self,
        from: Mark,
        to: usize,
        out: &mut BytesMut,
        client: &mut ClientWrite,
        emitting: &mut Emitting,
        mut source: Source<'_>,
    ) -> std::io::Result<Outcome> {
        let mut outcome = Outcome::default();
        let mut start = from.local;
        let mut routed = self.routed[from.routed.min(self.routed.len())..]
            .iter()
            .peekable();
        let to = to.min(self.steps.len());
        for (index, step) in self.steps.iter().enumerate().take(to).skip(from.step) {
            // The request of this step, when a redirect may have to send it again.
            let resend = routed
                .next_if(|(at, _, _)| *at == index)
                .map(|(_, request, state)| (request, *state));
            match *step {
                Step::Local(end) => {
                    out.extend_from_slice(&self.local[start..end]);
                    start = end;
                }
                Step::Upstream { pass, command } => {
                    let step = UpstreamStep {
                        pass,
                        command,
                        resend,
                    };
                    self.emit_upstream(step, out, client, emitting, &mut source, &mut outcome)
                        .await?;
                    if outcome.close {
                        return Ok(outcome);
                    }
                }
            }
            if out.len() >= CLIENT_FLUSH_BYTES && !flush_large(out, client, &source).await? {
                outcome.close = true;
                return Ok(outcome);
            }
        }
        if emitting.replica_lost.is_some() && to == self.steps.len() {
            if let Some(cluster) = &self.cluster {
                // The replica may be gone from the slot map by now.
                cluster.refresh_soon();
            }
        }
        outcome.failed = emitting.failure.is_some();
        Ok(outcome)
    }

    /// One upstream step's reply, in its place: the upstream's (settled by the cluster
    /// when it is an error of a routed request), the master's for a lost replica, or the
    /// batch's failure.
    async fn emit_upstream(
        &self,
        step: UpstreamStep<'_>,
        out: &mut BytesMut,
        client: &mut ClientWrite,
        emitting: &mut Emitting,
        source: &mut Source<'_>,
        outcome: &mut Outcome,
    ) -> std::io::Result<()> {
        let UpstreamStep { pass, command, .. } = step;
        if emitting.failure.is_none() && emitting.replica_lost.is_none() {
            if self.blocking && !out.is_empty() {
                // This reply may be a blocking command's: what is answered before it goes
                // out now, as Redis writes it before blocking.
                client.send(out).await?;
                metrics::global().bytes_out.increment(out.len() as u64);
                out.clear();
            }
            match source.next().await {
                Ok(reply) => self.take_reply(&step, reply, out, emitting, outcome).await,
                Err(error @ UpstreamError::ClientOutputLimit(_)) => {
                    // Redis closes such a client without a reply; so do we.
                    tracing::warn!(%error, "closing a client that does not read its replies");
                    self.record(command, Some(error.class()));
                    outcome.close = true;
                    return Ok(());
                }
                Err(error) if self.fallback.is_some() => {
                    tracing::debug!(%error, "a replica failed mid-batch; its master answers the rest");
                    emitting.replica_lost = Some(error);
                }
                Err(error) => {
                    tracing::debug!(%error, "upstream failed mid-batch");
                    emitting.failure = Some(error);
                }
            }
        }
        if pass != Pass::Swallow {
            if let Some(lost) = &emitting.replica_lost {
                let answer = match (&self.cluster, step.resend, &self.fallback) {
                    (Some(cluster), Some((request, state)), Some(master)) => {
                        Box::pin(cluster.call(master, None, request, state)).await
                    }
                    _ => Err(lost.clone()),
                };
                match answer {
                    Ok((reply, frame)) => {
                        self.record(command, frame.error.then(|| ErrorClass::of_reply(&reply)));
                        out.extend_from_slice(&reply);
                    }
                    Err(error) => self.fail(command, &error, out),
                }
            }
        }
        // A failure met at this very step is this step's answer too.
        if let Some(failure) = &emitting.failure {
            if pass != Pass::Swallow && pass != Pass::Ignore {
                self.fail(command, failure, out);
            }
        }
        Ok(())
    }

    /// An upstream reply for a step, by what the step does with it.
    async fn take_reply(
        &self,
        step: &UpstreamStep<'_>,
        (reply, frame): (Bytes, ReplyFrame),
        out: &mut BytesMut,
        emitting: &mut Emitting,
        outcome: &mut Outcome,
    ) {
        match step.pass {
            Pass::Ignore => {}
            Pass::Swallow => {
                if frame.error {
                    emitting.failure = Some(state_change_failed(&reply));
                }
            }
            Pass::Client | Pass::Hold => {
                // A routed request's error may be a redirect or a replica that cannot
                // serve: the cluster settles it (see `Cluster::settle`).
                let settled = match (&self.cluster, step.resend) {
                    (Some(cluster), Some((request, state))) if frame.error => {
                        let node = self.node.as_ref();
                        let fallback = self.fallback.as_ref();
                        let settle = cluster.settle(
                            (reply, frame),
                            request,
                            state,
                            node,
                            fallback,
                            self.blocking,
                        );
                        Box::pin(settle).await
                    }
                    _ => Ok((reply, frame)),
                };
                match settled {
                    Ok((reply, frame)) => {
                        self.record(
                            step.command,
                            frame.error.then(|| ErrorClass::of_reply(&reply)),
                        );
                        if step.pass == Pass::Hold {
                            outcome.held = Some(reply);
                        } else {
                            out.extend_from_slice(&reply);
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "following a cluster redirect failed");
                        emitting.failure = Some(error);
                    }
                }
            }
        }
    }

    /// A forwarded request answered with `error`.
    fn fail(&self, command: CommandId, error: &UpstreamError, out: &mut BytesMut) {
        error.reply_to(out);
        self.record(command, Some(error.class()));
    }

    /// One command answered, for the metrics.
    fn record(&self, command: CommandId, class: Option<ErrorClass>) {
        metrics::record_command(command, class, self.started.elapsed());
    }
}

/// An upstream step of the plan: what to do with its reply, its command (for metrics),
/// and the request and state to send again when a redirect must be followed.
struct UpstreamStep<'a> {
    pass: Pass,
    command: CommandId,
    resend: Option<(&'a Bytes, ConnState)>,
}

/// Writes out `out` once it has grown large. A client that does not read must not wedge
/// this task either: the lane's overflow signal ends the write (and the client), and
/// `false` says so.
async fn flush_large(
    out: &mut BytesMut,
    client: &mut ClientWrite,
    source: &Source<'_>,
) -> std::io::Result<bool> {
    match source {
        Source::Lane(slot) => tokio::select! {
            sent = client.send(out) => sent?,
            _ = slot.overflowed() => {
                tracing::warn!("closing a client that does not read its replies");
                return Ok(false);
            }
        },
        Source::Conn(..) => client.send(out).await?,
    }
    metrics::global().bytes_out.increment(out.len() as u64);
    out.clear();
    Ok(true)
}

/// Where a batch's upstream replies come from.
enum Source<'a> {
    /// Read from the client's dedicated connection.
    Conn(&'a mut UpstreamConn, Option<Duration>),
    /// Handed over by a shared lane's reader.
    Lane(&'a ReplySlot),
}

impl Source<'_> {
    async fn next(&mut self) -> Result<(Bytes, ReplyFrame), UpstreamError> {
        match self {
            Source::Conn(conn, timeout) => conn.read_reply(*timeout).await,
            Source::Lane(slot) => slot.next().await,
        }
    }
}

fn state_change_failed(reply: &[u8]) -> UpstreamError {
    tracing::error!(reply = %error_text(reply), "upstream refused a connection-state change");
    UpstreamError::StateChangeRefused(error_text(reply).into())
}

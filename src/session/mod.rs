//! One client connection, from the bytes it sends to the replies it gets. The files of
//! this module follow a request's path:
//!
//! 1. `io`: read what the client sent (and, at the end, write what it is owed);
//! 2. `plan`: scan each complete request, classify it once with the command table, and
//!    plan it into a `batch` — answered here (`local`), queued in a transaction
//!    (`transaction`), sent to its cluster node (`route`, with `spread` for pipelines over
//!    several nodes), or forwarded;
//! 3. `execute`: run the batch upstream — one write, replies matched back in order, local
//!    ones in their place — and settle the state it leaves. The common batch (plain
//!    forwarded commands, a plain-TCP client) goes *direct*: the lane writes its replies
//!    into the client's socket and the session goes back to reading at once; before it
//!    writes anything else, it waits for them (see `upstream::slot`);
//! 4. `relay`: the modes where replies are not one per request (pub/sub, MONITOR, CLIENT
//!    TRACKING, CLIENT REPLY OFF) relay frames both ways on a dedicated connection.
//!
//! `state` holds what the session knows. The session owns everything that is per-client;
//! nothing here is shared with another client except through `Shared`, which holds no
//! client's working state: `clients` is what each client publishes of itself (CLIENT
//! LIST, CLIENT KILL, CLIENT TRACKING … REDIRECT), and the one way another client reaches
//! a session (a kill, an unblock, a wake-up to become a redirect target) is a signal the
//! session watches while it waits. A protocol error is answered after the replies owed to earlier requests,
//! and then the connection closes.

mod batch;
mod clients;
mod execute;
mod io;
mod local;
mod plan;
mod relay;
mod replicate;
mod route;
mod spread;
mod state;
mod transaction;

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::net::ClientStream;
use crate::protocol::Request;
use crate::replies;
use crate::upstream::slot::ReplySlot;
use batch::{Batch, Mark};
use clients::Signal;
use io::{ClientIo, Read};
use plan::Dispatch;
use spread::Spread;
use state::{Flow, fd_of};

pub use state::{Session, Shared};

/// Closes a session's reply slot when dropped (see `serve`).
struct CloseSlot(Arc<ReplySlot>);

impl Drop for CloseSlot {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A batch as planning left it: the batch, where it is in the `Spread` if it was taken
/// back from there, where its current part began, and how planning ended.
struct Planned {
    batch: Batch,
    spread_at: Option<usize>,
    part: Mark,
    flow: Flow,
}

/// What the loop does after a batch.
enum Next {
    /// The session is over.
    Stop,
    /// Plan again, this request first (if any), before reading more.
    Plan(Option<Request>),
    /// Read more from the client when nothing is left to scan.
    Read,
}

impl Session {
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
            if self.multi.is_some() || self.watching || self.drop_pin || self.no_touch {
                pinned.broken = true;
            }
        }
        global.client_connections.decrement(1.0);
    }

    /// The loop: plan a batch from what was read, run it, write the replies, read more.
    async fn serve(&mut self, stream: ClientStream, closing: CancellationToken) {
        self.fd = fd_of(&stream);
        self.client.set_fd(self.fd);
        let mut io = ClientIo::new(stream, self.shared.limits);
        self.slot = ReplySlot::with_client(io.writer.direct());
        // However the session ends (the client left, or its task was dropped at the end of
        // the grace period), a lane writes nothing more to its client.
        let _close = CloseSlot(self.slot.clone());
        let mut deferred: Option<Request> = None;
        // Cluster mode: a pipeline's requests for several nodes are planned side by side,
        // one batch per node (see `Spread`).
        let mut spread = Spread::default();
        loop {
            let Planned {
                mut batch,
                spread_at,
                part,
                flow,
            } = self.plan(&mut io, &mut spread, deferred.take()).await;
            // The last batch's replies may still be on their way to the client, straight
            // from the lane: whatever comes next is written after them.
            if self.slot.direct_in_flight() && !Box::pin(io.settle(&self.slot)).await {
                return;
            }
            // Cluster mode: a request for another node than this batch's sets the batch
            // aside, to be sent with the other nodes' batches; the request goes to its
            // node's batch.
            let flow = match flow {
                Flow::Defer(request) if self.may_set_aside(&spread, &batch, spread_at, part) => {
                    spread.set_aside(batch, spread_at, part);
                    deferred = Some(request);
                    continue;
                }
                flow => flow,
            };
            if !spread.is_empty()
                && !self
                    .run_spread(&mut io, &mut spread, &mut batch, spread_at, part)
                    .await
            {
                return;
            }
            // Replies already had go out now, not after a blocking command returns (Redis
            // writes them before it blocks).
            if (batch.is_empty() || batch.blocking)
                && !io.out.is_empty()
                && io.flush().await.is_err()
            {
                return;
            }
            // A blocking command's execution reads on (to see the client leave): bytes that
            // arrive meanwhile must be scanned before the next read.
            let unscanned = io.inbuf.len();
            self.note_command(&batch);
            if !batch.is_empty() {
                // Boxed: a batch's execution is the task's largest state, and an idle
                // client's task would carry its size (one allocation per batch instead:
                // 10 000 idle clients take about 8 MiB less).
                let ok = if batch.blocking {
                    Box::pin(self.execute_blocking(&mut batch, &mut io)).await
                } else {
                    Box::pin(self.execute(&mut batch, &mut io)).await
                };
                if !ok || io.flush().await.is_err() {
                    return;
                }
            }
            self.publish_state();
            match self.after(flow, &mut io).await {
                Next::Stop => return,
                Next::Plan(request) => {
                    deferred = request;
                    continue;
                }
                Next::Read => {}
            }
            if io.may_hold_more() || io.inbuf.len() > unscanned {
                continue;
            }
            if !self.wait_for_client(&mut io, &closing).await {
                return;
            }
        }
    }

    /// Waits for the client's next bytes. `false` when the session is over: the client
    /// left, the proxy is closing it, or CLIENT KILL ended it. Meanwhile another client
    /// may name this one in CLIENT TRACKING … REDIRECT: it then relays on a connection of
    /// its own (where Redis sends the invalidations) for as long as it stays.
    async fn wait_for_client(&mut self, io: &mut ClientIo, closing: &CancellationToken) -> bool {
        loop {
            // Replies of a direct batch may still be on their way to the client: the session
            // writes those the socket did not take at once, and is not idle until the
            // batch is over.
            let direct = self.slot.direct_in_flight();
            if direct && self.client.target_wanted() && !Box::pin(io.settle(&self.slot)).await {
                return false;
            }
            if self.client.target_wanted() && self.multi.is_none() && !self.watching {
                return match Box::pin(self.relay(None, io)).await {
                    relay::Exit::Resume => true,
                    relay::Exit::Close => {
                        let _ = io.writer.shutdown().await;
                        false
                    }
                };
            }
            // A client holding a connection-bound state is not idle: it is left to the
            // end of the grace period.
            let idle = self.pinned.is_none() && !direct;
            let requires_auth = self.requires_auth();
            let read = tokio::select! {
                biased;
                signal = self.client.signal() => match signal {
                    // Killed: what is still owed is dropped, as Redis drops it.
                    Signal::Killed => return false,
                    // A redirect target now? Checked at the top. (`signal` never
                    // reports CLIENT UNBLOCK.)
                    Signal::Woken | Signal::Unblocked(_) => continue,
                },
                // Once the proxy is closing, the end of the batch matters too (the client is
                // then idle, and closed).
                settled = self.slot.settled(closing.is_cancelled()), if direct => {
                    match Box::pin(io.on_settled(&self.slot, settled)).await {
                        Some(_) => continue,
                        None => Read::Gone,
                    }
                }
                _ = closing.cancelled(), if direct && !closing.is_cancelled() => continue,
                read = io.read_more(closing, idle, requires_auth) => read,
            };
            match read {
                Read::Data => {
                    let now = Instant::now();
                    self.last_activity = now;
                    self.client.touch(now);
                    return true;
                }
                Read::Gone | Read::Closed => {
                    // A client that half-closes still gets the replies of what it sent.
                    if direct {
                        Box::pin(io.settle(&self.slot)).await;
                    }
                    return false;
                }
            }
        }
    }

    /// Runs a batch with a blocking command, which may wait for ever; the client shows as
    /// blocked (`b`) meanwhile. CLIENT KILL ends it (Redis frees a killed client, its block
    /// with it). CLIENT UNBLOCK ends the command when it is alone in its batch: its
    /// connection is closed, which frees Redis's side without anything run, and the client
    /// gets what Redis gives a command unblocked that way.
    async fn execute_blocking(&mut self, batch: &mut Batch, io: &mut ClientIo) -> bool {
        let client = self.client.clone();
        // WAIT's timeout reply counts replicas, which only Redis knows.
        let unblockable = batch.len() == 1
            && !self.watching
            && !matches!(batch.current().name(), "wait" | "waitaof" | "other");
        client.set_blocked(true, unblockable);
        let ran = tokio::select! {
            ok = self.execute(batch, io) => Ok(ok),
            signal = client.blocked_signal() => Err(signal),
        };
        client.set_blocked(false, false);
        let signal = match ran {
            Ok(ok) => return ok,
            Err(signal) => signal,
        };
        // Cut short while the command waited: its dedicated connection is armed.
        if let Some(mut pinned) = self.pinned.take() {
            pinned.broken = true;
        }
        match signal {
            Signal::Unblocked(true) => io.out.extend_from_slice(replies::UNBLOCKED),
            Signal::Unblocked(false) => replies::null_array(&mut io.out, self.proto),
            Signal::Killed | Signal::Woken => return false,
        }
        true
    }

    /// CLIENT LIST's `cmd`: the batch's last command (once per batch, a store).
    fn note_command(&self, batch: &Batch) {
        if batch.requests > 0 {
            self.user_commands.increment(u64::from(batch.requests));
        }
        let id = batch.current();
        if id == crate::command::CommandId::OTHER && batch.is_empty() {
            // Nothing was planned (an incomplete request).
            return;
        }
        let sub = if id.name() == "client" {
            self.client_sub
        } else {
            None
        };
        self.client.set_command(id, sub);
    }

    /// Plans the next batch: the deferred request first (into its node's batch set aside
    /// in `spread`, when it may join it), then every complete request read, until the
    /// batch is full, must run before the next request can be planned, or the flow
    /// changes.
    async fn plan(
        &mut self,
        io: &mut ClientIo,
        spread: &mut Spread,
        deferred: Option<Request>,
    ) -> Planned {
        let max = self.shared.max_in_flight;
        let mut batch = Batch::new(max);
        if std::mem::take(&mut self.rebind) {
            if let Some(pinned) = self.pinned.as_mut() {
                // The client is another Redis user now; its dedicated connection follows
                // (and is not returned to the old identity's pool).
                pinned.retired = true;
                batch.forward_swallowed(self.upstream().login_request(), self.conn_state());
                batch.pin_required = true;
            }
        }
        if self.no_touch && self.pinned.is_none() {
            // The dedicated connection that carried CLIENT NO-TOUCH is gone (the upstream
            // failed): the next one gets the flag before the client's commands.
            batch.forward_swallowed(local::NO_TOUCH_ON, self.conn_state());
            batch.pin_required = true;
        }
        let mut spread_at = None;
        let mut part = batch.mark();
        let mut flow = Flow::Continue;
        // The deferred request first (in its node's batch, if one was set aside), then
        // what the client sent.
        let mut next = None;
        if let Some(request) = deferred {
            let at = self.spread_batch(spread, &request);
            if let Some(resumed) = at.and_then(|at| spread.batches.get_mut(at)?.take()) {
                batch = resumed;
                spread_at = at;
                part = batch.mark();
            }
            next = Some(request);
        }
        while matches!(flow, Flow::Continue) {
            let request = match next.take() {
                Some(request) => request,
                None if batch.is_full()
                    || batch.barrier
                    || spread.steps + batch.len() - part.step() >= max =>
                {
                    break;
                }
                None => match io.scanner.next(&mut io.inbuf, self.requires_auth()) {
                    Ok(Some(request)) => {
                        if spread_at.is_some() && !self.may_join_spread(&request) {
                            // A batch taken back from `spread` stays one that may go
                            // ahead: the request starts a batch of its own.
                            flow = Flow::Defer(request);
                            break;
                        }
                        request
                    }
                    Ok(None) => break,
                    Err(error) => {
                        tracing::debug!(%error, "protocol error from client");
                        metrics::global().protocol_errors.increment(1);
                        flow = match error.reply() {
                            Some(reply) => {
                                batch.reply(&reply);
                                Flow::Close
                            }
                            None => Flow::Drop,
                        };
                        break;
                    }
                },
            };
            // Only what must wait is boxed (see `dispatch`).
            flow = match self.dispatch(request, &mut batch) {
                Dispatch::Done(flow) => flow,
                Dispatch::Later(request, command) => {
                    Box::pin(self.dispatch_later(request, command, &mut batch)).await
                }
            };
        }
        Planned {
            batch,
            spread_at,
            part,
            flow,
        }
    }

    /// Cluster mode: whether `batch` may wait in `spread` while the next request is
    /// planned into its own node's batch.
    fn may_set_aside(&self, spread: &Spread, batch: &Batch, at: Option<usize>, part: Mark) -> bool {
        spread.takes(batch, at, self.pinned.is_some())
            && spread.steps + batch.len() - part.step() <= self.shared.max_in_flight
    }

    /// Cluster mode: sends every node's batch set aside in `spread` (with `batch`, when it
    /// may go along) and writes their replies in order. `false` when the client must be
    /// closed.
    async fn run_spread(
        &mut self,
        io: &mut ClientIo,
        spread: &mut Spread,
        batch: &mut Batch,
        at: Option<usize>,
        part: Mark,
    ) -> bool {
        // A batch taken back from `spread` only had requests that may go ahead added (see
        // `spread_batch`); a new one goes with the others if it can.
        if spread.takes(batch, at, self.pinned.is_some()) {
            let taken = std::mem::replace(batch, Batch::new(self.shared.max_in_flight));
            spread.set_aside(taken, at, part);
        }
        if !Box::pin(spread.run(&mut io.out, &mut io.writer)).await {
            return false;
        }
        if let (true, Some(cluster)) = (spread.failed, &self.shared.cluster) {
            cluster.refresh_soon();
        }
        *spread = Spread::default();
        true
    }

    /// Carries out how planning ended, once the batch has run.
    async fn after(&mut self, flow: Flow, io: &mut ClientIo) -> Next {
        // What follows writes to the client after the batch's replies, which may still be
        // on their way straight from the lane.
        if !matches!(flow, Flow::Continue)
            && self.slot.direct_in_flight()
            && !Box::pin(io.settle(&self.slot)).await
        {
            return Next::Stop;
        }
        match flow {
            Flow::Continue => Next::Read,
            Flow::Drop => Next::Stop,
            Flow::Close => {
                let _ = io.writer.shutdown().await;
                Next::Stop
            }
            Flow::Defer(request) => Next::Plan(Some(request)),
            Flow::Scatter(request) => {
                Box::pin(self.scatter(request, &mut io.out)).await;
                match io.flush().await {
                    Ok(()) => Next::Plan(None),
                    Err(_) => Next::Stop,
                }
            }
            // Boxed, like the other rare paths, so that an idle client's task stays small
            // (the task is as large as its largest state).
            Flow::Replicate(request) => {
                if Box::pin(self.replicate(request, io)).await {
                    Next::Plan(None)
                } else {
                    Next::Stop
                }
            }
            Flow::Relay(request) => match Box::pin(self.relay(Some(request), io)).await {
                relay::Exit::Resume => Next::Plan(None),
                relay::Exit::Close => {
                    let _ = io.writer.shutdown().await;
                    Next::Stop
                }
            },
        }
    }
}

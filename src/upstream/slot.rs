//! Where a lane hands a client its replies: one slot per client, reused batch after batch,
//! instead of a channel and two shared counters allocated for every batch.
//!
//! The client opens a batch with [`ReplySlot::begin`], which returns the batch's ticket; the
//! lane's reader delivers each reply with that ticket and wakes the client. A reply for a
//! ticket the client has moved on from (it gave up on the batch: its output limit, or it
//! left) is dropped by the slot, and the reader stops delivering to that batch. The bytes
//! delivered and not yet taken are counted against the client output limit: past it the
//! slot delivers the limit's error instead, and the lane never waits for a client that does
//! not read.
//!
//! A batch of plain forwarded commands from a plain-TCP client can go **direct**
//! ([`ReplySlot::begin_direct`]): the lane's reader writes each reply straight into the
//! client's socket (counting it in the metrics as the session would) and the session does
//! not wait for them: it goes back to reading the client at once, so a request costs its
//! session one wake-up instead of two. A reply the socket does not take at once is kept
//! (`held`, bounded by the output limit) and the session is woken to write it; so do all
//! the replies after it, in order. Before it writes anything else, or runs another batch,
//! the session waits for the direct batch to be over ([`ReplySlot::settled`]).
//!
//! The lock is held for a push, a pop or a non-blocking write, never across an await;
//! with one worker thread it is never contended.

use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::net::tcp::OwnedWriteHalf;

use super::error::{LostReason, UpstreamError};
use crate::command::CommandId;
use crate::metrics::{self, ErrorClass};
use crate::protocol::ReplyFrame;

/// One reply, or the error that ends a batch's replies.
pub type Delivery = Result<(Bytes, ReplyFrame), UpstreamError>;

/// A slot that has held this many replies at once gives its memory back at the next batch.
const KEEP_CAPACITY: usize = 64;
/// A direct batch's replies are written together up to this size.
const STAGE_BYTES: usize = 64 * 1024;
/// The staging buffer is kept for the next batch up to this capacity.
const STAGED_KEEP: usize = 4 * 1024;

#[derive(Default)]
pub struct ReplySlot {
    state: Mutex<SlotState>,
    /// The client's socket, for direct batches (a plain-TCP client only).
    client: Option<Arc<OwnedWriteHalf>>,
}

#[derive(Default)]
struct SlotState {
    /// The batch the client waits for; deliveries for any other are dropped.
    ticket: u64,
    replies: VecDeque<Delivery>,
    /// Reply bytes delivered and not yet taken.
    pending: usize,
    /// The output limit was passed: the client is to be closed.
    overflow: bool,
    /// The client's task, waiting for a reply or for the overflow.
    waker: Option<Waker>,
    /// A direct batch is in flight: replies not all written (or held).
    direct: bool,
    /// The direct batch's commands, in order (for the metrics), the next one's index, and
    /// when the batch was read.
    commands: Vec<CommandId>,
    next: usize,
    started: Option<Instant>,
    /// Direct replies of the batch not yet written (see `write_direct`).
    staged: BytesMut,
    /// Direct replies the socket did not take, for the session to write, in order.
    held: BytesMut,
    /// The session is writing held bytes: what comes meanwhile is held too.
    session_writing: bool,
    /// The session waits for the direct batch to end (not only for held bytes).
    wants_end: bool,
    /// Writing to the client failed, or it passed its output limit: it is to be closed.
    broken: bool,
}

/// What [`ReplySlot::settled`] found.
pub enum Settled {
    /// No direct batch is in flight and nothing is held.
    Done,
    /// Direct replies the session must write now, in order, before asking again.
    Held(BytesMut),
    /// The client is to be closed (its socket failed, or it passed its output limit).
    Broken,
}

impl ReplySlot {
    pub fn new() -> Arc<ReplySlot> {
        Arc::new(ReplySlot::default())
    }

    /// A slot that may write direct batches' replies into `client`.
    pub fn with_client(client: Option<Arc<OwnedWriteHalf>>) -> Arc<ReplySlot> {
        Arc::new(ReplySlot {
            state: Mutex::default(),
            client,
        })
    }

    /// Whether this client's batches may go direct.
    pub fn can_go_direct(&self) -> bool {
        self.client.is_some()
    }

    /// Opens a direct batch of `commands` (each answered by one reply, written straight to
    /// the client), read at `started`.
    pub fn begin_direct(
        self: &Arc<Self>,
        commands: impl Iterator<Item = CommandId>,
        started: Instant,
    ) -> Ticket {
        let ticket = self.begin();
        let mut state = self.lock();
        state.direct = true;
        // A long pipeline's list is not kept for the small batches after it.
        if state.commands.capacity() > KEEP_CAPACITY {
            state.commands = Vec::new();
        } else {
            state.commands.clear();
        }
        state.commands.extend(commands);
        state.next = 0;
        state.started = Some(started);
        drop(state);
        ticket
    }

    /// The session is over: nothing more is written to its client (what a lane still
    /// has for it is dropped, as it was when the session's replies were its own).
    pub fn close(&self) {
        let mut state = self.lock();
        state.broken = true;
        state.held = BytesMut::new();
        state.staged = BytesMut::new();
    }

    /// Whether a direct batch is still in flight (or its replies held).
    pub fn direct_in_flight(&self) -> bool {
        let state = self.lock();
        state.direct || !state.held.is_empty() || state.broken
    }

    /// Waits for the direct batch: held replies to write (the caller writes them, then
    /// calls [`written`](ReplySlot::written) and asks again), its end, or the client's end.
    /// With `to_end` false, returns `Done` while the batch is still in flight and nothing
    /// is held: the caller only wants what needs its attention.
    pub async fn settled(&self, to_end: bool) -> Settled {
        std::future::poll_fn(|cx| {
            let mut state = self.lock();
            if state.broken {
                return Poll::Ready(Settled::Broken);
            }
            if !state.held.is_empty() {
                state.session_writing = true;
                // Taken whole: a split would keep the allocation (a large reply's) alive.
                return Poll::Ready(Settled::Held(std::mem::take(&mut state.held)));
            }
            if !state.direct {
                state.wants_end = false;
                return Poll::Ready(Settled::Done);
            }
            state.wants_end = to_end;
            register(&mut state.waker, cx);
            Poll::Pending
        })
        .await
    }

    /// The session wrote the held bytes it took.
    pub fn written(&self) {
        let mut state = self.lock();
        state.session_writing = false;
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // Nothing panics while the lock is held; a poisoned lock still holds valid state.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens the next batch: whatever is left of the last one is dropped. Returns the
    /// ticket the lane delivers with.
    pub fn begin(self: &Arc<Self>) -> Ticket {
        let mut state = self.lock();
        state.ticket = state.ticket.wrapping_add(1);
        state.pending = 0;
        state.overflow = false;
        if state.replies.capacity() > KEEP_CAPACITY {
            state.replies = VecDeque::new();
        } else {
            state.replies.clear();
        }
        Ticket {
            slot: self.clone(),
            ticket: state.ticket,
            open: true,
        }
    }

    /// The client gives up on the batch it waits for: later deliveries are dropped.
    pub fn abandon(&self) {
        let mut state = self.lock();
        state.ticket = state.ticket.wrapping_add(1);
        state.replies.clear();
        state.pending = 0;
        state.direct = false;
    }

    /// The next reply of the current batch (or the error that ends it).
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Delivery> {
        let mut state = self.lock();
        match state.replies.pop_front() {
            Some(delivery) => {
                if let Ok((bytes, _)) = &delivery {
                    state.pending = state.pending.saturating_sub(bytes.len());
                }
                Poll::Ready(delivery)
            }
            None => {
                register(&mut state.waker, cx);
                Poll::Pending
            }
        }
    }

    pub async fn next(&self) -> Delivery {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Ready once the lane found the client over its output limit.
    pub async fn overflowed(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.lock();
            if state.overflow {
                Poll::Ready(())
            } else {
                register(&mut state.waker, cx);
                Poll::Pending
            }
        })
        .await
    }
}

fn register(waker: &mut Option<Waker>, cx: &Context<'_>) {
    match waker {
        Some(current) if current.will_wake(cx.waker()) => {}
        _ => *waker = Some(cx.waker().clone()),
    }
}

/// The lane's handle on one batch's slot. Dropped before the batch was fully answered
/// (the lane stopped), it tells the client the connection is gone: a client never waits
/// for replies that cannot come.
pub struct Ticket {
    slot: Arc<ReplySlot>,
    ticket: u64,
    /// The client still wants this batch's replies.
    open: bool,
}

impl Ticket {
    /// Hands one reply over. `false` once the client no longer takes this batch's replies
    /// (it moved on, or passed `limit` with this one: it then gets the limit's error).
    pub fn deliver(&mut self, reply: (Bytes, ReplyFrame), limit: usize) -> bool {
        if !self.open {
            return false;
        }
        let waker = {
            let mut state = self.slot.lock();
            if state.ticket != self.ticket {
                self.open = false;
                return false;
            }
            if state.direct {
                let command = state.commands.get(state.next).copied();
                state.next += 1;
                let class = reply.1.error.then(|| ErrorClass::of_reply(&reply.0));
                if let (Some(command), Some(started)) = (command, state.started) {
                    metrics::record_command(command, class, started.elapsed());
                }
                let last = state.next >= state.commands.len();
                let client = self.slot.client.as_deref();
                let waker = write_direct(client, &mut state, &reply.0, limit, last);
                self.open = state.direct && !state.broken;
                drop(state);
                if let Some(waker) = waker {
                    waker.wake();
                }
                return self.open;
            }
            let size = reply.0.len();
            if state.pending + size > limit {
                state
                    .replies
                    .push_back(Err(UpstreamError::ClientOutputLimit(limit)));
                state.overflow = true;
                self.open = false;
            } else {
                state.pending += size;
                state.replies.push_back(Ok(reply));
            }
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        self.open
    }

    /// Ends the batch with `error`: the client gets it in place of the replies left.
    pub fn fail(&mut self, error: UpstreamError) {
        if !self.open {
            return;
        }
        let waker = {
            let mut state = self.slot.lock();
            if state.ticket != self.ticket {
                self.open = false;
                return;
            }
            if state.direct {
                // Each command left gets the error, as the session would have answered it.
                let mut answers = BytesMut::new();
                let class = Some(error.class());
                while let Some(&command) = state.commands.get(state.next) {
                    state.next += 1;
                    error.reply_to(&mut answers);
                    if let Some(started) = state.started {
                        metrics::record_command(command, class, started.elapsed());
                    }
                }
                let client = self.slot.client.as_deref();
                let waker = write_direct(client, &mut state, &answers, usize::MAX, true);
                self.open = false;
                drop(state);
                if let Some(waker) = waker {
                    waker.wake();
                }
                return;
            }
            self.open = false;
            state.replies.push_back(Err(error));
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Every reply was delivered: nothing to say when this is dropped.
    pub fn close(&mut self) {
        self.open = false;
    }
}

/// Writes a direct batch's reply bytes to the client now, or holds them for the session
/// (the socket is full, or earlier bytes are held). `last`: the batch is over with these.
/// Returns the session's waker when it must act.
fn write_direct(
    client: Option<&OwnedWriteHalf>,
    state: &mut SlotState,
    bytes: &[u8],
    limit: usize,
    last: bool,
) -> Option<Waker> {
    // A batch's replies go out in one write: staged until its last one (or enough).
    if !last && !state.broken && state.staged.len() + bytes.len() < STAGE_BYTES {
        state.staged.extend_from_slice(bytes);
        return None;
    }
    let mut staged = std::mem::take(&mut state.staged);
    // What the socket took, of `staged` then `bytes`.
    let mut written = 0;
    if state.held.is_empty() && !state.session_writing && !state.broken {
        if let Some(client) = client {
            let parts = [IoSlice::new(&staged), IoSlice::new(bytes)];
            let tried = if staged.is_empty() {
                client.try_write(bytes)
            } else {
                client.try_write_vectored(&parts)
            };
            match tried {
                Ok(n) => written = n,
                Err(error) if error.kind() == ErrorKind::WouldBlock => {}
                Err(error) => {
                    tracing::debug!(%error, "client write failed");
                    state.broken = true;
                }
            }
            metrics::global().bytes_out.increment(written as u64);
        }
    }
    let rest_staged = staged.get(written..).unwrap_or_default();
    let rest = bytes
        .get(written.saturating_sub(staged.len())..)
        .unwrap_or_default();
    let mut wake = false;
    let left = rest_staged.len() + rest.len();
    if left > 0 && !state.broken {
        if state.held.len() + left > limit {
            tracing::warn!(limit, "closing a client that does not read its replies");
            state.broken = true;
            state.held = BytesMut::new();
        } else {
            state.held.extend_from_slice(rest_staged);
            state.held.extend_from_slice(rest);
        }
        wake = true;
    }
    if staged.capacity() <= STAGED_KEEP {
        staged.clear();
        state.staged = staged;
    }
    if last {
        state.direct = false;
        wake |= state.wants_end;
    }
    wake |= state.broken;
    if wake { state.waker.take() } else { None }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.fail(LostReason::ConnectionClosed.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn reply(text: &'static [u8]) -> (Bytes, ReplyFrame) {
        let frame = ReplyFrame {
            len: text.len(),
            push: false,
            error: false,
        };
        (Bytes::from_static(text), frame)
    }

    fn poll(slot: &ReplySlot) -> Poll<Delivery> {
        slot.poll_next(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn replies_of_an_abandoned_batch_never_reach_the_next() {
        let slot = ReplySlot::new();
        let mut old = slot.begin();
        slot.abandon();
        assert!(!old.deliver(reply(b"+OLD\r\n"), usize::MAX));
        let mut new = slot.begin();
        assert!(!old.deliver(reply(b"+OLD\r\n"), usize::MAX));
        assert!(new.deliver(reply(b"+NEW\r\n"), usize::MAX));
        match poll(&slot) {
            Poll::Ready(Ok((bytes, _))) => assert_eq!(&bytes[..], b"+NEW\r\n"),
            other => panic!("expected +NEW, got {other:?}"),
        }
        new.close();
        drop(new);
        drop(old);
        assert!(
            poll(&slot).is_pending(),
            "closed tickets deliver nothing on drop"
        );
    }

    #[test]
    fn a_ticket_dropped_unanswered_fails_the_batch() {
        let slot = ReplySlot::new();
        drop(slot.begin());
        match poll(&slot) {
            Poll::Ready(Err(UpstreamError::Lost(_))) => {}
            other => panic!("expected a lost connection, got {other:?}"),
        }
    }

    #[test]
    fn passing_the_output_limit_delivers_the_limit_error_once() {
        let slot = ReplySlot::new();
        let mut ticket = slot.begin();
        assert!(ticket.deliver(reply(b"+12345\r\n"), 10));
        assert!(!ticket.deliver(reply(b"+12345\r\n"), 10));
        assert!(!ticket.deliver(reply(b"+1\r\n"), 10));
        assert!(matches!(poll(&slot), Poll::Ready(Ok(_))));
        assert!(matches!(
            poll(&slot),
            Poll::Ready(Err(UpstreamError::ClientOutputLimit(10)))
        ));
        drop(ticket);
        assert!(poll(&slot).is_pending());
    }
}

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
//! The lock is held for a push or a pop, never across an await; with one worker thread it is
//! never contended.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use super::error::{LostReason, UpstreamError};
use crate::protocol::ReplyFrame;

/// One reply, or the error that ends a batch's replies.
pub type Delivery = Result<(Bytes, ReplyFrame), UpstreamError>;

/// A slot that has held this many replies at once gives its memory back at the next batch.
const KEEP_CAPACITY: usize = 64;

#[derive(Default)]
pub struct ReplySlot {
    state: Mutex<SlotState>,
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
}

impl ReplySlot {
    pub fn new() -> Arc<ReplySlot> {
        Arc::new(ReplySlot::default())
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
        self.open = false;
        let waker = {
            let mut state = self.slot.lock();
            if state.ticket != self.ticket {
                return;
            }
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

//! Running a planned batch: on the node it is for (cluster mode) and on the client's
//! dedicated connection when a connection-bound state needs one, watching the client
//! while a blocking command waits; then settling the state the batch leaves behind (a
//! failed upstream ends the transaction; a state that is over gives its connection back).

use std::sync::Arc;

use tokio::io::AsyncReadExt;

use super::batch::{Batch, Outcome};
use super::io::{ClientIo, READ_CHUNK};
use super::state::{Multi, Session};
use crate::metrics;

impl Session {
    /// Runs a planned batch and settles the connection-bound state it leaves behind.
    /// Returns `false` when the client cannot be written to any more.
    pub(super) async fn execute(&mut self, batch: &mut Batch, io: &mut ClientIo) -> bool {
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
        if self.pinned.is_none() {
            self.pinned_on = node.clone();
        }
        let upstream = node
            .as_deref()
            .or(self.identity.as_deref())
            .unwrap_or(&self.shared.upstream);
        let ClientIo {
            reader,
            writer,
            inbuf,
            out,
            ..
        } = io;
        let run = batch.execute(upstream, &mut self.pinned, pin, (out, writer), &self.slot);
        let result = if blocking {
            // A blocking command may wait for ever: watch the client meanwhile, so one that
            // leaves releases its connection (and Redis its block) at once. Bytes it sends
            // meanwhile are kept for after.
            let limit = self.shared.limits.query_buffer_limit;
            tokio::pin!(run);
            loop {
                inbuf.reserve(READ_CHUNK);
                tokio::select! {
                    result = &mut run => break Some(result),
                    read = reader.read_buf(inbuf), if inbuf.len() < limit => {
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
        match result {
            Some(Ok(outcome)) if !outcome.close => {
                self.settle(outcome, out).await;
                true
            }
            Some(_) => {
                // The client is closed (output limit) or cannot be written to.
                self.break_pin();
                false
            }
            None => {
                // The client closed (or half-closed) its side while the command blocked:
                // Redis frees such a client, its block with it. What was answered before
                // the blocking command still goes out; the pinned connection, still armed,
                // is dropped. The batch may not even have started (the client's EOF can win
                // the race before it is first polled, leaving the connection unarmed, with
                // a MULTI sent earlier and its EXEC never written): it is dropped whatever
                // happened.
                tracing::debug!("client left during a blocking command");
                self.break_pin();
                let _ = writer.send(out).await;
                false
            }
        }
    }

    /// The dedicated connection, if any, must not go back to the pool.
    fn break_pin(&mut self) {
        if let Some(pinned) = self.pinned.as_mut() {
            pinned.broken = true;
        }
    }

    /// The session's state after a batch that ran: a failed upstream takes the
    /// transaction and watch with it; a held EXEC is finished; the dedicated connection
    /// goes back (or is dropped) once no connection-bound state needs it.
    async fn settle(&mut self, outcome: Outcome, out: &mut bytes::BytesMut) {
        if outcome.failed {
            // Cluster mode: a node that failed may have been replaced by a replica.
            if let Some(cluster) = &self.shared.cluster {
                cluster.refresh_soon();
            }
            // The connection (and any transaction or watch on it) is gone; a transaction
            // that could not get one goes on here, bound to abort.
            self.multi = outcome.detached.map(|error| Multi {
                error: true,
                detached: Some(error),
                ..Multi::default()
            });
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
            self.break_pin();
            self.pinned = None;
            self.drop_pin = false;
        } else if !self.needs_pin() {
            // Back to the pinned pool: the state it held (transaction, watch, blocking
            // command) is over.
            self.pinned = None;
        }
        self.unbind_if_idle();
    }
}

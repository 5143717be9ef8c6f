//! Cluster mode: a pipeline's requests for several nodes, planned side by side while they
//! are read — one batch per node — then sent together (one lane job each) and answered
//! part by part in the client's order. A pipeline of keys spread over three masters is
//! three jobs, however its keys alternate.

use std::sync::Arc;

use bytes::BytesMut;

use super::batch::{Batch, Mark};
use crate::net::ClientWrite;
use crate::upstream::Upstream;

/// Cluster mode: a pipeline's requests planned side by side while they are read, one
/// batch per node; then every batch goes to its node at once (one lane job each) and the
/// replies are written in the client's order, part by part. A pipeline of keys spread
/// over three masters is three jobs, however its keys alternate.
#[derive(Debug, Default)]
pub struct Spread {
    /// The batches, each for its own node (`None` while one is being added to).
    pub batches: Vec<Option<Batch>>,
    /// The parts in the client's order: a batch, where the part starts, where it ends.
    parts: Vec<(usize, Mark, usize)>,
    /// Steps planned in all parts: what the client has in flight.
    pub steps: usize,
    /// A batch failed: the slot map should be read again.
    pub failed: bool,
}

impl Spread {
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Sets `batch` aside (back in its place `at` if it came from here), with its steps
    /// from `part` on as the next part.
    pub fn set_aside(&mut self, batch: Batch, at: Option<usize>, part: Mark) {
        let end = batch.len();
        let at = match at {
            Some(at) => at,
            None => {
                self.batches.push(None);
                self.batches.len() - 1
            }
        };
        if end > part.step() {
            self.parts.push((at, part, end));
            self.steps += end - part.step();
        }
        if let Some(slot) = self.batches.get_mut(at) {
            *slot = Some(batch);
        }
    }

    /// Whether `batch` may be set aside here: it came from here (`at`), or it may go ahead
    /// and its node has no batch here yet. Two jobs of one client for one node could run
    /// on two lanes, in either order: a node has one batch in a `Spread`.
    pub fn takes(&self, batch: &Batch, at: Option<usize>, pinned: bool) -> bool {
        at.is_some()
            || (batch.can_submit_ahead(pinned)
                && batch
                    .node
                    .as_ref()
                    .is_some_and(|node| self.position(node).is_none()))
    }

    /// Where the batch for `node` is, if one is set aside.
    pub fn position(&self, node: &Arc<Upstream>) -> Option<usize> {
        self.batches.iter().position(|batch| {
            batch
                .as_ref()
                .and_then(|b| b.node.as_ref())
                .is_some_and(|n| Arc::ptr_eq(n, node))
        })
    }

    /// Sends every batch, then writes the parts' replies in order. `false` when the
    /// client must be closed.
    pub async fn run(&mut self, out: &mut BytesMut, client: &mut ClientWrite) -> bool {
        let mut submitted = Vec::with_capacity(self.batches.len());
        for batch in self.batches.drain(..) {
            submitted.push(match batch {
                Some(batch) => Some(batch.submit().await),
                None => None,
            });
        }
        for (at, from, to) in std::mem::take(&mut self.parts) {
            let Some(Some(batch)) = submitted.get_mut(at) else {
                continue;
            };
            match batch.emit_part(from, to, out, client).await {
                Ok(outcome) if !outcome.close => self.failed |= outcome.failed,
                _ => return false,
            }
        }
        true
    }
}

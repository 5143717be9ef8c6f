//! Cluster mode: where a request goes. A request with its keys in one slot goes to that
//! slot's master (or, for a read with `read_from_replicas`, to one of its replicas, the
//! master answering what the replica cannot); keys in several slots are split when the
//! command table says how (see `scatter`), else Redis Cluster's `-CROSSSLOT`; a keyless
//! command goes to the first master, or to every master when the table says so.
//!
//! A connection-bound state (WATCH, MULTI) lives on one node: the [`Binding`] says which,
//! and refuses a command for another slot as Redis Cluster does.
//!
//! This module decides; the session plans the request into its batch accordingly.

use std::sync::Arc;

use bytes::Bytes;

use super::router::Cluster;
use super::slot::slot;
use crate::command;
use crate::protocol::Request;
use crate::replies;
use crate::upstream::{UnavailableReason, Upstream, UpstreamError};

/// Where a request goes.
pub enum Target {
    /// One node; for a read sent to a replica, the master that answers when it cannot.
    Node {
        node: Arc<Upstream>,
        fallback: Option<Arc<Upstream>>,
    },
    /// Several nodes (see `scatter`).
    Scatter,
    /// Nowhere: this reply (`-CROSSSLOT`).
    Refused(&'static [u8]),
}

impl Cluster {
    /// Where `request` goes. `may_block`: it may block on the server (never sent to a
    /// replica); `replica_ok`: the client holds no dedicated connection; `current`: the
    /// node of the batch being planned, preferred among a slot's replicas.
    pub async fn target(
        &self,
        request: &Request,
        may_block: bool,
        replica_ok: bool,
        current: Option<&Arc<Upstream>>,
    ) -> Result<Target, UpstreamError> {
        let (positions, readonly) = {
            let args: Vec<&[u8]> = request.args.iter().map(|a| &a[..]).collect();
            let keys = self.keys();
            let readonly = self.reads_from_replicas() && keys.is_readonly(&args);
            (keys.key_positions(&args), readonly)
        };
        let spread = command::spread(&request.args);
        let Some((&first, rest)) = positions.split_first() else {
            if matches!(spread, Some(command::Spread::EveryMaster(_))) {
                return Ok(Target::Scatter);
            }
            let node = self
                .masters()
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| UpstreamError::from(UnavailableReason::NoClusterMaster))?;
            return Ok(Target::Node {
                node,
                fallback: None,
            });
        };
        let first_slot = slot(&request.args[first]);
        if rest.iter().any(|&i| slot(&request.args[i]) != first_slot) {
            return Ok(match spread {
                Some(command::Spread::BySlot { .. }) => Target::Scatter,
                _ => Target::Refused(replies::CROSSSLOT),
            });
        }
        let (node, fallback) = if readonly && !may_block && replica_ok {
            self.route_read(first_slot, current).await?
        } else {
            (self.route(first_slot).await?, None)
        };
        Ok(Target::Node { node, fallback })
    }

    /// Whether a command of a transaction whose node is not chosen yet waits for one: it
    /// has no key, and the server knows it with this many arguments (else Redis's error
    /// for it should come now, so the transaction is bound to the first master and it is
    /// sent).
    pub fn holds(&self, request: &Request) -> bool {
        let args: Vec<&[u8]> = request.args.iter().map(|a| &a[..]).collect();
        let keys = self.keys();
        keys.is_valid(&args) && keys.key_positions(&args).is_empty()
    }
}

/// The node (and slot) a connection-bound state — WATCH, MULTI — lives on. Every command
/// of the transaction goes there; one whose keys are in another slot gets `-CROSSSLOT`
/// (and EXEC then `-EXECABORT`), as Redis Cluster answers a transaction that spans slots.
#[derive(Debug, Default)]
pub struct Binding {
    pub node: Option<Arc<Upstream>>,
    pub slot: Option<u16>,
    /// MULTI was answered locally and is still to be sent: with the first command that
    /// says which node the transaction is on.
    pub multi_pending: bool,
    /// Keyless commands of that transaction, answered `+QUEUED` and still to be sent:
    /// after MULTI, once a key (or EXEC) has chosen the node.
    pub held: Vec<Bytes>,
}

impl Binding {
    /// The node a command of the state goes to, binding the state to it on first use;
    /// `Err` is the reply when the command cannot join it.
    pub fn bind(
        &mut self,
        cluster: &Cluster,
        request: Option<&Request>,
    ) -> Result<Arc<Upstream>, &'static [u8]> {
        let topology = cluster.topology().ok_or(replies::CLUSTERDOWN)?;
        let mut slots = Vec::new();
        if let Some(request) = request {
            let args: Vec<&[u8]> = request.args.iter().map(|a| &a[..]).collect();
            for position in cluster.keys().key_positions(&args) {
                let s = slot(args[position]);
                if !slots.contains(&s) {
                    slots.push(s);
                }
            }
        }
        match slots.as_slice() {
            [] => {
                if self.node.is_none() {
                    let first = topology.masters.first().ok_or(replies::CLUSTERDOWN)?;
                    self.node = Some(cluster.node(&first.address));
                }
            }
            [s] => {
                if self.slot.is_some_and(|bound| bound != *s) {
                    return Err(replies::CROSSSLOT);
                }
                let master = topology.master_of(*s).ok_or(replies::CLUSTERDOWN)?;
                let owner = cluster.node(&master.address);
                if let Some(bound) = &self.node {
                    if !Arc::ptr_eq(bound, &owner) {
                        return Err(replies::CROSSSLOT);
                    }
                }
                self.slot = Some(*s);
                self.node = Some(owner);
            }
            _ => return Err(replies::CROSSSLOT),
        }
        self.node.clone().ok_or(replies::CLUSTERDOWN)
    }
}

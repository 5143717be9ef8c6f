//! Cluster mode in the session: a forwarded request's batch is the one for its node (a
//! request for another node waits for the next batch, or joins that node's batch in a
//! `Spread`); a request no single node can answer becomes a `Flow::Scatter`; inside a
//! connection-bound state (WATCH, MULTI) everything goes to the state's node. Where each
//! request goes is the cluster module's answer (`Cluster::target`, `Binding::bind`); this
//! file only plans it into the batch.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::batch::Batch;
use super::spread::Spread;
use super::state::{Flow, Session, request_bytes};
use crate::cluster::keys::KeySlots;
use crate::cluster::scatter::scatter;
use crate::cluster::{Cluster, Target};
use crate::command::{self, Kind, Local};
use crate::metrics::{self, ErrorClass};
use crate::protocol::Request;
use crate::replies;
use crate::upstream::{ConnState, UnavailableReason, Upstream};

const MULTI: &[u8] = b"*1\r\n$5\r\nMULTI\r\n";

/// What [`Session::before_exec`] decided.
pub(super) enum BeforeExec {
    /// Go on planning the EXEC.
    Ready,
    /// Run the batch first: the transaction is on another node.
    Defer,
    /// A reply was planned instead.
    Replied,
}

impl Session {
    /// Plans a forwarded request in cluster mode: the common case at once, the rest
    /// through [`route_cluster`](Session::route_cluster). `may_block`: the command may
    /// block on the server.
    pub(super) async fn route(
        &mut self,
        cluster: Arc<Cluster>,
        request: Request,
        batch: &mut Batch,
        may_block: bool,
    ) -> Flow {
        match self.route_fast(&cluster, request, batch, may_block) {
            Ok(flow) => flow,
            // Boxed: only cluster mode pays for this future's size.
            Err(request) => Box::pin(self.route_cluster(cluster, request, batch, may_block)).await,
        }
    }

    /// The common case of [`route_cluster`](Session::route_cluster), without waiting or
    /// allocating: keys in one slot, the slot map in hand, no connection-bound state, no
    /// replica reads. `Err` hands the request to `route_cluster`.
    pub(super) fn route_fast(
        &mut self,
        cluster: &Arc<Cluster>,
        request: Request,
        batch: &mut Batch,
        may_block: bool,
    ) -> Result<Flow, Request> {
        if self.requires_auth() || self.needs_pin() || cluster.reads_from_replicas() {
            return Err(request);
        }
        let KeySlots::One(slot) = cluster.keys().key_slots(&request.args) else {
            return Err(request);
        };
        let Some(node) = cluster.route_now(slot) else {
            return Err(request);
        };
        Ok(self.plan_on(cluster.clone(), node, None, request, batch, may_block))
    }

    /// Plans `request` in `batch`, for `node` (see [`Target::Node`]); a batch that already
    /// goes to another node leaves the request for the next one.
    fn plan_on(
        &mut self,
        cluster: Arc<Cluster>,
        node: Arc<Upstream>,
        fallback: Option<Arc<Upstream>>,
        request: Request,
        batch: &mut Batch,
        may_block: bool,
    ) -> Flow {
        if batch.goes_elsewhere(&node) {
            return Flow::Defer(request);
        }
        batch.node = Some(node);
        batch.fallback = fallback;
        if batch.cluster.is_none() {
            batch.cluster = Some(cluster);
        }
        batch.blocking |= may_block;
        let state = self.conn_state();
        batch.forward_routed(request_bytes(request), state);
        Flow::Continue
    }

    /// The batch set aside in `spread` for `request`'s node, when the request may join
    /// it: a plain forwarded command (nothing that blocks or binds a connection) with its
    /// keys in one slot, as [`route_fast`](Session::route_fast) routes it.
    pub(super) fn spread_batch(&self, spread: &Spread, request: &Request) -> Option<usize> {
        let cluster = self.shared.cluster.as_ref()?;
        if spread.is_empty() || cluster.reads_from_replicas() || !self.may_join_spread(request) {
            return None;
        }
        let KeySlots::One(slot) = cluster.keys().key_slots(&request.args) else {
            return None;
        };
        spread.position(&cluster.route_now(slot)?)
    }

    /// Whether `request` may be added to a batch taken back from a `Spread`: nothing that
    /// would keep the batch from going ahead on a shared lane (a connection-bound state,
    /// a blocking command, a mode change) — a forwarded command, or PING/ECHO.
    pub(super) fn may_join_spread(&self, request: &Request) -> bool {
        if self.requires_auth() || self.needs_pin() || self.pinned.is_some() {
            return false;
        }
        match command::lookup(request.name()) {
            None => true,
            Some(c) => matches!(
                c.kind,
                Kind::Forward | Kind::Local(Local::Ping | Local::Echo)
            ),
        }
    }

    /// Plans a forwarded request in cluster mode (see `cluster::route`).
    async fn route_cluster(
        &mut self,
        cluster: Arc<Cluster>,
        request: Request,
        batch: &mut Batch,
        may_block: bool,
    ) -> Flow {
        if self.requires_auth() {
            batch.reply(replies::NOAUTH);
            return Flow::Continue;
        }
        if let Err(error) = cluster.ready().await {
            replies::proxy_error(batch.local(), &error);
            batch.end_local_as(Some(error.class()));
            return Flow::Continue;
        }
        if self.needs_pin() {
            // WATCH is in force: the command goes to its node (see `forward_bound`).
            batch.blocking |= may_block;
            return self.forward(request, batch);
        }
        let replica_ok = self.pinned.is_none();
        let target = cluster
            .target(&request, may_block, replica_ok, batch.node.as_ref())
            .await;
        match target {
            Ok(Target::Node { node, fallback }) => {
                self.plan_on(cluster, node, fallback, request, batch, may_block)
            }
            Ok(Target::Scatter) => Flow::Scatter(request),
            Ok(Target::Refused(reply)) => {
                batch.reply(reply);
                Flow::Continue
            }
            Err(error) => {
                replies::proxy_error(batch.local(), &error);
                batch.end_local_as(Some(error.class()));
                Flow::Continue
            }
        }
    }

    /// Cluster mode, inside a connection-bound state (or a MULTI not sent yet): plans
    /// `request` on the state's node (sending a pending MULTI first).
    pub(super) fn forward_bound(
        &mut self,
        cluster: Arc<Cluster>,
        request: Request,
        batch: &mut Batch,
    ) -> Flow {
        if self.binding.multi_pending
            && self.binding.node.is_none()
            && self.binding.held.len() < self.shared.max_in_flight
            && cluster.holds(&request)
        {
            // No key yet to say where the transaction runs: queued here until one does.
            self.binding.held.push(request_bytes(request));
            batch.reply(replies::QUEUED);
            return Flow::Continue;
        }
        let node = match self.binding.bind(&cluster, Some(&request)) {
            Ok(node) => node,
            Err(reply) => {
                batch.reply(reply);
                self.flag_multi();
                return Flow::Continue;
            }
        };
        if batch.goes_elsewhere(&node) {
            return Flow::Defer(request);
        }
        batch.node = Some(node);
        batch.cluster = Some(cluster);
        batch.pin_required = true;
        let state = self.conn_state();
        if self.binding.multi_pending {
            self.send_multi(batch, state);
        }
        batch.forward(request_bytes(request), state);
        Flow::Continue
    }

    /// Before EXEC in cluster mode: a MULTI still pending goes first, to the transaction's
    /// node (the first master when no command chose one).
    pub(super) fn before_exec(&mut self, batch: &mut Batch) -> BeforeExec {
        let Some(cluster) = self.shared.cluster.clone() else {
            return BeforeExec::Ready;
        };
        if !self.binding.multi_pending {
            return BeforeExec::Ready;
        }
        let node = match self.binding.bind(&cluster, None) {
            Ok(node) => node,
            Err(reply) => {
                batch.reply(reply);
                return BeforeExec::Replied;
            }
        };
        if batch.goes_elsewhere(&node) {
            return BeforeExec::Defer;
        }
        batch.node = Some(node);
        batch.cluster = Some(cluster);
        batch.pin_required = true;
        self.send_multi(batch, self.conn_state());
        BeforeExec::Ready
    }

    /// MULTI, answered when it came, goes to the transaction's node now, with the keyless
    /// commands queued since (Redis's own `+QUEUED` or error for them is not shown: the
    /// client had its `+QUEUED`, and an error still aborts the transaction at EXEC).
    fn send_multi(&mut self, batch: &mut Batch, state: ConnState) {
        self.binding.multi_pending = false;
        batch.forward_swallowed(Bytes::from_static(MULTI), state);
        for held in std::mem::take(&mut self.binding.held) {
            batch.forward_ignored(held, state);
        }
    }

    /// Answers a request from several nodes, into `out`.
    pub(super) async fn scatter(&mut self, request: Request, out: &mut BytesMut) {
        let started = Instant::now();
        let id = command::id(request.name());
        let result = match self.shared.cluster.clone() {
            Some(cluster) => scatter(&cluster, &request, self.conn_state()).await,
            None => Err(UnavailableReason::NotInClusterMode.into()),
        };
        let class = match result {
            Ok(reply) => {
                let class = (reply.first() == Some(&b'-')).then(|| ErrorClass::of_reply(&reply));
                out.extend_from_slice(&reply);
                class
            }
            Err(error) => {
                replies::proxy_error(out, &error);
                Some(error.class())
            }
        };
        metrics::record_command(id, class, started.elapsed());
    }
}

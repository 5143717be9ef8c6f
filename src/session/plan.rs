//! Planning: each request scanned from the client, classified once by the command table,
//! becomes a local reply, a refusal, or a forwarded request in the batch — or changes the
//! session's course (`Flow`: close, relay mode, a cluster scatter, the next batch).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::batch::Batch;
use super::state::{Access, Flow, Multi, Session, request_bytes};
use crate::cluster::Cluster;
use crate::command::{self, Command, Kind};
use crate::metrics::{self, ErrorClass};
use crate::policy::Verdict;
use crate::protocol::Request;
use crate::replies::{self, refusal};

/// Sent before WAIT/WAITAOF (see [`Kind::WaitReplicas`]): `SPUBLISH redis-ambassador:wait ""`.
const WAIT_FENCE: &[u8] = b"*3\r\n$8\r\nSPUBLISH\r\n$21\r\nredis-ambassador:wait\r\n$0\r\n\r\n";

/// What [`Session::dispatch`] made of a request.
pub(super) enum Dispatch {
    Done(Flow),
    /// To finish with [`Session::dispatch_later`].
    Later(Request, Option<Command>),
}

impl Session {
    /// Dispatches one request: a local answer, a refusal, or a place in the batch.
    pub(super) async fn handle(&mut self, request: Request, batch: &mut Batch) -> Flow {
        match self.dispatch(request, batch) {
            Dispatch::Done(flow) => flow,
            Dispatch::Later(request, classified) => {
                self.dispatch_later(request, classified, batch).await
            }
        }
    }

    /// What is decided without waiting — a forwarded command, a transaction's queued
    /// one, a cluster command whose slot's node is known — is done here; the rest (local
    /// commands, a wrong arity, routing that must wait) is left to
    /// [`dispatch_later`](Self::dispatch_later). The plan loop boxes only that
    /// rest: the future of a session waiting for its client is as large as its largest
    /// state, and every idle client pays for it.
    pub(super) fn dispatch(&mut self, request: Request, batch: &mut Batch) -> Dispatch {
        let classified = command::classify(request.name());
        batch.begin(classified.id);
        match &self.access {
            Access::Any => {}
            Access::Checked(permissions) => {
                if let Verdict::Refused(name) = permissions.check(&request.args) {
                    metrics::record_refused(&self.user, name);
                    replies::noperm_command(batch.local(), &self.user, name);
                    return Dispatch::Done(self.end_refusal(batch));
                }
            }
            Access::Pending(_) => return Dispatch::Later(request, classified.command),
        }
        let cluster = self.shared.cluster.clone();
        if cluster.as_ref().is_some_and(|c| c.topology().is_none()) {
            // The first slot map is read first (see `dispatch_later`).
            return Dispatch::Later(request, classified.command);
        }
        let Some(command) = classified.command else {
            if self.multi.is_some() {
                return Dispatch::Done(self.queue_forward(request, batch));
            }
            return match cluster {
                Some(cluster) => self.route_now(&cluster, request, None, batch, false),
                None => Dispatch::Done(self.forward(request, batch)),
            };
        };
        if command.kind == Kind::HttpProbe || !command::arity_ok(command.arity, request.args.len())
        {
            return Dispatch::Later(request, Some(command));
        }
        if self.multi.is_some() {
            return Dispatch::Done(self.handle_in_multi(
                command.kind,
                command.name,
                request,
                batch,
            ));
        }
        match cluster {
            Some(cluster) if command.kind.routed() => {
                let may_block = command.kind.may_block(&request.args);
                self.route_now(&cluster, request, Some(command), batch, may_block)
            }
            None if command.kind == Kind::Forward => Dispatch::Done(self.forward(request, batch)),
            _ => Dispatch::Later(request, Some(command)),
        }
    }

    /// Cluster mode: the common case routed at once (see `route_fast`), the rest later.
    fn route_now(
        &mut self,
        cluster: &Arc<Cluster>,
        request: Request,
        command: Option<Command>,
        batch: &mut Batch,
        may_block: bool,
    ) -> Dispatch {
        match self.route_fast(cluster, request, batch, may_block) {
            Ok(flow) => Dispatch::Done(flow),
            Err(request) => Dispatch::Later(request, command),
        }
    }

    /// The part of [`handle`](Self::handle) that may wait, after [`dispatch`](Self::dispatch)
    /// classified the request.
    pub(super) async fn dispatch_later(
        &mut self,
        request: Request,
        command: Option<Command>,
        batch: &mut Batch,
    ) -> Flow {
        if let Access::Pending(_) = self.access {
            if let Some(reply) = self.policy_refusal(&request).await {
                batch.local().extend_from_slice(&reply);
                return self.end_refusal(batch);
            }
        }
        if let Some(cluster) = &self.shared.cluster {
            if cluster.topology().is_none() {
                // Until the first slot map is read (just after start): read it now; an
                // error shows up in the command's own reply.
                let _ = Box::pin(cluster.ready()).await;
            }
        }
        let Some(command) = command else {
            if self.multi.is_some() {
                return self.queue_forward(request, batch);
            }
            if let Some(cluster) = self.shared.cluster.clone() {
                return Box::pin(self.route(cluster, request, batch, false)).await;
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
            return self.handle_in_multi(command.kind, command.name, request, batch);
        }
        if let Some(cluster) = self.shared.cluster.clone() {
            if command.kind.routed() {
                let may_block = command.kind.may_block(&request.args);
                return Box::pin(self.route(cluster, request, batch, may_block)).await;
            }
        }
        self.plan_command(command, request, batch).await
    }

    /// The user's rules on `request`, where waiting is allowed (`dispatch_later`, relay
    /// mode): `Some(reply)` when it is refused — by the rules, or because they cannot be
    /// checked (never forwarded unchecked). A user whose permissions were not known when
    /// it authenticated gets them here (the catalogue loaded if no load has succeeded).
    pub(super) async fn policy_refusal(&mut self, request: &Request) -> Option<Bytes> {
        if let Access::Pending(user) = self.access {
            let shared = Arc::clone(&self.shared);
            let mut out = BytesMut::new();
            match Box::pin(shared.policies.get(user, &shared.upstream)).await {
                Ok(Ok(permissions)) => self.access = Access::Checked(Arc::clone(permissions)),
                Ok(Err(error)) => replies::policy_unavailable(&mut out, &self.user, error),
                Err(error) => replies::policy_unavailable(&mut out, &self.user, &error),
            }
            if !out.is_empty() {
                return Some(out.freeze());
            }
        }
        let Access::Checked(permissions) = &self.access else {
            return None;
        };
        let Verdict::Refused(name) = permissions.check(&request.args) else {
            return None;
        };
        metrics::record_refused(&self.user, name);
        let mut out = BytesMut::new();
        replies::noperm_command(&mut out, &self.user, name);
        Some(out.freeze())
    }

    /// After a refusal's reply: its place in the batch, and inside MULTI the
    /// transaction flagged so that EXEC aborts, as Redis's `rejectCommand` does.
    fn end_refusal(&mut self, batch: &mut Batch) -> Flow {
        batch.end_local();
        self.flag_multi();
        Flow::Continue
    }

    /// A command of the table, outside a transaction (and not routed by cluster mode).
    async fn plan_command(
        &mut self,
        command: Command,
        request: Request,
        batch: &mut Batch,
    ) -> Flow {
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
                self.forward(request, batch)
            }
            Kind::WaitReplicas => {
                batch.blocking = true;
                // WAIT counts the replicas that have the writes of its connection, and the
                // client's went over other connections: a shard-channel publish nobody
                // hears (shard channels have no patterns) moves this connection's write
                // offset past them first. Its reply, or the error of a server or user that
                // cannot, is not shown.
                batch.forward_ignored(Bytes::from_static(WAIT_FENCE), self.conn_state());
                self.forward(request, batch)
            }
            Kind::StreamRead => {
                batch.blocking = command::stream_read_blocks(&request.args);
                self.forward(request, batch)
            }
            Kind::Subscribe(_) | Kind::Monitor => Flow::Relay(request),
            Kind::Replication if self.shared.cluster.is_some() => {
                replies::unsupported(batch.local(), command.name, refusal::REPLICATION);
                batch.end_local_as(Some(ErrorClass::Unsupported));
                Flow::Continue
            }
            Kind::Replication => Flow::Replicate(request),
            Kind::Interrupt if !command::interrupts(&request.args) => self.forward(request, batch),
            // What is planned runs first: the interrupt goes in a batch of its own.
            Kind::Interrupt if batch.has_upstream() => Flow::Defer(request),
            Kind::Interrupt => {
                Box::pin(self.interrupt(request, batch)).await;
                Flow::Continue
            }
        }
    }

    /// SCRIPT KILL, FUNCTION KILL, FUNCTION STATS, SHUTDOWN: sent at once on a connection
    /// of their own, in whatever database it is in (they need none), never behind a busy script on a lane
    /// (see [`Kind::Interrupt`]). The reply is the server's, in its place.
    async fn interrupt(&mut self, request: Request, batch: &mut Batch) {
        match self
            .upstream()
            .call_now(request_bytes(request), self.proto)
            .await
        {
            Ok(reply) => {
                batch.local().extend_from_slice(&reply);
                batch.end_local();
            }
            Err(error) => {
                error.reply_to(batch.local());
                batch.end_local_as(Some(error.class()));
            }
        }
    }

    /// Plans `request` to go upstream, in the client's state (database, protocol); on the
    /// client's dedicated connection while a connection-bound state lasts.
    pub(super) fn forward(&mut self, request: Request, batch: &mut Batch) -> Flow {
        if self.requires_auth() {
            batch.reply(replies::NOAUTH);
            return Flow::Continue;
        }
        if let Some(cluster) = &self.shared.cluster {
            if self.needs_pin() || self.binding.multi_pending {
                let cluster = cluster.clone();
                return self.forward_bound(cluster, request, batch);
            }
        }
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
}

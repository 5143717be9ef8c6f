//! Cluster mode in the session: each forwarded request goes to the master of its keys'
//! slot, a batch carries requests for one node (the next node's requests wait for the next
//! batch, so replies stay in order), and requests that no single node can answer are
//! answered by several:
//!
//! - keys in several slots: MGET, MSET, DEL, UNLINK, EXISTS and TOUCH are split by slot,
//!   sent to their masters together, and merged in key order with the reply shape of one
//!   Redis (MGET's array, MSET's `+OK`, the others' sum); any other command answers Redis
//!   Cluster's own `-CROSSSLOT Keys in request don't hash to the same slot`;
//! - keyless commands that concern the whole data set run on every master: DBSIZE (summed),
//!   KEYS (concatenated), FLUSHALL/FLUSHDB, SCRIPT LOAD/FLUSH, FUNCTION LOAD/FLUSH/DELETE
//!   (one reply when all agree, else the first error); other keyless commands go to the
//!   first master.
//!
//! With `[upstream] read_from_replicas`, a command the server flags `readonly` whose keys
//! are in one slot goes to a replica of that slot's master (see `Cluster::route_read`),
//! unless it may block or the client is in a connection-bound state (MULTI, WATCH, …:
//! those never reach this routing); the parts of a split read (MGET, EXISTS, TOUCH) too.
//! The batch (or part) carries the master, which answers the reads a replica cannot.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::batch::{Batch, Spread};
use super::{Flow, Session, request_bytes};
use crate::cluster::Cluster;
use crate::cluster::keys::KeySlots;
use crate::cluster::slot::slot;
use crate::command;
use crate::metrics::{self, ErrorClass};
use crate::protocol::{Request, encode};
use crate::replies;
use crate::upstream::{ConnState, Upstream, UpstreamError};

pub const CROSSSLOT: &[u8] = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n";
/// Redis Cluster's reply for a slot nobody serves.
pub const CLUSTERDOWN: &[u8] = b"-CLUSTERDOWN Hash slot not served\r\n";
const MULTI: &[u8] = b"*1\r\n$5\r\nMULTI\r\n";

/// Cluster mode: the node (and slot) a connection-bound state — WATCH, MULTI — lives on.
/// Every command of the transaction goes there; one whose keys are in another slot gets
/// `-CROSSSLOT` (and EXEC then `-EXECABORT`), as Redis Cluster answers a transaction that
/// spans slots.
#[derive(Debug, Default)]
pub(super) struct Binding {
    pub node: Option<Arc<Upstream>>,
    pub slot: Option<u16>,
    /// MULTI was answered locally and is still to be sent: with the first command that
    /// says which node the transaction is on.
    pub multi_pending: bool,
    /// Keyless commands of that transaction, answered `+QUEUED` and still to be sent:
    /// after MULTI, once a key (or EXEC) has chosen the node.
    pub held: Vec<Bytes>,
}

/// What [`Session::before_exec`] decided.
pub(super) enum BeforeExec {
    /// Go on planning the EXEC.
    Ready,
    /// Run the batch first: the transaction is on another node.
    Defer,
    /// A reply was planned instead.
    Replied,
}

/// How a forwarded command may block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocks {
    Never,
    Always,
    /// XREAD/XREADGROUP: only with BLOCK.
    StreamRead,
}

impl Blocks {
    /// Marks `batch` blocking when `request` may block.
    fn mark(self, batch: &mut Batch, request: &Request) {
        match self {
            Blocks::Never => {}
            Blocks::Always => batch.blocking = true,
            Blocks::StreamRead => {
                batch.blocking |= command::stream_read_blocks(&request.args);
            }
        }
    }
}

/// How the replies of a split or fanned-out command combine into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Merge {
    /// Elements of arrays, put back in key order (MGET).
    Elements,
    /// Integers, added (DEL, UNLINK, EXISTS, TOUCH, DBSIZE).
    Sum,
    /// Elements of arrays, concatenated (KEYS).
    Concat,
    /// The same reply from every node, or the first error (MSET, FLUSHALL, SCRIPT LOAD).
    Agree,
    /// SCAN: one master at a time (see `scan`).
    Scan,
}

/// SCAN walks the masters one after the other: the client's cursor carries the master's
/// index in its low `SCAN_NODE_BITS` bits and that master's own cursor above them. A
/// master's cursor of 0 moves on to the next master; after the last, the cursor is 0. Keys
/// that move between masters during a scan may be missed or returned twice (Redis Cluster
/// clients that scan node by node have the same caveat).
const SCAN_NODE_BITS: u32 = 10;

/// A command split over slots: its merge, and how many arguments make one key's share
/// (MSET: key and value).
fn split_rule(name: &[u8]) -> Option<(Merge, usize)> {
    Some(match name {
        b"mget" => (Merge::Elements, 1),
        b"mset" => (Merge::Agree, 2),
        b"del" | b"unlink" | b"exists" | b"touch" => (Merge::Sum, 1),
        _ => return None,
    })
}

/// Whether a command with keys in several slots is split (see `split_rule`).
pub(super) fn splits(name: &[u8]) -> bool {
    split_rule(&name.to_ascii_lowercase()).is_some()
}

/// A keyless command every master runs.
fn fan_out_rule(name: &[u8], args: &[Bytes]) -> Option<Merge> {
    let sub = args.get(1).map(|a| a.to_ascii_lowercase());
    Some(match (name, sub.as_deref()) {
        (b"dbsize", _) => Merge::Sum,
        (b"keys", _) => Merge::Concat,
        (b"flushall" | b"flushdb", _) => Merge::Agree,
        (b"script", Some(b"load" | b"flush")) => Merge::Agree,
        (b"function", Some(b"load" | b"flush" | b"delete")) => Merge::Agree,
        (b"scan", _) => Merge::Scan,
        _ => return None,
    })
}

impl Session {
    /// The common case of [`route_cluster`](Session::route_cluster), without waiting or
    /// allocating: keys in one slot, the slot map in hand, no connection-bound state, no
    /// replica reads. `Err` hands the request to `route_cluster`.
    pub(super) fn route_fast(
        &mut self,
        cluster: &Arc<Cluster>,
        request: Request,
        batch: &mut Batch,
        blocks: Blocks,
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
        if batch.goes_elsewhere(&node) {
            return Ok(Flow::Defer(request));
        }
        batch.node = Some(node);
        batch.fallback = None;
        if batch.cluster.is_none() {
            batch.cluster = Some(cluster.clone());
        }
        blocks.mark(batch, &request);
        let state = self.conn_state();
        batch.forward_routed(request_bytes(request), state);
        Ok(Flow::Continue)
    }

    /// The batch set aside in `spread` for `request`'s node, when the request may join
    /// it: a plain forwarded command (nothing that blocks or binds a connection) with its
    /// keys in one slot, as [`route_fast`](Session::route_fast) routes it.
    pub(super) fn spread_batch(&self, spread: &mut Spread, request: &Request) -> Option<usize> {
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
                command::Kind::Forward
                    | command::Kind::Local(command::Local::Ping | command::Local::Echo)
            ),
        }
    }

    /// Plans a forwarded request in cluster mode (see the module's comment).
    pub(super) async fn route_cluster(
        &mut self,
        cluster: Arc<Cluster>,
        request: Request,
        batch: &mut Batch,
        blocks: Blocks,
    ) -> Flow {
        if self.requires_auth() {
            batch.reply(replies::NOAUTH);
            return Flow::Continue;
        }
        if let Err(error) = cluster.ready().await {
            replies::proxy_error(batch.local(), &error.to_string());
            batch.end_local_as(Some(error.class()));
            return Flow::Continue;
        }
        if self.needs_pin() {
            // WATCH is in force: the command goes to its node (see `forward_bound`).
            blocks.mark(batch, &request);
            return self.forward(request, batch);
        }
        if let Err(error) = cluster.ready().await {
            replies::proxy_error(batch.local(), &error.to_string());
            batch.end_local_as(Some(error.class()));
            return Flow::Continue;
        }
        let name = request.name().to_ascii_lowercase();
        let (positions, readonly) = {
            let args: Vec<&[u8]> = request.args.iter().map(|a| &a[..]).collect();
            let keys = cluster.keys();
            let readonly = cluster.reads_from_replicas() && keys.is_readonly(&args);
            (keys.key_positions(&args), readonly)
        };
        let target = match positions.split_first() {
            None if fan_out_rule(&name, &request.args).is_some() => {
                return Flow::Scatter(request);
            }
            None => cluster
                .masters()
                .await
                .and_then(|m| m.into_iter().next().ok_or_else(no_master))
                .map(|node| (node, None)),
            Some((&first, rest)) => {
                let first_slot = slot(&request.args[first]);
                if rest.iter().any(|&i| slot(&request.args[i]) != first_slot) {
                    if split_rule(&name).is_some() {
                        return Flow::Scatter(request);
                    }
                    batch.reply(CROSSSLOT);
                    return Flow::Continue;
                }
                let may_block = match blocks {
                    Blocks::Never => false,
                    Blocks::Always => true,
                    Blocks::StreamRead => command::stream_read_blocks(&request.args),
                };
                if readonly && !may_block && self.pinned.is_none() {
                    cluster.route_read(first_slot, batch.node.as_ref()).await
                } else {
                    cluster.route(first_slot).await.map(|node| (node, None))
                }
            }
        };
        let (node, fallback) = match target {
            Ok(target) => target,
            Err(error) => {
                replies::proxy_error(batch.local(), &error.to_string());
                batch.end_local_as(Some(error.class()));
                return Flow::Continue;
            }
        };
        if batch.goes_elsewhere(&node) {
            return Flow::Defer(request);
        }
        batch.node = Some(node);
        batch.fallback = fallback;
        batch.cluster = Some(cluster);
        blocks.mark(batch, &request);
        let state = self.conn_state();
        batch.forward_routed(request_bytes(request), state);
        Flow::Continue
    }

    /// The node a command of a connection-bound state goes to, binding the state to it on
    /// first use; `Err` is the reply when the command cannot join it.
    fn bind(
        &mut self,
        cluster: &Cluster,
        request: Option<&Request>,
    ) -> Result<Arc<Upstream>, &'static [u8]> {
        let topology = cluster.topology().ok_or(CLUSTERDOWN)?;
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
                if self.binding.node.is_none() {
                    let first = topology.masters.first().ok_or(CLUSTERDOWN)?;
                    self.binding.node = Some(cluster.node(&first.address));
                }
            }
            [s] => {
                if self.binding.slot.is_some_and(|bound| bound != *s) {
                    return Err(CROSSSLOT);
                }
                let owner = cluster.node(&topology.master_of(*s).ok_or(CLUSTERDOWN)?.address);
                if let Some(bound) = &self.binding.node {
                    if !Arc::ptr_eq(bound, &owner) {
                        return Err(CROSSSLOT);
                    }
                }
                self.binding.slot = Some(*s);
                self.binding.node = Some(owner);
            }
            _ => return Err(CROSSSLOT),
        }
        self.binding.node.clone().ok_or(CLUSTERDOWN)
    }

    /// Cluster mode, inside a connection-bound state: plans `request` on the state's node
    /// (sending a pending MULTI first). `None` when not in that case; the caller forwards
    /// as usual.
    pub(super) fn forward_bound(
        &mut self,
        request: Request,
        batch: &mut Batch,
    ) -> Result<Flow, Request> {
        let Some(cluster) = self.shared.cluster.clone() else {
            return Err(request);
        };
        if !self.needs_pin() && !self.binding.multi_pending {
            return Err(request);
        }
        if self.binding.multi_pending
            && self.binding.node.is_none()
            && self.binding.held.len() < self.shared.max_in_flight
            && holds(&cluster, &request)
        {
            // No key yet to say where the transaction runs: queued here until one does.
            self.binding.held.push(request_bytes(request));
            batch.reply(replies::QUEUED);
            return Ok(Flow::Continue);
        }
        let node = match self.bind(&cluster, Some(&request)) {
            Ok(node) => node,
            Err(reply) => {
                batch.reply(reply);
                self.flag_multi();
                return Ok(Flow::Continue);
            }
        };
        if batch.goes_elsewhere(&node) {
            return Ok(Flow::Defer(request));
        }
        batch.node = Some(node);
        batch.cluster = Some(cluster);
        batch.pin_required = true;
        let state = self.conn_state();
        if self.binding.multi_pending {
            self.send_multi(batch, state);
        }
        batch.forward(request_bytes(request), state);
        Ok(Flow::Continue)
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
        let node = match self.bind(&cluster, None) {
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
            None => Err(UpstreamError::Unavailable("not in cluster mode".to_owned())),
        };
        let class = match result {
            Ok(reply) => {
                let class = (reply.first() == Some(&b'-')).then(|| ErrorClass::of_reply(&reply));
                out.extend_from_slice(&reply);
                class
            }
            Err(error) => {
                replies::proxy_error(out, &error.to_string());
                Some(error.class())
            }
        };
        metrics::record_command(id, class, started.elapsed());
    }
}

/// Whether a command of a transaction whose node is not chosen yet waits for one: it has
/// no key, and the server knows it with this many arguments (else Redis's error for it
/// should come now, so the transaction is bound to the first master and it is sent).
fn holds(cluster: &Cluster, request: &Request) -> bool {
    let args: Vec<&[u8]> = request.args.iter().map(|a| &a[..]).collect();
    let keys = cluster.keys();
    keys.is_valid(&args) && keys.key_positions(&args).is_empty()
}

fn no_master() -> UpstreamError {
    UpstreamError::Unavailable("the cluster has no master".to_owned())
}

/// One sub-request: the node it goes to (and, for a read sent to a replica, the master
/// that answers when the replica cannot), its bytes, and which of the original keys (or
/// nodes, for a fan-out) its reply covers.
struct Part {
    node: Arc<Upstream>,
    fallback: Option<Arc<Upstream>>,
    request: Bytes,
    covers: Vec<usize>,
}

pub(super) async fn scatter(
    cluster: &Arc<Cluster>,
    request: &Request,
    state: ConnState,
) -> Result<Vec<u8>, UpstreamError> {
    let name = request.name().to_ascii_lowercase();
    let args = &request.args;
    if name == b"scan" {
        return scan(cluster, request, state).await;
    }
    let (merge, parts, keys) = if let Some((merge, width)) = split_rule(&name) {
        if args.len() < 2 || (args.len() - 1) % width != 0 {
            // MSET with a key and no value: Redis's arity error, not a split.
            let mut out = BytesMut::new();
            replies::wrong_arity(&mut out, &String::from_utf8_lossy(&name));
            return Ok(out.to_vec());
        }
        let keys = (args.len() - 1) / width;
        let readonly = cluster.reads_from_replicas() && cluster.keys().is_readonly(&[&args[0]]);
        // Keys of one slot go together, in their order.
        let mut by_slot: Vec<(u16, Vec<usize>)> = Vec::new();
        for key in 0..keys {
            let s = slot(&args[1 + key * width]);
            match by_slot.iter_mut().find(|(slot, _)| *slot == s) {
                Some((_, list)) => list.push(key),
                None => by_slot.push((s, vec![key])),
            }
        }
        let mut parts = Vec::with_capacity(by_slot.len());
        for (s, covers) in by_slot {
            let mut sub: Vec<&[u8]> = vec![&args[0]];
            for &key in &covers {
                for a in &args[1 + key * width..1 + (key + 1) * width] {
                    sub.push(a);
                }
            }
            let (node, fallback) = if readonly {
                cluster.route_read(s, None).await?
            } else {
                (cluster.route(s).await?, None)
            };
            parts.push(Part {
                node,
                fallback,
                request: encode::command(&sub),
                covers,
            });
        }
        (merge, parts, keys)
    } else if let Some(merge) = fan_out_rule(&name, args) {
        let bytes = encode::command(args);
        let masters = cluster.masters().await?;
        let parts: Vec<Part> = masters
            .into_iter()
            .enumerate()
            .map(|(i, node)| Part {
                node,
                fallback: None,
                request: bytes.clone(),
                covers: vec![i],
            })
            .collect();
        let n = parts.len();
        (merge, parts, n)
    } else {
        return Err(UpstreamError::Unavailable(
            "no rule to split this command".to_owned(),
        ));
    };

    // Every part at once, each on its node's lanes; redirects followed one by one.
    let mut tasks = tokio::task::JoinSet::new();
    for (index, part) in parts.iter().enumerate() {
        let (node, fallback) = (part.node.clone(), part.fallback.clone());
        let request = part.request.clone();
        let cluster = cluster.clone();
        tasks.spawn(async move {
            let reply = cluster
                .call(&node, fallback.as_ref(), &request, state)
                .await?;
            Ok::<_, UpstreamError>((index, reply.0))
        });
    }
    let mut replies: Vec<Option<Bytes>> = vec![None; parts.len()];
    while let Some(done) = tasks.join_next().await {
        let (index, reply) =
            done.map_err(|e| UpstreamError::Lost(format!("a cluster sub-request failed: {e}")))??;
        replies[index] = Some(reply);
    }
    let replies: Vec<Bytes> = replies.into_iter().flatten().collect();
    if replies.len() != parts.len() {
        return Err(UpstreamError::Lost(
            "a cluster sub-request went unanswered".to_owned(),
        ));
    }
    // Any error is the answer, as one Redis would give its first.
    if let Some(error) = replies.iter().find(|r| r.first() == Some(&b'-')) {
        return Ok(error.to_vec());
    }
    merge_replies(merge, &parts, &replies, keys).ok_or_else(|| {
        UpstreamError::Unavailable("cluster nodes sent replies that cannot be merged".to_owned())
    })
}

/// One step of a cluster-wide SCAN (see `SCAN_NODE_BITS`).
async fn scan(
    cluster: &Arc<Cluster>,
    request: &Request,
    state: ConnState,
) -> Result<Vec<u8>, UpstreamError> {
    let Some(cursor) = std::str::from_utf8(&request.args[1])
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return Ok(b"-ERR invalid cursor\r\n".to_vec());
    };
    let masters = cluster.masters().await?;
    let index = (cursor & ((1 << SCAN_NODE_BITS) - 1)) as usize;
    let node_cursor = cursor >> SCAN_NODE_BITS;
    let Some(node) = masters.get(index) else {
        // A cursor from before the cluster shrank: the scan is over.
        return Ok(b"*2\r\n$1\r\n0\r\n*0\r\n".to_vec());
    };
    let mut args: Vec<Bytes> = request.args.clone();
    args[1] = Bytes::from(node_cursor.to_string());
    let mut replies = node.call(state, vec![encode::command(&args)], 1).await?;
    let reply = replies
        .pop()
        .ok_or_else(|| UpstreamError::Lost("no reply".to_owned()))?
        .0;
    if reply.first() == Some(&b'-') {
        return Ok(reply.to_vec());
    }
    let parts = super::exec::split_array(&reply)
        .filter(|p| p.len() == 2)
        .ok_or_else(|| UpstreamError::Unavailable("SCAN reply not understood".to_owned()))?;
    let next: u64 = std::str::from_utf8(&parts[0])
        .ok()
        .and_then(|line| line.lines().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| UpstreamError::Unavailable("SCAN cursor not understood".to_owned()))?;
    let next = match (next, index + 1 < masters.len()) {
        (0, true) => (index + 1) as u64,
        (0, false) => 0,
        (n, _) if n >> (64 - SCAN_NODE_BITS) != 0 => {
            return Err(UpstreamError::Unavailable(
                "a node's SCAN cursor is too large to carry".to_owned(),
            ));
        }
        (n, _) => (n << SCAN_NODE_BITS) | index as u64,
    };
    let mut out = BytesMut::new();
    encode::array_header(&mut out, 2);
    encode::bulk(&mut out, next.to_string().as_bytes());
    out.extend_from_slice(&parts[1]);
    Ok(out.to_vec())
}

fn merge_replies(merge: Merge, parts: &[Part], replies: &[Bytes], keys: usize) -> Option<Vec<u8>> {
    let mut out = BytesMut::new();
    match merge {
        Merge::Sum => {
            let mut sum: i64 = 0;
            for reply in replies {
                let text =
                    std::str::from_utf8(reply.strip_prefix(b":")?.strip_suffix(b"\r\n")?).ok()?;
                sum = sum.checked_add(text.parse().ok()?)?;
            }
            encode::integer(&mut out, sum);
        }
        Merge::Scan => return None,
        Merge::Agree => {
            let first = replies.first()?;
            if replies.iter().any(|r| r != first) {
                return None;
            }
            out.extend_from_slice(first);
        }
        Merge::Elements => {
            let mut slots: Vec<Option<Bytes>> = vec![None; keys];
            for (part, reply) in parts.iter().zip(replies) {
                let elements = super::exec::split_array(reply)?;
                if elements.len() != part.covers.len() {
                    return None;
                }
                for (&key, element) in part.covers.iter().zip(elements) {
                    slots[key] = Some(element);
                }
            }
            encode::array_header(&mut out, keys);
            for element in slots {
                out.extend_from_slice(&element?);
            }
        }
        Merge::Concat => {
            let mut all = Vec::new();
            for reply in replies {
                all.extend(super::exec::split_array(reply)?);
            }
            encode::array_header(&mut out, all.len());
            for element in all {
                out.extend_from_slice(&element);
            }
        }
    }
    Some(out.to_vec())
}

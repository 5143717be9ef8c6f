//! The cluster-mode upstream: one `Upstream` (lanes and a pinned pool) per master, the
//! slot map, and the redirects.
//!
//! The slot map is read with `CLUSTER SLOTS` from any node that answers (the known masters
//! first, then the configured seeds): at start, every `REFRESH_INTERVAL`, and soon after a
//! `-MOVED`. The key table comes from the same node's `COMMAND`, once.
//!
//! A `-MOVED slot host:port` reply means the command did not run: it is sent again to that
//! node (and the map refreshed). `-ASK slot host:port` means the slot is being migrated and
//! this key is already on the target: the command is sent there once, preceded by `ASKING`,
//! without changing the map. The client sees neither, only the final reply; after
//! `MAX_REDIRECTS` the last redirect is shown as Redis sent it.
//!
//! With `[upstream] read_from_replicas`, a read may go to a replica instead
//! ([`Cluster::route_read`]): each replica the slot map lists gets its own `Upstream`,
//! kept apart from the masters' (its connections say `READONLY`; a node that changes role
//! in a failover is then reached through the right one for what is asked of it). A
//! replica whose upstream is backing off after a failed connect is skipped; one that
//! cannot answer (unreachable, connection lost, `-LOADING`, `-MASTERDOWN`) has its
//! reads answered by the master instead ([`Cluster::call`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::keys::KeyTable;
use super::topology::Topology;
use crate::config::Config;
use crate::credentials::Secrets;
use crate::protocol::{ReplyFrame, encode};
use crate::upstream::{ConnState, LostReason, UnavailableReason, Upstream, UpstreamError};

/// How often the slot map is read again without being asked to.
const REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Refreshes asked for (by MOVED replies) closer together than this are one refresh.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(100);
/// Redirects followed for one command before its last one is passed to the client.
const MAX_REDIRECTS: usize = 5;

pub struct Cluster {
    config: Config,
    secrets: Secrets,
    nodes: Mutex<HashMap<String, Arc<Upstream>>>,
    /// Replicas serving reads (`read_from_replicas`), apart from `nodes`.
    replicas: Mutex<HashMap<String, Arc<Upstream>>>,
    /// Round-robin over a slot's replicas.
    next_replica: AtomicUsize,
    topology: RwLock<Option<Arc<Topology>>>,
    /// The slot map with each master's upstream at hand, for routing a request without a
    /// lookup by address.
    routes: RwLock<Option<Arc<Routes>>>,
    keys: RwLock<Arc<KeyTable>>,
    refresh_lock: tokio::sync::Mutex<Option<Instant>>,
}

/// A slot map and its masters' upstreams (in `masters`' order).
struct Routes {
    topology: Arc<Topology>,
    masters: Vec<Arc<Upstream>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("masters", &self.topology().map(|t| t.masters.len()))
            .finish_non_exhaustive()
    }
}

/// Where a redirect points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    Moved { slot: u16, address: String },
    Ask { slot: u16, address: String },
}

impl Redirect {
    /// A `-MOVED`/`-ASK` error reply; `from` (the node that sent it) supplies the host
    /// when the reply leaves it out (`:port`).
    pub fn parse(reply: &[u8], from: &str) -> Option<Redirect> {
        let line = reply.strip_prefix(b"-")?.strip_suffix(b"\r\n")?;
        let line = std::str::from_utf8(line).ok()?;
        let mut words = line.split(' ');
        let kind = words.next()?;
        let slot: u16 = words.next()?.parse().ok()?;
        let mut address = words.next()?.to_owned();
        if words.next().is_some() {
            return None;
        }
        if address.starts_with(':') {
            let host = from.rsplit_once(':').map_or(from, |(h, _)| h);
            address = format!("{host}{address}");
        }
        match kind {
            "MOVED" => Some(Redirect::Moved { slot, address }),
            "ASK" => Some(Redirect::Ask { slot, address }),
            _ => None,
        }
    }
}

impl Cluster {
    /// The cluster behind `config`'s seed addresses; starts the periodic refresh.
    pub fn new(config: &Config, secrets: &Secrets) -> Arc<Cluster> {
        let cluster = Arc::new(Cluster {
            config: config.clone(),
            secrets: secrets.clone(),
            nodes: Mutex::new(HashMap::new()),
            replicas: Mutex::new(HashMap::new()),
            next_replica: AtomicUsize::new(0),
            topology: RwLock::new(None),
            routes: RwLock::new(None),
            keys: RwLock::new(Arc::new(KeyTable::default())),
            refresh_lock: tokio::sync::Mutex::new(None),
        });
        let weak = Arc::downgrade(&cluster);
        tokio::spawn(async move {
            loop {
                let Some(cluster) = weak.upgrade() else {
                    return;
                };
                if let Err(error) = cluster.refresh(true).await {
                    tracing::warn!(%error, "cannot read the cluster's slot map");
                }
                drop(cluster);
                tokio::time::sleep(REFRESH_INTERVAL).await;
            }
        });
        cluster
    }

    /// The upstream for one node, made on first use.
    pub fn node(&self, address: &str) -> Arc<Upstream> {
        let mut nodes = match self.nodes.lock() {
            Ok(nodes) => nodes,
            Err(poisoned) => poisoned.into_inner(),
        };
        nodes
            .entry(address.to_owned())
            .or_insert_with(|| {
                tracing::debug!(%address, "cluster node added");
                Arc::new(Upstream::for_address(&self.config, &self.secrets, address))
            })
            .clone()
    }

    /// The upstream that reads from one replica (its connections say `READONLY`), made on
    /// first use.
    pub fn replica(&self, address: &str) -> Arc<Upstream> {
        let mut replicas = match self.replicas.lock() {
            Ok(replicas) => replicas,
            Err(poisoned) => poisoned.into_inner(),
        };
        replicas
            .entry(address.to_owned())
            .or_insert_with(|| {
                tracing::debug!(%address, "cluster replica added for reads");
                Arc::new(Upstream::for_replica(&self.config, &self.secrets, address))
            })
            .clone()
    }

    /// Whether reads may go to replicas (`[upstream] read_from_replicas`).
    pub fn reads_from_replicas(&self) -> bool {
        self.config.upstream.read_from_replicas
    }

    pub fn topology(&self) -> Option<Arc<Topology>> {
        self.topology.read().ok()?.clone()
    }

    pub fn keys(&self) -> Arc<KeyTable> {
        self.keys
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|_| Arc::new(KeyTable::default()))
    }

    /// The slot map, read first if it has not been yet.
    pub async fn ready(&self) -> Result<Arc<Topology>, UpstreamError> {
        if let Some(topology) = self.topology() {
            return Ok(topology);
        }
        self.refresh(false).await?;
        self.topology()
            .ok_or_else(|| UnavailableReason::SlotMapUnknown.into())
    }

    /// The master serving `slot`.
    pub async fn route(&self, slot: u16) -> Result<Arc<Upstream>, UpstreamError> {
        if let Some(node) = self.route_now(slot) {
            return Ok(node);
        }
        let topology = self.ready().await?;
        match topology.master_of(slot) {
            Some(master) => Ok(self.node(&master.address)),
            None => Err(UnavailableReason::SlotUnserved { slot }.into()),
        }
    }

    /// Where a read of `slot` goes: a replica of the slot's master, with that master to
    /// answer instead if the replica cannot; or the master alone when it has no replica
    /// whose upstream is usable now. `current` (the node a batch already goes to) is kept
    /// when it is one of the replicas, so a pipeline of reads stays in one batch; otherwise
    /// the replicas take turns.
    pub async fn route_read(
        &self,
        slot: u16,
        current: Option<&Arc<Upstream>>,
    ) -> Result<(Arc<Upstream>, Option<Arc<Upstream>>), UpstreamError> {
        let topology = self.ready().await?;
        let master = self.route(slot).await?;
        let replicas: Vec<Arc<Upstream>> = topology
            .replicas_of(slot)
            .iter()
            .map(|node| self.replica(&node.address))
            .filter(|replica| !replica.backing_off())
            .collect();
        if let Some(current) = current.filter(|c| replicas.iter().any(|r| Arc::ptr_eq(r, c))) {
            return Ok((current.clone(), Some(master)));
        }
        if replicas.is_empty() {
            return Ok((master, None));
        }
        let turn = self.next_replica.fetch_add(1, Ordering::Relaxed) % replicas.len();
        Ok((replicas[turn].clone(), Some(master)))
    }

    /// Sends one request to `node` and follows its redirects; when `node` is a replica
    /// that cannot answer (see [`replica_cannot_serve`]; or it cannot be reached),
    /// `fallback` — its master — answers instead.
    pub async fn call(
        self: &Arc<Self>,
        node: &Arc<Upstream>,
        fallback: Option<&Arc<Upstream>>,
        request: &Bytes,
        state: ConnState,
    ) -> Result<(Bytes, ReplyFrame), UpstreamError> {
        let sent = node.call(state, vec![request.clone()], 1).await;
        let sent =
            sent.and_then(|mut replies| replies.pop().ok_or_else(|| LostReason::NoReply.into()));
        let (node, reply) = match (sent, fallback) {
            (Ok(reply), Some(master)) if reply.1.error && replica_cannot_serve(&reply.0) => {
                let reply = crate::upstream::conn::error_text(&reply.0);
                tracing::debug!(
                    replica = %node.address(),
                    %reply,
                    "a replica cannot serve a read; asking its master"
                );
                return Box::pin(self.call(master, None, request, state)).await;
            }
            (Ok(reply), _) => (node, reply),
            (Err(error), Some(master)) if !matches!(error, UpstreamError::ClientOutputLimit(_)) => {
                tracing::debug!(
                    replica = %node.address(),
                    %error,
                    "a replica cannot serve a read; asking its master"
                );
                self.refresh_soon();
                return Box::pin(self.call(master, None, request, state)).await;
            }
            (Err(error), _) => return Err(error),
        };
        node.count_requests(1);
        self.follow(reply, request, state, &node.address(), false)
            .await
    }

    /// Every master, in the slot map's order.
    pub async fn masters(&self) -> Result<Vec<Arc<Upstream>>, UpstreamError> {
        let topology = self.ready().await?;
        Ok(topology
            .masters
            .iter()
            .map(|m| self.node(&m.address))
            .collect())
    }

    /// Reads the slot map again (and the key table if missing). `forced` skips the
    /// coalescing of refreshes asked for close together.
    pub async fn refresh(&self, forced: bool) -> Result<(), UpstreamError> {
        let mut last = self.refresh_lock.lock().await;
        if !forced && last.is_some_and(|at| at.elapsed() < MIN_REFRESH_GAP) {
            return Ok(());
        }
        let mut candidates: Vec<String> = self
            .topology()
            .map(|t| t.masters.iter().map(|m| m.address.clone()).collect())
            .unwrap_or_default();
        for seed in self.config.upstream.seeds() {
            if !candidates.iter().any(|c| c == seed) {
                candidates.push(seed.to_owned());
            }
        }
        let need_keys = self.keys().is_empty();
        let mut last_error = None;
        for address in candidates {
            match self.read_map(&address, need_keys).await {
                Ok((topology, keys)) => {
                    self.install(topology, keys);
                    *last = Some(Instant::now());
                    crate::metrics::global().cluster_refreshes.increment(1);
                    return Ok(());
                }
                Err(error) => {
                    tracing::debug!(%address, %error, "no slot map from this node");
                    last_error = Some(error);
                }
            }
        }
        crate::metrics::global()
            .cluster_refresh_failures
            .increment(1);
        Err(last_error.unwrap_or_else(|| UnavailableReason::NoClusterAddress.into()))
    }

    async fn read_map(
        &self,
        address: &str,
        need_keys: bool,
    ) -> Result<(Topology, Option<KeyTable>), UpstreamError> {
        let node = self.node(address);
        let mut conn = node.get().await?;
        let mut requests = vec![encode::command(&[&b"CLUSTER"[..], b"SLOTS"])];
        if need_keys {
            requests.push(encode::command(&[&b"COMMAND"[..]]));
        }
        let timeout = Some(self.config.upstream.connect_timeout());
        conn.write_all(&requests, timeout).await?;
        let (slots, _) = conn.read_reply(timeout).await?;
        let keys = if need_keys {
            let (reply, _) = conn.read_reply(timeout).await?;
            KeyTable::from_command_reply(&reply)
        } else {
            None
        };
        let topology = Topology::from_cluster_slots(&slots).ok_or_else(|| {
            UpstreamError::from(UnavailableReason::NoSlotMap {
                address: address.to_owned(),
                reply: String::from_utf8_lossy(slots.strip_suffix(b"\r\n").unwrap_or(&slots))
                    .into_owned(),
            })
        })?;
        if topology.masters.is_empty() {
            return Err(UnavailableReason::NoSlotOwners {
                address: address.to_owned(),
            }
            .into());
        }
        Ok((topology, keys))
    }

    fn install(&self, topology: Topology, keys: Option<KeyTable>) {
        if let Some(keys) = keys {
            tracing::debug!(commands = keys.len(), "cluster key table read");
            if let Ok(mut slot) = self.keys.write() {
                *slot = Arc::new(keys);
            }
        }
        let changed = self
            .topology()
            .is_none_or(|old| old.ranges != topology.ranges);
        if changed {
            tracing::info!(
                masters = topology.masters.len(),
                unassigned_slots = topology.unassigned(),
                "cluster slot map updated"
            );
        }
        let topology = Arc::new(topology);
        let routes = Routes {
            masters: topology
                .masters
                .iter()
                .map(|m| self.node(&m.address))
                .collect(),
            topology: topology.clone(),
        };
        if let Ok(mut slot) = self.topology.write() {
            *slot = Some(topology);
        }
        if let Ok(mut slot) = self.routes.write() {
            *slot = Some(Arc::new(routes));
        }
    }

    /// The master serving `slot` by the slot map in hand: `None` before the first map,
    /// or for a slot nobody serves.
    pub fn route_now(&self, slot: u16) -> Option<Arc<Upstream>> {
        let routes = self.routes.read().ok()?;
        let routes = routes.as_ref()?;
        let index = routes.topology.master_index(slot)?;
        routes.masters.get(index).cloned()
    }

    /// Asks for a refresh soon, without waiting for it (after a redirect, or when a node
    /// could not be reached: a failover may have moved its slots).
    pub fn refresh_soon(self: &Arc<Self>) {
        let cluster = self.clone();
        tokio::spawn(async move {
            if let Err(error) = cluster.refresh(false).await {
                tracing::debug!(%error, "slot map refresh after a redirect failed");
            }
        });
    }

    /// A node's reply to a routed `request` (sent to `node` in `state`), settled: from a
    /// replica that cannot serve (`fallback` is then its master), the master's answer;
    /// for `-MOVED`/`-ASK`, the answer of the node they name (see [`follow`]); anything
    /// else as it is.
    ///
    /// [`follow`]: Cluster::follow
    pub async fn settle(
        self: &Arc<Self>,
        reply: (Bytes, ReplyFrame),
        request: &Bytes,
        state: ConnState,
        node: Option<&Arc<Upstream>>,
        fallback: Option<&Arc<Upstream>>,
        blocking: bool,
    ) -> Result<(Bytes, ReplyFrame), UpstreamError> {
        if !reply.1.error {
            return Ok(reply);
        }
        if let Some(master) = fallback {
            if replica_cannot_serve(&reply.0) {
                return self.call(master, None, request, state).await;
            }
        }
        match node {
            Some(node) => {
                let from = node.address();
                self.follow(reply, request, state, &from, blocking).await
            }
            None => Ok(reply),
        }
    }

    /// Follows `-MOVED`/`-ASK` replies to `request` (sent from `from` in `state`) until a
    /// node answers it; returns that answer. Any other reply is returned as it is.
    pub async fn follow(
        self: &Arc<Self>,
        mut reply: (Bytes, ReplyFrame),
        request: &Bytes,
        state: ConnState,
        from: &str,
        blocking: bool,
    ) -> Result<(Bytes, ReplyFrame), UpstreamError> {
        let mut from = from.to_owned();
        for _ in 0..MAX_REDIRECTS {
            if !reply.1.error {
                return Ok(reply);
            }
            let Some(redirect) = Redirect::parse(&reply.0, &from) else {
                return Ok(reply);
            };
            let global = crate::metrics::global();
            let (address, asking) = match redirect {
                Redirect::Moved { address, .. } => {
                    global.cluster_moved.increment(1);
                    self.refresh_soon();
                    (address, false)
                }
                Redirect::Ask { address, .. } => {
                    global.cluster_ask.increment(1);
                    (address, true)
                }
            };
            let node = self.node(&address);
            let mut chunks = Vec::with_capacity(2);
            if asking {
                chunks.push(Bytes::from_static(b"*1\r\n$6\r\nASKING\r\n"));
            }
            chunks.push(request.clone());
            let expected = if asking { 2 } else { 1 };
            let mut replies = if blocking {
                node.call_pinned(state, chunks, expected).await?
            } else {
                node.call(state, chunks, expected).await?
            };
            reply = match replies.pop() {
                Some(last) => last,
                None => return Err(LostReason::NoReply.into()),
            };
            from = address;
        }
        Ok(reply)
    }
}

/// A replica's error reply that its master would not give: the replica is loading its
/// data set (`-LOADING`), or has lost its master and serves no stale data
/// (`-MASTERDOWN`). The read goes to the master instead.
pub fn replica_cannot_serve(reply: &[u8]) -> bool {
    reply.starts_with(b"-LOADING ") || reply.starts_with(b"-MASTERDOWN ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_errors_that_go_to_the_master() {
        assert!(replica_cannot_serve(
            b"-LOADING Redis is loading the dataset in memory\r\n"
        ));
        assert!(replica_cannot_serve(
            b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n"
        ));
        for other in [
            &b"-MOVED 1 a:1\r\n"[..],
            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            b"-ERR LOADING\r\n",
            b"+LOADING \r\n",
        ] {
            assert!(!replica_cannot_serve(other), "{other:?}");
        }
    }

    #[test]
    fn redirects() {
        assert_eq!(
            Redirect::parse(b"-MOVED 3999 127.0.0.1:6381\r\n", "127.0.0.1:6380"),
            Some(Redirect::Moved {
                slot: 3999,
                address: "127.0.0.1:6381".to_owned()
            })
        );
        assert_eq!(
            Redirect::parse(b"-ASK 12 10.0.0.2:7000\r\n", "x:1"),
            Some(Redirect::Ask {
                slot: 12,
                address: "10.0.0.2:7000".to_owned()
            })
        );
        // No host: the one that answered.
        assert_eq!(
            Redirect::parse(b"-MOVED 1 :7001\r\n", "10.1.1.1:7000"),
            Some(Redirect::Moved {
                slot: 1,
                address: "10.1.1.1:7001".to_owned()
            })
        );
        for other in [
            &b"-ERR MOVED 1 a:1\r\n"[..],
            b"-MOVED x a:1\r\n",
            b"-MOVED 1\r\n",
            b"+MOVED 1 a:1\r\n",
            b"-CROSSSLOT Keys in request don't hash to the same slot\r\n",
        ] {
            assert_eq!(Redirect::parse(other, "a:1"), None, "{other:?}");
        }
    }
}

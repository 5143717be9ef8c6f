//! A real Redis Cluster on loopback for the integration tests: `masters` masters with
//! `replicas_per_master` replicas each, every node a [`RedisServer`] with `requirepass`
//! (and `masterauth`, so replicas can sync), created with
//! `redis-cli --cluster create … --cluster-yes`.
//!
//! Besides the accessors (who owns a slot now, who is master now), it drives the two
//! topology changes a cluster client has to survive:
//!
//! * live resharding of one slot, step by step ([`RedisCluster::begin_migration`]), so a
//!   test can act while the slot is half-migrated and the source answers `-ASK`;
//! * a manual failover ([`RedisCluster::failover`]), `CLUSTER FAILOVER` on a replica.
//!
//! Every wait has a generous deadline (a hang detector, not a timing assertion). The
//! nodes are killed when the cluster is dropped; if a test panicked, each node's view of
//! the cluster and then each node's log are printed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{
    AmbassadorBuilder, RawConn, RedisServer, ServerAuth, UpstreamMode, escape_short, free_port,
    read_lossy, redis_server_bin, resp, wait_until,
};

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// `cluster-config-file`, relative to the node's `dir` (its own temp dir), so every node
/// has its own nodes.conf.
pub const NODES_CONF: &str = "nodes.conf";

/// `cluster-node-timeout` in ms. A manual failover does not wait for it, but gossip
/// does: a node pings every peer it has not heard from in half of it, so it bounds how
/// fast a change (roles, replication offsets) reaches every node. 2 s keeps forming and
/// settling quick while a node must stall for 2 s before peers even suspect it; a test
/// that kills a master and waits for the automatic failover may want it lower
/// ([`RedisCluster::start_with_conf`]).
pub const NODE_TIMEOUT_MS: u64 = 2000;

/// Deadline for the cluster to form, settle after a change, or finish a failover.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Keys moved per `MIGRATE` call.
const MIGRATE_BATCH: usize = 100;

// ---------------------------------------------------------------------------
// RESP values (RESP2, what a cluster node sends to a client that did not say HELLO 3)
// ---------------------------------------------------------------------------

/// A parsed RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
}

impl Reply {
    /// The text of a bulk or simple string (lossy UTF-8); panics on anything else.
    #[track_caller]
    pub fn text(&self) -> String {
        match self {
            Reply::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            Reply::Simple(s) => s.clone(),
            other => panic!("expected a string reply, got {other:?}"),
        }
    }

    /// The elements of an array; panics on anything else.
    #[track_caller]
    pub fn array(&self) -> &[Reply] {
        match self {
            Reply::Array(a) => a,
            other => panic!("expected an array reply, got {other:?}"),
        }
    }

    /// The value of an integer; panics on anything else.
    #[track_caller]
    pub fn int(&self) -> i64 {
        match self {
            Reply::Int(n) => *n,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }
}

/// Parses one whole RESP2 reply (as returned by [`RawConn::read_reply`]).
#[track_caller]
pub fn parse_reply(bytes: &[u8]) -> Reply {
    let (reply, used) = parse_at(bytes, 0);
    assert!(
        used == bytes.len(),
        "trailing bytes after a reply: \"{}\"",
        escape_short(bytes, 500)
    );
    reply
}

fn parse_at(buf: &[u8], pos: usize) -> (Reply, usize) {
    let bad =
        |what: &str| -> ! { panic!("{what} at offset {pos} of \"{}\"", escape_short(buf, 500)) };
    let line_end = buf[pos..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|r| pos + r)
        .unwrap_or_else(|| bad("unterminated line"));
    let line = String::from_utf8_lossy(&buf[pos + 1..line_end]).into_owned();
    let next = line_end + 2;
    let num = || -> i64 { line.parse().unwrap_or_else(|_| bad("bad number")) };
    match buf.get(pos) {
        Some(b'+') => (Reply::Simple(line.clone()), next),
        Some(b'-') => (Reply::Error(line.clone()), next),
        Some(b':') => (Reply::Int(num()), next),
        Some(b'$') => {
            let n = num();
            if n < 0 {
                return (Reply::Nil, next);
            }
            let end = next + n as usize;
            if buf.len() < end + 2 {
                bad("short bulk string");
            }
            (Reply::Bulk(buf[next..end].to_vec()), end + 2)
        }
        Some(b'*') => {
            let n = num();
            if n < 0 {
                return (Reply::Nil, next);
            }
            let mut items = Vec::with_capacity(n as usize);
            let mut at = next;
            for _ in 0..n {
                let (item, after) = parse_at(buf, at);
                items.push(item);
                at = after;
            }
            (Reply::Array(items), at)
        }
        _ => bad("not a RESP2 reply"),
    }
}

/// `field:value` from an INFO (or CLUSTER INFO) text.
pub fn info_field(text: &str, field: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

// ---------------------------------------------------------------------------
// CLUSTER NODES
// ---------------------------------------------------------------------------

/// One line of `CLUSTER NODES`: one node as some node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub id: String,
    pub port: u16,
    /// `myself`, `master`, `slave`, `fail?`, `fail`, `handshake`, `noaddr`, …
    pub flags: Vec<String>,
    /// The master's id, for a replica.
    pub master_id: Option<String>,
    pub config_epoch: u64,
    pub connected: bool,
    /// Owned slot ranges, inclusive (migration markers such as `[42->-id]` left out).
    pub slots: Vec<(u16, u16)>,
}

impl NodeEntry {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
    pub fn is_master(&self) -> bool {
        self.has_flag("master")
    }
    pub fn is_replica(&self) -> bool {
        self.has_flag("slave")
    }
    /// Suspected (`fail?`) or agreed (`fail`) failing, or not yet known properly.
    pub fn is_troubled(&self) -> bool {
        ["fail?", "fail", "handshake", "noaddr"]
            .iter()
            .any(|f| self.has_flag(f))
    }
    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
    pub fn slot_count(&self) -> usize {
        self.slots
            .iter()
            .map(|&(a, b)| usize::from(b - a) + 1)
            .sum()
    }
}

/// Parses the text of `CLUSTER NODES`.
#[track_caller]
pub fn parse_cluster_nodes(text: &str) -> Vec<NodeEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let bad = || -> ! { panic!("bad CLUSTER NODES line: {line:?}\nin:\n{text}") };
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() < 8 {
                bad();
            }
            // ip:port@cport[,hostname]
            let port = f[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| bad());
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|s| {
                    let parse = |v: &str| v.parse::<u16>().unwrap_or_else(|_| bad());
                    match s.split_once('-') {
                        Some((a, b)) => (parse(a), parse(b)),
                        None => (parse(s), parse(s)),
                    }
                })
                .collect();
            NodeEntry {
                id: f[0].to_string(),
                port,
                flags: f[2].split(',').map(str::to_string).collect(),
                master_id: (f[3] != "-").then(|| f[3].to_string()),
                config_epoch: f[6].parse().unwrap_or_else(|_| bad()),
                connected: f[7] == "connected",
                slots,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// redis-cli
// ---------------------------------------------------------------------------

/// The `redis-cli` binary: `REDIS_CLI`, else next to `redis-server`, else on PATH.
/// Panics when there is none: these tests never skip.
pub fn redis_cli_bin() -> PathBuf {
    if let Ok(p) = std::env::var("REDIS_CLI") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "REDIS_CLI={} does not name a file: the cluster tests need redis-cli",
            p.display()
        );
        return p;
    }
    let server = redis_server_bin();
    if let Some(cand) = server.parent().map(|d| d.join("redis-cli"))
        && cand.is_file()
    {
        return cand;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let cand = dir.join("redis-cli");
        if cand.is_file() {
            return cand;
        }
    }
    panic!(
        "redis-cli not found next to {} nor on PATH: install it (e.g. apt-get install \
         redis-tools) or set REDIS_CLI=/path/to/redis-cli. These tests never skip.",
        server.display()
    );
}

/// Runs `redis-cli args…` with the password in `REDISCLI_AUTH` (not on the command
/// line), output to files in `dir`, killed after `timeout`. Returns (success, output).
fn run_redis_cli(
    dir: &TempDir,
    password: &str,
    args: &[String],
    timeout: Duration,
) -> (bool, String) {
    let out_p = dir.path().join("redis-cli.out");
    let out = fs::File::create(&out_p).expect("create redis-cli.out");
    let bin = redis_cli_bin();
    let mut child = Command::new(&bin)
        .args(args)
        .env("REDISCLI_AUTH", password)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone redis-cli.out handle"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for redis-cli") {
            return (status.success(), read_lossy(&out_p));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "redis-cli {} still running after {timeout:?}; output:\n{}",
                args.join(" "),
                read_lossy(&out_p)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------

/// A Redis Cluster of password-protected nodes on loopback, killed on drop.
pub struct RedisCluster {
    /// In start order; roles are whatever `redis-cli --cluster create` chose and change
    /// on failover, so ask [`RedisCluster::masters`] rather than assuming.
    nodes: Vec<RedisServer>,
    /// `CLUSTER MYID` of each node, same order as `nodes`.
    ids: Vec<String>,
    password: String,
    /// For redis-cli's output.
    dir: TempDir,
    create_output: String,
}

impl RedisCluster {
    /// `masters` masters (at least 3, as `redis-cli --cluster create` requires) with
    /// `replicas_per_master` replicas each, all with `requirepass password`. Returns once
    /// every node reports `cluster_state:ok` and all 16384 slots, every replica's link to
    /// its master is up, and all nodes agree on the topology.
    #[track_caller]
    pub fn start(masters: usize, replicas_per_master: usize, password: &str) -> RedisCluster {
        Self::start_with_conf(masters, replicas_per_master, password, &[])
    }

    /// [`RedisCluster::start`] with `extra` redis.conf lines for every node, appended
    /// after the harness's own (so `cluster-node-timeout 1000`, say, overrides ours).
    #[track_caller]
    pub fn start_with_conf(
        masters: usize,
        replicas_per_master: usize,
        password: &str,
        extra: &[&str],
    ) -> RedisCluster {
        assert!(
            masters >= 3,
            "redis-cli --cluster create needs at least 3 masters, asked for {masters}"
        );
        let total = masters * (1 + replicas_per_master);
        let dir = tempfile::Builder::new()
            .prefix("ambassador-cluster-")
            .tempdir()
            .expect("tempdir for the cluster");
        let mut nodes = Vec::with_capacity(total);
        for _ in 0..total {
            // The bus port is normally port + 10000, which is past 65535 for half the
            // ephemeral range: give each node its own free bus port instead.
            let lines = [
                "cluster-enabled yes".to_string(),
                format!("cluster-config-file {NODES_CONF}"),
                format!("cluster-port {}", free_port()),
                format!("cluster-node-timeout {NODE_TIMEOUT_MS}"),
                format!("masterauth \"{password}\""),
                // Replicas sync at once instead of after diskless sync's 5 s delay.
                "repl-diskless-sync-delay 0".to_string(),
            ];
            let mut conf: Vec<&str> = lines.iter().map(String::as_str).collect();
            conf.extend_from_slice(extra);
            let node = RedisServer::start_with(ServerAuth::Password(password.to_string()), &conf);
            let nodes_conf = node.dir().join(NODES_CONF);
            assert!(
                nodes_conf.is_file(),
                "node on port {}: no {} in its own dir (cluster-config-file not where the \
                 harness expects it)",
                node.port(),
                nodes_conf.display()
            );
            nodes.push(node);
        }
        let ids = nodes
            .iter()
            .map(|n| n.conn().call(&["CLUSTER", "MYID"]))
            .map(|r| parse_reply(&r).text())
            .collect();

        let mut args = vec!["--cluster".to_string(), "create".to_string()];
        args.extend(nodes.iter().map(RedisServer::addr));
        args.extend([
            "--cluster-replicas".to_string(),
            replicas_per_master.to_string(),
            "--cluster-yes".to_string(),
        ]);
        let (ok, create_output) = run_redis_cli(&dir, password, &args, SETTLE_TIMEOUT);
        let cluster = RedisCluster {
            nodes,
            ids,
            password: password.to_string(),
            dir,
            create_output,
        };
        assert!(
            ok && cluster
                .create_output
                .contains("[OK] All 16384 slots covered"),
            "redis-cli --cluster create failed:\n{}",
            cluster.create_output
        );
        // A replica shows in CLUSTER SLOTS only once its replication offset is non-zero,
        // which without a write takes until the master's first replication PING (10 s):
        // FLUSHALL on the (empty) masters is a write every replica receives.
        // (ROLE, not CLUSTER NODES: every node knows its own role already, not yet
        // everyone else's.)
        for node in &cluster.nodes {
            let role = parse_reply(&node.conn().call(&["ROLE"]));
            if role.array().first() == Some(&Reply::Bulk(b"master".to_vec())) {
                expect_ok(node, &["FLUSHALL"]);
            }
        }
        let replicas = total - masters;
        cluster.wait_settled("the new cluster to settle", |views| {
            let m = views[0].iter().filter(|e| e.is_master()).count();
            let r = views[0].iter().filter(|e| e.is_replica()).count();
            if (m, r) == (masters, replicas) {
                Ok(())
            } else {
                Err(format!(
                    "{m} masters and {r} replicas, want {masters} and {replicas}"
                ))
            }
        });
        cluster
    }

    // -- accessors ------------------------------------------------------------

    /// Every node, in start order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The password of every node (`requirepass` and `masterauth`).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// What `redis-cli --cluster create` printed.
    pub fn create_output(&self) -> &str {
        &self.create_output
    }

    /// `127.0.0.1:port` of every node.
    pub fn seed_addresses(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::addr).collect()
    }

    /// An ambassador in cluster mode in front of this cluster, to finish and start: the
    /// first node as `address`, the others as `addresses`, the cluster's password, and
    /// short connect and backoff times (a test's node failures are noticed quickly).
    pub fn ambassador(&self) -> AmbassadorBuilder {
        let seeds = self.seed_addresses();
        AmbassadorBuilder::new(&seeds[0])
            .upstream_password(self.password().as_bytes())
            .configure(|c| {
                c.upstream.mode = Some(UpstreamMode::Cluster);
                c.upstream.addresses = Some(seeds[1..].to_vec());
            })
            .connect_timeout_ms(1000)
            .command_timeout_ms(5000)
            .reconnect_backoff_ms(50)
    }

    /// The node listening on `port`.
    #[track_caller]
    pub fn node_by_port(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node of this cluster on port {port}"))
    }

    /// The node whose id is `id`.
    #[track_caller]
    pub fn node_by_id(&self, id: &str) -> &RedisServer {
        let i = self
            .ids
            .iter()
            .position(|x| x == id)
            .unwrap_or_else(|| panic!("no node of this cluster has id {id}"));
        &self.nodes[i]
    }

    /// `CLUSTER MYID` of `node`.
    #[track_caller]
    pub fn node_id(&self, node: &RedisServer) -> &str {
        let i = self
            .nodes
            .iter()
            .position(|n| n.port() == node.port())
            .unwrap_or_else(|| panic!("port {} is not a node of this cluster", node.port()));
        &self.ids[i]
    }

    /// `CLUSTER NODES` as `node` sees it.
    #[track_caller]
    pub fn cluster_nodes(&self, node: &RedisServer) -> Vec<NodeEntry> {
        let reply = node.conn().call(&["CLUSTER", "NODES"]);
        parse_cluster_nodes(&parse_reply(&reply).text())
    }

    /// `CLUSTER INFO` of `node`, as text.
    #[track_caller]
    pub fn cluster_info(&self, node: &RedisServer) -> String {
        parse_reply(&node.conn().call(&["CLUSTER", "INFO"])).text()
    }

    /// The first node that answers `CLUSTER NODES` (so a test may kill some).
    #[track_caller]
    fn view(&self) -> Vec<NodeEntry> {
        self.nodes
            .iter()
            .find_map(|n| self.try_call(n, &["CLUSTER", "NODES"]))
            .map(|r| parse_cluster_nodes(&r.text()))
            .expect("no node of the cluster answers CLUSTER NODES")
    }

    /// The current masters (by `CLUSTER NODES`; roles change on failover), in start order.
    pub fn masters(&self) -> Vec<&RedisServer> {
        let view = self.view();
        self.nodes
            .iter()
            .filter(|n| view.iter().any(|e| e.port == n.port() && e.is_master()))
            .collect()
    }

    /// The current replicas, in start order.
    pub fn replicas(&self) -> Vec<&RedisServer> {
        let view = self.view();
        self.nodes
            .iter()
            .filter(|n| view.iter().any(|e| e.port == n.port() && e.is_replica()))
            .collect()
    }

    /// The current replicas of `master`.
    #[track_caller]
    pub fn replicas_of(&self, master: &RedisServer) -> Vec<&RedisServer> {
        let id = self.node_id(master).to_string();
        let view = self.view();
        self.nodes
            .iter()
            .filter(|n| {
                view.iter()
                    .any(|e| e.port == n.port() && e.master_id.as_deref() == Some(id.as_str()))
            })
            .collect()
    }

    /// The current master of `replica`.
    #[track_caller]
    pub fn master_of(&self, replica: &RedisServer) -> &RedisServer {
        let view = self.view();
        let entry = view
            .iter()
            .find(|e| e.port == replica.port())
            .unwrap_or_else(|| panic!("port {} not in CLUSTER NODES", replica.port()));
        let master = entry.master_id.as_deref().unwrap_or_else(|| {
            panic!(
                "node on port {} is not a replica: {entry:?}",
                replica.port()
            )
        });
        self.node_by_id(master)
    }

    /// `CLUSTER SLOTS` of `node`: (first slot, last slot, master's port, replicas' ports),
    /// in the order `node` sends them. Redis 7.0 leaves out a replica whose replication
    /// offset it has not yet heard to be non-zero; the harness's waits include that.
    #[track_caller]
    pub fn slot_map(&self, node: &RedisServer) -> Vec<(u16, u16, u16, Vec<u16>)> {
        parse_slot_map(&parse_reply(&node.conn().call(&["CLUSTER", "SLOTS"])))
    }

    /// The master that owns `slot` now, by `CLUSTER SLOTS` of the first node that
    /// answers.
    #[track_caller]
    pub fn node_for_slot(&self, slot: u16) -> &RedisServer {
        assert!(slot < SLOTS, "slot {slot} out of range");
        let node = self
            .nodes
            .iter()
            .find(|n| RawConn::try_connect(n.port()).is_some())
            .expect("no node of the cluster accepts connections");
        let map = self.slot_map(node);
        let port = map
            .iter()
            .find(|(a, b, _, _)| *a <= slot && slot <= *b)
            .map(|(_, _, port, _)| *port)
            .unwrap_or_else(|| panic!("slot {slot} has no owner in CLUSTER SLOTS: {map:?}"));
        self.node_by_port(port)
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT` on a node).
    #[track_caller]
    pub fn slot_of(&self, key: impl AsRef<[u8]>) -> u16 {
        let key = key.as_ref();
        let reply = self
            .nodes
            .iter()
            .find_map(|n| self.try_call(n, &[b"CLUSTER".as_slice(), b"KEYSLOT", key]))
            .expect("no node of the cluster answers CLUSTER KEYSLOT");
        u16::try_from(reply.int()).expect("CLUSTER KEYSLOT out of range")
    }

    /// An authenticated connection to the master that owns `key` now.
    #[track_caller]
    pub fn conn_for_key(&self, key: impl AsRef<[u8]>) -> RawConn {
        self.node_for_slot(self.slot_of(key)).conn()
    }

    /// Up to `count` keys `node` holds in `slot` (`CLUSTER GETKEYSINSLOT`).
    #[track_caller]
    pub fn keys_in_slot(&self, node: &RedisServer, slot: u16, count: usize) -> Vec<Vec<u8>> {
        let reply = node.conn().call(&[
            "CLUSTER",
            "GETKEYSINSLOT",
            &slot.to_string(),
            &count.to_string(),
        ]);
        parse_reply(&reply)
            .array()
            .iter()
            .map(|k| match k {
                Reply::Bulk(b) => b.clone(),
                other => panic!("GETKEYSINSLOT: not a key: {other:?}"),
            })
            .collect()
    }

    // -- slot migration ---------------------------------------------------------

    /// Moves `slot` (and its keys) to the master `to`, the whole documented procedure,
    /// and waits until every node agrees that `to` owns it.
    #[track_caller]
    pub fn migrate_slot(&self, slot: u16, to: &RedisServer) {
        self.begin_migration(slot, to).finish();
    }

    /// Starts moving `slot` to the master `to`: `CLUSTER SETSLOT slot IMPORTING src` on
    /// `to`, then `CLUSTER SETSLOT slot MIGRATING dst` on the current owner. From here
    /// the owner answers `-ASK` for keys it does not have (already moved, or new), and
    /// `to` serves them after `ASKING`. Move keys with [`Migration::move_keys`], end with
    /// [`Migration::finish`]; a dropped `Migration` leaves the slot half-migrated.
    #[track_caller]
    pub fn begin_migration<'a>(&'a self, slot: u16, to: &'a RedisServer) -> Migration<'a> {
        let source = self.node_for_slot(slot);
        assert!(
            source.port() != to.port(),
            "slot {slot} is already on port {}",
            to.port()
        );
        assert!(
            self.masters().iter().any(|m| m.port() == to.port()),
            "migration target on port {} is not a master",
            to.port()
        );
        let slot_s = slot.to_string();
        let (src_id, dst_id) = (self.node_id(source), self.node_id(to));
        expect_ok(to, &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", src_id]);
        expect_ok(
            source,
            &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", dst_id],
        );
        Migration {
            cluster: self,
            slot,
            source,
            target: to,
        }
    }

    // -- failover -----------------------------------------------------------------

    /// `CLUSTER FAILOVER` on `replica` (a coordinated, manual failover: its master stops
    /// writes, the replica catches up and takes over). Returns once the replica is
    /// master, its old master is a replica of it with the link up, and every node agrees
    /// and reports `cluster_state:ok`.
    #[track_caller]
    pub fn failover(&self, replica: &RedisServer) {
        let old_master = self.master_of(replica);
        let (new_id, old_id) = (
            self.node_id(replica).to_string(),
            self.node_id(old_master).to_string(),
        );
        expect_ok(replica, &["CLUSTER", "FAILOVER"]);
        let promoted = wait_until(SETTLE_TIMEOUT, || {
            self.try_call(replica, &["ROLE"]).is_some_and(
                |r| matches!(r.array().first(), Some(Reply::Bulk(b)) if b == b"master"),
            )
        });
        assert!(
            promoted,
            "replica on port {} not master within {SETTLE_TIMEOUT:?} of CLUSTER FAILOVER; \
             its CLUSTER NODES:\n{}",
            replica.port(),
            self.try_call(replica, &["CLUSTER", "NODES"])
                .map(|r| r.text())
                .unwrap_or_default()
        );
        self.wait_settled("every node to agree on the failover", |views| {
            let v = &views[0];
            let new = v.iter().find(|e| e.id == new_id);
            let old = v.iter().find(|e| e.id == old_id);
            match (new, old) {
                (Some(n), Some(o))
                    if n.is_master() && o.master_id.as_deref() == Some(new_id.as_str()) =>
                {
                    Ok(())
                }
                _ => Err(format!("new master {new:?}, old master {old:?}")),
            }
        });
    }

    // -- waiting ------------------------------------------------------------------

    /// Waits until every node answers, reports `cluster_state:ok` and
    /// `cluster_slots_ok:16384`, knows every node with none failing, every replica's
    /// `master_link_status` is up, all nodes report the same masters, slots and
    /// replicas in CLUSTER NODES, and every node's CLUSTER SLOTS says the same, every
    /// replica listed.
    #[track_caller]
    pub fn wait_healthy(&self) {
        self.wait_settled("the cluster to be healthy", |_| Ok(()));
    }

    /// `wait_healthy`, plus `extra` on the (agreed) views, one per node; `extra` says
    /// what is still wrong.
    #[track_caller]
    fn wait_settled(
        &self,
        what: &str,
        mut extra: impl FnMut(&[Vec<NodeEntry>]) -> Result<(), String>,
    ) {
        let mut last = String::from("nothing checked yet");
        let ok = wait_until(SETTLE_TIMEOUT, || match self.settled_state() {
            Ok(views) => match extra(&views) {
                Ok(()) => true,
                Err(e) => {
                    last = e;
                    false
                }
            },
            Err(e) => {
                last = e;
                false
            }
        });
        assert!(
            ok,
            "timed out ({SETTLE_TIMEOUT:?}) waiting for {what}; last state: {last}\n{}",
            self.describe()
        );
    }

    /// Every node's CLUSTER NODES if the cluster is settled and healthy, else what is not.
    fn settled_state(&self) -> Result<Vec<Vec<NodeEntry>>, String> {
        let mut views = Vec::with_capacity(self.nodes.len());
        let mut signature: Option<(u16, String)> = None;
        for node in &self.nodes {
            let port = node.port();
            let info = self
                .try_call(node, &["CLUSTER", "INFO"])
                .ok_or_else(|| format!("port {port}: no answer to CLUSTER INFO"))?
                .text();
            let state = info_field(&info, "cluster_state");
            let slots_ok = info_field(&info, "cluster_slots_ok");
            if state.as_deref() != Some("ok") || slots_ok.as_deref() != Some("16384") {
                return Err(format!(
                    "port {port}: cluster_state {state:?}, cluster_slots_ok {slots_ok:?}"
                ));
            }
            let view = parse_cluster_nodes(
                &self
                    .try_call(node, &["CLUSTER", "NODES"])
                    .ok_or_else(|| format!("port {port}: no answer to CLUSTER NODES"))?
                    .text(),
            );
            if view.len() != self.nodes.len() {
                return Err(format!(
                    "port {port} knows {} nodes of {}",
                    view.len(),
                    self.nodes.len()
                ));
            }
            if let Some(e) = view.iter().find(|e| e.is_troubled() || !e.connected) {
                return Err(format!("port {port} sees {e:?}"));
            }
            let me = view
                .iter()
                .find(|e| e.has_flag("myself"))
                .ok_or_else(|| format!("port {port}: no myself in CLUSTER NODES"))?;
            if me.is_replica() {
                let repl = self
                    .try_call(node, &["INFO", "replication"])
                    .ok_or_else(|| format!("port {port}: no answer to INFO replication"))?
                    .text();
                let link = info_field(&repl, "master_link_status");
                if link.as_deref() != Some("up") {
                    return Err(format!("replica {port}: master_link_status {link:?}"));
                }
            }
            let map = self
                .try_call(node, &["CLUSTER", "SLOTS"])
                .ok_or_else(|| format!("port {port}: no answer to CLUSTER SLOTS"))?;
            slot_map_matches(&parse_slot_map(&map), &view)
                .map_err(|e| format!("port {port}: {e}"))?;
            let sig = topology_signature(&view);
            match &signature {
                None => signature = Some((port, sig)),
                Some((first, s)) if *s != sig => {
                    return Err(format!(
                        "ports {first} and {port} disagree:\n  {s}\n  {sig}"
                    ));
                }
                Some(_) => {}
            }
            views.push(view);
        }
        Ok(views)
    }

    /// Each node's CLUSTER NODES (or why it could not be had), for failure messages.
    /// Never panics (it runs from Drop while a test is failing).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for node in &self.nodes {
            let text = self
                .try_call(node, &["CLUSTER", "NODES"])
                .map(|r| match r {
                    Reply::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
                    other => format!("{other:?}\n"),
                })
                .unwrap_or_else(|| "<no answer>\n".to_string());
            let _ = write!(s, "--- CLUSTER NODES on port {} ---\n{text}", node.port());
        }
        s
    }

    /// One request on a fresh authenticated connection; `None` if the node cannot be
    /// reached, does not answer within a few seconds, or answers with an error. Never
    /// panics on a node that is down or busy.
    fn try_call<A: AsRef<[u8]>>(&self, node: &RedisServer, args: &[A]) -> Option<Reply> {
        let mut c = RawConn::try_connect(node.port())?;
        let mut req = resp(&["AUTH", self.password.as_str()]);
        req.extend_from_slice(&resp(args));
        c.try_send(&req).ok()?;
        let auth = c.try_read_reply(Duration::from_secs(5))?;
        if auth != b"+OK\r\n" {
            return None;
        }
        let reply = parse_reply(&c.try_read_reply(Duration::from_secs(5))?);
        (!matches!(reply, Reply::Error(_))).then_some(reply)
    }
}

/// A `CLUSTER SLOTS` reply as (first slot, last slot, master's port, replicas' ports).
#[track_caller]
pub fn parse_slot_map(reply: &Reply) -> Vec<(u16, u16, u16, Vec<u16>)> {
    let port_of = |n: &Reply| -> u16 {
        u16::try_from(n.array()[1].int()).expect("port in CLUSTER SLOTS out of range")
    };
    reply
        .array()
        .iter()
        .map(|range| {
            let r = range.array();
            let slot = |i: usize| u16::try_from(r[i].int()).expect("slot out of range");
            (
                slot(0),
                slot(1),
                port_of(&r[2]),
                r[3..].iter().map(port_of).collect(),
            )
        })
        .collect()
}

/// Whether a `CLUSTER SLOTS` map says what the (agreed) CLUSTER NODES `view` says:
/// every master's slots, with all its replicas.
fn slot_map_matches(map: &[(u16, u16, u16, Vec<u16>)], view: &[NodeEntry]) -> Result<(), String> {
    let mut covered = 0usize;
    for (first, last, master, replicas) in map {
        let owner = view
            .iter()
            .find(|e| e.port == *master && e.is_master())
            .ok_or_else(|| format!("CLUSTER SLOTS names {master}, not a master"))?;
        if !(*first..=*last).all(|s| owner.owns(s)) {
            return Err(format!("CLUSTER SLOTS gives {first}-{last} to {master}"));
        }
        let mut want: Vec<u16> = view
            .iter()
            .filter(|e| e.master_id.as_deref() == Some(owner.id.as_str()))
            .map(|e| e.port)
            .collect();
        let mut got = replicas.clone();
        want.sort_unstable();
        got.sort_unstable();
        if got != want {
            return Err(format!(
                "CLUSTER SLOTS lists replicas {got:?} for {master}, CLUSTER NODES {want:?}"
            ));
        }
        covered += usize::from(last - first) + 1;
    }
    if covered != usize::from(SLOTS) {
        return Err(format!("CLUSTER SLOTS covers {covered} slots"));
    }
    Ok(())
}

/// What all nodes must agree on: each master's id and slots, each replica's master.
fn topology_signature(view: &[NodeEntry]) -> String {
    let mut parts: BTreeMap<&str, String> = BTreeMap::new();
    for e in view {
        let what = if e.is_master() {
            format!("master {:?}", e.slots)
        } else {
            format!("replica of {}", e.master_id.as_deref().unwrap_or("?"))
        };
        parts.insert(&e.id, what);
    }
    parts
        .iter()
        .map(|(id, what)| format!("{}={what}", &id[..8.min(id.len())]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sends `args` on a fresh authenticated connection and asserts `+OK`.
#[track_caller]
fn expect_ok(node: &RedisServer, args: &[&str]) {
    let reply = node.conn().call(args);
    assert!(
        reply == b"+OK\r\n",
        "{} on port {}: \"{}\"",
        args.join(" "),
        node.port(),
        escape_short(&reply, 500)
    );
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- redis-cli --cluster create output ---\n{}\n{}--- end of cluster state \
                 (node logs follow) ---",
                self.create_output,
                self.describe()
            );
        }
        // The nodes themselves are killed (and their logs printed) by their own Drop.
    }
}

/// A slot being moved from `source` to `target` (see [`RedisCluster::begin_migration`]).
pub struct Migration<'a> {
    cluster: &'a RedisCluster,
    slot: u16,
    source: &'a RedisServer,
    target: &'a RedisServer,
}

impl<'a> Migration<'a> {
    pub fn slot(&self) -> u16 {
        self.slot
    }
    /// The owner when the migration began (`MIGRATING`).
    pub fn source(&self) -> &'a RedisServer {
        self.source
    }
    /// The new owner (`IMPORTING`).
    pub fn target(&self) -> &'a RedisServer {
        self.target
    }

    /// Moves every key the source still holds in the slot to the target
    /// (`CLUSTER GETKEYSINSLOT` + `MIGRATE … AUTH pw KEYS …`, in batches). Returns how
    /// many keys were moved.
    #[track_caller]
    pub fn move_keys(&self) -> usize {
        self.move_some(usize::MAX)
    }

    /// Moves up to `max` keys of the slot to the target. Returns how many were moved.
    #[track_caller]
    pub fn move_some(&self, max: usize) -> usize {
        let mut moved = 0;
        while moved < max {
            let batch = MIGRATE_BATCH.min(max - moved);
            let keys = self.cluster.keys_in_slot(self.source, self.slot, batch);
            if keys.is_empty() {
                break;
            }
            let port = self.target.port().to_string();
            let mut args: Vec<&[u8]> = vec![
                b"MIGRATE",
                b"127.0.0.1",
                port.as_bytes(),
                b"",
                b"0",
                b"10000",
                b"AUTH",
                self.cluster.password.as_bytes(),
                b"KEYS",
            ];
            args.extend(keys.iter().map(Vec::as_slice));
            let reply = self.source.conn().call(&args);
            // NOKEY: the keys went away (deleted, or expired) since GETKEYSINSLOT.
            assert!(
                reply == b"+OK\r\n" || reply == b"+NOKEY\r\n",
                "MIGRATE of {} keys of slot {} from port {} to {port}: \"{}\"",
                keys.len(),
                self.slot,
                self.source.port(),
                escape_short(&reply, 500)
            );
            moved += keys.len();
        }
        moved
    }

    /// Moves the remaining keys, then `CLUSTER SETSLOT slot NODE dst` on the target, the
    /// source and the other masters, and waits until every node agrees that the target
    /// owns the slot and the cluster is healthy.
    #[track_caller]
    pub fn finish(self) {
        self.move_keys();
        let slot_s = self.slot.to_string();
        let dst_id = self.cluster.node_id(self.target).to_string();
        let setslot = [
            "CLUSTER",
            "SETSLOT",
            slot_s.as_str(),
            "NODE",
            dst_id.as_str(),
        ];
        expect_ok(self.target, &setslot);
        expect_ok(self.source, &setslot);
        for m in self.cluster.masters() {
            if m.port() != self.target.port() && m.port() != self.source.port() {
                expect_ok(m, &setslot);
            }
        }
        let slot = self.slot;
        self.cluster.wait_settled(
            &format!("every node to see slot {slot} on {dst_id}"),
            |views| {
                let owner = views[0].iter().find(|e| e.is_master() && e.owns(slot));
                match owner {
                    Some(o) if o.id == dst_id => Ok(()),
                    other => Err(format!("slot {slot} owned by {other:?}")),
                }
            },
        );
    }
}

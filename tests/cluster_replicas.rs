//! Cluster mode with `[upstream] read_from_replicas = true`, against a real Redis Cluster
//! on loopback (3 masters, 3 replicas, all with `requirepass`). Where each command ran is
//! proven with the nodes' own counts (`INFO commandstats`) and the ambassador's
//! `redis_ambassador_cluster_node_requests_total{node}`, never with timing.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{RedisCluster, info_field};
use common::*;

const PW: &str = "replicas-pw";

/// Deadline of the waits below: a hang detector, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);

const MOVED: &str = "redis_ambassador_cluster_redirects_total{kind=\"moved\"}";

fn proxy_for(cluster: &RedisCluster, read_from_replicas: bool, log: &str) -> Ambassador {
    let mut builder = cluster
        .ambassador()
        .pool_size(2)
        .reconnect_backoff_max_ms(400)
        .log_level(log);
    if read_from_replicas {
        builder = builder.configure(|c| c.upstream.read_from_replicas = Some(true));
    }
    builder.start()
}

/// A key (`prefix` and a number) whose slot `master` owns.
fn key_on(cluster: &RedisCluster, master: &RedisServer, prefix: &str) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| cluster.node_for_slot(cluster.slot_of(k)).port() == master.port())
        .unwrap_or_else(|| panic!("no key with prefix {prefix} on port {}", master.port()))
}

/// `cmdstat_<name>` calls of each node.
fn calls(nodes: &[&RedisServer], name: &str) -> Vec<u64> {
    nodes.iter().map(|n| n.command_calls(name)).collect()
}

/// How many more calls each node has had since `before`.
fn grown(nodes: &[&RedisServer], name: &str, before: &[u64]) -> Vec<u64> {
    calls(nodes, name)
        .iter()
        .zip(before)
        .map(|(now, then)| now - then)
        .collect()
}

fn repl_offset(node: &RedisServer, field: &str) -> i64 {
    let info = String::from_utf8_lossy(&node.conn().call(&["INFO", "replication"])).into_owned();
    info_field(&info, field)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in INFO replication of {}:\n{info}", node.port()))
}

/// Waits until `replica` has applied everything `master` had written when called (so
/// a read from the replica sees it), comparing replication offsets: no GET on the
/// replica, which would count.
#[track_caller]
fn wait_replicated(master: &RedisServer, replica: &RedisServer) {
    let target = repl_offset(master, "master_repl_offset");
    assert!(
        wait_until(PATIENCE, || repl_offset(replica, "slave_repl_offset")
            >= target),
        "replica {} never reached offset {target} of master {}",
        replica.port(),
        master.port()
    );
}

fn node_requests(proxy: &Ambassador, node: &RedisServer) -> f64 {
    let sample = format!(
        "redis_ambassador_cluster_node_requests_total{{node=\"{}\"}}",
        node.addr()
    );
    scraped_value(&proxy.scrape(), &sample)
}

/// Who is who in [`reads_go_to_replicas_writes_and_transactions_to_masters`]: the nodes
/// (masters first, then replicas), the master that owns `key` and its replica.
#[derive(Clone, Copy)]
struct Placement<'a> {
    cluster: &'a RedisCluster,
    proxy: &'a Ambassador,
    all: &'a [&'a RedisServer],
    masters: &'a [&'a RedisServer],
    master: &'a RedisServer,
    replica: &'a RedisServer,
    key: &'a str,
}

/// Reads go to the replica of their slot's master (one read in a pipeline, split reads,
/// EVAL_RO, XREAD without BLOCK); writes, WAIT, transactions, WATCH, EVAL and blocking
/// reads stay on the masters; after a failover the roles swap and so do the reads.
#[test]
fn reads_go_to_replicas_writes_and_transactions_to_masters() {
    let cluster = RedisCluster::start(3, 1, PW);
    let proxy = proxy_for(&cluster, true, "info");
    let masters = cluster.masters();
    let replicas = cluster.replicas();
    let all: Vec<&RedisServer> = masters.iter().chain(&replicas).copied().collect();
    let master = masters[0];
    let replica = cluster.replicas_of(master)[0];
    let key = key_on(&cluster, master, "r");
    let mut c = proxy.conn();
    let at = Placement {
        cluster: &cluster,
        proxy: &proxy,
        all: &all,
        masters: &masters,
        master,
        replica,
        key: &key,
    };
    wait_and_gets(&at, &mut c);
    evals_and_split_reads(&at, &mut c);
    xread_writes_and_transactions(&at, &mut c);

    // A failover swaps the roles: writes follow the new master; reads, once the
    // ambassador's slot map has it, go to the old master (a replica now).
    cluster.failover(replica);
    let (new_master, new_replica) = (replica, master);
    let before = new_replica.command_calls("get");
    let mut errors = 0;
    let moved = wait_until(PATIENCE, || {
        let reply = c.call(&["GET", &key]);
        if reply != bulk(b"v1") {
            errors += 1;
            assert!(
                reply.starts_with(b"-"),
                "GET after failover: {}",
                escape(&reply)
            );
        }
        new_replica.command_calls("get") > before
    });
    assert!(
        moved,
        "reads never reached the demoted master, now a replica"
    );
    assert_eq!(errors, 0, "GETs failed during the failover");
    c.call_expect(&["SET", &key, "v2"], b"+OK\r\n");
    new_master.conn().call_expect(&["GET", &key], &bulk(b"v2"));
}

/// WAIT goes to a master; GETs, one at a time and pipelined, to the replica.
fn wait_and_gets(at: &Placement, c: &mut RawConn) {
    let Placement {
        proxy,
        all,
        master,
        replica,
        key,
        ..
    } = *at;
    let others: Vec<&RedisServer> = all
        .iter()
        .copied()
        .filter(|n| n.port() != replica.port())
        .collect();
    // The write, then WAIT: both on masters (a replica refuses WAIT with an error).
    let waits = calls(all, "wait");
    c.call_expect(&["SET", key, "v1"], b"+OK\r\n");
    let reply = c.call(&["WAIT", "1", "1000"]);
    assert!(reply.starts_with(b":"), "WAIT: {}", escape(&reply));
    let waited = grown(all, "wait", &waits);
    assert_eq!(
        waited[..3].iter().sum::<u64>(),
        1,
        "WAIT on a master: {waited:?}"
    );
    assert_eq!(
        waited[3..].iter().sum::<u64>(),
        0,
        "WAIT on a replica: {waited:?}"
    );
    wait_replicated(master, replica);

    // GET, one at a time and pipelined: the replica answers every one.
    let gets = calls(all, "get");
    let requests = node_requests(proxy, replica);
    for _ in 0..10 {
        c.call_expect(&["GET", key], &bulk(b"v1"));
    }
    let mut pipeline = Vec::new();
    let mut want = Vec::new();
    for _ in 0..30 {
        pipeline.extend(resp(&["GET", key]));
        want.extend(bulk(b"v1"));
    }
    c.send(&pipeline);
    let got = c.read_exact_bytes(want.len());
    assert_bytes_eq("30 pipelined GETs", &want, &got);
    assert_eq!(
        replica.command_calls("get") - gets[all_index(all, replica)],
        40
    );
    assert_eq!(
        grown(&others, "get", &calls_of(all, &others, &gets)),
        vec![0; others.len()],
        "a GET ran elsewhere than on the replica"
    );
    let counted = node_requests(proxy, replica) - requests;
    assert!(
        counted >= 40.0,
        "node metric of the replica grew by {counted}"
    );
}

/// EVAL_RO on the replica, EVAL on the master; an MGET split over the three replicas.
fn evals_and_split_reads(at: &Placement, c: &mut RawConn) {
    let Placement {
        cluster,
        all,
        masters,
        master,
        replica,
        key,
        ..
    } = *at;
    // EVAL_RO reads too; EVAL (which may write) does not.
    let script = "return redis.call('GET', KEYS[1])";
    let eval_ro = calls(all, "eval_ro");
    let eval = calls(all, "eval");
    c.call_expect(&["EVAL_RO", script, "1", key], &bulk(b"v1"));
    c.call_expect(&["EVAL", script, "1", key], &bulk(b"v1"));
    let ro = grown(all, "eval_ro", &eval_ro);
    let rw = grown(all, "eval", &eval);
    assert_eq!(ro[all_index(all, replica)], 1, "EVAL_RO: {ro:?}");
    assert_eq!(ro.iter().sum::<u64>(), 1, "EVAL_RO: {ro:?}");
    assert_eq!(rw[all_index(all, master)], 1, "EVAL: {rw:?}");
    assert_eq!(rw.iter().sum::<u64>(), 1, "EVAL: {rw:?}");

    // Split reads: one part per slot, each on its master's replica.
    let spread: Vec<String> = masters
        .iter()
        .enumerate()
        .map(|(i, m)| key_on(cluster, m, &format!("s{i}-")))
        .collect();
    for (i, k) in spread.iter().enumerate() {
        c.call_expect(&["SET", k, &format!("x{i}")], b"+OK\r\n");
    }
    for m in masters {
        wait_replicated(m, cluster.replicas_of(m)[0]);
    }
    let mgets = calls(all, "mget");
    let mut want = b"*3\r\n".to_vec();
    for i in 0..3 {
        want.extend(bulk(format!("x{i}").as_bytes()));
    }
    c.call_expect(&["MGET", &spread[0], &spread[1], &spread[2]], &want);
    let split = grown(all, "mget", &mgets);
    assert_eq!(
        split,
        [0, 0, 0, 1, 1, 1],
        "MGET parts (masters, then replicas)"
    );
}

/// XREAD without BLOCK on the replica, with BLOCK on the master; writes, MULTI and WATCH
/// on the masters, and no redirect so far.
fn xread_writes_and_transactions(at: &Placement, c: &mut RawConn) {
    let Placement {
        cluster,
        proxy,
        all,
        masters,
        master,
        replica,
        key,
    } = *at;
    // XREAD: without BLOCK a read; with BLOCK on the master (it may block).
    let stream = key_on(cluster, master, "stream");
    let id = c.call(&["XADD", &stream, "*", "f", "v"]);
    assert!(id.starts_with(b"$"), "XADD: {}", escape(&id));
    wait_replicated(master, replica);
    let xreads = calls(all, "xread");
    let plain = c.call(&["XREAD", "COUNT", "1", "STREAMS", &stream, "0"]);
    let blocking = c.call(&["XREAD", "BLOCK", "100", "STREAMS", &stream, "0"]);
    assert_eq!(
        plain,
        blocking,
        "the two XREADs disagree: {}",
        escape(&plain)
    );
    assert!(plain.starts_with(b"*1\r\n"), "XREAD: {}", escape(&plain));
    let x = grown(all, "xread", &xreads);
    assert_eq!(x[all_index(all, replica)], 1, "XREAD without BLOCK: {x:?}");
    assert_eq!(x[all_index(all, master)], 1, "XREAD BLOCK: {x:?}");

    // Writes: on the masters, never refused or redirected.
    let sets = calls(masters, "set");
    for i in 0..30 {
        c.call_expect(&["SET", &format!("w{i}"), "1"], b"+OK\r\n");
    }
    assert_eq!(grown(masters, "set", &sets).iter().sum::<u64>(), 30);

    // A transaction and a WATCH: the GETs inside run on the master.
    let gets = calls(all, "get");
    c.call_expect(&["MULTI"], b"+OK\r\n");
    c.call_expect(&["GET", key], b"+QUEUED\r\n");
    c.call_expect(&["INCR", &format!("{{{key}}}n")], b"+QUEUED\r\n");
    let mut want = b"*2\r\n".to_vec();
    want.extend(bulk(b"v1"));
    want.extend(b":1\r\n");
    c.call_expect(&["EXEC"], &want);
    c.call_expect(&["WATCH", key], b"+OK\r\n");
    c.call_expect(&["GET", key], &bulk(b"v1"));
    c.call_expect(&["UNWATCH"], b"+OK\r\n");
    let inside = grown(all, "get", &gets);
    assert_eq!(
        inside[all_index(all, master)],
        2,
        "GET in MULTI/WATCH: {inside:?}"
    );
    assert_eq!(
        inside.iter().sum::<u64>(),
        2,
        "GET in MULTI/WATCH: {inside:?}"
    );
    // Nothing so far needed a redirect: every command went where it belongs.
    assert_eq!(scraped_value(&proxy.scrape(), MOVED), 0.0);
}

/// A replica that is killed: reads of its master's slots still succeed, answered by the
/// master (the reads in flight or routed before the ambassador knows included).
#[test]
fn a_dead_replica_falls_back_to_its_master() {
    let cluster = RedisCluster::start(3, 1, PW);
    let proxy = proxy_for(
        &cluster,
        true,
        "info,redis_ambassador::session::batch=debug,redis_ambassador::cluster=debug",
    );
    let master = cluster.masters()[0];
    let replica = cluster.replicas_of(master)[0];
    let key = key_on(&cluster, master, "d");
    let mut c = proxy.conn();
    c.call_expect(&["SET", &key, "kept"], b"+OK\r\n");
    wait_replicated(master, replica);
    // The replica serves reads, so the ambassador has live connections to it.
    let before = replica.command_calls("get");
    for _ in 0..5 {
        c.call_expect(&["GET", &key], &bulk(b"kept"));
    }
    assert_eq!(replica.command_calls("get") - before, 5);

    let mut killer = replica.conn();
    killer.send(&resp(&["SHUTDOWN", "NOSAVE"]));
    assert!(
        wait_until(PATIENCE, || RawConn::try_connect(replica.port()).is_none()),
        "the replica did not go down"
    );

    let gets = master.command_calls("get");
    let deadline = Instant::now() + PATIENCE;
    for i in 0..200 {
        assert!(Instant::now() < deadline, "200 GETs took over {PATIENCE:?}");
        let reply = c.call(&["GET", &key]);
        assert_bytes_eq(
            &format!("GET {i} with the replica down"),
            &bulk(b"kept"),
            &reply,
        );
    }
    let mut pipeline = Vec::new();
    let mut want = Vec::new();
    for _ in 0..50 {
        pipeline.extend(resp(&["GET", &key]));
        want.extend(bulk(b"kept"));
    }
    c.send(&pipeline);
    let got = c.read_exact_bytes(want.len());
    assert_bytes_eq("50 pipelined GETs with the replica down", &want, &got);
    assert_eq!(
        master.command_calls("get") - gets,
        250,
        "not all on the master"
    );

    // While the cluster still lists the dead replica, so does the ambassador's slot map:
    // the first reads were sent to the replica and answered by the master on the way
    // back, not routed around it.
    // (A node drops a replica from CLUSTER SLOTS once it flags it FAIL, and keeps the
    // flag: if no live node has dropped it yet, none had when the ambassador read its map.)
    let listed = cluster
        .nodes()
        .iter()
        .filter(|n| n.port() != replica.port())
        .all(|n| {
            cluster
                .slot_map(n)
                .iter()
                .any(|(_, _, _, replicas)| replicas.contains(&replica.port()))
        });
    let log = proxy.log();
    if listed {
        assert!(
            log.contains("its master answers the rest")
                || log.contains("a replica cannot serve a read"),
            "no fallback to the master in the log:\n{log}"
        );
    } else {
        eprintln!("the cluster had dropped the replica already: fallback log not checked");
    }
}

/// The default: replicas serve nothing, every read is on a master.
#[test]
fn without_the_option_replicas_serve_no_reads() {
    let cluster = RedisCluster::start(3, 1, PW);
    let proxy = proxy_for(&cluster, false, "info");
    let masters = cluster.masters();
    let replicas = cluster.replicas();
    let master = masters[0];
    let key = key_on(&cluster, master, "o");
    let spread: Vec<String> = masters
        .iter()
        .enumerate()
        .map(|(i, m)| key_on(&cluster, m, &format!("t{i}-")))
        .collect();
    let mut c = proxy.conn();
    c.call_expect(&["SET", &key, "v"], b"+OK\r\n");
    for k in &spread {
        c.call_expect(&["SET", k, "s"], b"+OK\r\n");
    }
    for m in &masters {
        wait_replicated(m, cluster.replicas_of(m)[0]);
    }
    let names = ["get", "mget", "eval_ro"];
    let on_replicas: Vec<Vec<u64>> = names.iter().map(|n| calls(&replicas, n)).collect();
    let gets = master.command_calls("get");
    for _ in 0..20 {
        c.call_expect(&["GET", &key], &bulk(b"v"));
    }
    // (Before EVAL_RO: the GET its script calls counts in commandstats too.)
    assert_eq!(master.command_calls("get") - gets, 20);
    let mut want = b"*3\r\n".to_vec();
    for _ in 0..3 {
        want.extend(bulk(b"s"));
    }
    c.call_expect(&["MGET", &spread[0], &spread[1], &spread[2]], &want);
    c.call_expect(
        &["EVAL_RO", "return redis.call('GET', KEYS[1])", "1", &key],
        &bulk(b"v"),
    );
    for (name, before) in names.iter().zip(&on_replicas) {
        assert_eq!(
            grown(&replicas, name, before),
            vec![0; replicas.len()],
            "{name} ran on a replica"
        );
    }
    for r in &replicas {
        assert_eq!(
            node_requests(&proxy, r),
            0.0,
            "requests counted for a replica"
        );
    }
}

/// Index of `node` in `all`.
fn all_index(all: &[&RedisServer], node: &RedisServer) -> usize {
    all.iter()
        .position(|n| n.port() == node.port())
        .unwrap_or_else(|| panic!("port {} not in the list", node.port()))
}

/// The entries of `counts` (one per node of `all`) for the nodes of `some`.
fn calls_of(all: &[&RedisServer], some: &[&RedisServer], counts: &[u64]) -> Vec<u64> {
    some.iter().map(|n| counts[all_index(all, n)]).collect()
}

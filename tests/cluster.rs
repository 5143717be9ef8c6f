//! Cluster mode (`[upstream] mode = "cluster"`) against a real Redis Cluster on loopback:
//! 3 masters and 3 replicas, all with `requirepass`. The client is a plain, non-cluster
//! client of the ambassador, as the application's is.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use common::cluster::RedisCluster;
use common::*;

const PW: &str = "cluster-pw";

fn proxy_for(cluster: &RedisCluster) -> Ambassador {
    cluster
        .ambassador()
        .pool_size(2)
        .reconnect_backoff_max_ms(400)
        .start()
}

/// Keys `prefix0..prefixN` spread over the three masters.
fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[test]
fn a_plain_client_sees_one_redis() {
    let cluster = RedisCluster::start(3, 1, PW);
    let proxy = proxy_for(&cluster);
    let mut c = proxy.conn();

    // Single-key commands land on each key's own master.
    let names = keys("k", 30);
    for (i, k) in names.iter().enumerate() {
        c.call_expect(&["SET", k, &format!("v{i}")], b"+OK\r\n");
    }
    let mut owners = std::collections::BTreeSet::new();
    for (i, k) in names.iter().enumerate() {
        let mut owner = cluster.conn_for_key(k);
        owner.call_expect(&["GET", k], &bulk(format!("v{i}").as_bytes()));
        owners.insert(owner.port());
    }
    assert_eq!(owners.len(), 3, "30 keys should cover the three masters");

    multi_key_commands(&cluster, &mut c);

    // Keyless commands over the whole data set: every master.
    c.call_expect(&["DBSIZE"], b":32\r\n");
    let reply = c.call(&["KEYS", "{u}*"]);
    assert!(reply.starts_with(b"*2\r\n"), "{}", escape(&reply));
    // SCAN walks every master: each key exactly once.
    let mut cursor = "0".to_owned();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..1000 {
        let reply = c.call(&["SCAN", &cursor, "COUNT", "7"]);
        let text = String::from_utf8_lossy(&reply).into_owned();
        let lines: Vec<&str> = text.split("\r\n").collect();
        cursor = lines[2].to_owned();
        for key in lines[4..].iter().skip(1).step_by(2) {
            *seen.entry(key.to_string()).or_insert(0) += 1;
        }
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(cursor, "0", "SCAN did not finish");
    assert_eq!(seen.len(), 32, "{seen:?}");
    assert!(seen.values().all(|&n| n == 1), "a key twice: {seen:?}");
    // One Redis, database 0 only, and a standalone server to the client.
    c.call_expect(&["SELECT", "0"], b"+OK\r\n");
    c.call_expect(
        &["SELECT", "1"],
        b"-ERR SELECT is not allowed in cluster mode\r\n",
    );
    let hello = c.call(&["HELLO", "3"]);
    let hello_text = String::from_utf8_lossy(&hello);
    assert!(
        hello_text.contains("$4\r\nmode\r\n$10\r\nstandalone\r\n"),
        "{hello_text}"
    );
    c.call_expect(&["GET", "k7"], &bulk(b"v7"));
    let hello = c.call(&["HELLO", "2"]);
    assert!(hello.starts_with(b"*14\r\n"), "{}", escape(&hello));

    // A long pipeline over every node comes back in order.
    let mut input = Vec::new();
    let mut expected = Vec::new();
    for i in 0..2000 {
        let k = format!("p{i}");
        input.extend(resp(&["SET", &k, &i.to_string()]));
        expected.extend(b"+OK\r\n");
        input.extend(resp(&["INCR", &k]));
        expected.extend(format!(":{}\r\n", i + 1).as_bytes());
        input.extend(resp(&["PING"]));
        expected.extend(b"+PONG\r\n");
    }
    c.send(&input);
    let got = c.read_exact_bytes(expected.len());
    assert_bytes_eq("a 6000-command pipeline over three nodes", &expected, &got);

    // Runs for several nodes, then QUIT: every reply before the close.
    let mut input = Vec::new();
    let mut expected = Vec::new();
    for i in 0..300 {
        input.extend(resp(&["GET", &format!("p{i}")]));
        expected.extend(bulk((i + 1).to_string().as_bytes()));
    }
    input.extend(resp(&["QUIT"]));
    expected.extend(b"+OK\r\n");
    let (got, eof) = exchange_to_eof(proxy.port(), &input, Duration::from_secs(10));
    assert_bytes_eq("300 GETs over three nodes, then QUIT", &expected, &got);
    assert!(eof, "not closed after QUIT");

    // Requests per master: one series per node, three in all.
    let scrape = proxy.scrape();
    let per_node: Vec<f64> = scrape
        .lines()
        .filter(|l| l.starts_with("redis_ambassador_cluster_node_requests_total{node=\"127.0.0.1:"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(per_node.len(), 3, "{scrape}");
    assert!(per_node.iter().all(|&n| n > 100.0), "{per_node:?}");
}

/// Multi-key commands across slots: split, merged in key order, one Redis's shape; in
/// one slot, passed through; the unsplittable ones get Redis Cluster's own error.
fn multi_key_commands(cluster: &RedisCluster, c: &mut RawConn) {
    let mut want = b"*4\r\n".to_vec();
    want.extend(bulk(b"v3"));
    want.extend(b"$-1\r\n");
    want.extend(bulk(b"v0"));
    want.extend(bulk(b"v29"));
    c.call_expect(&["MGET", "k3", "missing", "k0", "k29"], &want);
    c.call_expect(
        &["MSET", "m1", "a", "m2", "b", "m3", "c", "m4", "d"],
        b"+OK\r\n",
    );
    for (k, v) in [("m1", "a"), ("m2", "b"), ("m3", "c"), ("m4", "d")] {
        cluster
            .conn_for_key(k)
            .call_expect(&["GET", k], &bulk(v.as_bytes()));
    }
    c.call_expect(&["EXISTS", "m1", "m2", "nope", "m4", "m1"], b":4\r\n");
    c.call_expect(&["TOUCH", "m1", "m3", "nope"], b":2\r\n");
    c.call_expect(&["DEL", "m1", "m2", "nope"], b":2\r\n");
    c.call_expect(&["UNLINK", "m3", "m4"], b":2\r\n");
    // Same slot: passed through as it is.
    c.call_expect(&["MSET", "{u}a", "1", "{u}b", "2"], b"+OK\r\n");
    c.call_expect(&["RENAME", "{u}a", "{u}c"], b"+OK\r\n");
    // Commands that cannot be split get Redis Cluster's own error.
    for args in [
        &["RENAME", "k1", "k2"][..],
        &["MSETNX", "x1", "1", "x2", "2"],
        &["SMOVE", "k1", "k2", "m"],
        &["EVAL", "return 1", "2", "k1", "k2"],
    ] {
        c.call_expect(
            args,
            b"-CROSSSLOT Keys in request don't hash to the same slot\r\n",
        );
    }
    c.call_expect(
        &["EVAL", "return redis.call('GET', KEYS[1])", "1", "k5"],
        &bulk(b"v5"),
    );
}

#[test]
fn transactions_and_blocking_commands_run_on_the_slot_owner() {
    let cluster = RedisCluster::start(3, 1, PW);
    let proxy = proxy_for(&cluster);
    let mut c = proxy.conn();

    // A transaction on one slot (hash tags), on that slot's master.
    c.call_expect(&["MULTI"], b"+OK\r\n");
    c.call_expect(&["INCR", "{acct}balance"], b"+QUEUED\r\n");
    c.call_expect(&["RPUSH", "{acct}log", "x"], b"+QUEUED\r\n");
    c.call_expect(&["PING"], b"+QUEUED\r\n");
    c.call_expect(&["EXEC"], b"*3\r\n:1\r\n:1\r\n+PONG\r\n");
    cluster
        .conn_for_key("{acct}balance")
        .call_expect(&["GET", "{acct}balance"], b"$1\r\n1\r\n");

    // Keys of another slot inside it: Redis Cluster's CROSSSLOT, then EXECABORT.
    c.call_expect(&["MULTI"], b"+OK\r\n");
    c.call_expect(&["INCR", "{acct}balance"], b"+QUEUED\r\n");
    c.call_expect(
        &["INCR", "other"],
        b"-CROSSSLOT Keys in request don't hash to the same slot\r\n",
    );
    c.call_expect(
        &["EXEC"],
        b"-EXECABORT Transaction discarded because of previous errors.\r\n",
    );
    c.call_expect(&["GET", "{acct}balance"], b"$1\r\n1\r\n");
    // Empty and discarded transactions.
    c.call_expect(&["MULTI"], b"+OK\r\n");
    c.call_expect(&["EXEC"], b"*0\r\n");
    c.call_expect(&["MULTI"], b"+OK\r\n");
    c.call_expect(&["INCR", "{acct}balance"], b"+QUEUED\r\n");
    c.call_expect(&["DISCARD"], b"+OK\r\n");

    // Keyless commands first: they wait in the ambassador until a key chooses the node
    // (a tag not on slot 0's master, where keyless commands go outside transactions).
    let first = cluster.node_for_slot(0).port();
    let tag = (0..100)
        .map(|i| format!("{{t{i}}}"))
        .find(|t| cluster.node_for_slot(cluster.slot_of(t)).port() != first)
        .expect("a tag on another master");
    c.call_expect(&["FLUSHALL"], b"+OK\r\n");
    for i in 0..5 {
        c.call_expect(&["SET", &format!("{tag}{i}"), "x"], b"+OK\r\n");
    }
    c.call_expect(&["MULTI"], b"+OK\r\n");
    c.call_expect(&["DBSIZE"], b"+QUEUED\r\n");
    c.call_expect(&["INCR", &format!("{tag}n")], b"+QUEUED\r\n");
    c.call_expect(&["DBSIZE"], b"+QUEUED\r\n");
    c.call_expect(&["EXEC"], b"*3\r\n:5\r\n:1\r\n:6\r\n");
    // Keyless only: the first master, which has no key.
    c.call_expect(&["MULTI"], b"+OK\r\n");
    c.call_expect(&["DBSIZE"], b"+QUEUED\r\n");
    c.call_expect(&["EXEC"], b"*1\r\n:0\r\n");
    // One Redis refuses while queuing: its error at once, and EXEC aborts.
    c.call_expect(&["MULTI"], b"+OK\r\n");
    c.call_expect(
        &["DBSIZE", "extra"],
        b"-ERR wrong number of arguments for 'dbsize' command\r\n",
    );
    c.call_expect(
        &["EXEC"],
        b"-EXECABORT Transaction discarded because of previous errors.\r\n",
    );
    // Discarded before any key: nothing ran.
    c.call_expect(&["MULTI"], b"+OK\r\n");
    c.call_expect(&["DBSIZE"], b"+QUEUED\r\n");
    c.call_expect(&["INCR", &format!("{tag}n")], b"+QUEUED\r\n");
    c.call_expect(&["DISCARD"], b"+OK\r\n");
    c.call_expect(&["GET", &format!("{tag}n")], b"$1\r\n1\r\n");
    c.call_expect(&["SET", "{acct}balance", "1"], b"+OK\r\n");

    // WATCH, then a change by another client: EXEC returns nil, nothing ran.
    c.call_expect(&["WATCH", "{acct}balance"], b"+OK\r\n");
    let mut other = proxy.conn();
    other.call_expect(&["INCR", "{acct}balance"], b":2\r\n");
    c.call_expect(&["MULTI"], b"+OK\r\n");
    c.call_expect(&["SET", "{acct}balance", "100"], b"+QUEUED\r\n");
    c.call_expect(&["EXEC"], b"*-1\r\n");
    c.call_expect(&["GET", "{acct}balance"], b"$1\r\n2\r\n");

    // BLPOP on the list's master, woken by a push from another client.
    let port = proxy.port();
    let waiter = thread::spawn(move || {
        let mut w = RawConn::connect(port);
        w.timeout = Duration::from_secs(20);
        w.call(&["BLPOP", "jobs", "10"])
    });
    // Until the waiter blocks, a push would be taken by nobody: retry until it is.
    let mut got = None;
    for _ in 0..100 {
        thread::sleep(Duration::from_millis(50));
        let blocked = cluster.conn_for_key("jobs").call(&["CLIENT", "LIST"]);
        if String::from_utf8_lossy(&blocked).contains("cmd=blpop") {
            other.call_expect(&["RPUSH", "jobs", "job1"], b":1\r\n");
            got = Some(waiter.join().expect("waiter"));
            break;
        }
    }
    let got = got.expect("BLPOP never blocked on the list's master");
    let mut want = b"*2\r\n".to_vec();
    want.extend(bulk(b"jobs"));
    want.extend(bulk(b"job1"));
    assert_bytes_eq("BLPOP through the ambassador", &want, &got);
}

/// Live resharding of a slot while four clients write to it: ASK and MOVED are followed
/// for them, no command fails, every write is readable afterwards on the new owner.
#[test]
fn slot_migration_while_clients_write() {
    let cluster = RedisCluster::start(3, 1, PW);
    let proxy = proxy_for(&cluster);
    let slot = cluster.slot_of("{mig}");
    // Keys already there, so the migration has something to move.
    let mut c = proxy.conn();
    for i in 0..200 {
        c.call_expect(&["SET", &format!("{{mig}}old{i}"), "x"], b"+OK\r\n");
    }
    let source_port = cluster.node_for_slot(slot).port();
    let target = cluster
        .masters()
        .into_iter()
        .find(|m| m.port() != source_port)
        .expect("another master");

    const WRITERS: usize = 4;
    let stop = Arc::new(AtomicBool::new(false));
    let written: Vec<Arc<AtomicU64>> = (0..WRITERS).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let port = proxy.port();
    let writers = spawn_mig_writers(port, &stop, &written);
    let progress = |n: u64| {
        let goal: u64 = written
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .sum::<u64>()
            + n;
        assert!(
            wait_until(Duration::from_secs(30), || written
                .iter()
                .map(|w| w.load(Ordering::Relaxed))
                .sum::<u64>()
                >= goal),
            "the writers stalled"
        );
    };
    progress(50);
    let migration = cluster.begin_migration(slot, target);
    progress(50);
    migration.move_some(100);
    progress(100);
    migration.finish();
    progress(100);
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("a writer failed");
    }

    // Everything is on the new owner, and readable through the ambassador.
    let mut owner = cluster.conn_for_key("{mig}");
    assert_eq!(owner.port(), target.port());
    for (w, n) in written.iter().enumerate() {
        let n = n.load(Ordering::Relaxed);
        owner.call_expect(
            &["GET", &format!("{{mig}}count{w}")],
            format!("${}\r\n{n}\r\n", n.to_string().len()).as_bytes(),
        );
        for i in [0, n / 2, n - 1] {
            c.call_expect(
                &["GET", &format!("{{mig}}w{w}:{i}")],
                &bulk(i.to_string().as_bytes()),
            );
        }
    }
    for i in 0..200 {
        c.call_expect(&["GET", &format!("{{mig}}old{i}")], b"$1\r\nx\r\n");
    }
    let scrape = proxy.scrape();
    let asks = scraped_value(
        &scrape,
        "redis_ambassador_cluster_redirects_total{kind=\"ask\"}",
    );
    let moved = scraped_value(
        &scrape,
        "redis_ambassador_cluster_redirects_total{kind=\"moved\"}",
    );
    eprintln!(
        "migration: {} writes per writer, {asks} ASK and {moved} MOVED followed",
        written
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .sum::<u64>()
            / WRITERS as u64
    );
    assert!(asks + moved >= 1.0, "no redirect was followed:\n{scrape}");
}

/// Clients writing `{mig}w<w>:<i>` keys and INCRing `{mig}count<w>` through the proxy
/// on `port` until `stop`, each reply asserted, `written[w]` counting writer `w`'s rounds.
fn spawn_mig_writers(
    port: u16,
    stop: &Arc<AtomicBool>,
    written: &[Arc<AtomicU64>],
) -> Vec<thread::JoinHandle<()>> {
    (0..written.len())
        .map(|w| {
            let (stop, written) = (stop.clone(), written[w].clone());
            thread::spawn(move || {
                let mut c = RawConn::connect(port);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("{{mig}}w{w}:{i}");
                    let reply = c.call(&["SET", &key, &i.to_string()]);
                    assert_eq!(reply, b"+OK\r\n", "writer {w}, {key}: {}", escape(&reply));
                    let counter = format!("{{mig}}count{w}");
                    let reply = c.call(&["INCR", &counter]);
                    assert_eq!(
                        reply,
                        format!(":{}\r\n", i + 1).as_bytes(),
                        "writer {w}: {}",
                        escape(&reply)
                    );
                    i += 1;
                    written.store(i, Ordering::Relaxed);
                }
            })
        })
        .collect()
}

/// CLUSTER FAILOVER on a replica while clients write: errors only during the switch,
/// then every write succeeds on the promoted replica, without restarting the ambassador.
#[test]
fn failover_while_clients_write() {
    let cluster = RedisCluster::start(3, 1, PW);
    let proxy = proxy_for(&cluster);
    let slot = cluster.slot_of("{fo}");
    let old_master_port = cluster.node_for_slot(slot).port();
    let old_master = cluster.node_by_port(old_master_port);
    let replica = cluster.replicas_of(old_master)[0];

    const WRITERS: usize = 4;
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Vec<Arc<AtomicU64>> = (0..WRITERS).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let failed: Vec<Arc<AtomicU64>> = (0..WRITERS).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let port = proxy.port();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (stop, acked, failed) = (stop.clone(), acked[w].clone(), failed[w].clone());
            thread::spawn(move || {
                let mut c = RawConn::connect(port);
                c.timeout = Duration::from_secs(10);
                while !stop.load(Ordering::Relaxed) {
                    let reply = c.call(&["INCR", &format!("{{fo}}n{w}")]);
                    if reply.starts_with(b":") {
                        acked.fetch_add(1, Ordering::Relaxed);
                    } else {
                        assert!(
                            reply.starts_with(b"-ERR upstream ") || reply.starts_with(b"-"),
                            "writer {w}: {}",
                            escape(&reply)
                        );
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    thread::sleep(Duration::from_millis(1));
                }
            })
        })
        .collect();
    let total = || acked.iter().map(|a| a.load(Ordering::Relaxed)).sum::<u64>();
    assert!(wait_until(Duration::from_secs(20), || total() >= 200));
    cluster.failover(replica);
    let goal = total() + 400;
    assert!(
        wait_until(Duration::from_secs(30), || total() >= goal),
        "writes did not resume after the failover"
    );
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("a writer failed");
    }
    // The promoted replica owns the slot now and has every acknowledged write (CLUSTER
    // FAILOVER waits for the replica to catch up before switching).
    let mut new_master = cluster.conn_for_key("{fo}");
    assert_eq!(new_master.port(), replica.port());
    let mut errors = 0;
    for w in 0..WRITERS {
        let ok = acked[w].load(Ordering::Relaxed);
        let bad = failed[w].load(Ordering::Relaxed);
        errors += bad;
        let reply = new_master.call(&["GET", &format!("{{fo}}n{w}")]);
        let value: u64 = String::from_utf8_lossy(&reply)
            .lines()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // Nothing acknowledged is lost; a failed INCR may or may not have run.
        assert!(
            ok <= value && value <= ok + bad,
            "writer {w}: {value} on the new master, {ok} acknowledged, {bad} failed"
        );
    }
    eprintln!("failover: {} INCRs acknowledged, {errors} errors", total());
    assert!(
        errors < total(),
        "{errors} errors for {} successes",
        total()
    );
}

/// Pub/sub: shard channels on their slot's master, classic channels cluster-wide.
#[test]
fn pubsub_and_shard_channels() {
    let cluster = RedisCluster::start(3, 0, PW);
    let proxy = proxy_for(&cluster);
    // Two shard channels on different masters.
    let (a, b) = ("news", "sports");
    assert_ne!(
        cluster.node_for_slot(cluster.slot_of(a)).port(),
        cluster.node_for_slot(cluster.slot_of(b)).port(),
        "pick channels on two masters"
    );
    let mut subs = Vec::new();
    for ch in [a, b] {
        let mut s = proxy.conn();
        let mut want = b"*3\r\n".to_vec();
        want.extend(bulk(b"ssubscribe"));
        want.extend(bulk(ch.as_bytes()));
        want.extend(b":1\r\n");
        s.call_expect(&["SSUBSCRIBE", ch], &want);
        subs.push(s);
    }
    let mut plain = proxy.conn();
    let mut want = b"*3\r\n".to_vec();
    want.extend(bulk(b"subscribe"));
    want.extend(bulk(b"plain"));
    want.extend(b":1\r\n");
    plain.call_expect(&["SUBSCRIBE", "plain"], &want);

    let mut publisher = proxy.conn();
    publisher.call_expect(&["SPUBLISH", a, "hello"], b":1\r\n");
    publisher.call_expect(&["SPUBLISH", b, "goal"], b":1\r\n");
    publisher.call_expect(&["PUBLISH", "plain", "hi"], b":1\r\n");
    for (s, (ch, msg)) in subs.iter_mut().zip([(a, "hello"), (b, "goal")]) {
        let mut want = b"*3\r\n".to_vec();
        want.extend(bulk(b"smessage"));
        want.extend(bulk(ch.as_bytes()));
        want.extend(bulk(msg.as_bytes()));
        s.expect(&want);
    }
    let mut want = b"*3\r\n".to_vec();
    want.extend(bulk(b"message"));
    want.extend(bulk(b"plain"));
    want.extend(bulk(b"hi"));
    plain.expect(&want);
}

/// A master crashes: the cluster promotes its replica, the ambassador finds the new owner
/// (its slot map refreshed after the failures), and `/readyz` follows the cluster, not the
/// first seed address (which was the crashed master).
#[test]
fn a_master_crash_is_survived_and_readiness_follows_the_cluster() {
    let cluster = RedisCluster::start(3, 1, PW);
    let proxy = proxy_for(&cluster);
    let seed = cluster.seed_addresses()[0].clone();
    let crashed = cluster
        .masters()
        .into_iter()
        .find(|m| m.addr() == seed)
        .expect("the first seed is a master");
    assert!(
        wait_until(Duration::from_secs(10), || proxy.http_get("/readyz").status
            == 200),
        "not ready at start: {}",
        proxy.http_get("/readyz").body
    );
    // A key that lives on the master about to crash.
    let key = (0..10_000)
        .map(|i| format!("crash{i}"))
        .find(|k| cluster.node_for_slot(cluster.slot_of(k)).port() == crashed.port())
        .expect("a key on that master");
    let mut c = proxy.conn();
    c.call_expect(&["SET", &key, "before"], b"+OK\r\n");
    // Let the replica have it before the master goes.
    cluster
        .conn_for_key(&key)
        .call_expect(&["WAIT", "1", "5000"], b":1\r\n");

    let mut killer = crashed.conn();
    killer.send(&resp(&["SHUTDOWN", "NOSAVE"]));
    assert!(
        wait_until(Duration::from_secs(10), || RawConn::try_connect(
            crashed.port()
        )
        .is_none()),
        "the master did not go down"
    );
    let mut errors = 0;
    let recovered = wait_until(Duration::from_secs(60), || {
        let reply = c.call(&["GET", &key]);
        if reply == bulk(b"before") {
            return true;
        }
        assert!(reply.starts_with(b"-"), "GET {key}: {}", escape(&reply));
        errors += 1;
        false
    });
    assert!(recovered, "the key never came back after the failover");
    c.call_expect(&["SET", &key, "after"], b"+OK\r\n");
    assert!(
        wait_until(Duration::from_secs(30), || proxy.http_get("/readyz").status
            == 200),
        "readiness did not come back: {}",
        proxy.http_get("/readyz").body
    );
    eprintln!("crash: {errors} failed GETs until the replica took over");
}

/// Mixed pipelines over every master — reads, writes, type errors, local answers,
/// commands split over slots, transactions on one slot, a blocking command that times
/// out — answered byte for byte as one standalone Redis answers them, with the default
/// in-flight limit and with a small one (the pipeline then goes in many pieces).
#[test]
fn a_mixed_pipeline_over_three_masters_answers_as_one_redis() {
    let cluster = RedisCluster::start(3, 0, PW);
    let single = RedisServer::with_password(PW);
    let small = cluster
        .ambassador()
        .configure(|c| c.limits.max_in_flight = Some(5))
        .start();
    let proxies = [proxy_for(&cluster), small];
    let mut direct = single.conn();
    direct.call_expect(&["AUTH", PW], b"+OK\r\n");
    let mut clients: Vec<RawConn> = proxies.iter().map(|p| p.conn()).collect();

    for seed in [
        0x9e37_79b9_7f4a_7c15_u64,
        0x2545_f491_4f6c_dd1d,
        0x1405_7b7e_f767_814f,
    ] {
        let (input, count) = mixed_pipeline(seed, 3000);
        direct.call_expect(&["FLUSHALL"], b"+OK\r\n");
        direct.send(&input);
        let want = direct.read_replies(count).concat();
        for (which, c) in clients.iter_mut().enumerate() {
            c.call_expect(&["FLUSHALL"], b"+OK\r\n");
            c.send(&input);
            let got = c.read_exact_bytes(want.len());
            assert_bytes_eq(
                &format!("pipeline {seed:#x} through ambassador {which}"),
                &want,
                &got,
            );
            c.expect_silence(Duration::from_millis(50));
        }
    }
}

/// `n` commands drawn from a fixed mix by a xorshift seeded with `seed`; the requests and
/// how many replies they get.
fn mixed_pipeline(seed: u64, n: usize) -> (Vec<u8>, usize) {
    let mut state = seed;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut input = Vec::new();
    let mut count = 0;
    for i in 0..n {
        // One key space for every type: some commands meet the wrong type.
        let k = format!("key{}", next(100));
        let other = format!("key{}", next(100));
        let tag = format!("{{t{}}}", next(5));
        let commands: Vec<Vec<String>> = match next(20) {
            0 => vec![vec!["SET".into(), k, i.to_string()]],
            1 => vec![vec!["GET".into(), k]],
            2 => vec![vec!["INCR".into(), k]],
            3 => vec![vec!["APPEND".into(), k, "x".into()]],
            4 => vec![vec!["LPUSH".into(), k, i.to_string()]],
            5 => vec![vec!["LRANGE".into(), k, "0".into(), "2".into()]],
            6 => vec![vec!["PING".into()]],
            7 => vec![vec!["ECHO".into(), format!("e{i}")]],
            8 => vec![vec!["MGET".into(), k, other, "nokey".into()]],
            9 => vec![vec!["EXISTS".into(), k, other]],
            10 => vec![vec!["TYPE".into(), k]],
            11 => vec![vec!["DEL".into(), k, other]],
            12 => vec![vec!["MSET".into(), k, "m".into(), other, "n".into()]],
            13 => vec![vec!["HSET".into(), k, "f".into(), i.to_string()]],
            14 => vec![vec!["SADD".into(), k, (i % 7).to_string()]],
            15 => vec![vec!["STRLEN".into(), k]],
            16 => vec![vec!["SELECT".into(), "0".into()]],
            17 => vec![
                vec!["MULTI".into()],
                vec!["INCR".into(), format!("{tag}n")],
                vec!["LPUSH".into(), format!("{tag}l"), i.to_string()],
                vec!["LLEN".into(), format!("{tag}l")],
                vec!["EXEC".into()],
            ],
            18 if next(10) == 0 => vec![vec!["BLPOP".into(), k, "0.01".into()]],
            18 if next(3) == 0 => vec![
                vec!["WATCH".into(), format!("{tag}w")],
                vec!["GET".into(), format!("{tag}w")],
                vec!["MULTI".into()],
                vec!["INCR".into(), format!("{tag}w")],
                vec![if next(2) == 0 { "EXEC" } else { "DISCARD" }.into()],
            ],
            18 if next(2) == 0 => vec![
                vec!["MULTI".into()],
                vec!["PING".into()],
                vec!["INCR".into(), format!("{tag}n")],
                vec!["EXEC".into()],
            ],
            _ => vec![vec!["GETDEL".into(), k]],
        };
        for args in commands {
            input.extend(resp(&args));
            count += 1;
        }
    }
    (input, count)
}

//! The Redis Cluster test harness itself (tests/common/cluster.rs), against real
//! `redis-server --cluster-enabled yes` nodes: it forms a healthy, password-protected
//! cluster, knows who owns which slot, moves a slot with ASK semantics while clients
//! write, and fails a master over to its replica. (The ambassador's own cluster support
//! is tested elsewhere; nothing here starts the proxy.)

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::{RedisCluster, Reply, SLOTS, parse_reply};
use common::*;

const PW: &str = "cluster-harness-pw";

/// A key (`prefix:n`) whose slot `node` owns now.
fn key_owned_by(c: &RedisCluster, node: &RedisServer, prefix: &str) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}:{i}"))
        .find(|k| c.node_for_slot(c.slot_of(k)).port() == node.port())
        .unwrap_or_else(|| panic!("no key {prefix}:<n> lands on port {}", node.port()))
}

fn moved(slot: u16, node: &RedisServer) -> Vec<u8> {
    format!("-MOVED {slot} 127.0.0.1:{}\r\n", node.port()).into_bytes()
}

fn ask(slot: u16, node: &RedisServer) -> Vec<u8> {
    format!("-ASK {slot} 127.0.0.1:{}\r\n", node.port()).into_bytes()
}

#[test]
fn three_masters_three_replicas_with_requirepass_form_a_healthy_cluster() {
    let t = Instant::now();
    let c = RedisCluster::start(3, 1, PW);
    eprintln!("cluster of 6 up and settled in {:?}", t.elapsed());

    assert_eq!(c.nodes().len(), 6);
    let masters = c.masters();
    let replicas = c.replicas();
    assert_eq!(masters.len(), 3, "{}", c.describe());
    assert_eq!(replicas.len(), 3, "{}", c.describe());
    for m in &masters {
        let rs = c.replicas_of(m);
        assert_eq!(rs.len(), 1, "master {}: {}", m.port(), c.describe());
        assert_eq!(c.master_of(rs[0]).port(), m.port());
    }
    let mut seeds = c.seed_addresses();
    seeds.sort();
    let mut want: Vec<String> = c.nodes().iter().map(RedisServer::addr).collect();
    want.sort();
    assert_eq!(seeds, want);

    // Every node: healthy, sees 6 nodes and 3 shards, its nodes.conf in its own dir,
    // and the same CLUSTER SLOTS: 16384 slots in order over the 3 masters, each range
    // with its master's one replica.
    let reference = {
        let mut m = c.slot_map(&c.nodes()[0]);
        m.sort();
        m
    };
    let mut next = 0u16;
    for (first, last, master, reps) in &reference {
        assert_eq!(*first, next, "gap in CLUSTER SLOTS: {reference:?}");
        next = last + 1;
        assert!(masters.iter().any(|m| m.port() == *master));
        let want: Vec<u16> = c
            .replicas_of(c.node_by_port(*master))
            .iter()
            .map(|r| r.port())
            .collect();
        assert_eq!(reps, &want, "replicas of {master} in CLUSTER SLOTS");
    }
    assert_eq!(
        next, SLOTS,
        "CLUSTER SLOTS does not reach 16383: {reference:?}"
    );
    for n in c.nodes() {
        let info = c.cluster_info(n);
        for line in [
            "cluster_state:ok",
            "cluster_slots_assigned:16384",
            "cluster_slots_ok:16384",
            "cluster_known_nodes:6",
            "cluster_size:3",
        ] {
            assert!(
                info.contains(line),
                "port {}: no {line} in\n{info}",
                n.port()
            );
        }
        let mut map = c.slot_map(n);
        map.sort();
        assert_eq!(map, reference, "CLUSTER SLOTS of port {}", n.port());
    }

    // requirepass on every node, replicas included.
    for n in c.nodes() {
        let mut raw = RawConn::connect(n.port());
        raw.call_expect(&["GET", "k"], NOAUTH);
        raw.call_expect(&["AUTH", "not-the-password"], WRONGPASS);
        raw.call_expect(&["AUTH", PW], b"+OK\r\n");
        raw.call_expect(&["PING"], b"+PONG\r\n");
    }

    // CLUSTER KEYSLOT: a known value, and hash tags.
    assert_eq!(c.slot_of("foo"), 12182);
    assert_eq!(c.slot_of("{user1000}.following"), c.slot_of("user1000"));
    assert_eq!(c.slot_of(b"{}x".as_slice()), c.slot_of("{}x"));
}

#[test]
fn owner_serves_its_keys_and_every_other_node_answers_moved() {
    let c = RedisCluster::start(3, 1, PW);
    let masters = c.masters();
    for (i, owner) in masters.iter().enumerate() {
        let key = key_owned_by(&c, owner, &format!("owned{i}"));
        let slot = c.slot_of(&key);
        let value = format!("value-{i}");

        let mut conn = c.conn_for_key(&key);
        assert_eq!(conn.port(), owner.port());
        conn.call_expect(&["SET", &key, &value], b"+OK\r\n");
        conn.call_expect(&["GET", &key], &bulk(value.as_bytes()));
        // Replicated before the replica is asked (WAIT numreplicas timeout-ms).
        conn.call_expect(&["WAIT", "1", "10000"], b":1\r\n");

        for n in c.nodes() {
            if n.port() == owner.port() {
                continue;
            }
            // Other masters, and replicas (the owner's own too) without READONLY.
            let mut other = n.conn();
            other.call_expect(&["GET", &key], &moved(slot, owner));
            other.call_expect(&["SET", &key, "x"], &moved(slot, owner));
        }
        // The owner's replica serves reads after READONLY, and still refuses writes.
        let replica = c.replicas_of(owner)[0];
        let mut ro = replica.conn();
        ro.call_expect(&["READONLY"], b"+OK\r\n");
        ro.call_expect(&["GET", &key], &bulk(value.as_bytes()));
        ro.call_expect(&["SET", &key, "x"], &moved(slot, owner));
    }
}

#[test]
fn half_finished_migration_answers_ask_and_finishing_moves_ownership() {
    let c = RedisCluster::start(3, 1, PW);
    let slot = c.slot_of("{mig}");
    let keys: Vec<String> = (0..10).map(|i| format!("{{mig}}:{i}")).collect();
    let src = c.node_for_slot(slot);
    let dst = *c
        .masters()
        .iter()
        .find(|m| m.port() != src.port())
        .expect("another master");
    let bystander = *c
        .masters()
        .iter()
        .find(|m| m.port() != src.port() && m.port() != dst.port())
        .expect("a third master");
    let mut s = src.conn();
    for k in &keys {
        s.call_expect(&["SET", k, &format!("v-{k}")], b"+OK\r\n");
    }

    let m = c.begin_migration(slot, dst);
    assert_eq!(
        (m.slot(), m.source().port(), m.target().port()),
        (slot, src.port(), dst.port())
    );
    // Nothing moved yet: the source serves what it has; a new key is sent to the target.
    s.call_expect(
        &["GET", &keys[0]],
        &bulk(format!("v-{}", keys[0]).as_bytes()),
    );
    s.call_expect(&["SET", "{mig}:new", "n"], &ask(slot, dst));
    // The target does not serve the slot without ASKING; ASKING is good for one command.
    let mut d = dst.conn();
    d.call_expect(&["SET", "{mig}:new", "n"], &moved(slot, src));
    d.call_expect(&["ASKING"], b"+OK\r\n");
    d.call_expect(&["SET", "{mig}:new", "n"], b"+OK\r\n");
    d.call_expect(&["GET", "{mig}:new"], &moved(slot, src));
    // Everyone else still sends clients to the source.
    bystander
        .conn()
        .call_expect(&["GET", &keys[0]], &moved(slot, src));

    // Half the keys moved.
    assert_eq!(m.move_some(5), 5);
    let on_target: Vec<Vec<u8>> = c.keys_in_slot(dst, slot, 100);
    assert_eq!(on_target.len(), 6, "5 moved plus {{mig}}:new");
    assert_eq!(c.keys_in_slot(src, slot, 100).len(), 5);
    for k in &keys {
        let want = bulk(format!("v-{k}").as_bytes());
        if on_target.iter().any(|t| t == k.as_bytes()) {
            s.call_expect(&["GET", k], &ask(slot, dst));
            d.call_expect(&["GET", k], &moved(slot, src));
            d.call_expect(&["ASKING"], b"+OK\r\n");
            d.call_expect(&["GET", k], &want);
        } else {
            s.call_expect(&["GET", k], &want);
        }
    }
    // A multi-key command over keys on both sides cannot be served by either yet.
    let split = on_target
        .iter()
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .find(|t| t != "{mig}:new")
        .expect("a moved key");
    let stayed = keys
        .iter()
        .find(|k| !on_target.iter().any(|t| t == k.as_bytes()))
        .expect("a key still on the source");
    let reply = s.call(&["MGET", stayed, &split]);
    assert!(
        reply.starts_with(b"-TRYAGAIN"),
        "MGET over both sides: \"{}\"",
        escape(&reply)
    );

    m.finish();
    // Every node's CLUSTER SLOTS gives the slot to the target, in a range of its own.
    for n in c.nodes() {
        let map = c.slot_map(n);
        let owner = map
            .iter()
            .find(|(a, b, _, _)| *a <= slot && slot <= *b)
            .map(|(_, _, p, _)| *p);
        assert_eq!(owner, Some(dst.port()), "port {}: {map:?}", n.port());
    }
    assert_eq!(c.node_for_slot(slot).port(), dst.port());
    assert_eq!(c.conn_for_key("{mig}:0").port(), dst.port());
    assert!(c.keys_in_slot(src, slot, 100).is_empty());
    let mut d = dst.conn();
    for k in &keys {
        d.call_expect(&["GET", k], &bulk(format!("v-{k}").as_bytes()));
        s.call_expect(&["GET", k], &moved(slot, dst));
    }
    d.call_expect(&["GET", "{mig}:new"], &bulk(b"n"));
    bystander
        .conn()
        .call_expect(&["GET", &keys[0]], &moved(slot, dst));
    // The slot's keys reached the target's replica too.
    let mut r = c.replicas_of(dst)[0].conn();
    d.call_expect(&["WAIT", "1", "10000"], b":1\r\n");
    r.call_expect(&["READONLY"], b"+OK\r\n");
    r.call_expect(&["GET", "{mig}:9"], &bulk(b"v-{mig}:9"));
}

/// A minimal cluster client for one key at a time: follows `-MOVED` (updating where it
/// sends the slot) and `-ASK` (`ASKING` on the target, for that command only).
struct RedirectingClient<'a> {
    cluster: &'a RedisCluster,
    owner_port: u16,
    moved: u64,
    asked: u64,
}

impl RedirectingClient<'_> {
    fn call(&mut self, args: &[&str]) -> Vec<u8> {
        let mut port = self.owner_port;
        let mut asking = false;
        for _ in 0..10 {
            let mut conn = self.cluster.node_by_port(port).conn();
            if asking {
                conn.call_expect(&["ASKING"], b"+OK\r\n");
            }
            let reply = conn.call(args);
            let text = String::from_utf8_lossy(&reply).into_owned();
            let target = |t: &str| -> u16 {
                t.trim_end()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("bad redirection {t:?}"))
            };
            if text.starts_with("-MOVED ") {
                self.moved += 1;
                port = target(&text);
                self.owner_port = port;
                asking = false;
            } else if text.starts_with("-ASK ") {
                self.asked += 1;
                port = target(&text);
                asking = true;
            } else {
                return reply;
            }
        }
        panic!("{args:?}: more than 10 redirections");
    }
}

#[test]
fn migrate_slot_while_four_clients_write_keeps_every_write() {
    let c = RedisCluster::start(3, 1, PW);
    let slot = c.slot_of("{busy}");
    let src = c.node_for_slot(slot);
    let dst = *c
        .masters()
        .iter()
        .find(|m| m.port() != src.port())
        .expect("another master");
    // Keys there before the migration starts, so it has something to move.
    let mut s = src.conn();
    for i in 0..300 {
        s.call_expect(&["SET", &format!("{{busy}}:old:{i}"), "old"], b"+OK\r\n");
    }

    let stop = AtomicBool::new(false);
    let asks: [AtomicU64; 4] = Default::default();
    let written = thread::scope(|scope| {
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (c, stop, asks) = (&c, &stop, &asks);
                scope.spawn(move || {
                    let mut client = RedirectingClient {
                        cluster: c,
                        owner_port: src.port(),
                        moved: 0,
                        asked: 0,
                    };
                    let mut n = 0u64;
                    // One more round after the stop is seen: it starts after the
                    // migration finished, so it meets the new owner.
                    let mut last_round = false;
                    while !last_round {
                        last_round = stop.load(Ordering::SeqCst);
                        // Overwrite an old key (each writer its own quarter of them) and
                        // create a new one.
                        let old = format!("{{busy}}:old:{}", (n as usize * 4 + w) % 300);
                        let reply = client.call(&["SET", &old, &format!("w{w}-{n}")]);
                        assert_eq!(reply, b"+OK\r\n", "writer {w}: SET {old}");
                        let new = format!("{{busy}}:w{w}:{n}");
                        let reply = client.call(&["SET", &new, &n.to_string()]);
                        assert_eq!(reply, b"+OK\r\n", "writer {w}: SET {new}");
                        asks[w].store(client.asked, Ordering::SeqCst);
                        n += 1;
                    }
                    (n, client.moved, client.asked)
                })
            })
            .collect();
        let m = c.begin_migration(slot, dst);
        // Every writer meets the half-migrated slot (its new keys are sent to the
        // target) before any old key moves...
        let met = wait_until(Duration::from_secs(60), || {
            asks.iter().all(|a| a.load(Ordering::SeqCst) > 0)
        });
        assert!(met, "writers never got -ASK: {asks:?}");
        // ...and keys move in small steps while they write.
        while m.move_some(25) > 0 {
            thread::sleep(Duration::from_millis(20));
        }
        m.finish();
        stop.store(true, Ordering::SeqCst);
        writers
            .into_iter()
            .map(|h| h.join().expect("writer thread"))
            .collect::<Vec<_>>()
    });
    eprintln!("writers (writes, MOVED, ASK): {written:?}");
    for (w, &(_, moved, asked)) in written.iter().enumerate() {
        assert!(asked > 0, "writer {w} never got -ASK: {written:?}");
        assert!(moved > 0, "writer {w} never got -MOVED: {written:?}");
    }

    // Every write is on the new owner, the last one for each old key; the old owner
    // holds nothing of the slot.
    assert!(c.keys_in_slot(src, slot, 10).is_empty());
    let mut d = dst.conn();
    let mut old_values = vec!["old".to_string(); 300];
    for (w, (n, _, _)) in written.iter().enumerate() {
        for i in 0..*n {
            d.call_expect(
                &["GET", &format!("{{busy}}:w{w}:{i}")],
                &bulk(i.to_string().as_bytes()),
            );
            old_values[(i as usize * 4 + w) % 300] = format!("w{w}-{i}");
        }
    }
    for (i, v) in old_values.iter().enumerate() {
        d.call_expect(&["GET", &format!("{{busy}}:old:{i}")], &bulk(v.as_bytes()));
    }
    let count = parse_reply(&d.call(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]));
    let total: u64 = written.iter().map(|(n, _, _)| n).sum();
    assert_eq!(count, Reply::Int(300 + total as i64));
}

#[test]
fn failover_promotes_the_replica_and_old_writes_are_readable_on_it() {
    let c = RedisCluster::start(3, 1, PW);
    let old_master = c.masters()[0];
    let replica = c.replicas_of(old_master)[0];
    let key = key_owned_by(&c, old_master, "fo");
    let slot = c.slot_of(&key);
    let keys: Vec<String> = (0..50).map(|i| format!("{key}{{{key}}}:{i}")).collect();
    assert!(keys.iter().all(|k| c.slot_of(k) == c.slot_of(&key)));
    // No WAIT: a manual failover lets the replica catch up before it takes over.
    let mut conn = old_master.conn();
    for k in &keys {
        conn.call_expect(&["SET", k, k], b"+OK\r\n");
    }

    let t = Instant::now();
    c.failover(replica);
    eprintln!("CLUSTER FAILOVER to settled cluster: {:?}", t.elapsed());

    let masters: Vec<u16> = c.masters().iter().map(|m| m.port()).collect();
    assert!(masters.contains(&replica.port()), "{}", c.describe());
    assert!(!masters.contains(&old_master.port()), "{}", c.describe());
    assert_eq!(c.master_of(old_master).port(), replica.port());
    assert_eq!(c.node_for_slot(slot).port(), replica.port());
    let role = parse_reply(&old_master.conn().call(&["ROLE"]));
    assert_eq!(role.array()[0], Reply::Bulk(b"slave".to_vec()));
    assert_eq!(
        role.array()[1..3],
        [
            Reply::Bulk(b"127.0.0.1".to_vec()),
            Reply::Int(i64::from(replica.port()))
        ]
    );

    let mut new = c.conn_for_key(&key);
    assert_eq!(new.port(), replica.port());
    for k in &keys {
        new.call_expect(&["GET", k], &bulk(k.as_bytes()));
    }
    new.call_expect(&["SET", &key, "after"], b"+OK\r\n");
    // The old master's connection that wrote before the failover is redirected now.
    conn.call_expect(&["GET", &keys[0]], &moved(slot, replica));
    for n in c.nodes() {
        if n.port() != replica.port() {
            n.conn().call_expect(&["GET", &key], &moved(slot, replica));
        }
    }
    let info = c.cluster_info(replica);
    assert!(info.contains("cluster_state:ok"), "{info}");

    // The new master's slot can be moved on (ids and roles as they are now).
    let third = *c
        .masters()
        .iter()
        .find(|m| m.port() != replica.port())
        .expect("another master");
    c.migrate_slot(slot, third);
    assert_eq!(c.node_for_slot(slot).port(), third.port());
    let mut t = c.conn_for_key(&key);
    assert_eq!(t.port(), third.port());
    t.call_expect(&["GET", &key], &bulk(b"after"));
    t.call_expect(&["GET", &keys[49]], &bulk(keys[49].as_bytes()));
    new.call_expect(&["GET", &key], &moved(slot, third));
}

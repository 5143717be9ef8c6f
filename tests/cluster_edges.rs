//! Cluster mode at its edges: pipelines that mix nodes with transactions and blocking
//! commands, the relay's commands for other masters, bad arguments. Each test was first a
//! demonstration of a bug (a review of the cluster-mode work); they now pin the fixes.
//! A real 3-master Redis Cluster with `requirepass`, one shared lane per node so that two
//! clients surely share it.

mod common;

use std::time::Duration;

use common::cluster::RedisCluster;
use common::*;

const PW: &str = "cluster-pw";

fn proxy(cluster: &RedisCluster, max_pinned: Option<u64>) -> Ambassador {
    let mut builder = cluster.ambassador().pool_size(1);
    if let Some(n) = max_pinned {
        builder = builder.max_pinned(n);
    }
    builder.start()
}

/// A key `prefix<i>` whose master is (`on`) or is not (`!on`) the master of slot 0 (the
/// first master, where the relay's connection and keyless commands go).
fn key(cluster: &RedisCluster, prefix: &str, on: bool) -> String {
    let first = cluster.node_for_slot(0).port();
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| (cluster.node_for_slot(cluster.slot_of(k)).port() == first) == on)
        .expect("no such key")
}

fn pipeline(commands: &[&[&str]]) -> Vec<u8> {
    commands.iter().flat_map(|c| resp(c)).collect()
}

/// Reads replies until none comes for a while (the deadline is a hang detector).
fn all_replies(c: &mut RawConn) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while let Some(reply) = c.try_read_reply(Duration::from_secs(2)) {
        got.push(reply);
    }
    got
}

const UNSUPPORTED: &str = "is not supported by redis-ambassador";

#[test]
fn a_transaction_after_a_pipeline_over_two_masters_stays_off_the_shared_lane() {
    let cluster = RedisCluster::start(3, 0, PW);
    let p = proxy(&cluster, None);
    let (k1, k2, k3, k4) = (
        key(&cluster, "x", true),
        key(&cluster, "y", false),
        key(&cluster, "z", true),
        key(&cluster, "w", true),
    );
    let mut c = p.conn();
    c.send(&pipeline(&[
        &["SET", &k1, "v1"],
        &["SET", &k2, "v2"],
        &["SET", &k3, "v3"],
        &["MULTI"],
        &["SET", &k4, "v4"],
    ]));
    let replies = c.read_replies(5);
    assert_eq!(
        replies,
        [
            &b"+OK\r\n"[..],
            b"+OK\r\n",
            b"+OK\r\n",
            b"+OK\r\n",
            b"+QUEUED\r\n"
        ]
    );
    // Another client on the same lane is not inside anyone's MULTI.
    let mut other = p.conn();
    other.call_expect(&["GET", &k1], &bulk(b"v1"));
    c.call_expect(&["EXEC"], b"*1\r\n+OK\r\n");

    // The same with an EXEC the ambassador finishes (a queued CLIENT SETNAME).
    c.send(&pipeline(&[
        &["SET", &k1, "v1"],
        &["SET", &k2, "v2"],
        &["SET", &k3, "v3"],
        &["MULTI"],
        &["CLIENT", "SETNAME", "foo"],
        &["SET", &k4, "v4"],
        &["EXEC"],
    ]));
    let replies = all_replies(&mut c);
    assert_eq!(replies.len(), 7, "seven requests, seven replies");
    assert_eq!(replies[6], b"*2\r\n+OK\r\n+OK\r\n");
    c.call_expect(&["CLIENT", "GETNAME"], &bulk(b"foo"));
}

#[test]
fn a_blocking_command_after_a_pipeline_over_two_masters_blocks_on_its_own_connection() {
    let cluster = RedisCluster::start(3, 0, PW);
    let p = proxy(&cluster, None);
    let (k1, k2, k3) = (
        key(&cluster, "x", true),
        key(&cluster, "y", false),
        key(&cluster, "z", true),
    );
    let list = key(&cluster, "list", true);
    let mut c = p.conn();
    c.timeout = Duration::from_secs(30);
    c.send(&pipeline(&[
        &["SET", &k1, "v1"],
        &["SET", &k2, "v2"],
        &["SET", &k3, "v3"],
        &["BLPOP", &list, "20"],
    ]));
    assert_eq!(c.read_replies(3), [&b"+OK\r\n"[..], b"+OK\r\n", b"+OK\r\n"]);
    // On a shared lane the BLPOP would hold up this RPUSH (the lane's only connection)
    // until its own timeout, and then return nil. Until it blocks, a push would be
    // taken by nobody: retry until it is blocked.
    let mut pusher = p.conn();
    let mut owner = cluster.conn_for_key(&list);
    owner.call_expect(&["AUTH", PW], b"+OK\r\n");
    for _ in 0..200 {
        let clients = owner.call(&["CLIENT", "LIST"]);
        if String::from_utf8_lossy(&clients).contains("cmd=blpop") {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    pusher.call_expect(&["RPUSH", &list, "pushed"], b":1\r\n");
    let mut want = b"*2\r\n".to_vec();
    want.extend(bulk(list.as_bytes()));
    want.extend(bulk(b"pushed"));
    c.expect(&want);
}

#[test]
fn held_keyless_commands_get_one_reply_when_no_dedicated_connection_can_be_had() {
    let cluster = RedisCluster::start(3, 0, PW);
    let p = proxy(&cluster, Some(1));
    let (k1, k2) = (key(&cluster, "x", true), key(&cluster, "z", true));
    let mut holder = p.conn();
    holder.call_expect(&["WATCH", &k1], b"+OK\r\n");
    let mut c = p.conn();
    c.send(&pipeline(&[
        &["MULTI"],
        &["PING"],
        &["SET", &k2, "v"],
        &["EXEC"],
    ]));
    let replies = all_replies(&mut c);
    assert_eq!(replies.len(), 4, "four requests, four replies: {replies:?}");
    assert_eq!(replies[0], b"+OK\r\n");
    assert_eq!(replies[1], b"+QUEUED\r\n");
    assert!(replies[2].starts_with(b"-ERR upstream pool exhausted"));
}

#[test]
fn under_client_reply_off_commands_for_other_masters_run_without_a_reply() {
    let cluster = RedisCluster::start(3, 0, PW);
    let p = proxy(&cluster, None);
    let kx = key(&cluster, "x", false);
    let mut c = p.conn();
    c.send(&pipeline(&[
        &["CLIENT", "REPLY", "OFF"],
        &["SET", &kx, "v"],
        &["SSUBSCRIBE", "quiet"],
        &["SUNSUBSCRIBE", "quiet"],
        &["CLIENT", "REPLY", "ON"],
        &["GET", &kx],
    ]));
    c.expect(b"+OK\r\n");
    c.expect(&bulk(b"v"));
    // SKIP: the skipped command runs on another master; the next reply is not lost.
    c.send(&pipeline(&[
        &["CLIENT", "REPLY", "SKIP"],
        &["SET", &kx, "w"],
        &["GET", &kx],
    ]));
    c.expect(&bulk(b"w"));
    c.call_expect(&["PING"], b"+PONG\r\n");
}

#[test]
fn relay_mode_refuses_what_would_bind_another_master_to_its_connection() {
    let cluster = RedisCluster::start(3, 0, PW);
    let p = proxy(&cluster, None);
    let (kx, list) = (key(&cluster, "x", false), key(&cluster, "list", false));
    let here = key(&cluster, "h", true);
    let mut c = p.conn();
    assert!(c.call(&["HELLO", "3"]).starts_with(b"%"));
    c.call_expect(
        &["SUBSCRIBE", "ch"],
        b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
    );
    // WATCH of another master's key: a clear refusal, never Redis Cluster's -MOVED.
    let watch = c.call(&["WATCH", &kx]);
    assert!(
        watch.starts_with(b"-ERR 'watch' ") && contains(&watch, UNSUPPORTED),
        "{}",
        escape_short(&watch, 200)
    );
    // A blocking command there would stop the relay: refused, and messages still flow.
    let blpop = c.call(&["BLPOP", &list, "0"]);
    assert!(
        contains(&blpop, UNSUPPORTED),
        "{}",
        escape_short(&blpop, 200)
    );
    let mut publisher = p.conn();
    publisher.call_expect(&["PUBLISH", "ch", "hi"], b":1\r\n");
    c.expect(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n");
    // A transaction on the relay's master works; another master's key inside it is
    // refused and EXEC aborts.
    c.send(&pipeline(&[
        &["MULTI"],
        &["SET", &here, "1"],
        &["EXEC"],
        &["MULTI"],
        &["SET", &kx, "1"],
        &["EXEC"],
    ]));
    assert_eq!(
        c.read_replies(3),
        [&b"+OK\r\n"[..], b"+QUEUED\r\n", b"*1\r\n+OK\r\n"]
    );
    c.expect(b"+OK\r\n");
    let refused = c.read_reply();
    assert!(
        contains(&refused, UNSUPPORTED),
        "{}",
        escape_short(&refused, 200)
    );
    c.expect(b"-EXECABORT Transaction discarded because of previous errors.\r\n");
}

#[test]
fn a_resp2_client_with_shard_channels_only_gets_redis_subscribed_mode_answers() {
    let cluster = RedisCluster::start(3, 0, PW);
    let p = proxy(&cluster, None);
    // Redis itself, for the expected bytes.
    let mut direct = cluster.conn_for_key("ch");
    direct.call_expect(&["AUTH", PW], b"+OK\r\n");
    direct.call(&["SSUBSCRIBE", "ch"]);
    let commands: [&[&str]; 5] = [
        &["CLIENT", "REPLY", "OFF"],
        &["ECHO", "x"],
        &["MULTI"],
        // A key of the channel's own slot: the node checks the slot before the context.
        &["GET", "ch"],
        &["PING"],
    ];
    let want: Vec<Vec<u8>> = commands.iter().map(|c| direct.call(c)).collect();
    let mut c = p.conn();
    c.call_expect(
        &["SSUBSCRIBE", "ch"],
        b"*3\r\n$10\r\nssubscribe\r\n$2\r\nch\r\n:1\r\n",
    );
    c.send(&pipeline(&commands));
    assert_eq!(c.read_replies(commands.len()), want);
}

#[test]
fn client_tracking_is_refused_in_cluster_mode() {
    let cluster = RedisCluster::start(3, 0, PW);
    let p = proxy(&cluster, None);
    let kx = key(&cluster, "x", false);
    let mut c = p.conn();
    assert!(c.call(&["HELLO", "3"]).starts_with(b"%"));
    let refused = c.call(&["CLIENT", "TRACKING", "ON"]);
    assert!(
        refused.starts_with(b"-ERR 'client|tracking' ") && contains(&refused, UNSUPPORTED),
        "{}",
        escape_short(&refused, 200)
    );
    c.call_expect(&["SET", &kx, "v"], b"+OK\r\n");
    c.call_expect(&["GET", &kx], &bulk(b"v"));
}

#[test]
fn bad_arguments_get_redis_errors_not_a_dropped_connection() {
    let cluster = RedisCluster::start(3, 0, PW);
    let p = proxy(&cluster, None);
    let (k1, k2) = (key(&cluster, "x", true), key(&cluster, "y", false));
    let mut c = p.conn();
    c.call_expect(
        &["MIGRATE", "a", "b"],
        b"-ERR wrong number of arguments for 'migrate' command\r\n",
    );
    c.call_expect(
        &["MSET", &k1, "1", &k2],
        b"-ERR wrong number of arguments for 'mset' command\r\n",
    );
    c.call_expect(
        &["EVAL", "return 1", "99999999999999999999", "a"],
        b"-ERR value is not an integer or out of range\r\n",
    );
    c.call_expect(&["PING"], b"+PONG\r\n");
    assert_eq!(
        scraped_value(&p.scrape(), "redis_ambassador_client_connections"),
        1.0
    );
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

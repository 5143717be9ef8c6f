//! Cluster mode, pub/sub through the relay: shard channels of several masters on one
//! client connection (as one Redis allows), their subscriptions moved when a slot moves or
//! a node's connection is lost, and keyed commands sent from inside pub/sub mode to the
//! slot's master. A real 3-master Redis Cluster with `requirepass`; the client is a plain,
//! non-cluster client of the ambassador.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{RedisCluster, parse_reply};
use common::*;

const PW: &str = "cluster-pw";

fn proxy_for(cluster: &RedisCluster) -> Ambassador {
    cluster.ambassador().pool_size(2).start()
}

/// `[kind, channel, count]` as Redis writes it (`*` in RESP2, `>` in RESP3).
fn confirmation(head: &str, kind: &str, channel: &str, count: i64) -> Vec<u8> {
    let mut want = format!("{head}3\r\n").into_bytes();
    want.extend(bulk(kind.as_bytes()));
    want.extend(bulk(channel.as_bytes()));
    want.extend(format!(":{count}\r\n").into_bytes());
    want
}

fn smessage(head: &str, channel: &str, message: &str) -> Vec<u8> {
    let mut want = format!("{head}3\r\n").into_bytes();
    want.extend(bulk(b"smessage"));
    want.extend(bulk(channel.as_bytes()));
    want.extend(bulk(message.as_bytes()));
    want
}

/// Three channel names whose slots are on three different masters.
fn channels_on_three_masters(cluster: &RedisCluster) -> [String; 3] {
    let mut found: Vec<(u16, String)> = Vec::new();
    for i in 0..1000 {
        let name = format!("ch{i}");
        let port = cluster.node_for_slot(cluster.slot_of(&name)).port();
        if !found.iter().any(|(p, _)| *p == port) {
            found.push((port, name));
        }
        if found.len() == 3 {
            break;
        }
    }
    assert_eq!(found.len(), 3, "no channels found on three masters");
    [found[0].1.clone(), found[1].1.clone(), found[2].1.clone()]
}

/// Publishes through `publisher` until a subscriber is counted (the resubscription may
/// still be on its way); returns the message that was delivered. The deadline is a hang
/// detector, not a timing assertion.
#[track_caller]
fn publish_until_heard(publisher: &mut RawConn, channel: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0.. {
        let message = format!("m{i}");
        let reply = publisher.call(&["SPUBLISH", channel, &message]);
        if reply == b":1\r\n" {
            return message;
        }
        assert_eq!(reply, b":0\r\n", "SPUBLISH answered {}", escape(&reply));
        assert!(
            Instant::now() < deadline,
            "no subscriber for {channel} came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    unreachable!()
}

/// Reads frames until `message` arrives on `channel`: the ones before it may only be
/// messages the subscriber heard before (never a `sunsubscribe`).
#[track_caller]
fn expect_message(subscriber: &mut RawConn, channel: &str, message: &str) {
    let want = smessage("*", channel, message);
    loop {
        let frame = subscriber.read_reply();
        if frame == want {
            return;
        }
        let text = escape(&frame);
        assert!(
            frame.starts_with(b"*3\r\n$8\r\nsmessage\r\n"),
            "the subscriber saw {text} while waiting for {message}"
        );
    }
}

fn escape(bytes: &[u8]) -> String {
    escape_short(bytes, 200)
}

#[test]
fn shard_channels_of_three_masters_on_one_connection() {
    let cluster = RedisCluster::start(3, 0, PW);
    let proxy = proxy_for(&cluster);
    let [a, b, c] = channels_on_three_masters(&cluster);
    let mut s = proxy.conn();

    // One SSUBSCRIBE over two masters' slots: a confirmation per channel, in order,
    // counting all of them (a cluster node would answer CROSSSLOT).
    let mut want = confirmation("*", "ssubscribe", &a, 1);
    want.extend(confirmation("*", "ssubscribe", &b, 2));
    s.call_expect(&["SSUBSCRIBE", &a, &b], &want);
    // A channel again counts once.
    let mut want = confirmation("*", "ssubscribe", &c, 3);
    want.extend(confirmation("*", "ssubscribe", &a, 3));
    s.call_expect(&["SSUBSCRIBE", &c, &a], &want);

    // Each node's subscriber is the ambassador's link to it.
    for ch in [&a, &b, &c] {
        let mut owner = cluster.node_for_slot(cluster.slot_of(ch)).conn();
        owner.call_expect(&["AUTH", PW], b"+OK\r\n");
        let mut want = b"*2\r\n".to_vec();
        want.extend(bulk(ch.as_bytes()));
        want.extend(b":1\r\n");
        owner.call_expect(&["PUBSUB", "SHARDNUMSUB", ch], &want);
    }

    let mut publisher = proxy.conn();
    for (ch, msg) in [(&a, "one"), (&b, "two"), (&c, "three")] {
        publisher.call_expect(&["SPUBLISH", ch, msg], b":1\r\n");
        s.expect(&smessage("*", ch, msg));
    }

    // RESP2 subscribed mode, shard channels only: Redis's own answers.
    let mut pong = b"*2\r\n".to_vec();
    pong.extend(bulk(b"pong"));
    pong.extend(bulk(b""));
    s.call_expect(&["PING"], &pong);
    // Keys of every master, whichever link carries the command (Redis checks the slot
    // before the subscribed context).
    for key in ["x", &a, &b, &c] {
        s.call_expect(
            &["GET", key],
            b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n",
        );
        s.call_expect(
            &["OBJECT", "ENCODING", key],
            b"-ERR Can't execute 'object|encoding': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n",
        );
    }
    s.call_expect(
        &["GET"],
        b"-ERR wrong number of arguments for 'get' command\r\n",
    );
    s.call_expect(
        &["CLIENT", "SETNAME", "n"],
        b"-ERR Can't execute 'client|setname': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n",
    );

    // SUNSUBSCRIBE of one, of one not subscribed, then of all.
    s.call_expect(
        &["SUNSUBSCRIBE", &b],
        &confirmation("*", "sunsubscribe", &b, 2),
    );
    publisher.call_expect(&["SPUBLISH", &b, "lost"], b":0\r\n");
    s.call_expect(
        &["SUNSUBSCRIBE", "nothere"],
        &confirmation("*", "sunsubscribe", "nothere", 2),
    );
    s.send(&resp(&["SUNSUBSCRIBE"]));
    let first = s.read_reply();
    let second = s.read_reply();
    let mut got = vec![first, second];
    got.sort();
    let mut want = vec![
        confirmation("*", "sunsubscribe", &a, 1),
        confirmation("*", "sunsubscribe", &c, 0),
    ];
    let mut alt = vec![
        confirmation("*", "sunsubscribe", &c, 1),
        confirmation("*", "sunsubscribe", &a, 0),
    ];
    want.sort();
    alt.sort();
    assert!(
        got == want || got == alt,
        "SUNSUBSCRIBE of all answered {:?}",
        got.iter().map(|f| escape(f)).collect::<Vec<_>>()
    );
    // Nothing left: with nothing subscribed Redis answers a null channel.
    s.call_expect(
        &["SUNSUBSCRIBE"],
        b"*3\r\n$12\r\nsunsubscribe\r\n$-1\r\n:0\r\n",
    );
    // Out of pub/sub mode: an ordinary client again.
    s.call_expect(&["SET", &a, "v"], b"+OK\r\n");
    s.call_expect(&["GET", &a], &bulk(b"v"));
    publisher.call_expect(&["SPUBLISH", &a, "gone"], b":0\r\n");
}

#[test]
fn resp3_pubsub_sends_keyed_commands_to_their_master() {
    let cluster = RedisCluster::start(3, 0, PW);
    let proxy = proxy_for(&cluster);
    let [a, b, c] = channels_on_three_masters(&cluster);
    let mut writer = proxy.conn();
    for key in [&a, &b, &c] {
        writer.call_expect(&["SET", key, &format!("value-of-{key}")], b"+OK\r\n");
    }

    let mut s = proxy.conn();
    s.send(&resp(&["HELLO", "3"]));
    let hello = s.read_reply();
    assert!(hello.starts_with(b"%"), "HELLO 3: {}", escape(&hello));
    let mut want = confirmation(">", "ssubscribe", &a, 1);
    want.extend(confirmation(">", "ssubscribe", &b, 2));
    s.call_expect(&["SSUBSCRIBE", &a, &b], &want);
    // Classic pub/sub beside the shard channels: counted apart, as Redis does.
    s.call_expect(
        &["SUBSCRIBE", "plain"],
        &confirmation(">", "subscribe", "plain", 1),
    );

    // Keys of all three masters, from inside pub/sub mode (RESP3 allows any command).
    for key in [&a, &b, &c] {
        s.call_expect(&["GET", key], &bulk(format!("value-of-{key}").as_bytes()));
    }
    s.call_expect(&["MGET", &a, &c], &{
        let mut want = b"*2\r\n".to_vec();
        want.extend(bulk(format!("value-of-{a}").as_bytes()));
        want.extend(bulk(format!("value-of-{c}").as_bytes()));
        want
    });
    s.call_expect(
        &["RENAME", &a, &c],
        b"-CROSSSLOT Keys in request don't hash to the same slot\r\n",
    );

    // SPUBLISH to its own channel: the reply and the message, in either order (they come
    // from two nodes' connections).
    s.send(&resp(&["SPUBLISH", &b, "self"]));
    let mut got = vec![s.read_reply(), s.read_reply()];
    got.sort();
    let mut want = vec![b":1\r\n".to_vec(), smessage(">", &b, "self")];
    want.sort();
    assert_eq!(
        got,
        want,
        "{:?}",
        got.iter().map(|f| escape(f)).collect::<Vec<_>>()
    );

    let mut publisher = proxy.conn();
    publisher.call_expect(&["PUBLISH", "plain", "hi"], b":1\r\n");
    let mut want = b">3\r\n".to_vec();
    want.extend(bulk(b"message"));
    want.extend(bulk(b"plain"));
    want.extend(bulk(b"hi"));
    s.expect(&want);
    publisher.call_expect(&["SPUBLISH", &a, "shard"], b":1\r\n");
    s.expect(&smessage(">", &a, "shard"));

    // Back to RESP2 while subscribed: messages come in the client's protocol again.
    s.send(&resp(&["HELLO", "2"]));
    let hello = s.read_reply();
    assert!(hello.starts_with(b"*14\r\n"), "HELLO 2: {}", escape(&hello));
    publisher.call_expect(&["SPUBLISH", &b, "two"], b":1\r\n");
    s.expect(&smessage("*", &b, "two"));
    let mut ping = b"*2\r\n".to_vec();
    ping.extend(bulk(b"pong"));
    ping.extend(bulk(b"x"));
    s.call_expect(&["PING", "x"], &ping);
}

#[test]
fn shard_subscriptions_follow_a_slot_migration() {
    let cluster = RedisCluster::start(3, 0, PW);
    let proxy = proxy_for(&cluster);
    let [a, b, _] = channels_on_three_masters(&cluster);
    let mut s = proxy.conn();
    let mut want = confirmation("*", "ssubscribe", &a, 1);
    want.extend(confirmation("*", "ssubscribe", &b, 2));
    s.call_expect(&["SSUBSCRIBE", &a, &b], &want);
    let mut publisher = proxy.conn();
    publisher.call_expect(&["SPUBLISH", &a, "before"], b":1\r\n");
    s.expect(&smessage("*", &a, "before"));

    // The slot of `a` moves to the master of `b`: its old master ends the subscription
    // with an unasked `sunsubscribe`, which the client must not see.
    let slot = cluster.slot_of(&a);
    let from = cluster.node_for_slot(slot).port();
    let to = cluster.node_for_slot(cluster.slot_of(&b));
    cluster.migrate_slot(slot, to);

    let message = publish_until_heard(&mut publisher, &a);
    expect_message(&mut s, &a, &message);
    let mut owner = to.conn();
    owner.call_expect(&["AUTH", PW], b"+OK\r\n");
    let mut numsub = b"*2\r\n".to_vec();
    numsub.extend(bulk(a.as_bytes()));
    numsub.extend(b":1\r\n");
    owner.call_expect(&["PUBSUB", "SHARDNUMSUB", &a], &numsub);
    let mut old = cluster
        .nodes()
        .iter()
        .find(|n| n.port() == from)
        .unwrap()
        .conn();
    old.call_expect(&["AUTH", PW], b"+OK\r\n");
    let mut none = b"*2\r\n".to_vec();
    none.extend(bulk(a.as_bytes()));
    none.extend(b":0\r\n");
    old.call_expect(&["PUBSUB", "SHARDNUMSUB", &a], &none);

    // Both channels still work, and the count is still two.
    publisher.call_expect(&["SPUBLISH", &b, "still"], b":1\r\n");
    expect_message(&mut s, &b, "still");
    s.call_expect(
        &["SUNSUBSCRIBE", &a],
        &confirmation("*", "sunsubscribe", &a, 1),
    );
    publisher.call_expect(&["SPUBLISH", &a, "after"], b":0\r\n");
}

#[test]
fn shard_subscriptions_survive_a_lost_connection() {
    let cluster = RedisCluster::start(3, 0, PW);
    let proxy = proxy_for(&cluster);
    let [a, _, _] = channels_on_three_masters(&cluster);
    let mut s = proxy.conn();
    s.call_expect(&["SSUBSCRIBE", &a], &confirmation("*", "ssubscribe", &a, 1));
    let owner = cluster.node_for_slot(cluster.slot_of(&a));
    let mut admin = owner.conn();
    admin.call_expect(&["AUTH", PW], b"+OK\r\n");
    // The node drops the ambassador's subscribed connection.
    let killed = admin.call(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(parse_reply(&killed).int(), 1, "{}", escape(&killed));

    let mut publisher = proxy.conn();
    let message = publish_until_heard(&mut publisher, &a);
    expect_message(&mut s, &a, &message);
    s.call_expect(
        &["SUNSUBSCRIBE", &a],
        &confirmation("*", "sunsubscribe", &a, 0),
    );
}

#[test]
fn shard_subscriptions_survive_a_failover() {
    let cluster = RedisCluster::start(3, 1, PW);
    let proxy = proxy_for(&cluster);
    let [a, b, _] = channels_on_three_masters(&cluster);
    let mut s = proxy.conn();
    let mut want = confirmation("*", "ssubscribe", &a, 1);
    want.extend(confirmation("*", "ssubscribe", &b, 2));
    s.call_expect(&["SSUBSCRIBE", &a, &b], &want);
    let mut publisher = proxy.conn();
    publisher.call_expect(&["SPUBLISH", &a, "before"], b":1\r\n");
    s.expect(&smessage("*", &a, "before"));

    // The master of `a` hands over to its replica (the ambassador's subscription was on
    // the old master, which may keep it as a replica or end it).
    let owner = cluster.node_for_slot(cluster.slot_of(&a));
    let replica = cluster.replicas_of(owner)[0];
    cluster.failover(replica);

    let message = publish_until_heard(&mut publisher, &a);
    expect_message(&mut s, &a, &message);
    publisher.call_expect(&["SPUBLISH", &b, "other"], b":1\r\n");
    expect_message(&mut s, &b, "other");
    // Still two shard channels, each heard once.
    let mut want = confirmation("*", "sunsubscribe", &a, 1);
    want.extend(confirmation("*", "sunsubscribe", &b, 0));
    s.call_expect(&["SUNSUBSCRIBE", &a, &b], &want);
    s.call_expect(&["PING"], b"+PONG\r\n");
}

/// A subscriber that leaves takes its shard subscriptions with it: every link is closed,
/// and no node still counts it.
#[test]
fn a_subscriber_that_leaves_leaves_no_subscription_behind() {
    let cluster = RedisCluster::start(3, 0, PW);
    let proxy = proxy_for(&cluster);
    let [a, b, c] = channels_on_three_masters(&cluster);
    let mut s = proxy.conn();
    let mut want = confirmation("*", "ssubscribe", &a, 1);
    want.extend(confirmation("*", "ssubscribe", &b, 2));
    want.extend(confirmation("*", "ssubscribe", &c, 3));
    s.call_expect(&["SSUBSCRIBE", &a, &b, &c], &want);
    drop(s);
    for ch in [&a, &b, &c] {
        let mut owner = cluster.node_for_slot(cluster.slot_of(ch)).conn();
        owner.call_expect(&["AUTH", PW], b"+OK\r\n");
        let mut none = b"*2\r\n".to_vec();
        none.extend(bulk(ch.as_bytes()));
        none.extend(b":0\r\n");
        let gone = wait_until(Duration::from_secs(10), || {
            owner.call(&["PUBSUB", "SHARDNUMSUB", ch]) == none
        });
        assert!(
            gone,
            "{ch} is still subscribed on its master after the client left"
        );
    }
    // The dedicated connections went back to nothing: a new subscriber still gets one.
    let mut again = proxy.conn();
    again.call_expect(&["SSUBSCRIBE", &a], &confirmation("*", "ssubscribe", &a, 1));
}

//! Connection limits: `max_clients` (TEST-CATALOGUE E4).

mod common;

use common::*;
use std::time::Duration;

#[test]
fn e4_max_clients() {
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .max_clients(3)
        .start();
    // Let the readiness probe's connection be released.
    std::thread::sleep(Duration::from_millis(300));
    let mut held: Vec<RawConn> = (0..3).map(|_| proxy.conn()).collect();
    for c in &mut held {
        c.call_expect(&["PING"], b"+PONG\r\n");
    }
    let mut over = proxy.conn();
    over.expect(b"-ERR max number of clients reached\r\n");
    over.expect_eof();
    // The others are unaffected.
    for c in &mut held {
        c.call_expect(&["GET", "k"], b"$-1\r\n");
    }
    // A slot frees up when a client leaves.
    drop(held.pop());
    let ok = wait_until(Duration::from_secs(3), || {
        let mut c = proxy.conn();
        c.send(&resp(&["PING"]));
        c.try_read_reply(Duration::from_secs(1)).as_deref() == Some(b"+PONG\r\n")
    });
    assert!(ok, "no slot after a client left");
}

#[test]
fn e3_request_over_query_buffer_limit_closes_without_reply() {
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .limit("query_buffer_limit", 1024 * 1024)
        .start();
    let mut bystander = proxy.conn();
    bystander.call_expect(&["PING"], b"+PONG\r\n");
    let sets_before = upstream.command_calls("set");

    // Just under the limit: fine.
    let under = vec![b'u'; 1024 * 1024 - 100];
    let mut c = proxy.conn();
    c.send(&resp(&[b"SET".as_slice(), b"under", &under]));
    c.expect(b"+OK\r\n");

    // One request over it: closed, no reply, nothing forwarded (as Redis does with
    // client-query-buffer-limit 1mb).
    let bare = RedisServer::start_with(ServerAuth::None, &["client-query-buffer-limit 1048576"]);
    let over = vec![b'o'; 1536 * 1024];
    let got = diff_closing(
        bare.port(),
        proxy.port(),
        &resp(&[b"SET".as_slice(), b"over", &over]),
    );
    assert!(got.is_empty());
    upstream.conn().call_expect(&["EXISTS", "over"], b":0\r\n");
    assert_eq!(upstream.command_calls("set"), sets_before + 1);

    // The limit is per request: a 3 MiB pipeline of small requests is fine.
    let mut c = proxy.conn();
    c.timeout = Duration::from_secs(10);
    let value = vec![b'p'; 1000];
    let n = 3 * 1024;
    let input: Vec<u8> = (0..n)
        .flat_map(|i| resp(&[b"SET".as_slice(), format!("p{}", i % 10).as_bytes(), &value]))
        .collect();
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut w, &input));
    for i in 0..n {
        let r = c.read_reply();
        assert_bytes_eq(&format!("pipelined SET {i}"), b"+OK\r\n", &r);
    }
    writer.join().unwrap().unwrap();
    bystander.call_expect(&["PING"], b"+PONG\r\n");
}

#[test]
fn max_bulk_len_matches_redis_proto_max_bulk_len() {
    let upstream = RedisServer::start();
    let bare = RedisServer::start_with(ServerAuth::None, &["proto-max-bulk-len 1048576"]);
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .limit("max_bulk_len", 1024 * 1024)
        .start();
    let got = diff_closing(
        bare.port(),
        proxy.port(),
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1048577\r\n",
    );
    assert_bytes_eq(
        "bulk over max_bulk_len",
        b"-ERR Protocol error: invalid bulk length\r\n",
        &got,
    );
    let v = vec![b'm'; 1024 * 1024];
    let mut c = proxy.conn();
    c.send(&resp(&[b"SET".as_slice(), b"k", &v]));
    c.expect(b"+OK\r\n");
    c.call_expect(&["STRLEN", "k"], b":1048576\r\n");
}

#[test]
fn unauthenticated_query_buffer_limit() {
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(b"pw")
        .limit("unauthenticated_query_buffer_limit", 65536)
        .start();
    let arg = vec![b'a'; 16384];
    // Under the limit (3 × 16 KiB): answered NOAUTH.
    let mut c = proxy.conn();
    c.send(&resp(&[b"SET".as_slice(), &arg, &arg, &arg]));
    c.expect(NOAUTH);
    // Over it (5 × 16 KiB, each arg within the 16 KiB pre-auth cap): closed, no reply.
    let mut c = proxy.conn();
    let _ = c.try_send(&resp(&[b"SET".as_slice(), &arg, &arg, &arg, &arg, &arg]));
    let (got, eof) = c.read_to_eof(Duration::from_secs(5));
    assert!(
        got.is_empty(),
        "expected no reply, got \"{}\"",
        escape_short(&got, 200)
    );
    assert!(eof, "connection not closed");
    // After AUTH the larger limit applies.
    let mut c = proxy.conn();
    c.call_expect(&["AUTH", "pw"], b"+OK\r\n");
    c.send(&resp(&[
        b"MSET".as_slice(),
        b"a",
        &arg,
        b"b",
        &arg,
        b"c",
        &arg,
        b"d",
        &arg,
        b"e",
        &arg,
    ]));
    c.expect(b"+OK\r\n");
}

#[test]
fn a5_declared_lengths_are_not_allocated() {
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream).start();
    let mut warm = proxy.conn();
    warm.call_expect(&["PING"], b"+PONG\r\n");
    let before = proxy.rss_kib();
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut a = proxy.conn();
        a.send(b"*2147483647\r\n");
        let mut b = proxy.conn();
        b.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$536870912\r\n");
        held.push(a);
        held.push(b);
    }
    for c in &mut held {
        c.expect_silence(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = proxy.rss_kib();
    assert!(
        after < before + 32 * 1024,
        "proxy RSS grew from {before} KiB to {after} KiB on declared lengths alone"
    );
    warm.call_expect(&["PING"], b"+PONG\r\n");
    drop(held);
    upstream.conn().call_expect(&["EXISTS", "k"], b":0\r\n");
}

/// E1: a client that pipelines big GETs and never reads is closed once its unread replies
/// pass `client_output_hard_limit`; it never holds the shared lane (another client on the
/// same single lane is served meanwhile) and the proxy's memory stays bounded.
#[test]
fn e1_slow_reader_is_closed_and_never_holds_the_lane() {
    const LIMIT: u64 = 4 * 1024 * 1024;
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .pool_size(1)
        .limit("client_output_hard_limit", LIMIT)
        .start();
    let value = "v".repeat(1024 * 1024);
    upstream
        .conn()
        .call_expect(&["SET", "big", &value], b"+OK\r\n");
    let mut other = proxy.conn();
    other.call_expect(&["SET", "small", "1"], b"+OK\r\n");
    let rss_before = proxy.rss_kib();

    let mut slow = proxy.conn();
    let pipeline: Vec<u8> = (0..64).flat_map(|_| resp(&["GET", "big"])).collect();
    slow.send(&pipeline);
    // The lane keeps serving the other client while the slow one does not read.
    for _ in 0..20 {
        other.call_expect(&["GET", "small"], b"$1\r\n1\r\n");
    }
    // The slow client is closed: what it can still read ends in EOF, well short of the
    // 64 MiB it asked for.
    let (got, eof) = slow.read_to_eof(Duration::from_secs(10));
    assert!(eof, "the slow client was not closed");
    assert!(
        got.len() < 32 * 1024 * 1024,
        "the slow client received {} bytes",
        got.len()
    );
    let rss_after = proxy.rss_kib();
    assert!(
        rss_after < rss_before + 48 * 1024,
        "proxy RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    other.call_expect(&["GET", "small"], b"$1\r\n1\r\n");
}

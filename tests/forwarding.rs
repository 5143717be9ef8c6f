//! Forwarding over the shared pool: per-client database isolation (C2), RESP2 and RESP3
//! clients side by side (C7), a long mixed pipeline diffed against bare Redis (C5), large
//! and binary values (E2), many concurrent clients, a half-closed pipeline (D8), and replies
//! written straight from a lane kept in order with local ones.

mod common;

use common::*;
use std::io::Write;
use std::time::Duration;

async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .unwrap_or_else(|_| panic!("connect to {url} timed out"))
    .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

async fn q<T: redis::FromRedisValue>(
    con: &mut redis::aio::MultiplexedConnection,
    cmd: &redis::Cmd,
) -> T {
    tokio::time::timeout(Duration::from_secs(10), cmd.query_async(con))
        .await
        .expect("command timed out")
        .unwrap_or_else(|e| {
            panic!(
                "{:?}: {e}",
                String::from_utf8_lossy(&cmd.get_packed_command())
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_isolation_over_a_small_pool() {
    const CLIENTS: u8 = 16;
    const ROUNDS: usize = 150;
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .pool_size(2)
        .start();

    let mut tasks = Vec::new();
    for db in 0..CLIENTS {
        let url = proxy.url(db);
        tasks.push(tokio::spawn(async move {
            let mut con = connect(&url).await;
            let mine = format!("db{db}");
            for i in 0..ROUNDS {
                let _: () = q(
                    &mut con,
                    redis::cmd("SET").arg(format!("own:{db}:{i}")).arg(&mine),
                )
                .await;
                // The same key name in every db: must always read our own value.
                let shared = format!("shared:{}", i % 10);
                let _: () = q(&mut con, redis::cmd("SET").arg(&shared).arg(&mine)).await;
                let got: String = q(&mut con, redis::cmd("GET").arg(&shared)).await;
                assert_eq!(got, mine, "client on db {db} read another db's value");
                let n: i64 = q(&mut con, redis::cmd("INCR").arg("ctr")).await;
                assert_eq!(n, i as i64 + 1, "client on db {db}: INCR ctr");
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(15), t)
            .await
            .expect("client task timed out")
            .expect("client task panicked");
    }

    // Check directly on the upstream: every key sits only in its owner's db.
    let mut d = upstream.conn();
    for db in 0..CLIENTS {
        d.call_expect(&["SELECT", &db.to_string()], b"+OK\r\n");
        d.call_expect(
            &["GET", "ctr"],
            bulk(ROUNDS.to_string().as_bytes()).as_slice(),
        );
        let keys = d.call(&["KEYS", "*"]);
        let text = String::from_utf8_lossy(&keys).into_owned();
        let mut own = 0;
        for line in text.split("\r\n") {
            if let Some(rest) = line.strip_prefix("own:") {
                let owner = rest.split(':').next().unwrap();
                assert_eq!(owner, db.to_string(), "db {db} holds {line}");
                own += 1;
            }
        }
        assert_eq!(own, ROUNDS, "db {db}: own keys");
        d.call_expect(&["DBSIZE"], format!(":{}\r\n", ROUNDS + 10 + 1).as_bytes());
        for i in 0..10 {
            d.call_expect(
                &["GET", &format!("shared:{i}")],
                bulk(format!("db{db}").as_bytes()).as_slice(),
            );
        }
    }
}

#[test]
fn resp3_and_resp2_clients_side_by_side() {
    let upstream = RedisServer::start();
    let bare = RedisServer::start();
    for s in [&upstream, &bare] {
        let mut d = s.conn();
        d.call_expect(&["HSET", "h", "f1", "v1", "f2", "v2"], b":2\r\n");
        d.call_expect(&["ZADD", "z", "1.5", "m"], b":1\r\n");
        d.call_expect(&["SADD", "set", "only"], b":1\r\n");
    }
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .pool_size(1)
        .start();

    let round = [
        resp(&["HGETALL", "h"]),
        resp(&["GET", "missing"]),
        resp(&["CLIENT", "GETNAME"]),
        resp(&["ZSCORE", "z", "m"]),
        resp(&["SMEMBERS", "set"]),
        resp(&["HGET", "h", "nofield"]),
        resp(&["EXISTS", "h"]),
    ];
    // Expected replies per protocol, taken from bare Redis.
    let mut want = Vec::new();
    for proto in ["2", "3"] {
        let mut c = bare.conn();
        if proto == "3" {
            c.send(&resp(&["HELLO", "3"]));
            let _ = c.read_reply();
        }
        let mut replies = Vec::new();
        for r in &round {
            c.send(r);
            replies.push(c.read_reply());
        }
        want.push(replies);
    }
    assert_eq!(
        &want[1][0][..4],
        b"%2\r\n",
        "harness: bare Redis RESP3 HGETALL"
    );
    assert_eq!(want[1][1], b"_\r\n");

    let mut c2 = proxy.conn();
    let mut c3 = proxy.conn();
    c3.send(&resp(&["HELLO", "3"]));
    let hello = c3.read_reply();
    assert!(
        hello.starts_with(b"%7\r\n"),
        "HELLO 3: \"{}\"",
        escape(&hello)
    );
    for n in 0..30 {
        // Both in flight at once, pipelined, over a single upstream connection.
        let all: Vec<u8> = round.concat();
        c3.send(&all);
        c2.send(&all);
        for (i, w) in want[0].iter().enumerate() {
            let got = c2.read_reply();
            assert_bytes_eq(&format!("RESP2 client, round {n}, reply {i}"), w, &got);
            assert!(
                !matches!(got.first(), Some(b'%' | b'_' | b'>' | b'~' | b',')),
                "RESP2 client got a RESP3 frame"
            );
        }
        for (i, w) in want[1].iter().enumerate() {
            let got = c3.read_reply();
            assert_bytes_eq(&format!("RESP3 client, round {n}, reply {i}"), w, &got);
        }
    }
}

/// Builds the C5 pipeline: (request bytes, number of requests, indices of HELLO 2).
fn mixed_pipeline(n: usize) -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::new();
    let mut hellos = Vec::new();
    let mut db = 0;
    for i in 0..n {
        let cmd: Vec<Vec<u8>> = match i % 16 {
            0 => vec![b"PING".to_vec()],
            1 => vec![b"ECHO".to_vec(), format!("e{i}").into_bytes()],
            2 => {
                db = (i / 16) % 4;
                vec![b"SELECT".to_vec(), db.to_string().into_bytes()]
            }
            3 => vec![b"CLIENT".to_vec(), b"GETNAME".to_vec()],
            4 => vec![
                b"SET".to_vec(),
                format!("k{}", i % 97).into_bytes(),
                format!("v{i}\r\n{db}").into_bytes(),
            ],
            5 => vec![b"GET".to_vec(), format!("k{}", (i + 13) % 97).into_bytes()],
            6 => vec![b"INCR".to_vec(), b"counter".to_vec()],
            7 => vec![b"GET".to_vec(), b"missing".to_vec()],
            8 => {
                if i % 160 == 8 {
                    hellos.push(i);
                    vec![b"HELLO".to_vec(), b"2".to_vec()]
                } else {
                    vec![b"PING".to_vec(), format!("p{i}").into_bytes()]
                }
            }
            9 => vec![
                b"CLIENT".to_vec(),
                b"SETNAME".to_vec(),
                format!("n{}", i % 5).into_bytes(),
            ],
            10 => vec![b"INCR".to_vec(), format!("k{}", i % 97).into_bytes()],
            11 => vec![
                b"RPUSH".to_vec(),
                b"list".to_vec(),
                format!("{i}").into_bytes(),
            ],
            12 => vec![
                b"LRANGE".to_vec(),
                b"list".to_vec(),
                b"-3".to_vec(),
                b"-1".to_vec(),
            ],
            13 => vec![b"SELECT".to_vec(), b"99".to_vec()],
            14 => vec![
                b"MGET".to_vec(),
                b"k1".to_vec(),
                b"missing".to_vec(),
                b"k2".to_vec(),
            ],
            _ => vec![b"DBSIZE".to_vec()],
        };
        out.extend_from_slice(&resp(&cmd));
    }
    (out, hellos)
}

/// Sends `input` in one write from a writer thread while reading `n` replies.
fn run_pipeline(port: u16, input: &[u8], n: usize) -> (i64, Vec<Vec<u8>>) {
    let mut c = RawConn::connect(port);
    c.timeout = Duration::from_secs(15);
    let id = int_reply(&c.call(&["CLIENT", "ID"]));
    let mut w = c.stream.try_clone().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || w.write_all(&data));
    let replies = c.read_replies(n);
    writer.join().unwrap().expect("pipeline write");
    (id, replies)
}

#[test]
fn c5_long_mixed_pipeline_matches_redis() {
    long_mixed_pipeline_matches_redis(0);
}

/// The same on tokio's current-thread scheduler (`[runtime] worker_threads = 1`).
#[test]
fn c5_long_mixed_pipeline_matches_redis_on_one_thread() {
    long_mixed_pipeline_matches_redis(1);
}

fn long_mixed_pipeline_matches_redis(worker_threads: usize) {
    const N: usize = 20_000;
    let upstream = RedisServer::start();
    let bare = RedisServer::start();
    let version_up = upstream.version();
    let version_bare = bare.version();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .pool_size(2)
        .worker_threads(worker_threads)
        .start();
    let (input, hellos) = mixed_pipeline(N);
    assert!(!hellos.is_empty());

    let (id_bare, want) = run_pipeline(bare.port(), &input, N);
    let (id_proxy, got) = run_pipeline(proxy.port(), &input, N);

    for i in 0..N {
        if hellos.contains(&i) {
            assert_bytes_eq(
                "bare HELLO 2",
                &hello_reply(2, &version_bare, id_bare),
                &want[i],
            );
            assert_bytes_eq(
                &format!("proxy HELLO 2 (request {i})"),
                &hello_reply(2, &version_up, id_proxy),
                &got[i],
            );
            continue;
        }
        if want[i] != got[i] {
            assert_bytes_eq(&format!("reply {i} of {N}"), &want[i], &got[i]);
        }
    }
}

#[test]
fn d8_pipeline_then_half_close() {
    const N: usize = 10_000;
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream).start();
    let mut c = proxy.conn();
    c.timeout = Duration::from_secs(10);
    let mut input = Vec::new();
    for i in 0..N {
        if i % 2 == 0 {
            input.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        } else {
            input.extend_from_slice(&resp(&["INCR", "d8"]));
        }
    }
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&input)?;
        w.shutdown(std::net::Shutdown::Write)
    });
    let mut incr = 0;
    for i in 0..N {
        let r = c.read_reply();
        if i % 2 == 0 {
            assert_bytes_eq(&format!("reply {i}"), b"+PONG\r\n", &r);
        } else {
            incr += 1;
            assert_bytes_eq(&format!("reply {i}"), format!(":{incr}\r\n").as_bytes(), &r);
        }
    }
    writer.join().unwrap().expect("write");
    c.expect_eof();
}

/// Replies the lane writes straight to the client come before whatever the ambassador
/// answers itself after them, even when the client's socket cannot take them at once: a
/// large value the client does not read yet, then local answers (CLIENT GETNAME, SELECT),
/// then more forwarded commands, all sent before a byte is read; then the client reads
/// slowly. Every reply arrives whole and in order.
#[test]
fn direct_replies_stay_in_order_with_local_ones_when_the_socket_is_full() {
    const SIZE: usize = 8 * 1024 * 1024;
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream).start();
    let mut c = proxy.conn();
    c.timeout = Duration::from_secs(20);
    let value = pseudo_random(SIZE, 7);
    let mut set = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${SIZE}\r\n").into_bytes();
    set.extend_from_slice(&value);
    set.extend_from_slice(b"\r\n");
    c.send(&set);
    c.expect(b"+OK\r\n");
    c.call_expect(&["CLIENT", "SETNAME", "reader"], b"+OK\r\n");
    c.call_expect(&["SET", "small", "s"], b"+OK\r\n");
    // Each in its own write, so that each is its own batch.
    let sends: [&[&str]; 6] = [
        &["GET", "big"],
        &["CLIENT", "GETNAME"],
        &["GET", "big"],
        &["SELECT", "0"],
        &["GET", "small"],
        &["STRLEN", "big"],
    ];
    for args in sends {
        c.send(&resp(args));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut want = Vec::new();
    let bulk = |v: &[u8]| {
        let mut b = format!("${}\r\n", v.len()).into_bytes();
        b.extend_from_slice(v);
        b.extend_from_slice(b"\r\n");
        b
    };
    want.extend(bulk(&value));
    want.extend(bulk(b"reader"));
    want.extend(bulk(&value));
    want.extend_from_slice(b"+OK\r\n");
    want.extend(bulk(b"s"));
    want.extend_from_slice(format!(":{SIZE}\r\n").as_bytes());
    let mut got = Vec::new();
    while got.len() < want.len() {
        let chunk = (want.len() - got.len()).min(256 * 1024);
        got.extend(c.read_exact_bytes(chunk));
    }
    assert!(got == want, "replies out of order or damaged");
    c.expect_silence(Duration::from_millis(50));
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    // Make sure the framing-sensitive bytes are present.
    for (i, b) in b"\0\r\n\r\n$-1\r\n*".iter().enumerate() {
        if i < v.len() {
            v[i] = *b;
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2_large_and_binary_values_round_trip() {
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream).start();
    let mut con = connect(&proxy.url(0)).await;
    let sizes = [
        0usize,
        1,
        2,
        32 * 1024 - 1,
        32 * 1024,
        32 * 1024 + 1,
        1 << 20,
        8 << 20,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let value = pseudo_random(size, 0x9e37_79b9_7f4a_7c15 + i as u64);
        let key = format!("big:{size}");
        let _: () = q(&mut con, redis::cmd("SET").arg(&key).arg(&value[..])).await;
        let back: Vec<u8> = q(&mut con, redis::cmd("GET").arg(&key)).await;
        assert!(
            back == value,
            "value of {size} bytes came back different ({} bytes)",
            back.len()
        );
        let len: usize = q(&mut con, redis::cmd("STRLEN").arg(&key)).await;
        assert_eq!(len, size);
    }
    let binary = b"a\0b\r\nc\r\n\r\n$3\r\n\0".to_vec();
    let _: () = q(
        &mut con,
        redis::cmd("SET").arg(&binary[..]).arg(&binary[..]),
    )
    .await;
    let back: Vec<u8> = q(&mut con, redis::cmd("GET").arg(&binary[..])).await;
    assert_eq!(back, binary);

    // Byte-exact on the wire too, and what the upstream stored is identical.
    let value = pseudo_random(8 << 20, 77);
    let mut c = proxy.conn();
    c.timeout = Duration::from_secs(15);
    c.send(&resp(&[b"SET".as_slice(), b"wire", &value]));
    c.expect(b"+OK\r\n");
    c.send(&resp(&["GET", "wire"]));
    c.expect(&bulk(&value));
    let mut d = upstream.conn();
    d.timeout = Duration::from_secs(15);
    d.send(&resp(&["GET", "wire"]));
    d.expect(&bulk(&value));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_clients() {
    const CLIENTS: usize = 200;
    const ROUNDS: usize = 25; // 2 commands per round
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream).start();
    let mut tasks = Vec::new();
    for n in 0..CLIENTS {
        let url = proxy.url(0);
        tasks.push(tokio::spawn(async move {
            let mut con = connect(&url).await;
            for i in 0..ROUNDS {
                let key = format!("c{n}:{}", i % 5);
                let val = format!("{n}-{i}");
                let _: () = q(&mut con, redis::cmd("SET").arg(&key).arg(&val)).await;
                let got: String = q(&mut con, redis::cmd("GET").arg(&key)).await;
                assert_eq!(got, val, "client {n} round {i}");
            }
            let _: i64 = q(&mut con, redis::cmd("INCR").arg("total")).await;
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(15), t)
            .await
            .expect("client task timed out")
            .expect("client task panicked");
    }
    upstream.conn().call_expect(
        &["GET", "total"],
        bulk(CLIENTS.to_string().as_bytes()).as_slice(),
    );
}

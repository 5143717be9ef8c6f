//! Pub/Sub through the proxy (issue 3; TEST-CATALOGUE C6): SUBSCRIBE, PSUBSCRIBE and
//! SSUBSCRIBE in RESP2 (Redis's subscribed-mode command set and PING form) and in RESP3
//! (push frames interleaved with replies), 10 000 messages in order and byte-identical to
//! what a direct subscriber receives, a subscriber that stops reading (disconnected at
//! the output limit, proxy memory bounded), and RESET/QUIT while subscribed leaving a
//! clean connection for the next client.

mod common;

use common::script::*;
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

// ---------------------------------------------------------------------------
// Pub/Sub frames (the script runner is in common::script)
// ---------------------------------------------------------------------------

/// A pub/sub message frame as Redis sends it (`*` in RESP2, `>` in RESP3).
fn message(kind: u8, channel: &str, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(b"3\r\n");
    f.extend_from_slice(&bulk(b"message"));
    f.extend_from_slice(&bulk(channel.as_bytes()));
    f.extend_from_slice(&bulk(payload));
    f
}

fn pmessage(kind: u8, pattern: &str, channel: &str, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(b"4\r\n");
    f.extend_from_slice(&bulk(b"pmessage"));
    f.extend_from_slice(&bulk(pattern.as_bytes()));
    f.extend_from_slice(&bulk(channel.as_bytes()));
    f.extend_from_slice(&bulk(payload));
    f
}

/// PUBSUB NUMSUB for one channel, on the Redis on `port`.
fn numsub(port: u16, channel: &str) -> Vec<u8> {
    RawConn::connect(port).call(&["PUBSUB", "NUMSUB", channel])
}

fn numsub_reply(channel: &str, n: u64) -> Vec<u8> {
    let mut f = b"*2\r\n".to_vec();
    f.extend_from_slice(&bulk(channel.as_bytes()));
    f.extend_from_slice(format!(":{n}\r\n").as_bytes());
    f
}

// ---------------------------------------------------------------------------
// RESP2
// ---------------------------------------------------------------------------

#[test]
fn resp2_ten_thousand_messages_match_a_direct_subscriber() {
    let up = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&up).pool_size(1).start();
    let mut direct = up.conn();
    let mut via = proxy.conn();
    direct.timeout = Duration::from_secs(15);
    via.timeout = Duration::from_secs(15);
    let sub = cmds(&[&["SUBSCRIBE", "c"], &["PSUBSCRIBE", "p*"]]);
    direct.send(&sub);
    let want = direct.read_replies(2).concat();
    via.send(&sub);
    via.expect(&want);
    assert_bytes_eq(
        "SUBSCRIBE c; PSUBSCRIBE p*",
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n*3\r\n$10\r\npsubscribe\r\n$2\r\np*\r\n:2\r\n",
        &want,
    );
    // 10 000 publishes: the first half straight to Redis, the second through the proxy.
    let publish = |i: usize| {
        if i % 2 == 0 {
            resp(&["PUBLISH", "c", &format!("m{i}")])
        } else {
            resp(&["PUBLISH", &format!("p{}", i % 7), &format!("m{i}")])
        }
    };
    let mut p_direct = up.conn();
    let input: Vec<u8> = (0..5000).flat_map(publish).collect();
    p_direct.send(&input);
    p_direct.expect(&b":2\r\n".repeat(5000));
    let mut p_proxy = proxy.conn();
    let input: Vec<u8> = (5000..10_000).flat_map(publish).collect();
    p_proxy.send(&input);
    p_proxy.expect(&b":2\r\n".repeat(5000));
    // What the direct subscriber got, in order.
    let mut expected = Vec::new();
    for i in 0..10_000 {
        let payload = format!("m{i}");
        if i % 2 == 0 {
            expected.extend_from_slice(&message(b'*', "c", payload.as_bytes()));
        } else {
            let ch = format!("p{}", i % 7);
            expected.extend_from_slice(&pmessage(b'*', "p*", &ch, payload.as_bytes()));
        }
    }
    let got_direct = direct.read_exact_bytes(expected.len());
    assert_bytes_eq("direct subscriber", &expected, &got_direct);
    via.expect(&got_direct);
    // PING in subscribed mode.
    for input in [resp(&["PING"]), resp(&["PING", "hello"])] {
        direct.send(&input);
        let want = direct.read_reply();
        via.send(&input);
        via.expect(&want);
    }
    via.call_expect(&["PING"], b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    via.expect_silence(Duration::from_millis(100));
}

#[test]
fn resp2_subscribed_mode_command_set_matches_redis() {
    let (bare, up, proxy) = setup(1, Some(1));
    let steps = [
        send(0, &[&["SET", "x", "1"]], 1),
        send(0, &[&["SUBSCRIBE", "c"], &["PSUBSCRIBE", "p*"]], 2),
        send(0, &[&["PING"], &["PING", "x"]], 2),
        send(0, &[&["GET", "x"]], 1),
        send(0, &[&["SELECT", "1"]], 1),
        send(0, &[&["CLIENT", "SETNAME", "n"]], 1),
        send(0, &[&["CLIENT", "GETNAME"], &["CLIENT", "ID"]], 2),
        send(0, &[&["ECHO", "e"]], 1),
        send(0, &[&["AUTH", "x"]], 1),
        send(0, &[&["HELLO", "2"]], 1),
        send(0, &[&["MULTI"], &["EXEC"], &["WATCH", "x"]], 3),
        send(0, &[&["BLPOP", "l", "0"], &["MONITOR"]], 2),
        // Everything in one write, mixed with allowed commands and a message.
        send(1, &[&["PUBLISH", "c", "hi"]], 1),
        send(
            0,
            &[
                &["GET", "x"],
                &["SUBSCRIBE", "d"],
                &["SELECT", "2"],
                &["PING"],
            ],
            5,
        ),
        send(1, &[&["PUBLISH", "d", "m1"], &["PUBLISH", "pz", "m2"]], 2),
        send(0, &[], 2),
        // Unsubscribe everything: back to normal on the same client.
        send(0, &[&["UNSUBSCRIBE", "c"]], 1),
        send(0, &[&["GET", "x"]], 1),
        send(0, &[&["UNSUBSCRIBE"]], 1),
        send(0, &[&["PUNSUBSCRIBE"]], 1),
        send(0, &[&["GET", "x"], &["CLIENT", "GETNAME"], &["PING"]], 3),
        send(
            0,
            &[
                &["SELECT", "2"],
                &["SET", "k", "v"],
                &["GET", "k"],
                &["GET", "x"],
            ],
            4,
        ),
        send(0, &[&["UNSUBSCRIBE"], &["PUNSUBSCRIBE"]], 2),
        send(0, &[&["SELECT", "0"], &["GET", "k"], &["GET", "x"]], 3),
        send(1, &[&["PUBLISH", "c", "gone"]], 1),
    ];
    let t = diff_script(&bare, &up, &proxy, &[Via::Main, Via::Direct], &steps);
    assert_bytes_eq(
        "PING subscribed",
        b"*2\r\n$4\r\npong\r\n$0\r\n\r\n*2\r\n$4\r\npong\r\n$1\r\nx\r\n",
        &t[2],
    );
    let ctx = |name: &str| {
        format!(
            "-ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"
        )
    };
    assert_bytes_eq("GET subscribed", ctx("get").as_bytes(), &t[3]);
    assert_bytes_eq("SELECT subscribed", ctx("select").as_bytes(), &t[4]);
    assert_bytes_eq(
        "SETNAME subscribed",
        ctx("client|setname").as_bytes(),
        &t[5],
    );
    assert_bytes_eq(
        "SELECT 2 + SET + GET after unsubscribing",
        b"+OK\r\n+OK\r\n$1\r\nv\r\n$-1\r\n",
        &t[21],
    );
    assert_bytes_eq("no subscriber left", b":0\r\n", &t[24]);
}

#[test]
fn resp2_subscribed_mode_checks_arity_before_context_like_redis() {
    // Redis checks unknown command and arity before the subscribed-mode rule.
    let (bare, up, proxy) = setup(1, Some(1));
    let steps = [
        send(0, &[&["SUBSCRIBE", "c"]], 1),
        send(0, &[&["GET"], &["FOO"], &["PING", "a", "b"]], 3),
        send(0, &[&["SELECT"]], 1),
        send(0, &[&["CLIENT", "SETNAME"], &["CLIENT", "FOO"]], 2),
        send(0, &[&["AUTH"], &["ECHO"]], 2),
        send(0, &[&["UNSUBSCRIBE"], &["SELECT"], &["GET", "x"]], 3),
    ];
    let t = diff_script(&bare, &up, &proxy, &[Via::Main], &steps);
    assert_bytes_eq(
        "SELECT arity while subscribed",
        b"-ERR wrong number of arguments for 'select' command\r\n",
        &t[2],
    );
}

#[test]
fn ssubscribe_matches_redis() {
    let (bare, up, proxy) = setup(1, Some(1));
    let steps = [
        send(0, &[&["SSUBSCRIBE", "s1", "s2"]], 2),
        send(0, &[&["GET", "x"], &["PING"]], 2),
        send(1, &[&["SPUBLISH", "s1", "m"]], 1),
        send(0, &[], 1),
        send(0, &[&["SUNSUBSCRIBE", "s1"]], 1),
        send(0, &[&["SUNSUBSCRIBE"]], 1),
        send(0, &[&["GET", "x"], &["SET", "x", "1"], &["GET", "x"]], 3),
        send(1, &[&["SPUBLISH", "s2", "gone"]], 1),
    ];
    let t = diff_script(&bare, &up, &proxy, &[Via::Main, Via::Direct], &steps);
    assert_bytes_eq("after SUNSUBSCRIBE", b"$-1\r\n+OK\r\n$1\r\n1\r\n", &t[6]);
}

// ---------------------------------------------------------------------------
// RESP3
// ---------------------------------------------------------------------------

#[test]
fn resp3_pushes_interleave_with_replies_like_redis() {
    let (bare, up, proxy) = setup(1, Some(1));
    let steps = [
        hello3(0),
        send(0, &[&["SUBSCRIBE", "c"]], 1),
        send(1, &[&["PUBLISH", "c", "m1"]], 1),
        send(0, &[], 1),
        send(
            0,
            &[&["SET", "k", "v"], &["GET", "k"], &["GET", "nokey"]],
            3,
        ),
        send(1, &[&["PUBLISH", "c", "m2"]], 1),
        // The push was sent before the GET's reply.
        send(0, &[&["GET", "k"]], 2),
        send(0, &[&["PING"], &["PING", "x"], &["ECHO", "e"]], 3),
        // Local commands are allowed in RESP3 subscribed mode.
        send(
            0,
            &[
                &["CLIENT", "SETNAME", "n"],
                &["SELECT", "1"],
                &["CLIENT", "GETNAME"],
                &["SET", "k1", "in1"],
            ],
            4,
        ),
        send(1, &[&["PUBLISH", "c", "m3"], &["PUBLISH", "c", "m4"]], 2),
        send(0, &[&["GET", "k1"]], 3),
        send(0, &[&["SUBSCRIBE", "d"], &["PSUBSCRIBE", "x*"]], 2),
        send(1, &[&["PUBLISH", "xa", "m5"], &["PUBLISH", "d", "m6"]], 2),
        send(0, &[], 2),
        // A transaction while subscribed (RESP3).
        send(0, &[&["MULTI"], &["GET", "k1"], &["EXEC"]], 3),
        send(0, &[&["UNSUBSCRIBE", "c", "d"]], 2),
        send(0, &[&["PUNSUBSCRIBE"]], 1),
        send(0, &[&["GET", "k1"], &["SELECT", "0"], &["GET", "k"]], 3),
        send(1, &[&["PUBLISH", "c", "gone"]], 1),
        send(0, &[&["CLIENT", "GETNAME"], &["PING"]], 2),
    ];
    let t = diff_script(&bare, &up, &proxy, &[Via::Main, Via::Direct], &steps);
    let mut want = message(b'>', "c", b"m2");
    want.extend_from_slice(b"$1\r\nv\r\n");
    assert_bytes_eq("push before the GET reply", &want, &t[6]);
}

#[test]
fn resp3_ten_thousand_messages_in_order_with_replies() {
    let up = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&up).pool_size(1).start();
    let mut via = proxy.conn();
    let mut direct = up.conn();
    via.timeout = Duration::from_secs(15);
    direct.timeout = Duration::from_secs(15);
    for c in [&mut via, &mut direct] {
        c.send(&resp(&["HELLO", "3"]));
        assert!(c.read_reply().starts_with(b"%7\r\n"));
        c.call_expect(&["SET", "k", "v"], b"+OK\r\n");
        c.call_expect(
            &["SUBSCRIBE", "c"],
            b">3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n",
        );
    }
    // The publisher pipelines 10 000 messages while the subscriber sends 200 GETs.
    let port = up.port();
    let publisher = thread::spawn(move || {
        let mut p = RawConn::connect(port);
        p.timeout = Duration::from_secs(15);
        let input: Vec<u8> = (0..10_000)
            .flat_map(|i| resp(&["PUBLISH", "c", &format!("m{i}")]))
            .collect();
        p.send(&input);
        p.expect(&b":2\r\n".repeat(10_000));
    });
    for _ in 0..200 {
        via.send(&resp(&["GET", "k"]));
    }
    publisher.join().unwrap();
    let mut pushes = Vec::new();
    let mut replies = 0;
    while pushes.len() < 10_000 || replies < 200 {
        let f = via.read_reply();
        if f.starts_with(b">") {
            pushes.push(f);
        } else {
            assert_bytes_eq(&format!("GET reply {replies}"), b"$1\r\nv\r\n", &f);
            replies += 1;
        }
    }
    for (i, p) in pushes.iter().enumerate() {
        assert_bytes_eq(
            &format!("push {i}"),
            &message(b'>', "c", format!("m{i}").as_bytes()),
            p,
        );
    }
    // Byte-identical to the direct RESP3 subscriber's stream.
    let direct_stream = direct.read_replies(10_000).concat();
    assert_bytes_eq("direct RESP3 subscriber", &direct_stream, &pushes.concat());
    via.call_expect(
        &["UNSUBSCRIBE"],
        b">3\r\n$11\r\nunsubscribe\r\n$1\r\nc\r\n:0\r\n",
    );
    via.call_expect(&["GET", "k"], b"$1\r\nv\r\n");
    via.expect_silence(Duration::from_millis(100));
}

// ---------------------------------------------------------------------------
// A subscriber that does not read
// ---------------------------------------------------------------------------

#[test]
fn slow_subscriber_is_disconnected_and_memory_stays_bounded() {
    const HARD: u64 = 4 * 1024 * 1024;
    const MESSAGE: usize = 64 * 1024;
    const MESSAGES: usize = 1024; // 64 MiB in all
    let up = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&up)
        .pool_size(1)
        .configure(|c| {
            c.limits.pubsub_output_hard_limit = Some(HARD);
            c.limits.pubsub_output_soft_limit = Some(2 * 1024 * 1024);
        })
        .start();
    // A subscriber that reads everything, and one that never reads.
    let mut reader = proxy.conn();
    reader.timeout = Duration::from_secs(15);
    reader.call_expect(
        &["SUBSCRIBE", "big"],
        b"*3\r\n$9\r\nsubscribe\r\n$3\r\nbig\r\n:1\r\n",
    );
    let mut slow = proxy.conn();
    slow.call_expect(
        &["SUBSCRIBE", "big"],
        b"*3\r\n$9\r\nsubscribe\r\n$3\r\nbig\r\n:1\r\n",
    );
    let mut other = proxy.conn();
    other.call_expect(&["SET", "k", "v"], b"+OK\r\n");
    let baseline = proxy.rss_kib();

    // Sample the proxy's RSS while the messages flow.
    let sampler = RssSampler::start(proxy.pid(), baseline);
    // The reader reads in its own thread; the publisher never runs more than 1 MiB ahead
    // of it, so only the slow subscriber can reach the limit.
    let read_count = Arc::new(AtomicU64::new(0));
    let reader_thread = spawn_reader(reader, read_count.clone(), MESSAGES, MESSAGE);
    let port = up.port();
    let mut publisher = RawConn::connect(port);
    publisher.timeout = Duration::from_secs(15);
    let payload = "x".repeat(MESSAGE);
    const BATCH: usize = 16; // 1 MiB
    let input: Vec<u8> = (0..BATCH)
        .flat_map(|_| resp(&["PUBLISH", "big", &payload]))
        .collect();
    for b in 1..=(MESSAGES / BATCH) {
        publisher.send(&input);
        for _ in 0..BATCH {
            let n = int_reply(&publisher.read_reply());
            assert!((1..=2).contains(&n), "PUBLISH reached {n} subscribers");
        }
        // Other clients keep working meanwhile.
        other.call_expect(&["GET", "k"], b"$1\r\nv\r\n");
        let published = (b * BATCH) as u64;
        assert!(
            wait_until(Duration::from_secs(10), || read_count
                .load(Ordering::Relaxed)
                >= published),
            "the reading subscriber is stuck at {} of {published} messages",
            read_count.load(Ordering::Relaxed)
        );
    }
    // Kept open: its subscription must outlive the slow one's.
    let mut reader = reader_thread
        .join()
        .expect("the reading subscriber lost or mangled messages");
    // The slow subscriber is disconnected: it finds what the kernel held, then EOF.
    slow.timeout = Duration::from_secs(10);
    let (got, eof) = slow.read_to_eof(Duration::from_secs(10));
    let peak = sampler.stop();
    assert!(
        eof,
        "the slow subscriber was not disconnected ({} bytes received)",
        got.len()
    );
    assert!(
        got.len() < MESSAGES * MESSAGE,
        "the slow subscriber received everything ({} bytes): no limit applied",
        got.len()
    );
    let grew = peak.saturating_sub(baseline);
    assert!(
        grew < HARD / 1024 + 24 * 1024,
        "proxy RSS grew by {grew} KiB (baseline {baseline} KiB) with pubsub_output_hard_limit = {HARD}: the output buffer is not bounded by the configured limit"
    );
    // Its subscription is gone upstream; the proxy and other clients work.
    assert!(
        wait_until(Duration::from_secs(5), || numsub(port, "big")
            == numsub_reply("big", 1)),
        "the slow subscriber's upstream subscription is still there: {}",
        escape(&numsub(port, "big"))
    );
    other.call_expect(&["GET", "k"], b"$1\r\nv\r\n");
    reader.call_expect(
        &["UNSUBSCRIBE"],
        b"*3\r\n$11\r\nunsubscribe\r\n$3\r\nbig\r\n:0\r\n",
    );
    reader.call_expect(&["GET", "k"], b"$1\r\nv\r\n");
    let mut fresh = proxy.conn();
    fresh.call_expect(&["PING"], b"+PONG\r\n");
    fresh.call_expect(
        &["SUBSCRIBE", "c2"],
        b"*3\r\n$9\r\nsubscribe\r\n$2\r\nc2\r\n:1\r\n",
    );
}

/// Reads `messages` messages of `len` bytes on channel `big` with `reader`, counting them
/// in `read_count`, then checks it still answers PING; returns it.
fn spawn_reader(
    mut reader: RawConn,
    read_count: Arc<AtomicU64>,
    messages: usize,
    len: usize,
) -> thread::JoinHandle<RawConn> {
    thread::spawn(move || {
        let payload = vec![b'x'; len];
        let one = message(b'*', "big", &payload);
        for i in 0..messages {
            let f = reader.read_reply();
            assert!(f == one, "reader: message {i} differs");
            read_count.fetch_add(1, Ordering::Relaxed);
        }
        reader.call_expect(&["PING"], b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
        reader
    })
}

/// The peak RSS of a process, sampled every 5 ms in a thread of its own.
struct RssSampler {
    peak: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: thread::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32, baseline: u64) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(baseline));
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, done) = (peak.clone(), done.clone());
            thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                        if let Some(kib) = status
                            .lines()
                            .find_map(|l| l.strip_prefix("VmRSS:"))
                            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                        {
                            peak.fetch_max(kib, Ordering::Relaxed);
                        }
                    }
                    thread::sleep(Duration::from_millis(5));
                }
            })
        };
        RssSampler { peak, done, thread }
    }

    /// Stops sampling; the peak in KiB.
    fn stop(self) -> u64 {
        self.done.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.peak.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------
// RESET and QUIT while subscribed
// ---------------------------------------------------------------------------

#[test]
fn reset_while_subscribed_matches_redis_and_leaves_a_clean_connection() {
    let (bare, up, proxy) = setup(1, Some(1));
    let steps = [
        send(0, &[&["SET", "x", "1"], &["SELECT", "2"]], 2),
        send(0, &[&["SUBSCRIBE", "c"], &["PSUBSCRIBE", "p*"]], 2),
        send(0, &[&["RESET"]], 1),
        send(0, &[&["PING"], &["GET", "x"], &["EXEC"]], 3),
        send(1, &[&["PUBLISH", "c", "m"], &["PUBLISH", "pa", "m"]], 2),
        // RESET while subscribed, pipelined with what follows.
        send(
            0,
            &[&["SUBSCRIBE", "c"], &["RESET"], &["PING"], &["GET", "x"]],
            4,
        ),
        // RESP3: RESET returns the client to RESP2.
        hello3(0),
        send(0, &[&["SUBSCRIBE", "c"], &["GET", "nokey"]], 2),
        send(
            0,
            &[&["RESET"], &["GET", "nokey"], &["CLIENT", "GETNAME"]],
            3,
        ),
        send(1, &[&["PUBLISH", "c", "m"]], 1),
        // The other proxy client (max_pinned 1) subscribes on a clean connection.
        send(2, &[&["SUBSCRIBE", "d"]], 1),
        send(2, &[&["UNSUBSCRIBE"], &["GET", "x"]], 2),
    ];
    let t = diff_script(
        &bare,
        &up,
        &proxy,
        &[Via::Main, Via::Direct, Via::Main],
        &steps,
    );
    assert_bytes_eq("RESET", b"+RESET\r\n", &t[2]);
    assert_bytes_eq(
        "after RESET",
        b"+PONG\r\n$1\r\n1\r\n-ERR EXEC without MULTI\r\n",
        &t[3],
    );
    assert_bytes_eq("no subscribers", b":0\r\n:0\r\n", &t[4]);
    assert_bytes_eq("RESP3 RESET", b"+RESET\r\n$-1\r\n$-1\r\n", &t[8]);
    assert_bytes_eq(
        "next subscriber",
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\nd\r\n:1\r\n",
        &t[10],
    );
}

#[test]
fn quit_while_subscribed_matches_redis_and_releases_the_connection() {
    let (bare, up, proxy) = setup(1, Some(1));
    let input = cmds(&[&["SUBSCRIBE", "c"], &["QUIT"], &["GET", "x"]]);
    let got = diff_closing(bare.port(), proxy.port(), &input);
    assert_bytes_eq(
        "SUBSCRIBE; QUIT",
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n+OK\r\n",
        &got,
    );
    // RESP3 too (HELLO's reply carries the id: compare what follows it).
    let input = cmds(&[&["HELLO", "3"], &["SUBSCRIBE", "c"], &["QUIT"]]);
    let (want, _) = exchange_to_eof(bare.port(), &input, Duration::from_secs(5));
    let (got, eof) = exchange_to_eof(proxy.port(), &input, Duration::from_secs(5));
    assert!(eof, "proxy did not close after QUIT: \"{}\"", escape(&got));
    let tail = |b: &[u8]| b[frame_len(b).expect("HELLO reply")..].to_vec();
    assert_bytes_eq("RESP3 SUBSCRIBE; QUIT", &tail(&want), &tail(&got));
    // The subscriptions are gone upstream, and the next client (max_pinned 1) is clean.
    assert!(
        wait_until(Duration::from_secs(5), || numsub(up.port(), "c")
            == numsub_reply("c", 0)),
        "a subscription outlived its QUIT: {}",
        escape(&numsub(up.port(), "c"))
    );
    let mut next = proxy.conn();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = next.call(&["SUBSCRIBE", "d"]);
        if r.starts_with(b"-ERR") && String::from_utf8_lossy(&r).contains("max_pinned") {
            assert!(
                std::time::Instant::now() < deadline,
                "pin not freed after QUIT"
            );
            thread::sleep(Duration::from_millis(50));
            continue;
        }
        assert_bytes_eq(
            "next subscriber",
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\nd\r\n:1\r\n",
            &r,
        );
        break;
    }
    RawConn::connect(up.port()).call_expect(&["PUBLISH", "c", "m"], b":0\r\n");
    next.call_expect(
        &["UNSUBSCRIBE"],
        b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nd\r\n:0\r\n",
    );
    next.call_expect(&["GET", "x"], b"$-1\r\n");
}

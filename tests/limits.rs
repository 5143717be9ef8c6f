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
        .configure(|c| c.limits.query_buffer_limit = Some(1024 * 1024))
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
        .configure(|c| c.limits.max_bulk_len = Some(1024 * 1024))
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
        .configure(|c| c.limits.unauthenticated_query_buffer_limit = Some(65536))
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
        .configure(|c| c.limits.client_output_hard_limit = Some(LIMIT))
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

/// `[limits] max_in_flight`: a pipeline far longer than the cap is read and forwarded a few
/// requests at a time, and every reply still comes back in its place — local ones, forwarded
/// ones, and the SELECTs woven in for a client on another database.
#[test]
fn max_in_flight_splits_a_pipeline_without_moving_a_reply() {
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .pool_size(1)
        .configure(|c| c.limits.max_in_flight = Some(3))
        .start();
    let mut other = proxy.conn();
    let mut c = proxy.conn();
    c.call_expect(&["SELECT", "2"], b"+OK\r\n");
    let mut input = Vec::new();
    let mut expected = Vec::new();
    for i in 0..3000 {
        let value = format!("v{i}");
        let key = format!("k{}", i % 7);
        input.extend_from_slice(&resp(&["SET", &key, &value]));
        expected.extend_from_slice(b"+OK\r\n");
        input.extend_from_slice(&resp(&["ECHO", &format!("e{i}")]));
        expected.extend_from_slice(&bulk(format!("e{i}").as_bytes()));
        input.extend_from_slice(&resp(&["GET", &key]));
        expected.extend_from_slice(&bulk(value.as_bytes()));
        input.extend_from_slice(&resp(&["INCR", "counter"]));
        expected.extend_from_slice(format!(":{}\r\n", i + 1).as_bytes());
        if i % 100 == 0 {
            // Another client on db 0 shares the one lane meanwhile.
            other.call_expect(&["SET", "k0", "db0"], b"+OK\r\n");
        }
    }
    c.send(&input);
    let got = c.read_exact_bytes(expected.len());
    assert_bytes_eq("pipeline through max_in_flight = 3", &expected, &got);
    // Nothing leaked across databases.
    let mut direct = upstream.conn();
    direct.call_expect(&["GET", "k0"], b"$3\r\ndb0\r\n");
    direct.call_expect(&["SELECT", "2"], b"+OK\r\n");
    direct.call_expect(&["GET", "counter"], b"$4\r\n3000\r\n");
}

fn connected_clients(port: u16) -> Option<u64> {
    let mut c = RawConn::try_connect(port)?;
    c.send(&resp(&["AUTH", "storm-pw"]));
    c.try_read_reply(Duration::from_secs(2))?;
    c.send(&resp(&["INFO", "clients"]));
    let info = c.try_read_reply(Duration::from_secs(2))?;
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:")?.trim().parse().ok())
}

/// The most connect rounds that fit in `downtime` when every wait is as short as the
/// jitter allows (half of `base · 2^(round-1)`, capped at `max`), plus the round in progress
/// when the upstream came back.
fn max_rounds(downtime: Duration, base: Duration, max: Duration) -> u32 {
    let mut elapsed = Duration::ZERO;
    let mut rounds = 0;
    while elapsed <= downtime {
        rounds += 1;
        let full = base.saturating_mul(1 << (rounds - 1).min(16)).min(max);
        elapsed += full / 2;
    }
    rounds + 1
}

/// TEST-CATALOGUE E5, bounded for CI: a storm of short-lived clients (each connects, SETs
/// and GETs its own key, and leaves) from four threads, with the upstream killed and
/// restarted in the middle. The proxy stays up, never holds more upstream connections than
/// its lanes (plus the readiness prober), redials a dead upstream with a doubling backoff
/// instead of once per client, and every reply a client got is its own.
#[test]
fn e5_connection_storm_with_an_upstream_restart() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const THREADS: usize = 4;
    const PER_THREAD: usize = 400;
    const LANES: u32 = 2;
    let base = Duration::from_millis(40);
    let max = Duration::from_millis(320);
    let mut upstream = RedisServer::with_password("storm-pw");
    let mut proxy = AmbassadorBuilder::for_server(&upstream)
        .pool_size(LANES)
        .connect_timeout_ms(1000)
        .reconnect_backoff_ms(base.as_millis() as u64)
        .reconnect_backoff_max_ms(max.as_millis() as u64)
        .start();
    proxy.conn().call_expect(&["PING"], b"+PONG\r\n");
    let fds_before = proxy_fds(&proxy);

    let done = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let port = proxy.port();
    let workers = spawn_storm(port, THREADS, PER_THREAD, &done, &errors);

    // While the storm runs, the upstream never sees more than the lanes, the prober's
    // connection and this sampler's own.
    let sampler = spawn_client_sampler(upstream.port(), stop_sampling.clone());

    let total = THREADS * PER_THREAD;
    assert!(
        wait_until(Duration::from_secs(60), || done.load(Ordering::Relaxed)
            >= total / 3),
        "the storm made no progress"
    );
    let failures_before = scraped_value(
        &proxy.scrape(),
        "redis_ambassador_upstream_connect_failures_total{reason=\"unavailable\"}",
    );
    let down = std::time::Instant::now();
    upstream.kill();
    std::thread::sleep(Duration::from_millis(600));
    upstream.restart();
    let downtime = down.elapsed();
    for w in workers {
        w.join().expect("a storm thread failed");
    }
    stop_sampling.store(true, Ordering::Relaxed);
    let most = sampler.join().expect("sampler");

    assert!(proxy.is_running(), "the proxy died in the storm");
    let mut after = proxy.conn();
    assert!(
        wait_until(Duration::from_secs(5), || after
            .call(&["SET", "after", "1"])
            == b"+OK\r\n"),
        "no recovery after the restart"
    );
    assert!(
        most <= u64::from(LANES) + 2,
        "the upstream saw {most} clients at once; lanes: {LANES}"
    );
    let failed_connects = scraped_value(
        &proxy.scrape(),
        "redis_ambassador_upstream_connect_failures_total{reason=\"unavailable\"}",
    ) - failures_before;
    // Each round is tried by at most the lanes and the prober; the rounds' waits double.
    let bound = f64::from((LANES + 2) * max_rounds(downtime, base, max));
    let errors = errors.load(Ordering::Relaxed);
    eprintln!(
        "storm: {total} clients, {errors} saw an error, {failed_connects} failed connects \
         in {downtime:?} of downtime (bound {bound}), most upstream clients {most}"
    );
    assert!(failed_connects >= 1.0, "the restart was not noticed");
    assert!(
        failed_connects <= bound,
        "{failed_connects} failed connects in {downtime:?}: more than the backoff allows ({bound})"
    );
    assert!(errors < total, "every client failed");
    drop(after);
    let log = proxy.log();
    assert!(!log.contains("accept failed"), "accept errors:\n{log}");
    // The storm's sockets are all closed again.
    assert!(
        wait_until(Duration::from_secs(5), || proxy_fds(&proxy)
            <= fds_before + 2),
        "fds: {} before, {} after",
        fds_before,
        proxy_fds(&proxy)
    );
}

/// The storm of `e5_connection_storm_with_an_upstream_restart`: `threads` threads, each
/// running `per_thread` short-lived clients (connect, SET and GET an own key, leave)
/// against the proxy on `port`, counting clients in `done` and those that saw an error
/// in `errors`.
fn spawn_storm(
    port: u16,
    threads: usize,
    per_thread: usize,
    done: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
    errors: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<std::thread::JoinHandle<()>> {
    use std::sync::atomic::Ordering;

    (0..threads)
        .map(|t| {
            let (done, errors) = (done.clone(), errors.clone());
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let key = format!("storm:{t}:{i}");
                    let value = format!("{t}-{i}");
                    let mut c = RawConn::connect(port);
                    let set = c.call(&["SET", &key, &value]);
                    let get = c.call(&["GET", &key]);
                    let set_ok = match &set[..] {
                        b"+OK\r\n" => true,
                        r if r.starts_with(b"-ERR upstream ") => false,
                        r => panic!("SET {key}: unexpected reply \"{}\"", escape(r)),
                    };
                    let own = bulk(value.as_bytes());
                    // The value written, or an error; a miss only when the SET failed or
                    // the restart lost it. Never somebody else's value.
                    assert!(
                        get == own || get.starts_with(b"-ERR upstream ") || (get == b"$-1\r\n"),
                        "GET {key} (SET ok: {set_ok}): \"{}\"",
                        escape(&get)
                    );
                    if !set_ok || get != own {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect()
}

/// Samples the upstream's `connected_clients` every 20 ms until `stop`; the most seen.
fn spawn_client_sampler(
    upstream_port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    use std::sync::atomic::Ordering;

    std::thread::spawn(move || {
        let mut most = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Some(n) = connected_clients(upstream_port) {
                most = most.max(n);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        most
    })
}

fn proxy_fds(proxy: &Ambassador) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", proxy.pid()))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A large value passes through without its buffers staying behind: after GETs of a 64 MiB
/// value (and the value's SET), the proxy's RSS is back near where it started, while the
/// client connection stays open.
#[test]
fn buffers_shrink_back_after_a_large_value() {
    const SIZE: usize = 64 * 1024 * 1024;
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .pool_size(1)
        .start();
    let mut c = proxy.conn();
    c.timeout = Duration::from_secs(30);
    c.call_expect(&["PING"], b"+PONG\r\n");
    let before = proxy.rss_kib();
    let value = vec![b'v'; SIZE];
    let mut set = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${SIZE}\r\n").into_bytes();
    set.extend_from_slice(&value);
    set.extend_from_slice(b"\r\n");
    c.send(&set);
    c.expect(b"+OK\r\n");
    let header = format!("${SIZE}\r\n");
    for _ in 0..3 {
        c.send(&resp(&["GET", "big"]));
        let got = c.read_exact_bytes(header.len() + SIZE + 2);
        assert!(got.starts_with(header.as_bytes()) && got.ends_with(b"v\r\n"));
    }
    c.call_expect(&["PING"], b"+PONG\r\n");
    let after = proxy.rss_kib();
    eprintln!("RSS {before} KiB before, {after} KiB after 64 MiB through");
    assert!(
        after < before + (SIZE as u64 / 1024) / 2,
        "RSS {before} KiB before, {after} KiB after: a 64 MiB buffer stayed behind"
    );
}

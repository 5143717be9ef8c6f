//! Upstream faults (TEST-CATALOGUE D1–D5): unreachable upstream, wrong upstream
//! credentials, an upstream killed and restarted (with requests in flight and with idle
//! pooled connections), a stalled upstream and a connection lost mid-request. Every
//! failure is a prompt `-ERR …` in request order; nothing hangs; no secret leaks.

mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

/// Sends one request and returns (reply, elapsed).
fn timed_call(c: &mut RawConn, args: &[&str]) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let r = c.call(args);
    (r, started.elapsed())
}

#[track_caller]
fn assert_err_prefix(reply: &[u8], prefix: &str) {
    assert!(
        reply.starts_with(prefix.as_bytes())
            && reply.ends_with(b"\r\n")
            && reply.iter().filter(|&&b| b == b'\n').count() == 1,
        "expected \"{prefix}…\", got \"{}\"",
        escape(reply)
    );
}

/// Two commands the ambassador answers itself (PING and ECHO go to Redis): a marker whose
/// replies come back in their place whatever the upstream does.
fn local_marker(marker: &str) -> (Vec<u8>, Vec<u8>) {
    let mut input = resp(&["CLIENT", "SETNAME", marker]);
    input.extend_from_slice(&resp(&["CLIENT", "GETNAME"]));
    let mut expected = b"+OK\r\n".to_vec();
    expected.extend_from_slice(&bulk(marker.as_bytes()));
    (input, expected)
}

#[test]
fn upstream_unreachable_fails_fast() {
    let dead = closed_port();
    let proxy = AmbassadorBuilder::new(&format!("127.0.0.1:{dead}"))
        .pool_wait_timeout_ms(60_000)
        .connect_timeout_ms(2000)
        .reconnect_backoff_ms(250)
        .start();
    let mut c = proxy.conn();
    for _ in 0..3 {
        // No timing threshold: a proxy that waited out the 60 s pool timeout would hit
        // the client's read timeout first and fail the read instead.
        let r = c.call(&["GET", "k"]);
        assert_err_prefix(&r, "-ERR upstream unavailable: ");
        thread::sleep(Duration::from_millis(300)); // past the backoff: a real redial
    }
    // Pipelined: errors in place, local replies in theirs.
    let (marker, expected) = local_marker("marker");
    let mut input = resp(&["GET", "a"]);
    input.extend_from_slice(&resp(&["CLIENT", "SETNAME", "n"]));
    input.extend_from_slice(&resp(&["SET", "b", "1"]));
    input.extend_from_slice(&marker);
    input.extend_from_slice(&resp(&["PING"]));
    c.send(&input);
    assert_err_prefix(&c.read_reply(), "-ERR upstream unavailable: ");
    c.expect(b"+OK\r\n");
    assert_err_prefix(&c.read_reply(), "-ERR upstream unavailable: ");
    c.expect(&expected);
    // PING goes to Redis: it does not say PONG while Redis is unreachable.
    assert_err_prefix(&c.read_reply(), "-ERR upstream unavailable: ");
}

fn wrong_credentials_case(upstream: &RedisServer, proxy: &Ambassador, secrets: &[&str]) {
    let mut c = proxy.conn();
    for _ in 0..3 {
        // A wait for the 60 s pool timeout would fail the read instead.
        let r = c.call(&["GET", "k"]);
        assert_err_prefix(&r, "-ERR upstream authentication failed: ");
        for s in secrets {
            assert!(
                !String::from_utf8_lossy(&r).contains(s),
                "a password appears in the reply \"{}\"",
                escape(&r)
            );
        }
    }
    c.call_expect(&["CLIENT", "SETNAME", "n"], b"+OK\r\n");
    drop(c);
    thread::sleep(Duration::from_millis(200));
    let log = proxy.log();
    for s in secrets {
        assert!(!log.contains(s), "a password appears in the proxy log");
    }
    assert!(
        log.to_lowercase()
            .contains("upstream authentication failed"),
        "the log does not say \"upstream authentication failed\":\n{log}"
    );
    // The upstream itself is fine.
    upstream.conn().call_expect(&["PING"], b"+PONG\r\n");
}

#[test]
fn wrong_upstream_password() {
    let right = "Right-Upstream-Pw-1187";
    let wrong = "Wr0ng-Upstream-Secret-5521";
    let upstream = RedisServer::with_password(right);
    let proxy = AmbassadorBuilder::new(&upstream.addr())
        .upstream_password(wrong.as_bytes())
        .pool_wait_timeout_ms(60_000)
        .log_level("trace")
        .start();
    wrong_credentials_case(&upstream, &proxy, &[right, wrong]);
}

#[test]
fn wrong_upstream_acl_password() {
    let right = "Right-Acl-Pw-2291";
    let wrong = "Wr0ng-Acl-Secret-7730";
    let upstream = RedisServer::with_acl_user("app", right);
    let proxy = AmbassadorBuilder::new(&upstream.addr())
        .upstream_username("app")
        .upstream_password(wrong.as_bytes())
        .pool_wait_timeout_ms(60_000)
        .log_level("trace")
        .start();
    wrong_credentials_case(&upstream, &proxy, &[right, wrong]);
}

#[test]
fn upstream_killed_and_restarted() {
    let mut upstream = RedisServer::with_password("restart-pw");
    let mut proxy = AmbassadorBuilder::for_server(&upstream)
        .pool_size(2)
        .connect_timeout_ms(1000)
        .command_timeout_ms(3000)
        .reconnect_backoff_ms(100)
        .start();
    let mut c = proxy.conn();
    c.timeout = Duration::from_secs(4);
    c.call_expect(&["SET", "k", "1"], b"+OK\r\n");

    upstream.kill();
    for i in 0..4 {
        let marker = format!("m{i}");
        let (local, expected) = local_marker(&marker);
        let mut input = resp(&["GET", "k"]);
        input.extend_from_slice(&local);
        input.extend_from_slice(&resp(&["SET", "x", "1"]));
        input.extend_from_slice(&resp(&["CLIENT", "SETNAME", "n"]));
        c.send(&input);
        assert_err_prefix(&c.read_reply(), "-ERR ");
        c.expect(&expected);
        assert_err_prefix(&c.read_reply(), "-ERR ");
        c.expect(b"+OK\r\n");
        thread::sleep(Duration::from_millis(150));
    }

    upstream.restart();
    // Service resumes without restarting the proxy. Until then, only -ERR replies.
    let mut recovered = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let r = c.call(&["SET", "back", "1"]);
        if r == b"+OK\r\n" {
            recovered = true;
            break;
        }
        assert_err_prefix(&r, "-ERR ");
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        recovered,
        "no successful command within 5 s of the upstream restart"
    );
    c.call_expect(&["GET", "back"], b"$1\r\n1\r\n");
    c.call_expect(&["GET", "k"], b"$-1\r\n"); // data was lost with the restart
    let mut fresh = proxy.conn();
    fresh.call_expect(&["INCR", "back"], b":2\r\n");
    assert!(proxy.is_running());
    upstream
        .conn()
        .call_expect(&["GET", "back"], b"$1\r\n2\r\n");
}

#[test]
fn d1_kill_with_requests_in_flight_keeps_replies_in_order() {
    let mut upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .pool_size(2)
        .connect_timeout_ms(1000)
        .command_timeout_ms(3000)
        .reconnect_backoff_ms(100)
        .start();
    let port = proxy.port();
    let stop_at = Instant::now() + Duration::from_millis(3000);
    let mut workers = Vec::new();
    for n in 0..4 {
        workers.push(thread::spawn(move || {
            let mut c = RawConn::connect(port);
            c.timeout = Duration::from_secs(5);
            let (mut ok, mut err, mut ok_after) = (0u32, 0u32, 0u32);
            let mut seq = 0u64;
            while Instant::now() < stop_at {
                seq += 1;
                let marker = format!("t{n}-{seq}");
                let (local, expected) = local_marker(&marker);
                let mut input = resp(&["INCR", "ctr"]);
                input.extend_from_slice(&local);
                c.send(&input);
                let r = c.read_reply();
                if r.starts_with(b":") {
                    ok += 1;
                    if Instant::now() + Duration::from_millis(700) > stop_at {
                        ok_after += 1;
                    }
                } else {
                    assert_err_prefix(&r, "-ERR ");
                    err += 1;
                }
                c.expect(&expected);
            }
            (ok, err, ok_after)
        }));
    }
    thread::sleep(Duration::from_millis(600));
    upstream.kill();
    thread::sleep(Duration::from_millis(600));
    upstream.restart();
    let mut total_err = 0;
    for w in workers {
        let (ok, err, ok_after) = w.join().expect("worker panicked");
        assert!(ok > 0, "a worker never succeeded");
        assert!(ok_after > 0, "a worker did not recover after the restart");
        total_err += err;
    }
    assert!(
        total_err > 0,
        "no request failed while the upstream was down"
    );
}

#[test]
fn d2_idle_pool_connections_after_upstream_restart() {
    let mut upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .pool_size(2)
        .start();
    let mut a = proxy.conn();
    let mut b = proxy.conn();
    // Use the pool from two clients at once so both connections exist.
    for _ in 0..20 {
        let many: Vec<u8> = (0..50)
            .flat_map(|i| resp(&["SET", "warm", &i.to_string()]))
            .collect();
        a.send(&many);
        b.send(&many);
        for _ in 0..50 {
            a.expect(b"+OK\r\n");
            b.expect(b"+OK\r\n");
        }
    }
    upstream.kill();
    upstream.restart();
    thread::sleep(Duration::from_millis(100));
    // The very first commands succeed: dead idle connections are replaced before use.
    a.call_expect(&["SET", "k", "v"], b"+OK\r\n");
    b.call_expect(&["GET", "k"], b"$1\r\nv\r\n");
    let both: Vec<u8> = [resp(&["INCR", "n"]), resp(&["INCR", "n"])].concat();
    a.send(&both);
    b.send(&both);
    let mut seen: Vec<i64> = Vec::new();
    for _ in 0..2 {
        seen.push(int_reply(&a.read_reply()));
        seen.push(int_reply(&b.read_reply()));
    }
    seen.sort();
    assert_eq!(seen, vec![1, 2, 3, 4]);
}

#[test]
fn d3_stalled_upstream_times_out_and_never_shifts_replies() {
    let upstream = RedisServer::start();
    upstream.conn().call_expect(&["SET", "a", "va"], b"+OK\r\n");
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .command_timeout_ms(1000)
        .start();
    let mut c = proxy.conn();
    c.timeout = Duration::from_secs(5);
    c.call_expect(&["GET", "a"], b"$2\r\nva\r\n");
    let (r, took) = timed_call(&mut c, &["DEBUG", "SLEEP", "1.6"]);
    assert_err_prefix(&r, "-ERR upstream timed out");
    // Only the deterministic bound: the timer cannot fire before 1 s. (DEBUG SLEEP's own
    // "+OK" after 1.6 s would have failed the error check above.)
    assert!(
        took >= Duration::from_millis(800),
        "timed out after only {took:?}"
    );
    // Never the late "+OK" of DEBUG SLEEP.
    for _ in 0..5 {
        c.call_expect(&["GET", "a"], b"$2\r\nva\r\n");
    }
    let mut other = proxy.conn();
    other.call_expect(&["GET", "a"], b"$2\r\nva\r\n");
}

#[test]
fn upstream_connection_lost_mid_request() {
    let mut upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .command_timeout_ms(10000)
        .reconnect_backoff_ms(100)
        .start();
    let mut c = proxy.conn();
    c.call_expect(&["PING"], b"+PONG\r\n");
    c.call_expect(&["SET", "x", "1"], b"+OK\r\n");
    c.send(&resp(&["DEBUG", "SLEEP", "5"]));
    let (local, expected) = local_marker("after");
    c.send(&local);
    thread::sleep(Duration::from_millis(300));
    upstream.kill();
    c.timeout = Duration::from_secs(3);
    assert_err_prefix(&c.read_reply(), "-ERR upstream connection lost");
    c.expect(&expected);
    upstream.restart();
    assert!(
        wait_until(Duration::from_secs(5), || c.call(&["SET", "x", "2"])
            == b"+OK\r\n"),
        "no recovery after restart"
    );
}

/// D6, as this design answers it: blocking commands hold dedicated connections, never the
/// shared ones, so two clients in `BLPOP … 0` do not keep a third client's GET waiting;
/// the cap on dedicated connections refuses the next blocking command at once.
#[test]
fn d6_blocked_clients_do_not_exhaust_the_shared_pool() {
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .pool_size(2)
        .max_pinned(2)
        .pool_wait_timeout_ms(60_000)
        .start();
    let mut c = proxy.conn();
    c.call_expect(&["SET", "k", "v"], b"+OK\r\n");
    let mut a = proxy.conn();
    let mut b = proxy.conn();
    a.send(&resp(&["BLPOP", "wait:a", "0"]));
    b.send(&resp(&["BLPOP", "wait:b", "0"]));
    // Both are blocked upstream once Redis counts them.
    let mut direct = upstream.conn();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let info = direct.call(&["INFO", "clients"]);
            String::from_utf8_lossy(&info).contains("blocked_clients:2")
        }),
        "the two BLPOPs never blocked upstream"
    );
    // The shared path is free: a wait for the 60 s pool timeout would fail the read.
    c.call_expect(&["GET", "k"], b"$1\r\nv\r\n");
    // The dedicated connections are all taken: refused at once, connection still usable.
    let r = c.call(&["BLPOP", "wait:c", "0"]);
    assert_err_prefix(&r, "-ERR upstream pool exhausted");
    c.call_expect(&["GET", "k"], b"$1\r\nv\r\n");
    // Released by their pushes, the blocked clients get their values.
    direct.call_expect(&["LPUSH", "wait:a", "x"], b":1\r\n");
    direct.call_expect(&["LPUSH", "wait:b", "y"], b":1\r\n");
    a.expect(b"*2\r\n$6\r\nwait:a\r\n$1\r\nx\r\n");
    b.expect(b"*2\r\n$6\r\nwait:b\r\n$1\r\ny\r\n");
    direct.call_expect(&["LPUSH", "wait:c", "z"], b":1\r\n");
    c.call_expect(
        &["BLPOP", "wait:c", "0"],
        b"*2\r\n$6\r\nwait:c\r\n$1\r\nz\r\n",
    );
}

#[test]
fn d9_half_sent_request_is_never_forwarded() {
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .pool_size(1)
        .start();
    let mut c = proxy.conn();
    let mut partial = b"*3\r\n$3\r\nSET\r\n$4\r\nhalf\r\n$1048576\r\n".to_vec();
    partial.extend(std::iter::repeat_n(b'h', 512 * 1024));
    c.send(&partial);
    thread::sleep(Duration::from_millis(200));
    drop(c);
    thread::sleep(Duration::from_millis(200));
    upstream.conn().call_expect(&["EXISTS", "half"], b":0\r\n");
    // The single pooled connection is clean for the next client.
    let mut next = proxy.conn();
    next.call_expect(&["PING", "x"], b"$1\r\nx\r\n");
    next.call_expect(&["SET", "whole", "1"], b"+OK\r\n");
    next.call_expect(&["GET", "whole"], b"$1\r\n1\r\n");
    upstream.conn().call_expect(&["EXISTS", "half"], b":0\r\n");
}

/// WAIT through the ambassador waits for the client's own writes, as on one connection:
/// with the replica stopped, `SET` then `WAIT 1 300` (one round trip each) answers `:0`,
/// and `:1` once the replica runs again. (WAIT runs on a dedicated connection that wrote
/// nothing; without the ambassador's fence before it, it answered `:1` at once.)
#[test]
fn wait_counts_replicas_that_have_the_clients_writes() {
    let master = RedisServer::start();
    let replicaof = format!("replicaof 127.0.0.1 {}", master.port());
    let replica = RedisServer::start_with(ServerAuth::None, &[&replicaof]);
    let mut probe = replica.conn();
    let synced = wait_until(Duration::from_secs(30), || {
        String::from_utf8_lossy(&probe.call(&["INFO", "replication"]))
            .contains("master_link_status:up")
    });
    assert!(synced, "the replica never synced:\n{}", replica.log());
    let proxy = AmbassadorBuilder::for_server(&master).start();
    let mut direct = master.conn();
    let mut c = proxy.conn();
    replica.signal("STOP");
    // Redis itself, then the ambassador: the same answers.
    for conn in [&mut direct, &mut c] {
        conn.call_expect(&["SET", "k", "v"], b"+OK\r\n");
        conn.call_expect(&["WAIT", "1", "300"], b":0\r\n");
    }
    replica.signal("CONT");
    for conn in [&mut direct, &mut c] {
        conn.call_expect(&["WAIT", "1", "10000"], b":1\r\n");
    }
}

/// A client that sends EXEC and a blocking command and leaves at once: whether or not the
/// batch got to run, no connection goes back to the pool with the transaction still open
/// (the client's EOF could win the race against the batch's first step, leaving the
/// dedicated connection unarmed, MULTI open, EXEC never written; found by the session
/// fuzz target).
#[test]
fn a_client_leaving_before_its_exec_leaves_no_transaction_open_upstream() {
    let server = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&server).start();
    for _ in 0..30 {
        let mut c = proxy.conn();
        c.call_expect(&["MULTI"], b"+OK\r\n");
        c.call_expect(&["INCR", "n"], b"+QUEUED\r\n");
        let mut bytes = resp(&["EXEC"]);
        bytes.extend(resp(&["BLPOP", "nothing", "0"]));
        c.send(&bytes);
        drop(c);
    }
    // Redis's own view: no connection is left inside MULTI (`multi=-1` is "not in one").
    let mut admin = server.conn();
    let mut last = String::new();
    let settled = wait_until(Duration::from_secs(10), || {
        last = String::from_utf8_lossy(&admin.call(&["CLIENT", "LIST"])).into_owned();
        !last
            .lines()
            .any(|l| l.contains(" multi=") && !l.contains(" multi=-1 "))
    });
    assert!(settled, "a connection is still inside MULTI:\n{last}");
    // And the next client's transaction is its own.
    let mut d = proxy.conn();
    d.call_expect(&["MULTI"], b"+OK\r\n");
    d.call_expect(&["PING"], b"+QUEUED\r\n");
    d.call_expect(&["EXEC"], b"*1\r\n+PONG\r\n");
}

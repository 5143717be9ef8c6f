//! A fake upstream that sends malformed or hostile replies (TEST-CATALOGUE D7), and one
//! that accepts TCP but never answers (D4, blackholed). The proxy must fail the request
//! with `-ERR upstream …` promptly, keep its memory bounded, stay up, and serve the next
//! request on a fresh connection.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Splits a multibulk request into its arguments.
fn parse_request(frame: &[u8]) -> Vec<Vec<u8>> {
    let mut args = Vec::new();
    let mut pos = frame.iter().position(|&b| b == b'\n').unwrap() + 1;
    while pos < frame.len() {
        let nl = pos + frame[pos..].iter().position(|&b| b == b'\n').unwrap();
        let len: usize = std::str::from_utf8(&frame[pos + 1..nl - 1])
            .unwrap()
            .parse()
            .unwrap();
        args.push(frame[nl + 1..nl + 1 + len].to_vec());
        pos = nl + 1 + len + 2;
    }
    args
}

fn fake_reply(args: &[Vec<u8>]) -> Vec<u8> {
    let name = String::from_utf8_lossy(&args[0]).to_uppercase();
    let arg1 = args.get(1).map(|a| a.as_slice()).unwrap_or(b"");
    match name.as_str() {
        "AUTH" | "SELECT" | "CLIENT" => b"+OK\r\n".to_vec(),
        "PING" => b"+PONG\r\n".to_vec(),
        "HELLO" => hello_reply(if arg1 == b"3" { 3 } else { 2 }, "7.0.15", 1),
        "CONFIG" => resp(&["databases", "16"]),
        "INFO" => bulk(b"# Server\r\nredis_version:7.0.15\r\n"),
        "GET" => match arg1 {
            b"garbage" => b"?garbage\r\n\x00\x01".to_vec(),
            b"nocrlf" => b"+OK".to_vec(),
            b"deep" => b"*1\r\n".repeat(100_000),
            b"hugebulk" => b"$2147483648\r\nabc".to_vec(),
            b"hugearray" => b"*2147483647\r\n".to_vec(),
            _ => bulk(b"ok"),
        },
        _ => b"+OK\r\n".to_vec(),
    }
}

fn serve(mut s: TcpStream, stop: Arc<AtomicBool>) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue;
            }
            Err(_) => return,
        }
        while let Some(n) = frame_len(&buf) {
            let frame: Vec<u8> = buf.drain(..n).collect();
            let reply = fake_reply(&parse_request(&frame));
            if s.write_all(&reply).is_err() {
                return;
            }
        }
    }
}

/// A fake Redis on a free port; answers the proxy's handshake, then misbehaves on
/// `GET <case>`. With `silent`, it accepts connections and never answers anything.
struct FakeUpstream {
    port: u16,
    stop: Arc<AtomicBool>,
    _listener_thread: thread::JoinHandle<()>,
}

impl FakeUpstream {
    fn start(silent: bool) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let t = thread::spawn(move || {
            let mut held = Vec::new();
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        if silent {
                            held.push(s);
                        } else {
                            let st2 = st.clone();
                            thread::spawn(move || serve(s, st2));
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeUpstream {
            port,
            stop,
            _listener_thread: t,
        }
    }
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[track_caller]
fn assert_upstream_err(reply: &[u8]) {
    assert!(
        reply.starts_with(b"-ERR upstream ")
            && reply.ends_with(b"\r\n")
            && reply.iter().filter(|&&b| b == b'\n').count() == 1,
        "expected \"-ERR upstream …\", got \"{}\"",
        escape(reply)
    );
}

#[test]
fn fake_upstream_answers_good_requests() {
    // Harness check: the fake is good enough for the proxy's handshake.
    let fake = FakeUpstream::start(false);
    let proxy = AmbassadorBuilder::new(&fake.addr()).start();
    let mut c = proxy.conn();
    c.call_expect(&["GET", "fine"], b"$2\r\nok\r\n");
    c.call_expect(&["SET", "a", "b"], b"+OK\r\n");
}

#[test]
fn d7_malformed_replies_fail_the_request_only() {
    let fake = FakeUpstream::start(false);
    let mut proxy = AmbassadorBuilder::new(&fake.addr())
        .pool_size(2)
        .command_timeout_ms(1000)
        // "deep" is refused by the depth limit (by default far above what Redis makes).
        .configure(|c| c.limits.max_reply_depth = Some(128))
        .start();
    let mut c = proxy.conn();
    c.call_expect(&["GET", "fine"], b"$2\r\nok\r\n");
    let rss_before = proxy.rss_kib();
    for case in ["garbage", "nocrlf", "deep", "hugebulk", "hugearray"] {
        // Behind it, commands the ambassador answers itself (PING and ECHO go to Redis).
        c.send(&resp(&["GET", case]));
        c.send(&resp(&["CLIENT", "SETNAME", case]));
        c.send(&resp(&["CLIENT", "GETNAME"]));
        c.timeout = Duration::from_secs(4);
        let r = c.read_reply();
        assert_upstream_err(&r);
        c.expect(b"+OK\r\n");
        c.expect(&bulk(case.as_bytes()));
        // The next request runs on a healthy connection.
        c.call_expect(&["GET", "fine"], b"$2\r\nok\r\n");
        assert!(proxy.is_running(), "proxy died on {case}");
    }
    let rss_after = proxy.rss_kib();
    assert!(
        rss_after < rss_before + 32 * 1024,
        "proxy RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    let mut other = proxy.conn();
    other.call_expect(&["GET", "fine"], b"$2\r\nok\r\n");
}

#[test]
fn d4_blackholed_upstream_fails_within_connect_timeout() {
    let fake = FakeUpstream::start(true);
    let proxy = AmbassadorBuilder::new(&fake.addr())
        .connect_timeout_ms(500)
        .pool_wait_timeout_ms(60_000)
        .command_timeout_ms(10000)
        .start();
    let mut c = proxy.conn();
    let started = Instant::now();
    let r = c.call(&["GET", "k"]);
    let took = started.elapsed();
    assert!(
        r.starts_with(b"-ERR upstream unavailable"),
        "got \"{}\"",
        escape(&r)
    );
    // Only the deterministic bound (the connect timer cannot fire before 500 ms); waiting
    // for the 10 s command or 60 s pool timeout would fail the read instead.
    assert!(took >= Duration::from_millis(400), "took only {took:?}");
    c.call_expect(&["CLIENT", "SETNAME", "still-usable"], b"+OK\r\n");
}

//! Protocol handling: malformed requests (TEST-CATALOGUE A1–A3, A6–A8, A10–A12) and
//! inline commands, diffed byte for byte against bare Redis. Each protocol error closes
//! only the offending connection.

mod common;

use common::*;
use std::time::Duration;

struct Pair {
    bare: RedisServer,
    upstream: RedisServer,
    proxy: Ambassador,
}

fn pair() -> Pair {
    let bare = RedisServer::start();
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream).start();
    Pair {
        bare,
        upstream,
        proxy,
    }
}

/// Diffs a closing exchange and checks that a connection opened before it still works.
#[track_caller]
fn closing_case(p: &Pair, input: &[u8], expected: &[u8]) {
    let mut bystander = p.proxy.conn();
    bystander.call_expect(&["PING"], b"+PONG\r\n");
    let got = diff_closing(p.bare.port(), p.proxy.port(), input);
    assert_bytes_eq(
        &format!("reply to \"{}\"", escape_short(input, 100)),
        expected,
        &got,
    );
    bystander.call_expect(&["ECHO", "still-here"], b"$10\r\nstill-here\r\n");
}

const BAD_MBULK: &[u8] = b"-ERR Protocol error: invalid multibulk length\r\n";
const BAD_BULK: &[u8] = b"-ERR Protocol error: invalid bulk length\r\n";

#[test]
fn a1_invalid_multibulk_length() {
    let p = pair();
    for input in [
        &b"*3000000000\r\n"[..],
        b"*2147483648\r\n",
        b"*03\r\n",
        b"*+1\r\n",
        b"*abc\r\n",
    ] {
        closing_case(&p, input, BAD_MBULK);
    }
}

#[test]
fn a2_expected_dollar() {
    let p = pair();
    closing_case(
        &p,
        b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n",
        b"-ERR Protocol error: expected '$', got 'f'\r\n",
    );
    // Nothing half-applied.
    p.proxy.conn().call_expect(&["GET", "x"], b"$-1\r\n");
    p.upstream.conn().call_expect(&["EXISTS", "x"], b":0\r\n");
    closing_case(
        &p,
        b"*1\r\nfoo\r\n",
        b"-ERR Protocol error: expected '$', got 'f'\r\n",
    );
    // Nested arrays are not requests (A4).
    closing_case(
        &p,
        b"*1\r\n*1\r\n$4\r\nPING\r\n",
        b"-ERR Protocol error: expected '$', got '*'\r\n",
    );
}

#[test]
fn a3_invalid_bulk_length() {
    let p = pair();
    for bad in [&b"$-10"[..], b"$blabla", b"$536870913"] {
        let mut input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n".to_vec();
        input.extend_from_slice(bad);
        input.extend_from_slice(b"\r\n");
        closing_case(&p, &input, BAD_BULK);
    }
    p.upstream.conn().call_expect(&["EXISTS", "k"], b":0\r\n");
}

#[test]
fn a6_oversized_lines() {
    let p = pair();
    let inline = vec![b'a'; 70_000];
    closing_case(
        &p,
        &inline,
        b"-ERR Protocol error: too big inline request\r\n",
    );
    let mut mbulk = b"*".to_vec();
    mbulk.extend(std::iter::repeat_n(b'1', 70_000));
    closing_case(
        &p,
        &mbulk,
        b"-ERR Protocol error: too big mbulk count string\r\n",
    );
    let mut bulk_count = b"*1\r\n$".to_vec();
    bulk_count.extend(std::iter::repeat_n(b'1', 70_000));
    closing_case(
        &p,
        &bulk_count,
        b"-ERR Protocol error: too big bulk count string\r\n",
    );
}

#[test]
fn a7_inline_quotes_and_escapes() {
    let p = pair();
    closing_case(
        &p,
        b"set \"\"\"k\"\"\" v\r\nping\r\n",
        b"-ERR Protocol error: unbalanced quotes in request\r\n",
    );
    closing_case(
        &p,
        b"ECHO \"fo\"o\r\n",
        b"-ERR Protocol error: unbalanced quotes in request\r\n",
    );
    let mut r = p.bare.conn();
    let mut c = p.proxy.conn();
    let got = diff_open(&mut r, &mut c, b"GET \"x\\x4\"\r\n");
    assert_bytes_eq("GET \"x\\x4\"", b"$-1\r\n", &got);
    let got = diff_open(&mut r, &mut c, b"PING \"ax\\xff\"\r\n");
    assert_bytes_eq("PING \"ax\\xff\"", b"$3\r\nax\xff\r\n", &got);
    let got = diff_open(&mut r, &mut c, b"ECHO \"x\\x4\"\r\n");
    assert_bytes_eq("ECHO \"x\\x4\"", b"$3\r\nxx4\r\n", &got);
}

#[test]
fn inline_commands_match_redis() {
    let p = pair();
    let mut r = p.bare.conn();
    let mut c = p.proxy.conn();
    let cases: &[(&[u8], &[u8])] = &[
        (b"PING\r\n", b"+PONG\r\n"),
        (b"SET k \"a b\"\r\n", b"+OK\r\n"),
        (b"GET k\r\n", b"$3\r\na b\r\n"),
        (b"ECHO \"x\\x4\"\r\n", b"$3\r\nxx4\r\n"),
        (b"ping\n", b"+PONG\r\n"),
        (b"  SET   k2   'single quoted'  \r\n", b"+OK\r\n"),
        (b"GET k2\r\n", b"$13\r\nsingle quoted\r\n"),
        (b"INCR n\r\nINCR n\r\nGET n\r\n", b":1\r\n:2\r\n$1\r\n2\r\n"),
        (b"ECHO \"tab\\there\"\r\n", b"$8\r\ntab\there\r\n"),
        (
            b"SELECT 2\r\nSET k three\r\nSELECT 0\r\nGET k\r\n",
            b"+OK\r\n+OK\r\n+OK\r\n$3\r\na b\r\n",
        ),
    ];
    for (input, expected) in cases {
        let got = diff_open(&mut r, &mut c, input);
        assert_bytes_eq(&format!("inline \"{}\"", escape(input)), expected, &got);
    }
    p.upstream
        .conn()
        .call_expect(&["GET", "k"], b"$3\r\na b\r\n");
}

#[test]
fn a8_ignored_frames() {
    let p = pair();
    let mut r = p.bare.conn();
    let mut c = p.proxy.conn();
    for input in [
        &b"\r\n*1\r\n$4\r\nPING\r\n"[..],
        b"*0\r\n*1\r\n$4\r\nPING\r\n",
        b"*-10\r\n*1\r\n$4\r\nPING\r\n",
    ] {
        let got = diff_open(&mut r, &mut c, input);
        assert_bytes_eq(
            &format!("ignored frame in \"{}\"", escape(input)),
            b"+PONG\r\n",
            &got,
        );
    }
    c.call_expect(&["PING"], b"+PONG\r\n");
}

#[test]
fn a10_replies_before_the_error_are_flushed() {
    let p = pair();
    closing_case(
        &p,
        b"*1\r\n$4\r\nPING\r\n*abc\r\n*1\r\n$4\r\nPING\r\n",
        b"+PONG\r\n-ERR Protocol error: invalid multibulk length\r\n",
    );
    // With forwarded commands: the first runs, the one after the error never does.
    let mut input = resp(&["SET", "a10", "1"]);
    input.extend_from_slice(b"*abc\r\n");
    input.extend_from_slice(&resp(&["SET", "a10", "2"]));
    closing_case(&p, &input, &[b"+OK\r\n".as_slice(), BAD_MBULK].concat());
    p.upstream
        .conn()
        .call_expect(&["GET", "a10"], b"$1\r\n1\r\n");
    p.bare.conn().call_expect(&["GET", "a10"], b"$1\r\n1\r\n");
}

#[test]
fn a11_http_request_closes_without_reply() {
    let p = pair();
    let sets_before = p.upstream.command_calls("set");
    closing_case(&p, b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", b"");
    closing_case(&p, b"Host: x\r\n\r\n", b"");
    // A SET smuggled after the HTTP header is never run.
    closing_case(
        &p,
        b"POST / HTTP/1.1\r\nHost: x\r\n\r\n*3\r\n$3\r\nSET\r\n$4\r\nhttp\r\n$1\r\n1\r\n",
        b"",
    );
    assert_eq!(p.upstream.command_calls("set"), sets_before);
}

#[test]
fn a12_missing_crlf_after_bulk_is_a_protocol_error() {
    // The one intended divergence: Redis accepts any two bytes, the proxy wants CRLF.
    let p = pair();
    let mut bystander = p.proxy.conn();
    // TIME, not PING: the readiness prober PINGs the upstream every second.
    let times_before = p.upstream.command_calls("time");
    let mut c = p.proxy.conn();
    c.send(b"*1\r\n$4\r\nTIMEXY");
    let (got, eof) = c.read_to_eof(Duration::from_secs(5));
    assert!(
        got.starts_with(b"-ERR Protocol error: ") && got.ends_with(b"\r\n"),
        "expected a protocol error, got \"{}\"",
        escape(&got)
    );
    assert_eq!(
        got.iter().filter(|&&b| b == b'\n').count(),
        1,
        "exactly one reply expected, got \"{}\"",
        escape(&got)
    );
    assert!(eof, "connection not closed after \"{}\"", escape(&got));
    assert_eq!(p.upstream.command_calls("time"), times_before);
    // Same with a forwarded command.
    let mut c = p.proxy.conn();
    c.send(b"*3\r\n$3\r\nSET\r\n$3\r\ncrl\r\n$1\r\n1XY*1\r\n$4\r\nPING\r\n");
    let (got, eof) = c.read_to_eof(Duration::from_secs(5));
    assert!(
        got.starts_with(b"-ERR Protocol error: ") && eof,
        "got \"{}\" eof={eof}",
        escape(&got)
    );
    p.upstream.conn().call_expect(&["EXISTS", "crl"], b":0\r\n");
    bystander.call_expect(&["PING"], b"+PONG\r\n");
}

#[test]
fn split_writes_give_identical_replies() {
    // A9 (bounded): a small pipeline sent one byte per write, and split at every offset
    // into two writes, gives the same bytes as the unsplit run.
    let p = pair();
    let mut input = resp(&["SET", "split", "v\r\n1"]);
    input.extend_from_slice(&resp(&["GET", "split"]));
    input.extend_from_slice(b"ECHO \"a b\"\r\n");
    input.extend_from_slice(&resp(&["SELECT", "1"]));
    input.extend_from_slice(&resp(&["CLIENT", "GETNAME"]));
    input.extend_from_slice(&resp(&["PING"]));
    let expected: &[u8] = b"+OK\r\n$4\r\nv\r\n1\r\n$3\r\na b\r\n+OK\r\n$-1\r\n+PONG\r\n";
    let mut c = p.proxy.conn();
    for b in &input {
        c.send(std::slice::from_ref(b));
    }
    c.expect(expected);
    for cut in 1..input.len() {
        let mut c = p.proxy.conn();
        c.send(&input[..cut]);
        std::thread::sleep(Duration::from_millis(2));
        c.send(&input[cut..]);
        c.expect(expected);
    }
}

#[test]
fn a4_many_nested_headers_fail_fast() {
    // `*1\r\n` × 100 000 in one write: the first nested header is the error.
    let p = pair();
    let mut bystander = p.proxy.conn();
    let mut c = p.proxy.conn();
    let input = b"*1\r\n".repeat(100_000);
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut w, &input);
    });
    let (got, eof) = c.read_to_eof(Duration::from_secs(5));
    writer.join().unwrap();
    assert_bytes_eq(
        "*1 x 100000",
        b"-ERR Protocol error: expected '$', got '*'\r\n",
        &got,
    );
    assert!(eof, "connection not closed");
    bystander.call_expect(&["PING"], b"+PONG\r\n");
}

//! Locally answered commands (SELECT, CLIENT, QUIT, PING, ECHO: TEST-CATALOGUE C1, C3,
//! C4) diffed against bare Redis, and the refusal of the commands a proxy cannot carry
//! (replication, flags on a shared connection) with a clear error that leaves the
//! connection usable. Stateful commands that are supported are in `stateful.rs` and
//! `pubsub.rs`.

mod common;

use common::*;
use std::time::Duration;

fn setup() -> (RedisServer, RedisServer, Ambassador) {
    let bare = RedisServer::start();
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream).start();
    (bare, upstream, proxy)
}

fn pipeline(cmds: &[&[&str]]) -> Vec<u8> {
    cmds.iter().flat_map(|c| resp(c)).collect()
}

#[test]
fn c1_select_matrix() {
    let (bare, _up, proxy) = setup();
    let input = pipeline(&[
        &["SELECT", "15"],
        &["SELECT", "16"],
        &["SELECT", "-1"],
        &["SELECT", "abc"],
        &["SELECT", "01"],
        &["SELECT", "+1"],
        &["SELECT"],
        &["SELECT", "1", "2"],
        &["SELECT", "0"],
    ]);
    let expected: &[u8] = b"+OK\r\n\
-ERR DB index is out of range\r\n\
-ERR DB index is out of range\r\n\
-ERR value is not an integer or out of range\r\n\
-ERR value is not an integer or out of range\r\n\
-ERR value is not an integer or out of range\r\n\
-ERR wrong number of arguments for 'select' command\r\n\
-ERR wrong number of arguments for 'select' command\r\n\
+OK\r\n";
    let mut r = bare.conn();
    let mut p = proxy.conn();
    let got = diff_open(&mut r, &mut p, &input);
    assert_bytes_eq("SELECT matrix", expected, &got);
}

#[test]
fn select_routes_to_the_right_db() {
    let (_bare, up, proxy) = setup();
    let mut p = proxy.conn();
    p.call_expect(&["SELECT", "15"], b"+OK\r\n");
    p.call_expect(&["SET", "where", "fifteen"], b"+OK\r\n");
    // A failed SELECT keeps the current db.
    p.call_expect(&["SELECT", "16"], b"-ERR DB index is out of range\r\n");
    p.call_expect(&["GET", "where"], b"$7\r\nfifteen\r\n");
    let mut d = up.conn();
    d.call_expect(&["EXISTS", "where"], b":0\r\n");
    d.call_expect(&["SELECT", "15"], b"+OK\r\n");
    d.call_expect(&["GET", "where"], b"$7\r\nfifteen\r\n");
}

#[test]
fn c3_client_matrix() {
    let (bare, up, proxy) = setup();
    let input = pipeline(&[
        &["CLIENT", "GETNAME"],
        &["CLIENT", "SETNAME", "x"],
        &["CLIENT", "GETNAME"],
        &["CLIENT", "SETNAME", ""],
        &["CLIENT", "GETNAME"],
        &["CLIENT", "SETNAME", "a b"],
        &["CLIENT", "SETNAME", "a\nb"],
        &["CLIENT", "SETNAME"],
        &["CLIENT", "FOO"],
        &["client", "getname"],
    ]);
    let expected: &[u8] = b"$-1\r\n+OK\r\n$1\r\nx\r\n+OK\r\n$-1\r\n\
-ERR Client names cannot contain spaces, newlines or special characters.\r\n\
-ERR Client names cannot contain spaces, newlines or special characters.\r\n\
-ERR wrong number of arguments for 'client|setname' command\r\n\
-ERR unknown subcommand 'FOO'. Try CLIENT HELP.\r\n\
$-1\r\n";
    let mut r = bare.conn();
    let mut p = proxy.conn();
    let got = diff_open(&mut r, &mut p, &input);
    assert_bytes_eq("CLIENT matrix", expected, &got);

    // IDs: stable per connection, increasing across connections.
    let mut a = proxy.conn();
    let id_a = int_reply(&a.call(&["CLIENT", "ID"]));
    assert_eq!(int_reply(&a.call(&["CLIENT", "ID"])), id_a);
    let mut b = proxy.conn();
    let id_b = int_reply(&b.call(&["CLIENT", "ID"]));
    assert!(id_b > id_a, "CLIENT ID must increase: {id_a} then {id_b}");
    assert_eq!(int_reply(&a.call(&["CLIENT", "ID"])), id_a);

    // Names stay with their connection and never reach the upstream.
    a.call_expect(&["CLIENT", "SETNAME", "leakcheck42"], b"+OK\r\n");
    b.call_expect(&["CLIENT", "GETNAME"], b"$-1\r\n");
    b.call_expect(&["SET", "k", "v"], b"+OK\r\n");
    a.call_expect(&["GET", "k"], b"$1\r\nv\r\n");
    a.call_expect(&["CLIENT", "GETNAME"], b"$11\r\nleakcheck42\r\n");
    let list = up.conn().call(&["CLIENT", "LIST"]);
    assert!(
        !String::from_utf8_lossy(&list).contains("leakcheck42"),
        "a client's name leaked to the upstream: {}",
        String::from_utf8_lossy(&list)
    );
}

#[test]
fn client_setinfo_and_info() {
    let (_bare, _up, proxy) = setup();
    let mut c = proxy.conn();
    c.call_expect(&["CLIENT", "SETINFO", "lib-name", "redis-py"], b"+OK\r\n");
    c.call_expect(&["CLIENT", "SETINFO", "lib-ver", "1.2.3"], b"+OK\r\n");
    let id = int_reply(&c.call(&["CLIENT", "ID"]));
    c.call_expect(&["CLIENT", "SETNAME", "infoname"], b"+OK\r\n");
    c.call_expect(&["SELECT", "3"], b"+OK\r\n");
    let info = c.call(&["CLIENT", "INFO"]);
    assert!(info.starts_with(b"$"), "CLIENT INFO: \"{}\"", escape(&info));
    let text = String::from_utf8_lossy(&info).into_owned();
    for want in [
        format!("id={id} "),
        "name=infoname ".into(),
        " db=3 ".into(),
    ] {
        assert!(text.contains(&want), "CLIENT INFO lacks \"{want}\": {text}");
    }
}

#[test]
fn ping_and_echo_match_redis() {
    let (bare, _up, proxy) = setup();
    let input = pipeline(&[
        &["PING"],
        &["PING", "hello"],
        &["PING", "a", "b"],
        &["ECHO", "x"],
        &["ECHO", ""],
        &["ECHO"],
        &["ECHO", "a", "b"],
    ]);
    let expected: &[u8] = b"+PONG\r\n$5\r\nhello\r\n\
-ERR wrong number of arguments for 'ping' command\r\n\
$1\r\nx\r\n$0\r\n\r\n\
-ERR wrong number of arguments for 'echo' command\r\n\
-ERR wrong number of arguments for 'echo' command\r\n";
    let mut r = bare.conn();
    let mut p = proxy.conn();
    let got = diff_open(&mut r, &mut p, &input);
    assert_bytes_eq("PING/ECHO", expected, &got);
}

#[test]
fn forwarded_errors_match_redis() {
    let (bare, _up, proxy) = setup();
    let input = pipeline(&[
        &["FOO", "a", "b"],
        &["GET"],
        &["SET", "s", "str"],
        &["LPUSH", "s", "x"],
        &["INCR", "s"],
        &["XREAD", "STREAMS", "nostream", "0"],
        &["EXEC"],
        &["DISCARD"],
        &["UNWATCH"],
    ]);
    let expected: &[u8] = b"-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n\
-ERR wrong number of arguments for 'get' command\r\n\
+OK\r\n\
-WRONGTYPE Operation against a key holding the wrong kind of value\r\n\
-ERR value is not an integer or out of range\r\n\
*-1\r\n\
-ERR EXEC without MULTI\r\n\
-ERR DISCARD without MULTI\r\n\
+OK\r\n";
    let mut r = bare.conn();
    let mut p = proxy.conn();
    let got = diff_open(&mut r, &mut p, &input);
    assert_bytes_eq("forwarded errors", expected, &got);
}

#[test]
fn c4_quit() {
    let (bare, up, proxy) = setup();
    let mut input = resp(&["QUIT"]);
    input.extend_from_slice(&resp(&["SET", "quitkey", "v"]));
    let got = diff_closing(bare.port(), proxy.port(), &input);
    assert_bytes_eq("QUIT + SET", b"+OK\r\n", &got);
    std::thread::sleep(Duration::from_millis(100));
    up.conn().call_expect(&["EXISTS", "quitkey"], b":0\r\n");
    proxy.conn().call_expect(&["EXISTS", "quitkey"], b":0\r\n");

    let got = diff_closing(bare.port(), proxy.port(), &resp(&["QUIT", "x"]));
    assert_bytes_eq("QUIT x", b"+OK\r\n", &got);
    let got = diff_closing(bare.port(), proxy.port(), b"quit\r\nPING\r\n");
    assert_bytes_eq("inline quit", b"+OK\r\n", &got);
}

#[test]
fn connection_flag_commands_answer_as_redis_and_the_connection_stays() {
    let (bare, up, proxy) = setup();
    let mut c = proxy.conn();
    c.timeout = Duration::from_secs(3);
    c.call_expect(&["SET", "before", "1"], b"+OK\r\n");
    // NO-EVICT is kept per client; NO-TOUCH is answered as the upstream's version would
    // (Redis 7.0 does not know it).
    let no_touch = bare.conn().call(&["CLIENT", "NO-TOUCH", "on"]);
    c.call_expect(&["CLIENT", "NO-EVICT", "on"], b"+OK\r\n");
    c.call_expect(&["client", "no-evict", "off"], b"+OK\r\n");
    // Pipelined between forwarded commands: the replies stay in their places.
    c.send(
        &[
            resp(&["GET", "before"]),
            resp(&["CLIENT", "NO-EVICT", "on"]),
            resp(&["INCR", "n"]),
            resp(&["CLIENT", "NO-TOUCH", "on"]),
            resp(&["GET", "before"]),
        ]
        .concat(),
    );
    c.expect(b"$1\r\n1\r\n");
    c.expect(b"+OK\r\n");
    c.expect(b":1\r\n");
    c.expect(&no_touch);
    c.expect(b"$1\r\n1\r\n");
    // The connection is still fully usable and in no special state.
    c.call_expect(&["SET", "after", "1"], b"+OK\r\n");
    c.call_expect(&["GET", "after"], b"$1\r\n1\r\n");
    c.call_expect(&["EXEC"], b"-ERR EXEC without MULTI\r\n");
    // NO-EVICT never reached a shared connection.
    assert_eq!(
        up.command_calls("client|no-evict"),
        0,
        "client|no-evict was forwarded"
    );
    // Another client sharing the pool is unaffected.
    let mut other = proxy.conn();
    other.call_expect(&["PING"], b"+PONG\r\n");
    other.call_expect(&["GET", "after"], b"$1\r\n1\r\n");
}

#[test]
fn non_blocking_xread_is_forwarded() {
    let (bare, _up, proxy) = setup();
    let input = pipeline(&[
        &["XADD", "s", "1-1", "f", "v"],
        &["XREAD", "COUNT", "1", "STREAMS", "s", "0"],
        &["XGROUP", "CREATE", "s", "g", "0"],
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "COUNT",
            "1",
            "STREAMS",
            "s",
            ">",
        ],
    ]);
    let mut r = bare.conn();
    let mut p = proxy.conn();
    let got = diff_open(&mut r, &mut p, &input);
    assert!(got.starts_with(b"$3\r\n1-1\r\n*1\r\n"), "{}", escape(&got));
}

#[test]
fn select_bound_comes_from_the_upstream() {
    // C1: the upper bound is the upstream's `databases`, not a hard-coded 16.
    let bare = RedisServer::start_with(ServerAuth::None, &["databases 4"]);
    let upstream = RedisServer::start_with(ServerAuth::None, &["databases 4"]);
    let proxy = AmbassadorBuilder::for_server(&upstream).start();
    let input = pipeline(&[
        &["SELECT", "3"],
        &["SET", "k", "in3"],
        &["SELECT", "4"],
        &["SELECT", "15"],
        &["GET", "k"],
    ]);
    let mut r = bare.conn();
    let mut p = proxy.conn();
    let got = diff_open(&mut r, &mut p, &input);
    assert_bytes_eq(
        "SELECT with databases 4",
        b"+OK\r\n+OK\r\n-ERR DB index is out of range\r\n-ERR DB index is out of range\r\n$3\r\nin3\r\n",
        &got,
    );
}

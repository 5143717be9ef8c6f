//! Connection identity through the ambassador (issue 15): `CLIENT LIST`, `CLIENT INFO`,
//! `CLIENT KILL`, `CLIENT SETNAME/GETNAME`, `CLIENT NO-EVICT` and `CLIENT TRACKING …
//! REDIRECT` speak of the application's connections — the ambassador's client ids, the
//! application's sockets — in the upstream Redis's own format.
//!
//! Where Redis defines the text, the same clients are made against bare Redis and through
//! the ambassador and the lines compared: the same fields in the same order, and the same
//! values wherever they do not depend on the server's memory accounting or on the time.

mod common;

use common::*;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

/// One CLIENT LIST line: its fields in order.
type Line = Vec<(String, String)>;

/// The text of a bulk (RESP2) or verbatim (RESP3) reply.
#[track_caller]
fn text_of(reply: &[u8]) -> String {
    let body = match reply.first() {
        Some(b'$') | Some(b'=') => {
            let start = reply.iter().position(|&b| b == b'\n').unwrap() + 1;
            &reply[start..reply.len() - 2]
        }
        _ => panic!(
            "expected a bulk or verbatim string, got \"{}\"",
            escape(reply)
        ),
    };
    let body = body.strip_prefix(b"txt:").unwrap_or(body);
    String::from_utf8(body.to_vec()).unwrap()
}

fn lines(text: &str) -> Vec<Line> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split(' ')
                .map(|f| {
                    let (k, v) = f.split_once('=').unwrap_or((f, ""));
                    (k.to_owned(), v.to_owned())
                })
                .collect()
        })
        .collect()
}

fn field<'a>(line: &'a Line, key: &str) -> &'a str {
    line.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

fn keys(line: &Line) -> Vec<&str> {
    line.iter().map(|(k, _)| k.as_str()).collect()
}

fn local_addr(c: &RawConn) -> SocketAddr {
    c.stream.local_addr().unwrap()
}

/// The line whose `addr` is `c`'s socket.
#[track_caller]
fn line_of<'a>(all: &'a [Line], c: &RawConn) -> &'a Line {
    let addr = local_addr(c).to_string();
    all.iter()
        .find(|l| field(l, "addr") == addr)
        .unwrap_or_else(|| panic!("no line with addr={addr} in {all:?}"))
}

/// The clients of the layout test, made on `port` (bare Redis or the ambassador).
struct Scene {
    me: RawConn,
    named: RawConn,
    subscriber: RawConn,
    multi: RawConn,
}

fn scene(port: u16) -> Scene {
    let me = RawConn::connect(port);
    let mut named = RawConn::connect(port);
    named.call_expect(&["CLIENT", "SETNAME", "bee"], b"+OK\r\n");
    named.call_expect(&["SELECT", "2"], b"+OK\r\n");
    named.call_expect(&["SET", "k", "v"], b"+OK\r\n");
    let mut subscriber = RawConn::connect(port);
    subscriber.send(&resp(&["SUBSCRIBE", "a", "b"]));
    subscriber.read_replies(2);
    subscriber.send(&resp(&["PSUBSCRIBE", "p*"]));
    subscriber.read_reply();
    let mut multi = RawConn::connect(port);
    multi.call_expect(&["MULTI"], b"+OK\r\n");
    multi.call_expect(&["INCR", "n"], b"+QUEUED\r\n");
    multi.call_expect(&["INCR", "n"], b"+QUEUED\r\n");
    Scene {
        me,
        named,
        subscriber,
        multi,
    }
}

/// Fields whose values must agree between Redis and the ambassador for the same client.
const COMPARABLE: &[&str] = &[
    "name", "flags", "db", "sub", "psub", "ssub", "multi", "cmd", "user", "redir", "resp",
];

#[test]
fn client_list_and_info_have_redis_fields_in_order() {
    let bare = RedisServer::start();
    let up = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&up).start();
    let mut direct = scene(bare.port());
    let mut through = scene(proxy.port());

    let want = lines(&text_of(&direct.me.call(&["CLIENT", "LIST"])));
    let got = lines(&text_of(&through.me.call(&["CLIENT", "LIST"])));
    assert_eq!(
        got.len(),
        4,
        "the ambassador's clients, and only them: {got:?}"
    );
    let roles = |s: &Scene| [&s.me, &s.named, &s.subscriber, &s.multi].map(local_addr);
    for (d, t) in roles(&direct).iter().zip(roles(&through).iter()) {
        let find = |all: &[Line], addr: &SocketAddr| {
            all.iter()
                .find(|l| field(l, "addr") == addr.to_string())
                .cloned()
                .unwrap_or_else(|| panic!("no line for {addr}"))
        };
        let (w, g) = (find(&want, d), find(&got, t));
        assert_eq!(
            keys(&g),
            keys(&w),
            "field order\nredis: {w:?}\nproxy: {g:?}"
        );
        for key in COMPARABLE {
            assert_eq!(
                field(&g, key),
                field(&w, key),
                "{key}\nredis: {w:?}\nproxy: {g:?}"
            );
        }
    }
    let me = line_of(&got, &through.me);
    assert_eq!(field(me, "laddr"), format!("127.0.0.1:{}", proxy.port()));
    assert_eq!(
        field(me, "qbuf"),
        "26",
        "the caller's query buffer holds CLIENT LIST"
    );
    assert_eq!(field(me, "argv-mem"), "10");
    // The ids are the ambassador's own, as CLIENT ID gives them.
    let me_id = int_reply(&through.me.call(&["CLIENT", "ID"]));
    let named_id = int_reply(&through.named.call(&["CLIENT", "ID"]));
    let all = lines(&text_of(&through.me.call(&["CLIENT", "LIST"])));
    assert_eq!(field(line_of(&all, &through.me), "id"), me_id.to_string());
    assert_eq!(
        field(line_of(&all, &through.named), "id"),
        named_id.to_string()
    );
    assert_eq!(field(line_of(&all, &through.named), "cmd"), "client|id");

    // CLIENT INFO, in RESP2 and RESP3 (a verbatim string).
    for proto in ["2", "3"] {
        direct.me.call(&["HELLO", proto]);
        through.me.call(&["HELLO", proto]);
        let w = direct.me.call(&["CLIENT", "INFO"]);
        let g = through.me.call(&["CLIENT", "INFO"]);
        assert_eq!(
            g[0],
            w[0],
            "reply type: \"{}\" vs \"{}\"",
            escape(&g),
            escape(&w)
        );
        let (w, g) = (lines(&text_of(&w)), lines(&text_of(&g)));
        assert_eq!(keys(&g[0]), keys(&w[0]));
        for key in COMPARABLE.iter().chain(&["qbuf", "argv-mem"]) {
            assert_eq!(field(&g[0], key), field(&w[0], key), "RESP{proto} {key}");
        }
    }
    // The upstream's CLIENT LIST is the ambassador's connections: nothing of the above
    // (names, databases) reached it.
    let upstream = text_of(&up.conn().call(&["CLIENT", "LIST"]));
    assert!(!upstream.contains("name=bee"), "{upstream}");
}

#[test]
fn client_list_filters_and_errors_match_redis() {
    let bare = RedisServer::start();
    let up = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&up).start();
    let mut r = bare.conn();
    let mut p = proxy.conn();
    for args in [
        &["CLIENT", "LIST", "TYPE", "pubsub"][..],
        &["CLIENT", "LIST", "TYPE", "master"],
        &["CLIENT", "LIST", "TYPE", "foo"],
        &["CLIENT", "LIST", "ID", "x"],
        &["CLIENT", "LIST", "ID", "987654"],
        &["CLIENT", "LIST", "ID"],
        &["CLIENT", "LIST", "foo"],
        &["CLIENT", "KILL"],
        &["CLIENT", "KILL", "1.2.3.4:5"],
        &["CLIENT", "KILL", "ID", "987654"],
        &["CLIENT", "KILL", "ID", "0"],
        &["CLIENT", "KILL", "ID", "str"],
        &["CLIENT", "KILL", "ID", "10", "wrong_arg"],
        &["CLIENT", "KILL", "TYPE", "wrong_type"],
        &["CLIENT", "KILL", "USER", "wrong_user"],
        &["CLIENT", "KILL", "SKIPME", "yes_or_no"],
        &["CLIENT", "KILL", "TYPE", "master"],
        &["CLIENT", "NO-EVICT", "maybe"],
        &["CLIENT", "NO-EVICT", "on"],
        &["CLIENT", "NO-EVICT", "off"],
        &["CLIENT", "TRACKING", "on", "REDIRECT", "987654"],
        &["CLIENT", "TRACKING", "off", "REDIRECT", "987654"],
        &["CLIENT", "TRACKING", "on", "REDIRECT", "x"],
        &["CLIENT", "TRACKING", "on", "PREFIX", "a"],
        &["CLIENT", "GETREDIR"],
    ] {
        diff_open(&mut r, &mut p, &resp(args));
    }
    // NO-TOUCH exists from Redis 7.2 on: the ambassador answers as its upstream would.
    diff_open(&mut r, &mut p, &resp(&["CLIENT", "NO-TOUCH", "on"]));
    diff_open(&mut r, &mut p, &resp(&["CLIENT", "NO-TOUCH", "maybe"]));
}

#[test]
fn client_kill_ends_the_applications_connections() {
    let up = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&up).max_pinned(2).start();
    let mut admin = proxy.conn();
    let mut by_id = proxy.conn();
    let id = int_reply(&by_id.call(&["CLIENT", "ID"]));
    admin.call_expect(&["CLIENT", "KILL", "ID", &id.to_string()], b":1\r\n");
    by_id.expect_eof();

    // The old form, by address: +OK, then -ERR No such client once it is gone.
    let mut by_addr = proxy.conn();
    by_addr.call_expect(&["PING"], b"+PONG\r\n");
    let addr = local_addr(&by_addr).to_string();
    admin.call_expect(&["CLIENT", "KILL", &addr], b"+OK\r\n");
    by_addr.expect_eof();
    admin.call_expect(&["CLIENT", "KILL", &addr], b"-ERR No such client\r\n");
    admin.call_expect(&["CLIENT", "KILL", "ADDR", &addr], b":0\r\n");

    // A client blocked in BLPOP (on the one dedicated connection) and a subscriber: both
    // end at once, and the dedicated connection is free again.
    let mut blocked = proxy.conn();
    blocked.send(&resp(&["BLPOP", "nothing", "0"]));
    let mut subscriber = proxy.conn();
    subscriber.send(&resp(&["SUBSCRIBE", "c"]));
    subscriber.read_reply();
    assert!(
        wait_until(Duration::from_secs(5), || {
            text_of(&admin.call(&["CLIENT", "LIST"])).contains("flags=b ")
        }),
        "the blocked client shows as blocked"
    );
    let killed = Instant::now();
    admin.call_expect(&["CLIENT", "KILL", "TYPE", "pubsub"], b":1\r\n");
    subscriber.expect_eof();
    let blocked_addr = local_addr(&blocked).to_string();
    admin.call_expect(&["CLIENT", "KILL", "LADDR", "1.2.3.4:1"], b":0\r\n");
    admin.call_expect(&["CLIENT", "KILL", "ADDR", &blocked_addr], b":1\r\n");
    blocked.expect_eof();
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "{:?}",
        killed.elapsed()
    );
    // Both dedicated connections are free again (`max_pinned` is 2).
    let mut again = proxy.conn();
    again.send(&resp(&["SUBSCRIBE", "d"]));
    again.expect(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nd\r\n:1\r\n");
    again.call_expect(
        &["UNSUBSCRIBE"],
        b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nd\r\n:0\r\n",
    );
    again.call_expect(&["RPUSH", "l", "x"], b":1\r\n");
    let mut second = proxy.conn();
    second.send(&resp(&["BLPOP", "nothing", "0"]));
    again.call_expect(&["BLPOP", "l", "1"], b"*2\r\n$1\r\nl\r\n$1\r\nx\r\n");
    drop(second);

    // USER and SKIPME: everyone but the caller, then the caller too (it gets its reply,
    // then the connection closes).
    let mut others: Vec<RawConn> = (0..3).map(|_| proxy.conn()).collect();
    for c in &mut others {
        c.call_expect(&["PING"], b"+PONG\r\n");
    }
    assert!(
        wait_until(Duration::from_secs(5), || {
            text_of(&admin.call(&["CLIENT", "LIST"])).lines().count() == 5
        }),
        "admin, again and three others"
    );
    admin.call_expect(
        &["CLIENT", "KILL", "USER", "default", "SKIPME", "yes"],
        b":4\r\n",
    );
    for c in &mut others {
        c.expect_eof();
    }
    let mut last = proxy.conn();
    last.call_expect(&["PING"], b"+PONG\r\n");
    admin.call_expect(&["CLIENT", "KILL", "SKIPME", "no"], b":2\r\n");
    admin.expect_eof();
    last.expect_eof();
    // The upstream's own connections were not touched.
    let mut fresh = proxy.conn();
    fresh.call_expect(&["GET", "l"], b"$-1\r\n");
}

#[test]
fn setname_getname_and_the_list_follow_the_connection() {
    let bare = RedisServer::start();
    let up = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&up).start();
    let mut r = bare.conn();
    let mut p = proxy.conn();
    for args in [
        &["CLIENT", "GETNAME"][..],
        &["CLIENT", "SETNAME", "foo bar"],
        &["CLIENT", "SETNAME", "myname"],
        &["CLIENT", "GETNAME"],
        &["CLIENT", "SETNAME", ""],
        &["CLIENT", "GETNAME"],
    ] {
        diff_open(&mut r, &mut p, &resp(args));
    }
    let mut named = proxy.conn();
    named.call_expect(&["CLIENT", "SETNAME", "foobar"], b"+OK\r\n");
    let all = lines(&text_of(&p.call(&["CLIENT", "LIST"])));
    assert_eq!(field(line_of(&all, &named), "name"), "foobar");
    assert_eq!(field(line_of(&all, &named), "cmd"), "client|setname");
    drop(named);
    assert!(
        wait_until(Duration::from_secs(5), || {
            !text_of(&p.call(&["CLIENT", "LIST"])).contains("name=foobar")
        }),
        "a client that left is still listed"
    );
}

/// A RESP2 target subscribed to `__redis__:invalidate`: its id, as it gives it.
fn invalidation_target(port: u16) -> (RawConn, i64) {
    let mut target = RawConn::connect(port);
    let id = int_reply(&target.call(&["CLIENT", "ID"]));
    target.send(&resp(&["SUBSCRIBE", "__redis__:invalidate"]));
    target.read_reply();
    (target, id)
}

fn invalidation(keys: &[&str]) -> Vec<u8> {
    let mut want = b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n".to_vec();
    want.extend_from_slice(format!("*{}\r\n", keys.len()).as_bytes());
    for k in keys {
        want.extend_from_slice(&bulk(k.as_bytes()));
    }
    want
}

#[test]
fn redirect_tracking_resp2_target_closing_breaks_the_redirect() {
    let up = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&up).start();
    let (mut target, id) = invalidation_target(proxy.port());
    let mut writer = proxy.conn();
    // A RESP3 tracking client sees Redis's push; a RESP2 one sees the flag.
    let mut resp3 = proxy.conn();
    resp3.call(&["HELLO", "3"]);
    let mut resp2 = proxy.conn();
    for c in [&mut resp3, &mut resp2] {
        c.call_expect(
            &["CLIENT", "TRACKING", "on", "REDIRECT", &id.to_string()],
            b"+OK\r\n",
        );
        c.call(&["GET", "k"]);
    }
    writer.call_expect(&["SET", "k", "1"], b"+OK\r\n");
    // One message per tracking client, as from Redis.
    target.expect(&[invalidation(&["k"]), invalidation(&["k"])].concat());
    target.expect_silence(Duration::from_millis(100));
    // Redis shows the redirect as the ambassador's client id.
    resp2.call_expect(&["CLIENT", "GETREDIR"], format!(":{id}\r\n").as_bytes());
    let info = resp2.call(&["CLIENT", "TRACKINGINFO"]);
    let want = format!(
        "*6\r\n$5\r\nflags\r\n*1\r\n$2\r\non\r\n$8\r\nredirect\r\n:{id}\r\n$8\r\nprefixes\r\n*0\r\n"
    );
    assert_bytes_eq("TRACKINGINFO", want.as_bytes(), &info);
    let all = lines(&text_of(&writer.call(&["CLIENT", "LIST"])));
    assert_eq!(field(line_of(&all, &resp2), "redir"), id.to_string());
    assert_eq!(field(line_of(&all, &resp2), "flags"), "t");

    // The target leaves: its upstream connection closes with it, and Redis tells the
    // tracking clients their redirect is broken.
    for c in [&mut resp3, &mut resp2] {
        c.call(&["GET", "k"]);
    }
    target.call_expect(&["QUIT"], b"+OK\r\n");
    target.expect_eof();
    let pubsub = wait_until(Duration::from_secs(5), || {
        !text_of(&up.conn().call(&["CLIENT", "LIST"])).contains("sub=1")
    });
    assert!(pubsub, "the target's upstream connection is still open");
    writer.call_expect(&["SET", "k", "2"], b"+OK\r\n");
    resp3.send(&resp(&["PING"]));
    let broken = format!(">2\r\n$21\r\ntracking-redir-broken\r\n:{id}\r\n+PONG\r\n");
    resp3.expect(broken.as_bytes());
    let info = resp2.call(&["CLIENT", "TRACKINGINFO"]);
    let want = format!(
        "*6\r\n$5\r\nflags\r\n*2\r\n$2\r\non\r\n$15\r\nbroken_redirect\r\n$8\r\nredirect\r\n:{id}\r\n$8\r\nprefixes\r\n*0\r\n"
    );
    assert_bytes_eq("TRACKINGINFO after the target left", want.as_bytes(), &info);
    // A new redirect to the id that left is refused as Redis refuses it.
    resp2.call_expect(
        &["CLIENT", "TRACKING", "on", "REDIRECT", &id.to_string()],
        b"-ERR The client ID you want redirect to does not exist\r\n",
    );
}

#[test]
fn redirect_tracking_follows_the_suites_patterns() {
    let up = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&up).start();
    let (mut target, id) = invalidation_target(proxy.port());
    let id = id.to_string();
    let mut sg = proxy.conn();
    let mut r = proxy.conn();

    // BCAST with prefixes, through a transaction.
    r.call_expect(
        &[
            "CLIENT", "TRACKING", "on", "BCAST", "REDIRECT", &id, "PREFIX", "a:",
        ],
        b"+OK\r\n",
    );
    r.call_expect(&["MULTI"], b"+OK\r\n");
    r.call_expect(&["INCR", "a:1"], b"+QUEUED\r\n");
    r.call_expect(&["INCR", "c:1"], b"+QUEUED\r\n");
    r.call_expect(&["EXEC"], b"*2\r\n:1\r\n:1\r\n");
    target.expect(&invalidation(&["a:1"]));
    r.call_expect(&["CLIENT", "TRACKING", "off"], b"+OK\r\n");

    // NOLOOP: the tracking client's own writes are not reported.
    r.call_expect(
        &["CLIENT", "TRACKING", "on", "REDIRECT", &id, "NOLOOP"],
        b"+OK\r\n",
    );
    r.call(&["MGET", "other", "loop"]);
    r.call_expect(&["SET", "loop", "1"], b"+OK\r\n");
    sg.call_expect(&["SET", "other", "1"], b"+OK\r\n");
    target.expect(&invalidation(&["other"]));
    r.call_expect(&["CLIENT", "TRACKING", "off"], b"+OK\r\n");

    // OPTIN: only what follows CLIENT CACHING yes.
    r.call_expect(
        &["CLIENT", "TRACKING", "on", "OPTIN", "REDIRECT", &id],
        b"+OK\r\n",
    );
    r.call(&["GET", "k1"]);
    r.call_expect(&["CLIENT", "CACHING", "yes"], b"+OK\r\n");
    r.call(&["GET", "k2"]);
    sg.call_expect(&["MSET", "k1", "1", "k2", "2"], b"+OK\r\n");
    target.expect(&invalidation(&["k2"]));
    target.expect_silence(Duration::from_millis(100));
    r.call_expect(&["CLIENT", "TRACKING", "off"], b"+OK\r\n");
    r.call_expect(&["CLIENT", "GETREDIR"], b":-1\r\n");

    // A RESP3 target that never subscribed: Redis pushes to it directly. It becomes a
    // target while idle, and keeps working as a client.
    let mut r3 = proxy.conn();
    r3.call(&["HELLO", "3"]);
    let r3_id = int_reply(&r3.call(&["CLIENT", "ID"])).to_string();
    r.call_expect(
        &["CLIENT", "TRACKING", "on", "REDIRECT", &r3_id],
        b"+OK\r\n",
    );
    r.call(&["GET", "x"]);
    sg.call_expect(&["SET", "x", "1"], b"+OK\r\n");
    r3.expect(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nx\r\n");
    r3.call_expect(&["GET", "x"], b"$1\r\n1\r\n");
    r3.call_expect(&["CLIENT", "ID"], format!(":{r3_id}\r\n").as_bytes());
    // Two clients may redirect to the same target.
    let mut rd = proxy.conn();
    rd.call_expect(
        &["CLIENT", "TRACKING", "on", "REDIRECT", &r3_id],
        b"+OK\r\n",
    );
    rd.call(&["GET", "y"]);
    sg.call_expect(&["SET", "y", "1"], b"+OK\r\n");
    r3.expect(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\ny\r\n");
    // A client may redirect to itself.
    let mut me = proxy.conn();
    me.call(&["HELLO", "3"]);
    let me_id = int_reply(&me.call(&["CLIENT", "ID"])).to_string();
    me.call_expect(
        &["CLIENT", "TRACKING", "on", "REDIRECT", &me_id],
        b"+OK\r\n",
    );
    me.call_expect(&["CLIENT", "GETREDIR"], format!(":{me_id}\r\n").as_bytes());
}

#[test]
fn no_evict_is_kept_per_client_and_never_reaches_the_pool() {
    let up = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&up)
        .pool_size(1)
        .max_pinned(1)
        .start();
    let mut c = proxy.conn();
    c.call_expect(&["CLIENT", "NO-EVICT", "on"], b"+OK\r\n");
    let info = lines(&text_of(&c.call(&["CLIENT", "INFO"])));
    assert_eq!(field(&info[0], "flags"), "e");
    // Relayed, the client's dedicated connection carries the flag.
    c.call(&["HELLO", "3"]);
    c.send(&resp(&["SUBSCRIBE", "ch"]));
    c.read_reply();
    let upstream = || text_of(&up.conn().call(&["CLIENT", "LIST"]));
    assert!(
        lines(&upstream())
            .iter()
            .any(|l| field(l, "flags").contains('e') && field(l, "sub") == "1"),
        "{}",
        upstream()
    );
    c.send(&resp(&["UNSUBSCRIBE"]));
    c.read_reply();
    c.call_expect(&["PING"], b"+PONG\r\n");
    // That connection does not go back to the pool with the flag on.
    let mut other = proxy.conn();
    other.send(&resp(&["BLPOP", "l", "0.01"]));
    other.read_reply();
    assert!(
        wait_until(Duration::from_secs(5), || {
            lines(&upstream())
                .iter()
                .all(|l| !field(l, "flags").contains('e'))
        }),
        "{}",
        upstream()
    );
    c.call_expect(&["CLIENT", "NO-EVICT", "off"], b"+OK\r\n");
    let info = lines(&text_of(&c.call(&["CLIENT", "INFO"])));
    assert_eq!(field(&info[0], "flags"), "N");
    thread::sleep(Duration::from_millis(10));
}

/// The suite's CLIENT UNBLOCK pattern (unit/type/list), made on `port`: the replies seen.
fn unblock_script(port: u16) -> Vec<Vec<u8>> {
    let mut r = RawConn::connect(port);
    let mut rd = RawConn::connect(port);
    let id = int_reply(&rd.call(&["CLIENT", "ID"])).to_string();
    let mut seen = Vec::new();
    for reason in [None, Some("TIMEOUT"), Some("ERROR")] {
        rd.send(&resp(&["BLPOP", "unblock-list", "0"]));
        let blocked = wait_until(Duration::from_secs(5), || {
            let info = String::from_utf8_lossy(&r.call(&["INFO", "clients"])).into_owned();
            info.contains("blocked_clients:1\r\n")
        });
        assert!(blocked, "port {port}: BLPOP never blocked");
        let mut unblock = vec!["CLIENT", "UNBLOCK", id.as_str()];
        unblock.extend(reason);
        seen.push(r.call(&unblock));
        seen.push(rd.read_reply());
    }
    let my_id = int_reply(&r.call(&["CLIENT", "ID"])).to_string();
    for args in [
        &["CLIENT", "UNBLOCK", "asd"][..],
        &["CLIENT", "UNBLOCK", &my_id],
        &["CLIENT", "UNBLOCK", &id, "later"],
        &["CLIENT", "UNBLOCK", &id, "ERROR", "x"],
        &["CLIENT", "UNBLOCK", "987654"],
    ] {
        seen.push(r.call(args));
    }
    // The unblocked client goes on as usual.
    seen.push(r.call(&["RPUSH", "unblock-list", "x"]));
    seen.push(rd.call(&["BLPOP", "unblock-list", "0"]));
    seen
}

#[test]
fn client_unblock_takes_the_ambassadors_ids() {
    let bare = RedisServer::start();
    let up = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&up).start();
    let want = unblock_script(bare.port());
    let got = unblock_script(proxy.port());
    assert_eq!(
        got.iter().map(|r| escape(r)).collect::<Vec<_>>(),
        want.iter().map(|r| escape(r)).collect::<Vec<_>>()
    );
    assert_eq!(want[0], b":1\r\n");
    assert_eq!(
        want[5],
        b"-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n"
    );
}

//! Where Redis's behaviour hangs on one connection, through the ambassador as direct
//! (issue 15, Redis's own test suite): a busy script killed from another client while a
//! third gets Redis's `-BUSY`; a client that becomes a replica (`SYNC`, `redis-cli --rdb`);
//! a reply nested as deep as Redis can make it.

mod common;

use common::cluster::redis_cli_bin;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const PW: &str = "faithful-upstream-pw";
const BUSY: &[u8] =
    b"-BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.\r\n";

/// A password-protected upstream whose scripts count as busy after 100 ms, and the
/// ambassador in front of it.
fn setup() -> (RedisServer, Ambassador) {
    let upstream = RedisServer::start_with(
        ServerAuth::Password(PW.into()),
        &["busy-reply-threshold 100"],
    );
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .upstream_password(PW.as_bytes())
        .start();
    (upstream, proxy)
}

/// Sends `args` on `c` until the reply is `expected`, for at most 10 s.
#[track_caller]
fn until_reply(c: &mut RawConn, args: &[&str], expected: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = c.call(args);
        if reply == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{args:?}: still \"{}\" after 10 s, expected \"{}\"",
            escape(&reply),
            escape(expected)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn script_kill_reaches_a_busy_server_and_others_get_busy() {
    let (upstream, proxy) = setup();
    // The suite's clients all work in database 9: every shared lane must SELECT first,
    // and that SELECT is what Redis refuses while the script runs.
    let mut runner = proxy.conn();
    let mut other = proxy.conn();
    let mut killer = proxy.conn();
    for c in [&mut runner, &mut other, &mut killer] {
        c.call_expect(&["SELECT", "9"], b"+OK\r\n");
    }
    other.call_expect(&["SET", "k", "v"], b"+OK\r\n");
    runner.send(&resp(&["EVAL", "while true do end", "0"]));
    // Another client's commands get Redis's own -BUSY: no lost connection, no stall.
    until_reply(&mut other, &["GET", "k"], BUSY);
    other.call_expect(&["INCR", "n"], BUSY);
    killer.call_expect(&["SCRIPT", "KILL"], b"+OK\r\n");
    let killed = runner.read_reply();
    assert!(
        killed.starts_with(b"-ERR Script killed by user with SCRIPT KILL")
            && killed.ends_with(b"\r\n"),
        "the killed script's reply: \"{}\"",
        escape(&killed)
    );
    // Every client goes on, in its own database.
    until_reply(&mut other, &["GET", "k"], b"$1\r\nv\r\n");
    runner.call_expect(&["GET", "k"], b"$1\r\nv\r\n");
    killer.call_expect(
        &["SCRIPT", "KILL"],
        b"-NOTBUSY No scripts in execution right now.\r\n",
    );
    let mut direct = upstream.conn();
    direct.call_expect(&["AUTH", PW], b"+OK\r\n");
    direct.call_expect(&["EXISTS", "k"], b":0\r\n");
    direct.call_expect(&["EXISTS", "n"], b":0\r\n");

    // The same for a function.
    let library =
        "#!lua name=spin\nredis.register_function('spin', function() while true do end end)";
    runner.call_expect(&["FUNCTION", "LOAD", library], b"$4\r\nspin\r\n");
    runner.send(&resp(&["FCALL", "spin", "0"]));
    until_reply(
        &mut other,
        &["GET", "k"],
        b"-BUSY Redis is busy running a script. You can only call FUNCTION KILL or SHUTDOWN NOSAVE.\r\n",
    );
    // FUNCTION STATS is answered while busy, and shows the running function.
    let stats = killer.call(&["FUNCTION", "STATS"]);
    assert!(
        stats.starts_with(b"*4\r\n$14\r\nrunning_script\r\n*6\r\n$4\r\nname\r\n$4\r\nspin\r\n"),
        "FUNCTION STATS while busy: \"{}\"",
        escape(&stats)
    );
    killer.call_expect(&["FUNCTION", "KILL"], b"+OK\r\n");
    let killed = runner.read_reply();
    assert!(
        killed.starts_with(b"-ERR ") && killed.ends_with(b"\r\n"),
        "the killed function's reply: \"{}\"",
        escape(&killed)
    );
    until_reply(&mut other, &["GET", "k"], b"$1\r\nv\r\n");
}

#[test]
fn a_client_becomes_a_replica_and_reads_the_replication_stream() {
    let (_upstream, proxy) = setup();
    let mut writer = proxy.conn();
    writer.call_expect(&["SET", "before", "1"], b"+OK\r\n");
    // Inline, as Redis's test helper sends it.
    let mut replica = proxy.conn();
    replica.timeout = Duration::from_secs(10);
    replica.send(b"SYNC\r\n");
    // Newlines may come first (keep-alives while the RDB is made), then `$<len>`.
    let mut header = Vec::new();
    loop {
        let byte = replica.read_exact_bytes(1)[0];
        if byte == b'\n' && header.ends_with(b"\r") && header.starts_with(b"$") {
            header.pop();
            break;
        }
        if byte != b'\n' {
            header.push(byte);
        }
    }
    let len: usize = std::str::from_utf8(&header[1..]).unwrap().parse().unwrap();
    let rdb = replica.read_exact_bytes(len);
    assert!(
        rdb.starts_with(b"REDIS"),
        "not an RDB: {}",
        escape(&rdb[..16.min(len)])
    );
    assert!(
        rdb.windows(6).any(|w| w == b"before"),
        "the RDB does not hold the key written before SYNC"
    );
    // What other clients write now streams to the replica.
    writer.call_expect(&["SET", "after-sync", "2"], b"+OK\r\n");
    let stream = replica.read_until_idle(Duration::from_millis(500), Duration::from_secs(5));
    let text = String::from_utf8_lossy(&stream);
    assert!(
        text.contains("after-sync"),
        "the replication stream: \"{}\"",
        escape(&stream)
    );
}

#[test]
fn redis_cli_rdb_through_the_ambassador_is_loadable() {
    let (_upstream, proxy) = setup();
    let mut c = proxy.conn();
    c.call_expect(&["SET", "saved", "value"], b"+OK\r\n");
    c.call_expect(&["RPUSH", "list", "a", "b"], b":2\r\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dump.rdb");
    let out = Command::new(redis_cli_bin())
        .args(["-h", "127.0.0.1", "-p", &proxy.port().to_string(), "--rdb"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "redis-cli --rdb failed: {}{}\nambassador log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        proxy.log()
    );
    // A fresh server loads it.
    let dir_line = format!("dir {}", dir.path().display());
    let loaded = RedisServer::start_with(ServerAuth::None, &[&dir_line, "dbfilename dump.rdb"]);
    let mut r = loaded.conn();
    r.call_expect(&["GET", "saved"], b"$5\r\nvalue\r\n");
    r.call_expect(
        &["LRANGE", "list", "0", "-1"],
        b"*2\r\n$1\r\na\r\n$1\r\nb\r\n",
    );
}

#[test]
fn a_reply_as_deep_as_a_script_can_make_it_passes_unchanged() {
    let (upstream, proxy) = setup();
    let script = "local a = {}; local b = {a}; a[1] = b; return a";
    let mut direct = upstream.conn();
    direct.call_expect(&["AUTH", PW], b"+OK\r\n");
    direct.send(&resp(&["EVAL", script, "0"]));
    let expected = direct.read_reply();
    assert!(
        expected.len() > 1000 && expected.ends_with(b"-ERR reached lua stack limit\r\n"),
        "Redis's own reply: {} bytes",
        expected.len()
    );
    let mut c = proxy.conn();
    c.send(&resp(&["EVAL", script, "0"]));
    let got = c.read_reply();
    assert_bytes_eq("recursive table", &expected, &got);
    c.call_expect(&["PING"], b"+PONG\r\n");
}

#[test]
fn a_transaction_begun_while_a_script_is_busy_aborts_whole() {
    let (upstream, proxy) = setup();
    let mut runner = proxy.conn();
    let mut r2 = proxy.conn();
    let mut killer = proxy.conn();
    for c in [&mut runner, &mut r2, &mut killer] {
        c.call_expect(&["SELECT", "9"], b"+OK\r\n");
    }
    killer.call_expect(&["SET", "xx", "1"], b"+OK\r\n");
    runner.send(&resp(&["EVAL", "while true do end", "0"]));
    until_reply(&mut killer, &["GET", "xx"], BUSY);
    // Redis takes MULTI while busy (it may run then) and refuses what follows.
    r2.call_expect(&["MULTI"], b"+OK\r\n");
    let queued = r2.call(&["INCR", "xx"]);
    assert!(
        queued == b"+QUEUED\r\n" || queued == BUSY,
        "INCR inside the transaction: \"{}\"",
        escape(&queued)
    );
    killer.call_expect(&["SCRIPT", "KILL"], b"+OK\r\n");
    runner.read_reply();
    r2.call_expect(&["INCR", "xx"], b"+QUEUED\r\n");
    let exec = r2.call(&["EXEC"]);
    assert!(
        exec.starts_with(b"-EXECABORT Transaction discarded because of previous errors"),
        "EXEC: \"{}\"",
        escape(&exec)
    );
    // None of it ran, and the client is out of the transaction.
    killer.call_expect(&["GET", "xx"], b"$1\r\n1\r\n");
    r2.call_expect(&["PING", "asdf"], b"$4\r\nasdf\r\n");
    drop(upstream);
}

#[test]
fn auth_as_a_redis_user_runs_the_clients_commands_as_that_user() {
    let (_upstream, proxy) = setup();
    let mut admin = proxy.conn();
    // In database 9, as Redis's own suite works: bob may not SELECT, and needs not, since
    // his connection chose its database before his AUTH.
    admin.call_expect(&["SELECT", "9"], b"+OK\r\n");
    admin.call_expect(
        &[
            "ACL",
            "SETUSER",
            "bob",
            "on",
            ">123",
            "+get",
            "+acl|whoami",
            "~x*",
        ],
        b"+OK\r\n",
    );
    admin.call_expect(&["SET", "xa", "1"], b"+OK\r\n");
    let mut bob = proxy.conn();
    bob.call_expect(&["SELECT", "9"], b"+OK\r\n");
    bob.call_expect(
        &["AUTH", "bob", "wrong"],
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    );
    bob.call_expect(&["AUTH", "bob", "123"], b"+OK\r\n");
    bob.call_expect(&["ACL", "WHOAMI"], b"$3\r\nbob\r\n");
    bob.call_expect(&["GET", "xa"], b"$1\r\n1\r\n");
    let refused = bob.call(&["SET", "xa", "2"]);
    assert!(
        refused.starts_with(b"-NOPERM"),
        "SET as bob: \"{}\"",
        escape(&refused)
    );
    let refused = bob.call(&["GET", "other"]);
    assert!(
        refused.starts_with(b"-NOPERM"),
        "GET of a key bob may not read: \"{}\"",
        escape(&refused)
    );
    // A failed AUTH keeps the identity it had.
    bob.call_expect(
        &["AUTH", "nobody", "x"],
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    );
    bob.call_expect(&["ACL", "WHOAMI"], b"$3\r\nbob\r\n");
    // HELLO AUTH too; and back to the ambassador's own identity with AUTH default.
    let mut carol = proxy.conn();
    carol.call_expect(&["SELECT", "9"], b"+OK\r\n");
    let hello = carol.call(&["HELLO", "2", "AUTH", "bob", "123"]);
    assert!(
        hello.starts_with(b"*14\r\n"),
        "HELLO AUTH: \"{}\"",
        escape(&hello)
    );
    carol.call_expect(&["ACL", "WHOAMI"], b"$3\r\nbob\r\n");
    carol.call_expect(&["AUTH", "default", "anything"], b"+OK\r\n");
    carol.call_expect(&["SET", "xa", "3"], b"+OK\r\n");
    admin.call_expect(&["GET", "xa"], b"$1\r\n3\r\n");
}

#[test]
fn ping_and_echo_are_answered_by_redis() {
    let (mut upstream, proxy) = setup();
    let mut c = proxy.conn();
    c.call_expect(&["PING"], b"+PONG\r\n");
    c.call_expect(&["ECHO", "hi"], b"$2\r\nhi\r\n");
    c.call_expect(
        &["PING", "a", "b"],
        b"-ERR wrong number of arguments for 'ping' command\r\n",
    );
    upstream.kill();
    // Redis is gone: PING must not say PONG.
    let reply = c.call(&["PING"]);
    assert!(
        reply.starts_with(b"-ERR upstream"),
        "PING with Redis down: \"{}\"",
        escape(&reply)
    );
}

#[test]
fn a_command_right_after_redis_comes_back_gets_no_stale_error() {
    let mut upstream = RedisServer::start_with(ServerAuth::Password(PW.into()), &[]);
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .upstream_password(PW.as_bytes())
        // A long backoff: with the old fail-fast rule every command in it got the last error.
        .reconnect_backoff_ms(5000)
        .reconnect_backoff_max_ms(5000)
        .connect_timeout_ms(3000)
        .start();
    let mut c = proxy.conn();
    c.timeout = Duration::from_secs(10);
    c.call_expect(&["SET", "k", "1"], b"+OK\r\n");
    upstream.kill();
    let down = c.call(&["GET", "k"]);
    assert!(
        down.starts_with(b"-ERR upstream"),
        "with Redis down: \"{}\"",
        escape(&down)
    );
    // A connect has failed and the backoff runs; Redis comes back inside it.
    upstream.restart();
    let mut fresh = proxy.conn();
    fresh.timeout = Duration::from_secs(10);
    fresh.call_expect(&["SET", "k", "2"], b"+OK\r\n");
    c.call_expect(&["GET", "k"], b"$1\r\n2\r\n");
}

#[test]
fn monitor_shows_the_commands_the_ambassador_answers_redacted() {
    let (_upstream, proxy) = setup();
    let mut monitor = proxy.conn();
    monitor.call_expect(&["MONITOR"], b"+OK\r\n");
    let mut c = proxy.conn();
    c.call_expect(&["SET", "k", "v"], b"+OK\r\n");
    c.call(&["auth", "not-real"]);
    c.call(&["auth", "not-real", "not-a-password"]);
    c.call(&["hello", "2", "AUTH", "not-real", "not-a-password"]);
    c.call_expect(&["select", "3"], b"+OK\r\n");
    c.call_expect(&["get", "k"], b"$-1\r\n");
    let expected: [&[u8]; 6] = [
        b"] \"SET\" \"k\" \"v\"\r\n",
        b"] \"auth\" \"(redacted)\"\r\n",
        b"] \"auth\" \"(redacted)\" \"(redacted)\"\r\n",
        b"] \"hello\" \"2\" \"AUTH\" \"(redacted)\" \"(redacted)\"\r\n",
        b"] \"select\" \"3\"\r\n",
        b"] \"get\" \"k\"\r\n",
    ];
    for (i, tail) in expected.iter().enumerate() {
        let line = monitor.read_reply();
        // SELECT shows the database it moved to, as Redis's does.
        let db: &[u8] = if i >= 4 {
            b" [3 127.0.0.1:"
        } else {
            b" [0 127.0.0.1:"
        };
        assert!(
            line.starts_with(b"+")
                && line.ends_with(tail)
                && line.windows(db.len()).any(|w| w == db),
            "MONITOR line \"{}\", expected one ending \"{}\"",
            escape(&line),
            escape(tail)
        );
    }
    // Nothing else: not the ambassador's own handshakes, SELECTs or probes.
    monitor.expect_silence(Duration::from_millis(300));
}

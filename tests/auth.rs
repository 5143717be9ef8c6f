//! Authentication: transparent upstream credentials (password and ACL user), the local
//! AUTH and HELLO matrices (TEST-CATALOGUE B1–B5, B8), `nopass` semantics without a
//! [client] section, and secret-file/env handling.

mod common;

use common::*;
use std::time::Duration;

const PW: &str = "s3cret-client";

async fn redis_call(url: &str, args: &[&[u8]]) -> redis::RedisResult<redis::Value> {
    let client = redis::Client::open(url)?;
    let mut con = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect("connect timed out")?;
    let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        cmd.arg(*a);
    }
    tokio::time::timeout(Duration::from_secs(5), cmd.query_async(&mut con))
        .await
        .expect("command timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_upstream_password() {
    let upstream = RedisServer::with_password("up-pw-1");
    // The upstream really wants a password.
    RawConn::connect(upstream.port()).call_expect(&["GET", "k"], NOAUTH);
    let proxy = AmbassadorBuilder::for_server(&upstream).start();

    let client = redis::Client::open(proxy.url(0)).unwrap();
    let mut con = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect("connect timed out")
    .expect("connect through proxy");
    let _: () = redis::cmd("SET")
        .arg("transparent")
        .arg("yes")
        .query_async(&mut con)
        .await
        .expect("SET through proxy");
    let v: Option<String> = redis::cmd("GET")
        .arg("transparent")
        .query_async(&mut con)
        .await
        .expect("GET through proxy");
    assert_eq!(v.as_deref(), Some("yes"));
    // It landed upstream.
    upstream
        .conn()
        .call_expect(&["GET", "transparent"], b"$3\r\nyes\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_upstream_acl_user() {
    let upstream = RedisServer::with_acl_user("app", "apppass");
    let proxy = AmbassadorBuilder::for_server(&upstream).start();

    let r = redis_call(&proxy.url(0), &[b"SET", b"acl-key", b"v1"]).await;
    assert_eq!(r.expect("SET through proxy"), redis::Value::Okay);
    let r = redis_call(&proxy.url(0), &[b"GET", b"acl-key"]).await;
    assert_eq!(
        r.expect("GET through proxy"),
        redis::Value::BulkString(b"v1".to_vec())
    );
    // Forwarded commands run as the configured ACL user.
    let mut c = proxy.conn();
    c.call_expect(&["ACL", "WHOAMI"], b"$3\r\napp\r\n");
}

#[test]
fn auth_matrix_matches_redis() {
    // B2 + B3, diffed against a Redis with requirepass.
    let upstream = RedisServer::start();
    let bare = RedisServer::with_password(PW);
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(PW.as_bytes())
        .start();
    let mut input = Vec::new();
    for args in [
        vec!["AUTH", "bad"],
        vec!["AUTH", "u", "bad"],
        vec!["AUTH"],
        vec!["AUTH", "a", "b", "c"],
        vec!["AUTH", PW],
        vec!["AUTH", "default", PW],
        vec!["AUTH", "bad"],
        vec!["PING"],
    ] {
        input.extend_from_slice(&resp(&args));
    }
    let mut expected = Vec::new();
    expected.extend_from_slice(WRONGPASS);
    expected.extend_from_slice(WRONGPASS);
    expected.extend_from_slice(b"-ERR wrong number of arguments for 'auth' command\r\n");
    expected.extend_from_slice(b"-ERR syntax error\r\n");
    expected.extend_from_slice(b"+OK\r\n+OK\r\n");
    expected.extend_from_slice(WRONGPASS);
    expected.extend_from_slice(b"+PONG\r\n");

    let mut r = RawConn::connect(bare.port());
    let mut p = proxy.conn();
    let got = diff_open(&mut r, &mut p, &input);
    assert_bytes_eq("AUTH matrix", &expected, &got);
}

#[test]
fn failed_auth_does_not_deauthenticate() {
    // B3, one step at a time.
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(PW.as_bytes())
        .start();
    let mut c = proxy.conn();
    c.call_expect(&["AUTH", PW], b"+OK\r\n");
    c.call_expect(&["AUTH", "bad"], WRONGPASS);
    c.call_expect(&["PING"], b"+PONG\r\n");
    c.call_expect(&["SET", "still", "1"], b"+OK\r\n");
    c.call_expect(&["GET", "still"], b"$1\r\n1\r\n");
}

#[test]
fn noauth_before_auth_and_nothing_forwarded() {
    // B1, diffed against Redis with requirepass.
    let upstream = RedisServer::start();
    let bare = RedisServer::with_password(PW);
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(PW.as_bytes())
        .start();
    let get_before = upstream.command_calls("get");
    let echo_before = upstream.command_calls("echo");
    let mut input = Vec::new();
    for args in [
        vec!["PING"],
        vec!["GET", "k"],
        vec!["SELECT", "1"],
        vec!["CLIENT", "SETNAME", "x"],
        vec!["ECHO", "x"],
    ] {
        input.extend_from_slice(&resp(&args));
    }
    let expected = NOAUTH.repeat(5);
    let mut r = RawConn::connect(bare.port());
    let mut p = proxy.conn();
    let got = diff_open(&mut r, &mut p, &input);
    assert_bytes_eq("NOAUTH before auth", &expected, &got);
    assert_eq!(
        upstream.command_calls("get"),
        get_before,
        "GET was forwarded"
    );
    assert_eq!(
        upstream.command_calls("echo"),
        echo_before,
        "ECHO was forwarded"
    );
    // The name was not applied either.
    p.call_expect(&["AUTH", PW], b"+OK\r\n");
    p.call_expect(&["CLIENT", "GETNAME"], b"$-1\r\n");
}

#[test]
fn hello_matrix_unauthenticated() {
    // B4, exact bytes (Redis 7.2 wording for the HELLO NOAUTH text).
    let upstream = RedisServer::start();
    let version = upstream.version();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(PW.as_bytes())
        .start();

    let mut c = proxy.conn();
    c.call_expect(&["HELLO"], HELLO_NOAUTH_72);
    c.call_expect(&["HELLO", "2"], HELLO_NOAUTH_72);
    c.call_expect(&["HELLO", "3"], HELLO_NOAUTH_72);
    c.call_expect(
        &["HELLO", "4"],
        b"-NOPROTO unsupported protocol version\r\n",
    );
    c.call_expect(
        &["HELLO", "abc"],
        b"-ERR Protocol version is not an integer or out of range\r\n",
    );
    c.call_expect(
        &["HELLO", "AUTH", "u", "p"],
        b"-ERR Protocol version is not an integer or out of range\r\n",
    );
    c.call_expect(
        &["HELLO", "2", "AUTH", "default"],
        b"-ERR Syntax error in HELLO option 'AUTH'\r\n",
    );
    c.call_expect(&["HELLO", "3", "AUTH", "default", "bad"], WRONGPASS);
    // The name is validated before authentication; the client stays unauthenticated.
    c.call_expect(
        &["HELLO", "3", "AUTH", "default", PW, "SETNAME", "a\nb"],
        b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
    );
    c.call_expect(&["PING"], NOAUTH);

    // Success in RESP2: the *14 flat map; id equals CLIENT ID; the name is applied.
    let mut c = proxy.conn();
    c.send(&resp(&[
        "HELLO", "2", "AUTH", "default", PW, "SETNAME", "app1",
    ]));
    let hello = c.read_reply();
    let id = hello_id(&hello);
    assert_bytes_eq("HELLO 2 reply", &hello_reply(2, &version, id), &hello);
    c.call_expect(&["CLIENT", "ID"], format!(":{id}\r\n").as_bytes());
    c.call_expect(&["CLIENT", "GETNAME"], b"$4\r\napp1\r\n");
    c.call_expect(&["PING"], b"+PONG\r\n");

    // RESP3 after auth: the %7 map.
    c.send(&resp(&["HELLO", "3"]));
    c.expect(&hello_reply(3, &version, id));
    c.call_expect(&["GET", "missing-key"], b"_\r\n");

    // HELLO 3 AUTH on a fresh connection.
    let mut c = proxy.conn();
    c.send(&resp(&["HELLO", "3", "AUTH", "default", PW]));
    let hello = c.read_reply();
    let id3 = hello_id(&hello);
    assert_bytes_eq("HELLO 3 AUTH reply", &hello_reply(3, &version, id3), &hello);
    assert!(id3 > id, "CLIENT IDs must increase: {id} then {id3}");
    c.call_expect(&["CLIENT", "ID"], format!(":{id3}\r\n").as_bytes());
    c.call_expect(&["CLIENT", "GETNAME"], b"_\r\n");
}

#[test]
fn hello_failed_auth_does_not_apply_name() {
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(PW.as_bytes())
        .start();
    let mut c = proxy.conn();
    c.call_expect(
        &["HELLO", "2", "AUTH", "default", "bad", "SETNAME", "nope"],
        WRONGPASS,
    );
    c.call_expect(&["AUTH", PW], b"+OK\r\n");
    c.call_expect(&["CLIENT", "GETNAME"], b"$-1\r\n");
}

#[test]
fn nopass_semantics_without_client_section() {
    // No [client]: behaves like a Redis whose default user is nopass (diffed).
    let upstream = RedisServer::start();
    let bare = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream).start();
    let mut input = Vec::new();
    for args in [
        vec!["AUTH", "x"],
        vec!["AUTH", "default", "anything"],
        vec!["AUTH", "someone", "anything"],
        vec!["PING"],
        vec!["SET", "np", "1"],
        vec!["GET", "np"],
    ] {
        input.extend_from_slice(&resp(&args));
    }
    let mut expected = Vec::new();
    expected.extend_from_slice(NOPASS_AUTH_ERR);
    expected.extend_from_slice(b"+OK\r\n");
    expected.extend_from_slice(WRONGPASS);
    expected.extend_from_slice(b"+PONG\r\n+OK\r\n$1\r\n1\r\n");
    let mut r = RawConn::connect(bare.port());
    let mut p = proxy.conn();
    let got = diff_open(&mut r, &mut p, &input);
    assert_bytes_eq("nopass AUTH", &expected, &got);

    // HELLO without AUTH works at once.
    let version = upstream.version();
    let mut c = proxy.conn();
    c.send(&resp(&["HELLO", "3"]));
    let hello = c.read_reply();
    let id = hello_id(&hello);
    assert_bytes_eq("HELLO 3 (nopass)", &hello_reply(3, &version, id), &hello);
}

#[test]
fn reset_returns_to_unauthenticated_db0_resp2() {
    // B8, diffed against Redis with requirepass.
    let upstream = RedisServer::start();
    let bare = RedisServer::with_password(PW);
    for s in [&upstream, &bare] {
        let mut d = s.conn();
        d.call_expect(&["SET", "resetkey", "zero"], b"+OK\r\n");
        d.call_expect(&["SELECT", "3"], b"+OK\r\n");
        d.call_expect(&["SET", "resetkey", "three"], b"+OK\r\n");
    }
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(PW.as_bytes())
        .start();
    let mut input = Vec::new();
    for args in [
        vec!["AUTH", PW],
        vec!["SELECT", "3"],
        vec!["GET", "resetkey"],
        vec!["CLIENT", "SETNAME", "n"],
        vec!["RESET"],
        vec!["PING"],
        vec!["GET", "resetkey"],
        vec!["AUTH", PW],
        vec!["CLIENT", "GETNAME"],
        vec!["GET", "resetkey"],
        vec!["EXEC"],
    ] {
        input.extend_from_slice(&resp(&args));
    }
    let mut expected = Vec::new();
    expected.extend_from_slice(b"+OK\r\n+OK\r\n$5\r\nthree\r\n+OK\r\n+RESET\r\n");
    expected.extend_from_slice(NOAUTH);
    expected.extend_from_slice(NOAUTH);
    expected.extend_from_slice(b"+OK\r\n$-1\r\n$4\r\nzero\r\n-ERR EXEC without MULTI\r\n");
    let mut r = RawConn::connect(bare.port());
    let mut p = proxy.conn();
    let got = diff_open(&mut r, &mut p, &input);
    assert_bytes_eq("RESET sequence", &expected, &got);
}

#[test]
fn reset_returns_to_resp2() {
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream).start();
    let mut c = proxy.conn();
    c.send(&resp(&["HELLO", "3"]));
    let _ = c.read_reply();
    c.call_expect(&["GET", "nothing"], b"_\r\n");
    c.call_expect(&["RESET"], b"+RESET\r\n");
    c.call_expect(&["GET", "nothing"], b"$-1\r\n");
    c.call_expect(&["CLIENT", "GETNAME"], b"$-1\r\n");
}

#[test]
fn preauth_caps_match_redis() {
    // B5: more than 10 args or a bulk over 16 KiB before auth → protocol error + close.
    let upstream = RedisServer::start();
    let bare = RedisServer::with_password(PW);
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(PW.as_bytes())
        .start();
    let mut bystander = proxy.conn();

    let got = diff_closing(bare.port(), proxy.port(), b"*11\r\n");
    assert_bytes_eq(
        "*11 unauthenticated",
        b"-ERR Protocol error: unauthenticated multibulk length\r\n",
        &got,
    );
    let got = diff_closing(bare.port(), proxy.port(), b"*1\r\n$16385\r\n");
    assert_bytes_eq(
        "$16385 unauthenticated",
        b"-ERR Protocol error: unauthenticated bulk length\r\n",
        &got,
    );

    // At the caps: accepted (and answered NOAUTH once complete).
    let mut r = RawConn::connect(bare.port());
    let mut p = proxy.conn();
    r.send(b"*10\r\n");
    p.send(b"*10\r\n");
    p.expect_silence(Duration::from_millis(300));
    r.expect_silence(Duration::from_millis(50));
    let mut rest = resp(&["SET", "k", "v", "a", "b", "c", "d", "e", "f", "g"]);
    rest.drain(..5); // drop the "*10\r\n" header already sent
    let got = diff_open(&mut r, &mut p, &rest);
    assert_bytes_eq("*10 unauthenticated", NOAUTH, &got);
    let big = vec![b'x'; 16384];
    let got = diff_open(&mut r, &mut p, &resp(&[b"ECHO".as_slice(), &big]));
    assert_bytes_eq("$16384 unauthenticated", NOAUTH, &got);

    // After auth, the caps are gone.
    p.call_expect(&["AUTH", PW], b"+OK\r\n");
    let args: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
    let mut cmd = vec!["DEL".to_string()];
    cmd.extend(args);
    p.call_expect(&cmd, b":0\r\n");
    let big = vec![b'y'; 20000];
    p.send(&resp(&[b"ECHO".as_slice(), &big]));
    p.expect(&bulk(&big));

    bystander.call_expect(&["AUTH", PW], b"+OK\r\n");
    bystander.call_expect(&["PING"], b"+PONG\r\n");
}

#[test]
fn client_password_file_trailing_newline_is_stripped() {
    // The harness writes "<pw>\n": exactly one newline is stripped.
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(b"pw-with-newline")
        .start();
    let mut c = proxy.conn();
    c.call_expect(&["AUTH", "pw-with-newline\n"], WRONGPASS);
    c.call_expect(&["AUTH", "pw-with-newline"], b"+OK\r\n");
    c.call_expect(&["PING"], b"+PONG\r\n");
}

#[test]
fn binary_client_password() {
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(b"abc\x00def")
        .start();
    let mut c = proxy.conn();
    c.send(&resp(&[b"AUTH".as_slice(), b"abc"]));
    c.expect(WRONGPASS);
    c.send(&resp(&[b"AUTH".as_slice(), b"abc\x00def"]));
    c.expect(b"+OK\r\n");
    c.call_expect(&["PING"], b"+PONG\r\n");
}

#[test]
fn client_password_from_env() {
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password_env("AMBASSADOR_TEST_CLIENT_PW", "env-pw-42")
        .start();
    let mut c = proxy.conn();
    c.call_expect(&["GET", "k"], NOAUTH);
    c.call_expect(&["AUTH", "wrong"], WRONGPASS);
    c.call_expect(&["AUTH", "env-pw-42"], b"+OK\r\n");
    c.call_expect(&["GET", "k"], b"$-1\r\n");
}

#[test]
fn client_username_is_required_user() {
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_username("appuser")
        .client_password(PW.as_bytes())
        .start();
    let mut c = proxy.conn();
    c.call_expect(&["AUTH", "other", PW], WRONGPASS);
    c.call_expect(&["AUTH", "appuser", "bad"], WRONGPASS);
    c.call_expect(&["GET", "k"], NOAUTH);
    c.call_expect(&["AUTH", "appuser", PW], b"+OK\r\n");
    c.call_expect(&["GET", "k"], b"$-1\r\n");
    let mut c = proxy.conn();
    c.send(&resp(&["HELLO", "3", "AUTH", "appuser", PW]));
    let hello = c.read_reply();
    assert!(hello.starts_with(b"%7\r\n"), "got \"{}\"", escape(&hello));
}

#[test]
fn secret_never_in_replies_or_log() {
    let upstream = RedisServer::start();
    let secret = "Sup3r-S3cret-Pw-7781";
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(secret.as_bytes())
        .log_level("trace")
        .start();
    let mut c = proxy.conn();
    for _ in 0..20 {
        let r = c.call(&["AUTH", "not-the-secret"]);
        assert_bytes_eq("wrong AUTH", WRONGPASS, &r);
    }
    let r = c.call(&["HELLO", "3", "AUTH", "default", "nope"]);
    assert_bytes_eq("wrong HELLO AUTH", WRONGPASS, &r);
    c.call_expect(&["AUTH", secret], b"+OK\r\n");
    c.call_expect(&["PING"], b"+PONG\r\n");
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    let log = proxy.log();
    assert!(
        !log.contains(secret),
        "the client password appears in the proxy log"
    );
}

#[test]
fn b6_many_wrong_auths_pipelined() {
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(PW.as_bytes())
        .start();
    let mut c = proxy.conn();
    c.timeout = Duration::from_secs(10);
    let n = 10_000;
    let one = resp(&["AUTH", "wrong-guess"]);
    let input: Vec<u8> = one.repeat(n);
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut w, &input));
    c.expect(&WRONGPASS.repeat(n));
    writer.join().unwrap().unwrap();
    c.call_expect(&["GET", "k"], NOAUTH);
    c.call_expect(&["AUTH", PW], b"+OK\r\n");
    c.call_expect(&["GET", "k"], b"$-1\r\n");
}

#[test]
fn upstream_password_not_in_log_at_trace() {
    let secret = "Upstream-Trace-Secret-4410";
    let upstream = RedisServer::with_password(secret);
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .log_level("trace")
        .start();
    let mut c = proxy.conn();
    c.call_expect(&["SET", "k", "v"], b"+OK\r\n");
    c.call_expect(&["GET", "k"], b"$1\r\nv\r\n");
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    let log = proxy.log();
    assert!(!log.is_empty(), "no log at trace level");
    assert!(
        !log.contains(secret),
        "the upstream password appears in the proxy log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crate_handshakes_with_client_password() {
    // The redis crate's own connect sequences: AUTH (RESP2) and HELLO 3 AUTH (RESP3),
    // with a database selected and CLIENT SETINFO sent, as real applications do.
    let upstream = RedisServer::with_password("up-pw-2");
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(PW.as_bytes())
        .start();
    for (suffix, key) in [("", "resp2-key"), ("?protocol=resp3", "resp3-key")] {
        let url = format!("redis://:{PW}@127.0.0.1:{}/5{suffix}", proxy.port());
        let r = redis_call(&url, &[b"SET", key.as_bytes(), b"v"]).await;
        assert_eq!(r.expect("SET"), redis::Value::Okay, "{url}");
        let r = redis_call(&url, &[b"GET", key.as_bytes()]).await;
        assert_eq!(
            r.expect("GET"),
            redis::Value::BulkString(b"v".to_vec()),
            "{url}"
        );
        let mut d = upstream.conn();
        d.call_expect(&["SELECT", "5"], b"+OK\r\n");
        d.call_expect(&["GET", key], b"$1\r\nv\r\n");
    }
    // RESP3 through the crate: a map comes back as a map.
    let url = format!("redis://:{PW}@127.0.0.1:{}/0?protocol=resp3", proxy.port());
    let _ = redis_call(&url, &[b"HSET", b"h", b"f", b"v"])
        .await
        .expect("HSET");
    let r = redis_call(&url, &[b"HGETALL", b"h"])
        .await
        .expect("HGETALL");
    assert!(
        matches!(r, redis::Value::Map(_)),
        "HGETALL over RESP3: {r:?}"
    );
    // A wrong password is refused by the proxy.
    let bad = format!("redis://:wrong@127.0.0.1:{}/0", proxy.port());
    let client = redis::Client::open(bad).unwrap();
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect("connect timed out");
    assert!(res.is_err(), "connected with a wrong password");
}

//! Checks the test harness itself against bare Redis: servers start on distinct ports,
//! authenticate, restart on the same port, and the RESP frame reader delimits replies;
//! and the typed config it writes names only keys the proxy knows.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn two_servers_start_on_distinct_ports_and_answer_ping() {
    let a = RedisServer::start();
    let b = RedisServer::with_password("harness-pw");
    assert_ne!(a.port(), b.port());
    a.conn().call_expect(&["PING"], b"+PONG\r\n");
    let mut unauth = RawConn::connect(b.port());
    unauth.call_expect(&["PING"], NOAUTH);
    b.conn().call_expect(&["PING"], b"+PONG\r\n");
    assert_eq!(a.version(), b.version());
    assert!(a.version().starts_with("7."), "version {}", a.version());
}

#[test]
fn acl_user_server_accepts_only_its_user() {
    let s = RedisServer::with_acl_user("app", "apppass");
    let mut c = RawConn::connect(s.port());
    c.call_expect(&["AUTH", "default", "x"], WRONGPASS);
    c.call_expect(&["AUTH", "app", "apppass"], b"+OK\r\n");
    c.call_expect(&["ACL", "WHOAMI"], b"$3\r\napp\r\n");
}

#[test]
fn restart_keeps_the_port_and_loses_data() {
    let mut s = RedisServer::with_password("pw");
    let port = s.port();
    s.conn().call_expect(&["SET", "k", "v"], b"+OK\r\n");
    s.kill();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    s.restart();
    assert_eq!(s.port(), port);
    s.conn().call_expect(&["GET", "k"], b"$-1\r\n");
}

#[test]
fn frame_reader_delimits_resp2_and_resp3() {
    let cases: &[&[u8]] = &[
        b"+OK\r\n",
        b"-ERR x\r\n",
        b":12\r\n",
        b"$-1\r\n",
        b"$0\r\n\r\n",
        b"$5\r\na\r\nbc\r\n",
        b"*-1\r\n",
        b"*0\r\n",
        b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
        b"%1\r\n+k\r\n~2\r\n_\r\n,1.5\r\n",
        b">2\r\n+a\r\n#t\r\n",
        b"|1\r\n+a\r\n+b\r\n+reply\r\n",
    ];
    for c in cases {
        assert_eq!(frame_len(c), Some(c.len()), "{}", escape(c));
        let mut longer = c.to_vec();
        longer.extend_from_slice(b"+NEXT\r\n");
        assert_eq!(frame_len(&longer), Some(c.len()), "{}", escape(c));
        for cut in 0..c.len() {
            assert_eq!(frame_len(&c[..cut]), None, "{} cut at {cut}", escape(c));
        }
    }
    assert_eq!(escape(b"a\r\n\0\xff"), "a\\r\\n\\0\\xff");
}

#[test]
fn hello_builder_matches_bare_redis() {
    let s = RedisServer::start();
    let v = s.version();
    let mut c = s.conn();
    let id = int_reply(&c.call(&["CLIENT", "ID"]));
    c.call_expect(&["HELLO", "2"], &hello_reply(2, &v, id));
    c.call_expect(&["HELLO", "3"], &hello_reply(3, &v, id));
    c.call_expect(&["CLIENT", "GETNAME"], b"_\r\n");
    c.call_expect(&["HELLO", "2"], &hello_reply(2, &v, id));
}

#[test]
fn diff_helpers_work_against_redis_itself() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    let got = diff_closing(a.port(), b.port(), b"*1\r\n$4\r\nPING\r\n*abc\r\n");
    assert_eq!(
        got,
        b"+PONG\r\n-ERR Protocol error: invalid multibulk length\r\n".to_vec()
    );
    let mut ca = a.conn();
    let mut cb = b.conn();
    let got = diff_open(&mut ca, &mut cb, b"\r\n*0\r\n*1\r\n$4\r\nPING\r\n");
    assert_eq!(got, b"+PONG\r\n".to_vec());
    let mut c = a.conn();
    c.timeout = Duration::from_millis(300);
    c.expect_silence(Duration::from_millis(100));
}

/// Every key of the typed test config that needs no file set at once: `--check` (strict,
/// unknown keys refused) accepts the text, and an unset key is left out of it.
#[test]
fn typed_config_uses_only_keys_the_proxy_knows() {
    use common::config::{ClientUser, LogFormat, UpstreamMode};

    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pw");
    std::fs::write(&secret, "Harness-Pw-1\n").unwrap();
    let (listen_port, metrics_port) = free_port_pair();
    let mut c = AmbassadorConfig::new("127.0.0.1:6380")
        .listen_on(listen_port)
        .metrics_on(metrics_port);
    c.listen.max_clients = Some(100);
    c.listen.allow_unauthenticated_remote = Some(false);
    c.listen.tls_handshake_timeout_ms = Some(5000);
    let client = c.client_mut();
    client.username = Some("app".into());
    client.password_file = Some(secret.clone());
    client.rotation_overlap_ms = Some(1000);
    client.commands = Some("+@all -@dangerous".into());
    client.read_only = Some(false);
    client.users.push(ClientUser {
        username: "other".into(),
        password_file: None,
        password_env: Some("HARNESS_OTHER_PW".into()),
        commands: Some("-@all +get +config|get".into()),
        read_only: Some(true),
        // Not in cluster mode: checked below, on a standalone upstream.
        upstream_username: None,
        upstream_password_file: None,
        upstream_password_env: None,
    });
    let u = &mut c.upstream;
    u.mode = Some(UpstreamMode::Cluster);
    u.addresses = Some(vec!["127.0.0.1:6381".into()]);
    u.username = Some("app".into());
    u.password_file = Some(secret);
    u.tls = Some(false);
    u.pool_size = Some(2);
    u.connect_timeout_ms = Some(1000);
    u.pool_wait_timeout_ms = Some(1000);
    u.command_timeout_ms = Some(1000);
    u.reconnect_backoff_ms = Some(50);
    u.reconnect_backoff_max_ms = Some(400);
    u.max_pinned = Some(8);
    u.read_from_replicas = Some(true);
    let l = &mut c.limits;
    l.max_bulk_len = Some(1 << 20);
    l.query_buffer_limit = Some(1 << 20);
    l.unauthenticated_query_buffer_limit = Some(65536);
    l.max_reply_depth = Some(64);
    l.pubsub_output_hard_limit = Some(1 << 22);
    l.pubsub_output_soft_limit = Some(1 << 21);
    l.pubsub_output_soft_seconds = Some(10);
    l.client_output_hard_limit = Some(1 << 24);
    l.max_in_flight = Some(16);
    c.metrics.readiness_interval_ms = Some(500);
    c.metrics.max_connections = Some(4);
    c.metrics.request_timeout_ms = Some(1000);
    c.metrics.quitquitquit = Some(true);
    c.shutdown.drain_delay_ms = Some(0);
    c.shutdown.drain_delay_always = Some(true);
    c.shutdown.grace_period_ms = Some(1000);
    c.secrets.watch = Some(false);
    c.secrets.poll_interval_ms = Some(100);
    c.secrets.debounce_ms = Some(10);
    c.runtime.worker_threads = Some(1);
    c.log.level = Some("info".into());
    c.log.format = Some(LogFormat::Text);
    let path = c.write(&dir.path().join("all.toml"));
    let (status, out) = run_proxy_to_exit(
        &["--config", path.to_str().unwrap(), "--check"],
        &[("HARNESS_OTHER_PW", "Harness-Pw-2")],
        Duration::from_secs(10),
    );
    assert!(
        status.success(),
        "--check refused the typed config ({status}):\n{out}\n{}",
        c.to_toml()
    );

    let minimal = AmbassadorConfig::new("127.0.0.1:6380").to_toml();
    assert_eq!(minimal, "[upstream]\naddress = \"127.0.0.1:6380\"\n");
}

/// The upstream identity keys, which cluster mode refuses: `--check` accepts them on a
/// standalone upstream.
#[test]
fn typed_config_identity_keys() {
    use common::config::ClientUser;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "Harness-Pw-1\n").unwrap();
    let mut s = AmbassadorConfig::new("127.0.0.1:6380");
    let client = s.client_mut();
    client.password_file = Some(dir.path().join("pw"));
    client.upstream_auth = Some(true);
    client.users.push(ClientUser {
        username: "reports".into(),
        password_env: Some("HARNESS_OTHER_PW".into()),
        upstream_username: Some("reporter".into()),
        upstream_password_env: Some("HARNESS_OTHER_PW".into()),
        ..ClientUser::default()
    });
    client.users.push(ClientUser {
        username: "jobs".into(),
        password_env: Some("HARNESS_OTHER_PW".into()),
        upstream_username: Some("jobs".into()),
        upstream_password_file: Some(dir.path().join("pw")),
        ..ClientUser::default()
    });
    let path = s.write(&dir.path().join("identities.toml"));
    let (status, out) = run_proxy_to_exit(
        &["--config", path.to_str().unwrap(), "--check"],
        &[("HARNESS_OTHER_PW", "Harness-Pw-2")],
        Duration::from_secs(10),
    );
    assert!(
        status.success(),
        "--check refused the identity keys ({status}):\n{out}\n{}",
        s.to_toml()
    );
}

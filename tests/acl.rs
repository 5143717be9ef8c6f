//! ACL users (issue 7, item 2) against real redis-server processes: an upstream ACL user
//! (`AUTH user pass` at every upstream connect, rotating like any secret file), and
//! several downstream users (`[client]` plus `[[client.users]]`), each with its own
//! password, checked by the proxy itself.
//!
//! Timeouts here are hang detectors, not thresholds.

mod common;

use common::*;
use std::time::Duration;

const HANG: Duration = Duration::from_secs(10);

/// The upstream user is the one Redis sees, on shared and dedicated connections alike.
#[test]
fn upstream_acl_user() {
    let upstream = RedisServer::with_acl_user("app", "Up-Acl-Pw-4471");
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .log_level("debug")
        .start();
    let mut c = proxy.conn();
    c.call_expect(&["ACL", "WHOAMI"], b"$3\r\napp\r\n");
    c.call_expect(&["SET", "k", "v"], b"+OK\r\n");
    c.call_expect(&["MULTI"], b"+OK\r\n");
    c.call_expect(&["ACL", "WHOAMI"], b"+QUEUED\r\n");
    c.call_expect(&["GET", "k"], b"+QUEUED\r\n");
    c.call_expect(&["EXEC"], b"*2\r\n$3\r\napp\r\n$1\r\nv\r\n");
    assert!(!proxy.log().contains("Up-Acl-Pw-4471"));
}

/// The upstream ACL user's password rotates in a Kubernetes Secret volume while Redis
/// accepts both; connections opened afterwards use the new one.
#[test]
fn upstream_acl_user_password_rotates() {
    let (old, new) = ("Up-Acl-Old-1", "Up-Acl-New-2");
    let upstream = RedisServer::with_acl_user("app", old);
    let mut volume = KubeSecretDir::new(&[("password", old.as_bytes())]);
    let proxy = AmbassadorBuilder::new(&upstream.addr())
        .upstream_username("app")
        .upstream_password_path(&volume.key("password"))
        .secrets_watch(true, 100, 20)
        .start();
    let mut c = proxy.conn();
    c.call_expect(&["SET", "k", "v"], b"+OK\r\n");
    let mut admin = RawConn::connect(upstream.port());
    admin.call_expect(&["AUTH", "app", old], b"+OK\r\n");
    admin.call_expect(&["ACL", "SETUSER", "app", &format!(">{new}")], b"+OK\r\n");
    volume.update(&[("password", new.as_bytes())]);
    assert!(wait_until(HANG, || proxy.log().contains("secret changed")));
    admin.call_expect(&["ACL", "SETUSER", "app", &format!("<{old}")], b"+OK\r\n");
    c.call_expect(&["GET", "k"], b"$1\r\nv\r\n");
    let r = admin.call(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    assert!(r.starts_with(b":"), "{}", escape(&r));
    assert!(wait_until(HANG, || c.call(&["GET", "k"]) == b"$1\r\nv\r\n"));
    c.call_expect(&["ACL", "WHOAMI"], b"$3\r\napp\r\n");
    let log = proxy.log();
    assert!(!log.contains(old) && !log.contains(new), "{log}");
}

/// Several client users: the `[client]` keys' user and `[[client.users]]` entries, each
/// with its own password; a password opens only its own user; CLIENT INFO names the user;
/// RESET forgets it; each user's password rotates on its own.
#[test]
fn several_client_users() {
    let upstream = RedisServer::with_password("Up-Pw-multi-0");
    let secrets = tempfile::tempdir().unwrap();
    let reports_pw = secrets.path().join("reports");
    std::fs::write(&reports_pw, "Cl-Reports-Pw-3\n").unwrap();
    let mut app = KubeSecretDir::new(&[("password", b"Cl-App-Pw-1")]);
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(b"Cl-Default-Pw-0")
        .client_user_file("app", &app.key("password"))
        .client_user_file("reports", &reports_pw)
        .rotation_overlap_ms(0)
        .secrets_watch(true, 50, 10)
        .log_level("debug")
        .start();

    let mut c = proxy.conn();
    c.call_expect(&["PING"], NOAUTH);
    for (user, pw) in [
        ("app", "Cl-Default-Pw-0"),
        ("default", "Cl-App-Pw-1"),
        ("reports", "Cl-App-Pw-1"),
        ("nobody", "Cl-App-Pw-1"),
        ("app", ""),
        ("APP", "Cl-App-Pw-1"),
    ] {
        c.call_expect(&["AUTH", user, pw], WRONGPASS);
    }
    c.call_expect(&["AUTH", "Cl-App-Pw-1"], WRONGPASS);
    c.call_expect(&["PING"], NOAUTH);

    c.call_expect(&["AUTH", "Cl-Default-Pw-0"], b"+OK\r\n");
    assert!(String::from_utf8_lossy(&c.call(&["CLIENT", "INFO"])).contains(" user=default "));
    c.call_expect(&["AUTH", "app", "Cl-App-Pw-1"], b"+OK\r\n");
    assert!(String::from_utf8_lossy(&c.call(&["CLIENT", "INFO"])).contains(" user=app "));
    c.call_expect(&["SET", "k", "v"], b"+OK\r\n");
    c.call_expect(&["RESET"], b"+RESET\r\n");
    c.call_expect(&["GET", "k"], NOAUTH);

    let mut r = proxy.conn();
    let hello = r.call(&["HELLO", "3", "AUTH", "reports", "Cl-Reports-Pw-3"]);
    assert!(hello.starts_with(b"%7\r\n"), "{}", escape(&hello));
    r.call_expect(&["GET", "k"], b"$1\r\nv\r\n");
    assert!(String::from_utf8_lossy(&r.call(&["CLIENT", "INFO"])).contains(" user=reports "));

    // One user's password rotates; the others are untouched.
    app.update(&[("password", b"Cl-App-Pw-2")]);
    assert!(
        wait_until(HANG, || proxy.conn().call(&["AUTH", "app", "Cl-App-Pw-2"])
            == b"+OK\r\n"),
        "app's new password was never accepted"
    );
    proxy
        .conn()
        .call_expect(&["AUTH", "app", "Cl-App-Pw-1"], WRONGPASS);
    proxy
        .conn()
        .call_expect(&["AUTH", "reports", "Cl-Reports-Pw-3"], b"+OK\r\n");
    proxy
        .conn()
        .call_expect(&["AUTH", "default", "Cl-Default-Pw-0"], b"+OK\r\n");
    let log = proxy.log();
    for pw in [
        "Cl-Default-Pw-0",
        "Cl-App-Pw-1",
        "Cl-App-Pw-2",
        "Cl-Reports-Pw-3",
    ] {
        assert!(!log.contains(pw), "{pw} in the log:\n{log}");
    }
}

/// Users only (`[[client.users]]` without a password in `[client]` itself): there is no
/// `default` user, so `AUTH <password>` is refused like any wrong pair.
#[test]
fn client_users_without_default_user() {
    let upstream = RedisServer::start();
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("svc");
    std::fs::write(&pw, "Svc-Pw-77").unwrap();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_user_file("svc", &pw)
        .start();
    let mut c = proxy.conn();
    c.call_expect(&["GET", "k"], NOAUTH);
    c.call_expect(&["AUTH", "Svc-Pw-77"], WRONGPASS);
    c.call_expect(&["AUTH", "default", "Svc-Pw-77"], WRONGPASS);
    c.call_expect(&["AUTH", "svc", "Svc-Pw-77"], b"+OK\r\n");
    c.call_expect(&["PING"], b"+PONG\r\n");
}

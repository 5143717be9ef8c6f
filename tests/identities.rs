//! Who the application is upstream (issue 18): a `[[client.users]]` entry with an
//! `upstream_username` reaches Redis as that ACL user (Redis's `ACL WHOAMI`, `ACL LOG`
//! and `CLIENT LIST user=` say so, on shared lanes and dedicated connections alike, and
//! its password rotates); `[client] upstream_auth` lets a client log in as a Redis user the
//! ambassador does not know, checked by Redis (its own `-WRONGPASS` and `-NOPERM` texts),
//! with one set of connections per user and password whatever the number of clients; a
//! user Redis disables or deletes while connected gets errors, never the ambassador's
//! identity; and `redis_ambassador_user_commands_total` counts each user's commands.
//!
//! Timeouts here are hang detectors, not thresholds.

mod common;

use std::time::{Duration, Instant};

use common::*;

const HANG: Duration = Duration::from_secs(10);
const UPSTREAM_PW: &str = "Up-Pw-ident-1";

/// Runs `args` on a connection straight to Redis.
fn direct(upstream: &RedisServer, args: &[&str]) -> Vec<u8> {
    upstream.conn().call(args)
}

/// The lines of Redis's own `CLIENT LIST` naming `user`.
fn redis_clients_of(upstream: &RedisServer, user: &str) -> usize {
    let list = String::from_utf8_lossy(&direct(upstream, &["CLIENT", "LIST"])).into_owned();
    list.lines()
        .filter(|line| line.contains(&format!(" user={user} ")))
        .count()
}

fn bulk(text: &str) -> Vec<u8> {
    format!("${}\r\n{text}\r\n", text.len()).into_bytes()
}

/// A configured user with its own upstream identity: Redis sees that user, on lanes and
/// on a dedicated (MULTI) connection; its ACL applies and is logged under its name; a
/// user without one is the `[upstream]` identity; its password file rotates.
#[test]
fn configured_user_reaches_redis_as_its_own_acl_user() {
    let upstream = RedisServer::with_password(UPSTREAM_PW);
    direct(
        &upstream,
        &[
            "ACL",
            "SETUSER",
            "reporter",
            "on",
            ">Rep-Up-1",
            "~report:*",
            "+@all",
        ],
    );
    let mut files = KubeSecretDir::new(&[
        ("client", &b"Rep-Client-Pw"[..]),
        ("upstream", b"Rep-Up-1"),
        ("plain", b"Plain-Client-Pw"),
    ]);
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_user_file("reports", &files.key("client"))
        .client_user_identity("reports", "reporter", &files.key("upstream"))
        .client_user_file("plain", &files.key("plain"))
        .secrets_watch(true, 50, 10)
        .pool_size(2)
        .start();

    let mut r = proxy.conn();
    r.call_expect(&["AUTH", "reports", "Rep-Client-Pw"], b"+OK\r\n");
    r.call_expect(&["ACL", "WHOAMI"], &bulk("reporter"));
    r.call_expect(&["SET", "report:1", "x"], b"+OK\r\n");
    // Redis's own refusal, exactly as it answers `reporter` directly.
    let mut own = upstream.conn();
    own.call_expect(&["AUTH", "reporter", "Rep-Up-1"], b"+OK\r\n");
    let expected = own.call(&["SET", "secret", "y"]);
    assert!(expected.starts_with(b"-NOPERM"), "{}", escape(&expected));
    r.call_expect(&["SET", "secret", "y"], &expected);
    // A dedicated connection is the same user.
    r.call_expect(&["MULTI"], b"+OK\r\n");
    r.call_expect(&["ACL", "WHOAMI"], b"+QUEUED\r\n");
    r.call_expect(
        &["EXEC"],
        &[b"*1\r\n".as_slice(), &bulk("reporter")].concat(),
    );
    // Redis attributes the refused write to `reporter` (twice: directly and through us).
    let log = String::from_utf8_lossy(&direct(&upstream, &["ACL", "LOG"])).into_owned();
    assert_eq!(log.matches("reporter").count(), 2, "{log}");
    assert!(redis_clients_of(&upstream, "reporter") >= 2);
    assert_eq!(
        direct(&upstream, &["GET", "report:1"]),
        bulk("x"),
        "the write reached Redis"
    );

    // A user without an identity of its own is the [upstream] one.
    let mut p = proxy.conn();
    p.call_expect(&["AUTH", "plain", "Plain-Client-Pw"], b"+OK\r\n");
    p.call_expect(&["ACL", "WHOAMI"], &bulk("default"));
    p.call_expect(&["SET", "secret", "z"], b"+OK\r\n");

    // The identity's password rotates: Redis takes the new one only, the old connections
    // are killed, and the user's next commands log in with the new password.
    direct(
        &upstream,
        &["ACL", "SETUSER", "reporter", "resetpass", ">Rep-Up-2"],
    );
    files.update(&[
        ("client", &b"Rep-Client-Pw"[..]),
        ("upstream", b"Rep-Up-2"),
        ("plain", b"Plain-Client-Pw"),
    ]);
    assert!(
        wait_until(HANG, || proxy.log().contains("secret changed")),
        "the rotation was never noticed:\n{}",
        proxy.log()
    );
    direct(&upstream, &["CLIENT", "KILL", "USER", "reporter"]);
    assert!(
        wait_until(HANG, || r.call(&["SET", "report:2", "after"]) == b"+OK\r\n"),
        "the user never logged in again with the rotated password:\n{}",
        proxy.log()
    );
    assert_eq!(direct(&upstream, &["GET", "report:2"]), bulk("after"));
    let log = proxy.log();
    for secret in ["Rep-Up-1", "Rep-Up-2", "Rep-Client-Pw"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }

    // Each user's commands are counted under its name.
    let scrape = proxy.scrape();
    let count = |user: &str| {
        scraped_value(
            &scrape,
            &format!("redis_ambassador_user_commands_total{{user=\"{user}\"}}"),
        )
    };
    // Counted once planned, as the user the client is then: AUTH counts for the user it
    // made. `reports`: AUTH, WHOAMI, 2 SETs, MULTI, WHOAMI, EXEC, the SETs after rotation.
    assert!(count("reports") >= 8.0, "{scrape}");
    assert_eq!(count("plain"), 3.0, "{scrape}");
}

/// `[client] upstream_auth`: a user only Redis knows logs in through the ambassador and
/// runs as that user; Redis's own texts for a wrong password and a refused key; clients of
/// one user share its connections; without the key, such an AUTH is the ambassador's
/// `WRONGPASS`.
#[test]
fn upstream_auth_logs_in_as_a_redis_user() {
    let upstream = RedisServer::with_password(UPSTREAM_PW);
    direct(
        &upstream,
        &[
            "ACL",
            "SETUSER",
            "carol",
            "on",
            ">Carol-Pw",
            "~carol:*",
            "+@all",
        ],
    );
    let mut own = upstream.conn();
    let wrongpass = own.call(&["AUTH", "carol", "not-it"]);
    assert!(
        wrongpass.starts_with(b"-WRONGPASS"),
        "{}",
        escape(&wrongpass)
    );
    own.call_expect(&["AUTH", "carol", "Carol-Pw"], b"+OK\r\n");
    let noperm = own.call(&["SET", "elsewhere", "x"]);
    assert!(noperm.starts_with(b"-NOPERM"), "{}", escape(&noperm));

    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(b"App-Pw")
        .upstream_auth(true)
        .pool_size(2)
        .start();
    let mut c = proxy.conn();
    c.call_expect(&["AUTH", "carol", "not-it"], &wrongpass);
    c.call_expect(&["GET", "carol:1"], NOAUTH);
    c.call_expect(&["AUTH", "carol", "Carol-Pw"], b"+OK\r\n");
    c.call_expect(&["ACL", "WHOAMI"], &bulk("carol"));
    c.call_expect(&["SET", "carol:1", "v"], b"+OK\r\n");
    c.call_expect(&["SET", "elsewhere", "x"], &noperm);
    assert!(String::from_utf8_lossy(&c.call(&["CLIENT", "INFO"])).contains(" user=carol "));
    // HELLO … AUTH too, and the ambassador's own users are still its own.
    let mut h = proxy.conn();
    let hello = h.call(&["HELLO", "3", "AUTH", "carol", "Carol-Pw"]);
    assert!(hello.starts_with(b"%7\r\n"), "{}", escape(&hello));
    h.call_expect(&["GET", "carol:1"], b"$1\r\nv\r\n");
    let mut app = proxy.conn();
    app.call_expect(&["AUTH", "App-Pw"], b"+OK\r\n");
    app.call_expect(&["ACL", "WHOAMI"], &bulk("default"));

    // Many clients of one user: one set of lanes (2) and dedicated connections, not one
    // per client (the login checks' connections close once checked).
    let mut clients: Vec<RawConn> = (0..6).map(|_| proxy.conn()).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.call_expect(&["AUTH", "carol", "Carol-Pw"], b"+OK\r\n");
        client.call_expect(&["SET", &format!("carol:{i}"), "v"], b"+OK\r\n");
    }
    let carols = redis_clients_of(&upstream, "carol");
    assert!(
        (1..=4).contains(&carols),
        "{carols} connections as carol for 8 clients (2 lanes, 1 pooled, `own`)"
    );

    // Without upstream_auth the ambassador answers for itself.
    let closed = AmbassadorBuilder::for_server(&upstream)
        .client_password(b"App-Pw")
        .start();
    closed
        .conn()
        .call_expect(&["AUTH", "carol", "Carol-Pw"], WRONGPASS);
}

/// A user Redis deletes, or disables and disconnects, while its clients are connected:
/// their next commands fail (they never run as the ambassador's identity), and a new
/// login gets Redis's refusal.
#[test]
fn upstream_auth_user_disabled_or_deleted_while_connected() {
    let upstream = RedisServer::with_password(UPSTREAM_PW);
    for user in ["dave", "erin"] {
        direct(
            &upstream,
            &["ACL", "SETUSER", user, "on", ">Pw-1", "~*", "+@all"],
        );
    }
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(b"App-Pw")
        .upstream_auth(true)
        .start();
    let mut dave = proxy.conn();
    dave.call_expect(&["AUTH", "dave", "Pw-1"], b"+OK\r\n");
    dave.call_expect(&["SET", "d", "1"], b"+OK\r\n");
    let mut erin = proxy.conn();
    erin.call_expect(&["AUTH", "erin", "Pw-1"], b"+OK\r\n");
    erin.call_expect(&["SET", "e", "1"], b"+OK\r\n");

    // Disabled: Redis 7.0 keeps the live connections, so kill them as an operator would.
    direct(&upstream, &["ACL", "SETUSER", "dave", "off"]);
    direct(&upstream, &["CLIENT", "KILL", "USER", "dave"]);
    // Deleted: Redis closes the user's connections itself.
    direct(&upstream, &["ACL", "DELUSER", "erin"]);
    for (client, key) in [(&mut dave, "d"), (&mut erin, "e")] {
        for _ in 0..3 {
            let reply = client.call(&["SET", key, "2"]);
            assert!(reply.starts_with(b"-"), "{}", escape(&reply));
        }
        assert_eq!(direct(&upstream, &["GET", key]), b"$1\r\n1\r\n");
    }
    let refused = direct(&upstream, &["AUTH", "dave", "Pw-1"]);
    assert!(refused.starts_with(b"-WRONGPASS"), "{}", escape(&refused));
    proxy
        .conn()
        .call_expect(&["AUTH", "dave", "Pw-1"], &refused);
    proxy
        .conn()
        .call_expect(&["AUTH", "erin", "Pw-1"], &refused);
    // The ambassador itself is unharmed.
    let mut app = proxy.conn();
    app.call_expect(&["AUTH", "App-Pw"], b"+OK\r\n");
    app.call_expect(&["GET", "d"], b"$1\r\n1\r\n");
}

/// Repeated failed logins from one address wait before they are checked (the reply is
/// still Redis's); a success starts the count afresh. Only the lower bound of the wait is
/// checked: a slow machine makes it longer, never shorter.
#[test]
fn upstream_auth_failures_are_throttled_per_address() {
    let upstream = RedisServer::with_password(UPSTREAM_PW);
    direct(
        &upstream,
        &["ACL", "SETUSER", "frank", "on", ">Pw-f", "~*", "+@all"],
    );
    let wrongpass = direct(&upstream, &["AUTH", "frank", "nope"]);
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(b"App-Pw")
        .upstream_auth(true)
        .start();
    let mut c = proxy.conn();
    for _ in 0..5 {
        c.call_expect(&["AUTH", "frank", "nope"], &wrongpass);
    }
    for expected_wait in [100, 200] {
        let started = Instant::now();
        c.call_expect(&["AUTH", "frank", "nope"], &wrongpass);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(expected_wait),
            "waited only {waited:?}"
        );
    }
    let started = Instant::now();
    c.call_expect(&["AUTH", "frank", "Pw-f"], b"+OK\r\n");
    assert!(started.elapsed() >= Duration::from_millis(400));
    c.call_expect(&["ACL", "WHOAMI"], &bulk("frank"));
    assert!(started.elapsed() < HANG);
}

/// A client holding its dedicated connection (WATCH) that authenticates as a user with
/// another upstream identity: the connection logs in as that identity (its WATCH kept, as
/// in Redis), and is never handed back to the old identity's pool.
#[test]
fn authenticating_while_watching_moves_the_dedicated_connection() {
    let upstream = RedisServer::with_password(UPSTREAM_PW);
    direct(
        &upstream,
        &[
            "ACL",
            "SETUSER",
            "reporter",
            "on",
            ">Rep-Up-1",
            "~*",
            "+@all",
        ],
    );
    let files = KubeSecretDir::new(&[("client", &b"Rep-Client-Pw"[..]), ("upstream", b"Rep-Up-1")]);
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(b"App-Pw")
        .client_user_file("reports", &files.key("client"))
        .client_user_identity("reports", "reporter", &files.key("upstream"))
        .max_pinned(1)
        .start();
    let mut c = proxy.conn();
    c.call_expect(&["AUTH", "App-Pw"], b"+OK\r\n");
    c.call_expect(&["WATCH", "w"], b"+OK\r\n");
    c.call_expect(&["ACL", "WHOAMI"], &bulk("default"));
    c.call_expect(&["AUTH", "reports", "Rep-Client-Pw"], b"+OK\r\n");
    c.call_expect(&["ACL", "WHOAMI"], &bulk("reporter"));
    // The WATCH survived the move: a change by someone else aborts the transaction.
    direct(&upstream, &["SET", "w", "changed"]);
    c.call_expect(&["MULTI"], b"+OK\r\n");
    c.call_expect(&["SET", "w", "mine"], b"+QUEUED\r\n");
    c.call_expect(&["EXEC"], b"*-1\r\n");
    assert_eq!(direct(&upstream, &["GET", "w"]), bulk("changed"));
    // And it is watched again, and runs, as the new user.
    c.call_expect(&["WATCH", "w"], b"+OK\r\n");
    c.call_expect(&["MULTI"], b"+OK\r\n");
    c.call_expect(&["ACL", "WHOAMI"], b"+QUEUED\r\n");
    c.call_expect(
        &["EXEC"],
        &[b"*1\r\n".as_slice(), &bulk("reporter")].concat(),
    );
    // The one dedicated connection of the ambassador's identity was not the one handed
    // over: another client's WATCH is the ambassador's user.
    drop(c);
    let mut d = proxy.conn();
    d.call_expect(&["AUTH", "App-Pw"], b"+OK\r\n");
    d.call_expect(&["WATCH", "w"], b"+OK\r\n");
    d.call_expect(&["ACL", "WHOAMI"], &bulk("default"));
}

/// The same in RESP3 pub/sub mode (where AUTH is allowed): the relayed connection logs in
/// as the new identity, and messages keep coming.
#[test]
fn authenticating_while_subscribed_moves_the_relayed_connection() {
    let upstream = RedisServer::with_password(UPSTREAM_PW);
    direct(
        &upstream,
        &[
            "ACL",
            "SETUSER",
            "reporter",
            "on",
            ">Rep-Up-1",
            "~*",
            "&*",
            "+@all",
        ],
    );
    let files = KubeSecretDir::new(&[("client", &b"Rep-Client-Pw"[..]), ("upstream", b"Rep-Up-1")]);
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(b"App-Pw")
        .client_user_file("reports", &files.key("client"))
        .client_user_identity("reports", "reporter", &files.key("upstream"))
        .start();
    let mut c = proxy.conn();
    let hello = c.call(&["HELLO", "3", "AUTH", "default", "App-Pw"]);
    assert!(hello.starts_with(b"%7\r\n"), "{}", escape(&hello));
    c.call_expect(
        &["SUBSCRIBE", "news"],
        b">3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n",
    );
    c.call_expect(&["ACL", "WHOAMI"], &bulk("default"));
    c.call_expect(&["AUTH", "reports", "Rep-Client-Pw"], b"+OK\r\n");
    c.call_expect(&["ACL", "WHOAMI"], &bulk("reporter"));
    direct(&upstream, &["PUBLISH", "news", "hi"]);
    c.expect(b">3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n");
    let list = String::from_utf8_lossy(&direct(&upstream, &["CLIENT", "LIST"])).into_owned();
    assert!(
        list.lines()
            .any(|l| l.contains(" user=reporter ") && l.contains(" sub=1 ")),
        "{list}"
    );
}

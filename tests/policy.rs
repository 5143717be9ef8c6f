//! Per-user command rules end to end (issue 18): `[[client.users]] commands` and
//! `read_only` through the proxy to a real Redis. A refused command gets Redis's own
//! `-NOPERM` text — compared with what Redis itself answers a user created with the same
//! rules (`ACL SETUSER`), 7.0's `this user` aside — is refused at queue time inside MULTI
//! (EXEC then gets EXECABORT), is counted by user and command, and never reaches Redis
//! (checked directly: a key survives FLUSHALL, Redis's command statistics never saw it).
//! Users without rules are unaffected.

mod common;

use std::path::PathBuf;

use common::*;

const RULES: &str = "+@all -@dangerous -flushall -config|set";

fn noperm(user: &str, command: &str) -> Vec<u8> {
    format!("-NOPERM User {user} has no permissions to run the '{command}' command\r\n")
        .into_bytes()
}

const EXECABORT: &[u8] = b"-EXECABORT Transaction discarded because of previous errors.\r\n";

/// Password files for the users of these tests.
fn password_files(dir: &tempfile::TempDir, users: &[&str]) -> Vec<PathBuf> {
    users
        .iter()
        .map(|user| {
            let path = dir.path().join(user);
            std::fs::write(&path, format!("Pw-{user}\n")).unwrap();
            path
        })
        .collect()
}

/// The requests of the `commands` test, in order; the same through the proxy and to Redis.
const SCRIPT: &[&[&str]] = &[
    &["SET", "k", "v"],
    &["GET", "k"],
    &["FLUSHALL"],
    &["flushall", "ASYNC"],
    &["CONFIG", "SET", "maxmemory-samples", "5"],
    &["config", "set", "maxmemory-samples"],
    &["KEYS", "*"],
    &["LASTSAVE"],
    &["PING"],
    &["INCR", "n"],
    &["MULTI"],
    &["SET", "a", "1"],
    &["FLUSHALL"],
    &["CONFIG", "SET", "maxmemory-samples", "5"],
    &["GET", "k"],
    &["EXEC"],
    &["GET", "a"],
    &["MULTI"],
    &["SET", "a", "1"],
    &["KEYS", "*"],
    &["EXEC"],
    &["MULTI"],
    &["SET", "a", "1"],
    &["EXEC"],
];

/// What `SCRIPT` gets, request by request.
fn run_script(conn: &mut RawConn) -> Vec<Vec<u8>> {
    SCRIPT.iter().map(|request| conn.call(request)).collect()
}

#[test]
fn commands_rules_refuse_with_redis_text_and_never_reach_redis() {
    let upstream = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let files = password_files(&dir, &["report", "plain"]);
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(b"Pw-default")
        .client_user_file("report", &files[0])
        .client_user_rules("report", Some(RULES), false)
        .client_user_file("plain", &files[1])
        .start();
    let mut direct = upstream.conn();
    direct.call_expect(&["SET", "survivor", "1"], b"+OK\r\n");
    direct.call_expect(&["CONFIG", "RESETSTAT"], b"+OK\r\n");

    let mut c = proxy.conn();
    c.call_expect(&["AUTH", "report", "Pw-report"], b"+OK\r\n");
    let ours = run_script(&mut c);
    // The exact texts, as the issue states them.
    let expected: &[(usize, &[u8])] = &[
        (0, b"+OK\r\n"),
        (1, b"$1\r\nv\r\n"),
        (2, &noperm("report", "flushall")),
        (3, &noperm("report", "flushall")),
        (4, &noperm("report", "config|set")),
        // Wrong arity: Redis's own error, before its ACL.
        (
            5,
            b"-ERR wrong number of arguments for 'config|set' command\r\n",
        ),
        (6, &noperm("report", "keys")),
        (7, &noperm("report", "lastsave")),
        (8, b"+PONG\r\n"),
        (10, b"+OK\r\n"),
        (11, b"+QUEUED\r\n"),
        (12, &noperm("report", "flushall")),
        (13, &noperm("report", "config|set")),
        (14, b"+QUEUED\r\n"),
        (15, EXECABORT),
        (16, b"$-1\r\n"),
        (19, &noperm("report", "keys")),
        (20, EXECABORT),
        (23, b"*1\r\n+OK\r\n"),
    ];
    for (i, reply) in expected {
        assert_bytes_eq(&SCRIPT[*i].join(" "), reply, &ours[*i]);
    }
    // Redis never saw the refused commands: the key survived, and its statistics have no
    // FLUSHALL, KEYS or LASTSAVE (not even rejected ones), and the only CONFIG SET is
    // the one with a wrong arity (forwarded: Redis checks the arity before its ACL).
    direct.call_expect(&["GET", "survivor"], b"$1\r\n1\r\n");
    let stats = String::from_utf8_lossy(&direct.call(&["INFO", "commandstats"])).into_owned();
    for command in ["flushall", "keys", "lastsave"] {
        assert!(
            !stats.contains(&format!("cmdstat_{command}:")),
            "{command} reached Redis:\n{stats}"
        );
    }
    // The one CONFIG SET Redis saw is the wrong arity, which it refused itself.
    assert!(
        stats.contains("cmdstat_config|set:calls=0,usec=0,usec_per_call=0.00,rejected_calls=1,"),
        "{stats}"
    );
    assert!(stats.contains("cmdstat_set:"), "{stats}");

    // Redis's own answers to a user with the same rules: the same bytes (Redis 7.0 says
    // `this user` where 7.2+ names the user).
    direct.call_expect(&["DEL", "k", "n", "a"], b":3\r\n");
    let mut setuser = vec![
        "ACL",
        "SETUSER",
        "report",
        "reset",
        "on",
        ">Pw-report",
        "~*",
        "&*",
    ];
    setuser.extend(RULES.split(' '));
    direct.call_expect(&setuser, b"+OK\r\n");
    let mut as_report = upstream.conn();
    as_report.call_expect(&["AUTH", "report", "Pw-report"], b"+OK\r\n");
    let theirs = run_script(&mut as_report);
    let version = upstream.version();
    let wording_7_2 = !(version.starts_with("6.") || version.starts_with("7.0."));
    for (i, (ours, theirs)) in ours.iter().zip(&theirs).enumerate() {
        let ours = if wording_7_2 {
            ours.clone()
        } else {
            String::from_utf8_lossy(ours)
                .replace("-NOPERM User report ", "-NOPERM this user ")
                .into_bytes()
        };
        assert_bytes_eq(&SCRIPT[i].join(" "), theirs, &ours);
    }

    // A user without rules is unaffected.
    let mut p = proxy.conn();
    p.call_expect(&["AUTH", "plain", "Pw-plain"], b"+OK\r\n");
    p.call_expect(&["CONFIG", "SET", "maxmemory-samples", "5"], b"+OK\r\n");
    p.call_expect(&["MULTI"], b"+OK\r\n");
    p.call_expect(&["KEYS", "nosuch*"], b"+QUEUED\r\n");
    p.call_expect(&["EXEC"], b"*1\r\n*0\r\n");
    p.call_expect(&["FLUSHALL"], b"+OK\r\n");
    direct.call_expect(&["EXISTS", "survivor"], b":0\r\n");

    // Counted by user and command.
    let scrape = proxy.scrape();
    for (command, count) in [("flushall", 3.0), ("config|set", 2.0), ("keys", 2.0)] {
        let sample = format!(
            "redis_ambassador_commands_refused_total{{user=\"report\",command=\"{command}\"}}"
        );
        assert_eq!(scraped_value(&scrape, &sample), count, "{sample}\n{scrape}");
    }
    let plain = "commands_refused_total{user=\"plain\"";
    assert!(!scrape.contains(plain), "{scrape}");
}

#[test]
fn read_only_user_refused_writes_and_scripts_that_may_write() {
    let upstream = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let files = password_files(&dir, &["ro"]);
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(b"Pw-default")
        .client_user_file("ro", &files[0])
        .client_user_rules("ro", None, true)
        .start();
    let mut direct = upstream.conn();
    direct.call_expect(&["SET", "k", "v"], b"+OK\r\n");
    direct.call_expect(&["CONFIG", "RESETSTAT"], b"+OK\r\n");

    let mut c = proxy.conn();
    c.call_expect(&["AUTH", "ro", "Pw-ro"], b"+OK\r\n");
    c.call_expect(&["SET", "k", "w"], &noperm("ro", "set"));
    c.call_expect(
        &["EVAL", "return redis.call('set', 'k', 'x')", "0"],
        &noperm("ro", "eval"),
    );
    c.call_expect(&["GET", "k"], b"$1\r\nv\r\n");
    c.call_expect(
        &["EVAL_RO", "return redis.call('get', KEYS[1])", "1", "k"],
        b"$1\r\nv\r\n",
    );
    c.call_expect(&["MULTI"], b"+OK\r\n");
    c.call_expect(&["GET", "k"], b"+QUEUED\r\n");
    c.call_expect(&["DEL", "k"], &noperm("ro", "del"));
    c.call_expect(&["EXEC"], EXECABORT);
    direct.call_expect(&["GET", "k"], b"$1\r\nv\r\n");
    let stats = String::from_utf8_lossy(&direct.call(&["INFO", "commandstats"])).into_owned();
    for command in ["set", "eval", "del"] {
        assert!(
            !stats.contains(&format!("cmdstat_{command}:")),
            "{command} reached Redis:\n{stats}"
        );
    }
    assert!(stats.contains("cmdstat_eval_ro:"), "{stats}");
}

/// While the upstream's command table cannot be read, a user with rules is refused, not
/// let through unchecked; once Redis is back, the rules apply.
#[test]
fn rules_fail_closed_while_the_catalogue_cannot_be_read() {
    let upstream = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let files = password_files(&dir, &["report"]);
    // A Redis that refuses COMMAND to the proxy's upstream user.
    upstream
        .conn()
        .call_expect(&["ACL", "SETUSER", "default", "-command"], b"+OK\r\n");
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(b"Pw-default")
        .client_user_file("report", &files[0])
        .client_user_rules("report", Some(RULES), false)
        .start();
    let mut c = proxy.conn();
    c.call_expect(&["AUTH", "report", "Pw-report"], b"+OK\r\n");
    let reply = c.call(&["SET", "k", "v"]);
    assert!(
        reply.starts_with(b"-ERR the command rules of user report cannot be checked"),
        "{}",
        escape(&reply)
    );
    upstream.conn().call_expect(&["EXISTS", "k"], b":0\r\n");
    // Redis lets the proxy read it again: the next request loads it.
    upstream
        .conn()
        .call_expect(&["ACL", "SETUSER", "default", "+command"], b"+OK\r\n");
    c.call_expect(&["SET", "k", "v"], b"+OK\r\n");
    c.call_expect(&["FLUSHALL"], &noperm("report", "flushall"));
}

#[test]
fn check_names_the_key_and_the_user_of_bad_rules() {
    let dir = tempfile::tempdir().unwrap();
    let files = password_files(&dir, &["report"]);
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[client]\n[[client.users]]\nusername = \"report\"\npassword_file = \"{}\"\n\
             commands = \"+@all ~*\"\n[upstream]\naddress = \"127.0.0.1:1\"\n",
            files[0].display()
        ),
    )
    .unwrap();
    let (status, out) = check_config(&path);
    assert!(!status.success(), "{out}");
    assert!(
        out.contains(
            "[[client.users]] `report` commands (user `report`): '~*' is not a command rule"
        ),
        "{out}"
    );
}

/// `[client] commands` / `read_only` apply to the `[client]` keys' own user, however it
/// authenticates (AUTH with one argument, HELLO … AUTH), and RESET forgets them.
#[test]
fn client_section_user_rules() {
    let upstream = RedisServer::start();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(b"Pw-default")
        .configure(|c| {
            c.client_mut().commands = Some("+@all -flushall".into());
            c.client_mut().read_only = Some(true);
        })
        .start();
    let mut c = proxy.conn();
    c.call_expect(&["AUTH", "Pw-default"], b"+OK\r\n");
    c.call_expect(&["SET", "k", "v"], &noperm("default", "set"));
    c.call_expect(&["FLUSHALL"], &noperm("default", "flushall"));
    c.call_expect(&["GET", "k"], b"$-1\r\n");
    c.call_expect(&["RESET"], b"+RESET\r\n");
    c.call_expect(&["SET", "k", "v"], NOAUTH);
    let hello = c.call(&["HELLO", "3", "AUTH", "default", "Pw-default"]);
    assert!(hello.starts_with(b"%7\r\n"), "{}", escape(&hello));
    c.call_expect(&["SET", "k", "v"], &noperm("default", "set"));
    upstream.conn().call_expect(&["EXISTS", "k"], b":0\r\n");
}

/// Relay mode (pub/sub, CLIENT TRACKING) carries the client's commands on a connection of
/// its own: the rules apply there too, in the command's place, and inside MULTI the
/// refusal aborts the transaction.
#[test]
fn rules_apply_in_relay_mode() {
    let upstream = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let files = password_files(&dir, &["report"]);
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password(b"Pw-default")
        .client_user_file("report", &files[0])
        .client_user_rules("report", Some(RULES), false)
        .start();
    let mut direct = upstream.conn();
    direct.call_expect(&["SET", "survivor", "1"], b"+OK\r\n");

    // RESP2 subscribed mode: Redis checks its ACL before the subscribed context.
    let mut c = proxy.conn();
    c.call_expect(&["AUTH", "report", "Pw-report"], b"+OK\r\n");
    c.call_expect(
        &["SUBSCRIBE", "ch"],
        b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
    );
    c.call_expect(&["FLUSHALL"], &noperm("report", "flushall"));
    c.call_expect(&["PING"], b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");

    // RESP3 with tracking on: every command goes through the relay.
    let mut t = proxy.conn();
    let hello = t.call(&["HELLO", "3", "AUTH", "report", "Pw-report"]);
    assert!(hello.starts_with(b"%7\r\n"), "{}", escape(&hello));
    t.call_expect(&["CLIENT", "TRACKING", "ON"], b"+OK\r\n");
    t.call_expect(&["FLUSHALL"], &noperm("report", "flushall"));
    t.call_expect(&["MULTI"], b"+OK\r\n");
    t.call_expect(&["SET", "a", "1"], b"+QUEUED\r\n");
    t.call_expect(
        &["CONFIG", "SET", "maxmemory-samples", "5"],
        &noperm("report", "config|set"),
    );
    t.call_expect(&["EXEC"], EXECABORT);
    t.call_expect(&["GET", "survivor"], b"$1\r\n1\r\n");
    direct.call_expect(&["EXISTS", "a"], b":0\r\n");
    direct.call_expect(&["GET", "survivor"], b"$1\r\n1\r\n");
}

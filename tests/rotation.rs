//! Secret rotation (TEST-CATALOGUE F1–F5) against real redis-server processes: a
//! Kubernetes-style secret volume (`..data` swapped by rename, as kubelet does) rotated
//! while clients run. Upstream passwords: with an overlap in Redis (zero failed commands),
//! without one (errors only where a new connection was needed, recovery without restart),
//! and Secret-first (the last good password keeps working). Client passwords: the old one
//! accepted during the overlap, refused after; authenticated clients stay so. A missing,
//! empty or half-written file keeps the last good value. Secrets never reach the log.
//!
//! Timeouts here are hang detectors, not thresholds.

mod common;

use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

const HANG: Duration = Duration::from_secs(10);

/// A raw connection to Redis itself, authenticated with `password` (as the default user).
fn redis_admin(server: &RedisServer, password: &str) -> RawConn {
    let mut c = RawConn::connect(server.port());
    c.call_expect(&["AUTH", password], b"+OK\r\n");
    c
}

/// Closes every normal client connection on Redis except the caller's: the proxy's
/// upstream connections, so that new ones must authenticate.
fn kill_upstream_connections(admin: &mut RawConn) {
    let r = admin.call(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    assert!(r.starts_with(b":"), "{}", escape(&r));
}

#[track_caller]
fn assert_no_secret_in_log(proxy: &Ambassador, secrets: &[&str]) {
    let log = proxy.log();
    for s in secrets {
        assert!(
            !log.contains(s),
            "secret {s:?} appears in the proxy log:\n{log}"
        );
    }
}

/// The value of a counter without labels in the proxy's /metrics.
fn counter(proxy: &Ambassador, name: &str) -> f64 {
    let text = proxy.scrape();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Runs SET/GET pairs on its own connection to the proxy until stopped; counts replies
/// that are not the expected ones.
struct Traffic {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    handle: thread::JoinHandle<Vec<String>>,
}

impl Traffic {
    fn start(proxy: &Ambassador, id: u32) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let mut c = proxy.conn();
        let (s, f, d) = (stop.clone(), failures.clone(), done.clone());
        let handle = thread::spawn(move || {
            let mut seen = Vec::new();
            let key = format!("traffic:{id}");
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let value = i.to_string();
                let set = c.call(&["SET", key.as_str(), value.as_str()]);
                let get = c.call(&["GET", key.as_str()]);
                if set != b"+OK\r\n" || get != bulk(value.as_bytes()) {
                    f.fetch_add(1, Ordering::Relaxed);
                    if seen.len() < 5 {
                        seen.push(format!("{} / {}", escape(&set), escape(&get)));
                    }
                }
                d.fetch_add(1, Ordering::Relaxed);
            }
            seen
        });
        Traffic {
            stop,
            failures,
            done,
            handle,
        }
    }

    /// Waits until `n` more pairs have completed (so the traffic spans what happens next).
    fn advance(&self, n: u64) {
        let from = self.done.load(Ordering::Relaxed);
        assert!(
            wait_until(HANG, || self.done.load(Ordering::Relaxed) >= from + n),
            "traffic stalled"
        );
    }

    fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.handle.join().expect("traffic thread");
        (
            self.done.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
            seen,
        )
    }
}

fn wait_for_log(proxy: &Ambassador, text: &str, times: usize) {
    assert!(
        wait_until(HANG, || proxy.log().matches(text).count() >= times),
        "the proxy never logged {text:?} ({times}×)"
    );
}

/// F2 (a): Redis accepts both passwords during the switch; the Secret is swapped between
/// `ACL SETUSER default >new` and `ACL SETUSER default <old`. Zero failed commands, and
/// connections opened afterwards authenticate with the new password (the only one left).
#[test]
fn upstream_rotation_with_overlap_has_zero_failures() {
    let old = "up-old-Pw-7f3a9c";
    let new = "up-new-Pw-2b8e41";
    let upstream = RedisServer::with_password(old);
    let mut volume = KubeSecretDir::new(&[("password", old.as_bytes())]);
    // inotify only (no polling): the `..data` swap must be seen by the watcher.
    let proxy = AmbassadorBuilder::new(&upstream.addr())
        .upstream_password_path(&volume.key("password"))
        .secrets_watch(true, 0, 20)
        .pool_size(2)
        .log_level("debug")
        .start();
    let traffic: Vec<_> = (0..3).map(|i| Traffic::start(&proxy, i)).collect();
    traffic[0].advance(50);

    let mut admin = redis_admin(&upstream, old);
    admin.call_expect(
        &["ACL", "SETUSER", "default", &format!(">{new}")],
        b"+OK\r\n",
    );
    traffic[0].advance(50);
    volume.update(&[("password", new.as_bytes())]);
    wait_for_log(&proxy, "secret changed", 1);
    traffic[0].advance(50);
    // New dedicated connections during the switch (MULTI pins one).
    let mut m = proxy.conn();
    m.call_expect(&["MULTI"], b"+OK\r\n");
    m.call_expect(&["INCR", "multi"], b"+QUEUED\r\n");
    m.call_expect(&["EXEC"], b"*1\r\n:1\r\n");
    admin.call_expect(
        &["ACL", "SETUSER", "default", &format!("<{old}")],
        b"+OK\r\n",
    );
    traffic[0].advance(50);
    for t in traffic {
        let (done, failures, seen) = t.finish();
        assert!(done > 0);
        assert_eq!(failures, 0, "failed commands across the switch: {seen:?}");
    }

    // Force new upstream connections: only the new password opens Redis now.
    kill_upstream_connections(&mut admin);
    let mut c = proxy.conn();
    assert!(
        wait_until(HANG, || c.call(&["SET", "after", "1"]) == b"+OK\r\n"),
        "no service after the upstream connections were closed"
    );
    c.call_expect(&["GET", "after"], b"$1\r\n1\r\n");
    c.call_expect(&["MULTI"], b"+OK\r\n");
    c.call_expect(&["EXEC"], b"*0\r\n");
    assert_eq!(
        counter(&proxy, "redis_ambassador_secret_reloads_total"),
        1.0
    );
    assert_no_secret_in_log(&proxy, &[old, new]);
}

/// F2 (b) and D5: no overlap in Redis (`resetpass >new`), the Secret swapped 2 s later.
/// Established connections keep working; a command needing a new connection fails with
/// `-ERR upstream authentication failed…`; once the Secret changes the proxy recovers on
/// its own, without restart. Watching and polling are off here: what recovers is the
/// immediate re-read after WRONGPASS.
#[test]
fn upstream_rotation_without_overlap_recovers_without_restart() {
    let old = "up-old-Pw-c0ffee";
    let new = "up-new-Pw-decaf1";
    let upstream = RedisServer::with_password(old);
    let mut volume = KubeSecretDir::new(&[("password", old.as_bytes())]);
    let mut proxy = AmbassadorBuilder::new(&upstream.addr())
        .upstream_password_path(&volume.key("password"))
        .secrets_watch(false, 0, 20)
        .reconnect_backoff_ms(100)
        .pool_size(1)
        .log_level("debug")
        .start();
    let pid = proxy.pid();
    let mut c = proxy.conn();
    c.call_expect(&["SET", "k", "v"], b"+OK\r\n");

    let mut admin = redis_admin(&upstream, old);
    admin.call_expect(
        &["ACL", "SETUSER", "default", "resetpass", &format!(">{new}")],
        b"+OK\r\n",
    );
    // The established lane was authenticated before: Redis does not drop it.
    c.call_expect(&["GET", "k"], b"$1\r\nv\r\n");

    kill_upstream_connections(&mut admin);
    let auth_error = b"-ERR upstream authentication failed: WRONGPASS";
    assert!(
        wait_until(HANG, || c.call(&["GET", "k"]).starts_with(auth_error)),
        "new connections should fail with an upstream authentication error"
    );
    thread::sleep(Duration::from_secs(2));
    let r = c.call(&["GET", "k"]);
    assert!(r.starts_with(auth_error), "{}", escape(&r));
    // /readyz says why.
    assert!(wait_until(HANG, || {
        let r = proxy.http_get("/readyz");
        r.status == 503 && r.body.contains("upstream authentication failed")
    }));

    volume.update(&[("password", new.as_bytes())]);
    assert!(
        wait_until(HANG, || c.call(&["GET", "k"]) == b"$1\r\nv\r\n"),
        "the proxy did not recover once the Secret changed"
    );
    assert!(wait_until(HANG, || proxy.http_get("/readyz").status == 200));
    assert!(proxy.is_running());
    assert_eq!(proxy.pid(), pid);
    assert!(counter(&proxy, "redis_ambassador_secret_reloads_total") >= 1.0);
    assert_no_secret_in_log(&proxy, &[old, new]);
}

/// F3: the Secret changes first, while Redis still accepts only the old password. New
/// connections fall back to the last password that worked; once Redis takes the new one
/// (and drops the old), new connections use it.
#[test]
fn upstream_secret_first_falls_back_to_last_good() {
    let old = "up-old-Pw-5e5e5e";
    let new = "up-new-Pw-6f6f6f";
    let upstream = RedisServer::with_password(old);
    let mut volume = KubeSecretDir::new(&[("password", old.as_bytes())]);
    let proxy = AmbassadorBuilder::new(&upstream.addr())
        .upstream_password_path(&volume.key("password"))
        .secrets_watch(true, 100, 20)
        .reconnect_backoff_ms(100)
        .pool_size(1)
        .log_level("debug")
        .start();
    let mut c = proxy.conn();
    c.call_expect(&["SET", "k", "v"], b"+OK\r\n");
    volume.update(&[("password", new.as_bytes())]);
    wait_for_log(&proxy, "secret changed", 1);

    let mut admin = redis_admin(&upstream, old);
    kill_upstream_connections(&mut admin);
    assert!(
        wait_until(HANG, || c.call(&["GET", "k"]) == b"$1\r\nv\r\n"),
        "no service with the last good password"
    );
    wait_for_log(&proxy, "still accepts the previous one", 1);

    admin.call_expect(
        &["ACL", "SETUSER", "default", &format!(">{new}")],
        b"+OK\r\n",
    );
    admin.call_expect(
        &["ACL", "SETUSER", "default", &format!("<{old}")],
        b"+OK\r\n",
    );
    kill_upstream_connections(&mut admin);
    assert!(
        wait_until(HANG, || c.call(&["GET", "k"]) == b"$1\r\nv\r\n"),
        "no service with the new password"
    );
    assert_no_secret_in_log(&proxy, &[old, new]);
}

/// F1: the client password rotates by a kubelet swap, seen by polling alone. The old
/// password is accepted during the overlap and refused after it; a client that
/// authenticated before stays authenticated throughout.
#[test]
fn client_password_rotation_with_overlap() {
    let old = "cl-old-Pw-a1a1";
    let new = "cl-new-Pw-b2b2";
    let upstream = RedisServer::start();
    let mut volume = KubeSecretDir::new(&[("password", old.as_bytes())]);
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password_path(&volume.key("password"))
        .rotation_overlap_ms(3000)
        .secrets_watch(false, 50, 10)
        .log_level("debug")
        .start();
    let mut before = proxy.conn();
    before.call_expect(&["AUTH", old], b"+OK\r\n");
    before.call_expect(&["SET", "k", "v"], b"+OK\r\n");

    volume.update(&[("password", new.as_bytes())]);
    assert!(
        wait_until(HANG, || {
            let mut c = proxy.conn();
            c.call(&["AUTH", new]) == b"+OK\r\n"
        }),
        "the new client password was never accepted"
    );
    // Within the overlap the old one still opens a new connection.
    let mut during = proxy.conn();
    during.call_expect(&["AUTH", "default", old], b"+OK\r\n");
    during.call_expect(&["GET", "k"], b"$1\r\nv\r\n");
    // After it, WRONGPASS.
    assert!(
        wait_until(HANG, || {
            let mut c = proxy.conn();
            c.call(&["AUTH", old]) == WRONGPASS
        }),
        "the old client password was still accepted after the overlap"
    );
    let mut after = proxy.conn();
    after.call_expect(&["HELLO", "3", "AUTH", "default", old], WRONGPASS);
    after.call_expect(&["GET", "k"], NOAUTH);
    // Clients authenticated before stay authenticated (Redis's rule), even after a failed
    // AUTH with the old password.
    before.call_expect(&["GET", "k"], b"$1\r\nv\r\n");
    during.call_expect(&["AUTH", old], WRONGPASS);
    during.call_expect(&["GET", "k"], b"$1\r\nv\r\n");
    assert_no_secret_in_log(&proxy, &[old, new]);
}

/// F4: during an update the file is empty, missing, only a newline, or written in two
/// steps: the last good value stays (logged, counted), never an empty password; a
/// trailing newline is stripped.
#[test]
fn unusable_secret_file_keeps_last_good_value() {
    let one = "cl-one-Pw-9911";
    let two = "cl-two-Pw-9922";
    let upstream = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("password");
    std::fs::write(&path, format!("{one}\n")).unwrap();
    let proxy = AmbassadorBuilder::for_server(&upstream)
        .client_password_path(&path)
        .rotation_overlap_ms(0)
        .secrets_watch(true, 50, 300)
        .log_level("debug")
        .start();
    let auth = |pw: &str| proxy.conn().call(&["AUTH", pw]);
    assert_eq!(auth(one), b"+OK\r\n");
    let failures = "redis_ambassador_secret_reload_failures_total";
    let mut seen = counter(&proxy, failures);
    for step in ["empty", "newline", "missing"] {
        match step {
            "empty" => std::fs::write(&path, "").unwrap(),
            "newline" => std::fs::write(&path, "\n").unwrap(),
            _ => std::fs::remove_file(&path).unwrap(),
        }
        assert!(
            wait_until(HANG, || counter(&proxy, failures) > seen),
            "{step}: no reload failure counted"
        );
        seen = counter(&proxy, failures);
        assert_eq!(auth(one), b"+OK\r\n", "{step}");
        let r = proxy.conn().call(&["AUTH", ""]);
        assert_eq!(r, WRONGPASS, "{step}");
    }
    assert!(proxy.log().contains("keeping the last good value"));

    // Written in place in two steps: the half-written value is never taken.
    let reloads = counter(&proxy, "redis_ambassador_secret_reloads_total");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&two.as_bytes()[..5]).unwrap();
        f.sync_all().unwrap();
        thread::sleep(Duration::from_millis(20));
        f.write_all(&two.as_bytes()[5..]).unwrap();
        f.write_all(b"\n").unwrap();
    }
    assert!(
        wait_until(HANG, || auth(two) == b"+OK\r\n"),
        "the complete new value was never taken"
    );
    assert_eq!(auth(&two[..5]), WRONGPASS);
    assert_eq!(auth(one), WRONGPASS);
    assert_eq!(
        counter(&proxy, "redis_ambassador_secret_reloads_total"),
        reloads + 1.0,
        "exactly one change installed"
    );
    assert_no_secret_in_log(&proxy, &[one, two]);
}

/// F5: secrets whose rotation cannot be seen are named at start-up (an environment
/// variable; a file with no `..data` next to it, as with a subPath mount); a file in a
/// Kubernetes Secret volume is not.
#[test]
fn start_up_warns_where_rotation_cannot_be_seen() {
    let upstream = RedisServer::with_password("up-Pw-warn-1");
    let volume = KubeSecretDir::new(&[("password", b"up-Pw-warn-1")]);
    let proxy = AmbassadorBuilder::new(&upstream.addr())
        .upstream_password_path(&volume.key("password"))
        .client_password_env("AMBASSADOR_ROTATION_TEST_PW", "cl-env-Pw-1")
        .start();
    let mut c = proxy.conn();
    c.call_expect(&["AUTH", "cl-env-Pw-1"], b"+OK\r\n");
    c.call_expect(&["PING"], b"+PONG\r\n");
    let log = proxy.log();
    assert!(
        log.contains("cannot rotate without a restart")
            && log.contains("AMBASSADOR_ROTATION_TEST_PW"),
        "{log}"
    );
    assert!(!log.contains("not in a Kubernetes Secret volume"), "{log}");
    drop(proxy);

    // Outside a pod a plain file is normal: said at info level.
    let plain = AmbassadorBuilder::for_server(&upstream).start();
    plain.conn().call_expect(&["PING"], b"+PONG\r\n");
    let log = plain.log();
    let line = volume_line(&log);
    assert!(line.contains(" INFO ") && !line.contains(" WARN "), "{log}");
    assert!(line.contains("upstream_password"), "{log}");
    assert!(line.contains("[upstream] password_file"), "{log}");
    assert_no_secret_in_log(&plain, &["up-Pw-warn-1"]);
    drop(plain);

    // In a pod (Kubernetes sets KUBERNETES_SERVICE_HOST), a warning.
    let in_pod = AmbassadorBuilder::for_server(&upstream)
        .env(IN_POD_VARIABLE, "10.96.0.1")
        .start();
    in_pod.conn().call_expect(&["PING"], b"+PONG\r\n");
    let log = in_pod.log();
    let line = volume_line(&log);
    assert!(line.contains(" WARN "), "{log}");
    assert!(line.contains("mount the Secret as a directory"), "{log}");
}

/// The log line about a secret file outside a Kubernetes Secret volume.
#[track_caller]
fn volume_line(log: &str) -> &str {
    log.lines()
        .find(|l| l.contains("not in a Kubernetes Secret volume"))
        .unwrap_or_else(|| panic!("no line about the Secret volume:\n{log}"))
}

/// Item 1's "recycled gradually": after a rotation, a lane moves to a connection made with
/// the new password at its next quiet moment, so removing the old password from Redis
/// later cannot strand it. Checked on Redis's side: the connection that carried traffic
/// before the rotation is gone, and traffic still flows.
#[test]
fn lanes_move_to_the_new_password_after_a_rotation() {
    let old = "up-old-Pw-5eed01";
    let new = "up-new-Pw-5eed02";
    let upstream = RedisServer::with_password(old);
    let mut volume = KubeSecretDir::new(&[("password", old.as_bytes())]);
    let proxy = AmbassadorBuilder::new(&upstream.addr())
        .upstream_password_path(&volume.key("password"))
        .secrets_watch(true, 0, 20)
        .pool_size(1)
        .log_level("debug")
        .start();
    let mut c = proxy.conn();
    c.call_expect(&["SET", "k", "1"], b"+OK\r\n");
    let mut admin = redis_admin(&upstream, old);
    // The lane's connection is the one that ran the SET.
    let lane_before = connection_that_ran(&mut admin, "set");
    admin.call_expect(
        &["ACL", "SETUSER", "default", &format!(">{new}")],
        b"+OK\r\n",
    );
    volume.update(&[("password", new.as_bytes())]);
    wait_for_log(&proxy, "secret changed", 1);
    // The next quiet write recycles the lane.
    c.call_expect(&["INCR", "k"], b":2\r\n");
    let lane_after = connection_that_ran(&mut admin, "incr");
    assert_ne!(
        lane_before, lane_after,
        "the lane kept its pre-rotation connection"
    );
    let list = String::from_utf8_lossy(&admin.call(&["CLIENT", "LIST"])).into_owned();
    assert!(
        !list
            .lines()
            .any(|l| l.starts_with(&format!("id={lane_before} "))),
        "the pre-rotation connection is still open: {list}"
    );
    // Now the old password can go: nothing depends on it.
    admin.call_expect(
        &["ACL", "SETUSER", "default", &format!("<{old}")],
        b"+OK\r\n",
    );
    c.call_expect(&["INCR", "k"], b":3\r\n");
    assert_no_secret_in_log(&proxy, &[old, new]);
}

/// The id of the connection whose last command was `cmd` (Redis's CLIENT LIST).
fn connection_that_ran(admin: &mut RawConn, cmd: &str) -> String {
    let list = String::from_utf8_lossy(&admin.call(&["CLIENT", "LIST"])).into_owned();
    list.lines()
        .find(|l| l.contains(&format!(" cmd={cmd} ")))
        .and_then(|l| l.strip_prefix("id="))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("no connection ran {cmd}: {list}"))
        .to_owned()
}

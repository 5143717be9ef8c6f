//! The sidecar's lifecycle against the real binary: liveness that never depends on Redis,
//! readiness that follows the upstream (down, wrong password, recovered) and `/startup`,
//! which does not; SIGTERM with clients in flight (every reply delivered, idle clients
//! closed, exit 0), serving during the drain delay, the delay skipped with no client,
//! a second signal, the end of the grace period; `POST /quitquitquit` (off by default,
//! loopback only) and `redis-ambassador wait`; start-up errors, the first log line, and
//! logging (level and format from the config, no secret, key or value in the log).
//!
//! Waits are bounded by generous deadlines that only detect hangs; no assertion depends on
//! how fast the machine is.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Deadline for anything expected "soon": a hang detector, not a performance bound.
const SOON: Duration = Duration::from_secs(20);

/// Polls `/readyz` until its status is `status`; returns the last response.
#[track_caller]
fn wait_readyz(amb: &Ambassador, status: u16) -> HttpResponse {
    let mut last = None;
    let reached = wait_until(SOON, || {
        let r = amb.http_get("/readyz");
        let done = r.status == status;
        last = Some(r);
        done
    });
    let last = last.expect("no /readyz response");
    assert!(reached, "/readyz never answered {status}; last: {last:?}");
    last
}

#[track_caller]
fn assert_one_line_reason(r: &HttpResponse) {
    assert_eq!(r.status, 503, "{r:?}");
    let reason = r.body.strip_suffix('\n').unwrap_or(&r.body);
    assert!(
        !reason.is_empty() && !reason.contains(['\n', '\r']),
        "not a one-line reason: {:?}",
        r.body
    );
}

#[test]
fn readiness_follows_the_upstream_and_liveness_does_not() {
    let port = closed_port();
    let mut amb = AmbassadorBuilder::new(&format!("127.0.0.1:{port}"))
        .readiness_interval_ms(100)
        .reconnect_backoff_ms(50)
        .start();
    assert_eq!(amb.http_get("/healthz").status, 200);
    // Not started yet either: no upstream connection has answered.
    assert_eq!(amb.http_get("/startup").status, 503);
    // Down: 503 with the connect error as the reason.
    let mut last = None;
    assert!(
        wait_until(SOON, || {
            let r = amb.http_get("/readyz");
            let done = r.body.contains("upstream unavailable");
            last = Some(r);
            done
        }),
        "no 'upstream unavailable' reason: {last:?}"
    );
    assert_one_line_reason(last.as_ref().unwrap());
    assert_eq!(amb.http_get("/healthz").status, 200);

    // Redis comes up on that port: ready.
    let mut redis = RedisServer::start_on_port(port, ServerAuth::None, &[]);
    let ok = wait_readyz(&amb, 200);
    assert_eq!(ok.body, "ok\n");
    let started = amb.http_get("/startup");
    assert_eq!((started.status, started.body.as_str()), (200, "ok\n"));
    let mut c = amb.conn();
    c.call_expect(&["SET", "k", "v"], b"+OK\r\n");

    // Redis goes away again: not ready, still alive.
    redis.kill();
    let down = wait_readyz(&amb, 503);
    assert_one_line_reason(&down);
    assert_eq!(amb.http_get("/healthz").status, 200);
    // Started once is started for good: a startup probe must not fail later.
    assert_eq!(amb.http_get("/startup").status, 200);
    assert!(amb.is_running());
}

#[test]
fn readiness_is_503_while_the_upstream_password_is_wrong() {
    let right = "Right-Upstream-Pass-118";
    let wrong = "Wrong-Upstream-Pass-229";
    let redis = RedisServer::with_password(right);
    let amb = AmbassadorBuilder::for_server(&redis)
        .upstream_password(wrong.as_bytes())
        .readiness_interval_ms(100)
        .start();
    let mut last = None;
    assert!(
        wait_until(SOON, || {
            let r = amb.http_get("/readyz");
            let done = r.body.contains("authentication failed");
            last = Some(r);
            done
        }),
        "no 'authentication failed' reason: {last:?}"
    );
    let r = last.unwrap();
    assert_one_line_reason(&r);
    assert!(!r.body.contains(wrong) && !r.body.contains(right), "{r:?}");
    // Which secret was sent: the key and the file, never the value.
    let file = amb.dir().join("upstream_password");
    let sent = format!(
        "the password from [upstream] password_file {}",
        file.display()
    );
    assert!(r.body.contains(&sent), "{r:?}");
    assert!(amb.log().contains(&sent), "{}", amb.log());
    assert_eq!(amb.http_get("/startup").status, 503);
    assert_eq!(amb.http_get("/healthz").status, 200);
    let metrics = amb.scrape();
    assert!(
        metrics.contains("redis_ambassador_upstream_connect_failures_total{reason=\"auth\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains(wrong) && !metrics.contains(right));
    assert!(!amb.log().contains(wrong) && !amb.log().contains(right));
}

#[test]
fn sigterm_delivers_every_in_flight_reply_closes_idle_clients_and_exits_zero() {
    let redis = RedisServer::start();
    let mut amb = AmbassadorBuilder::for_server(&redis)
        .drain_delay_ms(200)
        .grace_period_ms(30_000)
        .start();
    wait_readyz(&amb, 200);
    let mut idle = amb.conn();
    idle.call_expect(&["PING"], b"+PONG\r\n");

    // 1000 commands in one write, well under one read of the proxy (16 KiB), so that the
    // proxy holds all of them when the first one, a half-second sleep, is executing.
    let mut pipeline = b"DEBUG SLEEP 0.5\r\n".to_vec();
    for _ in 0..999 {
        pipeline.extend_from_slice(b"INCR counter\r\n");
    }
    assert!(pipeline.len() < 16 * 1024);
    let mut busy = amb.conn();
    busy.timeout = SOON;
    busy.send(&pipeline);
    amb.signal("TERM");

    busy.expect(b"+OK\r\n");
    for i in 1..=999 {
        busy.expect(format!(":{i}\r\n").as_bytes());
    }
    // Then both clients are closed, and the process exits 0.
    busy.expect_eof();
    let (rest, eof) = idle.read_to_eof(SOON);
    assert!(
        eof && rest.is_empty(),
        "idle client: eof={eof} {:?}",
        escape(&rest)
    );
    let status = amb.wait_exit(SOON).expect("still running after the drain");
    assert!(status.success(), "exit status {status}\n{}", amb.log());
    let log = amb.log();
    assert!(log.contains("shutdown signal received"), "{log}");
    assert!(log.contains("every client closed"), "{log}");
    // Every INCR reached Redis exactly once.
    let mut direct = redis.conn();
    direct.call_expect(&["GET", "counter"], b"$3\r\n999\r\n");
}

#[test]
fn during_the_drain_delay_it_serves_but_is_not_ready_and_a_second_signal_exits() {
    let redis = RedisServer::start();
    let mut amb = AmbassadorBuilder::for_server(&redis)
        // Longer than any wait below: the second signal ends the test.
        .drain_delay_ms(120_000)
        .start();
    wait_readyz(&amb, 200);
    let mut before = amb.conn();
    before.call_expect(&["PING"], b"+PONG\r\n");

    amb.signal("TERM");
    let r = wait_readyz(&amb, 503);
    assert_eq!(r.body, "shutting down\n");
    assert_eq!(amb.http_get("/healthz").status, 200);
    assert_eq!(amb.http_get("/metrics").status, 200);
    // Existing clients are served, and new ones accepted.
    before.call_expect(&["SET", "k", "v"], b"+OK\r\n");
    let mut after = amb.conn();
    after.call_expect(&["GET", "k"], b"$1\r\nv\r\n");

    amb.signal("INT");
    let status = amb
        .wait_exit(SOON)
        .expect("a second signal did not end the process");
    assert_eq!(status.code(), Some(1), "{}", amb.log());
    assert!(amb.log().contains("second signal"), "{}", amb.log());
}

#[test]
fn clients_still_busy_at_the_end_of_the_grace_period_are_dropped() {
    let redis = RedisServer::start();
    let mut amb = AmbassadorBuilder::for_server(&redis)
        .drain_delay_ms(0)
        .grace_period_ms(100)
        .command_timeout_ms(0)
        .connect_timeout_ms(300)
        .readiness_interval_ms(100)
        .start();
    wait_readyz(&amb, 200);
    let mut busy = amb.conn();
    busy.timeout = SOON;
    // Far longer than the grace period: the reply never comes.
    busy.send(b"DEBUG SLEEP 10\r\n");
    // Redis is blocked once the sleep runs: the prober's PING then fails, which shows
    // that the command is in flight.
    wait_readyz(&amb, 503);
    amb.signal("TERM");
    let status = amb
        .wait_exit(SOON)
        .expect("still running after the grace period");
    assert!(status.success(), "exit status {status}\n{}", amb.log());
    let (rest, eof) = busy.read_to_eof(SOON);
    assert!(eof, "the busy client was not closed");
    assert!(rest.is_empty(), "{:?}", escape(&rest));
}

#[test]
fn an_admin_address_in_use_is_a_startup_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = AmbassadorConfig::new(&format!("127.0.0.1:{}", closed_port()))
        .listen_on(free_port())
        .metrics_on(admin_port)
        .write(&dir.path().join("a.toml"));
    let (status, out) = run_proxy_to_exit(&["--config", config.to_str().unwrap()], &[], SOON);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("admin endpoint") && out.contains(&admin_port.to_string()),
        "{out}"
    );
    drop(taken);
}

#[test]
fn log_level_and_format_come_from_the_config_and_hold_no_secrets() {
    let upstream_pw = "Log-Upstream-Pass-3310";
    let client_pw = "Log-Client-Pass-4421";
    let redis = RedisServer::with_password(upstream_pw);
    let mut amb = AmbassadorBuilder::for_server(&redis)
        .client_password(client_pw.as_bytes())
        // RUST_LOG empty counts as unset: [log] applies.
        .log_level("")
        .configure(|c| {
            c.log.level = Some("debug".into());
            c.log.format = Some(LogFormat::Json);
        })
        .drain_delay_ms(0)
        .start();
    wait_readyz(&amb, 200);
    let mut c = amb.conn();
    c.call_expect(&["AUTH", "Wrong-Client-Pass-5532"], WRONGPASS);
    c.call_expect(&["AUTH", client_pw], b"+OK\r\n");
    c.call_expect(&["SET", "Secret-Key-6643", "Secret-Value-7754"], b"+OK\r\n");
    c.call_expect(&["GET", "Secret-Key-6643"], b"$17\r\nSecret-Value-7754\r\n");
    drop(c);
    amb.signal("TERM");
    let status = amb.wait_exit(SOON).expect("did not exit");
    assert!(status.success());

    let log = amb.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(
            line.starts_with('{') && line.ends_with('}') && line.contains("\"level\":"),
            "not a JSON log line: {line}"
        );
    }
    // Debug events, inside the per-connection span that names the peer.
    assert!(log.contains("\"level\":\"DEBUG\""), "{log}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"name\":\"client\"") && l.contains("\"peer\":\"127.0.0.1:")),
        "{log}"
    );
    for secret in [
        upstream_pw,
        client_pw,
        "Wrong-Client-Pass-5532",
        "Secret-Key-6643",
        "Secret-Value-7754",
    ] {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
}

#[test]
fn a_quieter_config_level_applies_without_rust_log() {
    let redis = RedisServer::start();
    let mut amb = AmbassadorBuilder::for_server(&redis)
        .log_level("")
        .configure(|c| c.log.level = Some("warn".into()))
        .drain_delay_ms(0)
        .start();
    wait_readyz(&amb, 200);
    amb.signal("TERM");
    assert!(amb.wait_exit(SOON).expect("did not exit").success());
    let log = amb.log();
    assert!(!log.contains("INFO"), "info lines at level warn:\n{log}");
}

/// How long the proxy takes to exit after SIGTERM, or a panic after `SOON`.
#[track_caller]
fn exit_after_sigterm(amb: &mut Ambassador) -> Duration {
    let sent = Instant::now();
    amb.signal("TERM");
    let status = amb.wait_exit(SOON).expect("still running after SIGTERM");
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status}\n{}", amb.log());
    took
}

/// A native sidecar gets SIGTERM once its application has exited: with no client connected
/// there is nothing to wait for, and the drain delay (5 s by default) is skipped.
#[test]
fn sigterm_with_no_client_exits_without_the_drain_delay() {
    let redis = RedisServer::start();
    let mut amb = AmbassadorBuilder::for_server(&redis).start();
    wait_readyz(&amb, 200);
    let took = exit_after_sigterm(&mut amb);
    eprintln!("SIGTERM with no client connected: exited after {took:?}");
    // A hang detector well below the default 5 s delay, not a performance bound.
    assert!(
        took < Duration::from_secs(3),
        "took {took:?}\n{}",
        amb.log()
    );
    let log = amb.log();
    assert!(
        log.contains("draining 0 clients; a second SIGTERM/SIGINT exits now"),
        "{log}"
    );
    assert!(
        log.contains("no client connected: the drain delay ends"),
        "{log}"
    );
}

/// `drain_delay_always`: the whole delay even with no client (the pre-1.29 layout, where
/// the application is stopped at the same moment and may still connect).
#[test]
fn drain_delay_always_waits_the_whole_delay_without_clients() {
    let redis = RedisServer::start();
    let mut amb = AmbassadorBuilder::for_server(&redis)
        .drain_delay_ms(1500)
        .configure(|c| c.shutdown.drain_delay_always = Some(true))
        .start();
    wait_readyz(&amb, 200);
    let took = exit_after_sigterm(&mut amb);
    assert!(took >= Duration::from_millis(1500), "took {took:?}");
    assert!(!amb.log().contains("the drain delay ends"), "{}", amb.log());
}

/// The delay lasts while clients are connected, and ends when the last one leaves.
#[test]
fn the_drain_delay_ends_when_the_last_client_leaves() {
    let redis = RedisServer::start();
    let mut amb = AmbassadorBuilder::for_server(&redis)
        // Longer than the test's deadline: only the client's leaving can end it in time.
        .drain_delay_ms(120_000)
        .start();
    wait_readyz(&amb, 200);
    let mut c = amb.conn();
    c.call_expect(&["PING"], b"+PONG\r\n");
    amb.signal("TERM");
    wait_readyz(&amb, 503);
    c.call_expect(&["SET", "k", "v"], b"+OK\r\n");
    assert!(amb.is_running());
    assert!(
        amb.log()
            .contains("draining 1 clients; a second SIGTERM/SIGINT exits now"),
        "{}",
        amb.log()
    );
    drop(c);
    let status = amb
        .wait_exit(SOON)
        .expect("still running after the last client left");
    assert!(status.success(), "exit status {status}\n{}", amb.log());
}

/// The first line of the log says what runs: version, config file, the addresses as bound
/// (port 0 resolved), the upstream, the mode and the worker threads.
#[test]
fn the_first_log_line_says_what_runs_and_where_it_listens() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let mut config = AmbassadorConfig::new(&redis.addr()).metrics_on(admin_port);
    config.listen.address = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.runtime.worker_threads = Some(2);
    let path = config.write(&dir.path().join("port0.toml"));
    let log_path = dir.path().join("log");
    let mut child = Command::new(PROXY_BIN)
        .args(["--config", path.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env_remove(IN_POD_VARIABLE)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let found = wait_until(SOON, || {
        first = read_lossy(&log_path)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        !first.is_empty()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "no log line");
    assert!(first.contains("redis-ambassador started"), "{first}");
    for field in [
        format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        format!("config={}", path.display()),
        format!("admin=127.0.0.1:{admin_port}"),
        format!("upstream={}", redis.addr()),
        "mode=standalone".to_owned(),
        "worker_threads=2".to_owned(),
    ] {
        assert!(first.contains(&field), "{field} not in: {first}");
    }
    let bound = first
        .split_whitespace()
        .find_map(|f| f.strip_prefix("address=127.0.0.1:"))
        .unwrap_or_else(|| panic!("no bound address in: {first}"));
    let port: u16 = bound.parse().unwrap();
    assert_ne!(port, 0, "{first}");
}

/// `POST /quitquitquit` is off by default: refused, saying how to turn it on, and the
/// process goes on serving. Only POST is accepted on that path.
#[test]
fn quitquitquit_is_refused_unless_enabled() {
    let redis = RedisServer::start();
    let mut amb = AmbassadorBuilder::for_server(&redis).start();
    wait_readyz(&amb, 200);
    let r = amb.http_post("/quitquitquit");
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("[metrics] quitquitquit = true"), "{r:?}");
    let get = amb.http_get("/quitquitquit");
    assert_eq!(
        (get.status, get.header("allow")),
        (405, Some("POST")),
        "{get:?}"
    );
    assert!(amb.is_running());
    assert_eq!(amb.http_get("/readyz").status, 200);
    amb.conn().call_expect(&["PING"], b"+PONG\r\n");
}

/// Enabled, `POST /quitquitquit` from loopback starts the SIGTERM drain: not ready, the
/// connected client closed once idle, exit 0 (a Job's pod can complete).
#[test]
fn quitquitquit_drains_and_exits_when_enabled() {
    let redis = RedisServer::start();
    let mut amb = AmbassadorBuilder::for_server(&redis)
        .configure(|c| c.metrics.quitquitquit = Some(true))
        .drain_delay_ms(0)
        .start();
    wait_readyz(&amb, 200);
    let mut idle = amb.conn();
    idle.call_expect(&["SET", "k", "v"], b"+OK\r\n");
    let r = amb.http_post("/quitquitquit");
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "shutting down\n"),
        "{r:?}"
    );
    let (rest, eof) = idle.read_to_eof(SOON);
    assert!(
        eof && rest.is_empty(),
        "idle client: eof={eof} {:?}",
        escape(&rest)
    );
    let status = amb
        .wait_exit(SOON)
        .expect("still running after /quitquitquit");
    assert!(status.success(), "exit status {status}\n{}", amb.log());
    let log = amb.log();
    assert!(log.contains("POST /quitquitquit: shutting down"), "{log}");
    assert!(log.contains("draining 1 clients"), "{log}");
}

/// `redis-ambassador wait`: exits 0 once `/readyz` answers 200 (asked through `--admin` or
/// the config's `[metrics] address`), waiting for the upstream to come up; exits 1 at its
/// timeout, saying why.
#[test]
fn wait_exits_zero_when_ready_and_one_at_its_timeout() {
    let port = closed_port();
    let amb = AmbassadorBuilder::new(&format!("127.0.0.1:{port}"))
        .readiness_interval_ms(100)
        .reconnect_backoff_ms(50)
        .start();
    let admin = format!("127.0.0.1:{}", amb.metrics_port());

    // Never ready while Redis is down: non-zero at the timeout, with /readyz's reason.
    let (status, out) =
        run_proxy_to_exit(&["wait", "--admin", &admin, "--timeout", "1s"], &[], SOON);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("not ready after 1s") && out.contains("upstream unavailable"),
        "{out}"
    );

    // Waiting while Redis comes up: exits 0.
    let waiter = std::thread::spawn(move || {
        run_proxy_to_exit(&["wait", "--admin", &admin, "--timeout", "20s"], &[], SOON)
    });
    let _redis = RedisServer::start_on_port(port, ServerAuth::None, &[]);
    let (status, out) = waiter.join().unwrap();
    assert!(status.success(), "{status}: {out}");

    // The config names the admin endpoint.
    let config = amb.config_path().to_str().unwrap();
    let (status, out) =
        run_proxy_to_exit(&["wait", "--config", config, "--timeout", "20s"], &[], SOON);
    assert!(status.success(), "{status}: {out}");

    // Nothing listening there: non-zero at the timeout.
    let nobody = format!("127.0.0.1:{}", closed_port());
    let (status, out) = run_proxy_to_exit(
        &["wait", "--admin", &nobody, "--timeout", "500ms"],
        &[],
        SOON,
    );
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("cannot ask"), "{out}");
}

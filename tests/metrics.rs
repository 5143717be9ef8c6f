//! The metrics contract, scraped from a running proxy: exact counter values after a known
//! mix of commands (by command, by error class, `other` for unknown names), bounded label
//! sets under random command names, an exposition that a real Prometheus text parser
//! accepts (and that is consistent: histogram buckets cumulative, `+Inf` equal to
//! `_count`), and no secret in it. Also the admin endpoint's HTTP surface and its bounds:
//! 404/405, oversized headers, silent clients, and the connection cap.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use prometheus_parse::{LineInfo, Sample, Scrape, Value};

const UPSTREAM_PW: &str = "Upstream-Secret-7431";
const CLIENT_PW: &str = "Client-Secret-9902";

const COMMANDS: &str = "redis_ambassador_commands_total";
const COMMAND_ERRORS: &str = "redis_ambassador_command_errors_total";
const DURATION: &str = "redis_ambassador_command_duration_seconds";
const ERRORS: &str = "redis_ambassador_errors_total";
const AUTH_FAILURES: &str = "redis_ambassador_client_auth_failures_total";

/// Parses an exposition with `prometheus-parse`, first asserting that the parser
/// recognises every line (it skips what it cannot parse), then that every histogram is
/// consistent.
#[track_caller]
fn parse(text: &str) -> Scrape {
    for line in text.lines() {
        assert!(
            !matches!(LineInfo::parse(line), LineInfo::Ignored),
            "line not in the Prometheus text format: {line:?}\n--- exposition ---\n{text}"
        );
    }
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parse");
    for sample in &scrape.samples {
        let Value::Histogram(buckets) = &sample.value else {
            continue;
        };
        let mut bounds: Vec<(f64, f64)> = buckets.iter().map(|b| (b.less_than, b.count)).collect();
        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            bounds.windows(2).all(|w| w[0].1 <= w[1].1),
            "{} {:?}: buckets not cumulative: {bounds:?}",
            sample.metric,
            sample.labels
        );
        let (last_bound, last_count) = *bounds.last().expect("no buckets");
        assert!(
            last_bound.is_infinite(),
            "{}: no +Inf bucket",
            sample.metric
        );
        let count = scrape
            .samples
            .iter()
            .find(|s| s.metric == format!("{}_count", sample.metric) && s.labels == sample.labels)
            .unwrap_or_else(|| panic!("{} {:?}: no _count", sample.metric, sample.labels));
        assert_eq!(
            value(count),
            last_count,
            "{} {:?}: +Inf bucket differs from _count",
            sample.metric,
            sample.labels
        );
    }
    scrape
}

fn value(sample: &Sample) -> f64 {
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{}: not a single value: {other:?}", sample.metric),
    }
}

/// The values of `metric` by the value of its label `label`.
fn by_label(scrape: &Scrape, metric: &str, label: &str) -> BTreeMap<String, f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .map(|s| {
            let l = s
                .labels
                .get(label)
                .unwrap_or_else(|| panic!("{metric} without label {label}: {:?}", s.labels));
            (l.to_owned(), value(s))
        })
        .collect()
}

/// The single, label-less value of `metric`.
#[track_caller]
fn single(scrape: &Scrape, metric: &str) -> f64 {
    let samples: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .collect();
    assert_eq!(samples.len(), 1, "{metric}: {samples:?}");
    value(samples[0])
}

/// The buckets of `metric`'s histogram for `command`.
fn histogram(scrape: &Scrape, metric: &str, command: &str) -> Vec<(f64, f64)> {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && s.labels.get("command") == Some(command))
        .unwrap_or_else(|| panic!("no {metric} for {command}"));
    let Value::Histogram(buckets) = &sample.value else {
        panic!("{metric} is not a histogram");
    };
    let mut out: Vec<(f64, f64)> = buckets.iter().map(|b| (b.less_than, b.count)).collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

fn map(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn a_known_mix_of_commands_gives_exact_counters() {
    let redis = RedisServer::with_password(UPSTREAM_PW);
    let amb = AmbassadorBuilder::for_server(&redis)
        .client_password(CLIENT_PW.as_bytes())
        .start();
    let mut c = amb.conn();
    c.call_expect(&["GET", "k"], NOAUTH);
    c.call_expect(&["AUTH", "not-the-password"], WRONGPASS);
    c.call_expect(&["AUTH", CLIENT_PW], b"+OK\r\n");
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        c.call_expect(&["SET", k, v], b"+OK\r\n");
    }
    c.call_expect(&["GET", "a"], b"$1\r\n1\r\n");
    c.call_expect(&["RPUSH", "l", "x"], b":1\r\n");
    c.call_expect(
        &["GET", "l"],
        b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
    );
    c.call_expect(&["PING"], b"+PONG\r\n");
    let unknown = c.call(&["NOSUCHCOMMAND", "x"]);
    assert!(
        unknown.starts_with(b"-ERR unknown command"),
        "{}",
        escape(&unknown)
    );
    // A command the proxy refuses itself (a mode change inside a transaction).
    c.call_expect(&["MULTI"], b"+OK\r\n");
    let refused = c.call(&["CLIENT", "TRACKING", "on"]);
    assert!(
        refused.starts_with(b"-ERR 'client|tracking' is not supported by redis-ambassador"),
        "{}",
        escape(&refused)
    );
    c.call_expect(&["DISCARD"], b"+OK\r\n");

    let text = amb.scrape();
    let scrape = parse(&text);
    assert_eq!(
        by_label(&scrape, COMMANDS, "command"),
        map(&[
            ("auth", 2.0),
            ("get", 3.0),
            ("other", 1.0),
            ("ping", 1.0),
            ("rpush", 1.0),
            ("set", 3.0),
            ("client", 1.0),
            ("multi", 1.0),
            ("discard", 1.0),
        ]),
        "{COMMANDS}"
    );
    assert_eq!(
        by_label(&scrape, COMMAND_ERRORS, "command"),
        map(&[
            ("auth", 1.0),
            ("get", 2.0),
            ("other", 1.0),
            ("ping", 0.0),
            ("rpush", 0.0),
            ("set", 0.0),
            ("client", 1.0),
            ("multi", 0.0),
            ("discard", 0.0),
        ]),
        "{COMMAND_ERRORS}"
    );
    assert_eq!(
        by_label(&scrape, ERRORS, "class"),
        map(&[
            ("ERR", 1.0),
            ("NOAUTH", 1.0),
            ("WRONGPASS", 1.0),
            ("WRONGTYPE", 1.0),
            ("unsupported", 1.0),
        ]),
        "{ERRORS}"
    );
    assert_eq!(single(&scrape, AUTH_FAILURES), 1.0);

    assert_histograms_and_families(&scrape, &text);

    for secret in [UPSTREAM_PW, CLIENT_PW, "not-the-password"] {
        assert!(!text.contains(secret), "a password is in /metrics");
    }
}

/// The latency histograms of `a_known_mix_of_commands_gives_exact_counters` (every
/// command counted once, buckets from 10 µs to 10 s), and the other metric families.
fn assert_histograms_and_families(scrape: &Scrape, text: &str) {
    let set = histogram(scrape, DURATION, "set");
    assert_eq!(set.last().unwrap().1, 3.0, "set: {set:?}");
    let bounds: Vec<f64> = set.iter().map(|b| b.0).collect();
    assert_eq!(bounds.first(), Some(&0.00001), "{bounds:?}");
    assert!(
        bounds.contains(&0.0001) && bounds.contains(&0.001),
        "{bounds:?}"
    );
    assert!(
        bounds.contains(&1.0) && bounds.contains(&10.0),
        "{bounds:?}"
    );
    assert_eq!(histogram(scrape, DURATION, "get").last().unwrap().1, 3.0);
    let wait = scrape
        .samples
        .iter()
        .find(|s| s.metric == "redis_ambassador_upstream_pool_wait_seconds")
        .expect("pool wait histogram");
    assert!(matches!(&wait.value, Value::Histogram(b) if b.len() == bounds.len()));

    // The other families DESIGN.md names are there.
    for family in [
        "redis_ambassador_client_connections",
        "redis_ambassador_client_connections_total",
        "redis_ambassador_protocol_errors_total",
        "redis_ambassador_client_bytes_in_total",
        "redis_ambassador_client_bytes_out_total",
        "redis_ambassador_upstream_connect_failures_total",
    ] {
        assert!(
            scrape.samples.iter().any(|s| s.metric == family),
            "no {family} in\n{text}"
        );
    }
    let upstream = by_label(scrape, "redis_ambassador_upstream_connections", "state");
    assert_eq!(
        upstream.keys().map(String::as_str).collect::<Vec<_>>(),
        ["idle", "in_use", "pinned"]
    );
    assert!(upstream["idle"] + upstream["in_use"] >= 1.0, "{upstream:?}");
}

/// A small deterministic generator, so that a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn name(&mut self) -> String {
        let len = 4 + (self.next() % 12) as usize;
        let mut name = String::from("zz");
        for _ in 0..len {
            name.push((b'a' + (self.next() % 26) as u8) as char);
        }
        name
    }
}

#[test]
fn random_command_names_only_grow_other() {
    let redis = RedisServer::start();
    let amb = AmbassadorBuilder::for_server(&redis).start();
    let mut c = amb.conn();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut pipeline = Vec::new();
    for _ in 0..1000 {
        pipeline.extend_from_slice(&resp(&[rng.name().as_str(), "arg"]));
    }
    c.send(&pipeline);
    for _ in 0..1000 {
        let reply = c.read_reply();
        assert!(
            reply.starts_with(b"-ERR unknown command"),
            "{}",
            escape(&reply)
        );
    }
    // Known names count under their own label, whatever their case.
    c.call_expect(&["gEt", "k"], b"$-1\r\n");

    let scrape = parse(&amb.scrape());
    assert_eq!(
        by_label(&scrape, COMMANDS, "command"),
        map(&[("get", 1.0), ("other", 1000.0)])
    );
    assert_eq!(
        by_label(&scrape, COMMAND_ERRORS, "command"),
        map(&[("get", 0.0), ("other", 1000.0)])
    );
    assert_eq!(by_label(&scrape, ERRORS, "class"), map(&[("ERR", 1000.0)]));
    let labels: BTreeSet<String> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == DURATION)
        .map(|s| s.labels.get("command").unwrap().to_owned())
        .collect();
    assert_eq!(
        labels,
        BTreeSet::from(["get".to_owned(), "other".to_owned()])
    );
    assert_eq!(
        histogram(&scrape, DURATION, "other").last().unwrap().1,
        1000.0
    );
}

#[test]
fn admin_paths_and_methods() {
    let redis = RedisServer::start();
    let amb = AmbassadorBuilder::for_server(&redis).start();
    let port = amb.metrics_port();

    let health = amb.http_get("/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let metrics = amb.http_get("/metrics");
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse(&metrics.body);
    // A query string does not change the path.
    assert_eq!(amb.http_get("/metrics?x=1").status, 200);
    for path in [
        "/",
        "/metric",
        "/metrics/",
        "/health",
        "/readyz/x",
        "/../metrics",
    ] {
        assert_eq!(amb.http_get(path).status, 404, "{path}");
    }
    for method in ["POST", "PUT", "DELETE"] {
        let r = http(port, method, "/metrics");
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
    let head = http(port, "HEAD", "/healthz");
    assert_eq!((head.status, head.body.as_str()), (200, ""));

    // Garbage is answered (400) or dropped, and the endpoint goes on.
    let garbage = http_raw(port, b"\x00\x01 not http\r\n\r\n", Duration::from_secs(10));
    assert!(
        garbage.as_ref().is_none_or(|r| r.status == 400),
        "{garbage:?}"
    );
    assert_eq!(amb.http_get("/healthz").status, 200);
}

#[test]
fn admin_headers_are_bounded() {
    let redis = RedisServer::start();
    let amb = AmbassadorBuilder::for_server(&redis).start();
    let port = amb.metrics_port();
    // Just under 8 KiB of head is served.
    let filler = "a".repeat(7000);
    let ok = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\nConnection: close\r\n\r\n"
    );
    let r = http_raw(port, ok.as_bytes(), Duration::from_secs(10)).expect("response");
    assert_eq!(r.status, 200);
    // Over 8 KiB: 431 (or a close), never served.
    let filler = "a".repeat(9000);
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\nConnection: close\r\n\r\n"
    );
    let r = http_raw(port, big.as_bytes(), Duration::from_secs(10));
    assert!(r.as_ref().is_none_or(|r| r.status == 431), "{r:?}");
    assert_eq!(amb.http_get("/healthz").status, 200);
}

/// Reads until EOF or `timeout`; true on EOF.
fn closed_within(s: &mut TcpStream, timeout: Duration) -> bool {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn admin_connections_over_the_cap_are_closed() {
    let redis = RedisServer::start();
    let amb = AmbassadorBuilder::for_server(&redis)
        .configure(|c| {
            c.metrics.max_connections = Some(2);
            c.metrics.request_timeout_ms = Some(60000);
        })
        .start();
    let port = amb.metrics_port();
    let addr = format!("127.0.0.1:{port}");
    // Two silent clients take both slots (one has sent half a request line).
    let silent = TcpStream::connect(&addr).unwrap();
    let mut partial = TcpStream::connect(&addr).unwrap();
    partial.write_all(b"GET /hea").unwrap();
    // A third is closed without an answer (accepts are in order, so it comes after them).
    let mut third = TcpStream::connect(&addr).unwrap();
    let _ = third.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = Vec::new();
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let read = third.read_to_end(&mut buf);
    assert!(
        buf.is_empty() && read.is_ok_or_reset(),
        "a connection over max_connections was served: {read:?} {:?}",
        String::from_utf8_lossy(&buf)
    );
    // The Redis port is not affected.
    let mut c = amb.conn();
    c.call_expect(&["PING"], b"+PONG\r\n");
    // Once the two leave, the endpoint serves again.
    drop(silent);
    drop(partial);
    assert!(wait_until(Duration::from_secs(10), || {
        http_raw(
            port,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .is_some_and(|r| r.status == 200)
    }));
}

trait ReadOutcome {
    fn is_ok_or_reset(&self) -> bool;
}

impl ReadOutcome for std::io::Result<usize> {
    fn is_ok_or_reset(&self) -> bool {
        match self {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

#[test]
fn silent_admin_clients_are_closed_after_the_request_timeout() {
    let redis = RedisServer::start();
    let amb = AmbassadorBuilder::for_server(&redis)
        .configure(|c| c.metrics.request_timeout_ms = Some(300))
        .start();
    let addr = format!("127.0.0.1:{}", amb.metrics_port());
    let mut silent = TcpStream::connect(&addr).unwrap();
    let mut partial = TcpStream::connect(&addr).unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost:")
        .unwrap();
    // Closed after request_timeout_ms; 10 s only detects a hang.
    assert!(
        closed_within(&mut silent, Duration::from_secs(10)),
        "silent client kept"
    );
    assert!(
        closed_within(&mut partial, Duration::from_secs(10)),
        "partial client kept"
    );
    assert_eq!(amb.http_get("/healthz").status, 200);
}

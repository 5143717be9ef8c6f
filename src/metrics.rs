//! Metric names (as consts), the handles behind them, and the record helpers the hot path
//! calls. Nothing here is a registry lookup or an allocation per event.
//!
//! The per-command families (`commands_total`, `command_errors_total`,
//! `command_duration_seconds`) are recorded once per command, so they are kept here rather
//! than in the `metrics` recorder: each thread has its own block of counters and
//! histogram buckets, which only that thread writes (a plain load and store, no atomic
//! read-modify-write, no shared cache line), and [`render`] sums the blocks at scrape
//! time. Recording a command costs a few nanoseconds (`benches/metrics.rs`).
//!
//! Everything else goes through the `metrics` facade to the Prometheus recorder, with
//! handles made once — per error class on its first use, the rest at start — and cached.
//! That recorder must be installed before the first handle is made: [`install`] does that,
//! once per process, at the start of [`crate::run`]. A handle made before it is a no-op for
//! good.
//!
//! Labels are bounded: `command` takes only the names of the command table (anything else
//! is `other`), `class` only the error classes listed here; `commands_refused_total`'s
//! `user` only the configured users and its `command` the upstream's own command table.
//! No key, value, address or
//! credential is ever a label.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::command::{CommandId, NAMES};

pub const COMMANDS_TOTAL: &str = "redis_ambassador_commands_total";
pub const COMMAND_ERRORS_TOTAL: &str = "redis_ambassador_command_errors_total";
pub const COMMAND_DURATION_SECONDS: &str = "redis_ambassador_command_duration_seconds";
pub const ERRORS_TOTAL: &str = "redis_ambassador_errors_total";
pub const CLIENT_CONNECTIONS: &str = "redis_ambassador_client_connections";
pub const CLIENT_CONNECTIONS_TOTAL: &str = "redis_ambassador_client_connections_total";
pub const CLIENT_AUTH_FAILURES_TOTAL: &str = "redis_ambassador_client_auth_failures_total";
pub const PROTOCOL_ERRORS_TOTAL: &str = "redis_ambassador_protocol_errors_total";
pub const COMMANDS_REFUSED_TOTAL: &str = "redis_ambassador_commands_refused_total";
pub const USER_COMMANDS_TOTAL: &str = "redis_ambassador_user_commands_total";
/// The `user` label of [`USER_COMMANDS_TOTAL`] for clients logged in as a Redis user the
/// ambassador does not know (`[client] upstream_auth`): their names come from clients, so
/// they share one series and the label stays bounded by the configuration.
pub const UPSTREAM_USER_LABEL: &str = "(upstream_auth)";
pub const CLIENT_TLS_FAILURES_TOTAL: &str = "redis_ambassador_client_tls_handshake_failures_total";
pub const CLIENT_BYTES_IN_TOTAL: &str = "redis_ambassador_client_bytes_in_total";
pub const CLIENT_BYTES_OUT_TOTAL: &str = "redis_ambassador_client_bytes_out_total";
pub const UPSTREAM_CONNECTIONS: &str = "redis_ambassador_upstream_connections";
pub const UPSTREAM_CONNECT_FAILURES_TOTAL: &str =
    "redis_ambassador_upstream_connect_failures_total";
pub const UPSTREAM_POOL_WAIT_SECONDS: &str = "redis_ambassador_upstream_pool_wait_seconds";
pub const UPSTREAM_POOL_EXHAUSTED_TOTAL: &str = "redis_ambassador_upstream_pool_exhausted_total";
pub const UPSTREAM_STALE_CONNECTIONS_TOTAL: &str =
    "redis_ambassador_upstream_stale_connections_total";
pub const UPSTREAM_MASTER_CHANGES_TOTAL: &str = "redis_ambassador_upstream_master_changes_total";
pub const CLUSTER_REFRESHES_TOTAL: &str = "redis_ambassador_cluster_refreshes_total";
pub const CLUSTER_REDIRECTS_TOTAL: &str = "redis_ambassador_cluster_redirects_total";
pub const CLUSTER_NODE_REQUESTS_TOTAL: &str = "redis_ambassador_cluster_node_requests_total";
pub const SECRET_RELOADS_TOTAL: &str = "redis_ambassador_secret_reloads_total";
pub const SECRET_RELOAD_FAILURES_TOTAL: &str = "redis_ambassador_secret_reload_failures_total";

/// Upper bounds (seconds) of the latency histograms' buckets: tens of microseconds (a
/// pipelined command on loopback) to seconds (a slow upstream, a pool wait at its timeout).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// [`LATENCY_BUCKETS`] in nanoseconds, for the hot path's bucket search.
const LATENCY_BOUNDS_NANOS: [u64; 19] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The label value for commands outside the table.
pub const OTHER: &str = "other";

/// Classes of error replies. Redis's own codes come first; the proxy's own after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    Redis(&'static str),
    /// A Redis error code not in [`REDIS_CODES`].
    OtherRedis,
    Timeout,
    UpstreamUnavailable,
    UpstreamAuth,
    PoolExhausted,
    UpstreamLost,
    BadReply,
    Unsupported,
    Protocol,
    /// A client whose unread replies passed `client_output_hard_limit` (it is closed).
    OutputLimit,
}

/// Redis error codes that get their own `class` label value.
pub const REDIS_CODES: &[&str] = &[
    "ERR",
    "WRONGTYPE",
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
    "NOPROTO",
    "MOVED",
    "ASK",
    "BUSY",
    "BUSYGROUP",
    "NOGROUP",
    "NOSCRIPT",
    "LOADING",
    "READONLY",
    "MASTERDOWN",
    "MISCONF",
    "EXECABORT",
    "OOM",
    "CROSSSLOT",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "UNBLOCKED",
    "NOREPLICAS",
];

impl ErrorClass {
    /// The class of an error reply's bytes (`-CODE text\r\n`, or RESP3 `!len\r\nCODE …`).
    pub fn of_reply(reply: &[u8]) -> ErrorClass {
        let body = match reply.first() {
            Some(b'-') => &reply[1..],
            Some(b'!') => match memchr::memchr(b'\n', reply) {
                Some(i) => &reply[i + 1..],
                None => reply,
            },
            _ => reply,
        };
        let end = body
            .iter()
            .position(|&b| b == b' ' || b == b'\r')
            .unwrap_or(body.len());
        let code = &body[..end];
        REDIS_CODES
            .iter()
            .find(|c| c.as_bytes() == code)
            .map_or(ErrorClass::OtherRedis, |c| ErrorClass::Redis(c))
    }

    pub fn label(self) -> &'static str {
        match self {
            ErrorClass::Redis(code) => code,
            ErrorClass::OtherRedis => "other",
            ErrorClass::Timeout => "timeout",
            ErrorClass::UpstreamUnavailable => "upstream_unavailable",
            ErrorClass::UpstreamAuth => "upstream_auth",
            ErrorClass::PoolExhausted => "pool_exhausted",
            ErrorClass::UpstreamLost => "upstream_lost",
            ErrorClass::BadReply => "bad_reply",
            ErrorClass::Unsupported => "unsupported",
            ErrorClass::Protocol => "protocol",
            ErrorClass::OutputLimit => "output_limit",
        }
    }
}

/// One bucket per bound, and `+Inf`.
const BUCKETS: usize = LATENCY_BOUNDS_NANOS.len() + 1;

/// One command's counters in one thread's block.
#[derive(Default)]
struct Cells {
    total: AtomicU64,
    errors: AtomicU64,
    sum_nanos: AtomicU64,
    /// Not cumulative: `buckets[i]` counts the durations in `(bound[i-1], bound[i]]`.
    buckets: [AtomicU64; BUCKETS],
}

/// One thread's block: [`Cells`] for every command of the table, and `other`.
struct Shard {
    commands: Box<[Cells]>,
}

/// Every block ever made (for [`render`]), and those whose thread has exited (for the
/// next new thread). A block outlives its thread, so counts never go down, and is handed
/// on rather than freed, so there are never more blocks (about 48 KiB each) than threads
/// that recorded at the same time: the runtime's workers.
struct Registry {
    all: Vec<&'static Shard>,
    free: Vec<&'static Shard>,
}

static SHARDS: Mutex<Registry> = Mutex::new(Registry {
    all: Vec::new(),
    free: Vec::new(),
});

/// A thread's hold on its block; gives it back when the thread exits. The registry's
/// lock orders the old owner's last writes before the new owner's first.
struct Owner(&'static Shard);

impl Drop for Owner {
    fn drop(&mut self) {
        registry().free.push(self.0);
    }
}

thread_local! {
    static SHARD: Owner = Owner(take_shard());
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    SHARDS.lock().unwrap_or_else(PoisonError::into_inner)
}

fn take_shard() -> &'static Shard {
    let mut registry = registry();
    if let Some(shard) = registry.free.pop() {
        return shard;
    }
    let shard: &'static Shard = Box::leak(Box::new(Shard {
        commands: (0..=NAMES.len()).map(|_| Cells::default()).collect(),
    }));
    registry.all.push(shard);
    shard
}

/// Adds `n` to a cell that only the current thread writes: a plain load and store. Readers
/// may see the value a moment late, never torn.
#[inline]
fn bump(cell: &AtomicU64, n: u64) {
    cell.store(
        cell.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// Records a command a user's rules refused (`user`, one of the configured users;
/// `command`, the name Redis prints — `flushall`, `config|set` — from the upstream's own
/// command table, so both labels are bounded). A refusal is not the hot path: the handle
/// is looked up (and the labels copied) per refusal.
pub fn record_refused(user: &str, command: &str) {
    metrics::counter!(
        COMMANDS_REFUSED_TOTAL,
        "user" => user.to_owned(),
        "command" => command.to_owned()
    )
    .increment(1);
}

/// The [`USER_COMMANDS_TOTAL`] handle of `user` (a configured user, `default`, or
/// [`UPSTREAM_USER_LABEL`]), made once per user and kept by each session.
pub fn user_commands(user: &str) -> Counter {
    metrics::counter!(USER_COMMANDS_TOTAL, "user" => user.to_owned())
}

/// Records one command: its outcome (`None` for success) and how long it took.
pub fn record_command(id: CommandId, error: Option<ErrorClass>, elapsed: Duration) {
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    let bucket = LATENCY_BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
    let index = id.index().min(NAMES.len());
    // `try_with` fails only while the thread is being torn down; the sample is lost then.
    let _ = SHARD.try_with(|owner| {
        if let Some(cells) = owner.0.commands.get(index) {
            bump(&cells.total, 1);
            bump(&cells.sum_nanos, nanos);
            if let Some(count) = cells.buckets.get(bucket) {
                bump(count, 1);
            }
            if error.is_some() {
                bump(&cells.errors, 1);
            }
        }
    });
    if let Some(class) = error {
        error_class(class).increment(1);
    }
}

/// The `errors_total` handle of `class`, made on first use and cached like the command
/// handles (the label values are fixed: [`REDIS_CODES`], `other` and the proxy's classes).
fn error_class(class: ErrorClass) -> &'static Counter {
    const PROXY_CLASSES: usize = 10;
    static HANDLES: OnceLock<Vec<OnceLock<Counter>>> = OnceLock::new();
    let all = HANDLES.get_or_init(|| {
        (0..REDIS_CODES.len() + PROXY_CLASSES)
            .map(|_| OnceLock::new())
            .collect()
    });
    let base = REDIS_CODES.len();
    let index = match class {
        // `of_reply` hands out the table's own `&'static str`s: the address finds them.
        ErrorClass::Redis(code) => REDIS_CODES
            .iter()
            .position(|c| std::ptr::eq(c.as_ptr(), code.as_ptr()))
            .or_else(|| REDIS_CODES.iter().position(|c| *c == code))
            .unwrap_or(base),
        ErrorClass::OtherRedis => base,
        ErrorClass::Timeout => base + 1,
        ErrorClass::UpstreamUnavailable => base + 2,
        ErrorClass::UpstreamAuth => base + 3,
        ErrorClass::PoolExhausted => base + 4,
        ErrorClass::UpstreamLost => base + 5,
        ErrorClass::BadReply => base + 6,
        ErrorClass::Unsupported => base + 7,
        ErrorClass::Protocol => base + 8,
        ErrorClass::OutputLimit => base + 9,
    };
    // A `Redis` code outside the table (only constructible by hand) counts as `other`.
    let class = match (class, index) {
        (ErrorClass::Redis(_), i) if i == base => ErrorClass::OtherRedis,
        _ => class,
    };
    all[index].get_or_init(|| metrics::counter!(ERRORS_TOTAL, "class" => class.label()))
}

/// The handles that do not depend on a command, made once.
pub struct Global {
    pub client_connections: Gauge,
    pub client_connections_total: Counter,
    pub client_auth_failures: Counter,
    pub protocol_errors: Counter,
    pub client_tls_failures: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub upstream_connect_failures_unavailable: Counter,
    pub upstream_connect_failures_auth: Counter,
    pub pool_wait: Histogram,
    pub pool_exhausted: Counter,
    pub stale_connections: Counter,
    pub master_changes: Counter,
    pub cluster_refreshes: Counter,
    pub cluster_refresh_failures: Counter,
    pub cluster_moved: Counter,
    pub cluster_ask: Counter,
    pub upstream_idle: Gauge,
    pub upstream_in_use: Gauge,
    pub upstream_pinned: Gauge,
    pub secret_reloads: Counter,
    pub secret_reload_failures: Counter,
}

pub fn global() -> &'static Global {
    static GLOBAL: OnceLock<Global> = OnceLock::new();
    GLOBAL.get_or_init(|| Global {
        client_connections: metrics::gauge!(CLIENT_CONNECTIONS),
        client_connections_total: metrics::counter!(CLIENT_CONNECTIONS_TOTAL),
        client_auth_failures: metrics::counter!(CLIENT_AUTH_FAILURES_TOTAL),
        protocol_errors: metrics::counter!(PROTOCOL_ERRORS_TOTAL),
        client_tls_failures: metrics::counter!(CLIENT_TLS_FAILURES_TOTAL),
        bytes_in: metrics::counter!(CLIENT_BYTES_IN_TOTAL),
        bytes_out: metrics::counter!(CLIENT_BYTES_OUT_TOTAL),
        upstream_connect_failures_unavailable: metrics::counter!(
            UPSTREAM_CONNECT_FAILURES_TOTAL, "reason" => "unavailable"),
        upstream_connect_failures_auth: metrics::counter!(
            UPSTREAM_CONNECT_FAILURES_TOTAL, "reason" => "auth"),
        pool_wait: metrics::histogram!(UPSTREAM_POOL_WAIT_SECONDS),
        pool_exhausted: metrics::counter!(UPSTREAM_POOL_EXHAUSTED_TOTAL),
        stale_connections: metrics::counter!(UPSTREAM_STALE_CONNECTIONS_TOTAL),
        master_changes: metrics::counter!(UPSTREAM_MASTER_CHANGES_TOTAL),
        cluster_refreshes: metrics::counter!(CLUSTER_REFRESHES_TOTAL, "result" => "ok"),
        cluster_refresh_failures: metrics::counter!(CLUSTER_REFRESHES_TOTAL, "result" => "error"),
        cluster_moved: metrics::counter!(CLUSTER_REDIRECTS_TOTAL, "kind" => "moved"),
        cluster_ask: metrics::counter!(CLUSTER_REDIRECTS_TOTAL, "kind" => "ask"),
        upstream_idle: metrics::gauge!(UPSTREAM_CONNECTIONS, "state" => "idle"),
        upstream_in_use: metrics::gauge!(UPSTREAM_CONNECTIONS, "state" => "in_use"),
        upstream_pinned: metrics::gauge!(UPSTREAM_CONNECTIONS, "state" => "pinned"),
        secret_reloads: metrics::counter!(SECRET_RELOADS_TOTAL),
        secret_reload_failures: metrics::counter!(SECRET_RELOAD_FAILURES_TOTAL),
    })
}

/// The whole exposition (text format 0.0.4): what the recorder holds, then the
/// per-command families. Installs the recorder if nothing has yet.
pub fn render() -> String {
    let mut out = install().render();
    render_commands(&mut out);
    out
}

/// One command's counts, summed over the threads' blocks.
#[derive(Clone, Copy, Default)]
struct Summed {
    total: u64,
    errors: u64,
    sum_nanos: u64,
    buckets: [u64; BUCKETS],
}

/// Appends the per-command families. A command appears once it has been counted.
fn render_commands(out: &mut String) {
    let shards: Vec<&'static Shard> = registry().all.clone();
    let mut sums = vec![Summed::default(); NAMES.len() + 1];
    for shard in shards {
        for (sum, cells) in sums.iter_mut().zip(shard.commands.iter()) {
            sum.total = sum.total.wrapping_add(cells.total.load(Ordering::Relaxed));
            sum.errors = sum
                .errors
                .wrapping_add(cells.errors.load(Ordering::Relaxed));
            sum.sum_nanos = sum
                .sum_nanos
                .wrapping_add(cells.sum_nanos.load(Ordering::Relaxed));
            for (b, cell) in sum.buckets.iter_mut().zip(cells.buckets.iter()) {
                *b = b.wrapping_add(cell.load(Ordering::Relaxed));
            }
        }
    }
    let used: Vec<(&str, &Summed)> = sums
        .iter()
        .enumerate()
        .filter(|(_, sum)| sum.total > 0)
        .map(|(i, sum)| (NAMES.get(i).copied().unwrap_or(OTHER), sum))
        .collect();
    // Writing to a String cannot fail.
    let _ = render_families(out, &used);
}

fn render_families(out: &mut String, used: &[(&str, &Summed)]) -> std::fmt::Result {
    writeln!(
        out,
        "# HELP {COMMANDS_TOTAL} Commands received from clients, by command (`other` for \
         names outside the command table)."
    )?;
    writeln!(out, "# TYPE {COMMANDS_TOTAL} counter")?;
    for (name, sum) in used {
        writeln!(out, "{COMMANDS_TOTAL}{{command=\"{name}\"}} {}", sum.total)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "# HELP {COMMAND_ERRORS_TOTAL} Commands answered with an error reply (the upstream's \
         or the proxy's), by command."
    )?;
    writeln!(out, "# TYPE {COMMAND_ERRORS_TOTAL} counter")?;
    for (name, sum) in used {
        writeln!(
            out,
            "{COMMAND_ERRORS_TOTAL}{{command=\"{name}\"}} {}",
            sum.errors
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "# HELP {COMMAND_DURATION_SECONDS} Time from the start of a command's batch to its \
         reply, by command."
    )?;
    writeln!(out, "# TYPE {COMMAND_DURATION_SECONDS} histogram")?;
    for (name, sum) in used {
        let mut cumulative = 0u64;
        for (bound, count) in LATENCY_BUCKETS.iter().zip(sum.buckets.iter()) {
            cumulative = cumulative.wrapping_add(*count);
            writeln!(
                out,
                "{COMMAND_DURATION_SECONDS}_bucket{{command=\"{name}\",le=\"{bound}\"}} {cumulative}"
            )?;
        }
        let count = sum.buckets.iter().fold(0u64, |a, b| a.wrapping_add(*b));
        writeln!(
            out,
            "{COMMAND_DURATION_SECONDS}_bucket{{command=\"{name}\",le=\"+Inf\"}} {count}"
        )?;
        writeln!(
            out,
            "{COMMAND_DURATION_SECONDS}_sum{{command=\"{name}\"}} {}",
            sum.sum_nanos as f64 / 1e9
        )?;
        writeln!(
            out,
            "{COMMAND_DURATION_SECONDS}_count{{command=\"{name}\"}} {count}"
        )?;
    }
    writeln!(out)
}

/// Installs the Prometheus recorder (once per process; later calls return the same handle)
/// and describes the metrics. Call it before anything records: handles made earlier stay
/// no-ops. If another recorder is already installed (an embedding program's), that one
/// keeps receiving the metrics and the handle returned here renders nothing.
pub fn install() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        // `set_buckets` fails only on an empty list, and LATENCY_BUCKETS is not empty.
        let builder = match builder.set_buckets(LATENCY_BUCKETS) {
            Ok(b) => b,
            Err(error) => {
                tracing::error!(%error, "cannot set histogram buckets; using summaries");
                PrometheusBuilder::new()
            }
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if let Err(error) = metrics::set_global_recorder(recorder) {
            tracing::warn!(%error, "a metrics recorder is already installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

/// The `# HELP` lines.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        ERRORS_TOTAL,
        "Error replies by class: a Redis error code (ERR, WRONGTYPE, ...) or a proxy-made class."
    );
    describe_counter!(
        COMMANDS_REFUSED_TOTAL,
        "Commands refused by a user's command rules (commands, read_only), by user and command."
    );
    describe_counter!(
        USER_COMMANDS_TOTAL,
        "Commands received, by the user the client authenticated as (configured users; \
         (upstream_auth) for Redis users logged in through the ambassador)."
    );
    describe_gauge!(CLIENT_CONNECTIONS, "Client connections open now.");
    describe_counter!(CLIENT_CONNECTIONS_TOTAL, "Client connections accepted.");
    describe_counter!(
        CLIENT_AUTH_FAILURES_TOTAL,
        "Failed AUTH / HELLO AUTH attempts by clients."
    );
    describe_counter!(
        CLIENT_TLS_FAILURES_TOTAL,
        "Client connections closed because the TLS handshake failed (or timed out)."
    );
    describe_counter!(
        PROTOCOL_ERRORS_TOTAL,
        "Client connections closed for a RESP protocol error."
    );
    describe_counter!(
        CLIENT_BYTES_IN_TOTAL,
        Unit::Bytes,
        "Bytes read from clients."
    );
    describe_counter!(
        CLIENT_BYTES_OUT_TOTAL,
        Unit::Bytes,
        "Bytes written to clients."
    );
    describe_gauge!(
        UPSTREAM_CONNECTIONS,
        "Upstream connections by state (idle, in_use, pinned), as of the scrape."
    );
    describe_counter!(
        UPSTREAM_CONNECT_FAILURES_TOTAL,
        "Failed upstream connects, by reason (unavailable, auth)."
    );
    describe_histogram!(
        UPSTREAM_POOL_WAIT_SECONDS,
        Unit::Seconds,
        "Time spent waiting to check a connection out of the upstream pool."
    );
    describe_counter!(
        UPSTREAM_POOL_EXHAUSTED_TOTAL,
        "Checkouts that found no free upstream connection within pool_wait_timeout_ms."
    );
    describe_counter!(
        UPSTREAM_STALE_CONNECTIONS_TOTAL,
        "Idle pooled upstream connections found dead at checkout and replaced."
    );
    describe_counter!(
        UPSTREAM_MASTER_CHANGES_TOTAL,
        "Sentinel mode: times the master's address changed (a failover), from an \
         announcement or a fresh answer."
    );
    describe_counter!(
        CLUSTER_REFRESHES_TOTAL,
        "Cluster mode: slot map reads (CLUSTER SLOTS), by result."
    );
    describe_counter!(
        CLUSTER_NODE_REQUESTS_TOTAL,
        "Cluster mode: requests sent to each master (`node`: its address; one series per node)."
    );
    describe_counter!(
        CLUSTER_REDIRECTS_TOTAL,
        "Cluster mode: -MOVED and -ASK replies followed for clients, by kind."
    );
    describe_counter!(
        SECRET_RELOADS_TOTAL,
        "Rotated secrets picked up (a file's content changed)."
    );
    describe_counter!(
        SECRET_RELOAD_FAILURES_TOTAL,
        "Secret re-reads that found the file missing, unreadable or empty (the last good value stays)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_agree() {
        assert_eq!(LATENCY_BUCKETS.len(), LATENCY_BOUNDS_NANOS.len());
        for (secs, nanos) in LATENCY_BUCKETS.iter().zip(LATENCY_BOUNDS_NANOS) {
            assert_eq!((secs * 1e9).round() as u64, nanos);
        }
        assert!(LATENCY_BOUNDS_NANOS.windows(2).all(|w| w[0] < w[1]));
        // A duration equal to a bound falls in that bound's bucket (`le`).
        assert_eq!(LATENCY_BOUNDS_NANOS.partition_point(|&b| b < 10_000), 0);
        assert_eq!(LATENCY_BOUNDS_NANOS.partition_point(|&b| b < 10_001), 1);
        assert_eq!(
            LATENCY_BOUNDS_NANOS.partition_point(|&b| b < u64::MAX),
            BUCKETS - 1
        );
    }

    #[test]
    fn command_names_are_safe_label_values() {
        // They are written into the exposition unescaped.
        for name in NAMES.iter().chain([&OTHER]) {
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'_'
                    || b == b'-'),
                "{name}"
            );
        }
    }

    #[test]
    fn blocks_survive_and_are_reused_across_threads() {
        let id = crate::command::id(b"lastsave");
        let count = |text: &str| {
            let line = format!("{COMMANDS_TOTAL}{{command=\"lastsave\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(line.as_str()))
                .map_or(0, |v| v.parse::<u64>().unwrap())
        };
        let before = count(&render());
        let blocks = registry().all.len();
        for _ in 0..4 {
            std::thread::spawn(move || record_command(id, None, Duration::from_micros(30)))
                .join()
                .unwrap();
        }
        assert_eq!(count(&render()), before + 4);
        // Threads that ran one after the other shared one block (other tests' threads
        // may hold blocks at the same time, hence the bound rather than an equality).
        assert!(registry().all.len() <= blocks + 1 + 8);
    }

    #[test]
    fn classes() {
        assert_eq!(
            ErrorClass::of_reply(b"-ERR x\r\n"),
            ErrorClass::Redis("ERR")
        );
        assert_eq!(
            ErrorClass::of_reply(b"-WRONGTYPE Op\r\n"),
            ErrorClass::Redis("WRONGTYPE")
        );
        assert_eq!(
            ErrorClass::of_reply(b"-MOVED 1 a:1\r\n"),
            ErrorClass::Redis("MOVED")
        );
        assert_eq!(
            ErrorClass::of_reply(b"!9\r\nNOSCRIPT x\r\n"),
            ErrorClass::Redis("NOSCRIPT")
        );
        assert_eq!(
            ErrorClass::of_reply(b"-FOO bar\r\n"),
            ErrorClass::OtherRedis
        );
        assert_eq!(ErrorClass::of_reply(b"-ERR\r\n"), ErrorClass::Redis("ERR"));
    }
}

//! Metric names (as consts), the handles behind them, and the record helpers the hot path
//! calls. Handles are created once — per command on its first use, the rest at start — and
//! cached, so recording is an atomic add, never a registry lookup or an allocation.
//!
//! Labels are bounded: `command` takes only the names of the command table (anything else
//! is `other`), `class` only the error classes listed here. No key, value, address or
//! credential is ever a label.
//!
//! The recorder (the Prometheus exporter) must be installed before the first handle is
//! made; `admin` does that at start-up. Without a recorder every handle is a no-op.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

use crate::command::{CommandId, NAMES};

pub const COMMANDS_TOTAL: &str = "redis_ambassador_commands_total";
pub const COMMAND_ERRORS_TOTAL: &str = "redis_ambassador_command_errors_total";
pub const COMMAND_DURATION_SECONDS: &str = "redis_ambassador_command_duration_seconds";
pub const ERRORS_TOTAL: &str = "redis_ambassador_errors_total";
pub const CLIENT_CONNECTIONS: &str = "redis_ambassador_client_connections";
pub const CLIENT_CONNECTIONS_TOTAL: &str = "redis_ambassador_client_connections_total";
pub const CLIENT_AUTH_FAILURES_TOTAL: &str = "redis_ambassador_client_auth_failures_total";
pub const PROTOCOL_ERRORS_TOTAL: &str = "redis_ambassador_protocol_errors_total";
pub const CLIENT_BYTES_IN_TOTAL: &str = "redis_ambassador_client_bytes_in_total";
pub const CLIENT_BYTES_OUT_TOTAL: &str = "redis_ambassador_client_bytes_out_total";
pub const UPSTREAM_CONNECTIONS: &str = "redis_ambassador_upstream_connections";
pub const UPSTREAM_CONNECT_FAILURES_TOTAL: &str =
    "redis_ambassador_upstream_connect_failures_total";
pub const UPSTREAM_POOL_WAIT_SECONDS: &str = "redis_ambassador_upstream_pool_wait_seconds";
pub const UPSTREAM_POOL_EXHAUSTED_TOTAL: &str = "redis_ambassador_upstream_pool_exhausted_total";
pub const UPSTREAM_STALE_CONNECTIONS_TOTAL: &str =
    "redis_ambassador_upstream_stale_connections_total";

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
        }
    }
}

/// The handles for one command.
struct CommandHandles {
    total: Counter,
    errors: Counter,
    duration: Histogram,
}

fn command_handles(id: CommandId) -> &'static CommandHandles {
    static HANDLES: OnceLock<Vec<OnceLock<CommandHandles>>> = OnceLock::new();
    let all = HANDLES.get_or_init(|| (0..=NAMES.len()).map(|_| OnceLock::new()).collect());
    let index = id.index().min(NAMES.len());
    all[index].get_or_init(|| {
        let name = NAMES.get(index).copied().unwrap_or(OTHER);
        CommandHandles {
            total: metrics::counter!(COMMANDS_TOTAL, "command" => name),
            errors: metrics::counter!(COMMAND_ERRORS_TOTAL, "command" => name),
            duration: metrics::histogram!(COMMAND_DURATION_SECONDS, "command" => name),
        }
    })
}

/// Records one command: its outcome (`None` for success) and how long it took.
pub fn record_command(id: CommandId, error: Option<ErrorClass>, elapsed: Duration) {
    let handles = command_handles(id);
    handles.total.increment(1);
    handles.duration.record(elapsed.as_secs_f64());
    if let Some(class) = error {
        handles.errors.increment(1);
        error_class(class).increment(1);
    }
}

fn error_class(class: ErrorClass) -> Counter {
    // Few, fixed label values: the registry lookup happens only on error paths.
    metrics::counter!(ERRORS_TOTAL, "class" => class.label())
}

/// The handles that do not depend on a command, made once.
pub struct Global {
    pub client_connections: Gauge,
    pub client_connections_total: Counter,
    pub client_auth_failures: Counter,
    pub protocol_errors: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub upstream_connect_failures_unavailable: Counter,
    pub upstream_connect_failures_auth: Counter,
    pub pool_wait: Histogram,
    pub pool_exhausted: Counter,
    pub stale_connections: Counter,
    pub upstream_idle: Gauge,
    pub upstream_in_use: Gauge,
    pub upstream_pinned: Gauge,
}

pub fn global() -> &'static Global {
    static GLOBAL: OnceLock<Global> = OnceLock::new();
    GLOBAL.get_or_init(|| Global {
        client_connections: metrics::gauge!(CLIENT_CONNECTIONS),
        client_connections_total: metrics::counter!(CLIENT_CONNECTIONS_TOTAL),
        client_auth_failures: metrics::counter!(CLIENT_AUTH_FAILURES_TOTAL),
        protocol_errors: metrics::counter!(PROTOCOL_ERRORS_TOTAL),
        bytes_in: metrics::counter!(CLIENT_BYTES_IN_TOTAL),
        bytes_out: metrics::counter!(CLIENT_BYTES_OUT_TOTAL),
        upstream_connect_failures_unavailable: metrics::counter!(
            UPSTREAM_CONNECT_FAILURES_TOTAL, "reason" => "unavailable"),
        upstream_connect_failures_auth: metrics::counter!(
            UPSTREAM_CONNECT_FAILURES_TOTAL, "reason" => "auth"),
        pool_wait: metrics::histogram!(UPSTREAM_POOL_WAIT_SECONDS),
        pool_exhausted: metrics::counter!(UPSTREAM_POOL_EXHAUSTED_TOTAL),
        stale_connections: metrics::counter!(UPSTREAM_STALE_CONNECTIONS_TOTAL),
        upstream_idle: metrics::gauge!(UPSTREAM_CONNECTIONS, "state" => "idle"),
        upstream_in_use: metrics::gauge!(UPSTREAM_CONNECTIONS, "state" => "in_use"),
        upstream_pinned: metrics::gauge!(UPSTREAM_CONNECTIONS, "state" => "pinned"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

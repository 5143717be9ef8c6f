//! The upstream layer's one error type, and what a caller does with it: which side failed
//! (`side`), whether the command may have run on Redis (`may_have_run`), whether sending it
//! again is safe (`is_retryable`), and its metrics class (`class`).
//!
//! Every case is a variant or a reason from a closed set; the text is made only when the
//! error is displayed. The `Display` text is what the client sees after `-ERR `
//! (`replies::upstream_error` writes it), so it must never change by accident and never
//! contain a secret: the tests compare these texts byte for byte. Every address goes
//! through `config::redact_address`, the one function that prints addresses. This module
//! decides nothing and logs nothing.

use crate::config::redact_address;
use crate::metrics::ErrorClass;
use crate::protocol::ReplyError;

/// Why a command could not be served by the upstream. The `Display` text is what the
/// client sees after `-ERR `; none of them can contain a secret.
///
/// Stays small (errors travel beside replies through every lane's channel): see the
/// `fits_beside_a_reply` test.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream could not be reached or used, for a reason from a closed set.
    #[error("upstream unavailable: {0}")]
    Unavailable(Box<UnavailableReason>),
    /// TLS failed: at the handshake (certificate, name, client certificate), or later.
    #[error("upstream unavailable: TLS: {0}")]
    Tls(Box<TlsFailure>),
    #[error("upstream authentication failed: {0}")]
    AuthFailed(AuthFailure),
    #[error("upstream pool exhausted: no connection became free within {0} ms")]
    PoolExhausted(u64),
    /// No reply (or no progress writing) within this many ms, after the command was sent.
    #[error("upstream timed out: no reply within {0} ms")]
    Timeout(u64),
    /// The connection failed under a command, for a reason from a closed set.
    #[error("upstream connection lost: {0}")]
    Lost(LostReason),
    #[error("upstream sent a malformed reply: {0}")]
    BadReply(ReplyError),
    /// A state change the ambassador wove into a batch (SELECT, HELLO) was refused: the
    /// requests after it, written with it, would run in the wrong database or protocol.
    #[error("upstream refused a connection-state change (SELECT/HELLO): {0}")]
    StateChangeRefused(Box<str>),
    /// An idle pooled connection failed its probe. Not a failure of the upstream: bb8
    /// replaces the connection and the checkout goes on.
    #[error("stale pooled connection: {0}")]
    Stale(&'static str),
    /// A client let more than this many bytes of replies pile up unread: it is closed
    /// (Redis's client-output-buffer-limit), so it cannot hold a shared lane.
    #[error("client output buffer over {0} bytes")]
    ClientOutputLimit(usize),
    /// The cap on pinned (dedicated) connections is reached.
    #[error(
        "upstream pool exhausted: too many clients hold a dedicated upstream connection \
         (MULTI, WATCH, blocking commands, pub/sub, MONITOR): max_pinned = {0}"
    )]
    TooManyPinned(usize),
}

/// Which side of the ambassador an error comes from (as pingora's `ErrorSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The application: it stopped reading its replies.
    Client,
    /// Redis (or a Sentinel, or a cluster node): unreachable, refusing, closing, malformed.
    Upstream,
    /// The ambassador itself: its own limits, its configuration, its tasks.
    Ambassador,
}

/// Why the upstream is unavailable: the text after `upstream unavailable: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnavailableReason {
    // Connecting.
    /// The TCP connect failed (refused, unreachable, a name that does not resolve).
    #[error("connect to {}: {error}", redact_address(.address))]
    Connect { address: String, error: IoFailure },
    #[error("connect to {}: timed out after {ms} ms", redact_address(.address))]
    ConnectTimeout { address: String, ms: u64 },
    #[error(
        "{} accepted the connection but did not answer the handshake within {ms} ms",
        redact_address(.address)
    )]
    HandshakeTimeout { address: String, ms: u64 },
    /// `READONLY` (for a cluster replica serving reads) was refused: the server's error.
    #[error("the server refused READONLY (is it a cluster replica?): {reply}")]
    ReadonlyRefused { reply: String },
    /// A connect failure was published while waiting, and none is recorded any more.
    #[error("connect failed")]
    ConnectFailed,
    #[error("no server information")]
    NoServerInfo,
    /// The SELECT/HELLO before a command on a dedicated connection was refused (the
    /// command itself was sent behind it).
    #[error("state change refused: {reply}")]
    StateChangeRefused { reply: String },

    // Sentinel.
    /// The server the Sentinels named says (HELLO's `role`) it is not a master.
    #[error(
        "{} is a {role}, not the master of `{master}`; asking the Sentinels again",
        redact_address(.address)
    )]
    NotMaster {
        address: String,
        role: String,
        master: String,
    },
    /// Every Sentinel failed; `last` is the first error met (an authentication failure
    /// is reported as such instead).
    #[error("no Sentinel gave the address of master `{master}` (last: {last})")]
    NoSentinelAnswered { master: String, last: UpstreamError },
    #[error("no Sentinel configured")]
    NoSentinel,
    /// A Sentinel answered without an address (`reply`: its reply, CRLF removed).
    #[error(
        "Sentinel {} does not know master `{master}`: {reply}",
        redact_address(.sentinel)
    )]
    UnknownMaster {
        sentinel: String,
        master: String,
        reply: String,
    },

    // Shared lanes.
    #[error("no upstream lanes")]
    NoLanes,
    #[error("upstream lane stopped")]
    LaneStopped,

    // Redis Cluster routing (constructed in `session` and `cluster`).
    #[error("no node for this batch")]
    NoNodeForBatch,
    #[error("not in cluster mode")]
    NotInClusterMode,
    #[error("the cluster has no master")]
    NoClusterMaster,
    #[error("no rule to split this command")]
    NoSplitRule,
    #[error("cluster nodes sent replies that cannot be merged")]
    Unmergeable,
    #[error("SCAN reply not understood")]
    ScanReplyNotUnderstood,
    #[error("SCAN cursor not understood")]
    ScanCursorNotUnderstood,
    #[error("a node's SCAN cursor is too large to carry")]
    ScanCursorTooLarge,
    /// The HELLO that moves a shard-channel link to the client's protocol was refused.
    #[error("HELLO refused: {reply}")]
    HelloRefused { reply: String },
    #[error("no key to route by")]
    NoRoutingKey,
    #[error("the cluster's slot map is not known yet")]
    SlotMapUnknown,
    #[error("no cluster node serves slot {slot} (CLUSTERDOWN?)")]
    SlotUnserved { slot: u16 },
    #[error("no cluster address")]
    NoClusterAddress,
    /// `reply`: the node's reply to CLUSTER SLOTS, CRLF removed.
    #[error(
        "{} did not answer CLUSTER SLOTS with a slot map: {reply}",
        redact_address(.address)
    )]
    NoSlotMap { address: String, reply: String },
    #[error("{} knows no slot owners yet", redact_address(.address))]
    NoSlotOwners { address: String },
}

/// Why a connection was lost under a command: the text after `upstream connection lost: `.
/// Texts are `Box<str>`, not `String`, to keep `UpstreamError` within 32 bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LostReason {
    /// Redis closed the connection (end of stream) while a reply was due.
    #[error("closed by the server")]
    ClosedByServer,
    /// A read or a write failed.
    #[error("{op}: {error}")]
    Io { op: IoOp, error: IoFailure },
    /// A lane's replies ended before this batch's did: it may have been written.
    #[error("connection closed")]
    ConnectionClosed,
    /// A lane's connection was gone before this batch was written: nothing was sent.
    #[error("connection closed")]
    ClosedBeforeSent,
    /// The lane a call was queued on stopped before answering.
    #[error("lane stopped")]
    LaneStopped,
    /// The SELECT/HELLO in front of a batch on a shared lane was refused (the batch was
    /// sent behind it).
    #[error("upstream refused a connection-state change (SELECT/HELLO): {reply}")]
    StateChangeRefused { reply: Box<str> },
    /// Fewer replies came back than requests were sent.
    #[error("no reply")]
    NoReply,
    /// A cluster sub-request's task failed (`detail`: the task's error).
    #[error("a cluster sub-request failed: {detail}")]
    SubRequestFailed { detail: Box<str> },
    #[error("a cluster sub-request went unanswered")]
    SubRequestUnanswered,
}

/// Why TLS failed: the text after `upstream unavailable: TLS: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsFailure {
    /// The handshake with `address` failed, or the first read after it (TLS 1.3 reports
    /// a refused client certificate there). `reason`: `tls::describe`'s one line.
    #[error("{reason} ({})", redact_address(.address))]
    Handshake { address: String, reason: String },
    #[error(
        "{} did not complete the handshake within {ms} ms",
        redact_address(.address)
    )]
    HandshakeTimeout { address: String, ms: u64 },
    /// TLS failed on an established connection.
    #[error("{reason}")]
    Session { reason: String },
}

/// Why the upstream refused the ambassador: the text after
/// `upstream authentication failed: `. Redis's replies never echo the password. Texts are
/// `Box<str>`, not `String`, to keep `UpstreamError` within 32 bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// The server refused the credentials: its error reply.
    #[error("{0}")]
    Refused(Box<str>),
    /// The server wants credentials and no upstream password is configured.
    #[error("{0} (no upstream password is configured)")]
    NoPassword(Box<str>),
    /// A Sentinel refused them.
    #[error("Sentinel: {0}")]
    Sentinel(Box<AuthFailure>),
}

/// A failed socket operation, as the operating system said it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct IoFailure {
    pub kind: std::io::ErrorKind,
    pub text: Box<str>,
}

impl From<&std::io::Error> for IoFailure {
    fn from(error: &std::io::Error) -> IoFailure {
        IoFailure {
            kind: error.kind(),
            text: error.to_string().into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IoOp {
    #[error("read")]
    Read,
    #[error("write")]
    Write,
}

impl From<UnavailableReason> for UpstreamError {
    fn from(reason: UnavailableReason) -> UpstreamError {
        UpstreamError::Unavailable(Box::new(reason))
    }
}

impl From<LostReason> for UpstreamError {
    fn from(reason: LostReason) -> UpstreamError {
        UpstreamError::Lost(reason)
    }
}

impl From<TlsFailure> for UpstreamError {
    fn from(failure: TlsFailure) -> UpstreamError {
        UpstreamError::Tls(Box::new(failure))
    }
}

impl From<AuthFailure> for UpstreamError {
    fn from(failure: AuthFailure) -> UpstreamError {
        UpstreamError::AuthFailed(failure)
    }
}

impl UpstreamError {
    /// The server's own error, when this is Redis refusing a state change the ambassador
    /// sent in front of a command (SELECT/HELLO while a script is busy: `BUSY …`). That
    /// error is the command's reply, as Redis would have given it to the command itself.
    pub fn server_reply(&self) -> Option<&str> {
        match self {
            UpstreamError::StateChangeRefused(reply) => Some(reply),
            UpstreamError::Lost(LostReason::StateChangeRefused { reply }) => Some(reply),
            UpstreamError::Unavailable(reason) => match &**reason {
                UnavailableReason::StateChangeRefused { reply } => Some(reply),
                _ => None,
            },
            _ => None,
        }
    }

    /// Writes this error as the client's reply: the server's own error where there is one
    /// (see [`server_reply`](UpstreamError::server_reply)), else `-ERR <text>`.
    pub fn reply_to(&self, out: &mut bytes::BytesMut) {
        match self.server_reply() {
            Some(reply) => crate::protocol::encode::error(out, reply.as_bytes()),
            None => crate::replies::proxy_error(out, self),
        }
    }

    /// Which side failed.
    pub fn side(&self) -> Side {
        match self {
            UpstreamError::Unavailable(reason) => reason.side(),
            UpstreamError::Lost(reason) => reason.side(),
            UpstreamError::Tls(_)
            | UpstreamError::AuthFailed(_)
            | UpstreamError::Timeout(_)
            | UpstreamError::BadReply(_)
            | UpstreamError::StateChangeRefused(_)
            | UpstreamError::Stale(_) => Side::Upstream,
            UpstreamError::PoolExhausted(_) | UpstreamError::TooManyPinned(_) => Side::Ambassador,
            UpstreamError::ClientOutputLimit(_) => Side::Client,
        }
    }

    /// Whether the command may have reached Redis and run: its bytes were (or may have
    /// been) sent before the failure.
    pub fn may_have_run(&self) -> bool {
        match self {
            UpstreamError::Unavailable(reason) => reason.may_have_run(),
            UpstreamError::Lost(reason) => reason.may_have_run(),
            UpstreamError::Tls(failure) => matches!(**failure, TlsFailure::Session { .. }),
            UpstreamError::Timeout(_)
            | UpstreamError::BadReply(_)
            | UpstreamError::StateChangeRefused(_)
            | UpstreamError::ClientOutputLimit(_) => true,
            UpstreamError::AuthFailed(_)
            | UpstreamError::PoolExhausted(_)
            | UpstreamError::Stale(_)
            | UpstreamError::TooManyPinned(_) => false,
        }
    }

    /// Whether sending the command again is safe and may succeed: nothing of it reached
    /// Redis, and the failure belongs to one connection or one moment (a connect that
    /// failed, a stale or closed connection, a full pool, a slot map not known yet) rather
    /// than to the credentials or to what the ambassador is configured to do. A retry
    /// during the reconnect backoff still fails fast with the same error.
    pub fn is_retryable(&self) -> bool {
        if self.may_have_run() {
            return false;
        }
        match self {
            UpstreamError::AuthFailed(_) => false,
            UpstreamError::Unavailable(reason) => reason.side() != Side::Ambassador,
            _ => true,
        }
    }

    /// The metrics class of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            UpstreamError::Unavailable(_) | UpstreamError::Tls(_) | UpstreamError::Stale(_) => {
                ErrorClass::UpstreamUnavailable
            }
            UpstreamError::AuthFailed(_) => ErrorClass::UpstreamAuth,
            UpstreamError::PoolExhausted(_) | UpstreamError::TooManyPinned(_) => {
                ErrorClass::PoolExhausted
            }
            UpstreamError::Timeout(_) => ErrorClass::Timeout,
            UpstreamError::Lost(_) => ErrorClass::UpstreamLost,
            UpstreamError::BadReply(_) | UpstreamError::StateChangeRefused(_) => {
                ErrorClass::BadReply
            }
            UpstreamError::ClientOutputLimit(_) => ErrorClass::OutputLimit,
        }
    }

    /// Whether the error means the server could not be reached or let in (as opposed to a
    /// problem with one request): such errors are published to waiting checkouts.
    pub(super) fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            UpstreamError::Unavailable(_) | UpstreamError::Tls(_) | UpstreamError::AuthFailed(_)
        )
    }
}

impl UnavailableReason {
    pub fn side(&self) -> Side {
        use UnavailableReason::*;
        match self {
            NoSentinel | NoLanes | LaneStopped | NoNodeForBatch | NotInClusterMode
            | NoSplitRule | ScanCursorTooLarge | NoRoutingKey | NoClusterAddress => {
                Side::Ambassador
            }
            Connect { .. }
            | ConnectTimeout { .. }
            | HandshakeTimeout { .. }
            | ReadonlyRefused { .. }
            | ConnectFailed
            | NoServerInfo
            | StateChangeRefused { .. }
            | NotMaster { .. }
            | NoSentinelAnswered { .. }
            | UnknownMaster { .. }
            | NoClusterMaster
            | Unmergeable
            | ScanReplyNotUnderstood
            | ScanCursorNotUnderstood
            | HelloRefused { .. }
            | SlotMapUnknown
            | SlotUnserved { .. }
            | NoSlotMap { .. }
            | NoSlotOwners { .. } => Side::Upstream,
        }
    }

    /// True only where the command was sent before the failure was found: behind a
    /// refused state change, or to cluster nodes whose replies could not be used.
    pub fn may_have_run(&self) -> bool {
        use UnavailableReason::*;
        matches!(
            self,
            StateChangeRefused { .. }
                | Unmergeable
                | ScanReplyNotUnderstood
                | ScanCursorNotUnderstood
                | ScanCursorTooLarge
        )
    }
}

impl LostReason {
    pub fn side(&self) -> Side {
        match self {
            LostReason::LaneStopped
            | LostReason::NoReply
            | LostReason::SubRequestFailed { .. }
            | LostReason::SubRequestUnanswered => Side::Ambassador,
            LostReason::ClosedByServer
            | LostReason::Io { .. }
            | LostReason::ConnectionClosed
            | LostReason::ClosedBeforeSent
            | LostReason::StateChangeRefused { .. } => Side::Upstream,
        }
    }

    /// False only for a batch that was never written.
    pub fn may_have_run(&self) -> bool {
        !matches!(self, LostReason::ClosedBeforeSent)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::ReplyFrame;

    #[test]
    fn fits_beside_a_reply() {
        // Lanes send `Result<(Bytes, ReplyFrame), UpstreamError>` per reply: the error
        // must not make that bigger than the reply itself.
        assert!(std::mem::size_of::<UpstreamError>() <= 32);
        assert_eq!(
            std::mem::size_of::<Result<(Bytes, ReplyFrame), UpstreamError>>(),
            std::mem::size_of::<(Bytes, ReplyFrame)>()
        );
    }

    #[test]
    fn texts_are_unchanged() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let cases: Vec<(UpstreamError, String)> = vec![
            (
                UnavailableReason::Connect {
                    address: "h:1".into(),
                    error: IoFailure::from(&refused),
                }
                .into(),
                format!("upstream unavailable: connect to h:1: {refused}"),
            ),
            (
                UnavailableReason::ConnectTimeout {
                    address: "h:1".into(),
                    ms: 5,
                }
                .into(),
                "upstream unavailable: connect to h:1: timed out after 5 ms".into(),
            ),
            (
                UnavailableReason::NotMaster {
                    address: "h:1".into(),
                    role: "slave".into(),
                    master: "m".into(),
                }
                .into(),
                "upstream unavailable: h:1 is a slave, not the master of `m`; asking the \
                 Sentinels again"
                    .into(),
            ),
            (
                UnavailableReason::NoSentinelAnswered {
                    master: "m".into(),
                    last: UnavailableReason::ConnectFailed.into(),
                }
                .into(),
                "upstream unavailable: no Sentinel gave the address of master `m` (last: \
                 upstream unavailable: connect failed)"
                    .into(),
            ),
            (
                LostReason::Io {
                    op: IoOp::Read,
                    error: IoFailure::from(&refused),
                }
                .into(),
                format!("upstream connection lost: read: {refused}"),
            ),
            (
                LostReason::StateChangeRefused {
                    reply: "ERR x".into(),
                }
                .into(),
                "upstream connection lost: upstream refused a connection-state change \
                 (SELECT/HELLO): ERR x"
                    .into(),
            ),
            (
                TlsFailure::Handshake {
                    address: "h:1".into(),
                    reason: "bad".into(),
                }
                .into(),
                "upstream unavailable: TLS: bad (h:1)".into(),
            ),
            (
                AuthFailure::Sentinel(Box::new(AuthFailure::NoPassword("NOAUTH x".into()))).into(),
                "upstream authentication failed: Sentinel: NOAUTH x (no upstream password is \
                 configured)"
                    .into(),
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }

    #[test]
    fn sides_and_retry_safety() {
        let connect: UpstreamError = UnavailableReason::ConnectFailed.into();
        assert_eq!(connect.side(), Side::Upstream);
        assert!(!connect.may_have_run() && connect.is_retryable());

        let closed: UpstreamError = LostReason::ClosedByServer.into();
        assert!(closed.may_have_run() && !closed.is_retryable());
        let unsent: UpstreamError = LostReason::ClosedBeforeSent.into();
        assert!(!unsent.may_have_run() && unsent.is_retryable());

        assert!(UpstreamError::Timeout(1).may_have_run());
        let auth = UpstreamError::AuthFailed(AuthFailure::Refused("WRONGPASS".into()));
        assert!(!auth.may_have_run() && !auth.is_retryable());
        let pinned = UpstreamError::TooManyPinned(1);
        assert_eq!(pinned.side(), Side::Ambassador);
        assert!(pinned.is_retryable());
        let config: UpstreamError = UnavailableReason::NotInClusterMode.into();
        assert!(!config.may_have_run() && !config.is_retryable());
        assert_eq!(UpstreamError::ClientOutputLimit(1).side(), Side::Client);
        let refused = UpstreamError::StateChangeRefused("ERR busy".into());
        assert!(refused.may_have_run() && !refused.is_retryable());
    }
}

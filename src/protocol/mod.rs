//! RESP on the wire: the client-side request scanner, the upstream-side reply scanner, and
//! the encoders for what the proxy itself sends.
//!
//! Both scanners are our own (see DESIGN.md): they are resumable — state is kept between
//! reads so no byte is examined twice — iterative rather than recursive, enforce their limits
//! while parsing, and never allocate from a length the peer declared. They do not interpret
//! commands or replies; that is `command` and `session`'s business.

pub mod encode;
pub mod inline;
pub mod number;
#[cfg(test)]
mod proptests;
pub mod reply;
pub mod request;

pub use number::INLINE_MAX;
pub use reply::{ReplyError, ReplyFrame, ReplyScanner};
pub use request::{ProtocolError, Request, RequestLimits, RequestScanner};

/// The protocol version a connection speaks: RESP2 (the default) or RESP3 (after `HELLO 3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Resp2,
    Resp3,
}

impl Proto {
    pub fn number(self) -> i64 {
        match self {
            Proto::Resp2 => 2,
            Proto::Resp3 => 3,
        }
    }
}

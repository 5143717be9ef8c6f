//! The client-side request scanner.
//!
//! It cuts complete requests off the front of a client's read buffer, in both of Redis's
//! forms — multibulk (`*N\r\n$L\r\n…`) and inline (`SET k v\r\n`) — following
//! `processMultibulkBuffer` / `processInlineBuffer` check for check, so that it accepts and
//! rejects what Redis does, with Redis's error texts. It is resumable: when a request is
//! incomplete it remembers how far it got and continues there on the next call, so a request
//! that arrives one byte at a time costs the same as one that arrives whole.
//!
//! Limits are enforced while parsing, never after: the 64 KiB line caps, the bulk length cap,
//! the pre-authentication caps (10 arguments, 16 KiB per bulk) and the query-buffer cap. It
//! never allocates from a declared length; buffers grow only with bytes that arrived.
//!
//! The one intended divergence from Redis (DESIGN.md): the two bytes after a bulk payload
//! must be CRLF. Redis skips them unchecked; we refuse, so the proxy's framing and the
//! upstream's can never disagree. Header lines keep Redis's leniency (any byte after `\r`),
//! and such requests are re-encoded canonically before they travel upstream.

use bytes::{Buf, Bytes, BytesMut};
use memchr::memchr;

use super::inline::split_args;
use super::number::{INLINE_MAX, parse_i64};

/// Redis's cap on arguments before authentication (CVE-2021-32675).
pub const UNAUTH_MAX_ARGS: i64 = 10;
/// Redis's cap on one bulk argument before authentication.
pub const UNAUTH_MAX_BULK: i64 = 16 * 1024;

/// The bounds the scanner enforces. `Default` gives Redis's defaults.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    /// Largest bulk argument (Redis `proto-max-bulk-len`).
    pub max_bulk_len: u64,
    /// Largest request buffered while incomplete (Redis `client-query-buffer-limit`).
    pub query_buffer_limit: usize,
    /// The same before authentication.
    pub unauthenticated_query_buffer_limit: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_bulk_len: 512 * 1024 * 1024,
            query_buffer_limit: 1024 * 1024 * 1024,
            unauthenticated_query_buffer_limit: 1024 * 1024,
        }
    }
}

/// A bad request. Every variant but `QueryBufferLimit` is answered with
/// `-ERR Protocol error: <text>` before the connection closes; `QueryBufferLimit` closes
/// without a reply, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("invalid bulk length")]
    InvalidBulkLength,
    #[error("expected '$', got '{}'", printable(*.0))]
    ExpectedDollar(u8),
    #[error("too big inline request")]
    TooBigInline,
    #[error("too big mbulk count string")]
    TooBigMultibulkCount,
    #[error("too big bulk count string")]
    TooBigBulkCount,
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("unauthenticated multibulk length")]
    UnauthenticatedMultibulkLength,
    #[error("unauthenticated bulk length")]
    UnauthenticatedBulkLength,
    #[error("expected CRLF after bulk payload")]
    MissingBulkTerminator,
    #[error("query buffer limit reached")]
    QueryBufferLimit,
}

impl ProtocolError {
    /// The bytes to send before closing, or `None` when Redis closes silently.
    pub fn reply(&self) -> Option<Vec<u8>> {
        match self {
            ProtocolError::QueryBufferLimit => None,
            other => {
                let mut reply = Vec::with_capacity(64);
                reply.extend_from_slice(b"-ERR Protocol error: ");
                match other {
                    // Built byte-wise: the offending byte need not be UTF-8.
                    ProtocolError::ExpectedDollar(b) => {
                        reply.extend_from_slice(b"expected '$', got '");
                        reply.push(if matches!(b, b'\r' | b'\n') { b' ' } else { *b });
                        reply.push(b'\'');
                    }
                    _ => reply.extend_from_slice(other.to_string().as_bytes()),
                }
                reply.extend_from_slice(b"\r\n");
                Some(reply)
            }
        }
    }
}

/// Redis maps CR and LF in error texts to spaces; other bytes go out as they are.
fn printable(b: u8) -> char {
    match b {
        b'\r' | b'\n' => ' ',
        other => char::from(other),
    }
}

/// One complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The arguments; the first is the command name. Never empty.
    pub args: Vec<Bytes>,
    /// The request exactly as received, when that is canonical multibulk RESP and can be
    /// forwarded byte for byte; `None` for inline requests and lenient headers.
    pub canonical: Option<Bytes>,
}

impl Request {
    pub fn name(&self) -> &[u8] {
        &self.args[0]
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// At the first byte of a request.
    Start,
    /// Inline request; `\n` searched for up to `scanned`.
    Inline { scanned: usize },
    /// In the `*N` line; `\r` searched for up to `scanned`.
    Count { scanned: usize },
    /// In a `$L` line starting at `pos`; `\r` searched for up to `scanned`.
    BulkHeader { scanned: usize },
    /// In a bulk payload of `len` bytes starting at `pos`.
    BulkBody { len: usize },
}

/// Resumable scanner for one client connection. The buffer passed to [`next`] must always
/// start at the first unconsumed byte: the scanner consumes (splits off) whole requests only.
///
/// [`next`]: RequestScanner::next
#[derive(Debug)]
pub struct RequestScanner {
    limits: RequestLimits,
    state: State,
    /// Offset (from the start of the buffer) of the element being scanned.
    pos: usize,
    /// Arguments still expected in the current multibulk request.
    remaining: i64,
    /// Payload ranges of the arguments seen so far.
    args: Vec<(usize, usize)>,
    /// Whether every header line of the current request ended in CRLF.
    canonical: bool,
}

impl RequestScanner {
    pub fn new(limits: RequestLimits) -> Self {
        RequestScanner {
            limits,
            state: State::Start,
            pos: 0,
            remaining: 0,
            args: Vec::new(),
            canonical: true,
        }
    }

    /// Whether a request has been started but not completed (bytes are held back).
    pub fn in_progress(&self) -> bool {
        !matches!(self.state, State::Start)
    }

    fn reset(&mut self) {
        self.state = State::Start;
        self.pos = 0;
        self.remaining = 0;
        self.args.clear();
        self.canonical = true;
    }

    /// Cuts the next complete request off the front of `buf`.
    ///
    /// `unauthenticated` applies Redis's pre-authentication caps. Returns `Ok(None)` when
    /// more bytes are needed; frames Redis ignores (blank lines, `*0`, `*-1`) are consumed
    /// silently. After an error the connection must be closed: the scanner's state is void.
    // One flat state machine that mirrors Redis's processMultibulkBuffer and
    // processInlineBuffer step for step, on purpose: split into helpers it would hide the
    // order of Redis's checks. The documented exception to the 100-line rule.
    #[allow(clippy::too_many_lines)]
    pub fn next(
        &mut self,
        buf: &mut BytesMut,
        unauthenticated: bool,
    ) -> Result<Option<Request>, ProtocolError> {
        loop {
            match self.state {
                State::Start => {
                    match buf.first() {
                        None => return Ok(None),
                        Some(b'*') => self.state = State::Count { scanned: 1 },
                        Some(_) => self.state = State::Inline { scanned: 0 },
                    }
                    self.pos = 0;
                }
                State::Inline { scanned } => {
                    let Some(found) = memchr(b'\n', &buf[scanned..]) else {
                        if buf.len() > INLINE_MAX {
                            return Err(ProtocolError::TooBigInline);
                        }
                        self.state = State::Inline { scanned: buf.len() };
                        return Ok(None);
                    };
                    let newline = scanned + found;
                    let mut end = newline;
                    if end > 0 && buf[end - 1] == b'\r' {
                        end -= 1;
                    }
                    let args =
                        split_args(&buf[..end]).map_err(|_| ProtocolError::UnbalancedQuotes)?;
                    buf.advance(newline + 1);
                    self.reset();
                    if args.is_empty() {
                        continue; // a blank line: Redis ignores it
                    }
                    return Ok(Some(Request {
                        args: args.into_iter().map(Bytes::from).collect(),
                        canonical: None,
                    }));
                }
                State::Count { scanned } => {
                    let Some(found) = memchr(b'\r', &buf[scanned..]) else {
                        if buf.len() > INLINE_MAX {
                            return Err(ProtocolError::TooBigMultibulkCount);
                        }
                        self.state = State::Count { scanned: buf.len() };
                        return Ok(None);
                    };
                    let cr = scanned + found;
                    if buf.len() < cr + 2 {
                        // Redis wants one byte after the '\r' before it parses the line.
                        self.state = State::Count { scanned: cr };
                        return Ok(None);
                    }
                    let count = match parse_i64(&buf[1..cr]) {
                        Some(n) if n <= i64::from(i32::MAX) => n,
                        _ => return Err(ProtocolError::InvalidMultibulkLength),
                    };
                    if count > UNAUTH_MAX_ARGS && unauthenticated {
                        return Err(ProtocolError::UnauthenticatedMultibulkLength);
                    }
                    if buf[cr + 1] != b'\n' {
                        self.canonical = false;
                    }
                    if count <= 0 {
                        buf.advance(cr + 2);
                        self.reset();
                        continue; // `*0` and `*-N`: Redis ignores them
                    }
                    self.remaining = count;
                    self.pos = cr + 2;
                    self.state = State::BulkHeader { scanned: self.pos };
                }
                State::BulkHeader { scanned } => {
                    let Some(found) = memchr(b'\r', &buf[scanned..]) else {
                        if buf.len() - self.pos > INLINE_MAX {
                            return Err(ProtocolError::TooBigBulkCount);
                        }
                        self.state = State::BulkHeader { scanned: buf.len() };
                        return self.need_more(buf, unauthenticated);
                    };
                    let cr = scanned + found;
                    if buf.len() < cr + 2 {
                        self.state = State::BulkHeader { scanned: cr };
                        return self.need_more(buf, unauthenticated);
                    }
                    if buf[self.pos] != b'$' {
                        return Err(ProtocolError::ExpectedDollar(buf[self.pos]));
                    }
                    let len = match parse_i64(&buf[self.pos + 1..cr]) {
                        Some(n) if n >= 0 && (n as u64) <= self.limits.max_bulk_len => n,
                        _ => return Err(ProtocolError::InvalidBulkLength),
                    };
                    if len > UNAUTH_MAX_BULK && unauthenticated {
                        return Err(ProtocolError::UnauthenticatedBulkLength);
                    }
                    if buf[cr + 1] != b'\n' {
                        self.canonical = false;
                    }
                    let len = usize::try_from(len).map_err(|_| ProtocolError::InvalidBulkLength)?;
                    self.pos = cr + 2;
                    self.state = State::BulkBody { len };
                }
                State::BulkBody { len } => {
                    let end = self.pos.saturating_add(len);
                    if buf.len() < end.saturating_add(2) {
                        return self.need_more(buf, unauthenticated);
                    }
                    if &buf[end..end + 2] != b"\r\n" {
                        return Err(ProtocolError::MissingBulkTerminator);
                    }
                    self.args.push((self.pos, end));
                    self.pos = end + 2;
                    self.remaining -= 1;
                    if self.remaining > 0 {
                        self.state = State::BulkHeader { scanned: self.pos };
                        continue;
                    }
                    let frame = buf.split_to(self.pos).freeze();
                    let args = self.args.iter().map(|&(s, e)| frame.slice(s..e)).collect();
                    let canonical = self.canonical.then_some(frame);
                    self.reset();
                    return Ok(Some(Request { args, canonical }));
                }
            }
        }
    }

    /// A multibulk request is incomplete: enforce the query-buffer cap, then wait.
    fn need_more(
        &self,
        buf: &BytesMut,
        unauthenticated: bool,
    ) -> Result<Option<Request>, ProtocolError> {
        self.check_buffer(buf, unauthenticated)?;
        Ok(None)
    }

    /// The query-buffer cap, as Redis applies it after every read: the bytes received but
    /// not yet consumed as requests may not exceed the limit (a smaller one before
    /// authentication). Over it the connection closes without a reply.
    pub fn check_buffer(&self, buf: &BytesMut, unauthenticated: bool) -> Result<(), ProtocolError> {
        let limit = if unauthenticated {
            self.limits.unauthenticated_query_buffer_limit
        } else {
            self.limits.query_buffer_limit
        };
        if buf.len() > limit {
            return Err(ProtocolError::QueryBufferLimit);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything the scanner produced for `input` fed in `chunks`: the requests' argument
    /// lists and canonical flags, and the error that ended it, if any.
    #[derive(Debug, PartialEq)]
    struct Outcome {
        requests: Vec<(Vec<Vec<u8>>, bool)>,
        error: Option<ProtocolError>,
        leftover: usize,
    }

    fn feed(input: &[u8], split_at: &[usize], unauthenticated: bool) -> Outcome {
        let mut scanner = RequestScanner::new(RequestLimits::default());
        let mut buf = BytesMut::new();
        let mut requests = Vec::new();
        let mut start = 0;
        let mut cuts: Vec<usize> = split_at.to_vec();
        cuts.push(input.len());
        for cut in cuts {
            buf.extend_from_slice(&input[start..cut]);
            start = cut;
            loop {
                match scanner.next(&mut buf, unauthenticated) {
                    Ok(Some(req)) => {
                        if let Some(frame) = &req.canonical {
                            assert_eq!(frame[..], crate::protocol::encode::command(&req.args)[..]);
                        }
                        requests.push((
                            req.args.iter().map(|a| a.to_vec()).collect(),
                            req.canonical.is_some(),
                        ));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // How much was buffered when the error hit depends on the chunking.
                        return Outcome {
                            requests,
                            error: Some(e),
                            leftover: 0,
                        };
                    }
                }
            }
        }
        Outcome {
            requests,
            error: None,
            leftover: buf.len(),
        }
    }

    /// Feeds `input` whole, split at every single offset, and one byte at a time; all must
    /// agree.
    fn scan_all_ways(input: &[u8], unauthenticated: bool) -> Outcome {
        let whole = feed(input, &[], unauthenticated);
        for i in 1..input.len() {
            let split = feed(input, &[i], unauthenticated);
            assert_eq!(
                split,
                whole,
                "split at {i} of {:?}",
                String::from_utf8_lossy(input)
            );
        }
        let bytewise: Vec<usize> = (1..input.len()).collect();
        assert_eq!(
            feed(input, &bytewise, unauthenticated),
            whole,
            "one byte at a time"
        );
        whole
    }

    fn args(list: &[&[u8]]) -> Vec<Vec<u8>> {
        list.iter().map(|a| a.to_vec()).collect()
    }

    #[test]
    fn multibulk_requests() {
        let out = scan_all_ways(
            b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n",
            false,
        );
        assert_eq!(
            out.requests,
            vec![(args(&[b"PING"]), true), (args(&[b"SET", b"k", b""]), true)]
        );
        assert_eq!(out.error, None);
        assert_eq!(out.leftover, 0);
    }

    #[test]
    fn binary_payloads() {
        let out = scan_all_ways(b"*2\r\n$4\r\nECHO\r\n$5\r\n\0\r\n\r\n\r\n", false);
        assert_eq!(out.requests, vec![(args(&[b"ECHO", b"\0\r\n\r\n"]), true)]);
    }

    #[test]
    fn inline_requests() {
        let out = scan_all_ways(b"PING\r\nset k \"a b\"\nECHO \"x\\x4\"\r\n", false);
        assert_eq!(
            out.requests,
            vec![
                (args(&[b"PING"]), false),
                (args(&[b"set", b"k", b"a b"]), false),
                (args(&[b"ECHO", b"xx4"]), false),
            ]
        );
        // `$3` as the first byte is an inline command, as in Redis.
        assert_eq!(
            scan_all_ways(b"$3\r\n", false).requests,
            vec![(args(&[b"$3"]), false)]
        );
    }

    #[test]
    fn ignored_frames() {
        let out = scan_all_ways(b"\r\n*0\r\n*-10\r\n   \r\nPING\r\n", false);
        assert_eq!(out.requests, vec![(args(&[b"PING"]), false)]);
        assert_eq!(out.error, None);
    }

    #[test]
    fn lenient_headers_are_not_canonical() {
        let out = scan_all_ways(b"*1\rX$4\rYPING\r\n", false);
        assert_eq!(out.requests, vec![(args(&[b"PING"]), false)]);
    }

    #[test]
    fn bad_lengths() {
        for input in [
            &b"*3000000000\r\n"[..],
            b"*2147483648\r\n",
            b"*03\r\n",
            b"*+1\r\n",
            b"*abc\r\n",
            b"*-0\r\n",
        ] {
            assert_eq!(
                scan_all_ways(input, false).error,
                Some(ProtocolError::InvalidMultibulkLength),
                "{input:?}"
            );
        }
        for bulk in [
            &b"$-10"[..],
            b"$blabla",
            b"$536870913",
            b"$-0",
            b"$2000000000",
        ] {
            let mut input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n".to_vec();
            input.extend_from_slice(bulk);
            input.extend_from_slice(b"\r\n");
            assert_eq!(
                scan_all_ways(&input, false).error,
                Some(ProtocolError::InvalidBulkLength)
            );
        }
        // The declared maximum itself is accepted (and waits for its bytes).
        let out = scan_all_ways(b"*1\r\n$536870912\r\nabc", false);
        assert_eq!(out.error, None);
    }

    #[test]
    fn expected_dollar() {
        let out = scan_all_ways(b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n", false);
        assert_eq!(out.error, Some(ProtocolError::ExpectedDollar(b'f')));
        assert_eq!(
            out.error.unwrap().reply().unwrap(),
            b"-ERR Protocol error: expected '$', got 'f'\r\n"
        );
        let out = scan_all_ways(b"*1\r\n*1\r\n$4\r\nPING\r\n", false);
        assert_eq!(out.error, Some(ProtocolError::ExpectedDollar(b'*')));
        let out = scan_all_ways(b"*1\r\n\r\n", false);
        assert_eq!(
            out.error.unwrap().reply().unwrap(),
            b"-ERR Protocol error: expected '$', got ' '\r\n"
        );
    }

    #[test]
    fn pipelined_error_after_good_request() {
        let out = scan_all_ways(b"PING\r\n*abc\r\nPING\r\n", false);
        assert_eq!(out.requests, vec![(args(&[b"PING"]), false)]);
        assert_eq!(out.error, Some(ProtocolError::InvalidMultibulkLength));
    }

    #[test]
    fn missing_bulk_terminator() {
        let out = scan_all_ways(b"*1\r\n$4\r\nPINGXY", false);
        assert_eq!(out.error, Some(ProtocolError::MissingBulkTerminator));
        assert_eq!(out.requests, vec![]);
    }

    #[test]
    fn line_caps() {
        let long = vec![b'a'; INLINE_MAX + 1];
        assert_eq!(
            feed(&long, &[], false).error,
            Some(ProtocolError::TooBigInline)
        );
        assert_eq!(feed(&long[..INLINE_MAX], &[], false).error, None);

        let mut count = b"*".to_vec();
        count.extend(std::iter::repeat_n(b'1', INLINE_MAX));
        assert_eq!(
            feed(&count, &[], false).error,
            Some(ProtocolError::TooBigMultibulkCount)
        );

        let mut bulk = b"*1\r\n$".to_vec();
        bulk.extend(std::iter::repeat_n(b'1', INLINE_MAX));
        assert_eq!(
            feed(&bulk, &[], false).error,
            Some(ProtocolError::TooBigBulkCount)
        );
    }

    #[test]
    fn unbalanced_quotes() {
        let out = scan_all_ways(b"set \"\"\"k\"\"\" v\r\nping\r\n", false);
        assert_eq!(out.error, Some(ProtocolError::UnbalancedQuotes));
        assert!(out.requests.is_empty());
    }

    #[test]
    fn unauthenticated_caps() {
        let mut ten = b"*10\r\n".to_vec();
        for _ in 0..10 {
            ten.extend_from_slice(b"$1\r\na\r\n");
        }
        assert_eq!(scan_all_ways(&ten, true).requests.len(), 1);
        assert_eq!(
            scan_all_ways(b"*11\r\n", true).error,
            Some(ProtocolError::UnauthenticatedMultibulkLength)
        );
        assert_eq!(scan_all_ways(b"*11\r\n", false).error, None);
        assert_eq!(
            scan_all_ways(b"*1\r\n$16385\r\n", true).error,
            Some(ProtocolError::UnauthenticatedBulkLength)
        );
        assert_eq!(scan_all_ways(b"*1\r\n$16384\r\n", true).error, None);
    }

    #[test]
    fn query_buffer_limit_without_reply() {
        let mut scanner = RequestScanner::new(RequestLimits {
            query_buffer_limit: 1000,
            ..RequestLimits::default()
        });
        let mut buf = BytesMut::from(&b"*1\r\n$5000\r\n"[..]);
        buf.extend_from_slice(&[b'x'; 980]); // 991 bytes buffered
        assert_eq!(scanner.next(&mut buf, false), Ok(None));
        buf.extend_from_slice(&[b'x'; 20]);
        assert_eq!(
            scanner.next(&mut buf, false),
            Err(ProtocolError::QueryBufferLimit)
        );
        assert_eq!(ProtocolError::QueryBufferLimit.reply(), None);
    }

    #[test]
    fn huge_declared_count_allocates_nothing() {
        let mut scanner = RequestScanner::new(RequestLimits::default());
        let mut buf = BytesMut::from(&b"*2147483647\r\n"[..]);
        assert_eq!(scanner.next(&mut buf, false), Ok(None));
        assert!(scanner.args.capacity() < 16);
        assert!(scanner.in_progress());
    }

    #[test]
    fn many_nested_headers_do_not_recurse() {
        let input = b"*1\r\n".repeat(100_000);
        let out = feed(&input, &[], false);
        assert_eq!(out.error, Some(ProtocolError::ExpectedDollar(b'*')));
    }
}

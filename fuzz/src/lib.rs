//! Property checks for redis-ambassador's two RESP scanners, shared by the libFuzzer targets
//! (`fuzz_targets/*.rs`, run with `cargo fuzz run`) and the stable-toolchain replayer
//! (`src/bin/replay.rs`). Every check panics on a violated property, which libFuzzer reports
//! as a crash and saves the input under `fuzz/artifacts/<target>/`.
//!
//! The request scanner is checked for: no panic; the read buffer is always exactly the
//! unconsumed tail of what was fed (nothing consumed that was not given, nothing rewritten);
//! every request ends on a `\n` that was fed; a `canonical` frame is byte-for-byte the
//! canonical encoding of its arguments and is exactly the bytes last consumed; the
//! pre-authentication caps hold; feeding the input whole, split in two or three pieces at
//! offsets derived from the input, or (for short inputs) one byte at a time gives the same
//! requests, the same error and the same unconsumed tail; and where `redis-protocol`'s RESP2
//! decoder reads a canonical multibulk command, the scanner returns exactly that command.
//!
//! The reply scanner is checked for: no panic; every frame is non-empty and within the
//! buffer, with `push`/`error` flags matching its first byte; split and byte-wise feeding
//! give the same frames and the same error; and wherever `redis-protocol` (RESP2 decoder
//! first when the first byte is a RESP2 type, else or on failure its RESP3 decoder) decodes
//! a complete frame, our frame has the same length — or our refusal is one of the documented
//! deliberate differences (see [`reply_difference_is_known`]).

use bytes::{Bytes, BytesMut};
use redis_ambassador::protocol::encode;
use redis_ambassador::protocol::number::parse_i64;
use redis_ambassador::protocol::{
    ProtocolError, ReplyError, ReplyFrame, ReplyScanner, RequestLimits, RequestScanner,
};
use redis_protocol::resp2::types::OwnedFrame as Resp2Frame;

/// Inputs up to this length are also fed one byte at a time.
const BYTEWISE_MAX: usize = 512;
/// Reply nesting limit used by the reply checks (the proxy's default `max_reply_depth`).
pub const REPLY_MAX_DEPTH: usize = 128;
/// redis-protocol's decoders recurse once per nesting level without a limit. Inputs with
/// more aggregate-type bytes than this are not given to the oracle, so a deep (hostile)
/// nest cannot overflow the fuzzer's stack inside the oracle instead of testing our code.
const ORACLE_MAX_AGGREGATES: usize = 2048;

/// FNV-1a: a cheap, deterministic function of the input, used to pick split points so the
/// fuzzer's mutations also explore where the input is cut.
pub(crate) fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Split plans for `data`: one cut, two cuts, and (when short) every byte.
fn split_plans(data: &[u8]) -> Vec<Vec<usize>> {
    let n = data.len();
    if n < 2 {
        return Vec::new();
    }
    let h = fnv(data);
    let one = 1 + (h % (n as u64 - 1)) as usize;
    let mut two = vec![
        1 + ((h >> 21) % (n as u64 - 1)) as usize,
        1 + ((h >> 42) % (n as u64 - 1)) as usize,
    ];
    two.sort_unstable();
    two.dedup();
    let mut plans = vec![vec![one], two];
    if n <= BYTEWISE_MAX {
        plans.push((1..n).collect());
    }
    plans
}

// ---------------------------------------------------------------------------------------
// Request scanner
// ---------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
struct RequestOutcome {
    /// Each request's arguments and canonical frame.
    requests: Vec<(Vec<Bytes>, Option<Bytes>)>,
    /// The error that ended the connection, if any.
    error: Option<ProtocolError>,
    /// Bytes consumed as requests (or as frames Redis ignores) before the end or the error.
    consumed: usize,
}

/// Errors that depend on how much was buffered when they hit, and so legitimately on how the
/// input was cut (Redis applies these caps to whatever one read left in the query buffer).
fn request_error_depends_on_chunking(e: &Option<ProtocolError>) -> bool {
    matches!(
        e,
        Some(
            ProtocolError::TooBigInline
                | ProtocolError::TooBigMultibulkCount
                | ProtocolError::TooBigBulkCount
                | ProtocolError::QueryBufferLimit
        )
    )
}

/// Feeds `data` to a fresh scanner in pieces cut at `cuts` (ascending), calling `next` until
/// it wants more after every piece, and checks the per-call invariants.
fn feed_requests(
    data: &[u8],
    cuts: &[usize],
    unauthenticated: bool,
    limits: RequestLimits,
) -> RequestOutcome {
    let mut scanner = RequestScanner::new(limits);
    let mut buf = BytesMut::new();
    let mut requests = Vec::new();
    let mut fed = 0;
    let mut consumed = 0;
    for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
        buf.extend_from_slice(&data[fed..cut]);
        fed = cut;
        loop {
            let before = buf.len();
            let result = scanner.next(&mut buf, unauthenticated);
            assert!(
                buf.len() <= before,
                "the scanner grew the buffer: {before} -> {}",
                buf.len()
            );
            consumed += before - buf.len();
            assert_eq!(
                consumed + buf.len(),
                fed,
                "consumed bytes not accounted for"
            );
            match result {
                Ok(Some(request)) => {
                    assert!(
                        before > buf.len(),
                        "a request was returned but nothing consumed"
                    );
                    check_request(data, consumed, &request, unauthenticated);
                    requests.push((request.args, request.canonical));
                }
                Ok(None) => break,
                Err(error) => {
                    return RequestOutcome {
                        requests,
                        error: Some(error),
                        consumed,
                    };
                }
            }
        }
        // The buffer must still hold exactly the bytes fed and not yet consumed.
        assert_eq!(
            &buf[..],
            &data[consumed..fed],
            "the unconsumed bytes were altered"
        );
        if !scanner.in_progress() {
            // Nothing held back: whatever is buffered must be empty or a partial request
            // the scanner has not started on, which cannot happen after `Ok(None)`.
            assert!(
                buf.is_empty(),
                "bytes left unconsumed while the scanner is idle"
            );
        }
    }
    RequestOutcome {
        requests,
        error: None,
        consumed,
    }
}

/// Invariants of one returned request, which ended at offset `end` of the input.
fn check_request(
    data: &[u8],
    end: usize,
    request: &redis_ambassador::protocol::Request,
    unauthenticated: bool,
) {
    assert!(!request.args.is_empty(), "a request without arguments");
    assert_eq!(data[end - 1], b'\n', "a request did not end on a newline");
    if let Some(frame) = &request.canonical {
        let reencoded = encode::command(&request.args);
        assert_eq!(
            &frame[..],
            &reencoded[..],
            "canonical frame differs from the re-encoding of its args"
        );
        assert!(frame.len() <= end);
        assert_eq!(
            &data[end - frame.len()..end],
            &frame[..],
            "the canonical frame is not the bytes consumed"
        );
        if unauthenticated {
            assert!(
                request.args.len() <= 10,
                "unauthenticated request over 10 args"
            );
            assert!(
                request.args.iter().all(|a| a.len() <= 16 * 1024),
                "unauthenticated bulk over 16 KiB"
            );
        }
    }
}

/// The same input, fed differently, must give the same result — apart from the errors that
/// depend on how much was buffered, where the earlier-cut feed may only stop sooner.
fn compare_request_outcomes(whole: &RequestOutcome, split: &RequestOutcome, cuts: &[usize]) {
    if request_error_depends_on_chunking(&whole.error)
        || request_error_depends_on_chunking(&split.error)
    {
        let n = split.requests.len().min(whole.requests.len());
        assert_eq!(split.requests[..n], whole.requests[..n], "cut at {cuts:?}");
        return;
    }
    assert_eq!(split, whole, "cut at {cuts:?}");
}

/// Where redis-protocol's RESP2 decoder reads canonical multibulk commands at the front of
/// `data`, the scanner must return exactly those commands, as canonical frames.
fn request_oracle(data: &[u8], whole: &RequestOutcome) {
    if count_aggregates(data) > ORACLE_MAX_AGGREGATES {
        return;
    }
    let mut offset = 0;
    let mut expected: Vec<Vec<Bytes>> = Vec::new();
    while offset < data.len() && data[offset] == b'*' {
        let rest = &data[offset..];
        let Ok(Some((Resp2Frame::Array(items), amt))) = redis_protocol::resp2::decode::decode(rest)
        else {
            break;
        };
        if items.is_empty() {
            break; // `*0`: Redis ignores it, the scanner too
        }
        let count = items.len();
        let args: Vec<Bytes> = items
            .into_iter()
            .filter_map(|item| match item {
                Resp2Frame::BulkString(b) => Some(Bytes::from(b)),
                _ => None,
            })
            .collect();
        if args.len() != count {
            break; // nested arrays, nulls, integers…: not a command
        }
        if encode::command(&args)[..] != rest[..amt] {
            break; // lenient but accepted by the oracle: not well-formed by our definition
        }
        expected.push(args);
        offset += amt;
    }
    assert!(
        whole.requests.len() >= expected.len(),
        "the oracle read {} canonical commands, the scanner returned {} (error {:?})",
        expected.len(),
        whole.requests.len(),
        whole.error
    );
    for (i, args) in expected.iter().enumerate() {
        let (ours, canonical) = &whole.requests[i];
        assert_eq!(
            ours, args,
            "command {i} differs from redis-protocol's decoding"
        );
        assert!(
            canonical.is_some(),
            "canonical command {i} not marked canonical"
        );
    }
}

fn count_aggregates(data: &[u8]) -> usize {
    data.iter()
        .filter(|&&b| matches!(b, b'*' | b'%' | b'~' | b'>' | b'|'))
        .count()
}

/// The request-scanner properties for one fuzz input.
pub fn check_request_scanner(data: &[u8]) {
    for unauthenticated in [false, true] {
        let limits = RequestLimits::default();
        let whole = feed_requests(data, &[], unauthenticated, limits);
        for cuts in split_plans(data) {
            let split = feed_requests(data, &cuts, unauthenticated, limits);
            compare_request_outcomes(&whole, &split, &cuts);
        }
        if !unauthenticated {
            request_oracle(data, &whole);
        }
    }
    // Small limits, so the query-buffer cap is reached by fuzz-sized inputs too. Whole and
    // split may then stop at different points; each must still keep the invariants.
    let small = RequestLimits {
        max_bulk_len: 64,
        query_buffer_limit: 256,
        unauthenticated_query_buffer_limit: 128,
    };
    for unauthenticated in [false, true] {
        let whole = feed_requests(data, &[], unauthenticated, small);
        for (args, _) in whole.requests.iter().filter(|(_, c)| c.is_some()) {
            assert!(args.iter().all(|a| a.len() <= 64), "bulk over max_bulk_len");
        }
        if let Some(cuts) = split_plans(data).into_iter().next() {
            let split = feed_requests(data, &cuts, unauthenticated, small);
            compare_request_outcomes(&whole, &split, &cuts);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reply scanner
// ---------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
struct ReplyOutcome {
    frames: Vec<ReplyFrame>,
    error: Option<ReplyError>,
    consumed: usize,
}

fn reply_error_depends_on_chunking(e: &Option<ReplyError>) -> bool {
    matches!(e, Some(ReplyError::LineTooLong))
}

/// Feeds `data` to a fresh scanner in pieces cut at `cuts`, removing each frame found from
/// the front of the buffer as the proxy does.
fn feed_replies(data: &[u8], cuts: &[usize], max_depth: usize) -> ReplyOutcome {
    let mut scanner = ReplyScanner::new(max_depth);
    let mut buf: Vec<u8> = Vec::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    let mut consumed = 0;
    for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
        buf.extend_from_slice(&data[fed..cut]);
        fed = cut;
        loop {
            match scanner.scan(&buf) {
                Ok(Some(frame)) => {
                    assert!(frame.len > 0, "empty reply frame");
                    assert!(
                        frame.len <= buf.len(),
                        "frame of {} bytes in a buffer of {}",
                        frame.len,
                        buf.len()
                    );
                    assert_eq!(frame.push, buf[0] == b'>', "push flag vs first byte");
                    assert_eq!(
                        frame.error,
                        matches!(buf[0], b'-' | b'!'),
                        "error flag vs first byte"
                    );
                    let last2 = &buf[frame.len.saturating_sub(2)..frame.len];
                    assert_eq!(last2, b"\r\n", "a frame that does not end in CRLF");
                    buf.drain(..frame.len);
                    consumed += frame.len;
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(error) => {
                    return ReplyOutcome {
                        frames,
                        error: Some(error),
                        consumed,
                    };
                }
            }
        }
    }
    ReplyOutcome {
        frames,
        error: None,
        consumed,
    }
}

/// The number of bytes after which the scanner, fed `rest` one byte at a time, reports
/// its error (the error's position), and that error, or `None` if it never does.
fn reply_error_position(rest: &[u8], max_depth: usize) -> Option<(usize, ReplyError)> {
    let mut scanner = ReplyScanner::new(max_depth);
    for n in 1..=rest.len() {
        match scanner.scan(&rest[..n]) {
            Ok(None) => {}
            Ok(Some(_)) => return None,
            Err(e) => return Some((n, e)),
        }
    }
    None
}

/// What redis-protocol makes of the frame at the front of `rest`.
enum Oracle {
    /// A complete frame of this many bytes, and the byte ranges of its string contents.
    Frame { len: usize, ranges: OracleRanges },
    /// Not complete, not decodable, or not asked (too deep for its recursion).
    Nothing,
}

/// Where the oracle found line-delimited strings (simple strings, errors, big numbers) and
/// length-prefixed payloads, relative to the frame start; used to recognise the inputs it
/// accepts only because it is more lenient than Redis (and we) are.
#[derive(Default)]
struct OracleRanges {
    lines: Vec<(usize, usize)>,
    payloads: Vec<(usize, usize)>,
}

fn resp2_ranges(frame: &redis_protocol::resp2::types::RangeFrame, out: &mut OracleRanges) {
    use redis_protocol::resp2::types::RangeFrame as F;
    match frame {
        F::SimpleString(r) | F::Error(r) => out.lines.push(*r),
        F::BulkString(r) => out.payloads.push(*r),
        F::Array(items) => items.iter().for_each(|i| resp2_ranges(i, out)),
        F::Integer(_) | F::Null => {}
    }
}

fn resp3_ranges(frame: &redis_protocol::resp3::types::RangeFrame, out: &mut OracleRanges) {
    use redis_protocol::resp3::types::RangeFrame as F;
    let attributes = match frame {
        F::SimpleString { data, attributes }
        | F::SimpleError { data, attributes }
        | F::BigNumber { data, attributes } => {
            out.lines.push(*data);
            attributes
        }
        F::BlobString { data, attributes }
        | F::BlobError { data, attributes }
        | F::VerbatimString {
            data, attributes, ..
        } => {
            out.payloads.push(*data);
            attributes
        }
        F::Array { data, attributes } | F::Push { data, attributes } => {
            data.iter().for_each(|i| resp3_ranges(i, out));
            attributes
        }
        F::Set { data, attributes } => {
            data.iter().for_each(|i| resp3_ranges(i, out));
            attributes
        }
        F::Map { data, attributes } => {
            for (k, v) in data {
                resp3_ranges(k, out);
                resp3_ranges(v, out);
            }
            attributes
        }
        F::Null => &None,
        F::Number { attributes, .. }
        | F::Double { attributes, .. }
        | F::Boolean { attributes, .. } => attributes,
        F::Hello { .. } | F::ChunkedString(_) => &None,
    };
    if let Some(attributes) = attributes {
        for (k, v) in attributes {
            resp3_ranges(k, out);
            resp3_ranges(v, out);
        }
    }
}

fn oracle(rest: &[u8]) -> Oracle {
    if count_aggregates(rest) > ORACLE_MAX_AGGREGATES {
        return Oracle::Nothing;
    }
    if matches!(rest.first(), Some(b'+' | b'-' | b':' | b'$' | b'*')) {
        if let Ok(Some((frame, len))) = redis_protocol::resp2::decode::decode_range(rest) {
            let mut ranges = OracleRanges::default();
            resp2_ranges(&frame, &mut ranges);
            return Oracle::Frame { len, ranges };
        }
    }
    if let Ok(Some((frame, len))) = redis_protocol::resp3::decode::complete::decode_range(rest) {
        let mut ranges = OracleRanges::default();
        resp3_ranges(&frame, &mut ranges);
        return Oracle::Frame { len, ranges };
    }
    Oracle::Nothing
}

/// Our scanner refused (error `error`, detected after `pos` bytes) a frame redis-protocol
/// accepted. That is fine only where redis-protocol is knowingly more lenient than Redis:
///
/// - `;` / `.` (streamed-string chunks and stream ends) and `H` (an inline `HELLO`) as frame
///   types: Redis never sends them as replies;
/// - a bare `\r` inside a simple-string/error/null line (redis-protocol reads to `\r\n`;
///   Redis never puts CR or LF in such lines; we fail on the CR before looking at the type), and any two bytes after a bulk payload
///   (redis-protocol does not check they are CRLF);
/// - length headers that Rust's integer parser takes but Redis's `string2ll` does not (`+3`,
///   `03`, `-0`): Redis never sends them;
/// - our limits (nesting depth, 64 KiB lines, bulk size).
fn reply_difference_is_known(
    rest: &[u8],
    error: &ReplyError,
    pos: usize,
    ranges: &OracleRanges,
) -> bool {
    match error {
        ReplyError::TooDeep(_) | ReplyError::LineTooLong | ReplyError::BulkTooLarge => true,
        ReplyError::UnknownType(b) => matches!(b, b';' | b'.' | b'H'),
        ReplyError::MissingTerminator => {
            // The two bytes examined were rest[pos-2..pos].
            let at = pos - 2;
            // Lines redis-protocol reads up to `\r\n` whatever they hold: simple strings and
            // errors (recorded as ranges), and `_`, `.`, `(`, `H` lines (located by the type
            // byte after the previous CRLF). We stop at the first CR, before the type byte.
            let bare_cr_in_line = rest[at] == b'\r'
                && (ranges.lines.iter().any(|&(s, e)| s <= at && at < e)
                    || matches!(
                        line_type(rest, at),
                        Some(b'+' | b'-' | b'_' | b'.' | b'(' | b'H')
                    ));
            let payload_end = ranges.payloads.iter().any(|&(_, e)| e == at);
            bare_cr_in_line || payload_end
        }
        ReplyError::InvalidLength => {
            // The header line ends with the CR at pos-2; its type byte precedes the number.
            let cr = pos - 2;
            let Some(start) = rest[..cr]
                .iter()
                .rposition(|b| matches!(b, b'$' | b'*' | b'~' | b'>' | b'%' | b'|' | b'!' | b'='))
            else {
                return false;
            };
            let text = &rest[start + 1..cr];
            let rust = std::str::from_utf8(text)
                .ok()
                .and_then(|s| s.parse::<i64>().ok());
            rust.is_some() && parse_i64(text) != rust
        }
    }
}

/// The type byte of the line containing offset `at`: the byte after the previous CRLF (both
/// redis-protocol and we end lines only at CRLF; a lone `\n` is line content).
fn line_type(rest: &[u8], at: usize) -> Option<u8> {
    let start = rest[..at]
        .windows(2)
        .rposition(|w| w == b"\r\n")
        .map_or(0, |p| p + 2);
    rest.get(start).copied()
}

/// Compares our frames with the oracle's, frame by frame, while the oracle decodes.
fn reply_oracle(data: &[u8], whole: &ReplyOutcome) {
    let mut offset = 0;
    for i in 0..=whole.frames.len() {
        let rest = &data[offset..];
        if rest.is_empty() {
            return;
        }
        let Oracle::Frame { len, ranges } = oracle(rest) else {
            return;
        };
        if let Some(frame) = whole.frames.get(i) {
            assert_eq!(
                frame.len, len,
                "frame {i} at offset {offset}: our length {} vs redis-protocol's {len}",
                frame.len
            );
            offset += len;
            continue;
        }
        // Our scan stopped here: with an error, or waiting for more bytes.
        match &whole.error {
            Some(error) => {
                let (pos, bytewise) = reply_error_position(rest, REPLY_MAX_DEPTH)
                    .expect("the error must reproduce byte by byte");
                // A line past 64 KiB whose first CR is bare fails whole with
                // MissingTerminator (at the CR) and byte-wise with LineTooLong (at 64 KiB):
                // either way it is our line limit.
                assert!(
                    bytewise == ReplyError::LineTooLong
                        || reply_difference_is_known(rest, error, pos, &ranges),
                    "frame {i} at offset {offset}: redis-protocol reads {len} bytes, we fail with \
                     {error:?} after {pos}"
                );
            }
            None => panic!(
                "frame {i} at offset {offset}: redis-protocol reads a complete frame of {len} \
                 bytes, we wait for more"
            ),
        }
        return;
    }
}

/// The reply-scanner properties for one fuzz input.
pub fn check_reply_scanner(data: &[u8]) {
    let whole = feed_replies(data, &[], REPLY_MAX_DEPTH);
    assert!(whole.consumed <= data.len());
    for cuts in split_plans(data) {
        let split = feed_replies(data, &cuts, REPLY_MAX_DEPTH);
        if reply_error_depends_on_chunking(&whole.error)
            || reply_error_depends_on_chunking(&split.error)
        {
            let n = split.frames.len().min(whole.frames.len());
            assert_eq!(split.frames[..n], whole.frames[..n], "cut at {cuts:?}");
        } else {
            assert_eq!(split, whole, "cut at {cuts:?}");
        }
    }
    reply_oracle(data, &whole);
    // A shallow limit too, so fuzz-sized inputs reach it: it may only cut the scan short.
    let shallow = feed_replies(data, &[], 2);
    let n = shallow.frames.len();
    assert!(n <= whole.frames.len());
    assert_eq!(shallow.frames[..], whole.frames[..n]);
    if shallow.error != whole.error || n != whole.frames.len() {
        assert_eq!(shallow.error, Some(ReplyError::TooDeep(2)));
    }
}

// ---------------------------------------------------------------------------------------
// Session
// ---------------------------------------------------------------------------------------

mod session;

pub use session::check_session;

/// Bytes as a readable string: printable ASCII as is, the rest escaped.
pub(crate) fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for &b in bytes {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    out
}

/// Runs the named target's check on `data` (for the replayer).
pub fn check(target: &str, data: &[u8]) {
    match target {
        "request_scanner" => check_request_scanner(data),
        "reply_scanner" => check_reply_scanner(data),
        "session" => check_session(data),
        other => panic!("unknown target {other:?}: request_scanner, reply_scanner or session"),
    }
}

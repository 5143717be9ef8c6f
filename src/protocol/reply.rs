//! The upstream-side reply scanner: finds where one complete reply ends in bytes read from
//! Redis, so replies can be passed through as Redis's own bytes without being decoded.
//!
//! It handles RESP2 and RESP3 (maps, sets, attributes, push frames, doubles, big numbers,
//! verbatim strings), is iterative with an explicit, bounded stack of "elements still
//! expected" counters, and is resumable: an incomplete reply is continued where it stopped.
//! Counts declared by the peer are only ever decremented, never allocated.

use bytes::Bytes;
use memchr::memchr;

use super::number::{INLINE_MAX, parse_i64};

/// A malformed or over-limit reply. The connection it came from can no longer be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("unexpected reply type byte 0x{0:02x}")]
    UnknownType(u8),
    #[error("invalid length in reply header")]
    InvalidLength,
    #[error("reply line longer than 64 KiB")]
    LineTooLong,
    #[error("bulk reply not terminated by CRLF")]
    MissingTerminator,
    #[error("reply nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("bulk reply larger than the limit")]
    BulkTooLarge,
}

/// A complete reply found at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyFrame {
    /// Bytes the reply occupies.
    pub len: usize,
    /// A RESP3 push frame (`>`): out-of-band, not the answer to a request.
    pub push: bool,
    /// A top-level error reply (`-` or `!`).
    pub error: bool,
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    /// Nothing half-read at `pos`: the next byte starts an element header.
    Header,
    /// A bulk payload whose header was read: the element ends at this offset.
    BulkEnd(usize),
}

/// Resumable scanner for one upstream connection.
#[derive(Debug)]
pub struct ReplyScanner {
    max_depth: usize,
    max_bulk: u64,
    /// Offset of the next unscanned element in the current reply.
    pos: usize,
    pending: Pending,
    /// For each open aggregate, the number of elements still expected.
    stack: Vec<i64>,
    push: bool,
    error: bool,
}

impl ReplyScanner {
    pub fn new(max_depth: usize) -> Self {
        ReplyScanner {
            max_depth,
            // Redis never sends more than proto-max-bulk-len allows to be stored; 4 GiB
            // leaves room for any configuration while bounding what we would buffer.
            max_bulk: 4 * 1024 * 1024 * 1024,
            pos: 0,
            pending: Pending::Header,
            stack: Vec::new(),
            push: false,
            error: false,
        }
    }

    fn reset(&mut self) {
        self.pos = 0;
        self.pending = Pending::Header;
        self.stack.clear();
        self.push = false;
        self.error = false;
    }

    /// Looks for the end of the reply that starts at `buf[0]`. `buf` must be the same
    /// buffer (possibly extended) as on the previous call until a frame is returned; the
    /// caller then removes `len` bytes from its front.
    // One flat, iterative state machine over RESP2/RESP3 type bytes, like the request
    // scanner: the documented exception to the 100-line rule.
    #[allow(clippy::too_many_lines)]
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<ReplyFrame>, ReplyError> {
        loop {
            if let Pending::BulkEnd(end) = self.pending {
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(ReplyError::MissingTerminator);
                }
                self.pending = Pending::Header;
                self.pos = end + 2;
                if let Some(frame) = self.element_done() {
                    return Ok(Some(frame));
                }
                continue;
            }
            let Some(&kind) = buf.get(self.pos) else {
                return Ok(None);
            };
            let line_start = self.pos + 1;
            let Some(found) = memchr(b'\r', &buf[line_start..]) else {
                if buf.len() - self.pos > INLINE_MAX {
                    return Err(ReplyError::LineTooLong);
                }
                return Ok(None);
            };
            let cr = line_start + found;
            if buf.len() < cr + 2 {
                return Ok(None);
            }
            if buf[cr + 1] != b'\n' {
                return Err(ReplyError::MissingTerminator);
            }
            let line = &buf[line_start..cr];
            let next = cr + 2;
            if self.stack.is_empty() {
                self.push = kind == b'>';
                self.error = matches!(kind, b'-' | b'!');
            }
            match kind {
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                    self.pos = next;
                    if let Some(frame) = self.element_done() {
                        return Ok(Some(frame));
                    }
                }
                b'$' | b'!' | b'=' => {
                    let len = parse_i64(line).ok_or(ReplyError::InvalidLength)?;
                    if len == -1 && kind == b'$' {
                        self.pos = next; // RESP2 null bulk
                        if let Some(frame) = self.element_done() {
                            return Ok(Some(frame));
                        }
                        continue;
                    }
                    if len < 0 {
                        return Err(ReplyError::InvalidLength);
                    }
                    if len as u64 > self.max_bulk {
                        return Err(ReplyError::BulkTooLarge);
                    }
                    let len = usize::try_from(len).map_err(|_| ReplyError::BulkTooLarge)?;
                    self.pending = Pending::BulkEnd(next + len);
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let count = parse_i64(line).ok_or(ReplyError::InvalidLength)?;
                    self.pos = next;
                    if count == -1 && kind == b'*' {
                        if let Some(frame) = self.element_done() {
                            return Ok(Some(frame)); // RESP2 null array
                        }
                        continue;
                    }
                    if count < 0 {
                        return Err(ReplyError::InvalidLength);
                    }
                    let elements = match kind {
                        // Key-value pairs.
                        b'%' => count.checked_mul(2),
                        // Key-value pairs, then the value the attributes describe.
                        b'|' => count.checked_mul(2).and_then(|n| n.checked_add(1)),
                        _ => Some(count),
                    }
                    .ok_or(ReplyError::InvalidLength)?;
                    if elements == 0 {
                        if let Some(frame) = self.element_done() {
                            return Ok(Some(frame));
                        }
                        continue;
                    }
                    if self.stack.len() >= self.max_depth {
                        return Err(ReplyError::TooDeep(self.max_depth));
                    }
                    self.stack.push(elements);
                }
                other => return Err(ReplyError::UnknownType(other)),
            }
        }
    }

    /// Records that one element ended at `self.pos`; returns the frame if that completed
    /// the top-level reply.
    fn element_done(&mut self) -> Option<ReplyFrame> {
        while let Some(top) = self.stack.last_mut() {
            *top -= 1;
            if *top > 0 {
                return None;
            }
            self.stack.pop();
        }
        let frame = ReplyFrame {
            len: self.pos,
            push: self.push,
            error: self.error,
        };
        self.reset();
        Some(frame)
    }
}

/// The elements of an array reply, or `None` when the reply is not a (non-null) array or
/// cannot be taken apart.
pub fn split_array(reply: &Bytes) -> Option<Vec<Bytes>> {
    if reply.first() != Some(&b'*') {
        return None;
    }
    let line_end = memchr::memchr(b'\r', reply)?;
    let count = usize::try_from(parse_i64(&reply[1..line_end])?).ok()?;
    let mut pos = line_end + 2;
    let mut elements = Vec::with_capacity(count.min(1024));
    let mut scanner = ReplyScanner::new(1024);
    for _ in 0..count {
        let frame = scanner.scan(reply.get(pos..)?).ok()??;
        elements.push(reply.slice(pos..pos + frame.len));
        pos += frame.len;
    }
    (pos == reply.len()).then_some(elements)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `input` into frames, feeding it at every split point and byte by byte; all
    /// ways must agree.
    fn frames(input: &[u8]) -> Result<Vec<ReplyFrame>, ReplyError> {
        let run = |cuts: &[usize]| -> Result<Vec<ReplyFrame>, ReplyError> {
            let mut scanner = ReplyScanner::new(8);
            let mut buf: Vec<u8> = Vec::new();
            let mut out = Vec::new();
            let mut start = 0;
            for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
                buf.extend_from_slice(&input[start..cut]);
                start = cut;
                while let Some(frame) = scanner.scan(&buf)? {
                    buf.drain(..frame.len);
                    out.push(frame);
                }
            }
            Ok(out)
        };
        let whole = run(&[]);
        for i in 1..input.len() {
            assert_eq!(run(&[i]), whole, "split at {i}");
        }
        let bytewise: Vec<usize> = (1..input.len()).collect();
        assert_eq!(run(&bytewise), whole, "byte by byte");
        whole
    }

    fn lens(input: &[u8]) -> Vec<usize> {
        frames(input).unwrap().iter().map(|f| f.len).collect()
    }

    #[test]
    fn resp2_replies() {
        assert_eq!(
            lens(b"+OK\r\n-ERR x\r\n:1\r\n$-1\r\n$3\r\na\r\n\r\n*-1\r\n*0\r\n"),
            vec![5, 8, 4, 5, 9, 5, 4]
        );
        assert_eq!(lens(b"*2\r\n*1\r\n:1\r\n$0\r\n\r\n+x\r\n"), vec![18, 4]);
    }

    #[test]
    fn resp3_replies() {
        let map = b"%2\r\n+a\r\n:1\r\n+b\r\n*2\r\n_\r\n,1.5\r\n";
        assert_eq!(lens(map), vec![map.len()]);
        let attr = b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n";
        assert_eq!(lens(attr), vec![attr.len()]);
        let nested_attr = b"*2\r\n|1\r\n+k\r\n+v\r\n:1\r\n#t\r\n";
        assert_eq!(lens(nested_attr), vec![nested_attr.len()]);
        let other = b"~1\r\n(123\r\n=7\r\ntxt:abc\r\n!3\r\nbad\r\n";
        assert_eq!(lens(other), vec![10, 13, 9]);
    }

    #[test]
    fn flags() {
        let f = frames(b">2\r\n+a\r\n+b\r\n-ERR x\r\n!1\r\nx\r\n*1\r\n-e\r\n").unwrap();
        assert!(f[0].push && !f[0].error);
        assert!(f[1].error && f[2].error);
        assert!(
            !f[3].error,
            "an error inside an array is not an error reply"
        );
    }

    #[test]
    fn malformed() {
        assert_eq!(frames(b"?x\r\n"), Err(ReplyError::UnknownType(b'?')));
        assert_eq!(frames(b"$-2\r\n"), Err(ReplyError::InvalidLength));
        assert_eq!(frames(b"$1\r\nabc\r\n"), Err(ReplyError::MissingTerminator));
        assert_eq!(frames(b"+OK\rX"), Err(ReplyError::MissingTerminator));
        assert_eq!(
            frames(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n"),
            Err(ReplyError::TooDeep(8))
        );
    }

    #[test]
    fn huge_counts_wait_without_allocating() {
        let mut scanner = ReplyScanner::new(8);
        assert_eq!(scanner.scan(b"*2147483647\r\n"), Ok(None));
        assert!(scanner.stack.capacity() < 16);
        let mut scanner = ReplyScanner::new(8);
        assert_eq!(scanner.scan(b"$2147483647\r\nabc"), Ok(None));
        let many = b"*1\r\n".repeat(100_000);
        let mut scanner = ReplyScanner::new(128);
        assert_eq!(scanner.scan(&many), Err(ReplyError::TooDeep(128)));
    }

    #[test]
    fn splits_arrays() {
        let reply = Bytes::from_static(b"*3\r\n+OK\r\n*2\r\n:1\r\n:2\r\n$-1\r\n");
        let parts = split_array(&reply).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(&parts[1][..], b"*2\r\n:1\r\n:2\r\n");
        assert!(split_array(&Bytes::from_static(b"*-1\r\n")).is_none());
        assert!(split_array(&Bytes::from_static(b"-EXECABORT x\r\n")).is_none());
        assert!(split_array(&Bytes::from_static(b"_\r\n")).is_none());
        assert_eq!(
            split_array(&Bytes::from_static(b"*0\r\n")).unwrap().len(),
            0
        );
    }
}

//! Finishing a transaction whose EXEC needs the session: commands the proxy answers itself
//! (AUTH, HELLO, CLIENT SETNAME, …) were queued locally while the rest went upstream, and
//! SELECTs were queued upstream. EXEC's array from the upstream is taken apart element by
//! element (with the reply scanner), the local results are run now — at EXEC time, as in
//! Redis — and spliced into their places, and a successful SELECT moves the client.

use bytes::{Bytes, BytesMut};

use super::batch::Batch;
use super::{Queued, Session};
use crate::protocol::number::parse_i64;
use crate::protocol::{ReplyScanner, encode};

impl Session {
    pub(super) async fn finish_exec(
        &mut self,
        reply: &Bytes,
        queue: Vec<Queued>,
        out: &mut BytesMut,
    ) {
        let Some(elements) = split_array(reply) else {
            // Null (a WATCHed key changed) or an error (EXECABORT): nothing ran.
            out.extend_from_slice(reply);
            return;
        };
        let forwarded = queue
            .iter()
            .filter(|q| !matches!(q, Queued::Local(_)))
            .count();
        if elements.len() != forwarded {
            tracing::error!(
                expected = forwarded,
                got = elements.len(),
                "EXEC reply does not match the queued commands; passing it through"
            );
            out.extend_from_slice(reply);
            return;
        }
        encode::array_header(out, queue.len());
        let mut upstream = elements.into_iter();
        for queued in queue {
            match queued {
                Queued::Forwarded => out.extend_from_slice(&upstream.next().unwrap_or_default()),
                Queued::Select(index) => {
                    let element = upstream.next().unwrap_or_default();
                    if &element[..] == b"+OK\r\n" {
                        if let Some(index) = index {
                            self.db = index;
                        }
                    }
                    out.extend_from_slice(&element);
                }
                Queued::Local(request) => {
                    let mut scratch = Batch::new(1);
                    // MULTI is closed by now, so this answers as outside a transaction.
                    let _ = self.handle(request, &mut scratch).await;
                    out.extend_from_slice(&scratch.into_local());
                }
            }
        }
    }
}

/// The elements of an array reply, or `None` when the reply is not a (non-null) array or
/// cannot be taken apart.
pub(super) fn split_array(reply: &Bytes) -> Option<Vec<Bytes>> {
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

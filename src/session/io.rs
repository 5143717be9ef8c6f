//! The client's side of a session: the socket's halves, the bytes read and not yet
//! scanned (with the scanner that resumes on them), and the replies owed. One way to send
//! what is owed (`flush`: count, send, clear, give back a grown buffer) and one way to read
//! more (`read_more`: a small first read, doubling while reads fill it).

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::net::{ClientRead, ClientStream, ClientWrite, shrink_if_empty};
use crate::protocol::{RequestLimits, RequestScanner};
use crate::upstream::slot::{ReplySlot, Settled};

/// The largest read, and what a blocking command's watch on the client reserves.
pub(super) const READ_CHUNK: usize = 16 * 1024;
/// The first reads of a client are this small, so 10 000 idle clients cost little; each
/// read that fills the buffer doubles it, up to `4 * READ_CHUNK`.
const FIRST_READ: usize = 512;

pub(super) struct ClientIo {
    pub reader: ClientRead,
    pub writer: ClientWrite,
    /// Bytes read from the client, not yet taken by the scanner.
    pub inbuf: BytesMut,
    pub scanner: RequestScanner,
    /// Replies owed to the client, in order.
    pub out: BytesMut,
    read_size: usize,
}

/// How a read from the client ended.
pub(super) enum Read {
    /// Bytes arrived (and the query buffer is within its limit).
    Data,
    /// The client left, its read failed, or it passed the query buffer limit.
    Gone,
    /// The client was idle and the proxy is shutting down: it was closed.
    Closed,
}

impl ClientIo {
    pub fn new(stream: ClientStream, limits: RequestLimits) -> ClientIo {
        let (reader, writer) = stream.into_split();
        ClientIo {
            reader,
            writer,
            inbuf: BytesMut::new(),
            scanner: RequestScanner::new(limits),
            out: BytesMut::new(),
            read_size: FIRST_READ,
        }
    }

    /// Sends the replies owed, then empties (and shrinks) the buffer. `Err`: the client
    /// cannot be written to any more.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() && !self.writer.unflushed() {
            return Ok(());
        }
        metrics::global().bytes_out.increment(self.out.len() as u64);
        self.writer.send(&self.out).await?;
        self.out.clear();
        shrink_if_empty(&mut self.out);
        Ok(())
    }

    /// Waits until a direct batch's replies (see `upstream::slot`) are all out, writing
    /// those the socket did not take. `false`: the client is to be closed.
    pub async fn settle(&mut self, slot: &ReplySlot) -> bool {
        loop {
            let settled = slot.settled(true).await;
            match self.on_settled(slot, settled).await {
                Some(true) => return true,
                Some(false) => {}
                None => return false,
            }
        }
    }

    /// Acts on what [`ReplySlot::settled`] found: `Some(true)` the direct batch is over,
    /// `Some(false)` held replies were written (ask again), `None` the client is to be
    /// closed.
    pub async fn on_settled(&mut self, slot: &ReplySlot, settled: Settled) -> Option<bool> {
        match settled {
            Settled::Done => Some(true),
            Settled::Broken => None,
            Settled::Held(bytes) => {
                let sent = self.writer.send(&bytes).await;
                slot.written();
                metrics::global().bytes_out.increment(bytes.len() as u64);
                sent.ok().map(|()| false)
            }
        }
    }

    /// Whether the scanner may already hold another complete request (the last batch
    /// stopped because it was full, not because the buffer ran out).
    pub fn may_hold_more(&self) -> bool {
        !self.inbuf.is_empty() && !self.scanner.in_progress()
    }

    /// Reads what the client sends next. An idle client (`idle`: it holds no dedicated
    /// connection) is closed when `closing` fires; bytes already sent are served first.
    pub async fn read_more(
        &mut self,
        closing: &CancellationToken,
        idle: bool,
        requires_auth: bool,
    ) -> Read {
        shrink_if_empty(&mut self.inbuf);
        let read = match &self.reader {
            ClientRead::Plain(reader) => loop {
                self.inbuf.reserve(self.read_size);
                let spare = self.inbuf.capacity() - self.inbuf.len();
                // No system call when the socket is known to have nothing more.
                match reader.try_read_buf(&mut self.inbuf) {
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                    read => break read.map(|n| (n, spare)),
                }
                // Nothing to read: a client that waits holds no buffer (the next request
                // takes a fresh one), so 10 000 idle clients cost that much less.
                if self.inbuf.is_empty() {
                    self.inbuf = BytesMut::new();
                }
                tokio::select! {
                    biased;
                    ready = reader.readable() => {
                        if let Err(error) = ready {
                            break Err(error);
                        }
                    }
                    _ = closing.cancelled(), if idle => return self.close_idle().await,
                }
            },
            ClientRead::Tls(_) => {
                self.inbuf.reserve(self.read_size);
                let spare = self.inbuf.capacity() - self.inbuf.len();
                tokio::select! {
                    biased;
                    read = self.reader.read_buf(&mut self.inbuf) => read.map(|n| (n, spare)),
                    _ = closing.cancelled(), if idle => return self.close_idle().await,
                }
            }
        };
        match read {
            Ok((0, _)) => Read::Gone,
            Ok((n, spare)) => {
                if n == spare && self.read_size < 4 * READ_CHUNK {
                    self.read_size *= 2;
                }
                metrics::global().bytes_in.increment(n as u64);
                if let Err(error) = self.scanner.check_buffer(&self.inbuf, requires_auth) {
                    tracing::warn!(%error, bytes = self.inbuf.len(), "closing client over the query buffer limit");
                    return Read::Gone;
                }
                Read::Data
            }
            Err(error) => {
                tracing::debug!(%error, "client read failed");
                Read::Gone
            }
        }
    }

    /// An idle client when the proxy shuts down: closed, after what it sent was served.
    async fn close_idle(&mut self) -> Read {
        tracing::debug!("closing an idle client for shutdown");
        let _ = self.writer.shutdown().await;
        Read::Closed
    }
}

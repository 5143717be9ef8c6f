//! One connection to the real Redis: connect, authenticate, learn what the server is (and,
//! to a cluster replica that serves reads, say `READONLY`), then carry pipelined commands
//! and hand back whole replies as Redis's own bytes.
//!
//! The connection tracks the state the proxy gave it (database, protocol version) so the
//! session can correct it before use, and marks itself broken whenever its framing can no
//! longer be trusted (I/O error, timeout, malformed reply) so the pool drops it instead of
//! handing it to someone else.
//!
//! `ReplyBuffer` is the one reply-read loop: a whole connection reads through it, and so
//! does a lane's read half (`mux`) once the connection is split.

use std::io::IoSlice;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::decode::decode as decode_resp2;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use super::error::UpstreamError;
use super::error::{AuthFailure, IoFailure, IoOp, LostReason, TlsFailure, UnavailableReason};
use crate::net::UpstreamStream;
use crate::protocol::{Proto, ReplyFrame, ReplyScanner, encode};
use crate::secret::Secret;
use crate::tls::UpstreamTls;

/// What the proxy learned about the upstream server at connect time.
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    pub server: Bytes,
    pub version: Bytes,
    pub mode: Bytes,
    pub role: Bytes,
    /// From `CONFIG GET databases`; `None` when the server would not say.
    pub databases: Option<u32>,
    /// Whether the server speaks RESP3 (has HELLO).
    pub resp3: bool,
}

/// The state of an upstream connection that the proxy controls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnState {
    pub db: u32,
    pub proto: Proto,
}

impl ConnState {
    pub const INITIAL: ConnState = ConnState {
        db: 0,
        proto: Proto::Resp2,
    };
    /// A database no client can select: forces a SELECT before the next use (after a
    /// transaction whose queued SELECT may or may not have run).
    pub const UNKNOWN_DB: u32 = u32::MAX;
}

/// Appends the commands that move a connection from `from` to `to`; returns how many
/// replies they produce.
pub fn transition(out: &mut BytesMut, from: ConnState, to: ConnState) -> usize {
    let mut replies = 0;
    if from.proto != to.proto {
        let version = match to.proto {
            Proto::Resp2 => &b"2"[..],
            Proto::Resp3 => b"3",
        };
        encode::command_into(out, &[&b"HELLO"[..], version]);
        replies += 1;
    }
    if from.db != to.db {
        let mut digits = itoa::Buffer::new();
        encode::command_into(out, &[&b"SELECT"[..], digits.format(to.db).as_bytes()]);
        replies += 1;
    }
    replies
}

/// Queues in `chunks`, in front of a batch, the commands that move a connection from
/// `from` to `to` (none when it is there already); returns how many replies they produce.
pub fn push_transition(chunks: &mut Vec<Bytes>, from: ConnState, to: ConnState) -> usize {
    let mut prelude = BytesMut::new();
    let replies = transition(&mut prelude, from, to);
    if replies > 0 {
        chunks.push(prelude.freeze());
    }
    replies
}

/// How connections are opened: TLS, the user to log in as, the handshake's limits. The
/// pool's manager has one for the data servers, the Sentinels one of their own; the
/// password is given at each connect (it may rotate).
#[derive(Debug, Clone)]
pub struct Dialer {
    pub tls: Option<UpstreamTls>,
    pub username: Option<String>,
    pub connect_timeout: Duration,
    pub max_reply_depth: usize,
    /// Send `READONLY` after authenticating: a connection to a cluster replica that serves
    /// reads (without it the replica redirects every command to its master).
    pub readonly: bool,
    /// A connection for a client logged in as a Redis user of its own (see
    /// `Upstream::as_user`): first log in as the ambassador and select this database, then
    /// as the user — as the client's own connection would be, having selected its database
    /// before its `AUTH` (the user may not be allowed `SELECT`).
    pub enter_as: Option<EnterAs>,
}

/// The ambassador's own login and the database to select before logging in as a client's
/// Redis user (see [`Dialer::enter_as`]).
#[derive(Debug, Clone)]
pub struct EnterAs {
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub db: u32,
}

const READ_CHUNK: usize = 16 * 1024;

/// The replies read from one connection and not yet handed out, and the scanner that
/// delimits them: the one read loop, for a whole connection (`UpstreamConn`) and for a
/// lane's read half (`mux`) alike. It owns no socket: each read is given one.
#[derive(Debug)]
pub(super) struct ReplyBuffer {
    /// Bytes read and not yet handed out.
    pub(super) buf: BytesMut,
    scanner: ReplyScanner,
}

impl ReplyBuffer {
    fn new(max_reply_depth: usize) -> ReplyBuffer {
        ReplyBuffer {
            buf: BytesMut::with_capacity(READ_CHUNK),
            scanner: ReplyScanner::new(max_reply_depth),
        }
    }

    /// The next complete frame already buffered, push frames included, without reading.
    #[inline]
    fn next_frame(&mut self) -> Result<Option<(Bytes, ReplyFrame)>, UpstreamError> {
        match self.scanner.scan(&self.buf) {
            Ok(Some(frame)) => Ok(Some((
                crate::net::take_frame(&mut self.buf, frame.len),
                frame,
            ))),
            Ok(None) => Ok(None),
            Err(e) => Err(UpstreamError::BadReply(e)),
        }
    }

    /// Reads whatever bytes `io` has into the buffer (cancel-safe). `Ok(0)` is EOF.
    async fn fill(&mut self, io: &mut (impl AsyncRead + Unpin)) -> std::io::Result<usize> {
        crate::net::shrink_if_empty(&mut self.buf);
        self.buf.reserve(READ_CHUNK);
        io.read_buf(&mut self.buf).await
    }

    /// Reads the next reply from `io`, skipping RESP3 push frames (out of band: no request
    /// asked for them). Fails when no byte arrives for `timeout`.
    pub(super) async fn read_reply(
        &mut self,
        io: &mut (impl AsyncRead + Unpin),
        timeout: Option<Duration>,
    ) -> Result<(Bytes, ReplyFrame), UpstreamError> {
        loop {
            if let Some((bytes, frame)) = self.next_frame()? {
                if frame.push {
                    tracing::debug!("dropping an unexpected push frame from upstream");
                    continue;
                }
                return Ok((bytes, frame));
            }
            let read = self.fill(io);
            let result = match timeout {
                Some(limit) => tokio::time::timeout(limit, read)
                    .await
                    .map_err(|_| UpstreamError::Timeout(limit.as_millis() as u64))?,
                None => read.await,
            };
            match result {
                Ok(0) => return Err(LostReason::ClosedByServer.into()),
                Ok(_) => {}
                Err(e) => return Err(io_failure(IoOp::Read, &e)),
            }
        }
    }

    /// Reads the replies to the `n` state changes (SELECT/HELLO, see [`transition`]) sent
    /// in front of a batch; one that Redis refused fails with `refused(its error text)`.
    pub(super) async fn read_state_changes(
        &mut self,
        io: &mut (impl AsyncRead + Unpin),
        n: usize,
        timeout: Option<Duration>,
        refused: fn(String) -> UpstreamError,
    ) -> Result<(), UpstreamError> {
        for _ in 0..n {
            let (reply, frame) = self.read_reply(io, timeout).await?;
            if frame.error {
                return Err(refused(error_text(&reply)));
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct UpstreamConn {
    stream: UpstreamStream,
    replies: ReplyBuffer,
    pub state: ConnState,
    /// Set when the connection must not be reused.
    pub broken: bool,
    /// Logged in, while pinned, as another identity than its pool's (a client that
    /// authenticated as another user): never returned to the pool.
    pub retired: bool,
    /// The upstream password's generation when this connection authenticated: after a
    /// rotation, older connections are recycled at their next quiet moment.
    pub credentials: u64,
    /// The target's generation when this connection was made (see `Target`): a connection
    /// to a master that has since been replaced is not used again.
    pub target: u64,
}

impl UpstreamConn {
    /// Connects to `address` as `dialer` says (running the TLS handshake when it has TLS
    /// settings), authenticates with `password` and says hello, all within the dialer's
    /// `connect_timeout`. Returns what the server told about itself.
    pub async fn connect(
        dialer: &Dialer,
        address: &str,
        password: Option<&Secret>,
    ) -> Result<(UpstreamConn, ServerInfo), UpstreamError> {
        let ms = dialer.connect_timeout.as_millis() as u64;
        let deadline = Instant::now() + dialer.connect_timeout;
        let stream = match timeout_at(deadline, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                let error = IoFailure::from(&e);
                let address = address.to_owned();
                return Err(UnavailableReason::Connect { address, error }.into());
            }
            Err(_) => {
                let address = address.to_owned();
                return Err(UnavailableReason::ConnectTimeout { address, ms }.into());
            }
        };
        // Latency matters more than packet count for request/response traffic.
        let _ = stream.set_nodelay(true);
        let stream = match &dialer.tls {
            None => UpstreamStream::Plain(stream),
            Some(tls) => match timeout_at(deadline, tls.connect(stream)).await {
                Ok(Ok(stream)) => UpstreamStream::Tls(Box::new(stream)),
                Ok(Err(e)) => {
                    let reason = crate::tls::describe(&e, &tls.server_name());
                    let address = address.to_owned();
                    return Err(TlsFailure::Handshake { address, reason }.into());
                }
                Err(_) => {
                    let address = address.to_owned();
                    return Err(TlsFailure::HandshakeTimeout { address, ms }.into());
                }
            },
        };
        let mut conn = UpstreamConn {
            stream,
            replies: ReplyBuffer::new(dialer.max_reply_depth),
            state: ConnState::INITIAL,
            broken: false,
            retired: false,
            credentials: 0,
            target: 0,
        };
        let info = conn
            .handshake(dialer, password, deadline)
            .await
            .map_err(|e| match e {
                UpstreamError::Timeout(_) => {
                    let address = address.to_owned();
                    UnavailableReason::HandshakeTimeout { address, ms }.into()
                }
                // TLS 1.3 reports a refused client certificate after the handshake: on the
                // first read.
                UpstreamError::Tls(failure) => match *failure {
                    TlsFailure::Session { reason } => {
                        let address = address.to_owned();
                        TlsFailure::Handshake { address, reason }.into()
                    }
                    other => other.into(),
                },
                other => other,
            })?;
        Ok((conn, info))
    }

    async fn handshake(
        &mut self,
        dialer: &Dialer,
        password: Option<&Secret>,
        deadline: Instant,
    ) -> Result<ServerInfo, UpstreamError> {
        let mut out = BytesMut::new();
        let mut entering = 0;
        if let Some(enter) = &dialer.enter_as {
            if let Some(own) = &enter.password {
                match &enter.username {
                    Some(user) => encode::command_into(
                        &mut out,
                        &[&b"AUTH"[..], user.as_bytes(), own.expose()],
                    ),
                    None => encode::command_into(&mut out, &[&b"AUTH"[..], own.expose()]),
                }
                entering += 1;
            }
            if enter.db != 0 {
                let db = itoa::Buffer::new().format(enter.db).as_bytes().to_vec();
                encode::command_into(&mut out, &[&b"SELECT"[..], &db]);
                entering += 1;
                self.state.db = enter.db;
            }
        }
        if let Some(password) = password {
            match &dialer.username {
                Some(user) => encode::command_into(
                    &mut out,
                    &[&b"AUTH"[..], user.as_bytes(), password.expose()],
                ),
                None => encode::command_into(&mut out, &[&b"AUTH"[..], password.expose()]),
            }
        }
        encode::command_into(&mut out, &[&b"HELLO"[..], b"2"]);
        encode::command_into(&mut out, &[&b"CONFIG"[..], b"GET", b"databases"]);
        if dialer.readonly {
            encode::command_into(&mut out, &[&b"READONLY"[..]]);
        }
        self.write_all(&[out.freeze()], Some(left(deadline)))
            .await?;

        for _ in 0..entering {
            let (reply, frame) = self.read_reply(Some(left(deadline))).await?;
            if frame.error {
                return Err(AuthFailure::Refused(error_text(&reply).into()).into());
            }
        }
        if password.is_some() {
            let (reply, frame) = self.read_reply(Some(left(deadline))).await?;
            if frame.error {
                // Redis's AUTH errors never echo the password.
                return Err(AuthFailure::Refused(error_text(&reply).into()).into());
            }
        }
        let (hello, frame) = self.read_reply(Some(left(deadline))).await?;
        let mut info = ServerInfo::default();
        if frame.error {
            let text = error_text(&hello);
            if text.starts_with("NOAUTH") || text.starts_with("WRONGPASS") {
                return Err(match password {
                    Some(_) => AuthFailure::Refused(text.into()),
                    None => AuthFailure::NoPassword(text.into()),
                }
                .into());
            }
            // Redis < 6 has no HELLO: RESP2 only, version from INFO below.
            info.resp3 = false;
        } else {
            info.resp3 = true;
            parse_hello(&hello, &mut info);
        }
        let (databases, frame) = self.read_reply(Some(left(deadline))).await?;
        if !frame.error {
            info.databases = parse_config_databases(&databases);
        }
        if dialer.readonly {
            let (reply, frame) = self.read_reply(Some(left(deadline))).await?;
            if frame.error {
                let reply = error_text(&reply);
                return Err(UnavailableReason::ReadonlyRefused { reply }.into());
            }
        }
        if info.version.is_empty() {
            self.write_all(
                &[encode::command(&[&b"INFO"[..], b"server"])],
                Some(left(deadline)),
            )
            .await?;
            let (reply, frame) = self.read_reply(Some(left(deadline))).await?;
            if !frame.error {
                info.version = parse_info_version(&reply).unwrap_or_default();
            }
        }
        Ok(info)
    }

    /// Writes all `chunks` (vectored), failing after `timeout`.
    pub async fn write_all(
        &mut self,
        chunks: &[Bytes],
        timeout: Option<Duration>,
    ) -> Result<(), UpstreamError> {
        let write = write_chunks(&mut self.stream, chunks);
        let result = match timeout {
            Some(limit) => match tokio::time::timeout(limit, write).await {
                Ok(r) => r,
                Err(_) => {
                    self.broken = true;
                    return Err(UpstreamError::Timeout(limit.as_millis() as u64));
                }
            },
            None => write.await,
        };
        result.map_err(|e| {
            self.broken = true;
            io_failure(IoOp::Write, &e)
        })
    }

    /// The next complete frame already buffered, push frames included, without reading.
    /// For the relay (pub/sub, MONITOR), where every frame goes to the client.
    pub fn next_frame(&mut self) -> Result<Option<(Bytes, ReplyFrame)>, UpstreamError> {
        self.replies
            .next_frame()
            .inspect_err(|_| self.broken = true)
    }

    /// Reads whatever bytes are available into the buffer (cancel-safe). `Ok(0)` is EOF.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        let result = self.replies.fill(&mut self.stream).await;
        if !matches!(result, Ok(n) if n > 0) {
            self.broken = true;
        }
        result
    }

    /// Reads the next reply, skipping RESP3 push frames (out of band: no request asked for
    /// them). Fails when no byte arrives for `timeout`; any failure marks the connection
    /// broken.
    pub async fn read_reply(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<(Bytes, ReplyFrame), UpstreamError> {
        let result = self.replies.read_reply(&mut self.stream, timeout).await;
        self.broken |= result.is_err();
        result
    }

    /// Reads the replies to the `n` state changes (SELECT/HELLO, see [`transition`]) sent
    /// in front of a batch; one that Redis refused fails with `refused(its error text)`.
    /// Any failure marks the connection broken.
    pub async fn read_state_changes(
        &mut self,
        n: usize,
        timeout: Option<Duration>,
        refused: fn(String) -> UpstreamError,
    ) -> Result<(), UpstreamError> {
        let result = (self.replies)
            .read_state_changes(&mut self.stream, n, timeout, refused)
            .await;
        self.broken |= result.is_err();
        result
    }

    /// The socket and the bytes already read from it, for a connection relayed byte for
    /// byte from now on (a replica's).
    pub fn into_raw(self) -> (UpstreamStream, BytesMut) {
        (self.stream, self.replies.buf)
    }

    /// The socket and any replies already read, for a lane that splits it in two.
    pub(super) fn into_parts(self) -> (UpstreamStream, ReplyBuffer) {
        (self.stream, self.replies)
    }

    /// Checks, without waiting, that an idle connection is still usable: not broken, no
    /// unread bytes, not closed by the peer. A pooled connection whose server restarted
    /// is caught here, before a request is written to it.
    pub fn probe(&mut self) -> Result<(), &'static str> {
        if self.broken {
            return Err("marked broken");
        }
        if !self.replies.buf.is_empty() {
            return Err("unread bytes pending");
        }
        self.stream.probe()
    }
}

/// A failed read or write. A TLS failure says what went wrong in TLS terms.
pub(super) fn io_failure(op: IoOp, error: &std::io::Error) -> UpstreamError {
    match crate::tls::rustls_error(error) {
        Some(_) => TlsFailure::Session {
            reason: crate::tls::describe(error, "?"),
        }
        .into(),
        None => LostReason::Io {
            op,
            error: error.into(),
        }
        .into(),
    }
}

/// Time left until `deadline` (zero when it has passed).
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

pub(super) async fn write_chunks(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    chunks: &[Bytes],
) -> std::io::Result<()> {
    const MAX_SLICES: usize = 64;
    let (mut index, mut offset) = (0usize, 0usize);
    while index < chunks.len() {
        // On the stack: nothing is allocated per write.
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        slices[0] = IoSlice::new(&chunks[index][offset..]);
        let mut used = 1;
        for (slot, chunk) in slices[1..].iter_mut().zip(&chunks[index + 1..]) {
            *slot = IoSlice::new(chunk);
            used += 1;
        }
        let mut written = stream.write_vectored(&slices[..used]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while index < chunks.len() && written > 0 {
            let left = chunks[index].len() - offset;
            if written >= left {
                written -= left;
                index += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
        // Skip empty chunks so the loop ends.
        while index < chunks.len() && chunks[index].len() == offset {
            index += 1;
            offset = 0;
        }
    }
    // TLS may hold the last record back until flushed (a no-op for plain TCP).
    stream.flush().await
}

/// The text of an error reply, without the leading `-` and the CRLF.
pub fn error_text(reply: &[u8]) -> String {
    let body = reply.strip_prefix(b"-").unwrap_or(reply);
    let body = body.strip_suffix(b"\r\n").unwrap_or(body);
    String::from_utf8_lossy(body).into_owned()
}

fn frame_text(frame: &OwnedFrame) -> Option<Vec<u8>> {
    match frame {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => Some(b.clone()),
        _ => None,
    }
}

/// Reads `server`, `version`, `mode` and `role` out of a RESP2 `HELLO 2` reply.
fn parse_hello(reply: &[u8], info: &mut ServerInfo) {
    let Ok(Some((OwnedFrame::Array(items), _))) = decode_resp2(reply) else {
        return;
    };
    for pair in items.chunks_exact(2) {
        let (Some(key), Some(value)) = (frame_text(&pair[0]), frame_text(&pair[1])) else {
            continue;
        };
        match &key[..] {
            b"server" => info.server = Bytes::from(value),
            b"version" => info.version = Bytes::from(value),
            b"mode" => info.mode = Bytes::from(value),
            b"role" => info.role = Bytes::from(value),
            _ => {}
        }
    }
}

fn parse_config_databases(reply: &[u8]) -> Option<u32> {
    let Ok(Some((OwnedFrame::Array(items), _))) = decode_resp2(reply) else {
        return None;
    };
    let value = items.get(1).and_then(frame_text)?;
    std::str::from_utf8(&value).ok()?.parse().ok()
}

fn parse_info_version(reply: &[u8]) -> Option<Bytes> {
    let Ok(Some((OwnedFrame::BulkString(text), _))) = decode_resp2(reply) else {
        return None;
    };
    text.split(|&b| b == b'\n').find_map(|line| {
        let value = line.strip_prefix(b"redis_version:")?;
        let value = value.strip_suffix(b"\r").unwrap_or(value);
        Some(Bytes::copy_from_slice(value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        let mut out = BytesMut::new();
        let from = ConnState::INITIAL;
        assert_eq!(transition(&mut out, from, from), 0);
        let to = ConnState {
            db: 12,
            proto: Proto::Resp3,
        };
        assert_eq!(transition(&mut out, from, to), 2);
        assert_eq!(
            &out[..],
            b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n*2\r\n$6\r\nSELECT\r\n$2\r\n12\r\n"
        );
    }

    #[test]
    fn parses_handshake_replies() {
        let hello = b"*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n\
$5\r\nproto\r\n:2\r\n$2\r\nid\r\n:5\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n\
$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n";
        let mut info = ServerInfo::default();
        parse_hello(hello, &mut info);
        assert_eq!(&info.version[..], b"7.0.15");
        assert_eq!(&info.mode[..], b"standalone");
        assert_eq!(&info.role[..], b"master");
        assert_eq!(
            parse_config_databases(b"*2\r\n$9\r\ndatabases\r\n$2\r\n16\r\n"),
            Some(16)
        );
        assert_eq!(
            parse_info_version(b"$36\r\n# Server\r\nredis_version:5.0.1\r\nx:y\r\n\r\n").as_deref(),
            Some(&b"5.0.1"[..])
        );
        assert_eq!(error_text(b"-WRONGPASS bad\r\n"), "WRONGPASS bad");
    }
}

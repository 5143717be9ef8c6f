//! One connection to the real Redis: connect, authenticate, learn what the server is (and,
//! to a cluster replica that serves reads, say `READONLY`), then carry pipelined commands
//! and hand back whole replies as Redis's own bytes.
//!
//! The connection tracks the state the proxy gave it (database, protocol version) so the
//! session can correct it before use, and marks itself broken whenever its framing can no
//! longer be trusted (I/O error, timeout, malformed reply) so the pool drops it instead of
//! handing it to someone else.

use std::io::IoSlice;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::decode::decode as decode_resp2;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use super::{ServerInfo, UpstreamError};
use crate::net::UpstreamStream;
use crate::protocol::{Proto, ReplyFrame, ReplyScanner, encode};
use crate::secret::Secret;
use crate::tls::UpstreamTls;

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

/// What the handshake needs to know.
pub struct Credentials<'a> {
    pub username: Option<&'a str>,
    pub password: Option<&'a Secret>,
    /// Send `READONLY` after authenticating: a connection to a cluster replica that serves
    /// reads (without it the replica redirects every command to its master).
    pub readonly: bool,
}

const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug)]
pub struct UpstreamConn {
    stream: UpstreamStream,
    rbuf: BytesMut,
    scanner: ReplyScanner,
    pub state: ConnState,
    /// Set when the connection must not be reused.
    pub broken: bool,
    /// The upstream password's generation when this connection authenticated: after a
    /// rotation, older connections are recycled at their next quiet moment.
    pub credentials: u64,
    /// The target's generation when this connection was made (see `Target`): a connection
    /// to a master that has since been replaced is not used again.
    pub target: u64,
}

impl UpstreamConn {
    /// Connects (and runs the TLS handshake when `tls` is set), authenticates and says
    /// hello, all within `connect_timeout`. Returns what the server told about itself.
    pub async fn connect(
        address: &str,
        tls: Option<&UpstreamTls>,
        credentials: Credentials<'_>,
        connect_timeout: Duration,
        max_reply_depth: usize,
    ) -> Result<(UpstreamConn, ServerInfo), UpstreamError> {
        let deadline = Instant::now() + connect_timeout;
        let stream = match timeout_at(deadline, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                return Err(UpstreamError::Unavailable(format!(
                    "connect to {address}: {e}"
                )));
            }
            Err(_) => {
                return Err(UpstreamError::Unavailable(format!(
                    "connect to {address}: timed out after {} ms",
                    connect_timeout.as_millis()
                )));
            }
        };
        // Latency matters more than packet count for request/response traffic.
        let _ = stream.set_nodelay(true);
        let stream = match tls {
            None => UpstreamStream::Plain(stream),
            Some(tls) => match timeout_at(deadline, tls.connect(stream)).await {
                Ok(Ok(stream)) => UpstreamStream::Tls(Box::new(stream)),
                Ok(Err(e)) => {
                    return Err(UpstreamError::Tls(format!(
                        "{} ({address})",
                        crate::tls::describe(&e, &tls.server_name())
                    )));
                }
                Err(_) => {
                    return Err(UpstreamError::Tls(format!(
                        "{address} did not complete the handshake within {} ms",
                        connect_timeout.as_millis()
                    )));
                }
            },
        };
        let mut conn = UpstreamConn {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            scanner: ReplyScanner::new(max_reply_depth),
            state: ConnState::INITIAL,
            broken: false,
            credentials: 0,
            target: 0,
        };
        let info = conn.handshake(credentials, deadline).await.map_err(|e| match e {
            UpstreamError::Timeout(_) => UpstreamError::Unavailable(format!(
                "{address} accepted the connection but did not answer the handshake within {} ms",
                connect_timeout.as_millis()
            )),
            // TLS 1.3 reports a refused client certificate after the handshake: on the
            // first read.
            UpstreamError::Tls(reason) => UpstreamError::Tls(format!("{reason} ({address})")),
            other => other,
        })?;
        Ok((conn, info))
    }

    async fn handshake(
        &mut self,
        credentials: Credentials<'_>,
        deadline: Instant,
    ) -> Result<ServerInfo, UpstreamError> {
        let mut out = BytesMut::new();
        let authenticating = credentials.password.is_some();
        if let Some(password) = credentials.password {
            match credentials.username {
                Some(user) => encode::command_into(
                    &mut out,
                    &[&b"AUTH"[..], user.as_bytes(), password.expose()],
                ),
                None => encode::command_into(&mut out, &[&b"AUTH"[..], password.expose()]),
            }
        }
        encode::command_into(&mut out, &[&b"HELLO"[..], b"2"]);
        encode::command_into(&mut out, &[&b"CONFIG"[..], b"GET", b"databases"]);
        if credentials.readonly {
            encode::command_into(&mut out, &[&b"READONLY"[..]]);
        }
        self.write_all(&[out.freeze()], Some(left(deadline)))
            .await?;

        if authenticating {
            let (reply, frame) = self.read_reply(Some(left(deadline))).await?;
            if frame.error {
                // Redis's AUTH errors never echo the password.
                return Err(UpstreamError::AuthFailed(error_text(&reply)));
            }
        }
        let (hello, frame) = self.read_reply(Some(left(deadline))).await?;
        let mut info = ServerInfo::default();
        if frame.error {
            let text = error_text(&hello);
            if text.starts_with("NOAUTH") || text.starts_with("WRONGPASS") {
                let hint = if authenticating {
                    ""
                } else {
                    " (no upstream password is configured)"
                };
                return Err(UpstreamError::AuthFailed(format!("{text}{hint}")));
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
        if credentials.readonly {
            let (reply, frame) = self.read_reply(Some(left(deadline))).await?;
            if frame.error {
                return Err(UpstreamError::Unavailable(format!(
                    "the server refused READONLY (is it a cluster replica?): {}",
                    error_text(&reply)
                )));
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

    /// Writes all `chunks` (vectored), failing at `deadline`.
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
            io_failure("write", &e)
        })
    }

    /// The next complete frame already buffered, push frames included, without reading.
    /// For the relay (pub/sub, MONITOR), where every frame goes to the client.
    pub fn next_frame(&mut self) -> Result<Option<(Bytes, ReplyFrame)>, UpstreamError> {
        match self.scanner.scan(&self.rbuf) {
            Ok(Some(frame)) => Ok(Some((
                crate::net::take_frame(&mut self.rbuf, frame.len),
                frame,
            ))),
            Ok(None) => Ok(None),
            Err(e) => {
                self.broken = true;
                Err(UpstreamError::BadReply(e))
            }
        }
    }

    /// Reads whatever bytes are available into the buffer (cancel-safe). `Ok(0)` is EOF.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        crate::net::shrink_if_empty(&mut self.rbuf);
        self.rbuf.reserve(READ_CHUNK);
        let result = self.stream.read_buf(&mut self.rbuf).await;
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
        loop {
            match self.scanner.scan(&self.rbuf) {
                Ok(Some(frame)) => {
                    let bytes = crate::net::take_frame(&mut self.rbuf, frame.len);
                    if frame.push {
                        tracing::debug!("dropping an unexpected push frame from upstream");
                        continue;
                    }
                    return Ok((bytes, frame));
                }
                Ok(None) => {}
                Err(e) => {
                    self.broken = true;
                    return Err(UpstreamError::BadReply(e));
                }
            }
            crate::net::shrink_if_empty(&mut self.rbuf);
            self.rbuf.reserve(READ_CHUNK);
            let read = self.stream.read_buf(&mut self.rbuf);
            let result = match timeout {
                Some(limit) => match tokio::time::timeout(limit, read).await {
                    Ok(r) => r,
                    Err(_) => {
                        self.broken = true;
                        return Err(UpstreamError::Timeout(limit.as_millis() as u64));
                    }
                },
                None => read.await,
            };
            match result {
                Ok(0) => {
                    self.broken = true;
                    return Err(UpstreamError::Lost("closed by the server".to_owned()));
                }
                Ok(_) => {}
                Err(e) => {
                    self.broken = true;
                    return Err(io_failure("read", &e));
                }
            }
        }
    }

    /// The socket and any bytes already read, for a lane that splits it in two.
    pub(super) fn into_parts(self) -> (UpstreamStream, BytesMut) {
        (self.stream, self.rbuf)
    }

    /// Checks, without waiting, that an idle connection is still usable: not broken, no
    /// unread bytes, not closed by the peer. A pooled connection whose server restarted
    /// is caught here, before a request is written to it.
    pub fn probe(&mut self) -> Result<(), &'static str> {
        if self.broken {
            return Err("marked broken");
        }
        if !self.rbuf.is_empty() {
            return Err("unread bytes pending");
        }
        self.stream.probe()
    }
}

/// A failed read or write. A TLS failure says what went wrong in TLS terms.
pub(super) fn io_failure(what: &str, error: &std::io::Error) -> UpstreamError {
    match crate::tls::rustls_error(error) {
        Some(_) => UpstreamError::Tls(crate::tls::describe(error, "?")),
        None => UpstreamError::Lost(format!("{what}: {error}")),
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
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(MAX_SLICES.min(chunks.len() - index));
        slices.push(IoSlice::new(&chunks[index][offset..]));
        slices.extend(
            chunks[index + 1..]
                .iter()
                .take(MAX_SLICES - 1)
                .map(|c| IoSlice::new(c)),
        );
        let mut written = stream.write_vectored(&slices).await?;
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

//! The byte streams the proxy speaks over, plain TCP or TLS, for both sides: an upstream
//! connection (`UpstreamStream`, split into `UpstreamRead`/`UpstreamWrite` for a lane) and
//! a client connection (`ClientStream`, split into `ClientRead`/`ClientWrite` for a
//! session).
//!
//! Plain TCP keeps `TcpStream::into_split` (no lock between the halves); only a TLS stream
//! goes through `tokio::io::split`, because its two directions share one rustls session.
//! TLS also buffers: a write may leave ciphertext in rustls that reaches the socket only on
//! the next write or flush, so the client writer's `send` flushes, and tracks what is left
//! unflushed when a flush is cancelled. This module owns no policy (certificates, names,
//! errors): that is `tls`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Buffers above this capacity are given back once empty: a large value passes through
/// without leaving its buffer behind for the life of the connection.
pub const KEEP_BUFFER: usize = 256 * 1024;

/// Drops `buf`'s allocation if it is empty and larger than [`KEEP_BUFFER`].
pub fn shrink_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > KEEP_BUFFER {
        *buf = BytesMut::new();
    }
}

/// Splits the first `len` bytes off `buf` as one frame. After a frame larger than
/// [`KEEP_BUFFER`], what is left moves to a buffer of its own, so that the frame alone holds
/// the large allocation and frees it when it is dropped.
pub fn take_frame(buf: &mut BytesMut, len: usize) -> bytes::Bytes {
    let frame = buf.split_to(len).freeze();
    if len > KEEP_BUFFER {
        *buf = BytesMut::from(&buf[..]);
    }
    frame
}

/// A listening socket on `address` with an accept queue of `backlog` (std and tokio use
/// 128), with `SO_REUSEADDR` so a restarted proxy can bind while old connections linger.
pub fn listen(address: std::net::SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(backlog)
}

type UpstreamTls = tokio_rustls::client::TlsStream<TcpStream>;
type ClientTls = tokio_rustls::server::TlsStream<TcpStream>;

/// Delegates `AsyncRead` and `AsyncWrite` to the variant (all are `Unpin`).
macro_rules! delegate_io {
    ($ty:ident { $($variant:ident),+ }) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }
        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)+
                }
            }
            fn is_write_vectored(&self) -> bool {
                match self {
                    $($ty::$variant(s) => s.is_write_vectored(),)+
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_flush(cx),)+
                }
            }
            fn poll_shutdown(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

/// One connection to the upstream.
#[derive(Debug)]
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<UpstreamTls>),
}

delegate_io!(UpstreamStream { Plain, Tls });

impl UpstreamStream {
    /// A second descriptor of the TCP socket underneath (TLS included), for closing it
    /// from elsewhere: a lane's command timeout watchdog (see `upstream::mux`).
    pub fn dup_socket(&self) -> io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        match self {
            UpstreamStream::Plain(tcp) => tcp.as_fd().try_clone_to_owned(),
            UpstreamStream::Tls(tls) => tls.get_ref().0.as_fd().try_clone_to_owned(),
        }
    }

    /// Checks, without waiting, that an idle connection was not closed and sent nothing.
    /// Plain TCP reads (a byte there means the connection is unusable anyway); TLS peeks
    /// at the TCP socket underneath, so the rustls session is left untouched: any pending
    /// byte (a close_notify alert, most likely) fails the probe and the connection is
    /// replaced, which costs a reconnect at worst.
    pub fn probe(&mut self) -> Result<(), &'static str> {
        let mut byte = [0u8; 1];
        let result = match self {
            UpstreamStream::Plain(tcp) => tcp.try_read(&mut byte),
            UpstreamStream::Tls(tls) => {
                // No one else polls an idle pooled connection: a no-op waker is enough.
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut buf = ReadBuf::new(&mut byte);
                match tls.get_ref().0.poll_peek(&mut cx, &mut buf) {
                    Poll::Ready(Ok(n)) => Ok(n),
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        };
        match result {
            Ok(0) => Err("closed by the server"),
            Ok(_) => Err("unexpected bytes from the server"),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(_) => Err("socket error"),
        }
    }

    /// The two halves for a lane's reader and writer tasks.
    pub fn into_split(self) -> (UpstreamRead, UpstreamWrite) {
        match self {
            UpstreamStream::Plain(tcp) => {
                let (r, w) = tcp.into_split();
                (UpstreamRead::Plain(r), UpstreamWrite::Plain(w))
            }
            UpstreamStream::Tls(tls) => {
                let (r, w) = tokio::io::split(*tls);
                (UpstreamRead::Tls(r), UpstreamWrite::Tls(w))
            }
        }
    }
}

/// A lane's read half.
#[derive(Debug)]
pub enum UpstreamRead {
    Plain(OwnedReadHalf),
    Tls(ReadHalf<UpstreamTls>),
}

impl AsyncRead for UpstreamRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamRead::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamRead::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl UpstreamRead {
    /// Waits for anything from an idle connection; bytes that arrive are appended to
    /// `rbuf` (a reply may race with its batch's registration). Returns whether the
    /// connection is finished (end of stream or an error). Cancel-safe.
    pub async fn idle_read(&mut self, rbuf: &mut BytesMut) -> bool {
        match self {
            UpstreamRead::Plain(half) => match half.readable().await {
                // Readiness may be stale: only the end of the stream, or an error, counts.
                Ok(()) => match half.try_read_buf(rbuf) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != io::ErrorKind::WouldBlock,
                },
                Err(_) => true,
            },
            // TLS has no readiness of its own (a TCP byte may be a record in progress or a
            // session ticket): read through rustls, which is cancel-safe.
            UpstreamRead::Tls(half) => {
                rbuf.reserve(4096);
                !matches!(half.read_buf(rbuf).await, Ok(n) if n > 0)
            }
        }
    }
}

/// A lane's write half.
#[derive(Debug)]
pub enum UpstreamWrite {
    Plain(OwnedWriteHalf),
    Tls(WriteHalf<UpstreamTls>),
}

impl AsyncWrite for UpstreamWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamWrite::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamWrite::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamWrite::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamWrite::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamWrite::Plain(s) => s.is_write_vectored(),
            UpstreamWrite::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamWrite::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamWrite::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamWrite::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamWrite::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// One client connection.
#[derive(Debug)]
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<ClientTls>),
}

impl ClientStream {
    /// The session's two halves.
    pub fn into_split(self) -> (ClientRead, ClientWrite) {
        match self {
            ClientStream::Plain(tcp) => {
                let (r, w) = tcp.into_split();
                (ClientRead::Plain(r), ClientWrite::Plain(Arc::new(w)))
            }
            ClientStream::Tls(tls) => {
                let (r, w) = tokio::io::split(*tls);
                (ClientRead::Tls(r), ClientWrite::Tls(w, false))
            }
        }
    }
}

/// A session's read half.
#[derive(Debug)]
pub enum ClientRead {
    Plain(OwnedReadHalf),
    Tls(ReadHalf<ClientTls>),
}

impl AsyncRead for ClientRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientRead::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientRead::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

/// A session's write half. The TLS variant's flag is set while ciphertext may sit in
/// rustls unflushed. The plain one is shared: a lane may write replies into it directly
/// (see `upstream::slot`), never while the session writes.
#[derive(Debug)]
pub enum ClientWrite {
    Plain(Arc<OwnedWriteHalf>),
    Tls(WriteHalf<ClientTls>, bool),
}

/// Writes some of `buf` into a plain socket, waiting until it can take some.
async fn write_some(w: &OwnedWriteHalf, buf: &[u8]) -> io::Result<usize> {
    loop {
        match w.try_write(buf) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => w.writable().await?,
            Ok(0) if !buf.is_empty() => return Err(io::ErrorKind::WriteZero.into()),
            result => return result,
        }
    }
}

impl ClientWrite {
    /// The plain socket, which a lane may write replies into directly.
    pub fn direct(&self) -> Option<Arc<OwnedWriteHalf>> {
        match self {
            ClientWrite::Plain(w) => Some(w.clone()),
            ClientWrite::Tls(..) => None,
        }
    }

    /// Writes all of `buf` and makes sure it reaches the socket.
    pub async fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            ClientWrite::Plain(w) => {
                let mut rest = buf;
                while !rest.is_empty() {
                    let n = write_some(w, rest).await?;
                    rest = &rest[n..];
                }
                Ok(())
            }
            ClientWrite::Tls(w, unflushed) => {
                *unflushed = true;
                w.write_all(buf).await?;
                w.flush().await?;
                *unflushed = false;
                Ok(())
            }
        }
    }

    /// Writes some of `out` (consuming what was written), flushing TLS. Cancel-safe: what
    /// a cancelled flush leaves behind is flushed by the next call (see `unflushed`).
    pub async fn send_some(&mut self, out: &mut BytesMut) -> io::Result<()> {
        match self {
            ClientWrite::Plain(w) => {
                let n = write_some(w, out).await?;
                out.advance(n);
                Ok(())
            }
            ClientWrite::Tls(w, unflushed) => {
                if !out.is_empty() {
                    w.write_buf(out).await?;
                    *unflushed = true;
                }
                w.flush().await?;
                *unflushed = false;
                Ok(())
            }
        }
    }

    /// Whether a TLS write still has bytes to flush.
    pub fn unflushed(&self) -> bool {
        matches!(self, ClientWrite::Tls(_, true))
    }

    /// Closes the write direction (TLS: close_notify first).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            // Shared with the lanes, so not by value: the socket's own shutdown.
            ClientWrite::Plain(w) => {
                let stream: &TcpStream = (**w).as_ref();
                socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write)
            }
            ClientWrite::Tls(w, _) => w.shutdown().await,
        }
    }
}

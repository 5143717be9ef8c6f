//! The raw RESP client: a TCP connection with its own read buffer where every read has a
//! deadline, helpers that assert exact replies, EOF or silence, and the diff helpers that
//! send the same bytes to bare Redis and to the proxy and compare the answers.
//!
//! It never interprets replies beyond delimiting frames (`resp::frame_len`), so a test
//! sees exactly the bytes the peer sent.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::escape::{assert_bytes_eq, escape_short};
use super::resp::{frame_len, resp};

/// Default deadline for one read helper.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A client socket with a read buffer; every read has a deadline.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pub timeout: Duration,
    peer: u16,
}

impl RawConn {
    #[track_caller]
    pub fn connect(port: u16) -> RawConn {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        stream.set_nodelay(true).unwrap();
        RawConn {
            stream,
            buf: Vec::new(),
            timeout: READ_TIMEOUT,
            peer: port,
        }
    }

    /// A connection, or `None` when nothing listens (for polling a server that may be down).
    pub fn try_connect(port: u16) -> Option<RawConn> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream.set_nodelay(true).ok()?;
        Some(RawConn {
            stream,
            buf: Vec::new(),
            timeout: READ_TIMEOUT,
            peer: port,
        })
    }

    pub fn port(&self) -> u16 {
        self.peer
    }

    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write to 127.0.0.1:{}: {e}", self.peer));
    }

    /// Sends without panicking (for writes that may hit a closed socket).
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads more bytes into the buffer. Ok(0) means EOF (a reset counts as EOF);
    /// Err(TimedOut) when the deadline passes.
    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(ErrorKind::TimedOut, "deadline"));
        }
        self.stream.set_read_timeout(Some(deadline - now))?;
        let mut chunk = [0u8; 65536];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                    return Err(io::Error::new(ErrorKind::TimedOut, "deadline"));
                }
                Err(e)
                    if e.kind() == ErrorKind::ConnectionReset
                        || e.kind() == ErrorKind::ConnectionAborted =>
                {
                    return Ok(0);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads exactly `n` bytes (within the timeout) or panics showing what came.
    #[track_caller]
    pub fn read_exact_bytes(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + self.timeout;
        while self.buf.len() < n {
            match self.fill(deadline) {
                Ok(0) => panic!(
                    "127.0.0.1:{}: EOF after {} of {n} bytes: \"{}\"",
                    self.peer,
                    self.buf.len(),
                    escape_short(&self.buf, 2000)
                ),
                Ok(_) => {}
                Err(e) => panic!(
                    "127.0.0.1:{}: {e} after {} of {n} bytes within {:?}: \"{}\"",
                    self.peer,
                    self.buf.len(),
                    self.timeout,
                    escape_short(&self.buf, 2000)
                ),
            }
        }
        self.buf.drain(..n).collect()
    }

    /// Reads exactly `expected.len()` bytes and asserts they are `expected`. On a
    /// mismatch, whatever else arrives within a short while is shown too.
    #[track_caller]
    pub fn expect(&mut self, expected: &[u8]) {
        let deadline = Instant::now() + self.timeout;
        let mut differs = false;
        while self.buf.len() < expected.len() {
            let have = self.buf.len();
            if self.buf[..] != expected[..have] {
                differs = true;
                break;
            }
            match self.fill(deadline) {
                Ok(0) | Err(_) => {
                    let got = std::mem::take(&mut self.buf);
                    panic!(
                        "127.0.0.1:{}: reply incomplete (EOF or timeout after {:?})\n  expected: \"{}\"\n  got:      \"{}\"",
                        self.peer,
                        self.timeout,
                        escape_short(expected, 300),
                        escape_short(&got, 300)
                    );
                }
                Ok(_) => {}
            }
        }
        if !differs && self.buf[..expected.len()] == expected[..] {
            self.buf.drain(..expected.len());
            return;
        }
        // Different: collect the rest of what the peer sends (briefly) and fail.
        let end = Instant::now() + Duration::from_secs(1);
        while self.buf.len() < (1 << 20) {
            let d = (Instant::now() + Duration::from_millis(200)).min(end);
            match self.fill(d) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let got = std::mem::take(&mut self.buf);
        assert_bytes_eq(
            &format!("reply from 127.0.0.1:{}", self.peer),
            expected,
            &got,
        );
        unreachable!();
    }

    /// Reads one whole RESP reply and returns its raw bytes.
    #[track_caller]
    pub fn read_reply(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(n) = frame_len(&self.buf) {
                return self.buf.drain(..n).collect();
            }
            match self.fill(deadline) {
                Ok(0) => panic!(
                    "127.0.0.1:{}: EOF before a whole reply; have \"{}\"",
                    self.peer,
                    escape_short(&self.buf, 2000)
                ),
                Ok(_) => {}
                Err(e) => panic!(
                    "127.0.0.1:{}: {e} waiting for a reply ({:?}); have \"{}\"",
                    self.peer,
                    self.timeout,
                    escape_short(&self.buf, 2000)
                ),
            }
        }
    }

    /// Like `read_reply` but returns None on EOF/timeout instead of panicking.
    pub fn try_read_reply(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(n) = frame_len(&self.buf) {
                return Some(self.buf.drain(..n).collect());
            }
            match self.fill(deadline) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    #[track_caller]
    pub fn read_replies(&mut self, n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|_| self.read_reply()).collect()
    }

    /// Sends one multibulk request and reads one reply.
    #[track_caller]
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Vec<u8> {
        self.send(&resp(args));
        self.read_reply()
    }

    /// Sends one request and asserts the exact reply.
    #[track_caller]
    pub fn call_expect<A: AsRef<[u8]>>(&mut self, args: &[A], expected: &[u8]) {
        self.send(&resp(args));
        self.expect(expected);
    }

    /// Asserts that the peer closes the connection without sending anything more.
    #[track_caller]
    pub fn expect_eof(&mut self) {
        let deadline = Instant::now() + self.timeout;
        loop {
            if !self.buf.is_empty() {
                panic!(
                    "127.0.0.1:{}: expected EOF, got \"{}\"",
                    self.peer,
                    escape_short(&self.buf, 2000)
                );
            }
            match self.fill(deadline) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => panic!(
                    "127.0.0.1:{}: expected EOF within {:?}, connection still open ({e})",
                    self.peer, self.timeout
                ),
            }
        }
    }

    /// Reads everything until EOF (true) or the timeout (false).
    pub fn read_to_eof(&mut self, timeout: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline) {
                Ok(0) => return (std::mem::take(&mut self.buf), true),
                Ok(_) => {}
                Err(_) => return (std::mem::take(&mut self.buf), false),
            }
        }
    }

    /// Reads until no byte arrives for `idle` (or `max` passes).
    pub fn read_until_idle(&mut self, idle: Duration, max: Duration) -> Vec<u8> {
        let end = Instant::now() + max;
        loop {
            let deadline = (Instant::now() + idle).min(end);
            match self.fill(deadline) {
                Ok(0) | Err(_) => return std::mem::take(&mut self.buf),
                Ok(_) => {}
            }
            if Instant::now() >= end {
                return std::mem::take(&mut self.buf);
            }
        }
    }

    /// Asserts nothing arrives (and the connection is not closed) for `dur`.
    #[track_caller]
    pub fn expect_silence(&mut self, dur: Duration) {
        let deadline = Instant::now() + dur;
        loop {
            if !self.buf.is_empty() {
                panic!(
                    "127.0.0.1:{}: expected silence, got \"{}\"",
                    self.peer,
                    escape_short(&self.buf, 2000)
                );
            }
            match self.fill(deadline) {
                Ok(0) => panic!("127.0.0.1:{}: expected silence, got EOF", self.peer),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }

    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// Sends `input` on a fresh connection and returns (bytes, saw_eof) after reading until
/// EOF or `timeout`.
pub fn exchange_to_eof(port: u16, input: &[u8], timeout: Duration) -> (Vec<u8>, bool) {
    let mut c = RawConn::connect(port);
    // The peer may close before reading everything; a failed write is not a test error.
    let _ = c.try_send(input);
    c.read_to_eof(timeout)
}

/// Sends `input` to bare Redis and to the proxy (fresh connections), reads until EOF on
/// both, and asserts both closed and sent the same bytes. Returns the bytes.
#[track_caller]
pub fn diff_closing(redis_port: u16, proxy_port: u16, input: &[u8]) -> Vec<u8> {
    let (want, redis_eof) = exchange_to_eof(redis_port, input, Duration::from_secs(5));
    assert!(
        redis_eof,
        "harness: bare Redis did not close after \"{}\" (got \"{}\")",
        escape_short(input, 200),
        escape_short(&want, 500)
    );
    let (got, proxy_eof) = exchange_to_eof(proxy_port, input, Duration::from_secs(5));
    assert_bytes_eq(
        &format!("proxy vs Redis for \"{}\"", escape_short(input, 200)),
        &want,
        &got,
    );
    assert!(
        proxy_eof,
        "proxy did not close the connection after \"{}\"",
        escape_short(input, 200)
    );
    want
}

/// Sends `input` to bare Redis and to the proxy on the given connections. Redis's reply
/// is read until idle; the proxy must send the same bytes and nothing more.
#[track_caller]
pub fn diff_open(redis: &mut RawConn, proxy: &mut RawConn, input: &[u8]) -> Vec<u8> {
    redis.send(input);
    let want = redis.read_until_idle(Duration::from_millis(300), Duration::from_secs(5));
    proxy.send(input);
    proxy.expect(&want);
    proxy.expect_silence(Duration::from_millis(150));
    want
}

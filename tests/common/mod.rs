//! Test harness shared by the integration tests: real `redis-server` processes, the
//! proxy binary started from a generated config, and raw-socket helpers that assert
//! exact bytes.
//!
//! Every wait here has a deadline, so a broken proxy fails a test instead of hanging it.
//! A missing `redis-server` binary fails the test loudly; nothing is skipped.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The script runner: the same steps against bare Redis and through the proxy.
pub mod script;

/// A real Redis Cluster (3+ masters with replicas) on loopback.
pub mod cluster;

/// Default deadline for one read helper.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Escaping and byte comparison
// ---------------------------------------------------------------------------

/// Shows bytes with CR/LF/NUL and non-printables escaped.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() + 8);
    for &b in bytes {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            0 => s.push_str("\\0"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    s
}

/// Escaped, but cut to `max` bytes with a note.
pub fn escape_short(bytes: &[u8], max: usize) -> String {
    if bytes.len() <= max {
        escape(bytes)
    } else {
        format!("{}… ({} bytes in all)", escape(&bytes[..max]), bytes.len())
    }
}

/// Asserts byte equality; on mismatch shows both sides escaped (around the first
/// difference when they are long).
#[track_caller]
pub fn assert_bytes_eq(what: &str, expected: &[u8], got: &[u8]) {
    if expected == got {
        return;
    }
    if expected.len() <= 2000 && got.len() <= 2000 {
        panic!(
            "{what}: bytes differ\n  expected: \"{}\"\n  got:      \"{}\"",
            escape(expected),
            escape(got)
        );
    }
    let first = expected
        .iter()
        .zip(got.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(got.len()));
    let from = first.saturating_sub(200);
    let to_e = (first + 200).min(expected.len());
    let to_g = (first + 200).min(got.len());
    panic!(
        "{what}: bytes differ at offset {first} (expected {} bytes, got {} bytes)\n  expected[{from}..]: \"{}\"\n  got[{from}..]:      \"{}\"",
        expected.len(),
        got.len(),
        escape(&expected[from..to_e]),
        escape(&got[from.min(got.len())..to_g]),
    );
}

// ---------------------------------------------------------------------------
// RESP encoding and framing
// ---------------------------------------------------------------------------

/// Encodes one request as a RESP multibulk.
pub fn resp<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A RESP bulk string reply.
pub fn bulk(v: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", v.len()).into_bytes();
    out.extend_from_slice(v);
    out.extend_from_slice(b"\r\n");
    out
}

/// Length of the first complete RESP2/RESP3 frame in `buf`, `None` if incomplete.
/// Iterative: counts the frames still owed instead of recursing. Panics on a byte
/// that cannot start a frame (the stream is garbage, which is a test failure).
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let mut pos = 0usize;
    let mut pending: u64 = 1;
    while pending > 0 {
        if pos >= buf.len() {
            return None;
        }
        let rel = buf[pos..].windows(2).position(|w| w == b"\r\n")?;
        let line_end = pos + rel;
        let kind = buf[pos];
        let line = &buf[pos + 1..line_end];
        let header_start = pos;
        pos = line_end + 2;
        pending -= 1;
        let num = || -> i64 {
            std::str::from_utf8(line)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "bad RESP length line at offset {header_start}: \"{}\"",
                        escape_short(&buf[header_start..], 200)
                    )
                })
        };
        match kind {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {}
            b'$' | b'!' | b'=' => {
                let n = num();
                if n >= 0 {
                    let end = pos + n as usize + 2;
                    if buf.len() < end {
                        return None;
                    }
                    pos = end;
                }
            }
            b'*' | b'~' | b'>' => {
                let n = num();
                if n > 0 {
                    pending += n as u64;
                }
            }
            b'%' => {
                let n = num();
                if n > 0 {
                    pending += 2 * n as u64;
                }
            }
            b'|' => {
                // Attributes precede the frame they describe.
                let n = num();
                pending += 2 * n.max(0) as u64 + 1;
            }
            _ => panic!(
                "not a RESP frame at offset {header_start}: \"{}\"",
                escape_short(&buf[header_start..], 200)
            ),
        }
    }
    Some(pos)
}

/// The HELLO reply Redis sends (RESP2 flat `*14`, RESP3 `%7`).
pub fn hello_reply(proto: u8, version: &str, id: i64) -> Vec<u8> {
    let mut out = if proto == 3 {
        b"%7\r\n".to_vec()
    } else {
        b"*14\r\n".to_vec()
    };
    for (k, v) in [
        ("server", bulk(b"redis")),
        ("version", bulk(version.as_bytes())),
        ("proto", format!(":{proto}\r\n").into_bytes()),
        ("id", format!(":{id}\r\n").into_bytes()),
        ("mode", bulk(b"standalone")),
        ("role", bulk(b"master")),
        ("modules", b"*0\r\n".to_vec()),
    ] {
        out.extend_from_slice(&bulk(k.as_bytes()));
        out.extend_from_slice(&v);
    }
    out
}

/// The `id` field of a HELLO reply.
pub fn hello_id(reply: &[u8]) -> i64 {
    let pat = b"$2\r\nid\r\n:";
    let at = reply
        .windows(pat.len())
        .position(|w| w == pat)
        .unwrap_or_else(|| panic!("no id in HELLO reply \"{}\"", escape(reply)))
        + pat.len();
    let end = at
        + reply[at..]
            .iter()
            .position(|&b| b == b'\r')
            .expect("id line end");
    std::str::from_utf8(&reply[at..end])
        .unwrap()
        .parse()
        .unwrap()
}

/// Parses an integer reply `:n\r\n`.
#[track_caller]
pub fn int_reply(reply: &[u8]) -> i64 {
    assert!(
        reply.first() == Some(&b':') && reply.ends_with(b"\r\n"),
        "expected an integer reply, got \"{}\"",
        escape(reply)
    );
    std::str::from_utf8(&reply[1..reply.len() - 2])
        .unwrap()
        .parse()
        .unwrap()
}

pub const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
pub const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
pub const HELLO_NOAUTH_72: &[u8] = b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n";
pub const NOPASS_AUTH_ERR: &[u8] = b"-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n";

// ---------------------------------------------------------------------------
// Raw connections
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// A port that was free a moment ago (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

fn redis_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("REDIS_SERVER") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "REDIS_SERVER={} does not name a file: these tests need redis-server",
            p.display()
        );
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let cand = dir.join("redis-server");
        if cand.is_file() {
            return cand;
        }
    }
    panic!(
        "redis-server not found: install it (e.g. apt-get install redis-server) or set REDIS_SERVER=/path/to/redis-server. These tests never skip."
    );
}

fn read_lossy(p: &Path) -> String {
    fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", p.display()))
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut from = s.len() - max;
    while !s.is_char_boundary(from) {
        from += 1;
    }
    &s[from..]
}

/// How clients authenticate to a test Redis.
#[derive(Clone, Debug)]
pub enum ServerAuth {
    None,
    Password(String),
    /// ACL user with all permissions; the default user is switched off.
    Acl {
        user: String,
        pass: String,
    },
}

/// A `redis-server` child process on a private port, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    conf: PathBuf,
    log: PathBuf,
    auth: ServerAuth,
    /// Runs as a Sentinel (`--sentinel`).
    sentinel: bool,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(ServerAuth::None, &[])
    }

    pub fn with_password(pw: &str) -> RedisServer {
        Self::start_with(ServerAuth::Password(pw.to_string()), &[])
    }

    pub fn with_acl_user(user: &str, pass: &str) -> RedisServer {
        Self::start_with(
            ServerAuth::Acl {
                user: user.to_string(),
                pass: pass.to_string(),
            },
            &[],
        )
    }

    /// `extra` lines are appended to the generated redis.conf.
    pub fn start_with(auth: ServerAuth, extra: &[&str]) -> RedisServer {
        Self::start_as(auth, extra, false)
    }

    /// A Sentinel (`redis-server CONF --sentinel`); `extra` holds its `sentinel …` lines.
    /// `auth` is the Sentinel's own password.
    pub fn start_sentinel(auth: ServerAuth, extra: &[&str]) -> RedisServer {
        Self::start_as(auth, extra, true)
    }

    fn start_as(auth: ServerAuth, extra: &[&str], sentinel: bool) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("ambassador-redis-")
            .tempdir()
            .expect("tempdir");
        let conf = dir.path().join("redis.conf");
        let log = dir.path().join("redis.log");
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
            conf,
            log,
            auth,
            sentinel,
        };
        let mut last_log = String::new();
        for _attempt in 0..5 {
            server.port = free_port();
            server.write_conf(extra);
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(l) => {
                    // Bind race with another test: take a fresh port.
                    if !l.contains("in use") {
                        panic!("redis-server failed to start:\n{l}");
                    }
                    last_log = l;
                }
            }
        }
        panic!("redis-server could not bind a port after 5 attempts:\n{last_log}");
    }

    fn write_conf(&self, extra: &[&str]) {
        let port = self.port;
        let mut text = String::new();
        let _ = writeln!(text, "port {port}");
        text.push_str("bind 127.0.0.1\nsave \"\"\nappendonly no\ndaemonize no\n");
        let _ = writeln!(text, "dir \"{}\"", self.dir.path().display());
        let _ = writeln!(text, "logfile \"{}\"", self.log.display());
        if !self.sentinel {
            text.push_str("enable-debug-command yes\n");
        }
        match &self.auth {
            ServerAuth::None => {}
            ServerAuth::Password(pw) => {
                let _ = writeln!(text, "requirepass \"{pw}\"");
            }
            ServerAuth::Acl { user, pass } => {
                let _ = writeln!(text, "user {user} on >{pass} ~* &* +@all");
                text.push_str("user default off\n");
            }
        }
        for l in extra {
            text.push_str(l);
            text.push('\n');
        }
        fs::write(&self.conf, text).expect("write redis.conf");
        let _ = fs::remove_file(&self.log);
    }

    /// Spawns with the current config and waits for PING. Err(log) if the process exits.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let out = fs::File::create(self.dir.path().join("redis.stdout")).unwrap();
        let mut command = Command::new(redis_server_bin());
        command.arg(&self.conf);
        if self.sentinel {
            command.arg("--sentinel");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn redis-server: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "redis-server exited with {status}\n--- log ---\n{}\n--- stdout ---\n{}",
                    read_lossy(&self.log),
                    read_lossy(&self.dir.path().join("redis.stdout"))
                ));
            }
            if self.ping_once() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = read_lossy(&self.log);
                self.kill();
                panic!(
                    "redis-server on port {} not ready within 10 s\n{log}",
                    self.port
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping_once(&self) -> bool {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut req = self.auth_request();
        req.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        if s.write_all(&req).is_err() {
            return false;
        }
        let want: &[u8] = if self.auth_request().is_empty() {
            b"+PONG\r\n"
        } else {
            b"+OK\r\n+PONG\r\n"
        };
        let mut got = Vec::new();
        let mut chunk = [0u8; 256];
        while got.len() < want.len() {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        got == want
    }

    fn auth_request(&self) -> Vec<u8> {
        match &self.auth {
            ServerAuth::None => Vec::new(),
            ServerAuth::Password(pw) => resp(&["AUTH", pw.as_str()]),
            ServerAuth::Acl { user, pass } => resp(&["AUTH", user.as_str(), pass.as_str()]),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends `signal` (`STOP`, `CONT` …) to the server process.
    #[track_caller]
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the server is running").id();
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// SIGKILL the server (the port stays reserved for `restart`).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Starts the server again on the same port (killing it first if it still runs).
    /// Data is gone: persistence is off.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(log) => {
                    if Instant::now() > deadline {
                        panic!("redis-server restart on port {} failed:\n{log}", self.port);
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// A direct, authenticated raw connection.
    #[track_caller]
    pub fn conn(&self) -> RawConn {
        let mut c = RawConn::connect(self.port);
        let req = self.auth_request();
        if !req.is_empty() {
            c.send(&req);
            c.expect(b"+OK\r\n");
        }
        c
    }

    /// URL for the `redis` crate, with credentials, on database `db`.
    pub fn url(&self, db: u8) -> String {
        match &self.auth {
            ServerAuth::None => format!("redis://127.0.0.1:{}/{db}", self.port),
            ServerAuth::Password(pw) => format!("redis://:{pw}@127.0.0.1:{}/{db}", self.port),
            ServerAuth::Acl { user, pass } => {
                format!("redis://{user}:{pass}@127.0.0.1:{}/{db}", self.port)
            }
        }
    }

    /// The server's `redis_version`.
    pub fn version(&self) -> String {
        let mut c = self.conn();
        let info = c.call(&["INFO", "server"]);
        let text = String::from_utf8_lossy(&info).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no redis_version in INFO: {text}"))
    }

    /// `calls` of `cmdstat_<name>` in INFO commandstats (0 when absent).
    pub fn command_calls(&self, name: &str) -> u64 {
        let mut c = self.conn();
        let info = c.call(&["INFO", "commandstats"]);
        let text = String::from_utf8_lossy(&info).into_owned();
        let prefix = format!("cmdstat_{name}:calls=");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- redis-server (port {}) log ---\n{}\n--- end of redis-server log ---",
                self.port,
                tail(&read_lossy(&self.log), 20_000)
            );
        }
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------

/// Writes `secret` with a trailing newline (which the proxy strips) to `dir/name` and
/// adds its `password_file` line to the config text `t`.
fn write_secret_file(t: &mut String, dir: &Path, name: &str, secret: &[u8]) {
    let p = dir.join(name);
    let mut content = secret.to_vec();
    content.push(b'\n');
    fs::write(&p, content).unwrap();
    let _ = writeln!(t, "password_file = \"{}\"", p.display());
}

/// Appends each of `lines` to the config text `t`, one a line.
fn push_lines(t: &mut String, lines: &[String]) {
    for l in lines {
        t.push_str(l);
        t.push('\n');
    }
}

pub const PROXY_BIN: &str = env!("CARGO_BIN_EXE_redis-ambassador");

/// Builder for a proxy started from a generated TOML config.
#[derive(Clone, Debug, Default)]
pub struct AmbassadorBuilder {
    upstream: String,
    client_username: Option<String>,
    client_password: Option<Vec<u8>>,
    client_password_env: Option<(String, String)>,
    upstream_username: Option<String>,
    upstream_password: Option<Vec<u8>>,
    pool_size: Option<u32>,
    command_timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    pool_wait_timeout_ms: Option<u64>,
    reconnect_backoff_ms: Option<u64>,
    max_clients: Option<u64>,
    limits: Vec<String>,
    log_level: Option<String>,
    /// `key = value` lines for `[metrics]` (its `address` is always set by `start`).
    metrics_lines: Vec<String>,
    /// `key = value` lines for `[shutdown]`.
    shutdown_lines: Vec<String>,
    /// `key = value` lines for `[log]`.
    log_lines: Vec<String>,
    /// Extra `key = value` lines for `[upstream]` (see `upstream_option`).
    upstream_lines: Vec<String>,
    /// Secret rotation: `[client] password_file` / `[upstream] password_file` pointing at a
    /// file the test manages, extra `[client]` lines, and whole TOML sections appended at
    /// the end (`[secrets]`, `[[client.users]]`). See `client_password_path` and below.
    client_password_path: Option<PathBuf>,
    upstream_password_path: Option<PathBuf>,
    client_lines: Vec<String>,
    extra_toml: Vec<String>,
    /// Extra `key = value` lines for `[listen]` (see `listen_option`).
    listen_lines: Vec<String>,
}

impl AmbassadorBuilder {
    pub fn new(upstream_addr: &str) -> Self {
        AmbassadorBuilder {
            upstream: upstream_addr.to_string(),
            ..Default::default()
        }
    }

    /// A proxy in front of `server`, with that server's credentials as upstream credentials.
    pub fn for_server(server: &RedisServer) -> Self {
        let b = Self::new(&server.addr());
        match &server.auth {
            ServerAuth::None => b,
            ServerAuth::Password(pw) => b.upstream_password(pw.as_bytes()),
            ServerAuth::Acl { user, pass } => {
                b.upstream_username(user).upstream_password(pass.as_bytes())
            }
        }
    }

    pub fn client_password(mut self, pw: &[u8]) -> Self {
        self.client_password = Some(pw.to_vec());
        self
    }
    pub fn client_password_env(mut self, var: &str, value: &str) -> Self {
        self.client_password_env = Some((var.to_string(), value.to_string()));
        self
    }
    pub fn client_username(mut self, u: &str) -> Self {
        self.client_username = Some(u.to_string());
        self
    }
    pub fn upstream_password(mut self, pw: &[u8]) -> Self {
        self.upstream_password = Some(pw.to_vec());
        self
    }
    pub fn upstream_username(mut self, u: &str) -> Self {
        self.upstream_username = Some(u.to_string());
        self
    }
    pub fn pool_size(mut self, n: u32) -> Self {
        self.pool_size = Some(n);
        self
    }
    pub fn command_timeout_ms(mut self, n: u64) -> Self {
        self.command_timeout_ms = Some(n);
        self
    }
    pub fn connect_timeout_ms(mut self, n: u64) -> Self {
        self.connect_timeout_ms = Some(n);
        self
    }
    pub fn pool_wait_timeout_ms(mut self, n: u64) -> Self {
        self.pool_wait_timeout_ms = Some(n);
        self
    }
    pub fn reconnect_backoff_ms(mut self, n: u64) -> Self {
        self.reconnect_backoff_ms = Some(n);
        self
    }
    pub fn max_clients(mut self, n: u64) -> Self {
        self.max_clients = Some(n);
        self
    }
    /// A `key = value` line for the `[limits]` section.
    pub fn limit(mut self, key: &str, value: u64) -> Self {
        self.limits.push(format!("{key} = {value}"));
        self
    }
    /// RUST_LOG for the proxy (default "info").
    pub fn log_level(mut self, l: &str) -> Self {
        self.log_level = Some(l.to_string());
        self
    }

    /// Writes secret files (with a trailing newline, which the proxy strips) into `dir`
    /// and returns the TOML text.
    pub fn render(&self, dir: &Path, listen_port: u16) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "[listen]\naddress = \"127.0.0.1:{listen_port}\"");
        if let Some(n) = self.max_clients {
            let _ = writeln!(t, "max_clients = {n}");
        }
        push_lines(&mut t, &self.listen_lines);
        if self.client_password.is_some()
            || self.client_password_env.is_some()
            || self.client_username.is_some()
            || self.client_password_path.is_some()
            || !self.client_lines.is_empty()
        {
            t.push_str("\n[client]\n");
            if let Some(u) = &self.client_username {
                let _ = writeln!(t, "username = \"{u}\"");
            }
            if let Some(pw) = &self.client_password {
                write_secret_file(&mut t, dir, "client_password", pw);
            }
            if let Some((var, _)) = &self.client_password_env {
                let _ = writeln!(t, "password_env = \"{var}\"");
            }
            if let Some(p) = &self.client_password_path {
                let _ = writeln!(t, "password_file = \"{}\"", p.display());
            }
            push_lines(&mut t, &self.client_lines);
        }
        t.push_str("\n[upstream]\n");
        let _ = writeln!(t, "address = \"{}\"", self.upstream);
        if let Some(u) = &self.upstream_username {
            let _ = writeln!(t, "username = \"{u}\"");
        }
        if let Some(pw) = &self.upstream_password {
            write_secret_file(&mut t, dir, "upstream_password", pw);
        }
        if let Some(p) = &self.upstream_password_path {
            let _ = writeln!(t, "password_file = \"{}\"", p.display());
        }
        for (k, v) in [
            ("pool_size", self.pool_size.map(u64::from)),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("pool_wait_timeout_ms", self.pool_wait_timeout_ms),
            ("command_timeout_ms", self.command_timeout_ms),
            ("reconnect_backoff_ms", self.reconnect_backoff_ms),
        ] {
            if let Some(v) = v {
                let _ = writeln!(t, "{k} = {v}");
            }
        }
        push_lines(&mut t, &self.upstream_lines);
        if !self.limits.is_empty() {
            t.push_str("\n[limits]\n");
            push_lines(&mut t, &self.limits);
        }
        t
    }

    /// Starts the proxy and waits until its port accepts TCP.
    #[track_caller]
    pub fn start(self) -> Ambassador {
        let dir = tempfile::Builder::new()
            .prefix("ambassador-proxy-")
            .tempdir()
            .expect("tempdir");
        let config = dir.path().join("ambassador.toml");
        let log = dir.path().join("ambassador.log");
        let mut amb = Ambassador {
            child: None,
            port: 0,
            metrics_port: 0,
            dir,
            config,
            log,
        };
        for attempt in 0..5 {
            amb.port = free_port();
            amb.metrics_port = free_port();
            let port = amb.port;
            fs::write(
                &amb.config,
                self.render_full(amb.dir.path(), port, amb.metrics_port),
            )
            .unwrap();
            let out = fs::File::create(&amb.log).unwrap();
            let mut cmd = Command::new(PROXY_BIN);
            cmd.arg("--config")
                .arg(&amb.config)
                .env(
                    "RUST_LOG",
                    self.log_level.clone().unwrap_or_else(|| "info".into()),
                )
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out);
            if let Some((var, val)) = &self.client_password_env {
                cmd.env(var, val);
            }
            amb.child = Some(
                cmd.spawn()
                    .unwrap_or_else(|e| panic!("spawn {PROXY_BIN}: {e}")),
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = amb.child.as_mut().unwrap().try_wait().unwrap() {
                    amb.child = None;
                    let text = read_lossy(&amb.log);
                    if text.to_lowercase().contains("in use") && attempt < 4 {
                        break; // port race: try another port
                    }
                    panic!(
                        "redis-ambassador exited early with {status}\n--- config ---\n{}\n--- log ---\n{text}",
                        read_lossy(&amb.config)
                    );
                }
                let addr: SocketAddr = ([127, 0, 0, 1], port).into();
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return amb;
                }
                if Instant::now() > deadline {
                    let text = read_lossy(&amb.log);
                    amb.kill();
                    panic!(
                        "redis-ambassador did not accept on 127.0.0.1:{port} within 10 s\n--- config ---\n{}\n--- log ---\n{text}",
                        read_lossy(&amb.config)
                    );
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("redis-ambassador could not bind a port after 5 attempts");
    }
}

/// A running proxy, killed on drop (its log is printed if the test panicked).
pub struct Ambassador {
    child: Option<Child>,
    port: u16,
    /// The admin endpoint's port (`[metrics] address`).
    metrics_port: u16,
    dir: TempDir,
    config: PathBuf,
    log: PathBuf,
}

impl Ambassador {
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn url(&self, db: u8) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }
    pub fn conn(&self) -> RawConn {
        RawConn::connect(self.port)
    }
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }
    /// The proxy's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("proxy not running").id()
    }
    /// Resident set size in KiB (Linux /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }
    pub fn config_path(&self) -> &Path {
        &self.config
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Ambassador {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- redis-ambassador (port {}) log ---\n{}\n--- end of redis-ambassador log ---",
                self.port,
                tail(&read_lossy(&self.log), 30_000)
            );
        }
        self.kill();
    }
}

/// Runs the proxy binary with `args` and waits (bounded) for it to exit.
/// Returns (status, stdout + stderr). Panics if it is still running after `timeout`.
pub fn run_proxy_to_exit(
    args: &[&str],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let out_p = dir.path().join("out");
    let err_p = dir.path().join("err");
    let mut cmd = Command::new(PROXY_BIN);
    cmd.args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_p).unwrap())
        .stderr(fs::File::create(&err_p).unwrap());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {PROXY_BIN}: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let text = format!("{}{}", read_lossy(&err_p), read_lossy(&out_p));
            return (status, text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "redis-ambassador {args:?} still running after {timeout:?}; output:\n{}{}",
                read_lossy(&err_p),
                read_lossy(&out_p)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `redis-ambassador --config PATH --check`: (status, output).
pub fn check_config(path: &Path) -> (ExitStatus, String) {
    run_proxy_to_exit(
        &["--config", path.to_str().unwrap(), "--check"],
        &[],
        Duration::from_secs(10),
    )
}

/// A port nothing listens on (bound, released; nobody else should take it soon).
pub fn closed_port() -> u16 {
    free_port()
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// Admin endpoint, shutdown and logging options; HTTP and signal helpers
// ---------------------------------------------------------------------------

impl AmbassadorBuilder {
    /// A `key = value` line for `[metrics]` (`value` as TOML, e.g. `"5"` or `"\"x\""`).
    pub fn metrics_option(mut self, key: &str, value: &str) -> Self {
        self.metrics_lines.push(format!("{key} = {value}"));
        self
    }
    pub fn readiness_interval_ms(self, n: u64) -> Self {
        self.metrics_option("readiness_interval_ms", &n.to_string())
    }
    pub fn drain_delay_ms(mut self, n: u64) -> Self {
        self.shutdown_lines.push(format!("drain_delay_ms = {n}"));
        self
    }
    pub fn grace_period_ms(mut self, n: u64) -> Self {
        self.shutdown_lines.push(format!("grace_period_ms = {n}"));
        self
    }
    /// A `key = value` line for `[log]` (`value` as TOML).
    pub fn log_option(mut self, key: &str, value: &str) -> Self {
        self.log_lines.push(format!("{key} = {value}"));
        self
    }

    /// `render`, plus `[metrics] address` on `metrics_port` (every proxy a test starts
    /// needs its own admin port) and the `[metrics]`, `[shutdown]` and `[log]` options.
    pub fn render_full(&self, dir: &Path, listen_port: u16, metrics_port: u16) -> String {
        let mut t = self.render(dir, listen_port);
        let _ = writeln!(t, "\n[metrics]\naddress = \"127.0.0.1:{metrics_port}\"");
        push_lines(&mut t, &self.metrics_lines);
        for (section, lines) in [("shutdown", &self.shutdown_lines), ("log", &self.log_lines)] {
            if !lines.is_empty() {
                let _ = writeln!(t, "\n[{section}]");
                push_lines(&mut t, lines);
            }
        }
        push_lines(&mut t, &self.extra_toml);
        t
    }
}

/// An HTTP response from the admin endpoint.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// The head after the status line, as received.
    pub headers: String,
    pub body: String,
}

impl HttpResponse {
    /// A header's value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends raw `request` bytes to 127.0.0.1:`port` and reads the response until EOF.
/// `None` when the connection fails, closes without a status line, or `timeout` passes.
pub fn http_raw(port: u16, request: &[u8], timeout: Duration) -> Option<HttpResponse> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(request).ok()?;
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        if Instant::now() > deadline {
            return None;
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(_) => return None,
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line.split(' ').nth(1)?.parse().ok()?;
    Some(HttpResponse {
        status,
        headers: headers.to_string(),
        body: body.to_string(),
    })
}

/// The value of one sample (`name{labels}` as printed) in a Prometheus scrape, 0 if absent.
pub fn scraped_value(scrape: &str, sample: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `METHOD path` on 127.0.0.1:`port`, one request per connection. Panics on failure.
#[track_caller]
pub fn http(port: u16, method: &str, path: &str) -> HttpResponse {
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    http_raw(port, request.as_bytes(), Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{method} {path} on 127.0.0.1:{port}: no HTTP response"))
}

impl Ambassador {
    /// The admin endpoint's port.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }
    /// `GET path` on the admin endpoint.
    #[track_caller]
    pub fn http_get(&self, path: &str) -> HttpResponse {
        http(self.metrics_port, "GET", path)
    }
    /// The `/metrics` text.
    #[track_caller]
    pub fn scrape(&self) -> String {
        let r = self.http_get("/metrics");
        assert_eq!(r.status, 200, "/metrics: {r:?}");
        r.body
    }
    /// Sends a signal (`"TERM"`, `"INT"`, …) to the proxy with kill(1).
    #[track_caller]
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }
    /// Waits up to `timeout` for the proxy to exit; `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl RedisServer {
    /// A server on a given `port` (for a proxy started before its upstream).
    #[track_caller]
    pub fn start_on_port(port: u16, auth: ServerAuth, extra: &[&str]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("ambassador-redis-")
            .tempdir()
            .expect("tempdir");
        let conf = dir.path().join("redis.conf");
        let log = dir.path().join("redis.log");
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            conf,
            log,
            auth,
            sentinel: false,
        };
        server.write_conf(extra);
        if let Err(log) = server.spawn_and_wait() {
            panic!("redis-server on port {port} failed to start:\n{log}");
        }
        server
    }
}

// ---------------------------------------------------------------------------
// Stateful commands: pinned-connection options
// ---------------------------------------------------------------------------

impl AmbassadorBuilder {
    /// A `key = value` line for `[listen]` (`value` as TOML): TLS for clients.
    pub fn listen_option(mut self, key: &str, value: &str) -> Self {
        self.listen_lines.push(format!("{key} = {value}"));
        self
    }
    /// A `key = value` line for `[upstream]` (`value` as TOML).
    pub fn upstream_option(mut self, key: &str, value: &str) -> Self {
        self.upstream_lines.push(format!("{key} = {value}"));
        self
    }
    /// `[upstream] max_pinned`: the cap on dedicated (pinned) upstream connections.
    pub fn max_pinned(self, n: u64) -> Self {
        self.upstream_option("max_pinned", &n.to_string())
    }
}

// ---------------------------------------------------------------------------
// Secret rotation and client users
// ---------------------------------------------------------------------------

impl AmbassadorBuilder {
    /// `[client] password_file` naming `path` as it is (the test manages the file).
    pub fn client_password_path(mut self, path: &Path) -> Self {
        self.client_password_path = Some(path.to_owned());
        self
    }
    /// `[upstream] password_file` naming `path` as it is (the test manages the file).
    pub fn upstream_password_path(mut self, path: &Path) -> Self {
        self.upstream_password_path = Some(path.to_owned());
        self
    }
    /// A `key = value` line for `[client]` (`value` as TOML).
    pub fn client_option(mut self, key: &str, value: &str) -> Self {
        self.client_lines.push(format!("{key} = {value}"));
        self
    }
    /// `[client] rotation_overlap_ms`.
    pub fn rotation_overlap_ms(self, n: u64) -> Self {
        self.client_option("rotation_overlap_ms", &n.to_string())
    }
    /// A `[[client.users]]` entry whose password is in the file at `path`.
    pub fn client_user_file(mut self, name: &str, path: &Path) -> Self {
        self.extra_toml.push(format!(
            "\n[[client.users]]\nusername = \"{name}\"\npassword_file = \"{}\"",
            path.display()
        ));
        self
    }
    /// `[runtime] worker_threads` (1: tokio's current-thread scheduler).
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.extra_toml
            .push(format!("\n[runtime]\nworker_threads = {n}"));
        self
    }
    /// The `[secrets]` section: watching on or off, and the poll interval.
    pub fn secrets_watch(mut self, watch: bool, poll_interval_ms: u64, debounce_ms: u64) -> Self {
        self.extra_toml.push(format!(
            "\n[secrets]\nwatch = {watch}\npoll_interval_ms = {poll_interval_ms}\n\
             debounce_ms = {debounce_ms}"
        ));
        self
    }
}

/// A directory laid out as kubelet lays out a Secret volume: `..data` is a symlink to a
/// timestamped directory holding the keys, and each key is a symlink `key -> ..data/key`.
/// `update` swaps in new data exactly as kubelet does.
pub struct KubeSecretDir {
    dir: TempDir,
    generation: u32,
}

impl KubeSecretDir {
    /// A volume with the given keys (values written without a trailing newline, as
    /// Kubernetes does).
    pub fn new(keys: &[(&str, &[u8])]) -> KubeSecretDir {
        let dir = tempfile::Builder::new()
            .prefix("ambassador-secret-")
            .tempdir()
            .expect("tempdir");
        let mut volume = KubeSecretDir { dir, generation: 0 };
        volume.update(keys);
        for (key, _) in keys {
            std::os::unix::fs::symlink(format!("..data/{key}"), volume.dir.path().join(key))
                .unwrap();
        }
        volume
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The path of a key (the symlink an application reads).
    pub fn key(&self, key: &str) -> PathBuf {
        self.dir.path().join(key)
    }

    /// kubelet's atomic update: write the new data into a fresh `..<timestamp>` directory,
    /// point `..data_tmp` at it, rename `..data_tmp` over `..data`, remove the old data.
    pub fn update(&mut self, keys: &[(&str, &[u8])]) {
        self.generation += 1;
        let stamp = format!("..2026_11_26_10_00_00.{:09}", self.generation);
        let new = self.dir.path().join(&stamp);
        fs::create_dir(&new).unwrap();
        for (key, value) in keys {
            fs::write(new.join(key), value).unwrap();
        }
        let data = self.dir.path().join("..data");
        let old = fs::read_link(&data).ok();
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
        fs::rename(&tmp, &data).unwrap();
        if let Some(old) = old {
            let _ = fs::remove_dir_all(self.dir.path().join(old));
        }
    }
}

//! Real `redis-server` processes for the tests: each on a port of its own (a free port
//! picked by the harness and written into its redis.conf, never `port 0`), persistence
//! off (`save ""`, `appendonly no`), killed on drop, and its log printed when the test
//! panicked. Also a Sentinel (`--sentinel`) and a server restarted on the same port.
//!
//! A missing `redis-server` binary fails the test loudly; nothing is skipped.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::conn::RawConn;
use super::resp::resp;
use super::support::{free_port, read_lossy, tail};

/// The `redis-server` binary: `REDIS_SERVER`, else the first on `PATH`. Panics when there
/// is none: these tests never skip.
pub fn redis_server_bin() -> PathBuf {
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
        let mut server = Self::unstarted(0, auth, sentinel);
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

    /// A server on a given `port` (for a proxy started before its upstream).
    #[track_caller]
    pub fn start_on_port(port: u16, auth: ServerAuth, extra: &[&str]) -> RedisServer {
        let mut server = Self::unstarted(port, auth, false);
        server.write_conf(extra);
        if let Err(log) = server.spawn_and_wait() {
            panic!("redis-server on port {port} failed to start:\n{log}");
        }
        server
    }

    /// The value before its first start: its own temp dir, no process yet.
    fn unstarted(port: u16, auth: ServerAuth, sentinel: bool) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("ambassador-redis-")
            .tempdir()
            .expect("tempdir");
        let conf = dir.path().join("redis.conf");
        let log = dir.path().join("redis.log");
        RedisServer {
            child: None,
            port,
            dir,
            conf,
            log,
            auth,
            sentinel,
        }
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

    /// How clients authenticate to this server.
    pub fn auth(&self) -> &ServerAuth {
        &self.auth
    }

    /// The server's own temp dir (its `dir`, where redis.conf and the log live).
    pub fn dir(&self) -> &Path {
        self.dir.path()
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

//! The proxy under test, run as its binary (`CARGO_BIN_EXE_redis-ambassador`) from a
//! config the builder writes: [`AmbassadorBuilder`] gathers a typed
//! [`AmbassadorConfig`] plus what does not live in the file (secret values, environment,
//! `RUST_LOG`), and [`AmbassadorBuilder::start`] writes it into a temp dir of its own,
//! starts the process on free ports and waits until it accepts.
//!
//! The running [`Ambassador`] is killed on drop, and its log is printed when the test
//! panicked. [`run_proxy_to_exit`] and [`check_config`] run the binary to completion
//! (`--check`, start-up errors).

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::config::{AmbassadorConfig, ClientUser, loopback};
use super::conn::RawConn;
use super::servers::{RedisServer, ServerAuth};
use super::support::{free_port_pair, read_lossy, tail};

pub const PROXY_BIN: &str = env!("CARGO_BIN_EXE_redis-ambassador");

/// Set by Kubernetes in every container: the proxy then says more about how it is
/// deployed. Removed from the proxy's environment unless a test sets it.
pub const IN_POD_VARIABLE: &str = "KUBERNETES_SERVICE_HOST";

/// Builder for a proxy started from a generated TOML config.
#[derive(Clone, Debug)]
pub struct AmbassadorBuilder {
    /// Everything in the file except the two addresses `start` picks (`[listen]` and
    /// `[metrics]`, free ports) and the password files it writes.
    config: AmbassadorConfig,
    /// Written (with a trailing newline, which the proxy strips) into the proxy's dir and
    /// named as `[client] password_file`.
    client_password: Option<Vec<u8>>,
    /// The same for `[upstream] password_file`.
    upstream_password: Option<Vec<u8>>,
    /// Environment variables for the process (`password_env` values).
    env: Vec<(String, String)>,
    /// `RUST_LOG` for the process (default "info").
    rust_log: Option<String>,
    /// The IP `[metrics] address` binds (default 127.0.0.1); the port is picked at start.
    metrics_ip: IpAddr,
}

impl AmbassadorBuilder {
    pub fn new(upstream_addr: &str) -> Self {
        AmbassadorBuilder {
            config: AmbassadorConfig::new(upstream_addr),
            client_password: None,
            upstream_password: None,
            env: Vec::new(),
            rust_log: None,
            metrics_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// A proxy in front of `server`, with that server's credentials as upstream credentials.
    pub fn for_server(server: &RedisServer) -> Self {
        let b = Self::new(&server.addr());
        match server.auth() {
            ServerAuth::None => b,
            ServerAuth::Password(pw) => b.upstream_password(pw.as_bytes()),
            ServerAuth::Acl { user, pass } => {
                b.upstream_username(user).upstream_password(pass.as_bytes())
            }
        }
    }

    /// Any change to the typed config, for keys without a helper of their own:
    /// `.configure(|c| c.limits.max_in_flight = Some(3))`.
    pub fn configure(mut self, f: impl FnOnce(&mut AmbassadorConfig)) -> Self {
        f(&mut self.config);
        self
    }

    /// The typed config so far (without the addresses and password files `start` adds).
    pub fn config(&self) -> &AmbassadorConfig {
        &self.config
    }

    /// `RUST_LOG` for the proxy (default "info"; empty counts as unset, so `[log]` applies).
    pub fn log_level(mut self, l: &str) -> Self {
        self.rust_log = Some(l.to_string());
        self
    }

    /// A variable in the proxy's environment (`KUBERNETES_SERVICE_HOST` included, which is
    /// otherwise removed: the tests' own environment may be a pod).
    pub fn env(mut self, var: &str, value: &str) -> Self {
        self.env.push((var.to_string(), value.to_string()));
        self
    }

    /// The admin endpoint on `ip` (`0.0.0.0` to be reached on every address of the host)
    /// instead of 127.0.0.1.
    pub fn metrics_ip(mut self, ip: IpAddr) -> Self {
        self.metrics_ip = ip;
        self
    }

    /// Writes the password files into `dir` and returns the TOML text, listening on
    /// `listen_port` with the admin endpoint on `metrics_port` (every proxy a test starts
    /// needs its own).
    pub fn render(&self, dir: &Path, listen_port: u16, metrics_port: u16) -> String {
        let mut config = self.config.clone();
        config.listen.address = Some(loopback(listen_port));
        config.metrics.address = Some(SocketAddr::new(self.metrics_ip, metrics_port));
        if let Some(pw) = &self.client_password {
            config.client_mut().password_file = Some(write_secret_file(dir, "client_password", pw));
        }
        if let Some(pw) = &self.upstream_password {
            config.upstream.password_file = Some(write_secret_file(dir, "upstream_password", pw));
        }
        config.to_toml()
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
        for _attempt in 0..5 {
            (amb.port, amb.metrics_port) = free_port_pair();
            let text = self.render(amb.dir.path(), amb.port, amb.metrics_port);
            fs::write(&amb.config, text).unwrap();
            amb.child = Some(self.spawn(&amb.config, &amb.log));
            match amb.wait_accepting() {
                Started::Yes => return amb,
                // Port race with another test: try other ports.
                Started::PortInUse => {}
            }
        }
        panic!(
            "redis-ambassador could not bind a port after 5 attempts\n--- log ---\n{}",
            read_lossy(&amb.log)
        );
    }

    /// Spawns the binary on `config`, its output into `log`.
    fn spawn(&self, config: &Path, log: &Path) -> Child {
        let out = fs::File::create(log).unwrap();
        let mut cmd = Command::new(PROXY_BIN);
        cmd.arg("--config")
            .arg(config)
            .env(
                "RUST_LOG",
                self.rust_log.clone().unwrap_or_else(|| "info".into()),
            )
            .env_remove(IN_POD_VARIABLE)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (var, val) in &self.env {
            cmd.env(var, val);
        }
        cmd.spawn()
            .unwrap_or_else(|e| panic!("spawn {PROXY_BIN}: {e}"))
    }
}

/// Writes `secret` with a trailing newline (which the proxy strips) to `dir/name` and
/// returns its path.
fn write_secret_file(dir: &Path, name: &str, secret: &[u8]) -> PathBuf {
    let p = dir.join(name);
    let mut content = secret.to_vec();
    content.push(b'\n');
    fs::write(&p, content).unwrap();
    p
}

// ---------------------------------------------------------------------------
// Typed helpers for the keys many tests set
// ---------------------------------------------------------------------------

impl AmbassadorBuilder {
    /// `[client]` with this password (written to a file at start).
    pub fn client_password(mut self, pw: &[u8]) -> Self {
        self.client_password = Some(pw.to_vec());
        self
    }
    /// `[client] password_env = var`, with `var=value` in the proxy's environment.
    pub fn client_password_env(mut self, var: &str, value: &str) -> Self {
        self.config.client_mut().password_env = Some(var.to_string());
        self.env.push((var.to_string(), value.to_string()));
        self
    }
    pub fn client_username(mut self, u: &str) -> Self {
        self.config.client_mut().username = Some(u.to_string());
        self
    }
    /// `[client] password_file` naming `path` as it is (the test manages the file).
    pub fn client_password_path(mut self, path: &Path) -> Self {
        self.config.client_mut().password_file = Some(path.to_owned());
        self
    }
    /// `[client] rotation_overlap_ms`.
    pub fn rotation_overlap_ms(mut self, n: u64) -> Self {
        self.config.client_mut().rotation_overlap_ms = Some(n);
        self
    }
    /// A `[[client.users]]` entry whose password is in the file at `path`.
    pub fn client_user_file(mut self, name: &str, path: &Path) -> Self {
        self.config.client_mut().users.push(ClientUser {
            username: name.to_string(),
            password_file: Some(path.to_owned()),
            ..ClientUser::default()
        });
        self
    }
    /// The command rules (`commands`, `read_only`) of the `[[client.users]]` entry `name`
    /// (added by `client_user_file` before).
    pub fn client_user_rules(
        mut self,
        name: &str,
        commands: Option<&str>,
        read_only: bool,
    ) -> Self {
        let user = self
            .config
            .client_mut()
            .users
            .iter_mut()
            .find(|u| u.username == name)
            .expect("client_user_file first");
        user.commands = commands.map(str::to_owned);
        user.read_only = read_only.then_some(true);
        self
    }
    /// The `[[client.users]]` entry `name` (added by `client_user_file` before) reaches
    /// Redis as `redis_user`, whose password is in the file at `path`.
    pub fn client_user_identity(mut self, name: &str, redis_user: &str, path: &Path) -> Self {
        let user = self
            .config
            .client_mut()
            .users
            .iter_mut()
            .find(|u| u.username == name)
            .expect("client_user_file first");
        user.upstream_username = Some(redis_user.to_owned());
        user.upstream_password_file = Some(path.to_owned());
        self
    }
    /// `[client] upstream_auth`.
    pub fn upstream_auth(mut self, on: bool) -> Self {
        self.config.client_mut().upstream_auth = Some(on);
        self
    }
    /// `[upstream]` with this password (written to a file at start).
    pub fn upstream_password(mut self, pw: &[u8]) -> Self {
        self.upstream_password = Some(pw.to_vec());
        self
    }
    /// `[upstream] password_file` naming `path` as it is (the test manages the file).
    pub fn upstream_password_path(mut self, path: &Path) -> Self {
        self.config.upstream.password_file = Some(path.to_owned());
        self
    }
    pub fn upstream_username(mut self, u: &str) -> Self {
        self.config.upstream.username = Some(u.to_string());
        self
    }
    pub fn pool_size(mut self, n: u32) -> Self {
        self.config.upstream.pool_size = Some(n);
        self
    }
    pub fn command_timeout_ms(mut self, n: u64) -> Self {
        self.config.upstream.command_timeout_ms = Some(n);
        self
    }
    pub fn connect_timeout_ms(mut self, n: u64) -> Self {
        self.config.upstream.connect_timeout_ms = Some(n);
        self
    }
    pub fn pool_wait_timeout_ms(mut self, n: u64) -> Self {
        self.config.upstream.pool_wait_timeout_ms = Some(n);
        self
    }
    pub fn reconnect_backoff_ms(mut self, n: u64) -> Self {
        self.config.upstream.reconnect_backoff_ms = Some(n);
        self
    }
    pub fn reconnect_backoff_max_ms(mut self, n: u64) -> Self {
        self.config.upstream.reconnect_backoff_max_ms = Some(n);
        self
    }
    /// `[upstream] max_pinned`: the cap on dedicated (pinned) upstream connections.
    pub fn max_pinned(mut self, n: u64) -> Self {
        self.config.upstream.max_pinned = Some(n);
        self
    }
    /// `[upstream] tls_ca_file`: the CA the upstream's certificate must chain to.
    pub fn upstream_tls_ca_file(mut self, path: &Path) -> Self {
        self.config.upstream.tls_ca_file = Some(path.to_owned());
        self
    }
    /// `[listen] tls_cert_file` and `tls_key_file`: TLS for clients.
    pub fn listen_tls(mut self, cert: &Path, key: &Path) -> Self {
        self.config.listen.tls_cert_file = Some(cert.to_owned());
        self.config.listen.tls_key_file = Some(key.to_owned());
        self
    }
    pub fn max_clients(mut self, n: u64) -> Self {
        self.config.listen.max_clients = Some(n);
        self
    }
    pub fn readiness_interval_ms(mut self, n: u64) -> Self {
        self.config.metrics.readiness_interval_ms = Some(n);
        self
    }
    pub fn drain_delay_ms(mut self, n: u64) -> Self {
        self.config.shutdown.drain_delay_ms = Some(n);
        self
    }
    pub fn grace_period_ms(mut self, n: u64) -> Self {
        self.config.shutdown.grace_period_ms = Some(n);
        self
    }
    /// `[runtime] worker_threads` (1: tokio's current-thread scheduler).
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.config.runtime.worker_threads = Some(n);
        self
    }
    /// The `[secrets]` section: watching on or off, and the poll interval.
    pub fn secrets_watch(mut self, watch: bool, poll_interval_ms: u64, debounce_ms: u64) -> Self {
        let secrets = &mut self.config.secrets;
        secrets.watch = Some(watch);
        secrets.poll_interval_ms = Some(poll_interval_ms);
        secrets.debounce_ms = Some(debounce_ms);
        self
    }
}

// ---------------------------------------------------------------------------
// The running proxy
// ---------------------------------------------------------------------------

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

/// How a start attempt ended (anything else panics).
enum Started {
    Yes,
    /// The process exited saying an address is in use.
    PortInUse,
}

impl Ambassador {
    /// Waits (10 s at most) for the just-spawned process to accept on its port.
    #[track_caller]
    fn wait_accepting(&mut self) -> Started {
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                let text = read_lossy(&self.log);
                if text.to_lowercase().contains("in use") {
                    return Started::PortInUse;
                }
                panic!(
                    "redis-ambassador exited early with {status}\n--- config ---\n{}\n--- log ---\n{text}",
                    read_lossy(&self.config)
                );
            }
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Started::Yes;
            }
            if Instant::now() > deadline {
                let text = read_lossy(&self.log);
                self.kill();
                panic!(
                    "redis-ambassador did not accept on 127.0.0.1:{port} within 10 s\n--- config ---\n{}\n--- log ---\n{text}",
                    read_lossy(&self.config)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

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
    /// The admin endpoint's port.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
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

// ---------------------------------------------------------------------------
// The binary run to completion
// ---------------------------------------------------------------------------

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
        .env_remove(IN_POD_VARIABLE)
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

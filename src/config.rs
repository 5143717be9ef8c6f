//! Configuration: the schema of the TOML file of DESIGN.md — serde structs parsed strictly
//! (`deny_unknown_fields`, so a typo fails at start with the key's name), their documented
//! defaults, the settings derived from them (`DEFAULT_MAX_IN_FLIGHT`, `OutputLimits`,
//! `RequestLimits`), and `validate()`, one check per section, rejecting values that would
//! make the proxy or a dependency misbehave.
//!
//! Secrets and TLS material are not in the file: it names where they are (`SecretSetting`:
//! the key and the file or variable; the `tls_*` paths), and `credentials` reads them.
//! This module reads nothing but the config file itself, and imports only the layers below
//! it (`protocol`): never `secret`, `tls`, `credentials`, or anything that uses the config
//! (settings flow down).

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::command::rules::Rules;
use crate::protocol::RequestLimits;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read config file {path} (given with --config): {error}; in Kubernetes, mount \
         the ConfigMap holding it as a directory on the file's directory"
    )]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: Listen,
    pub client: Option<Client>,
    pub upstream: Upstream,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub shutdown: Shutdown,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub secrets: SecretsWatch,
    #[serde(default)]
    pub runtime: Runtime,
    /// The file this config was read from (`Config::load`), for the start-up log line.
    /// Not a key: private, so that it cannot be set from the file or mistaken for one.
    #[serde(skip)]
    loaded_from: Option<PathBuf>,
}

/// The async runtime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// Threads serving clients and upstream connections. 1 (the default) runs everything
    /// on one thread (tokio's current-thread scheduler), as Redis does: what clients send
    /// reaches Redis in the order it arrived; 0 means one per CPU the process may use.
    pub worker_threads: usize,
}

impl Default for Runtime {
    fn default() -> Runtime {
        Runtime { worker_threads: 1 }
    }
}

impl Runtime {
    /// The number of threads to start (0 resolved to the CPUs available, cgroup quotas
    /// included).
    pub fn threads(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    pub address: SocketAddr,
    pub max_clients: usize,
    pub allow_unauthenticated_remote: bool,
    /// The proxy's certificate chain and key (PEM): both set turn on TLS for clients.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates must chain to; set, a client without a
    /// valid certificate is refused at the handshake.
    pub tls_client_ca_file: Option<PathBuf>,
    /// Time a client has to complete the TLS handshake.
    pub tls_handshake_timeout_ms: u64,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            address: SocketAddr::from(([127, 0, 0, 1], 6379)),
            max_clients: 10_000,
            allow_unauthenticated_remote: false,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_handshake_timeout_ms: 10_000,
        }
    }
}

impl Listen {
    pub fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.tls_handshake_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    #[serde(default = "default_username")]
    pub username: String,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// After a client password file changes, the previous password is still accepted for
    /// this long (new AUTHs only: authenticated clients stay authenticated regardless).
    #[serde(default = "defaults::rotation_overlap_ms")]
    pub rotation_overlap_ms: u64,
    /// Redis ACL command rules for the `[client]` user (`+@all -@dangerous -flushall`);
    /// absent, `+@all` (see [`crate::policy`]).
    pub commands: Option<String>,
    /// Refuse to the `[client]` user every command Redis flags `write` (and scripts that
    /// are not `_RO`).
    #[serde(default)]
    pub read_only: bool,
    /// More users (`[[client.users]]`), each with its own password.
    #[serde(default)]
    pub users: Vec<ClientUser>,
    /// `AUTH` (or `HELLO … AUTH`) as a user configured here neither as the `[client]` user
    /// nor in `[[client.users]]` is checked against Redis, and the client then runs as that
    /// Redis user (see `Upstream::as_user`). Off: such an `AUTH` gets `WRONGPASS`.
    #[serde(default)]
    pub upstream_auth: bool,
}

/// One more user clients may authenticate as (`[[client.users]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientUser {
    pub username: String,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// Redis ACL command rules for this user; absent, `+@all`.
    pub commands: Option<String>,
    /// Refuse this user every command Redis flags `write` (and scripts not `_RO`).
    #[serde(default)]
    pub read_only: bool,
    /// This user's commands reach Redis as this ACL user (with `upstream_password_file`
    /// or `upstream_password_env`), over lanes and dedicated connections of its own.
    pub upstream_username: Option<String>,
    pub upstream_password_file: Option<PathBuf>,
    pub upstream_password_env: Option<String>,
}

/// A client user that reaches Redis as an identity of its own (`[[client.users]]
/// upstream_username`): the client user's name, the Redis user's, and where its password is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamIdentity {
    pub user: String,
    pub upstream_username: String,
    pub password: SecretSetting,
}

/// One client user's command policy as configured: the rules (parsed, not yet resolved
/// against the upstream's catalogue) and `read_only`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPolicy {
    pub username: String,
    pub rules: Rules,
    pub read_only: bool,
}

/// How secret files are watched for rotation (`[secrets]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsWatch {
    /// Watch the secret files' directories for changes (inotify on Linux).
    pub watch: bool,
    /// Also re-read every secret file this often, comparing contents; 0 disables polling.
    pub poll_interval_ms: u64,
    /// A change is taken once the file has been quiet, and read the same twice, this long
    /// apart (so a burst of updates ends in the last one, and a file being written is not
    /// taken half-way).
    pub debounce_ms: u64,
}

impl Default for SecretsWatch {
    fn default() -> Self {
        SecretsWatch {
            watch: true,
            poll_interval_ms: 5000,
            debounce_ms: 100,
        }
    }
}

impl SecretsWatch {
    /// `None` when polling is disabled.
    pub fn poll_interval(&self) -> Option<Duration> {
        (self.poll_interval_ms > 0).then(|| Duration::from_millis(self.poll_interval_ms))
    }
    pub fn debounce(&self) -> Duration {
        Duration::from_millis(self.debounce_ms)
    }
}

fn default_username() -> String {
    "default".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// How the upstream is found: one server (`standalone`), or the master of
    /// `master_name` as the Sentinels at `address`/`addresses` say (`sentinel`).
    #[serde(default)]
    pub mode: Mode,
    /// `host:port`, `redis://host:port` or `rediss://host:port` (TLS); resolved at every
    /// connect, so a Service name follows its endpoints. In sentinel mode: a Sentinel.
    #[serde(default)]
    pub address: String,
    /// More addresses of the same kind (sentinel mode: the other Sentinels), tried in order
    /// after `address`.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Sentinel mode: the name the Sentinels monitor the master under.
    pub master_name: Option<String>,
    /// Sentinel mode: the Sentinels' own credentials (Sentinel's `requirepass`/ACL user),
    /// when they ask for any.
    pub sentinel_username: Option<String>,
    pub sentinel_password_file: Option<PathBuf>,
    pub sentinel_password_env: Option<String>,
    /// TLS to the upstream (also turned on by a `rediss://` address).
    #[serde(default)]
    pub tls: bool,
    /// CA bundle (PEM) the server's certificate must chain to; absent: the system roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate chain and key (PEM) for mutual TLS.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// The name the server's certificate is checked against (and sent as SNI); default:
    /// the address's host.
    pub tls_server_name: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    #[serde(default = "defaults::pool_size")]
    pub pool_size: u32,
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "defaults::pool_wait_timeout_ms")]
    pub pool_wait_timeout_ms: u64,
    #[serde(default = "defaults::command_timeout_ms")]
    pub command_timeout_ms: u64,
    #[serde(default = "defaults::reconnect_backoff_ms")]
    pub reconnect_backoff_ms: u64,
    #[serde(default = "defaults::reconnect_backoff_max_ms")]
    pub reconnect_backoff_max_ms: u64,
    #[serde(default = "defaults::max_pinned")]
    pub max_pinned: usize,
    /// Cluster mode: read-only commands with keys go to a replica of their slot's master
    /// (its master when no replica can answer). Replication is asynchronous, so a read may
    /// not see the client's own write yet.
    #[serde(default)]
    pub read_from_replicas: bool,
}

/// `[upstream] mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Standalone,
    Sentinel,
    Cluster,
}

impl fmt::Display for Mode {
    /// As written in the config.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Standalone => "standalone",
            Mode::Sentinel => "sentinel",
            Mode::Cluster => "cluster",
        })
    }
}

/// Whether `endpoint` is `host:port` with a host and a port from 1 to 65535 (an IPv6 host
/// in brackets); `Err` says what is wrong.
fn check_host_port(endpoint: &str) -> Result<(), &'static str> {
    if endpoint.contains('/') {
        return Err("a path is not allowed");
    }
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Err("the port is missing");
    };
    if host.is_empty() {
        return Err("the host is missing");
    }
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    if (host.contains(':') || host.starts_with('[') || host.ends_with(']')) && !bracketed {
        return Err("an IPv6 host must be in brackets");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("the port must be a number from 1 to 65535"),
        Ok(_) => Ok(()),
    }
}

/// An address as it may be printed — in the log, in `/readyz`, in a client's error reply:
/// credentials before an `@` (`redis://user:password@host:port`) become `***`.
///
/// `validate` refuses such an address in the config, so this is the guard for the paths
/// that do not come from there (an address a Sentinel or a cluster node hands out) and for
/// any path added later: every printed address goes through this one function.
pub fn redact_address(address: &str) -> Cow<'_, str> {
    let (scheme, rest) = match address.find("://") {
        Some(i) => address.split_at(i + 3),
        None => ("", address),
    };
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    match authority.rfind('@') {
        None => Cow::Borrowed(address),
        Some(at) => Cow::Owned(format!("{scheme}***{}", &rest[at..])),
    }
}

/// An address without its `redis://` / `rediss://` scheme: what is dialled.
fn strip_scheme(address: &str) -> &str {
    let address = address.trim();
    address
        .strip_prefix("rediss://")
        .or_else(|| address.strip_prefix("redis://"))
        .unwrap_or(address)
}

impl Upstream {
    /// The first address without its `redis://` / `rediss://` scheme: what is dialled.
    pub fn endpoint(&self) -> &str {
        self.seeds().next().unwrap_or("")
    }

    /// Every address (`address`, then `addresses`), schemes stripped.
    pub fn seeds(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&self.address)
            .chain(&self.addresses)
            .filter(|a| !a.trim().is_empty())
            .map(|a| strip_scheme(a))
    }

    fn raw_addresses(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&self.address)
            .chain(&self.addresses)
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
    }

    /// Every address as written (`address`, then `addresses`), redacted
    /// ([`redact_address`]) and joined with commas: for the start-up log line.
    pub fn printable_addresses(&self) -> String {
        let printed: Vec<Cow<'_, str>> = self.raw_addresses().map(redact_address).collect();
        printed.join(",")
    }

    /// Whether connections to the upstream use TLS.
    pub fn tls_enabled(&self) -> bool {
        self.tls || self.raw_addresses().any(|a| a.starts_with("rediss://"))
    }

    /// The host part of the endpoint (IPv6 brackets removed).
    pub fn host(&self) -> &str {
        let endpoint = self.endpoint();
        let host = endpoint.rsplit_once(':').map_or(endpoint, |(host, _)| host);
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }

    /// The name the server's TLS certificate is checked against.
    pub fn tls_name(&self) -> &str {
        self.tls_server_name
            .as_deref()
            .unwrap_or_else(|| self.host())
    }

    /// Where the upstream password is, if anywhere.
    pub fn password_source(&self) -> Result<Option<SecretSetting>, ConfigError> {
        source(
            "[upstream]",
            "password",
            &self.password_file,
            &self.password_env,
        )
    }

    /// Where the Sentinels' own password is, if anywhere (sentinel mode).
    pub fn sentinel_password_source(&self) -> Result<Option<SecretSetting>, ConfigError> {
        source(
            "[upstream]",
            "sentinel_password",
            &self.sentinel_password_file,
            &self.sentinel_password_env,
        )
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn pool_wait_timeout(&self) -> Duration {
        Duration::from_millis(self.pool_wait_timeout_ms)
    }
    /// `None` when disabled (0).
    pub fn command_timeout(&self) -> Option<Duration> {
        (self.command_timeout_ms > 0).then(|| Duration::from_millis(self.command_timeout_ms))
    }
    pub fn reconnect_backoff(&self) -> Duration {
        Duration::from_millis(self.reconnect_backoff_ms)
    }
    pub fn reconnect_backoff_max(&self) -> Duration {
        Duration::from_millis(self.reconnect_backoff_max_ms)
    }
}

mod defaults {
    pub fn pool_size() -> u32 {
        4
    }
    pub fn connect_timeout_ms() -> u64 {
        2000
    }
    pub fn pool_wait_timeout_ms() -> u64 {
        2000
    }
    pub fn command_timeout_ms() -> u64 {
        10_000
    }
    pub fn reconnect_backoff_ms() -> u64 {
        250
    }
    pub fn reconnect_backoff_max_ms() -> u64 {
        2000
    }
    pub fn max_pinned() -> usize {
        256
    }
    pub fn rotation_overlap_ms() -> u64 {
        60_000
    }
}

/// `[limits] max_in_flight` by default.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4096;

/// Redis's `client-output-buffer-limit pubsub`: over `hard` bytes pending, or over `soft`
/// for `soft_duration`, the client is disconnected.
#[derive(Debug, Clone, Copy)]
pub struct OutputLimits {
    pub hard: usize,
    pub soft: usize,
    pub soft_duration: std::time::Duration,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            hard: 32 * 1024 * 1024,
            soft: 8 * 1024 * 1024,
            soft_duration: std::time::Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_bulk_len: u64,
    pub query_buffer_limit: usize,
    pub unauthenticated_query_buffer_limit: usize,
    pub max_reply_depth: usize,
    /// Redis's `client-output-buffer-limit pubsub` (hard, soft, soft seconds): bounds what
    /// is buffered for a relayed (pub/sub, MONITOR, tracking) client that does not read.
    pub pubsub_output_hard_limit: usize,
    pub pubsub_output_soft_limit: usize,
    pub pubsub_output_soft_seconds: u64,
    /// Reply bytes a client may leave unread before it is closed (Redis's
    /// client-output-buffer-limit for normal clients, which is unlimited there; bounded
    /// here so a client that stops reading cannot grow the proxy or hold a shared lane).
    pub client_output_hard_limit: usize,
    /// Requests of one client that may be in flight at once: a pipeline is read and
    /// forwarded this many at a time, and the rest waits in the socket.
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let request = RequestLimits::default();
        Limits {
            max_bulk_len: request.max_bulk_len,
            query_buffer_limit: request.query_buffer_limit,
            unauthenticated_query_buffer_limit: request.unauthenticated_query_buffer_limit,
            max_reply_depth: 1_000_000,
            pubsub_output_hard_limit: 32 * 1024 * 1024,
            pubsub_output_soft_limit: 8 * 1024 * 1024,
            pubsub_output_soft_seconds: 60,
            client_output_hard_limit: 1024 * 1024 * 1024,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// The admin HTTP endpoint (`/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    pub address: SocketAddr,
    /// How often the readiness prober checks out an upstream connection and PINGs it.
    pub readiness_interval_ms: u64,
    /// Admin connections served at once; more are closed at accept.
    pub max_connections: usize,
    /// Time an admin connection has to send its request headers and receive the whole
    /// response; then it is closed.
    pub request_timeout_ms: u64,
    /// Serve `POST /quitquitquit` (from loopback peers only): it starts the same shutdown
    /// as SIGTERM, for a Kubernetes Job whose application tells its sidecar to exit.
    pub quitquitquit: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            address: SocketAddr::from(([127, 0, 0, 1], 9121)),
            readiness_interval_ms: 1000,
            max_connections: 16,
            request_timeout_ms: 5000,
            quitquitquit: false,
        }
    }
}

impl Metrics {
    pub fn readiness_interval(&self) -> Duration {
        Duration::from_millis(self.readiness_interval_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// What happens on SIGTERM/SIGINT (see `shutdown`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shutdown {
    /// After the signal, `/readyz` answers 503 but the proxy goes on serving (and accepting)
    /// for this long while clients are connected, so that the application can finish and
    /// Kubernetes can take the pod out of its endpoints first.
    pub drain_delay_ms: u64,
    /// Wait the whole `drain_delay_ms` even with no client connected. Off, the delay ends
    /// as soon as no client is connected (at once if none was): a native sidecar is stopped
    /// after the application has exited, so nobody is left to wait for. On, for the
    /// pre-1.29 layout, where the application gets SIGTERM at the same moment and may
    /// still connect during its own shutdown.
    pub drain_delay_always: bool,
    /// Then the listener closes and clients are closed as they go idle; those still busy
    /// after this long are dropped and the process exits.
    pub grace_period_ms: u64,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            drain_delay_ms: 5000,
            drain_delay_always: false,
            grace_period_ms: 20_000,
        }
    }
}

impl Shutdown {
    /// The largest `drain_delay_ms + grace_period_ms` accepted: a typo guard. Keep the sum
    /// below the pod's `terminationGracePeriodSeconds` (30 s by default in Kubernetes).
    pub const MAX_TOTAL_MS: u64 = 300_000;

    pub fn drain_delay(&self) -> Duration {
        Duration::from_millis(self.drain_delay_ms)
    }
    pub fn grace_period(&self) -> Duration {
        Duration::from_millis(self.grace_period_ms)
    }
}

/// Logging. `RUST_LOG`, when set, overrides `level`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A level (`error`, `warn`, `info`, `debug`, `trace`, `off`), or a comma-separated list
    /// of `target=level` directives with an optional bare default level, as in `RUST_LOG`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// Checks a `[log] level` value: every comma-separated directive is a level name or
/// `target=level`. Stricter than `RUST_LOG` (where a bare word is a target), so that a
/// typo such as `inf` is an error instead of silence.
fn check_log_level(level: &str) -> Result<(), String> {
    if level.trim().is_empty() {
        return Err("[log] level is empty".to_owned());
    }
    for directive in level.split(',').map(str::trim) {
        let level_part = match directive.rsplit_once('=') {
            Some((target, lvl)) if !target.is_empty() => lvl,
            _ => directive,
        };
        if !LEVELS.contains(&level_part.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "[log] level: `{directive}` is not a level ({}) or `target=level`",
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(|_| ())
        .map_err(|e| format!("[log] level `{level}`: {e}"))
}

/// Where a secret is read from, as the config names it (`*_file` or `*_env`). Reading it is
/// `secret`'s job (`SecretSetting::load` there); the config only says where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::File(path) => write!(f, "file {}", path.display()),
            SecretSource::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// A secret as the config names it: where it is, and the key that says so
/// (`[upstream] password_file`), so that every message about it names that key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSetting {
    /// The section and key, as an operator finds them in the file: `[upstream]
    /// password_file`, ``[[client.users]] `app` password_env``.
    pub key: String,
    pub source: SecretSource,
}

impl fmt::Display for SecretSetting {
    /// The key and the path or variable name (never a value): `[upstream] password_file
    /// /var/run/secrets/redis/password`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            SecretSource::File(path) => write!(f, "{} {}", self.key, path.display()),
            SecretSource::Env(name) => write!(f, "{} {name}", self.key),
        }
    }
}

/// The one place a password is named: `<prefix>_file` or `<prefix>_env` (not both) of
/// `section` (written as in the file: `[upstream]`); `None` when neither is set.
fn source(
    section: &str,
    prefix: &str,
    file: &Option<PathBuf>,
    env: &Option<String>,
) -> Result<Option<SecretSetting>, ConfigError> {
    let setting = |kind: &str, source| SecretSetting {
        key: format!("{section} {prefix}_{kind}"),
        source,
    };
    match (file, env) {
        (Some(_), Some(_)) => invalid(format!(
            "{section} sets both {prefix}_file and {prefix}_env; choose one"
        )),
        (Some(path), None) => Ok(Some(setting("file", SecretSource::File(path.clone())))),
        (None, Some(name)) => Ok(Some(setting("env", SecretSource::Env(name.clone())))),
        (None, None) => Ok(None),
    }
}

impl Client {
    /// Every client user and where its password is: the `[client]` keys' user first (when
    /// it has a password), then `[[client.users]]`. Names must be distinct and not empty.
    pub fn sources(&self) -> Result<Vec<(String, SecretSetting)>, ConfigError> {
        let mut users = Vec::new();
        match source(
            "[client]",
            "password",
            &self.password_file,
            &self.password_env,
        )? {
            Some(s) => users.push((self.username.clone(), s)),
            None if self.username != "default" => {
                return invalid("[client] username needs password_file or password_env");
            }
            None => {}
        }
        for user in &self.users {
            let section = format!("[[client.users]] `{}`", user.username);
            let Some(s) = source(
                &section,
                "password",
                &user.password_file,
                &user.password_env,
            )?
            else {
                return invalid(format!("{section} needs password_file or password_env"));
            };
            users.push((user.username.clone(), s));
        }
        for (i, (name, _)) in users.iter().enumerate() {
            if name.is_empty() || name.contains(char::is_whitespace) {
                return invalid(format!(
                    "[client] user name `{name}` is empty or contains whitespace"
                ));
            }
            if users[..i].iter().any(|(other, _)| other == name) {
                return invalid(format!("[client] user `{name}` is configured twice"));
            }
        }
        Ok(users)
    }

    /// The command policy of every user that has one (`commands` or `read_only` set):
    /// the `[client]` user's (only when it has a password: otherwise there is no such
    /// user), then `[[client.users]]`. Rule syntax errors name the key and the user.
    pub fn policies(&self) -> Result<Vec<UserPolicy>, ConfigError> {
        let own = self.password_file.is_some() || self.password_env.is_some();
        if !own && (self.commands.is_some() || self.read_only) {
            return invalid(
                "[client] commands and read_only apply to the [client] user, which needs \
                 password_file or password_env",
            );
        }
        let own = own.then(|| {
            (
                "[client]".to_owned(),
                &self.username,
                &self.commands,
                self.read_only,
            )
        });
        let others = self.users.iter().map(|u| {
            (
                format!("[[client.users]] `{}`", u.username),
                &u.username,
                &u.commands,
                u.read_only,
            )
        });
        let mut policies = Vec::new();
        for (section, username, commands, read_only) in own.into_iter().chain(others) {
            let rules = match commands {
                Some(text) => Rules::parse(text).map_err(|e| {
                    ConfigError::Invalid(format!("{section} commands (user `{username}`): {e}"))
                })?,
                None => Rules::default(),
            };
            if commands.is_some() || read_only {
                policies.push(UserPolicy {
                    username: username.clone(),
                    rules,
                    read_only,
                });
            }
        }
        Ok(policies)
    }

    /// The `[[client.users]]` that reach Redis as an ACL user of their own: both
    /// `upstream_username` and one of `upstream_password_file`/`_env` are needed.
    pub fn identities(&self) -> Result<Vec<UpstreamIdentity>, ConfigError> {
        let mut identities = Vec::new();
        for user in &self.users {
            let section = format!("[[client.users]] `{}`", user.username);
            let password = source(
                &section,
                "upstream_password",
                &user.upstream_password_file,
                &user.upstream_password_env,
            )?;
            match (&user.upstream_username, password) {
                (None, None) => {}
                (Some(name), Some(password)) => {
                    if name.is_empty()
                        || name.contains(|c: char| c.is_whitespace() || c.is_control())
                    {
                        return invalid(format!(
                            "{section} upstream_username is empty or contains whitespace"
                        ));
                    }
                    identities.push(UpstreamIdentity {
                        user: user.username.clone(),
                        upstream_username: name.clone(),
                        password,
                    });
                }
                (Some(_), None) => {
                    return invalid(format!(
                        "{section} upstream_username needs upstream_password_file or \
                         upstream_password_env"
                    ));
                }
                (None, Some(_)) => {
                    return invalid(format!(
                        "{section} upstream_password_file/upstream_password_env need \
                         upstream_username (the Redis ACL user they log in as)"
                    ));
                }
            }
        }
        Ok(identities)
    }
}

/// The largest poll interval and rotation overlap accepted (one day): a typo guard.
const MAX_SECRET_MS: u64 = 86_400_000;

impl std::str::FromStr for Config {
    type Err = ConfigError;

    /// Parses and validates a config; secrets are not read (see `credentials::Secrets::load`).
    fn from_str(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`; secrets are not read.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let mut config: Config = text.parse()?;
        config.loaded_from = Some(path.to_owned());
        Ok(config)
    }

    /// The file the config was read from; `None` when it was parsed from a string.
    pub fn loaded_from(&self) -> Option<&Path> {
        self.loaded_from.as_deref()
    }

    pub fn request_limits(&self) -> RequestLimits {
        RequestLimits {
            max_bulk_len: self.limits.max_bulk_len,
            query_buffer_limit: self.limits.query_buffer_limit,
            unauthenticated_query_buffer_limit: self.limits.unauthenticated_query_buffer_limit,
        }
    }

    /// The output bounds for relayed clients.
    pub fn output_limits(&self) -> OutputLimits {
        OutputLimits {
            hard: self.limits.pubsub_output_hard_limit,
            soft: self.limits.pubsub_output_soft_limit,
            soft_duration: Duration::from_secs(self.limits.pubsub_output_soft_seconds),
        }
    }
}

// Validation: one function per section (or per concern of a large section). Each error
// names its section and key.

/// `Err(ConfigError::Invalid(message))`.
fn invalid<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid(message.into()))
}

impl Config {
    /// Checks every section. The first problem found is the error; the calls below are in
    /// the order problems are reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(client) = &self.client {
            client.validate()?;
            if self.upstream.mode == Mode::Cluster
                && (client.upstream_auth
                    || client.users.iter().any(|u| u.upstream_username.is_some()))
            {
                // Each such identity would need lanes to every node: not built yet.
                return invalid(
                    "[[client.users]] upstream_username and [client] upstream_auth are not \
                     supported in cluster mode yet",
                );
            }
        }
        self.upstream.validate_credentials()?;
        self.validate_exposure()?;
        self.upstream.validate_addresses()?;
        self.upstream.validate_mode()?;
        self.upstream.validate_tls()?;
        self.listen.validate()?;
        self.upstream.validate_pool()?;
        self.limits.validate_sizes()?;
        self.runtime.validate()?;
        self.limits.validate_counts()?;
        self.metrics.validate(&self.listen)?;
        self.shutdown.validate()?;
        self.validate_rotation()?;
        check_log_level(&self.log.level).map_err(ConfigError::Invalid)
    }

    /// A listener beyond loopback needs a way to authenticate clients, or an explicit
    /// opt-in: the proxy adds the upstream credentials to whatever reaches it.
    fn validate_exposure(&self) -> Result<(), ConfigError> {
        // Verified client certificates authenticate clients too.
        if self.client.is_none()
            && self.listen.tls_client_ca_file.is_none()
            && !self.listen.address.ip().is_loopback()
            && !self.listen.allow_unauthenticated_remote
        {
            return invalid(
                "[listen] address is not loopback and there is no [client] password: anyone who \
                 reaches it would use the upstream credentials; set a [client] password, \
                 [listen] tls_client_ca_file, or allow_unauthenticated_remote = true",
            );
        }
        Ok(())
    }

    /// `[secrets]` and `[client] rotation_overlap_ms`: typo guards.
    fn validate_rotation(&self) -> Result<(), ConfigError> {
        if self.secrets.poll_interval_ms > MAX_SECRET_MS
            || self.secrets.debounce_ms > 60_000
            || self
                .client
                .as_ref()
                .is_some_and(|c| c.rotation_overlap_ms > MAX_SECRET_MS)
        {
            return invalid(
                "[secrets] poll_interval_ms and [client] rotation_overlap_ms must be at most \
                 86400000 (one day), [secrets] debounce_ms at most 60000",
            );
        }
        Ok(())
    }
}

impl Client {
    /// `[client]`: the checks of `sources`, and at least one user.
    fn validate(&self) -> Result<(), ConfigError> {
        let sources = self.sources()?;
        self.policies()?;
        self.identities()?;
        if sources.is_empty() {
            return invalid(
                "[client] needs password_file or password_env, or [[client.users]] \
                 (or leave the section out)",
            );
        }
        Ok(())
    }
}

impl Upstream {
    /// `[upstream]` password and user name.
    fn validate_credentials(&self) -> Result<(), ConfigError> {
        self.password_source()?;
        if self.username.is_some() && self.password_file.is_none() && self.password_env.is_none() {
            return invalid("[upstream] username needs password_file or password_env");
        }
        Ok(())
    }

    /// `[upstream] address`/`addresses`: at least one, each `host:port` with an optional
    /// scheme, and the schemes and `tls` agree.
    fn validate_addresses(&self) -> Result<(), ConfigError> {
        if self.raw_addresses().next().is_none() {
            return invalid("[upstream] address is empty");
        }
        for (raw, endpoint) in self.raw_addresses().zip(self.seeds()) {
            // First, and without echoing the address: it may hold a password.
            if endpoint.contains('@') {
                return invalid(
                    "[upstream] address must not carry credentials (user:password@host): \
                     give the password with [upstream] password_file or password_env, and \
                     the user with [upstream] username",
                );
            }
            if let Err(why) = check_host_port(endpoint) {
                return invalid(format!(
                    "[upstream] address `{raw}`: {why}; expected host:port, \
                     redis://host:port or rediss://host:port (IPv6 in brackets)"
                ));
            }
        }
        let schemes = self.raw_addresses().filter(|a| a.contains("://"));
        let tls_schemes = self
            .raw_addresses()
            .filter(|a| a.starts_with("rediss://"))
            .count();
        if tls_schemes > 0 && tls_schemes != schemes.count() {
            return invalid("[upstream] addresses mix redis:// and rediss://");
        }
        if self.tls && self.raw_addresses().any(|a| a.starts_with("redis://")) {
            return invalid(
                "[upstream] tls = true contradicts a redis:// address; use rediss:// or host:port",
            );
        }
        Ok(())
    }

    /// `[upstream] mode` and the keys that only make sense in some modes.
    fn validate_mode(&self) -> Result<(), ConfigError> {
        self.sentinel_password_source()?;
        if self.mode != Mode::Standalone && self.tls_enabled() && self.tls_server_name.is_none() {
            return invalid(
                "[upstream] TLS in sentinel or cluster mode needs tls_server_name: the \
                 servers' addresses come from the Sentinels or the cluster and can change",
            );
        }
        if self.read_from_replicas && self.mode != Mode::Cluster {
            return invalid(
                "[upstream] read_from_replicas needs mode = \"cluster\" (a standalone or \
                 Sentinel upstream is one master: there is no replica to read from)",
            );
        }
        let sentinel_keys = self.master_name.is_some()
            || self.sentinel_username.is_some()
            || self.sentinel_password_file.is_some()
            || self.sentinel_password_env.is_some();
        match self.mode {
            Mode::Standalone if self.raw_addresses().count() > 1 => invalid(
                "[upstream] a standalone upstream has one address; several are for \
                 mode = \"sentinel\" or \"cluster\"",
            ),
            Mode::Standalone | Mode::Cluster if sentinel_keys => {
                invalid("[upstream] master_name and sentinel_* keys need mode = \"sentinel\"")
            }
            Mode::Standalone | Mode::Cluster => Ok(()),
            Mode::Sentinel => self.validate_sentinel(),
        }
    }

    /// Sentinel mode: the master's name, and the Sentinels' own credentials.
    fn validate_sentinel(&self) -> Result<(), ConfigError> {
        if self
            .master_name
            .as_deref()
            .is_none_or(|n| n.trim().is_empty())
        {
            return invalid("[upstream] mode = \"sentinel\" needs master_name");
        }
        if self.sentinel_username.is_some()
            && self.sentinel_password_file.is_none()
            && self.sentinel_password_env.is_none()
        {
            return invalid(
                "[upstream] sentinel_username needs sentinel_password_file or \
                 sentinel_password_env",
            );
        }
        Ok(())
    }

    /// `[upstream] tls_*`: only with TLS on, certificate and key together, a name if set.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let tls_keys = self.tls_ca_file.is_some()
            || self.tls_cert_file.is_some()
            || self.tls_key_file.is_some()
            || self.tls_server_name.is_some();
        if tls_keys && !self.tls_enabled() {
            return invalid(
                "[upstream] has tls_* keys but TLS is off; set tls = true or use a rediss:// \
                 address",
            );
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return invalid("[upstream] tls_cert_file and tls_key_file go together: set both");
        }
        if self
            .tls_server_name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return invalid("[upstream] tls_server_name is empty");
        }
        Ok(())
    }

    /// `[upstream]` pool sizes and timeouts: values a dependency would reject or hang on.
    fn validate_pool(&self) -> Result<(), ConfigError> {
        if self.pool_size == 0 {
            return invalid("[upstream] pool_size must be at least 1");
        }
        if self.max_pinned == 0 || self.max_pinned > 65_535 {
            return invalid("[upstream] max_pinned must be between 1 and 65535");
        }
        if self.connect_timeout_ms == 0 || self.pool_wait_timeout_ms == 0 {
            return invalid(
                "[upstream] connect_timeout_ms and pool_wait_timeout_ms must be at least 1",
            );
        }
        Ok(())
    }
}

impl Listen {
    /// `[listen]`: TLS files together, client certificates only with TLS, and non-zero
    /// bounds.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return invalid("[listen] tls_cert_file and tls_key_file go together: set both");
        }
        if self.tls_client_ca_file.is_some() && self.tls_cert_file.is_none() {
            return invalid(
                "[listen] tls_client_ca_file needs tls_cert_file and tls_key_file (TLS for clients)",
            );
        }
        if self.tls_handshake_timeout_ms == 0 {
            return invalid("[listen] tls_handshake_timeout_ms must be at least 1");
        }
        if self.max_clients == 0 {
            return invalid("[listen] max_clients must be at least 1");
        }
        Ok(())
    }
}

impl Limits {
    /// `[limits]` byte bounds: not below what Redis itself allows.
    fn validate_sizes(&self) -> Result<(), ConfigError> {
        if self.max_bulk_len < 1024 * 1024 {
            return invalid("[limits] max_bulk_len must be at least 1048576 (as in Redis)");
        }
        if self.query_buffer_limit < 1024 * 1024
            || self.unauthenticated_query_buffer_limit < 64 * 1024
        {
            return invalid(
                "[limits] query_buffer_limit must be at least 1048576 and \
                 unauthenticated_query_buffer_limit at least 65536",
            );
        }
        if self.pubsub_output_hard_limit == 0
            || self.pubsub_output_soft_limit > self.pubsub_output_hard_limit
        {
            return invalid(
                "[limits] pubsub_output_hard_limit must be at least 1 and not below \
                 pubsub_output_soft_limit",
            );
        }
        if self.client_output_hard_limit < 64 * 1024 {
            return invalid("[limits] client_output_hard_limit must be at least 65536");
        }
        Ok(())
    }

    /// `[limits]` counts: requests in flight and reply nesting.
    fn validate_counts(&self) -> Result<(), ConfigError> {
        if self.max_in_flight == 0 || self.max_in_flight > 1_000_000 {
            return invalid("[limits] max_in_flight must be between 1 and 1000000");
        }
        if self.max_reply_depth == 0 {
            return invalid("[limits] max_reply_depth must be at least 1");
        }
        Ok(())
    }
}

impl Runtime {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.worker_threads > 1024 {
            return invalid("[runtime] worker_threads must be at most 1024 (0: one per CPU)");
        }
        Ok(())
    }
}

impl Metrics {
    /// `[metrics]`: an address of its own, and non-zero intervals and bounds.
    fn validate(&self, listen: &Listen) -> Result<(), ConfigError> {
        if self.address == listen.address {
            return invalid("[metrics] address must differ from [listen] address");
        }
        if self.readiness_interval_ms == 0
            || self.max_connections == 0
            || self.request_timeout_ms == 0
        {
            return invalid(
                "[metrics] readiness_interval_ms, max_connections and request_timeout_ms \
                 must be at least 1",
            );
        }
        Ok(())
    }
}

impl Shutdown {
    /// `[shutdown]`: the whole drain at most `MAX_TOTAL_MS`.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.drain_delay_ms.saturating_add(self.grace_period_ms) > Shutdown::MAX_TOTAL_MS {
            return invalid(format!(
                "[shutdown] drain_delay_ms + grace_period_ms must be at most {} (and should \
                 stay below the pod's terminationGracePeriodSeconds, 30 s by default)",
                Shutdown::MAX_TOTAL_MS
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn upstream_addresses_are_host_and_a_real_port() {
        for good in ["127.0.0.1:6379", "redis.example:1", "[::1]:65535", "h:6379"] {
            assert_eq!(check_host_port(good), Ok(()), "{good}");
        }
        for bad in [
            "127.0.0.1:abc",
            "127.0.0.1:99999",
            "127.0.0.1:",
            ":6390",
            "127.0.0.1:0",
            "127.0.0.1",
            "::1:6379",
            "[]:6379",
            "h:6379/0",
        ] {
            assert!(check_host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_password_in_the_address_is_refused_without_being_echoed() {
        let text = "[upstream]\naddress = \"redis://:s3cretpw@127.0.0.1:6390\"\n";
        let error = Config::from_str(text).unwrap_err().to_string();
        assert!(error.contains("password_file"), "{error}");
        assert!(!error.contains("s3cretpw"), "{error}");
        let text = "[upstream]\naddress = \"127.0.0.1:6390\"\n\
                    addresses = [\"rediss://user:hunter2@h:1\"]\n";
        let error = Config::from_str(text).unwrap_err().to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }

    use super::*;
    use std::str::FromStr;

    #[test]
    fn printed_addresses_never_carry_credentials() {
        for (address, printed) in [
            ("127.0.0.1:6379", "127.0.0.1:6379"),
            ("redis://:s3cret@h:1", "redis://***@h:1"),
            ("rediss://user:p@ss@h:1/0", "rediss://***@h:1/0"),
            ("u:pw@[::1]:6379", "***@[::1]:6379"),
            ("redis://h:1/a@b", "redis://h:1/a@b"),
        ] {
            assert_eq!(redact_address(address), printed, "{address}");
        }
        let upstream = Config::from_str(
            "[upstream]\nmode = \"cluster\"\naddress = \"a:1\"\naddresses = [\"redis://b:2\"]\n",
        )
        .unwrap()
        .upstream;
        assert_eq!(upstream.printable_addresses(), "a:1,redis://b:2");
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../config.toml");
        let config = Config::from_str(text).expect("config.toml must stay valid");
        assert_eq!(config.listen.address.to_string(), "127.0.0.1:6379");
        assert_eq!(config.upstream.pool_size, 4);
        assert!(config.client.is_none());
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = Config::from_str("[upstream]\naddress = \"127.0.0.1:6380\"\n").unwrap();
        assert_eq!(config.listen.max_clients, 10_000);
        assert_eq!(config.limits.max_bulk_len, 512 * 1024 * 1024);
        assert_eq!(config.limits.max_in_flight, 4096);
        assert!(config.runtime.threads() >= 1);
        assert_eq!(
            config.upstream.reconnect_backoff(),
            Duration::from_millis(250)
        );
        assert_eq!(
            config.upstream.reconnect_backoff_max(),
            Duration::from_secs(2)
        );
        assert_eq!(
            config.upstream.command_timeout(),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_str("[upstream]\naddress = \"x:1\"\npool_sise = 3\n").unwrap_err();
        assert!(err.to_string().contains("pool_sise"), "{err}");
        let err = Config::from_str("[upstream]\naddress = \"x:1\"\n[extra]\n").unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }

    #[test]
    fn rejects_bad_values() {
        for text in [
            "[upstream]\naddress = \"x:1\"\npool_size = 0\n",
            "[upstream]\naddress = \"x:1\"\npassword_file = \"/a\"\npassword_env = \"B\"\n",
            "[client]\nusername = \"u\"\n[upstream]\naddress = \"x:1\"\n",
            "[listen]\naddress = \"0.0.0.0:6379\"\n[upstream]\naddress = \"x:1\"\n",
            "[upstream]\naddress = \"x:1\"\n[limits]\nmax_in_flight = 0\n",
            "[upstream]\naddress = \"x:1\"\n[runtime]\nworker_threads = 5000\n",
        ] {
            assert!(Config::from_str(text).is_err(), "{text}");
        }
        let remote = "[listen]\naddress = \"0.0.0.0:6379\"\nallow_unauthenticated_remote = true\n\
                      [upstream]\naddress = \"x:1\"\n";
        assert!(Config::from_str(remote).is_ok());
    }

    const UPSTREAM: &str = "[upstream]\naddress = \"x:1\"\n";

    #[test]
    fn upstream_modes() {
        let sentinel = "[upstream]\nmode = \"sentinel\"\naddress = \"s1:26379\"\n\
                        addresses = [\"s2:26379\", \"redis://s3:26379\"]\n\
                        master_name = \"mymaster\"\n";
        let config = Config::from_str(sentinel).expect("sentinel config");
        assert_eq!(config.upstream.mode, Mode::Sentinel);
        let seeds: Vec<&str> = config.upstream.seeds().collect();
        assert_eq!(seeds, ["s1:26379", "s2:26379", "s3:26379"]);
        assert!(!config.upstream.read_from_replicas, "off by default");
        let replicas = "[upstream]\nmode = \"cluster\"\naddress = \"n1:7000\"\n\
                        read_from_replicas = true\n";
        let config = Config::from_str(replicas).expect("cluster config reading from replicas");
        assert!(config.upstream.read_from_replicas);
        // Addresses alone are enough.
        let only_list = "[upstream]\nmode = \"sentinel\"\naddresses = [\"s2:26379\"]\n\
                         master_name = \"m\"\n";
        assert!(Config::from_str(only_list).is_ok());
        for (text, complaint) in [
            (
                "[upstream]\nmode = \"sentinel\"\naddress = \"s:1\"\n",
                "needs master_name",
            ),
            (
                "[upstream]\naddress = \"a:1\"\naddresses = [\"b:1\"]\n",
                "one address",
            ),
            (
                "[upstream]\naddress = \"a:1\"\nmaster_name = \"m\"\n",
                "need mode",
            ),
            (
                "[upstream]\nmode = \"cluster\"\naddress = \"a:1\"\nmaster_name = \"m\"\n",
                "need mode",
            ),
            (
                "[upstream]\nmode = \"sentinel\"\naddress = \"rediss://s:1\"\n\
                 master_name = \"m\"\n",
                "tls_server_name",
            ),
            (
                "[upstream]\nmode = \"sentinel\"\naddress = \"s:1\"\nmaster_name = \"m\"\n\
                 sentinel_username = \"u\"\n",
                "sentinel_username needs",
            ),
            (
                "[upstream]\nmode = \"primary\"\naddress = \"a:1\"\n",
                "mode",
            ),
            ("[upstream]\naddresses = []\n", "address is empty"),
            (
                "[upstream]\naddress = \"a:1\"\nread_from_replicas = true\n",
                "read_from_replicas needs mode = \"cluster\"",
            ),
            (
                "[upstream]\nmode = \"sentinel\"\naddress = \"s:1\"\nmaster_name = \"m\"\n\
                 read_from_replicas = true\n",
                "read_from_replicas needs mode = \"cluster\"",
            ),
            (
                "[upstream]\nmode = \"cluster\"\naddress = \"a:1\"\nread_from_replicas = 1\n",
                "read_from_replicas",
            ),
        ] {
            let error = Config::from_str(text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains(complaint), "{text}: {error}");
        }
    }

    #[test]
    fn tls_settings() {
        let config =
            Config::from_str("[upstream]\naddress = \"rediss://cache.example:6380\"\n").unwrap();
        assert!(config.upstream.tls_enabled());
        assert_eq!(config.upstream.endpoint(), "cache.example:6380");
        assert_eq!(config.upstream.tls_name(), "cache.example");
        let config = Config::from_str(
            "[upstream]\naddress = \"[::1]:6380\"\ntls = true\ntls_server_name = \"r\"\n",
        )
        .unwrap();
        assert_eq!(config.upstream.host(), "::1");
        assert_eq!(config.upstream.tls_name(), "r");
        for text in [
            // tls_* keys without TLS.
            "[upstream]\naddress = \"x:1\"\ntls_ca_file = \"/ca\"\n",
            "[upstream]\naddress = \"redis://x:1\"\ntls = true\n",
            "[upstream]\naddress = \"x:1\"\ntls = true\ntls_cert_file = \"/c\"\n",
            "[upstream]\naddress = \"rediss://x\"\n",
            "[listen]\ntls_key_file = \"/k\"\n[upstream]\naddress = \"x:1\"\n",
            "[listen]\ntls_client_ca_file = \"/ca\"\n[upstream]\naddress = \"x:1\"\n",
        ] {
            assert!(Config::from_str(text).is_err(), "{text}");
        }
        // A verified client certificate is client authentication.
        let remote = "[listen]\naddress = \"0.0.0.0:6379\"\ntls_cert_file = \"/c\"\n\
                      tls_key_file = \"/k\"\ntls_client_ca_file = \"/ca\"\n\
                      [upstream]\naddress = \"x:1\"\n";
        assert!(Config::from_str(remote).is_ok());
        // A missing file is found when it is read: see `credentials`.
    }

    #[test]
    fn admin_shutdown_and_log_defaults() {
        let config = Config::from_str(UPSTREAM).unwrap();
        assert_eq!(config.metrics.address.to_string(), "127.0.0.1:9121");
        assert_eq!(config.metrics.readiness_interval_ms, 1000);
        assert_eq!(config.metrics.max_connections, 16);
        assert_eq!(config.metrics.request_timeout_ms, 5000);
        assert_eq!(config.shutdown.drain_delay_ms, 5000);
        assert!(!config.shutdown.drain_delay_always);
        assert!(!config.metrics.quitquitquit);
        assert_eq!(config.shutdown.grace_period_ms, 20_000);
        assert_eq!(config.log.level, "info");
        assert_eq!(config.log.format, LogFormat::Text);
        // The defaults fit Kubernetes' default terminationGracePeriodSeconds (30 s).
        assert!(config.shutdown.drain_delay_ms + config.shutdown.grace_period_ms < 30_000);
        // config.toml shows every one of them at its default.
        let example = Config::from_str(include_str!("../config.toml")).unwrap();
        assert_eq!(
            format!("{:?}", example.metrics),
            format!("{:?}", config.metrics)
        );
        assert_eq!(
            format!("{:?}", example.shutdown),
            format!("{:?}", config.shutdown)
        );
        assert_eq!(format!("{:?}", example.log), format!("{:?}", config.log));
    }

    #[test]
    fn client_user_policies() {
        let text = format!(
            "[client]\npassword_file = \"/a\"\nread_only = true\n[[client.users]]\n\
             username = \"ops\"\npassword_file = \"/b\"\n[[client.users]]\n\
             username = \"report\"\npassword_file = \"/c\"\n\
             commands = \"+@all -@dangerous -flushall -config|set\"\n{UPSTREAM}"
        );
        let config = Config::from_str(&text).unwrap();
        let policies = config.client.as_ref().unwrap().policies().unwrap();
        // `ops` has neither key: no policy at all.
        assert_eq!(policies.len(), 2);
        assert_eq!(policies[0].username, "default");
        assert!(policies[0].read_only);
        assert_eq!(policies[0].rules, Rules::default());
        assert_eq!(policies[1].username, "report");
        assert!(!policies[1].read_only);
        assert_eq!(
            policies[1].rules.to_string(),
            "+@all -@dangerous -flushall -config|set"
        );
        for (bad, named) in [
            (
                "[client]\n[[client.users]]\nusername = \"r\"\npassword_file = \"/a\"\n\
                 commands = \"+@all ~*\"\n",
                "[[client.users]] `r` commands (user `r`): '~*' is not a command rule",
            ),
            (
                "[client]\npassword_file = \"/a\"\ncommands = \"+get get\"\n",
                "[client] commands (user `default`): Error in ACL SETUSER modifier 'get'",
            ),
            (
                "[client]\nread_only = true\n[[client.users]]\nusername = \"r\"\n\
                 password_file = \"/a\"\n",
                "[client] commands and read_only apply to the [client] user",
            ),
        ] {
            let error = Config::from_str(&format!("{bad}{UPSTREAM}"))
                .unwrap_err()
                .to_string();
            assert!(error.contains(named), "{error}");
        }
    }

    #[test]
    fn secrets_and_client_users() {
        let config = Config::from_str(UPSTREAM).unwrap();
        assert!(config.secrets.watch);
        assert_eq!(config.secrets.poll_interval(), Some(Duration::from_secs(5)));
        assert_eq!(config.secrets.debounce(), Duration::from_millis(100));
        let example = Config::from_str(include_str!("../config.toml")).unwrap();
        assert_eq!(
            format!("{:?}", example.secrets),
            format!("{:?}", config.secrets)
        );
        let text = format!(
            "[client]\npassword_file = \"/a\"\n[[client.users]]\nusername = \"app\"\n\
             password_env = \"B\"\n{UPSTREAM}[secrets]\npoll_interval_ms = 0\nwatch = false\n"
        );
        let config = Config::from_str(&text).unwrap();
        let client = config.client.as_ref().unwrap();
        assert_eq!(client.rotation_overlap_ms, 60_000);
        assert_eq!(client.users.len(), 1);
        assert_eq!(config.secrets.poll_interval(), None);
        // Users only, no [client] password of its own.
        let users_only = format!(
            "[client]\n[[client.users]]\nusername = \"app\"\npassword_file = \"/a\"\n{UPSTREAM}"
        );
        assert!(Config::from_str(&users_only).is_ok());
        for (bad, named) in [
            ("[client]\n", "password_file"),
            (
                "[client]\nusername = \"u\"\n[[client.users]]\nusername = \"a\"\npassword_file = \"/a\"\n",
                "username",
            ),
            (
                "[client]\npassword_file = \"/a\"\n[[client.users]]\nusername = \"default\"\npassword_file = \"/b\"\n",
                "twice",
            ),
            (
                "[client]\n[[client.users]]\nusername = \"a\"\n",
                "[[client.users]] `a` needs password_file",
            ),
            (
                "[client]\n[[client.users]]\nusername = \"\"\npassword_file = \"/a\"\n",
                "empty",
            ),
            (
                "[client]\n[[client.users]]\nusername = \"a\"\npassword_file = \"/a\"\nupstream_username = \"x\"\n",
                "`a` upstream_username needs upstream_password_file",
            ),
            (
                "[client]\n[[client.users]]\nusername = \"a\"\npassword_file = \"/a\"\nupstream_password_env = \"X\"\n",
                "need upstream_username",
            ),
            (
                "[client]\n[[client.users]]\nusername = \"a\"\npassword_file = \"/a\"\nupstream_username = \"x\"\nupstream_password_env = \"X\"\nupstream_password_file = \"/b\"\n",
                "sets both upstream_password_file and upstream_password_env",
            ),
            (
                "[client]\n[[client.users]]\nusername = \"a\"\npassword_file = \"/a\"\nkey = 1\n",
                "unknown field",
            ),
            (
                "[client]\npassword_file = \"/a\"\nrotation_overlap_ms = 86400001\n",
                "rotation_overlap_ms",
            ),
            (
                "[secrets]\npoll_interval_ms = 86400001\n",
                "poll_interval_ms",
            ),
            ("[secrets]\ndebounce_ms = 60001\n", "debounce_ms"),
            ("[secrets]\ninotify = true\n", "inotify"),
        ] {
            let text = if bad.starts_with("[secrets]") {
                format!("{UPSTREAM}{bad}")
            } else {
                format!("{bad}{UPSTREAM}")
            };
            let err = Config::from_str(&text).unwrap_err().to_string();
            assert!(err.contains(named), "{bad}: {err}");
        }
        let cluster = "[upstream]\nmode = \"cluster\"\naddress = \"127.0.0.1:7000\"\n";
        for client in [
            "[client]\npassword_file = \"/a\"\nupstream_auth = true\n",
            "[client]\n[[client.users]]\nusername = \"a\"\npassword_file = \"/a\"\n\
             upstream_username = \"x\"\nupstream_password_env = \"X\"\n",
        ] {
            let err = Config::from_str(&format!("{client}{cluster}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("not supported in cluster mode"), "{err}");
            Config::from_str(&format!("{client}{UPSTREAM}")).unwrap();
        }
    }

    #[test]
    fn log_settings_are_checked() {
        for ok in [
            "level = \"debug\"",
            "level = \"WARN\"",
            "level = \"info,redis_ambassador::upstream=debug\"",
            "level = \"off\"\nformat = \"json\"",
        ] {
            let text = format!("{UPSTREAM}[log]\n{ok}\n");
            assert!(Config::from_str(&text).is_ok(), "{ok}");
        }
        for (bad, named) in [
            ("level = \"inf\"", "inf"),
            ("level = \"\"", "level"),
            ("level = \"info,x=loud\"", "x=loud"),
            ("format = \"xml\"", "xml"),
            ("colour = true", "colour"),
        ] {
            let text = format!("{UPSTREAM}[log]\n{bad}\n");
            let err = Config::from_str(&text).unwrap_err().to_string();
            assert!(err.contains(named), "{bad}: {err}");
        }
    }

    #[test]
    fn admin_and_shutdown_bounds() {
        for bad in [
            "[metrics]\nreadiness_interval_ms = 0\n",
            "[metrics]\nmax_connections = 0\n",
            "[metrics]\nrequest_timeout_ms = 0\n",
            "[metrics]\naddress = \"127.0.0.1:6379\"\n",
            "[shutdown]\ndrain_delay_ms = 200000\ngrace_period_ms = 100001\n",
            "[shutdown]\ngrace_period_ms = 18446744073709551615\ndrain_delay_ms = 1\n",
            "[shutdown]\ngrace_ms = 1\n",
        ] {
            let text = format!("{UPSTREAM}{bad}");
            assert!(Config::from_str(&text).is_err(), "{bad}");
        }
        let edge = format!("{UPSTREAM}[shutdown]\ndrain_delay_ms = 0\ngrace_period_ms = 300000\n");
        let config = Config::from_str(&edge).unwrap();
        assert_eq!(config.shutdown.grace_period(), Duration::from_secs(300));
    }
}

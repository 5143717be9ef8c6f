//! The ambassador's TOML config as the tests write it: a typed mirror of the keys the
//! tests use, serialised with the `toml` crate, so no test assembles config text by hand.
//!
//! Every key is an `Option` and is left out of the file when `None`, so the proxy's own
//! default applies; a section whose keys are all unset is left out too. `[client]` is the
//! exception: its presence means "clients must authenticate", so it is an `Option` of
//! its own. This mirrors the proxy's config, it does not validate anything: a test that
//! wants a value the proxy rejects writes it here and expects the error.
//!
//! A config the typed value cannot express (an unknown key, a value of the wrong type)
//! starts from [`AmbassadorConfig::to_table`] and edits the TOML table.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The whole config file.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AmbassadorConfig {
    #[serde(skip_serializing_if = "is_default")]
    pub listen: Listen,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<Client>,
    /// Always written: the proxy requires `[upstream]`.
    pub upstream: Upstream,
    #[serde(skip_serializing_if = "is_default")]
    pub limits: Limits,
    #[serde(skip_serializing_if = "is_default")]
    pub metrics: Metrics,
    #[serde(skip_serializing_if = "is_default")]
    pub shutdown: Shutdown,
    #[serde(skip_serializing_if = "is_default")]
    pub secrets: Secrets,
    #[serde(skip_serializing_if = "is_default")]
    pub runtime: Runtime,
    #[serde(skip_serializing_if = "is_default")]
    pub log: Log,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// `[listen]`: where clients connect.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Listen {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_clients: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_unauthenticated_remote: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_handshake_timeout_ms: Option<u64>,
}

/// `[client]`: what clients must present.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Client {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_overlap_ms: Option<u64>,
    /// Redis ACL command rules for the `[client]` user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commands: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Unknown users' `AUTH` checked by Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_auth: Option<bool>,
    /// `[[client.users]]` (last: a TOML array of tables follows the plain keys).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<ClientUser>,
}

/// One `[[client.users]]` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ClientUser {
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Redis ACL command rules (`+@all -@dangerous -flushall`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commands: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// This user's own Redis identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_password_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_password_env: Option<String>,
}

/// `[upstream] mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamMode {
    Standalone,
    Sentinel,
    Cluster,
}

/// `[upstream]`: the real Redis, its credentials, TLS, pool and timeouts; Sentinel and
/// Cluster keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Upstream {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<UpstreamMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_password_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_password_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_wait_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_backoff_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_backoff_max_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pinned: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_from_replicas: Option<bool>,
}

/// `[limits]`: per-client bounds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bulk_len: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_buffer_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unauthenticated_query_buffer_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_reply_depth: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pubsub_output_hard_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pubsub_output_soft_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pubsub_output_soft_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_output_hard_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u64>,
}

/// `[metrics]`: the admin endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Metrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quitquitquit: Option<bool>,
}

/// `[shutdown]`: the drain on SIGTERM.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Shutdown {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_delay_always: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_period_ms: Option<u64>,
}

/// `[secrets]`: how secret files are watched for rotation.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Secrets {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debounce_ms: Option<u64>,
}

/// `[runtime]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Runtime {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
}

/// `[log] format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[log]` (`RUST_LOG`, when set, overrides `level`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Log {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,
}

impl AmbassadorConfig {
    /// A config in front of the upstream at `address` (`host:port` or a URL).
    pub fn new(upstream_address: &str) -> AmbassadorConfig {
        let mut config = AmbassadorConfig::default();
        config.upstream.address = Some(upstream_address.to_owned());
        config
    }

    /// `[listen] address` on 127.0.0.1:`port`.
    pub fn listen_on(mut self, port: u16) -> AmbassadorConfig {
        self.listen.address = Some(loopback(port));
        self
    }

    /// `[metrics] address` on 127.0.0.1:`port`.
    pub fn metrics_on(mut self, port: u16) -> AmbassadorConfig {
        self.metrics.address = Some(loopback(port));
        self
    }

    /// `[client]`, created (empty) if it is not there yet.
    pub fn client_mut(&mut self) -> &mut Client {
        self.client.get_or_insert_with(Client::default)
    }

    /// The TOML text.
    #[track_caller]
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| panic!("serialise {self:?}: {e}"))
    }

    /// The config as a TOML table, for a test that edits in what the types cannot hold.
    #[track_caller]
    pub fn to_table(&self) -> toml::Table {
        toml::Table::try_from(self).unwrap_or_else(|e| panic!("serialise {self:?}: {e}"))
    }

    /// Writes the TOML text to `path` and returns the path.
    #[track_caller]
    pub fn write(&self, path: &Path) -> PathBuf {
        fs::write(path, self.to_toml()).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path.to_owned()
    }
}

/// 127.0.0.1:`port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

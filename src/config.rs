//! Configuration: the TOML file of DESIGN.md, parsed strictly (`deny_unknown_fields`, so a
//! typo fails at start with the key's name), with documented defaults, and `validate()`
//! rejecting values that would make the proxy or a dependency misbehave. Secrets are not in
//! the file: it names where they are, and `load_secrets` reads them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::protocol::RequestLimits;
use crate::secret::{Secret, SecretError, SecretSource};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error(transparent)]
    Secret(#[from] SecretError),
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    pub address: SocketAddr,
    pub max_clients: usize,
    pub allow_unauthenticated_remote: bool,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            address: SocketAddr::from(([127, 0, 0, 1], 6379)),
            max_clients: 10_000,
            allow_unauthenticated_remote: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    #[serde(default = "default_username")]
    pub username: String,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
}

fn default_username() -> String {
    "default".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `host:port`; resolved at every connect, so a Service name follows its endpoints.
    pub address: String,
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
}

mod defaults {
    pub fn pool_size() -> u32 {
        8
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_bulk_len: u64,
    pub query_buffer_limit: usize,
    pub unauthenticated_query_buffer_limit: usize,
    pub max_reply_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let request = RequestLimits::default();
        Limits {
            max_bulk_len: request.max_bulk_len,
            query_buffer_limit: request.query_buffer_limit,
            unauthenticated_query_buffer_limit: request.unauthenticated_query_buffer_limit,
            max_reply_depth: 128,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    pub address: SocketAddr,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            address: SocketAddr::from(([127, 0, 0, 1], 9121)),
        }
    }
}

/// The secrets the config points at, read.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// The password clients must present; `None` means Redis's `nopass` semantics.
    pub client_password: Option<Secret>,
    pub upstream_password: Option<Secret>,
}

fn source(
    section: &str,
    file: &Option<PathBuf>,
    env: &Option<String>,
) -> Result<Option<SecretSource>, ConfigError> {
    match (file, env) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid(format!(
            "[{section}] sets both password_file and password_env; choose one"
        ))),
        (Some(path), None) => Ok(Some(SecretSource::File(path.clone()))),
        (None, Some(name)) => Ok(Some(SecretSource::Env(name.clone()))),
        (None, None) => Ok(None),
    }
}

impl std::str::FromStr for Config {
    type Err = ConfigError;

    /// Parses and validates a config; secrets are not read (see [`Config::load_secrets`]).
    fn from_str(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        text.parse()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: &str| Err(ConfigError::Invalid(msg.to_owned()));
        let client = match &self.client {
            Some(c) => source("client", &c.password_file, &c.password_env)?,
            None => None,
        };
        if self.client.is_some() && client.is_none() {
            return invalid(
                "[client] needs password_file or password_env (or leave the section out)",
            );
        }
        source(
            "upstream",
            &self.upstream.password_file,
            &self.upstream.password_env,
        )?;
        if self.upstream.username.is_some()
            && self.upstream.password_file.is_none()
            && self.upstream.password_env.is_none()
        {
            return invalid("[upstream] username needs password_file or password_env");
        }
        if client.is_none()
            && !self.listen.address.ip().is_loopback()
            && !self.listen.allow_unauthenticated_remote
        {
            return invalid(
                "[listen] address is not loopback and there is no [client] password: anyone who \
                 reaches it would use the upstream credentials; set a [client] password or \
                 allow_unauthenticated_remote = true",
            );
        }
        if self.upstream.address.trim().is_empty() {
            return invalid("[upstream] address is empty");
        }
        if self.listen.max_clients == 0 {
            return invalid("[listen] max_clients must be at least 1");
        }
        if self.upstream.pool_size == 0 {
            return invalid("[upstream] pool_size must be at least 1");
        }
        if self.upstream.connect_timeout_ms == 0 || self.upstream.pool_wait_timeout_ms == 0 {
            return invalid(
                "[upstream] connect_timeout_ms and pool_wait_timeout_ms must be at least 1",
            );
        }
        if self.limits.max_bulk_len < 1024 * 1024 {
            return invalid("[limits] max_bulk_len must be at least 1048576 (as in Redis)");
        }
        if self.limits.query_buffer_limit < 1024 * 1024
            || self.limits.unauthenticated_query_buffer_limit < 64 * 1024
        {
            return invalid(
                "[limits] query_buffer_limit must be at least 1048576 and \
                 unauthenticated_query_buffer_limit at least 65536",
            );
        }
        if self.limits.max_reply_depth == 0 {
            return invalid("[limits] max_reply_depth must be at least 1");
        }
        Ok(())
    }

    /// Reads the secrets the config names. Fails if one is missing or empty.
    pub fn load_secrets(&self) -> Result<Secrets, ConfigError> {
        let client_password = match &self.client {
            Some(c) => source("client", &c.password_file, &c.password_env)?
                .map(|s| s.load())
                .transpose()?,
            None => None,
        };
        let upstream_password = source(
            "upstream",
            &self.upstream.password_file,
            &self.upstream.password_env,
        )?
        .map(|s| s.load())
        .transpose()?;
        Ok(Secrets {
            client_password,
            upstream_password,
        })
    }

    pub fn request_limits(&self) -> RequestLimits {
        RequestLimits {
            max_bulk_len: self.limits.max_bulk_len,
            query_buffer_limit: self.limits.query_buffer_limit,
            unauthenticated_query_buffer_limit: self.limits.unauthenticated_query_buffer_limit,
        }
    }

    pub fn client_username(&self) -> &str {
        self.client
            .as_ref()
            .map_or("default", |c| c.username.as_str())
    }
}

impl Upstream {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../config.toml");
        let config = Config::from_str(text).expect("config.toml must stay valid");
        assert_eq!(config.listen.address.to_string(), "127.0.0.1:6379");
        assert_eq!(config.upstream.pool_size, 8);
        assert!(config.client.is_none());
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = Config::from_str("[upstream]\naddress = \"127.0.0.1:6380\"\n").unwrap();
        assert_eq!(config.listen.max_clients, 10_000);
        assert_eq!(config.limits.max_bulk_len, 512 * 1024 * 1024);
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
        ] {
            assert!(Config::from_str(text).is_err(), "{text}");
        }
        let remote = "[listen]\naddress = \"0.0.0.0:6379\"\nallow_unauthenticated_remote = true\n\
                      [upstream]\naddress = \"x:1\"\n";
        assert!(Config::from_str(remote).is_ok());
    }
}

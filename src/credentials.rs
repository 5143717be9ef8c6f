//! Credentials: reads the files and environment variables the config names — passwords
//! (client users, the upstream, the Sentinels) and TLS certificates and keys — once, at
//! start-up, into [`Secrets`]. `config` only says where they are; `secret` and `tls` each
//! know how to read one; this module walks the config and reads them all, so that a
//! missing, empty or unreadable one fails the start with an error naming the key and the
//! path (or variable), never a value.
//!
//! It must not validate the config (`Config::validate` has done that), watch for rotation
//! (`rotation` does, on the `RotatingSecret`s made here), or log a secret.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, Config, ConfigError};
use crate::secret::{RotatingSecret, SecretError};
use crate::tls::{ListenTls, TlsError, UpstreamTls};

/// Why the credentials could not be read. Shown as the underlying error: it names the key
/// and the path or variable, never a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The config names a secret wrongly; only for a `Config` that was not validated (the
    /// checks are `Config::validate`'s).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A password is missing, empty or unreadable.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// A TLS file is missing or unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The secrets the config points at, read. File secrets may rotate (see `rotation`).
#[derive(Debug, Clone)]
pub struct Secrets {
    /// The users clients may authenticate as, with their passwords; `None` means Redis's
    /// `nopass` semantics (no `[client]` section).
    pub client_users: Option<Vec<(String, Arc<RotatingSecret>)>>,
    pub upstream_password: Option<Arc<RotatingSecret>>,
    /// The Sentinels' own password (sentinel mode).
    pub sentinel_password: Option<Arc<RotatingSecret>>,
    /// Client users that reach Redis as ACL users of their own (`[[client.users]]
    /// upstream_username`): the client user, the Redis user, its password.
    pub identities: Vec<(String, String, Arc<RotatingSecret>)>,
    /// TLS to the upstream, its files read (`None`: plain TCP).
    pub upstream_tls: Option<UpstreamTls>,
    /// TLS for clients, its files read (`None`: plain TCP).
    pub listen_tls: Option<ListenTls>,
}

impl Secrets {
    /// Reads the secrets the config names, and the TLS certificates and keys. Fails if one
    /// is missing, empty or unreadable (the error names the key and the path).
    pub fn load(config: &Config) -> Result<Secrets, CredentialsError> {
        let upstream = &config.upstream;
        Ok(Secrets {
            client_users: config.client.as_ref().map(client_users).transpose()?,
            // The upstream has no overlap of its own: Redis decides what it accepts.
            upstream_password: upstream
                .password_source()?
                .map(|s| RotatingSecret::load(s, Duration::ZERO).map(Arc::new))
                .transpose()?,
            sentinel_password: upstream
                .sentinel_password_source()?
                .map(|s| RotatingSecret::load(s, Duration::ZERO).map(Arc::new))
                .transpose()?,
            identities: match &config.client {
                Some(client) => identities(client)?,
                None => Vec::new(),
            },
            upstream_tls: UpstreamTls::from_config(upstream)?,
            listen_tls: ListenTls::from_config(&config.listen)?,
        })
    }

    /// Every secret, client ones first.
    pub fn all(&self) -> Vec<Arc<RotatingSecret>> {
        let mut all: Vec<_> = self
            .client_users
            .iter()
            .flatten()
            .map(|(_, secret)| secret.clone())
            .collect();
        all.extend(self.upstream_password.clone());
        all.extend(self.sentinel_password.clone());
        all.extend(self.identities.iter().map(|(_, _, secret)| secret.clone()));
        all
    }
}

/// `[client]` and `[[client.users]]`, each password read, with `rotation_overlap_ms`.
fn client_users(
    client: &config::Client,
) -> Result<Vec<(String, Arc<RotatingSecret>)>, CredentialsError> {
    let overlap = Duration::from_millis(client.rotation_overlap_ms);
    let mut users = Vec::new();
    for (name, source) in client.sources()? {
        users.push((name, Arc::new(RotatingSecret::load(source, overlap)?)));
    }
    Ok(users)
}

/// The upstream identities of client users, their passwords read (no overlap: Redis
/// decides what it accepts).
fn identities(
    client: &config::Client,
) -> Result<Vec<(String, String, Arc<RotatingSecret>)>, CredentialsError> {
    let mut identities = Vec::new();
    for identity in client.identities()? {
        let secret = RotatingSecret::load(identity.password, Duration::ZERO)?;
        identities.push((identity.user, identity.upstream_username, Arc::new(secret)));
    }
    Ok(identities)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn reads_every_password_client_ones_first() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, value: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, value).unwrap();
            path.display().to_string()
        };
        let text = format!(
            "[client]\npassword_file = \"{}\"\n[[client.users]]\nusername = \"app\"\n\
             password_file = \"{}\"\n\
             [upstream]\nmode = \"sentinel\"\naddress = \"s:26379\"\nmaster_name = \"m\"\n\
             password_file = \"{}\"\nsentinel_password_file = \"{}\"\n",
            file("client", "c\n"),
            file("app", "a"),
            file("upstream", "u"),
            file("sentinel", "s"),
        );
        let config = Config::from_str(&text).unwrap();
        let secrets = Secrets::load(&config).unwrap();
        let users = secrets.client_users.as_ref().unwrap();
        let names: Vec<&str> = users.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["default", "app"]);
        let values: Vec<Vec<u8>> = secrets
            .all()
            .iter()
            .map(|s| s.current().expose().to_vec())
            .collect();
        assert_eq!(values, [&b"c"[..], b"a", b"u", b"s"]);
        assert!(secrets.upstream_tls.is_none() && secrets.listen_tls.is_none());
    }

    #[test]
    fn no_client_section_is_nopass() {
        let config = Config::from_str("[upstream]\naddress = \"x:1\"\n").unwrap();
        let secrets = Secrets::load(&config).unwrap();
        assert!(secrets.client_users.is_none());
        assert!(secrets.all().is_empty());
    }

    #[test]
    fn missing_files_are_named() {
        // A missing TLS file is a start-up error naming the key and the path.
        let config = Config::from_str(
            "[upstream]\naddress = \"x:1\"\ntls = true\ntls_ca_file = \"/nonexistent/ca.pem\"\n",
        )
        .unwrap();
        let err = Secrets::load(&config).unwrap_err().to_string();
        assert!(
            err.contains("[upstream] tls_ca_file /nonexistent/ca.pem"),
            "{err}"
        );
        let config = Config::from_str(
            "[upstream]\naddress = \"x:1\"\npassword_file = \"/nonexistent/password\"\n",
        )
        .unwrap();
        let err = Secrets::load(&config).unwrap_err().to_string();
        assert!(
            err.starts_with("[upstream] password_file /nonexistent/password: cannot read it")
                && err.contains("mount the Secret as a directory"),
            "{err}"
        );
        // Every secret names its own key.
        let config = Config::from_str(
            "[client]\n[[client.users]]\nusername = \"app\"\npassword_env = \"AMB_UNSET_81\"\n\
             [upstream]\naddress = \"x:1\"\n",
        )
        .unwrap();
        let err = Secrets::load(&config).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "[[client.users]] `app` password_env: environment variable AMB_UNSET_81"
            ),
            "{err}"
        );
    }
}

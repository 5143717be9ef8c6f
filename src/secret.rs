//! Secrets: the `Secret` newtype, how one is read from where the config says it is, and
//! `RotatingSecret`, the holder whose value can change while the proxy runs.
//!
//! A `Secret` never shows its bytes through `Debug` or `Display`, compares in constant
//! time, and is read from a file (a mounted Kubernetes Secret; one trailing newline is
//! stripped) or an environment variable. Errors name the config key, the file or variable
//! and what to do about it, never the value. `SecretSetting` (a secret as the config names
//! it: the key and where the secret is) is part of the config's schema and is defined in
//! `config`; it is re-exported here with the `load` that reads it.
//!
//! A `RotatingSecret` holds the current value and, for the configured overlap after a
//! change, the previous one. `reload` re-reads its source: a missing, unreadable or empty
//! file keeps the last good value (logged without the value, counted). Watching for
//! changes is `rotation`'s job, and walking the config to load every secret it names is
//! `credentials`', not this module's.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

pub use crate::config::{SecretSetting, SecretSource};

/// A password or other credential. Binary-safe, redacted in every printout.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    /// The secret's bytes, for sending it where it belongs (the upstream's AUTH).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Compares with `candidate` in time that depends only on the lengths.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.0.len() == candidate.len() && bool::from(self.0.as_slice().ct_eq(candidate))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a secret could not be read. Each names the config key and the path or variable, and
/// says what to do; none holds a secret's bytes.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{key} {}: cannot read it: {error}; {}", path.display(), read_hint(error))]
    Unreadable {
        key: String,
        path: PathBuf,
        error: io::Error,
    },
    #[error(
        "{key}: environment variable {name} is not set; set it in the container's environment \
         (from a Kubernetes Secret: env[].valueFrom.secretKeyRef)"
    )]
    Unset { key: String, name: String },
    /// The setting (key and path or variable) holds nothing once its trailing newline is
    /// stripped.
    #[error("{0} is empty: the ambassador never uses a blank password; put the password there")]
    Empty(SecretSetting),
}

/// What to do about a file the ambassador cannot read (a secret, a TLS certificate or key),
/// by the reason the system gave.
pub fn read_hint(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::NotFound => {
            "mount the Secret as a directory on the file's directory (a volume without \
             subPath) and check that the Secret has a key of that file name"
        }
        io::ErrorKind::PermissionDenied => {
            "the ambassador's user cannot read it: give the Secret volume defaultMode 0440 \
             and the pod securityContext.fsGroup the ambassador's group (65532 in its image)"
        }
        io::ErrorKind::IsADirectory => {
            "it is a directory: name the file inside it (the Secret's key, such as .../password)"
        }
        _ => "check the volume mounted there",
    }
}

// An inherent impl outside the type's module: `config` says where a secret is, this module
// reads it.
impl SecretSetting {
    /// Reads the secret now. A missing or empty secret is an error: an empty password is
    /// never sent, and never accepted.
    pub fn load(&self) -> Result<Secret, SecretError> {
        let bytes = match &self.source {
            SecretSource::File(path) => read_file(&self.key, path)?,
            SecretSource::Env(name) => std::env::var_os(name)
                .map(|v| v.into_encoded_bytes())
                .ok_or_else(|| SecretError::Unset {
                    key: self.key.clone(),
                    name: name.clone(),
                })?,
        };
        if bytes.is_empty() {
            return Err(SecretError::Empty(self.clone()));
        }
        Ok(Secret(bytes))
    }
}

/// What a reload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The source holds the value already in use (or cannot change: an environment variable).
    Unchanged,
    /// A new value is in use.
    Changed,
    /// The source could not be read, or is empty: the last good value stays.
    Kept,
}

/// A secret whose value may change while the proxy runs (a rotated Kubernetes Secret).
///
/// Reads take a lock that is only ever written by a reload, so they never wait for long;
/// they happen at authentication and upstream connect, never per command.
#[derive(Debug)]
pub struct RotatingSecret {
    setting: Option<SecretSetting>,
    state: RwLock<State>,
    /// How long the previous value is still accepted by `matches` after a change.
    overlap: Duration,
    /// The last reload failed (so only the first failure of a run is logged as a warning).
    failing: AtomicBool,
    /// Bumped at every change: connections made before it are recycled (see `upstream`).
    generation: AtomicU64,
}

#[derive(Debug)]
struct State {
    current: Secret,
    /// The value before the last change, and until when `matches` accepts it.
    previous: Option<(Secret, Instant)>,
}

impl RotatingSecret {
    /// Reads `setting` now; fails as `SecretSetting::load` does (a start-up error).
    pub fn load(setting: SecretSetting, overlap: Duration) -> Result<RotatingSecret, SecretError> {
        let current = setting.load()?;
        Ok(RotatingSecret {
            setting: Some(setting),
            state: RwLock::new(State {
                current,
                previous: None,
            }),
            overlap,
            failing: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        })
    }

    /// A value that never changes (for embedding the library, and tests).
    pub fn fixed(secret: Secret) -> RotatingSecret {
        RotatingSecret {
            setting: None,
            state: RwLock::new(State {
                current: secret,
                previous: None,
            }),
            overlap: Duration::ZERO,
            failing: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        }
    }

    /// Where the value is read from (`None` for a fixed value).
    pub fn source(&self) -> Option<&SecretSource> {
        self.setting.as_ref().map(|s| &s.source)
    }

    /// The config key and where the value is read from (`None` for a fixed value).
    pub fn setting(&self) -> Option<&SecretSetting> {
        self.setting.as_ref()
    }

    /// Whether a change of the source can be seen while running (only files can).
    pub fn can_rotate(&self) -> bool {
        matches!(self.source(), Some(SecretSource::File(_)))
    }

    /// How many times the value has changed since start-up.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The value in use now.
    pub fn current(&self) -> Secret {
        match self.state.read() {
            Ok(state) => state.current.clone(),
            Err(poisoned) => poisoned.into_inner().current.clone(),
        }
    }

    /// Whether `candidate` is the current value, or the previous one within the overlap
    /// after a change. Both comparisons run every time (constant time in the candidate's
    /// bytes, as `Secret::matches`), so timing does not tell which one matched.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let state = match self.state.read() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        let current = state.current.matches(candidate);
        let previous = match &state.previous {
            Some((old, until)) => old.matches(candidate) & (Instant::now() < *until),
            None => false,
        };
        current | previous
    }

    /// Reads the source once. A file only: an environment variable is read at start-up
    /// and never again.
    pub fn read_source(&self) -> Option<Result<Secret, SecretError>> {
        match &self.setting {
            Some(
                setting @ SecretSetting {
                    source: SecretSource::File(_),
                    ..
                },
            ) => Some(setting.load()),
            _ => None,
        }
    }

    /// Re-reads the source and installs what it holds if it differs from the current
    /// value. A failed read keeps the last good value.
    pub fn reload(&self) -> Reload {
        match self.read_source() {
            None => Reload::Unchanged,
            Some(read) => self.install(read),
        }
    }

    /// Installs the outcome of a read (see `reload`): logged and counted, never with the
    /// value.
    pub fn install(&self, read: Result<Secret, SecretError>) -> Reload {
        let global = crate::metrics::global();
        let new = match read {
            Ok(new) => new,
            Err(error) => {
                global.secret_reload_failures.increment(1);
                if self.failing.swap(true, Ordering::Relaxed) {
                    tracing::debug!(%error, "secret still unusable; keeping the last good value");
                } else {
                    tracing::warn!(%error, "secret unusable; keeping the last good value");
                }
                return Reload::Kept;
            }
        };
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(source = %self.describe(), "secret readable again");
        }
        let mut state = match self.state.write() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        if state.current == new {
            return Reload::Unchanged;
        }
        let old = std::mem::replace(&mut state.current, new);
        state.previous = Some((old, Instant::now() + self.overlap));
        self.generation.fetch_add(1, Ordering::AcqRel);
        drop(state);
        global.secret_reloads.increment(1);
        tracing::info!(source = %self.describe(), "secret changed; the new value is in use");
        Reload::Changed
    }

    /// The key and the path or variable (`[upstream] password_file /var/run/…`), or
    /// `fixed`: what a message about this secret names, never its value.
    pub fn describe(&self) -> String {
        self.setting
            .as_ref()
            .map_or_else(|| "fixed".to_owned(), ToString::to_string)
    }
}

fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, SecretError> {
    let mut bytes = std::fs::read(path).map_err(|error| SecretError::Unreadable {
        key: key.to_owned(),
        path: path.to_owned(),
        error,
    })?;
    // `kubectl create secret --from-file` and editors leave one trailing newline.
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &Path) -> SecretSetting {
        SecretSetting {
            key: "[upstream] password_file".to_owned(),
            source: SecretSource::File(path.to_owned()),
        }
    }

    #[test]
    fn redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn compares() {
        let s = Secret::new(&b"abc\0def"[..]);
        assert!(s.matches(b"abc\0def"));
        assert!(!s.matches(b"abc"));
        assert!(!s.matches(b"abc\0deg"));
    }

    #[test]
    fn rotating_keeps_last_good_and_overlaps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "one\n").unwrap();
        let secret = RotatingSecret::load(file(&path), Duration::from_secs(60)).unwrap();
        assert!(secret.can_rotate());
        assert_eq!(secret.reload(), Reload::Unchanged);
        for bad in [&b""[..], b"\n", b"\r\n"] {
            std::fs::write(&path, bad).unwrap();
            assert_eq!(secret.reload(), Reload::Kept);
            assert_eq!(secret.current().expose(), b"one");
        }
        std::fs::remove_file(&path).unwrap();
        assert_eq!(secret.reload(), Reload::Kept);
        assert!(secret.matches(b"one"));
        std::fs::write(&path, "two").unwrap();
        assert_eq!(secret.reload(), Reload::Changed);
        assert_eq!(secret.current().expose(), b"two");
        // Within the overlap both are accepted; an empty candidate never is.
        assert!(secret.matches(b"two") && secret.matches(b"one"));
        assert!(!secret.matches(b"") && !secret.matches(b"three"));
    }

    #[test]
    fn rotating_without_overlap_drops_the_old_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "one").unwrap();
        let secret = RotatingSecret::load(file(&path), Duration::ZERO).unwrap();
        std::fs::write(&path, "two").unwrap();
        assert_eq!(secret.reload(), Reload::Changed);
        assert!(secret.matches(b"two") && !secret.matches(b"one"));
        let fixed = RotatingSecret::fixed(Secret::new("x"));
        assert!(!fixed.can_rotate());
        assert_eq!(fixed.reload(), Reload::Unchanged);
        assert_eq!(format!("{fixed:?}").matches("redacted").count(), 1);
    }

    #[test]
    fn file_strips_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "pw\n\n").unwrap();
        assert_eq!(file(&path).load().unwrap().expose(), b"pw\n");
        std::fs::write(&path, "pw\r\n").unwrap();
        assert_eq!(file(&path).load().unwrap().expose(), b"pw");
        std::fs::write(&path, "\n").unwrap();
        let err = file(&path).load().unwrap_err().to_string();
        assert!(
            err.contains("[upstream] password_file")
                && err.contains("is empty")
                && err.contains("pw"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_key_and_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let missing = file(&dir.path().join("nope"))
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            missing.starts_with("[upstream] password_file ")
                && missing.contains("nope")
                && missing.contains("mount the Secret as a directory"),
            "{missing}"
        );
        let directory = file(dir.path()).load().unwrap_err().to_string();
        assert!(directory.contains("name the file inside it"), "{directory}");
        let unset = SecretSetting {
            key: "[client] password_env".to_owned(),
            source: SecretSource::Env("REDIS_AMBASSADOR_SURELY_UNSET_71".to_owned()),
        };
        let unset = unset.load().unwrap_err().to_string();
        assert!(
            unset.starts_with(
                "[client] password_env: environment variable \
                               REDIS_AMBASSADOR_SURELY_UNSET_71 is not set"
            ),
            "{unset}"
        );
    }
}

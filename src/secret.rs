//! Secrets: the `Secret` newtype and where secrets come from.
//!
//! A `Secret` never shows its bytes through `Debug` or `Display`, compares in constant
//! time, and is read from a file (a mounted Kubernetes Secret; one trailing newline is
//! stripped) or an environment variable. Errors name the file or variable, never the value.

use std::fmt;
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

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

/// Where a secret is read from.
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

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret {source_name}: {error}")]
    Unreadable {
        source_name: String,
        error: std::io::Error,
    },
    #[error("secret {0} is not set")]
    Unset(String),
    #[error("secret {0} is empty")]
    Empty(String),
}

impl SecretSource {
    /// Reads the secret now. A missing or empty secret is an error: an empty password is
    /// never sent, and never accepted.
    pub fn load(&self) -> Result<Secret, SecretError> {
        let bytes = match self {
            SecretSource::File(path) => read_file(path)?,
            SecretSource::Env(name) => std::env::var_os(name)
                .map(|v| v.into_encoded_bytes())
                .ok_or_else(|| SecretError::Unset(self.to_string()))?,
        };
        if bytes.is_empty() {
            return Err(SecretError::Empty(self.to_string()));
        }
        Ok(Secret(bytes))
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, SecretError> {
    let mut bytes = std::fs::read(path).map_err(|error| SecretError::Unreadable {
        source_name: SecretSource::File(path.to_owned()).to_string(),
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
    fn file_strips_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "pw\n\n").unwrap();
        assert_eq!(
            SecretSource::File(path.clone()).load().unwrap().expose(),
            b"pw\n"
        );
        std::fs::write(&path, "pw\r\n").unwrap();
        assert_eq!(
            SecretSource::File(path.clone()).load().unwrap().expose(),
            b"pw"
        );
        std::fs::write(&path, "\n").unwrap();
        let err = SecretSource::File(path.clone())
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains("is empty") && err.contains("pw"), "{err}");
        let missing = SecretSource::File(dir.path().join("nope"))
            .load()
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope"), "{missing}");
    }
}

//! Client authentication: the users an application may authenticate as (`[client]` and
//! `[[client.users]]`), each with a password that may rotate.
//!
//! A check compares the candidate with every configured user, evaluating the name and the
//! password comparisons of each without stopping early, so the time taken depends on the
//! configuration and the candidate's length, never on which part was wrong or which user
//! matched. It owns no session state: the session records who authenticated.

use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::secret::RotatingSecret;

/// One user clients may authenticate as.
#[derive(Debug)]
pub struct ClientUser {
    pub name: Arc<str>,
    pub password: Arc<RotatingSecret>,
}

/// Who may connect. No users at all is Redis's `nopass` default user: every client is
/// authenticated from the start, and `AUTH default <anything>` succeeds.
#[derive(Debug, Default)]
pub struct ClientAuth {
    users: Vec<ClientUser>,
}

/// The name of Redis's default user.
pub const DEFAULT_USER: &str = "default";

impl ClientAuth {
    /// `None` is `nopass`; `Some` lists the users (the config guarantees at least one).
    pub fn new(users: Option<Vec<(String, Arc<RotatingSecret>)>>) -> ClientAuth {
        ClientAuth {
            users: users
                .unwrap_or_default()
                .into_iter()
                .map(|(name, password)| ClientUser {
                    name: name.into(),
                    password,
                })
                .collect(),
        }
    }

    /// Whether clients must authenticate before running commands.
    pub fn required(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether a user of this name is configured (not a secret: CLIENT KILL USER asks).
    pub fn knows(&self, username: &[u8]) -> bool {
        self.users.iter().any(|u| u.name.as_bytes() == username)
    }

    /// Checks a username/password pair; on success returns the user's name (for CLIENT
    /// INFO). Without users the only user is `default`, who needs no password.
    pub fn authenticate(&self, username: &[u8], password: &[u8]) -> Option<Arc<str>> {
        if self.users.is_empty() {
            return (username == DEFAULT_USER.as_bytes()).then(|| Arc::from(DEFAULT_USER));
        }
        let mut found = None;
        for user in &self.users {
            // Both comparisons run for every user, whatever the outcome.
            let name = user.name.as_bytes();
            let name_ok = name.len() == username.len() && bool::from(name.ct_eq(username));
            let pass_ok = user.password.matches(password);
            if name_ok & pass_ok {
                found = Some(user.name.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn user(name: &str, pw: &str) -> (String, Arc<RotatingSecret>) {
        (
            name.to_owned(),
            Arc::new(RotatingSecret::fixed(Secret::new(pw))),
        )
    }

    #[test]
    fn nopass_accepts_only_default() {
        let auth = ClientAuth::new(None);
        assert!(!auth.required());
        assert_eq!(
            auth.authenticate(b"default", b"x").as_deref(),
            Some("default")
        );
        assert!(auth.authenticate(b"other", b"x").is_none());
    }

    #[test]
    fn each_user_has_its_own_password() {
        let auth = ClientAuth::new(Some(vec![
            user("default", "pw0"),
            user("app", "pw1"),
            user("batch", "pw\0two"),
        ]));
        assert!(auth.required());
        assert_eq!(
            auth.authenticate(b"default", b"pw0").as_deref(),
            Some("default")
        );
        assert_eq!(auth.authenticate(b"app", b"pw1").as_deref(), Some("app"));
        assert_eq!(
            auth.authenticate(b"batch", b"pw\0two").as_deref(),
            Some("batch")
        );
        for (name, pw) in [
            (&b"app"[..], &b"pw0"[..]),
            (b"default", b"pw1"),
            (b"batch", b"pw"),
            (b"ap", b"pw1"),
            (b"app ", b"pw1"),
            (b"", b""),
            (b"nobody", b"pw1"),
        ] {
            assert!(auth.authenticate(name, pw).is_none(), "{name:?}");
        }
    }
}

//! Client authentication: the users an application may authenticate as (`[client]` and
//! `[[client.users]]`), each with a password that may rotate.
//!
//! A check compares the candidate with every configured user, evaluating the name and the
//! password comparisons of each without stopping early, so the time taken depends on the
//! configuration and the candidate's length, never on which part was wrong or which user
//! matched. It owns no session state: the session records who authenticated.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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

    /// The configured users' names.
    pub fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.users.iter().map(|u| &u.name)
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

/// Failed logins an address may make before its next attempts wait.
const FREE_FAILURES: u32 = 5;
/// The first wait after the free failures; it doubles with each further failure.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest wait.
const MAX_DELAY: Duration = Duration::from_secs(2);
/// An address with no failure for this long starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Addresses tracked at most (stale ones are dropped first; beyond it a new address is
/// not tracked until room is made).
const MAX_TRACKED: usize = 10_000;

/// Failed logins per client address, for the logins that cost the server a connection
/// (`AUTH` as a Redis user the ambassador does not know): after [`FREE_FAILURES`] each
/// attempt from that address waits before it is checked, 100 ms doubling to 2 s, until an
/// attempt succeeds or a minute passes without a failure. The reply itself is Redis's, as
/// without the wait, so a client library sees no difference but the time.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl LoginThrottle {
    /// How long an attempt from `address` waits before it is checked.
    pub fn delay(&self, address: IpAddr) -> Duration {
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        match failures.get(&address) {
            Some(&(count, last)) if count >= FREE_FAILURES && last.elapsed() < FORGET_AFTER => {
                let doublings = (count - FREE_FAILURES).min(16);
                FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
            }
            _ => Duration::ZERO,
        }
    }

    /// Records a failed attempt from `address`.
    pub fn failed(&self, address: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if failures.len() >= MAX_TRACKED && !failures.contains_key(&address) {
            failures.retain(|_, (_, last)| now.duration_since(*last) < FORGET_AFTER);
            if failures.len() >= MAX_TRACKED {
                return;
            }
        }
        let entry = failures.entry(address).or_insert((0, now));
        if now.duration_since(entry.1) >= FORGET_AFTER {
            entry.0 = 0;
        }
        *entry = (entry.0.saturating_add(1), now);
    }

    /// An attempt from `address` succeeded: its count starts afresh.
    pub fn succeeded(&self, address: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        failures.remove(&address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn throttle_waits_after_free_failures_and_forgets_on_success() {
        let throttle = LoginThrottle::default();
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        for _ in 0..FREE_FAILURES {
            assert_eq!(throttle.delay(a), Duration::ZERO);
            throttle.failed(a);
        }
        assert_eq!(throttle.delay(a), FIRST_DELAY);
        throttle.failed(a);
        assert_eq!(throttle.delay(a), FIRST_DELAY * 2);
        for _ in 0..40 {
            throttle.failed(a);
        }
        assert_eq!(throttle.delay(a), MAX_DELAY);
        assert_eq!(throttle.delay(b), Duration::ZERO, "per address");
        throttle.succeeded(a);
        assert_eq!(throttle.delay(a), Duration::ZERO);
    }

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

//! The Redis users the ambassador speaks as besides its own `[upstream]` identity, each
//! over an [`Upstream`] of its own (lanes and dedicated connections logged in as that
//! user, so Redis's ACLs, `ACL LOG` and `CLIENT LIST user=` see the real user):
//!
//! - *configured*: a `[[client.users]]` entry with `upstream_username` — built once at
//!   start-up, its password rotating like the other secrets;
//! - *logged in*: a client that authenticated as a user the ambassador does not know
//!   (`[client] upstream_auth`, or no `[client]` section), checked by Redis itself. Clients
//!   that logged in as the same user with the same password, in the same database, share
//!   one upstream for as long as one of them uses it (it is held weakly here), so a hundred
//!   clients of one Redis user cost one set of lanes, not a hundred.
//!
//! Every login is checked on a fresh connection, as Redis checks each `AUTH`: a password
//! Redis no longer accepts is refused even while clients that logged in with it earlier
//! keep their upstream (Redis keeps their connections too).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::{Upstream, UpstreamError};
use crate::secret::{RotatingSecret, Secret};

/// Logged-in upstreams kept at most, across users: beyond it, entries no client uses are
/// dropped (entries in use are never dropped: they are only weak references).
const MAX_LOGINS: usize = 4096;

/// A user's upstream shared by the clients that logged in with one password.
struct Login {
    password: Secret,
    upstream: Weak<Upstream>,
}

/// The upstream identities other than the ambassador's own.
#[derive(Default)]
pub struct Identities {
    /// Client user name → the upstream of its `upstream_username`.
    configured: HashMap<String, Arc<Upstream>>,
    /// (Redis user, database when it logged in) → its live upstreams, one per password.
    logins: Mutex<HashMap<(String, u32), Vec<Login>>>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities")
            .field("configured", &self.configured.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Identities {
    /// The configured identities — (client user, Redis user, password) — each an upstream
    /// to `base`'s server.
    pub fn new(base: &Upstream, configured: &[(String, String, Arc<RotatingSecret>)]) -> Self {
        Identities {
            configured: configured
                .iter()
                .map(|(user, redis_user, password)| {
                    let upstream = base.as_identity(redis_user, password.clone());
                    (user.clone(), Arc::new(upstream))
                })
                .collect(),
            logins: Mutex::default(),
        }
    }

    /// The upstream of client user `user`, if it has an identity of its own.
    pub fn configured(&self, user: &str) -> Option<Arc<Upstream>> {
        self.configured.get(user).cloned()
    }

    /// Logs in as Redis user `name` with `password`, checked by the server on a fresh
    /// connection; on success returns the upstream to use as that user (shared with the
    /// clients that logged in the same way and still use it). `db`: the database the
    /// client is in (see [`Upstream::as_user`]).
    pub async fn log_in(
        &self,
        base: &Upstream,
        name: &str,
        password: &[u8],
        db: u32,
    ) -> Result<Arc<Upstream>, UpstreamError> {
        let candidate = base.as_user(name, Secret::new(password.to_vec()), db);
        // A connection made with the credentials is the server's own check; it stays in
        // the candidate's pool, used if the candidate is kept.
        candidate.get().await.map(drop)?;
        let mut logins = self.logins.lock().unwrap_or_else(PoisonError::into_inner);
        if logins.len() >= MAX_LOGINS {
            logins.retain(|_, list| {
                list.retain(|login| login.upstream.strong_count() > 0);
                !list.is_empty()
            });
        }
        let list = logins.entry((name.to_owned(), db)).or_default();
        list.retain(|login| login.upstream.strong_count() > 0);
        if let Some(shared) = list
            .iter()
            .filter(|login| login.password.matches(password))
            .find_map(|login| login.upstream.upgrade())
        {
            return Ok(shared);
        }
        let upstream = Arc::new(candidate);
        list.push(Login {
            password: Secret::new(password.to_vec()),
            upstream: Arc::downgrade(&upstream),
        });
        Ok(upstream)
    }

    /// How many logged-in upstreams are alive (for tests and the docs' claims).
    pub fn live_logins(&self) -> usize {
        let logins = self.logins.lock().unwrap_or_else(PoisonError::into_inner);
        logins
            .values()
            .flatten()
            .filter(|login| login.upstream.strong_count() > 0)
            .count()
    }
}

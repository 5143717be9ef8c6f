//! The configured users' command policies at run time: which users have rules, and their
//! [`Permissions`] once the upstream's catalogue is known. It owns the one catalogue load
//! and its outcome; it does not check requests (that is [`Permissions::check`], called by
//! the session) nor write replies.
//!
//! **When the catalogue is loaded.** Lazily, on the first request of a user that has
//! rules (and also once in the background at start-up, by `crate::run`, so that this
//! first request usually finds it ready). Not only at start-up, because a sidecar
//! commonly starts before or together with its Redis: a start-up that needed Redis would
//! fail or delay the pod, while a lazy load simply happens once Redis answers. A failed
//! load is not remembered: the next request of a user with rules tries again, and until
//! one succeeds those requests are refused (never forwarded unchecked). Users without
//! rules never wait for it and pay nothing per request.

use std::sync::Arc;

use tokio::sync::OnceCell;

use super::catalogue::{self, Catalogue, CatalogueError};
use super::permissions::Permissions;
use crate::command::rules::RuleError;
use crate::config::UserPolicy;
use crate::upstream::Upstream;

/// A user's compiled permissions, or why its rules cannot apply to this upstream (a
/// command or category the upstream does not know): that user's requests are refused
/// with this error, as `ACL SETUSER` would have refused the rules.
pub type Compiled = Result<Arc<Permissions>, RuleError>;

/// Every user with a policy (`commands` or `read_only`), and their permissions once
/// compiled.
#[derive(Debug, Default)]
pub struct Policies {
    users: Vec<UserPolicy>,
    /// Per user (same order as `users`), set by the first successful load.
    compiled: OnceCell<Vec<Compiled>>,
}

impl Policies {
    pub fn new(users: Vec<UserPolicy>) -> Policies {
        Policies {
            users,
            compiled: OnceCell::new(),
        }
    }

    /// Whether no user has a policy (nothing to load, nothing to check).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The index of `name`'s policy, `None` for a user without one.
    pub fn user(&self, name: &str) -> Option<usize> {
        self.users.iter().position(|u| u.username == name)
    }

    /// The user's permissions if the catalogue is loaded already (never waits).
    pub fn ready(&self, user: usize) -> Option<&Compiled> {
        self.compiled.get()?.get(user)
    }

    /// The user's permissions, loading the catalogue from `upstream` first if no load
    /// has succeeded yet (concurrent callers share one load).
    pub async fn get(&self, user: usize, upstream: &Upstream) -> Result<&Compiled, PolicyError> {
        let compiled = self
            .compiled
            .get_or_try_init(|| async {
                let catalogue = catalogue::load(upstream).await.map_err(|e| {
                    tracing::warn!(error = %e, "cannot read the upstream's command catalogue for the users' command rules");
                    PolicyError::Catalogue(e)
                })?;
                Ok::<_, PolicyError>(self.compile(Arc::new(catalogue)))
            })
            .await?;
        compiled.get(user).ok_or(PolicyError::NoSuchUser)
    }

    fn compile(&self, catalogue: Arc<Catalogue>) -> Vec<Compiled> {
        self.users
            .iter()
            .map(|u| {
                let compiled =
                    Permissions::compile(&u.rules, Arc::clone(&catalogue), u.read_only)
                        .map(Arc::new);
                if let Err(e) = &compiled {
                    tracing::error!(user = %u.username, error = %e, "the user's command rules do not apply to this upstream; its commands are refused");
                }
                compiled
            })
            .collect()
    }
}

/// Why a user's permissions are not known.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the upstream's command table: {0}")]
    Catalogue(#[from] CatalogueError),
    #[error("no such user")]
    NoSuchUser,
}

//! Per-user command policy (issue 18): which commands a user of the ambassador may run,
//! decided as Redis's own ACL would decide it, so that a refused command never reaches
//! Redis and gets the reply Redis would have sent.
//!
//! - [`catalogue`]: the upstream's commands, subcommands, flags and ACL categories, read
//!   from its `COMMAND` and `ACL CAT` replies.
//! - [`crate::command::rules`]: the rule text (`+@all -@dangerous -config|set …`), parsed.
//! - [`Permissions`]: rules compiled against a catalogue into Redis's own representation
//!   (one allowed bit per command and subcommand, the "all commands" flag, the allowed
//!   first arguments), and the check of a request against it.
//! - [`users`]: the configured users' policies at run time, compiled once the catalogue
//!   is loaded (lazily; see there why).
//!
//! What Redis checks before its ACL (unknown command or subcommand, wrong arity) is left
//! to Redis: such a request is [`Verdict::Unchecked`], and forwarding it gets Redis's own
//! error. Key and channel permissions are not this module's: they stay Redis's.

pub mod catalogue;
mod permissions;
pub mod users;

pub use crate::command::rules::{Rule, RuleError, Rules};
pub use catalogue::{Catalogue, CatalogueError, CommandIndex, Entry};
pub use permissions::{Permissions, Verdict};
pub use users::{Compiled, Policies, PolicyError};

#[cfg(test)]
mod tests;

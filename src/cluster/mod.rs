//! Redis Cluster support: the pieces a cluster-mode upstream routes with — the key → slot
//! function (`slot`), which arguments are keys (`keys`), and the slot map read from
//! `CLUSTER SLOTS` (`topology`).
//!
//! Not wired in yet: `[upstream] mode = "cluster"` is refused at start-up until the router
//! that uses these (per-node lanes, MOVED/ASK, multi-key splitting) lands.

pub mod keys;
pub mod router;
pub mod slot;
pub mod topology;

pub use router::{Cluster, Redirect};

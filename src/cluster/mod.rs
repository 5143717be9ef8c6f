//! Redis Cluster support (`[upstream] mode = "cluster"`): the key → slot function
//! (`slot`), which arguments are keys (`keys`), the slot map read from `CLUSTER SLOTS`
//! (`topology`), and the router (`router`: an upstream per node, the map's refreshes,
//! MOVED/ASK). The session routes its requests with them (`session::cluster`, and
//! `session::shards` for pub/sub).

pub mod keys;
pub mod router;
pub mod slot;
pub mod topology;

pub use router::{Cluster, Redirect};

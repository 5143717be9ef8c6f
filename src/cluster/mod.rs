//! Redis Cluster support (`[upstream] mode = "cluster"`), below the session and above the
//! upstream connections:
//!
//! - `slot`: the key → slot function; `keys`: which arguments are keys (from `COMMAND`);
//! - `topology`: the slot map read from `CLUSTER SLOTS`;
//! - `router`: an upstream per node, the map's refreshes, calls that follow `-MOVED` and
//!   `-ASK`, replicas falling back to their master;
//! - `route`: where a request goes, and the node a transaction is bound to;
//! - `scatter`: commands no single node can answer, split or fanned out and merged;
//! - `shards`: shard channels (SSUBSCRIBE) on links to each master, kept subscribed when
//!   slots move.
//!
//! Nothing here holds a client's state: the session asks, and plans its batches with the
//! answers.

pub mod keys;
pub mod route;
pub mod router;
pub mod scatter;
pub mod shards;
pub mod slot;
pub mod topology;

pub use route::{Binding, Target};
pub use router::{Cluster, Redirect};

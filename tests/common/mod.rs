//! Test harness shared by the integration tests: real `redis-server` processes, the
//! proxy binary started from a typed config, and raw-socket helpers that assert exact
//! bytes.
//!
//! Every wait here has a deadline, so a broken proxy fails a test instead of hanging it.
//! A missing `redis-server` binary fails the test loudly; nothing is skipped.
//!
//! One file per concern; this index re-exports the parts most tests use, so a test says
//! `use common::*;` (the cluster and script helpers are used by path).
//!
//! | file            | owns                                                            |
//! |-----------------|-----------------------------------------------------------------|
//! | `escape.rs`     | showing bytes in failure messages; the byte-equality assert     |
//! | `resp.rs`       | RESP encoding, frame delimiting, HELLO replies, error lines     |
//! | `conn.rs`       | the raw RESP client (`RawConn`) and the proxy-vs-Redis diffs    |
//! | `servers.rs`    | `redis-server` processes (and Sentinels) on free ports          |
//! | `config.rs`     | the proxy's TOML config as a typed, serialisable value          |
//! | `ambassador.rs` | the proxy builder and process; running the binary to exit       |
//! | `admin.rs`      | HTTP to the admin endpoint; reading a Prometheus scrape         |
//! | `secrets.rs`    | a kubelet-style Secret volume for the rotation tests            |
//! | `support.rs`    | free ports, polling with a deadline, reading logs               |
//! | `cluster.rs`    | a real Redis Cluster: set-up, topology, resharding, failover    |
//! | `script.rs`     | scripts run against bare Redis and through the proxy, compared  |

#![allow(dead_code)]

pub mod admin;
pub mod ambassador;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod escape;
pub mod resp;
pub mod script;
pub mod secrets;
pub mod servers;
pub mod support;

// Each test binary compiles this harness and uses a part of it: an unused re-export
// is not a mistake here (nor is an unused helper, hence `dead_code` above).
#[allow(unused_imports)]
pub use admin::*;
#[allow(unused_imports)]
pub use ambassador::*;
#[allow(unused_imports)]
pub use config::{AmbassadorConfig, LogFormat, UpstreamMode};
#[allow(unused_imports)]
pub use conn::*;
#[allow(unused_imports)]
pub use escape::*;
#[allow(unused_imports)]
pub use resp::*;
#[allow(unused_imports)]
pub use secrets::*;
#[allow(unused_imports)]
pub use servers::*;
#[allow(unused_imports)]
pub use support::*;

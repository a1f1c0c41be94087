//! shardwire: a PostgreSQL-wire-compatible sharding proxy.
//!
//! Data flows downward through the modules: `frontend` accepts clients and
//! runs a `session` per client, which forwards frames to servers held in
//! `backend` pools. `config` is the validated configuration everything else
//! reads; `protocol` is the wire format shared by both sides. `admin` is
//! how operators see and steer it: the admin console, HTTP metrics and
//! health, and the client registry. `topology` keeps the shard map
//! versioned in the catalog when configured so. `cli` holds the subcommands
//! that drive a running proxy (`shardwire rebalance`).

pub mod admin;
pub mod backend;
pub mod cli;
pub mod config;
pub mod execute;
pub mod frontend;
pub mod protocol;
pub mod proxy;
pub mod rebalance;
pub mod router;
pub mod session;
pub mod sharding;
pub mod stats;
pub mod topology;

/// The version reported by `shardwire --version` and the admin console.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

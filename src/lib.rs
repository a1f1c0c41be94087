//! shardwire: a PostgreSQL-wire-compatible sharding proxy.
//!
//! Data flows downward (DESIGN §2; `tests/module_layers.rs` checks the
//! directions): `frontend` accepts and authenticates a client and runs a
//! `session` for it; the session asks the `router` where each statement
//! goes (every table reference it makes, by the `sharding` functions) and
//! forwards it to servers held in `backend` pools, or hands statements
//! that need several shards to `execute` (fan-out, merges, two-phase
//! commit). `proxy` is the shared runtime state every task holds: the
//! `config` in force, pools, health, `stats`. `protocol` is the wire format
//! shared by both sides. `topology` keeps the shard map versioned in the
//! catalog; `rebalance` moves data between shards online; `admin` is the
//! console and HTTP endpoints; `cli` holds the subcommands that drive a
//! running proxy.

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

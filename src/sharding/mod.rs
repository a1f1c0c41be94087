//! The sharding functions: which shard owns a key.
//!
//! Three strategies, each a pure function of the key and an immutable map
//! built once from config (no I/O, no async, no locks), so the router can
//! call them on every statement and tests can check them exhaustively:
//!
//! - [`ring`]: hash sharding on a consistent-hash ring with virtual nodes.
//! - [`range`]: ordered, non-overlapping `[from, to)` key ranges.
//! - [`geo`]: region names mapped to shards, with a default shard.
//!
//! Hash positions are PostgreSQL's own extended hashes ([`pghash`]), not a
//! Rust hash: then every arc of the ring is a predicate a shard can evaluate
//! itself (`hashint8extended(id, 0) BETWEEN lo AND hi`), which lets
//! rebalancing filter the rows to move inside PostgreSQL (publication row
//! filters, DELETEs) instead of streaming every row through the proxy. It
//! also makes routing independent of the Rust version and machine, which
//! `std::hash` does not promise.

pub mod geo;
pub mod pghash;
pub mod range;
pub mod ring;

pub use geo::GeoMap;
pub use pghash::{KeyKind, KeyValue, SEED};
pub use range::{OutOfRange, RangeBound, RangeMap, RangeSpec};
pub use ring::{Arc, HashRing, DEFAULT_VNODES};

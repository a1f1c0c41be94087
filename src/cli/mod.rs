//! Subcommands of the `shardwire` binary that talk to a running proxy
//! rather than serve. They live in the library so their formatting can be
//! unit-tested and `main.rs` stays a thin dispatcher.

pub mod rebalance;

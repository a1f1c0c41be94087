//! Integration tests: the shardwire binary in front of a real PostgreSQL
//! shard cluster (scripts/cluster.sh), driven by psql, pgbench,
//! tokio-postgres and raw sockets.
//!
//! One test binary, so one cluster (started on first use, removed at exit)
//! serves every test; each test starts its own proxy and uses its own tables.

mod common;

mod admin;
mod auth;
mod bad_input;
mod cancel;
mod check;
mod concurrency;
mod differential;
mod failover;
mod fuzz;
mod gather;
mod insert_select;
mod invariant;
mod lanes;
mod limits;
mod metrics;
mod multishard;
mod params;
mod pgbench;
mod pool_sizing;
mod pooling;
mod psql;
mod rebalance;
mod rebalance_cli;
mod reload;
mod replicas;
mod routing;
mod savepoints;
mod scatter_aggregate;
mod scatter_extended;
mod scatter_order;
mod scatter_stream;
mod session_mode;
mod session_params;
mod session_state;
mod shutdown;
mod split_insert;
mod tenant_corpus;
mod tls;
mod topology;
mod twophase;
mod txabort;

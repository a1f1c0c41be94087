//! What the proxy counts and who is connected: the metrics registry
//! (counters and latency histograms the admin console and `/metrics`
//! read) and the registry of connected clients (their state, admission
//! and rate limits). Plain shared state, no I/O: sessions and the
//! frontend write it, admin/ reads it.

pub mod clients;
pub mod metrics;

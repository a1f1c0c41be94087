//! The metrics registry: counters and histograms the data path bumps with
//! relaxed atomics, rendered in the Prometheus text format for `/metrics`
//! and read by the admin console's `SHOW STATS`.
//!
//! Hot-path cost is one atomic add per counter. Series keyed by labels
//! (shard and route kind) are created once and handed out as `Arc`s that
//! sessions keep, so no lock is taken per statement.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A latency histogram with fixed buckets (cumulative only when rendered).
/// The count is the buckets' sum, not a counter of its own: one shared
/// atomic less to bump per statement.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    /// Observations past the last bucket.
    overflow: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        match LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            Some(i) => &self.buckets[i],
            None => &self.overflow,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .chain(std::iter::once(&self.overflow))
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_micros.load(Ordering::Relaxed))
    }

    /// The upper bound of the bucket holding quantile `q` (0..1); None
    /// without observations, +inf past the last bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= want {
                return Some(LATENCY_BUCKETS[i]);
            }
        }
        Some(f64::INFINITY)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}",
                LATENCY_BUCKETS[i]
            );
        }
        // From the same reads as the buckets, so +Inf is never below them.
        let count = cumulative + self.overflow.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// How a statement was executed, the `kind` label of query metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    /// To one shard, chosen by its shard key or a hint.
    Single,
    /// To the default shard: unsharded tables, or no `[[tables]]` at all.
    Default,
    /// The same statement on every shard (DDL, reference-table writes).
    Broadcast,
    /// Run on several shards and combined (cross-shard reads, split writes).
    Scatter,
    /// A statement of a transaction that spans shards.
    MultiTx,
    /// A read answered on one server from rows gathered from the shards
    /// (tier 3).
    Gather,
}

impl RouteKind {
    pub const ALL: [RouteKind; 6] = [
        RouteKind::Single,
        RouteKind::Default,
        RouteKind::Broadcast,
        RouteKind::Scatter,
        RouteKind::MultiTx,
        RouteKind::Gather,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RouteKind::Single => "single",
            RouteKind::Default => "default",
            RouteKind::Broadcast => "broadcast",
            RouteKind::Scatter => "scatter",
            RouteKind::MultiTx => "multi_tx",
            RouteKind::Gather => "gather",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Statements of one route kind on one shard.
#[derive(Default)]
pub struct RouteStats {
    pub queries: AtomicU64,
    pub errors: AtomicU64,
    pub latency: Histogram,
}

/// Where a read went, and why (`decision` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReadDecision {
    /// A replica known to be fresh enough.
    Replica = 0,
    /// A replica, after checking (and maybe waiting for) its replay position.
    ReplicaAfterWait = 1,
    /// The primary: no replica replayed the session's writes in time.
    PrimaryFallback = 2,
    /// The primary: no usable replica (down, banned, lagging, none).
    NoReplica = 3,
    /// The primary, chosen by load balancing (`read_from = "any"`).
    Primary = 4,
    /// The primary, within `read_your_writes_window` of a write.
    PrimaryAfterWrite = 5,
}

impl ReadDecision {
    pub const COUNT: usize = 6;

    pub fn name(self) -> &'static str {
        match self {
            ReadDecision::Replica => "replica",
            ReadDecision::ReplicaAfterWait => "replica_after_wait",
            ReadDecision::PrimaryFallback => "primary_fallback",
            ReadDecision::NoReplica => "no_replica",
            ReadDecision::Primary => "primary_balanced",
            ReadDecision::PrimaryAfterWrite => "primary_after_write",
        }
    }
}

/// Reasons a client was turned away at the door (`reason` label).
#[derive(Debug, Clone, Copy)]
pub enum Rejection {
    MaxClients,
    UserLimit,
    AuthFailed,
}

/// Every metric of the process.
pub struct Metrics {
    pub started: Instant,
    pub clients_accepted: AtomicU64,
    pub rejected_max_clients: AtomicU64,
    pub rejected_user_limit: AtomicU64,
    pub rejected_auth: AtomicU64,
    pub rate_limited: AtomicU64,
    pub statement_timeouts: AtomicU64,
    /// Rows copied onto merge connections for tier-3 reads.
    pub gathered_rows: AtomicU64,
    /// Tier-3 reads refused by limits.max_intermediate_rows.
    pub gather_too_large: AtomicU64,
    pub idle_in_transaction_timeouts: AtomicU64,
    pub pause_timeouts: AtomicU64,
    /// Writes held during a rebalance's cutover (`session::fence`).
    pub rebalance_held_writes: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Replica reads run again elsewhere after their replica died.
    pub read_retries: AtomicU64,
    /// Sessions that pinned their server in transaction pooling (LISTEN,
    /// temporary tables, ...: session::state).
    pub pins: AtomicU64,
    /// Per (shard name, kind).
    routes: RwLock<HashMap<(String, RouteKind), Arc<RouteStats>>>,
    /// Errors sent to clients, by SQLSTATE class (the first two characters).
    errors: Mutex<BTreeMap<String, u64>>,
    /// Replica-eligible reads by (shard name, decision).
    reads: RwLock<HashMap<(String, ReadDecision), Arc<AtomicU64>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            clients_accepted: AtomicU64::new(0),
            rejected_max_clients: AtomicU64::new(0),
            rejected_user_limit: AtomicU64::new(0),
            rejected_auth: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            statement_timeouts: AtomicU64::new(0),
            gathered_rows: AtomicU64::new(0),
            gather_too_large: AtomicU64::new(0),
            idle_in_transaction_timeouts: AtomicU64::new(0),
            pause_timeouts: AtomicU64::new(0),
            rebalance_held_writes: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            read_retries: AtomicU64::new(0),
            pins: AtomicU64::new(0),
            routes: RwLock::new(HashMap::new()),
            errors: Mutex::new(BTreeMap::new()),
            reads: RwLock::new(HashMap::new()),
        }
    }
}

impl Metrics {
    /// The series of one shard and route kind, created on first use.
    pub fn route(&self, shard: &str, kind: RouteKind) -> Arc<RouteStats> {
        let key = (shard.to_string(), kind);
        if let Some(s) = self.routes.read().ok().and_then(|m| m.get(&key).cloned()) {
            return s;
        }
        let mut m = self.routes.write().unwrap_or_else(|e| e.into_inner());
        m.entry(key).or_default().clone()
    }

    /// Every route series, sorted by shard then kind.
    pub fn routes(&self) -> Vec<(String, RouteKind, Arc<RouteStats>)> {
        let m = self.routes.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = m
            .iter()
            .map(|((s, k), r)| (s.clone(), *k, r.clone()))
            .collect();
        v.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        v
    }

    /// The counter of one shard's reads that went as `d` says.
    pub fn read_decision(&self, shard: &str, d: ReadDecision) -> Arc<AtomicU64> {
        let key = (shard.to_string(), d);
        if let Some(c) = self.reads.read().ok().and_then(|m| m.get(&key).cloned()) {
            return c;
        }
        let mut m = self.reads.write().unwrap_or_else(|e| e.into_inner());
        m.entry(key).or_default().clone()
    }

    /// Every read-decision counter, sorted by shard then decision.
    pub fn read_decisions(&self) -> Vec<(String, ReadDecision, u64)> {
        let m = self.reads.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = m
            .iter()
            .map(|((s, d), c)| (s.clone(), *d, c.load(Ordering::Relaxed)))
            .collect();
        v.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        v
    }

    pub fn reject(&self, why: Rejection) {
        match why {
            Rejection::MaxClients => &self.rejected_max_clients,
            Rejection::UserLimit => &self.rejected_user_limit,
            Rejection::AuthFailed => &self.rejected_auth,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Count an error sent to a client by its SQLSTATE.
    pub fn error(&self, sqlstate: &str) {
        let class = sqlstate.get(..2).unwrap_or("??").to_string();
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(class).or_default() += 1;
        }
    }

    pub fn errors_by_class(&self) -> BTreeMap<String, u64> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// Builds a Prometheus text exposition: HELP and TYPE once per family.
pub struct Exposition {
    out: String,
}

impl Default for Exposition {
    fn default() -> Self {
        Self::new()
    }
}

impl Exposition {
    pub fn new() -> Self {
        Exposition {
            out: String::with_capacity(16 * 1024),
        }
    }

    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// One sample; `labels` as (name, value) pairs, values escaped here.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        self.labels(labels);
        let _ = writeln!(self.out, " {value}");
        self
    }

    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) -> &mut Self {
        let mut l = String::new();
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                l.push(',');
            }
            let _ = write!(l, "{k}=\"{}\"", escape(v));
        }
        h.render(&mut self.out, name, &l);
        self
    }

    fn labels(&mut self, labels: &[(&str, &str)]) {
        if labels.is_empty() {
            return;
        }
        self.out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{k}=\"{}\"", escape(v));
        }
        self.out.push('}');
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_quantiles() {
        let h = Histogram::default();
        for ms in [1, 1, 1, 20, 3000] {
            h.observe(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 5);
        assert_eq!(h.quantile(0.5), Some(0.001));
        assert_eq!(h.quantile(0.8), Some(0.025));
        assert_eq!(h.quantile(1.0), Some(5.0));
        let mut out = String::new();
        h.render(&mut out, "x", "shard=\"s0\"");
        assert!(out.contains("x_bucket{shard=\"s0\",le=\"0.001\"} 3\n"));
        assert!(out.contains("x_bucket{shard=\"s0\",le=\"+Inf\"} 5\n"));
        assert!(out.contains("x_count{shard=\"s0\"} 5\n"));
    }

    #[test]
    fn exposition_escapes_labels() {
        let mut e = Exposition::new();
        e.family("a_total", "counter", "help")
            .sample("a_total", &[("k", "q\"u\\o\nte")], 3.0);
        let s = e.finish();
        assert!(s.contains("# TYPE a_total counter\n"));
        assert!(s.contains("a_total{k=\"q\\\"u\\\\o\\nte\"} 3\n"), "{s}");
    }

    #[test]
    fn route_series_are_shared() {
        let m = Metrics::default();
        let a = m.route("s0", RouteKind::Single);
        a.queries.fetch_add(2, Ordering::Relaxed);
        let b = m.route("s0", RouteKind::Single);
        assert_eq!(b.queries.load(Ordering::Relaxed), 2);
        m.error("57014");
        m.error("57P01");
        assert_eq!(m.errors_by_class().get("57"), Some(&2));
    }
}

//! Routing micro-benchmarks: `cargo bench --bench routing`.
//!
//! What the proxy does for every statement before any I/O: look up (or parse
//! and analyze) the SQL text, bind the key parameter, and hash the key onto
//! the ring. The router is built from config text, like the proxy builds it.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use shardwire::config::Config;
use shardwire::router::{analyze, Param, Router, SessionHints};
use shardwire::sharding::{pghash, HashRing, KeyValue, DEFAULT_VNODES, SEED};

/// Two shards; hash tables (pgbench_accounts, default vnodes, and
/// pgbench_history, co-located with it), a range
/// table, a geo table and a reference table.
const CONFIG: &str = r#"
[[users]]
name = "app"
password = "app"

[[databases]]
name = "app"

[[shards]]
name = "s0"
servers = [{ host = "127.0.0.1", port = 5432, role = "primary" }]

[[shards]]
name = "s1"
servers = [{ host = "127.0.0.1", port = 5433, role = "primary" }]

[[tables]]
name = "pgbench_accounts"
key = "aid"
strategy = "hash"

[[tables]]
name = "events"
key = "id"
strategy = "range"
ranges = [{ shard = "s0", to = 1000000 }, { shard = "s1", from = 1000000 }]

[[tables]]
name = "users"
key = "country"
strategy = "geo"
regions = { s0 = ["us", "ca"], s1 = ["de", "fr"] }
default_shard = "s0"

[[tables]]
name = "pgbench_branches"
strategy = "reference"

[[tables]]
name = "pgbench_history"
key = "aid"
strategy = "hash"
"#;

const SELECT: &str = "select abalance from pgbench_accounts where aid = $1";

fn router() -> Arc<Router> {
    Config::from_str(Path::new("bench.toml"), CONFIG)
        .expect("bench config is valid")
        .router
}

fn text(v: &[u8]) -> [Param<'_>; 1] {
    [Param::text(v)]
}

/// A binary float8 parameter declared as such in Parse.
fn float_param(v: &[u8; 8]) -> [Param<'_>; 1] {
    [Param {
        value: Some(&v[..]),
        binary: true,
        type_oid: shardwire::router::params::oid::FLOAT8,
    }]
}

fn bench_routing(c: &mut Criterion) {
    let router = router();
    let hints = SessionHints::default();

    // 1. A prepared statement's text seen before: the analysis comes from
    // the parse cache.
    router.route(SELECT, &text(b"42"), &hints).unwrap();
    c.bench_function("route/cached_select_param", |b| {
        b.iter(|| {
            router
                .route(black_box(SELECT), &text(black_box(b"42")), &hints)
                .unwrap()
        })
    });

    // 1a. The same from two threads at once (the machine's two cores), as
    // sessions on different workers route concurrently: the time is per
    // route, so with no contention it is half the single-thread time.
    c.bench_function("route/cached_select_param_2_threads", |b| {
        b.iter_custom(|iters| {
            let started = std::time::Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..iters / 2 {
                            black_box(
                                router
                                    .route(black_box(SELECT), &text(black_box(b"42")), &hints)
                                    .unwrap(),
                            );
                        }
                    });
                }
            });
            started.elapsed()
        })
    });

    // 1b. The same with a binary float8 key declared in Parse (psycopg's
    // Python floats): decoded by its type, the key 42.
    let float_key = 42f64.to_be_bytes();
    router
        .route(SELECT, &float_param(&float_key), &hints)
        .unwrap();
    c.bench_function("route/cached_select_float8_param", |b| {
        b.iter(|| {
            router
                .route(
                    black_box(SELECT),
                    &float_param(black_box(&float_key)),
                    &hints,
                )
                .unwrap()
        })
    });

    // 2. A statement text never seen before (the key is a literal that
    // changes every iteration): parse, analyze, cache insert (evicting once
    // the cache is full), route. The text is built outside the timing.
    let mut i: u64 = 0;
    c.bench_function("route/uncached_select_literal", |b| {
        b.iter_batched(
            || {
                i += 1;
                format!("select abalance from pgbench_accounts where aid = {i}")
            },
            |sql| router.route(&sql, &[], &hints).unwrap(),
            BatchSize::SmallInput,
        )
    });

    // 2b. Parse and analyze alone, without the cache or the route step.
    let tables: analyze::Tables = router
        .tables()
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    c.bench_function("analyze/select_param", |b| {
        b.iter(|| analyze::analyze(black_box(SELECT), &tables))
    });

    // 2c. A new text with a join, a correlated subquery and a CTE: every
    // table reference is walked and pinned (the routing invariant).
    let mut j: u64 = 0;
    c.bench_function("route/uncached_join_subquery_cte", |b| {
        b.iter_batched(
            || {
                j += 1;
                format!(
                    "with recent as (select aid, max(delta) d from pgbench_history where aid = {j} group by aid) \
                     select a.abalance, r.d, b.bbalance from pgbench_accounts a \
                     join recent r on r.aid = a.aid join pgbench_branches b on b.bid = a.bid \
                     where a.aid = {j} and exists (select 1 from pgbench_history h where h.aid = a.aid)"
                )
            },
            |sql| router.route(&sql, &[], &hints).unwrap(),
            BatchSize::SmallInput,
        )
    });

    // 4. A 10-row INSERT, uncached (rows on both shards).
    let mut n: u64 = 0;
    c.bench_function("route/uncached_insert_10_rows", |b| {
        b.iter_batched(
            || {
                n += 1;
                let rows: Vec<String> = (0..10)
                    .map(|r| format!("({}, 0, 0, '')", n * 10 + r))
                    .collect();
                format!(
                    "insert into pgbench_accounts (aid, bid, abalance, filler) values {}",
                    rows.join(", ")
                )
            },
            |sql| router.route(&sql, &[], &hints).unwrap(),
            BatchSize::SmallInput,
        )
    });
}

fn bench_hashing(c: &mut Criterion) {
    // 3. The ring lookup (hash + binary search) and the hash alone.
    let ring = HashRing::new(&["s0", "s1"], DEFAULT_VNODES).unwrap();
    let mut k: i64 = 0;
    c.bench_function("ring/shard_for_int", |b| {
        b.iter(|| {
            k = k.wrapping_add(1);
            ring.shard_for(&KeyValue::Int(black_box(k)))
        })
    });
    c.bench_function("pghash/hashint8extended", |b| {
        b.iter(|| pghash::hashint8extended(black_box(42), SEED))
    });
    c.bench_function("pghash/hashtextextended_16b", |b| {
        b.iter(|| pghash::hashtextextended(black_box(b"user-0123456789a"), SEED))
    });
}

fn config() -> Criterion {
    // Short runs: the whole suite takes well under two minutes.
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_routing, bench_hashing
}
criterion_main!(benches);

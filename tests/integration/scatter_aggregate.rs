//! Cross-shard one-row aggregates, avg in particular (simple protocol): the
//! proxy runs `avg(e)` on the shards as `sum(e), count(e)` and divides; the
//! answer must be the text, and the column names, that the same query gives
//! on one unsharded table holding the same data.

use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;

use crate::common::*;

const TABLES: &str = r#"
[[tables]]
name = "sa_t"
key = "id"
strategy = "hash"
"#;

const COLUMNS: &str =
    "id int primary key, grp int, s smallint, n int, b bigint, x numeric, x2 numeric(12,3), f float8, \
     g text collate \"C\", k int";

const COLUMN_NAMES: &str = "id, grp, s, n, b, x, x2, f, g, k";

/// The rows, as an INSERT's VALUES list; `on0(id)`: the row is on shard 0.
fn values(on0: impl Fn(i64) -> bool) -> String {
    let null_every = |i: i64, k: i64, v: String| if i % k == 0 { "null".into() } else { v };
    (1..=70i64)
        .map(|i| {
            let grp = if on0(i) { 1 } else { 0 };
            let s = null_every(i, 6, format!("{}", (i * 97) % 301 - 150));
            let n = null_every(i, 7, format!("{}", (i * 7919) % 2003 - 1000));
            let b = null_every(
                i,
                5,
                format!("{}", ((i * 31) % 17 - 8) * 1_000_000_000_000_007),
            );
            let x = null_every(i, 4, format!("{}.{}", (i * 37) % 41 - 20, i % 1000 * 7));
            let x2 = null_every(
                i,
                9,
                format!("{}.{:03}", (i * 13) % 23 - 11, (i * 71) % 1000),
            );
            let f = format!("{}.5", i % 13);
            let g = null_every(
                i,
                8,
                format!(
                    "'{}'",
                    ["apple", "Banana", "cherry", "a b", ""][(i % 5) as usize]
                ),
            );
            // k = 99 only on shard 0's rows: a group one shard lacks.
            let k = if on0(i) && i % 4 == 1 {
                "99".into()
            } else {
                null_every(i, 10, format!("{}", i % 3))
            };
            format!("({i}, {grp}, {s}, {n}, {b}, {x}, {x2}, {f}, {g}, {k})")
        })
        .collect::<Vec<_>>()
        .join(",\n")
}

/// One-row aggregates: the row is compared as text, and the column names.
const QUERIES: &[&str] = &[
    "select avg(n) from {t}",
    "select avg(s) from {t}",
    "select avg(b) from {t}",
    "select avg(x) from {t}",
    "select avg(x2) from {t}",
    "select avg(n) as mean, count(*), count(n), sum(n), min(n), max(n) from {t}",
    "select count(*), count(s), count(x), avg(x) \"Avg X\", avg(b) from {t}",
    "select avg(id) from {t}",
    "select avg(n) from {t} where grp = 1",
    "select avg(x), count(*) from {t} where grp = 0 and x is not null",
    "select avg(n), avg(x) from {t} where id < 0",
    "select avg(n), count(n) from {t} where n is null",
    "select avg(n * 3 + 1), pg_catalog.avg(b / 7) from {t} where id % 3 = 0",
    "select avg(id) from {t} where id in (1, 2)",
    "select avg(id) from {t} where id in (7, 7, 8, 9)",
    "select avg(x2 * x2) from {t}",
    "select avg(-x) from {t} where id > 60",
    "select avg(n::numeric / 1000) from {t}",
    "select sum(b), avg(b), min(x), max(x) from {t} where id between 10 and 40",
];

/// GROUP BY queries, ordered by every group key so the order is defined.
const GROUP_QUERIES: &[&str] = &[
    "select g, count(*) from {t} group by g order by g collate \"C\"",
    "select g, count(*), count(n), sum(n), min(n), max(n), avg(n) from {t} group by g order by g collate \"C\" nulls first",
    "select k, avg(x), avg(b), sum(b) from {t} group by k order by k",
    "select k, g, count(*) from {t} group by k, g order by k, g collate \"C\"",
    "select g, avg(s) as a from {t} group by 1 order by g collate \"C\" desc",
    "select count(*), g from {t} group by g order by count(*) desc, g collate \"C\"",
    "select g, sum(x2), avg(x2) from {t} where grp = 1 group by g order by g collate \"C\"",
    "select g, count(*) from {t} where id < 0 group by g order by g collate \"C\"",
    "select k, count(n), avg(n) from {t} where n is null group by k order by k",
    "select g, max(x), min(x) from {t} group by g order by g collate \"C\" limit 3",
    "select g, count(*) from {t} group by g order by g collate \"C\" offset 2",
    "select k, avg(n) from {t} group by k order by avg(n) desc, k limit 4 offset 1",
    "select grp, avg(id), count(*) from {t} group by grp order by grp",
    "select b, count(*), avg(n) from {t} group by b order by b nulls first",
    "select x2, count(*) from {t} group by x2 order by x2 desc",
    "select g, k, avg(x), count(*) from {t} where id % 2 = 0 group by g, k order by g collate \"C\" desc, k nulls first",
    "select f, count(*), min(s) from {t} group by f order by f",
    "select t.g, count(t.id) as c from {t} t group by t.g order by c, t.g collate \"C\"",
];

fn names(msgs: &[SimpleQueryMessage]) -> Vec<String> {
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::RowDescription(cols) => {
                Some(cols.iter().map(|c| c.name().to_string()).collect())
            }
            _ => None,
        })
        .unwrap_or_default()
}

#[test]
fn avg_matches_one_database() {
    // Tier 3 off: this file checks the merges and their refusals (with
    // tier 3 on, PostgreSQL answers what they refuse: differential.rs).
    let proxy = TestProxy::start(|c| {
        set_tables(c, TABLES);
        set(c, "limits.max_intermediate_rows", 0);
    });
    let config = shardwire::config::Config::load(&proxy.config_path).expect("config");
    let rule = config.router.table("sa_t").expect("sa_t").clone();
    let on0 = move |id: i64| {
        rule.shard_for(&shardwire::sharding::KeyValue::Int(id))
            .expect("shard")
            == 0
    };
    block_on(Duration::from_secs(300), async {
        let shards = connect_shards("drop table if exists sa_t, sa_all").await;
        let (c, _task) = connect_url(&proxy.url()).await;
        c.simple_query(&format!("create table sa_t ({COLUMNS})"))
            .await
            .expect("create sa_t");
        let one = &shards[0];
        one.batch_execute(&format!("create table sa_all ({COLUMNS})"))
            .await
            .expect("create sa_all");
        let v = values(on0);
        c.simple_query(&format!("insert into sa_t ({COLUMN_NAMES}) values {v}"))
            .await
            .expect("insert through the proxy");
        one.batch_execute(&format!("insert into sa_all ({COLUMN_NAMES}) values {v}"))
            .await
            .expect("insert into the unsharded copy");
        for s in &shards {
            assert!(query_count(s, "select count(*) from sa_t").await > 15);
        }

        for q in QUERIES {
            let through = c
                .simple_query(&q.replace("{t}", "sa_t"))
                .await
                .unwrap_or_else(|e| panic!("{q}: {e:?}"));
            let want = one
                .simple_query(&q.replace("{t}", "sa_all"))
                .await
                .unwrap_or_else(|e| panic!("{q}: {e:?}"));
            assert_eq!(simple_rows(&through), simple_rows(&want), "{q}");
            assert_eq!(simple_rows(&through).len(), 1, "{q}");
            assert_eq!(names(&through), names(&want), "{q}");
        }
        for q in GROUP_QUERIES {
            let through = c
                .simple_query(&q.replace("{t}", "sa_t"))
                .await
                .unwrap_or_else(|e| panic!("{q}: {e:?}"));
            let want = one
                .simple_query(&q.replace("{t}", "sa_all"))
                .await
                .unwrap_or_else(|e| panic!("{q}: {e:?}"));
            assert_eq!(simple_rows(&through), simple_rows(&want), "{q}");
            assert_eq!(names(&through), names(&want), "{q}");
        }
        // Without ORDER BY the groups come in key order (NULLs last).
        let through = c
            .simple_query("select g, k, count(*), avg(n) from sa_t group by g, k")
            .await
            .expect("unordered groups");
        let want = one
            .simple_query("select g, k, count(*), avg(n) from sa_all group by g, k order by g, k")
            .await
            .expect("ordered groups");
        assert_eq!(simple_rows(&through), simple_rows(&want));
        assert!(simple_rows(&want).len() > 10);

        // Inside a transaction (on the transaction's connections).
        c.simple_query("begin").await.expect("begin");
        let q = "select count(*), avg(x) from {t}";
        let through = c
            .simple_query(&q.replace("{t}", "sa_t"))
            .await
            .expect("in a transaction");
        let want = one
            .simple_query(&q.replace("{t}", "sa_all"))
            .await
            .expect(q);
        assert_eq!(simple_rows(&through), simple_rows(&want), "{q}");
        let q = "select k, avg(n), count(*) from {t} group by k order by k desc limit 2";
        let through = c
            .simple_query(&q.replace("{t}", "sa_t"))
            .await
            .expect("groups in a transaction");
        let want = one
            .simple_query(&q.replace("{t}", "sa_all"))
            .await
            .expect(q);
        assert_eq!(simple_rows(&through), simple_rows(&want), "{q}");
        c.simple_query("commit").await.expect("commit");

        // Refused, not answered wrongly.
        for (q, why) in [
            ("select avg(f) from sa_t", "avg"),
            ("select avg(distinct n) from sa_t", "shard"),
            (
                "select avg(n) from sa_t limit 1",
                "ORDER BY, LIMIT or OFFSET",
            ),
        ] {
            let e = c.simple_query(q).await.expect_err(q);
            assert_eq!(sqlstate(&e), "0A000", "{q}: {e:?}");
            assert!(db_message(&e).contains(why), "{q}: {}", db_message(&e));
        }
        let rows = simple_rows(
            &c.simple_query("select avg(id) from sa_t where id in (1, 2)")
                .await
                .expect("after refusals"),
        );
        assert_eq!(rows, [[Some("1.5000000000000000".to_string())]]);
        shards[0]
            .batch_execute("drop table sa_all")
            .await
            .expect("drop");
        c.simple_query("drop table sa_t").await.expect("drop sa_t");
    });
}

//! Cross-shard statements in the extended query protocol, as
//! tokio-postgres sends them: prepared statements with parameters, binary
//! results, unnamed statements parsed and bound in one batch. Each answer
//! must be byte for byte what the same statement gives on one unsharded
//! table holding the same rows.

use std::time::Duration;

use tokio_postgres::types::{FromSql, ToSql, Type};

use crate::common::*;

const TABLES: &str = r#"
[[tables]]
name = "sx_t"
key = "id"
strategy = "hash"

[[tables]]
name = "sx_ref"
strategy = "reference"
"#;

const COLUMNS: &str = "id int primary key, grp int, n int, b bigint, x numeric, f float8, \
     g text collate \"C\", d date, ts timestamptz, u uuid, ok bool";

const COLUMN_NAMES: &str = "id, grp, n, b, x, f, g, d, ts, u, ok";

fn values() -> String {
    let null_every = |i: i64, k: i64, v: String| if i % k == 0 { "null".into() } else { v };
    (1..=60i64)
        .map(|i| {
            format!(
                "({i}, {}, {}, {}, {}, {}.25, {}, {}, {}, {}, {})",
                i % 4,
                null_every(i, 7, format!("{}", (i * 7919) % 2003 - 1000)),
                null_every(i, 5, format!("{}", (i * 31 % 17 - 8) * 1_000_000_007)),
                null_every(i, 4, format!("{}.{}", (i * 37) % 41 - 20, i * 7 % 100)),
                i % 13 - 6,
                null_every(
                    i,
                    8,
                    format!(
                        "'{}'",
                        ["apple", "Banana", "cherry", "a b", ""][(i % 5) as usize]
                    )
                ),
                null_every(i, 6, format!("date '2024-01-01' + {}", i * 11 % 50)),
                null_every(
                    i,
                    9,
                    format!(
                        "timestamptz '2024-03-01 12:00:00+00' + interval '{} minutes'",
                        i * 37 % 500
                    )
                ),
                null_every(
                    i,
                    10,
                    format!(
                        "'{:08x}-0000-4000-8000-{:012x}'",
                        i * 2654435761 % 4294967296,
                        i
                    )
                ),
                null_every(i, 11, format!("{}", i % 3 == 0)),
            )
        })
        .collect::<Vec<_>>()
        .join(",\n")
}

/// Any value, as the raw bytes the server (or proxy) sent.
#[derive(Debug, PartialEq)]
struct Raw(Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

fn raw_rows(rows: &[tokio_postgres::Row]) -> Vec<Vec<Raw>> {
    rows.iter()
        .map(|r| (0..r.len()).map(|i| r.get::<_, Raw>(i)).collect())
        .collect()
}

fn described(rows: &[tokio_postgres::Row]) -> Vec<(String, Type)> {
    rows.first()
        .map(|r| {
            r.columns()
                .iter()
                .map(|c| (c.name().to_string(), c.type_().clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// (query, parameters, ordered): unordered answers are compared sorted.
type Case = (&'static str, Vec<Box<dyn ToSql + Sync + Send>>, bool);

fn cases() -> Vec<Case> {
    vec![
        ("select count(*) from {t}", vec![], true),
        (
            "select count(*), count(n), sum(n), sum(b), min(f), max(x), avg(x), avg(n) from {t} where id > $1",
            vec![Box::new(3i32)],
            true,
        ),
        ("select id, n, g from {t} where grp = $1", vec![Box::new(2i32)], false),
        (
            "select id, x, ts from {t} where id in ($1, $2, $3, $4)",
            vec![Box::new(1i32), Box::new(2i32), Box::new(3i32), Box::new(40i32)],
            false,
        ),
        ("select * from {t} order by id limit 7 offset 3", vec![], true),
        ("select id, x from {t} order by x desc nulls last, id limit 10", vec![], true),
        ("select id, g from {t} where g <> $1 order by g collate \"C\", id desc", vec![Box::new("apple")], true),
        ("select id, f, n from {t} order by f, n nulls first, id", vec![], true),
        ("select id, d, ts from {t} order by d desc, ts, id limit 20", vec![], true),
        ("select id, u from {t} order by u nulls first, id", vec![], true),
        ("select id, ok, b from {t} order by ok, b desc, id", vec![], true),
        (
            "select g, count(*), sum(b), avg(n), min(ts), max(d) from {t} group by g order by g collate \"C\" nulls first",
            vec![],
            true,
        ),
        ("select grp, avg(x), max(ts) from {t} where n > $1 group by grp order by grp", vec![Box::new(-500i32)], true),
        ("select ok, count(*) from {t} group by ok order by ok", vec![], true),
        ("select count(*), sum(x) from {t} where id < 0", vec![], true),
        ("select distinct grp, ok from {t} where id > $1 order by grp, ok", vec![Box::new(5i32)], true),
        (
            "select grp, count(*), avg(n) from {t} where id > $1 group by grp having count(*) > 10 order by grp",
            vec![Box::new(2i32)],
            true,
        ),
        ("select count(distinct grp) from {t}", vec![], true),
        ("select grp, count(distinct g) from {t} group by grp order by grp", vec![], true),
    ]
}

#[test]
fn extended_protocol_scatter_matches_one_database() {
    let proxy = TestProxy::start(|c| set_tables(c, TABLES));
    block_on(Duration::from_secs(300), async {
        let shards = connect_shards("drop table if exists sx_t, sx_all, sx_ref").await;
        let (mut c, _task) = connect_url(&proxy.url()).await;
        // DDL and reference-table writes through the extended protocol
        // run on every shard.
        c.execute(&format!("create table sx_t ({COLUMNS})"), &[])
            .await
            .expect("create sx_t (extended)");
        c.execute("create table sx_ref (k int primary key, label text)", &[])
            .await
            .expect("create sx_ref (extended)");
        let n = c
            .execute(
                "insert into sx_ref values ($1, $2), (2, 'two')",
                &[&1i32, &"one"],
            )
            .await
            .expect("reference insert (extended)");
        assert_eq!(n, 2);
        for s in &shards {
            assert_eq!(query_count(s, "select count(*) from sx_ref").await, 2);
        }
        let one = &shards[0];
        one.batch_execute(&format!("create table sx_all ({COLUMNS})"))
            .await
            .expect("create sx_all");
        let v = values();
        c.simple_query(&format!("insert into sx_t ({COLUMN_NAMES}) values {v}"))
            .await
            .expect("insert through the proxy");
        one.batch_execute(&format!("insert into sx_all ({COLUMN_NAMES}) values {v}"))
            .await
            .expect("insert into the unsharded copy");
        for s in &shards {
            assert!(query_count(s, "select count(*) from sx_t").await > 15);
        }

        for (q, params, ordered) in cases() {
            let p: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|b| b.as_ref() as &(dyn ToSql + Sync))
                .collect();
            // A named statement (Parse/Describe, then Bind/Execute) and an
            // unnamed one (Parse/Bind/Describe/Execute in one batch).
            let through = c
                .query(&q.replace("{t}", "sx_t"), &p)
                .await
                .unwrap_or_else(|e| panic!("{q}: {e:?}"));
            let want = one
                .query(&q.replace("{t}", "sx_all"), &p)
                .await
                .unwrap_or_else(|e| panic!("{q}: {e:?}"));
            assert_eq!(described(&through), described(&want), "{q}");
            let (mut got, mut expected) = (raw_rows(&through), raw_rows(&want));
            if !ordered {
                got.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
                expected.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
            }
            assert_eq!(got, expected, "{q}");
            let typed: Vec<(&(dyn ToSql + Sync), Type)> = p
                .iter()
                .map(|v| (*v, Type::INT4))
                .filter(|_| !q.contains("g <>"))
                .collect();
            if typed.len() == p.len() {
                let again = c
                    .query_typed(&q.replace("{t}", "sx_t"), &typed)
                    .await
                    .unwrap_or_else(|e| panic!("unnamed {q}: {e:?}"));
                let mut again = raw_rows(&again);
                if !ordered {
                    again.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
                }
                assert_eq!(again, expected, "unnamed {q}");
            }
        }

        // The same prepared statement, many times, with different values.
        let stmt = c
            .prepare("select count(*), sum(n) from sx_t where grp = $1")
            .await
            .expect("prepare");
        for grp in 0..4i32 {
            let got = c.query_one(&stmt, &[&grp]).await.expect("execute");
            let want = one
                .query_one(
                    "select count(*), sum(n) from sx_all where grp = $1",
                    &[&grp],
                )
                .await
                .expect("direct");
            assert_eq!(got.get::<_, i64>(0), want.get::<_, i64>(0));
        }

        // Writes on several shards: counts summed, RETURNING rows joined,
        // all or nothing.
        let n = c
            .execute("update sx_t set n = n + $1 where grp = $2", &[&1i32, &1i32])
            .await
            .expect("multi-shard update");
        let want = one
            .execute(
                "update sx_all set n = n + $1 where grp = $2",
                &[&1i32, &1i32],
            )
            .await
            .expect("direct update");
        assert_eq!(n, want);
        assert!(n > 5);
        let mut returned: Vec<i32> = c
            .query("delete from sx_t where grp = $1 returning id", &[&3i32])
            .await
            .expect("multi-shard delete returning")
            .iter()
            .map(|r| r.get(0))
            .collect();
        returned.sort();
        let mut want: Vec<i32> = one
            .query("delete from sx_all where grp = $1 returning id", &[&3i32])
            .await
            .expect("direct delete")
            .iter()
            .map(|r| r.get(0))
            .collect();
        want.sort();
        assert_eq!(returned, want);
        let e = c
            .execute("update sx_t set n = 1 / (n - n) where grp = $1", &[&2i32])
            .await
            .expect_err("division by zero on every shard");
        assert_eq!(sqlstate(&e), "22012", "{e}");
        let got = c
            .query_one("select sum(n) from sx_t", &[])
            .await
            .expect("sum after the failed update");
        let want = one
            .query_one("select sum(n) from sx_all", &[])
            .await
            .expect("direct sum");
        assert_eq!(got.get::<_, Option<i64>>(0), want.get::<_, Option<i64>>(0));

        // What the shards' answers cannot be merged into is answered by
        // PostgreSQL from the gathered rows (tier 3), as one database.
        let got = c
            .query_one(
                "select string_agg(g, ',' order by id) from sx_t where id > $1",
                &[&0i32],
            )
            .await
            .expect("string_agg across shards");
        let want = one
            .query_one(
                "select string_agg(g, ',' order by id) from sx_all where id > $1",
                &[&0i32],
            )
            .await
            .expect("direct string_agg");
        assert_eq!(
            got.get::<_, Option<String>>(0),
            want.get::<_, Option<String>>(0)
        );
        let ids = |rows: Vec<tokio_postgres::Row>| -> Vec<i32> {
            rows.iter().map(|r| r.get(0)).collect()
        };
        let got = c
            .query("select id from sx_t order by id limit $1", &[&3i64])
            .await
            .expect("LIMIT $1 across shards");
        let want = one
            .query("select id from sx_all order by id limit $1", &[&3i64])
            .await
            .expect("direct LIMIT $1");
        assert_eq!(ids(got), ids(want));
        // Inside a transaction block: a transaction over several shards,
        // whether the cross-shard statement comes first or later.
        for first_single in [true, false] {
            let tx = c.transaction().await.expect("begin");
            if first_single {
                tx.query_one("select n from sx_t where id = $1", &[&5i32])
                    .await
                    .expect("single-shard read in the transaction");
            }
            let got: i64 = tx
                .query_one("select count(*) from sx_t where grp = $1", &[&0i32])
                .await
                .expect("cross-shard count in an extended transaction")
                .get(0);
            let want: i64 = one
                .query_one("select count(*) from sx_all where grp = $1", &[&0i32])
                .await
                .expect("direct")
                .get(0);
            assert_eq!(got, want);
            tx.rollback().await.expect("rollback");
        }
        let tx = c.transaction().await.expect("begin");
        drop(tx);
        let n: i64 = c
            .query_one("select count(*) from sx_t", &[])
            .await
            .expect("the session goes on")
            .get(0);
        assert_eq!(n, query_count(one, "select count(*) from sx_all").await);
        c.simple_query("drop table sx_t, sx_ref")
            .await
            .expect("drop");
        one.batch_execute("drop table sx_all")
            .await
            .expect("drop copy");
    });
}

/// Batches pipelined by a driver (each with its own Sync) for different
/// shards, and cross-shard statements among them, all run: the proxy
/// waits for the earlier batches' answers before moving the session to
/// another shard.
#[test]
fn pipelined_batches_for_different_shards() {
    let proxy = TestProxy::start(|c| {
        set_tables(
            c,
            r#"
[[tables]]
name = "sx_pipe"
key = "id"
strategy = "hash"
"#,
        )
    });
    block_on(Duration::from_secs(120), async {
        let (c, _task) = connect_url(&proxy.url()).await;
        c.simple_query(
            "drop table if exists sx_pipe; create table sx_pipe (id int primary key, v int)",
        )
        .await
        .expect("create");
        let insert = c
            .prepare("insert into sx_pipe (id, v) values ($1, $2)")
            .await
            .expect("prepare");
        let count = c
            .prepare("select count(*) from sx_pipe")
            .await
            .expect("prepare count");
        let futures = (1..=300i32).map(|id| {
            let (c, insert, count) = (&c, &insert, &count);
            async move {
                c.execute(insert, &[&id, &(id * 2)]).await?;
                if id % 50 == 0 {
                    let n: i64 = c.query_one(count, &[]).await?.get(0);
                    assert!(n >= 1);
                }
                Ok::<_, tokio_postgres::Error>(())
            }
        });
        let results = futures_util::future::join_all(futures).await;
        let failed: Vec<String> = results
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
            .collect();
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        );
        let n: i64 = c.query_one(&count, &[]).await.expect("count").get(0);
        assert_eq!(n, 300);
        let shards = connect_shards("select 1").await;
        for s in &shards {
            assert!(query_count(s, "select count(*) from sx_pipe").await > 100);
        }
        c.simple_query("drop table sx_pipe").await.expect("drop");
    });
}

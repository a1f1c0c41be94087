//! Cross-shard SELECTs with ORDER BY / LIMIT / OFFSET (simple protocol):
//! the proxy's k-way merge of the shards' sorted rows must give the rows,
//! in order, that the same query gives on one unsharded table holding the
//! same data. Text columns use COLLATE "C", the order the merge uses.

use std::time::Duration;

use crate::common::*;

const TABLES: &str = r#"
[[tables]]
name = "so_t"
key = "id"
strategy = "hash"
"#;

const COLUMNS: &str = "id int primary key, grp int, i8 bigint, n numeric, f float8, f4 real, \
     t text collate \"C\", vc varchar(20) collate \"C\", c char(5) collate \"C\", \
     d date, ts timestamp, tz timestamptz, u uuid, b bool, j jsonb";

const COLUMN_NAMES: &str = "id, grp, i8, n, f, f4, t, vc, c, d, ts, tz, u, b, j";

const WORDS: &[&str] = &[
    "apple",
    "Banana",
    "cherry",
    "apple",
    "Zeta",
    "éclair",
    "",
    "a b",
    "apple pie",
    "zeta",
];

/// The rows, as an INSERT's VALUES list; `on0(id)`: the row is on shard 0.
fn values(on0: impl Fn(i64) -> bool) -> String {
    let null_every = |i: i64, k: i64, v: String| if i % k == 0 { "null".into() } else { v };
    (1..=90i64)
        .map(|i| {
            let grp = if on0(i) { 1 } else { 0 };
            let i8 = null_every(i, 9, format!("{}", ((i * 7919) % 101 - 50) * 1_000_000_000_007));
            let n = match i {
                13 => "'NaN'".into(),
                26 => "'Infinity'".into(),
                39 => "'-Infinity'".into(),
                _ => null_every(i, 11, format!("{}.{}", (i * 37) % 41 - 20, i % 13)),
            };
            let f = match i {
                5 => "'NaN'".into(),
                10 => "'Infinity'".into(),
                15 => "'-Infinity'".into(),
                20 => "'-0'".into(),
                25 => "0".into(),
                _ => null_every(i, 17, format!("{}e{}", (i * 31) % 97 - 48, i % 5 - 2)),
            };
            let f4 = null_every(i, 8, format!("{}.{}", (i * 13) % 29 - 14, i % 7));
            let t = null_every(i, 10, format!("'{}'", WORDS[(i % 9) as usize]));
            let vc = format!("'{}{}'", WORDS[(i % 7) as usize], i % 4);
            let c = null_every(i, 12, format!("'{}'", ["ab", "a", "b", "ab c", "A"][(i % 5) as usize]));
            let d = match i {
                7 => "'0044-03-15 BC'".into(),
                14 => "'infinity'".into(),
                21 => "'12000-01-01'".into(),
                _ => null_every(i, 16, format!("date '2024-01-01' + {}", (i * 13) % 400 - 200)),
            };
            let ts = null_every(
                i,
                19,
                format!(
                    "timestamp '2024-03-10 00:00' + interval '{} seconds'",
                    (i * 7_777_777) % 9_000_000 - 4_000_000
                ),
            );
            // Around the end of daylight saving time in Europe/Berlin.
            let tz = null_every(
                i,
                23,
                format!(
                    "timestamptz '2024-10-27 00:00:00+00' + interval '{} seconds'",
                    (i * 397) % 14_400
                ),
            );
            let u = format!(
                "'{:08x}-0000-4000-8000-{:012x}'",
                (i as u64 * 2_654_435_761) % (1 << 32),
                i
            );
            let b = null_every(i, 7, if i % 3 == 0 { "true" } else { "false" }.into());
            format!("({i}, {grp}, {i8}, {n}, {f}, {f4}, {t}, {vc}, {c}, {d}, {ts}, {tz}, {u}, {b}, '{{}}')")
        })
        .collect::<Vec<_>>()
        .join(",\n")
}

/// ORDER BY total (ties broken by id) so the row order is defined.
const QUERIES: &[&str] = &[
    "select id, t from {t} order by t, id",
    "select id, t from {t} order by t desc, id desc",
    "select id, t from {t} order by t nulls first, id",
    "select id, t from {t} order by t desc nulls last, id limit 17",
    "select id, i8 from {t} order by i8, id limit 10 offset 5",
    "select id, n from {t} order by n desc, id",
    "select id, n from {t} order by n nulls first, id limit 30",
    "select id, f from {t} order by f, id",
    "select id, f from {t} order by f desc nulls last, id offset 4",
    "select id, f4 from {t} order by 2 desc, 1",
    "select id, c from {t} order by c, id",
    "select id, vc as name from {t} order by name desc, id",
    "select id, d from {t} order by d, id",
    "select id, d from {t} order by d desc, id limit 12",
    "select id, ts from {t} order by ts desc, id limit 20 offset 3",
    "select id, tz from {t} order by tz, id",
    "select id, tz from {t} order by tz desc nulls last, id limit 25 offset 10",
    "select id, u from {t} order by u",
    "select id, u from {t} order by u desc limit 9",
    "select id, b from {t} order by b nulls first, id desc",
    "select * from {t} order by id desc limit 5",
    "select * from {t} order by tz, d desc, id limit 8 offset 2",
    "select id, t, n from {t} where grp = 1 order by n, id",
    "select id, t, n from {t} where grp = 1 order by t desc, id limit 4 offset 1",
    "select id from {t} where t = 'nope' order by id",
    "select id, t from {t} order by id limit 1000 offset 70",
    "select id from {t} order by id offset 100",
    "select id, n from {t} order by id limit 0",
    "select id, lower(t) lt from {t} order by lower(t), id",
    "select id, t from {t} order by t collate \"C\" desc, id",
    "select id, i8 * 2 as dbl from {t} order by i8 * 2 desc, id limit all",
    "select id, t, d from {t} order by d desc, t, id limit 7",
    "select id, t from {t} where id > 40 order by t nulls first, 1 offset 2",
    "select a.id, a.c from {t} a order by a.c desc, a.id limit 11",
    "select id, i8::numeric / 7 as q from {t} where t ~~ 'a%' or vc like E'Z\\_%' order by q desc nulls last, id limit 3 offset 1",
];

#[test]
fn order_by_limit_offset_match_one_database() {
    // Tier 3 off: this file checks the merges and their refusals (with
    // tier 3 on, PostgreSQL answers what they refuse: differential.rs).
    let proxy = TestProxy::start(|c| {
        set_tables(c, TABLES);
        set(c, "limits.max_intermediate_rows", 0);
    });
    let config = shardwire::config::Config::load(&proxy.config_path).expect("config");
    let rule = config.router.table("so_t").expect("so_t").clone();
    let on0 = move |id: i64| {
        rule.shard_for(&shardwire::sharding::KeyValue::Int(id))
            .expect("shard")
            == 0
    };
    block_on(Duration::from_secs(300), async {
        let shards = connect_shards("drop table if exists so_t, so_all").await;
        let (c, _task) = connect_url(&proxy.url()).await;
        c.simple_query(&format!("create table so_t ({COLUMNS})"))
            .await
            .expect("create so_t");
        let one = &shards[0];
        one.batch_execute(&format!("create table so_all ({COLUMNS})"))
            .await
            .expect("create so_all");
        let v = values(on0);
        c.simple_query(&format!("insert into so_t ({COLUMN_NAMES}) values {v}"))
            .await
            .expect("insert through the proxy");
        one.batch_execute(&format!("insert into so_all ({COLUMN_NAMES}) values {v}"))
            .await
            .expect("insert into the unsharded copy");
        for s in &shards {
            assert!(query_count(s, "select count(*) from so_t").await > 20);
        }
        for session in [&c, one] {
            session
                .simple_query("set timezone = 'Europe/Berlin'")
                .await
                .expect("set timezone");
        }

        for q in QUERIES {
            let through = c
                .simple_query(&q.replace("{t}", "so_t"))
                .await
                .unwrap_or_else(|e| panic!("{q}: {e:?}"));
            let want = one
                .simple_query(&q.replace("{t}", "so_all"))
                .await
                .unwrap_or_else(|e| panic!("{q}: {e:?}"));
            assert_eq!(simple_rows(&through), simple_rows(&want), "{q}");
        }
        // Inside a transaction (on the transaction's connections).
        c.simple_query("begin").await.expect("begin");
        let q = "select id, n from {t} order by n desc nulls last, id limit 6 offset 2";
        let through = c
            .simple_query(&q.replace("{t}", "so_t"))
            .await
            .expect("in a transaction");
        let want = one
            .simple_query(&q.replace("{t}", "so_all"))
            .await
            .expect(q);
        assert_eq!(simple_rows(&through), simple_rows(&want), "{q}");
        assert_eq!(simple_rows(&through).len(), 6);
        c.simple_query("commit").await.expect("commit");

        // Daylight saving: the text order of tz differs from its time order.
        let tz = simple_rows(
            &c.simple_query("select tz from so_t where tz is not null order by tz")
                .await
                .expect("tz"),
        );
        let text: Vec<_> = tz.iter().map(|r| r[0].clone()).collect();
        let mut sorted_text = text.clone();
        sorted_text.sort();
        assert_ne!(text, sorted_text, "the data should cross the DST change");

        // Refused, not answered wrongly.
        for (q, why) in [
            ("select id from so_t order by t", "select list"),
            (
                "select id, t from so_t order by t collate \"en_US\"",
                "COLLATE",
            ),
            ("select id from so_t order by id limit $1", "LIMIT"),
            (
                "select id from so_t order by id fetch first 2 rows with ties",
                "WITH TIES",
            ),
            ("select id, j from so_t order by 2", "type OID"),
        ] {
            let e = c.simple_query(q).await.expect_err(q);
            assert_eq!(sqlstate(&e), "0A000", "{q}: {e:?}");
            assert!(db_message(&e).contains(why), "{q}: {}", db_message(&e));
        }
        // Dates in another DateStyle are not compared as text.
        c.simple_query("set datestyle = 'SQL, DMY'")
            .await
            .expect("datestyle");
        let e = c
            .simple_query("select id, d from so_t order by d, id")
            .await
            .expect_err("SQL DateStyle");
        assert_eq!(sqlstate(&e), "0A000", "{e:?}");
        assert!(db_message(&e).contains("ISO"), "{}", db_message(&e));
        c.simple_query("set datestyle = 'ISO, MDY'")
            .await
            .expect("datestyle");
        // The session still works after refusals.
        let rows = simple_rows(
            &c.simple_query("select id from so_t order by id desc limit 2")
                .await
                .expect("after refusals"),
        );
        assert_eq!(rows, [[Some("90".to_string())], [Some("89".to_string())]]);
        shards[0]
            .batch_execute("drop table so_all")
            .await
            .expect("drop");
        c.simple_query("drop table so_t").await.expect("drop so_t");
    });
}

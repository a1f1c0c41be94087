//! Tier 3 (router::gather, execute::gather, session/gathered.rs): reads the
//! shards cannot answer together, answered by PostgreSQL on the default
//! shard from the rows gathered there. differential.rs compares such
//! answers with one database; this file covers the mechanism around them:
//! the row limit, tier 3 turned off, transactions, parameters and session
//! settings on the merge connection, metrics, `shardwire route`, nothing
//! left behind on the merge server, concurrent gathers, and a shard that
//! is down.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

const TABLES: &str = r#"
[[tables]]
name = "gt_a"
key = "id"
strategy = "hash"

[[tables]]
name = "gt_b"
key = "id"
strategy = "hash"

[[tables]]
name = "gt_c"
key = "id"
strategy = "hash"
"#;

/// gt_a: ids 1..=30, v = id % 5; gt_b: ids 1..=5, v = id. A join on v is
/// not on the shard keys, so only tier 3 answers it.
const JOIN: &str = "select a.id, b.id from gt_a a join gt_b b on b.v = a.v";

/// What JOIN answers: each gt_a row with v in 1..=4 meets gt_b row v.
fn join_rows(min_id: i64) -> Vec<(i64, i64)> {
    let mut rows: Vec<(i64, i64)> = (1..=30i64)
        .filter(|id| id % 5 != 0 && *id > min_id)
        .map(|id| (id, id % 5))
        .collect();
    rows.sort();
    rows
}

fn pairs(rows: &[Vec<Option<String>>]) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r[0].as_deref().unwrap().parse().unwrap(),
                r[1].as_deref().unwrap().parse().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn load(c: &tokio_postgres::Client) {
    c.batch_execute(
        "drop table if exists gt_a; drop table if exists gt_b; drop table if exists gt_c;
         create table gt_a (id int8 primary key, v int, ts timestamptz);
         create table gt_b (id int8 primary key, v int);
         create table gt_c (id int8 primary key, v int)",
    )
    .await
    .expect("schema");
    let a: Vec<String> = (1..=30)
        .map(|i| {
            format!(
                "({i}, {}, timestamptz '2024-01-01 00:00:00+00' + interval '{i} hours')",
                i % 5
            )
        })
        .collect();
    c.simple_query(&format!("insert into gt_a values {}", a.join(", ")))
        .await
        .expect("gt_a rows");
    c.simple_query("insert into gt_b values (1, 1), (2, 2), (3, 3), (4, 4), (5, 5)")
        .await
        .expect("gt_b rows");
    let rows: Vec<String> = (1..=15).map(|i| format!("({i}, {})", i % 3)).collect();
    c.simple_query(&format!("insert into gt_c values {}", rows.join(", ")))
        .await
        .expect("gt_c rows");
}

#[test]
fn gathered_reads_answer_with_parameters_settings_and_bounds() {
    let proxy = TestProxy::start(|c| {
        set_tables(c, TABLES);
        set(c, "limits.max_intermediate_rows", 40);
    });
    block_on(Duration::from_secs(120), async {
        let (c, _t) = connect_url(&proxy.url()).await;
        load(&c).await;

        // The simple protocol streams the answer.
        let m = c.simple_query(JOIN).await.expect("gathered join");
        assert_eq!(pairs(&simple_rows(&m)), join_rows(0));

        // The extended protocol with a parameter, in binary.
        let rows = c
            .query(&format!("{JOIN} where a.id > $1"), &[&10i64])
            .await
            .expect("gathered join with a parameter");
        let mut got: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        got.sort();
        assert_eq!(got, join_rows(10));

        // The client's settings reach the merge connection: PostgreSQL
        // there prints timestamps in the client's time zone.
        c.simple_query("set timezone = 'Asia/Tokyo'")
            .await
            .expect("set");
        let m = c
            .simple_query(
                "select min(a.ts)::text, current_setting('TimeZone') from gt_a a join gt_b b on b.v = a.v",
            )
            .await
            .expect("gathered read after SET");
        assert_eq!(
            simple_rows(&m),
            [[
                Some("2024-01-01 10:00:00+09".to_string()),
                Some("Asia/Tokyo".to_string())
            ]]
        );

        // 30 + 15 rows are more than 40: refused, naming the limit.
        let e = c
            .simple_query("select count(*) from gt_a a join gt_c x on x.v = a.v")
            .await
            .expect_err("over the limit");
        assert_eq!(sqlstate(&e), "54000", "{e:?}");
        assert!(
            db_message(&e).contains("max_intermediate_rows"),
            "{}",
            db_message(&e)
        );
        // The session goes on, and so does a smaller gather.
        let m = c
            .simple_query("select count(*) from gt_b x join gt_b y on x.v = y.v + 1")
            .await
            .expect("a gather under the limit");
        assert_eq!(simple_rows(&m), [[Some("4".to_string())]]);

        // Nothing is left on the merge server: the copies lived in a
        // transaction that was rolled back.
        let shard0 = connect_shard(0).await;
        let temps = query_count(
            &shard0,
            "select count(*) from pg_class where relname in ('gt_a', 'gt_b') and relpersistence = 't'",
        )
        .await;
        assert_eq!(temps, 0);

        // Several clients gathering at once each get their own answer.
        let mut tasks = Vec::new();
        for k in 0..4i64 {
            let url = proxy.url();
            tasks.push(tokio::spawn(async move {
                let (c, _t) = connect_url(&url).await;
                for _ in 0..5 {
                    let rows = c
                        .query(&format!("{JOIN} where a.id > $1"), &[&k])
                        .await
                        .expect("concurrent gather");
                    let mut got: Vec<(i64, i64)> =
                        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                    got.sort();
                    assert_eq!(got, join_rows(k));
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }

        // A read that locks rows is not gathered.
        let e = c
            .simple_query(&format!("{JOIN} for update"))
            .await
            .expect_err("locking read");
        assert_eq!(sqlstate(&e), "0A000");

        // In a transaction block the rows are read on the transaction's
        // own connections: it sees its uncommitted writes, in both
        // protocols, and a failing gathered read fails the transaction.
        c.simple_query("begin").await.expect("begin");
        c.simple_query("insert into gt_b values (6, 1)")
            .await
            .expect("insert in the transaction");
        let with_new = |mut rows: Vec<(i64, i64)>, min_id: i64| {
            rows.extend(
                (1..=30i64)
                    .filter(|id| id % 5 == 1 && *id > min_id)
                    .map(|id| (id, 6)),
            );
            rows.sort();
            rows
        };
        let m = c.simple_query(JOIN).await.expect("gather in a transaction");
        assert_eq!(pairs(&simple_rows(&m)), with_new(join_rows(0), 0));
        let rows = c
            .query(&format!("{JOIN} where a.id > $1"), &[&20i64])
            .await
            .expect("extended gather in a transaction");
        let mut got: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        got.sort();
        assert_eq!(got, with_new(join_rows(20), 20));
        let e = c
            .simple_query("select 1 / (a.v - a.v) from gt_a a join gt_b b on b.v = a.v")
            .await
            .expect_err("division by zero");
        assert_eq!(sqlstate(&e), "22012");
        let e = c
            .simple_query("select 1")
            .await
            .expect_err("aborted transaction");
        assert_eq!(sqlstate(&e), "25P02");
        c.simple_query("rollback").await.expect("rollback");
        let m = c
            .simple_query("select count(*) from gt_b")
            .await
            .expect("count");
        assert_eq!(simple_rows(&m), [[Some("5".to_string())]]);
        // A transaction that writes on both shards, reads gathered rows
        // and commits: two-phase commit is not hindered by the copies
        // (they live on a merge connection apart from the transaction).
        let config = shardwire::config::Config::load(&proxy.config_path).expect("config");
        let rule = config.router.table("gt_b").expect("gt_b").clone();
        let shards: std::collections::BTreeSet<usize> = (6..=9)
            .map(|id| {
                rule.shard_for(&shardwire::sharding::KeyValue::Int(id))
                    .expect("shard")
            })
            .collect();
        assert_eq!(shards.len(), 2, "rows 6..9 are on both shards");
        c.simple_query("begin").await.expect("begin");
        let m = c
            .simple_query("insert into gt_b values (6, 1), (7, 2), (8, 3), (9, 4)")
            .await
            .expect("split insert in the transaction");
        assert!(matches!(
            m.last(),
            Some(tokio_postgres::SimpleQueryMessage::CommandComplete(4))
        ));
        let m = c
            .simple_query("select count(*) from gt_a a join gt_b b on b.v = a.v")
            .await
            .expect("gather after writes on both shards");
        assert_eq!(simple_rows(&m), [[Some("48".to_string())]]);
        // now() belongs to the transaction: refused, and the transaction
        // is aborted.
        let e = c
            .simple_query("select now() from gt_a a join gt_b b on b.v = a.v")
            .await
            .expect_err("now() in a gathered read in a transaction");
        assert_eq!(sqlstate(&e), "0A000");
        c.simple_query("rollback").await.expect("rollback");
        c.simple_query("begin").await.expect("begin");
        c.simple_query("insert into gt_b values (6, 1), (7, 2), (8, 3), (9, 4)")
            .await
            .expect("split insert in the transaction");
        c.simple_query("select count(*) from gt_a a join gt_b b on b.v = a.v")
            .await
            .expect("gather after writes on both shards");
        c.simple_query("commit")
            .await
            .expect("two-phase commit after a gathered read");
        let m = c
            .simple_query("select count(*) from gt_b")
            .await
            .expect("count");
        assert_eq!(simple_rows(&m), [[Some("9".to_string())]]);
        c.simple_query("delete from gt_b where id > 5")
            .await
            .expect("clean up");
        // No copy outlived its gather.
        let temps = query_count(
            &shard0,
            "select count(*) from pg_class where relname in ('gt_a', 'gt_b') and relpersistence = 't'",
        )
        .await;
        assert_eq!(temps, 0);
    });

    // Metrics count the gathers and their rows.
    let (_, text) = proxy.http_get("/metrics");
    assert!(
        metric(&text, "shardwire_queries_total", &[("kind", "gather")]) >= 24.0,
        "{text}"
    );
    assert!(metric(&text, "shardwire_gathered_rows_total", &[]) >= 35.0);
    assert_eq!(metric(&text, "shardwire_gather_too_large_total", &[]), 1.0);

    // `shardwire route` shows the tier and the statement PostgreSQL runs.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardwire"));
    cmd.args(["route", "--config"])
        .arg(&proxy.config_path)
        .arg(JOIN);
    let out = run_cmd(&mut cmd, None, Duration::from_secs(30)).ok("shardwire route");
    let r: serde_json::Value = serde_json::from_str(&out.stdout).expect("route JSON");
    assert_eq!(r["plan"], "gather", "{r}");
    assert_eq!(r["tier"], 3, "{r}");
    assert_eq!(
        r["gather"]["sql"],
        "select a.id, b.id from pg_temp.\"gt_a\" a join pg_temp.\"gt_b\" b on b.v = a.v"
    );
}

#[test]
fn tier_three_is_off_when_max_intermediate_rows_is_zero() {
    // Tables of its own: the tests of this binary run at once on the
    // shared cluster.
    let proxy = TestProxy::start(|c| {
        set_tables(c, &TABLES.replace("gt_", "gz_"));
        set(c, "limits.max_intermediate_rows", 0);
    });
    block_on(Duration::from_secs(60), async {
        let (c, _t) = connect_url(&proxy.url()).await;
        c.batch_execute(
            "drop table if exists gz_a; drop table if exists gz_b;
             create table gz_a (id int8 primary key, v int); create table gz_b (id int8 primary key, v int)",
        )
        .await
        .expect("schema");
        let e = c
            .simple_query(&JOIN.replace("gt_", "gz_"))
            .await
            .expect_err("refused");
        assert_eq!(sqlstate(&e), "0A000", "{e:?}");
    });
}

#[test]
fn a_shard_down_fails_a_gathered_read_clearly_and_it_works_again_after() {
    let private = PrivateCluster::start(&["--shards", "2", "--replicas", "0"]);
    let proxy = TestProxy::start_on(&private.0, |c| set_tables(c, TABLES));
    block_on(Duration::from_secs(120), async {
        let (c, _t) = connect_url(&proxy.url()).await;
        load(&c).await;
        private.run("stop", &["--shard", "s1"]);
        let started = Instant::now();
        let e = c.simple_query(JOIN).await.expect_err("s1 is down");
        assert!(started.elapsed() < Duration::from_secs(30));
        let text = format!("{e:?}");
        assert!(text.contains("s1"), "the error names the shard: {text}");
        private.run("start", &["--shard", "s1"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match c.simple_query(JOIN).await {
                Ok(m) => {
                    assert_eq!(pairs(&simple_rows(&m)), join_rows(0));
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("s1 is back but the gather fails: {e:?}"),
            }
        }
    });
}

/// A shard whose table has its columns in another order (DDL run on it
/// apart from the proxy): its rows are read by column name, so each value
/// fills its own column of the copy.
#[test]
fn a_shard_with_its_columns_in_another_order_fills_the_right_ones() {
    let proxy = TestProxy::start(|c| {
        set_tables(
            c,
            r#"
[[tables]]
name = "gt_cols"
key = "id"
strategy = "hash"
"#,
        )
    });
    let config = shardwire::config::Config::load(&proxy.config_path).expect("config");
    let rule = config.router.table("gt_cols").expect("gt_cols").clone();
    block_on(Duration::from_secs(60), async {
        let shards = connect_shards("drop table if exists gt_cols").await;
        shards[0]
            .batch_execute("create table gt_cols (id int8 primary key, a int, b int)")
            .await
            .expect("s0 table");
        shards[1]
            .batch_execute("create table gt_cols (id int8 primary key, b int, a int)")
            .await
            .expect("s1 table, columns in another order");
        for id in 1..=20i64 {
            let s = rule
                .shard_for(&shardwire::sharding::KeyValue::Int(id))
                .expect("shard");
            shards[s]
                .execute(
                    "insert into gt_cols (id, a, b) values ($1, $2, $3)",
                    &[&id, &(id as i32), &(-(id as i32))],
                )
                .await
                .expect("row");
        }
        let (c, _t) = connect_url(&proxy.url()).await;
        // A self-join not on the key: tier 3.
        let m = c
            .simple_query(
                "select x.id, x.a, x.b from gt_cols x join gt_cols y on y.a = x.a order by x.id",
            )
            .await
            .expect("gathered self-join");
        let rows = simple_rows(&m);
        assert_eq!(rows.len(), 20);
        for r in rows {
            let id: i64 = r[0].as_deref().unwrap().parse().unwrap();
            assert_eq!(r[1].as_deref(), Some(id.to_string().as_str()), "a of {id}");
            assert_eq!(
                r[2].as_deref(),
                Some((-id).to_string().as_str()),
                "b of {id}"
            );
        }
        for s in &shards {
            s.batch_execute("drop table gt_cols").await.expect("drop");
        }
    });
}

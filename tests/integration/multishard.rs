//! Multi-shard simple queries outside a transaction: DDL and maintenance on
//! every shard (all-or-nothing), reference-table writes, and multi-row
//! INSERTs split by row, COPY FROM STDIN split by row.

use std::process::Command;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::common::*;

const TABLES: &str = r#"
[[tables]]
name = "mt_acc"
key = "id"
strategy = "hash"

[[tables]]
name = "mt_upd"
key = "id"
strategy = "hash"

[[tables]]
name = "mt_copy"
key = "id"
strategy = "hash"

[[tables]]
name = "mt_ref"
strategy = "reference"

[[tables]]
name = "sc_t"
key = "id"
strategy = "hash"

[[tables]]
name = "sc_e"
key = "id"
strategy = "hash"
"#;

fn start_proxy() -> TestProxy {
    TestProxy::start(|c| {
        set_tables(c, TABLES);
    })
}

async fn exists(c: &Client, table: &str) -> bool {
    c.query_one(&format!("select to_regclass('{table}') is not null"), &[])
        .await
        .expect("to_regclass")
        .get(0)
}

fn rows(msgs: &[SimpleQueryMessage]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect()
}

fn completed(msgs: &[SimpleQueryMessage]) -> Vec<u64> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect()
}

#[test]
fn ddl_and_maintenance_run_on_every_shard() {
    let proxy = start_proxy();
    let started = Instant::now();
    block_on(Duration::from_secs(300), async {
        let shards = connect_shards("drop table if exists mt_x, mt_conflict").await;
        let (c, _task) = connect_url(&proxy.url()).await;

        let m = c
            .simple_query("create table mt_x (id int primary key, v text)")
            .await
            .expect("create through the proxy");
        assert_eq!(completed(&m), [0], "{m:?}"); // one CommandComplete
        for s in &shards {
            assert!(exists(s, "mt_x").await);
        }
        c.simple_query("create index mt_x_v on mt_x (v); alter table mt_x add column w int")
            .await
            .expect("index and alter");
        for s in &shards {
            assert_eq!(
                query_count(
                    s,
                    "select count(*) from pg_attribute where attrelid = 'mt_x'::regclass and attname = 'w'"
                )
                .await,
                1
            );
        }
        c.simple_query("vacuum mt_x").await.expect("vacuum");
        c.simple_query("analyze mt_x").await.expect("analyze");
        c.simple_query("create index concurrently mt_x_w on mt_x (w)")
            .await
            .expect("create index concurrently");
        for s in &shards {
            assert!(exists(s, "mt_x_w").await);
        }

        // All-or-nothing: a conflict on s1 leaves nothing on s0.
        shards[1]
            .batch_execute("create table mt_conflict (id int)")
            .await
            .expect("pre-create on s1");
        let e = c
            .simple_query("create table mt_conflict (id int primary key)")
            .await
            .expect_err("conflicting create");
        assert_eq!(sqlstate(&e), "42P07", "{e:?}");
        let detail = e
            .as_db_error()
            .and_then(|d| d.detail())
            .unwrap_or_default()
            .to_string();
        assert!(detail.contains("\"s1\""), "{detail}");
        assert!(!exists(&shards[0], "mt_conflict").await);
        // The session goes on.
        c.simple_query("select 1").await.expect("after the error");

        c.simple_query("drop table mt_x").await.expect("drop");
        for s in &shards {
            assert!(!exists(s, "mt_x").await);
        }
        shards[1]
            .batch_execute("drop table mt_conflict")
            .await
            .expect("cleanup");

        // DDL inside a transaction over both shards: ROLLBACK, then COMMIT.
        for s in &shards {
            s.batch_execute("drop table if exists mt_y")
                .await
                .expect("cleanup");
        }
        c.simple_query("begin").await.expect("begin");
        c.simple_query("create table mt_y (id int)")
            .await
            .expect("DDL in a transaction");
        c.simple_query("rollback").await.expect("rollback");
        for s in &shards {
            assert!(!exists(s, "mt_y").await);
        }
        c.simple_query("begin").await.expect("begin");
        c.simple_query("create table mt_y (id int)")
            .await
            .expect("DDL in a transaction");
        let e = c
            .simple_query("select * from mt_nonexistent")
            .await
            .expect_err("error in the transaction");
        assert_eq!(sqlstate(&e), "42P01");
        let e = c
            .simple_query("select 1")
            .await
            .expect_err("aborted transaction");
        assert_eq!(sqlstate(&e), "25P02");
        c.simple_query("commit").await.expect("commit");
        for s in &shards {
            assert!(!exists(s, "mt_y").await);
        }
        c.simple_query("begin").await.expect("begin");
        c.simple_query("create table mt_y (id int)")
            .await
            .expect("DDL in a transaction");
        c.simple_query("commit").await.expect("commit");
        for s in &shards {
            assert!(exists(s, "mt_y").await);
        }
        c.simple_query("drop table mt_y").await.expect("drop");
    });
    eprintln!(
        "ddl_and_maintenance_run_on_every_shard: {:?}",
        started.elapsed()
    );
}

#[test]
fn reference_and_split_inserts() {
    let proxy = start_proxy();
    let started = Instant::now();
    block_on(Duration::from_secs(300), async {
        let shards = connect_shards("drop table if exists mt_ref, mt_acc").await;
        let (mut c, _task) = connect_url(&proxy.url()).await;
        c.simple_query(
            "create table mt_ref (id int primary key, name text);
             create table mt_acc (id int primary key, v text)",
        )
        .await
        .expect("create");

        // Reference table: every shard gets the rows; RETURNING from one.
        let m = c
            .simple_query("insert into mt_ref values (1, 'a'), (2, 'b') returning id")
            .await
            .expect("reference insert");
        assert_eq!(rows(&m), ["1", "2"]);
        assert_eq!(completed(&m), [2]);
        for s in &shards {
            assert_eq!(query_count(s, "select count(*) from mt_ref").await, 2);
        }
        let m = c
            .simple_query("select name from mt_ref where id = 2")
            .await
            .expect("select");
        assert_eq!(rows(&m), ["b"]);
        let m = c
            .simple_query("update mt_ref set name = 'c' where id = 2")
            .await
            .expect("reference update");
        assert_eq!(completed(&m), [1]);
        for s in &shards {
            assert_eq!(
                query_count(s, "select count(*) from mt_ref where name = 'c'").await,
                1
            );
        }

        // A multi-row INSERT spanning shards.
        let values: Vec<String> = (1..=50).map(|i| format!("({i}, 'v{i}')")).collect();
        let m = c
            .simple_query(&format!(
                "insert into mt_acc (id, v) values {} returning id",
                values.join(", ")
            ))
            .await
            .expect("split insert");
        let mut got: Vec<i32> = rows(&m).iter().map(|r| r.parse().unwrap()).collect();
        assert_eq!(completed(&m), [50]);
        got.sort();
        assert_eq!(got, (1..=50).collect::<Vec<_>>());
        let n0 = query_count(&shards[0], "select count(*) from mt_acc").await;
        let n1 = query_count(&shards[1], "select count(*) from mt_acc").await;
        assert_eq!(n0 + n1, 50);
        assert!(n0 > 0 && n1 > 0, "{n0} {n1}");
        for id in [1, 2, 3, 7, 11, 20, 33, 50] {
            let want = route_shard(
                &proxy,
                &format!("select * from mt_acc where id = {id}"),
                &[],
            );
            let i: usize = want[1..].parse().unwrap();
            assert_eq!(
                query_count(
                    &shards[i],
                    &format!("select count(*) from mt_acc where id = {id}")
                )
                .await,
                1,
                "id {id} on {want}"
            );
        }
        // Without RETURNING.
        let m = c
            .simple_query("insert into mt_acc (id) values (101), (102), (103), (104)")
            .await
            .expect("split insert");
        assert_eq!(completed(&m), [4]);
        // A duplicate on one shard: nothing is inserted anywhere.
        let e = c
            .simple_query("insert into mt_acc (id) values (201), (202), (203), (204), (1)")
            .await
            .expect_err("duplicate key");
        assert_eq!(sqlstate(&e), "23505");
        for s in &shards {
            assert_eq!(
                query_count(s, "select count(*) from mt_acc where id > 200").await,
                0
            );
        }
        // COPY into a reference table is refused (not yet split).
        let out = psql(
            &format!("postgres://app@127.0.0.1:{}/app", proxy.port),
            "app",
            true,
            &[],
            Some("\\copy mt_ref from stdin\n9\tx\n\\.\n"),
        );
        assert!(!out.success());
        assert!(out.stderr.contains("reference table"), "{}", out.stderr);
        for s in &shards {
            assert_eq!(query_count(s, "select count(*) from mt_ref").await, 2);
        }

        // The same inside transactions over both shards.
        let total = |lo: i32| {
            let q = format!("select count(*) from mt_acc where id >= {lo} and id < {lo} + 100");
            let shards = &shards;
            async move { query_count(&shards[0], &q).await + query_count(&shards[1], &q).await }
        };
        c.simple_query("begin").await.expect("begin");
        c.simple_query("insert into mt_acc (id) values (305)")
            .await
            .expect("single-shard insert");
        let m = c
            .simple_query("insert into mt_acc (id) values (301), (302), (303), (304)")
            .await
            .expect("split insert in a transaction");
        assert_eq!(completed(&m), [4]);
        c.simple_query("insert into mt_ref values (3, 'tx')")
            .await
            .expect("reference insert in a transaction");
        c.simple_query("rollback").await.expect("rollback");
        assert_eq!(total(300).await, 0);
        for s in &shards {
            assert_eq!(query_count(s, "select count(*) from mt_ref").await, 2);
        }
        c.simple_query("begin").await.expect("begin");
        c.simple_query("insert into mt_acc (id) values (401), (402), (403), (404)")
            .await
            .expect("split insert in a transaction");
        c.simple_query("insert into mt_acc (id) values (405)")
            .await
            .expect("single-shard insert");
        let m = c.simple_query("commit").await.expect("commit");
        assert!(m.iter().all(|x| !matches!(x, SimpleQueryMessage::Row(_))));
        assert_eq!(total(400).await, 5);
        // The extended protocol inside such a transaction: statements by
        // key, a merged count, a failure that aborts it, ROLLBACK.
        c.simple_query("begin").await.expect("begin");
        c.simple_query("insert into mt_acc (id) values (501), (502), (503), (504)")
            .await
            .expect("split insert in a transaction");
        for id in 505..=520i32 {
            c.execute("insert into mt_acc (id) values ($1)", &[&id])
                .await
                .expect("extended insert in a multi-shard transaction");
        }
        let n: i64 = c
            .query_one(
                "select count(*) from mt_acc where id between $1 and $2",
                &[&500i32, &600i32],
            )
            .await
            .expect("extended count in a multi-shard transaction")
            .get(0);
        assert_eq!(n, 20);
        let e = c
            .execute("insert into mt_acc (id) values ($1)", &[&505i32])
            .await
            .expect_err("duplicate key");
        assert_eq!(sqlstate(&e), "23505", "{e}");
        let e = c.query("select 1", &[]).await.expect_err("after the error");
        assert_eq!(sqlstate(&e), "25P02", "{e}");
        c.simple_query("rollback").await.expect("rollback");
        assert_eq!(total(500).await, 0);
        // ... and committed, from an explicit BEGIN of a driver.
        let tx = c.transaction().await.expect("begin");
        for id in 601..=620i32 {
            tx.execute("insert into mt_acc (id) values ($1)", &[&id])
                .await
                .expect("insert in a driver's transaction");
        }
        tx.commit().await.expect("commit");
        assert_eq!(total(600).await, 20);
        assert!(query_count(&shards[0], "select count(*) from mt_acc where id > 600").await > 0);
        assert!(query_count(&shards[1], "select count(*) from mt_acc where id > 600").await > 0);

        c.simple_query("drop table mt_ref, mt_acc")
            .await
            .expect("drop");
    });
    eprintln!("reference_and_split_inserts: {:?}", started.elapsed());
}

#[test]
fn copy_from_stdin_is_split_by_key() {
    let proxy = start_proxy();
    let started = Instant::now();
    let conninfo = format!("postgres://app@127.0.0.1:{}/app", proxy.port);
    block_on(Duration::from_secs(300), async {
        let shards = connect_shards("drop table if exists mt_copy").await;
        let (c, _task) = connect_url(&proxy.url()).await;
        c.simple_query("create table mt_copy (id int primary key, v text)")
            .await
            .expect("create");

        // Text format, no column list: the key's position comes from the catalog.
        let copy_data: String = (1..=3000)
            .map(|i| format!("{i}\trow {i} {}\n", "z".repeat(i % 50)))
            .collect();
        let out = psql(
            &conninfo,
            "app",
            true,
            &[],
            Some(&format!("\\copy mt_copy from stdin\n{copy_data}\\.\n")),
        )
        .ok("psql \\copy");
        assert!(out.stdout.contains("COPY 3000"), "{}", out.stdout);
        let n0 = query_count(&shards[0], "select count(*) from mt_copy").await;
        let n1 = query_count(&shards[1], "select count(*) from mt_copy").await;
        assert_eq!(n0 + n1, 3000);
        assert!(n0 > 1000 && n1 > 1000, "{n0} {n1}");
        for id in [1, 17, 256, 999, 2048, 3000] {
            let want = route_shard(
                &proxy,
                &format!("select * from mt_copy where id = {id}"),
                &[],
            );
            let i: usize = want[1..].parse().unwrap();
            assert_eq!(
                query_count(
                    &shards[i],
                    &format!("select count(*) from mt_copy where id = {id}")
                )
                .await,
                1,
                "id {id} on {want}"
            );
        }

        // CSV with a header, a column list and quoted newlines.
        let csv: String = (5001..=5010)
            .map(|i| format!("\"line {i}\nnext, \"\"quoted\"\"\",{i}\n"))
            .collect();
        let out = psql(
            &conninfo,
            "app",
            true,
            &[],
            Some(&format!(
                "\\copy mt_copy (v, id) from stdin with (format csv, header)\nv,id\n{csv}\\.\n"
            )),
        )
        .ok("psql \\copy csv");
        assert!(out.stdout.contains("COPY 10"), "{}", out.stdout);
        let m = c
            .simple_query("select v from mt_copy where id = 5003")
            .await
            .expect("select");
        assert_eq!(rows(&m), ["line 5003\nnext, \"quoted\""]);
        assert_eq!(
            query_count(&shards[0], "select count(*) from mt_copy where id > 5000").await
                + query_count(&shards[1], "select count(*) from mt_copy where id > 5000").await,
            10
        );

        // A NULL key: an error, and nothing committed on any shard.
        let bad: String = (6001..=6100).map(|i| format!("{i}\tok\n")).collect();
        let out = psql(
            &conninfo,
            "app",
            true,
            &[],
            Some(&format!(
                "\\copy mt_copy from stdin\n{bad}\\N\tnull key\n\\.\n"
            )),
        );
        assert!(!out.success());
        assert!(out.stderr.contains("must not be NULL"), "{}", out.stderr);
        for s in &shards {
            assert_eq!(
                query_count(s, "select count(*) from mt_copy where id > 6000").await,
                0
            );
        }
        // The session goes on after a failed COPY.
        let out = psql(
            &conninfo,
            "app",
            false,
            &[],
            Some(&format!(
                "\\copy mt_copy from stdin\n6000\tx\n\\N\tnull key\n\\.\n\\copy mt_copy from stdin\n{bad}\\.\nselect 'still here';\n"
            )),
        );
        assert!(out.stderr.contains("must not be NULL"), "{}", out.stderr);
        assert!(out.stdout.contains("COPY 100"), "{}", out.stdout);
        assert!(out.stdout.contains("still here"), "{}", out.stdout);
        assert_eq!(
            query_count(&shards[0], "select count(*) from mt_copy where id >= 6000").await
                + query_count(&shards[1], "select count(*) from mt_copy where id >= 6000").await,
            100
        );

        c.simple_query("drop table mt_copy").await.expect("drop");
    });
    eprintln!("copy_from_stdin_is_split_by_key: {:?}", started.elapsed());
}

#[test]
fn pgbench_init_on_sharded_tables() {
    let _tables = pgbench_tables_lock();
    let proxy = TestProxy::start(|c| {
        set_tables(
            c,
            r#"
[[tables]]
name = "pgbench_accounts"
key = "aid"
strategy = "hash"
[[tables]]
name = "pgbench_tellers"
key = "tid"
strategy = "hash"
[[tables]]
name = "pgbench_branches"
key = "bid"
strategy = "hash"
[[tables]]
name = "pgbench_history"
key = "aid"
strategy = "hash"
"#,
        );
    });
    let started = Instant::now();
    pgbench(proxy.port, &["-i", "-s", "2"], Duration::from_secs(120)).ok("pgbench -i -s 2");
    let init = started.elapsed();
    let config = shardwire::config::Config::load(&proxy.config_path).expect("config");
    let table = config
        .router
        .table("pgbench_accounts")
        .expect("pgbench_accounts")
        .clone();
    block_on(Duration::from_secs(120), async {
        let shards = [connect_shard(0).await, connect_shard(1).await];
        let n0 = query_count(&shards[0], "select count(*) from pgbench_accounts").await;
        let n1 = query_count(&shards[1], "select count(*) from pgbench_accounts").await;
        assert_eq!(n0 + n1, 200_000);
        assert!(n0 > 80_000 && n1 > 80_000, "{n0} {n1}");
        // Every row: with the total right and aid unique, each shard holding
        // all the aids the router assigns it means no row is misplaced.
        let mut sample: Vec<Vec<i32>> = vec![Vec::new(), Vec::new()];
        for aid in 1..=200_000i32 {
            let s = table
                .shard_for(&shardwire::sharding::KeyValue::Int(aid as i64))
                .expect("shard");
            sample[s].push(aid);
        }
        for (s, c) in shards.iter().enumerate() {
            let n: i64 = c
                .query_one(
                    "select count(*) from pgbench_accounts where aid = any($1)",
                    &[&sample[s]],
                )
                .await
                .expect("sample")
                .get(0);
            assert_eq!(n as usize, sample[s].len(), "shard s{s}");
        }
        let b0 = query_count(&shards[0], "select count(*) from pgbench_branches").await;
        let b1 = query_count(&shards[1], "select count(*) from pgbench_branches").await;
        assert_eq!(b0 + b1, 2);
        let t0 = query_count(&shards[0], "select count(*) from pgbench_tellers").await;
        let t1 = query_count(&shards[1], "select count(*) from pgbench_tellers").await;
        assert_eq!(t0 + t1, 20);
    });
    // The built-in select-only script: pgbench starts with a count(*) over
    // pgbench_branches (a cross-shard read, merged by the proxy), and a
    // VACUUM of the tables (every shard).
    let builtin = Instant::now();
    for mode in ["simple", "prepared"] {
        let out = pgbench(
            proxy.port,
            &["-S", "-M", mode, "-c", "4", "-T", "2"],
            Duration::from_secs(60),
        )
        .ok("pgbench -S");
        let text = format!("{}\n{}", out.stdout, out.stderr);
        assert!(text.contains("number of failed transactions: 0"), "{text}");
        assert!(text.contains("scaling factor: 2"), "{text}");
        assert!(!text.contains("aborted"), "{text}");
    }
    eprintln!(
        "pgbench_init_on_sharded_tables: built-in -S runs {:?}",
        builtin.elapsed()
    );
    // The same select by key as a script.
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("select.sql");
    std::fs::write(
        &script,
        "\\set aid random(1, 200000)\nselect abalance from pgbench_accounts where aid = :aid;\n",
    )
    .expect("script");
    let run = Instant::now();
    let out = pgbench(
        proxy.port,
        &[
            "-n",
            "-M",
            "prepared",
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            "3",
            "-f",
            script.to_str().expect("utf-8"),
        ],
        Duration::from_secs(60),
    )
    .ok("pgbench select by key");
    let text = format!("{}\n{}", out.stdout, out.stderr);
    assert!(text.contains("number of failed transactions: 0"), "{text}");
    assert!(!text.contains("aborted"), "{text}");
    eprintln!(
        "pgbench_init_on_sharded_tables: init {init:?}, select run {:?}",
        run.elapsed()
    );
}

/// Multi-shard statements use the shards' pools: with one connection per
/// shard, every statement gets the same server back (each is released
/// clean), and sessions take turns.
#[test]
fn multi_shard_statements_reuse_pooled_connections() {
    let proxy = TestProxy::start(|c| {
        set_tables(
            c,
            "[[tables]]\nname = \"mt_pool\"\nkey = \"id\"\nstrategy = \"hash\"\n",
        );
        set(c, "pool.max_size", 1);
    });
    let started = Instant::now();
    block_on(Duration::from_secs(120), async {
        let (c, _task) = connect_url(&proxy.url()).await;
        let before = (backend_pid(&c, "s0").await, backend_pid(&c, "s1").await);
        c.simple_query("drop table if exists mt_pool; create table mt_pool (id int primary key)")
            .await
            .expect("create");
        for i in 0..20 {
            c.simple_query(&format!(
                "insert into mt_pool (id) values ({}), ({}), ({}), ({})",
                4 * i,
                4 * i + 1,
                4 * i + 2,
                4 * i + 3
            ))
            .await
            .expect("split insert");
            c.simple_query("analyze mt_pool").await.expect("analyze");
        }
        let (c2, _task2) = connect_url(&proxy.url()).await;
        c2.simple_query("begin").await.expect("begin");
        c2.simple_query("insert into mt_pool (id) values (1000), (1001), (1002), (1003)")
            .await
            .expect("split insert in a transaction");
        c2.simple_query("commit").await.expect("commit");
        let after = (backend_pid(&c, "s0").await, backend_pid(&c, "s1").await);
        assert_eq!(before, after, "the pooled servers were replaced");
        c.simple_query("drop table mt_pool").await.expect("drop");
    });
    eprintln!(
        "multi_shard_statements_reuse_pooled_connections: {:?}",
        started.elapsed()
    );
}

async fn backend_pid(c: &Client, shard: &str) -> String {
    let q = format!("/* shardwire: shard={shard} */ select pg_backend_pid()::text");
    rows(&c.simple_query(&q).await.expect("pid"))[0].clone()
}

async fn refused_code(c: &Client, sql: &str) -> String {
    let e = c.simple_query(sql).await.expect_err(sql);
    e.code().expect("sqlstate").code().to_string()
}

/// Cross-shard SELECTs: aggregates merged, plain rows concatenated, the
/// rest refused (ORDER BY / LIMIT merges: scatter_order.rs); compared with the same query over all rows gathered
/// directly from the shards.
#[test]
fn cross_shard_selects() {
    let proxy = start_proxy();
    let started = Instant::now();
    let config = shardwire::config::Config::load(&proxy.config_path).expect("config");
    let rule = config.router.table("sc_e").expect("sc_e").clone();
    let shard_of = |id: i64| {
        rule.shard_for(&shardwire::sharding::KeyValue::Int(id))
            .expect("shard")
    };
    block_on(Duration::from_secs(300), async {
        let shards = connect_shards("drop table if exists sc_t, sc_e").await;
        let (c, _task) = connect_url(&proxy.url()).await;
        c.simple_query(
            "create table sc_t (id int primary key, v text, n int, x numeric, f float8);
             create table sc_e (id int primary key, n int)",
        )
        .await
        .expect("create");
        let rows_sql: Vec<String> = (1..=60)
            .map(|i| {
                let v = if i % 3 == 0 {
                    format!("x{i}")
                } else {
                    format!("y{i}")
                };
                let n = if i % 5 == 0 {
                    "null".into()
                } else {
                    (i * 1000 - 30_000).to_string()
                };
                let x = if i % 7 == 0 {
                    "null".into()
                } else {
                    format!("{}.{:02}", i - 20, i)
                };
                format!("({i}, '{v}', {n}, {x}, {i}/7.0)")
            })
            .collect();
        c.simple_query(&format!(
            "insert into sc_t (id, v, n, x, f) values {}",
            rows_sql.join(",")
        ))
        .await
        .expect("insert sc_t");
        for s in &shards {
            assert!(query_count(s, "select count(*) from sc_t").await > 10);
        }
        // sc_e: rows on shard 0 only.
        let on0: Vec<i64> = (1..200).filter(|i| shard_of(*i) == 0).take(5).collect();
        let e_rows: Vec<String> = on0
            .iter()
            .enumerate()
            .map(|(k, id)| {
                format!(
                    "({id}, {})",
                    if k == 0 {
                        "null".into()
                    } else {
                        (k * 10).to_string()
                    }
                )
            })
            .collect();
        c.simple_query(&format!(
            "insert into sc_e (id, n) values {}",
            e_rows.join(",")
        ))
        .await
        .expect("insert sc_e");
        assert_eq!(
            query_count(&shards[1], "select count(*) from sc_e").await,
            0
        );

        // Every row in one temporary table on shard 0, for reference answers.
        let dump: String = shards[1]
            .query_one(
                "select coalesce(string_agg(format('(%s,%L,%s,%s,%s)', id, v, coalesce(n::text, 'null'), coalesce(x::text, 'null'), f::text), ','), '') from sc_t",
                &[],
            )
            .await
            .expect("dump")
            .get(0);
        shards[0]
            .batch_execute(&format!(
                "create temp table sc_all as select * from sc_t;
                 insert into sc_all values {dump};
                 create temp table sc_e_all as select * from sc_e"
            ))
            .await
            .expect("gather");
        let aggregates = [
            "select count(*), count(n), sum(n), min(n), max(n), sum(x), min(x), max(x), min(f), max(f), count(v) from {t}",
            "select count(*) as c, sum(n) s, min(n) mi, max(n) ma from {t} where n is null",
            "select count(*), count(n), sum(x), min(x), max(f) from {t} where id < 0",
            "select sum(n), min(id), max(id) from {t} where id in (1, 2, 3, 4, 5, 6, 7, 8)",
            "select count(*), sum(id::bigint), sum(n::int8), max(x) from {t} where v like 'x%'",
        ];
        for q in aggregates {
            let through = simple_rows(&c.simple_query(&q.replace("{t}", "sc_t")).await.expect(q));
            let want = simple_rows(
                &shards[0]
                    .simple_query(&q.replace("{t}", "sc_all"))
                    .await
                    .expect(q),
            );
            assert_eq!(through, want, "{q}");
            assert_eq!(through.len(), 1);
        }
        let q = "select count(*), count(n), sum(n), min(n), max(n) from {t}";
        let through = simple_rows(&c.simple_query(&q.replace("{t}", "sc_e")).await.expect(q));
        assert_eq!(
            through,
            simple_rows(
                &shards[0]
                    .simple_query(&q.replace("{t}", "sc_e_all"))
                    .await
                    .expect(q)
            )
        );
        assert_eq!(
            through[0],
            [
                Some("5".into()),
                Some("4".into()),
                Some("100".into()),
                Some("10".into()),
                Some("40".into())
            ]
        );
        // Known data: 60 rows, 12 NULL n, n = i*1000 - 30000.
        let known = simple_rows(
            &c.simple_query("select count(*), count(n), sum(n) from sc_t")
                .await
                .expect("known"),
        );
        let sum: i64 = (1..=60i64)
            .filter(|i| i % 5 != 0)
            .map(|i| i * 1000 - 30_000)
            .sum();
        assert_eq!(
            known[0],
            [Some("60".into()), Some("48".into()), Some(sum.to_string())]
        );

        // Plain rows: concatenated.
        let m = c
            .simple_query("select id, v from sc_t where v like 'x%'")
            .await
            .expect("concat");
        let mut got: Vec<(String, String)> = simple_rows(&m)
            .into_iter()
            .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
            .collect();
        got.sort();
        let mut want: Vec<(String, String)> = (1..=60)
            .filter(|i| i % 3 == 0)
            .map(|i| (i.to_string(), format!("x{i}")))
            .collect();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(completed(&m), [20]);
        let m = c
            .simple_query("select id from sc_t where id in (1, 2, 3, 4, 5, 6)")
            .await
            .expect("in list");
        let mut ids = rows(&m);
        ids.sort();
        assert_eq!(ids, ["1", "2", "3", "4", "5", "6"]);
        let m = c
            .simple_query("select id from sc_t where id < 0")
            .await
            .expect("empty");
        assert!(rows(&m).is_empty());
        assert_eq!(completed(&m), [0]);

        // Inside a transaction, on the transaction's connections.
        let m = c
            .simple_query("begin; select count(*) from sc_t where id in (1, 2, 3, 4, 5, 6); select id from sc_t where id in (7, 8, 9, 10); commit")
            .await;
        assert!(
            m.is_err(),
            "a cross-shard SELECT must be alone in its query string"
        );
        c.simple_query("begin").await.expect("begin");
        c.simple_query(
            "insert into sc_t (id, v) values (100, 'x100'), (101, 'x101'), (102, 'x102')",
        )
        .await
        .expect("insert in tx");
        let m = c
            .simple_query("select count(*) from sc_t where v like 'x%'")
            .await
            .expect("count in tx");
        assert_eq!(rows(&m), ["23"]);
        let m = c
            .simple_query("select id from sc_t where id >= 100")
            .await
            .expect("rows in tx");
        assert_eq!(rows(&m).len(), 3);
        c.simple_query("rollback").await.expect("rollback");
        let m = c
            .simple_query("select count(*) from sc_t")
            .await
            .expect("after rollback");
        assert_eq!(rows(&m), ["60"]);
        // A cross-shard read as the transaction's first statement.
        c.simple_query("begin").await.expect("begin");
        let m = c
            .simple_query("select count(*) from sc_t")
            .await
            .expect("first in tx");
        assert_eq!(rows(&m), ["60"]);
        let m = c
            .simple_query("select max(n) from sc_e")
            .await
            .expect("second in tx");
        assert_eq!(rows(&m), ["40"]);
        c.simple_query("commit").await.expect("commit");

        // A shard's error: the first, with its SQLSTATE; nothing partial.
        assert_eq!(
            refused_code(&c, "select 1 / (id - id) from sc_t").await,
            "22012"
        );
        assert_eq!(
            refused_code(&c, "select sum(1 / (id - id)) from sc_t").await,
            "22012"
        );

        for sql in [
            "select id from sc_t order by n",
            "select avg(f) from sc_t",
            "select v, count(*) from sc_t group by v having count(*) > (select 1)",
            "select distinct on (v) v from sc_t",
            "select id from sc_t order by id fetch first 3 rows with ties",
            "select count(*) from sc_t a join sc_e b on b.n = a.n",
            "select min(v) from sc_t",
            "select sum(f) from sc_t",
        ] {
            // Answered by PostgreSQL from the gathered rows (tier 3);
            // differential.rs compares such answers with one database.
            c.simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        }
        // A cross-shard read that locks rows stays refused.
        assert_eq!(
            refused_code(
                &c,
                "select a.id from sc_t a join sc_e b on b.n = a.n for update"
            )
            .await,
            "0A000"
        );
        // The session still works.
        let m = c
            .simple_query("select count(*) from sc_e")
            .await
            .expect("after refusals");
        assert_eq!(rows(&m), ["5"]);

        // `shardwire route` shows the merge.
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardwire"));
        cmd.args(["route", "--config"])
            .arg(&proxy.config_path)
            .arg("select count(*) from sc_t");
        let out = run_cmd(&mut cmd, None, Duration::from_secs(30)).ok("shardwire route");
        let r: serde_json::Value = serde_json::from_str(&out.stdout).expect("route JSON");
        assert_eq!(
            r["merge"]["aggregate"]["aggs"][0], "count",
            "{}",
            out.stdout
        );
        assert_eq!(
            r["shards"].as_array().map(Vec::len),
            Some(2),
            "{}",
            out.stdout
        );
    });
    eprintln!("cross_shard_selects: {:?}", started.elapsed());
}

/// UPDATE and DELETE whose rows are on several shards run on each of them,
/// atomically; the row counts add up and RETURNING rows come from all.
#[test]
fn multi_shard_update_and_delete() {
    let proxy = start_proxy();
    block_on(Duration::from_secs(60), async {
        let shards = connect_shards(
            "drop table if exists mt_upd; create table mt_upd (id int primary key, bal int not null)",
        )
        .await;
        let c = proxy.app_client().await;
        c.simple_query(
            "insert into mt_upd (id, bal) values (1, 10), (2, 10), (3, 10), (4, 10), (5, 10), (6, 10)",
        )
        .await
        .expect("seed");
        let on = |i: usize| query_count(&shards[i], "select count(*) from mt_upd");
        let (n0, n1) = (on(0).await, on(1).await);
        assert!(n0 > 0 && n1 > 0, "rows on both shards: {n0} / {n1}");

        let m = c
            .simple_query("update mt_upd set bal = bal + 1 where bal = 10")
            .await
            .expect("update everywhere");
        assert_eq!(completed(&m), [6]);
        let m = c
            .simple_query("update mt_upd set bal = bal + 1 where id in (1, 2, 3, 4) returning id")
            .await
            .expect("update with returning");
        let mut ids = rows(&m);
        ids.sort();
        assert_eq!(ids, ["1", "2", "3", "4"]);
        assert_eq!(completed(&m), [4]);
        let m = c
            .simple_query("delete from mt_upd where bal = 12")
            .await
            .expect("delete");
        assert_eq!(completed(&m), [4]);
        // Inside a transaction over several shards, then rolled back.
        c.simple_query("begin").await.expect("begin");
        let m = c
            .simple_query("delete from mt_upd returning id")
            .await
            .expect("delete in a transaction");
        assert_eq!(completed(&m), [2]);
        c.simple_query("rollback").await.expect("rollback");
        assert_eq!(on(0).await + on(1).await, 2);
        // A failure on one shard leaves every shard as it was.
        let e = c
            .simple_query("update mt_upd set bal = bal / (id - 5)")
            .await
            .expect_err("division by zero on one shard");
        assert_eq!(e.code().map(|c| c.code()), Some("22012"), "{e}");
        let sum = query_count(&shards[0], "select coalesce(sum(bal), 0)::int8 from mt_upd").await
            + query_count(&shards[1], "select coalesce(sum(bal), 0)::int8 from mt_upd").await;
        assert_eq!(sum, 22);
    });
}

//! INSERT ... SELECT that the target's shards cannot run themselves
//! (router::insert_select, session/insert_select.rs), compared with one
//! database: into sharded, unsharded and reference tables, with untyped
//! literals resolved against the target's types, ON CONFLICT, RETURNING
//! (in the SELECT's order), parameters in the extended protocol, inside a
//! transaction that is rolled back, and the errors a missing or NULL key
//! gives.

use std::time::Duration;

use tokio_postgres::Client;

use crate::common::*;

const TABLES: &str = r#"
[[tables]]
name = "is_src"
key = "id"
strategy = "hash"

[[tables]]
name = "is_dst"
key = "k"
strategy = "hash"

[[tables]]
name = "is_ref"
strategy = "reference"
"#;

const SCHEMA: &str = "
create table is_src (id int8 primary key, v text collate \"C\");
create table is_dst (k int8 primary key, v text collate \"C\", at timestamptz, n numeric(6,2));
create table is_ref (id int8 primary key, v text collate \"C\");
create table is_local (id int8 primary key, v text collate \"C\");
";

type Answer = Result<Vec<Vec<Option<String>>>, String>;

async fn answer(c: &Client, sql: &str) -> Answer {
    match c.simple_query(sql).await {
        Ok(m) => Ok(simple_rows(&m)),
        Err(e) => Err(sqlstate(&e)),
    }
}

#[test]
fn insert_select_matches_one_database() {
    let private = PrivateCluster::start(&["--shards", "2", "--replicas", "0"]);
    let base = private.0.base_port;
    private.run(
        "psql",
        &["--shard", "s0", "-c", "create database is_one owner app"],
    );
    let proxy = TestProxy::start_on(&private.0, |c| set_tables(c, TABLES));
    block_on(Duration::from_secs(120), async {
        let (c, _t) = connect_url(&proxy.url()).await;
        let (one, _t1) = connect_url(&format!("postgres://app:app@127.0.0.1:{base}/is_one")).await;
        c.batch_execute(SCHEMA)
            .await
            .expect("schema through the proxy");
        one.batch_execute(SCHEMA).await.expect("schema");
        let rows: Vec<String> = (1..=20)
            .map(|i| format!("({i}, '{}{i}')", ["a", "b", "c"][i % 3]))
            .collect();
        let load = format!("insert into is_src values {}", rows.join(", "));
        c.simple_query(&load).await.expect("rows through the proxy");
        one.simple_query(&load).await.expect("rows");

        let mut diffs = Vec::new();
        let same = |sql: &str, through: Answer, want: Answer, diffs: &mut Vec<String>| {
            if through != want {
                diffs.push(format!("{sql}\n  proxy:  {through:?}\n  direct: {want:?}"));
            }
        };
        for sql in [
            // Keys computed by the SELECT, an untyped literal for a
            // timestamptz column, a numeric rounded to the column's scale,
            // RETURNING in the SELECT's order.
            "insert into is_dst (k, v, at, n) select id * 7, v, '2024-06-01 00:00:00+00', id / 3.0 from is_src where id <= 10 order by id desc returning k, v, at, n",
            // An upsert over rows that are there and rows that are not.
            "insert into is_dst (k, v) select id * 7, v || 'x' from is_src where id between 5 and 15 order by id on conflict (k) do update set v = excluded.v returning k, v",
            // Into an unsharded table, no column list; into a reference table.
            "insert into is_local select id, v from is_src where v like 'a%'",
            "insert into is_ref (id, v) select id, v from is_src order by id limit 3",
            // A join of the source with the target itself.
            "insert into is_dst (k, v) select s.id + 1000, d.v from is_src s join is_dst d on d.k = s.id * 7 where s.id < 4",
            // Nothing selected.
            "insert into is_dst (k, v) select id, v from is_src where false",
            // A NULL key and a missing key fail as on one database.
            "insert into is_dst (k, v) select null, v from is_src",
            "insert into is_dst (v) select v from is_src",
        ] {
            let through = answer(&c, sql).await;
            let want = answer(&one, sql).await;
            same(sql, through, want, &mut diffs);
        }

        // Nothing selected, with RETURNING: described all the same.
        let sql = "insert into is_dst (k, v) select id, v from is_src where false returning k, v";
        for db in [&c, &one] {
            let m = db.simple_query(sql).await.expect("empty insert select");
            assert!(
                matches!(m.first(), Some(tokio_postgres::SimpleQueryMessage::RowDescription(cols)) if cols.len() == 2),
                "{sql}"
            );
        }

        // The extended protocol, a parameter in the SELECT.
        let sql = "insert into is_dst (k, v) select id * 11, v from is_src where id > $1 order by id returning k";
        let through: Vec<i64> = c
            .query(sql, &[&15i64])
            .await
            .expect("extended insert select")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let want: Vec<i64> = one
            .query(sql, &[&15i64])
            .await
            .expect("direct")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(through, want);

        // Inside a transaction: the SELECT sees the transaction's own
        // rows; rolled back, nothing stays.
        for client in [&c, &one] {
            client.simple_query("begin").await.expect("begin");
            client
                .simple_query("insert into is_src values (100, 'new'), (101, 'newer')")
                .await
                .expect("insert");
        }
        let sql = "insert into is_dst (k, v) select id * 13, v from is_src where id >= 100 order by id returning k, v";
        let through = answer(&c, sql).await;
        let want = answer(&one, sql).await;
        same(sql, through, want, &mut diffs);
        for client in [&c, &one] {
            client.simple_query("rollback").await.expect("rollback");
        }

        for sql in [
            "select * from is_dst order by k",
            "select * from is_local order by id",
            "select * from is_ref order by id",
        ] {
            let through = answer(&c, sql).await;
            let want = answer(&one, sql).await;
            same(sql, through, want, &mut diffs);
        }
        // The reference table's copy is the same on every shard.
        for i in 0..2u16 {
            let (s, _ts) =
                connect_url(&format!("postgres://app:app@127.0.0.1:{}/app", base + i)).await;
            assert_eq!(query_count(&s, "select count(*) from is_ref").await, 3);
        }
        assert!(diffs.is_empty(), "{}", diffs.join("\n\n"));
    });
}

//! The routing invariant against real shards (issue 19): every statement
//! that once gave a wrong answer or put a row on the wrong shard now
//! answers as one PostgreSQL database does, or is refused with 0A000
//! before anything runs. The same statements run through the proxy and on
//! a plain database (`iv_oracle`, on shard 0's server) with the same data;
//! answers are compared, and afterwards every table's rows must be where
//! the router says and equal to the plain database's.
//!
//! Tables: `iv_acc` (hash on `id`) and `iv_orders` (hash on
//! `customer_id`, co-located), `iv_ref` (reference), `iv_settings`
//! (unsharded, on the default shard s0).

use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::common::*;

const TABLES: &str = r#"
[[tables]]
name = "iv_acc"
key = "id"
strategy = "hash"

[[tables]]
name = "iv_orders"
key = "customer_id"
strategy = "hash"

[[tables]]
name = "iv_ref"
strategy = "reference"
"#;

const SCHEMA: &str = "
drop table if exists iv_acc, iv_orders, iv_settings, iv_ref;
drop function if exists iv_bump();
drop sequence if exists iv_seq;
drop schema if exists iv_tenant cascade;
create table iv_acc (id int primary key, grp int, bal int);
create table iv_orders (id int, customer_id int, status int, primary key (customer_id, id));
create table iv_settings (k int primary key, v text);
create table iv_ref (code int primary key, label text);
create sequence iv_seq;
create function iv_bump() returns bigint language sql as 'select nextval(''iv_seq'')';
";

type Answer = Result<Vec<Vec<Option<String>>>, String>;

async fn answer(c: &Client, sql: &str) -> Answer {
    match c.simple_query(sql).await {
        Ok(msgs) => Ok(simple_rows(&msgs)),
        Err(e) => Err(match e.as_db_error() {
            Some(d) => format!("{}: {}", d.code().code(), d.message()),
            None => e.to_string(),
        }),
    }
}

fn sorted(a: Answer) -> Answer {
    a.map(|mut rows| {
        rows.sort();
        rows
    })
}

/// The same answer (rows as multisets) through the proxy and from one
/// database, or a difference to report.
async fn same(c: &Client, one: &Client, sql: &str, out: &mut Vec<String>) {
    let through = sorted(answer(c, sql).await);
    let want = sorted(answer(one, sql).await);
    let codes_match = match (&through, &want) {
        (Err(a), Err(b)) => a.split(':').next() == b.split(':').next(),
        _ => false,
    };
    if through != want && !codes_match {
        out.push(format!("{sql}\n  proxy:  {through:?}\n  direct: {want:?}"));
    }
}

/// Refused by the proxy with 0A000 (and so run nowhere), or, for a read,
/// answered as one database answers it (tier 3 gathers what the shards
/// cannot answer together).
async fn refused_or_same(c: &Client, one: &Client, sql: &str, out: &mut Vec<String>) {
    match c.simple_query(sql).await {
        Err(e) if e.code().map(|c| c.code()) == Some("0A000") => {}
        Ok(m) if sql.trim_start().to_lowercase().starts_with("select") => {
            let mut through = simple_rows(&m);
            through.sort();
            let want = sorted(answer(one, sql).await);
            if Ok(&through) != want.as_ref() {
                out.push(format!("{sql}\n  proxy:  {through:?}\n  direct: {want:?}"));
            }
        }
        other => out.push(format!(
            "{sql}\n  must be refused with 0A000, got: {:?}",
            other.map(|m| simple_rows(&m)).map_err(|e| e.to_string())
        )),
    }
}

async fn rows_of(c: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut rows = simple_rows(&c.simple_query(sql).await.expect(sql));
    rows.sort();
    rows
}

fn count(msgs: &[SimpleQueryMessage]) -> u64 {
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(0)
}

#[test]
fn statements_answer_as_one_database_or_are_refused() {
    superuser_sql("drop database if exists iv_oracle");
    superuser_sql("create database iv_oracle owner app");
    // The app user may not create roles: the role exists on every server,
    // and the proxy's GRANT must reach each.
    for shard in ["s0", "s1"] {
        superuser_sql_on(
            shard,
            "do $$ begin if exists (select from pg_roles where rolname = 'iv_reader') then \
             drop owned by iv_reader; drop role iv_reader; end if; end $$; create role iv_reader",
        );
    }
    let proxy = TestProxy::start(|c| set_tables(c, TABLES));
    let config = shardwire::config::Config::load(&proxy.config_path).expect("config");
    let acc = config.router.table("iv_acc").expect("iv_acc").clone();
    let shard_of = |id: i64| {
        acc.shard_for(&shardwire::sharding::KeyValue::Int(id))
            .expect("shard")
    };
    let on = |s: usize| {
        (1..200i64)
            .filter(|&k| shard_of(k) == s)
            .collect::<Vec<_>>()
    };
    let (k0, k0b, k1) = (on(0)[0], on(0)[1], on(1)[0]);
    let base = cluster().base_port;
    block_on(Duration::from_secs(240), async {
        let (c, _t) = connect_url(&proxy.url()).await;
        let (one, _t1) =
            connect_url(&format!("postgres://app:app@127.0.0.1:{base}/iv_oracle")).await;
        c.batch_execute(SCHEMA)
            .await
            .expect("schema through the proxy");
        one.batch_execute(SCHEMA)
            .await
            .expect("schema on one database");
        // The function was created on every shard (DDL of any kind is).
        for s in connect_shards("select 1").await.iter() {
            assert_eq!(
                query_count(s, "select count(*) from pg_proc where proname = 'iv_bump'").await,
                1
            );
        }

        // Rows: INSERT without a column list, split across shards.
        let acc_rows: Vec<String> = (1..=40)
            .map(|i| format!("({i}, {}, {})", i % 4, i * 10))
            .collect();
        let load = [
            format!("insert into iv_acc values {}", acc_rows.join(", ")),
            format!(
                "insert into iv_orders (id, customer_id, status) values {}",
                (1..=30)
                    .map(|i| format!("({i}, {}, {})", i % 12 + 1, i % 3 + 1))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "insert into iv_settings values (1, 'one'), (2, 'two'), (3, 'three')".into(),
            "insert into iv_ref values (1, 'a'), (2, 'b')".into(),
        ];
        for sql in &load {
            c.simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            one.batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        }
        // Prepared, without a column list, binary parameters.
        let ins = c
            .prepare("insert into iv_acc values ($1, $2, $3)")
            .await
            .expect("prepare insert");
        let one_ins = one
            .prepare("insert into iv_acc values ($1, $2, $3)")
            .await
            .expect("prepare insert");
        for id in 41..=50i32 {
            c.execute(&ins, &[&id, &1i32, &id])
                .await
                .expect("insert through proxy");
            one.execute(&one_ins, &[&id, &1i32, &id])
                .await
                .expect("insert");
        }

        let mut diffs = Vec::new();
        // 1. A second reference to a sharded table.
        refused_or_same(
            &c,
            &one,
            &format!("select (select count(*) from iv_acc) from iv_acc where id = {k0}"),
            &mut diffs,
        )
        .await;
        refused_or_same(
            &c,
            &one,
            &format!("select * from iv_acc a join iv_acc b on a.grp = b.grp where a.id = {k0}"),
            &mut diffs,
        )
        .await;
        refused_or_same(
            &c,
            &one,
            &format!("select a.id, b.id from iv_acc a, iv_acc b where a.id = {k0} and b.id = {k1}"),
            &mut diffs,
        )
        .await;
        same(
            &c,
            &one,
            &format!(
                "select a.id, b.id from iv_acc a, iv_acc b where a.id = {k0} and b.id = {k0b}"
            ),
            &mut diffs,
        )
        .await;
        same(
            &c,
            &one,
            &format!(
                "select a.id, b.bal from iv_acc a join iv_acc b on a.id = b.id where a.id = {k1}"
            ),
            &mut diffs,
        )
        .await;
        refused_or_same(&c, &one, &format!("update iv_acc set bal = (select max(bal) from iv_acc where id < 20) where id = {k0}"), &mut diffs).await;
        refused_or_same(&c, &one, &format!("with x as (update iv_acc set grp = grp + 100 returning id) select * from x where id = {k0}"), &mut diffs).await;
        same(&c, &one, &format!("select o.id, (select count(*) from iv_orders p where p.customer_id = o.customer_id) from iv_orders o where o.customer_id = {k1}"), &mut diffs).await;
        // 2. A keyed query joined to an unsharded table.
        let cust0 = (1..=12).find(|&k| shard_of(k) == 0).unwrap();
        let cust1 = (1..=12).find(|&k| shard_of(k) == 1).unwrap();
        refused_or_same(&c, &one, &format!("select o.id, s.v from iv_orders o left join iv_settings s on s.k = o.status where o.customer_id = {cust1}"), &mut diffs).await;
        same(&c, &one, &format!("select o.id, s.v from iv_orders o left join iv_settings s on s.k = o.status where o.customer_id = {cust0}"), &mut diffs).await;
        same(
            &c,
            &one,
            "select s.k, r.label from iv_settings s left join iv_ref r on r.code = s.k",
            &mut diffs,
        )
        .await;
        // 3. A statement the parser cannot read, behind BEGIN.
        refused_or_same(&c, &one, "BEGIN; INSERT INTO iv_acc(id,grp,bal) VALUES (123,1,230) ON CONFLICT (id) WHERE bal >= 0 DO NOTHING; COMMIT;", &mut diffs).await;
        same(
            &c,
            &one,
            "insert into iv_acc (id, grp, bal) values (123, 1, 230)",
            &mut diffs,
        )
        .await;
        same(
            &c,
            &one,
            "insert into iv_acc (id, grp, bal) values (123, 1, 230)",
            &mut diffs,
        )
        .await;
        // 4. An upsert may not move the key.
        refused_or_same(&c, &one, &format!("insert into iv_acc (id, grp, bal) values ({k0}, 0, 0) on conflict (id) do update set id = 1002"), &mut diffs).await;
        same(&c, &one, &format!("insert into iv_acc (id, grp, bal) values ({k1}, 0, 0) on conflict (id) do update set bal = excluded.bal + 1 returning id, bal"), &mut diffs).await;
        // Writes to a reference table from other tables' rows: the rows
        // are read first (INSERT ... SELECT), then written to every shard.
        same(
            &c,
            &one,
            "insert into iv_ref select k + 10, v from iv_settings",
            &mut diffs,
        )
        .await;
        same(
            &c,
            &one,
            "insert into iv_ref select id + 100, 'x' from iv_acc where id = 1",
            &mut diffs,
        )
        .await;
        same(
            &c,
            &one,
            "insert into iv_ref select code + 10, label from iv_ref",
            &mut diffs,
        )
        .await;
        // Outer joins: an ON condition does not filter the preserved side.
        refused_or_same(&c, &one, &format!("select a.id, o.id from iv_acc a left join iv_orders o on o.customer_id = a.id and a.id = {k0}"), &mut diffs).await;
        same(&c, &one, &format!("select a.id, o.id from iv_acc a left join iv_orders o on o.customer_id = a.id where a.id = {cust1}"), &mut diffs).await;
        // Found by the differential fuzzer (scripts/fuzz-sql.sh):
        // the preserved side of an outer join answered once per shard,
        refused_or_same(
            &c,
            &one,
            "select g.x, a.id from generate_series(1, 3) g(x) left join iv_acc a on a.id = g.x",
            &mut diffs,
        )
        .await;
        refused_or_same(
            &c,
            &one,
            "select count(*) from iv_ref r left join iv_acc a on a.grp = r.code",
            &mut diffs,
        )
        .await;
        same(
            &c,
            &one,
            "select g.x, a.id from generate_series(1, 3) g(x) join iv_acc a on a.id = g.x",
            &mut diffs,
        )
        .await;
        // a reference table written in a CTE on one shard only,
        refused_or_same(
            &c,
            &one,
            "with w as (update iv_ref set label = 'z' returning code) select code from w",
            &mut diffs,
        )
        .await;
        // and COMMIT of a failed transaction over several shards, sent in
        // the extended protocol, answered XX000 instead of ROLLBACK.
        for db in [&c, &one] {
            db.batch_execute("begin").await.expect("begin");
            db.simple_query("insert into iv_acc (id, grp, bal) values (300, 0, 0)")
                .await
                .expect("insert");
            let dup =
                format!("insert into iv_acc (id, grp, bal) values ({k0}, 0, 0), ({k1}, 0, 0)");
            let e = db.simple_query(&dup).await.expect_err("duplicate keys");
            assert_eq!(sqlstate(&e), "23505");
            db.execute("commit", &[])
                .await
                .expect("commit of a failed transaction");
        }
        // ROLLBACK TO SAVEPOINT across shards revives the transaction as in
        // PostgreSQL: the savepoint set on one server is set on the shard
        // that joins later, and rolling back to it undoes both shards'
        // work since.
        for db in [&c, &one] {
            db.batch_execute("begin; savepoint a").await.expect("begin");
            db.simple_query("insert into iv_acc (id, grp, bal) values (301, 0, 0)")
                .await
                .expect("insert before the failure");
            let dup =
                format!("insert into iv_acc (id, grp, bal) values ({k0}, 0, 0), ({k1}, 0, 0)");
            assert_eq!(
                sqlstate(&db.simple_query(&dup).await.expect_err("dup")),
                "23505"
            );
            let e = db.simple_query("select 1").await.expect_err("failed");
            assert_eq!(sqlstate(&e), "25P02");
            db.simple_query("rollback to savepoint a")
                .await
                .expect("rollback to savepoint");
            db.simple_query("insert into iv_acc (id, grp, bal) values (302, 0, 0)")
                .await
                .expect("insert after the savepoint");
            db.batch_execute("commit").await.expect("commit");
        }
        same(
            &c,
            &one,
            "select id from iv_acc where id in (301, 302)",
            &mut diffs,
        )
        .await;
        // Views and tables made of one shard's rows.
        refused_or_same(
            &c,
            &one,
            "create view iv_v as select * from iv_acc",
            &mut diffs,
        )
        .await;
        refused_or_same(
            &c,
            &one,
            "create table iv_copy as select * from iv_acc",
            &mut diffs,
        )
        .await;

        // 6. An empty array matches no row (extended protocol).
        let empty: Vec<i32> = Vec::new();
        let rows = c
            .query("select id from iv_acc where id = any($1)", &[&empty])
            .await
            .expect("empty ANY select");
        assert!(rows.is_empty());
        let n = c
            .execute("delete from iv_acc where id = any($1)", &[&empty])
            .await
            .expect("empty ANY delete");
        assert_eq!(n, 0);
        let some = vec![k0 as i32, k1 as i32];
        let n = c
            .execute(
                "update iv_acc set bal = bal + 1 where id = any($1)",
                &[&some],
            )
            .await
            .expect("ANY update across shards");
        assert_eq!(n, 2);
        one.execute(
            "update iv_acc set bal = bal + 1 where id = any($1)",
            &[&some],
        )
        .await
        .expect("ANY update");

        // 9. Schema-wide DDL reaches every shard, all or nothing.
        for sql in [
            "create schema iv_tenant",
            "create table iv_tenant.t (id int primary key)",
            "grant usage on schema iv_tenant to iv_reader",
            "grant select on iv_acc to iv_reader",
            "comment on table iv_acc is 'accounts'",
        ] {
            c.simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        }
        for s in connect_shards("select 1").await.iter() {
            assert_eq!(
                query_count(
                    s,
                    "select count(*) from pg_namespace where nspname = 'iv_tenant'"
                )
                .await,
                1
            );
            assert_eq!(
                query_count(
                    s,
                    "select count(*) from pg_tables where schemaname = 'iv_tenant'"
                )
                .await,
                1
            );
            assert_eq!(
                query_count(
                    s,
                    "select has_table_privilege('iv_reader', 'iv_acc', 'select')::int::bigint"
                )
                .await,
                1
            );
            assert_eq!(
                query_count(
                    s,
                    "select (obj_description('iv_acc'::regclass) = 'accounts')::int::bigint"
                )
                .await,
                1
            );
        }
        // A migration through the proxy: INSERT without a column list sees
        // the new column at once (the cached column order is dropped).
        c.simple_query("alter table iv_acc add column note text")
            .await
            .expect("alter");
        one.batch_execute("alter table iv_acc add column note text")
            .await
            .expect("alter");
        same(
            &c,
            &one,
            "insert into iv_acc values (60, 1, 1, 'sixty'), (61, 2, 2, 'sixty-one')",
            &mut diffs,
        )
        .await;
        // The same after DDL sent in the extended protocol (as JDBC
        // migration tools send it), with a column dropped before the key's.
        for db in [&c, &one] {
            db.execute("alter table iv_acc drop column grp", &[])
                .await
                .expect("alter in the extended protocol");
        }
        // A column dropped before the key moves the key's position: an
        // INSERT without a column list must not be routed by the old one.
        for db in [&c, &one] {
            db.simple_query(&format!(
                "insert into iv_orders values (500, {cust1}, {cust0})"
            ))
            .await
            .expect("positional insert");
            db.execute("alter table iv_orders drop column id", &[])
                .await
                .expect("drop the column before the key");
            db.simple_query(&format!("insert into iv_orders values ({cust1}, {cust0})"))
                .await
                .expect("positional insert after DDL");
        }
        // (Another text than before: a statement prepared before the DDL
        // keeps its old parameter types on pooled servers, issue 21.)
        let ins = c
            .prepare("insert into iv_acc values ($1,$2,$3)")
            .await
            .expect("prepare");
        let one_ins = one
            .prepare("insert into iv_acc values ($1,$2,$3)")
            .await
            .expect("prepare");
        for id in [70i32, 71, 72, 73] {
            c.execute(&ins, &[&id, &7i32, &"after"])
                .await
                .expect("insert after DDL");
            one.execute(&one_ins, &[&id, &7i32, &"after"])
                .await
                .expect("insert");
        }
        for sql in [
            "revoke all on iv_acc from iv_reader",
            "drop schema iv_tenant cascade",
        ] {
            c.simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        }

        // Effects: every row where the router says, and the same rows as
        // the one database.
        let shards = connect_shards("select 1").await;
        let mut union = Vec::new();
        for (i, s) in shards.iter().enumerate() {
            for row in rows_of(s, "select id, bal, note from iv_acc").await {
                let id: i64 = row[0].as_deref().unwrap().parse().unwrap();
                if shard_of(id) != i {
                    diffs.push(format!(
                        "iv_acc row {id} is on s{i}, the router says s{}",
                        shard_of(id)
                    ));
                }
                union.push(row);
            }
            assert_eq!(
                rows_of(s, "select * from iv_ref").await,
                rows_of(&one, "select * from iv_ref").await,
                "iv_ref on s{i}"
            );
            let settings = query_count(s, "select count(*) from iv_settings").await;
            assert_eq!(settings, if i == 0 { 3 } else { 0 }, "iv_settings on s{i}");
        }
        let orders = config.router.table("iv_orders").expect("iv_orders").clone();
        for (i, s) in shards.iter().enumerate() {
            for row in rows_of(s, "select customer_id from iv_orders").await {
                let k: i64 = row[0].as_deref().unwrap().parse().unwrap();
                let want = orders
                    .shard_for(&shardwire::sharding::KeyValue::Int(k))
                    .expect("shard");
                if want != i {
                    diffs.push(format!(
                        "iv_orders row of customer {k} is on s{i}, the router says s{want}"
                    ));
                }
            }
        }
        union.sort();
        let want = rows_of(&one, "select id, bal, note from iv_acc").await;
        if union != want {
            diffs.push(format!(
                "iv_acc differs:\n  shards: {union:?}\n  direct: {want:?}"
            ));
        }
        assert!(
            diffs.is_empty(),
            "{} differences:\n\n{}",
            diffs.len(),
            diffs.join("\n\n")
        );
    });
    superuser_sql("drop database if exists iv_oracle");
    for shard in ["s0", "s1"] {
        superuser_sql_on(shard, "drop owned by iv_reader; drop role iv_reader");
    }
}

#[test]
fn functions_in_from_are_not_reads() {
    let proxy = TestProxy::start(|c| {
        set_tables(c, TABLES);
        set(c, "reads.read_from", "replica");
        set(c, "reads.write_functions", vec!["iv_fn_write"]);
    });
    block_on(Duration::from_secs(120), async {
        let (c, _t) = connect_url(&proxy.url()).await;
        c.batch_execute(
            "drop function if exists iv_fn_write(); drop sequence if exists iv_fn_seq;
             create sequence iv_fn_seq;
             create function iv_fn_write() returns bigint language sql as 'select nextval(''iv_fn_seq'')';",
        )
        .await
        .expect("setup");
        // On a replica these fail with "cannot execute nextval() in a
        // read-only transaction".
        let mut last = 0;
        for sql in [
            "select * from nextval('iv_fn_seq')",
            "select * from iv_fn_write()",
            "select n from iv_fn_write() as n",
        ] {
            let rows = simple_rows(
                &c.simple_query(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e:?}")),
            );
            let v: i64 = rows[0][0].as_deref().unwrap().parse().unwrap();
            assert!(v > last, "{sql}: {v} after {last}");
            last = v;
        }
        let msgs = c
            .simple_query("select * from generate_series(1, 3)")
            .await
            .expect("series");
        assert_eq!(count(&msgs), 3);
        c.batch_execute("drop function iv_fn_write(); drop sequence iv_fn_seq")
            .await
            .expect("cleanup");
    });
}

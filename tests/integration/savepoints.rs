//! Savepoints in transactions over several shards, in both protocols: a
//! savepoint is set on every shard the transaction holds and on each shard
//! that joins later (right after its BEGIN), so ROLLBACK TO and RELEASE
//! mean on every shard what they mean in one database, and ROLLBACK TO
//! revives a transaction failed by an error, as in PostgreSQL.

use std::time::Duration;

use tokio_postgres::Client;

use crate::common::*;

const TABLES: &str = r#"
[[tables]]
name = "sp_t"
key = "id"
strategy = "hash"
"#;

/// Runs a statement in the simple or the extended protocol.
async fn run(c: &Client, extended: bool, sql: &str) -> Result<(), String> {
    let r = if extended {
        c.execute(sql, &[]).await.map(|_| ())
    } else {
        c.simple_query(sql).await.map(|_| ())
    };
    r.map_err(|e| sqlstate(&e))
}

async fn ids(c: &Client, range: (i64, i64)) -> Vec<i64> {
    let m = c
        .simple_query(&format!(
            "select id from sp_t where id between {} and {} order by id",
            range.0, range.1
        ))
        .await
        .expect("ids");
    simple_rows(&m)
        .iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn savepoints_mean_the_same_on_every_shard_of_a_transaction() {
    let proxy = TestProxy::start(|c| set_tables(c, TABLES));
    let config = shardwire::config::Config::load(&proxy.config_path).expect("config");
    let rule = config.router.table("sp_t").expect("sp_t").clone();
    let on = |shard: usize, from: i64| {
        (from..)
            .find(|&id| {
                rule.shard_for(&shardwire::sharding::KeyValue::Int(id))
                    .unwrap()
                    == shard
            })
            .unwrap()
    };
    block_on(Duration::from_secs(120), async {
        let (c, _t) = connect_url(&proxy.url()).await;
        c.batch_execute("drop table if exists sp_t; create table sp_t (id int8 primary key)")
            .await
            .expect("schema");
        for (round, extended) in [(0i64, false), (1, true)] {
            let base = 1000 * (round + 1);
            let ins = |id: i64| format!("insert into sp_t values ({id})");
            let (a0, a1) = (on(0, base), on(1, base));
            let (b0, b1) = (on(0, a0 + 1), on(1, a1 + 1));
            let c0 = on(0, b0 + 1);

            // Set on both shards: ROLLBACK TO undoes both shards' work since.
            run(&c, false, "begin").await.unwrap();
            run(&c, extended, &ins(a0)).await.unwrap();
            run(&c, extended, &ins(a1)).await.unwrap();
            run(&c, extended, "savepoint sp").await.unwrap();
            run(&c, extended, &ins(b0)).await.unwrap();
            run(&c, extended, &ins(b1)).await.unwrap();
            run(&c, extended, "rollback to savepoint sp").await.unwrap();
            run(&c, extended, &ins(c0)).await.unwrap();
            run(&c, extended, "release savepoint sp").await.unwrap();
            run(&c, false, "commit").await.unwrap();
            let mut want = vec![a0, a1, c0];
            want.sort();
            assert_eq!(
                ids(&c, (base, base + 999)).await,
                want,
                "extended: {extended}"
            );

            // Set while the transaction was on one shard; the other joins
            // after it and is rolled back to it too.
            let base = base + 100_000;
            let (a0, a1) = (on(0, base), on(1, base));
            run(&c, false, "begin").await.unwrap();
            run(&c, extended, &ins(a0)).await.unwrap();
            run(&c, extended, "savepoint late").await.unwrap();
            run(&c, extended, &ins(a1)).await.unwrap();
            run(&c, extended, "rollback to savepoint late")
                .await
                .unwrap();
            run(&c, false, "commit").await.unwrap();
            assert_eq!(
                ids(&c, (base, base + 999)).await,
                [a0],
                "extended: {extended}"
            );

            // An error fails the transaction; ROLLBACK TO revives it.
            let base = base + 100_000;
            let (a0, a1) = (on(0, base), on(1, base));
            let c0 = on(0, a0 + 1);
            run(&c, false, "begin").await.unwrap();
            run(&c, extended, &ins(a0)).await.unwrap();
            run(&c, extended, &ins(a1)).await.unwrap();
            run(&c, extended, "savepoint sp").await.unwrap();
            assert_eq!(run(&c, extended, &ins(a1)).await, Err("23505".into()));
            assert_eq!(run(&c, extended, "select 1").await, Err("25P02".into()));
            run(&c, extended, "rollback to savepoint sp").await.unwrap();
            run(&c, extended, &ins(c0)).await.unwrap();
            run(&c, false, "commit").await.unwrap();
            let mut want = vec![a0, a1, c0];
            want.sort();
            assert_eq!(
                ids(&c, (base, base + 999)).await,
                want,
                "extended: {extended}"
            );

            // A savepoint that does not exist fails as in PostgreSQL.
            run(&c, false, "begin").await.unwrap();
            run(&c, extended, &ins(on(0, base + 500))).await.unwrap();
            run(&c, extended, &ins(on(1, base + 500))).await.unwrap();
            assert_eq!(
                run(&c, extended, "rollback to savepoint nosuch").await,
                Err("3B001".into())
            );
            run(&c, false, "rollback").await.unwrap();
        }
    });
}

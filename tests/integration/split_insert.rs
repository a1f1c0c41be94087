//! Multi-row INSERTs whose rows live on several shards (Plan::SplitInsert),
//! in both protocols, inside and outside transactions: each shard gets
//! its own rows (with, in the extended protocol, only the parameters they
//! use, renumbered), the count is summed, and RETURNING rows come back in
//! the order of the VALUES rows, as from one database (ORMs' bulk inserts
//! match returned ids to their objects by position).

use std::time::Duration;

use crate::common::*;

const TABLES: &str = r#"
[[tables]]
name = "si_t"
key = "id"
strategy = "hash"
"#;

/// Ids in an order that is neither sorted nor grouped by shard.
const IDS: [i64; 10] = [17, 3, 42, 8, 25, 1, 33, 12, 50, 6];

#[test]
fn split_inserts_return_rows_in_values_order_in_both_protocols() {
    let proxy = TestProxy::start(|c| set_tables(c, TABLES));
    let config = shardwire::config::Config::load(&proxy.config_path).expect("config");
    let rule = config.router.table("si_t").expect("si_t").clone();
    let shard_of = |id: i64| {
        rule.shard_for(&shardwire::sharding::KeyValue::Int(id))
            .expect("shard")
    };
    assert!(IDS.iter().any(|&i| shard_of(i) == 0) && IDS.iter().any(|&i| shard_of(i) == 1));
    block_on(Duration::from_secs(120), async {
        let (c, _t) = connect_url(&proxy.url()).await;
        c.batch_execute(
            "drop table if exists si_t; create table si_t (id int8 primary key, v text, n int)",
        )
        .await
        .expect("schema");

        // The simple protocol.
        let values: Vec<String> = IDS.iter().map(|i| format!("({i}, 'v{i}', 1)")).collect();
        let m = c
            .simple_query(&format!(
                "insert into si_t (id, v, n) values {} returning id, v",
                values.join(", ")
            ))
            .await
            .expect("simple split insert");
        let got: Vec<i64> = simple_rows(&m)
            .iter()
            .map(|r| r[0].as_deref().unwrap().parse().unwrap())
            .collect();
        assert_eq!(got, IDS, "RETURNING in VALUES order");

        // The extended protocol, outside a transaction: binary int8 keys,
        // text values, a parameter shared by every row's shard (in DO
        // UPDATE) and one in RETURNING.
        let mut sql = String::from("insert into si_t (id, v, n) values ");
        let mut params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = Vec::new();
        for (k, id) in IDS.iter().enumerate() {
            if k > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("(${}, ${}, 2)", 2 * k + 1, 2 * k + 2));
            params.push(Box::new(*id));
            params.push(Box::new(format!("w{id}")));
        }
        let shared = 2 * IDS.len() + 1;
        sql.push_str(&format!(
            " on conflict (id) do update set v = excluded.v || ${shared}, n = si_t.n + 1 returning id, v, ${} || '!' as note",
            shared + 1
        ));
        params.push(Box::new("+".to_string()));
        params.push(Box::new("x".to_string()));
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = c.query(&sql, &refs).await.expect("extended split upsert");
        let got: Vec<(i64, String, String)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let want: Vec<(i64, String, String)> = IDS
            .iter()
            .map(|i| (*i, format!("w{i}+"), "x!".to_string()))
            .collect();
        assert_eq!(got, want);

        // Every row is on its key's shard.
        let shards = connect_shards("select 1").await;
        for (i, s) in shards.iter().enumerate() {
            for r in s
                .query("select id, n from si_t", &[])
                .await
                .expect("shard rows")
            {
                let id: i64 = r.get(0);
                assert_eq!(shard_of(id), i, "row {id}");
                assert_eq!(r.get::<_, i32>(1), 2, "row {id} updated once");
            }
        }

        // In a transaction: rolled back leaves nothing, committed stays.
        let insert = "insert into si_t (id, v) values ($1, $2), ($3, $4), ($5, $6) returning id";
        let fresh = [101i64, 102, 103, 104, 105, 106, 107, 108];
        let (a, b) = {
            let a = *fresh.iter().find(|&&i| shard_of(i) == 0).unwrap();
            let b = *fresh.iter().find(|&&i| shard_of(i) == 1).unwrap();
            (a, b)
        };
        let c2 = b + 100;
        for commit in [false, true] {
            c.simple_query("begin").await.expect("begin");
            let rows = c
                .query(insert, &[&b, &"b", &a, &"a", &c2, &"c"])
                .await
                .expect("split insert in a transaction");
            let got: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            assert_eq!(got, [b, a, c2]);
            c.simple_query(if commit { "commit" } else { "rollback" })
                .await
                .expect("end");
            let n = query_count(
                &c,
                &format!("select count(*) from si_t where id in ({a}, {b}, {c2})"),
            )
            .await;
            assert_eq!(n, if commit { 3 } else { 0 });
        }

        // A row that conflicts is skipped: the count says how many went in.
        let m = c
            .execute(
                "insert into si_t (id, v) values ($1, 'again'), ($2, 'new') on conflict do nothing",
                &[&a, &(b + 1000)],
            )
            .await
            .expect("insert with a conflict");
        assert_eq!(m, 1);
    });
}

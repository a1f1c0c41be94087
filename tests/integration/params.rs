//! Key parameters are routed by their type (issue 19, case 5): a float8
//! key 3.0 sent in binary, as psycopg sends Python floats, is the integer
//! key 3, not the int8 of the same eight bytes. Each row must sit on the
//! shard `shardwire route` names for its integer key, every row must be
//! found again by any type that carries its key, and a key that is not an
//! integer is refused before anything runs.

use std::error::Error;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::Client;

use crate::common::*;

const TABLES: &str = r#"
[[tables]]
name = "pt_acc"
key = "aid"
strategy = "hash"

[[tables]]
name = "pt_bad"
key = "aid"
strategy = "hash"

[[tables]]
name = "pt_txt"
key = "k"
strategy = "hash"
key_type = "text"

[[tables]]
name = "pt_uid"
key = "u"
strategy = "hash"
key_type = "uuid"
"#;

/// Each test its own tables: tests run at once.
const SETUP_ACC: &str = "drop table if exists pt_acc;
     create table pt_acc (aid bigint primary key, note text);";
const SETUP_BAD: &str = "drop table if exists pt_bad;
     create table pt_bad (aid bigint primary key, note text);
     insert into pt_bad select g, 'old' from generate_series(1, 10) g;";
const SETUP_TXT: &str = "drop table if exists pt_txt, pt_uid;
     create table pt_txt (k text primary key, note text);
     create table pt_uid (u uuid primary key, note text);";

/// A numeric in binary format (numeric_send), from decimal text such as
/// "42" or "-42.5": tokio-postgres has no numeric type of its own.
#[derive(Debug)]
struct Numeric(&'static str);

impl ToSql for Numeric {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_slice(&numeric_send(self.0)?);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    to_sql_checked!();
}

/// A uuid in binary format (16 bytes), without tokio-postgres's uuid
/// feature.
#[derive(Debug)]
struct Uuid([u8; 16]);

impl ToSql for Uuid {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::UUID
    }

    to_sql_checked!();
}

impl Uuid {
    fn of(i: u8) -> Uuid {
        let mut u = [0u8; 16];
        u[0] = 0xa0;
        u[6] = 0x40;
        u[8] = 0x80;
        u[15] = i;
        Uuid(u)
    }

    fn text(&self) -> String {
        shardwire::router::display_key(&shardwire::sharding::KeyValue::Uuid(self.0))
    }
}

/// Which shard (0 or 1) holds the row of `table` whose `column` reads as
/// `key`, checked directly on both shards; panics unless exactly one row
/// sits on exactly one shard.
async fn shard_holding(shards: &[Client; 2], table: &str, column: &str, key: &str) -> usize {
    let mut holders = Vec::new();
    for (i, s) in shards.iter().enumerate() {
        let sql = format!("select count(*) from {table} where {column}::text = $1");
        let n: i64 = s.query_one(&sql, &[&key]).await.expect(&sql).get(0);
        if n > 0 {
            assert_eq!(n, 1, "{table} {key} twice on s{i}");
            holders.push(i);
        }
    }
    assert_eq!(holders.len(), 1, "{table} key {key} on shards {holders:?}");
    holders[0]
}

/// The shard `shardwire route` names for `sql` with one text parameter.
fn routed(proxy: &TestProxy, sql: &str, key: &str) -> usize {
    let name = route_shard(proxy, sql, &[key]);
    name[1..].parse().expect("sN")
}

async fn notes(c: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<String> {
    c.query(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e} ({:?})", e.code()))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The notes a prepared statement finds for key parameter `p` (of `aid`).
async fn notes_of(
    c: &Client,
    stmt: &tokio_postgres::Statement,
    aid: i64,
    p: &(dyn ToSql + Sync),
) -> Vec<String> {
    c.query(stmt, &[p])
        .await
        .unwrap_or_else(|e| panic!("aid {aid} as {:?}: {e} ({:?})", stmt.params(), e.code()))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn float8_keys_land_on_their_integer_shard_and_are_found_by_any_type() {
    let proxy = TestProxy::start(|c| set_tables(c, TABLES));
    block_on(Duration::from_secs(300), async {
        let shards = connect_shards(SETUP_ACC).await;
        let (mut c, _task) = connect_url(&proxy.url()).await;

        // Twenty rows keyed by binary float8 values, as psycopg sends
        // Python floats: the type is declared in Parse.
        let insert = c
            .prepare_typed(
                "insert into pt_acc (aid, note) values ($1, $2)",
                &[Type::FLOAT8, Type::TEXT],
            )
            .await
            .expect("prepare insert");
        for aid in 1..=20i64 {
            c.execute(&insert, &[&(aid as f64), &format!("n{aid}")])
                .await
                .unwrap_or_else(|e| panic!("insert {aid}: {e}"));
        }

        // Ten more in one transaction, which spans both shards (the
        // proxy's transaction over several shards reads its Binds too).
        let tx = c.transaction().await.expect("begin");
        for aid in 21..=30i64 {
            tx.execute(&insert, &[&(aid as f64), &format!("n{aid}")])
                .await
                .unwrap_or_else(|e| panic!("insert {aid} in a transaction: {e}"));
        }
        tx.commit().await.expect("commit");

        // Each row on the shard `shardwire route` names for its integer key.
        let mut per_shard = [0; 2];
        for aid in 1..=30i64 {
            let want = routed(
                &proxy,
                "select * from pt_acc where aid = $1",
                &aid.to_string(),
            );
            let got = shard_holding(&shards, "pt_acc", "aid", &aid.to_string()).await;
            assert_eq!(got, want, "aid {aid}: row on s{got}, route says s{want}");
            per_shard[got] += 1;
        }
        assert!(per_shard[0] > 0 && per_shard[1] > 0, "{per_shard:?}");

        // Found again by every type that carries the key.
        let by_int8 = c
            .prepare("select note from pt_acc where aid = $1")
            .await
            .expect("prepare");
        let by = |t: Type| {
            let c = &c;
            async move {
                c.prepare_typed("select note from pt_acc where aid = $1", &[t])
                    .await
                    .expect("prepare_typed")
            }
        };
        let (by_float8, by_float4, by_int4, by_int2, by_numeric) = (
            by(Type::FLOAT8).await,
            by(Type::FLOAT4).await,
            by(Type::INT4).await,
            by(Type::INT2).await,
            by(Type::NUMERIC).await,
        );
        let numerics = [
            "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
            "17", "18", "19", "20.000",
        ];
        for aid in 1..=20i64 {
            let want = vec![format!("n{aid}")];
            assert_eq!(notes_of(&c, &by_int8, aid, &aid).await, want, "int8 {aid}");
            assert_eq!(
                notes_of(&c, &by_float8, aid, &(aid as f64)).await,
                want,
                "float8 {aid}"
            );
            assert_eq!(
                notes_of(&c, &by_float4, aid, &(aid as f32)).await,
                want,
                "float4 {aid}"
            );
            assert_eq!(
                notes_of(&c, &by_int4, aid, &(aid as i32)).await,
                want,
                "int4 {aid}"
            );
            assert_eq!(
                notes_of(&c, &by_int2, aid, &(aid as i16)).await,
                want,
                "int2 {aid}"
            );
            let n = Numeric(numerics[aid as usize - 1]);
            assert_eq!(
                notes_of(&c, &by_numeric, aid, &n).await,
                want,
                "numeric {aid}"
            );
            // The unnamed statement of one batch (Parse with the type,
            // Bind, Describe, Execute, Sync): psycopg's way.
            let typed = c
                .query_typed(
                    "select note from pt_acc where aid = $1",
                    &[(&(aid as f64), Type::FLOAT8)],
                )
                .await
                .unwrap_or_else(|e| panic!("query_typed {aid}: {e}"));
            assert_eq!(
                typed
                    .iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>(),
                want
            );
            // A type only the server's ParameterDescription tells: `$1 >
            // 0.5::float8` makes $1 a float8 before `aid = $1` sees it.
            let described = notes(
                &c,
                "select note from pt_acc where $1 > 0.5::float8 and aid = $1",
                &[&(aid as f64)],
            )
            .await;
            assert_eq!(described, want, "described float8 {aid}");
        }

        // Every key at once, as a binary float8[] (element OID 701).
        let all: Vec<f64> = (1..=30).map(|k| k as f64).collect();
        let any = c
            .prepare_typed(
                "select count(*) from pt_acc where aid = any($1)",
                &[Type::FLOAT8_ARRAY],
            )
            .await
            .expect("prepare any");
        let n: i64 = c
            .query_one(&any, &[&all])
            .await
            .expect("any(float8[])")
            .get(0);
        assert_eq!(n, 30);
    });
}

#[test]
fn keys_that_are_not_integers_are_refused_and_change_nothing() {
    let proxy = TestProxy::start(|c| set_tables(c, TABLES));
    block_on(Duration::from_secs(300), async {
        let shards = connect_shards(SETUP_BAD).await;
        let (c, _task) = connect_url(&proxy.url()).await;
        let insert = c
            .prepare_typed(
                "insert into pt_bad (aid, note) values ($1, 'bad')",
                &[Type::FLOAT8],
            )
            .await
            .expect("prepare");
        let update = c
            .prepare_typed(
                "update pt_bad set note = 'bad' where aid = $1",
                &[Type::FLOAT8],
            )
            .await
            .expect("prepare");
        for v in [3.5f64, -0.25, f64::NAN, 1e300] {
            for stmt in [&insert, &update] {
                let e = c.execute(stmt, &[&v]).await.expect_err("refused");
                let code = sqlstate(&e);
                assert!(code == "22P02" || code == "0A000", "{v}: {code} {e}");
                let db = e.as_db_error().expect("server error");
                assert!(db.message().contains("\"pt_bad\""), "{}", db.message());
                assert!(db.message().contains("\"aid\""), "{}", db.message());
                assert!(db.message().contains("float8"), "{}", db.message());
                assert!(db.hint().is_some(), "{}", db.message());
            }
        }
        let e = c.execute(&insert, &[&3.5f64]).await.expect_err("refused");
        assert_eq!(sqlstate(&e), "22P02");
        assert!(db_message(&e).contains("3.5"), "{}", db_message(&e));
        let by_numeric = c
            .prepare_typed(
                "insert into pt_bad (aid, note) values ($1, 'bad')",
                &[Type::NUMERIC],
            )
            .await
            .expect("prepare");
        let e = c
            .execute(&by_numeric, &[&Numeric("42.5")])
            .await
            .expect_err("refused");
        assert_eq!(sqlstate(&e), "22P02");
        // The same in a transaction: refused like a server error, nothing
        // written.
        c.batch_execute("begin").await.expect("begin");
        assert!(c.execute(&insert, &[&7.5f64]).await.is_err());
        let _ = c.batch_execute("rollback").await;
        // Nothing changed anywhere.
        for s in &shards {
            let bad = query_count(s, "select count(*) from pt_bad where note <> 'old'").await;
            assert_eq!(bad, 0);
            assert_eq!(query_count(s, "select count(*) from pt_bad").await, 10);
        }
        // The session goes on.
        let n: i64 = c
            .query_one("select count(*) from pt_bad where aid = $1", &[&3i64])
            .await
            .expect("after refusals")
            .get(0);
        assert!(n >= 1);
    });
}

#[test]
fn text_and_uuid_keys_by_type() {
    let proxy = TestProxy::start(|c| set_tables(c, TABLES));
    block_on(Duration::from_secs(300), async {
        let shards = connect_shards(SETUP_TXT).await;
        let (c, _task) = connect_url(&proxy.url()).await;
        let keys: Vec<String> = (1..=12).map(|i| format!("key{i}")).collect();

        // Text keys as varchar; found again as text, bpchar (padded) and
        // name.
        let insert = c
            .prepare_typed(
                "insert into pt_txt (k, note) values ($1, 'x')",
                &[Type::VARCHAR],
            )
            .await
            .expect("prepare");
        for k in &keys {
            c.execute(&insert, &[k]).await.expect("insert text key");
        }
        for k in &keys {
            let want = routed(&proxy, "select * from pt_txt where k = $1", k);
            assert_eq!(shard_holding(&shards, "pt_txt", "k", k).await, want, "{k}");
            for (t, v) in [
                (Type::TEXT, k.clone()),
                (Type::BPCHAR, format!("{k}   ")),
                (Type::NAME, k.clone()),
            ] {
                let stmt = c
                    .prepare_typed(
                        "select count(*) from pt_txt where k = $1",
                        std::slice::from_ref(&t),
                    )
                    .await
                    .expect("prepare");
                let n: i64 = c.query_one(&stmt, &[&v]).await.expect("read").get(0);
                assert_eq!(n, 1, "{k} as {t}");
            }
        }

        // Uuid keys in binary; found again by uuid and by its text.
        let insert = c
            .prepare("insert into pt_uid (u, note) values ($1, 'x')")
            .await
            .expect("prepare");
        for i in 1..=12u8 {
            c.execute(&insert, &[&Uuid::of(i)])
                .await
                .expect("insert uuid");
        }
        let by_text = c
            .prepare("select count(*) from pt_uid where u::text = $1")
            .await
            .expect("prepare");
        for i in 1..=12u8 {
            let u = Uuid::of(i);
            let want = routed(&proxy, "select * from pt_uid where u = $1", &u.text());
            assert_eq!(shard_holding(&shards, "pt_uid", "u", &u.text()).await, want);
            let n: i64 = c
                .query_one("select count(*) from pt_uid where u = $1", &[&u])
                .await
                .expect("by uuid")
                .get(0);
            assert_eq!(n, 1);
            let n: i64 = c
                .query_one(&by_text, &[&u.text()])
                .await
                .expect("by text")
                .get(0);
            assert_eq!(n, 1);
        }
        // A float for a uuid key: no key the router can read, so never
        // one shard; PostgreSQL answers it from the gathered rows (tier 3)
        // as one database does: there is no uuid = float8 operator.
        let e = c
            .query_typed(
                "select * from pt_uid where u = $1",
                &[(&1f64, Type::FLOAT8)],
            )
            .await
            .expect_err("refused");
        assert_eq!(sqlstate(&e), "42883");
    });
}

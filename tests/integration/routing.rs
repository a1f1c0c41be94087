//! Single-shard routing by `[[tables]]`: statements go to the shard that
//! holds their key; multi-shard reads that cannot be merged, and any
//! multi-shard read or cross-shard transaction in the extended protocol,
//! are refused with 0A000.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::common::*;

const TABLES: &str = r#"
[[tables]]
name = "rt_accounts"
key = "aid"
strategy = "hash"

[[tables]]
name = "rt_events"
key = "id"
strategy = "range"
ranges = [{ shard = "s0", to = 1000 }, { shard = "s1", from = 1000 }]

[[tables]]
name = "rt_users"
key = "region"
strategy = "geo"
regions = { s0 = ["us"], s1 = ["de"] }
"#;

/// Tier 3 off: these tests check what the router refuses (with tier 3
/// on, PostgreSQL answers the reads it refuses: differential.rs).
fn start_routing_proxy() -> TestProxy {
    TestProxy::start(|c| {
        set_tables(c, TABLES);
        set(c, "limits.max_intermediate_rows", 0);
    })
}

async fn simple_err(c: &Client, sql: &str) -> (String, String) {
    match c.simple_query(sql).await {
        Ok(_) => panic!("{sql}: expected an error"),
        Err(e) => (sqlstate(&e), db_message(&e)),
    }
}

fn simple_count(rows: &[SimpleQueryMessage]) -> i64 {
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().expect("number")),
            _ => None,
        })
        .expect("a row")
}

async fn setup_tables(shards: &[Client]) {
    for c in shards {
        c.batch_execute(
            "drop table if exists rt_accounts, rt_events, rt_users;
             create table rt_accounts (aid int primary key, abalance int not null default 0, note text);
             create table rt_events (id bigint primary key, what text);
             create table rt_users (region text, name text primary key);",
        )
        .await
        .expect("create tables");
    }
}

#[test]
fn single_shard_statements_are_routed_by_key() {
    let proxy = start_routing_proxy();
    let started = Instant::now();
    block_on(Duration::from_secs(300), async {
        let shards = [connect_shard(0).await, connect_shard(1).await];
        setup_tables(&shards).await;
        let (c, _task) = connect_url(&proxy.url()).await;

        // 1..=100 with prepared statements (binary int4 parameter), 101..=200
        // with simple queries.
        let insert = c
            .prepare("insert into rt_accounts (aid, note) values ($1, $2)")
            .await
            .expect("prepare insert");
        for aid in 1..=100i32 {
            c.execute(&insert, &[&aid, &format!("p{aid}")])
                .await
                .expect("prepared insert");
        }
        for aid in 101..=200i32 {
            c.simple_query(&format!(
                "insert into rt_accounts (aid, note) values ({aid}, 's{aid}')"
            ))
            .await
            .expect("simple insert");
        }
        let mut per_shard = [0i64; 2];
        for aid in 1..=200i32 {
            let want = route_shard(
                &proxy,
                "select * from rt_accounts where aid = $1",
                &[&aid.to_string()],
            );
            let want: usize = want[1..].parse().expect("sN");
            for (i, s) in shards.iter().enumerate() {
                let n: i64 = s
                    .query_one("select count(*) from rt_accounts where aid = $1", &[&aid])
                    .await
                    .expect("direct count")
                    .get(0);
                assert_eq!(
                    n,
                    (i == want) as i64,
                    "aid {aid} on s{i} (route says s{want})"
                );
            }
            per_shard[want] += 1;
        }
        assert!(per_shard[0] > 0 && per_shard[1] > 0, "{per_shard:?}");

        // Read back by key, prepared with a parameter.
        let select = c
            .prepare("select note from rt_accounts where aid = $1")
            .await
            .expect("prepare select");
        for aid in 1..=200i32 {
            let row = c.query_one(&select, &[&aid]).await.expect("select by key");
            let note: String = row.get(0);
            let want = if aid <= 100 {
                format!("p{aid}")
            } else {
                format!("s{aid}")
            };
            assert_eq!(note, want);
        }

        // Range boundaries and geo regions.
        for id in [999i64, 1000] {
            c.execute("insert into rt_events (id, what) values ($1, 'x')", &[&id])
                .await
                .expect("insert event");
        }
        assert_eq!(
            query_count(&shards[0], "select count(*) from rt_events where id = 999").await,
            1
        );
        assert_eq!(
            query_count(&shards[1], "select count(*) from rt_events where id = 1000").await,
            1
        );
        assert_eq!(
            query_count(&shards[0], "select count(*) from rt_events").await,
            1
        );
        assert_eq!(
            query_count(&shards[1], "select count(*) from rt_events").await,
            1
        );
        c.simple_query("insert into rt_users (region, name) values ('de', 'hans')")
            .await
            .expect("insert de");
        c.execute(
            "insert into rt_users (region, name) values ($1, 'kenji')",
            &[&"jp"],
        )
        .await
        .expect("insert jp");
        assert_eq!(
            query_count(
                &shards[1],
                "select count(*) from rt_users where region = 'de'"
            )
            .await,
            1
        );
        assert_eq!(
            query_count(
                &shards[0],
                "select count(*) from rt_users where region = 'jp'"
            )
            .await,
            1
        );
        assert_eq!(
            query_count(
                &shards[0],
                "select count(*) from rt_users where region = 'de'"
            )
            .await,
            0
        );
        let row = c
            .query_one("select name from rt_users where region = $1", &[&"de"])
            .await
            .expect("select de");
        assert_eq!(row.get::<_, String>(0), "hans");

        // A cross-shard count merges in the simple protocol (more in
        // multishard.rs), in the extended protocol too; other multi-shard
        // reads are refused.
        let total = simple_count(
            &c.simple_query("select count(*) from rt_accounts")
                .await
                .expect("cross-shard count"),
        );
        assert_eq!(total, per_shard[0] + per_shard[1]);
        let (code, msg) = simple_err(&c, "select distinct on (aid) aid from rt_accounts").await;
        assert_eq!(code, "0A000");
        assert!(msg.contains("rt_accounts"), "{msg}");
        let extended: i64 = c
            .query_one("select count(*) from rt_accounts", &[])
            .await
            .expect("extended count")
            .get(0);
        assert_eq!(extended, total);
        // A multi-row INSERT spanning shards: find keys on each shard.
        let (k0, k1) = {
            let mut k = (None, None);
            for aid in 1000..1100 {
                match route_shard(
                    &proxy,
                    "select * from rt_accounts where aid = $1",
                    &[&aid.to_string()],
                )
                .as_str()
                {
                    "s0" => k.0 = k.0.or(Some(aid)),
                    _ => k.1 = k.1.or(Some(aid)),
                }
            }
            (k.0.expect("a key on s0"), k.1.expect("a key on s1"))
        };
        // A multi-row INSERT spanning shards is split by row (more in
        // multishard.rs); the rows are removed again for what follows.
        c.simple_query(&format!(
            "insert into rt_accounts (aid) values ({k0}), ({k1})"
        ))
        .await
        .expect("split insert");
        for (i, k) in [(0, k0), (1, k1)] {
            assert_eq!(
                query_count(
                    &shards[i],
                    &format!("select count(*) from rt_accounts where aid = {k}")
                )
                .await,
                1
            );
            shards[i]
                .execute(&format!("delete from rt_accounts where aid = {k}"), &[])
                .await
                .expect("delete");
        }

        // Hints: a comment, then a session setting.
        let n1 = simple_count(
            &c.simple_query("/* shardwire: shard=s1 */ select count(*) from rt_accounts")
                .await
                .expect("hinted count"),
        );
        assert_eq!(n1, per_shard[1]);
        c.simple_query("SET shardwire.shard = 's0'")
            .await
            .expect("set shard");
        let show = c.simple_query("show shardwire.shard").await.expect("show");
        assert!(
            show.iter()
                .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("s0"))),
            "{show:?}"
        );
        let n0 = simple_count(
            &c.simple_query("select count(*) from rt_accounts")
                .await
                .expect("pinned count"),
        );
        assert_eq!(n0, per_shard[0]);
        assert_eq!(
            query_count(&c, "select count(*) from rt_accounts").await,
            per_shard[0]
        );
        let (code, _) = simple_err(&c, "set shardwire.shard = 's9'").await;
        assert_eq!(code, "22023");
        c.simple_query("RESET shardwire.shard")
            .await
            .expect("reset");
        let (code, _) = simple_err(&c, "select avg(distinct abalance) from rt_accounts").await;
        assert_eq!(code, "0A000");
        c.simple_query("set shardwire.shard_key = '1'")
            .await
            .expect("set key");
        let n = simple_count(
            &c.simple_query("select count(*) from rt_accounts")
                .await
                .expect("key-pinned count"),
        );
        let s_of_1: usize = route_shard(&proxy, "select * from rt_accounts where aid = 1", &[])
            [1..]
            .parse()
            .unwrap();
        assert_eq!(n, per_shard[s_of_1]);
        c.simple_query("reset shardwire.shard_key")
            .await
            .expect("reset key");

        // Transactions: a second shard joins the transaction (simple
        // queries); ROLLBACK undoes both shards.
        c.simple_query("BEGIN").await.expect("begin");
        c.simple_query(&format!("insert into rt_accounts (aid) values ({k0})"))
            .await
            .expect("insert on s0");
        c.simple_query(&format!("insert into rt_accounts (aid) values ({k1})"))
            .await
            .expect("insert on s1 in the same transaction");
        c.simple_query("ROLLBACK").await.expect("rollback");
        for s in &shards {
            assert_eq!(
                query_count(
                    s,
                    &format!("select count(*) from rt_accounts where aid in ({k0}, {k1})")
                )
                .await,
                0
            );
        }
        // Same with tokio-postgres' transaction (prepared statements):
        // the second shard joins it too.
        let mut c = c;
        {
            let tx = c.transaction().await.expect("transaction");
            tx.execute("insert into rt_accounts (aid) values ($1)", &[&k1])
                .await
                .expect("insert on s1");
            tx.execute("insert into rt_accounts (aid) values ($1)", &[&k0])
                .await
                .expect("insert on s0 in the same transaction");
            tx.rollback().await.expect("rollback");
        }
        for s in &shards {
            assert_eq!(
                query_count(
                    s,
                    &format!("select count(*) from rt_accounts where aid in ({k0}, {k1})")
                )
                .await,
                0
            );
        }
        // Two inserts on one shard commit together.
        let k0b = (2000..3000)
            .find(|aid: &i32| {
                route_shard(
                    &proxy,
                    "select * from rt_accounts where aid = $1",
                    &[&aid.to_string()],
                ) == "s0"
            })
            .expect("another s0 key");
        c.simple_query("begin").await.expect("begin");
        c.simple_query(&format!("insert into rt_accounts (aid) values ({k0})"))
            .await
            .expect("insert 1");
        c.simple_query(&format!("insert into rt_accounts (aid) values ({k0b})"))
            .await
            .expect("insert 2");
        c.simple_query("commit").await.expect("commit");
        assert_eq!(
            query_count(
                &shards[0],
                &format!("select count(*) from rt_accounts where aid in ({k0}, {k0b})")
            )
            .await,
            2
        );
        {
            let tx = c.transaction().await.expect("transaction");
            tx.execute("update rt_accounts set abalance = 5 where aid = $1", &[&k0])
                .await
                .expect("update 1");
            tx.execute(
                "update rt_accounts set abalance = 6 where aid = $1",
                &[&k0b],
            )
            .await
            .expect("update 2");
            tx.commit().await.expect("commit");
        }
        assert_eq!(
            query_count(
                &shards[0],
                &format!("select sum(abalance)::int8 from rt_accounts where aid in ({k0}, {k0b})")
            )
            .await,
            11
        );
        // A deferred BEGIN with nothing in it.
        c.simple_query("begin").await.expect("begin");
        c.simple_query("commit").await.expect("commit");
        c.simple_query("start transaction").await.expect("start");
        c.simple_query("rollback").await.expect("rollback");
        // Still usable, and not stuck in a transaction.
        assert_eq!(
            c.query_one("select 1", &[])
                .await
                .expect("select 1")
                .get::<_, i32>(0),
            1
        );
        let rows = c
            .simple_query("show transaction_isolation")
            .await
            .expect("show");
        assert!(!rows.is_empty());
    });
    eprintln!("routing test body took {:?}", started.elapsed());
}

/// pgbench select-only by key through the router, prepared protocol.
#[test]
fn pgbench_select_by_key_on_routed_shards() {
    let proxy = TestProxy::start(|c| {
        set_tables(
            c,
            "[[tables]]\nname = \"rt_bench\"\nkey = \"aid\"\nstrategy = \"hash\"\n",
        );
    });
    let config = shardwire::config::Config::load(&proxy.config_path).expect("config");
    let table = config.router.table("rt_bench").expect("rt_bench").clone();
    block_on(Duration::from_secs(120), async {
        let shards = [connect_shard(0).await, connect_shard(1).await];
        let mut keys: Vec<Vec<i32>> = vec![Vec::new(), Vec::new()];
        for aid in 1..=100_000i32 {
            let s = table
                .shard_for(&shardwire::sharding::KeyValue::Int(aid as i64))
                .expect("shard");
            keys[s].push(aid);
        }
        for (s, c) in shards.iter().enumerate() {
            c.batch_execute(
                "drop table if exists rt_bench; create table rt_bench (aid int primary key, abalance int not null default 0)",
            )
            .await
            .expect("create rt_bench");
            c.execute(
                "insert into rt_bench (aid) select unnest($1::int4[])",
                &[&keys[s]],
            )
            .await
            .expect("load rt_bench");
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("select.sql");
    std::fs::write(
        &script,
        "\\set aid random(1, 100000)\nselect abalance from rt_bench where aid = :aid;\n",
    )
    .expect("script");
    for (mode, secs) in [("prepared", "3"), ("extended", "1"), ("simple", "1")] {
        let out = pgbench(
            proxy.port,
            &[
                "-n",
                "-M",
                mode,
                "-c",
                "8",
                "-j",
                "2",
                "-T",
                secs,
                "-f",
                script.to_str().expect("utf-8"),
            ],
            Duration::from_secs(60),
        )
        .ok(&format!("pgbench -M {mode} select by key"));
        assert!(
            out.stdout.contains("number of failed transactions: 0")
                || !out.stdout.contains("number of failed transactions"),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout
                .contains("number of transactions actually processed"),
            "{}",
            out.stdout
        );
        eprintln!("-M {mode}:\n{}", out.stdout);
    }
}

/// Parse/Bind/Execute of `sql` with text parameters (unnamed statement and
/// portal), as pgjdbc sends them.
fn pbe(sql: &str, params: &[&str]) -> Vec<u8> {
    use crate::bad_input::frame;
    let mut parse = Vec::new();
    parse.push(0);
    parse.extend_from_slice(sql.as_bytes());
    parse.push(0);
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut bind = vec![0, 0];
    bind.extend_from_slice(&0i16.to_be_bytes());
    bind.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        bind.extend_from_slice(&(p.len() as i32).to_be_bytes());
        bind.extend_from_slice(p.as_bytes());
    }
    bind.extend_from_slice(&0i16.to_be_bytes());
    let mut out = frame(b'P', &parse);
    out.extend(frame(b'B', &bind));
    out.extend(frame(b'E', &[0, 0, 0, 0, 0]));
    out
}

/// BEGIN in the same extended batch as the first statement (pgjdbc): the
/// transaction starts on that statement's shard; a statement for the other
/// shard in a later batch is refused and the transaction carries on.
#[test]
fn extended_batches_with_begin_route_by_their_statement() {
    use crate::bad_input::{error_fields, frame, raw_session, read_until};
    use tokio::io::AsyncWriteExt;
    let proxy = TestProxy::start(|c| {
        add_user(
            c,
            "name = \"raw\"\nauth = \"trust\"\nserver_user = \"app\"\nserver_password = \"app\"",
        );
        set_tables(
            c,
            "[[tables]]\nname = \"rt_jdbc\"\nkey = \"aid\"\nstrategy = \"hash\"\n",
        );
    });
    let config = shardwire::config::Config::load(&proxy.config_path).expect("config");
    let table = config.router.table("rt_jdbc").expect("rt_jdbc").clone();
    let key_on = |shard: usize| {
        (1..1000i64)
            .find(|k| table.shard_for(&shardwire::sharding::KeyValue::Int(*k)) == Ok(shard))
            .expect("a key")
    };
    let (k0, k1) = (key_on(0), key_on(1));
    block_on(Duration::from_secs(60), async {
        let shards = connect_shards(
            "drop table if exists rt_jdbc; create table rt_jdbc (aid int primary key)",
        )
        .await;
        let insert = "insert into rt_jdbc (aid) values ($1)";
        let sync = frame(b'S', &[]);
        let mut s = raw_session(proxy.port).await;

        let mut batch = pbe("BEGIN", &[]);
        batch.extend(pbe(insert, &[&k1.to_string()]));
        batch.extend(&sync);
        s.write_all(&batch).await.expect("write");
        let msgs = read_until(&mut s, b'Z').await;
        let tags: Vec<u8> = msgs.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, b"12C12CZ", "{msgs:?}");
        assert_eq!(msgs.last().expect("Z").1, b"T");

        // A statement for the other shard joins the transaction.
        let mut batch = pbe(insert, &[&k0.to_string()]);
        batch.extend(&sync);
        s.write_all(&batch).await.expect("write");
        let msgs = read_until(&mut s, b'Z').await;
        let tags: Vec<u8> = msgs.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, b"12CZ", "{msgs:?}");
        assert_eq!(msgs.last().expect("Z").1, b"T");

        let mut batch = pbe("COMMIT", &[]);
        batch.extend(&sync);
        s.write_all(&batch).await.expect("write");
        let msgs = read_until(&mut s, b'Z').await;
        let tags: Vec<u8> = msgs.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, b"12CZ", "{msgs:?}");
        assert_eq!(msgs.last().expect("Z").1, b"I");
        let count = |shard: usize| {
            let q = "select count(*) from rt_jdbc";
            query_count(&shards[shard], q)
        };
        assert_eq!((count(0).await, count(1).await), (1, 1));

        // One batch, no transaction, two shards: one implicit transaction
        // over both, committed at Sync ...
        let keys_on_1: Vec<i64> = (k1 + 1..10_000)
            .filter(|k| table.shard_for(&shardwire::sharding::KeyValue::Int(*k)) == Ok(1))
            .take(2)
            .collect();
        let mut batch = pbe(insert, &[&(k0 + 1000).to_string()]);
        batch.extend(pbe(insert, &[&keys_on_1[0].to_string()]));
        batch.extend(&sync);
        s.write_all(&batch).await.expect("write");
        let msgs = read_until(&mut s, b'Z').await;
        let tags: Vec<u8> = msgs.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, b"12C12CZ", "{msgs:?}");
        assert_eq!(msgs.last().expect("Z").1, b"I");
        assert_eq!(count(0).await + count(1).await, 4);
        // ... and all or nothing: a duplicate key on the second shard
        // rolls back the first shard's row too, as PostgreSQL would.
        let mut batch = pbe(insert, &[&(k0 + 2000).to_string()]);
        batch.extend(pbe(insert, &[&keys_on_1[1].to_string()]));
        batch.extend(pbe(insert, &[&k1.to_string()]));
        batch.extend(pbe(insert, &[&(k0 + 3000).to_string()]));
        batch.extend(&sync);
        s.write_all(&batch).await.expect("write");
        let msgs = read_until(&mut s, b'Z').await;
        let tags: Vec<u8> = msgs.iter().map(|(t, _)| *t).collect();
        let error = msgs.iter().find(|(t, _)| *t == b'E').expect("an error");
        assert_eq!(error_fields(&error.1).0, "23505", "{msgs:?}");
        assert_eq!(tags.last(), Some(&b'Z'), "{msgs:?}");
        assert_eq!(msgs.last().expect("Z").1, b"I");
        assert_eq!(count(0).await + count(1).await, 4);
        // The session goes on.
        let mut batch = pbe(insert, &[&(k0 + 4000).to_string()]);
        batch.extend(&sync);
        s.write_all(&batch).await.expect("write");
        let msgs = read_until(&mut s, b'Z').await;
        let tags: Vec<u8> = msgs.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, b"12CZ", "{msgs:?}");
        assert_eq!(count(0).await + count(1).await, 5);
        // Parse + Describe + Sync of a keyed statement with no Bind: answered.
        let mut parse = vec![0];
        parse.extend_from_slice(b"select aid from rt_jdbc where aid = $1\0\0\0");
        let mut batch = frame(b'P', &parse);
        batch.extend(frame(b'D', b"S\0"));
        batch.extend(&sync);
        s.write_all(&batch).await.expect("write");
        let msgs = read_until(&mut s, b'Z').await;
        let tags: Vec<u8> = msgs.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, b"1tTZ", "{msgs:?}");
    });
}

/// PostgreSQL executes each extended-protocol message as it arrives and
/// sends an error at once, without waiting for the client's Sync or Flush
/// (libpq's pipeline mode relies on it: psycopg waits for that error before
/// it syncs). Through the proxy the error must arrive the same way, whether
/// the client already holds a server (in a transaction) or its batch is
/// still waiting to be routed, and the Sync that follows ends the batch as
/// PostgreSQL would.
#[test]
fn an_error_reaches_a_pipelining_client_before_its_sync() {
    use crate::bad_input::{error_fields, frame, raw_session, read_until};
    use tokio::io::AsyncWriteExt;
    let proxy = TestProxy::start(|c| {
        add_user(
            c,
            "name = \"raw\"\nauth = \"trust\"\nserver_user = \"app\"\nserver_password = \"app\"",
        );
        set_tables(
            c,
            "[[tables]]\nname = \"rt_pipe\"\nkey = \"id\"\nstrategy = \"hash\"\n",
        );
    });
    block_on(Duration::from_secs(60), async {
        let _shards = connect_shards(
            "drop table if exists rt_pipe; create table rt_pipe (id int primary key);
             insert into rt_pipe values (7)",
        )
        .await;
        let sync = frame(b'S', &[]);
        let dup = "insert into rt_pipe (id) values ($1)";
        let tags = |msgs: &[(u8, Vec<u8>)]| msgs.iter().map(|(t, _)| *t).collect::<Vec<u8>>();
        let expect_error = |msgs: &[(u8, Vec<u8>)], code: &str| {
            let (_, body) = msgs.last().expect("a message");
            assert_eq!(error_fields(body).0, code, "{msgs:?}");
        };
        for key in ["7", "8"] {
            // Each case on a new connection (the table has row 7 on its shard;
            // key 8 is inserted twice in one pipeline).
            // 1. No transaction: the batch waits to be routed by its Bind.
            let mut s = raw_session(proxy.port).await;
            let mut batch = Vec::new();
            if key == "8" {
                batch.extend(pbe(dup, &[key]));
            }
            batch.extend(pbe(dup, &[key]));
            s.write_all(&batch).await.expect("write");
            let msgs = read_until(&mut s, b'E').await;
            expect_error(&msgs, "23505");
            s.write_all(&sync).await.expect("sync");
            let msgs = read_until(&mut s, b'Z').await;
            assert_eq!(msgs.last().expect("Z").1, b"I", "{msgs:?}");

            // 2. In a transaction: the client holds its server.
            s.write_all(&frame(b'Q', b"BEGIN\0")).await.expect("begin");
            read_until(&mut s, b'Z').await;
            let mut batch = pbe("select count(*) from rt_pipe where id = $1", &[key]);
            batch.extend(pbe(dup, &[key]));
            batch.extend(pbe(dup, &[key]));
            s.write_all(&batch).await.expect("write");
            let msgs = read_until(&mut s, b'E').await;
            expect_error(&msgs, "23505");
            // What ran before the error comes with it.
            let want: &[u8] = if key == "7" {
                b"12DC12E"
            } else {
                b"12DC12C12E"
            };
            assert_eq!(tags(&msgs), want, "{msgs:?}");
            s.write_all(&sync).await.expect("sync");
            let msgs = read_until(&mut s, b'Z').await;
            assert_eq!(msgs.last().expect("Z").1, b"E", "{msgs:?}");
            s.write_all(&frame(b'Q', b"ROLLBACK\0"))
                .await
                .expect("rollback");
            let msgs = read_until(&mut s, b'Z').await;
            assert_eq!(msgs.last().expect("Z").1, b"I", "{msgs:?}");
        }

        // 3. A statement that touches no sharded table.
        let mut s = raw_session(proxy.port).await;
        s.write_all(&pbe("select 1 / 0", &[])).await.expect("write");
        let msgs = read_until(&mut s, b'E').await;
        expect_error(&msgs, "22012");
        s.write_all(&sync).await.expect("sync");
        let msgs = read_until(&mut s, b'Z').await;
        assert_eq!(msgs.last().expect("Z").1, b"I", "{msgs:?}");
    });
}

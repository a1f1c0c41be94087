//! tokio-postgres through a transaction-pooling proxy with two backend
//! connections: prepared statements that follow clients across backends,
//! rollbacks, errors and recovery, a large result, data types and formats.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use tokio_postgres::SimpleQueryMessage;

use crate::common::*;

fn small_pool() -> TestProxy {
    TestProxy::start(|c| set(c, "pool.max_size", 2))
}

#[test]
fn prepared_statement_reused_across_transactions_and_backends() {
    let proxy = small_pool();
    let config = proxy.pg_config("app", "app");
    block_on(Duration::from_secs(90), async move {
        let mut tasks = Vec::new();
        for client_no in 0..4i64 {
            let config = config.clone();
            tasks.push(tokio::spawn(async move {
                let (mut client, _conn) = connect(&config).await;
                let stmt = client
                    .prepare("select $1::int8 * 2 + $2::int8, pg_backend_pid()")
                    .await
                    .expect("prepare");
                let mut pids = HashSet::new();
                for i in 0..100i64 {
                    let tx = client.transaction().await.expect("begin");
                    let row = tx
                        .query_one(&stmt, &[&i, &client_no])
                        .await
                        .expect("execute prepared");
                    assert_eq!(row.get::<_, i64>(0), i * 2 + client_no);
                    pids.insert(row.get::<_, i32>(1));
                    // A second use inside the same transaction: same backend.
                    let again = tx
                        .query_one(&stmt, &[&1i64, &0i64])
                        .await
                        .expect("execute again");
                    assert_eq!(again.get::<_, i32>(1), row.get::<_, i32>(1));
                    tx.commit().await.expect("commit");
                }
                // Outside a transaction too.
                let row = client
                    .query_one(&stmt, &[&21i64, &0i64])
                    .await
                    .expect("execute");
                assert_eq!(row.get::<_, i64>(0), 42);
                pids
            }));
        }
        let mut all = HashSet::new();
        for (n, task) in tasks.into_iter().enumerate() {
            let pids = within(60, "client task", task)
                .await
                .expect("client task panicked");
            assert!(
                pids.len() > 1,
                "client {n} always got the same backend ({pids:?}): sessions did not hop"
            );
            all.extend(pids);
        }
        assert!(
            all.len() <= 2,
            "pool.max_size = 2, but {} backends served: {all:?}",
            all.len()
        );
    });
}

#[test]
fn rollback_and_errors_in_transactions_and_simple_queries() {
    let proxy = small_pool();
    let url = proxy.url();
    block_on(Duration::from_secs(60), async move {
        let (mut client, _conn) = connect_url(&url).await;
        let direct = connect_direct().await;
        let t = table_name("pool_rb");
        client
            .batch_execute(&format!("create table {t} (id int primary key)"))
            .await
            .expect("create");

        // ROLLBACK: the row is gone, for this session and for others.
        let tx = client.transaction().await.expect("begin");
        tx.execute(&format!("insert into {t} values (1)"), &[])
            .await
            .expect("insert");
        let inside: i64 = tx
            .query_one(&format!("select count(*) from {t}"), &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(inside, 1);
        tx.rollback().await.expect("rollback");
        for c in [&client, &direct] {
            let n: i64 = c
                .query_one(&format!("select count(*) from {t}"), &[])
                .await
                .expect("count")
                .get(0);
            assert_eq!(n, 0, "rolled-back row is visible");
        }

        // An error inside a transaction: the transaction is aborted until
        // ROLLBACK, then the session works again.
        let tx = client.transaction().await.expect("begin");
        tx.execute(&format!("insert into {t} values (2)"), &[])
            .await
            .expect("insert");
        let e = tx.query_one("select 1/0", &[]).await.unwrap_err();
        assert_eq!(sqlstate(&e), "22012", "{e}");
        let e = tx
            .execute(&format!("insert into {t} values (3)"), &[])
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "25P02", "{e}");
        tx.rollback().await.expect("rollback after error");
        let one: i32 = client
            .query_one("select 1", &[])
            .await
            .expect("after rollback")
            .get(0);
        assert_eq!(one, 1);

        // A simple-protocol error, outside and inside a transaction.
        let e = client.batch_execute("select 1/0").await.unwrap_err();
        assert_eq!(sqlstate(&e), "22012");
        let e = client
            .batch_execute(&format!(
                "begin; insert into {t} values (4); select * from no_such_table_xyz; commit"
            ))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42P01");
        // The batch stopped at the error, inside its transaction block.
        let e = client.simple_query("select 1").await.unwrap_err();
        assert_eq!(sqlstate(&e), "25P02");
        client.batch_execute("rollback").await.expect("rollback");
        let rows = simple_rows(&client.simple_query("select 'ok'").await.expect("recovered"));
        assert_eq!(rows, vec![vec![Some("ok".to_string())]]);

        // A committed transaction is visible to others.
        let tx = client.transaction().await.expect("begin");
        tx.execute(&format!("insert into {t} values (5)"), &[])
            .await
            .expect("insert");
        tx.commit().await.expect("commit");
        let ids: Vec<i32> = direct
            .query(&format!("select id from {t}"), &[])
            .await
            .expect("select")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids, vec![5]);
    });
}

#[test]
fn large_result_through_the_proxy() {
    let proxy = small_pool();
    let url = proxy.url();
    block_on(Duration::from_secs(60), async move {
        let (client, _conn) = connect_url(&url).await;
        let sql = "select repeat('x', 1000) from generate_series(1, 12000)";
        // Extended protocol.
        let rows = client.query(sql, &[]).await.expect("large query");
        assert_eq!(rows.len(), 12000);
        let mut total = 0usize;
        for r in &rows {
            let s: &str = r.get(0);
            assert!(s.len() == 1000 && s.bytes().all(|b| b == b'x'));
            total += s.len();
        }
        assert_eq!(total, 12_000_000);
        // Simple protocol.
        let msgs = client.simple_query(sql).await.expect("large simple query");
        let total: usize = simple_rows(&msgs)
            .iter()
            .map(|r| r[0].as_deref().expect("not null").len())
            .sum();
        assert_eq!(total, 12_000_000);
        // The session is fine afterwards.
        let n: i64 = client
            .query_one("select 7::int8", &[])
            .await
            .expect("after")
            .get(0);
        assert_eq!(n, 7);
    });
}

#[test]
fn binary_and_text_formats_and_nulls() {
    let proxy = small_pool();
    let url = proxy.url();
    block_on(Duration::from_secs(60), async move {
        let (client, _conn) = connect_url(&url).await;
        // Binary: parameters and results of a prepared statement.
        let stmt = client
            .prepare(
                "select $1::int2, $2::int4, $3::int8, $4::text, $5::bool, $6::float8, $7::bytea, \
                 $8::timestamptz, ($8::timestamptz at time zone 'UTC')::text, $9::int4, $10::text",
            )
            .await
            .expect("prepare");
        let ts = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let bytes: Vec<u8> = vec![0, 1, 2, 0x7f, 0x80, 0xff];
        let text = "héllo\tworld 世界 'quoted' \\ back";
        for round in 0..3 {
            let row = client
                .query_one(
                    &stmt,
                    &[
                        &-7i16,
                        &2_000_000_000i32,
                        &-9_000_000_000_000i64,
                        &text,
                        &true,
                        &3.25f64,
                        &bytes,
                        &ts,
                        &None::<i32>,
                        &None::<String>,
                    ],
                )
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(row.get::<_, i16>(0), -7);
            assert_eq!(row.get::<_, i32>(1), 2_000_000_000);
            assert_eq!(row.get::<_, i64>(2), -9_000_000_000_000);
            assert_eq!(row.get::<_, &str>(3), text);
            assert!(row.get::<_, bool>(4));
            assert_eq!(row.get::<_, f64>(5), 3.25);
            assert_eq!(row.get::<_, Vec<u8>>(6), bytes);
            assert_eq!(row.get::<_, SystemTime>(7), ts);
            assert_eq!(row.get::<_, &str>(8), "2023-11-14 22:13:20.123456");
            assert_eq!(row.get::<_, Option<i32>>(9), None);
            assert_eq!(row.get::<_, Option<String>>(10), None);
        }
        // Binary results of an unprepared query (tokio-postgres asks for binary).
        let row = client
            .query_one("select 1.5::float4, null::int8, array[1,2,3]::int4[]", &[])
            .await
            .expect("unprepared query");
        assert_eq!(row.get::<_, f32>(0), 1.5);
        assert_eq!(row.get::<_, Option<i64>>(1), None);
        assert_eq!(row.get::<_, Vec<i32>>(2), vec![1, 2, 3]);

        // Text: the simple protocol returns everything as text.
        let msgs = client
            .simple_query(
                "select 1::int2, 'a b'::text, true, null::int4, 1.5::float8, '\\x00ff'::bytea, \
                 '2024-02-29 12:00:00+00'::timestamptz at time zone 'UTC', ''::text",
            )
            .await
            .expect("simple query");
        let rows = simple_rows(&msgs);
        let expected: Vec<Option<String>> = [
            Some("1"),
            Some("a b"),
            Some("t"),
            None,
            Some("1.5"),
            Some("\\x00ff"),
            Some("2024-02-29 12:00:00"),
            Some(""),
        ]
        .iter()
        .map(|v| v.map(str::to_string))
        .collect();
        assert_eq!(rows, vec![expected]);
        // Command tags come through too.
        let tags: Vec<u64> = msgs
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::CommandComplete(n) => Some(*n),
                _ => None,
            })
            .collect();
        assert_eq!(tags, vec![1]);
    });
}

/// COPY through the extended protocol (what tokio-postgres does): the
/// client sends Bind/Execute/Sync, then CopyData.., CopyDone, Sync. The
/// server ignores a Sync that arrives during COPY FROM STDIN, so only one
/// ReadyForQuery comes back for the two Syncs.
#[test]
fn copy_in_and_out_with_the_extended_protocol() {
    use futures_util::{SinkExt, TryStreamExt};
    let proxy = TestProxy::start(|c| {
        set(c, "pool.max_size", 1);
        set(c, "pool.checkout_timeout", "2s");
    });
    let url = proxy.url();
    block_on(Duration::from_secs(60), async move {
        let (client, conn) = connect_url(&url).await;
        let (other, _conn2) = connect_url(&url).await;
        let t = table_name("ext_copy");
        client
            .batch_execute(&format!("create table {t} (id int, v text)"))
            .await
            .expect("create");
        let data: String = (1..=2000).map(|i| format!("{i}\tvalue {i}\n")).collect();
        for round in 0..2 {
            let sink = client
                .copy_in::<_, bytes::Bytes>(&format!("copy {t} from stdin"))
                .await
                .expect("copy in");
            futures_util::pin_mut!(sink);
            for chunk in data.as_bytes().chunks(7000) {
                sink.send(bytes::Bytes::copy_from_slice(chunk))
                    .await
                    .expect("copy data");
            }
            let n = sink.finish().await.expect("finish copy");
            assert_eq!(n, 2000, "round {round}");
            // The backend went back to the pool: the other client (pool of
            // one) gets it.
            let v: i32 = within(10, "other client", other.query_one("select 11", &[]))
                .await
                .unwrap_or_else(|e| panic!("round {round}: other client: {e}"))
                .get(0);
            assert_eq!(v, 11);
        }
        let out = client
            .copy_out(&format!(
                "copy (select id, v from {t} group by id, v order by id) to stdout"
            ))
            .await
            .expect("copy out");
        let chunks: Vec<bytes::Bytes> = out.try_collect().await.expect("copy out data");
        let got: Vec<u8> = chunks.concat();
        assert!(got == data.as_bytes(), "COPY OUT differs from COPY IN");

        // A COPY that fails on a bad row: error, nothing inserted, session fine.
        let sink = client
            .copy_in::<_, bytes::Bytes>(&format!("copy {t} from stdin"))
            .await
            .expect("copy in");
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from_static(b"1\tok\nnot-a-number\tbad\n"))
            .await
            .expect("send");
        let e = sink.finish().await.expect_err("bad row accepted");
        assert_eq!(sqlstate(&e), "22P02", "{e}");
        let n: i64 = client
            .query_one(&format!("select count(*) from {t}"), &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 4000);
        let v: i32 = within(10, "other client", other.query_one("select 12", &[]))
            .await
            .expect("other client after failed copy")
            .get(0);
        assert_eq!(v, 12);
        // No stray message ever reached the client (tokio-postgres drops the
        // connection on an unexpected one).
        drop(client);
        let r = within(10, "connection task", conn).await.expect("task");
        assert!(r.is_ok(), "the connection ended with {r:?}");
    });
}

/// Many queries in flight on one connection (tokio-postgres pipelines
/// them), some failing: each gets its own result.
#[test]
fn pipelined_queries_with_errors() {
    let proxy = small_pool();
    let url = proxy.url();
    block_on(Duration::from_secs(60), async move {
        let (client, _conn) = connect_url(&url).await;
        let stmt = client
            .prepare("select 100 / $1::int4")
            .await
            .expect("prepare");
        for round in 0..3 {
            let futs = (0..40i32).map(|i| {
                let (client, stmt) = (&client, &stmt);
                async move {
                    let divisor = if i % 5 == 0 { 0 } else { i };
                    let r = if i % 2 == 0 {
                        client.query_one(stmt, &[&divisor]).await
                    } else {
                        client
                            .query_one(&format!("select 100 / {divisor}"), &[])
                            .await
                    };
                    (i, divisor, r.map(|row| row.get::<_, i32>(0)))
                }
            });
            for (i, divisor, r) in futures_util::future::join_all(futs).await {
                match r {
                    Ok(v) => {
                        assert_ne!(divisor, 0, "round {round}: query {i} should have failed");
                        assert_eq!(v, 100 / divisor, "round {round}: query {i}");
                    }
                    Err(e) => {
                        assert_eq!(divisor, 0, "round {round}: query {i} failed: {e}");
                        assert_eq!(sqlstate(&e), "22012");
                    }
                }
            }
        }
    });
}

/// A portal read in chunks (Execute with a row limit: PortalSuspended).
#[test]
fn portal_fetched_in_chunks() {
    let proxy = small_pool();
    let url = proxy.url();
    block_on(Duration::from_secs(60), async move {
        let (mut client, _conn) = connect_url(&url).await;
        let stmt = client
            .prepare("select g from generate_series(1, $1::int4) g")
            .await
            .expect("prepare");
        let tx = client.transaction().await.expect("begin");
        let portal = tx.bind(&stmt, &[&100i32]).await.expect("bind");
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        loop {
            let rows = tx.query_portal(&portal, 30).await.expect("fetch");
            if rows.is_empty() {
                break;
            }
            sizes.push(rows.len());
            got.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
        }
        tx.commit().await.expect("commit");
        assert_eq!(sizes, vec![30, 30, 30, 10]);
        assert_eq!(got, (1..=100).collect::<Vec<_>>());
    });
}

#[test]
fn empty_queries() {
    let proxy = small_pool();
    let url = proxy.url();
    block_on(Duration::from_secs(30), async move {
        let (client, _conn) = connect_url(&url).await;
        let msgs = client.simple_query("").await.expect("empty simple query");
        assert!(msgs
            .iter()
            .all(|m| !matches!(m, SimpleQueryMessage::Row(_))));
        client.batch_execute(";").await.expect("lone semicolon");
        let rows = client.query("", &[]).await.expect("empty extended query");
        assert!(rows.is_empty());
        let v: i32 = client
            .query_one("select 8", &[])
            .await
            .expect("after")
            .get(0);
        assert_eq!(v, 8);
    });
}

/// A client that vanishes inside a transaction: its backend is not reused
/// half-way through, the transaction is rolled back, and the pool slot is
/// freed for others.
#[test]
fn client_gone_mid_transaction() {
    let proxy = TestProxy::start(|c| {
        set(c, "pool.max_size", 1);
        set(c, "pool.checkout_timeout", "3s");
    });
    let url = proxy.url();
    block_on(Duration::from_secs(60), async move {
        let t = table_name("gone");
        let direct = connect_direct().await;
        direct
            .batch_execute(&format!("create table {t} (id int)"))
            .await
            .expect("create");
        let (mut a, a_conn) = connect_url(&url).await;
        let tx = a.transaction().await.expect("begin");
        tx.execute(&format!("insert into {t} values (1)"), &[])
            .await
            .expect("insert");
        let pid: i32 = tx
            .query_one("select pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        // Drop the socket without a Terminate or ROLLBACK.
        std::mem::forget(tx);
        a_conn.abort();
        let _ = a_conn.await;

        let (b, _b_conn) = connect_url(&url).await;
        let row = within(
            10,
            "next client",
            b.query_one(
                "select pg_backend_pid(), (select count(*) from pg_stat_activity where pid = $1)",
                &[&pid],
            ),
        )
        .await
        .expect("next client's query");
        assert_ne!(
            row.get::<_, i32>(0),
            pid,
            "a backend with an unfinished transaction was reused"
        );
        let n: i64 = direct
            .query_one(&format!("select count(*) from {t}"), &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 0, "the abandoned transaction was committed");
    });
}

/// All backends busy: a waiting client gets 53300 after checkout_timeout
/// (simple and extended protocol) and works again once one is free.
#[test]
fn checkout_timeout_when_pool_is_busy() {
    let proxy = TestProxy::start(|c| {
        set(c, "pool.max_size", 1);
        set(c, "pool.checkout_timeout", "1s");
    });
    let url = proxy.url();
    block_on(Duration::from_secs(60), async move {
        let (mut a, _ca) = connect_url(&url).await;
        let (b, _cb) = connect_url(&url).await;
        let tx = a.transaction().await.expect("begin");
        tx.query_one("select 1", &[])
            .await
            .expect("hold the backend");
        let start = std::time::Instant::now();
        let e = b
            .simple_query("select 1")
            .await
            .expect_err("got a backend while the pool is busy");
        assert_eq!(sqlstate(&e), "53300", "{e}");
        let e = b
            .query_one("select 2", &[])
            .await
            .expect_err("got a backend while the pool is busy");
        assert_eq!(sqlstate(&e), "53300", "{e}");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
            "{took:?}"
        );
        tx.commit().await.expect("commit");
        let v: i32 = b
            .query_one("select 3", &[])
            .await
            .expect("after the pool freed up")
            .get(0);
        assert_eq!(v, 3);
    });
}

/// Between transactions a session keeps its backend (parked) while nobody
/// waits for one, and hands it over at once when somebody does.
#[test]
fn parked_backends_stay_with_their_session_until_another_needs_one() {
    let proxy = TestProxy::start(|c| {
        set(c, "pool.max_size", 2);
        set(c, "pool.checkout_timeout", "10s");
    });
    let url = proxy.url();
    block_on(Duration::from_secs(60), async move {
        let (a, _ca) = connect_url(&url).await;
        let (b, _cb) = connect_url(&url).await;
        let (mut seen_a, mut seen_b) = (HashSet::new(), HashSet::new());
        for _ in 0..5 {
            seen_a.insert(backend_pid(&a).await);
            seen_b.insert(backend_pid(&b).await);
        }
        assert_eq!(seen_a.len(), 1, "client a changed backends: {seen_a:?}");
        assert_eq!(seen_b.len(), 1, "client b changed backends: {seen_b:?}");
        assert_ne!(
            seen_a, seen_b,
            "two clients shared a backend with one to spare"
        );
    });
}

/// A parked backend goes at once to a client that would otherwise wait
/// for one, and SHOW POOLS counts parked backends as idle.
#[test]
fn a_parked_backend_goes_to_a_waiting_client() {
    let proxy = TestProxy::start(|c| {
        set(c, "pool.max_size", 2);
        set(c, "pool.checkout_timeout", "10s");
    });
    let url = proxy.url();
    block_on(Duration::from_secs(60), async {
        let (a, _ca) = connect_url(&url).await;
        let (mut b, _cb) = connect_url(&url).await;
        let (c, _cc) = connect_url(&url).await;
        // a parks its backend (the pool has room for another).
        let pid_a = backend_pid(&a).await;
        // b takes the other one and keeps it.
        let tx = b.transaction().await.expect("begin");
        let pid_b: i32 = tx
            .query_one("select pg_backend_pid()", &[])
            .await
            .expect("hold the second backend")
            .get(0);
        assert_ne!(pid_a, pid_b);
        // c finds the pool full: it gets a's parked backend, not a wait.
        let start = std::time::Instant::now();
        let pid_c = backend_pid(&c).await;
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "c waited {took:?} while a backend sat parked"
        );
        assert_eq!(pid_c, pid_a, "c did not get a's parked backend");
        tx.commit().await.expect("commit");
        // a, whose backend went to c, gets one again.
        let again = backend_pid(&a).await;
        assert!(
            again == pid_a || again == pid_b,
            "{again} is a third backend"
        );
        let pools = proxy.admin("SHOW POOLS");
        let r = pools
            .iter()
            .find(|r| r[2] == "app" && r[3] == "app")
            .expect("the app pool in SHOW POOLS");
        assert_eq!(
            (r[4].as_str(), r[5].as_str(), r[6].as_str()),
            ("0", "2", "0"),
            "active, idle, waiting: {r:?}"
        );
        let checkouts: u32 = r[8].parse().expect("checkouts");
        assert!(checkouts >= 4, "every transaction is a checkout: {r:?}");
    });
}

async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("select pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

/// A pooled backend that dies while idle is replaced, invisibly to clients.
#[test]
fn idle_backend_killed_is_replaced() {
    let proxy = TestProxy::start(|c| set(c, "pool.max_size", 1));
    let url = proxy.url();
    block_on(Duration::from_secs(60), async move {
        let (client, _conn) = connect_url(&url).await;
        let pid: i32 = client
            .query_one("select pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        let killed = tokio::task::spawn_blocking(move || {
            superuser_sql(&format!("select pg_terminate_backend({pid}, 5000)"))
        })
        .await
        .expect("superuser");
        assert_eq!(killed, "t");
        let new_pid: i32 = client
            .query_one("select pg_backend_pid()", &[])
            .await
            .expect("query after the idle backend was killed")
            .get(0);
        assert_ne!(new_pid, pid);
    });
}

/// Transaction pooling: a login does not wait for a busy pool (its session
/// parameters are applied at its first checkout instead), so a client can
/// connect while every backend is in use and run once one frees up.
#[test]
fn login_does_not_wait_for_a_busy_pool() {
    let proxy = TestProxy::start(|c| {
        set(c, "pool.max_size", 1);
        set(c, "pool.checkout_timeout", "10s");
    });
    let url = proxy.url();
    block_on(Duration::from_secs(60), async move {
        let (mut a, _ca) = connect_url(&url).await;
        let tx = a.transaction().await.expect("begin");
        tx.query_one("select 1", &[])
            .await
            .expect("hold the backend");
        let start = std::time::Instant::now();
        let mut cfg: tokio_postgres::Config = url.parse().expect("url");
        cfg.application_name("late_login");
        let (b, _cb) = connect(&cfg).await;
        let login = start.elapsed();
        assert!(
            login < Duration::from_secs(2),
            "login waited {login:?} for the busy pool"
        );
        let query = tokio::spawn(async move {
            b.query_one("select current_setting('application_name')", &[])
                .await
                .map(|r| r.get::<_, String>(0))
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !query.is_finished(),
            "query ran while the only backend was busy"
        );
        tx.commit().await.expect("commit");
        let name = within(10, "query after commit", query)
            .await
            .expect("join")
            .expect("query");
        assert_eq!(
            name, "late_login",
            "startup parameters applied at first checkout"
        );
    });
}

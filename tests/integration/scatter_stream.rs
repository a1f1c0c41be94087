//! Cross-shard answers that stream (execute::stream): plain concatenation
//! and ORDER BY merges larger than what the proxy would hold per shard
//! (16 MiB), answered whole and in order, with the proxy's peak memory
//! well under the answer's size; an error on one shard after rows went
//! out, and a client that leaves in the middle, leave the proxy and its
//! pools serving others.

use std::time::Duration;

use crate::common::*;

const TABLES: &str = r#"
[[tables]]
name = "ss_t"
key = "id"
strategy = "hash"
"#;

/// 24,000 rows of about 2 KB: 48 MB in all, 24 MB per shard.
const ROWS: i32 = 24_000;

/// The proxy's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// The first column of every row, as integers.
fn first_ints(rows: &[Vec<Option<String>>]) -> Vec<i32> {
    rows.iter()
        .map(|r| {
            r[0].as_deref()
                .expect("not null")
                .parse()
                .expect("an integer")
        })
        .collect()
}

#[test]
fn large_cross_shard_answers_stream_in_order_with_bounded_memory() {
    let proxy = TestProxy::start(|c| set_tables(c, TABLES));
    let config = shardwire::config::Config::load(&proxy.config_path).expect("config");
    let rule = config.router.table("ss_t").expect("ss_t").clone();
    block_on(Duration::from_secs(300), async {
        let shards = connect_shards("drop table if exists ss_t").await;
        let (c, _task) = connect_url(&proxy.url()).await;
        c.simple_query("create table ss_t (id int primary key, pad text)")
            .await
            .expect("create ss_t");
        // Each shard's rows loaded on it directly (an INSERT through the
        // proxy would be one statement of 48 MB).
        for (i, s) in shards.iter().enumerate() {
            let ids: Vec<i32> = (1..=ROWS)
                .filter(|&id| {
                    rule.shard_for(&shardwire::sharding::KeyValue::Int(id.into()))
                        .expect("shard")
                        == i
                })
                .collect();
            assert!(ids.len() > ROWS as usize / 4, "shard {i}: {}", ids.len());
            s.execute(
                "insert into ss_t select g, repeat(md5(g::text), 64) from unnest($1::int[]) g",
                &[&ids],
            )
            .await
            .expect("load a shard");
        }
        let before = peak_rss_kib(proxy.pid());

        // Concatenation: every row, 48 MB.
        let rows = simple_rows(
            &c.simple_query("select id, pad from ss_t")
                .await
                .expect("concat"),
        );
        assert_eq!(rows.len(), ROWS as usize);
        let mut ids = first_ints(&rows);
        ids.sort_unstable();
        assert_eq!(ids, (1..=ROWS).collect::<Vec<_>>());
        assert!(rows
            .iter()
            .all(|r| r[1].as_deref().map(str::len) == Some(2048)));

        // ORDER BY without LIMIT: all of it, merged in order.
        let rows = simple_rows(
            &c.simple_query("select id, pad from ss_t order by id desc")
                .await
                .expect("order by"),
        );
        let ids = first_ints(&rows);
        assert_eq!(ids, (1..=ROWS).rev().collect::<Vec<_>>());

        // ORDER BY ... LIMIT ... OFFSET.
        let rows = simple_rows(
            &c.simple_query("select id from ss_t order by id limit 3 offset 100")
                .await
                .expect("limit"),
        );
        assert_eq!(
            rows,
            [
                [Some("101".to_string())],
                [Some("102".into())],
                [Some("103".into())]
            ]
        );

        let grew = peak_rss_kib(proxy.pid()).saturating_sub(before);
        eprintln!("proxy peak RSS grew by {grew} KiB answering 2 x 48 MB");
        assert!(grew < 16 * 1024, "the proxy's peak RSS grew by {grew} KiB");

        // An error on one shard after rows went out: the client gets the
        // error, and the session and the pools go on.
        let e = c
            .simple_query("select id, 1 / (id - 23000) from ss_t")
            .await
            .expect_err("division by zero on one shard");
        assert_eq!(sqlstate(&e), "22012", "{e:?}");
        for _ in 0..12 {
            assert_eq!(
                query_count(&c, "select count(*) from ss_t").await,
                i64::from(ROWS)
            );
        }

        // A client that leaves in the middle of an answer.
        for _ in 0..3 {
            leave_mid_answer(&proxy).await;
        }
        let (other, _t) = connect_url(&proxy.url()).await;
        for _ in 0..12 {
            let rows = simple_rows(
                &other
                    .simple_query("select id from ss_t order by id limit 2")
                    .await
                    .expect("after clients left"),
            );
            assert_eq!(rows, [[Some("1".to_string())], [Some("2".into())]]);
        }
        shards[0]
            .batch_execute("drop table ss_t")
            .await
            .expect("drop");
        shards[1]
            .batch_execute("drop table ss_t")
            .await
            .expect("drop");
    });
}

/// Start a 48 MB answer on a connection of its own and close that
/// connection while the proxy is still sending.
async fn leave_mid_answer(proxy: &TestProxy) {
    let (c, task) = connect_url(&proxy.url()).await;
    let query = tokio::spawn(async move {
        c.simple_query("select id, pad from ss_t")
            .await
            .map(|m| m.len())
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    task.abort();
    let _ = query.await;
}

const SLOW_TABLES: &str = r#"
[[tables]]
name = "ss_slow"
key = "id"
strategy = "hash"
"#;

/// A statement over several shards that runs past limits.statement_timeout
/// is cancelled with 57014, as a single-shard one is, whether it streams,
/// is merged whole, or runs inside a transaction over several shards; the
/// session goes on.
#[test]
fn statements_over_several_shards_past_the_statement_timeout_get_57014() {
    let proxy = TestProxy::start(|c| {
        set_tables(c, SLOW_TABLES);
        set(c, "limits.statement_timeout", "1s");
    });
    block_on(Duration::from_secs(120), async {
        let shards = connect_shards("drop table if exists ss_slow").await;
        let (c, _task) = connect_url(&proxy.url()).await;
        c.simple_query("create table ss_slow (id int primary key, v int)")
            .await
            .expect("create");
        c.simple_query("insert into ss_slow values (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6)")
            .await
            .expect("insert");
        for s in &shards {
            assert!(query_count(s, "select count(*) from ss_slow").await > 0);
        }
        let slow = "pg_sleep(case when id = 5 then 4 else 0 end)";
        let statements = [
            // Streamed (concatenation).
            format!("select id from ss_slow where {slow} is not null"),
            // Merged whole (an aggregate).
            format!("select count(*) from ss_slow where {slow} is not null"),
        ];
        for sql in &statements {
            let started = std::time::Instant::now();
            let e = c.simple_query(sql).await.expect_err(sql);
            let took = started.elapsed();
            assert_eq!(sqlstate(&e), "57014", "{sql}: {e:?}");
            assert!(took < Duration::from_secs(3), "{sql}: took {took:?}");
            assert_eq!(query_count(&c, "select count(*) from ss_slow").await, 6);
        }
        // Inside a transaction over both shards.
        c.simple_query("begin").await.expect("begin");
        c.simple_query("update ss_slow set v = v + 1")
            .await
            .expect("update everywhere");
        let e = c
            .simple_query(&statements[1])
            .await
            .expect_err("slow count in the transaction");
        assert_eq!(sqlstate(&e), "57014", "{e:?}");
        let e = c
            .simple_query("select count(*) from ss_slow")
            .await
            .expect_err("the transaction failed");
        assert_eq!(sqlstate(&e), "25P02", "{e:?}");
        c.simple_query("rollback").await.expect("rollback");
        let rows = simple_rows(
            &c.simple_query("select sum(v) from ss_slow")
                .await
                .expect("sum"),
        );
        assert_eq!(
            rows,
            [[Some("21".to_string())]],
            "the update was rolled back"
        );
        shards[0]
            .batch_execute("drop table ss_slow")
            .await
            .expect("drop");
        shards[1]
            .batch_execute("drop table ss_slow")
            .await
            .expect("drop");
    });
}

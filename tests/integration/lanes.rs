//! Lanes (backend::lane): short prepared reads of many tokio-postgres
//! clients pipelined on a shared server connection. Each client must get
//! exactly its own answers and errors; statements that could leave state
//! on a server, or that run slowly, must stay off lanes; a lane whose
//! server dies fails only what was in flight on it.

use std::time::Duration;

use crate::common::*;

const TABLE: &str = "lane_kv";

fn lane_batches(proxy: &TestProxy) -> f64 {
    let (status, text) = proxy.http_get("/metrics");
    assert_eq!(status, 200, "GET /metrics: {text}");
    metric(&text, "shardwire_pool_lane_batches_total", &[])
}

/// The table every test here reads, made once (the tests run at once).
fn lane_table() {
    static MADE: std::sync::Once = std::sync::Once::new();
    MADE.call_once(|| {
        superuser_sql(&format!(
            "CREATE TABLE {TABLE} (k int PRIMARY KEY, v text NOT NULL);
             INSERT INTO {TABLE} SELECT g, 'v' || g FROM generate_series(1, 100) g;
             GRANT SELECT, UPDATE ON {TABLE} TO app"
        ));
    });
}

#[test]
fn short_reads_of_many_clients_share_a_lane_and_each_gets_its_own_answers() {
    lane_table();
    let proxy = TestProxy::start(|c| set(c, "pool.max_size", 6));
    let config = proxy.pg_config("app", "app");
    block_on(Duration::from_secs(120), async move {
        let mut tasks = Vec::new();
        for client_no in 0..12i32 {
            let config = config.clone();
            tasks.push(tokio::spawn(async move {
                let (client, _conn) = connect(&config).await;
                let stmt = client
                    .prepare(&format!("SELECT v, k FROM {TABLE} WHERE k = $1"))
                    .await
                    .expect("prepare");
                for i in 0..400i32 {
                    let k = (i * 7 + client_no) % 100 + 1;
                    let row = client.query_one(&stmt, &[&k]).await.expect("read");
                    assert_eq!(
                        row.get::<_, i32>(1),
                        k,
                        "client {client_no} got another key"
                    );
                    assert_eq!(row.get::<_, String>(0), format!("v{k}"));
                }
            }));
        }
        for task in tasks {
            within(90, "client task", task)
                .await
                .expect("client panicked");
        }
    });
    let batches = lane_batches(&proxy);
    // How many depends on the machine's load (a lane that is behind, or
    // a trial run slowed by other tests, sends reads the ordinary way).
    assert!(
        batches >= 500.0,
        "of 4800 reads only {batches} ran on lanes"
    );
}

#[test]
fn an_error_in_a_lane_batch_fails_only_its_own_statement() {
    lane_table();
    let proxy = TestProxy::start(|_| {});
    let config = proxy.pg_config("app", "app");
    block_on(Duration::from_secs(120), async move {
        let sql = format!("SELECT 100 / $1 AS q FROM {TABLE} WHERE k = 1");
        let mut tasks = Vec::new();
        for client_no in 0..6i32 {
            let config = config.clone();
            let sql = sql.clone();
            tasks.push(tokio::spawn(async move {
                let (client, _conn) = connect(&config).await;
                let stmt = client.prepare(&sql).await.expect("prepare");
                let mut errors = 0;
                for i in 0..300i32 {
                    // Client 0 divides by zero every third time, after a
                    // few good runs; the others never do.
                    let d = if client_no == 0 && i > 10 && i % 3 == 0 {
                        0
                    } else {
                        i % 5 + 1
                    };
                    match client.query_one(&stmt, &[&d]).await {
                        Ok(row) => assert_eq!(row.get::<_, i32>(0), 100 / d),
                        Err(e) => {
                            assert_eq!(d, 0, "client {client_no}: {e:?}");
                            assert_eq!(sqlstate(&e), "22012");
                            errors += 1;
                        }
                    }
                }
                // The session is fine afterwards, in and out of transactions.
                let row = client.query_one(&stmt, &[&4i32]).await.expect("after");
                assert_eq!(row.get::<_, i32>(0), 25);
                client
                    .batch_execute("BEGIN; SELECT 1; COMMIT")
                    .await
                    .expect("tx");
                errors
            }));
        }
        let mut errors = Vec::new();
        for task in tasks {
            errors.push(
                within(90, "client task", task)
                    .await
                    .expect("client panicked"),
            );
        }
        assert_eq!(errors[0], (11..300).filter(|i| i % 3 == 0).count());
        assert!(errors[1..].iter().all(|e| *e == 0), "errors: {errors:?}");
    });
    assert!(lane_batches(&proxy) >= 200.0, "the reads ran on lanes");
}

#[test]
fn statements_that_could_leave_state_or_run_long_stay_off_lanes() {
    lane_table();
    superuser_sql(
        "CREATE TABLE lane_big AS SELECT g AS k, md5(g::text) AS v FROM generate_series(1, 300000) g;
         GRANT SELECT ON lane_big TO app",
    );
    let proxy = TestProxy::start(|_| {});
    let config = proxy.pg_config("app", "app");
    block_on(Duration::from_secs(120), async move {
        let (client, _conn) = connect(&config).await;
        let statements = [
            // Sets a session parameter on whichever server runs it.
            "SELECT set_config('application_name', 'lane-' || $1::text, false)".to_string(),
            // The same, called in FROM.
            "SELECT * FROM set_config('application_name', 'lane-from-' || $1::text, false)"
                .to_string(),
            // Takes a lock.
            format!("SELECT v FROM {TABLE} WHERE k::text = $1 FOR UPDATE"),
            // Reads 300k rows: slow every time.
            "SELECT count(*) FROM lane_big WHERE v LIKE '%' || $1::text || 'zz%'".to_string(),
        ];
        for sql in &statements {
            let stmt = client.prepare(sql).await.expect("prepare");
            for i in 1..=12i32 {
                client
                    .query(&stmt, &[&i.to_string()])
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            }
        }
    });
    assert_eq!(lane_batches(&proxy), 0.0, "nothing ran on a lane");
}

#[test]
fn a_lane_whose_server_dies_fails_what_it_had_and_the_next_reads_run() {
    lane_table();
    let proxy = TestProxy::start(|_| {});
    let config = proxy.pg_config("app", "app");
    block_on(Duration::from_secs(120), async move {
        let (client, _conn) = connect(&config).await;
        let stmt = client
            .prepare(&format!(
                "SELECT v /* lane-kill */ FROM {TABLE} WHERE k = $1"
            ))
            .await
            .expect("prepare");
        for k in 1..=50i32 {
            client.query_one(&stmt, &[&k]).await.expect("read");
        }
        let killed = superuser_sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE query LIKE '%lane-kill%' AND pid <> pg_backend_pid()",
        );
        assert_ne!(killed, "0", "the lane's server ran the statement");
        let mut lost = 0;
        for k in 1..=50i32 {
            match client.query_one(&stmt, &[&k]).await {
                Ok(row) => assert_eq!(row.get::<_, String>(0), format!("v{k}")),
                Err(e) => {
                    assert_eq!(sqlstate(&e), "08006", "{e:?}");
                    lost += 1;
                }
            }
        }
        assert!(lost <= 1, "{lost} reads failed after one server died");
        // The session survived: the last reads ran.
        let row = client.query_one(&stmt, &[&7i32]).await.expect("after");
        assert_eq!(row.get::<_, String>(0), "v7");
    });
    assert!(lane_batches(&proxy) >= 10.0, "the reads ran on lanes");
}

#[test]
fn keyed_reads_of_a_sharded_table_run_on_their_shards_lanes() {
    for shard in ["s0", "s1"] {
        let base = if shard == "s0" { 0 } else { 50 };
        superuser_sql_on(
            shard,
            &format!(
                "DROP TABLE IF EXISTS lane_rt;
                 CREATE TABLE lane_rt (k int PRIMARY KEY, v text NOT NULL);
                 INSERT INTO lane_rt SELECT g, 'v' || g || '@{shard}'
                 FROM generate_series({}, {}) g;
                 GRANT SELECT ON lane_rt TO app",
                base + 1,
                base + 50
            ),
        );
    }
    let proxy = TestProxy::start(|c| {
        set_tables(
            c,
            r#"
[[tables]]
name = "lane_rt"
key = "k"
strategy = "range"
ranges = [{ shard = "s0", to = 51 }, { shard = "s1", from = 51 }]
"#,
        )
    });
    let config = proxy.pg_config("app", "app");
    block_on(Duration::from_secs(120), async move {
        let mut tasks = Vec::new();
        for client_no in 0..8i32 {
            let config = config.clone();
            tasks.push(tokio::spawn(async move {
                let (client, _conn) = connect(&config).await;
                let stmt = client
                    .prepare("SELECT v FROM lane_rt WHERE k = $1")
                    .await
                    .expect("prepare");
                for i in 0..300i32 {
                    let k = (i * 13 + client_no) % 100 + 1;
                    let shard = if k <= 50 { "s0" } else { "s1" };
                    let row = client.query_one(&stmt, &[&k]).await.expect("read");
                    assert_eq!(row.get::<_, String>(0), format!("v{k}@{shard}"));
                }
            }));
        }
        for task in tasks {
            within(90, "client task", task)
                .await
                .expect("client panicked");
        }
    });
    let (_, text) = proxy.http_get("/metrics");
    for shard in ["s0", "s1"] {
        let batches = metric(
            &text,
            "shardwire_pool_lane_batches_total",
            &[("shard", shard)],
        );
        assert!(
            batches >= 100.0,
            "{shard}: {batches} of ~1200 reads ran on lanes"
        );
    }
}

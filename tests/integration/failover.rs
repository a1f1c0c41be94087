//! Failures of a shard's primary on a cluster of the test's own: writes to
//! that shard fail fast with an error naming it while the other shard keeps
//! serving, and writes follow a promoted replica without a restart.

use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn writes_follow_a_promoted_replica() {
    let private = PrivateCluster::start(&[]);
    let proxy = TestProxy::start_on(&private.0, |cfg| {
        // Roles left to discovery, as after a failover nobody edits configs.
        for shard in cfg["shards"].as_array_mut().expect("shards") {
            for server in shard["servers"].as_array_mut().expect("servers") {
                server.as_table_mut().expect("server").remove("role");
            }
        }
        set(cfg, "health.interval", "300ms");
        set(cfg, "health.timeout", "1s");
        set(cfg, "pool.connect_timeout", "2s");
        set_tables(
            cfg,
            r#"
[[tables]]
name = "fo"
key = "id"
strategy = "hash"
"#,
        );
    });
    // A key on each shard.
    let key_on = |shard: &str| {
        (1..1000)
            .find(|k| {
                route_shard(&proxy, "select v from fo where id = $1", &[&k.to_string()]) == shard
            })
            .expect("a key on the shard")
    };
    let (k0, k1) = (key_on("s0"), key_on("s1"));

    block_on(Duration::from_secs(120), async {
        let client = proxy.app_client().await;
        client
            .simple_query("CREATE TABLE fo (id int PRIMARY KEY, v text)")
            .await
            .expect("create table on every shard");
        let insert = |k: i32, v: &'static str| {
            let client = &client;
            async move {
                client
                    .simple_query(&format!("INSERT INTO fo (id, v) VALUES ({k}, '{v}') ON CONFLICT (id) DO UPDATE SET v = excluded.v"))
                    .await
            }
        };
        insert(k0, "before").await.expect("write on s0");
        insert(k1, "before").await.expect("write on s1");
        // The replica must have the row before it is promoted.
        let (_, s1_replica) = private.0.shard_ports(1);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let rows = proxy.admin("SHOW SHARDS");
            let replica = rows
                .iter()
                .find(|r| r[1] == format!("127.0.0.1:{s1_replica}"))
                .expect("s1's replica in SHOW SHARDS");
            if replica[2] == "replica" && replica[4] == "0" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "s1's replica did not catch up: {rows:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // s1's primary goes away: s1 fails fast and by name, s0 works.
        private.run("stop", &["--shard", "s1"]);
        for _ in 0..3 {
            let started = Instant::now();
            let e = insert(k1, "during")
                .await
                .expect_err("write to a stopped primary");
            let took = started.elapsed();
            assert!(took < Duration::from_secs(3), "took {took:?}: {e}");
            let text = format!("{e:?}");
            assert!(
                text.contains("\\\"s1\\\"") || text.contains("\"s1\""),
                "{text}"
            );
            assert_eq!(sqlstate(&e), "08006", "{text}");
            insert(k0, "during").await.expect("s0 keeps serving");
        }

        // Promote the replica: writes reach it within 10 s, no restart.
        let promoted = Instant::now();
        private.run("promote", &["--shard", "s1", "--replica", "1"]);
        loop {
            match insert(k1, "after").await {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        promoted.elapsed() < Duration::from_secs(10),
                        "writes to s1 not restored 10 s after the promotion: {e:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        eprintln!(
            "writes to s1 restored {:?} after the promotion",
            promoted.elapsed()
        );
        let rows = simple_rows(
            &client
                .simple_query(&format!("SELECT v FROM fo WHERE id = {k1}"))
                .await
                .expect("read back"),
        );
        assert_eq!(rows, vec![vec![Some("after".to_string())]]);
        let shards = proxy.admin("SHOW SHARDS");
        let now = shards
            .iter()
            .find(|r| r[1] == format!("127.0.0.1:{s1_replica}"))
            .expect("promoted server");
        assert_eq!(now[2], "primary", "{shards:?}");
    });
}

/// After a failover, a replica left on the old timeline may have replayed
/// WAL the promoted server never had: its position is past the fork, so as
/// a bare number it looks fresher than writes made on the new timeline,
/// though it has none of them and never will. Reads must not go there:
/// PostgreSQL alone shows a client its own write. Here replica 1 is
/// stopped, the primary writes a few MB that only replica 2 receives, the
/// primary stops, replica 1 comes back and is promoted (new timeline, fork
/// before replica 2's position), and a client writes and reads its row.
#[test]
fn a_replica_left_on_the_old_timeline_takes_no_reads() {
    let private = PrivateCluster::start(&["--shards", "1", "--replicas", "2"]);
    let base = private.0.base_port;
    let (r1, r2) = (base + 1, base + 2);
    let proxy = TestProxy::start_on(&private.0, |cfg| {
        for shard in cfg["shards"].as_array_mut().expect("shards") {
            for server in shard["servers"].as_array_mut().expect("servers") {
                server.as_table_mut().expect("server").remove("role");
            }
        }
        set(cfg, "reads.read_from", "replica");
        set(cfg, "reads.read_your_writes_max_wait", "0");
        set(cfg, "health.interval", "200ms");
        set(cfg, "health.timeout", "1s");
        set(cfg, "pool.connect_timeout", "2s");
    });
    let direct = |port: u16| format!("postgres://app:app@127.0.0.1:{port}/app");
    block_on(Duration::from_secs(180), async {
        let client = proxy.app_client().await;
        client
            .batch_execute(
                "CREATE TABLE fork_t (id int); CREATE TABLE fork_fill (id int, pad text)",
            )
            .await
            .expect("tables");
        // Both replicas have the tables.
        for port in [r1, r2] {
            let (c, _conn) = connect_url(&direct(port)).await;
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.simple_query("select 1 from fork_fill").await.is_err() {
                assert!(Instant::now() < deadline, "replica {port} lacks the tables");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        private.run("stop", &["--shard", "s0", "--replica", "1"]);
        // WAL that only replica 2 receives.
        client
            .batch_execute(
                "INSERT INTO fork_fill SELECT g, repeat('x', 1000) FROM generate_series(1, 4000) g",
            )
            .await
            .expect("fill");
        let (p, _pc) = connect_url(&direct(base)).await;
        let end = first(&p, "select pg_current_wal_lsn()::text").await;
        let (c2, _c2) = connect_url(&direct(r2)).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let caught_up = first(
                &c2,
                &format!("select (pg_last_wal_replay_lsn() >= '{end}')::text"),
            )
            .await;
            if caught_up == "true" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica 2 did not replay the fill"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        private.run("stop", &["--shard", "s0"]);
        private.run("start", &["--shard", "s0", "--replica", "1"]);
        private.run("promote", &["--shard", "s0", "--replica", "1"]);

        // Writes reach the promoted replica 1.
        let promoted = Instant::now();
        loop {
            match client.batch_execute("INSERT INTO fork_t VALUES (42)").await {
                Ok(()) => break,
                Err(e) => {
                    assert!(
                        promoted.elapsed() < Duration::from_secs(15),
                        "writes not restored after the promotion: {e:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        // Replica 2 is past the fork, and stuck there.
        let (c1, _c1) = connect_url(&direct(r1)).await;
        let written = first(&c1, "select pg_current_wal_lsn()::text").await;
        let past = first(
            &c2,
            &format!("select (pg_last_wal_replay_lsn() > '{written}')::text"),
        )
        .await;
        assert_eq!(past, "true", "the scenario needs replica 2 past the fork");
        for round in 0..20 {
            let rows = simple_rows(
                &client
                    .simple_query("SELECT count(*), inet_server_port() FROM fork_t WHERE id = 42")
                    .await
                    .expect("read"),
            );
            assert_eq!(
                rows[0][0].as_deref(),
                Some("1"),
                "round {round}: the client's own write is missing (read on port {:?}; replica 2 is {r2})",
                rows[0][1]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

async fn first(c: &tokio_postgres::Client, sql: &str) -> String {
    simple_rows(&c.simple_query(sql).await.expect(sql))[0][0]
        .clone()
        .expect("a value")
}

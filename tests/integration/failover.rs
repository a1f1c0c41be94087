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

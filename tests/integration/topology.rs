//! The versioned shard map in the catalog: proxies seed it from their
//! config, load the newest version at start, follow new versions by
//! LISTEN/NOTIFY, reject an invalid one without losing the map in force,
//! and all converge on the newest. SHOW TOPOLOGY shows the version.

use std::time::{Duration, Instant};

use crate::common::*;

const TABLES: &str = r#"
[[tables]]
name = "tp_t"
key = "id"
strategy = "hash"
"#;

/// The version SHOW TOPOLOGY reports.
fn version(proxy: &TestProxy) -> u64 {
    let rows = proxy.admin("SHOW TOPOLOGY");
    rows[0][0].parse().expect("version")
}

/// Wait until every proxy shows `want`; the time it took.
fn converge(proxies: &[&TestProxy], want: u64) -> Duration {
    let started = Instant::now();
    loop {
        if proxies.iter().all(|p| version(p) == want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "proxies did not reach topology version {want}: {:?}",
            proxies.iter().map(|p| version(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Publish `map` as `version` of topology `name`, as `topology::publish`
/// does.
async fn publish(c: &tokio_postgres::Client, name: &str, version: i64, map: &serde_json::Value) {
    c.batch_execute(&format!(
        "BEGIN; INSERT INTO shardwire.topology (name, version, map, note) \
         VALUES ('{name}', {version}, '{}'::jsonb, 'test'); \
         NOTIFY shardwire_topology, '{name}:{version}'; COMMIT",
        map.to_string().replace('\'', "''")
    ))
    .await
    .expect("publish");
}

#[test]
fn proxies_converge_on_the_newest_topology() {
    let name = format!("tp{}", std::process::id());
    let configure = |cfg: &mut toml::Value| {
        set(cfg, "topology.source", "catalog");
        set(cfg, "topology.name", name.as_str());
        set(cfg, "topology.check_interval", "30s");
        set_tables(cfg, TABLES);
    };
    let a = TestProxy::start(configure);
    let b = TestProxy::start(configure);
    // Seeded from the config: version 1, the file's map.
    let rows = a.admin("SHOW TOPOLOGY");
    assert_eq!(rows[0][..3], ["1", "catalog", name.as_str()], "{rows:?}");
    assert!(
        rows.iter()
            .any(|r| r[3] == "table" && r[4] == "tp_t" && r[5].contains("\"hash\"")),
        "{rows:?}"
    );
    assert_eq!(version(&b), 1);

    block_on(Duration::from_secs(120), async {
        let catalog = connect_shard(0).await;
        let s1 = connect_shard(1).await;
        let (c, _task) = connect_url(&a.url()).await;
        c.simple_query("drop table if exists tp_t")
            .await
            .expect("drop");
        c.simple_query("create table tp_t (id int primary key)")
            .await
            .expect("create through the proxy");
        let v1: serde_json::Value = catalog
            .query_one(
                "select map::text from shardwire.topology where name = $1 and version = 1",
                &[&name],
            )
            .await
            .expect("version 1")
            .get::<_, String>(0)
            .parse()
            .expect("JSON");
        assert_eq!(v1["tables"][0]["name"], "tp_t");

        // Version 2: every key of tp_t on s1. Both proxies follow at once
        // (NOTIFY; the periodic check is 30 s away).
        let mut v2 = v1.clone();
        v2["tables"] = serde_json::json!([{
            "name": "tp_t", "key": "id", "strategy": "range",
            "ranges": [{ "shard": "s1" }]
        }]);
        publish(&catalog, &name, 2, &v2).await;
        let took = converge(&[&a, &b], 2);
        eprintln!("two proxies on topology version 2 {took:?} after the NOTIFY");
        assert!(took < Duration::from_secs(5), "{took:?}");
        let (cb, _task_b) = connect_url(&b.url()).await;
        for id in 1..=20 {
            let client = if id % 2 == 0 { &c } else { &cb };
            client
                .simple_query(&format!("insert into tp_t (id) values ({id})"))
                .await
                .expect("insert");
        }
        assert_eq!(query_count(&catalog, "select count(*) from tp_t").await, 0);
        assert_eq!(query_count(&s1, "select count(*) from tp_t").await, 20);

        // A proxy started now loads version 2, whatever its file says.
        let late = TestProxy::start(configure);
        assert_eq!(version(&late), 2);

        // An invalid version is rejected; the map in force stays.
        let mut bad = v1.clone();
        bad["tables"][0]["strategy"] = serde_json::json!("range");
        bad["tables"][0]["ranges"] = serde_json::json!([{ "shard": "nope" }]);
        publish(&catalog, &name, 3, &bad).await;
        std::thread::sleep(Duration::from_millis(500));
        for p in [&a, &b, &late] {
            assert_eq!(version(p), 2);
        }
        assert!(a.log().contains("topology version rejected"), "{}", a.log());
        // ... and a later valid one is applied.
        publish(&catalog, &name, 4, &v1).await;
        converge(&[&a, &b, &late], 4);
        c.simple_query("drop table tp_t").await.expect("drop");
        catalog
            .execute("delete from shardwire.topology where name = $1", &[&name])
            .await
            .expect("clean the catalog");
    });
}

#[test]
fn catalog_source_needs_a_login_and_a_valid_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shardwire.toml");
    std::fs::write(
        &path,
        r#"
[topology]
source = "catalog"
name = "bad name"

[[users]]
name = "app"
password = "app"

[[databases]]
name = "app"

[[shards]]
name = "s0"
servers = [{ host = "127.0.0.1", port = 5432, role = "primary" }]
"#,
    )
    .expect("write");
    let e = shardwire::config::Config::load(&path).expect_err("bad topology name");
    assert_eq!(e.key, "topology.name", "{e}");
}

/// ADD SHARD and REMOVE SHARD publish new map versions; a new shard gets
/// no rows of an existing table (its ring stays pinned) but does get new
/// tables' DDL; what would lose data or cannot work is refused.
#[test]
fn add_and_remove_shard_publish_new_versions() {
    let private = PrivateCluster::start(&["--shards", "3"]);
    let (s2_primary, s2_replica) = private.0.shard_ports(2);
    let name = format!("tpadd{}", std::process::id());
    let proxy = TestProxy::start_on(&private.0, |cfg| {
        set(cfg, "topology.source", "catalog");
        set(cfg, "topology.name", name.as_str());
        set_tables(
            cfg,
            &format!(
                "{TABLES}\n[[tables]]\nname = \"tp_nopk\"\nkey = \"id\"\nstrategy = \"hash\"\n"
            ),
        );
        // The proxy starts with s0 and s1 only.
        let shards = cfg["shards"].as_array_mut().expect("shards");
        shards.truncate(2);
    });
    assert_eq!(version(&proxy), 1);
    block_on(Duration::from_secs(120), async {
        let (c, _task) = connect_url(&proxy.url()).await;
        c.simple_query("create table tp_t (id int primary key)")
            .await
            .expect("create");
        c.simple_query("drop table if exists tp_nopk; create table tp_nopk (id int)")
            .await
            .expect("create tp_nopk");
        for id in 1..=100 {
            c.simple_query(&format!("insert into tp_t (id) values ({id})"))
                .await
                .expect("insert");
        }

        // Refused, and nothing changes: an unreachable primary, a replica
        // as primary, a bad address, an existing name.
        for (sql, code) in [
            ("ADD SHARD s2 PRIMARY '127.0.0.1:1'".to_string(), "08006"),
            (
                format!("ADD SHARD s2 PRIMARY '127.0.0.1:{s2_replica}'"),
                "55000",
            ),
            ("ADD SHARD s2 PRIMARY 'nowhere'".to_string(), "22023"),
            (
                format!("ADD SHARD s1 PRIMARY '127.0.0.1:{s2_primary}'"),
                "42710",
            ),
            ("ADD SHARD s2".to_string(), "42601"),
            ("REMOVE SHARD s1".to_string(), "55006"),
            ("REMOVE SHARD s0".to_string(), "55006"),
        ] {
            let out = proxy.admin_psql(&sql);
            assert!(
                out.stderr.contains(code) || out.stderr.contains("ERROR"),
                "{sql}: {}",
                out.stderr
            );
            assert_eq!(version(&proxy), 1, "{sql}");
        }
        let out = proxy.admin_psql(&format!(
            "ADD SHARD s2 PRIMARY '127.0.0.1:{s2_primary}' REPLICAS '127.0.0.1:{s2_replica}'"
        ));
        assert!(out.stderr.contains("version 2"), "{}", out.stderr);
        assert_eq!(version(&proxy), 2);
        let rows = proxy.admin("SHOW TOPOLOGY");
        let s2 = rows
            .iter()
            .find(|r| r[3] == "shard" && r[4] == "s2")
            .unwrap_or_else(|| panic!("{rows:?}"));
        assert!(s2[5].contains(&format!("{s2_replica}")), "{s2:?}");
        let t = rows.iter().find(|r| r[4] == "tp_t").expect("tp_t");
        assert!(t[5].contains(r#""shards":["s0","s1"]"#), "{t:?}");

        // Existing rows stay where they are; new rows of tp_t never go to
        // s2; a cross-shard count reads s0 and s1 only.
        for id in 101..=200 {
            c.simple_query(&format!("insert into tp_t (id) values ({id})"))
                .await
                .expect("insert after ADD SHARD");
        }
        let counted = simple_rows(
            &c.simple_query("select count(*) from tp_t")
                .await
                .expect("count"),
        );
        assert_eq!(counted[0][0].as_deref(), Some("200"));
        let (direct, _t2) =
            connect_url(&format!("postgres://app:app@127.0.0.1:{s2_primary}/app")).await;
        // DDL now reaches s2 too.
        c.simple_query("create table tp_new (id int primary key)")
            .await
            .expect("DDL on three shards");
        assert_eq!(
            query_count(
                &direct,
                "select count(*) from pg_tables where tablename in ('tp_new', 'tp_t')"
            )
            .await,
            1
        );

        // REBALANCE PLAN: tp_t's keys that the 3-shard ring puts on s2,
        // from each old shard, exactly; tp_nopk named with its problem.
        let plan = proxy.admin("REBALANCE PLAN");
        let ring = shardwire::sharding::HashRing::new(&["s0", "s1", "s2"], 1024).expect("ring");
        let to_s2 = (1..=200i64)
            .filter(|k| ring.shard_for(&shardwire::sharding::KeyValue::Int(*k)) == 2)
            .count() as i64;
        let tp_t: Vec<&Vec<String>> = plan.iter().filter(|r| r[0] == "tp_t").collect();
        assert_eq!(tp_t.len(), 2, "{plan:?}");
        let mut planned = 0;
        for r in &tp_t {
            assert_eq!(r[2], "s2", "{r:?}");
            let rows: i64 = r[4].parse().expect("estimated rows");
            let source = if r[1] == "s0" { 0 } else { 1 };
            let (direct, _t) = connect_url(&format!(
                "postgres://app:app@127.0.0.1:{}/app",
                private.0.shard_ports(source).0
            ))
            .await;
            let moving = format!("select count(*) from tp_t where {}", r[6]);
            assert_eq!(query_count(&direct, &moving).await, rows, "{r:?}");
            planned += rows;
        }
        assert_eq!(planned, to_s2);
        assert!(planned > 20, "{planned}");
        let nopk = plan.iter().find(|r| r[0] == "tp_nopk").expect("tp_nopk");
        assert!(nopk[5].contains("no primary key"), "{nopk:?}");

        let out = proxy.admin_psql("REMOVE SHARD s2");
        assert!(out.stderr.contains("version 3"), "{}", out.stderr);
        assert_eq!(version(&proxy), 3);
        c.simple_query("drop table tp_t, tp_new, tp_nopk")
            .await
            .expect("drop");
        direct
            .simple_query("drop table if exists tp_new")
            .await
            .expect("drop on s2");
    });
}

#[test]
fn shard_commands_need_the_catalog_source() {
    let proxy = TestProxy::start(|_| {});
    let out = proxy.admin_psql("ADD SHARD s9 PRIMARY '127.0.0.1:5432'");
    assert!(
        out.stderr.contains("comes from the config file"),
        "{}",
        out.stderr
    );
    assert_eq!(version(&proxy), 0);
}

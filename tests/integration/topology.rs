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

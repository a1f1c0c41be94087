//! The admin console (database `shardwire`), driven with psql: every
//! command answers with rows that say what the proxy is doing.

use std::time::{Duration, Instant};

use crate::common::*;

/// The row of `rows` whose first columns are `key`.
fn row_for<'a>(rows: &'a [Vec<String>], key: &[&str]) -> &'a Vec<String> {
    rows.iter()
        .find(|r| r.iter().zip(key).all(|(a, b)| a == b))
        .unwrap_or_else(|| panic!("no row starting with {key:?} in {rows:?}"))
}

#[test]
fn show_commands_describe_the_running_proxy() {
    let proxy = TestProxy::start(|_| {});
    let c = &cluster();

    let help = proxy.admin("SHOW HELP");
    for cmd in [
        "SHOW SHARDS",
        "SHOW POOLS",
        "SHOW CLIENTS",
        "SHOW SERVERS",
        "SHOW STATS",
        "SHOW CONFIG",
        "SHOW VERSION",
        "RELOAD",
        "PAUSE",
        "RESUME",
        "SHUTDOWN",
    ] {
        assert!(help.iter().any(|r| r[0] == cmd), "{cmd} not in {help:?}");
    }
    let version = proxy.admin("SHOW VERSION");
    assert_eq!(
        version,
        vec![vec![format!("shardwire {}", env!("CARGO_PKG_VERSION"))]]
    );

    // Some work, and one open session to see in SHOW CLIENTS.
    block_on(Duration::from_secs(60), async {
        let client = proxy.app_client().await;
        for _ in 0..5 {
            client.simple_query("SELECT 1").await.expect("select");
        }
        assert!(client.simple_query("SELECT nosuchcolumn").await.is_err());

        // Shards: every server of the cluster, up (checked every 5 s; the
        // first check runs at start).
        let deadline = Instant::now() + Duration::from_secs(15);
        let shards = loop {
            let rows = proxy.admin("SHOW SHARDS");
            if rows.iter().all(|r| r[3] == "up") || Instant::now() > deadline {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(shards.len(), 4, "{shards:?}");
        for i in 0..2u16 {
            let (primary, replica) = c.shard_ports(i);
            let shard = format!("s{i}");
            let r = row_for(&shards, &[&shard, &format!("127.0.0.1:{primary}")]);
            assert_eq!((r[2].as_str(), r[3].as_str()), ("primary", "up"), "{r:?}");
            assert_eq!(
                r[5],
                if i == 0 { "true" } else { "false" },
                "default: {r:?}"
            );
            let r = row_for(&shards, &[&shard, &format!("127.0.0.1:{replica}")]);
            assert_eq!((r[2].as_str(), r[3].as_str()), ("replica", "up"), "{r:?}");
            let lag: u64 = r[4].parse().expect("replica lag is a number");
            assert!(lag < 64 * 1024 * 1024, "{r:?}");
            // A fresh cluster: primary and replica on timeline 1.
            assert_eq!(r[7], "1", "timeline: {r:?}");
        }

        // Servers: the default shard's primary has the app pool's connection.
        let servers = proxy.admin("SHOW SERVERS");
        let p0 = c.shard_ports(0).0;
        let r = row_for(&servers, &["s0", &format!("127.0.0.1:{p0}")]);
        assert_eq!(r[3], "up", "{r:?}");
        assert!(r[4].parse::<u32>().unwrap() >= 1, "{r:?}");
        assert!(r[7].parse::<u32>().unwrap() >= 1, "connects: {r:?}");

        // Pools: app's pool on s0, idle between statements, max from config.
        let pools = proxy.admin("SHOW POOLS");
        let r = row_for(&pools, &["s0", &format!("127.0.0.1:{p0}"), "app", "app"]);
        assert_eq!(r[4], "0", "active: {r:?}");
        assert!(r[5].parse::<u32>().unwrap() >= 1, "idle: {r:?}");
        assert_eq!(r[6], "0", "waiting: {r:?}");
        assert_eq!(r[7], "20", "max: {r:?}");
        assert!(r[8].parse::<u32>().unwrap() >= 6, "checkouts: {r:?}");

        // Clients: our session (idle) and the console itself.
        let clients = proxy.admin("SHOW CLIENTS");
        let app: Vec<_> = clients.iter().filter(|r| r[1] == "app").collect();
        assert_eq!(app.len(), 1, "{clients:?}");
        assert_eq!(app[0][2], "app");
        assert!(app[0][3].starts_with("127.0.0.1:"), "{clients:?}");
        assert_eq!(app[0][5], "idle");
        assert_eq!(app[0][7], "6", "queries: {clients:?}");
        assert!(clients
            .iter()
            .any(|r| r[1] == "admin" && r[2] == "shardwire"));

        // Stats: 6 statements on s0 by default routing, one failed.
        let stats = proxy.admin("SHOW STATS");
        let r = row_for(&stats, &["s0", "default"]);
        assert_eq!(r[2], "6", "queries: {stats:?}");
        assert_eq!(r[3], "1", "errors: {stats:?}");
        assert!(r[4].parse::<f64>().unwrap() > 0.0, "{r:?}");

        drop(client);
    });

    // Config: resolved values, without secrets.
    let config = proxy.admin("SHOW CONFIG");
    let get = |k: &str| {
        config
            .iter()
            .find(|r| r[0] == k)
            .map(|r| r[1].clone())
            .unwrap_or_else(|| panic!("no {k} in {config:?}"))
    };
    assert_eq!(get("pool.max_size"), "20");
    assert_eq!(get("listen"), format!("127.0.0.1:{}", proxy.port));
    assert_eq!(get("shards[0].name"), "s0");
    assert_eq!(get("limits.max_client_connections"), "1000");
    assert!(
        !config
            .iter()
            .any(|r| r[1].contains("SCRAM-SHA-256$") || r[0].contains("password")),
        "secrets in SHOW CONFIG: {config:?}"
    );

    // Several commands in one query; unknown ones are a clear error.
    let two = proxy.admin("SHOW VERSION; SHOW VERSION");
    assert_eq!(two.len(), 2);
    let bad = proxy.admin_psql("SHOW NONSENSE");
    assert!(!bad.success());
    assert!(
        bad.stderr.contains("unknown admin console command") && bad.stderr.contains("SHOW HELP"),
        "{}",
        bad.stderr
    );
}

#[test]
fn admin_console_refuses_the_extended_protocol_clearly() {
    let proxy = TestProxy::start(|_| {});
    block_on(Duration::from_secs(30), async {
        let mut cfg = proxy.pg_config("admin", "admin");
        cfg.dbname("shardwire");
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(conn);
        let e = client
            .query("SHOW VERSION", &[])
            .await
            .expect_err("extended protocol accepted");
        assert_eq!(sqlstate(&e), "0A000", "{e}");
        // The session survives and the simple protocol still works.
        let rows = simple_rows(&client.simple_query("SHOW VERSION").await.expect("simple"));
        assert_eq!(rows.len(), 1);
    });
}

#[test]
fn pause_holds_new_transactions_until_resume() {
    let proxy = TestProxy::start(|_| {});
    block_on(Duration::from_secs(90), async {
        let running = proxy.app_client().await;
        let waiting = proxy.app_client().await;
        running
            .batch_execute("BEGIN; SELECT 1")
            .await
            .expect("begin");

        // PAUSE waits for the running transaction; commit it after a while.
        let port = proxy.port;
        let pause = std::thread::spawn(move || {
            let started = Instant::now();
            let url = format!("postgres://admin@127.0.0.1:{port}/shardwire");
            let out = psql(&url, "admin", true, &["-c", "PAUSE"], None);
            (out, started.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(700)).await;
        // A new transaction is held while paused.
        let held = tokio::spawn(async move {
            let started = Instant::now();
            waiting.simple_query("SELECT 2").await.expect("held query");
            started.elapsed()
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        running
            .batch_execute("COMMIT")
            .await
            .expect("commit during PAUSE");
        let (out, took) = pause.join().expect("pause thread");
        assert!(out.success(), "PAUSE failed: {}", out.stderr);
        assert!(
            took >= Duration::from_millis(900),
            "PAUSE returned before COMMIT: {took:?}"
        );
        // After COMMIT the session keeps its server parked (idle): PAUSE
        // does not wait for it (shutdown_timeout is 30 s).
        assert!(
            took < Duration::from_secs(10),
            "PAUSE waited for an idle session's parked server: {took:?}"
        );
        assert!(!held.is_finished(), "a new transaction ran while paused");
        let clients = proxy.admin("SHOW CLIENTS");
        assert!(
            clients.iter().any(|r| r[1] == "app" && r[5] == "waiting"),
            "{clients:?}"
        );

        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.admin("RESUME");
        let waited = within(10, "the held query after RESUME", held)
            .await
            .expect("held query task");
        assert!(waited >= Duration::from_millis(700), "{waited:?}");
        running
            .simple_query("SELECT 3")
            .await
            .expect("after RESUME");
    });
}

#[test]
fn shutdown_command_stops_the_proxy() {
    let mut proxy = TestProxy::start(|_| {});
    let rows = proxy.admin_psql("SHUTDOWN");
    assert!(rows.success(), "{}", rows.stderr);
    let status = proxy
        .wait_exit(Duration::from_secs(15))
        .expect("proxy exits after SHUTDOWN");
    assert!(status.success(), "{status}");
}

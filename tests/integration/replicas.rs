//! Replica reads: which statements a replica may answer, and
//! read-your-writes by WAL position on replicas that lag on purpose.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::common::*;

async fn port_of(client: &Client, sql: &str) -> u16 {
    let rows = simple_rows(&client.simple_query(sql).await.expect(sql));
    rows[0][0]
        .as_deref()
        .expect("a port")
        .parse()
        .expect("a port number")
}

/// Waits until the health checks found every server up (replicas take
/// reads only then).
fn wait_all_up(proxy: &TestProxy) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = proxy.admin("SHOW SHARDS");
        if rows.iter().all(|r| r[3] == "up") {
            return;
        }
        assert!(Instant::now() < deadline, "servers not up: {rows:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn reads_go_to_replicas_and_writes_to_primaries() {
    let c = cluster();
    let (primary, replica) = c.shard_ports(0);
    let proxy = TestProxy::start(|cfg| {
        set(cfg, "reads.read_from", "replica");
        set(
            cfg,
            "reads.write_functions",
            toml::Value::Array(vec!["sw_touch".into()]),
        );
        set(cfg, "health.interval", "200ms");
    });
    wait_all_up(&proxy);
    block_on(Duration::from_secs(60), async {
        let client = proxy.app_client().await;
        // Plain reads, built-in read-only functions included.
        for _ in 0..3 {
            assert_eq!(
                port_of(
                    &client,
                    "SELECT inet_server_port(), now(), lower('A'), coalesce(NULL, 1)"
                )
                .await,
                replica
            );
        }
        // Locks, writing functions, listed functions, hints, transactions:
        // the primary.
        for sql in [
            "SELECT inet_server_port() FROM (SELECT 1) x FOR UPDATE",
            "SELECT inet_server_port(), pg_advisory_xact_lock(42)",
            "SELECT inet_server_port(), txid_current()",
            "/* shardwire: role=primary */ SELECT inet_server_port()",
        ] {
            assert_eq!(port_of(&client, sql).await, primary, "{sql}");
        }
        client
            .batch_execute(
                "CREATE OR REPLACE FUNCTION sw_touch() RETURNS int LANGUAGE sql AS 'SELECT 1'; \
                 CREATE SEQUENCE IF NOT EXISTS sw_seq",
            )
            .await
            .expect("create function");
        assert_eq!(
            port_of(&client, "SELECT inet_server_port(), sw_touch()").await,
            primary
        );
        client.batch_execute("BEGIN").await.expect("begin");
        assert_eq!(port_of(&client, "SELECT inet_server_port()").await, primary);
        client.batch_execute("COMMIT").await.expect("commit");
        // The extended protocol too: a read to the replica, a write (and
        // reads in the same pipelined batch) to the primary.
        let row = client
            .query_one("SELECT inet_server_port()", &[])
            .await
            .expect("extended read");
        assert_eq!(row.get::<_, i32>(0) as u16, replica);
        let row = client
            .query_one("SELECT inet_server_port(), nextval('sw_seq')", &[])
            .await
            .expect("extended write");
        assert_eq!(row.get::<_, i32>(0) as u16, primary);
        let stmt = client
            .prepare("SELECT inet_server_port() WHERE $1::int > 0")
            .await
            .expect("prepare");
        for _ in 0..3 {
            let row = client
                .query_one(&stmt, &[&1i32])
                .await
                .expect("prepared read");
            assert_eq!(row.get::<_, i32>(0) as u16, replica);
        }
        // Back to the replica afterwards.
        assert_eq!(port_of(&client, "SELECT inet_server_port()").await, replica);
    });
    let metrics = proxy.http_get("/metrics").1;
    // The last read followed the session's writes: it checked the
    // replica's position first.
    let reads = |d| {
        metric(
            &metrics,
            "shardwire_reads_total",
            &[("shard", "s0"), ("decision", d)],
        )
    };
    assert_eq!(
        reads("replica") + reads("replica_after_wait"),
        8.0,
        "{metrics}"
    );
}

#[test]
fn a_users_read_from_overrides_the_global_one() {
    let c = cluster();
    let (_, replica) = c.shard_ports(0);
    let proxy = TestProxy::start(|cfg| {
        set(cfg, "reads.read_from", "primary");
        set(cfg, "health.interval", "200ms");
        // The user's own setting wins over [reads].
        let users = cfg["users"].as_array_mut().expect("users");
        let app = users
            .iter_mut()
            .find(|u| u["name"].as_str() == Some("app"))
            .expect("user app");
        app.as_table_mut()
            .expect("table")
            .insert("read_from".into(), "replica".into());
    });
    wait_all_up(&proxy);
    block_on(Duration::from_secs(30), async {
        let client = proxy.app_client().await;
        assert_eq!(port_of(&client, "SELECT inet_server_port()").await, replica);
    });
}

/// Read-your-writes with replicas 500 ms behind: no read ever misses the
/// session's own write, through this proxy or (with the causal token)
/// another one; reads long after the last write go to replicas.
#[test]
fn read_your_writes_on_lagging_replicas() {
    let iterations: usize = std::env::var("SHARDWIRE_RYW_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let private = PrivateCluster::start(&["--replica-delay", "500"]);
    let configure = |cfg: &mut toml::Value| {
        set(cfg, "reads.read_from", "replica");
        set(cfg, "reads.read_your_writes_max_wait", "0");
        set(cfg, "health.interval", "200ms");
        set_tables(
            cfg,
            r#"
[[tables]]
name = "ryw"
key = "id"
strategy = "hash"
"#,
        );
    };
    let a = TestProxy::start_on(&private.0, configure);
    let b = TestProxy::start_on(&private.0, configure);
    wait_all_up(&a);
    wait_all_up(&b);
    block_on(Duration::from_secs(600), async {
        let writer = a.app_client().await;
        writer
            .batch_execute("CREATE TABLE ryw (id int PRIMARY KEY, v bigint NOT NULL)")
            .await
            .expect("create");
        writer
            .simple_query("INSERT INTO ryw (id, v) VALUES (1, 0), (2, 0)")
            .await
            .expect("seed");

        // Same session: write then read, 500 ms replica lag.
        let started = Instant::now();
        let mut stale = 0;
        for i in 1..=iterations as i64 {
            writer
                .simple_query(&format!("UPDATE ryw SET v = {i} WHERE id = 1"))
                .await
                .expect("update");
            let rows = simple_rows(
                &writer
                    .simple_query("SELECT v FROM ryw WHERE id = 1")
                    .await
                    .expect("read"),
            );
            if rows[0][0].as_deref() != Some(i.to_string().as_str()) {
                stale += 1;
            }
        }
        eprintln!(
            "read-your-writes: {iterations} write-then-read iterations in {:?}, {stale} stale",
            started.elapsed()
        );
        assert_eq!(stale, 0, "stale reads");

        // Reads more than 1 s after the last write: replicas.
        let before = a.http_get("/metrics").1;
        let decisions: Vec<String> = [
            "replica",
            "replica_after_wait",
            "primary_fallback",
            "no_replica",
        ]
        .iter()
        .map(|d| {
            let n = metric(&before, "shardwire_reads_total", &[("decision", d)]);
            format!("{d} {n}")
        })
        .collect();
        eprintln!("reads right after writes: {}", decisions.join(", "));
        tokio::time::sleep(Duration::from_millis(1200)).await;
        for _ in 0..100 {
            let rows = simple_rows(
                &writer
                    .simple_query("SELECT v FROM ryw WHERE id = 1")
                    .await
                    .expect("late read"),
            );
            assert_eq!(rows[0][0].as_deref(), Some(iterations.to_string().as_str()));
        }
        let after = a.http_get("/metrics").1;
        let count = |text: &str, d: &str| metric(text, "shardwire_reads_total", &[("decision", d)]);
        let replica = ["replica", "replica_after_wait"]
            .iter()
            .map(|d| count(&after, d) - count(&before, d))
            .sum::<f64>();
        eprintln!("late reads served by replicas: {replica} of 100");
        assert!(
            replica >= 90.0,
            "only {replica} of 100 late reads on replicas"
        );

        // Another connection through another proxy, given the token.
        let reader = b.app_client().await;
        let rounds = (iterations / 10).max(100);
        let mut stale = 0;
        for i in 1..=rounds as i64 {
            writer
                .simple_query(&format!("UPDATE ryw SET v = {i} WHERE id = 2"))
                .await
                .expect("update");
            let token = simple_rows(
                &writer
                    .simple_query("SHOW shardwire.causal_token")
                    .await
                    .expect("token"),
            )[0][0]
                .clone()
                .expect("token value");
            reader
                .simple_query(&format!("SET shardwire.causal_token = '{token}'"))
                .await
                .expect("adopt token");
            let rows = simple_rows(
                &reader
                    .simple_query("SELECT v FROM ryw WHERE id = 2")
                    .await
                    .expect("read"),
            );
            if rows[0][0].as_deref() != Some(i.to_string().as_str()) {
                stale += 1;
            }
        }
        eprintln!("causal token: {rounds} iterations across proxies, {stale} stale");
        assert_eq!(stale, 0, "stale reads with the causal token");

        // Writes on several shards: a multi-shard UPDATE (simple and
        // extended protocol) and a transaction over several shards. Each
        // shard's write is noted, so reads of every key see it.
        writer
            .simple_query(
                "INSERT INTO ryw (id, v) VALUES (3, 0), (4, 0), (5, 0), (6, 0), (7, 0), (8, 0), (9, 0), (10, 0)",
            )
            .await
            .expect("rows on both shards");
        let mut stale = 0;
        for i in 1..=30i64 {
            match i % 3 {
                0 => {
                    writer
                        .simple_query(&format!("UPDATE ryw SET v = {i} WHERE id > 2"))
                        .await
                        .expect("multi-shard update");
                }
                1 => {
                    writer
                        .execute("UPDATE ryw SET v = $1 WHERE id > $2", &[&i, &2i32])
                        .await
                        .expect("multi-shard update, extended");
                }
                _ => {
                    let mut tx = String::from("BEGIN;");
                    for id in 3..=10 {
                        tx.push_str(&format!("UPDATE ryw SET v = {i} WHERE id = {id};"));
                    }
                    tx.push_str("COMMIT");
                    for stmt in tx.split(';') {
                        writer.simple_query(stmt).await.expect(stmt);
                    }
                }
            }
            for id in 3..=10 {
                let rows = simple_rows(
                    &writer
                        .simple_query(&format!("SELECT v FROM ryw WHERE id = {id}"))
                        .await
                        .expect("read"),
                );
                if rows[0][0].as_deref() != Some(i.to_string().as_str()) {
                    stale += 1;
                }
            }
        }
        eprintln!("multi-shard writes: 30 rounds of 8 reads, {stale} stale");
        assert_eq!(stale, 0, "stale reads after multi-shard writes");

        // A malformed token is a clear error.
        let e = reader
            .simple_query("SET shardwire.causal_token = 'nonsense'")
            .await
            .expect_err("malformed token accepted");
        assert_eq!(sqlstate(&e), "22023", "{e}");
    });
}

/// A replica stopped in the middle of a read-only pgbench run costs no
/// transaction: reads it was running are retried elsewhere, and it is
/// banned for the ones after.
#[test]
fn stopping_a_replica_under_pgbench_fails_no_transaction() {
    replica_stops_under_pgbench("simple", 30);
}

/// The same with prepared statements (the extended protocol).
#[test]
fn stopping_a_replica_under_prepared_pgbench_fails_no_transaction() {
    replica_stops_under_pgbench("prepared", 10);
}

fn replica_stops_under_pgbench(mode: &str, default_seconds: u64) {
    let seconds: u64 = std::env::var("SHARDWIRE_REPLICA_KILL_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_seconds);
    let private = PrivateCluster::start(&[]);
    let proxy = TestProxy::start_on(&private.0, |cfg| {
        set(cfg, "reads.read_from", "replica");
        set(cfg, "health.interval", "200ms");
    });
    wait_all_up(&proxy);
    pgbench(
        proxy.port,
        &["-i", "-s", "1", "-q"],
        Duration::from_secs(120),
    )
    .ok("pgbench -i");
    let port = proxy.port;
    let mode = mode.to_string();
    let run = std::thread::spawn(move || {
        pgbench(
            port,
            &[
                "-S",
                "-n",
                "-M",
                &mode,
                "-c",
                "16",
                "-j",
                "2",
                "-T",
                &seconds.to_string(),
            ],
            Duration::from_secs(seconds + 60),
        )
    });
    std::thread::sleep(Duration::from_secs(seconds / 4 + 1));
    let before = proxy.http_get("/metrics").1;
    private.run("stop", &["--shard", "s0", "--replica", "1"]);
    let out = run.join().expect("pgbench thread");
    let mode_line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("query mode"))
        .unwrap_or("")
        .to_string();
    let after = proxy.http_get("/metrics").1;
    eprintln!("{}", out.stdout);
    assert_pgbench_clean(&out);
    let reads = |text: &str, d: &str| {
        metric(
            text,
            "shardwire_reads_total",
            &[("shard", "s0"), ("decision", d)],
        )
    };
    let total = |text: &str| {
        [
            "replica",
            "replica_after_wait",
            "no_replica",
            "primary_fallback",
        ]
        .iter()
        .map(|d| reads(text, d))
        .sum::<f64>()
    };
    let on_replica = reads(&before, "replica") + reads(&before, "replica_after_wait");
    eprintln!(
        "{mode_line}: reads on the replica before it stopped: {on_replica} of {}; after: {} more, {} on the primary; retried: {}",
        total(&before),
        total(&after) - total(&before),
        reads(&after, "no_replica") - reads(&before, "no_replica"),
        metric(&after, "shardwire_read_retries_total", &[]),
    );
    // The replica was serving when it stopped (a share, not all: a busy
    // machine can fail a health check now and then).
    assert!(on_replica > 0.0, "{before}");
    assert!(reads(&after, "no_replica") > reads(&before, "no_replica"));
}

/// Load balancing over two replicas, server weights and region preference,
/// each applied by RELOAD (replica lists change without a restart).
#[test]
fn reads_are_balanced_by_policy_weight_and_region() {
    let private = PrivateCluster::start(&["--replicas", "2"]);
    // s0: primary at base, replicas at base+1 and base+2.
    let base = private.0.base_port;
    let (r1, r2) = (base + 1, base + 2);
    let proxy = TestProxy::start_on(&private.0, |cfg| {
        set(cfg, "reads.read_from", "replica");
        set(cfg, "reads.load_balance", "round_robin");
        set(cfg, "health.interval", "200ms");
    });
    wait_all_up(&proxy);
    let reads = |n: usize| -> (usize, usize) {
        block_on(Duration::from_secs(60), async {
            let client = proxy.app_client().await;
            let mut counts = (0, 0);
            for _ in 0..n {
                match port_of(&client, "SELECT inet_server_port()").await {
                    p if p == r1 => counts.0 += 1,
                    p if p == r2 => counts.1 += 1,
                    p => panic!("a read went to {p}, not a replica"),
                }
            }
            counts
        })
    };
    let (a, b) = reads(40);
    assert!(a >= 10 && b >= 10, "round robin: {a} / {b}");

    // Weight 0: no reads for replica 2.
    let servers_of_s0 = |cfg: &mut toml::Value| -> Vec<toml::Value> {
        cfg["shards"][0]["servers"]
            .as_array()
            .expect("servers")
            .clone()
    };
    proxy.rewrite_config(|cfg| {
        let mut servers = servers_of_s0(cfg);
        servers[2]
            .as_table_mut()
            .expect("server")
            .insert("weight".into(), 0.into());
        cfg["shards"][0]["servers"] = toml::Value::Array(servers);
        set(cfg, "reads.load_balance", "weighted");
    });
    proxy.admin("RELOAD");
    assert_eq!(reads(20), (20, 0), "weight 0");

    // Region: the proxy in "eu", replica 2 in "eu", replica 1 in "us".
    proxy.rewrite_config(|cfg| {
        let mut servers = servers_of_s0(cfg);
        servers[2]
            .as_table_mut()
            .expect("server")
            .insert("weight".into(), 1.into());
        servers[1]
            .as_table_mut()
            .expect("server")
            .insert("region".into(), "us".into());
        servers[2]
            .as_table_mut()
            .expect("server")
            .insert("region".into(), "eu".into());
        cfg["shards"][0]["servers"] = toml::Value::Array(servers);
        set(cfg, "region", "eu");
        set(cfg, "reads.load_balance", "least_outstanding");
    });
    proxy.admin("RELOAD");
    assert_eq!(reads(20), (0, 20), "same region first");
}

/// Replicas 2 s behind: with max_replica_lag = 500ms a replica that has
/// WAL waiting to be replayed takes no reads until it catches up; and
/// primary_after_write keeps a session's reads on the primary for its
/// window after a write.
#[test]
fn lagging_replicas_take_no_reads_and_primary_after_write() {
    let private = PrivateCluster::start(&["--replica-delay", "2000"]);
    let (_, replica) = private.0.shard_ports(0);
    let proxy = TestProxy::start_on(&private.0, |cfg| {
        set(cfg, "reads.read_from", "replica");
        set(cfg, "reads.max_replica_lag", "500ms");
        set(cfg, "reads.read_your_writes", "primary_after_write");
        set(cfg, "reads.read_your_writes_window", "1s");
        set(cfg, "health.interval", "100ms");
    });
    wait_all_up(&proxy);
    block_on(Duration::from_secs(60), async {
        let writer = proxy.app_client().await;
        let reader = proxy.app_client().await;
        assert_eq!(port_of(&reader, "SELECT inet_server_port()").await, replica);
        writer
            .batch_execute("CREATE TABLE lag_probe (id int); INSERT INTO lag_probe VALUES (1)")
            .await
            .expect("write");
        // The writer's own read: the primary, within its window.
        assert_ne!(port_of(&writer, "SELECT inet_server_port()").await, replica);
        // Another session: the replica is >500 ms behind once the checks
        // see the pending WAL, so the primary answers.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if port_of(&reader, "SELECT inet_server_port()").await != replica {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a lagging replica kept taking reads"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Caught up (2 s delay): reads come back to it, for both.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = port_of(&reader, "SELECT inet_server_port()").await;
            let w = port_of(&writer, "SELECT inet_server_port()").await;
            if r == replica && w == replica {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the replica never took reads again"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let metrics = proxy.http_get("/metrics").1;
    for d in ["primary_after_write", "no_replica", "replica"] {
        assert!(
            metric(&metrics, "shardwire_reads_total", &[("decision", d)]) >= 1.0,
            "{d}: {metrics}"
        );
    }
}

/// After a write whose WAL position is right past a page header (here at a
/// segment's start, after pg_switch_wal), an idle replica that replayed
/// everything reports the page's start, never that position: read-your-
/// writes must still let reads go back to the replica.
#[test]
fn a_write_position_at_a_page_header_does_not_keep_reads_on_the_primary() {
    let private = PrivateCluster::start(&[]);
    private.run(
        "psql",
        &[
            "--shard",
            "s0",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "GRANT EXECUTE ON FUNCTION pg_switch_wal() TO app",
        ],
    );
    let (_, replica) = private.0.shard_ports(0);
    let proxy = TestProxy::start_on(&private.0, |cfg| {
        set(cfg, "reads.read_from", "replica");
        set(cfg, "reads.read_your_writes_max_wait", "0");
        set(
            cfg,
            "reads.write_functions",
            toml::Value::Array(vec!["pg_switch_wal".into()]),
        );
        set(cfg, "health.interval", "100ms");
    });
    wait_all_up(&proxy);
    block_on(Duration::from_secs(60), async {
        let client = proxy.app_client().await;
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS ph (i int); INSERT INTO ph VALUES (1)")
            .await
            .expect("write");
        // A write (by write_functions) that leaves the insert position at
        // the next segment's start, past its long page header.
        let lsn = simple_rows(
            &client
                .simple_query("SELECT pg_switch_wal()::text")
                .await
                .expect("switch"),
        );
        assert!(lsn[0][0].is_some());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if port_of(&client, "SELECT inet_server_port()").await == replica {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "reads stayed on the primary: the replica never reached the write's position"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// A replica that restarts between two health checks replays its own WAL
/// again from its last restartpoint, and takes connections before it is
/// back where it was. The position the proxy knew from before is then too
/// high: a read that needs the client's last write must not go there on
/// it. Here the replica comes back with a long apply delay, so it stays
/// before the write, and the checks are an hour apart.
#[test]
fn a_replica_that_restarted_is_asked_where_it_is() {
    let private = PrivateCluster::start(&[]);
    let (_, replica) = private.0.shard_ports(0);
    let proxy = TestProxy::start_on(&private.0, |cfg| {
        set(cfg, "reads.read_from", "replica");
        set(cfg, "reads.read_your_writes_max_wait", "2s");
        set(cfg, "health.interval", "1h");
    });
    wait_all_up(&proxy);
    let superuser = |replica_no: &str, sql: &str| {
        private.run(
            "psql",
            &[
                "--shard",
                "s0",
                "--replica",
                replica_no,
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        );
    };
    block_on(Duration::from_secs(90), async {
        let client = proxy.app_client().await;
        client
            .batch_execute("CREATE TABLE rs_t (i int); INSERT INTO rs_t VALUES (1)")
            .await
            .expect("table");
        client
            .batch_execute("INSERT INTO rs_t VALUES (2)")
            .await
            .expect("write");
        // Read on the replica once it has the write: the proxy now knows
        // a position of the replica past the write.
        let rows = simple_rows(
            &client
                .simple_query("SELECT count(*), inet_server_port() FROM rs_t")
                .await
                .expect("read"),
        );
        assert_eq!(rows[0][0].as_deref(), Some("2"));
        assert_eq!(rows[0][1].as_deref(), Some(replica.to_string().as_str()));

        // A crash: its data pages may not have the write yet, so it is
        // consistent (and takes connections) before replaying it, and the
        // apply delay keeps it there.
        superuser("1", "ALTER SYSTEM SET recovery_min_apply_delay = '1h'");
        private.run("stop", &["--shard", "s0", "--replica", "1", "--crash"]);
        private.run("start", &["--shard", "s0", "--replica", "1"]);
        // Back, and before the write.
        let (direct, _conn) =
            connect_url(&format!("postgres://app:app@127.0.0.1:{replica}/app")).await;
        // (It may be before the table, even.)
        let n = direct
            .simple_query("SELECT count(*) FROM rs_t WHERE i = 2")
            .await
            .map(|m| simple_rows(&m)[0][0].clone());
        assert!(
            !matches!(n.as_ref().map(|v| v.as_deref()), Ok(Some("1"))),
            "the scenario needs the replica before the write"
        );

        for round in 0..5 {
            let rows = simple_rows(
                &client
                    .simple_query("SELECT count(*), inet_server_port() FROM rs_t")
                    .await
                    .expect("read"),
            );
            assert_eq!(
                rows[0][0].as_deref(),
                Some("2"),
                "round {round}: the client's own write is missing (read on port {:?})",
                rows[0][1]
            );
        }
    });
}

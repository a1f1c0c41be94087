//! `shardwire rebalance ...`: the built binary against a running proxy's
//! admin console. What the console answers is tested in topology.rs; here,
//! that the CLI sends the right command, prints rows and the server's
//! errors (SQLSTATE, hint) faithfully, and fails fast and clearly when
//! the console cannot be reached.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::common::*;

/// `shardwire rebalance ARGS` with the libpq and SHARDWIRE_ADMIN_URL
/// environment removed, so only what the test passes decides where it
/// connects.
fn rebalance(args: &[&str], env: &[(&str, &str)]) -> CmdOutput {
    let mut c = pg_command(env!("CARGO_BIN_EXE_shardwire"));
    c.env_remove("SHARDWIRE_ADMIN_URL")
        .env_remove("PGCONNECT_TIMEOUT")
        .arg("rebalance")
        .args(args)
        .envs(env.iter().copied());
    run_cmd(&mut c, None, Duration::from_secs(90))
}

fn admin_url(proxy: &TestProxy) -> String {
    format!("postgres://admin:admin@127.0.0.1:{}/shardwire", proxy.port)
}

fn code(out: &CmdOutput) -> Option<i32> {
    out.status.code()
}

/// A hash ring pinned to s0 on a two-shard cluster: the plan moves about
/// half the keys to s1, and the CLI's table shows the same row as psql.
#[test]
fn plan_prints_the_moves_as_a_table() {
    let table = table_name("rc_plan");
    let proxy = TestProxy::start(|cfg| {
        set_tables(
            cfg,
            &format!(
                "[[tables]]\nname = \"{table}\"\nkey = \"id\"\nstrategy = \"hash\"\nshards = [\"s0\"]\n"
            ),
        );
    });
    block_on(Duration::from_secs(120), async {
        let (c, _task) = connect_url(&proxy.url()).await;
        c.simple_query(&format!(
            "drop table if exists {table}; create table {table} (id int primary key)"
        ))
        .await
        .expect("create");
        for id in 1..=200 {
            c.simple_query(&format!("insert into {table} (id) values ({id})"))
                .await
                .expect("insert");
        }
    });
    let psql_rows = proxy.admin("REBALANCE PLAN");
    let want = psql_rows
        .iter()
        .find(|r| r[0] == table)
        .unwrap_or_else(|| panic!("psql shows no move of {table}: {psql_rows:?}"));
    assert_eq!(
        (want[1].as_str(), want[2].as_str()),
        ("s0", "s1"),
        "{want:?}"
    );
    let estimated: i64 = want[4].parse().expect("estimated_rows");
    assert!(estimated > 0 && estimated < 200, "{want:?}");

    let out = rebalance(&["--admin", &admin_url(&proxy), "plan"], &[]).ok("rebalance plan");
    let lines: Vec<&str> = out.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "table",
            "source",
            "target",
            "arcs",
            "estimated_rows",
            "problem",
            "keys"
        ],
        "{}",
        out.stdout
    );
    assert!(lines[1].starts_with("-----"), "{}", out.stdout);
    let row = lines
        .iter()
        .find(|l| l.starts_with(&format!("{table} ")))
        .unwrap_or_else(|| panic!("no row for {table}:\n{}", out.stdout));
    // Aligned: each value starts under its column name.
    let at = |column: &str| lines[0].find(column).expect("column in header");
    assert_eq!(&row[at("source")..at("source") + 2], "s0", "{row}");
    assert_eq!(&row[at("target")..at("target") + 2], "s1", "{row}");
    assert_eq!(
        row[at("estimated_rows")..at("problem")].trim(),
        estimated.to_string(),
        "{row}"
    );
    assert_eq!(row[at("keys")..].trim_end(), want[6], "{row}");
    let n = psql_rows.len();
    assert!(
        lines.last() == Some(&format!("({n} row{})", if n == 1 { "" } else { "s" }).as_str()),
        "{}",
        out.stdout
    );

    block_on(Duration::from_secs(60), async {
        let (c, _task) = connect_url(&proxy.url()).await;
        c.simple_query(&format!("drop table {table}"))
            .await
            .expect("drop");
    });
}

/// ADD SHARD refused by the proxy (its primary does not answer): exit 1
/// with the proxy's message and SQLSTATE. Then a real ADD SHARD and
/// REMOVE SHARD, whose only answer is a notice with the new map version.
/// The admin URL comes from SHARDWIRE_ADMIN_URL here.
#[test]
fn add_shard_reports_the_servers_error_and_notices() {
    let name = format!("rccli{}", std::process::id());
    let proxy = TestProxy::start(|cfg| {
        set(cfg, "topology.source", "catalog");
        set(cfg, "topology.name", name.as_str());
        // The proxy starts with s0 only, so s1's primary can be added.
        cfg["shards"].as_array_mut().expect("shards").truncate(1);
    });
    let env = [("SHARDWIRE_ADMIN_URL", admin_url(&proxy))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let started = Instant::now();
    let out = rebalance(&["add-shard", "s1", "--primary", "127.0.0.1:1"], &env);
    assert_eq!(code(&out), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.starts_with("shardwire: "), "{}", out.stderr);
    assert!(out.stderr.contains("SQLSTATE: 08006"), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(proxy.admin("SHOW TOPOLOGY")[0][0], "1");

    let (s1_primary, s1_replica) = cluster().shard_ports(1);
    let out = rebalance(
        &[
            "add-shard",
            "s1",
            "--primary",
            &format!("127.0.0.1:{s1_primary}"),
            "--replica",
            &format!("127.0.0.1:{s1_replica}"),
        ],
        &env,
    )
    .ok("add-shard");
    assert!(
        out.stderr
            .contains("NOTICE:  shard map version 2 is in force"),
        "{}",
        out.stderr
    );
    let topology = proxy.admin("SHOW TOPOLOGY");
    let s1 = topology
        .iter()
        .find(|r| r[3] == "shard" && r[4] == "s1")
        .unwrap_or_else(|| panic!("{topology:?}"));
    assert!(s1[5].contains(&s1_replica.to_string()), "{s1:?}");

    let out = rebalance(&["remove-shard", "s1"], &env).ok("remove-shard");
    assert!(out.stderr.contains("version 3"), "{}", out.stderr);
    // REMOVE SHARD of a shard that is not there: the console's message
    // and its SQLSTATE, from the same CLI path.
    let out = rebalance(&["remove-shard", "s1"], &env);
    assert_eq!(code(&out), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("SQLSTATE: "), "{}", out.stderr);

    block_on(Duration::from_secs(60), async {
        connect_shard(0)
            .await
            .execute("delete from shardwire.topology where name = $1", &[&name])
            .await
            .expect("clean the catalog");
    });
}

/// Nothing listening, a malformed URL, a server that never answers, bad
/// arguments: a one-line reason, the right exit code, and no hang.
#[test]
fn unreachable_console_and_bad_arguments_fail_clearly() {
    let port = free_port();
    let started = Instant::now();
    let out = rebalance(
        &[
            "--admin",
            &format!("postgres://admin:s3cret@127.0.0.1:{port}/shardwire"),
            "plan",
        ],
        &[],
    );
    assert_eq!(code(&out), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.starts_with(&format!(
            "shardwire: cannot connect to the admin console at admin@127.0.0.1:{port}/shardwire: "
        )),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("refused"), "{}", out.stderr);
    assert!(!out.stderr.contains("s3cret"), "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(10));

    let out = rebalance(
        &["--admin", "postgres://admin@127.0.0.1:notaport/x", "plan"],
        &[],
    );
    assert_eq!(code(&out), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.starts_with("shardwire: invalid --admin URL"),
        "{}",
        out.stderr
    );

    // Accepts connections (the kernel completes the handshake) but never
    // answers the startup message.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let started = Instant::now();
    let out = rebalance(
        &["status"],
        &[
            ("PGPORT", &silent_port.to_string()),
            ("PGUSER", "admin"),
            ("PGPASSWORD", "admin"),
        ],
    );
    let took = started.elapsed();
    assert_eq!(code(&out), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "admin@127.0.0.1:{silent_port}/shardwire: no answer within 10s"
        )),
        "{}",
        out.stderr
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    drop(silent);

    // Usage errors are clap's: exit code 2, before any connection.
    for args in [
        &["add-shard", "s 2", "--primary", "127.0.0.1:1"][..],
        &["add-shard", "s2"],
        &["split-range", "t", "1; SHUTDOWN", "s1"],
        &["status", "--interval", "0"],
        &["launch"],
    ] {
        let out = rebalance(args, &[("PGPORT", &port.to_string())]);
        assert_eq!(code(&out), Some(2), "{args:?}: {}", out.stderr);
    }
}

/// The PG environment variables that reach the admin console on `port`.
fn admin_env(port: &str) -> [(&'static str, &str); 4] {
    [
        ("PGHOST", "127.0.0.1"),
        ("PGPORT", port),
        ("PGUSER", "admin"),
        ("PGPASSWORD", "admin"),
    ]
}

/// No rebalance has run on a fresh catalog topology. The connection
/// comes from the PG environment variables here. With the map from the
/// file, the console's refusal comes through cleanly.
#[test]
fn status_without_a_rebalance() {
    let file_map = TestProxy::start(|_| {});
    let port = file_map.port.to_string();
    let env = admin_env(&port);
    let out = rebalance(&["status"], &env);
    assert_eq!(code(&out), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("SQLSTATE: 55000"), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);

    let name = format!("rbcli{}", std::process::id());
    let proxy = TestProxy::start(|cfg| {
        set(cfg, "topology.source", "catalog");
        set(cfg, "topology.name", name.as_str());
    });
    let port = proxy.port.to_string();
    let env = admin_env(&port);
    let out = rebalance(&["status"], &env);
    let out = out.ok("rebalance status");
    assert_eq!(out.stdout, "no rebalance has run\n");
    let out = rebalance(&["status", "--watch", "--interval", "200ms"], &env)
        .ok("rebalance status --watch");
    assert_eq!(out.stdout, "no rebalance has run\n");
}

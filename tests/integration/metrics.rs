//! The HTTP endpoints: /metrics counters follow the work done (scraped
//! during a pgbench run), the exposition is well-formed, and /healthz and
//! /readyz reflect the cluster, as do SHOW SHARDS and shardwire_server_up.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common::*;

/// Statements pgbench may run besides its transactions (reading the scale
/// from pgbench_branches and the like).
const SETUP_SLACK: f64 = 20.0;

/// Every sample's metric has a `# TYPE` line earlier in the exposition, and
/// every value is a number.
fn assert_well_formed(text: &str) {
    let mut typed: HashSet<(String, String)> = HashSet::new();
    let mut samples = 0;
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad TYPE line {line:?}"
            );
            typed.insert((name.to_string(), kind.to_string()));
            continue;
        }
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP "), "stray comment {line:?}");
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("sample without a value: {line:?}"));
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad value in {line:?}"
        );
        let name = series.split('{').next().unwrap_or(series);
        assert!(
            series == name || series.ends_with('}'),
            "unbalanced labels in {line:?}"
        );
        let has_type = typed.iter().any(|(t, kind)| {
            t == name
                || (kind == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(t.as_str())))
        });
        assert!(has_type, "no # TYPE line before {line:?}");
        samples += 1;
    }
    assert!(samples > 0, "no samples:\n{text}");
}

fn scrape(port: u16) -> String {
    let (status, body) = http_get(port, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// The counters this test follows, summed over every series.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counters {
    queries: f64,
    durations: f64,
    checkouts: f64,
    clients: f64,
}

fn counters(text: &str) -> Counters {
    Counters {
        queries: metric(text, "shardwire_queries_total", &[]),
        durations: metric(text, "shardwire_query_duration_seconds_count", &[]),
        checkouts: metric(text, "shardwire_pool_checkouts_total", &[]),
        clients: metric(text, "shardwire_client_connections_total", &[]),
    }
}

#[test]
fn metrics_follow_a_pgbench_run() {
    let _tables = pgbench_tables_lock();
    let proxy = TestProxy::start(|_| {});
    pgbench(
        proxy.port,
        &["-i", "-s", "1", "-q"],
        Duration::from_secs(120),
    )
    .ok("pgbench -i -s 1");

    let before_text = scrape(proxy.http_port);
    assert_well_formed(&before_text);
    let before = counters(&before_text);

    let port = proxy.port;
    let run = std::thread::spawn(move || {
        pgbench(
            port,
            &["-n", "-S", "-c", "4", "-j", "2", "-t", "250"],
            Duration::from_secs(120),
        )
    });
    let mut during = Vec::new();
    while !run.is_finished() {
        let text = scrape(proxy.http_port);
        // Only scrapes that ended before pgbench did were taken mid-run.
        if !run.is_finished() {
            assert_well_formed(&text);
            during.push(counters(&text));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run.join().expect("pgbench thread").ok("pgbench -S");
    let text = format!("{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        number_after(&text, "number of transactions actually processed:"),
        1000.0,
        "{text}"
    );
    if text.contains("number of failed transactions:") {
        assert_eq!(number_after(&text, "number of failed transactions:"), 0.0);
    }

    let after_text = scrape(proxy.http_port);
    assert_well_formed(&after_text);
    let after = counters(&after_text);
    eprintln!(
        "metrics before {before:?}\n        after {after:?}\n        {} scrapes during the run, e.g. {:?}",
        during.len(),
        during.get(during.len() / 2)
    );

    assert!(!during.is_empty(), "no scrape finished during the run");
    let queries = after.queries - before.queries;
    assert!(
        (1000.0..=1000.0 + SETUP_SLACK).contains(&queries),
        "shardwire_queries_total rose by {queries} for 1000 selects"
    );
    assert_eq!(
        after.durations - before.durations,
        queries,
        "shardwire_query_duration_seconds_count and shardwire_queries_total moved differently"
    );
    let checkouts = after.checkouts - before.checkouts;
    assert!(
        checkouts >= 1.0,
        "shardwire_pool_checkouts_total rose by {checkouts}"
    );
    let clients = after.clients - before.clients;
    assert!(
        clients >= 4.0,
        "shardwire_client_connections_total rose by {clients} for 4 pgbench clients"
    );
    for d in &during {
        for (name, b, m, a) in [
            ("queries", before.queries, d.queries, after.queries),
            ("durations", before.durations, d.durations, after.durations),
            ("checkouts", before.checkouts, d.checkouts, after.checkouts),
            ("clients", before.clients, d.clients, after.clients),
        ] {
            assert!(
                b <= m && m <= a,
                "{name}: the scrape during the run ({m}) is not between {b} and {a}"
            );
        }
    }
    eprintln!(
        "pgbench 1000 selects: queries +{queries}, checkouts +{checkouts}, client connections +{clients}"
    );
}

#[test]
fn healthz_and_readyz_on_a_healthy_cluster() {
    let proxy = TestProxy::start(|c| {
        set(c, "health.interval", "200ms");
        set(c, "health.timeout", "2s");
    });
    assert_eq!(proxy.http_get("/healthz"), (200, "ok\n".to_string()));
    let start = Instant::now();
    loop {
        let (status, body) = proxy.http_get("/readyz");
        if status == 200 {
            assert_eq!(body.trim(), "ready");
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "/readyz still {status} after 10s: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("/readyz 200 after {:?}", start.elapsed());
    // Ready needs one server per shard; soon all four pass their checks.
    loop {
        let text = scrape(proxy.http_port);
        let up = metric(&text, "shardwire_server_up", &[]);
        if up == 4.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "shardwire_server_up sums to {up}, not 4:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn readyz_names_a_shard_whose_servers_are_down() {
    let dead = [free_port(), free_port()];
    let proxy = TestProxy::start(|c| {
        set(c, "health.interval", "200ms");
        set(c, "health.timeout", "1s");
        let shards = c
            .get_mut("shards")
            .and_then(|s| s.as_array_mut())
            .expect("[[shards]]");
        let s1 = shards
            .iter_mut()
            .find(|s| s.get("name").and_then(|n| n.as_str()) == Some("s1"))
            .expect("shard s1");
        let servers = s1
            .get_mut("servers")
            .and_then(|s| s.as_array_mut())
            .expect("s1's servers");
        for (server, port) in servers.iter_mut().zip(dead) {
            server
                .as_table_mut()
                .expect("server table")
                .insert("port".into(), toml::Value::Integer(port.into()));
        }
    });
    assert_eq!(proxy.http_get("/healthz"), (200, "ok\n".to_string()));

    // Wait for s0's checks to pass and s1's to fail.
    let start = Instant::now();
    let (status, body) = loop {
        let (status, body) = proxy.http_get("/readyz");
        if status == 503 && body.contains("s1") && !body.contains("s0") {
            break (status, body);
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "/readyz did not settle on s1 down within 10s: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("/readyz: {status} {}", body.trim());

    // SHOW SHARDS: shard, server, role, state, lag_bytes, default,
    // last_error, timeline.
    let start = Instant::now();
    let rows = loop {
        let rows = proxy.admin("SHOW SHARDS");
        let settled = rows.iter().all(|r| {
            r.len() == 8
                && if r[0] == "s1" {
                    // Failing checks keep a dead server banned.
                    r[3] == "down" || r[3] == "banned"
                } else {
                    r[3] == "up"
                }
        });
        if settled {
            break rows;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "SHOW SHARDS did not settle: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(rows.len(), 4, "{rows:?}");
    let text = scrape(proxy.http_port);
    for r in &rows {
        let up = metric(&text, "shardwire_server_up", &[("server", &r[1])]);
        if r[0] == "s1" {
            assert!(
                dead.iter().any(|p| r[1].ends_with(&format!(":{p}"))),
                "{r:?}"
            );
            assert!(!r[6].is_empty(), "no last_error for a down server: {r:?}");
            assert!(r[7].is_empty(), "a timeline for a down server: {r:?}");
            assert_eq!(up, 0.0, "shardwire_server_up of {}", r[1]);
            eprintln!("down: {} last_error: {}", r[1], r[6]);
        } else {
            assert!(r[6].is_empty(), "last_error for an up server: {r:?}");
            assert_eq!(r[7], "1", "timeline of an up server: {r:?}");
            assert_eq!(up, 1.0, "shardwire_server_up of {}", r[1]);
        }
    }
    assert_eq!(
        metric(&text, "shardwire_server_up", &[("shard", "s1")]),
        0.0
    );
    assert_eq!(
        metric(&text, "shardwire_server_up", &[("shard", "s0")]),
        2.0
    );
    assert_well_formed(&text);
}

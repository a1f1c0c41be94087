//! Online rebalancing under load (issue 7's scenario): a hash-sharded
//! table on 2 shards, clients writing and reading through a proxy and
//! recording every acknowledged write, then ADD SHARD and REBALANCE START.
//! Afterwards every row is on the shard the new map says (checked on each
//! shard directly), nothing acknowledged is lost or stale, the clients saw
//! no errors, and the longest write pause is reported. The same scenario
//! with the mover SIGKILLed at every journal step in turn (resumed each
//! time by REBALANCE START on a restarted proxy), a range split and a
//! region move. `scripts/rebalance-scenario.sh` runs it with 1,000,000
//! rows (`SHARDWIRE_SCENARIO_ROWS`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

fn scenario_rows(default: i64) -> i64 {
    std::env::var("SHARDWIRE_SCENARIO_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one client did.
#[derive(Default)]
struct ClientLog {
    /// Key -> last acknowledged value.
    acked: HashMap<i64, i64>,
    /// Keys inserted (acknowledged).
    inserted: u64,
    /// Keys whose last write failed (value unknown: old or new).
    unsure: HashMap<i64, (i64, i64)>,
    errors: Vec<String>,
    retried: u64,
    /// (started, latency) of every write.
    writes: Vec<(Instant, Duration)>,
}

/// Where and how the clients write.
#[derive(Clone)]
struct Shape {
    url: String,
    table: String,
    /// Retry a failed statement (after the proxy under them was killed).
    retry: bool,
    /// For a geo table: each key's region.
    region_of: Option<fn(i64) -> &'static str>,
}

/// Clients that insert new keys, update their own keys and read them back
/// (a read must show the client's own last write), until `stop`.
async fn client_load(
    shape: Shape,
    client: i64,
    keys: Vec<i64>,
    new_key: impl Fn(i64) -> i64,
    stop: Arc<AtomicBool>,
) -> ClientLog {
    let Shape {
        url,
        table,
        retry,
        region_of,
    } = shape;
    let mut log = ClientLog::default();
    let (mut c, mut task) = connect_url(&url).await;
    // A geo table is routed by its region column, which every statement
    // then names.
    let (insert, update, select) = if region_of.is_some() {
        (
            format!("insert into {table} (id, v, region) values ($1, $2, $3)"),
            format!("update {table} set v = $2 where id = $1 and region = $3"),
            format!("select v from {table} where id = $1 and region = $2"),
        )
    } else {
        (
            format!("insert into {table} (id, v) values ($1, $2)"),
            format!("update {table} set v = $2 where id = $1"),
            format!("select v from {table} where id = $1"),
        )
    };
    let mut own: Vec<i64> = Vec::new();
    let mut n: i64 = 0;
    let mut value: i64 = client * 1_000_000;
    let mut rng_state = (client as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    while !stop.load(Ordering::Relaxed) {
        let roll = next() % 10;
        value += 1;
        let (sql, key, is_write) = if roll < 3 || (own.is_empty() && keys.is_empty()) {
            n += 1;
            (&insert, new_key(n), true)
        } else if roll < 7 {
            let pick = next() as usize;
            let key = if !own.is_empty() && (pick % 2 == 0 || keys.is_empty()) {
                own[pick % own.len()]
            } else {
                keys[pick % keys.len()]
            };
            (&update, key, true)
        } else {
            let pick = next() as usize;
            let key = if own.is_empty() {
                keys[pick % keys.len()]
            } else {
                own[pick % own.len()]
            };
            (&select, key, false)
        };
        let started = Instant::now();
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            let region = region_of.map(|f| f(key).to_string());
            let r = match (is_write, &region) {
                (true, None) => c.execute(sql.as_str(), &[&key, &value]).await.map(|_| None),
                (true, Some(g)) => c
                    .execute(sql.as_str(), &[&key, &value, g])
                    .await
                    .map(|_| None),
                (false, None) => c
                    .query_opt(sql.as_str(), &[&key])
                    .await
                    .map(|row| row.map(|r| r.get::<_, i64>(0))),
                (false, Some(g)) => c
                    .query_opt(sql.as_str(), &[&key, g])
                    .await
                    .map(|row| row.map(|r| r.get::<_, i64>(0))),
            };
            match r {
                Err(e) if retry && attempt < 50 => {
                    log.retried += 1;
                    if c.is_closed() {
                        let (c2, t2) = connect_url(&url).await;
                        c = c2;
                        task = t2;
                    }
                    let _ = &e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => break other,
            }
        };
        let took = started.elapsed();
        match result {
            Ok(read) => {
                if is_write {
                    log.writes.push((started, took));
                    log.unsure.remove(&key);
                    if sql == &insert {
                        own.push(key);
                        log.inserted += 1;
                    }
                    log.acked.insert(key, value);
                } else if let Some(want) = log.acked.get(&key) {
                    if read != Some(*want) && !log.unsure.contains_key(&key) {
                        log.errors.push(format!(
                            "read of {key} gave {read:?}, last write was {want}"
                        ));
                    }
                }
            }
            Err(e) => {
                log.errors
                    .push(format!("{sql} ({key}): {}", db_message(&e)));
                if is_write {
                    let old = log.acked.get(&key).copied().unwrap_or(-1);
                    log.unsure.insert(key, (old, value));
                }
            }
        }
    }
    drop(task);
    log
}

struct Load {
    stop: Arc<AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<ClientLog>>,
}

fn start_load(
    url: &str,
    table: &str,
    clients: i64,
    keys: &[i64],
    key_space: fn(i64, i64) -> i64,
    retry: bool,
    region_of: Option<fn(i64) -> &'static str>,
) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let handles = (0..clients)
        .map(|client| {
            let keys: Vec<i64> = keys
                .iter()
                .enumerate()
                .filter(|(i, _)| *i as i64 % clients == client)
                .map(|(_, k)| *k)
                .collect();
            let shape = Shape {
                url: url.to_string(),
                table: table.to_string(),
                retry,
                region_of,
            };
            tokio::spawn(client_load(
                shape,
                client,
                keys,
                move |n| key_space(client, n),
                stop.clone(),
            ))
        })
        .collect();
    Load { stop, handles }
}

impl Load {
    async fn finish(self) -> Vec<ClientLog> {
        self.stop.store(true, Ordering::Relaxed);
        let mut logs = Vec::new();
        for h in self.handles {
            logs.push(h.await.expect("client task"));
        }
        logs
    }
}

/// Write latencies inside and outside `window`: (p50, p99, max) of each.
fn latency_report(logs: &[ClientLog], window: (Instant, Instant)) -> String {
    let mut during: Vec<Duration> = Vec::new();
    let mut outside: Vec<Duration> = Vec::new();
    for l in logs {
        for (at, took) in &l.writes {
            if *at >= window.0 && *at <= window.1 {
                during.push(*took);
            } else {
                outside.push(*took);
            }
        }
    }
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        if v.is_empty() {
            return "none".to_string();
        }
        let q = |p: f64| v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
        format!(
            "{} writes, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
            v.len(),
            q(0.5),
            q(0.99),
            q(1.0)
        )
    };
    format!(
        "during the rebalance: {}; before and after: {}",
        stats(&mut during),
        stats(&mut outside)
    )
}

/// How long the mover spent in each journal step, from the "rebalance
/// step" lines of its log: "copying 8.0s, catching up 3.1s, ...".
fn step_timeline(log: &str) -> String {
    // Seconds of the day of a log line's timestamp (2026-12-08T00:24:41.68Z).
    let at = |line: &str| -> Option<f64> {
        let t = line.get(11..line.find('Z')?)?;
        let mut parts = t.split(':');
        let h: f64 = parts.next()?.parse().ok()?;
        let m: f64 = parts.next()?.parse().ok()?;
        let s: f64 = parts.next()?.parse().ok()?;
        Some(h * 3600.0 + m * 60.0 + s)
    };
    let steps: Vec<(f64, String)> = log
        .lines()
        .filter(|l| l.contains("rebalance step"))
        .filter_map(|l| {
            let step = l.split("step=\"").nth(1)?.split('"').next()?;
            Some((at(l)?, step.to_string()))
        })
        .collect();
    steps
        .windows(2)
        .map(|w| {
            let mut took = w[1].0 - w[0].0;
            if took < 0.0 {
                took += 86_400.0;
            }
            format!("{} {took:.2}s", w[0].1)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn longest_write(logs: &[ClientLog]) -> Duration {
    logs.iter()
        .flat_map(|l| l.writes.iter().map(|(_, d)| *d))
        .max()
        .unwrap_or_default()
}

/// Every acknowledged write is on the shard `shard_of` says, with its
/// last acknowledged value; every row is on the shard `shard_of` says;
/// the total matches. Returns the total.
async fn check_placement(
    private: &Cluster,
    shards: u16,
    table: &str,
    logs: &[ClientLog],
    preloaded: i64,
    shard_of: &dyn Fn(i64) -> usize,
    exact_total: bool,
) -> i64 {
    let mut found: HashMap<i64, (usize, i64)> = HashMap::new();
    for s in 0..shards {
        let (port, _) = private.shard_ports(s);
        let (c, _t) = connect_url(&format!("postgres://app:app@127.0.0.1:{port}/app")).await;
        let rows = c
            .query(&format!("select id, v from {table}"), &[])
            .await
            .unwrap_or_else(|e| panic!("reading {table} on s{s}: {e}"));
        for r in rows {
            let (id, v): (i64, i64) = (r.get(0), r.get(1));
            let want = shard_of(id);
            assert_eq!(
                want, s as usize,
                "row {id} is on s{s}, the map says s{want}"
            );
            assert!(
                found.insert(id, (s as usize, v)).is_none(),
                "row {id} is on two shards"
            );
        }
    }
    let inserted: u64 = logs.iter().map(|l| l.inserted).sum();
    let unsure: usize = logs.iter().map(|l| l.unsure.len()).sum();
    let total = found.len() as i64;
    if exact_total {
        assert_eq!(
            total,
            preloaded + inserted as i64,
            "rows after the rebalance"
        );
    } else {
        let low = preloaded + inserted as i64;
        assert!(
            total >= low && total <= low + unsure as i64,
            "rows {total}, acknowledged {low}, unsure {unsure}"
        );
    }
    for l in logs {
        for (key, value) in &l.acked {
            let (_, v) = found
                .get(key)
                .unwrap_or_else(|| panic!("acknowledged row {key} is missing"));
            if let Some((old, new)) = l.unsure.get(key) {
                assert!(v == old || v == new, "row {key}: {v}, want {old} or {new}");
            } else {
                assert_eq!(v, value, "row {key}: last acknowledged value");
            }
        }
    }
    total
}

/// Poll REBALANCE STATUS until the overall state is final; the state.
fn wait_rebalance(proxy: &TestProxy, limit: Duration) -> String {
    let started = Instant::now();
    loop {
        let rows = proxy.admin("REBALANCE STATUS");
        let state = rows.first().map(|r| r[5].clone()).unwrap_or_default();
        if ["done", "failed", "cancelled", "rolled back"].contains(&state.as_str()) {
            if state != "done" {
                eprintln!("{rows:?}\n{}", proxy.log_tail(60));
            }
            return state;
        }
        assert!(
            started.elapsed() < limit,
            "rebalance not finished after {limit:?}: {rows:?}\n{}",
            proxy.log_tail(60)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn catalog_config<'a>(name: &'a str, tables: &'a str) -> impl Fn(&mut toml::Value) + 'a {
    move |cfg: &mut toml::Value| {
        set(cfg, "topology.source", "catalog");
        set(cfg, "topology.name", name);
        set(cfg, "topology.check_interval", "2s");
        set(cfg, "rebalance.hold_timeout", "30s");
        set_tables(cfg, tables);
    }
}

/// COPY keys 1..=rows through the proxy (psql: the proxy splits a
/// simple-query COPY by key).
fn preload(url: &str, table: &str, rows: i64, region_of: Option<fn(i64) -> &'static str>) {
    let mut data = String::with_capacity(rows as usize * 12);
    for id in 1..=rows {
        match region_of {
            Some(f) => data.push_str(&format!("{id}\t0\t{}\n", f(id))),
            None => data.push_str(&format!("{id}\t0\n")),
        }
    }
    let columns = if region_of.is_some() {
        "id, v, region"
    } else {
        "id, v"
    };
    let out = psql(
        url,
        "app",
        true,
        &["-c", &format!("copy {table} ({columns}) from stdin")],
        Some(&data),
    );
    assert!(out.success(), "preload: {}", out.stderr);
}

fn hash_key_space(client: i64, n: i64) -> i64 {
    10_000_000 + client * 1_000_000 + n
}

/// The scenario: 2 shards, load, ADD SHARD s2, REBALANCE START; with
/// `stalls`, the mover is killed at each of those steps and resumed.
fn hash_scenario(rows: i64, stalls: &[&str]) {
    let private = PrivateCluster::start(&["--shards", "3"]);
    let (s2_primary, _) = private.0.shard_ports(2);
    let name = format!("rb{}_{}", std::process::id(), stalls.len());
    let table = "rb_t";
    let tables = format!("[[tables]]\nname = \"{table}\"\nkey = \"id\"\nstrategy = \"hash\"\n");
    let base = catalog_config(&name, &tables);
    let configure = |cfg: &mut toml::Value| {
        base(cfg);
        cfg["shards"].as_array_mut().expect("shards").truncate(2);
    };
    let mut mover = TestProxy::start_on(&private.0, configure);
    // Clients use a second proxy, which follows the catalog, so that the
    // mover's proxy can be killed under them.
    let clients = TestProxy::start_on(&private.0, configure);
    block_on(Duration::from_secs(900), async {
        let (c, _t) = connect_url(&clients.url()).await;
        c.simple_query(&format!(
            "create table {table} (id bigint primary key, v bigint not null)"
        ))
        .await
        .expect("create");
        let t = Instant::now();
        tokio::task::block_in_place(|| preload(&clients.url(), table, rows, None));
        eprintln!("preloaded {rows} rows in {:.1}s", t.elapsed().as_secs_f64());

        let keys: Vec<i64> = (1..=rows).step_by((rows / 2000).max(1) as usize).collect();
        let retry = !stalls.is_empty();
        let load = start_load(&clients.url(), table, 4, &keys, hash_key_space, retry, None);
        tokio::time::sleep(Duration::from_secs(1)).await;

        let out = mover.admin_psql(&format!("ADD SHARD s2 PRIMARY '127.0.0.1:{s2_primary}'"));
        assert!(out.stderr.contains("version 2"), "{}", out.stderr);
        let started = Instant::now();
        let mut stall_iter = stalls.iter();
        if let Some(first) = stall_iter.next() {
            // The mover's proxy again, with the stall hook.
            drop(mover);
            mover = TestProxy::start_with_env(
                &private.0,
                &[("SHARDWIRE_TEST_REBALANCE_STALL", first)],
                configure,
            );
        }
        let out = mover.admin_psql("REBALANCE START");
        assert!(out.stderr.contains("started"), "{}", out.stderr);
        let mut stall = stalls.first().copied();
        while let Some(step) = stall {
            wait_for_stall(&mover, step);
            mover.signal(libc::SIGKILL);
            mover.wait_exit(Duration::from_secs(10));
            stall = stall_iter.next().copied();
            mover = match stall {
                Some(next) => TestProxy::start_with_env(
                    &private.0,
                    &[("SHARDWIRE_TEST_REBALANCE_STALL", next)],
                    configure,
                ),
                None => TestProxy::start_on(&private.0, configure),
            };
            let out = mover.admin_psql("REBALANCE START");
            assert!(
                out.stderr.contains("resuming"),
                "after {step}: {}",
                out.stderr
            );
            eprintln!("killed at {step:?}, resumed: {}", out.stderr.trim());
        }
        let state =
            tokio::task::block_in_place(|| wait_rebalance(&mover, Duration::from_secs(600)));
        let ended = Instant::now();
        assert_eq!(state, "done");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let logs = load.finish().await;

        let status = mover.admin("REBALANCE STATUS");
        eprintln!("REBALANCE STATUS: {status:?}");
        if stalls.is_empty() {
            eprintln!("steps of the mover: {}", step_timeline(&mover.log()));
            // When the longest write started, from REBALANCE START on.
            if let Some((at, took)) = logs
                .iter()
                .flat_map(|l| l.writes.iter())
                .max_by_key(|(_, took)| *took)
            {
                eprintln!(
                    "steps of the mover: the longest write ({:.0} ms) started {:.2}s after REBALANCE START",
                    took.as_secs_f64() * 1e3,
                    at.saturating_duration_since(started).as_secs_f64()
                );
            }
        }
        let moved: i64 = status[1..]
            .iter()
            .map(|r| r[6].parse::<i64>().unwrap_or(0))
            .sum();
        let took = ended - started;
        let errors: Vec<&String> = logs.iter().flat_map(|l| l.errors.iter()).collect();
        let retried: u64 = logs.iter().map(|l| l.retried).sum();
        eprintln!(
            "rebalance of {rows} rows: moved {moved} in {:.1}s ({:.0} rows/s); longest write {:.0} ms; {}; client errors {}, retries {retried}",
            took.as_secs_f64(),
            moved as f64 / took.as_secs_f64(),
            longest_write(&logs).as_secs_f64() * 1e3,
            latency_report(&logs, (started, ended)),
            errors.len()
        );
        if stalls.is_empty() {
            assert!(
                errors.is_empty(),
                "clients saw {} errors: {:?}",
                errors.len(),
                &errors[..errors.len().min(5)]
            );
        } else {
            // Killing the mover's proxy never reaches these clients: they use
            // the other proxy. Retried statements are counted above.
            assert!(errors.is_empty(), "clients saw errors: {errors:?}");
        }
        let ring = shardwire::sharding::HashRing::new(
            &["s0", "s1", "s2"],
            shardwire::sharding::DEFAULT_VNODES,
        )
        .expect("ring");
        let shard_of = |id: i64| ring.shard_for(&shardwire::sharding::KeyValue::Int(id));
        let total = check_placement(&private.0, 3, table, &logs, rows, &shard_of, true).await;
        assert!(moved > rows / 5, "moved {moved} of {rows}");
        eprintln!("{total} rows, all on the shard the 3-shard ring says");
        assert_no_leftovers(&private.0, 3).await;
        drop(mover);
    });
    drop(clients);
}

/// No shard keeps a rebalance's publication, subscription, slot or guard.
async fn assert_no_leftovers(cluster: &Cluster, shards: u16) {
    for s in 0..shards {
        let (port, _) = cluster.shard_ports(s);
        let (d, _t) = connect_url(&format!("postgres://app:app@127.0.0.1:{port}/app")).await;
        let left = query_count(
            &d,
            "select (select count(*) from pg_publication where pubname like 'shardwire_%') \
             + (select count(*) from pg_subscription where subname like 'shardwire_%') \
             + (select count(*) from pg_trigger where tgname like 'shardwire_%') \
             + (select count(*) from pg_replication_slots where slot_name like 'shardwire_%')",
        )
        .await;
        assert_eq!(left, 0, "s{s} has rebalance leftovers");
    }
}

/// Wait until the mover logs that it stalled at `step`.
fn wait_for_stall(proxy: &TestProxy, step: &str) {
    let started = Instant::now();
    let want = format!("step=\"{step}\"");
    loop {
        let log = proxy.log();
        if log.lines().any(|l| {
            l.contains("SHARDWIRE_TEST_REBALANCE_STALL")
                && (l.contains(&want) || l.contains(&format!("step={step}")))
        }) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the mover did not reach {step}:\n{}",
            proxy.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rebalance_moves_rows_online_under_load() {
    hash_scenario(scenario_rows(20_000), &[]);
}

/// The mover killed (SIGKILL) at each journal step in turn, and at the
/// two points inside a step where it has made something (the streams;
/// the fence), each time resumed by REBALANCE START on a restarted proxy:
/// the same end state, and the clients (on the other proxy) see no errors.
#[test]
fn rebalance_resumes_after_a_kill_at_every_step() {
    hash_scenario(
        scenario_rows(5_000),
        &[
            "copying:subscribed",
            "catching up",
            "cutover",
            "cutover:fenced",
            "verifying",
            "cleaning up",
        ],
    );
}

fn region_of(id: i64) -> &'static str {
    ["us", "ca", "de"][id.rem_euclid(3) as usize]
}

fn range_key_space(client: i64, n: i64) -> i64 {
    // Past every preloaded key: the open-ended last range.
    10_000_000 + client * 1_000_000 + n
}

/// SPLIT RANGE or MOVE REGION under load on the shared 2-shard cluster.
fn move_scenario(geo: bool) {
    let rows = scenario_rows(20_000).min(1_000_000);
    let pid = std::process::id();
    let table = if geo {
        format!("rg_t{pid}")
    } else {
        format!("rr_t{pid}")
    };
    let name = format!("{table}_map");
    let half = rows / 2 + 1;
    let quarter = rows / 4 + 1;
    let tables = if geo {
        format!(
            "[[tables]]\nname = \"{table}\"\nkey = \"region\"\nstrategy = \"geo\"\n\
             regions = {{ s0 = [\"us\", \"ca\"], s1 = [\"de\"] }}\n"
        )
    } else {
        format!(
            "[[tables]]\nname = \"{table}\"\nkey = \"id\"\nstrategy = \"range\"\n\
             ranges = [{{ shard = \"s0\", from = 1, to = {half} }}, {{ shard = \"s1\", from = {half} }}]\n"
        )
    };
    let proxy = TestProxy::start(catalog_config(&name, &tables));
    let regions: Option<fn(i64) -> &'static str> = if geo { Some(region_of) } else { None };
    block_on(Duration::from_secs(600), async {
        let (c, _t) = connect_url(&proxy.url()).await;
        let ddl = if geo {
            format!("create table {table} (id bigint, v bigint not null, region text not null, primary key (region, id))")
        } else {
            format!("create table {table} (id bigint primary key, v bigint not null)")
        };
        c.simple_query(&ddl).await.expect("create");
        tokio::task::block_in_place(|| preload(&proxy.url(), &table, rows, regions));
        let keys: Vec<i64> = (1..=rows).step_by((rows / 2000).max(1) as usize).collect();
        let load = start_load(
            &proxy.url(),
            &table,
            4,
            &keys,
            range_key_space,
            false,
            regions,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let command = if geo {
            "MOVE REGION ca TO s1".to_string()
        } else {
            format!("SPLIT RANGE {table} AT {quarter} TO s1")
        };
        let started = Instant::now();
        let out = proxy.admin_psql(&command);
        assert!(out.stderr.contains("started"), "{command}: {}", out.stderr);
        let state =
            tokio::task::block_in_place(|| wait_rebalance(&proxy, Duration::from_secs(300)));
        let ended = Instant::now();
        assert_eq!(state, "done", "{command}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let logs = load.finish().await;
        let errors: Vec<&String> = logs.iter().flat_map(|l| l.errors.iter()).collect();
        let status = proxy.admin("REBALANCE STATUS");
        let moved: i64 = status[1..]
            .iter()
            .map(|r| r[6].parse::<i64>().unwrap_or(0))
            .sum();
        eprintln!(
            "{command} over {rows} rows: moved {moved} in {:.1}s; longest write {:.0} ms; {}; client errors {}",
            (ended - started).as_secs_f64(),
            longest_write(&logs).as_secs_f64() * 1e3,
            latency_report(&logs, (started, ended)),
            errors.len()
        );
        assert!(
            errors.is_empty(),
            "clients saw {} errors: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        let shard_of = move |id: i64| {
            if geo {
                usize::from(region_of(id) != "us")
            } else {
                usize::from(id >= quarter)
            }
        };
        let cluster = cluster();
        let private_view = Cluster {
            dir: cluster.dir.clone(),
            base_port: cluster.base_port,
            config_text: String::new(),
        };
        check_placement(&private_view, 2, &table, &logs, rows, &shard_of, true).await;
        assert!(moved >= rows / 5, "moved {moved}");
        // The map in force says the same.
        let topo = proxy.admin("SHOW TOPOLOGY");
        let rule = topo.iter().find(|r| r[4] == table).expect("rule");
        if geo {
            assert!(rule[5].contains(r#""s1":["de","ca"]"#), "{rule:?}");
        } else {
            assert!(
                rule[5].contains(&format!(r#""from":{quarter}"#)),
                "{rule:?}"
            );
        }
        c.simple_query(&format!("drop table {table}"))
            .await
            .expect("drop");
    });
}

#[test]
fn split_range_moves_rows_online_under_load() {
    move_scenario(false);
}

#[test]
fn move_region_moves_rows_online_under_load() {
    move_scenario(true);
}

/// Create `table` (id, v) through the 2-shard proxy, load 3,000 rows and
/// ADD SHARD s2 (empty, on `s2_primary`).
async fn create_preload_and_add_s2(proxy: &TestProxy, table: &str, s2_primary: u16) {
    let (c, _t) = connect_url(&proxy.url()).await;
    c.simple_query(&format!(
        "create table {table} (id bigint primary key, v bigint not null)"
    ))
    .await
    .expect("create");
    tokio::task::block_in_place(|| preload(&proxy.url(), table, 3000, None));
    let out = proxy.admin_psql(&format!("ADD SHARD s2 PRIMARY '127.0.0.1:{s2_primary}'"));
    assert!(out.stderr.contains("version 2"), "{}", out.stderr);
}

/// While a mover runs, a second rebalance (and any map change) is
/// refused. CANCEL before the cutover rolls back: the fence lifted, the
/// streams and guards gone, the copied rows deleted from the target, and
/// the old map still routes every key.
#[test]
fn cancel_rolls_back_and_one_rebalance_runs_at_a_time() {
    let private = PrivateCluster::start(&["--shards", "3"]);
    let (s2_primary, _) = private.0.shard_ports(2);
    let name = format!("rbc{}", std::process::id());
    let tables = "[[tables]]\nname = \"rbc_t\"\nkey = \"id\"\nstrategy = \"hash\"\n";
    let base = catalog_config(&name, tables);
    let configure = |cfg: &mut toml::Value| {
        base(cfg);
        cfg["shards"].as_array_mut().expect("shards").truncate(2);
    };
    let mut proxy = TestProxy::start_on(&private.0, configure);
    block_on(Duration::from_secs(300), async {
        create_preload_and_add_s2(&proxy, "rbc_t", s2_primary).await;
        drop(proxy);
        proxy = TestProxy::start_with_env(
            &private.0,
            &[("SHARDWIRE_TEST_REBALANCE_STALL", "cutover:fenced")],
            configure,
        );
        let out = proxy.admin_psql("REBALANCE START");
        assert!(out.stderr.contains("started"), "{}", out.stderr);
        tokio::task::block_in_place(|| wait_for_stall(&proxy, "cutover:fenced"));
        for (sql, says) in [
            ("REBALANCE START", "a rebalance is running"),
            ("REMOVE SHARD s2", "is not finished"),
            ("ADD SHARD s3 PRIMARY '127.0.0.1:1'", "is not finished"),
        ] {
            let out = proxy.admin_psql(sql);
            assert!(
                !out.success() && out.stderr.contains(says),
                "{sql}: {}",
                out.stderr
            );
        }
        let rows = proxy.admin("REBALANCE STATUS");
        assert_eq!(rows[0][5], "cutover", "{rows:?}");
        // The mover dies with the fence up; CANCEL rolls back without it.
        proxy.signal(libc::SIGKILL);
        proxy.wait_exit(Duration::from_secs(10));
        proxy = TestProxy::start_on(&private.0, configure);
        let out = proxy.admin_psql("REBALANCE CANCEL");
        assert!(out.stderr.contains("rolled back"), "{}", out.stderr);
        let rows = proxy.admin("REBALANCE STATUS");
        assert_eq!(rows[0][5], "cancelled", "{rows:?}");
        let topo = proxy.admin("SHOW TOPOLOGY");
        assert!(
            !topo.iter().any(|r| r[5].contains("fence")),
            "the fence is still up: {topo:?}"
        );
        // Every key still where the 2-shard ring says, and writable.
        let (c, _t) = connect_url(&proxy.url()).await;
        for id in [1i64, 2, 3, 1000, 2999] {
            c.execute("update rbc_t set v = v + 1 where id = $1", &[&id])
                .await
                .expect("write after cancel");
        }
        assert_eq!(query_count(&c, "select count(*) from rbc_t").await, 3000);
        let (s2, _t2) =
            connect_url(&format!("postgres://app:app@127.0.0.1:{s2_primary}/app")).await;
        assert_eq!(query_count(&s2, "select count(*) from rbc_t").await, 0);
        assert_no_leftovers(&private.0, 3).await;
        // A new rebalance may start now.
        let out = proxy.admin_psql("REBALANCE START");
        assert!(out.stderr.contains("started"), "{}", out.stderr);
        let state =
            tokio::task::block_in_place(|| wait_rebalance(&proxy, Duration::from_secs(120)));
        assert_eq!(state, "done");
        assert_eq!(query_count(&c, "select count(*) from rbc_t").await, 3000);
        assert!(query_count(&s2, "select count(*) from rbc_t").await > 500);

        // REMOVE SHARD drains it first, then the shard leaves the map.
        let out = proxy.admin_psql("REMOVE SHARD s2");
        assert!(out.stderr.contains("started"), "{}", out.stderr);
        let state =
            tokio::task::block_in_place(|| wait_rebalance(&proxy, Duration::from_secs(120)));
        assert_eq!(state, "done");
        let topo = proxy.admin("SHOW TOPOLOGY");
        assert!(
            !topo.iter().any(|r| r[3] == "shard" && r[4] == "s2"),
            "{topo:?}"
        );
        assert_eq!(query_count(&s2, "select count(*) from rbc_t").await, 0);
        let (c, _t) = connect_url(&proxy.url()).await;
        assert_eq!(query_count(&c, "select count(*) from rbc_t").await, 3000);
        for id in 1..=20i64 {
            c.execute("update rbc_t set v = v + 1 where id = $1", &[&id])
                .await
                .expect("write after the drain");
        }
    });
}

/// The verification finds a moved row that differs on the target, whether
/// it changed before the comparison the mover makes ahead of the fence
/// (found by that comparison) or after it (found by the target's change
/// log, inside the fence): either way the rebalance rolls back with
/// nothing cut over. Then, left alone, the same rebalance completes.
#[test]
fn verification_finds_a_row_changed_on_the_target() {
    let private = PrivateCluster::start(&["--shards", "3"]);
    let (s2_primary, _) = private.0.shard_ports(2);
    let name = format!("rbv{}", std::process::id());
    let tables = "[[tables]]\nname = \"rbv_t\"\nkey = \"id\"\nstrategy = \"hash\"\n";
    let base = catalog_config(&name, tables);
    let configure = |cfg: &mut toml::Value| {
        base(cfg);
        cfg["shards"].as_array_mut().expect("shards").truncate(2);
    };
    let mut proxy = TestProxy::start_on(&private.0, configure);
    block_on(Duration::from_secs(300), async {
        create_preload_and_add_s2(&proxy, "rbv_t", s2_primary).await;
        let (s2, _t2) =
            connect_url(&format!("postgres://app:app@127.0.0.1:{s2_primary}/app")).await;
        // s2 starts empty: every row on it was copied there by the move.
        for (pause_at, tamper) in [
            (
                "catching up:compare",
                "update rbv_t set v = v + 1000 where id = (select min(id) from rbv_t)",
            ),
            (
                "cutover",
                "delete from rbv_t where id = (select max(id) from rbv_t)",
            ),
        ] {
            drop(proxy);
            proxy = TestProxy::start_with_env(
                &private.0,
                &[(
                    "SHARDWIRE_TEST_REBALANCE_STALL",
                    format!("{pause_at}@5000").as_str(),
                )],
                configure,
            );
            let out = proxy.admin_psql("REBALANCE START");
            assert!(out.stderr.contains("started"), "{}", out.stderr);
            tokio::task::block_in_place(|| wait_for_stall(&proxy, pause_at));
            assert!(
                query_count(&s2, "select count(*) from rbv_t").await > 500,
                "the rows were not copied before {pause_at}"
            );
            let changed = s2.execute(tamper, &[]).await.expect("tamper");
            assert_eq!(changed, 1, "{tamper}");
            let state =
                tokio::task::block_in_place(|| wait_rebalance(&proxy, Duration::from_secs(120)));
            assert_eq!(state, "rolled back", "changed on the target at {pause_at}");
            assert!(
                proxy.log().contains("rows differ"),
                "{}",
                proxy.log_tail(30)
            );
            // Nothing was cut over: every key still on its old shard, with
            // the value it had.
            let (c, _t) = connect_url(&proxy.url()).await;
            assert_eq!(
                query_count(&c, "select count(*) from rbv_t where v = 0").await,
                3000
            );
            assert_eq!(query_count(&s2, "select count(*) from rbv_t").await, 0);
            let topo = proxy.admin("SHOW TOPOLOGY");
            assert!(
                !topo.iter().any(|r| r[5].contains("fence")),
                "the fence is still up: {topo:?}"
            );
            assert_no_leftovers(&private.0, 3).await;
        }
        drop(proxy);
        proxy = TestProxy::start_on(&private.0, configure);
        let out = proxy.admin_psql("REBALANCE START");
        assert!(out.stderr.contains("started"), "{}", out.stderr);
        let state =
            tokio::task::block_in_place(|| wait_rebalance(&proxy, Duration::from_secs(120)));
        assert_eq!(state, "done");
        let (c, _t) = connect_url(&proxy.url()).await;
        assert_eq!(
            query_count(&c, "select count(*) from rbv_t where v = 0").await,
            3000
        );
        assert!(query_count(&s2, "select count(*) from rbv_t").await > 500);
        assert_no_leftovers(&private.0, 3).await;
    });
}

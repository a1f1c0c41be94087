//! Two-phase commit of transactions that write on several shards: all
//! shards commit or none, even when the proxy is killed in the middle.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::common::*;

/// The tests of this module look at every prepared transaction of the
/// cluster: one at a time.
fn prepared_xacts_lock() -> std::sync::MutexGuard<'static, ()> {
    static L: std::sync::OnceLock<std::sync::Mutex<()>> = std::sync::OnceLock::new();
    L.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// `table` sharded by hash of `id`; recovery settles transactions left in
/// doubt for `in_doubt_after`.
fn sharded<'a>(table: &'a str, in_doubt_after: &'a str) -> impl FnOnce(&mut toml::Value) + 'a {
    move |cfg: &mut toml::Value| {
        set(cfg, "transactions.in_doubt_after", in_doubt_after);
        set(cfg, "transactions.recovery_interval", "300ms");
        set_tables(
            cfg,
            &format!("[[tables]]\nname = \"{table}\"\nkey = \"id\"\nstrategy = \"hash\"\n"),
        );
    }
}

/// A key of `table` on each shard, by the proxy's own routing.
fn keys(proxy: &TestProxy, table: &str) -> (i32, i32) {
    let on = |shard: &str| {
        (1..1000)
            .find(|k| {
                route_shard(
                    proxy,
                    &format!("select * from {table} where id = $1"),
                    &[&k.to_string()],
                ) == shard
            })
            .expect("a key on the shard")
    };
    (on("s0"), on("s1"))
}

/// Run each statement as its own query (one query string cannot span
/// shards); the first error ends it.
async fn run_each(c: &Client, statements: &[String]) -> Result<(), tokio_postgres::Error> {
    for s in statements {
        c.batch_execute(s).await?;
    }
    Ok(())
}

/// BEGIN, one insert per key, then `end`.
fn tx(table: &str, keys: &[i32], end: &str) -> Vec<String> {
    let mut v = vec!["BEGIN".to_string()];
    v.extend(
        keys.iter()
            .map(|k| format!("INSERT INTO {table} (id) VALUES ({k})")),
    );
    v.push(end.to_string());
    v
}

/// Prepared transactions whose global id is LIKE `gid`, on each shard's
/// primary.
async fn prepared_like(shards: &[Client; 2], gid: &str) -> [i64; 2] {
    let sql = format!(
        "select count(*) from pg_prepared_xacts where gid like '{gid}' and database = current_database()"
    );
    [
        query_count(&shards[0], &sql).await,
        query_count(&shards[1], &sql).await,
    ]
}

/// Waits until no shardwire transaction is prepared on either shard
/// (other tests' two-phase commits pass through that state briefly).
async fn none_prepared(shards: &[Client; 2]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while prepared_like(shards, "sw\\_%").await != [0, 0] {
        assert!(Instant::now() < deadline, "transactions stay prepared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rows(shards: &[Client; 2], table: &str) -> [i64; 2] {
    let sql = format!("select count(*) from {table}");
    [
        query_count(&shards[0], &sql).await,
        query_count(&shards[1], &sql).await,
    ]
}

#[test]
fn a_transaction_on_two_shards_commits_on_both() {
    let _one = prepared_xacts_lock();
    let proxy = TestProxy::start(sharded("tp_ok", "3s"));
    let (k0, k1) = keys(&proxy, "tp_ok");
    block_on(Duration::from_secs(60), async {
        let shards =
            connect_shards("drop table if exists tp_ok; create table tp_ok (id int primary key)")
                .await;
        let c = proxy.app_client().await;
        run_each(&c, &tx("tp_ok", &[k0, k1], "COMMIT"))
            .await
            .expect("commit on two shards");
        assert_eq!(rows(&shards, "tp_ok").await, [1, 1]);
        none_prepared(&shards).await;
        // The decision was recorded in the catalog (shard 0) and dropped.
        assert_eq!(
            query_count(&shards[0], "select count(*) from shardwire.tx_decisions where decision = 'commit' and decided_at > now() - interval '1 minute'").await,
            0
        );
        // A rollback leaves nothing.
        run_each(&c, &tx("tp_ok", &[k0 + 1000, k1 + 1000], "ROLLBACK"))
            .await
            .expect("rollback");
        assert_eq!(rows(&shards, "tp_ok").await, [1, 1]);
        // A failure on one shard at PREPARE rolls back both.
        let e = run_each(&c, &tx("tp_ok", &[k0 + 2000, k1], "COMMIT"))
            .await
            .expect_err("duplicate key accepted");
        assert_eq!(sqlstate(&e), "23505", "{e}");
        c.batch_execute("ROLLBACK").await.ok();
        assert_eq!(rows(&shards, "tp_ok").await, [1, 1]);
        none_prepared(&shards).await;
    });
}

/// `table` created afresh on both shards, and a transaction inserting
/// `k0` and `k1` committed through `proxy` in a task of its own, until the
/// proxy reaches its failpoint: the shards, the committing task and the
/// transaction's gid.
async fn commit_until_failpoint(
    proxy: &TestProxy,
    table: &str,
    k0: i32,
    k1: i32,
) -> (
    [Client; 2],
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    String,
) {
    let shards = connect_shards(&format!(
        "drop table if exists {table}; create table {table} (id int primary key)"
    ))
    .await;
    let client = proxy.app_client().await;
    let statements = tx(table, &[k0, k1], "COMMIT");
    let commit = tokio::spawn(async move { run_each(&client, &statements).await });
    let gid = failpoint_gid(proxy).await;
    (shards, commit, gid)
}

/// The transaction a proxy's failpoint stopped in (from its log line).
async fn failpoint_gid(proxy: &TestProxy) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = proxy.log();
        if let Some(line) = log.lines().find(|l| l.contains("failpoint reached")) {
            let at = line.find("gid=").expect("gid in the failpoint line") + 4;
            return line[at..]
                .trim_start_matches('"')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
        }
        assert!(Instant::now() < deadline, "failpoint not reached:\n{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kill the proxy at `failpoint` during a two-shard COMMIT; another proxy's
/// recovery must then leave both shards agreeing, nothing prepared.
fn kill_during_commit(failpoint: &str, table: &str) -> [i64; 2] {
    kill_during_commit_then(failpoint, table, |_| {})
}

/// `kill_during_commit`, the rescuing proxy's config changed by `rescue`.
fn kill_during_commit_then(
    failpoint: &str,
    table: &str,
    rescue: impl FnOnce(&mut toml::Value),
) -> [i64; 2] {
    let _one = prepared_xacts_lock();
    // The doomed proxy's own recovery must not settle it first.
    let mut doomed = TestProxy::start_with_env(
        cluster(),
        &[("SHARDWIRE_FAILPOINT", failpoint)],
        sharded(table, "10m"),
    );
    let (k0, k1) = keys(&doomed, table);
    block_on(Duration::from_secs(90), async {
        let (shards, commit, gid) = commit_until_failpoint(&doomed, table, k0, k1).await;
        // Prepared on one or both shards, decided or not (one committed
        // already, after the first COMMIT PREPARED): now the proxy dies.
        let at_kill = prepared_like(&shards, &gid).await;
        let expected: i64 = if failpoint.starts_with("after_first_") {
            1
        } else {
            2
        };
        assert_eq!(at_kill.iter().sum::<i64>(), expected, "{gid}: {at_kill:?}");
        doomed.signal(libc::SIGKILL);
        doomed
            .wait_exit(Duration::from_secs(10))
            .expect("killed proxy exits");
        assert!(
            commit.await.expect("task").is_err(),
            "the client saw a commit"
        );
        assert_eq!(
            prepared_like(&shards, &gid).await,
            at_kill,
            "still in doubt after the kill"
        );

        // A new proxy's recovery settles it.
        let _rescuer = TestProxy::start(|c| {
            sharded(table, "1s")(c);
            rescue(c);
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while prepared_like(&shards, &gid).await != [0, 0] {
            assert!(
                Instant::now() < deadline,
                "recovery left prepared transactions"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        rows(&shards, table).await
    })
}

#[test]
fn a_commit_decided_before_the_crash_is_finished_by_recovery() {
    assert_eq!(kill_during_commit("after_decision", "tp_commit"), [1, 1]);
}

/// Issue 21 (suspected, real): the decision lives on the first shard of
/// the config; a proxy whose config lists the shards in another order
/// looked only on its own first shard, found no decision and rolled back a
/// transaction decided commit.
#[test]
fn recovery_finds_a_decision_after_the_shards_were_reordered() {
    let reorder = |c: &mut toml::Value| {
        c["shards"].as_array_mut().expect("[[shards]]").reverse();
    };
    assert_eq!(
        kill_during_commit_then("after_decision", "tp_reorder", reorder),
        [1, 1]
    );
}

#[test]
fn a_commit_undecided_at_the_crash_is_rolled_back_by_recovery() {
    assert_eq!(kill_during_commit("after_prepare", "tp_abort"), [0, 0]);
}

/// The proxy dies with one shard prepared and the other still in its
/// transaction: that one rolls back with the connection, and recovery
/// rolls back the prepared one.
#[test]
fn a_crash_between_two_prepares_rolls_back_both() {
    assert_eq!(
        kill_during_commit("after_first_prepare", "tp_half_prep"),
        [0, 0]
    );
}

/// The proxy dies after the first COMMIT PREPARED: the decision says
/// commit, and recovery commits the other shard.
#[test]
fn a_crash_between_two_commit_prepared_commits_both() {
    assert_eq!(
        kill_during_commit("after_first_commit", "tp_half_commit"),
        [1, 1]
    );
}

/// pgbench's TPC-B-like script on 2 shards, tables sharded by their keys so
/// most transactions span shards: no failed transaction, and the balances
/// agree afterwards.
#[test]
fn tpcb_across_shards_keeps_the_books_balanced() {
    let seconds: u64 = std::env::var("SHARDWIRE_TPCB_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        // The 60 s run is `SHARDWIRE_TPCB_SECONDS=60`; the suite
        // keeps it short, as 16 busy clients slow every other test.
        .unwrap_or(15);
    let _tables = pgbench_tables_lock();
    let _one = prepared_xacts_lock();
    let proxy = TestProxy::start(|cfg| {
        let mut rules = String::new();
        for (t, k) in [
            ("accounts", "aid"),
            ("tellers", "tid"),
            ("branches", "bid"),
            ("history", "aid"),
        ] {
            rules.push_str(&format!(
                "[[tables]]\nname = \"pgbench_{t}\"\nkey = \"{k}\"\nstrategy = \"hash\"\n"
            ));
        }
        set_tables(cfg, &rules);
    });
    pgbench(
        proxy.port,
        &["-i", "-s", "2", "-q"],
        Duration::from_secs(180),
    )
    .ok("pgbench -i");
    let out = pgbench(
        proxy.port,
        &["-n", "-c", "16", "-j", "2", "-T", &seconds.to_string()],
        Duration::from_secs(seconds + 120),
    );
    eprintln!("{}", out.stdout);
    assert_pgbench_clean(&out);
    let done = number_after(&out.stdout, "number of transactions actually processed:");
    assert!(done > 0.0);
    block_on(Duration::from_secs(60), async {
        let shards = [connect_shard(0).await, connect_shard(1).await];
        let mut sums = [0i64; 4];
        for s in &shards {
            for (i, sql) in [
                "select coalesce(sum(abalance), 0) from pgbench_accounts",
                "select coalesce(sum(tbalance), 0) from pgbench_tellers",
                "select coalesce(sum(bbalance), 0) from pgbench_branches",
                "select coalesce(sum(delta), 0) from pgbench_history",
            ]
            .iter()
            .enumerate()
            {
                sums[i] += query_count(s, sql).await;
            }
        }
        let history = query_count(&shards[0], "select count(*) from pgbench_history").await
            + query_count(&shards[1], "select count(*) from pgbench_history").await;
        eprintln!("TPC-B: {done} transactions; sums (accounts, tellers, branches, history) = {sums:?}; history rows {history}");
        assert_eq!(history as f64, done, "one history row per transaction");
        assert!(
            sums.iter().all(|s| *s == sums[0]),
            "unbalanced books: {sums:?}"
        );
        none_prepared(&shards).await;
    });
}

/// A statement over both shards inside a transaction that spans them goes
/// to both at once (execute/fanout.rs): each shard sleeps `NAP` seconds
/// per row and holds one row, so one after the other would take twice
/// `NAP`. Both protocols.
#[test]
fn a_scatter_inside_a_transaction_runs_on_both_shards_at_once() {
    const NAP: f64 = 0.6;
    let proxy = TestProxy::start(sharded("tp_par", "3s"));
    let (k0, k1) = keys(&proxy, "tp_par");
    block_on(Duration::from_secs(60), async {
        let _shards =
            connect_shards("drop table if exists tp_par; create table tp_par (id int primary key)")
                .await;
        let c = proxy.app_client().await;
        let mut statements = tx("tp_par", &[k0, k1], "SELECT 1");
        statements.pop();
        run_each(&c, &statements)
            .await
            .expect("a transaction on two shards");
        let sequential = Duration::from_secs_f64(2.0 * NAP);

        let started = Instant::now();
        let simple = c
            .simple_query(&format!(
                "select count(*) from tp_par where pg_sleep({NAP}) is not null"
            ))
            .await
            .expect("scatter in the transaction (simple)");
        let took = started.elapsed();
        let count = simple.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(count.as_deref(), Some("2"));
        eprintln!(
            "scatter in a two-shard transaction, simple protocol: {took:?} (two {NAP}s shards)"
        );
        assert!(
            took < sequential,
            "simple protocol: {took:?}, the shards ran one after the other"
        );

        let started = Instant::now();
        let row = c
            .query_one(
                "select count(*) from tp_par where pg_sleep($1) is not null",
                &[&NAP],
            )
            .await
            .expect("scatter in the transaction (extended)");
        let took = started.elapsed();
        assert_eq!(row.get::<_, i64>(0), 2);
        eprintln!(
            "scatter in a two-shard transaction, extended protocol: {took:?} (two {NAP}s shards)"
        );
        assert!(
            took < sequential,
            "extended protocol: {took:?}, the shards ran one after the other"
        );
        c.batch_execute("ROLLBACK").await.expect("rollback");
    });
}

/// Issue 21, case 4: every configured user commits across shards, whichever
/// of them created the decision catalog. Before, a second user got
/// `42501 permission denied for schema shardwire`: the catalog belonged to
/// the first user, with no grants. (A private cluster: the shared one's
/// catalog may predate the grants.)
#[test]
fn every_configured_user_commits_across_shards() {
    let pc = PrivateCluster::start(&[]);
    for shard in ["s0", "s1"] {
        pc.run(
            "psql",
            &[
                "--shard",
                shard,
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                "CREATE ROLE app2 LOGIN PASSWORD 'app2'; GRANT CREATE ON DATABASE app TO app2",
            ],
        );
    }
    let table = "tp_users";
    let proxy = TestProxy::start_on(&pc.0, |c| {
        sharded(table, "30s")(c);
        add_user(
            c,
            "name = \"app2\"\npassword = \"app2\"\nserver_user = \"app2\"\nserver_password = \"app2\"",
        );
    });
    let (k0, k1) = keys(&proxy, table);
    let app2 = proxy.pg_config("app2", "app2");
    let app = proxy.pg_config("app", "app");
    block_on(Duration::from_secs(90), async move {
        let (owner, _co) = connect(&app).await;
        owner
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY); \
                 GRANT ALL ON {table} TO app2"
            ))
            .await
            .expect("create");
        // The CREATE TABLE above committed on both shards in two phases,
        // as app: the catalog is app's. app2 commits across shards too.
        let (a2, _c2) = connect(&app2).await;
        run_each(&a2, &tx(table, &[k0, k1], "COMMIT"))
            .await
            .expect("the second user's commit across shards");
        run_each(&owner, &tx(table, &[k0 + 1000, k1 + 1000], "COMMIT"))
            .await
            .expect("the owner's commit across shards");
        let n: i64 = owner
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 4);
    });
}

/// Issue 21, case 5: a shard that stalls in the middle of phase one (its
/// backend stopped while the proxy waits for its PREPARE) must not lead to
/// a half commit. Before, the proxy waited 30 s for that PREPARE while
/// recovery, after `in_doubt_after`, decided abort for the other shard,
/// rolled it back and later dropped the abort; the proxy then recorded
/// commit, took COMMIT PREPARED's "does not exist" for success and told the
/// client COMMIT with one shard's row missing. Now phase one ends within
/// `transactions.prepare_timeout` (shorter than `in_doubt_after`, which
/// the config checks), the client is told the transaction rolled back, and
/// the stalled PREPARE, when it finally runs, is rolled back by recovery.
#[test]
fn a_shard_stalled_during_prepare_never_leaves_a_half_commit() {
    let _one = prepared_xacts_lock();
    let table = "tp_stall";
    let proxy = TestProxy::start(sharded(table, "2s"));
    let (k0, k1) = keys(&proxy, table);
    block_on(Duration::from_secs(90), async {
        let shards = connect_shards(&format!(
            "drop table if exists {table}; create table {table} (id int primary key)"
        ))
        .await;
        let c = proxy.app_client().await;
        run_each(&c, &tx(table, &[k0, k1], "SELECT 1")[..3])
            .await
            .expect("begin and insert on both shards");
        // The proxy's backend on shard 1, idle in the transaction.
        let pid: i32 = shards[1]
            .query_one(
                &format!(
                    "select pid from pg_stat_activity where state = 'idle in transaction' \
                     and query ilike 'insert into {table}%'"
                ),
                &[],
            )
            .await
            .expect("the transaction's backend on shard 1")
            .get(0);
        let signal = |sig: &str| {
            let ok = std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .expect("kill")
                .success();
            assert!(ok, "kill {sig} {pid}");
        };
        signal("-STOP");
        let started = Instant::now();
        let commit = tokio::spawn(async move {
            let r = c.batch_execute("COMMIT").await;
            (r, c, started.elapsed())
        });
        // Longer than in_doubt_after and a recovery pass or two.
        tokio::time::sleep(Duration::from_secs(6)).await;
        signal("-CONT");
        let (result, c, answered_after) = commit.await.expect("commit task");
        let told_commit = result.is_ok();
        if let Err(e) = &result {
            assert_eq!(sqlstate(e), "08006", "{e}");
            assert!(
                answered_after < Duration::from_secs(5),
                "the client waited {answered_after:?} for the stalled shard"
            );
        }
        // Recovery settles the PREPARE that ran once the shard resumed.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let prepared = prepared_like(&shards, "sw_%").await;
            if prepared == [0, 0] {
                break;
            }
            assert!(Instant::now() < deadline, "still prepared: {prepared:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let counts = rows(&shards, table).await;
        let expected = if told_commit { [1, 1] } else { [0, 0] };
        assert_eq!(counts, expected, "told commit: {told_commit}");
        drop(c);
    });
}

/// Stop (SIGSTOP) the proxy's backend on shard `shard` while the proxy
/// pauses at `failpoint` (`name:seconds`), past in_doubt_after, then let
/// it go on. Returns whether the client was told COMMIT, and the rows each
/// shard has once nothing is prepared any more. A client told COMMIT must
/// find both rows; one told of an uncertain outcome (08006) must find the
/// shards agreeing.
fn stall_during_commit(failpoint: &str, shard: usize, table: &str) -> (bool, [i64; 2]) {
    let _one = prepared_xacts_lock();
    let proxy = TestProxy::start_with_env(
        cluster(),
        &[("SHARDWIRE_FAILPOINT", failpoint)],
        sharded(table, "2s"),
    );
    let (k0, k1) = keys(&proxy, table);
    block_on(Duration::from_secs(90), async {
        let (shards, commit, gid) = commit_until_failpoint(&proxy, table, k0, k1).await;
        // The proxy's connection on that shard last ran the PREPARE (or
        // the decision), both of which name the transaction.
        // Polled: under load the statistics may not show that query yet
        // (pg_stat_activity is refreshed as a backend reports it).
        let started = Instant::now();
        let pid: i32 = loop {
            let rows = shards[shard]
                .query(
                    "select pid from pg_stat_activity where query like '%' || $1 || '%' \
                     and pid <> pg_backend_pid()",
                    &[&gid],
                )
                .await
                .expect("pg_stat_activity");
            if let [row] = rows.as_slice() {
                break row.get(0);
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the transaction's backend: {} backends name {gid}",
                rows.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let signal = |sig: &str| {
            let ok = std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .expect("kill")
                .success();
            assert!(ok, "kill {sig} {pid}");
        };
        signal("-STOP");
        // Past in_doubt_after, with recovery passes.
        tokio::time::sleep(Duration::from_secs(7)).await;
        signal("-CONT");
        let result = commit.await.expect("commit task");
        if let Err(e) = &result {
            assert_eq!(sqlstate(e), "08006", "{e}");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while prepared_like(&shards, &gid).await != [0, 0] {
            assert!(Instant::now() < deadline, "still prepared");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (result.is_ok(), rows(&shards, table).await)
    })
}

/// A shard stalls at COMMIT PREPARED, after the decision: the client is
/// told COMMIT within the prepare timeout, and recovery commits that shard
/// while its old backend is still stopped.
#[test]
fn a_shard_stalled_at_commit_prepared_is_committed_by_recovery() {
    let (told_commit, rows) = stall_during_commit("after_decision:3", 1, "tp_stall_cp");
    assert!(told_commit, "the decision was commit");
    assert_eq!(rows, [1, 1]);
}

/// The catalog's shard stalls while the decision is being recorded: the
/// client is told the outcome is uncertain (or COMMIT, had the decision
/// gone elsewhere), and the shards agree afterwards.
#[test]
fn a_catalog_stalled_at_the_decision_leaves_the_shards_agreeing() {
    let (told_commit, rows) = stall_during_commit("after_prepare:3", 0, "tp_stall_dec");
    if told_commit {
        assert_eq!(rows, [1, 1]);
    } else {
        assert!(rows == [1, 1] || rows == [0, 0], "half a commit: {rows:?}");
    }
}

//! Client limits: max_client_connections, per-user max_connections, rate
//! limits, statement and idle-in-transaction timeouts, the bounded
//! checkout queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::common::*;

/// Raises this process's soft RLIMIT_NOFILE to at least `want` (up to the
/// hard limit). A proxy started afterwards inherits it.
fn raise_nofile(want: libc::rlim_t) -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) },
        0,
        "getrlimit"
    );
    if lim.rlim_cur < want {
        lim.rlim_cur = want.min(lim.rlim_max);
        assert_eq!(
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) },
            0,
            "setrlimit"
        );
    }
    lim.rlim_cur
}

/// The soft "Max open files" limit of process `pid`.
fn nofile_of(pid: i32) -> libc::rlim_t {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let soft = line.split_whitespace().nth(3).expect("soft limit");
    soft.parse().unwrap_or(libc::RLIM_INFINITY) // "unlimited"
}

/// VmRSS of process `pid`, in kB.
fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// A user with md5 auth (cheap logins) on the app role, plus `extra` TOML.
fn add_limited_user(config: &mut toml::Value, name: &str, extra: &str) {
    add_user(
        config,
        &format!(
            "name = \"{name}\"\npassword = \"{name}\"\nauth = \"md5\"\nserver_user = \"app\"\nserver_password = \"app\"\n{extra}"
        ),
    );
}

/// Sum of a SHOW POOLS column over every pool of the proxy.
fn pools_column(proxy: &TestProxy, column: &str) -> i64 {
    let idx = [
        "shard", "server", "database", "user", "active", "idle", "waiting", "max",
    ]
    .iter()
    .position(|c| *c == column)
    .expect("known column");
    proxy
        .admin("SHOW POOLS")
        .iter()
        .map(|r| r[idx].trim().parse::<i64>().expect("numeric column"))
        .sum()
}

/// Polls SHOW POOLS until `column` sums to `want`.
async fn wait_pools(proxy: &TestProxy, column: &str, want: i64, secs: u64) {
    let start = Instant::now();
    loop {
        let n = pools_column(proxy, column);
        if n == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "SHOW POOLS {column} is {n}, expected {want} within {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connects, retrying while the proxy still counts sessions that are closing.
async fn connect_when_room(
    config: &tokio_postgres::Config,
    secs: u64,
) -> (tokio_postgres::Client, ConnTask) {
    let start = Instant::now();
    loop {
        match try_connect(config).await {
            Ok(c) => return c,
            Err(e) if e.code().is_some_and(|c| c.code() == "53300") => {
                assert!(
                    start.elapsed() < Duration::from_secs(secs),
                    "still refused after {secs}s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }
}

fn metrics(proxy: &TestProxy, name: &str) -> f64 {
    let (status, body) = proxy.http_get("/metrics");
    assert_eq!(status, 200, "{body}");
    metric(&body, name, &[])
}

#[test]
fn max_client_connections_admits_exactly_the_limit() {
    const CLIENTS: usize = 1000;
    const LIMIT: usize = 500;
    // One fd per client here, and the proxy (started after the raise,
    // so it inherits the limit) one per session plus its servers; leave
    // room for the other tests of the binary.
    let nofile = raise_nofile(4 * CLIENTS as libc::rlim_t + 1024);
    assert!(
        nofile >= 2 * CLIENTS as libc::rlim_t,
        "RLIMIT_NOFILE is {nofile}; this test needs {}",
        2 * CLIENTS
    );
    let proxy = TestProxy::start(|c| {
        set(c, "limits.max_client_connections", LIMIT as i64);
        set(c, "pool.max_size", 10);
        set(c, "pool.checkout_timeout", "60s");
        add_fast_user(c);
    });
    let pid = proxy.pid();
    assert!(
        nofile_of(pid) >= LIMIT as libc::rlim_t + 256,
        "the proxy may open only {} files",
        nofile_of(pid)
    );
    let config = proxy.pg_config("fast", "fast");
    let idle_rss = rss_kb(pid);
    block_on(Duration::from_secs(180), async move {
        let start = Instant::now();
        // Bounds handshakes in flight, not connections held.
        let gate = Arc::new(Semaphore::new(100));
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let (config, gate) = (config.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                let permit = gate.acquire_owned().await.expect("semaphore");
                let (client, conn) = try_connect(&config).await?;
                drop(permit);
                // 500 sessions through a pool of 10.
                let row = within(90, "SELECT 1", client.query_one("select 1", &[]))
                    .await
                    .expect("SELECT 1 in an admitted session");
                assert_eq!(row.get::<_, i32>(0), 1);
                Ok::<_, tokio_postgres::Error>((client, conn))
            }));
        }
        let mut sessions = Vec::new();
        let mut refused = Vec::new();
        for t in tasks {
            match t.await.expect("client task") {
                Ok(s) => sessions.push(s),
                Err(e) => refused.push(e),
            }
        }
        eprintln!(
            "{} admitted, {} refused in {:.1}s",
            sessions.len(),
            refused.len(),
            start.elapsed().as_secs_f64()
        );
        for e in &refused {
            assert_eq!(sqlstate(e), "53300", "{e:?}");
            assert_eq!(db_message(e), "sorry, too many clients already");
        }
        assert_eq!(sessions.len(), LIMIT);
        assert_eq!(refused.len(), CLIENTS - LIMIT);
        assert!(sessions.iter().all(|(c, _)| !c.is_closed()));

        let rss = rss_kb(pid);
        eprintln!("RSS idle: {idle_rss} kB; RSS with {LIMIT} sessions: {rss} kB");
        assert!(
            rss < 300 * 1024,
            "the proxy uses {rss} kB with {LIMIT} sessions"
        );

        // Still all usable, and the pool was shared.
        for (c, _) in sessions.iter().take(20) {
            within(30, "SELECT 1 again", c.simple_query("select 1"))
                .await
                .expect("SELECT 1 again");
        }

        for (client, conn) in sessions {
            drop(client);
            let _ = within(30, "connection end", conn).await;
        }
        let (c, _conn) = connect_when_room(&config, 15).await;
        c.simple_query("select 1")
            .await
            .expect("query after reopening");
    });
    let max_pool = pools_column(&proxy, "max");
    assert_eq!(max_pool, 10, "one pool of 10 served everyone");
}

#[test]
fn per_user_max_connections() {
    let proxy = TestProxy::start(|c| {
        add_limited_user(c, "capped", "max_connections = 3");
        add_fast_user(c);
    });
    let config = proxy.pg_config("capped", "capped");
    let other = proxy.pg_config("fast", "fast");
    block_on(Duration::from_secs(60), async move {
        let mut held = Vec::new();
        for _ in 0..3 {
            let (c, conn) = connect(&config).await;
            c.simple_query("select 1").await.expect("query");
            held.push((c, conn));
        }
        let Err(e) = try_connect(&config).await else {
            panic!("a fourth session of capped must be refused");
        };
        assert_eq!(sqlstate(&e), "53300", "{e:?}");
        assert_eq!(db_message(&e), "too many connections for role \"capped\"");

        // Another user is not limited by capped's sessions.
        let (o, _oconn) = connect(&other).await;
        o.simple_query("select 1").await.expect("other user");

        let (c, conn) = held.pop().expect("one session");
        drop(c);
        let _ = within(10, "connection end", conn).await;
        let (c, _conn) = connect_when_room(&config, 10).await;
        c.simple_query("select 1").await.expect("query");

        // And at the limit again.
        let Err(e) = try_connect(&config).await else {
            panic!("a fourth session of capped must be refused again");
        };
        assert_eq!(sqlstate(&e), "53300", "{e:?}");
    });
}

#[test]
fn rate_limit_error_mode_refuses_with_53400() {
    let proxy = TestProxy::start(|c| {
        add_limited_user(
            c,
            "throttled",
            "rate_limit = 5.0\nrate_limit_burst = 5.0\nrate_limit_action = \"error\"",
        );
    });
    let config = proxy.pg_config("throttled", "throttled");
    let before = metrics(&proxy, "shardwire_rate_limited_total");
    let refused = block_on(Duration::from_secs(60), async move {
        let (c, _conn) = connect(&config).await;
        // 20 statements pipelined: they reach the proxy together, however
        // slow this machine is.
        let results = futures_util::future::join_all(
            (0..20).map(|i| c.simple_query(if i % 2 == 0 { "select 1" } else { "select 2" })),
        )
        .await;
        let mut ok = 0;
        let mut refused = 0;
        for r in results {
            match r {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert_eq!(sqlstate(&e), "53400", "{e:?}");
                    let m = db_message(&e);
                    assert!(m.contains("rate limit"), "{m}");
                    refused += 1;
                }
            }
        }
        eprintln!("rate limit (error): {ok} ran, {refused} refused");
        assert!(ok >= 5, "the burst of 5 must pass; {ok} did");
        assert!(refused >= 5, "only {refused} of 20 were refused");
        // The session stays usable once the bucket refills.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let rows = c.simple_query("select 3").await.expect("after refill");
        assert_eq!(simple_rows(&rows), vec![vec![Some("3".to_string())]]);
        refused
    });
    let after = metrics(&proxy, "shardwire_rate_limited_total");
    assert!(
        after - before >= refused as f64,
        "shardwire_rate_limited_total went from {before} to {after}, {refused} refused"
    );
}

#[test]
fn rate_limit_queue_mode_delays_without_failing() {
    let proxy = TestProxy::start(|c| {
        add_limited_user(
            c,
            "queued",
            "rate_limit = 20.0\nrate_limit_burst = 1.0\nrate_limit_action = \"queue\"",
        );
    });
    let config = proxy.pg_config("queued", "queued");
    let before = metrics(&proxy, "shardwire_rate_limited_total");
    block_on(Duration::from_secs(60), async move {
        let (c, _conn) = connect(&config).await;
        let start = Instant::now();
        for i in 0..21 {
            within(10, "queued statement", c.simple_query("select 1"))
                .await
                .unwrap_or_else(|e| panic!("statement {i} failed: {e:?}"));
        }
        let took = start.elapsed();
        eprintln!("rate limit (queue): 21 statements in {took:?}");
        assert!(
            took >= Duration::from_millis(900),
            "21 statements at 20/s with a burst of 1 took only {took:?}"
        );
    });
    let after = metrics(&proxy, "shardwire_rate_limited_total");
    assert!(
        after - before >= 10.0,
        "shardwire_rate_limited_total went from {before} to {after}"
    );
}

#[test]
fn statement_timeout_cancels_only_the_slow_statement() {
    let proxy = TestProxy::start(|c| {
        set(c, "limits.statement_timeout", "500ms");
        add_fast_user(c);
    });
    let config = proxy.pg_config("fast", "fast");
    let before = metrics(&proxy, "shardwire_statement_timeouts_total");
    let marker = format!("sw_timeout_{:08x}", rand::random::<u32>());
    block_on(Duration::from_secs(90), async move {
        let (a, _aconn) = connect(&config).await;
        let (b, _bconn) = connect(&config).await;
        let direct = connect_direct().await;

        let other = tokio::spawn(async move {
            for _ in 0..10 {
                b.simple_query("select pg_sleep(0.05)")
                    .await
                    .expect("a quick statement of another client");
            }
            b
        });

        let sql = format!("select pg_sleep(30) /* {marker} */");
        let start = Instant::now();
        let e = within(20, "slow statement", a.simple_query(&sql))
            .await
            .expect_err("pg_sleep(30) must be cancelled");
        let took = start.elapsed();
        assert_eq!(sqlstate(&e), "57014", "{e:?}");
        let m = db_message(&e);
        assert!(m.contains("statement timeout"), "{m}");
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(10),
            "cancelled after {took:?}"
        );

        // The same session goes on.
        let rows = a.simple_query("select 1").await.expect("select 1 after");
        assert_eq!(simple_rows(&rows), vec![vec![Some("1".to_string())]]);

        // The other client was not disturbed.
        let b = within(30, "other client", other).await.expect("other task");
        b.simple_query("select 1")
            .await
            .expect("other client after");

        // And the server is not still sleeping.
        let like = format!("%{marker}%");
        let start = Instant::now();
        loop {
            let n: i64 = direct
                .query_one(
                    "select count(*) from pg_stat_activity where query like $1 and state = 'active' and pid <> pg_backend_pid()",
                    &[&like],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            if n == 0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the server still runs the cancelled statement"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let after = metrics(&proxy, "shardwire_statement_timeouts_total");
    assert!(
        after > before,
        "shardwire_statement_timeouts_total went from {before} to {after}"
    );
}

#[test]
fn idle_in_transaction_timeout_closes_the_session() {
    let proxy = TestProxy::start(|c| {
        set(c, "limits.idle_in_transaction_timeout", "500ms");
        add_fast_user(c);
    });
    let config = proxy.pg_config("fast", "fast");
    let before = metrics(&proxy, "shardwire_idle_in_transaction_timeouts_total");
    block_on(Duration::from_secs(60), async {
        let direct = connect_direct().await;
        let t = table_name("idle_tx");
        direct
            .batch_execute(&format!("create table {t} (n int)"))
            .await
            .expect("create table");
        let (c, conn) = connect(&config).await;
        c.simple_query("begin").await.expect("begin");
        c.simple_query(&format!("insert into {t} values (1)"))
            .await
            .expect("insert in transaction");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let e = within(10, "query after the timeout", c.simple_query("select 1"))
            .await
            .expect_err("the session must be closed");
        eprintln!("idle-in-transaction: query error {e:?}");
        // The proxy sends the FATAL unprompted, while tokio-postgres
        // awaits nothing: its connection task ends with it, and the
        // query finds the connection closed.
        match e.code() {
            Some(code) => assert_eq!(code.code(), "25P03", "{e:?}"),
            None => {
                assert!(c.is_closed(), "{e:?}");
                let end = within(10, "connection task", conn)
                    .await
                    .expect("connection task");
                let fatal = end.expect_err("the connection ends with the FATAL");
                assert_eq!(sqlstate(&fatal), "25P03", "{fatal:?}");
                assert!(
                    db_message(&fatal).contains("idle-in-transaction timeout"),
                    "{fatal:?}"
                );
            }
        }

        // The server connection was given up.
        wait_pools(&proxy, "active", 0, 10).await;

        // The transaction was rolled back.
        assert_eq!(
            query_count(&direct, &format!("select count(*) from {t}")).await,
            0
        );

        // A new session works.
        let (c, _conn) = connect(&config).await;
        c.simple_query("select 1").await.expect("new session");
        direct
            .batch_execute(&format!("drop table {t}"))
            .await
            .expect("drop table");
    });
    let after = metrics(&proxy, "shardwire_idle_in_transaction_timeouts_total");
    assert!(
        after > before,
        "shardwire_idle_in_transaction_timeouts_total went from {before} to {after}"
    );
}

#[test]
fn checkout_queue_is_bounded_by_max_waiting() {
    let proxy = TestProxy::start(|c| {
        set(c, "pool.max_size", 1);
        set(c, "pool.max_waiting", 1);
        set(c, "pool.checkout_timeout", "60s");
        add_fast_user(c);
    });
    let config = proxy.pg_config("fast", "fast");
    block_on(Duration::from_secs(90), async {
        let (a, _aconn) = connect(&config).await;
        let (b, _bconn) = connect(&config).await;
        let (c, _cconn) = connect(&config).await;

        a.simple_query("begin").await.expect("begin");
        a.simple_query("select 1")
            .await
            .expect("A holds the connection");
        wait_pools(&proxy, "active", 1, 10).await;

        let waiter = tokio::spawn(async move {
            let rows = b.simple_query("select 42").await;
            (b, rows)
        });
        wait_pools(&proxy, "waiting", 1, 10).await;

        let start = Instant::now();
        let e = within(10, "C's query", c.simple_query("select 1"))
            .await
            .expect_err("the queue is full");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "C waited {:?} instead of failing at once",
            start.elapsed()
        );
        assert_eq!(sqlstate(&e), "53300", "{e:?}");
        let m = db_message(&e);
        assert!(m.contains("waiting"), "{m}");
        assert!(!waiter.is_finished(), "B must still wait");

        a.simple_query("commit").await.expect("commit");
        let (b, rows) = within(30, "B's query", waiter).await.expect("B task");
        let rows = rows.expect("B's query after A committed");
        assert_eq!(simple_rows(&rows), vec![vec![Some("42".to_string())]]);
        b.simple_query("select 1").await.expect("B again");

        // C's session survived the refusal.
        c.simple_query("select 1")
            .await
            .expect("C after the queue drained");
    });
}

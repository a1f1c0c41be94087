//! Live reload (SIGHUP and the admin command RELOAD): a bigger pool takes
//! effect under load, an invalid file is rejected while the proxy keeps
//! serving, and new users can log in without a restart.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::block_in_place;

use crate::common::*;

/// `max` and `active` of the app pool (s0's primary, database app, server
/// user app) as SHOW POOLS reports them.
fn app_pool(proxy: &TestProxy) -> (u32, u32) {
    let rows = proxy.admin("SHOW POOLS");
    let row = rows
        .iter()
        .find(|r| r.len() >= 8 && r[0] == "s0" && r[2] == "app" && r[3] == "app")
        .unwrap_or_else(|| panic!("no app pool on s0 in SHOW POOLS: {rows:?}"));
    let num = |i: usize| -> u32 {
        row[i]
            .parse()
            .unwrap_or_else(|_| panic!("column {i} of {row:?}"))
    };
    (num(7), num(4))
}

fn reloads(proxy: &TestProxy, result: &str) -> f64 {
    let (status, body) = proxy.http_get("/metrics");
    assert_eq!(status, 200, "{body}");
    metric(
        &body,
        "shardwire_config_reloads_total",
        &[("result", result)],
    )
}

/// Polls the proxy's log until it contains `needle`.
fn wait_for_log(proxy: &TestProxy, needle: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let log = proxy.log();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log within {secs}s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// BEGIN; SELECT pg_backend_pid(); reports the pid, then holds the
/// transaction open until `release` turns true, and commits.
fn spawn_holder(
    c: Arc<tokio_postgres::Client>,
    pid_tx: tokio::sync::mpsc::Sender<i32>,
    mut release: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        c.batch_execute("BEGIN").await.expect("BEGIN");
        let pid: i32 = c
            .query_one("select pg_backend_pid()", &[])
            .await
            .expect("pid in transaction")
            .get(0);
        pid_tx.send(pid).await.expect("send pid");
        while !*release.borrow() {
            release.changed().await.expect("release");
        }
        c.batch_execute("COMMIT").await.expect("COMMIT");
    })
}

#[test]
fn sighup_grows_the_pool_under_50_connected_clients() {
    let proxy = TestProxy::start(|c| {
        set(c, "pool.max_size", 5);
        set(c, "pool.checkout_timeout", "20s");
        add_fast_user(c);
    });
    let config = proxy.pg_config("fast", "fast");
    block_on(Duration::from_secs(150), async {
        let mut clients = Vec::new();
        for i in 0..50 {
            let (c, conn) = connect(&config).await;
            let v: i32 = within(20, "first query", c.query_one("select $1::int4", &[&i]))
                .await
                .expect("first query")
                .get(0);
            assert_eq!(v, i);
            clients.push((Arc::new(c), conn));
        }
        let (max, _) = block_in_place(|| app_pool(&proxy));
        assert_eq!(max, 5, "pool.max_size before the reload");

        // At 5, a sixth transaction waits for a server connection...
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let (pid_tx, mut pid_rx) = tokio::sync::mpsc::channel::<i32>(6);
        let mut holders = Vec::new();
        for (c, _) in clients.iter().take(6) {
            holders.push(spawn_holder(c.clone(), pid_tx.clone(), release_rx.clone()));
        }
        drop(pid_tx);
        let mut pids = HashSet::new();
        while pids.len() < 5 {
            pids.insert(
                within(20, "5 transactions", pid_rx.recv())
                    .await
                    .expect("a holder died"),
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            pid_rx.try_recv().is_err(),
            "a sixth transaction got a server connection with max_size 5"
        );
        // (Polled: on a busy machine the sixth may take a while to queue.)
        let queued = Instant::now();
        loop {
            let waiting = block_in_place(|| proxy.admin("SHOW POOLS"))
                .iter()
                .find(|r| r[0] == "s0" && r[3] == "app")
                .map(|r| r[6].clone());
            if waiting.as_deref() == Some("1") {
                break;
            }
            assert!(
                queued.elapsed() < Duration::from_secs(10),
                "SHOW POOLS waiting is {waiting:?}, expected 1"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            pid_rx.try_recv().is_err(),
            "a sixth transaction got a server connection with max_size 5"
        );

        proxy.rewrite_config(|c| set(c, "pool.max_size", 20));
        proxy.signal(libc::SIGHUP);
        // ...and gets one as soon as the reload adds permits.
        let sixth = within(10, "the waiting transaction after SIGHUP", pid_rx.recv())
            .await
            .expect("the sixth holder died");
        assert!(pids.insert(sixth), "pid {sixth} served two transactions");
        release_tx.send(true).expect("release holders");
        for h in holders {
            within(20, "commit", h).await.expect("holder panicked");
        }
        let start = Instant::now();
        loop {
            let (max, _) = block_in_place(|| app_pool(&proxy));
            if max == 20 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "SHOW POOLS still shows max {max} 10s after SIGHUP; log:\n{}",
                proxy.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("SIGHUP applied in {:?}", start.elapsed());

        // Every session survived the reload.
        for (i, (c, conn)) in clients.iter().enumerate() {
            assert!(!conn.is_finished(), "session {i} was closed by the reload");
            let v: i32 = within(
                20,
                "query after reload",
                c.query_one("select $1::int4", &[&(i as i32)]),
            )
            .await
            .unwrap_or_else(|e| panic!("session {i} after the reload: {e}"))
            .get(0);
            assert_eq!(v, i as i32);
        }

        // 20 transactions open at once, each on its own server connection:
        // impossible with max_size 5.
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let (pid_tx, mut pid_rx) = tokio::sync::mpsc::channel::<i32>(20);
        let mut holders = Vec::new();
        for (c, _) in clients.iter().take(20) {
            holders.push(spawn_holder(c.clone(), pid_tx.clone(), release_rx.clone()));
        }
        drop(pid_tx);
        let mut pids = HashSet::new();
        while pids.len() < 20 {
            let pid = within(30, "20 concurrent transactions", pid_rx.recv())
                .await
                .expect("a holder died");
            pids.insert(pid);
        }
        // All 20 are still inside their transactions here.
        let (max, active) = block_in_place(|| app_pool(&proxy));
        assert_eq!((max, active), (20, 20), "SHOW POOLS (max, active)");
        release_tx.send(true).expect("release holders");
        for h in holders {
            within(20, "commit", h).await.expect("holder panicked");
        }
        eprintln!(
            "20 concurrent transactions on {} distinct backends",
            pids.len()
        );
        assert_eq!(pids.len(), 20);

        for (i, (c, _)) in clients.iter().enumerate() {
            c.query_one("select 1", &[])
                .await
                .unwrap_or_else(|e| panic!("session {i} at the end: {e}"));
        }
    });
    assert_eq!(reloads(&proxy, "applied"), 1.0);
    assert_eq!(reloads(&proxy, "rejected"), 0.0);
}

#[test]
fn invalid_reload_is_rejected_and_the_old_config_stays() {
    let proxy = TestProxy::start(|c| {
        set(c, "pool.max_size", 7);
        add_fast_user(c);
    });
    let config = proxy.pg_config("fast", "fast");
    let file = proxy.config_path.display().to_string();
    block_on(Duration::from_secs(90), async {
        let (session, _conn) = connect(&config).await;
        session.query_one("select 1", &[]).await.expect("before");

        // A bad value, by SIGHUP: logged with file, key and reason.
        proxy.rewrite_config(|c| set(c, "pool.max_size", 0));
        proxy.signal(libc::SIGHUP);
        let log = block_in_place(|| wait_for_log(&proxy, "reload rejected", 10));
        let line = log
            .lines()
            .find(|l| l.contains("reload rejected"))
            .expect("the rejection line");
        for part in [file.as_str(), "pool.max_size", "must be at least 1"] {
            assert!(line.contains(part), "{part:?} missing from {line:?}");
        }
        eprintln!("SIGHUP rejection logged: {line}");

        session
            .query_one("select 1", &[])
            .await
            .expect("session after a rejected SIGHUP");
        let (fresh, _c) = connect(&config).await;
        fresh
            .query_one("select 1", &[])
            .await
            .expect("new login after a rejected SIGHUP");
        let (max, _) = block_in_place(|| app_pool(&proxy));
        assert_eq!(max, 7, "the old pool.max_size stays");

        // An unknown key, by RELOAD: SQLSTATE F0000 and the reason.
        proxy.rewrite_config(|c| {
            set(c, "pool.max_size", 9);
            set(c, "pool.no_such_setting", 1);
        });
        let url = format!("postgres://admin@127.0.0.1:{}/shardwire", proxy.port);
        let out = block_in_place(|| {
            psql(
                &url,
                "admin",
                true,
                &["-A", "-t", "-v", "VERBOSITY=verbose", "-c", "RELOAD"],
                None,
            )
        });
        assert!(
            !out.success(),
            "RELOAD of an invalid file succeeded: {}",
            out.stdout
        );
        eprintln!("RELOAD stderr: {}", out.stderr.trim());
        for part in ["F0000", file.as_str(), "no_such_setting", "not reloaded"] {
            assert!(
                out.stderr.contains(part),
                "{part:?} missing from psql's stderr:\n{}",
                out.stderr
            );
        }

        session
            .query_one("select 1", &[])
            .await
            .expect("session after a rejected RELOAD");
        let (fresh2, _c2) = connect(&config).await;
        fresh2
            .query_one("select 1", &[])
            .await
            .expect("new login after a rejected RELOAD");
        let (max, _) = block_in_place(|| app_pool(&proxy));
        assert_eq!(max, 7, "the old pool.max_size stays");
    });
    assert_eq!(reloads(&proxy, "rejected"), 2.0);
    assert_eq!(reloads(&proxy, "applied"), 0.0);
}

#[test]
fn reload_adds_a_user_without_a_restart() {
    let role = format!("sw_reload_{:06x}", rand::random::<u32>() & 0xffffff);
    create_role(&role, "role_pw", "scram-sha-256");
    let proxy = TestProxy::start(add_fast_user);
    let existing = proxy.pg_config("fast", "fast");
    let newcomer = proxy.pg_config("newcomer", "np");
    block_on(Duration::from_secs(90), async {
        let (session, conn) = connect(&existing).await;
        session.query_one("select 1", &[]).await.expect("before");

        match try_connect(&newcomer).await {
            Ok(_) => panic!("newcomer logged in before being configured"),
            Err(e) => assert_eq!(sqlstate(&e), "28P01", "{e}"),
        }

        proxy.rewrite_config(|c| {
            add_user(
                c,
                &format!(
                    "name = \"newcomer\"\npassword = \"np\"\nauth = \"md5\"\nserver_user = \"{role}\"\nserver_password = \"role_pw\""
                ),
            )
        });
        block_in_place(|| proxy.admin("RELOAD"));

        let (c, _c) = connect(&newcomer).await;
        let who: String = c
            .query_one("select current_user::text", &[])
            .await
            .expect("newcomer's query")
            .get(0);
        assert_eq!(who, role);

        assert!(!conn.is_finished(), "the existing session was closed");
        let who: String = session
            .query_one("select current_user::text", &[])
            .await
            .expect("existing session after RELOAD")
            .get(0);
        assert_eq!(who, "app");
    });
    assert_eq!(reloads(&proxy, "applied"), 1.0);
}

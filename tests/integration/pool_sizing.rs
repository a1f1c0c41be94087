//! Pool sizing over time: min_size, idle_timeout, max_lifetime.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::common::*;

async fn backends_of(direct: &Client, role: &str) -> i64 {
    direct
        .query_one(
            "select count(*) from pg_stat_activity where usename = $1",
            &[&role],
        )
        .await
        .expect("count backends")
        .get(0)
}

/// Polls until the role has `want` backends; returns how long it took.
async fn wait_for_backends(direct: &Client, role: &str, want: i64, secs: u64) -> Duration {
    let start = Instant::now();
    loop {
        let n = backends_of(direct, role).await;
        if n == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{role} has {n} backends, expected {want} within {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn min_size_idle_timeout_and_max_size() {
    let role = format!("sw_pool_{:06x}", rand::random::<u32>() & 0xffffff);
    create_role(&role, "pool_pw", "scram-sha-256");
    let proxy = TestProxy::start(|c| {
        set(c, "pool.min_size", 2);
        set(c, "pool.max_size", 4);
        set(c, "pool.idle_timeout", "1s");
        set(c, "pool.checkout_timeout", "20s");
        add_user(
            c,
            &format!("name = \"pooler\"\npassword = \"p\"\nauth = \"md5\"\nserver_user = \"{role}\"\nserver_password = \"pool_pw\""),
        );
    });
    let config = proxy.pg_config("pooler", "p");
    block_on(Duration::from_secs(90), async move {
        let direct = connect_direct().await;
        // Pools are made on first use; then kept at min_size.
        assert_eq!(backends_of(&direct, &role).await, 0);
        let (first, _c) = connect(&config).await;
        wait_for_backends(&direct, &role, 2, 5).await;

        // A burst of 8 clients: never more than max_size.
        let stop = Arc::new(AtomicBool::new(false));
        let max_seen = Arc::new(AtomicI64::new(0));
        let monitor = {
            let (stop, max_seen, role) = (stop.clone(), max_seen.clone(), role.clone());
            let (watcher, _conn) = connect_url(&cluster().direct_url()).await;
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    max_seen.fetch_max(backends_of(&watcher, &role).await, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let config = config.clone();
            tasks.push(tokio::spawn(async move {
                let (c, _conn) = connect(&config).await;
                for _ in 0..3 {
                    c.query_one("select pg_sleep(0.1)::text", &[])
                        .await
                        .expect("query");
                }
            }));
        }
        for t in tasks {
            within(60, "burst client", t)
                .await
                .expect("burst client panicked");
        }
        stop.store(true, Ordering::Relaxed);
        monitor.await.expect("monitor");
        let max = max_seen.load(Ordering::Relaxed);
        assert!(
            (3..=4).contains(&max),
            "max_size 4, 8 busy clients: saw {max} backends"
        );

        // Idle ones above min_size are closed after idle_timeout...
        let took = wait_for_backends(&direct, &role, 2, 10).await;
        assert!(
            took >= Duration::from_millis(500),
            "closed after only {took:?}"
        );
        // ...and min_size stays.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(backends_of(&direct, &role).await, 2);
        let v: i32 = first
            .query_one("select 1", &[])
            .await
            .expect("first client")
            .get(0);
        assert_eq!(v, 1);
    });
}

#[test]
fn max_lifetime_replaces_old_connections() {
    let proxy = TestProxy::start(|c| {
        set(c, "pool.max_size", 1);
        set(c, "pool.max_lifetime", "3s");
    });
    let url = proxy.url();
    block_on(Duration::from_secs(60), async move {
        let born = Instant::now();
        let (client, _conn) = connect_url(&url).await;
        let pid = || async {
            client
                .query_one("select pg_backend_pid()", &[])
                .await
                .expect("pid")
                .get::<_, i32>(0)
        };
        let first = pid().await;
        // The connection serving `first` is at least this old from here on.
        let used = Instant::now();
        let again = pid().await;
        // (A machine too busy to get here within 2s proves nothing either way.)
        if born.elapsed() < Duration::from_secs(2) {
            assert_eq!(first, again, "a young connection was not reused");
        }
        let past_lifetime = Duration::from_millis(3300).saturating_sub(used.elapsed());
        tokio::time::sleep(past_lifetime).await;
        let later = pid().await;
        assert_ne!(first, later, "a connection past max_lifetime was reused");
    });
}

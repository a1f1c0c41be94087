//! 200 concurrent clients on a pool of 10 backend connections.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

const CLIENTS: usize = 200;
const POOL: i64 = 10;

#[test]
fn two_hundred_clients_share_ten_backend_connections() {
    // A role of its own, so that its backends can be counted on the server.
    let role = format!("sw_conc_{:06x}", rand::random::<u32>() & 0xffffff);
    create_role(&role, "conc_pw", "scram-sha-256");
    let proxy = TestProxy::start(|c| {
        set(c, "pool.max_size", POOL);
        // Debug builds on a busy 2-core machine: give waiters some slack;
        // the bound under test is max_size, not latency.
        set(c, "pool.checkout_timeout", "30s");
        add_user(
            c,
            &format!(
                "name = \"conc\"\npassword = \"conc\"\nauth = \"md5\"\nserver_user = \"{role}\"\nserver_password = \"conc_pw\""
            ),
        );
    });
    let config = proxy.pg_config("conc", "conc");
    block_on(Duration::from_secs(120), async move {
        let direct = connect_direct().await;
        let t = table_name("conc");
        direct
            .batch_execute(&format!(
                "create table {t} (client int, n int); grant all on {t} to {role}"
            ))
            .await
            .expect("create table");

        // Watch the server's view of the role's connections throughout.
        let stop = Arc::new(AtomicBool::new(false));
        let max_seen = Arc::new(AtomicI64::new(0));
        let monitor = {
            let (stop, max_seen, role) = (stop.clone(), max_seen.clone(), role.clone());
            let (watcher, _conn) = connect_url(&cluster().direct_url()).await;
            tokio::spawn(async move {
                let q = watcher
                    .prepare("select count(*) from pg_stat_activity where usename = $1")
                    .await
                    .expect("prepare monitor");
                let mut samples = 0;
                while !stop.load(Ordering::Relaxed) {
                    let n: i64 = watcher
                        .query_one(&q, &[&role])
                        .await
                        .expect("monitor")
                        .get(0);
                    max_seen.fetch_max(n, Ordering::Relaxed);
                    samples += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                samples
            })
        };

        let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS));
        let mut tasks = Vec::new();
        for i in 0..CLIENTS as i32 {
            let (config, barrier, t, role) =
                (config.clone(), barrier.clone(), t.clone(), role.clone());
            tasks.push(tokio::spawn(async move {
                let (mut client, _conn) = connect(&config).await;
                // Everyone connected at once before anyone queries.
                barrier.wait().await;
                for n in 0..3i32 {
                    let tx = client.transaction().await?;
                    tx.execute(&format!("insert into {t} values ($1, $2)"), &[&i, &n])
                        .await?;
                    let row = tx
                        .query_one("select $1::int4 + 1, current_user::text", &[&i])
                        .await?;
                    assert_eq!(row.get::<_, i32>(0), i + 1);
                    assert_eq!(row.get::<_, &str>(1), role, "backend role");
                    tx.commit().await?;
                }
                let v: String = client.query_one("select 'done'::text", &[]).await?.get(0);
                assert_eq!(v, "done");
                Ok::<_, tokio_postgres::Error>(())
            }));
        }
        let mut failures = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            match within(90, "client", task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failures.push(format!("client {i}: {e} ({:?})", e.code())),
                Err(e) => failures.push(format!("client {i} panicked: {e}")),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let samples = within(10, "monitor", monitor).await.expect("monitor task");
        assert!(
            failures.is_empty(),
            "{} clients failed:\n{}",
            failures.len(),
            failures.join("\n")
        );

        let n: i64 = direct
            .query_one(&format!("select count(*) from {t}"), &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, CLIENTS as i64 * 3);
        let distinct: i64 = direct
            .query_one(&format!("select count(distinct client) from {t}"), &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(distinct, CLIENTS as i64);

        let max = max_seen.load(Ordering::Relaxed);
        assert!(samples > 0);
        assert!(
            max >= 1,
            "the monitor never saw the role's backends ({samples} samples)"
        );
        assert!(
            max <= POOL,
            "the server saw {max} backends for a pool of {POOL}"
        );
        let now: i64 = direct
            .query_one(
                "select count(*) from pg_stat_activity where usename = $1",
                &[&role],
            )
            .await
            .expect("count backends")
            .get(0);
        assert!(now <= POOL, "{now} backends after the run");
        eprintln!("200 clients: at most {max} backends seen in {samples} samples");
    });
}

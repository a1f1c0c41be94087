//! Query cancellation through the proxy's own cancel keys.

use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::common::*;

#[test]
fn cancel_running_query_in_both_protocols() {
    let proxy = TestProxy::start(|_| {});
    let url = proxy.url();
    block_on(Duration::from_secs(60), async move {
        let (client, _conn) = connect_url(&url).await;
        let token = client.cancel_token();
        let client = std::sync::Arc::new(client);
        for extended in [false, true] {
            let c = client.clone();
            let running = tokio::spawn(async move {
                let r = if extended {
                    c.query("select pg_sleep(30)", &[]).await.map(|_| ())
                } else {
                    c.simple_query("select pg_sleep(30)").await.map(|_| ())
                };
                (r, Instant::now())
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            let cancelled_at = Instant::now();
            within(5, "cancel request", token.cancel_query(NoTls))
                .await
                .expect("send cancel request");
            let (result, ended_at) = within(5, "cancelled query", running).await.expect("task");
            let e = result.expect_err("pg_sleep(30) was not cancelled");
            assert_eq!(sqlstate(&e), "57014", "extended={extended}: {e}");
            let took = ended_at.saturating_duration_since(cancelled_at);
            assert!(
                took < Duration::from_secs(1),
                "extended={extended}: cancel took {took:?}"
            );
            // The session carries on.
            let v: i32 = client
                .query_one("select 5", &[])
                .await
                .expect("after cancel")
                .get(0);
            assert_eq!(v, 5);
        }
    });
}

/// Transaction pooling: an idle client's cancel key must not reach the
/// backend it used before, which now runs another client's query.
#[test]
fn cancel_from_idle_client_does_not_hit_others() {
    let proxy = TestProxy::start(|c| set(c, "pool.max_size", 1));
    let url = proxy.url();
    block_on(Duration::from_secs(60), async move {
        let (idle, _c1) = connect_url(&url).await;
        let (busy, _c2) = connect_url(&url).await;
        let idle_pid: i32 = idle
            .query_one("select pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        let busy_task = tokio::spawn(async move {
            let row = busy
                .query_one("select pg_backend_pid(), pg_sleep(1)::text", &[])
                .await;
            row.map(|r| r.get::<_, i32>(0))
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        within(5, "cancel request", idle.cancel_token().cancel_query(NoTls))
            .await
            .expect("send cancel request");
        let busy_pid = within(5, "busy query", busy_task)
            .await
            .expect("task")
            .expect("the other client's query was cancelled");
        assert_eq!(
            busy_pid, idle_pid,
            "pool of one: both clients used the same backend"
        );
    });
}

//! SIGTERM: stop accepting, let running transactions finish, tell idle
//! clients, exit within shutdown_timeout.

use std::time::{Duration, Instant};

use crate::common::*;

/// Waits until connecting to `port` is refused (the listener is closed).
async fn wait_refused(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    false
}

#[test]
fn sigterm_drains_transactions_and_exits() {
    let mut proxy = TestProxy::start(|c| set(c, "shutdown_timeout", "5s"));
    let config = proxy.pg_config("app", "app");
    let t = table_name("shutdown");
    let (sigterm_at, idle_error, busy_error) = block_on(Duration::from_secs(60), {
        let proxy = &proxy;
        let t = t.clone();
        async move {
            let direct = connect_direct().await;
            direct
                .batch_execute(&format!("create table {t} (id int)"))
                .await
                .expect("create");
            let (mut busy, busy_conn) = connect(&config).await;
            let (idle, idle_conn) = connect(&config).await;
            let v: i32 = idle
                .query_one("select 1", &[])
                .await
                .expect("idle works")
                .get(0);
            assert_eq!(v, 1);

            let tx = busy.transaction().await.expect("begin");
            tx.execute(&format!("insert into {t} values (1)"), &[])
                .await
                .expect("insert");

            proxy.signal(libc::SIGTERM);
            let sigterm_at = Instant::now();

            // The idle client is told at once.
            let idle_result = within(3, "idle client's FATAL", idle_conn)
                .await
                .expect("task");
            let idle_error = idle_result.expect_err("idle connection ended without an error");

            // No new clients.
            assert!(
                wait_refused(proxy.port).await,
                "the proxy still accepts connections"
            );

            // The transaction in progress goes on and commits.
            tokio::time::sleep(Duration::from_millis(300)).await;
            tx.execute(&format!("insert into {t} values (2)"), &[])
                .await
                .expect("insert after SIGTERM");
            tx.commit().await.expect("commit after SIGTERM");
            let busy_result = within(3, "busy client's FATAL", busy_conn)
                .await
                .expect("task");
            let busy_error = busy_result.expect_err("busy connection ended without an error");

            let n: i64 = direct
                .query_one(&format!("select count(*) from {t}"), &[])
                .await
                .expect("count")
                .get(0);
            assert_eq!(
                n, 2,
                "the transaction committed after SIGTERM is not all there"
            );
            (sigterm_at, idle_error, busy_error)
        }
    });
    for (who, e) in [("idle", &idle_error), ("busy", &busy_error)] {
        assert_eq!(sqlstate(e), "57P01", "{who}: {e}");
        assert!(
            db_message(e).contains("terminating connection due to administrator command"),
            "{who}: {e}"
        );
    }
    let status = proxy
        .wait_exit(Duration::from_secs(6).saturating_sub(sigterm_at.elapsed()))
        .expect("the proxy did not exit within shutdown_timeout");
    assert!(status.success(), "exit status {status}");
    // Everyone left, so it did not have to wait for the timeout.
    assert!(
        sigterm_at.elapsed() < Duration::from_secs(4),
        "exit took {:?}",
        sigterm_at.elapsed()
    );
}

#[test]
fn sigterm_gives_up_on_a_stuck_transaction_after_shutdown_timeout() {
    let mut proxy = TestProxy::start(|c| set(c, "shutdown_timeout", "2s"));
    let config = proxy.pg_config("app", "app");
    let t = table_name("shutdown_stuck");
    block_on(Duration::from_secs(60), async {
        let direct = connect_direct().await;
        direct
            .batch_execute(&format!("create table {t} (id int)"))
            .await
            .expect("create");
        let (mut stuck, stuck_conn) = connect(&config).await;
        let tx = stuck.transaction().await.expect("begin");
        tx.execute(&format!("insert into {t} values (1)"), &[])
            .await
            .expect("insert");

        proxy.signal(libc::SIGTERM);
        let sigterm_at = Instant::now();
        let status = tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(5)))
            .expect("the proxy did not exit after shutdown_timeout");
        let took = sigterm_at.elapsed();
        assert!(status.success(), "exit status {status}");
        assert!(
            took >= Duration::from_millis(1800) && took < Duration::from_secs(4),
            "exit {took:?} after SIGTERM with shutdown_timeout = 2s"
        );
        // The abandoned transaction is gone: the client's connection is
        // closed and nothing was committed.
        let r = within(5, "stuck client's connection", stuck_conn)
            .await
            .expect("task");
        let _ = r; // closed, with or without an error message
        let e = tx
            .commit()
            .await
            .map(drop)
            .expect_err("commit after the proxy exited");
        assert!(e.is_closed() || e.code().is_some(), "{e}");
        let n: i64 = direct
            .query_one(&format!("select count(*) from {t}"), &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 0, "an unfinished transaction was committed");
    });
}

#[test]
fn second_signal_exits_at_once() {
    let mut proxy = TestProxy::start(|c| set(c, "shutdown_timeout", "30s"));
    let config = proxy.pg_config("app", "app");
    block_on(Duration::from_secs(60), async {
        let (mut stuck, _conn) = connect(&config).await;
        let tx = stuck.transaction().await.expect("begin");
        tx.query_one("select 1", &[]).await.expect("query");
        proxy.signal(libc::SIGTERM);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_millis(10))).is_none(),
            "exited on the first signal despite a running transaction"
        );
        proxy.signal(libc::SIGINT);
        let start = Instant::now();
        let status = tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(3)))
            .expect("no exit after the second signal");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "took {:?}",
            start.elapsed()
        );
        assert_eq!(status.code(), Some(1), "{status}");
        drop(tx);
    });
}

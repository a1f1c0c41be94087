//! `pool_mode = "session"`: a client keeps one backend for its lifetime.

use std::time::Duration;

use crate::common::*;

#[test]
fn session_pooling_keeps_backend_and_settings() {
    let proxy = TestProxy::start(|c| {
        c["databases"][0]
            .as_table_mut()
            .expect("databases[0]")
            .insert("pool_mode".into(), "session".into());
        set(c, "pool.max_size", 2);
        // Long enough for a closing session's backend to come back even on
        // a busy machine; the third client below waits this long.
        set(c, "pool.checkout_timeout", "2s");
    });
    let config = proxy.pg_config("app", "app");
    block_on(Duration::from_secs(60), async move {
        let (mut a, _ca) = connect(&config).await;
        let (b, _cb) = connect(&config).await;
        let pid_a: i32 = a
            .query_one("select pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        let pid_b: i32 = b
            .query_one("select pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        assert_ne!(pid_a, pid_b, "two sessions share a backend in session mode");

        // SET outside a transaction; not a parameter the proxy tracks.
        a.batch_execute("set work_mem = '7MB'").await.expect("set");
        a.batch_execute("prepare p(int) as select $1 * 3")
            .await
            .expect("sql prepare");
        for i in 0..10 {
            let tx = a.transaction().await.expect("begin");
            let row = tx
                .query_one("select pg_backend_pid(), current_setting('work_mem')", &[])
                .await
                .expect("query");
            assert_eq!(
                row.get::<_, i32>(0),
                pid_a,
                "transaction {i} ran on another backend"
            );
            assert_eq!(row.get::<_, &str>(1), "7MB");
            tx.commit().await.expect("commit");
            // The other client's work in between does not matter.
            let other: String = b
                .query_one("select current_setting('work_mem')", &[])
                .await
                .expect("b")
                .get(0);
            assert_eq!(other, "4MB");
        }
        // A server-side SQL PREPARE survives too (it would not be portable
        // across backends in transaction mode).
        let msgs = a.simple_query("execute p(14)").await.expect("execute");
        let v = msgs.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(v.as_deref(), Some("42"));

        // Both backends are taken: a third client waits checkout_timeout, then fails.
        let e = try_connect(&config)
            .await
            .map(drop)
            .expect_err("third session got a backend");
        assert_eq!(sqlstate(&e), "53300", "{e}");
        // Once a session ends its backend is free again.
        drop(b);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (c, _cc) = connect(&config).await;
        let row = c
            .query_one("select pg_backend_pid(), current_setting('work_mem')", &[])
            .await
            .expect("c");
        assert_eq!(
            row.get::<_, i32>(0),
            pid_b,
            "the freed backend was not reused"
        );
        assert_eq!(row.get::<_, &str>(1), "4MB");

        // The backend of a session that changed its state goes to the next
        // session clean: no settings or SQL prepared statements carried over.
        drop(a);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (d, _cd) = connect(&config).await;
        let row = d
            .query_one("select pg_backend_pid(), current_setting('work_mem')", &[])
            .await
            .expect("d");
        assert_eq!(
            row.get::<_, i32>(0),
            pid_a,
            "the freed backend was not reused"
        );
        assert_eq!(
            row.get::<_, &str>(1),
            "4MB",
            "a SET leaked from a previous session"
        );
        let e = d
            .simple_query("execute p(1)")
            .await
            .map(drop)
            .expect_err("a PREPARE leaked from a previous session");
        assert_eq!(sqlstate(&e), "26000", "{e}");
    });
}

/// Notices and notifications pass through (LISTEN needs session pooling).
#[test]
fn notices_and_notifications_pass_through() {
    let proxy = TestProxy::start(|c| {
        c["databases"][0]
            .as_table_mut()
            .expect("databases[0]")
            .insert("pool_mode".into(), "session".into());
    });
    let out = psql(
        &proxy.url(),
        "app",
        true,
        &[
            "-qAt",
            "-c",
            "do $$ begin raise notice 'hello from the server'; end $$",
            "-c",
            "listen sw_channel",
            "-c",
            "notify sw_channel, 'payload one'",
            "-c",
            "select pg_notify('sw_channel', 'payload two')",
            "-c",
            "select 'done'",
        ],
        None,
    )
    .ok("psql notices and notifications");
    assert!(
        out.stderr.contains("NOTICE:  hello from the server"),
        "{}",
        out.stderr
    );
    for payload in ["payload one", "payload two"] {
        assert!(
            out.stdout.contains(&format!(
                "Asynchronous notification \"sw_channel\" with payload \"{payload}\" received"
            )),
            "{}",
            out.stdout
        );
    }
    assert!(out.stdout.ends_with("done\n"), "{}", out.stdout);
}

/// A session-pooled client keeps one server, so it is told that server's
/// pid in BackendKeyData, as PostgreSQL alone would tell it: the pid it
/// knows matches `pg_backend_pid()` and the sender of its own
/// notifications (psycopg's tests compare them), and a CancelRequest with
/// it still reaches the client's server.
#[test]
fn a_session_pooled_client_is_told_its_servers_pid() {
    use crate::bad_input::{frame, raw_login, read_until};
    use tokio::io::AsyncWriteExt;
    let proxy = TestProxy::start(|c| {
        c["databases"][0]
            .as_table_mut()
            .expect("databases[0]")
            .insert("pool_mode".into(), "session".into());
        add_user(
            c,
            "name = \"raw\"\nauth = \"trust\"\nserver_user = \"app\"\nserver_password = \"app\"",
        );
    });
    let config = proxy.pg_config("app", "app");
    block_on(Duration::from_secs(60), async {
        let (mut s, login) = raw_login(proxy.port).await;
        let key = login
            .iter()
            .find(|(t, _)| *t == b'K')
            .map(|(_, b)| b.clone())
            .expect("BackendKeyData");
        let told = i32::from_be_bytes(key[0..4].try_into().expect("pid"));
        let secret = i32::from_be_bytes(key[4..8].try_into().expect("secret"));

        s.write_all(&frame(
            b'Q',
            b"listen sw_pid; notify sw_pid, 'hi'; select pg_backend_pid()\0",
        ))
        .await
        .expect("query");
        let msgs = read_until(&mut s, b'Z').await;
        let row = msgs.iter().find(|(t, _)| *t == b'D').expect("a row");
        let real: i32 = std::str::from_utf8(&row.1[6..])
            .expect("text")
            .parse()
            .expect("a pid");
        assert_eq!(told, real, "BackendKeyData pid is not the server's");
        let note = msgs
            .iter()
            .find(|(t, _)| *t == b'A')
            .expect("a notification");
        let sender = i32::from_be_bytes(note.1[0..4].try_into().expect("pid"));
        assert_eq!(
            sender, told,
            "the notification's sender is not the pid told"
        );

        // Cancelling with the key told stops the client's statement.
        s.write_all(&frame(b'Q', b"select pg_sleep(30)\0"))
            .await
            .expect("sleep");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
            .await
            .expect("connect");
        let mut req = 16i32.to_be_bytes().to_vec();
        req.extend_from_slice(&80877102i32.to_be_bytes());
        req.extend_from_slice(&told.to_be_bytes());
        req.extend_from_slice(&secret.to_be_bytes());
        c.write_all(&req).await.expect("cancel");
        let msgs = read_until(&mut s, b'Z').await;
        let err = msgs.iter().find(|(t, _)| *t == b'E').expect("an error");
        assert_eq!(
            crate::bad_input::error_fields(&err.1).0,
            "57014",
            "{msgs:?}"
        );

        // Two sessions at once have two pids, both real.
        let (b, _cb) = connect(&config).await;
        let other: i32 = b
            .query_one("select pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        assert_ne!(other, told);
    });
}

/// A session-pooled client that leaves in the middle of a pipeline (a
/// transaction open, a Bind and Execute sent with no Sync) leaves a server
/// that is brought back to idle and reset, not closed: the next client
/// gets the same server, clean (no transaction, no temporary table).
#[test]
fn a_client_leaving_mid_pipeline_leaves_a_clean_reusable_server() {
    use crate::bad_input::{frame, raw_login, read_until};
    use tokio::io::AsyncWriteExt;
    let proxy = TestProxy::start(|c| {
        c["databases"][0]
            .as_table_mut()
            .expect("databases[0]")
            .insert("pool_mode".into(), "session".into());
        set(c, "pool.max_size", 1);
        add_user(
            c,
            "name = \"raw\"\nauth = \"trust\"\nserver_user = \"app\"\nserver_password = \"app\"",
        );
    });
    let config = proxy.pg_config("app", "app");
    block_on(Duration::from_secs(60), async {
        let (mut s, login) = raw_login(proxy.port).await;
        let key = &login.iter().find(|(t, _)| *t == b'K').expect("key").1;
        let pid_a = i32::from_be_bytes(key[0..4].try_into().expect("pid"));
        s.write_all(&frame(
            b'Q',
            b"create temp table mid_tt (i int); begin; insert into mid_tt values (1)\0",
        ))
        .await
        .expect("begin");
        read_until(&mut s, b'Z').await;
        let mut batch = frame(b'P', b"\0select pg_sleep(0.2)\0\0\0");
        batch.extend(frame(b'B', b"\0\0\0\0\0\0\0\0"));
        batch.extend(frame(b'E', b"\0\0\0\0\0"));
        s.write_all(&batch).await.expect("pipeline");
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);

        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let (b, _cb) = loop {
            match try_connect(&config).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no server came back: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let row = b
            .query_one(
                "select pg_backend_pid(), to_regclass('mid_tt') is null, \
                 (select count(*) from pg_prepared_statements where statement like '%pg_' || 'sleep(%')",
                &[],
            )
            .await
            .expect("b");
        assert_eq!(
            row.get::<_, i32>(0),
            pid_a,
            "the server was closed, not reset"
        );
        assert!(row.get::<_, bool>(1), "A's temporary table reached B");
        assert_eq!(row.get::<_, i64>(2), 0, "A's statement reached B");
    });
}

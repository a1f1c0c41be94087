//! Transaction pooling keeps each client's session parameters: clients with
//! different settings share one backend and each always sees its own.

use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::common::*;

struct Expect {
    app: &'static str,
    datestyle: &'static str,
    timezone: &'static str,
    date_text: &'static str,
}

/// Checks the settings in a single-statement transaction (extended
/// protocol) and in an explicit transaction block (simple protocol);
/// returns the backend pid.
async fn check(client: &Client, e: &Expect, round: usize) -> i32 {
    let row = client
        .query_one(
            "select current_setting('application_name'), current_setting('DateStyle'), \
             current_setting('TimeZone'), '2024-01-31'::date::text, \
             (select application_name::text from pg_stat_activity where pid = pg_backend_pid()), \
             pg_backend_pid()",
            &[],
        )
        .await
        .expect("settings query");
    let got: Vec<&str> = (0..5).map(|i| row.get::<_, &str>(i)).collect();
    assert_eq!(
        got,
        vec![e.app, e.datestyle, e.timezone, e.date_text, e.app],
        "{}: round {round}",
        e.app
    );
    let pid: i32 = row.get(5);

    let msgs = client
        .simple_query("begin; show application_name; show datestyle; show timezone; commit")
        .await
        .expect("simple settings query");
    let shown: Vec<String> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(
        shown,
        vec![e.app, e.datestyle, e.timezone],
        "{}: round {round} (simple)",
        e.app
    );
    pid
}

#[test]
fn clients_keep_their_own_session_parameters() {
    let proxy = TestProxy::start(|c| set(c, "pool.max_size", 1));
    let mut foo = proxy.pg_config("app", "app");
    foo.application_name("foo")
        .options("-c DateStyle=German -c TimeZone=Europe/Berlin");
    let mut bar = proxy.pg_config("app", "app");
    bar.application_name("bar")
        .options("-c DateStyle=SQL,DMY -c TimeZone=Asia/Tokyo");
    block_on(Duration::from_secs(90), async move {
        let (a, _ca) = connect(&foo).await;
        let (b, _cb) = connect(&bar).await;
        let ea = Expect {
            app: "foo",
            datestyle: "German, DMY",
            timezone: "Europe/Berlin",
            date_text: "31.01.2024",
        };
        let eb = Expect {
            app: "bar",
            datestyle: "SQL, DMY",
            timezone: "Asia/Tokyo",
            date_text: "31/01/2024",
        };
        // Interleaved, then concurrently (the pool of one serializes them).
        let mut pids = std::collections::HashSet::new();
        for round in 0..5 {
            pids.insert(check(&a, &ea, round).await);
            pids.insert(check(&b, &eb, round).await);
        }
        let (ra, rb) = tokio::join!(
            async {
                let mut p = Vec::new();
                for round in 5..25 {
                    p.push(check(&a, &ea, round).await);
                }
                p
            },
            async {
                let mut p = Vec::new();
                for round in 5..25 {
                    p.push(check(&b, &eb, round).await);
                }
                p
            }
        );
        pids.extend(ra);
        pids.extend(rb);
        assert_eq!(
            pids.len(),
            1,
            "pool.max_size = 1, yet several backends: {pids:?}"
        );

        // A SET outside a transaction becomes part of that client's session.
        a.batch_execute("set timezone = 'America/New_York'")
            .await
            .expect("set");
        let ea = Expect {
            timezone: "America/New_York",
            ..ea
        };
        for round in 25..30 {
            check(&a, &ea, round).await;
            check(&b, &eb, round).await;
        }
        // A client without any settings sees the server's defaults.
        let (c, _cc) = connect(&proxy.pg_config("app", "app")).await;
        let row = c
            .query_one(
                "select current_setting('DateStyle'), current_setting('application_name')",
                &[],
            )
            .await
            .expect("defaults");
        assert_eq!(row.get::<_, &str>(0), "ISO, MDY");
        assert_ne!(row.get::<_, &str>(1), "foo");
        assert_ne!(row.get::<_, &str>(1), "bar");
    });
}

/// More tracked parameters and custom settings, on one shared backend:
/// a read-only client next to a writer, a LATIN1 client next to UTF-8
/// ones, and a custom `-c app.tenant=...` setting that must not leak.
#[test]
fn read_only_encoding_and_custom_settings_do_not_leak() {
    let proxy = TestProxy::start(|c| set(c, "pool.max_size", 1));
    let t = table_name("ro");
    let mut ro = proxy.pg_config("app", "app");
    ro.options("-c default_transaction_read_only=on -c app.tenant=42");
    let rw = proxy.pg_config("app", "app");
    let url = proxy.url();
    block_on(Duration::from_secs(90), async move {
        let (w, _cw) = connect(&rw).await;
        let (r, _cr) = connect(&ro).await;
        w.batch_execute(&format!("create table {t} (id int)"))
            .await
            .expect("create");
        for i in 0..5 {
            let e = r
                .execute(&format!("insert into {t} values ({i})"), &[])
                .await
                .expect_err("read-only client wrote");
            assert_eq!(sqlstate(&e), "25006", "{e}");
            w.execute(&format!("insert into {t} values ({i})"), &[])
                .await
                .expect("writer");
            let tenant: Option<String> = r
                .query_one("select current_setting('app.tenant', true)", &[])
                .await
                .expect("tenant")
                .get(0);
            assert_eq!(tenant.as_deref(), Some("42"));
            // The writer never sees the other client's custom setting
            // (a placeholder reset to empty is as good as unset).
            let other: Option<String> = w
                .query_one("select current_setting('app.tenant', true)", &[])
                .await
                .expect("tenant")
                .get(0);
            assert!(
                matches!(other.as_deref(), None | Some("")),
                "leaked: {other:?}"
            );
            let ro_w: String = w
                .query_one(
                    "select current_setting('default_transaction_read_only')",
                    &[],
                )
                .await
                .expect("ro")
                .get(0);
            assert_eq!(ro_w, "off");
        }
        let n: i64 = r
            .query_one(&format!("select count(*) from {t}"), &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 5);

        // A LATIN1 client (psql) in between UTF-8 clients on the same backend.
        let script: Vec<u8> = [
            &b"show client_encoding;\nselect encode(convert_to('caf"[..],
            &[0xe9],
            &b"', 'UTF8'), 'hex');\n"[..],
        ]
        .concat();
        let latin1 = tokio::task::spawn_blocking(move || {
            let mut cmd = pg_command("psql");
            cmd.env("PGPASSWORD", "app")
                .env("PGCLIENTENCODING", "LATIN1")
                .args(["-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-f", "-", "-d", &url]);
            run_cmd(&mut cmd, Some(&script), Duration::from_secs(30)).ok("psql LATIN1")
        })
        .await
        .expect("psql task");
        assert_eq!(latin1.stdout, "LATIN1\n636166c3a9\n");
        let enc: String = w
            .query_one("select current_setting('client_encoding')", &[])
            .await
            .expect("encoding")
            .get(0);
        assert_eq!(enc, "UTF8");
        let cafe: String = w
            .query_one("select 'caf\u{e9}'::text", &[])
            .await
            .expect("utf8")
            .get(0);
        assert_eq!(cafe, "caf\u{e9}");
    });
}

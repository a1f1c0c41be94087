//! Nothing one client leaves on a server reaches another client (DESIGN §3):
//! settings a client SETs follow that client from server to server, and a
//! server handed to another client carries none of them. PostgreSQL sends
//! no ParameterStatus for most settings (search_path, statement_timeout,
//! work_mem, role), so following ParameterStatus is not enough.
//!
//! The matrix: each way of changing a setting x transaction and session
//! pooling x lanes on and off x simple and extended protocol. Client A
//! changes the setting and keeps seeing it in later transactions; eight
//! clients B connecting after it, all at once, see PostgreSQL's defaults.

use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::common::*;

/// The setting a client changes, how, and what it reads as then.
struct Change {
    /// The statement(s) that change it, sent by client A.
    sql: &'static str,
    /// The setting to read back.
    name: &'static str,
    /// What A reads after `sql`.
    value: &'static str,
}

const CHANGES: &[Change] = &[
    Change {
        sql: "SET search_path = tenant_a, public",
        name: "search_path",
        value: "tenant_a, public",
    },
    Change {
        sql: "set statement_timeout to '1500ms'",
        name: "statement_timeout",
        value: "1500ms",
    },
    // Short enough to cancel the proxy's own read-back, were it not exempt.
    // Not 1 ms: a loaded machine can take longer than that to read the
    // setting back, and the read then fails with 57014 as PostgreSQL
    // alone would fail it.
    Change {
        sql: "SET statement_timeout = 60001",
        name: "statement_timeout",
        value: "60001ms",
    },
    Change {
        sql: "SET SESSION work_mem = '3MB'",
        name: "work_mem",
        value: "3MB",
    },
    Change {
        sql: "select set_config('search_path', 'tenant_a', false)",
        name: "search_path",
        value: "tenant_a",
    },
    Change {
        sql: "SET ROLE shardwire_state_role",
        name: "role",
        value: "shardwire_state_role",
    },
    Change {
        sql: "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        name: "default_transaction_isolation",
        value: "serializable",
    },
    Change {
        sql: "SET lock_timeout = '7s'; SET idle_in_transaction_session_timeout = 0",
        name: "lock_timeout",
        value: "7s",
    },
];

/// A setting's value, read in the simple or the extended protocol.
async fn read(client: &Client, name: &str, extended: bool) -> String {
    let sql = format!("select current_setting('{name}')");
    if extended {
        let row = client.query_one(&sql, &[]).await.expect("read setting");
        return row.get::<_, String>(0);
    }
    let msgs = client.simple_query(&sql).await.expect("read setting");
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a row")
}

/// One cell of the matrix: A changes the setting; A keeps it; eight new
/// clients see the default, also while A is still connected.
async fn one_cell(proxy: &TestProxy, change: &Change, extended: bool, what: &str) {
    let config = proxy.pg_config("app", "app");
    let (fresh, _c) = connect(&config).await;
    let default = read(&fresh, change.name, extended).await;
    drop(fresh);
    assert_ne!(default, change.value, "{what}: the default differs");

    let (a, _ca) = connect(&config).await;
    if extended && !change.sql.contains(';') {
        a.execute(change.sql, &[]).await.expect(change.sql);
    } else {
        a.batch_execute(change.sql).await.expect(change.sql);
    }
    for round in 0..3 {
        assert_eq!(
            read(&a, change.name, extended).await,
            change.value,
            "{what}: client A, round {round}"
        );
    }
    let mut tasks = Vec::new();
    for b in 0..8 {
        let config = config.clone();
        let name = change.name;
        tasks.push(tokio::spawn(async move {
            let (client, _c) = connect(&config).await;
            let mut seen = Vec::new();
            for _ in 0..5 {
                seen.push(read(&client, name, extended).await);
            }
            (b, seen)
        }));
    }
    // A works meanwhile, so its server goes back to the pool between its
    // transactions while the Bs take servers.
    for _ in 0..10 {
        assert_eq!(
            read(&a, change.name, extended).await,
            change.value,
            "{what}: A"
        );
    }
    for t in tasks {
        let (b, seen) = t.await.expect("client B");
        for v in seen {
            assert_eq!(v, default, "{what}: client B{b} saw A's {}", change.name);
        }
    }
    // A RESET follows the client too.
    a.batch_execute(&format!("RESET {}", change.name))
        .await
        .expect("reset");
    assert_eq!(
        read(&a, change.name, extended).await,
        default,
        "{what}: after RESET"
    );
}

fn matrix(mode: &str, lanes: bool) {
    // The tests of this file run at once; the role is made once.
    static ROLE: std::sync::Once = std::sync::Once::new();
    ROLE.call_once(|| {
        superuser_sql(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'shardwire_state_role') \
             THEN CREATE ROLE shardwire_state_role; END IF; END $$; \
             GRANT shardwire_state_role TO app",
        );
    });
    let proxy = TestProxy::start(|c| {
        c["databases"][0]
            .as_table_mut()
            .expect("databases[0]")
            .insert("pool_mode".into(), mode.into());
        set(c, "pool.max_size", 4);
        set(c, "pool.pipeline_lanes", if lanes { 1 } else { 0 });
    });
    block_on(Duration::from_secs(240), async {
        for change in CHANGES {
            for extended in [false, true] {
                let what = format!(
                    "{mode} pooling, lanes {lanes}, {} protocol, `{}`",
                    if extended { "extended" } else { "simple" },
                    change.sql
                );
                one_cell(&proxy, change, extended, &what).await;
            }
        }
    });
}

#[test]
fn settings_follow_their_client_in_transaction_pooling_with_lanes() {
    matrix("transaction", true);
}

#[test]
fn settings_follow_their_client_in_transaction_pooling_without_lanes() {
    matrix("transaction", false);
}

#[test]
fn settings_follow_their_client_in_session_pooling() {
    matrix("session", true);
}

/// A prepared `set_config` run again with other values, and a client that
/// leaves right after its SET: every value reaches the client, none reaches
/// anyone else.
#[test]
fn prepared_set_config_and_a_client_leaving_after_set() {
    let proxy = TestProxy::start(|c| set(c, "pool.max_size", 1));
    let config = proxy.pg_config("app", "app");
    block_on(Duration::from_secs(60), async {
        let (a, _ca) = connect(&config).await;
        let set = a
            .prepare("select set_config('search_path', $1, false)")
            .await
            .expect("prepare");
        for schema in ["one", "two", "three"] {
            a.query_one(&set, &[&schema]).await.expect("set_config");
            let (other, _c) = connect(&config).await;
            assert_eq!(read(&other, "search_path", true).await, "\"$user\", public");
            assert_eq!(read(&a, "search_path", true).await, schema);
        }
        drop(a);
        // A client that leaves with its SET not read back yet: its server
        // is closed, not pooled.
        for _ in 0..5 {
            let (a, conn) = connect(&config).await;
            a.simple_query("set search_path = gone").await.expect("set");
            drop(a);
            drop(conn);
            let (b, _cb) = connect(&config).await;
            assert_eq!(read(&b, "search_path", false).await, "\"$user\", public");
        }
    });
}

const TABLES: &str = r#"
[[tables]]
name = "sstate_t"
key = "id"
strategy = "hash"
"#;

/// Settings over several shards: a SET before the statements follows the
/// client to every shard; a SET that would run on several shards at once
/// (or only on one shard of a transaction that then spans more) is refused
/// before anything runs, as the servers would go back to their pools
/// carrying it.
#[test]
fn settings_and_statements_over_several_shards() {
    let proxy = TestProxy::start(|c| set_tables(c, TABLES));
    let config = proxy.pg_config("app", "app");
    block_on(Duration::from_secs(60), async {
        let (a, _ca) = connect(&config).await;
        a.batch_execute(
            "drop table if exists sstate_t; create table sstate_t (id int primary key, v text)",
        )
        .await
        .expect("create");
        a.batch_execute("insert into sstate_t values (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')")
            .await
            .expect("insert");
        a.batch_execute("set application_name = 'ss'; set work_mem = '5MB'")
            .await
            .expect("set");
        // Every shard's server runs with the client's work_mem.
        let rows = a
            .query(
                "select id from sstate_t where current_setting('work_mem') = '5MB'",
                &[],
            )
            .await
            .expect("scatter");
        assert_eq!(rows.len(), 4, "a shard ran without the client's work_mem");
        for sql in [
            "set work_mem = '6MB'; select * from sstate_t",
            "select set_config('work_mem', '6MB', false), id from sstate_t",
            "set work_mem = '6MB'; create table sstate_other (i int)",
        ] {
            let e = a.batch_execute(sql).await.expect_err(sql);
            let db = e.as_db_error().expect("a server error");
            assert_eq!(db.code().code(), "0A000", "{sql}: {db}");
        }
        let e = a
            .query(
                "select set_config('work_mem', '6MB', false), id from sstate_t",
                &[],
            )
            .await
            .expect_err("extended");
        assert_eq!(e.as_db_error().expect("db").code().code(), "0A000");
        // Inside a transaction: SET on the first shard, then a second shard.
        let ids: Vec<i32> = (1..=4).collect();
        a.batch_execute(&format!(
            "begin; set work_mem = '7MB'; update sstate_t set v = 'x' where id = {}",
            ids[0]
        ))
        .await
        .expect("first shard");
        let mut refused = false;
        for id in &ids[1..] {
            if let Err(e) = a
                .batch_execute(&format!("update sstate_t set v = 'x' where id = {id}"))
                .await
            {
                assert_eq!(e.as_db_error().expect("db").code().code(), "0A000", "{e}");
                refused = true;
                break;
            }
        }
        assert!(refused, "a second shard was reached");
        a.batch_execute("rollback").await.expect("rollback");
        assert_eq!(read(&a, "work_mem", false).await, "5MB");
        let rows = a
            .simple_query("select count(*) from sstate_t where v = 'x'")
            .await
            .expect("count");
        assert!(matches!(&rows[1], SimpleQueryMessage::Row(r) if r.get(0) == Some("0")));
        // SET LOCAL inside a transaction over several shards is fine.
        for sql in [
            "begin",
            "set local work_mem = '8MB'",
            "update sstate_t set v = 'y'",
            "commit",
        ] {
            a.batch_execute(sql).await.expect(sql);
        }
        assert_eq!(read(&a, "work_mem", false).await, "5MB");
        a.batch_execute("drop table sstate_t").await.expect("drop");
    });
}

/// Issue 21, case 2: after `ALTER TABLE ... ADD COLUMN` through the proxy,
/// clients that prepare the statement then get the new columns, as from
/// PostgreSQL alone, while a client whose statement predates the migration
/// gets PostgreSQL's own error for it. Before, every new client failed with
/// `0A000 cached plan must not change result type` for as long as the
/// server connection lived (it shared the older client's server-side
/// statement). A migration sent to the shard directly costs a new client at
/// most one such error.
#[test]
fn statements_prepared_after_a_migration_see_the_new_columns() {
    let proxy = TestProxy::start(|c| set(c, "pool.max_size", 1));
    let config = proxy.pg_config("app", "app");
    block_on(Duration::from_secs(60), async {
        let (m, _cm) = connect(&config).await;
        m.batch_execute(
            "drop table if exists ps_mig; create table ps_mig (a int); insert into ps_mig values (1)",
        )
        .await
        .expect("setup");
        let (a, _ca) = connect(&config).await;
        let old = a.prepare("select * from ps_mig").await.expect("prepare");
        assert_eq!(a.query_one(&old, &[]).await.expect("A").len(), 1);

        m.batch_execute("alter table ps_mig add column b int default 7")
            .await
            .expect("migration");
        for round in 0..3 {
            let (c, _cc) = connect(&config).await;
            let row = c
                .query_one("select * from ps_mig", &[])
                .await
                .unwrap_or_else(|e| panic!("client after the migration, round {round}: {e}"));
            assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (1, 7));
        }
        // PostgreSQL alone refuses the older client's statement.
        let e = a.query_one(&old, &[]).await.expect_err("stale statement");
        assert_eq!(e.as_db_error().expect("db").code().code(), "0A000", "{e}");

        // The same migration sent to the shard itself, unseen by the proxy.
        let (c, _cc) = connect(&config).await;
        c.query_one("select * from ps_mig", &[])
            .await
            .expect("warm");
        superuser_sql_on("s0", "alter table ps_mig add column c int default 8");
        let (d, _cd) = connect(&config).await;
        let mut errors = 0;
        let row = loop {
            match d.query_one("select * from ps_mig", &[]).await {
                Ok(row) => break row,
                Err(e) => {
                    assert_eq!(e.as_db_error().expect("db").code().code(), "0A000", "{e}");
                    errors += 1;
                    assert!(errors <= 1, "more than one error after a direct migration");
                }
            }
        };
        assert_eq!(row.len(), 3);
        m.batch_execute("drop table ps_mig").await.expect("drop");
    });
}

/// A client's statement prepared before `ALTER TABLE ... ADD COLUMN` runs
/// after it on a server that never had it (its old server is gone): the
/// proxy prepares it there afresh, which would answer with the new
/// columns, while PostgreSQL alone refuses the older plan with `0A000
/// cached plan must not change result type`, every time, until the client
/// prepares it again. A statement whose columns did not change runs on.
#[test]
fn a_statement_older_than_a_migration_fails_as_in_postgres_on_any_server() {
    let proxy = TestProxy::start(|c| {
        set(c, "pool.max_size", 2);
        set(c, "pool.pipeline_lanes", 0);
    });
    let config = proxy.pg_config("app", "app");
    block_on(Duration::from_secs(60), async {
        let (m, _cm) = connect(&config).await;
        m.batch_execute(
            "drop table if exists ps_mig2; create table ps_mig2 (a int); insert into ps_mig2 values (1)",
        )
        .await
        .expect("setup");
        let (a, _ca) = connect(&config).await;
        let all = a.prepare("select * from ps_mig2").await.expect("prepare *");
        let one = a.prepare("select a from ps_mig2").await.expect("prepare a");
        assert_eq!(a.query_one(&all, &[]).await.expect("A").len(), 1);
        m.batch_execute("alter table ps_mig2 add column b int default 7")
            .await
            .expect("migration");
        // Every server A's statements were on goes away.
        let (s0, _c0) = connect_url(&cluster().direct_url()).await;
        // (Only the proxy's connections that ran A's statements: other
        // tests share the cluster.)
        s0.batch_execute(
            "select pg_terminate_backend(pid) from pg_stat_activity \
             where pid <> pg_backend_pid() and query like '%from ps_' || 'mig2%'",
        )
        .await
        .ok();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        for round in 0..3 {
            let e = loop {
                match a.query(&all, &[]).await {
                    // The termination reached the proxy (a lost connection,
                    // the shard banned for a second): A tries again.
                    Err(e)
                        if std::time::Instant::now() < deadline
                            && matches!(
                                e.code().map(|c| c.code()),
                                None | Some("57P01" | "08006")
                            ) =>
                    {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    Err(e) => break e,
                    Ok(rows) => panic!(
                        "round {round}: the older statement answered with {} columns",
                        rows[0].len()
                    ),
                }
            };
            assert_eq!(
                e.code().map(|c| c.code()),
                Some("0A000"),
                "round {round}: {e:?}"
            );
        }
        let v: i32 = a
            .query_one(&one, &[])
            .await
            .expect("unchanged columns")
            .get(0);
        assert_eq!(v, 1);
        // Prepared again, it has the new columns.
        let again = a
            .prepare("select * from ps_mig2")
            .await
            .expect("prepare again");
        assert_eq!(a.query_one(&again, &[]).await.expect("again").len(), 2);
        m.batch_execute("drop table ps_mig2").await.expect("drop");
    });
}

/// A statement whose parameter type was inferred from a column of an enum
/// type, prepared by one client; the type and table are then dropped and
/// created again (psycopg's enum tests do this). A new client preparing the
/// same text must get a plan of the new type, as from PostgreSQL alone, not
/// the older server-side statement (`XX000 cache lookup failed for type`).
/// Recreated on the shard directly, unseen by the proxy, it costs a new
/// client at most one such error.
#[test]
fn statements_prepared_after_a_type_is_recreated_use_the_new_type() {
    let proxy = TestProxy::start(|c| set(c, "pool.max_size", 1));
    let config = proxy.pg_config("app", "app");
    let recreate = "drop table if exists ps_enum_t; drop type if exists ps_mood;
         create type ps_mood as enum ('sad', 'ok', 'happy');
         create table ps_enum_t (m ps_mood); insert into ps_enum_t values ('ok')";
    /// An enum label (its binary form is its text).
    #[derive(Debug)]
    struct Label(&'static str);
    impl tokio_postgres::types::ToSql for Label {
        fn to_sql(
            &self,
            _: &tokio_postgres::types::Type,
            out: &mut bytes::BytesMut,
        ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
        {
            out.extend_from_slice(self.0.as_bytes());
            Ok(tokio_postgres::types::IsNull::No)
        }
        fn accepts(ty: &tokio_postgres::types::Type) -> bool {
            ty.name() == "ps_mood"
        }
        tokio_postgres::types::to_sql_checked!();
    }
    // The parameter's type is inferred from the column: the enum.
    async fn count(c: &Client) -> Result<i64, tokio_postgres::Error> {
        let query = "select count(*) from ps_enum_t where m = $1";
        c.query_one(query, &[&Label("ok")])
            .await
            .map(|r| r.get::<_, i64>(0))
    }
    block_on(Duration::from_secs(60), async {
        let (m, _cm) = connect(&config).await;
        m.batch_execute(recreate).await.expect("setup");
        let (a, _ca) = connect(&config).await;
        assert_eq!(count(&a).await.expect("A"), 1);
        m.batch_execute(recreate).await.expect("recreate");
        for round in 0..3 {
            let (c, _cc) = connect(&config).await;
            let n = count(&c).await.unwrap_or_else(|e| {
                panic!("client after the type was recreated, round {round}: {e}")
            });
            assert_eq!(n, 1);
        }
        superuser_sql_on("s0", &format!("set role app; {recreate}"));
        let (d, _cd) = connect(&config).await;
        let mut errors = 0;
        let n = loop {
            match count(&d).await {
                Ok(n) => break n,
                Err(e) => {
                    errors += 1;
                    assert!(
                        errors <= 1,
                        "more than one error after a direct change: {e:?}"
                    );
                }
            }
        };
        assert_eq!(n, 1);
        m.batch_execute("drop table ps_enum_t; drop type ps_mood")
            .await
            .expect("drop");
    });
}

/// Issue 21, case 3: `DEALLOCATE ALL` in the extended protocol drops the
/// proxy's statements on that server too; the proxy must know, or every
/// later client gets `26000 prepared statement "sw_..." does not exist`.
#[test]
fn deallocate_all_in_the_extended_protocol_is_followed() {
    let proxy = TestProxy::start(|c| set(c, "pool.max_size", 1));
    let config = proxy.pg_config("app", "app");
    block_on(Duration::from_secs(60), async {
        let (a, _ca) = connect(&config).await;
        let stmt = a.prepare("select 41 + 1").await.expect("prepare");
        assert_eq!(
            a.query_one(&stmt, &[]).await.expect("A").get::<_, i32>(0),
            42
        );
        for sql in ["DEALLOCATE ALL", "deallocate prepare all", "DISCARD ALL"] {
            let (b, _cb) = connect(&config).await;
            b.execute(sql, &[]).await.expect(sql);
            let (c, _cc) = connect(&config).await;
            let row = c
                .query_one("select 41 + 1", &[])
                .await
                .unwrap_or_else(|e| panic!("a client after {sql}: {e}"));
            assert_eq!(row.get::<_, i32>(0), 42);
            // A's own statement is still A's, as in PostgreSQL.
            assert_eq!(
                a.query_one(&stmt, &[]).await.expect("A").get::<_, i32>(0),
                42
            );
        }
    });
}

/// State that cannot follow a client (DESIGN §3): the client keeps its
/// server (a pin, counted in /metrics), so the state stays its own, and no
/// other client ever gets that server while it is pinned. PostgreSQL's
/// answers for the others are those of a fresh session.
///
/// The matrix: transaction pooling with and without lanes, and session
/// pooling; A's statements in the simple and the extended protocol.
#[test]
fn state_that_cannot_follow_pins_the_server_and_reaches_no_one_else() {
    for (mode, lanes) in [
        ("transaction", true),
        ("transaction", false),
        ("session", true),
    ] {
        for extended in [false, true] {
            pin_cell(mode, lanes, extended);
        }
    }
}

fn pin_cell(mode: &str, lanes: bool, extended: bool) {
    let what = format!(
        "{mode} pooling, lanes {lanes}, {} protocol",
        if extended { "extended" } else { "simple" }
    );
    let proxy = TestProxy::start(|c| {
        c["databases"][0]
            .as_table_mut()
            .expect("databases[0]")
            .insert("pool_mode".into(), mode.into());
        set(c, "pool.max_size", if mode == "session" { 12 } else { 3 });
        set(c, "pool.pipeline_lanes", if lanes { 1 } else { 0 });
    });
    let config = proxy.pg_config("app", "app");
    // (A's statement, A's later check, another client's check: its
    // expected text or SQLSTATE)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "create temp table pin_tt (i int); insert into pin_tt values (5)",
            "select i::text from pin_tt",
            "select coalesce(to_regclass('pin_tt')::text, 'none')",
            "none",
        ),
        (
            "select pg_advisory_lock(77077)",
            "select count(*)::text from pg_locks where locktype = 'advisory' and objid = 77077 and pid = pg_backend_pid()",
            "select pg_try_advisory_lock(77077)::text",
            "false",
        ),
        (
            "prepare pin_p as select 5",
            "execute pin_p",
            "execute pin_p",
            "26000",
        ),
        (
            "listen pin_channel",
            "select count(*)::text from pg_listening_channels()",
            "select count(*)::text from pg_listening_channels()",
            "0",
        ),
        (
            "declare pin_c cursor with hold for select 5",
            "select count(*)::text from pg_cursors where name = 'pin_c'",
            "fetch pin_c",
            "34000",
        ),
    ];
    block_on(Duration::from_secs(120), async {
        for (set_up, own, other, expect) in cases {
            let (a, _ca) = connect(&config).await;
            for stmt in set_up.split("; ") {
                if extended {
                    a.execute(stmt, &[]).await.map(drop)
                } else {
                    a.batch_execute(stmt).await
                }
                .unwrap_or_else(|e| panic!("{what}: {stmt}: {e}"));
            }
            for _ in 0..3 {
                let v = first_text(&a, own).await;
                assert!(
                    v.as_deref() == Ok("5") || v.as_deref() == Ok("1"),
                    "A after `{set_up}`: {v:?}"
                );
            }
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let config = config.clone();
                let other = other.to_string();
                tasks.push(tokio::spawn(async move {
                    let (b, _cb) = connect(&config).await;
                    let mut seen = Vec::new();
                    for _ in 0..3 {
                        seen.push(first_text(&b, &other).await);
                    }
                    seen
                }));
            }
            for t in tasks {
                for v in t.await.expect("client B") {
                    let v = v.unwrap_or_else(|code| code);
                    assert_eq!(&v, expect, "{what}: another client after A's `{set_up}`");
                }
            }
            assert_eq!(
                first_text(&a, own)
                    .await
                    .as_deref()
                    .map(|v| v == "5" || v == "1"),
                Ok(true)
            );
            // SHOW CLIENTS says what pins A's server; after A's DISCARD ALL
            // the state is gone and so is the pin.
            let pinned = |proxy: &TestProxy| -> Vec<String> {
                proxy
                    .admin("SHOW CLIENTS")
                    .into_iter()
                    .filter(|r| r[1] == "app" && !r[9].is_empty())
                    .map(|r| r[9].clone())
                    .collect()
            };
            if mode == "transaction" {
                assert_eq!(pinned(&proxy).len(), 1, "{what}: A's pin in SHOW CLIENTS");
                a.batch_execute("DISCARD ALL").await.expect("discard");
                assert!(
                    pinned(&proxy).is_empty(),
                    "{what}: still pinned after DISCARD ALL"
                );
            }
        }
    });
    // Session pooling keeps every server with its client anyway.
    let (_, m) = proxy.http_get("/metrics");
    let pins = metric(&m, "shardwire_pins_total", &[]);
    if mode == "transaction" {
        assert!(pins >= 5.0, "{what}: {m}");
        // Logged with the statement that caused it.
        let log = proxy.log();
        assert!(
            log.lines().any(
                |l| l.contains("pins this client's server") && l.contains("listen pin_channel")
            ),
            "{what}: no pin log line naming the statement:\n{log}"
        );
    } else {
        assert_eq!(pins, 0.0, "{what}");
    }
}

/// The first value of a simple query's first row as text, or its SQLSTATE.
async fn first_text(c: &Client, sql: &str) -> Result<String, String> {
    match c.simple_query(sql).await {
        Ok(msgs) => Ok(msgs
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap_or_default()),
        Err(e) => Err(e
            .as_db_error()
            .map(|d| d.code().code().to_string())
            .unwrap_or_else(|| e.to_string())),
    }
}

/// SET SESSION AUTHORIZATION changes the session user, which no read-back
/// can carry to another server: refused before it runs in transaction
/// pooling (in a transaction too, which then fails as PostgreSQL's would);
/// passed to the server in session pooling, where DISCARD ALL resets it.
#[test]
fn set_session_authorization_is_refused_where_servers_are_shared() {
    let proxy = TestProxy::start(|_| {});
    let config = proxy.pg_config("app", "app");
    block_on(Duration::from_secs(30), async {
        let (a, _ca) = connect(&config).await;
        let e = a
            .batch_execute("SET SESSION AUTHORIZATION app")
            .await
            .expect_err("refused");
        assert_eq!(sqlstate(&e), "0A000", "{e}");
        let e = a
            .execute("set session authorization default", &[])
            .await
            .expect_err("refused in the extended protocol");
        assert_eq!(sqlstate(&e), "0A000", "{e}");
        a.batch_execute("begin").await.expect("begin");
        let e = a
            .batch_execute("/* x */ set session authorization app")
            .await
            .expect_err("refused in a transaction");
        assert_eq!(sqlstate(&e), "0A000", "{e}");
        let e = a
            .batch_execute("select 1")
            .await
            .expect_err("failed transaction");
        assert_eq!(sqlstate(&e), "25P02", "{e}");
        a.batch_execute("rollback").await.expect("rollback");
        assert_eq!(read(&a, "session_authorization", false).await, "app");
    });
    let session = TestProxy::start(|c| {
        c["databases"][0]
            .as_table_mut()
            .expect("databases[0]")
            .insert("pool_mode".into(), "session".into());
    });
    let config = session.pg_config("app", "app");
    block_on(Duration::from_secs(30), async {
        let (a, _ca) = connect(&config).await;
        // PostgreSQL lets a user set it to itself.
        a.batch_execute("SET SESSION AUTHORIZATION app")
            .await
            .expect("session pooling passes it on");
        assert_eq!(read(&a, "session_authorization", false).await, "app");
    });
}

/// LISTEN in transaction pooling pins the client's server, and the
/// notifications that server receives reach the client while it is idle,
/// as from PostgreSQL alone; another client's session never gets them.
#[test]
fn a_listening_client_gets_its_notifications_in_transaction_pooling() {
    use crate::bad_input::{frame, raw_session, read_until};
    use tokio::io::AsyncWriteExt;
    let proxy = TestProxy::start(|c| {
        add_user(
            c,
            "name = \"raw\"\nauth = \"trust\"\nserver_user = \"app\"\nserver_password = \"app\"",
        );
    });
    let config = proxy.pg_config("app", "app");
    block_on(Duration::from_secs(30), async {
        let mut a = raw_session(proxy.port).await;
        a.write_all(&frame(b'Q', b"LISTEN sstate_ch\0"))
            .await
            .expect("listen");
        read_until(&mut a, b'Z').await;
        let (b, _cb) = connect(&config).await;
        b.batch_execute("NOTIFY sstate_ch, 'one'; select pg_notify('sstate_ch', 'two')")
            .await
            .expect("notify");
        // A, idle, gets both.
        let got = read_until(&mut a, b'A').await;
        let mut payloads: Vec<String> = got
            .iter()
            .filter(|(t, _)| *t == b'A')
            .map(|(_, body)| String::from_utf8_lossy(&body[4..]).to_string())
            .collect();
        if payloads.len() < 2 {
            payloads.extend(
                read_until(&mut a, b'A')
                    .await
                    .iter()
                    .filter(|(t, _)| *t == b'A')
                    .map(|(_, body)| String::from_utf8_lossy(&body[4..]).to_string()),
            );
        }
        assert_eq!(payloads.len(), 2, "{payloads:?}");
        assert!(
            payloads[0].contains("one") && payloads[1].contains("two"),
            "{payloads:?}"
        );
        // A new client listens on nothing.
        let (c, _cc) = connect(&config).await;
        let n: i64 = c
            .query_one("select count(*) from pg_listening_channels()", &[])
            .await
            .expect("channels")
            .get(0);
        assert_eq!(n, 0);
    });
}

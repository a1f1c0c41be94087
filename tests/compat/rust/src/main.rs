//! The Rust scenarios of scripts/compat.sh: `shardwire-compat tokio-postgres`
//! and `shardwire-compat sqlx`. Each prints one line per step,
//! `COMPAT<TAB>driver<TAB>version<TAB>step<TAB>pass|fail|n/a<TAB>detail`, and
//! bounds every step with COMPAT_STEP_TIMEOUT seconds.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;

type Res = Result<String, String>;

struct Env {
    host: String,
    port: u16,
    user: String,
    password: String,
    db: String,
    ca: String,
    prefix: String,
    step_timeout: Duration,
}

fn env() -> Env {
    let v = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    Env {
        host: v("COMPAT_HOST"),
        port: v("COMPAT_PORT").parse().expect("COMPAT_PORT"),
        user: v("COMPAT_USER"),
        password: v("COMPAT_PASSWORD"),
        db: v("COMPAT_DB"),
        ca: v("COMPAT_CA"),
        prefix: v("COMPAT_PREFIX"),
        step_timeout: Duration::from_secs(
            std::env::var("COMPAT_STEP_TIMEOUT")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(30),
        ),
    }
}

/// The version of `name` in this project's Cargo.lock.
fn locked_version(name: &str) -> String {
    let lock = include_str!("../Cargo.lock");
    let needle = format!("name = \"{name}\"\nversion = \"");
    lock.find(&needle)
        .map(|i| {
            let rest = &lock[i + needle.len()..];
            rest[..rest.find('"').unwrap_or(0)].to_string()
        })
        .unwrap_or_else(|| "?".into())
}

struct Reporter {
    driver: &'static str,
    version: String,
    timeout: Duration,
}

impl Reporter {
    fn report(&self, step: &str, status: &str, detail: &str) {
        let detail: String = detail.split_whitespace().collect::<Vec<_>>().join(" ");
        let detail: String = detail.chars().take(400).collect();
        println!(
            "COMPAT\t{}\t{}\t{step}\t{status}\t{detail}",
            self.driver, self.version
        );
    }

    fn na(&self, step: &str, why: &str) {
        self.report(step, "n/a", why);
    }

    async fn run<F: Future<Output = Res>>(&self, step: &str, f: F) -> bool {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(detail)) => {
                self.report(step, "pass", &detail);
                true
            }
            Ok(Err(e)) => {
                self.report(step, "fail", &e);
                false
            }
            Err(_) => {
                self.report(
                    step,
                    "fail",
                    &format!("no answer within {}s (hang)", self.timeout.as_secs()),
                );
                false
            }
        }
    }
}

fn expect<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: expected {want:?}, got {got:?}"))
    }
}

fn keys() -> Vec<i64> {
    (1..=1000).map(|i| i * 7919).collect()
}

fn copy_lines() -> Vec<String> {
    (1..=1000)
        .map(|i| format!("{i}\tcopy row {i}\t{i}.5"))
        .collect()
}

// The values every scenario round-trips, in Rust types.
const T_TEXT: &str = "héllo \"wörld\" \\ 'q' ☃";
const BYTEA: &[u8] = &[0, 255, 16, 39, 92];
const UUID: &str = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
const COLS: &str = "i2, i4, i8, n, f8, t, b, bo, d, ts, iv, u, j, ia, ta";
const INSERT_PARAMS: &str = "$1, $2::int2, $3::int4, $4::int8, $5::numeric, $6::float8, $7::text, $8::bytea, \
     $9::bool, $10::date, $11::timestamptz, $12::interval, $13::uuid, $14::jsonb, $15::int4[], $16::text[]";
/// The first row in text format, as PostgreSQL prints it (TimeZone UTC).
const TEXT_ROW: [&str; 15] = [
    "12345",
    "-2147483648",
    "9007199254740993",
    "12345678901234567890.123456789",
    "3.25",
    T_TEXT,
    "\\x00ff10275c",
    "t",
    "2024-02-29",
    "2024-02-29 12:34:56.789+00",
    "1 day 02:03:04.5",
    UUID,
    "{\"a\": [1, 2.5, {\"b\": null}], \"s\": \"x\"}",
    "{1,NULL,3}",
    "{\"a b\",c,NULL,\"q\\\"x\"}",
];

fn text_insert_sql(table: &str) -> String {
    format!(
        "insert into {table} (id, {COLS}) values (1, 12345, -2147483648, 9007199254740993, \
         12345678901234567890.123456789, 3.25, 'héllo \"wörld\" \\ ''q'' ☃', '\\x00ff10275c', true, \
         '2024-02-29', '2024-02-29 12:34:56.789+00', '1 day 02:03:04.5', '{UUID}', \
         '{{\"s\": \"x\", \"a\": [1, 2.5, {{\"b\": null}}]}}', '{{1,NULL,3}}', '{{\"a b\",c,NULL,\"q\\\"x\"}}'), \
         (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
    )
}

fn decimal() -> Decimal {
    "12345678901234567890.123456789".parse().expect("decimal")
}
fn date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 2, 29).expect("date")
}
fn ts() -> DateTime<Utc> {
    "2024-02-29T12:34:56.789Z".parse().expect("timestamp")
}
fn json() -> serde_json::Value {
    serde_json::json!({"a": [1, 2.5, {"b": null}], "s": "x"})
}
fn uuid() -> uuid::Uuid {
    UUID.parse().expect("uuid")
}
fn int_array() -> Vec<Option<i32>> {
    vec![Some(1), None, Some(3)]
}
fn text_array() -> Vec<Option<String>> {
    vec![
        Some("a b".into()),
        Some("c".into()),
        None,
        Some("q\"x".into()),
    ]
}
const IV_MICROS: i64 = (2 * 3600 + 3 * 60 + 4) * 1_000_000 + 500_000;

fn tls_config(ca: &str) -> Result<rustls::ClientConfig, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("read {ca}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    let env = env();
    match which.as_str() {
        "tokio-postgres" => tokio_pg::run(&env).await,
        "sqlx" => sqlx_scenario::run(&env).await,
        other => {
            eprintln!("usage: shardwire-compat tokio-postgres|sqlx (got {other:?})");
            std::process::exit(2);
        }
    }
    // Hung steps may still hold tasks; leave at once.
    std::process::exit(0);
}

mod tokio_pg {
    use super::*;
    use bytes::{Buf, BufMut, Bytes, BytesMut};
    use futures_util::{SinkExt, StreamExt, TryStreamExt};
    use tokio_postgres::error::SqlState;
    use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
    use tokio_postgres::{Client, Config, NoTls};

    /// tokio-postgres has no interval type: its binary form, by hand.
    #[derive(Debug, PartialEq)]
    struct Interval {
        micros: i64,
        days: i32,
        months: i32,
    }
    impl<'a> FromSql<'a> for Interval {
        fn from_sql(
            _: &Type,
            mut raw: &'a [u8],
        ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
            Ok(Interval {
                micros: raw.get_i64(),
                days: raw.get_i32(),
                months: raw.get_i32(),
            })
        }
        fn accepts(ty: &Type) -> bool {
            *ty == Type::INTERVAL
        }
    }
    impl ToSql for Interval {
        fn to_sql(
            &self,
            _: &Type,
            out: &mut BytesMut,
        ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
            out.put_i64(self.micros);
            out.put_i32(self.days);
            out.put_i32(self.months);
            Ok(IsNull::No)
        }
        fn accepts(ty: &Type) -> bool {
            *ty == Type::INTERVAL
        }
        to_sql_checked!();
    }

    fn config(env: &Env) -> Config {
        let mut c = Config::new();
        c.host(&env.host)
            .port(env.port)
            .user(&env.user)
            .password(&env.password)
            .dbname(&env.db)
            .options("-c TimeZone=UTC")
            .connect_timeout(Duration::from_secs(10));
        c
    }

    async fn connect(env: &Env) -> Result<Client, String> {
        let (client, conn) = config(env).connect(NoTls).await.map_err(err)?;
        tokio::spawn(conn);
        Ok(client)
    }

    fn err(e: tokio_postgres::Error) -> String {
        match e.as_db_error() {
            Some(db) => format!(
                "SQLSTATE {}: {}{}",
                db.code().code(),
                db.message(),
                db.hint().map(|h| format!(" HINT: {h}")).unwrap_or_default()
            ),
            None => e.to_string(),
        }
    }

    pub async fn run(env: &Env) {
        let r = Reporter {
            driver: "tokio-postgres",
            version: locked_version("tokio-postgres"),
            timeout: env.step_timeout,
        };
        let p = &env.prefix;
        let mut client = None;
        r.run("connect_scram", async {
            let c = connect(env).await?;
            let u: String = c
                .query_one("select current_user::text", &[])
                .await
                .map_err(err)?
                .get(0);
            expect("current_user", u.as_str(), "app")?;
            client = Some(c);
            Ok(String::new())
        })
        .await;
        let Some(c) = client else { return };
        let c = &c;

        r.run("connect_tls", async {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(&env.ca)?);
            let mut cfg = config(env);
            cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
            let (t, conn) = cfg.connect(tls).await.map_err(err)?;
            tokio::spawn(conn);
            let v: String = t.query_one("select 'tls'", &[]).await.map_err(err)?.get(0);
            expect("select", v.as_str(), "tls")?;
            Ok("rustls, verified against the CA".into())
        })
        .await;

        r.run("simple_query", async {
            let rows = c
                .simple_query("select 1, 'one' union all select 2, 'two'")
                .await
                .map_err(err)?;
            let got: Vec<(String, String)> = rows
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                        r.get(0).unwrap_or_default().to_string(),
                        r.get(1).unwrap_or_default().to_string(),
                    )),
                    _ => None,
                })
                .collect();
            expect(
                "rows",
                got,
                vec![("1".into(), "one".into()), ("2".into(), "two".into())],
            )?;
            Ok(String::new())
        })
        .await;

        r.run("params", async {
            let row = c
                .query_one(
                    "select $1::int4 + 1, $2::text, $3::int8 is null",
                    &[&41i32, &"x", &None::<i64>],
                )
                .await
                .map_err(err)?;
            expect(
                "row",
                (
                    row.get::<_, i32>(0),
                    row.get::<_, String>(1),
                    row.get::<_, bool>(2),
                ),
                (42, "x".into(), true),
            )?;
            Ok(String::new())
        })
        .await;

        r.run("prepared_reuse", async {
            let stmt = c
                .prepare("select $1::int8 * 2, pg_backend_pid()")
                .await
                .map_err(err)?;
            let b = connect(env).await?;
            let mut pids = HashSet::new();
            for i in 0..40i64 {
                if i % 2 == 1 {
                    b.batch_execute("begin; select 1").await.map_err(err)?;
                }
                c.batch_execute("begin").await.map_err(err)?;
                let row = c.query_one(&stmt, &[&i]).await.map_err(err)?;
                c.batch_execute("commit").await.map_err(err)?;
                expect("result", row.get::<_, i64>(0), 2 * i)?;
                pids.insert(row.get::<_, i32>(1));
                if i % 2 == 1 {
                    b.batch_execute("commit").await.map_err(err)?;
                }
            }
            if pids.len() < 2 {
                return Err(format!(
                    "40 transactions all ran on one server connection ({pids:?})"
                ));
            }
            Ok(format!(
                "40 transactions on {} server connections",
                pids.len()
            ))
        })
        .await;

        let count = |id: i32| async move {
            c.query_one(
                &format!("select count(*) from {p}_tx where id = $1"),
                &[&id],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
            .map_err(err)
        };
        let insert = format!("insert into {p}_tx values ($1, $2)");
        r.run("tx_commit", async {
            c.batch_execute("begin").await.map_err(err)?;
            c.execute(&insert, &[&1i32, &"committed"])
                .await
                .map_err(err)?;
            c.batch_execute("commit").await.map_err(err)?;
            expect("count", count(1).await?, 1)?;
            Ok(String::new())
        })
        .await;
        r.run("tx_rollback", async {
            c.batch_execute("begin").await.map_err(err)?;
            c.execute(&insert, &[&2i32, &"rolled back"])
                .await
                .map_err(err)?;
            c.batch_execute("rollback").await.map_err(err)?;
            expect("count", count(2).await?, 0)?;
            Ok(String::new())
        })
        .await;
        r.run("tx_error_rollback", async {
            c.batch_execute("begin").await.map_err(err)?;
            c.execute(&insert, &[&3i32, &"lost"]).await.map_err(err)?;
            let e = c
                .query_one("select 1 / $1::int", &[&0i32])
                .await
                .err()
                .ok_or("1/0 did not fail")?;
            expect("sqlstate", e.code(), Some(&SqlState::DIVISION_BY_ZERO))?;
            let e = c
                .query_one("select 1", &[])
                .await
                .err()
                .ok_or("a statement after the error did not fail")?;
            expect(
                "sqlstate",
                e.code(),
                Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
            )?;
            c.batch_execute("rollback").await.map_err(err)?;
            expect("count", count(3).await?, 0)?;
            Ok(String::new())
        })
        .await;
        let _ = c.batch_execute("rollback").await;

        r.run("types_text", async {
            // simple_query: literals in, text format out.
            c.simple_query(&text_insert_sql(&format!("{p}_types")))
                .await
                .map_err(err)?;
            let msgs = c
                .simple_query(&format!(
                    "select {COLS} from {p}_types where id in (1, 2) order by id"
                ))
                .await
                .map_err(err)?;
            let rows: Vec<Vec<Option<String>>> = msgs
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(String::from)).collect())
                    }
                    _ => None,
                })
                .collect();
            expect("rows", rows.len(), 2)?;
            let want: Vec<Option<String>> = TEXT_ROW.iter().map(|s| Some(s.to_string())).collect();
            expect("row 1", &rows[0], &want)?;
            expect("row 2", &rows[1], &vec![None; 15])?;
            Ok("simple query protocol".into())
        })
        .await;

        r.run("types_binary", async {
            let sql = format!("insert into {p}_types (id, {COLS}) values ({INSERT_PARAMS})");
            let iv = Interval {
                micros: IV_MICROS,
                days: 1,
                months: 0,
            };
            c.execute(
                &sql,
                &[
                    &3i32,
                    &12345i16,
                    &i32::MIN,
                    &9007199254740993i64,
                    &decimal(),
                    &3.25f64,
                    &T_TEXT,
                    &BYTEA,
                    &true,
                    &date(),
                    &ts(),
                    &iv,
                    &uuid(),
                    &json(),
                    &int_array(),
                    &text_array(),
                ],
            )
            .await
            .map_err(err)?;
            let nulls: [&(dyn ToSql + Sync); 16] = [
                &4i32,
                &None::<i16>,
                &None::<i32>,
                &None::<i64>,
                &None::<Decimal>,
                &None::<f64>,
                &None::<String>,
                &None::<Vec<u8>>,
                &None::<bool>,
                &None::<NaiveDate>,
                &None::<DateTime<Utc>>,
                &None::<Interval>,
                &None::<uuid::Uuid>,
                &None::<serde_json::Value>,
                &None::<Vec<i32>>,
                &None::<Vec<String>>,
            ];
            c.execute(&sql, &nulls).await.map_err(err)?;
            let rows = c
                .query(
                    &format!("select {COLS} from {p}_types where id = any($1) order by id"),
                    &[&vec![3i32, 4]],
                )
                .await
                .map_err(err)?;
            expect("rows", rows.len(), 2)?;
            let a = &rows[0];
            expect("i2", a.get::<_, i16>(0), 12345)?;
            expect("i4", a.get::<_, i32>(1), i32::MIN)?;
            expect("i8", a.get::<_, i64>(2), 9007199254740993)?;
            expect("n", a.get::<_, Decimal>(3), decimal())?;
            expect("f8", a.get::<_, f64>(4), 3.25)?;
            expect("t", a.get::<_, String>(5).as_str(), T_TEXT)?;
            expect("b", a.get::<_, Vec<u8>>(6).as_slice(), BYTEA)?;
            expect("bo", a.get::<_, bool>(7), true)?;
            expect("d", a.get::<_, NaiveDate>(8), date())?;
            expect("ts", a.get::<_, DateTime<Utc>>(9), ts())?;
            expect("iv", a.get::<_, Interval>(10), iv)?;
            expect("u", a.get::<_, uuid::Uuid>(11), uuid())?;
            expect("j", a.get::<_, serde_json::Value>(12), json())?;
            expect("ia", a.get::<_, Vec<Option<i32>>>(13), int_array())?;
            expect("ta", a.get::<_, Vec<Option<String>>>(14), text_array())?;
            let b = &rows[1];
            for i in 0..15 {
                let raw: Option<RawValue> = b.get(i);
                expect(&format!("column {i} of the NULL row"), raw.is_none(), true)?;
            }
            Ok("binary parameters and results".into())
        })
        .await;

        r.run("big_result", async {
            let rows = c
                .query(
                    "select g, 'row ' || g from generate_series(1, 50000) g",
                    &[],
                )
                .await
                .map_err(err)?;
            let sum: i64 = rows.iter().map(|r| r.get::<_, i32>(0) as i64).sum();
            expect("rows", (rows.len(), sum), (50000, 1250025000))?;
            expect(
                "last",
                rows[49999].get::<_, String>(1).as_str(),
                "row 50000",
            )?;
            Ok(String::new())
        })
        .await;

        r.run("cancel", async {
            let token = c.cancel_token();
            let start = Instant::now();
            let canceller = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                token.cancel_query(NoTls).await
            });
            let e = c
                .query("select pg_sleep(60)", &[])
                .await
                .err()
                .ok_or("pg_sleep(60) was not cancelled")?;
            expect("sqlstate", e.code(), Some(&SqlState::QUERY_CANCELED))?;
            canceller.await.map_err(|e| e.to_string())?.map_err(err)?;
            let v: String = c.query_one("select 'ok'", &[]).await.map_err(err)?.get(0);
            expect("after cancel", v.as_str(), "ok")?;
            Ok(format!(
                "cancelled after {:.1}s",
                start.elapsed().as_secs_f64()
            ))
        })
        .await;

        r.run("copy_in", async {
            let sink = c
                .copy_in::<_, Bytes>(&format!("copy {p}_copy (id, v, n) from stdin"))
                .await
                .map_err(err)?;
            futures_util::pin_mut!(sink);
            let data = copy_lines().join("\n") + "\n";
            sink.send(Bytes::from(data)).await.map_err(err)?;
            let n = sink.finish().await.map_err(err)?;
            expect("copied", n, 1000)?;
            let row = c
                .query_one(
                    &format!("select count(*), sum(id), sum(n)::text from {p}_copy"),
                    &[],
                )
                .await
                .map_err(err)?;
            expect(
                "table",
                (
                    row.get::<_, i64>(0),
                    row.get::<_, i64>(1),
                    row.get::<_, String>(2),
                ),
                (1000, 500500, "501000.0".into()),
            )?;
            Ok(String::new())
        })
        .await;

        r.run("copy_out", async {
            let stream = c
                .copy_out(&format!(
                    "copy (select id, v, n from {p}_copy order by id) to stdout"
                ))
                .await
                .map_err(err)?;
            let chunks: Vec<Bytes> = stream.try_collect().await.map_err(err)?;
            let text = String::from_utf8(chunks.concat()).map_err(|e| e.to_string())?;
            let lines: Vec<String> = text.lines().map(String::from).collect();
            expect("rows", lines, copy_lines())?;
            Ok(String::new())
        })
        .await;

        r.run("shard_insert", async {
            let stmt = c
                .prepare(&format!("insert into {p}_items (id, v) values ($1, $2)"))
                .await
                .map_err(err)?;
            for k in keys() {
                c.execute(&stmt, &[&k, &format!("item {k}")])
                    .await
                    .map_err(err)?;
            }
            Ok("a prepared statement, one key at a time".into())
        })
        .await;

        r.run("shard_read", async {
            let stmt = c
                .prepare(&format!("select v from {p}_items where id = $1"))
                .await
                .map_err(err)?;
            // Pipelined: all 1000 in flight, each with its own Sync.
            let rows = futures_util::stream::iter(keys())
                .map(|k| {
                    let stmt = stmt.clone();
                    async move { c.query_opt(&stmt, &[&k]).await.map(|r| (k, r)) }
                })
                .buffered(1000)
                .try_collect::<Vec<_>>()
                .await
                .map_err(err)?;
            for (k, row) in rows {
                let v: Option<String> = row.map(|r| r.get(0));
                expect(&format!("key {k}"), v, Some(format!("item {k}")))?;
            }
            Ok("pipelined (1000 queries in flight)".into())
        })
        .await;

        r.run("shard_count", async {
            let row = c
                .query_one(&format!("select count(*), sum(id) from {p}_items"), &[])
                .await
                .map_err(err)?;
            expect(
                "count, sum",
                (row.get::<_, i64>(0), row.get::<_, Decimal>(1)),
                (1000, Decimal::from(keys().iter().sum::<i64>())),
            )?;
            Ok(String::new())
        })
        .await;

        r.run("shard_order_limit", async {
            let rows = c
                .query(
                    &format!("select id, v from {p}_items order by id desc limit 3"),
                    &[],
                )
                .await
                .map_err(err)?;
            let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let want: Vec<(i64, String)> = keys()
                .into_iter()
                .rev()
                .take(3)
                .map(|k| (k, format!("item {k}")))
                .collect();
            expect("rows", got, want)?;
            Ok(String::new())
        })
        .await;
    }

    /// Any column as raw bytes, to check NULLs whatever the type.
    struct RawValue;
    impl<'a> FromSql<'a> for RawValue {
        fn from_sql(
            _: &Type,
            _: &'a [u8],
        ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
            Ok(RawValue)
        }
        fn accepts(_: &Type) -> bool {
            true
        }
    }
}

mod sqlx_scenario {
    use super::*;
    use futures_util::TryStreamExt;
    use sqlx::postgres::types::PgInterval;
    use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
    use sqlx::{Connection, Row};

    fn options(env: &Env) -> PgConnectOptions {
        PgConnectOptions::new()
            .host(&env.host)
            .port(env.port)
            .username(&env.user)
            .password(&env.password)
            .database(&env.db)
            .ssl_mode(PgSslMode::Disable)
            .options([("TimeZone", "UTC")])
    }

    fn err(e: sqlx::Error) -> String {
        match e.as_database_error() {
            Some(db) => format!(
                "SQLSTATE {}: {}",
                db.code().unwrap_or_default(),
                db.message()
            ),
            None => e.to_string(),
        }
    }

    pub async fn run(env: &Env) {
        let r = Reporter {
            driver: "sqlx",
            version: locked_version("sqlx"),
            timeout: env.step_timeout,
        };
        let p = &env.prefix;
        let mut conn = None;
        r.run("connect_scram", async {
            let mut c = PgConnection::connect_with(&options(env))
                .await
                .map_err(err)?;
            let u: String = sqlx::query_scalar("select current_user::text")
                .fetch_one(&mut c)
                .await
                .map_err(err)?;
            expect("current_user", u.as_str(), "app")?;
            conn = Some(c);
            Ok(String::new())
        })
        .await;
        let Some(mut conn) = conn else { return };
        let c = &mut conn;

        r.run("connect_tls", async {
            let mut t = PgConnection::connect_with(
                &options(env)
                    .ssl_mode(PgSslMode::VerifyFull)
                    .ssl_root_cert(&env.ca),
            )
            .await
            .map_err(err)?;
            let v: String = sqlx::query_scalar("select 'tls'")
                .fetch_one(&mut t)
                .await
                .map_err(err)?;
            expect("select", v.as_str(), "tls")?;
            Ok("sslmode=verify-full (rustls)".into())
        })
        .await;

        r.run("simple_query", async {
            let rows = sqlx::raw_sql("select 1 as a, 'one' as b union all select 2, 'two'")
                .fetch_all(&mut *c)
                .await
                .map_err(err)?;
            let got: Vec<(i32, String)> = rows
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, sqlx::Error>>()
                .map_err(err)?;
            expect("rows", got, vec![(1, "one".into()), (2, "two".into())])?;
            Ok("raw_sql (simple query protocol)".into())
        })
        .await;

        r.run("params", async {
            let row = sqlx::query("select $1::int4 + 1, $2::text, $3::int8 is null")
                .bind(41i32)
                .bind("x")
                .bind(None::<i64>)
                .fetch_one(&mut *c)
                .await
                .map_err(err)?;
            expect(
                "row",
                (
                    row.get::<i32, _>(0),
                    row.get::<String, _>(1),
                    row.get::<bool, _>(2),
                ),
                (42, "x".into(), true),
            )?;
            Ok(String::new())
        })
        .await;

        r.run("prepared_reuse", async {
            // sqlx prepares each query text once per connection, by name.
            let mut b = PgConnection::connect_with(&options(env))
                .await
                .map_err(err)?;
            let mut pids = HashSet::new();
            for i in 0..40i64 {
                let held = if i % 2 == 1 {
                    let mut tx = b.begin().await.map_err(err)?;
                    sqlx::query("select 1")
                        .execute(&mut *tx)
                        .await
                        .map_err(err)?;
                    Some(tx)
                } else {
                    None
                };
                let mut tx = c.begin().await.map_err(err)?;
                let row = sqlx::query("select $1::int8 * 2, pg_backend_pid()")
                    .bind(i)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(err)?;
                tx.commit().await.map_err(err)?;
                expect("result", row.get::<i64, _>(0), 2 * i)?;
                pids.insert(row.get::<i32, _>(1));
                if let Some(tx) = held {
                    tx.commit().await.map_err(err)?;
                }
            }
            if pids.len() < 2 {
                return Err(format!(
                    "40 transactions all ran on one server connection ({pids:?})"
                ));
            }
            Ok(format!(
                "40 transactions on {} server connections",
                pids.len()
            ))
        })
        .await;

        let insert = format!("insert into {p}_tx values ($1, $2)");
        let count_sql = format!("select count(*) from {p}_tx where id = $1");
        r.run("tx_commit", async {
            let mut tx = c.begin().await.map_err(err)?;
            sqlx::query(&insert)
                .bind(1i32)
                .bind("committed")
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            tx.commit().await.map_err(err)?;
            let n: i64 = sqlx::query_scalar(&count_sql)
                .bind(1i32)
                .fetch_one(&mut *c)
                .await
                .map_err(err)?;
            expect("count", n, 1)?;
            Ok(String::new())
        })
        .await;
        r.run("tx_rollback", async {
            let mut tx = c.begin().await.map_err(err)?;
            sqlx::query(&insert)
                .bind(2i32)
                .bind("rolled back")
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            tx.rollback().await.map_err(err)?;
            let n: i64 = sqlx::query_scalar(&count_sql)
                .bind(2i32)
                .fetch_one(&mut *c)
                .await
                .map_err(err)?;
            expect("count", n, 0)?;
            Ok(String::new())
        })
        .await;
        r.run("tx_error_rollback", async {
            let mut tx = c.begin().await.map_err(err)?;
            sqlx::query(&insert)
                .bind(3i32)
                .bind("lost")
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            let e = sqlx::query("select 1 / $1::int")
                .bind(0i32)
                .fetch_one(&mut *tx)
                .await
                .err()
                .ok_or("1/0 did not fail")?;
            expect(
                "sqlstate",
                e.as_database_error().and_then(|d| d.code()).as_deref(),
                Some("22012"),
            )?;
            let e = sqlx::query("select 1")
                .fetch_one(&mut *tx)
                .await
                .err()
                .ok_or("a statement after the error did not fail")?;
            expect(
                "sqlstate",
                e.as_database_error().and_then(|d| d.code()).as_deref(),
                Some("25P02"),
            )?;
            tx.rollback().await.map_err(err)?;
            let n: i64 = sqlx::query_scalar(&count_sql)
                .bind(3i32)
                .fetch_one(&mut *c)
                .await
                .map_err(err)?;
            expect("count", n, 0)?;
            Ok(String::new())
        })
        .await;

        r.run("types_text", async {
            // raw_sql: the simple query protocol, values in text format,
            // decoded by sqlx's text decoders (interval has none: as text).
            sqlx::raw_sql(&text_insert_sql(&format!("{p}_types")))
                .execute(&mut *c)
                .await
                .map_err(err)?;
            let sql = format!(
                "select i2, i4, i8, n, f8, t, b, bo, d, ts, iv::text, u, j, ia, ta from {p}_types where id in (1, 2) order by id"
            );
            let rows = sqlx::raw_sql(&sql).fetch_all(&mut *c).await.map_err(err)?;
            expect("rows", rows.len(), 2)?;
            check_row(&rows[0], true)?;
            check_nulls(&rows[1])?;
            Ok("simple query protocol; interval read as text (sqlx has no text decoder for it)".into())
        })
        .await;

        r.run("types_binary", async {
            let sql = format!("insert into {p}_types (id, {COLS}) values ({INSERT_PARAMS})");
            let iv = PgInterval {
                months: 0,
                days: 1,
                microseconds: IV_MICROS,
            };
            sqlx::query(&sql)
                .bind(3i32)
                .bind(12345i16)
                .bind(i32::MIN)
                .bind(9007199254740993i64)
                .bind(decimal())
                .bind(3.25f64)
                .bind(T_TEXT)
                .bind(BYTEA)
                .bind(true)
                .bind(date())
                .bind(ts())
                .bind(iv)
                .bind(uuid())
                .bind(sqlx::types::Json(json()))
                .bind(int_array())
                .bind(text_array())
                .execute(&mut *c)
                .await
                .map_err(err)?;
            sqlx::query(&sql)
                .bind(4i32)
                .bind(None::<i16>)
                .bind(None::<i32>)
                .bind(None::<i64>)
                .bind(None::<Decimal>)
                .bind(None::<f64>)
                .bind(None::<String>)
                .bind(None::<Vec<u8>>)
                .bind(None::<bool>)
                .bind(None::<NaiveDate>)
                .bind(None::<DateTime<Utc>>)
                .bind(None::<PgInterval>)
                .bind(None::<uuid::Uuid>)
                .bind(None::<sqlx::types::Json<serde_json::Value>>)
                .bind(None::<Vec<i32>>)
                .bind(None::<Vec<String>>)
                .execute(&mut *c)
                .await
                .map_err(err)?;
            let rows = sqlx::query(&format!(
                "select {COLS} from {p}_types where id = any($1) order by id"
            ))
            .bind(vec![3i32, 4])
            .fetch_all(&mut *c)
            .await
            .map_err(err)?;
            expect("rows", rows.len(), 2)?;
            check_row(&rows[0], false)?;
            check_nulls(&rows[1])?;
            Ok("binary parameters and results".into())
        })
        .await;

        r.run("big_result", async {
            let rows = sqlx::query("select g, 'row ' || g from generate_series(1, 50000) g")
                .fetch_all(&mut *c)
                .await
                .map_err(err)?;
            let sum: i64 = rows.iter().map(|r| r.get::<i32, _>(0) as i64).sum();
            expect("rows", (rows.len(), sum), (50000, 1250025000))?;
            expect(
                "last",
                rows[49999].get::<String, _>(1).as_str(),
                "row 50000",
            )?;
            Ok(String::new())
        })
        .await;

        r.na(
            "cancel",
            "sqlx has no query cancel API (no CancelRequest; a dropped query future leaves the connection to be closed)",
        );

        r.run("copy_in", async {
            let mut copy = c
                .copy_in_raw(&format!("copy {p}_copy (id, v, n) from stdin"))
                .await
                .map_err(err)?;
            copy.send((copy_lines().join("\n") + "\n").into_bytes())
                .await
                .map_err(err)?;
            let n = copy.finish().await.map_err(err)?;
            expect("copied", n, 1000)?;
            let row = sqlx::query(&format!(
                "select count(*), sum(id), sum(n)::text from {p}_copy"
            ))
            .fetch_one(&mut *c)
            .await
            .map_err(err)?;
            expect(
                "table",
                (
                    row.get::<i64, _>(0),
                    row.get::<i64, _>(1),
                    row.get::<String, _>(2),
                ),
                (1000, 500500, "501000.0".into()),
            )?;
            Ok(String::new())
        })
        .await;

        r.run("copy_out", async {
            let stream = c
                .copy_out_raw(&format!(
                    "copy (select id, v, n from {p}_copy order by id) to stdout"
                ))
                .await
                .map_err(err)?;
            let chunks: Vec<bytes::Bytes> = stream.try_collect().await.map_err(err)?;
            let text = String::from_utf8(chunks.concat()).map_err(|e| e.to_string())?;
            let lines: Vec<String> = text.lines().map(String::from).collect();
            expect("rows", lines, copy_lines())?;
            Ok(String::new())
        })
        .await;

        r.run("shard_insert", async {
            let sql = format!("insert into {p}_items (id, v) values ($1, $2)");
            for k in keys() {
                sqlx::query(&sql)
                    .bind(k)
                    .bind(format!("item {k}"))
                    .execute(&mut *c)
                    .await
                    .map_err(err)?;
            }
            Ok("one key at a time, prepared once".into())
        })
        .await;

        r.run("shard_read", async {
            let sql = format!("select v from {p}_items where id = $1");
            for k in keys() {
                let v: Option<String> = sqlx::query_scalar(&sql)
                    .bind(k)
                    .fetch_optional(&mut *c)
                    .await
                    .map_err(err)?;
                expect(&format!("key {k}"), v, Some(format!("item {k}")))?;
            }
            Ok(String::new())
        })
        .await;

        r.run("shard_count", async {
            let row = sqlx::query(&format!("select count(*), sum(id) from {p}_items"))
                .fetch_one(&mut *c)
                .await
                .map_err(err)?;
            expect(
                "count, sum",
                (row.get::<i64, _>(0), row.get::<Decimal, _>(1)),
                (1000, Decimal::from(keys().iter().sum::<i64>())),
            )?;
            Ok(String::new())
        })
        .await;

        r.run("shard_order_limit", async {
            let rows = sqlx::query(&format!(
                "select id, v from {p}_items order by id desc limit 3"
            ))
            .fetch_all(&mut *c)
            .await
            .map_err(err)?;
            let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let want: Vec<(i64, String)> = keys()
                .into_iter()
                .rev()
                .take(3)
                .map(|k| (k, format!("item {k}")))
                .collect();
            expect("rows", got, want)?;
            Ok(String::new())
        })
        .await;
    }

    /// The first row; `text`: interval came as text.
    fn check_row(r: &sqlx::postgres::PgRow, text: bool) -> Result<(), String> {
        macro_rules! get {
            ($i:expr, $t:ty) => {
                r.try_get::<$t, _>($i).map_err(err)?
            };
        }
        expect("i2", get!(0, i16), 12345)?;
        expect("i4", get!(1, i32), i32::MIN)?;
        expect("i8", get!(2, i64), 9007199254740993)?;
        expect("n", get!(3, Decimal), decimal())?;
        expect("f8", get!(4, f64), 3.25)?;
        expect("t", get!(5, String).as_str(), T_TEXT)?;
        expect("b", get!(6, Vec<u8>).as_slice(), BYTEA)?;
        expect("bo", get!(7, bool), true)?;
        expect("d", get!(8, NaiveDate), date())?;
        expect("ts", get!(9, DateTime<Utc>), ts())?;
        if text {
            expect("iv", get!(10, String).as_str(), "1 day 02:03:04.5")?;
        } else {
            let iv = get!(10, PgInterval);
            expect(
                "iv",
                (iv.months, iv.days, iv.microseconds),
                (0, 1, IV_MICROS),
            )?;
        }
        expect("u", get!(11, uuid::Uuid), uuid())?;
        expect(
            "j",
            get!(12, sqlx::types::Json<serde_json::Value>).0,
            json(),
        )?;
        expect("ia", get!(13, Vec<Option<i32>>), int_array())?;
        expect("ta", get!(14, Vec<Option<String>>), text_array())?;
        Ok(())
    }

    fn check_nulls(r: &sqlx::postgres::PgRow) -> Result<(), String> {
        use sqlx::ValueRef;
        for i in 0..15 {
            if !r.try_get_raw(i).map_err(err)?.is_null() {
                return Err(format!("column {i} of the NULL row is not NULL"));
            }
        }
        Ok(())
    }
}

//! A statement the proxy refuses inside a transaction aborts the
//! transaction exactly as a server's error would (DESIGN §3, issue 19 case
//! 8): later statements get 25P02, COMMIT answers ROLLBACK without an
//! error, the transaction's rows are on no shard, and the session goes on.
//!
//! The scenarios run through the proxy and on one plain PostgreSQL (s0's
//! primary), where the refused statement is replaced by one the server
//! fails (`select 1/0`). Every step's command tags, SQLSTATEs and
//! ReadyForQuery status must match, and so must the rows left behind. A
//! small raw protocol client shows the statuses, which drivers hide;
//! driver (tokio-postgres) and psql runs follow.

use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// The refused statement: it assigns the shard key of a sharded table (it
/// could move the row to another shard), refused with 0A000 whatever the
/// router learns to do with other statements.
fn refused_update(table: &str, extended: bool) -> (String, Vec<String>) {
    if extended {
        (
            format!("update {table} set id = id + 1 where id = $1"),
            vec!["1".into()],
        )
    } else {
        (
            format!("update {table} set id = id + 1 where id = 1"),
            vec![],
        )
    }
}

fn tables_toml(sharded: &[&str]) -> String {
    sharded
        .iter()
        .map(|t| format!("[[tables]]\nname = \"{t}\"\nkey = \"id\"\nstrategy = \"hash\"\n"))
        .collect()
}

/// Keys of `table` on shard s0 and on shard s1.
fn keys_on_each_shard(proxy: &TestProxy, table: &str) -> (i32, i32) {
    let (mut k0, mut k1) = (None, None);
    for id in 1000..1100 {
        let sql = format!("select * from {table} where id = $1");
        match route_shard(proxy, &sql, &[&id.to_string()]).as_str() {
            "s0" => k0 = k0.or(Some(id)),
            _ => k1 = k1.or(Some(id)),
        }
        if k0.is_some() && k1.is_some() {
            break;
        }
    }
    (k0.expect("a key on s0"), k1.expect("a key on s1"))
}

// ---------------------------------------------------------------------------
// A raw protocol client: what a step answered, ReadyForQuery included.

/// What the server (or the proxy) answered to one step.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    /// CommandComplete tags.
    tags: Vec<String>,
    /// SQLSTATEs of the ErrorResponses.
    codes: Vec<String>,
    /// ReadyForQuery's transaction status.
    status: char,
}

struct Raw {
    s: TcpStream,
    buf: BytesMut,
}

fn frame(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(body);
}

fn cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

fn error_code(body: &[u8]) -> String {
    let mut fields = body.split(|b| *b == 0);
    fields
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

impl Raw {
    /// Log in as app/app (SCRAM) to `port`: the proxy or a shard.
    async fn connect(port: u16) -> Raw {
        let s = within(10, "connect", TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("connect");
        let mut raw = Raw {
            s,
            buf: BytesMut::new(),
        };
        let mut body = BytesMut::new();
        body.put_i32(196608);
        for (k, v) in [("user", "app"), ("database", "app")] {
            cstr(&mut body, k);
            cstr(&mut body, v);
        }
        body.put_u8(0);
        let mut startup = BytesMut::new();
        startup.put_i32(body.len() as i32 + 4);
        startup.put_slice(&body);
        raw.write(&startup).await;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = raw.recv().await;
            match tag {
                b'R' => {
                    let code = i32::from_be_bytes(body[..4].try_into().expect("auth code"));
                    let mut out = BytesMut::new();
                    match code {
                        0 => continue,
                        10 => {
                            let s = ScramSha256::new(b"app", ChannelBinding::unsupported());
                            let mut b = BytesMut::new();
                            cstr(&mut b, SCRAM_SHA_256);
                            b.put_i32(s.message().len() as i32);
                            b.put_slice(s.message());
                            frame(&mut out, b'p', &b);
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().expect("SASL started");
                            s.update(&body[4..]).expect("SCRAM continue");
                            frame(&mut out, b'p', s.message());
                        }
                        12 => {
                            let s = scram.as_mut().expect("SASL started");
                            s.finish(&body[4..]).expect("server signature");
                            continue;
                        }
                        other => panic!("unexpected authentication request {other}"),
                    }
                    raw.write(&out).await;
                }
                b'E' => panic!("login failed: {}", error_code(&body)),
                b'Z' => return raw,
                _ => {}
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        within(30, "write", self.s.write_all(bytes))
            .await
            .expect("write");
    }

    async fn recv(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().expect("4 bytes")) as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    self.buf.advance(5);
                    let body = self.buf.split_to(len - 4).to_vec();
                    return (tag, body);
                }
            }
            let n = within(30, "read", self.s.read_buf(&mut self.buf))
                .await
                .expect("read");
            assert!(n > 0, "the connection closed");
        }
    }

    /// Read up to ReadyForQuery.
    async fn outcome(&mut self) -> Outcome {
        let mut o = Outcome {
            tags: vec![],
            codes: vec![],
            status: '?',
        };
        loop {
            let (tag, body) = self.recv().await;
            match tag {
                b'C' => o
                    .tags
                    .push(String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into()),
                b'E' => o.codes.push(error_code(&body)),
                b'Z' => {
                    o.status = body[0] as char;
                    return o;
                }
                _ => {}
            }
        }
    }

    async fn simple(&mut self, sql: &str) -> Outcome {
        let mut out = BytesMut::new();
        query(&mut out, sql);
        self.write(&out).await;
        self.outcome().await
    }

    async fn extended(&mut self, sql: &str, params: &[String]) -> Outcome {
        let mut out = BytesMut::new();
        batch(&mut out, sql, params);
        self.write(&out).await;
        self.outcome().await
    }
}

fn query(out: &mut BytesMut, sql: &str) {
    let mut b = BytesMut::new();
    cstr(&mut b, sql);
    frame(out, b'Q', &b);
}

/// Parse (unnamed), Bind with text parameters, Describe, Execute, Sync.
fn batch(out: &mut BytesMut, sql: &str, params: &[String]) {
    let mut b = BytesMut::new();
    cstr(&mut b, "");
    cstr(&mut b, sql);
    b.put_i16(0);
    frame(out, b'P', &b);
    b.clear();
    cstr(&mut b, "");
    cstr(&mut b, "");
    b.put_i16(0);
    b.put_i16(params.len() as i16);
    for p in params {
        b.put_i32(p.len() as i32);
        b.put_slice(p.as_bytes());
    }
    b.put_i16(0);
    frame(out, b'B', &b);
    frame(out, b'D', b"P\0");
    frame(out, b'E', b"\0\0\0\0\0");
    frame(out, b'S', b"");
}

// ---------------------------------------------------------------------------
// Scenarios

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Every step a simple Query (psql).
    Simple,
    /// Every step Parse/Bind/Describe/Execute/Sync.
    Extended,
    /// BEGIN as a simple Query, the rest extended (tokio-postgres, many
    /// drivers): the proxy defers such a BEGIN.
    BeginSimple,
}

struct Step {
    sql: String,
    params: Vec<String>,
    /// The proxy refuses it with this SQLSTATE; one PostgreSQL gets
    /// `select 1/0` instead.
    refused: Option<&'static str>,
    /// Sent as a simple Query whatever the mode (the proxy's own `SET
    /// shardwire.*` exists only there).
    simple_only: bool,
}

fn step(sql: &str) -> Step {
    Step {
        sql: sql.to_string(),
        params: vec![],
        refused: None,
        simple_only: false,
    }
}

struct Names<'a> {
    settings: &'a str,
    sharded: &'a str,
    keys: (i32, i32),
}

/// Each scenario's steps; `p` makes its settings keys unique.
fn scenarios(n: &Names<'_>, mode: Mode, p: &str) -> Vec<(&'static str, Vec<Step>)> {
    let extended = mode != Mode::Simple;
    let refused = || {
        let (sql, params) = refused_update(n.sharded, extended);
        Step {
            sql,
            params,
            refused: Some("0A000"),
            simple_only: false,
        }
    };
    let bad_shard = || Step {
        sql: "SET shardwire.shard = 'nope'".into(),
        params: vec![],
        refused: Some("22023"),
        simple_only: true,
    };
    let ins = |k: &str| {
        step(&format!(
            "insert into {} values ('{p}{k}', 'v')",
            n.settings
        ))
    };
    let ins_sharded = |id: i32| {
        step(&format!(
            "insert into {} (id, v) values ({id}, 'v')",
            n.sharded
        ))
    };
    let (k0, k1) = n.keys;
    // After the refusal: what the proxy would refuse again, or route to
    // another shard, gets 25P02 like anything else (PostgreSQL runs the
    // same statements here).
    let refused_again = || {
        let (sql, params) = refused_update(n.sharded, extended);
        Step {
            sql,
            params,
            refused: None,
            simple_only: false,
        }
    };
    vec![
        (
            "held server, COMMIT",
            vec![
                step("begin"),
                ins("a"),
                refused(),
                step("select 1"),
                refused_again(),
                ins_sharded(k1),
                ins_sharded(k0),
                step("commit"),
                step("select 1"),
            ],
        ),
        (
            "held server, ROLLBACK",
            vec![
                step("begin"),
                ins("a"),
                refused(),
                step("select 1"),
                step("rollback"),
                step("select 1"),
            ],
        ),
        (
            "held server, ROLLBACK TO SAVEPOINT revives it",
            vec![
                step("begin"),
                ins("a"),
                step("savepoint sp"),
                refused(),
                step("select 1"),
                step("rollback to savepoint sp"),
                ins("b"),
                step("commit"),
                step("select 1"),
            ],
        ),
        (
            "deferred BEGIN, then COMMIT",
            vec![
                step("begin"),
                refused(),
                ins_sharded(k1),
                refused_again(),
                step("select 1"),
                step("commit"),
                step("select 1"),
            ],
        ),
        (
            "deferred BEGIN, END at once",
            vec![step("begin"), refused(), step("end"), ins("a")],
        ),
        (
            "deferred BEGIN, BEGIN again, ABORT",
            vec![
                step("start transaction"),
                refused(),
                step("begin"),
                step("abort"),
                step("select 1"),
            ],
        ),
        (
            "several shards, COMMIT",
            vec![
                step("begin"),
                ins_sharded(k0),
                ins_sharded(k1),
                ins("a"),
                refused(),
                step("select 1"),
                refused_again(),
                step("commit"),
                step("select 1"),
            ],
        ),
        (
            "several shards, BEGIN again, ROLLBACK",
            vec![
                step("begin"),
                ins_sharded(k1),
                ins_sharded(k0),
                refused(),
                step("begin"),
                step("select 1"),
                step("rollback"),
                step("select 1"),
            ],
        ),
        (
            "outside a transaction",
            vec![refused(), step("select 1"), ins("a"), step("select 1")],
        ),
        (
            "bad SET shardwire.shard on a held server",
            vec![
                step("begin"),
                ins("a"),
                bad_shard(),
                step("select 1"),
                step("commit"),
            ],
        ),
        (
            "bad SET shardwire.shard in a deferred BEGIN",
            vec![step("begin"), bad_shard(), step("select 1"), step("commit")],
        ),
        (
            "bad SET shardwire.shard over several shards",
            vec![
                step("begin"),
                ins_sharded(k0),
                ins_sharded(k1),
                bad_shard(),
                step("select 1"),
                step("commit"),
            ],
        ),
    ]
}

/// Run `steps` on `raw`; `direct` replaces refused statements.
async fn run(raw: &mut Raw, steps: &[Step], mode: Mode, direct: bool) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(steps.len());
    for s in steps {
        let (sql, params) = match (s.refused, direct) {
            (Some(_), true) => ("select 1/0", &[][..]),
            _ => (s.sql.as_str(), &s.params[..]),
        };
        let is_begin = matches!(s.sql.as_str(), "begin" | "start transaction");
        let simple =
            s.simple_only || mode == Mode::Simple || (mode == Mode::BeginSimple && is_begin);
        out.push(if simple {
            raw.simple(sql).await
        } else {
            raw.extended(sql, params).await
        });
    }
    out
}

/// Rows a run left: settings keys with `prefix` and the sharded keys, on
/// both shards.
async fn survivors(shards: &[tokio_postgres::Client; 2], n: &Names<'_>, prefix: &str) -> i64 {
    let mut total = 0;
    for s in shards {
        total += query_count(
            s,
            &format!(
                "select count(*) from {} where k like '{prefix}%'",
                n.settings
            ),
        )
        .await;
        total += query_count(
            s,
            &format!(
                "select count(*) from {} where id in ({}, {})",
                n.sharded, n.keys.0, n.keys.1
            ),
        )
        .await;
    }
    total
}

type Scenarios = fn(&Names<'_>, Mode, &str) -> Vec<(&'static str, Vec<Step>)>;

/// Run each scenario of `list` in each of `modes` through the proxy and on
/// s0's primary directly; the differences found.
async fn compare(
    proxy: &TestProxy,
    names: &Names<'_>,
    shards: &[tokio_postgres::Client; 2],
    list: Scenarios,
    modes: &[Mode],
) -> Vec<String> {
    let direct_port = cluster().shard_ports(0).0;
    let cleanup = || async {
        for s in shards {
            s.batch_execute(&format!(
                "delete from {}; delete from {}",
                names.settings, names.sharded
            ))
            .await
            .expect("cleanup");
        }
    };
    let mut failures = Vec::new();
    for &mode in modes {
        // One session each for all scenarios: each must leave it usable.
        let mut through = Raw::connect(proxy.port).await;
        let mut plain = Raw::connect(direct_port).await;
        for i in 0..list(names, mode, "").len() {
            let (name, steps) = list(names, mode, "proxy-").swap_remove(i);
            let got = run(&mut through, &steps, mode, false).await;
            let left_proxy = survivors(shards, names, "proxy-").await;
            cleanup().await;
            // One plain PostgreSQL: s0's primary has every table.
            let (_, steps_direct) = list(names, mode, "direct-").swap_remove(i);
            let want = run(&mut plain, &steps_direct, mode, true).await;
            let left_direct = survivors(shards, names, "direct-").await;
            cleanup().await;
            let mut report = String::new();
            for (j, st) in steps.iter().enumerate() {
                let (g, w) = (&got[j], &want[j]);
                let same = match st.refused {
                    Some(code) => {
                        g.codes == [code]
                            && w.codes == ["22012"]
                            && g.tags == w.tags
                            && g.status == w.status
                    }
                    None => g == w,
                };
                if !same {
                    report.push_str(&format!(
                        "\n  step {j} {:?}: proxy {g:?}, postgres {w:?}",
                        st.sql
                    ));
                }
            }
            if left_proxy != left_direct {
                report.push_str(&format!(
                    "\n  rows left: proxy {left_proxy}, postgres {left_direct}"
                ));
            }
            let verdict = if report.is_empty() {
                "same"
            } else {
                "DIFFERENT"
            };
            eprintln!("{mode:?} / {name}: {verdict}");
            if !report.is_empty() {
                failures.push(format!("{mode:?} / {name}:{report}"));
            }
        }
    }
    failures
}

/// Both shards' tables for a test: settings (unsharded, lives on s0) and
/// a hash-sharded table.
async fn create_tables(settings: &str, sharded: &str) -> [tokio_postgres::Client; 2] {
    connect_shards(&format!(
        "drop table if exists {settings}, {sharded};
         create table {settings} (k text primary key, v text);
         create table {sharded} (id int primary key, v text)"
    ))
    .await
}

async fn drop_tables(shards: &[tokio_postgres::Client; 2], settings: &str, sharded: &str) {
    for s in shards {
        s.batch_execute(&format!("drop table {settings}, {sharded}"))
            .await
            .expect("drop");
    }
}

#[test]
fn refused_statement_aborts_transaction_as_postgres_does() {
    let (settings, sharded) = ("txa_settings", "txa_acc");
    let proxy = TestProxy::start(|c| set_tables(c, &tables_toml(&[sharded])));
    let names = Names {
        settings,
        sharded,
        keys: keys_on_each_shard(&proxy, sharded),
    };
    block_on(Duration::from_secs(600), async {
        let shards = create_tables(settings, sharded).await;
        let modes = [Mode::Simple, Mode::Extended, Mode::BeginSimple];
        let failures = compare(&proxy, &names, &shards, scenarios, &modes).await;
        assert!(
            failures.is_empty(),
            "the proxy differs from PostgreSQL:\n{}",
            failures.join("\n")
        );
        drop_tables(&shards, settings, sharded).await;
    });
}

/// What a driver sees: tokio-postgres's Transaction API (BEGIN and COMMIT
/// as simple queries, statements with parameters in the extended
/// protocol) and its simple queries.
#[test]
fn drivers_see_the_transaction_aborted() {
    let (settings, sharded) = ("txd_settings", "txd_acc");
    let proxy = TestProxy::start(|c| set_tables(c, &tables_toml(&[sharded])));
    let (k0, k1) = keys_on_each_shard(&proxy, sharded);
    block_on(Duration::from_secs(300), async {
        let shards = create_tables(settings, sharded).await;
        let (mut c, _task) = connect_url(&proxy.url()).await;
        let ins = format!("insert into {settings} values ($1, 'v')");
        let ins_sharded = format!("insert into {sharded} (id, v) values ($1, 'v')");
        let (refused, _) = refused_update(sharded, true);
        let left = |k: &'static str| {
            let shards = &shards;
            async move {
                let mut n = 0;
                for s in shards {
                    n += query_count(
                        s,
                        &format!("select count(*) from {settings} where k = '{k}'"),
                    )
                    .await;
                }
                n
            }
        };
        let refuse = |e: tokio_postgres::Error| assert_eq!(sqlstate(&e), "0A000", "{e}");
        let aborted = |e: tokio_postgres::Error| assert_eq!(sqlstate(&e), "25P02", "{e}");

        // A server holds the transaction; COMMIT rolls back (no error).
        let tx = c.transaction().await.expect("begin");
        tx.execute(&ins, &[&"held"]).await.expect("insert");
        refuse(tx.execute(&refused, &[&1i32]).await.expect_err("refused"));
        aborted(tx.query("select 1", &[]).await.expect_err("aborted"));
        aborted(tx.execute(&ins, &[&"held2"]).await.expect_err("aborted"));
        tx.commit().await.expect("COMMIT of a failed transaction");
        assert_eq!(left("held").await, 0);

        // The same in simple queries, ended by ROLLBACK.
        c.simple_query("begin").await.expect("begin");
        c.simple_query(&format!("insert into {settings} values ('simple', 'v')"))
            .await
            .expect("insert");
        let (sql, _) = refused_update(sharded, false);
        refuse(c.simple_query(&sql).await.expect_err("refused"));
        aborted(c.simple_query("select 1").await.expect_err("aborted"));
        c.simple_query("rollback").await.expect("rollback");
        assert_eq!(left("simple").await, 0);

        // Refused first: no server has the transaction yet.
        let tx = c.transaction().await.expect("begin");
        refuse(tx.execute(&refused, &[&1i32]).await.expect_err("refused"));
        aborted(tx.query("select 1", &[]).await.expect_err("aborted"));
        aborted(tx.execute(&ins, &[&"deferred"]).await.expect_err("aborted"));
        tx.commit().await.expect("COMMIT of a failed transaction");
        assert_eq!(left("deferred").await, 0);

        // Over several shards: every shard rolls back.
        let tx = c.transaction().await.expect("begin");
        tx.execute(&ins_sharded, &[&k0])
            .await
            .expect("insert on s0");
        tx.execute(&ins_sharded, &[&k1])
            .await
            .expect("insert on s1");
        tx.execute(&ins, &[&"multi"]).await.expect("insert");
        refuse(tx.execute(&refused, &[&1i32]).await.expect_err("refused"));
        aborted(tx.query("select 1", &[]).await.expect_err("aborted"));
        tx.commit().await.expect("COMMIT of a failed transaction");
        assert_eq!(left("multi").await, 0);
        for s in &shards {
            assert_eq!(
                query_count(s, &format!("select count(*) from {sharded}")).await,
                0
            );
        }

        // Outside a transaction a refusal changes nothing.
        refuse(c.execute(&refused, &[&1i32]).await.expect_err("refused"));
        c.execute(&ins, &[&"after"]).await.expect("insert after");
        assert_eq!(left("after").await, 1);
        let tx = c.transaction().await.expect("begin");
        tx.execute(&ins, &[&"committed"]).await.expect("insert");
        tx.commit().await.expect("commit");
        assert_eq!(left("committed").await, 1);
        drop(c);
        drop_tables(&shards, settings, sharded).await;
    });
}

/// psql through the proxy prints what it prints on one PostgreSQL (the
/// refused statement's SQLSTATE aside).
#[test]
fn psql_sees_what_postgres_shows() {
    let (settings, sharded) = ("txp_settings", "txp_acc");
    let proxy = TestProxy::start(|c| set_tables(c, &tables_toml(&[sharded])));
    block_on(Duration::from_secs(60), async {
        create_tables(settings, sharded).await;
    });
    let script = |failing: &str| {
        format!(
            "\\set VERBOSITY sqlstate
begin;
insert into {settings} values ('a', 'v');
{failing};
select 1;
insert into {settings} values ('b', 'v');
commit;
select count(*) from {settings};
begin;
{failing};
select 1;
rollback;
select count(*) from {settings};
"
        )
    };
    let (refused, _) = refused_update(sharded, false);
    let through = psql(&proxy.url(), "app", false, &[], Some(&script(&refused)));
    let direct = psql(
        &cluster().direct_url(),
        "app",
        false,
        &[],
        Some(&script("select 1/0")),
    );
    assert!(
        through.success() && direct.success(),
        "{}{}",
        through.stderr,
        direct.stderr
    );
    assert_eq!(through.stdout, direct.stdout);
    assert_eq!(through.stderr.replace("0A000", "22012"), direct.stderr);
    assert!(through.stdout.contains("ROLLBACK"), "{}", through.stdout);
    assert!(through.stderr.contains("25P02"), "{}", through.stderr);
    block_on(Duration::from_secs(60), async {
        let shards = [connect_shard(0).await, connect_shard(1).await];
        drop_tables(&shards, settings, sharded).await;
    });
}

/// A refused statement leaves nothing another client could see: the
/// failed transaction's server goes to the next client only once the
/// transaction ended, clean; a client that leaves in a failed transaction
/// takes its server with it.
#[test]
fn failed_transaction_stays_with_its_client() {
    let (settings, sharded) = ("txi_settings", "txi_acc");
    let proxy = TestProxy::start(|c| {
        set_tables(c, &tables_toml(&[sharded]));
        set(c, "pool.max_size", 1);
        set(c, "pool.checkout_timeout", "20s");
    });
    block_on(Duration::from_secs(300), async {
        let shards = create_tables(settings, sharded).await;
        let (sql, _) = refused_update(sharded, false);
        let (a, _ta) = connect_url(&proxy.url()).await;
        let (b, _tb) = connect_url(&proxy.url()).await;
        a.simple_query("begin").await.expect("begin");
        a.simple_query(&format!("insert into {settings} values ('iso', 'v')"))
            .await
            .expect("insert");
        let e = a.simple_query(&sql).await.expect_err("refused");
        assert_eq!(sqlstate(&e), "0A000");
        // B waits for the one server of s0 until A's transaction ends.
        let count = format!("select count(*) from {settings}");
        let waiting = {
            let count = count.clone();
            tokio::spawn(async move {
                b.query_one(&count, &[])
                    .await
                    .map(|r| (r.get::<_, i64>(0), b))
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "B ran while A's transaction held the server"
        );
        let e = a.simple_query("select 1").await.expect_err("aborted");
        assert_eq!(sqlstate(&e), "25P02");
        a.simple_query("rollback").await.expect("rollback");
        let (n, b) = within(30, "B's statement", waiting)
            .await
            .expect("B's task")
            .expect("B's statement after A's ROLLBACK");
        assert_eq!(n, 0);
        b.simple_query("begin; select 1; commit")
            .await
            .expect("B's transaction on the same server");

        // A leaves in a failed transaction: B still gets a clean server.
        a.simple_query("begin").await.expect("begin");
        a.simple_query(&format!("insert into {settings} values ('gone', 'v')"))
            .await
            .expect("insert");
        a.simple_query(&sql).await.expect_err("refused");
        drop(a);
        let n: i64 = within(30, "B after A left", b.query_one(&count, &[]))
            .await
            .expect("B after A left")
            .get(0);
        assert_eq!(n, 0);
        let rows = b
            .simple_query("select 1")
            .await
            .expect("B is not in a failed transaction");
        assert_eq!(simple_rows(&rows), [[Some("1".to_string())]]);
        drop(b);
        drop_tables(&shards, settings, sharded).await;
    });
}

/// A client that sends statements without waiting for the answers of the
/// earlier ones (pipelining) sees what one PostgreSQL shows: the proxy's
/// refusal, and the statements behind it, wait for the server's answers
/// where they decide what happens. The statement for another shard behind
/// an unanswered one cannot start a transaction over several shards, so
/// the proxy refuses it ("this transaction already runs on shard").
#[test]
fn pipelined_statements_after_a_refusal() {
    let (settings, sharded) = ("txq_settings", "txq_acc");
    let proxy = TestProxy::start(|c| set_tables(c, &tables_toml(&[sharded])));
    let (k0, k1) = keys_on_each_shard(&proxy, sharded);
    block_on(Duration::from_secs(300), async {
        let shards = create_tables(settings, sharded).await;
        let (refused, _) = refused_update(sharded, false);
        let (refused_ext, params) = refused_update(sharded, true);
        let other_shard = format!("insert into {sharded} (id, v) values ({k1}, 'v')");
        // Each case: statements sent one by one, then several in one write
        // (true: the one the proxy refuses; one PostgreSQL runs `select
        // 1/0` instead), each a simple Query or an extended batch.
        type Piped = (Vec<String>, Vec<(String, bool)>);
        let cases: Vec<Piped> = vec![
            (
                vec![
                    "begin".into(),
                    format!("insert into {settings} values ('a', 'v')"),
                ],
                vec![
                    (refused.clone(), true),
                    ("select 1".into(), false),
                    (refused.clone(), false),
                    (other_shard.clone(), false),
                    ("commit".into(), false),
                    ("select 1".into(), false),
                    (
                        format!("insert into {sharded} (id, v) values ({k0}, 'v')"),
                        false,
                    ),
                ],
            ),
            (
                vec![
                    "begin".into(),
                    format!("insert into {settings} values ('a', 'v')"),
                ],
                vec![
                    ("select 1".into(), false),
                    (other_shard.clone(), true),
                    ("select 1".into(), false),
                    ("rollback".into(), false),
                    ("select 1".into(), false),
                ],
            ),
            (
                vec![],
                vec![
                    (
                        format!("begin; insert into {settings} values ('a', 'v')"),
                        false,
                    ),
                    (refused.clone(), true),
                    ("commit".into(), false),
                ],
            ),
        ];
        let mut failures = Vec::new();
        for extended in [false, true] {
            for (n, (setup, piped)) in cases.iter().enumerate() {
                if extended && piped.iter().any(|(sql, r)| sql == &other_shard && *r) {
                    // Extended batches for another shard start a
                    // transaction over several shards instead.
                    continue;
                }
                let mut outcomes = Vec::new();
                for direct in [false, true] {
                    let port = if direct {
                        cluster().shard_ports(0).0
                    } else {
                        proxy.port
                    };
                    let mut raw = Raw::connect(port).await;
                    for sql in setup {
                        raw.simple(sql).await;
                    }
                    let mut out = BytesMut::new();
                    for (sql, is_refused) in piped {
                        match (*is_refused, direct, extended) {
                            (true, true, false) => query(&mut out, "select 1/0"),
                            (true, true, true) => batch(&mut out, "select 1/0", &[]),
                            // The extended refusal: the shard key's UPDATE.
                            (true, false, true) if sql == &refused => {
                                batch(&mut out, &refused_ext, &params)
                            }
                            (_, _, true) if !sql.contains(';') => batch(&mut out, sql, &[]),
                            _ => query(&mut out, sql),
                        }
                    }
                    raw.write(&out).await;
                    let mut got = Vec::new();
                    for _ in piped {
                        got.push(raw.outcome().await);
                    }
                    got.push(raw.simple("select 1").await);
                    let left = survivors(
                        &shards,
                        &Names {
                            settings,
                            sharded,
                            keys: (k0, k1),
                        },
                        "",
                    )
                    .await;
                    for s in &shards {
                        s.batch_execute(&format!("delete from {settings}; delete from {sharded}"))
                            .await
                            .expect("cleanup");
                    }
                    outcomes.push((got, left));
                }
                let (through, plain) = (&outcomes[0], &outcomes[1]);
                let mut report = String::new();
                for (j, (g, w)) in through.0.iter().zip(&plain.0).enumerate() {
                    let refused = piped.get(j).is_some_and(|p| p.1);
                    let same = if refused {
                        g.codes == ["0A000"] && w.codes == ["22012"] && g.status == w.status
                    } else {
                        g == w
                    };
                    if !same {
                        report.push_str(&format!("\n  step {j}: proxy {g:?}, postgres {w:?}"));
                    }
                }
                if through.1 != plain.1 {
                    report.push_str(&format!(
                        "\n  rows left: proxy {}, postgres {}",
                        through.1, plain.1
                    ));
                }
                eprintln!(
                    "pipelined case {n} (extended: {extended}): {}",
                    if report.is_empty() {
                        "same"
                    } else {
                        "DIFFERENT"
                    }
                );
                if !report.is_empty() {
                    failures.push(format!("case {n} (extended: {extended}):{report}"));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "the proxy differs from PostgreSQL:\n{}",
            failures.join("\n")
        );
        drop_tables(&shards, settings, sharded).await;
    });
}

/// The proxy's other refusals abort a transaction too: a statement over
/// the user's rate limit, and a server that could not be checked out for
/// a deferred transaction's first statement.
#[test]
fn rate_limit_and_checkout_failures_abort_the_transaction() {
    let (settings, sharded) = ("txr_settings", "txr_acc");
    let proxy = TestProxy::start(|c| {
        set_tables(c, &tables_toml(&[sharded]));
        add_user(
            c,
            "name = \"rl\"\npassword = \"rl\"\nauth = \"md5\"\nserver_user = \"app\"\nserver_password = \"app\"\nrate_limit = 1.0\nrate_limit_burst = 4.0\nrate_limit_action = \"error\"",
        );
        set(c, "pool.max_size", 1);
        set(c, "pool.checkout_timeout", "1s");
    });
    block_on(Duration::from_secs(300), async {
        let shards = create_tables(settings, sharded).await;
        let left = || async {
            query_count(
                &shards[0],
                &format!("select count(*) from {settings} where k = 'rl'"),
            )
            .await
        };

        // Rate limit: BEGIN and the INSERT take two of the four tokens;
        // of the statements pipelined behind them some are refused (53400),
        // and from the first refusal on the transaction is aborted.
        let (c, _task) = connect(&proxy.pg_config("rl", "rl")).await;
        c.simple_query("begin").await.expect("begin");
        c.simple_query(&format!("insert into {settings} values ('rl', 'v')"))
            .await
            .expect("insert");
        let results =
            futures_util::future::join_all((0..8).map(|_| c.simple_query("select 1"))).await;
        let first_error = results
            .iter()
            .position(Result::is_err)
            .expect("a statement over the rate limit");
        assert_eq!(
            sqlstate(results[first_error].as_ref().expect_err("error")),
            "53400"
        );
        for r in &results[first_error..] {
            let code = sqlstate(r.as_ref().expect_err("after the refusal"));
            assert!(code == "53400" || code == "25P02", "{code}");
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let e = c.simple_query("select 1").await.expect_err("aborted");
        assert_eq!(sqlstate(&e), "25P02", "{e}");
        c.simple_query("commit").await.expect("commit");
        assert_eq!(left().await, 0);
        drop(c);

        // A checkout timeout for the first statement of a deferred
        // transaction: the one server of s0 is busy in A's transaction.
        let (a, _ta) = connect_url(&proxy.url()).await;
        a.simple_query("begin; select 1")
            .await
            .expect("A's transaction");
        let mut b = Raw::connect(proxy.port).await;
        assert_eq!(b.simple("begin").await.status, 'T');
        let insert = format!("insert into {settings} values ('b', 'v')");
        let o = b.simple(&insert).await;
        assert_eq!((o.codes.len(), o.status), (1, 'E'), "{o:?}");
        // Anything but COMMIT/ROLLBACK needs the failed transaction on a
        // server: no server yet, so the same error.
        let o = b.simple("select 1").await;
        assert_eq!((o.codes.len(), o.status), (1, 'E'), "{o:?}");
        a.simple_query("commit").await.expect("A's commit");
        let o = b.simple("select 1").await;
        assert_eq!(o.codes, ["25P02"], "{o:?}");
        assert_eq!(o.status, 'E');
        let o = b.simple("commit").await;
        assert_eq!(
            (o.tags.as_slice(), o.status),
            (&["ROLLBACK".to_string()][..], 'I')
        );
        let o = b.simple("select 1").await;
        assert_eq!((o.codes.len(), o.status), (0, 'I'), "{o:?}");
        drop(a);
        drop_tables(&shards, settings, sharded).await;
    });
}

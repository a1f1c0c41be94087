//! The admin console: `psql -U <admin user> shardwire` on the proxy's port.
//! Each command answers with an ordinary result set (text columns), so
//! psql, scripts and monitoring tools read it like any query result.
//!
//! Only the simple query protocol is spoken; several commands may be sent
//! in one query, separated by semicolons.

use std::fmt::Display;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::backend::health::{observed_role, ServerHealth};
use crate::config::Server;
use crate::protocol::TxStatus;
use crate::protocol::{self, fe, sqlstate, FrameReader, PgError};
use crate::proxy::Proxy;
use crate::stats::clients::Registration;
use crate::stats::metrics::LATENCY_BUCKETS;

/// The commands, as `SHOW HELP` lists them.
const HELP: &[(&str, &str)] = &[
    ("SHOW HELP", "this list"),
    (
        "SHOW SHARDS",
        "shards and their servers: role, state, replica lag",
    ),
    (
        "SHOW SERVERS",
        "per server: state, connections open, active and idle, connects, errors",
    ),
    (
        "SHOW POOLS",
        "per pool (server, database, user): active, idle, waiting clients, max size",
    ),
    (
        "SHOW CLIENTS",
        "client sessions: user, database, address, state, queries, what pins its server",
    ),
    (
        "SHOW STATS",
        "per shard and route kind: queries, errors, latency",
    ),
    ("SHOW CONFIG", "the configuration in force"),
    (
        "ADD SHARD name PRIMARY 'host:port' [REPLICAS 'host:port', ...]",
        "add a shard to the shard map (catalog topology); it gets rows when a rebalance moves them",
    ),
    (
        "REMOVE SHARD name",
        "remove a shard from the shard map, moving its rows of hash tables to the others first (online)",
    ),
    (
        "REBALANCE PLAN",
        "the moves that put every hash ring on all shards: table, source, target, rows, the keys as SQL",
    ),
    (
        "REBALANCE START",
        "move the rows of the plan online (or resume an unfinished rebalance)",
    ),
    (
        "REBALANCE STATUS",
        "the newest rebalance and each move: state, rows, percent, lag, ETA",
    ),
    (
        "REBALANCE CANCEL",
        "roll back the unfinished rebalance (before its cutover)",
    ),
    (
        "SPLIT RANGE table AT value TO shard",
        "move the keys from value to the end of its range to shard, online",
    ),
    (
        "MOVE REGION region TO shard",
        "move a region's rows of every geo table to shard, online",
    ),
    (
        "SHOW TOPOLOGY",
        "the shard map in force: its version and source, each shard and table rule",
    ),
    ("SHOW VERSION", "the shardwire version"),
    ("RELOAD", "re-read the config file and apply it"),
    (
        "PAUSE",
        "hold new transactions; returns when running ones have finished",
    ),
    ("RESUME", "let held and new transactions run again"),
    (
        "SHUTDOWN",
        "stop accepting clients and shut down once transactions finish",
    ),
];

/// Greeting after AuthenticationOk: what psql and drivers expect to learn.
pub fn greet(out: &mut BytesMut) {
    for (k, v) in [
        ("server_version", "16.0 (shardwire admin console)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ] {
        protocol::parameter_status(out, k, v);
    }
    protocol::backend_key_data(out, 0, 0);
    protocol::ready_for_query(out, TxStatus::Idle);
}

/// Serve one admin session until the client leaves or the proxy shuts down.
pub async fn run<R, W>(
    proxy: Arc<Proxy>,
    registration: Registration,
    mut rd: FrameReader<R>,
    mut wr: W,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _registration = registration;
    let mut shutdown = proxy.shutdown_requested();
    let mut failed_extended = false;
    loop {
        let frame = tokio::select! {
            f = rd.next() => match f {
                Ok(f) => f,
                Err(_) => return,
            },
            _ = shutdown.changed() => {
                let mut out = BytesMut::new();
                PgError::fatal(sqlstate::ADMIN_SHUTDOWN, "terminating connection due to administrator command")
                    .with_detail("shardwire is shutting down")
                    .encode(&mut out);
                let _ = wr.write_all(&out).await;
                let _ = wr.flush().await;
                return;
            }
        };
        let mut out = BytesMut::new();
        match frame[0] {
            fe::QUERY => {
                let body = protocol::body(&frame);
                let sql = String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(body));
                run_query(&proxy, &sql, &mut out).await;
                protocol::ready_for_query(&mut out, TxStatus::Idle);
            }
            fe::TERMINATE => return,
            fe::SYNC => {
                failed_extended = false;
                protocol::ready_for_query(&mut out, TxStatus::Idle);
            }
            fe::PARSE | fe::BIND | fe::DESCRIBE | fe::EXECUTE | fe::CLOSE | fe::FLUSH => {
                // One error per batch; the rest up to Sync is ignored.
                if !failed_extended {
                    failed_extended = true;
                    PgError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "the admin console speaks only the simple query protocol",
                    )
                    .with_hint("use psql, or your driver's simple-query mode")
                    .encode(&mut out);
                }
            }
            other => {
                PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid frontend message type {other}"),
                )
                .encode(&mut out);
                let _ = wr.write_all(&out).await;
                let _ = wr.flush().await;
                return;
            }
        }
        if wr.write_all(&out).await.is_err() || wr.flush().await.is_err() {
            return;
        }
    }
}

/// Run each `;`-separated command; stop at the first error, like a
/// PostgreSQL multi-statement query.
async fn run_query(proxy: &Arc<Proxy>, sql: &str, out: &mut BytesMut) {
    let commands: Vec<&str> = sql
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    if commands.is_empty() {
        out.extend_from_slice(&protocol::empty_frame(protocol::be::EMPTY_QUERY_RESPONSE));
        return;
    }
    for c in commands {
        if let Err(e) = run_command(proxy, c, out).await {
            proxy.metrics.error(e.code);
            e.encode(out);
            return;
        }
    }
}

/// A result set under construction.
struct Table {
    columns: &'static [&'static str],
    rows: Vec<Vec<Option<String>>>,
}

impl Table {
    fn new(columns: &'static [&'static str]) -> Self {
        Table {
            columns,
            rows: Vec::new(),
        }
    }

    fn row(&mut self, values: Vec<Option<String>>) {
        debug_assert_eq!(values.len(), self.columns.len());
        self.rows.push(values);
    }

    fn write(self, out: &mut BytesMut) {
        protocol::row_description_text(out, self.columns);
        for r in &self.rows {
            let values: Vec<Option<&str>> = r.iter().map(|v| v.as_deref()).collect();
            protocol::data_row_text(out, &values);
        }
        protocol::command_complete(out, "SHOW");
    }
}

fn v(x: impl Display) -> Option<String> {
    Some(x.to_string())
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

async fn run_command(proxy: &Arc<Proxy>, command: &str, out: &mut BytesMut) -> Result<(), PgError> {
    let words: Vec<String> = command
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["SHOW", "HELP"] => {
            let mut t = Table::new(&["command", "description"]);
            for (c, d) in HELP {
                t.row(vec![v(c), v(d)]);
            }
            t.write(out);
        }
        ["SHOW", "VERSION"] => {
            let mut t = Table::new(&["version"]);
            t.row(vec![v(format!("shardwire {}", crate::VERSION))]);
            t.write(out);
        }
        ["SHOW", "SHARDS"] => show_shards(proxy).write(out),
        ["SHOW", "SERVERS"] => show_servers(proxy).write(out),
        ["SHOW", "POOLS"] => show_pools(proxy).write(out),
        ["SHOW", "CLIENTS"] => show_clients(proxy).write(out),
        ["SHOW", "STATS"] => show_stats(proxy).write(out),
        ["SHOW", "CONFIG"] => show_config(proxy).write(out),
        ["SHOW", "TOPOLOGY"] => show_topology(proxy).write(out),
        ["REBALANCE", "PLAN"] => {
            let mut t = Table::new(&[
                "table",
                "source",
                "target",
                "arcs",
                "estimated_rows",
                "problem",
                "keys",
            ]);
            for m in crate::rebalance::plan(proxy).await? {
                t.row(vec![
                    v(&m.table),
                    v(&m.source),
                    v(&m.target),
                    v(m.arcs),
                    m.rows.map(|r| r.to_string()),
                    m.problem.clone(),
                    v(&m.predicate),
                ]);
            }
            t.write(out);
        }
        ["REBALANCE", "START"] => {
            let said = crate::rebalance::start(proxy, crate::rebalance::Goal::Rebalance).await?;
            notice(out, &said);
            protocol::command_complete(out, "REBALANCE");
        }
        ["REBALANCE", "CANCEL"] => {
            let said = crate::rebalance::cancel(proxy).await?;
            notice(out, &said);
            protocol::command_complete(out, "REBALANCE");
        }
        ["REBALANCE", "STATUS"] => {
            let mut t = Table::new(&crate::rebalance::STATUS_COLUMNS);
            for r in crate::rebalance::status(proxy).await? {
                t.row(vec![
                    r.rebalance.map(|n| n.to_string()),
                    v(&r.move_no),
                    v(&r.table),
                    v(&r.source),
                    v(&r.target),
                    v(&r.state),
                    r.rows_copied.map(|n| n.to_string()),
                    r.rows_total.map(|n| n.to_string()),
                    r.percent.map(|p| format!("{p:.1}")),
                    r.lag_bytes.map(|n| n.to_string()),
                    r.eta.clone(),
                    v(&r.detail),
                ]);
            }
            t.write(out);
        }
        ["SPLIT", "RANGE", ..] | ["MOVE", "REGION", ..] => {
            let goal = move_command(command)?;
            let said = crate::rebalance::start(proxy, goal).await?;
            notice(out, &said);
            protocol::command_complete(out, &words[..2].join(" "));
        }
        ["REMOVE", "SHARD", _] if holds_rows(proxy, &command_tokens(command)[2]) => {
            // The rows move away first; the shard leaves the map with the
            // rebalance's last version.
            let shard = command_tokens(command)[2].clone();
            let said =
                crate::rebalance::start(proxy, crate::rebalance::Goal::Drain { shard }).await?;
            notice(out, &said);
            protocol::command_complete(out, "REMOVE SHARD");
        }
        ["ADD", "SHARD", ..] | ["REMOVE", "SHARD", ..] => {
            crate::rebalance::refuse_if_unfinished(proxy, &words[..2].join(" ")).await?;
            let version = shard_command(proxy, command).await?;
            notice(out, &format!("shard map version {version} is in force"));
            protocol::command_complete(out, &words[..2].join(" "));
        }
        ["RELOAD"] => match proxy.reload() {
            Ok(outcome) => {
                if !outcome.needs_restart.is_empty() {
                    notice(
                        out,
                        &format!(
                            "changes to {} take effect only after a restart; the old values stay in force",
                            outcome.needs_restart.join(", ")
                        ),
                    );
                }
                protocol::command_complete(out, "RELOAD");
            }
            Err(e) => {
                return Err(PgError::error(
                    sqlstate::CONFIG_FILE_ERROR,
                    format!("the config was not reloaded: {e}"),
                )
                .with_hint(
                    "fix the file and run RELOAD again; the previous config stays in force",
                ))
            }
        },
        ["PAUSE"] => {
            proxy.set_paused(true);
            tracing::info!("paused: new transactions wait for RESUME");
            let wait = proxy.config().shutdown_timeout;
            let deadline = Instant::now() + wait;
            while proxy.servers_in_use() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let running = proxy.servers_in_use();
            if running > 0 {
                notice(
                    out,
                    &format!(
                        "paused, but {running} server connection(s) are still in use after {wait:?}"
                    ),
                );
            }
            protocol::command_complete(out, "PAUSE");
        }
        ["RESUME"] => {
            proxy.set_paused(false);
            tracing::info!("resumed");
            protocol::command_complete(out, "RESUME");
        }
        ["SHUTDOWN"] => {
            tracing::info!("shutdown requested from the admin console");
            proxy.begin_shutdown();
            protocol::command_complete(out, "SHUTDOWN");
        }
        // Drivers set session parameters when they connect; accept and
        // ignore them rather than fail the connection.
        ["SET", ..] => protocol::command_complete(out, "SET"),
        _ => {
            return Err(PgError::error(
                sqlstate::SYNTAX_ERROR,
                format!("unknown admin console command \"{command}\""),
            )
            .with_hint("SHOW HELP lists the commands"))
        }
    }
    Ok(())
}

fn notice(out: &mut BytesMut, message: &str) {
    let mut n = BytesMut::new();
    protocol::error_response(
        &mut n,
        vec![
            (b'S', "NOTICE".into()),
            (b'V', "NOTICE".into()),
            (b'C', sqlstate::SUCCESSFUL_COMPLETION.into()),
            (b'M', message.into()),
        ],
    );
    // An ErrorResponse frame with the NoticeResponse tag.
    n[0] = protocol::be::NOTICE_RESPONSE;
    out.extend_from_slice(&n);
}

/// Whether a table rule puts rows on shard `name` (REMOVE SHARD must
/// drain it then).
fn holds_rows(proxy: &Proxy, name: &str) -> bool {
    let config = proxy.config();
    let Some(index) = config.shards.iter().position(|s| s.name == name) else {
        return false;
    };
    index != config.default_shard && !crate::topology::tables_on_shard(&config, index).is_empty()
}

/// Words of a command; quotes and commas only separate, names keep
/// their case.
fn command_tokens(command: &str) -> Vec<String> {
    command
        .split(|c: char| c.is_whitespace() || c == ',')
        .map(|t| t.trim_matches(|c| c == '\'' || c == '"').to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

/// `SPLIT RANGE table AT value TO shard` or `MOVE REGION region TO shard`.
fn move_command(command: &str) -> Result<crate::rebalance::Goal, PgError> {
    let tokens = command_tokens(command);
    let upper: Vec<String> = tokens.iter().map(|t| t.to_ascii_uppercase()).collect();
    let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
    match upper.as_slice() {
        ["SPLIT", "RANGE", _, "AT", _, "TO", _] => Ok(crate::rebalance::Goal::SplitRange {
            table: tokens[2].clone(),
            at: tokens[4].clone(),
            shard: tokens[6].clone(),
        }),
        ["MOVE", "REGION", _, "TO", _] => Ok(crate::rebalance::Goal::MoveRegion {
            region: tokens[2].clone(),
            shard: tokens[4].clone(),
        }),
        _ => Err(PgError::error(
            sqlstate::SYNTAX_ERROR,
            format!("cannot parse \"{command}\""),
        )
        .with_hint("SPLIT RANGE table AT value TO shard, or MOVE REGION region TO shard")),
    }
}

/// `ADD SHARD name PRIMARY 'host:port' [REPLICAS 'host:port'[, ...]]` or
/// `REMOVE SHARD name`: the new map version.
async fn shard_command(proxy: &Arc<Proxy>, command: &str) -> Result<u64, PgError> {
    let tokens = command_tokens(command);
    let upper: Vec<String> = tokens.iter().map(|t| t.to_ascii_uppercase()).collect();
    let usage = || {
        PgError::error(
            sqlstate::SYNTAX_ERROR,
            format!("cannot parse \"{command}\""),
        )
        .with_hint(
            "ADD SHARD name PRIMARY 'host:port' [REPLICAS 'host:port', ...] or REMOVE SHARD name",
        )
    };
    match upper
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["REMOVE", "SHARD", _] => crate::topology::remove_shard(proxy, &tokens[2]).await,
        ["ADD", "SHARD", _, "PRIMARY", _, rest @ ..] => {
            let replicas = match rest {
                [] => vec![],
                ["REPLICAS", list @ ..] if !list.is_empty() => tokens[6..].to_vec(),
                _ => return Err(usage()),
            };
            crate::topology::add_shard(proxy, &tokens[2], &tokens[4], &replicas).await
        }
        _ => Err(usage()),
    }
}

/// One row per shard and per table rule of the map in force, each with
/// the map's version (0: the config file's map) and source, and the
/// entry as the config file would write it (JSON).
fn show_topology(proxy: &Proxy) -> Table {
    let config = proxy.config();
    let mut t = Table::new(&["version", "source", "name", "kind", "entry", "definition"]);
    let source = match config.topology.source {
        crate::config::TopologySource::File => "file",
        crate::config::TopologySource::Catalog => "catalog",
    };
    let name = &config.topology.name;
    let mut row = |kind: &str, entry: String, definition: String| {
        t.row(vec![
            v(config.topology_version),
            v(source),
            v(name),
            v(kind),
            v(entry),
            v(definition),
        ]);
    };
    row(
        "default_shard",
        config.shards[config.default_shard].name.clone(),
        String::new(),
    );
    for kind in ["shards", "tables"] {
        let entries = config
            .topology_map
            .get(kind)
            .and_then(|e| e.as_array())
            .cloned()
            .unwrap_or_default();
        for e in entries {
            let entry = e
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or("?")
                .to_string();
            row(&kind[..kind.len() - 1], entry, e.to_string());
        }
    }
    t
}

fn show_shards(proxy: &Proxy) -> Table {
    let config = proxy.config();
    let health = proxy.health.servers();
    let mut t = Table::new(&[
        "shard",
        "server",
        "role",
        "state",
        "lag_bytes",
        "default",
        "last_error",
        "timeline",
    ]);
    for (i, shard) in config.shards.iter().enumerate() {
        for s in &shard.servers {
            let h = health_of(&health, &shard.name, s);
            t.row(vec![
                v(&shard.name),
                v(s.addr()),
                v(h.map_or(s.role, |h| observed_role(h))),
                v(h.map_or("unchecked", |h| h.status())),
                h.and_then(|h| proxy.health.lag_bytes(h))
                    .map(|l| l.to_string()),
                v(i == config.default_shard),
                h.and_then(|h| h.last_error()),
                h.and_then(|h| h.timeline()).map(|t| t.to_string()),
            ]);
        }
    }
    t
}

/// The health of `server` of shard `shard`, if it is checked.
fn health_of<'a>(
    health: &'a [Arc<ServerHealth>],
    shard: &str,
    server: &Server,
) -> Option<&'a Arc<ServerHealth>> {
    health.iter().find(|h| {
        h.target.shard == shard && h.target.host == server.host && h.target.port == server.port
    })
}

fn show_servers(proxy: &Proxy) -> Table {
    let config = proxy.config();
    let health = proxy.health.servers();
    let pools = proxy.backends.all();
    let mut t = Table::new(&[
        "shard",
        "server",
        "role",
        "state",
        "connections",
        "active",
        "idle",
        "connects",
        "connect_errors",
        "check_ms",
        "went_down",
        "last_error",
    ]);
    for shard in &config.shards {
        for s in &shard.servers {
            let mine: Vec<_> = pools
                .iter()
                .filter(|p| p.target.host == s.host && p.target.port == s.port)
                .collect();
            let active: usize = mine.iter().map(|p| p.in_use()).sum();
            let idle: usize = mine.iter().map(|p| p.idle_count()).sum();
            let sum = |f: fn(&crate::backend::pool::PoolStats) -> u64| -> u64 {
                mine.iter().map(|p| f(&p.stats)).sum()
            };
            let h = health_of(&health, &shard.name, s);
            t.row(vec![
                v(&shard.name),
                v(s.addr()),
                v(h.map_or(s.role, |h| observed_role(h))),
                v(h.map_or("unchecked", |h| h.status())),
                v(active + idle),
                v(active),
                v(idle),
                v(sum(|s| s.connects.load(Ordering::Relaxed))),
                v(sum(|s| s.connect_errors.load(Ordering::Relaxed))),
                h.map(|h| {
                    ms(Duration::from_micros(
                        h.last_check_micros.load(Ordering::Relaxed),
                    ))
                }),
                h.map(|h| h.went_down.load(Ordering::Relaxed).to_string()),
                h.and_then(|h| h.last_error()),
            ]);
        }
    }
    t
}

fn show_pools(proxy: &Proxy) -> Table {
    let mut pools = proxy.backends.all();
    pools.sort_by(|a, b| {
        (
            &a.target.shard,
            a.target.addr(),
            &a.target.database,
            &a.target.user,
        )
            .cmp(&(
                &b.target.shard,
                b.target.addr(),
                &b.target.database,
                &b.target.user,
            ))
    });
    let mut t = Table::new(&[
        "shard",
        "server",
        "database",
        "user",
        "active",
        "idle",
        "waiting",
        "max",
        "checkouts",
        "waited",
        "avg_wait_ms",
        "timeouts",
        "queue_full",
    ]);
    for p in pools {
        let checkouts = p.checkouts();
        let wait = p.stats.wait_micros.load(Ordering::Relaxed);
        t.row(vec![
            v(&p.target.shard),
            v(p.target.addr()),
            v(&p.target.database),
            v(&p.target.user),
            v(p.in_use()),
            v(p.idle_count()),
            v(p.waiting()),
            v(p.settings().max_size),
            v(checkouts),
            v(p.stats.waited.load(Ordering::Relaxed)),
            v(ms(Duration::from_micros(wait / checkouts.max(1)))),
            v(p.stats.checkout_timeouts.load(Ordering::Relaxed)),
            v(p.stats.queue_full.load(Ordering::Relaxed)),
        ]);
    }
    t
}

fn show_clients(proxy: &Proxy) -> Table {
    let config = proxy.config();
    let mut t = Table::new(&[
        "id",
        "user",
        "database",
        "address",
        "tls",
        "state",
        "shard",
        "queries",
        "connected_at",
        "pinned_by",
    ]);
    for c in proxy.clients.list() {
        t.row(vec![
            v(c.id),
            v(&c.user),
            v(&c.database),
            c.peer.map(|p| p.to_string()),
            v(c.tls),
            v(c.state().name()),
            c.shard()
                .and_then(|s| config.shards.get(s))
                .map(|s| s.name.clone()),
            v(c.queries.load(Ordering::Relaxed)),
            v(super::format_utc(c.connected_at)),
            c.pinned_by().map(str::to_string),
        ]);
    }
    t
}

fn show_stats(proxy: &Proxy) -> Table {
    let mut t = Table::new(&[
        "shard", "kind", "queries", "errors", "avg_ms", "p50_ms", "p99_ms", "total_ms",
    ]);
    let bucket_ms = |q: Option<f64>| {
        q.map(|s| {
            if s.is_finite() {
                format!("<={}", s * 1000.0)
            } else {
                format!(">{}", LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1] * 1000.0)
            }
        })
    };
    for (shard, kind, r) in proxy.metrics.routes() {
        let n = r.latency.count();
        let total = r.latency.sum();
        t.row(vec![
            v(shard),
            v(kind.name()),
            v(r.queries.load(Ordering::Relaxed)),
            v(r.errors.load(Ordering::Relaxed)),
            v(ms(total / n.max(1) as u32)),
            bucket_ms(r.latency.quantile(0.5)),
            bucket_ms(r.latency.quantile(0.99)),
            v(ms(total)),
        ]);
    }
    t
}

fn show_config(proxy: &Proxy) -> Table {
    let mut t = Table::new(&["key", "value"]);
    let mut flat = Vec::new();
    flatten("", &proxy.config().to_json(), &mut flat);
    for (k, val) in flat {
        t.row(vec![v(k), v(val)]);
    }
    t
}

/// `{"pool": {"max_size": 20}}` → `pool.max_size = 20`; arrays by index.
fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                flatten(&key(k), v, out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_nested_config() {
        let j =
            serde_json::json!({"pool": {"max_size": 20}, "shards": [{"name": "s0"}], "tls": false});
        let mut out = Vec::new();
        flatten("", &j, &mut out);
        assert_eq!(
            out,
            vec![
                ("pool.max_size".to_string(), "20".to_string()),
                ("shards[0].name".to_string(), "s0".to_string()),
                ("tls".to_string(), "false".to_string()),
            ]
        );
    }
}

//! Two-phase commit of a transaction that wrote on several shards, and the
//! recovery of transactions a crash left in doubt (DESIGN.md §6).
//!
//! Commit: `PREPARE TRANSACTION 'sw_…'` on every shard; then the decision
//! is recorded in the catalog (table `shardwire.tx_decisions` on the first
//! shard's primary) with `INSERT … ON CONFLICT DO NOTHING`; only then
//! `COMMIT PREPARED` everywhere, and the decision row is dropped.
//!
//! The catalog row is the single point of truth, and its primary key makes
//! the race between a committing proxy and a recovering one safe: recovery
//! decides "abort" for a prepared transaction with no decision only by
//! inserting that decision, so whichever insert lands first wins and the
//! other side obeys it. A transaction prepared everywhere but never decided
//! is therefore rolled back; one decided "commit" is committed by whoever
//! gets there, however many times the proxy crashes.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use std::collections::HashMap;

use crate::backend::{BackendError, Pool, PooledConn, ServerConn, ServerTarget};
use crate::config::{Config, Database, User};
use crate::protocol::TxStatus;
use crate::protocol::{self, quote_literal, sqlstate, PgError};
use crate::proxy::Proxy;

/// Prefix of the global transaction ids shardwire prepares.
pub const GID_PREFIX: &str = "sw_";

const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long recovery keeps an abort decision (see `recover_database`).
const ABORT_KEPT_SECS: u64 = 24 * 3600;

const CATALOG_DDL: &str = "CREATE SCHEMA IF NOT EXISTS shardwire; \
     CREATE TABLE IF NOT EXISTS shardwire.tx_decisions ( \
       gid text PRIMARY KEY, \
       decision text NOT NULL CHECK (decision IN ('commit', 'abort')), \
       participants text[] NOT NULL DEFAULT '{}', \
       decided_at timestamptz NOT NULL DEFAULT now())";

/// The catalog DDL, and grants to every configured user (`users`, the
/// servers' role names) that exists as a role on the server (an admin-only
/// user may not): whichever of them creates the catalog owns it, and the
/// others record and drop decisions too. Not to PUBLIC: a role the proxy
/// does not use could otherwise forge or drop a decision.
fn catalog_ddl(users: &[String]) -> String {
    let mut sql = CATALOG_DDL.to_string();
    if !users.is_empty() {
        let roles = users
            .iter()
            .map(|u| quote_literal(u))
            .collect::<Vec<_>>()
            .join(", ");
        sql.push_str(&format!(
            "; DO $grant$ DECLARE r text; BEGIN \
               FOREACH r IN ARRAY ARRAY[{roles}]::text[] LOOP \
                 IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN \
                   EXECUTE format('GRANT USAGE ON SCHEMA shardwire TO %I', r); \
                   EXECUTE format('GRANT SELECT, INSERT, DELETE ON shardwire.tx_decisions TO %I', r); \
                 END IF; \
               END LOOP; \
             END $grant$"
        ));
    }
    sql
}

/// A new global transaction id.
pub fn new_gid() -> String {
    format!("{GID_PREFIX}{:016x}", rand::random::<u64>())
}

/// Create the catalog's schema and table if missing. Concurrent creators
/// may collide on the catalog's unique indexes; a second try settles it.
pub async fn ensure_catalog(conn: &mut ServerConn, users: &[String]) -> Result<(), String> {
    let ddl = catalog_ddl(users);
    let mut last = String::new();
    for _ in 0..3 {
        match conn.run_collect(&ddl, CONTROL_TIMEOUT, 64 * 1024).await {
            Ok(c) if c.error.is_none() => return Ok(()),
            Ok(c) => {
                last = c
                    .error
                    .map(|e| protocol::describe_error(protocol::body(&e)))
                    .unwrap_or_default()
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!(
        "cannot create the catalog table shardwire.tx_decisions: {last}"
    ))
}

/// Run `sql` (autocommit) and return the first value of the first row.
async fn query_value(conn: &mut ServerConn, sql: &str) -> Result<Option<String>, QueryError> {
    query_value_within(conn, sql, CONTROL_TIMEOUT).await
}

/// `query_value` waiting at most `within`.
async fn query_value_within(
    conn: &mut ServerConn,
    sql: &str,
    within: Duration,
) -> Result<Option<String>, QueryError> {
    let c = conn
        .run_collect(sql, within, 1024 * 1024)
        .await
        .map_err(QueryError::Lost)?;
    if let Some(e) = c.error {
        let fields = protocol::error_fields(protocol::body(&e));
        let code = fields
            .iter()
            .find(|(k, _)| *k == b'C')
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        return Err(QueryError::Sql {
            code,
            message: protocol::describe_error(protocol::body(&e)),
        });
    }
    Ok(c.first_value())
}

#[derive(Debug)]
enum QueryError {
    Lost(BackendError),
    Sql { code: String, message: String },
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::Lost(e) => write!(f, "{e}"),
            QueryError::Sql { message, .. } => f.write_str(message),
        }
    }
}

/// Record `decision` for `gid` unless one exists, waiting at most `within`
/// for each statement; returns the decision in force afterwards.
async fn decide(
    catalog: &mut ServerConn,
    gid: &str,
    decision: &str,
    participants: &[String],
    users: &[String],
    within: Duration,
) -> Result<String, QueryError> {
    let list = participants
        .iter()
        .map(|p| quote_literal(p))
        .collect::<Vec<_>>()
        .join(",");
    let insert = format!(
        "INSERT INTO shardwire.tx_decisions (gid, decision, participants) \
         VALUES ({}, {}, ARRAY[{list}]::text[]) ON CONFLICT (gid) DO NOTHING",
        quote_literal(gid),
        quote_literal(decision)
    );
    let select = format!(
        "SELECT decision FROM shardwire.tx_decisions WHERE gid = {}",
        quote_literal(gid)
    );
    for attempt in 0..2 {
        match query_value_within(catalog, &insert, within).await {
            Ok(_) => break,
            // The catalog does not exist yet: create it once.
            Err(QueryError::Sql { code, .. })
                if attempt == 0
                    && (code == sqlstate::UNDEFINED_TABLE
                        || code == sqlstate::INVALID_SCHEMA_NAME) =>
            {
                ensure_catalog(catalog, users)
                    .await
                    .map_err(|m| QueryError::Sql {
                        code: sqlstate::INTERNAL_ERROR.into(),
                        message: m,
                    })?;
            }
            // A catalog made before its creator granted it to the others.
            Err(QueryError::Sql { code, message }) if code == sqlstate::INSUFFICIENT_PRIVILEGE => {
                return Err(QueryError::Sql {
                    code,
                    message: format!(
                        "{message}; as the owner of shardwire.tx_decisions run: GRANT USAGE ON SCHEMA shardwire TO {role}; GRANT SELECT, INSERT, DELETE ON shardwire.tx_decisions TO {role}",
                        role = catalog.target.user
                    ),
                })
            }
            Err(e) => return Err(e),
        }
    }
    query_value_within(catalog, &select, within)
        .await?
        .ok_or_else(|| QueryError::Sql {
            code: sqlstate::INTERNAL_ERROR.into(),
            message: format!("no decision recorded for {gid}"),
        })
}

/// An error for the client, with shardwire's account of the outcome.
fn client_error(code: &'static str, message: String, detail: &str) -> BytesMut {
    let mut out = BytesMut::new();
    PgError::error(code, message)
        .with_detail(format!("shardwire: {detail}"))
        .encode(&mut out);
    out
}

/// Where the decision is recorded: on a participant's connection to the
/// catalog's server (idle once prepared, so no second connection from a
/// pool the transaction itself may have exhausted), else a new checkout.
pub struct Catalog<'a> {
    pub pool: &'a Arc<Pool>,
    /// Index in `conns` of the participant on the catalog's server.
    pub participant: Option<usize>,
    /// Every configured user's server role (see `catalog_ddl`).
    pub users: &'a [String],
    /// `transactions.prepare_timeout`: from the first PREPARE to the
    /// decision, or the commit rolls back (recovery, which acts after the
    /// longer `in_doubt_after`, can then never have decided first and
    /// forgotten it).
    pub prepare_within: Duration,
}

/// Commit, with two-phase commit, a transaction open on `conns[i]` for
/// every `i` in `participants` (`names[i]` is the shard). On failure the
/// client's error is returned; `clean[i]` says whether connection `i` may
/// go back to the pool.
pub async fn commit(
    conns: &mut [PooledConn],
    participants: &[usize],
    clean: &mut [bool],
    names: &[String],
    catalog: Catalog<'_>,
) -> Result<(), BytesMut> {
    let gid = new_gid();
    let gid_sql = quote_literal(&gid);
    let shards: Vec<String> = participants.iter().map(|&i| names[i].clone()).collect();

    // Phase one. Each shard's transaction id comes back with its PREPARE,
    // so that a later "does not exist" can be checked (see phase two).
    let started = std::time::Instant::now();
    let too_slow = || {
        client_error(
            sqlstate::CONNECTION_FAILURE,
            format!(
                "the transaction was rolled back: preparing it on every shard took longer than transactions.prepare_timeout ({:?})",
                catalog.prepare_within
            ),
            "the transaction was rolled back on every shard",
        )
    };
    let mut prepared: Vec<usize> = Vec::new();
    let mut xids: Vec<Option<String>> = vec![None; conns.len()];
    let mut failure: Option<BytesMut> = None;
    for &i in participants {
        let left = catalog.prepare_within.saturating_sub(started.elapsed());
        if left.is_zero() {
            failure = Some(too_slow());
            break;
        }
        match conns[i]
            .run_collect(
                &format!(
                    "SELECT pg_catalog.pg_current_xact_id_if_assigned(); PREPARE TRANSACTION {gid_sql}"
                ),
                left,
                64 * 1024,
            )
            .await
        {
            Ok(c) if c.error.is_none() && c.status == TxStatus::Idle && !is_rollback(&c) => {
                xids[i] = c.first_value();
                prepared.push(i);
                if prepared.len() == 1 && participants.len() > 1 {
                    failpoint("after_first_prepare", &gid).await;
                }
            }
            Ok(c) => {
                clean[i] = c.status == TxStatus::Idle;
                let why = c
                    .error
                    .map(|e| protocol::describe_error(protocol::body(&e)))
                    .unwrap_or_else(|| "the transaction had failed there".into());
                failure = Some(client_error(
                    sqlstate::CONNECTION_FAILURE,
                    format!(
                        "could not prepare the transaction on shard \"{}\": {why}",
                        names[i]
                    ),
                    "the transaction was rolled back on every shard",
                ));
                break;
            }
            Err(e) => {
                clean[i] = false;
                failure = Some(client_error(
                    sqlstate::CONNECTION_FAILURE,
                    format!(
                        "could not prepare the transaction on shard \"{}\": {e}",
                        names[i]
                    ),
                    "the transaction was rolled back on every shard",
                ));
                break;
            }
        }
    }
    if let Some(f) = failure {
        abort(conns, participants, &prepared, clean, &gid_sql).await;
        return Err(f);
    }
    failpoint("after_prepare", &gid).await;
    if started.elapsed() >= catalog.prepare_within {
        abort(conns, participants, &prepared, clean, &gid_sql).await;
        return Err(too_slow());
    }

    // The decision, within what is left of the prepare timeout: recovery
    // may decide abort once in_doubt_after passes, and a decision this
    // proxy is still waiting for must not come after that unseen (if it
    // lands later, the insert finds recovery's and yields to it).
    let decide_within = catalog
        .prepare_within
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(100));
    let decided = match catalog.participant.filter(|i| prepared.contains(i)) {
        Some(i) => {
            let d = decide(
                &mut conns[i],
                &gid,
                "commit",
                &shards,
                catalog.users,
                decide_within,
            )
            .await;
            if matches!(d, Err(QueryError::Lost(_))) {
                clean[i] = false;
            }
            d
        }
        None => match catalog.pool.checkout().await {
            Ok(mut c) => {
                let d = decide(
                    &mut c,
                    &gid,
                    "commit",
                    &shards,
                    catalog.users,
                    decide_within,
                )
                .await;
                if !matches!(d, Err(QueryError::Lost(_))) {
                    c.release();
                }
                d
            }
            Err(e) => Err(QueryError::Sql {
                code: sqlstate::CONNECTION_FAILURE.into(),
                message: e.to_string(),
            }),
        },
    };
    match decided {
        Ok(d) if d == "commit" => {}
        Ok(_) => {
            // Recovery decided first (this proxy was too slow).
            abort(conns, participants, &prepared, clean, &gid_sql).await;
            return Err(client_error(
                sqlstate::CONNECTION_FAILURE,
                "the transaction was rolled back: its commit was not recorded in time".into(),
                "the transaction was rolled back on every shard",
            ));
        }
        Err(QueryError::Lost(e)) => {
            // The decision may or may not have been recorded: recovery
            // will finish the transaction one way, on every shard.
            return Err(client_error(
                sqlstate::CONNECTION_FAILURE,
                format!("lost the catalog while committing: {e}"),
                &format!("transaction {gid} is prepared on every shard; shardwire's recovery commits it if the decision was recorded, else rolls it back. Check before retrying"),
            ));
        }
        Err(e) => {
            abort(conns, participants, &prepared, clean, &gid_sql).await;
            return Err(client_error(
                sqlstate::CONNECTION_FAILURE,
                format!("could not record the commit decision: {e}"),
                "the transaction was rolled back on every shard",
            ));
        }
    }
    failpoint("after_decision", &gid).await;

    // Phase two. The transaction is committed: a shard that cannot be
    // told now is told by recovery, which needs the decision kept. One
    // whose transaction "does not exist" any more was finished by someone
    // else: that is a success only if its transaction id says committed.
    // A shard that does not answer within the prepare timeout is left to
    // recovery: the client is told the commit (it is decided) rather than
    // wait for it.
    let mut all_committed = true;
    let mut rolled_back: Vec<&str> = Vec::new();
    for (n, &i) in prepared.iter().enumerate() {
        if n == 1 {
            failpoint("after_first_commit", &gid).await;
        }
        let sql = format!("COMMIT PREPARED {gid_sql}");
        match conns[i]
            .run_collect(&sql, catalog.prepare_within, 64 * 1024)
            .await
        {
            Ok(c) if c.error.is_none() => {}
            Ok(c) if error_code(&c) == Some(sqlstate::UNDEFINED_OBJECT.to_string()) => {
                match committed_elsewhere(&mut conns[i], xids[i].as_deref()).await {
                    Ok(true) => {}
                    Ok(false) => rolled_back.push(&names[i]),
                    Err(e) => {
                        all_committed = false;
                        clean[i] = false;
                        tracing::error!(%gid, shard = %names[i], error = %e, "COMMIT PREPARED found no transaction and its outcome could not be read");
                        rolled_back.push(&names[i]);
                    }
                }
            }
            Ok(c) => {
                all_committed = false;
                clean[i] = c.status == TxStatus::Idle;
                tracing::warn!(%gid, shard = %names[i], error = %c.error.map(|e| protocol::describe_error(protocol::body(&e))).unwrap_or_default(), "COMMIT PREPARED failed; recovery will finish it");
            }
            Err(e) => {
                all_committed = false;
                clean[i] = false;
                tracing::warn!(%gid, shard = %names[i], error = %e, "COMMIT PREPARED failed; recovery will finish it");
            }
        }
    }
    if !rolled_back.is_empty() {
        // Only a decision recorded too late can lead here, which the
        // prepare timeout and the kept abort decisions rule out: say so
        // rather than report a commit.
        tracing::error!(%gid, shards = ?rolled_back, "a transaction decided commit was rolled back on some shards");
        return Err(client_error(
            sqlstate::INTERNAL_ERROR,
            format!(
                "the transaction was committed on some shards but had been rolled back on {}",
                rolled_back.join(", ")
            ),
            &format!("transaction {gid}: the shards disagree; check its rows on every shard"),
        ));
    }
    if !all_committed {
        return Ok(());
    }
    let forget = format!("DELETE FROM shardwire.tx_decisions WHERE gid = {gid_sql}");
    match catalog.participant.filter(|&i| clean[i]) {
        Some(i) => {
            if query_value(&mut conns[i], &forget).await.is_err() {
                clean[i] = false;
            }
        }
        // Left to recovery's clean-up rather than wait for a connection.
        None => {
            if let Some(Ok(mut c)) = catalog.pool.try_checkout().await {
                if query_value(&mut c, &forget).await.is_ok() {
                    c.release();
                }
            }
        }
    }
    Ok(())
}

/// Roll back: prepared ones with ROLLBACK PREPARED, the others with
/// ROLLBACK.
async fn abort(
    conns: &mut [PooledConn],
    participants: &[usize],
    prepared: &[usize],
    clean: &mut [bool],
    gid_sql: &str,
) {
    for &i in participants {
        if !clean[i] {
            continue;
        }
        let sql = if prepared.contains(&i) {
            format!("ROLLBACK PREPARED {gid_sql}")
        } else {
            "ROLLBACK".to_string()
        };
        match conns[i].run_collect(&sql, CONTROL_TIMEOUT, 64 * 1024).await {
            Ok(c) => clean[i] = c.status == TxStatus::Idle,
            Err(_) => clean[i] = false,
        }
    }
}

/// The SQLSTATE of a collected answer's error, if any.
fn error_code(c: &crate::backend::conn::Collected) -> Option<String> {
    let e = c.error.as_ref()?;
    protocol::error_fields(protocol::body(e))
        .into_iter()
        .find(|(k, _)| *k == b'C')
        .map(|(_, v)| v)
}

/// Whether the transaction `xid` (from its PREPARE) committed on this
/// server. None: it had written nothing there, so nothing was lost.
async fn committed_elsewhere(conn: &mut ServerConn, xid: Option<&str>) -> Result<bool, String> {
    let Some(xid) = xid else {
        return Ok(true);
    };
    let status = query_value(
        conn,
        &format!(
            "SELECT pg_catalog.pg_xact_status({}::xid8)",
            quote_literal(xid)
        ),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(status.as_deref() == Some("committed"))
}

/// COMMIT or PREPARE of an aborted transaction answers "ROLLBACK".
fn is_rollback(c: &crate::backend::conn::Collected) -> bool {
    c.frames.iter().any(|f| {
        f[0] == protocol::be::COMMAND_COMPLETE && protocol::body(f).starts_with(b"ROLLBACK")
    })
}

/// Test hook: with `SHARDWIRE_FAILPOINT=<name>`, stop here (for a test to
/// kill the proxy at this exact point); with `<name>:<seconds>`, pause
/// that long and go on (for a test to stall a shard meanwhile).
async fn failpoint(name: &str, gid: &str) {
    let Ok(wanted) = std::env::var("SHARDWIRE_FAILPOINT") else {
        return;
    };
    let (wanted, pause) = match wanted.split_once(':') {
        Some((w, secs)) => (w.to_string(), secs.parse().ok()),
        None => (wanted, None),
    };
    if wanted == name {
        tracing::warn!(
            failpoint = name,
            gid,
            "failpoint reached; waiting to be killed"
        );
        tokio::time::sleep(Duration::from_secs(pause.unwrap_or(3600))).await;
    }
}

/// Resolve in-doubt transactions now and then every
/// `transactions.recovery_interval`: prepared `sw_` transactions older than
/// `transactions.in_doubt_after` on any shard's primary are committed if
/// the catalog says commit, else decided abort and rolled back; decisions
/// no shard needs any more are dropped. Recovery keeps its own connection
/// to each primary (as the health checks do), so it never takes a client's
/// pooled connection.
pub fn spawn_recovery(proxy: Arc<Proxy>) {
    tokio::spawn(async move {
        let mut shutdown = proxy.shutdown_requested();
        let mut conns: HashMap<ServerTarget, ServerConn> = HashMap::new();
        loop {
            if let Err(e) = recover_once(&proxy, &mut conns).await {
                tracing::warn!(error = %e, "two-phase commit recovery pass failed; retrying later");
            }
            let interval = proxy.config().transactions.recovery_interval;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    });
}

/// The connection kept for `target`, opened if needed.
async fn kept<'a>(
    conns: &'a mut HashMap<ServerTarget, ServerConn>,
    target: &ServerTarget,
) -> Result<&'a mut ServerConn, String> {
    if conns.get_mut(target).is_some_and(|c| c.is_broken()) {
        conns.remove(target);
    }
    if !conns.contains_key(target) {
        let c = ServerConn::connect(Arc::new(target.clone()), CONTROL_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        conns.insert(target.clone(), c);
    }
    Ok(conns.get_mut(target).expect("just inserted"))
}

/// One recovery pass.
async fn recover_once(
    proxy: &Arc<Proxy>,
    conns: &mut HashMap<ServerTarget, ServerConn>,
) -> Result<(), String> {
    let config = proxy.config();
    let Some((_, user)) = config.health.login.clone() else {
        return Ok(()); // no credentials to look with
    };
    // Prepared transactions and their decisions live per database.
    let mut first_error = None;
    for db in config.databases.values() {
        if let Err(e) = recover_database(proxy, &config, db, &config.users[&user], conns).await {
            tracing::warn!(database = %db.name, error = %e, "recovery pass failed for a database");
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// A decision for `gid` in any reachable shard's catalog table but the
/// first's (where `decide` looks): the first shard by position holds the
/// catalog, so after the shards of the config were reordered an in-doubt
/// transaction's decision is on another one.
async fn recorded_elsewhere(
    conns: &mut HashMap<ServerTarget, ServerConn>,
    primary: &impl Fn(usize) -> ServerTarget,
    config: &Config,
    gid: &str,
) -> Option<String> {
    let sql = format!(
        "SELECT decision FROM shardwire.tx_decisions WHERE gid = {}",
        quote_literal(gid)
    );
    for shard in 1..config.shards.len() {
        let Ok(conn) = kept(conns, &primary(shard)).await else {
            continue;
        };
        if let Ok(Some(d)) = query_value(conn, &sql).await {
            return Some(d);
        }
    }
    None
}

/// One recovery pass over one database.
async fn recover_database(
    proxy: &Arc<Proxy>,
    config: &Config,
    db: &Database,
    user: &User,
    conns: &mut HashMap<ServerTarget, ServerConn>,
) -> Result<(), String> {
    let primary = |shard: usize| {
        let s = &config.shards[shard];
        let v = &s.servers[proxy.health.primary_index(config, shard)];
        ServerTarget {
            shard: s.name.clone(),
            host: v.host.clone(),
            port: v.port,
            role: v.role,
            database: db.server_database.clone(),
            user: user.server_user.clone(),
            password: user.server_password.clone(),
        }
    };
    let grace = config.transactions.in_doubt_after.as_secs_f64();
    let list_sql = format!(
        "SELECT gid, extract(epoch FROM now() - prepared)::float8 FROM pg_prepared_xacts \
         WHERE gid LIKE '{GID_PREFIX}%' AND database = current_database()"
    );
    // Every shard's prepared transactions (all of them: a decision may be
    // dropped only when no shard still waits for it).
    // A shard that cannot be reached is skipped, not a reason to leave the
    // others' in-doubt transactions holding their locks; but then no
    // decision is dropped, as that shard may still wait for one.
    let mut in_doubt: Vec<(usize, String)> = Vec::new();
    let mut still_prepared: Vec<String> = Vec::new();
    let mut unreachable: Vec<String> = Vec::new();
    for shard in 0..config.shards.len() {
        let name = &config.shards[shard].name;
        let list = match kept(conns, &primary(shard)).await {
            Ok(conn) => conn
                .run_collect(&list_sql, CONTROL_TIMEOUT, 1024 * 1024)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let list = match list {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(shard = %name, error = %e, "recovery cannot reach a shard; settling the others");
                unreachable.push(format!("cannot reach shard \"{name}\": {e}"));
                continue;
            }
        };
        for f in list
            .frames
            .iter()
            .filter(|f| f[0] == protocol::be::DATA_ROW)
        {
            let Ok(v) = protocol::data_row_values(f) else {
                continue;
            };
            let gid = v
                .first()
                .copied()
                .flatten()
                .and_then(|g| String::from_utf8(g.to_vec()).ok());
            let age: Option<f64> = v
                .get(1)
                .copied()
                .flatten()
                .and_then(|a| std::str::from_utf8(a).ok())
                .and_then(|a| a.parse().ok());
            if let (Some(gid), Some(age)) = (gid, age) {
                still_prepared.push(gid.clone());
                if age >= grace {
                    in_doubt.push((shard, gid));
                }
            }
        }
    }
    let catalog_target = primary(0);
    let users = config.server_roles();
    for (shard, gid) in in_doubt {
        // A decision recorded where an earlier config had its catalog
        // (shards reordered) counts; else the catalog decides, and without
        // it nothing can be decided: the pass ends.
        let decision = match recorded_elsewhere(conns, &primary, config, &gid).await {
            Some(d) => d,
            None => {
                let catalog = kept(conns, &catalog_target).await?;
                decide(catalog, &gid, "abort", &[], &users, CONTROL_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        let verb = if decision == "commit" {
            "COMMIT PREPARED"
        } else {
            "ROLLBACK PREPARED"
        };
        let done = match kept(conns, &primary(shard)).await {
            Err(e) => Err(e),
            Ok(conn) => match query_value(conn, &format!("{verb} {}", quote_literal(&gid))).await {
                Ok(_) => Ok(()),
                // Finished meanwhile by someone else.
                Err(QueryError::Sql { code, .. }) if code == sqlstate::UNDEFINED_OBJECT => Ok(()),
                Err(e) => Err(e.to_string()),
            },
        };
        match done {
            Ok(()) => {
                if let Some(p) = still_prepared.iter().position(|g| *g == gid) {
                    still_prepared.remove(p);
                }
                tracing::info!(%gid, shard = %config.shards[shard].name, %decision, "settled an in-doubt transaction");
            }
            Err(e) => {
                tracing::warn!(%gid, shard = %config.shards[shard].name, error = %e, "could not finish an in-doubt transaction")
            }
        }
    }
    if let Some(e) = unreachable.into_iter().next() {
        return Err(e);
    }
    // Decisions nobody waits for any more (the table may not exist yet:
    // nothing to drop then). An abort is kept for a day: a PREPARE stalled
    // in a shard's socket may still run, and its proxy must then find the
    // abort, not record a commit (the prepare timeout makes that proxy
    // give up long before).
    let keep = still_prepared
        .iter()
        .map(|g| quote_literal(g))
        .collect::<Vec<_>>()
        .join(",");
    let mut forget = format!(
        "DELETE FROM shardwire.tx_decisions WHERE decided_at < now() - interval '{grace} seconds' \
         AND (decision = 'commit' OR decided_at < now() - interval '{ABORT_KEPT_SECS} seconds')"
    );
    if !keep.is_empty() {
        forget.push_str(&format!(" AND gid NOT IN ({keep})"));
    }
    // Where an earlier config kept its catalog too (see
    // `recorded_elsewhere`); a shard without the table has nothing to drop.
    let catalog = kept(conns, &catalog_target).await?;
    let result = match query_value(catalog, &forget).await {
        Ok(_) => Ok(()),
        Err(QueryError::Sql { code, .. })
            if code == sqlstate::UNDEFINED_TABLE || code == sqlstate::INVALID_SCHEMA_NAME =>
        {
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    };
    for shard in 1..config.shards.len() {
        if let Ok(conn) = kept(conns, &primary(shard)).await {
            let _ = query_value(conn, &forget).await;
        }
    }
    result
}

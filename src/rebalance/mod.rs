//! Rebalancing (DESIGN §7). So far the planner: `REBALANCE PLAN` lists the
//! moves that bring every hash ring to the cluster's shards, after ADD
//! SHARD pinned the rings to the old ones. Each move is a table, a source
//! and a target shard, the moving keys as a SQL predicate over
//! PostgreSQL's own hash of the key (the publication row filter the mover
//! will use), and the rows the source holds there now. A table logical
//! replication cannot move (no primary key, or one without the shard key)
//! is named with the reason.
//!
//! Not built yet: the mover (copy and catch-up by logical replication,
//! fenced cutover, verification, cleanup), its journal, and START, STATUS
//! and CANCEL.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::conn::{ServerConn, ServerTarget};
use crate::config::{Config, Role};
use crate::frontend::Proxy;
use crate::protocol::{sqlstate, PgError};
use crate::router::{KeyType, Placement};
use crate::sharding::ring::moved_arcs;
use crate::sharding::{HashRing, KeyKind, DEFAULT_VNODES};

const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// One planned move.
#[derive(Debug, Clone)]
pub struct PlannedMove {
    pub table: String,
    pub source: String,
    pub target: String,
    /// Ring arcs that move.
    pub arcs: usize,
    /// The moving rows, as a predicate the source evaluates.
    pub predicate: String,
    /// Rows on the source that match it now (None when it was not asked).
    pub rows: Option<i64>,
    /// Why the move cannot run, when it cannot.
    pub problem: Option<String>,
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The plan for the map in force: the moves of every hash table whose ring
/// does not cover every shard.
pub async fn plan(proxy: &Arc<Proxy>) -> Result<Vec<PlannedMove>, PgError> {
    let config = proxy.config();
    let all: Vec<&str> = config.shards.iter().map(|s| s.name.as_str()).collect();
    let everyone: Vec<usize> = (0..all.len()).collect();
    let tables = config
        .topology_map
        .get("tables")
        .and_then(|t| t.as_array())
        .cloned()
        .unwrap_or_default();
    let mut moves = Vec::new();
    for raw in &tables {
        let Some(name) = raw.get("name").and_then(|n| n.as_str()) else {
            continue;
        };
        let Some(rule) = config.router.table(&name.trim().to_lowercase()) else {
            continue;
        };
        let Placement::Hash(old, members) = &rule.placement else {
            continue;
        };
        let mut sorted = members.clone();
        sorted.sort_unstable();
        if sorted == everyone {
            continue;
        }
        let vnodes = raw
            .get("vnodes")
            .and_then(|v| v.as_u64())
            .map_or(DEFAULT_VNODES, |v| v as u32);
        let new =
            HashRing::new(&all, vnodes).map_err(|e| PgError::error(sqlstate::INTERNAL_ERROR, e))?;
        let kind = match rule.key_type {
            KeyType::Int => KeyKind::Int,
            KeyType::Text => KeyKind::Text,
            KeyType::Uuid => KeyKind::Uuid,
        };
        let column = quote_ident(&rule.key);
        let arcs = moved_arcs(old, members, &new, &everyone);
        let mut pairs: Vec<(usize, usize)> = arcs.iter().map(|(f, a)| (*f, a.shard)).collect();
        pairs.sort_unstable();
        pairs.dedup();
        for (from, to) in pairs {
            let terms: Vec<String> = arcs
                .iter()
                .filter(|(f, a)| *f == from && a.shard == to)
                .map(|(_, a)| a.sql_predicate(kind, &column))
                .collect();
            moves.push(PlannedMove {
                table: rule.name.clone(),
                source: all[from].to_string(),
                target: all[to].to_string(),
                arcs: terms.len(),
                predicate: terms.join(" OR "),
                rows: None,
                problem: None,
            });
        }
    }
    for m in &mut moves {
        let shard = config
            .shards
            .iter()
            .position(|s| s.name == m.source)
            .unwrap_or(0);
        match estimate(proxy, &config, shard, m).await {
            Ok(rows) => m.rows = Some(rows),
            Err(problem) => m.problem = Some(problem),
        }
    }
    Ok(moves)
}

/// Check that the source can move the table (a primary key with the shard
/// key in it, as logical replication needs) and count the moving rows.
async fn estimate(
    proxy: &Arc<Proxy>,
    config: &Config,
    shard: usize,
    m: &PlannedMove,
) -> Result<i64, String> {
    let (db, user) = config
        .health
        .login
        .clone()
        .ok_or("no user and database to reach the shards with")?;
    let s = &config.shards[shard];
    let server = &s.servers[proxy.health.primary_index(config, shard)];
    let user = &config.users[&user];
    let target = ServerTarget {
        shard: s.name.clone(),
        host: server.host.clone(),
        port: server.port,
        role: Role::Primary,
        database: config.databases[&db].server_database.clone(),
        user: user.server_user.clone(),
        password: user.server_password.clone(),
    };
    let describe = target.describe();
    let mut conn = ServerConn::connect(Arc::new(target), QUERY_TIMEOUT)
        .await
        .map_err(|e| format!("cannot reach the source {describe}: {e}"))?;
    let rule = config.router.table(&m.table).ok_or("no table rule")?;
    let literal = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let pk = first_values(
        &mut conn,
        &format!(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a \
             ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
             WHERE i.indisprimary AND i.indrelid = to_regclass({})",
            literal(&m.table)
        ),
    )
    .await?;
    if pk.is_empty() {
        return Err(format!(
            "table \"{}\" has no primary key on {}: logical replication cannot move its updates and deletes",
            m.table, m.source
        ));
    }
    if !pk.iter().any(|c| *c == rule.key) {
        return Err(format!(
            "the primary key of \"{}\" ({}) does not include the shard key \"{}\"",
            m.table,
            pk.join(", "),
            rule.key
        ));
    }
    let count = first_values(
        &mut conn,
        &format!(
            "SELECT count(*) FROM {} WHERE {}",
            quote_ident(&m.table),
            m.predicate
        ),
    )
    .await?;
    count
        .first()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no row count".to_string())
}

/// The first column of every row of `sql`'s answer.
async fn first_values(conn: &mut ServerConn, sql: &str) -> Result<Vec<String>, String> {
    let c = conn
        .run_collect(sql, QUERY_TIMEOUT, 16 * 1024 * 1024)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(e) = &c.error {
        return Err(crate::protocol::describe_error(crate::protocol::body(e)));
    }
    Ok(c.frames
        .iter()
        .filter(|f| f[0] == crate::protocol::be::DATA_ROW)
        .filter_map(|f| crate::protocol::first_text_value(f))
        .collect())
}

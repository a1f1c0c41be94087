//! Rebalancing (DESIGN §7): the planner, the DBA commands, and (in
//! `mover`) the mover with its journal (`journal`).
//!
//! A rebalance is a target shard map and the moves that get the rows
//! there: each a table, a source and a target shard, and the moving keys
//! as a SQL predicate the source evaluates (PostgreSQL's own hash of the
//! key for ring arcs, bounds for ranges, the region for geo tables), which
//! is also the publication's row filter. `REBALANCE START` spreads every
//! hash ring over all shards (after ADD SHARD pinned the rings to the old
//! ones); `SPLIT RANGE` and `MOVE REGION` move one range or region. A
//! table logical replication cannot move (no primary key, or one without
//! the shard key) is named with the reason and nothing starts.

pub mod journal;
pub mod mover;
mod precheck;

use std::sync::Arc;
use std::time::Duration;

use crate::backend::conn::ServerConn;
use crate::config::Config;
use crate::protocol::{sqlstate, PgError};
use crate::proxy::Proxy;
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

use crate::protocol::quote_ident;

/// The plan for the map in force: the moves of every hash table whose ring
/// does not cover every shard.
pub async fn plan(proxy: &Arc<Proxy>) -> Result<Vec<PlannedMove>, PgError> {
    let config = proxy.config();
    let everyone: Vec<usize> = (0..config.shards.len()).collect();
    plan_rings(proxy, &config, &everyone).await
}

/// The moves that put every hash table's ring on exactly the shards
/// `targets` (config indexes, sorted).
async fn plan_rings(
    proxy: &Arc<Proxy>,
    config: &Config,
    targets: &[usize],
) -> Result<Vec<PlannedMove>, PgError> {
    let all: Vec<&str> = config.shards.iter().map(|s| s.name.as_str()).collect();
    let target_names: Vec<&str> = targets.iter().map(|i| all[*i]).collect();
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
        if sorted == targets {
            continue;
        }
        let vnodes = raw
            .get("vnodes")
            .and_then(|v| v.as_u64())
            .map_or(DEFAULT_VNODES, |v| v as u32);
        let new = HashRing::new(&target_names, vnodes)
            .map_err(|e| PgError::error(sqlstate::INTERNAL_ERROR, e))?;
        let kind = match rule.key_type {
            KeyType::Int => KeyKind::Int,
            KeyType::Text => KeyKind::Text,
            KeyType::Uuid => KeyKind::Uuid,
        };
        let column = quote_ident(&rule.key);
        let arcs = moved_arcs(old, members, &new, targets);
        let mut pairs: Vec<(usize, usize)> = arcs.iter().map(|(f, a)| (*f, a.shard)).collect();
        pairs.sort_unstable();
        pairs.dedup();
        for (from, to) in pairs {
            // One multirange of all the arcs: PostgreSQL hashes each row
            // once and finds its arc by binary search (hundreds of ORed
            // BETWEENs would hash it once per arc).
            let ranges: Vec<String> = arcs
                .iter()
                .filter(|(f, a)| *f == from && a.shard == to)
                .map(|(_, a)| a.range_literal())
                .collect();
            moves.push(PlannedMove {
                table: rule.name.clone(),
                source: all[from].to_string(),
                target: all[to].to_string(),
                arcs: ranges.len(),
                predicate: format!(
                    "{} <@ '{{{}}}'::int8multirange",
                    kind.sql_position(&column),
                    ranges.join(",")
                ),
                rows: None,
                problem: None,
            });
        }
    }
    for m in &mut moves {
        estimate_into(proxy, config, m).await;
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
    let target = crate::topology::health_login_target(
        config,
        shard,
        proxy.health.primary_index(config, shard),
    )
    .ok_or("no user and database to reach the shards with")?;
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

// ---------------------------------------------------------------------------
// The commands.

use crate::config::TopologySource;
use crate::sharding::range::RangeBound;
use journal::{literal, Step};

/// What a started rebalance is to do.
pub enum Goal {
    /// Every hash ring over all shards.
    Rebalance,
    /// `SPLIT RANGE table AT value TO shard`.
    SplitRange {
        table: String,
        at: String,
        shard: String,
    },
    /// `MOVE REGION region TO shard`.
    MoveRegion { region: String, shard: String },
    /// `REMOVE SHARD name` of a shard that holds rows of hash tables: the
    /// rings without it, and the shard out of the map at the end.
    Drain { shard: String },
}

fn refuse(code: &'static str, message: impl Into<String>) -> PgError {
    PgError::error(code, message.into())
}

/// A catalog connection, with the journal's tables in place.
async fn open_journal(proxy: &Proxy, config: &Config) -> Result<ServerConn, PgError> {
    let primary = proxy.health.primary_index(config, 0);
    let mut conn = crate::topology::open(config, primary)
        .await
        .map_err(|e| refuse(sqlstate::CONNECTION_FAILURE, e))?;
    journal::ensure(&mut conn)
        .await
        .map_err(|e| refuse(sqlstate::CONNECTION_FAILURE, e))?;
    Ok(conn)
}

/// The catalog connection that holds the rebalance lock of `config`'s
/// topology, or None when another session holds it (the lock goes with
/// the connection, so a crashed mover frees it).
async fn lock(config: &Config, proxy: &Proxy) -> Result<Option<ServerConn>, PgError> {
    let mut conn = open_journal(proxy, config).await?;
    let locked = crate::topology::run_within(
        &mut conn,
        &format!(
            "SELECT pg_try_advisory_lock(hashtext({}))",
            literal(&format!("shardwire rebalance {}", config.topology.name))
        ),
        QUERY_TIMEOUT,
    )
    .await
    .map_err(|e| refuse(sqlstate::CONNECTION_FAILURE, e))?;
    let got = locked.first().and_then(|r| r[0].as_deref()) == Some("t");
    Ok(got.then_some(conn))
}

fn check_can_move(config: &Config, command: &str) -> Result<(), PgError> {
    crate::topology::catalog_only(config, command)?;
    if config.rebalance.user.is_none() {
        return Err(refuse(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("{command} needs [rebalance] user: a login on every shard's primary that may create subscriptions (a superuser with REPLICATION)"),
        ));
    }
    Ok(())
}

/// Refuse a map change while a rebalance is unfinished (its target map
/// was planned against the map in force).
pub async fn refuse_if_unfinished(proxy: &Proxy, command: &str) -> Result<(), PgError> {
    let config = proxy.config();
    if config.topology.source != TopologySource::Catalog {
        return Ok(());
    }
    let mut conn = open_journal(proxy, &config).await?;
    if let Some(r) = journal::unfinished(&mut conn, &config.topology.name)
        .await
        .map_err(|e| refuse(sqlstate::CONNECTION_FAILURE, e))?
    {
        return Err(refuse(
            sqlstate::OBJECT_IN_USE,
            format!(
                "rebalance {} ({}) is not finished; {command} would change the map under it",
                r.id, r.command
            ),
        )
        .with_hint(
            "let it finish (REBALANCE STATUS), resume it (REBALANCE START) or REBALANCE CANCEL it",
        ));
    }
    Ok(())
}

/// `REBALANCE START`, `SPLIT RANGE`, `MOVE REGION`: start the mover in
/// the background, or resume the unfinished rebalance (START only).
/// Returns what to tell the DBA.
pub async fn start(proxy: &Arc<Proxy>, goal: Goal) -> Result<String, PgError> {
    let config = proxy.config();
    let command = match &goal {
        Goal::Rebalance => "REBALANCE START".to_string(),
        Goal::SplitRange { table, at, shard } => format!("SPLIT RANGE {table} AT {at} TO {shard}"),
        Goal::MoveRegion { region, shard } => format!("MOVE REGION {region} TO {shard}"),
        Goal::Drain { shard } => format!("REMOVE SHARD {shard}"),
    };
    check_can_move(&config, &command)?;
    let Some(mut catalog) = lock(&config, proxy).await? else {
        return Err(refuse(
            sqlstate::OBJECT_IN_USE,
            "a rebalance is running (driven by another proxy or session); nothing was started",
        )
        .with_hint("follow it with REBALANCE STATUS"));
    };
    let name = config.topology.name.clone();
    let unfinished = journal::unfinished(&mut catalog, &name)
        .await
        .map_err(|e| refuse(sqlstate::CONNECTION_FAILURE, e))?;
    if let Some(r) = unfinished {
        if !matches!(goal, Goal::Rebalance) {
            return Err(refuse(
                sqlstate::OBJECT_IN_USE,
                format!(
                    "rebalance {} ({}) is not finished; nothing was started",
                    r.id, r.command
                ),
            )
            .with_hint("resume it with REBALANCE START or abandon it with REBALANCE CANCEL"));
        }
        journal::set_status(&mut catalog, r.id, journal::status::RUNNING, None, false)
            .await
            .map_err(|e| refuse(sqlstate::CONNECTION_FAILURE, e))?;
        let id = r.id;
        tokio::spawn(mover::Mover::new(proxy.clone(), catalog, name, id).run());
        return Ok(format!(
            "resuming rebalance {id} ({}) at step \"{}\"; follow it with REBALANCE STATUS",
            r.command,
            r.step.as_str()
        ));
    }
    let (moves, target_map) = match &goal {
        Goal::Rebalance => (plan(proxy).await?, spread_rings(&config)),
        Goal::SplitRange { table, at, shard } => {
            split_range(proxy, &config, table, at, shard).await?
        }
        Goal::MoveRegion { region, shard } => move_region(proxy, &config, region, shard).await?,
        Goal::Drain { shard } => drain(proxy, &config, shard).await?,
    };
    if moves.is_empty() {
        return Ok("nothing to move: every table is where the map wants it".into());
    }
    let problems: Vec<String> = moves
        .iter()
        .filter_map(|m| {
            m.problem
                .as_ref()
                .map(|p| format!("{} {} -> {}: {p}", m.table, m.source, m.target))
        })
        .collect();
    if !problems.is_empty() {
        return Err(refuse(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "these moves cannot run, so nothing was started: {}",
                problems.join("; ")
            ),
        ));
    }
    Config::load_with_map(
        &config.file,
        Some((config.topology_version + 1, &target_map)),
    )
    .map_err(|e| {
        refuse(
            sqlstate::INTERNAL_ERROR,
            format!("the planned map is not valid: {e}"),
        )
    })?;
    let id = journal::create(
        &mut catalog,
        &name,
        &command,
        config.topology_version,
        &target_map,
        &moves,
    )
    .await
    .map_err(|e| refuse(sqlstate::OBJECT_IN_USE, e))?;
    let rows: i64 = moves.iter().filter_map(|m| m.rows).sum();
    tokio::spawn(mover::Mover::new(proxy.clone(), catalog, name, id).run());
    Ok(format!(
        "rebalance {id} started: {} moves, about {rows} rows; follow it with REBALANCE STATUS",
        moves.len()
    ))
}

/// The map in force with every hash ring over all shards.
fn spread_rings(config: &Config) -> serde_json::Value {
    let mut map = (*config.topology_map).clone();
    if let Some(tables) = map.get_mut("tables").and_then(|t| t.as_array_mut()) {
        for t in tables {
            if let Some(o) = t.as_object_mut() {
                if o.get("strategy").and_then(|s| s.as_str()) == Some("hash") {
                    o.remove("shards");
                }
            }
        }
    }
    map
}

fn table_entry<'a>(
    map: &'a mut serde_json::Value,
    table: &str,
) -> Option<&'a mut serde_json::Value> {
    map.get_mut("tables")?.as_array_mut()?.iter_mut().find(|t| {
        t.get("name")
            .and_then(|n| n.as_str())
            .map(|n| n.trim().to_lowercase())
            == Some(table.to_lowercase())
    })
}

fn json_bound(v: &serde_json::Value) -> Option<RangeBound> {
    match v {
        serde_json::Value::Number(n) => n.as_i64().map(RangeBound::Int),
        serde_json::Value::String(s) => Some(RangeBound::Text(s.clone())),
        _ => None,
    }
}

fn bound_cmp(a: &RangeBound, b: &RangeBound) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (RangeBound::Int(x), RangeBound::Int(y)) => Some(x.cmp(y)),
        (RangeBound::Text(x), RangeBound::Text(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        _ => None,
    }
}

/// `column >= bound` (or `<`) as SQL; text compares by bytes, as the
/// router does.
fn bound_sql(column: &str, op: &str, b: &RangeBound) -> String {
    match b {
        RangeBound::Int(v) => format!("{column} {op} {v}"),
        RangeBound::Text(s) => format!("{column} COLLATE \"C\" {op} {}", literal(s)),
    }
}

async fn split_range(
    proxy: &Arc<Proxy>,
    config: &Config,
    table: &str,
    at: &str,
    shard: &str,
) -> Result<(Vec<PlannedMove>, serde_json::Value), PgError> {
    let rule = config.router.table(&table.to_lowercase()).ok_or_else(|| {
        refuse(
            sqlstate::UNDEFINED_TABLE,
            format!("table \"{table}\" has no table rule"),
        )
    })?;
    if !matches!(rule.placement, Placement::Range(_)) {
        return Err(refuse(
            sqlstate::WRONG_OBJECT_TYPE,
            format!("table \"{table}\" is not range-sharded"),
        ));
    }
    if !config.shards.iter().any(|s| s.name == shard) {
        return Err(refuse(
            sqlstate::UNDEFINED_OBJECT,
            format!("shard \"{shard}\" does not exist"),
        ));
    }
    let at_bound = match rule.key_type {
        KeyType::Int => RangeBound::Int(at.parse().map_err(|_| {
            refuse(
                sqlstate::INVALID_TEXT_REPRESENTATION,
                format!("\"{at}\" is not an integer (the key of \"{table}\" is)"),
            )
        })?),
        _ => RangeBound::Text(at.to_string()),
    };
    let mut map = (*config.topology_map).clone();
    let entry = table_entry(&mut map, table).ok_or_else(|| {
        refuse(
            sqlstate::INTERNAL_ERROR,
            "the table is not in the shard map",
        )
    })?;
    let ranges = entry
        .get_mut("ranges")
        .and_then(|r| r.as_array_mut())
        .ok_or_else(|| refuse(sqlstate::INTERNAL_ERROR, "the table's ranges are missing"))?;
    let contains = |r: &serde_json::Value| {
        let from_ok = r.get("from").and_then(json_bound).is_none_or(|f| {
            bound_cmp(&f, &at_bound).is_some_and(|o| o != std::cmp::Ordering::Greater)
        });
        let to_ok = r
            .get("to")
            .and_then(json_bound)
            .is_none_or(|t| bound_cmp(&t, &at_bound) == Some(std::cmp::Ordering::Greater));
        from_ok && to_ok
    };
    let index = ranges.iter().position(contains).ok_or_else(|| {
        refuse(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("no range of \"{table}\" contains {at}"),
        )
    })?;
    let old = ranges[index].clone();
    let source = old
        .get("shard")
        .and_then(|s| s.as_str())
        .unwrap_or_default()
        .to_string();
    if source == shard {
        return Err(refuse(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("{at} of \"{table}\" is on shard {shard} already"),
        ));
    }
    let starts_here = old.get("from").and_then(json_bound) == Some(at_bound.clone());
    let at_json = match &at_bound {
        RangeBound::Int(v) => serde_json::json!(v),
        RangeBound::Text(s) => serde_json::json!(s),
    };
    let mut moved = old.clone();
    moved["shard"] = serde_json::json!(shard);
    moved["from"] = at_json.clone();
    if starts_here {
        ranges[index] = moved;
    } else {
        ranges[index]["to"] = at_json;
        ranges.insert(index + 1, moved);
    }
    let column = quote_ident(&rule.key);
    let mut predicate = bound_sql(&column, ">=", &at_bound);
    if let Some(to) = old.get("to").and_then(json_bound) {
        predicate = format!("{predicate} AND {}", bound_sql(&column, "<", &to));
    }
    let mut m = PlannedMove {
        table: rule.name.clone(),
        source,
        target: shard.to_string(),
        arcs: 0,
        predicate,
        rows: None,
        problem: None,
    };
    estimate_into(proxy, config, &mut m).await;
    Ok((vec![m], map))
}

async fn move_region(
    proxy: &Arc<Proxy>,
    config: &Config,
    region: &str,
    shard: &str,
) -> Result<(Vec<PlannedMove>, serde_json::Value), PgError> {
    if !config.shards.iter().any(|s| s.name == shard) {
        return Err(refuse(
            sqlstate::UNDEFINED_OBJECT,
            format!("shard \"{shard}\" does not exist"),
        ));
    }
    let folded = region.to_ascii_lowercase();
    let mut map = (*config.topology_map).clone();
    let mut moves = Vec::new();
    let names: Vec<String> = config
        .router
        .tables()
        .filter(|t| matches!(t.placement, Placement::Geo(_)))
        .map(|t| t.name.clone())
        .collect();
    for name in names {
        let rule = config.router.table(&name).expect("listed");
        let Placement::Geo(geo) = &rule.placement else {
            continue;
        };
        let from = config.shards[geo.shard_for(&folded)].name.clone();
        if from == shard {
            continue;
        }
        let entry = table_entry(&mut map, &name).ok_or_else(|| {
            refuse(
                sqlstate::INTERNAL_ERROR,
                "the table is not in the shard map",
            )
        })?;
        if entry.get("regions").is_none() {
            entry["regions"] = serde_json::json!({});
        }
        let regions = entry["regions"].as_object_mut().ok_or_else(|| {
            refuse(
                sqlstate::INTERNAL_ERROR,
                "the table's regions are not a map",
            )
        })?;
        for list in regions.values_mut() {
            if let Some(l) = list.as_array_mut() {
                l.retain(|r| r.as_str().map(|s| s.to_ascii_lowercase()) != Some(folded.clone()));
            }
        }
        regions
            .entry(shard.to_string())
            .or_insert_with(|| serde_json::json!([]))
            .as_array_mut()
            .ok_or_else(|| refuse(sqlstate::INTERNAL_ERROR, "a region list is not a list"))?
            .push(serde_json::json!(region));
        let mut m = PlannedMove {
            table: name.clone(),
            source: from,
            target: shard.to_string(),
            arcs: 0,
            predicate: format!("lower({}) = {}", quote_ident(&rule.key), literal(&folded)),
            rows: None,
            problem: None,
        };
        estimate_into(proxy, config, &mut m).await;
        moves.push(m);
    }
    Ok((moves, map))
}

/// The moves that empty `shard` of every hash table, and the map without
/// it. Range and geo rules must be moved off it first (they name their
/// shards; choosing for the DBA would be a guess).
async fn drain(
    proxy: &Arc<Proxy>,
    config: &Config,
    shard: &str,
) -> Result<(Vec<PlannedMove>, serde_json::Value), PgError> {
    let index = config
        .shards
        .iter()
        .position(|s| s.name == shard)
        .ok_or_else(|| {
            refuse(
                sqlstate::UNDEFINED_OBJECT,
                format!("shard \"{shard}\" does not exist"),
            )
        })?;
    let pinned: Vec<&str> = config
        .router
        .tables()
        .filter(|t| {
            matches!(t.placement, Placement::Range(_) | Placement::Geo(_))
                && t.shards(config.shards.len()).contains(&index)
        })
        .map(|t| t.name.as_str())
        .collect();
    if !pinned.is_empty() {
        return Err(refuse(
            sqlstate::OBJECT_IN_USE,
            format!(
                "shard \"{shard}\" holds ranges or regions of {}; nothing was changed",
                pinned.join(", ")
            ),
        )
        .with_hint("move them with SPLIT RANGE or MOVE REGION first, then REMOVE SHARD"));
    }
    let targets: Vec<usize> = (0..config.shards.len()).filter(|i| *i != index).collect();
    let moves = plan_rings(proxy, config, &targets).await?;
    let names: Vec<String> = targets
        .iter()
        .map(|i| config.shards[*i].name.clone())
        .collect();
    let mut map = (*config.topology_map).clone();
    if let Some(tables) = map.get_mut("tables").and_then(|t| t.as_array_mut()) {
        for t in tables {
            if t.get("strategy").and_then(|s| s.as_str()) == Some("hash") {
                t["shards"] = serde_json::json!(names);
            }
        }
    }
    if let Some(shards) = map.get_mut("shards").and_then(|s| s.as_array_mut()) {
        shards.retain(|s| s.get("name").and_then(|n| n.as_str()) != Some(shard));
    }
    Ok((moves, map))
}

async fn estimate_into(proxy: &Arc<Proxy>, config: &Config, m: &mut PlannedMove) {
    let shard = config
        .shards
        .iter()
        .position(|s| s.name == m.source)
        .unwrap_or(0);
    match estimate(proxy, config, shard, m).await {
        Ok(rows) => m.rows = Some(rows),
        Err(problem) => m.problem = Some(problem),
    }
}

/// `REBALANCE CANCEL`: roll back the unfinished rebalance (not once it
/// has cut over). With no mover running, here and now; else the mover
/// does it at its next check.
pub async fn cancel(proxy: &Arc<Proxy>) -> Result<String, PgError> {
    let config = proxy.config();
    crate::topology::catalog_only(&config, "REBALANCE CANCEL")?;
    let mut conn = open_journal(proxy, &config).await?;
    let r = journal::unfinished(&mut conn, &config.topology.name)
        .await
        .map_err(|e| refuse(sqlstate::CONNECTION_FAILURE, e))?
        .ok_or_else(|| {
            refuse(
                sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                "no rebalance is unfinished",
            )
        })?;
    if r.step >= Step::CleaningUp {
        return Err(refuse(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "rebalance {} has cut over already (step \"{}\"); it can only finish",
                r.id,
                r.step.as_str()
            ),
        )
        .with_hint("REBALANCE START resumes it if it stopped"));
    }
    journal::exec(
        &mut conn,
        &format!(
            "UPDATE shardwire.rebalance SET cancel_requested = true WHERE id = {}",
            r.id
        ),
    )
    .await
    .map_err(|e| refuse(sqlstate::CONNECTION_FAILURE, e))?;
    drop(conn);
    match lock(&config, proxy).await? {
        None => Ok(format!(
            "cancel of rebalance {} requested: its mover rolls it back; follow it with REBALANCE STATUS",
            r.id
        )),
        Some(catalog) => {
            let mut mover = mover::Mover::new(proxy.clone(), catalog, config.topology.name.clone(), r.id);
            mover
                .roll_back(&r, journal::status::CANCELLED, None)
                .await
                .map_err(|e| refuse(sqlstate::INTERNAL_ERROR, format!("rolling back rebalance {}: {e}", r.id)))?;
            Ok(format!("rebalance {} cancelled and rolled back", r.id))
        }
    }
}

/// The columns of `REBALANCE STATUS`, which the CLI reads by name.
pub const STATUS_COLUMNS: [&str; 12] = [
    "rebalance",
    "move",
    "table_name",
    "source",
    "target",
    "state",
    "rows_copied",
    "rows_total",
    "percent",
    "lag_bytes",
    "eta",
    "detail",
];

/// One row of `REBALANCE STATUS`: the overall state (move "all") or one
/// move. The proxy builds it (`status`) and the CLI reads it back from
/// the console's answer (`from_columns`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusRow {
    pub rebalance: Option<i64>,
    pub move_no: String,
    pub table: String,
    pub source: String,
    pub target: String,
    pub state: String,
    pub rows_copied: Option<i64>,
    pub rows_total: Option<i64>,
    pub percent: Option<f64>,
    pub lag_bytes: Option<i64>,
    pub eta: Option<String>,
    pub detail: String,
}

impl StatusRow {
    /// A row of the console's answer, columns found by name, so an added
    /// column or a new order does not break older CLIs. Numbers the proxy
    /// left empty or wrote oddly are None rather than an error: a status
    /// display should not fail on one field.
    pub fn from_columns(columns: &[String], values: &[Option<String>]) -> StatusRow {
        let get = |name: &str| -> String {
            columns
                .iter()
                .position(|c| c == name)
                .and_then(|i| values.get(i).cloned().flatten())
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let count = |name: &str| -> Option<i64> {
            let v = get(name);
            v.parse::<i64>()
                .ok()
                .or_else(|| {
                    v.parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .map(|f| f as i64)
                })
                .filter(|n| *n >= 0)
        };
        let eta = get("eta");
        StatusRow {
            rebalance: get("rebalance").parse().ok(),
            move_no: get("move"),
            table: get("table_name"),
            source: get("source"),
            target: get("target"),
            state: get("state"),
            rows_copied: count("rows_copied"),
            rows_total: count("rows_total"),
            percent: get("percent")
                .trim_end_matches('%')
                .parse::<f64>()
                .ok()
                .filter(|p| p.is_finite()),
            lag_bytes: count("lag_bytes"),
            eta: (!eta.is_empty()).then_some(eta),
            detail: get("detail"),
        }
    }

    /// The percentage done, or one from the row counts; within 0-100.
    pub fn progress(&self) -> Option<f64> {
        let p = self.percent.or(match (self.rows_copied, self.rows_total) {
            (Some(c), Some(t)) if t > 0 => Some(c as f64 * 100.0 / t as f64),
            _ => None,
        })?;
        Some(p.clamp(0.0, 100.0))
    }
}

/// The newest rebalance: an overall row, then one per move.
pub async fn status(proxy: &Arc<Proxy>) -> Result<Vec<StatusRow>, PgError> {
    let config = proxy.config();
    crate::topology::catalog_only(&config, "REBALANCE STATUS")?;
    let mut conn = open_journal(proxy, &config).await?;
    let Some(r) = journal::newest(&mut conn, &config.topology.name)
        .await
        .map_err(|e| refuse(sqlstate::CONNECTION_FAILURE, e))?
    else {
        return Ok(Vec::new());
    };
    let total: i64 = r.moves.iter().map(|m| m.rows_estimated).sum();
    let copied: i64 = r
        .moves
        .iter()
        .map(|m| m.rows_copied.min(m.rows_estimated))
        .sum();
    let deleted: i64 = r.moves.iter().map(|m| m.rows_deleted).sum();
    let fraction = |a: i64, b: i64| {
        if b > 0 {
            (a as f64 / b as f64).clamp(0.0, 1.0)
        } else {
            1.0
        }
    };
    // Copying is most of the work; cleanup deletes as many rows again.
    let percent = match r.step {
        Step::Copying => 60.0 * fraction(copied, total),
        Step::CatchingUp => 60.0,
        Step::Cutover => 62.0,
        Step::Verifying => 65.0,
        Step::CleaningUp => 70.0 + 30.0 * fraction(deleted, total),
        Step::Done => 100.0,
    };
    let state = match r.status.as_str() {
        journal::status::RUNNING if r.cancel_requested => "cancelling".to_string(),
        journal::status::RUNNING => r.step.as_str().to_string(),
        other => other.to_string(),
    };
    let eta =
        (r.step == Step::Copying && copied > 0 && r.elapsed > 0.0 && !r.finished).then(|| {
            let rate = copied as f64 / r.elapsed;
            format!("{:.0}s", (total - copied).max(0) as f64 / rate)
        });
    let mut rows = vec![StatusRow {
        rebalance: Some(r.id),
        move_no: "all".into(),
        table: String::new(),
        source: String::new(),
        target: String::new(),
        state,
        rows_copied: Some(copied),
        rows_total: Some(total),
        percent: Some(percent),
        lag_bytes: r.moves.iter().filter_map(|m| m.lag_bytes).max(),
        eta,
        detail: match &r.error {
            Some(e) => e.clone(),
            None => format!("{}; {:.0}s elapsed", r.command, r.elapsed),
        },
    }];
    for m in &r.moves {
        let p = match m.state.as_str() {
            "copying" | "planned" => 100.0 * fraction(m.rows_copied, m.rows_estimated),
            "cleaning up" => 100.0 * fraction(m.rows_deleted, m.rows_estimated),
            _ => 100.0,
        };
        rows.push(StatusRow {
            rebalance: Some(r.id),
            move_no: m.no.to_string(),
            table: m.table.clone(),
            source: m.source.clone(),
            target: m.target.clone(),
            state: m.state.clone(),
            rows_copied: Some(m.rows_copied),
            rows_total: Some(m.rows_estimated),
            percent: Some(p),
            lag_bytes: m.lag_bytes,
            eta: None,
            detail: m.detail.clone(),
        });
    }
    Ok(rows)
}

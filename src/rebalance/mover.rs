//! The mover (DESIGN.md §7): drives one rebalance through its journal
//! steps. Moves with the same source and target shard share one stream:
//! a publication on the source whose row filters select the moving keys
//! (plus this stream's row of `shardwire.rebalance_fence`), and a
//! subscription on the target. PostgreSQL does the copy and streams later
//! changes; the mover only watches, fences, verifies and cleans up:
//!
//! 1. copying: tables created on the target if missing, publication and
//!    subscription created; wait until every table is synchronized;
//! 2. catching up: a fence row written on the source must reach the
//!    target quickly (that round trip is what the cutover will wait for);
//!    then the moved rows are compared on both sides while writes go on,
//!    with change logs recording what is written meanwhile (`precheck`);
//! 3. cutover: a map with a `fence` is published (proxies hold writes to
//!    moving rows), guard triggers on the sources reject such writes from
//!    anyone else, and a last fence row proves the target has replayed
//!    every write before them;
//! 4. verifying: the moved rows agree on both sides (nothing can change
//!    them while fenced): only the rows the change logs name, when this
//!    mover compared the rest before the fence, or else row counts and
//!    checksums of all of them; then the new map is published together
//!    with the journal's next step;
//! 5. cleaning up: subscription and publication dropped, moved rows
//!    deleted from the sources in throttled batches, guards dropped.
//!
//! Every step can run again after a crash: each checks what exists before
//! creating it, and the journal records a step only once it is done.
//! Until the new map is published, CANCEL (or a failed verification)
//! rolls everything back: the fence lifted, guards, streams and the
//! copied rows removed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::journal::{self, literal, status, Rebalance, Step};
use super::precheck::{self, MoveCheck};
use crate::backend::conn::{ServerConn, ServerTarget};
use crate::config::{Config, Role};
use crate::proxy::Proxy;
use crate::topology;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Creating a subscription waits for running transactions on the source.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(120);
/// A batch delete or a checksum over many rows.
const BULK_TIMEOUT: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(200);
/// A fence round trip this short means the target has caught up.
const CAUGHT_UP: Duration = Duration::from_millis(300);
/// How long the cutover waits for the target to replay the fence.
const FENCE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for other proxies to receive the fenced map before the guards go
/// up (a proxy still on the old map meets the guard: a retryable error).
/// Writes to moving rows are held meanwhile; a NOTIFY reaches a following
/// proxy within a few milliseconds.
const FENCE_GRACE: Duration = Duration::from_millis(50);
const DELETE_BATCH: u64 = 10_000;
/// Subscription errors tolerated before the move is declared failed.
const MAX_SUBSCRIPTION_ERRORS: i64 = 5;

const FENCE_DDL: &str = "CREATE SCHEMA IF NOT EXISTS shardwire; \
    CREATE TABLE IF NOT EXISTS shardwire.rebalance_fence (\
        rebalance bigint NOT NULL, stream int NOT NULL, at timestamptz NOT NULL, \
        PRIMARY KEY (rebalance, stream))";

/// Why the mover stopped before the end.
#[derive(Debug)]
pub enum Stop {
    /// An error: the rebalance is `failed` and START resumes it.
    Failed(String),
    /// CANCEL was asked for.
    Cancelled,
}

impl From<String> for Stop {
    fn from(e: String) -> Self {
        Stop::Failed(e)
    }
}

use crate::protocol::quote_ident;

/// A value inside a libpq connection string.
fn conninfo_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Moves that share a source and a target: one publication and one
/// subscription.
struct Stream<'a> {
    no: usize,
    source: &'a str,
    target: &'a str,
    moves: Vec<&'a journal::Move>,
}

impl Stream<'_> {
    fn name(&self, rebalance: i64) -> String {
        format!("shardwire_r{rebalance}_s{}", self.no)
    }
}

fn streams(r: &Rebalance) -> Vec<Stream<'_>> {
    let mut out: Vec<Stream<'_>> = Vec::new();
    for m in &r.moves {
        match out
            .iter_mut()
            .find(|s| s.source == m.source && s.target == m.target)
        {
            Some(s) => s.moves.push(m),
            None => {
                let no = out.len() + 1;
                out.push(Stream {
                    no,
                    source: &m.source,
                    target: &m.target,
                    moves: vec![m],
                })
            }
        }
    }
    out
}

fn guard_name(rebalance: i64, m: &journal::Move) -> String {
    format!("shardwire_guard_r{rebalance}_m{}", m.no)
}

/// The mover's login on `shard`'s primary.
pub fn shard_target(
    proxy: &Proxy,
    config: &Config,
    shard: &str,
    departed: &[(String, String, u16)],
) -> Result<ServerTarget, String> {
    let index = config.shards.iter().position(|s| s.name == shard);
    let user =
        config.rebalance.user.clone().ok_or(
            "no [rebalance] user is configured (a superuser with REPLICATION on every shard)",
        )?;
    let (db, _) = config
        .health
        .login
        .clone()
        .ok_or("no database to move tables in ([health] or a [[databases]] entry)")?;
    let (host, port) = match index {
        Some(i) => {
            let server = &config.shards[i].servers[proxy.health.primary_index(config, i)];
            (server.host.clone(), server.port)
        }
        None => departed
            .iter()
            .find(|(name, ..)| name == shard)
            .map(|(_, h, p)| (h.clone(), *p))
            .ok_or_else(|| format!("shard \"{shard}\" is not in the shard map"))?,
    };
    Ok(ServerTarget {
        shard: shard.to_string(),
        host,
        port,
        role: Role::Primary,
        database: config.databases[&db].server_database.clone(),
        user,
        password: config.rebalance.password.clone(),
    })
}

async fn connect(target: ServerTarget) -> Result<ServerConn, String> {
    let describe = target.describe();
    ServerConn::connect(Arc::new(target), CONNECT_TIMEOUT)
        .await
        .map_err(|e| format!("cannot reach {describe} as the [rebalance] user: {e}"))
}

async fn query(conn: &mut ServerConn, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    topology::run_within(conn, sql, QUERY_TIMEOUT).await
}

async fn first(conn: &mut ServerConn, sql: &str) -> Result<Option<String>, String> {
    Ok(query(conn, sql)
        .await?
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten()))
}

/// Runs one rebalance to its end (or a stop) from the step in its journal.
pub struct Mover {
    proxy: Arc<Proxy>,
    /// The catalog connection that holds the rebalance lock.
    catalog: ServerConn,
    topology: String,
    id: i64,
    /// Test hook: stop (hang) on reaching this step, so that a test can
    /// kill the proxy there.
    stall_at: Option<String>,
    /// Primaries (name, host, port) of the map the rebalance started from:
    /// a drained shard is still cleaned up after the map dropped it.
    departed: Vec<(String, String, u16)>,
    /// The comparison this mover made before the fence (rebalance id and
    /// one check per move); without it the fence verifies every row.
    prechecked: Option<(i64, Vec<MoveCheck>)>,
    /// Connections kept from the catch-up through the verification, so
    /// that the fence does not wait for logins.
    conns: HashMap<String, ServerConn>,
}

impl Mover {
    pub fn new(proxy: Arc<Proxy>, catalog: ServerConn, topology: String, id: i64) -> Mover {
        Mover {
            proxy,
            catalog,
            topology,
            id,
            stall_at: std::env::var("SHARDWIRE_TEST_REBALANCE_STALL").ok(),
            departed: Vec::new(),
            prechecked: None,
            conns: HashMap::new(),
        }
    }

    fn target(&self, shard: &str) -> Result<ServerTarget, String> {
        shard_target(&self.proxy, &self.proxy.config(), shard, &self.departed)
    }

    async fn connect(&self, shard: &str) -> Result<ServerConn, String> {
        connect(self.target(shard)?).await
    }

    /// A kept connection to `shard` (see `conns`), or a new one. A
    /// connection that met an error is not put back.
    async fn take_conn(&mut self, shard: &str) -> Result<ServerConn, String> {
        match self.conns.remove(shard) {
            Some(c) => Ok(c),
            None => self.connect(shard).await,
        }
    }

    fn put_conn(&mut self, shard: &str, conn: ServerConn) {
        self.conns.insert(shard.to_string(), conn);
    }

    /// Remember the primaries of the map the rebalance started from.
    async fn load_departed(&mut self, r: &Rebalance) -> Result<(), String> {
        let rows = topology::run_within(
            &mut self.catalog,
            &format!(
                "SELECT map::text FROM shardwire.topology WHERE name = {} AND version = {}",
                literal(&self.topology),
                r.from_version
            ),
            QUERY_TIMEOUT,
        )
        .await?;
        let Some(map) = rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
        else {
            return Ok(());
        };
        let map: serde_json::Value =
            serde_json::from_str(&map).map_err(|e| format!("topology map: {e}"))?;
        for shard in map
            .get("shards")
            .and_then(|s| s.as_array())
            .into_iter()
            .flatten()
        {
            let servers = shard.get("servers").and_then(|s| s.as_array());
            let primary = servers.and_then(|list| {
                list.iter()
                    .find(|s| s.get("role").and_then(|r| r.as_str()) == Some("primary"))
                    .or_else(|| list.first())
            });
            if let (Some(name), Some(server)) =
                (shard.get("name").and_then(|n| n.as_str()), primary)
            {
                let host = server
                    .get("host")
                    .and_then(|h| h.as_str())
                    .unwrap_or_default();
                let port = server.get("port").and_then(|p| p.as_u64()).unwrap_or(0) as u16;
                self.departed
                    .push((name.to_string(), host.to_string(), port));
            }
        }
        Ok(())
    }

    async fn journal(&mut self) -> Result<Rebalance, String> {
        journal::by_id(&mut self.catalog, self.id)
            .await?
            .ok_or_else(|| format!("rebalance {} vanished from the journal", self.id))
    }

    /// Drive the rebalance and record how it ended.
    pub async fn run(mut self) {
        let id = self.id;
        let outcome = self.steps().await;
        let recorded = match outcome {
            Ok(()) => Ok(()),
            Err(Stop::Cancelled) => match self.journal().await {
                Ok(r) => self.roll_back(&r, status::CANCELLED, None).await,
                Err(e) => Err(e),
            },
            Err(Stop::Failed(e)) => {
                tracing::error!(rebalance = id, error = %e, "rebalance stopped; REBALANCE START resumes it");
                journal::set_status(&mut self.catalog, id, status::FAILED, Some(&e), false).await
            }
        };
        if let Err(e) = recorded {
            tracing::error!(rebalance = id, error = %e, "cannot record the rebalance's outcome in the journal");
        }
    }

    async fn steps(&mut self) -> Result<(), Stop> {
        let first = self.journal().await?;
        self.load_departed(&first).await?;
        loop {
            let r = self.journal().await?;
            if r.finished {
                return Ok(());
            }
            if r.cancel_requested && r.step < Step::CleaningUp {
                return Err(Stop::Cancelled);
            }
            self.stall(r.step.as_str()).await;
            tracing::info!(rebalance = r.id, step = r.step.as_str(), "rebalance step");
            let next = match r.step {
                Step::Copying => {
                    self.copy(&r).await?;
                    Step::CatchingUp
                }
                Step::CatchingUp => {
                    self.catch_up(&r).await?;
                    Step::Cutover
                }
                Step::Cutover => {
                    self.cutover(&r).await?;
                    Step::Verifying
                }
                Step::Verifying => {
                    // Publishes the new map and records the next step at once.
                    self.verify_and_publish(&r).await?;
                    continue;
                }
                Step::CleaningUp => {
                    self.clean_up(&r).await?;
                    Step::Done
                }
                Step::Done => {
                    journal::set_status(&mut self.catalog, r.id, status::DONE, None, true).await?;
                    tracing::info!(rebalance = r.id, "rebalance done");
                    return Ok(());
                }
            };
            journal::exec(&mut self.catalog, &journal::set_step_sql(r.id, next)).await?;
        }
    }

    /// The test hook: hang at `point` (a step, or a point inside one), or
    /// with `point@MS` pause there for MS milliseconds.
    async fn stall(&self, point: &str) {
        let Some(hook) = self.stall_at.as_deref() else {
            return;
        };
        let (at, pause) = match hook.split_once('@') {
            Some((at, ms)) => (at, ms.parse::<u64>().ok()),
            None => (hook, None),
        };
        if at != point {
            return;
        }
        match pause {
            Some(ms) => {
                tracing::warn!(
                    rebalance = self.id,
                    step = point,
                    ms,
                    "SHARDWIRE_TEST_REBALANCE_STALL: the mover pauses here"
                );
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            None => {
                tracing::warn!(
                    rebalance = self.id,
                    step = point,
                    "SHARDWIRE_TEST_REBALANCE_STALL: the mover stops here"
                );
                std::future::pending::<()>().await;
            }
        }
    }

    async fn check_cancel(&mut self) -> Result<(), Stop> {
        if journal::cancel_requested(&mut self.catalog, self.id).await? {
            return Err(Stop::Cancelled);
        }
        Ok(())
    }

    async fn set_moves(
        &mut self,
        moves: &[&journal::Move],
        assignments: &str,
    ) -> Result<(), String> {
        for m in moves {
            journal::set_move(&mut self.catalog, self.id, m.no, assignments).await?;
        }
        Ok(())
    }

    // -- 1. copying ---------------------------------------------------------

    async fn copy(&mut self, r: &Rebalance) -> Result<(), Stop> {
        for s in streams(r) {
            let mut src = self.connect(s.source).await?;
            let mut tgt = self.connect(s.target).await?;
            query(&mut src, FENCE_DDL).await?;
            query(&mut tgt, FENCE_DDL).await?;
            for m in &s.moves {
                ensure_table(&mut src, &mut tgt, &m.table)
                    .await
                    .map_err(|e| format!("creating table \"{}\" on {}: {e}", m.table, s.target))?;
            }
            let name = s.name(r.id);
            if first(
                &mut src,
                &format!(
                    "SELECT 1 FROM pg_publication WHERE pubname = {}",
                    literal(&name)
                ),
            )
            .await?
            .is_none()
            {
                let mut tables: Vec<String> = s
                    .moves
                    .iter()
                    .map(|m| format!("{} WHERE ({})", quote_ident(&m.table), m.predicate))
                    .collect();
                tables.push(format!(
                    "shardwire.rebalance_fence WHERE (rebalance = {} AND stream = {})",
                    r.id, s.no
                ));
                query(
                    &mut src,
                    &format!("CREATE PUBLICATION {name} FOR TABLE {}", tables.join(", ")),
                )
                .await?;
            }
            if first(
                &mut tgt,
                &format!(
                    "SELECT 1 FROM pg_subscription WHERE subname = {}",
                    literal(&name)
                ),
            )
            .await?
            .is_none()
            {
                let from = self.target(s.source)?;
                let mut conninfo = format!(
                    "host={} port={} dbname={} user={}",
                    conninfo_value(&from.host),
                    from.port,
                    conninfo_value(&from.database),
                    conninfo_value(&from.user)
                );
                if let Some(p) = &from.password {
                    conninfo.push_str(&format!(" password={}", conninfo_value(p)));
                }
                topology::run_within(
                    &mut tgt,
                    &format!(
                        "CREATE SUBSCRIPTION {name} CONNECTION {} PUBLICATION {name} WITH (copy_data = true)",
                        literal(&conninfo)
                    ),
                    SUBSCRIBE_TIMEOUT,
                )
                .await
                .map_err(|e| {
                    format!(
                        "shard {} cannot subscribe to shard {} at {}:{}: {e}; nothing was moved",
                        s.target, s.source, from.host, from.port
                    )
                })?;
            }
            self.set_moves(&s.moves, "state = 'copying', detail = ''")
                .await?;
        }
        self.stall("copying:subscribed").await;
        loop {
            self.check_cancel().await?;
            let mut ready = true;
            for s in streams(r) {
                let name = s.name(r.id);
                let mut tgt = self.connect(s.target).await?;
                let states = query(
                    &mut tgt,
                    &format!(
                        "SELECT c.relname, r.srsubstate FROM pg_subscription_rel r \
                         JOIN pg_subscription s ON s.oid = r.srsubid JOIN pg_class c ON c.oid = r.srrelid \
                         WHERE s.subname = {}",
                        literal(&name)
                    ),
                )
                .await?;
                let errors: i64 = first(
                    &mut tgt,
                    &format!(
                        "SELECT sync_error_count + apply_error_count FROM pg_stat_subscription_stats \
                         WHERE subname = {}",
                        literal(&name)
                    ),
                )
                .await?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
                if errors >= MAX_SUBSCRIPTION_ERRORS {
                    return Err(Stop::Failed(format!(
                        "the subscription {name} on shard {} failed {errors} times; its server log has the reason",
                        s.target
                    )));
                }
                let progress = query(
                    &mut tgt,
                    "SELECT c.relname, p.tuples_processed FROM pg_stat_progress_copy p \
                     JOIN pg_class c ON c.oid = p.relid",
                )
                .await?;
                let state_of = |table: &str| {
                    states
                        .iter()
                        .find(|row| row[0].as_deref() == Some(table))
                        .and_then(|row| row[1].clone())
                        .unwrap_or_default()
                };
                if states.is_empty() || states.iter().any(|row| row[1].as_deref() != Some("r")) {
                    ready = false;
                }
                for m in &s.moves {
                    let synced = matches!(state_of(&m.table).as_str(), "s" | "r");
                    let copied = if synced {
                        m.rows_estimated
                    } else {
                        progress
                            .iter()
                            .find(|row| row[0].as_deref() == Some(m.table.as_str()))
                            .and_then(|row| row[1].as_deref().and_then(|v| v.parse().ok()))
                            .unwrap_or(0)
                    };
                    let state = if synced { "catching up" } else { "copying" };
                    journal::set_move(
                        &mut self.catalog,
                        r.id,
                        m.no,
                        &format!("rows_copied = {copied}, state = {}", literal(state)),
                    )
                    .await?;
                }
            }
            if ready {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    // -- 2. catching up -----------------------------------------------------

    async fn catch_up(&mut self, r: &Rebalance) -> Result<(), Stop> {
        loop {
            self.check_cancel().await?;
            let mut slowest = Duration::ZERO;
            for s in streams(r) {
                let mut src = self.connect(s.source).await?;
                let mut tgt = self.connect(s.target).await?;
                let lag = first(
                    &mut src,
                    &format!(
                        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint \
                         FROM pg_replication_slots WHERE slot_name = {}",
                        literal(&s.name(r.id))
                    ),
                )
                .await?
                .unwrap_or_else(|| "NULL".into());
                self.set_moves(
                    &s.moves,
                    &format!("lag_bytes = {lag}, state = 'catching up'"),
                )
                .await?;
                let took = fence_round_trip(&mut src, &mut tgt, r.id, s.no, Duration::from_secs(5))
                    .await?
                    .unwrap_or(Duration::MAX);
                slowest = slowest.max(took);
            }
            if slowest <= CAUGHT_UP {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        self.stall("catching up:compare").await;
        let started = Instant::now();
        match self.precheck(r).await {
            Ok(checks) => {
                let left: usize = checks.iter().map(|c| c.suspects.len()).sum();
                tracing::info!(
                    rebalance = r.id,
                    took_ms = started.elapsed().as_millis() as u64,
                    unequal_rows = left,
                    "moved rows compared before the cutover; the fence compares only what changes from now on"
                );
                self.prechecked = Some((r.id, checks));
            }
            Err(e) => {
                // Not an error of the rebalance: the fence verifies every row.
                tracing::warn!(rebalance = r.id, error = %e, "no comparison before the cutover; the fence verifies every moved row");
                self.prechecked = None;
                self.conns.clear();
            }
        }
        Ok(())
    }

    /// Compare the moved rows on both sides before the fence (see
    /// `precheck`): change logs up, one comparison of every row, then
    /// rounds over what was written meanwhile.
    async fn precheck(&mut self, r: &Rebalance) -> Result<Vec<MoveCheck>, String> {
        let mut checks = Vec::new();
        for s in streams(r) {
            let mut src = self.take_conn(s.source).await?;
            let mut tgt = self.take_conn(s.target).await?;
            let mut mine = Vec::new();
            for m in &s.moves {
                let c = MoveCheck::describe(&mut src, m).await?;
                c.install_log(&mut src, r.id).await?;
                c.install_log(&mut tgt, r.id).await?;
                mine.push(c);
            }
            // What the source wrote before the logs went up is replayed.
            fence_round_trip(&mut src, &mut tgt, r.id, s.no, FENCE_TIMEOUT)
                .await?
                .ok_or("the target did not replay the fence")?;
            for c in &mut mine {
                c.compare_all(&mut src, &mut tgt).await?;
            }
            for _ in 0..precheck::ROUNDS {
                fence_round_trip(&mut src, &mut tgt, r.id, s.no, FENCE_TIMEOUT)
                    .await?
                    .ok_or("the target did not replay the fence")?;
                let mut compared = 0;
                for c in &mut mine {
                    compared += c.compare_changed(&mut src, &mut tgt, r.id).await?;
                }
                if compared <= precheck::SMALL {
                    break;
                }
            }
            self.put_conn(s.source, src);
            self.put_conn(s.target, tgt);
            checks.extend(mine);
        }
        Ok(checks)
    }

    // -- 3. cutover ---------------------------------------------------------

    async fn cutover(&mut self, r: &Rebalance) -> Result<(), Stop> {
        if r.fence_version.is_none() {
            let (version, map) = self.newest_map().await?;
            if version != r.from_version {
                return Err(Stop::Failed(format!(
                    "the shard map changed during the rebalance (version {version} now, {} at its start); cancel it and plan again",
                    r.from_version
                )));
            }
            let mut fenced = map.clone();
            fenced["fence"] = serde_json::json!({
                "rebalance": r.id,
                "tables": r.target_map.get("tables").cloned().unwrap_or(serde_json::json!([])),
            });
            let next = version + 1;
            self.publish(
                next,
                &fenced,
                &format!("REBALANCE {}: cutover fence", r.id),
                &format!(
                    "UPDATE shardwire.rebalance SET fence_version = {next} WHERE id = {}",
                    r.id
                ),
            )
            .await?;
            tokio::time::sleep(FENCE_GRACE).await;
        }
        self.stall("cutover:fenced").await;
        for s in streams(r) {
            let mut src = self.take_conn(s.source).await?;
            for m in &s.moves {
                if let Err(e) = create_guard(&mut src, r.id, m).await {
                    let e = format!(
                        "cannot put the write guard on \"{}\" on {}: {e}; the fence was lifted and REBALANCE START tries the cutover again",
                        m.table, s.source
                    );
                    self.lift_fence(r).await?;
                    journal::exec(
                        &mut self.catalog,
                        &journal::set_step_sql(r.id, Step::CatchingUp),
                    )
                    .await?;
                    return Err(Stop::Failed(e));
                }
            }
            self.put_conn(s.source, src);
            self.set_moves(&s.moves, "state = 'cutover'").await?;
        }
        for s in streams(r) {
            let mut src = self.take_conn(s.source).await?;
            let mut tgt = self.take_conn(s.target).await?;
            if fence_round_trip(&mut src, &mut tgt, r.id, s.no, FENCE_TIMEOUT)
                .await?
                .is_none()
            {
                return Err(Stop::Failed(format!(
                    "shard {} did not replay the fence from {} within {FENCE_TIMEOUT:?}",
                    s.target, s.source
                )));
            }
            self.put_conn(s.source, src);
            self.put_conn(s.target, tgt);
        }
        Ok(())
    }

    async fn newest_map(&mut self) -> Result<(u64, serde_json::Value), String> {
        topology::latest(&mut self.catalog, &self.topology)
            .await?
            .ok_or_else(|| "the catalog has no topology".to_string())
    }

    /// Publish `map` as `version` (with `also` in the same transaction)
    /// and put it in force here.
    async fn publish(
        &mut self,
        version: u64,
        map: &serde_json::Value,
        note: &str,
        also: &str,
    ) -> Result<(), String> {
        Config::load_with_map(&self.proxy.config().file, Some((version, map)))
            .map_err(|e| format!("the map to publish is not valid: {e}"))?;
        topology::publish_with(&mut self.catalog, &self.topology, version, map, note, also)
            .await
            .map_err(|e| format!("publishing topology version {version}: {e}"))?;
        self.proxy
            .apply_topology(version, map)
            .map_err(|e| format!("applying topology version {version}: {e}"))?;
        tracing::info!(version, note, "published a new topology version");
        Ok(())
    }

    /// Publish the newest map without this rebalance's fence, if it has it.
    async fn lift_fence(&mut self, r: &Rebalance) -> Result<(), String> {
        let (version, map) = self.newest_map().await?;
        let ours = map
            .get("fence")
            .and_then(|f| f.get("rebalance"))
            .and_then(|v| v.as_i64())
            == Some(r.id);
        if ours {
            let mut lifted = map.clone();
            if let Some(o) = lifted.as_object_mut() {
                o.remove("fence");
            }
            self.publish(
                version + 1,
                &lifted,
                &format!("REBALANCE {}: fence lifted", r.id),
                &format!(
                    "UPDATE shardwire.rebalance SET fence_version = NULL WHERE id = {}",
                    r.id
                ),
            )
            .await?;
        }
        Ok(())
    }

    // -- 4. verifying -------------------------------------------------------

    async fn verify_and_publish(&mut self, r: &Rebalance) -> Result<(), Stop> {
        let mismatches = match self.prechecked.take() {
            Some((id, checks)) if id == r.id => match self.verify_changed(r, checks).await {
                Ok(m) => m,
                Err(Stop::Failed(e)) => {
                    tracing::warn!(rebalance = r.id, error = %e, "comparing the changed rows failed; verifying every moved row");
                    self.conns.clear();
                    self.verify_all(r).await?
                }
                Err(stop) => return Err(stop),
            },
            _ => self.verify_all(r).await?,
        };
        self.conns.clear();
        if !mismatches.is_empty() {
            let reason = format!(
                "verification failed, nothing was cut over: {}",
                mismatches.join("; ")
            );
            tracing::error!(rebalance = r.id, "{reason}; rolling back");
            self.roll_back(r, status::ROLLED_BACK, Some(&reason))
                .await?;
            // Finished as rolled back: not a failure that START resumes
            // (the journal says so; the loop of `steps` ends on it).
            return Ok(());
        }
        let (version, _) = self.newest_map().await?;
        if Some(version) != r.fence_version {
            return Err(Stop::Failed(format!(
                "the shard map changed during the cutover (version {version}, fence {:?})",
                r.fence_version
            )));
        }
        self.publish(
            version + 1,
            &r.target_map,
            &format!("REBALANCE {}: {}", r.id, r.command),
            &journal::set_step_sql(r.id, Step::CleaningUp),
        )
        .await?;
        Ok(())
    }

    /// Inside the fence, after a comparison before it: compare the rows
    /// the change logs name and those found unequal then. Returns the
    /// mismatches.
    async fn verify_changed(
        &mut self,
        r: &Rebalance,
        mut checks: Vec<MoveCheck>,
    ) -> Result<Vec<String>, Stop> {
        let mut mismatches = Vec::new();
        for s in streams(r) {
            let mut src = self.take_conn(s.source).await?;
            let mut tgt = self.take_conn(s.target).await?;
            for m in &s.moves {
                let Some(c) = checks.iter_mut().find(|c| c.no == m.no) else {
                    return Err(Stop::Failed(format!(
                        "no comparison of move {} before the fence",
                        m.no
                    )));
                };
                let compared = c.compare_changed(&mut src, &mut tgt, r.id).await?;
                journal::set_move(
                    &mut self.catalog,
                    r.id,
                    m.no,
                    &format!("rows_copied = {}, state = 'verifying'", c.rows),
                )
                .await?;
                tracing::info!(
                    rebalance = r.id,
                    table = %m.table,
                    compared,
                    "rows written since the comparison before the fence compared"
                );
                if !c.suspects.is_empty() {
                    let few: Vec<&str> = c.suspects.iter().take(3).map(String::as_str).collect();
                    mismatches.push(format!(
                        "\"{}\" {} -> {}: {} rows differ, among them {}",
                        m.table,
                        m.source,
                        m.target,
                        c.suspects.len(),
                        few.join(", ")
                    ));
                }
            }
            self.put_conn(s.source, src);
            self.put_conn(s.target, tgt);
        }
        Ok(mismatches)
    }

    /// Inside the fence, without a comparison before it: row counts and
    /// checksums of every moved row. Returns the mismatches.
    async fn verify_all(&mut self, r: &Rebalance) -> Result<Vec<String>, Stop> {
        // Every move at once: writes to the moving rows are held meanwhile.
        let targets = r
            .moves
            .iter()
            .map(|m| Ok((m, self.target(&m.source)?, self.target(&m.target)?)))
            .collect::<Result<Vec<_>, String>>()?;
        let checks = targets.into_iter().map(|(m, source, target)| async move {
            let (a, b) = checksum_both(m, source, target).await?;
            Ok::<_, String>((m, a, b))
        });
        let results = futures_util::future::join_all(checks).await;
        let mut mismatches = Vec::new();
        for result in results {
            let (m, a, b) = result?;
            let rows: i64 = a
                .split('/')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            journal::set_move(
                &mut self.catalog,
                r.id,
                m.no,
                &format!("rows_copied = {rows}, state = 'verifying'"),
            )
            .await?;
            if a != b {
                mismatches.push(format!(
                    "\"{}\" {} -> {}: rows/checksum {a} on the source, {b} on the target",
                    m.table, m.source, m.target
                ));
            }
        }
        Ok(mismatches)
    }

    // -- 5. cleaning up -----------------------------------------------------

    async fn clean_up(&mut self, r: &Rebalance) -> Result<(), Stop> {
        for s in streams(r) {
            self.drop_stream(r, &s).await?;
            let mut src = self.connect(s.source).await?;
            let mut tgt = self.connect(s.target).await?;
            for m in &s.moves {
                journal::set_move(&mut self.catalog, r.id, m.no, "state = 'cleaning up'").await?;
                // Before the delete, which the log would record row by row.
                precheck::drop_log(&mut src, r.id, m).await?;
                precheck::drop_log(&mut tgt, r.id, m).await?;
                let deleted = self.delete_in_batches(&mut src, r, m, true).await?;
                drop_guard(&mut src, r.id, m).await?;
                journal::set_move(
                    &mut self.catalog,
                    r.id,
                    m.no,
                    &format!("rows_deleted = {deleted}, state = 'done', lag_bytes = NULL"),
                )
                .await?;
            }
            forget_fences(&mut src, &mut tgt, r.id).await?;
        }
        Ok(())
    }

    async fn drop_stream(&mut self, r: &Rebalance, s: &Stream<'_>) -> Result<(), String> {
        let name = s.name(r.id);
        let mut tgt = self.connect(s.target).await?;
        topology::run_within(
            &mut tgt,
            &format!("DROP SUBSCRIPTION IF EXISTS {name}"),
            SUBSCRIBE_TIMEOUT,
        )
        .await?;
        let mut src = self.connect(s.source).await?;
        query(&mut src, &format!("DROP PUBLICATION IF EXISTS {name}")).await?;
        Ok(())
    }

    /// Delete the move's rows where they are no longer wanted: on the
    /// source after the cutover (past the guard), on the target when
    /// rolling back. Throttled by `rebalance.rows_per_second` and by the
    /// lag of the shard's replicas.
    ///
    /// The batches walk the table's heap by block ranges (a TID range
    /// scan), so every block is read once in all: a batch that looked for
    /// the next moving rows from the start of the table would read the
    /// dead rows of every batch before it again. No moving row can appear
    /// behind the walk: the guard rejects writes to them on the source,
    /// and a rolled-back target receives none.
    async fn delete_in_batches(
        &mut self,
        conn: &mut ServerConn,
        r: &Rebalance,
        m: &journal::Move,
        on_source: bool,
    ) -> Result<i64, String> {
        let settings = self.proxy.config().rebalance.clone();
        let batch = match settings.rows_per_second {
            0 => DELETE_BATCH,
            rate => rate.clamp(1, DELETE_BATCH),
        };
        let t = quote_ident(&m.table);
        let blocks: u64 = first(
            conn,
            &format!(
                "SELECT pg_relation_size({})::bigint / current_setting('block_size')::bigint",
                literal(&m.table)
            ),
        )
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
        let mut total = 0i64;
        let mut at = 0u64;
        // Blocks per batch, adjusted toward `batch` rows per batch; it at
        // most doubles from one batch to the next, so a sparse stretch of
        // the table does not make one huge delete of the dense one after.
        let mut span = 64u64;
        // One more batch past the end: rows on blocks the table grew by
        // since its size was read.
        while at <= blocks {
            self.wait_for_replicas(conn, r, m, settings.max_replica_lag)
                .await?;
            let started = Instant::now();
            let upper = if at + span > blocks {
                String::new()
            } else {
                format!(" AND ctid < '({},0)'::tid", at + span)
            };
            let sql = format!(
                "BEGIN; SET LOCAL shardwire.rebalance_cleanup = 'on'; \
                 WITH d AS (DELETE FROM {t} WHERE ctid >= '({at},0)'::tid{upper} AND ({p}) RETURNING 1) \
                 SELECT count(*) FROM d; COMMIT",
                p = m.predicate
            );
            let n: i64 = topology::run_within(conn, &sql, BULK_TIMEOUT)
                .await?
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().next().flatten())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            total += n;
            if on_source {
                journal::set_move(
                    &mut self.catalog,
                    r.id,
                    m.no,
                    &format!("rows_deleted = {total}"),
                )
                .await?;
            }
            if upper.is_empty() {
                break;
            }
            at += span;
            span = if n > 0 {
                (span * batch / n as u64).clamp(8, (span * 2).min(1 << 20))
            } else {
                (span * 2).min(1 << 20)
            };
            if settings.rows_per_second > 0 && n > 0 {
                let budget = Duration::from_secs_f64(n as f64 / settings.rows_per_second as f64);
                tokio::time::sleep(budget.saturating_sub(started.elapsed())).await;
            }
        }
        Ok(total)
    }

    /// Wait while a replica of `conn`'s server replays more than `max`
    /// behind (the batch's WAL would make it worse).
    async fn wait_for_replicas(
        &mut self,
        conn: &mut ServerConn,
        r: &Rebalance,
        m: &journal::Move,
        max: Duration,
    ) -> Result<(), String> {
        loop {
            let lag: f64 = first(
                conn,
                "SELECT coalesce(max(extract(epoch FROM replay_lag)), 0) FROM pg_stat_replication \
                 WHERE application_name NOT LIKE 'shardwire_r%'",
            )
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
            if lag <= max.as_secs_f64() {
                journal::set_move(&mut self.catalog, r.id, m.no, "detail = ''").await?;
                return Ok(());
            }
            journal::set_move(
                &mut self.catalog,
                r.id,
                m.no,
                &format!(
                    "detail = {}",
                    literal(&format!("waiting: a replica lags {lag:.1}s"))
                ),
            )
            .await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    // -- rolling back -------------------------------------------------------

    /// Undo a rebalance that has not cut over: lift the fence, drop the
    /// guards and streams, delete the copied rows on the targets, and
    /// finish it with `final_status`.
    pub async fn roll_back(
        &mut self,
        r: &Rebalance,
        final_status: &str,
        reason: Option<&str>,
    ) -> Result<(), String> {
        if r.step >= Step::CleaningUp {
            return Err(format!(
                "rebalance {} has cut over already; it can only finish",
                r.id
            ));
        }
        self.lift_fence(r).await?;
        self.prechecked = None;
        self.conns.clear();
        for s in streams(r) {
            let mut src = self.connect(s.source).await?;
            for m in &s.moves {
                drop_guard(&mut src, r.id, m).await?;
                precheck::drop_log(&mut src, r.id, m).await?;
            }
            self.drop_stream(r, &s).await?;
            let mut tgt = self.connect(s.target).await?;
            for m in &s.moves {
                // Before the delete, which the log would record row by row.
                precheck::drop_log(&mut tgt, r.id, m).await?;
                let exists = first(
                    &mut tgt,
                    &format!("SELECT to_regclass({})::text", literal(&m.table)),
                )
                .await?
                .is_some();
                if exists {
                    self.delete_in_batches(&mut tgt, r, m, false).await?;
                }
                journal::set_move(
                    &mut self.catalog,
                    r.id,
                    m.no,
                    &format!("state = {}", literal(final_status)),
                )
                .await?;
            }
            forget_fences(&mut src, &mut tgt, r.id).await?;
        }
        journal::set_status(&mut self.catalog, r.id, final_status, reason, true).await?;
        tracing::info!(
            rebalance = r.id,
            status = final_status,
            "rebalance rolled back"
        );
        Ok(())
    }
}

/// Write this stream's fence row on the source and wait until the target
/// has it: every change the source committed before is then applied
/// there too (logical replication applies in commit order). Returns how
/// long that took, or None after `limit`.
async fn fence_round_trip(
    src: &mut ServerConn,
    tgt: &mut ServerConn,
    rebalance: i64,
    stream: usize,
    limit: Duration,
) -> Result<Option<Duration>, String> {
    let started = Instant::now();
    let at = first(
        src,
        &format!(
            "INSERT INTO shardwire.rebalance_fence VALUES ({rebalance}, {stream}, clock_timestamp()) \
             ON CONFLICT (rebalance, stream) DO UPDATE SET at = EXCLUDED.at RETURNING at::text"
        ),
    )
    .await?
    .ok_or("the fence row was not written")?;
    let check = format!(
        "SELECT 1 FROM shardwire.rebalance_fence WHERE rebalance = {rebalance} AND stream = {stream} \
         AND at >= {}::timestamptz",
        literal(&at)
    );
    loop {
        if first(tgt, &check).await?.is_some() {
            return Ok(Some(started.elapsed()));
        }
        if started.elapsed() > limit {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Row count and checksum of the move's rows on its source and its
/// target, computed at the same time ("count/sum").
async fn checksum_both(
    m: &journal::Move,
    source: ServerTarget,
    target: ServerTarget,
) -> Result<(String, String), String> {
    let (mut src, mut tgt) = (connect(source).await?, connect(target).await?);
    let columns = query(
        &mut src,
        &format!(
            "SELECT quote_ident(attname) FROM pg_attribute WHERE attrelid = to_regclass({}) \
             AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            literal(&m.table)
        ),
    )
    .await?
    .into_iter()
    .filter_map(|r| r.into_iter().next().flatten())
    .collect::<Vec<_>>()
    .join(", ");
    let sql = format!(
        "SELECT count(*)::text || '/' || coalesce(sum(hashtextextended(ROW({columns})::text, 0)::numeric), 0)::text \
         FROM {} WHERE {}",
        quote_ident(&m.table),
        m.predicate
    );
    let (a, b) = tokio::join!(
        topology::run_within(&mut src, &sql, BULK_TIMEOUT),
        topology::run_within(&mut tgt, &sql, BULK_TIMEOUT)
    );
    let value = |rows: Vec<Vec<Option<String>>>| {
        rows.into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
            .unwrap_or_default()
    };
    Ok((value(a?), value(b?)))
}

/// Delete the rebalance's fence rows on both sides of a stream.
async fn forget_fences(
    src: &mut ServerConn,
    tgt: &mut ServerConn,
    rebalance: i64,
) -> Result<(), String> {
    let sql = format!("DELETE FROM shardwire.rebalance_fence WHERE rebalance = {rebalance}");
    query(src, &sql).await?;
    query(tgt, &sql).await?;
    Ok(())
}

/// The guard on the source: a row trigger that rejects, with a retryable
/// error, any write to the moving rows (new or old version), except the
/// mover's own cleanup (its WHEN clause skips the function for that, so
/// the cleanup's deletes do not call it once per row). The predicate is evaluated over the row's columns
/// by selecting from the row itself, so it is the same text the
/// publication filters with.
async fn create_guard(
    src: &mut ServerConn,
    rebalance: i64,
    m: &journal::Move,
) -> Result<(), String> {
    let name = guard_name(rebalance, m);
    let message = literal(&format!(
        "rows of table {} are moving to shard {} (rebalance {rebalance})",
        m.table, m.target
    ));
    let sql = format!(
        "CREATE OR REPLACE FUNCTION shardwire.{name}() RETURNS trigger LANGUAGE plpgsql AS $shardwire$ \
         BEGIN \
           IF coalesce(current_setting('shardwire.rebalance_cleanup', true), '') <> 'on' AND ( \
              (TG_OP <> 'DELETE' AND (SELECT ({p}) FROM (SELECT (NEW).*) AS r)) OR \
              (TG_OP <> 'INSERT' AND (SELECT ({p}) FROM (SELECT (OLD).*) AS r))) THEN \
             RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = {message}, \
               HINT = 'retry; shardwire sends the statement to the new shard once the move is done'; \
           END IF; \
           IF TG_OP = 'DELETE' THEN RETURN OLD; END IF; \
           RETURN NEW; \
         END $shardwire$; \
         SET lock_timeout = '100ms'; \
         CREATE OR REPLACE TRIGGER {name} BEFORE INSERT OR UPDATE OR DELETE ON {t} \
           FOR EACH ROW WHEN (coalesce(current_setting('shardwire.rebalance_cleanup', true), '') <> 'on') \
           EXECUTE FUNCTION shardwire.{name}(); \
         RESET lock_timeout",
        p = m.predicate,
        t = quote_ident(&m.table),
    );
    run_trigger_ddl(src, &sql).await
}

/// Run DDL that puts up a trigger under `SET lock_timeout` (100 ms, in
/// `sql`). Creating a trigger waits for the table's running writers, and
/// every writer that comes after queues behind it: a short timeout, tried
/// again after a pause, bounds what an application write waits for (at
/// 3 s, a 5,000,000-row scenario saw a write wait 1.4 s here).
pub(super) async fn run_trigger_ddl(conn: &mut ServerConn, sql: &str) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..30 {
        match query(conn, sql).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                let _ = query(conn, "RESET lock_timeout").await;
                last = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Err(last)
}

async fn drop_guard(src: &mut ServerConn, rebalance: i64, m: &journal::Move) -> Result<(), String> {
    drop_trigger(src, &m.table, &guard_name(rebalance, m), "").await
}

/// Drop trigger `name` of `table` (if the table exists) and its function
/// `shardwire.name()`, then run `also` (SQL, or empty) in the same query.
pub(super) async fn drop_trigger(
    conn: &mut ServerConn,
    table: &str,
    name: &str,
    also: &str,
) -> Result<(), String> {
    let exists = first(
        conn,
        &format!("SELECT to_regclass({})::text", literal(table)),
    )
    .await?
    .is_some();
    let mut sql = String::new();
    if exists {
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS {name} ON {}; ",
            quote_ident(table)
        ));
    }
    sql.push_str(&format!("DROP FUNCTION IF EXISTS shardwire.{name}()"));
    if !also.is_empty() {
        sql.push_str("; ");
        sql.push_str(also);
    }
    query(conn, &sql).await.map(|_| ())
}

/// Create `table` on the target from the source's definition when it is
/// missing: columns (types, NOT NULL, defaults, generated columns),
/// constraints, indexes and the owner (grants to other roles are not
/// copied). Defaults that draw from a sequence are left out (the sequence is the source's; a sharded key should not come from
/// one).
async fn ensure_table(
    src: &mut ServerConn,
    tgt: &mut ServerConn,
    table: &str,
) -> Result<(), String> {
    let exists = first(
        tgt,
        &format!("SELECT to_regclass({})::text", literal(table)),
    )
    .await?;
    if exists.is_some() {
        return Ok(());
    }
    let t = literal(table);
    let ddl = query(
        src,
        &format!(
            "SELECT 1, format('CREATE TABLE %I (%s)', c.relname, string_agg(format('%I %s%s%s', a.attname, \
                format_type(a.atttypid, a.atttypmod), \
                CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END, \
                CASE WHEN a.attgenerated = 's' THEN ' GENERATED ALWAYS AS (' || pg_get_expr(d.adbin, d.adrelid) || ') STORED' \
                     WHEN d.adbin IS NOT NULL AND pg_get_expr(d.adbin, d.adrelid) NOT LIKE 'nextval(%' \
                     THEN ' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid) ELSE '' END), ', ' ORDER BY a.attnum)) \
             FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum \
             WHERE c.oid = to_regclass({t}) GROUP BY c.relname \
             UNION ALL \
             SELECT 2, format('ALTER TABLE %I ADD CONSTRAINT %I %s', {t}, conname, pg_get_constraintdef(oid)) \
             FROM pg_constraint WHERE conrelid = to_regclass({t}) AND contype IN ('p', 'u', 'c', 'x') \
             UNION ALL \
             SELECT 3, pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = to_regclass({t}) \
               AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = indexrelid) \
             UNION ALL \
             SELECT 4, format('ALTER TABLE %I OWNER TO %I', {t}, pg_get_userbyid(relowner)) \
             FROM pg_class WHERE oid = to_regclass({t}) \
             ORDER BY 1"
        ),
    )
    .await?;
    let statements: Vec<String> = ddl
        .into_iter()
        .filter_map(|r| r.get(1).cloned().flatten())
        .collect();
    if statements.is_empty() {
        return Err(format!("table \"{table}\" does not exist on the source"));
    }
    query(tgt, &format!("BEGIN; {}; COMMIT", statements.join("; "))).await?;
    Ok(())
}

//! The rebalance journal in the catalog (schema `shardwire`, next to the
//! topology): one row per rebalance with the step it has reached, and one
//! row per move with its progress. Every step of the mover is idempotent
//! and the step is recorded after it is done, so a mover that dies (a
//! crash, SIGKILL, a lost connection) is resumed by `REBALANCE START` from
//! the recorded step. A partial unique index allows one unfinished
//! rebalance per topology, which is what refuses a second one.

use std::time::Duration;

use crate::backend::conn::ServerConn;
use crate::topology::run_within;

const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

pub const DDL: &str = "CREATE SCHEMA IF NOT EXISTS shardwire; \
    CREATE TABLE IF NOT EXISTS shardwire.rebalance (\
        id bigserial PRIMARY KEY, \
        topology text NOT NULL, \
        command text NOT NULL, \
        step text NOT NULL, \
        status text NOT NULL, \
        from_version bigint NOT NULL, \
        target_map jsonb NOT NULL, \
        fence_version bigint, \
        cancel_requested boolean NOT NULL DEFAULT false, \
        error text, \
        started_at timestamptz NOT NULL DEFAULT now(), \
        updated_at timestamptz NOT NULL DEFAULT now(), \
        finished_at timestamptz); \
    CREATE UNIQUE INDEX IF NOT EXISTS rebalance_one_unfinished \
        ON shardwire.rebalance (topology) WHERE finished_at IS NULL; \
    CREATE TABLE IF NOT EXISTS shardwire.rebalance_move (\
        rebalance bigint NOT NULL REFERENCES shardwire.rebalance (id), \
        no int NOT NULL, \
        table_name text NOT NULL, \
        source text NOT NULL, \
        target text NOT NULL, \
        predicate text NOT NULL, \
        rows_estimated bigint NOT NULL DEFAULT 0, \
        rows_copied bigint NOT NULL DEFAULT 0, \
        rows_deleted bigint NOT NULL DEFAULT 0, \
        lag_bytes bigint, \
        state text NOT NULL DEFAULT 'planned', \
        detail text NOT NULL DEFAULT '', \
        PRIMARY KEY (rebalance, no))";

/// Where a rebalance is, in the order the mover goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Copying,
    CatchingUp,
    Cutover,
    Verifying,
    CleaningUp,
    Done,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::Copying,
        Step::CatchingUp,
        Step::Cutover,
        Step::Verifying,
        Step::CleaningUp,
        Step::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Copying => "copying",
            Step::CatchingUp => "catching up",
            Step::Cutover => "cutover",
            Step::Verifying => "verifying",
            Step::CleaningUp => "cleaning up",
            Step::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// `running`, `failed` (stopped on an error; START resumes it),
/// `cancelling`, `done`, `cancelled`, `rolled back` (verification failed).
pub mod status {
    pub const RUNNING: &str = "running";
    pub const FAILED: &str = "failed";
    pub const DONE: &str = "done";
    pub const CANCELLED: &str = "cancelled";
    pub const ROLLED_BACK: &str = "rolled back";
}

#[derive(Debug, Clone)]
pub struct Rebalance {
    pub id: i64,
    pub command: String,
    pub step: Step,
    pub status: String,
    pub from_version: u64,
    pub target_map: serde_json::Value,
    pub fence_version: Option<u64>,
    pub cancel_requested: bool,
    pub error: Option<String>,
    pub finished: bool,
    /// Seconds since it started.
    pub elapsed: f64,
    pub moves: Vec<Move>,
}

#[derive(Debug, Clone)]
pub struct Move {
    pub no: i32,
    pub table: String,
    pub source: String,
    pub target: String,
    pub predicate: String,
    pub rows_estimated: i64,
    pub rows_copied: i64,
    pub rows_deleted: i64,
    pub lag_bytes: Option<i64>,
    pub state: String,
    pub detail: String,
}

pub use crate::protocol::quote_literal as literal;

pub async fn ensure(conn: &mut ServerConn) -> Result<(), String> {
    run_within(conn, DDL, QUERY_TIMEOUT).await.map(|_| ())
}

type Row = Vec<Option<String>>;

fn text(row: &Row, i: usize) -> String {
    row.get(i).cloned().flatten().unwrap_or_default()
}

fn int(row: &Row, i: usize) -> Option<i64> {
    row.get(i).cloned().flatten().and_then(|v| v.parse().ok())
}

async fn read(conn: &mut ServerConn, filter: &str) -> Result<Option<Rebalance>, String> {
    let rows = run_within(
        conn,
        &format!(
            "SELECT id, command, step, status, from_version, target_map::text, fence_version, \
             cancel_requested, error, finished_at IS NOT NULL, \
             extract(epoch FROM coalesce(finished_at, now()) - started_at) \
             FROM shardwire.rebalance WHERE {filter} ORDER BY id DESC LIMIT 1"
        ),
        QUERY_TIMEOUT,
    )
    .await?;
    let Some(r) = rows.first() else {
        return Ok(None);
    };
    let id = int(r, 0).ok_or("journal: no id")?;
    let step = Step::parse(&text(r, 2))
        .ok_or_else(|| format!("journal: unknown step {:?}", text(r, 2)))?;
    let target_map = serde_json::from_str(&text(r, 5)).map_err(|e| format!("journal: {e}"))?;
    let moves = run_within(
        conn,
        &format!(
            "SELECT no, table_name, source, target, predicate, rows_estimated, rows_copied, \
             rows_deleted, lag_bytes, state, detail FROM shardwire.rebalance_move \
             WHERE rebalance = {id} ORDER BY no"
        ),
        QUERY_TIMEOUT,
    )
    .await?
    .iter()
    .map(|m| Move {
        no: int(m, 0).unwrap_or(0) as i32,
        table: text(m, 1),
        source: text(m, 2),
        target: text(m, 3),
        predicate: text(m, 4),
        rows_estimated: int(m, 5).unwrap_or(0),
        rows_copied: int(m, 6).unwrap_or(0),
        rows_deleted: int(m, 7).unwrap_or(0),
        lag_bytes: int(m, 8),
        state: text(m, 9),
        detail: text(m, 10),
    })
    .collect();
    Ok(Some(Rebalance {
        id,
        command: text(r, 1),
        step,
        status: text(r, 3),
        from_version: int(r, 4).unwrap_or(0) as u64,
        target_map,
        fence_version: int(r, 6).map(|v| v as u64),
        cancel_requested: text(r, 7) == "t",
        error: r.get(8).cloned().flatten(),
        finished: text(r, 9) == "t",
        elapsed: text(r, 10).parse().unwrap_or(0.0),
        moves,
    }))
}

/// The unfinished rebalance of `topology`, if any.
pub async fn unfinished(
    conn: &mut ServerConn,
    topology: &str,
) -> Result<Option<Rebalance>, String> {
    read(
        conn,
        &format!("topology = {} AND finished_at IS NULL", literal(topology)),
    )
    .await
}

/// The newest rebalance of `topology`, finished or not.
pub async fn newest(conn: &mut ServerConn, topology: &str) -> Result<Option<Rebalance>, String> {
    read(conn, &format!("topology = {}", literal(topology))).await
}

pub async fn by_id(conn: &mut ServerConn, id: i64) -> Result<Option<Rebalance>, String> {
    read(conn, &format!("id = {id}")).await
}

/// A new rebalance with its moves; fails when one is unfinished.
pub async fn create(
    conn: &mut ServerConn,
    topology: &str,
    command: &str,
    from_version: u64,
    target_map: &serde_json::Value,
    moves: &[super::PlannedMove],
) -> Result<i64, String> {
    let mut sql = format!(
        "BEGIN; CREATE TEMP TABLE IF NOT EXISTS new_rebalance (id bigint) ON COMMIT DROP; \
         WITH r AS (INSERT INTO shardwire.rebalance (topology, command, step, status, from_version, target_map) \
         VALUES ({}, {}, 'copying', 'running', {from_version}, {}::jsonb) RETURNING id) \
         INSERT INTO new_rebalance SELECT id FROM r; ",
        literal(topology),
        literal(command),
        literal(&target_map.to_string()),
    );
    for (i, m) in moves.iter().enumerate() {
        sql.push_str(&format!(
            "INSERT INTO shardwire.rebalance_move (rebalance, no, table_name, source, target, predicate, rows_estimated) \
             SELECT id, {}, {}, {}, {}, {}, {} FROM new_rebalance; ",
            i + 1,
            literal(&m.table),
            literal(&m.source),
            literal(&m.target),
            literal(&m.predicate),
            m.rows.unwrap_or(0),
        ));
    }
    sql.push_str("SELECT id FROM new_rebalance; COMMIT");
    let rows = run_within(conn, &sql, QUERY_TIMEOUT).await.map_err(|e| {
        if e.contains("rebalance_one_unfinished") {
            "another rebalance of this topology is not finished".to_string()
        } else {
            e
        }
    })?;
    rows.first()
        .and_then(|r| int(r, 0))
        .ok_or_else(|| "the journal did not return the new rebalance's id".into())
}

/// SQL that records `step` (for `publish_with` or `exec`).
pub fn set_step_sql(id: i64, step: Step) -> String {
    format!(
        "UPDATE shardwire.rebalance SET step = {}, updated_at = now() WHERE id = {id}",
        literal(step.as_str())
    )
}

pub async fn exec(conn: &mut ServerConn, sql: &str) -> Result<(), String> {
    run_within(conn, sql, QUERY_TIMEOUT).await.map(|_| ())
}

pub async fn set_status(
    conn: &mut ServerConn,
    id: i64,
    status: &str,
    error: Option<&str>,
    finished: bool,
) -> Result<(), String> {
    exec(
        conn,
        &format!(
            "UPDATE shardwire.rebalance SET status = {}, error = {}, updated_at = now(){} WHERE id = {id}",
            literal(status),
            error.map_or("NULL".to_string(), literal),
            if finished { ", finished_at = now()" } else { "" },
        ),
    )
    .await
}

/// Progress of one move.
pub async fn set_move(
    conn: &mut ServerConn,
    id: i64,
    no: i32,
    assignments: &str,
) -> Result<(), String> {
    exec(
        conn,
        &format!(
            "UPDATE shardwire.rebalance_move SET {assignments} WHERE rebalance = {id} AND no = {no}"
        ),
    )
    .await
}

pub async fn cancel_requested(conn: &mut ServerConn, id: i64) -> Result<bool, String> {
    let rows = run_within(
        conn,
        &format!("SELECT cancel_requested FROM shardwire.rebalance WHERE id = {id}"),
        QUERY_TIMEOUT,
    )
    .await?;
    Ok(rows.first().map(|r| text(r, 0) == "t").unwrap_or(false))
}

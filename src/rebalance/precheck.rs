//! Verifying the moved rows before the cutover fence, so that inside the
//! fence only what changed since is compared again: the pause writers see
//! at the cutover does not grow with the data.
//!
//! Why that is exact. A change-log trigger on both sides of a move records
//! the primary key of every moving row written after it went up: on the
//! source by anyone, on the target by anyone but the subscription's apply
//! worker (its writes fire no ordinary trigger). After one fence round
//! trip, a row the logs do not name is static on both sides until the
//! fence: nobody wrote it on the source since the trigger went up, and
//! what the source wrote before is replayed on the target. So a row found
//! equal by a comparison taken after that round trip stays equal until the
//! fence unless a log names it. Inside the fence the mover compares, by
//! primary key and on both sides, exactly the rows the logs named since
//! the last comparison and the rows found unequal then.
//!
//! The comparisons: first per bucket of primary keys, the row count and
//! the XOR of row hashes on both sides (one scan, no sort), and row by row
//! only in the buckets that differ; then a few short rounds that take the
//! logs and compare what they name, so that what is left for the fence is
//! what was written during the last round.
//!
//! A log is a plain table (`shardwire.rebalance_changed`) that a round
//! empties with `DELETE ... RETURNING`: an entry becomes visible when its
//! transaction commits, so a write that commits late is taken by a later
//! round or by the fence, never lost between them.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use super::journal::{self, literal};
use crate::backend::conn::ServerConn;
use crate::protocol::quote_ident;
use crate::topology;

/// Buckets of primary keys in the first comparison. Rows written while it
/// runs make their buckets differ; only those buckets are read row by row.
const BUCKETS: u32 = 4096;
/// Rows read row by row in the first comparison, and idents taken from a
/// log or compared in one round, past which the pre-check gives up (the
/// fence then verifies every row, as without it).
pub(super) const MAX_ROWS: usize = 200_000;
/// Rounds after the first comparison; they stop early once a round has
/// `SMALL` rows or fewer to compare.
pub(super) const ROUNDS: usize = 4;
pub(super) const SMALL: usize = 2_000;
const TIMEOUT: Duration = Duration::from_secs(600);

/// What the pre-check of one move knows.
pub(super) struct MoveCheck {
    pub no: i32,
    table: String,
    predicate: String,
    /// `ROW(c1, c2, ...)` over the source's columns in its order: the row
    /// that is hashed (the target's columns are named the same).
    row: String,
    /// The primary key's columns, quoted.
    key: Vec<String>,
    /// `jsonb_build_object('k1', "k1", ...)::text`: a row's identity, the
    /// same text on both sides, and what the logs record.
    ident: String,
    /// A row's bucket in the first comparison, from its primary key
    /// (cheaper to compute than `ident`).
    bucket: String,
    /// Rows unequal (or present on one side only) at the last comparison.
    pub suspects: BTreeSet<String>,
    /// Moving rows on the source at the first comparison.
    pub rows: i64,
}

fn log_trigger(rebalance: i64, no: i32) -> String {
    format!("shardwire_log_{rebalance}_{no}")
}

async fn query(conn: &mut ServerConn, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    topology::run_within(conn, sql, TIMEOUT).await
}

impl MoveCheck {
    /// Columns and primary key of the move's table, from the source.
    pub async fn describe(src: &mut ServerConn, m: &journal::Move) -> Result<MoveCheck, String> {
        let t = literal(&m.table);
        let columns: Vec<String> = query(
            src,
            &format!(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass({t}) \
                 AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            ),
        )
        .await?
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
        let key: Vec<String> = query(
            src,
            &format!(
                "SELECT a.attname FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
                 JOIN pg_attribute a ON a.attrelid = to_regclass({t}) AND a.attnum = k.attnum \
                 WHERE i.indrelid = to_regclass({t}) AND i.indisprimary ORDER BY k.n"
            ),
        )
        .await?
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
        if columns.is_empty() || key.is_empty() {
            return Err(format!(
                "table \"{}\" has no primary key on the source",
                m.table
            ));
        }
        let quoted: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        let ident = format!(
            "jsonb_build_object({})::text",
            key.iter()
                .map(|k| format!("{}, {}", literal(k), quote_ident(k)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let bucket = format!(
            "(hashtextextended(ROW({})::text, 0) & {})",
            key.iter()
                .map(|k| quote_ident(k))
                .collect::<Vec<_>>()
                .join(", "),
            BUCKETS - 1
        );
        Ok(MoveCheck {
            no: m.no,
            bucket,
            table: m.table.clone(),
            predicate: m.predicate.clone(),
            row: format!("ROW({})", quoted.join(", ")),
            key: key.iter().map(|k| quote_ident(k)).collect(),
            ident,
            suspects: BTreeSet::new(),
            rows: 0,
        })
    }

    /// Put up the change-log trigger on one side (idempotent). Creating a
    /// trigger waits for the table's running writers, so every write after
    /// it is logged. The function runs as its owner, the `[rebalance]`
    /// user: the application's users may not write in schema shardwire.
    pub async fn install_log(&self, conn: &mut ServerConn, rebalance: i64) -> Result<(), String> {
        let name = log_trigger(rebalance, self.no);
        let log = |row: &str| {
            format!(
                "INSERT INTO shardwire.rebalance_changed VALUES ({rebalance}, {no}, \
                 (SELECT {ident} FROM (SELECT ({row}).*) AS r))",
                no = self.no,
                ident = self.ident
            )
        };
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS shardwire.rebalance_changed (\
               rebalance bigint NOT NULL, move int NOT NULL, ident text NOT NULL); \
             CREATE INDEX IF NOT EXISTS rebalance_changed_move ON shardwire.rebalance_changed (rebalance, move); \
             CREATE OR REPLACE FUNCTION shardwire.{name}() RETURNS trigger LANGUAGE plpgsql \
               SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $shardwire$ \
             BEGIN \
               IF TG_OP <> 'DELETE' AND (SELECT ({p}) FROM (SELECT (NEW).*) AS r) THEN {new}; END IF; \
               IF TG_OP <> 'INSERT' AND (SELECT ({p}) FROM (SELECT (OLD).*) AS r) THEN {old}; END IF; \
               RETURN NULL; \
             END $shardwire$; \
             SET lock_timeout = '100ms'; \
             CREATE OR REPLACE TRIGGER {name} AFTER INSERT OR UPDATE OR DELETE ON {t} \
               FOR EACH ROW EXECUTE FUNCTION shardwire.{name}(); \
             RESET lock_timeout",
            p = self.predicate,
            t = quote_ident(&self.table),
            new = log("NEW"),
            old = log("OLD"),
        );
        super::mover::run_trigger_ddl(conn, &sql).await
    }

    /// Empty this move's log on one side: the idents written since the
    /// last time, once each.
    async fn take_log(
        &self,
        conn: &mut ServerConn,
        rebalance: i64,
    ) -> Result<BTreeSet<String>, String> {
        let rows = query(
            conn,
            &format!(
                "WITH d AS (DELETE FROM shardwire.rebalance_changed \
                   WHERE rebalance = {rebalance} AND move = {no} RETURNING ident) \
                 SELECT DISTINCT ident FROM d LIMIT {limit}",
                no = self.no,
                limit = MAX_ROWS + 1
            ),
        )
        .await?;
        if rows.len() > MAX_ROWS {
            return Err(format!(
                "more than {MAX_ROWS} rows of \"{}\" were written since the last comparison",
                self.table
            ));
        }
        Ok(rows
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect())
    }

    /// The first comparison: per bucket on both sides, then row by row in
    /// the buckets that differ. Sets `suspects` and `rows`.
    pub async fn compare_all(
        &mut self,
        src: &mut ServerConn,
        tgt: &mut ServerConn,
    ) -> Result<(), String> {
        // bit_xor: rows are unique by primary key, so no two equal rows
        // cancel out, and it is cheaper than a numeric sum.
        let sql = format!(
            "SELECT {bucket}::text, count(*)::text, \
               bit_xor(hashtextextended({row}::text, 0))::text \
             FROM {t} WHERE ({p}) GROUP BY 1",
            bucket = self.bucket,
            row = self.row,
            t = quote_ident(&self.table),
            p = self.predicate
        );
        let (a, b) = tokio::join!(query(src, &sql), query(tgt, &sql));
        let bucket_sums = |rows: Vec<Vec<Option<String>>>| -> HashMap<String, (String, String)> {
            rows.into_iter()
                .map(|r| {
                    let mut v = r.into_iter().map(Option::unwrap_or_default);
                    let b = v.next().unwrap_or_default();
                    let n = v.next().unwrap_or_default();
                    let s = v.next().unwrap_or_default();
                    (b, (n, s))
                })
                .collect()
        };
        let (a, b) = (bucket_sums(a?), bucket_sums(b?));
        self.rows = a.values().filter_map(|(n, _)| n.parse::<i64>().ok()).sum();
        let differ: BTreeSet<&String> = a
            .iter()
            .filter(|(k, v)| b.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .chain(b.keys().filter(|k| !a.contains_key(*k)))
            .collect();
        self.suspects.clear();
        if differ.is_empty() {
            return Ok(());
        }
        let list = differ
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "SELECT {ident}, hashtextextended({row}::text, 0)::text FROM {t} \
             WHERE ({p}) AND {bucket} = ANY ('{{{list}}}'::bigint[]) LIMIT {limit}",
            ident = self.ident,
            bucket = self.bucket,
            row = self.row,
            t = quote_ident(&self.table),
            p = self.predicate,
            limit = MAX_ROWS + 1
        );
        let (a, b) = tokio::join!(query(src, &sql), query(tgt, &sql));
        let (a, b) = (a?, b?);
        if a.len() > MAX_ROWS || b.len() > MAX_ROWS {
            return Err(format!(
                "more than {MAX_ROWS} rows of \"{}\" differ in the first comparison",
                self.table
            ));
        }
        self.suspects = differences(a, b);
        Ok(())
    }

    /// Take both logs and compare what they name, with the rows found
    /// unequal before: afterwards `suspects` holds the rows still unequal.
    /// Returns how many rows were compared.
    pub async fn compare_changed(
        &mut self,
        src: &mut ServerConn,
        tgt: &mut ServerConn,
        rebalance: i64,
    ) -> Result<usize, String> {
        let mut idents = self.take_log(src, rebalance).await?;
        idents.extend(self.take_log(tgt, rebalance).await?);
        idents.extend(std::mem::take(&mut self.suspects));
        if idents.len() > MAX_ROWS {
            return Err(format!(
                "more than {MAX_ROWS} rows of \"{}\" to compare again",
                self.table
            ));
        }
        let n = idents.len();
        if n == 0 {
            return Ok(0);
        }
        let json = format!(
            "[{}]",
            idents
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(",")
        );
        let key = self.key.join(", ");
        let t = quote_ident(&self.table);
        let sql = format!(
            "SELECT {ident}, hashtextextended({row}::text, 0)::text FROM {t} \
             WHERE ({p}) AND ({key}) IN (SELECT {key} FROM jsonb_populate_recordset(NULL::{t}, {json}::jsonb))",
            ident = self.ident,
            row = self.row,
            p = self.predicate,
            json = literal(&json)
        );
        // Kept as suspects if the comparison fails, so that a retry
        // compares them again: the logs no longer hold them.
        self.suspects = idents;
        let (a, b) = tokio::join!(query(src, &sql), query(tgt, &sql));
        self.suspects = differences(a?, b?);
        Ok(n)
    }
}

/// Idents whose hash differs, or that one side lacks.
fn differences(a: Vec<Vec<Option<String>>>, b: Vec<Vec<Option<String>>>) -> BTreeSet<String> {
    let pairs = |rows: Vec<Vec<Option<String>>>| -> HashMap<String, Option<String>> {
        rows.into_iter()
            .filter_map(|r| {
                let mut v = r.into_iter();
                Some((v.next().flatten()?, v.next().flatten()))
            })
            .collect()
    };
    let (a, b) = (pairs(a), pairs(b));
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .chain(b.keys().filter(|k| !a.contains_key(*k)).cloned())
        .collect()
}

/// Drop the change-log trigger and its entries on one side.
pub(super) async fn drop_log(
    conn: &mut ServerConn,
    rebalance: i64,
    m: &journal::Move,
) -> Result<(), String> {
    let entries = format!(
        "DO $shardwire$ BEGIN IF to_regclass('shardwire.rebalance_changed') IS NOT NULL THEN \
           DELETE FROM shardwire.rebalance_changed WHERE rebalance = {rebalance} AND move = {no}; \
         END IF; END $shardwire$",
        no = m.no
    );
    super::mover::drop_trigger(conn, &m.table, &log_trigger(rebalance, m.no), &entries).await
}

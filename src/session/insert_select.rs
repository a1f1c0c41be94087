//! INSERT ... SELECT that the target's shards cannot run themselves
//! (router::insert_select), in both protocols, inside and outside
//! transactions: the SELECT runs on the merge connection as a gathered
//! read (gathered.rs) into a temporary table shaped like the target's
//! listed columns, so PostgreSQL resolves the SELECT's types against the
//! target's as the INSERT would; the rows are read back (text) and
//! inserted into the target's shards by key with the statement's own
//! ON CONFLICT and RETURNING, each shard's rows as parameters typed like
//! the target's columns, all-or-nothing (two-phase commit over several
//! shards, or the transaction's connections inside one).
//!
//! The rows pass through the proxy (16 MB at most) and are read in one
//! snapshot of the sources per shard, then written: as if the statement
//! had taken its snapshot just before it ran.

use super::multi::shaped;
use super::portal::{portal_frames, sync_frame};
use super::*;
use crate::execute::scatter::Shape;
use crate::router::insert_select::{Destination, InsertSelect, ROWS_TABLE};
use crate::router::parse_key;
use crate::sharding::KeyValue;

/// Parameters per statement: PostgreSQL's limit is 65,535.
const MAX_PARAMS: usize = 65_535;

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Run `is`; `params` are the client's parameter types and values
    /// (extended protocol) for the SELECT. Ok: the frames of the answer
    /// (RowDescription and rows when RETURNING, then `INSERT 0 n`), Err:
    /// the client's ErrorResponse (inside a transaction, the transaction
    /// has failed).
    pub(super) async fn run_insert_select(
        &mut self,
        route: &Route,
        is: &InsertSelect,
        params: Option<(&[u8], &[u8])>,
        result_formats: &[i16],
    ) -> Result<Result<BytesMut, BytesMut>, SessionEnd> {
        let (types, values) = params.unwrap_or((&[0, 0], &[0, 0, 0, 0]));
        let request = |select: &str| {
            let mut out = BytesMut::new();
            portal_frames(
                &mut out,
                &is.create_sql(),
                &[0, 0],
                &[0, 0, 0, 0],
                &[],
                true,
            );
            portal_frames(&mut out, &is.fill_sql(select), types, values, &[], true);
            let read = format!("SELECT * FROM pg_temp.\"{ROWS_TABLE}\"");
            portal_frames(&mut out, &read, &[0, 0], &[0, 0, 0, 0], &[], true);
            sync_frame(&mut out);
            out
        };
        let answer = match self
            .gather_and_run(route, &is.source, Some(&request))
            .await?
        {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(Err(BytesMut::new())),
            Err(frame) => return Ok(Err(frame)),
        };
        let fail = |s: &mut Self, e: PgError| {
            if let Some(m) = s.multi.as_mut() {
                m.failed = true;
                s.tx_status = TxStatus::Failed;
            }
            let mut out = BytesMut::new();
            e.encode(&mut out);
            Ok(Err(out))
        };
        // The rows table's description (the last one: the read-back's).
        let Some(description) = answer
            .frames
            .iter()
            .rev()
            .find(|f| f[0] == be::ROW_DESCRIPTION)
        else {
            return fail(
                self,
                PgError::error(
                    sqlstate::INTERNAL_ERROR,
                    "no description of the rows to insert",
                ),
            );
        };
        let columns = match crate::execute::merge::columns(description) {
            Ok(c) => c,
            Err(e) => return fail(self, e),
        };
        let rows: Vec<Vec<Option<&[u8]>>> = match answer
            .frames
            .iter()
            .filter(|f| f[0] == be::DATA_ROW)
            .map(|f| protocol::data_row_values(f))
            .collect::<Result<_, _>>()
        {
            Ok(r) => r,
            Err(_) => {
                return fail(
                    self,
                    PgError::error(sqlstate::INTERNAL_ERROR, "malformed row to insert"),
                )
            }
        };
        // Which shard each row goes to.
        let n = self.router.shard_names().len();
        let row_shards: Vec<usize> = match is.destination {
            Destination::Unsharded => vec![self.default_shard; rows.len()],
            Destination::Reference => vec![0; rows.len()],
            Destination::Sharded => {
                let Some(rule) = self.router.table(&is.target).cloned() else {
                    return fail(
                        self,
                        PgError::error(sqlstate::INTERNAL_ERROR, "no rule for the target"),
                    );
                };
                let Some(at) = columns.iter().position(|(name, _, _)| *name == rule.key) else {
                    return fail(
                        self,
                        PgError::error(
                            sqlstate::NOT_NULL_VIOLATION,
                            format!(
                                "INSERT ... SELECT into sharded table \"{}\" does not set the shard key \"{}\"",
                                rule.name, rule.key
                            ),
                        )
                        .with_hint("list the shard key among the columns the SELECT fills"),
                    );
                };
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    let shard = match r[at] {
                        None => Err(format!("null value in shard key \"{}\"", rule.key)),
                        Some(v) => parse_key(rule.key_type, &String::from_utf8_lossy(v))
                            .and_then(|k: KeyValue| rule.shard_for(&k)),
                    };
                    match shard {
                        Ok(s) => out.push(s),
                        Err(m) => {
                            return fail(
                                self,
                                PgError::error(
                                    sqlstate::NOT_NULL_VIOLATION,
                                    format!(
                                        "INSERT ... SELECT into sharded table \"{}\": {m}",
                                        rule.name
                                    ),
                                ),
                            )
                        }
                    }
                }
                out
            }
        };
        // Where the rows are written: every shard for a reference table.
        let targets: Vec<usize> = match is.destination {
            Destination::Reference => (0..n).collect(),
            _ => {
                let mut t: Vec<usize> = row_shards.clone();
                t.sort_unstable();
                t.dedup();
                t
            }
        };
        if rows.is_empty() {
            // PostgreSQL describes RETURNING even when no row is inserted:
            // the description of the statement a shard would run, bound
            // (to NULLs) but not executed.
            let shard = targets.first().copied().unwrap_or(self.default_shard);
            let nulls = vec![None; columns.len()];
            let (sql, types, values) = shard_insert(is, &columns, &[&nulls]);
            let mut request = BytesMut::new();
            portal_frames(&mut request, &sql, &types, &values, result_formats, false);
            sync_frame(&mut request);
            let results = match self.run_work(&[(shard, request)], false).await {
                Ok(r) => r,
                Err(frame) => return Ok(Err(frame)),
            };
            let mut out = BytesMut::new();
            if let Some(d) = results
                .first()
                .and_then(|r| r.frames.iter().find(|f| f[0] == be::ROW_DESCRIPTION))
            {
                out.extend_from_slice(d);
            }
            protocol::command_complete(&mut out, "INSERT 0 0");
            return Ok(Ok(out));
        }
        let per_statement = (MAX_PARAMS / columns.len().max(1)).max(1);
        let mut work: Vec<(usize, BytesMut)> = Vec::with_capacity(targets.len());
        for &shard in &targets {
            let mine: Vec<&Vec<Option<&[u8]>>> = rows
                .iter()
                .zip(&row_shards)
                .filter(|(_, s)| is.destination == Destination::Reference || **s == shard)
                .map(|(r, _)| r)
                .collect();
            let mut out = BytesMut::new();
            for chunk in mine.chunks(per_statement) {
                let (sql, types, values) = shard_insert(is, &columns, chunk);
                portal_frames(&mut out, &sql, &types, &values, result_formats, true);
            }
            sync_frame(&mut out);
            work.push((shard, out));
        }
        let results = match self.run_work(&work, true).await {
            Ok(r) => r,
            Err(frame) => return Ok(Err(frame)),
        };
        let out = match is.destination {
            Destination::Sharded => shaped(
                Shape::SplitInsert {
                    row_shards: &row_shards,
                    shards: &targets,
                },
                &results,
            ),
            // Every shard wrote the same rows: the first one's answer.
            Destination::Reference | Destination::Unsharded => shaped(
                Shape::SplitInsert {
                    row_shards: &vec![targets[0]; rows.len()],
                    shards: &targets[..1],
                },
                &results[..1],
            ),
        };
        Ok(Ok(out))
    }

    /// Run `work` on the transaction's connections inside a transaction
    /// over several shards (an error fails the transaction), else on
    /// pooled connections (`atomic`: all or nothing).
    async fn run_work(
        &mut self,
        work: &[(usize, BytesMut)],
        atomic: bool,
    ) -> Result<Vec<crate::backend::conn::Collected>, BytesMut> {
        if self.multi.is_none() {
            return self.run_on_shards(work, atomic).await;
        }
        let ran = self.multi_exchange(work).await;
        if ran.is_err() {
            if let Some(m) = self.multi.as_mut() {
                m.failed = true;
            }
            self.tx_status = TxStatus::Failed;
        }
        ran
    }
}

/// One statement of a shard's rows: the INSERT with a VALUES row of
/// parameters per row, the parameters typed like the target's columns,
/// their values in text.
fn shard_insert(
    is: &InsertSelect,
    columns: &[(String, i32, i16)],
    rows: &[&Vec<Option<&[u8]>>],
) -> (String, Vec<u8>, Vec<u8>) {
    let width = columns.len();
    let mut sql = String::with_capacity(is.prefix.len() + is.suffix.len() + rows.len() * width * 6);
    sql.push_str(&is.prefix);
    if is.columns.is_empty() {
        // No column list: the rows table's columns, by name, so a shard
        // whose table has its columns in another order fills the right
        // ones.
        let names: Vec<String> = columns
            .iter()
            .map(|(n, _, _)| crate::router::gather::quote_ident(n))
            .collect();
        sql.push_str(&format!("({}) ", names.join(", ")));
    }
    sql.push_str("VALUES ");
    let mut types = Vec::with_capacity(2 + 4 * width * rows.len());
    types.extend_from_slice(&((width * rows.len()) as u16).to_be_bytes());
    let mut values = Vec::new();
    values.extend_from_slice(&1i16.to_be_bytes());
    values.extend_from_slice(&0i16.to_be_bytes());
    values.extend_from_slice(&((width * rows.len()) as u16).to_be_bytes());
    let mut p = 0usize;
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for (c, (_, oid, _)) in columns.iter().enumerate() {
            if c > 0 {
                sql.push_str(", ");
            }
            p += 1;
            sql.push_str(&format!("${p}"));
            types.extend_from_slice(&oid.to_be_bytes());
            match row.get(c).copied().flatten() {
                None => values.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    values.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    values.extend_from_slice(v);
                }
            }
        }
        sql.push(')');
    }
    sql.push_str(&is.suffix);
    (sql, types, values)
}

//! Multi-shard execution of simple queries outside a transaction:
//! broadcast statements (DDL, maintenance, reference-table writes) and
//! multi-row INSERTs whose rows live on several shards.
//!
//! The session holds no server and no deferred BEGIN when this runs. It
//! checks out one connection per shard from the shards' pools, in shard
//! order (so two sessions never wait on each other's shards in a cycle),
//! runs the work as proxy-sent simple queries, and answers the client as
//! PostgreSQL would for one server. Everything but maintenance runs
//! all-or-nothing: BEGIN on every shard, the statement on every shard, then
//! COMMIT everywhere only if all succeeded, else ROLLBACK everywhere.
//!
//! Multi-shard statements in the extended protocol or inside a transaction
//! are still refused with 0A000.

use sqlparser::ast::{SetExpr, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::*;
use crate::backend::conn::Collected;
use crate::backend::BackendError;
use crate::router::{Analysis, Kind};

/// What one shard may answer to a multi-shard statement (kept in memory
/// until every shard has answered).
const MAX_COLLECT: usize = 16 * 1024 * 1024;
/// BEGIN, COMMIT, ROLLBACK.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// The statement itself (DDL may wait for locks, CREATE INDEX may take long).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(600);

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Run a multi-shard simple query if the session can (no server held,
    /// not in a transaction). Returns false when it cannot: the caller
    /// refuses it as before.
    pub(super) async fn try_multi_shard(
        &mut self,
        sql: &str,
        route: &Route,
        analysis: &Analysis,
    ) -> bool {
        if route.shards.len() < 2
            || self.server.is_some()
            || self.deferred_begin.is_some()
            || self.tx_status != b'I'
            || analysis
                .statements
                .iter()
                .any(|s| s.kind == Kind::Transaction)
        {
            return false;
        }
        if route.all_shards {
            self.broadcast(sql, route, analysis).await;
            return true;
        }
        if let Some(rows) = &route.row_shards {
            match split_insert(sql, rows, &route.shards) {
                Ok(work) => self.insert_split(work).await,
                Err(m) => self.refuse(
                    PgError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!("cannot split this INSERT across shards: {m}"),
                    )
                    .with_hint("insert the rows of each shard with a separate statement"),
                    true,
                ),
            }
            return true;
        }
        false
    }

    /// The same statement on every shard; the client sees the first shard's
    /// answer.
    async fn broadcast(&mut self, sql: &str, route: &Route, analysis: &Analysis) {
        let atomic = !needs_no_transaction(sql, analysis);
        let work: Vec<(usize, String)> =
            route.shards.iter().map(|&s| (s, sql.to_string())).collect();
        match self.run_on_shards(&work, atomic).await {
            Ok(results) => {
                let mut out = BytesMut::new();
                if let Some(first) = results.first() {
                    for f in &first.frames {
                        out.extend_from_slice(f);
                    }
                }
                self.answer(out);
            }
            Err(frame) => self.answer(frame),
        }
    }

    /// Each shard's rows of a multi-row INSERT; one summed CommandComplete.
    async fn insert_split(&mut self, work: Vec<(usize, String)>) {
        match self.run_on_shards(&work, true).await {
            Ok(results) => {
                let mut out = BytesMut::new();
                let mut total: u64 = 0;
                let mut described = false;
                for (i, r) in results.iter().enumerate() {
                    for f in &r.frames {
                        match f[0] {
                            be::ROW_DESCRIPTION if !described => {
                                described = true;
                                out.extend_from_slice(f);
                            }
                            b'D' => out.extend_from_slice(f),
                            be::COMMAND_COMPLETE => total += insert_count(f),
                            be::NOTICE_RESPONSE if i == 0 => out.extend_from_slice(f),
                            _ => {}
                        }
                    }
                }
                command_complete(&mut out, &format!("INSERT 0 {total}"));
                self.answer(out);
            }
            Err(frame) => self.answer(frame),
        }
    }

    /// Frames for the client, then ReadyForQuery.
    fn answer(&mut self, frames: BytesMut) {
        if !frames.is_empty() {
            self.pending
                .push_back(Pending::SyntheticFrame(frames.freeze()));
        }
        self.pending.push_back(Pending::SyntheticReady);
        self.emit_synthetic();
    }

    /// Run `work` (shard, SQL) on one connection per shard. With `atomic`,
    /// inside a transaction on each shard committed only if every shard
    /// succeeded. On failure, the ErrorResponse for the client (the first
    /// error, with the shard named in its DETAIL).
    async fn run_on_shards(
        &mut self,
        work: &[(usize, String)],
        atomic: bool,
    ) -> Result<Vec<Collected>, BytesMut> {
        self.flush_client_now().await;
        let mut conns: Vec<PooledConn> = Vec::with_capacity(work.len());
        for (shard, _) in work {
            match self.checkout_synced(*shard).await {
                Ok(c) => conns.push(c),
                Err(e) => {
                    for c in conns {
                        c.release();
                    }
                    tracing::warn!(client = self.client_id, error = %e, "no server for a multi-shard statement");
                    let mut out = BytesMut::new();
                    e.with_detail(format!(
                        "shardwire: no connection to shard \"{}\"",
                        self.shard_name(*shard)
                    ))
                    .encode(&mut out);
                    return Err(out);
                }
            }
        }
        let n = conns.len();
        let mut clean = vec![true; n];
        let mut begun = vec![false; n];
        let mut failure: Option<BytesMut> = None;
        let names: Vec<String> = work
            .iter()
            .map(|(s, _)| self.shard_name(*s).to_string())
            .collect();
        let outcome = if atomic {
            "; the statement was rolled back on every shard"
        } else {
            ""
        };

        if atomic {
            for i in 0..n {
                match conns[i]
                    .run_collect("BEGIN", CONTROL_TIMEOUT, 64 * 1024)
                    .await
                {
                    Ok(c) if c.error.is_none() && c.status == b'T' => begun[i] = true,
                    Ok(c) => {
                        clean[i] = c.status == b'I';
                        failure = Some(shard_error(c.error, &names[i], outcome));
                        break;
                    }
                    Err(e) => {
                        clean[i] = false;
                        failure = Some(lost_error(&e, &names[i], outcome));
                        break;
                    }
                }
            }
        }
        let mut results = Vec::with_capacity(n);
        if failure.is_none() {
            for i in 0..n {
                match conns[i]
                    .run_collect(&work[i].1, STATEMENT_TIMEOUT, MAX_COLLECT)
                    .await
                {
                    Ok(c) => {
                        let expected = if atomic { b'T' } else { b'I' };
                        if c.error.is_some() || c.status != expected {
                            clean[i] = c.status == expected;
                            failure = Some(shard_error(c.error, &names[i], outcome));
                            break;
                        }
                        if c.overflow {
                            let mut out = BytesMut::new();
                            PgError::error(
                                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                                format!(
                                    "the answer of shard \"{}\" to a multi-shard statement exceeds {} bytes",
                                    names[i], MAX_COLLECT
                                ),
                            )
                            .with_detail(format!("shardwire: limit reached{outcome}"))
                            .encode(&mut out);
                            failure = Some(out);
                            break;
                        }
                        results.push(c);
                    }
                    Err(e) => {
                        clean[i] = false;
                        failure = Some(lost_error(&e, &names[i], outcome));
                        break;
                    }
                }
            }
        }
        if atomic {
            let mut committed: Vec<&str> = Vec::new();
            for i in 0..n {
                if !begun[i] || !clean[i] {
                    continue;
                }
                // After a failed COMMIT the remaining shards roll back.
                // Without two-phase commit (a later step), shards committed
                // before a failing one stay committed: the error says so.
                let commit = failure.is_none();
                let verb = if commit { "COMMIT" } else { "ROLLBACK" };
                match conns[i].run_collect(verb, CONTROL_TIMEOUT, 64 * 1024).await {
                    Ok(c) if c.error.is_none() && c.status == b'I' => {
                        if commit {
                            committed.push(&names[i]);
                        }
                    }
                    Ok(c) => {
                        clean[i] = c.status == b'I';
                        if commit {
                            failure = Some(commit_error(c.error, None, &names[i], &committed));
                        }
                    }
                    Err(e) => {
                        clean[i] = false;
                        if commit {
                            failure = Some(commit_error(None, Some(&e), &names[i], &committed));
                        }
                    }
                }
            }
        }
        for (i, c) in conns.into_iter().enumerate() {
            if clean[i] {
                c.release();
            }
            // Otherwise dropped: the connection closes.
        }
        match failure {
            Some(f) => Err(f),
            None => Ok(results),
        }
    }
}

/// Statements PostgreSQL refuses inside a transaction block.
fn needs_no_transaction(sql: &str, analysis: &Analysis) -> bool {
    if analysis
        .statements
        .iter()
        .any(|s| s.kind == Kind::Maintenance)
    {
        return true;
    }
    let lower = sql.to_ascii_lowercase();
    lower
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .any(|w| w == "concurrently")
}

/// The client's ErrorResponse for a shard's error (or a missing one, when
/// the server ended in an unexpected transaction state).
fn shard_error(frame: Option<BytesMut>, shard: &str, outcome: &str) -> BytesMut {
    let note = format!("shardwire: failed on shard \"{shard}\"{outcome}");
    let mut out = BytesMut::new();
    match frame {
        Some(f) => {
            let mut fields = protocol::error_fields(protocol::body(&f));
            match fields.iter_mut().find(|(c, _)| *c == b'D') {
                Some((_, d)) => {
                    d.push('\n');
                    d.push_str(&note);
                }
                None => {
                    // DETAIL goes after the message, as the server orders it.
                    let at = fields
                        .iter()
                        .position(|(c, _)| *c == b'M')
                        .map(|p| p + 1)
                        .unwrap_or(fields.len());
                    fields.insert(at, (b'D', note));
                }
            }
            protocol::error_response(&mut out, fields);
        }
        None => PgError::error(
            sqlstate::INTERNAL_ERROR,
            format!("shard \"{shard}\" ended a multi-shard statement in an unexpected state"),
        )
        .with_detail(note)
        .encode(&mut out),
    }
    out
}

fn lost_error(e: &BackendError, shard: &str, outcome: &str) -> BytesMut {
    let mut out = BytesMut::new();
    e.to_pg()
        .with_detail(format!("shardwire: failed on shard \"{shard}\"{outcome}"))
        .encode(&mut out);
    out
}

/// A COMMIT failed on `shard`; `committed` already committed.
fn commit_error(
    frame: Option<BytesMut>,
    lost: Option<&BackendError>,
    shard: &str,
    committed: &[&str],
) -> BytesMut {
    let outcome = if committed.is_empty() {
        "; the statement was rolled back on every shard".to_string()
    } else {
        format!(
            "; COMMIT had already succeeded on shard(s) {}: the statement is committed on some shards only (no two-phase commit yet)",
            committed.join(", ")
        )
    };
    match lost {
        Some(e) => lost_error(e, shard, &outcome),
        None => shard_error(frame, shard, &outcome),
    }
}

/// The row count of an `INSERT oid rows` CommandComplete.
fn insert_count(frame: &[u8]) -> u64 {
    let body = protocol::body(frame);
    let tag = String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(body));
    tag.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The INSERT for each shard with only that shard's rows (`row_shards`: row
/// index -> shard, from the router's analysis of the same text).
fn split_insert(
    sql: &str,
    row_shards: &[usize],
    shards: &[usize],
) -> Result<Vec<(usize, String)>, String> {
    let parsed = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| e.to_string())?;
    let [Statement::Insert(ins)] = &parsed[..] else {
        return Err("not a single INSERT statement".into());
    };
    let rows = match ins.source.as_deref().map(|q| q.body.as_ref()) {
        Some(SetExpr::Values(v)) => &v.rows,
        _ => return Err("only INSERT ... VALUES can be split".into()),
    };
    if rows.len() != row_shards.len() {
        return Err("the rows do not match the routing analysis".into());
    }
    let mut out = Vec::with_capacity(shards.len());
    for &shard in shards {
        let mut one = ins.clone();
        if let Some(SetExpr::Values(v)) = one.source.as_deref_mut().map(|q| q.body.as_mut()) {
            v.rows = rows
                .iter()
                .zip(row_shards)
                .filter(|(_, s)| **s == shard)
                .map(|(r, _)| r.clone())
                .collect();
        }
        out.push((shard, Statement::Insert(one).to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_insert_rows_by_shard() {
        let w = split_insert(
            "insert into t (id, v) values (1, 'a'), (2, 'b'), (3, 'c') returning id",
            &[0, 1, 0],
            &[0, 1],
        )
        .unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(
            w[0].1,
            "INSERT INTO t (id, v) VALUES (1, 'a'), (3, 'c') RETURNING id"
        );
        assert_eq!(w[1].1, "INSERT INTO t (id, v) VALUES (2, 'b') RETURNING id");
        assert!(split_insert("insert into t (id) select 1", &[0], &[0]).is_err());
        assert!(split_insert("insert into t (id) values (1)", &[0, 1], &[0, 1]).is_err());
    }

    #[test]
    fn counts_and_transaction_needs() {
        let mut f = BytesMut::new();
        command_complete(&mut f, "INSERT 0 42");
        assert_eq!(insert_count(&f), 42);
        let tables = Default::default();
        let a = |s: &str| crate::router::analyze::analyze(s, &tables);
        assert!(needs_no_transaction("vacuum t", &a("vacuum t")));
        let ci = "create index concurrently i on t (x)";
        assert!(needs_no_transaction(ci, &a(ci)));
        let ct = "create table t (x int)";
        assert!(!needs_no_transaction(ct, &a(ct)));
    }
}

//! Multi-shard execution of simple queries outside a transaction:
//! cross-shard SELECTs (streamed by execute::stream or merged whole by
//! execute::scatter),
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
//! The extended protocol's multi-shard statements (portal.rs) and
//! transactions over several shards (multitx.rs) run on `run_on_shards`
//! too.

use super::*;
use crate::backend::conn::{Collected, ServerConn};
use crate::backend::BackendError;
use crate::execute::copysplit::{self, RowSplitter};
use crate::execute::fanout::{self, Exchange};
use crate::execute::scatter::{shape, tag_count, Shape};
use crate::router::rewrite::{split_insert, CopyFormat};
use crate::router::{parse_key, CopySplit, TableRule};
use crate::router::{Analysis, Kind};

/// What one shard may answer to a multi-shard statement (kept in memory
/// until every shard has answered).
pub(super) const MAX_COLLECT: usize = 16 * 1024 * 1024;
/// BEGIN, COMMIT, ROLLBACK.
pub(super) const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// The statement itself (DDL may wait for locks, CREATE INDEX may take long).
pub(super) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest the proxy waits for the client's next COPY message, or for
/// a server to take COPY data.
const COPY_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Rows for one shard are sent once this much is buffered.
const COPY_CHUNK: usize = 64 * 1024;

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
    ) -> Result<bool, SessionEnd> {
        if route.shards.len() < 2
            || self.server.is_some()
            || self.deferred_begin.is_some()
            || self.tx_status != TxStatus::Idle
            || analysis
                .statements
                .iter()
                .any(|s| s.kind == Kind::Transaction)
        {
            return Ok(false);
        }
        if let Some(e) = self.multi_shard_settings_error(sql.as_bytes()) {
            self.refuse(e, true);
            return Ok(true);
        }
        match &route.plan {
            Plan::Scatter(merge) => {
                let refused = if self.pending.is_empty() && super::streamed::streams(merge) {
                    self.stream_scatter(merge, sql, &route.shards).await?
                } else {
                    let work = query_work(&route.shards, merge.shard_sql().unwrap_or(sql));
                    match self.run_on_shards(&work, false).await {
                        Ok(results) => match shape(Shape::Merged(merge, None), &results) {
                            Ok(out) => {
                                self.answer(out);
                                None
                            }
                            Err(e) => Some(e),
                        },
                        Err(frame) => {
                            self.answer(frame);
                            None
                        }
                    }
                };
                // The merge found a column it cannot combine exactly (its
                // type is known only from the shards' answers): PostgreSQL
                // answers the statement from the gathered rows instead.
                if let Some(e) = refused {
                    match self.router.gather_instead(analysis) {
                        Some(r) if e.code == sqlstate::FEATURE_NOT_SUPPORTED => {
                            if let Plan::Gather(g) = &r.plan {
                                self.gather_and_answer(&r, g).await?;
                            }
                        }
                        _ => self.refuse(e, true),
                    }
                }
            }
            Plan::SumWrites(tag) => {
                let work = query_work(&route.shards, sql);
                let out = match self.run_on_shards(&work, true).await {
                    Ok(results) => shaped(Shape::SummedWrite(tag), &results),
                    Err(frame) => frame,
                };
                self.answer(out);
            }
            Plan::Broadcast { atomic } => self.broadcast(sql, route, *atomic, analysis).await,
            Plan::SplitInsert(rows) => match split_insert(sql, rows, &route.shards) {
                Ok(work) => self.insert_split(work, rows, &route.shards).await,
                Err(m) => self.refuse(
                    PgError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!("cannot split this INSERT across shards: {m}"),
                    )
                    .with_hint("insert the rows of each shard with a separate statement"),
                    true,
                ),
            },
            Plan::SplitCopy(split) => self.copy_split(sql, route, split).await?,
            Plan::Gather(g) => self.gather_and_answer(route, g).await?,
            Plan::InsertSelect(is) => {
                let out = self.run_insert_select(route, is, None, &[]).await?;
                self.answer(out.unwrap_or_else(|e| e));
            }
            // The router gives several shards only with a plan for them.
            Plan::Single => return Ok(false),
        }
        Ok(true)
    }

    /// The same statement on every shard; the client sees the first shard's
    /// answer.
    async fn broadcast(&mut self, sql: &str, route: &Route, atomic: bool, analysis: &Analysis) {
        let work = query_work(&route.shards, sql);
        // A migration may change tables: INSERTs without a column list
        // read their column order again (router::columns).
        let ddl = analysis.statements.iter().any(|s| s.kind == Kind::Ddl);
        if ddl {
            self.schema_may_change();
        }
        let result = self.run_on_shards(&work, atomic).await;
        if ddl {
            self.schema_may_change();
        }
        match result {
            Ok(results) => {
                let out = shaped(Shape::First, &results);
                self.answer(out);
            }
            Err(frame) => self.answer(frame),
        }
    }

    /// Each shard's rows of a multi-row INSERT; RETURNING rows in VALUES
    /// order and one summed CommandComplete.
    async fn insert_split(
        &mut self,
        work: Vec<(usize, String)>,
        row_shards: &[usize],
        shards: &[usize],
    ) {
        let work: Vec<(usize, BytesMut)> = work
            .iter()
            .flat_map(|(s, sql)| query_work(&[*s], sql))
            .collect();
        match self.run_on_shards(&work, true).await {
            Ok(results) => {
                let out = shaped(Shape::SplitInsert { row_shards, shards }, &results);
                self.answer(out);
            }
            Err(frame) => self.answer(frame),
        }
    }

    /// COPY ... FROM STDIN into a sharded table: the COPY runs on every
    /// shard in a transaction; the proxy answers the client's data itself,
    /// cuts it into rows and sends each row to its key's shard.
    async fn copy_split(
        &mut self,
        sql: &str,
        route: &Route,
        split: &CopySplit,
    ) -> Result<(), SessionEnd> {
        let refuse = |s: &mut Self, code: &'static str, m: String| {
            s.refuse(PgError::error(code, m), true);
        };
        let Some(table) = self.router.table(&split.table).cloned() else {
            refuse(
                self,
                sqlstate::INTERNAL_ERROR,
                format!("no rule for table \"{}\"", split.table),
            );
            return Ok(());
        };
        let fmt = match CopyFormat::from_sql(sql) {
            Ok(f) => f,
            Err(m) => {
                refuse(
                    self,
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("COPY into sharded table \"{}\": {m}", table.name),
                );
                return Ok(());
            }
        };
        let mut conns = match self.checkout_all(&route.shards).await {
            Ok(c) => c,
            Err(frame) => {
                self.answer(frame);
                return Ok(());
            }
        };
        let names: Vec<String> = route
            .shards
            .iter()
            .map(|s| self.shard_name(*s).to_string())
            .collect();
        let n = conns.len();
        let mut clean = vec![true; n];
        let mut begun = vec![false; n];
        let outcome = "; the COPY was rolled back on every shard";

        // The key's position among the copied columns.
        let key_column = match split.key_column {
            Some(k) => Ok(k),
            None => super::catalog::key_position(&mut conns[0], &table).await,
        };
        let key_column = match key_column {
            Ok(k) => k,
            Err(e) => {
                for c in conns {
                    c.release();
                }
                self.refuse(e, true);
                return Ok(());
            }
        };

        let mut failure = begin_all(&mut conns, &mut begun, &mut clean, &names, outcome).await;
        let mut total: u64 = 0;
        if failure.is_none() {
            let streamed = self
                .copy_stream(
                    &mut conns, &mut clean, &names, sql, &fmt, &table, key_column, outcome,
                )
                .await;
            match streamed {
                Ok(Ok(t)) => total = t,
                Ok(Err(f)) => failure = Some(f),
                Err(end) => {
                    // The client is gone: the connections close (rolling back).
                    drop(conns);
                    return Err(end);
                }
            }
        }
        let failure = self
            .end_multi(
                conns,
                &begun,
                clean,
                End::after(failure),
                &names,
                &route.shards,
            )
            .await;
        match failure {
            Some(f) => self.answer(f),
            None => {
                let mut out = BytesMut::new();
                crate::protocol::command_complete(&mut out, &format!("COPY {total}"));
                self.answer(out);
            }
        }
        Ok(())
    }

    /// The COPY on every connection (each in a transaction), the client's
    /// data split among them, and the summed row count; Ok(Err) with the
    /// client's error after a failure (the shards are out of COPY again).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn copy_stream(
        &mut self,
        conns: &mut [PooledConn],
        clean: &mut [bool],
        names: &[String],
        sql: &str,
        fmt: &CopyFormat,
        table: &TableRule,
        key_column: usize,
        outcome: &str,
    ) -> Result<Result<u64, BytesMut>, SessionEnd> {
        let n = conns.len();
        let mut failure: Option<BytesMut> = None;
        let mut copy_in: Option<BytesMut> = None;
        let mut notices = BytesMut::new();
        // Shards that entered COPY (CopyFail ends it after a failure).
        let mut in_copy = vec![false; n];
        for i in 0..n {
            match start_copy(&mut conns[i], sql).await {
                Ok(Ok((response, notes))) => {
                    in_copy[i] = true;
                    if i == 0 {
                        copy_in = Some(response);
                        notices = notes;
                    }
                }
                Ok(Err(c)) => {
                    clean[i] = c.status == TxStatus::Failed || c.status == TxStatus::InBlock;
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
        let mut total: u64 = 0;
        if failure.is_none() {
            self.client_out.extend_from_slice(&notices);
            self.client_out
                .extend_from_slice(&copy_in.take().unwrap_or_default());
            self.flush_client_now().await;
            match self.copy_rows(conns, names, fmt, table, key_column).await {
                Ok(Ok(())) => {
                    // CopyDone went to every shard: collect the counts.
                    for i in 0..n {
                        in_copy[i] = false;
                        let answer = tokio::time::timeout(
                            STATEMENT_TIMEOUT,
                            conns[i].collect_until_ready(64 * 1024),
                        )
                        .await
                        .unwrap_or_else(|_| {
                            Err(BackendError::Protocol {
                                server: names[i].clone(),
                                cause: format!(
                                    "no answer to CopyDone within {STATEMENT_TIMEOUT:?}"
                                ),
                            })
                        });
                        match answer {
                            Ok(c) if c.error.is_none() && c.status == TxStatus::InBlock => {
                                total += c
                                    .frames
                                    .iter()
                                    .filter(|f| f[0] == be::COMMAND_COMPLETE)
                                    .map(|f| tag_count(f))
                                    .sum::<u64>();
                            }
                            Ok(c) => {
                                if failure.is_none() {
                                    failure = Some(shard_error(c.error, &names[i], outcome));
                                }
                            }
                            Err(e) => {
                                clean[i] = false;
                                if failure.is_none() {
                                    failure = Some(lost_error(&e, &names[i], outcome));
                                }
                            }
                        }
                    }
                }
                Ok(Err(f)) => failure = Some(f),
                Err(end) => return Err(end),
            }
        }
        // Shards still in COPY (after a failure before or while streaming):
        // CopyFail, then their ReadyForQuery.
        for i in 0..n {
            if !(in_copy[i] && clean[i]) || failure.is_none() {
                continue;
            }
            let mut f = BytesMut::new();
            let at = protocol::begin_frame(&mut f, fe::COPY_FAIL);
            f.extend_from_slice(b"aborted by shardwire\0");
            protocol::finish_frame(&mut f, at);
            let ended = async {
                conns[i].send_frames(&f, COPY_IDLE_TIMEOUT).await?;
                conns[i].collect_until_ready(64 * 1024).await
            };
            match tokio::time::timeout(CONTROL_TIMEOUT, ended).await {
                Ok(Ok(_)) => {}
                _ => clean[i] = false,
            }
        }
        Ok(match failure {
            Some(f) => Err(f),
            None => Ok(total),
        })
    }

    /// Stream the client's COPY data to the shards, row by row. Ok(Ok)
    /// after CopyDone was sent to every shard; Ok(Err) with the client's
    /// error (CopyFail, a bad row, a lost shard) with the shards still in
    /// COPY; Err when the client is gone.
    async fn copy_rows(
        &mut self,
        conns: &mut [PooledConn],
        names: &[String],
        fmt: &CopyFormat,
        table: &TableRule,
        key_column: usize,
    ) -> Result<Result<(), BytesMut>, SessionEnd> {
        let n = conns.len();
        let mut splitter = RowSplitter::new(fmt.clone());
        let mut bufs: Vec<BytesMut> = vec![BytesMut::new(); n];
        let mut header_pending = fmt.header;
        let mut ended = false; // the end marker \. was seen
        let bad = |code: &'static str, m: String| {
            let mut out = BytesMut::new();
            PgError::error(code, m)
                .with_detail("shardwire: the COPY was rolled back on every shard")
                .encode(&mut out);
            out
        };
        loop {
            let frame = match self.client_rd.try_frame() {
                Ok(Some(f)) => f,
                Ok(None) => {
                    match tokio::time::timeout(COPY_IDLE_TIMEOUT, self.client_rd.fill()).await {
                        Ok(Ok(_)) => continue,
                        Ok(Err(FrameError::Closed)) => {
                            return Err(SessionEnd::ClientGone(
                                "client closed the connection during COPY".into(),
                            ))
                        }
                        Ok(Err(e)) => return Err(self.client_protocol_error(e.to_string())),
                        Err(_) => {
                            return Ok(Err(bad(
                                sqlstate::QUERY_CANCELED,
                                format!(
                                    "no COPY data from the client within {COPY_IDLE_TIMEOUT:?}"
                                ),
                            )))
                        }
                    }
                }
                Err(e) => return Err(self.client_protocol_error(e.to_string())),
            };
            let mut last = None;
            match frame[0] {
                fe::COPY_DATA if !ended => {
                    let mut route_row = |row: &[u8]| -> Result<(), BytesMut> {
                        if ended {
                            return Ok(());
                        }
                        if header_pending {
                            header_pending = false;
                            for b in bufs.iter_mut() {
                                b.extend_from_slice(row);
                            }
                            return Ok(());
                        }
                        if copysplit::is_end_marker(row) {
                            ended = true;
                            return Ok(());
                        }
                        let shard =
                            row_shard(fmt, table, key_column, row).map_err(|(c, m)| bad(c, m))?;
                        bufs[shard].extend_from_slice(row);
                        Ok(())
                    };
                    if let Err(f) = splitter.push(protocol::body(&frame), &mut route_row, || {
                        bad(
                            sqlstate::PROGRAM_LIMIT_EXCEEDED,
                            format!("a COPY row is longer than {} bytes", copysplit::MAX_ROW),
                        )
                    }) {
                        return Ok(Err(f));
                    }
                }
                fe::COPY_DATA => {}
                fe::COPY_DONE => {
                    if let Some(row) = splitter.finish() {
                        if !ended && !header_pending && !copysplit::is_end_marker(&row) {
                            match row_shard(fmt, table, key_column, &row) {
                                Ok(shard) => bufs[shard].extend_from_slice(&row),
                                Err((c, m)) => return Ok(Err(bad(c, m))),
                            }
                        } else if header_pending {
                            for b in bufs.iter_mut() {
                                b.extend_from_slice(&row);
                            }
                        }
                    }
                    last = Some(protocol::empty_frame(fe::COPY_DONE));
                }
                fe::COPY_FAIL => {
                    let mut r = BodyReader::new(protocol::body(&frame), "CopyFail");
                    let msg = r.cstr().unwrap_or("").to_string();
                    return Ok(Err(bad(
                        sqlstate::QUERY_CANCELED,
                        format!("COPY from stdin failed: {msg}"),
                    )));
                }
                fe::FLUSH | fe::SYNC => {}
                other => {
                    return Ok(Err(bad(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!("unexpected message type 0x{other:02X} during COPY from stdin"),
                    )))
                }
            }
            // Send full buffers (all of them at the end).
            for i in 0..n {
                if bufs[i].is_empty() || (bufs[i].len() < COPY_CHUNK && last.is_none()) {
                    continue;
                }
                let mut out = BytesMut::with_capacity(bufs[i].len() + 5);
                let at = protocol::begin_frame(&mut out, fe::COPY_DATA);
                out.extend_from_slice(&bufs[i]);
                protocol::finish_frame(&mut out, at);
                bufs[i].clear();
                if let Err(e) = conns[i].send_frames(&out, COPY_IDLE_TIMEOUT).await {
                    return Ok(Err(lost_error(
                        &e,
                        &names[i],
                        "; the COPY was rolled back on every shard",
                    )));
                }
            }
            if let Some(done) = last {
                for i in 0..n {
                    if let Err(e) = conns[i].send_frames(&done, COPY_IDLE_TIMEOUT).await {
                        return Ok(Err(lost_error(
                            &e,
                            &names[i],
                            "; the COPY was rolled back on every shard",
                        )));
                    }
                }
                return Ok(Ok(()));
            }
        }
    }

    /// Frames for the client, then ReadyForQuery.
    pub(super) fn answer(&mut self, frames: BytesMut) {
        self.note_errors(&frames);
        if !frames.is_empty() {
            self.pending
                .push_back(Pending::SyntheticFrame(frames.freeze()));
        }
        self.pending.push_back(Pending::SyntheticReady);
        self.emit_synthetic();
    }

    /// How long a multi-shard statement may run on each shard:
    /// `limits.statement_timeout` when set, at most STATEMENT_TIMEOUT.
    pub(super) fn multi_statement_timeout(&self) -> Duration {
        let limit = self.config.limits.statement_timeout;
        if limit.is_zero() {
            STATEMENT_TIMEOUT
        } else {
            limit.min(STATEMENT_TIMEOUT)
        }
    }

    /// One connection per shard, checked out in shard order, or the
    /// client's ErrorResponse.
    pub(super) async fn checkout_all(
        &mut self,
        shards: &[usize],
    ) -> Result<Vec<PooledConn>, BytesMut> {
        self.flush_client_now().await;
        let mut conns: Vec<PooledConn> = Vec::with_capacity(shards.len());
        for shard in shards {
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
        Ok(conns)
    }

    /// Run `work` (shard, request) on one connection per shard: each
    /// request is frames ending in a Query or a Sync (see `query_work`).
    /// Every shard gets its request before any answer is read, so the
    /// shards work at the same time. With `atomic`, inside a transaction on
    /// each shard committed only if every shard succeeded. On failure, the
    /// ErrorResponse for the client (the first error, with the shard named
    /// in its DETAIL).
    pub(super) async fn run_on_shards(
        &mut self,
        work: &[(usize, BytesMut)],
        atomic: bool,
    ) -> Result<Vec<Collected>, BytesMut> {
        let shards: Vec<usize> = work.iter().map(|(s, _)| *s).collect();
        let mut conns = self.checkout_all(&shards).await?;
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
            failure = begin_all(&mut conns, &mut begun, &mut clean, &names, outcome).await;
        }
        let mut results = Vec::with_capacity(n);
        if failure.is_none() {
            let timeout = self.multi_statement_timeout();
            let requests: Vec<&[u8]> = work.iter().map(|(_, r)| &r[..]).collect();
            let mut servers: Vec<&mut ServerConn> = conns.iter_mut().map(|c| &mut **c).collect();
            let started = Instant::now();
            let answers = fanout::exchange(&mut servers, &requests, timeout, MAX_COLLECT).await;
            let timed_out = (started.elapsed() >= timeout).then_some(timeout);
            let expected = if atomic {
                TxStatus::InBlock
            } else {
                TxStatus::Idle
            };
            for (i, answer) in answers.into_iter().enumerate() {
                let trouble = match answer {
                    Exchange::Answered(mut c) => {
                        if c.error.is_some() || c.status != expected {
                            clean[i] = c.status == expected;
                            Some(shard_error(c.error.take(), &names[i], outcome))
                        } else if c.overflow {
                            results.push(c);
                            Some(overflow_error(&names[i], outcome))
                        } else {
                            results.push(c);
                            None
                        }
                    }
                    Exchange::Lost(e) => {
                        clean[i] = false;
                        Some(failed_error(
                            &e,
                            &names[i],
                            outcome,
                            timed_out,
                            &self.proxy.metrics,
                        ))
                    }
                    Exchange::NotSent => None,
                };
                failure = earlier_error(failure, trouble);
            }
        }
        if atomic {
            let end = End::after(failure);
            failure = self
                .end_multi(conns, &begun, clean, end, &names, &shards)
                .await;
        } else {
            release_clean(conns, &clean);
        }
        match failure {
            Some(f) => Err(f),
            None => Ok(results),
        }
    }
}

/// Of two shards' errors for one statement, the one PostgreSQL would have
/// raised first on one database: the shards run their parts at once, but
/// one database analyzes and plans the whole statement (an invalid literal
/// in any row: 22P02) before it executes any of it (a duplicate key in
/// another row: 23505). So an error only execution raises gives way to any
/// other: class 23 (integrity constraint violation), 21 (cardinality
/// violation: ON CONFLICT DO UPDATE meeting a row twice) and 40
/// (serialization failure, deadlock); otherwise the first stands.
pub(super) fn earlier_error(first: Option<BytesMut>, next: Option<BytesMut>) -> Option<BytesMut> {
    let class = |f: &BytesMut| {
        protocol::error_fields(protocol::body(f))
            .into_iter()
            .find(|(c, _)| *c == b'C')
            .map(|(_, v)| ["23", "21", "40"].iter().any(|c| v.starts_with(c)))
    };
    match (first, next) {
        (Some(a), Some(b)) if class(&a) == Some(true) && class(&b) == Some(false) => Some(b),
        (Some(a), _) => Some(a),
        (None, b) => b,
    }
}

/// The same simple query for each of `shards`.
pub(super) fn query_work(shards: &[usize], sql: &str) -> Vec<(usize, BytesMut)> {
    let mut frame = BytesMut::new();
    protocol::query_frame(&mut frame, sql);
    shards.iter().map(|&s| (s, frame.clone())).collect()
}

/// Each connection back to its pool when `clean`; the others are dropped,
/// which closes them.
pub(super) fn release_clean(conns: Vec<PooledConn>, clean: &[bool]) {
    for (i, c) in conns.into_iter().enumerate() {
        if clean[i] {
            c.release();
        }
    }
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// The end of a statement or transaction on several shards: end their
    /// transactions as `end` says (`finish_atomic`), note the committed
    /// writes for read-your-writes, and give back the connections. The
    /// client's error, if any.
    pub(super) async fn end_multi(
        &mut self,
        mut conns: Vec<PooledConn>,
        begun: &[bool],
        mut clean: Vec<bool>,
        end: End,
        names: &[String],
        shards: &[usize],
    ) -> Option<BytesMut> {
        let commit = matches!(end, End::Commit);
        let catalog = self.pools[0].clone();
        // Every configured user commits across shards: each may be the
        // one that creates the catalog, and grants it to the others.
        let users = self.config.server_roles();
        let failure = finish_atomic(
            &mut conns,
            begun,
            &mut clean,
            end,
            names,
            (&catalog, &users, self.config.transactions.prepare_timeout()),
        )
        .await;
        if commit && failure.is_none() {
            self.note_multi_writes(&mut conns, shards, &mut clean).await;
        }
        release_clean(conns, &clean);
        failure
    }
}

/// How `finish_atomic` ends the shards' transactions.
pub(super) enum End {
    Commit,
    /// Roll back; with the client's error when a failure is the reason
    /// (None when the client asked for it).
    RollBack(Option<BytesMut>),
}

impl End {
    /// Commit unless something already failed (the failure, for the client).
    pub(super) fn after(failure: Option<BytesMut>) -> End {
        match failure {
            None => End::Commit,
            Some(f) => End::RollBack(Some(f)),
        }
    }
}

/// End the transaction on every shard that began one, as `end` says.
/// Returns the error for the client: the reason of a rollback, or why a
/// COMMIT failed (then everything rolled back).
///
/// Several shards commit with two-phase commit (execute/twophase.rs);
/// one commits (or anything rolls back) in one step.
async fn finish_atomic(
    conns: &mut [PooledConn],
    begun: &[bool],
    clean: &mut [bool],
    end: End,
    names: &[String],
    (catalog, users, prepare_within): (&Arc<Pool>, &[String], Duration),
) -> Option<BytesMut> {
    let (mut commit, mut failure) = match end {
        End::Commit => (true, None),
        End::RollBack(why) => (false, why),
    };
    let participants: Vec<usize> = (0..conns.len()).filter(|&i| begun[i] && clean[i]).collect();
    if commit && participants.len() > 1 {
        let on_catalog = participants
            .iter()
            .copied()
            .find(|&i| Arc::ptr_eq(conns[i].pool(), catalog));
        let catalog = crate::execute::twophase::Catalog {
            pool: catalog,
            participant: on_catalog,
            users,
            prepare_within,
        };
        return crate::execute::twophase::commit(conns, &participants, clean, names, catalog)
            .await
            .err();
    }
    // At most one participant is left here (several commit in two
    // phases above), so a failed COMMIT has committed nothing anywhere.
    for i in 0..conns.len() {
        if !begun[i] || !clean[i] {
            continue;
        }
        let verb = if commit { "COMMIT" } else { "ROLLBACK" };
        match conns[i].run_collect(verb, CONTROL_TIMEOUT, 64 * 1024).await {
            Ok(c)
                if c.error.is_none()
                    && c.status == TxStatus::Idle
                    && !(commit && is_rollback(&c)) => {}
            Ok(c) => {
                clean[i] = c.status == TxStatus::Idle;
                if commit {
                    failure = Some(shard_error(c.error, &names[i], ROLLED_BACK));
                    commit = false;
                }
            }
            Err(e) => {
                clean[i] = false;
                if commit {
                    failure = Some(lost_error(&e, &names[i], ROLLED_BACK));
                    commit = false;
                }
            }
        }
    }
    failure
}

const ROLLED_BACK: &str = "; the statement was rolled back on every shard";

/// COMMIT of a failed transaction answers "ROLLBACK" without an error.
fn is_rollback(c: &Collected) -> bool {
    c.frames
        .iter()
        .any(|f| f[0] == be::COMMAND_COMPLETE && protocol::body(f).starts_with(b"ROLLBACK"))
}

/// Send a COPY FROM STDIN and read up to its CopyInResponse: Ok(Ok) with
/// that frame and the notices before it, Ok(Err) with the server's answer
/// when it failed instead.
async fn start_copy(
    conn: &mut PooledConn,
    sql: &str,
) -> Result<Result<(BytesMut, BytesMut), Collected>, BackendError> {
    let mut out = BytesMut::new();
    protocol::query_frame(&mut out, sql);
    conn.send_frames(&out, CONTROL_TIMEOUT).await?;
    let mut notices = BytesMut::new();
    let mut error = None;
    loop {
        let f = conn.recv_frame(STATEMENT_TIMEOUT).await?;
        match f[0] {
            be::COPY_IN_RESPONSE => return Ok(Ok((f, notices))),
            be::NOTICE_RESPONSE => notices.extend_from_slice(&f),
            be::PARAMETER_STATUS => conn.note_parameter(protocol::body(&f)),
            be::ERROR_RESPONSE => error = error.or(Some(f)),
            be::READY_FOR_QUERY => {
                return Ok(Err(Collected {
                    error,
                    status: TxStatus::of_ready(&f),
                    ..Default::default()
                }))
            }
            _ => {}
        }
    }
}

/// The shard of one COPY row.
fn row_shard(
    fmt: &CopyFormat,
    table: &TableRule,
    key_column: usize,
    row: &[u8],
) -> Result<usize, (&'static str, String)> {
    let v =
        copysplit::field(fmt, row, key_column).map_err(|m| (sqlstate::BAD_COPY_FILE_FORMAT, m))?;
    let Some(v) = v else {
        return Err((
            sqlstate::NOT_NULL_VIOLATION,
            format!(
                "the shard key \"{}\" of table \"{}\" must not be NULL (COPY row: {})",
                table.key,
                table.name,
                String::from_utf8_lossy(&row[..row.len().min(200)]).trim_end()
            ),
        ));
    };
    let s = String::from_utf8_lossy(&v);
    let key = parse_key(table.key_type, &s).map_err(|m| {
        (
            sqlstate::INVALID_TEXT_REPRESENTATION,
            format!(
                "invalid shard key for table \"{}\" in COPY: {m}",
                table.name
            ),
        )
    })?;
    table
        .shard_for(&key)
        .map_err(|m| (sqlstate::INVALID_PARAMETER_VALUE, m))
}

/// The client's ErrorResponse for a shard's error (or a missing one, when
/// the server ended in an unexpected transaction state).
pub(super) fn shard_error(frame: Option<BytesMut>, shard: &str, outcome: &str) -> BytesMut {
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

pub(super) fn lost_error(e: &BackendError, shard: &str, outcome: &str) -> BytesMut {
    let mut out = BytesMut::new();
    e.to_pg()
        .with_detail(format!("shardwire: failed on shard \"{shard}\"{outcome}"))
        .encode(&mut out);
    out
}

/// The client's error for a shard whose connection failed during a
/// statement over several shards: when the statement's time (`timeout`,
/// from `multi_statement_timeout`) had run out, 57014 as for a statement
/// cancelled by limits.statement_timeout (and counted as one); else the
/// lost connection. Either way the connection is closed, not pooled.
pub(super) fn failed_error(
    e: &BackendError,
    shard: &str,
    outcome: &str,
    timed_out: Option<Duration>,
    metrics: &crate::stats::metrics::Metrics,
) -> BytesMut {
    let Some(timeout) = timed_out else {
        return lost_error(e, shard, outcome);
    };
    metrics.statement_timeouts.fetch_add(1, Ordering::Relaxed);
    let mut out = BytesMut::new();
    PgError::error(
        sqlstate::QUERY_CANCELED,
        "canceling statement due to statement timeout",
    )
    .with_detail(format!(
        "shardwire: shard \"{shard}\" had not answered within {timeout:?} \
         (limits.statement_timeout; statements over several shards get at most \
         {STATEMENT_TIMEOUT:?}){outcome}"
    ))
    .encode(&mut out);
    out
}

/// The client's ErrorResponse when a shard answered more than the proxy
/// keeps of one answer to merge it.
pub(super) fn overflow_error(shard: &str, outcome: &str) -> BytesMut {
    let mut out = BytesMut::new();
    PgError::error(
        sqlstate::PROGRAM_LIMIT_EXCEEDED,
        format!("the answer of shard \"{shard}\" to a multi-shard statement exceeds {MAX_COLLECT} bytes"),
    )
    .with_detail(format!("shardwire: limit reached{outcome}"))
    .encode(&mut out);
    out
}

/// The row count of an `INSERT oid rows` CommandComplete.
/// BEGIN on each shard in order, recording which began and which are still
/// clean; the first failure becomes the client's error (and stops the rest).
pub(super) async fn begin_all(
    conns: &mut [PooledConn],
    begun: &mut [bool],
    clean: &mut [bool],
    names: &[String],
    outcome: &str,
) -> Option<BytesMut> {
    for (i, conn) in conns.iter_mut().enumerate() {
        match conn.run_collect("BEGIN", CONTROL_TIMEOUT, 64 * 1024).await {
            Ok(c) if c.error.is_none() && c.status == TxStatus::InBlock => begun[i] = true,
            Ok(c) => {
                clean[i] = c.status == TxStatus::Idle;
                return Some(shard_error(c.error, &names[i], outcome));
            }
            Err(e) => {
                clean[i] = false;
                return Some(lost_error(&e, &names[i], outcome));
            }
        }
    }
    None
}

/// The client's frames for the shards' answers, or the error why they
/// cannot be combined.
pub(super) fn shaped(how: Shape, results: &[Collected]) -> BytesMut {
    shape(how, results).unwrap_or_else(|e| {
        let mut out = BytesMut::new();
        e.encode(&mut out);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: &str) -> Option<BytesMut> {
        let mut out = BytesMut::new();
        PgError::error(
            Box::leak(code.to_string().into_boxed_str()),
            "a shard's error",
        )
        .encode(&mut out);
        Some(out)
    }

    fn code(f: &Option<BytesMut>) -> String {
        protocol::error_fields(protocol::body(f.as_ref().unwrap()))
            .into_iter()
            .find(|(c, _)| *c == b'C')
            .unwrap()
            .1
    }

    #[test]
    fn an_error_only_execution_raises_gives_way_to_an_earlier_one() {
        // What one database raises while analyzing the statement comes
        // before what a shard raised while writing.
        for late in ["23505", "21000", "40001"] {
            assert_eq!(code(&earlier_error(error(late), error("22P02"))), "22P02");
            assert_eq!(code(&earlier_error(error("22P02"), error(late))), "22P02");
        }
        // Otherwise the first stands.
        assert_eq!(
            code(&earlier_error(error("23505"), error("21000"))),
            "23505"
        );
        assert_eq!(
            code(&earlier_error(error("42703"), error("22P02"))),
            "42703"
        );
        assert_eq!(code(&earlier_error(None, error("23505"))), "23505");
        assert!(earlier_error(None, None).is_none());
    }
}

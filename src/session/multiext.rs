//! Extended-protocol messages in a transaction over several shards
//! (multitx.rs): a client's BEGIN'd transaction, or an implicit one, the
//! statements of one extended batch before its Sync (a driver's
//! executemany or executeBatch of rows for several shards), that needs a
//! second shard.
//!
//! The held server's transaction is adopted as the first participant: an
//! implicit batch is made explicit first by a proxy-sent BEGIN, which
//! PostgreSQL turns into a regular transaction block. From then on the
//! proxy answers Parse, Bind, Close and Describe of a portal itself; each
//! Execute runs Parse/Bind/Describe/Execute/Sync on its shards' connections
//! (Sync does not end an explicit transaction) and passes the answer on,
//! merged by execute::scatter when the statement spans shards. The client's
//! Sync of an implicit transaction commits it on every shard (two-phase
//! commit when several wrote), or rolls it back after an error; COMMIT
//! and ROLLBACK as statements end an explicit one.

use super::bind::Bind;
use super::portal::{describe_request, descriptions, extended_answer, parse_frame, portal_request};
use super::*;
use crate::backend::conn::Collected;
use crate::execute::scatter::{shape, Shape};
use crate::router::gather::Gather;
use crate::router::Merge;

/// A portal bound in a transaction over several shards.
pub(super) struct MultiPortal {
    route: Route,
    sql: Arc<str>,
    param_types: Bytes,
    params: Bytes,
    result_formats: Vec<i16>,
    described: bool,
    /// COMMIT (true) or ROLLBACK (false) sent as a statement.
    ends: Option<bool>,
    /// A savepoint statement, run on every shard the transaction holds.
    savepoint: Option<control::SavepointOp>,
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Make the held server's transaction (explicit, or the implicit one of
    /// the current batch) a multi-shard one, for a Bind that needs another
    /// shard. False when it cannot be (the caller refuses as before) or the
    /// batch failed meanwhile (then it is being skipped up to Sync).
    pub(super) async fn enter_multi_extended(&mut self) -> Result<bool, SessionEnd> {
        // A SET in this transaction ran on its one server only.
        if self.server.is_none()
            || self.settings_changed
            || self.pinned.is_some()
            || self.multi.is_some()
            || self.pool_mode != PoolMode::Transaction
            || self.copy_in
            || self.copy_open
            || self.replica.held_on
        {
            return Ok(false);
        }
        let implicit = self.tx_status == TxStatus::Idle;
        if implicit {
            // BEGIN inside an implicit transaction block turns it into a
            // regular one; its answers are the proxy's own.
            let mut f = BytesMut::new();
            parse_frame(&mut f, "BEGIN", &0i16.to_be_bytes());
            self.send(&f, Expect::ParseComplete, false, None);
            f.clear();
            let at = protocol::begin_frame(&mut f, fe::BIND);
            f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
            protocol::finish_frame(&mut f, at);
            self.send(&f, Expect::BindComplete, false, None);
            f.clear();
            let at = protocol::begin_frame(&mut f, fe::EXECUTE);
            f.extend_from_slice(&[0, 0, 0, 0, 0]);
            protocol::finish_frame(&mut f, at);
            self.send(&f, Expect::ExecuteDone, false, None);
            self.server_mut().unnamed = None;
        }
        // The server answers what it was sent so far (a Parse of this
        // batch, say) without waiting for the batch's Sync; everything it
        // owes reaches the client first, in order.
        self.flush_and_drain().await?;
        if self.skip_until_sync || self.server.is_none() {
            return Ok(false);
        }
        self.enter_multi_tx();
        if let Some(m) = self.multi.as_mut() {
            m.implicit = implicit;
        }
        Ok(true)
    }

    /// An extended-protocol message in a transaction over several shards.
    pub(super) async fn multi_extended(&mut self, frame: BytesMut) -> Result<(), SessionEnd> {
        let body = protocol::body(&frame);
        match frame[0] {
            fe::PARSE => {
                // In a failed transaction PostgreSQL refuses to parse
                // anything but COMMIT/ROLLBACK (and so keeps no statement).
                if self.multi.as_ref().is_some_and(|m| m.failed) {
                    let (_, rest) = match split_name(body, "Parse") {
                        Ok(x) => x,
                        Err(e) => return Err(self.client_protocol_error(e.to_string())),
                    };
                    let sql = statements::parse_sql(rest);
                    let analysis = self.router.analysis(&sql);
                    let rollback_to = matches!(
                        control::savepoint_op(&sql, &analysis),
                        Some(control::SavepointOp::RollbackTo(_))
                    );
                    if !rollback_to && !ends_transaction(&sql, &analysis) {
                        self.multi_extended_fail(in_failed_transaction());
                        return Ok(());
                    }
                }
                self.note_parse(&frame)?;
                self.pending
                    .push_back(Pending::Synthetic(be::PARSE_COMPLETE));
            }
            fe::BIND => {
                let Ok(bind) = Bind::decode(body) else {
                    return Err(self.client_protocol_error("malformed Bind message".into()));
                };
                let stmt = bind.statement;
                let sql = if stmt.is_empty() {
                    self.unnamed_sql.clone()
                } else {
                    self.statements.get(stmt).map(|s| s.sql.clone())
                };
                let (Some(sql), Some(param_types)) = (sql, self.statement_param_types(stmt)) else {
                    self.multi_extended_fail(PgError::error(
                        sqlstate::INVALID_SQL_STATEMENT_NAME,
                        format!("prepared statement \"{stmt}\" does not exist"),
                    ));
                    return Ok(());
                };
                let analysis = self.router.analysis(&sql);
                if let Err(e) = self.learn_columns(&analysis).await {
                    self.multi_extended_fail(e);
                    return Ok(());
                }
                let ends = match control::tx_control(&sql, &analysis) {
                    Some(TxControl::End(tag)) => Some(tag == "COMMIT"),
                    _ => None,
                };
                let savepoint = control::savepoint_op(&sql, &analysis);
                let rollback_to = matches!(savepoint, Some(control::SavepointOp::RollbackTo(_)));
                if ends.is_none() && !rollback_to && self.multi.as_ref().is_some_and(|m| m.failed) {
                    self.multi_extended_fail(in_failed_transaction());
                    return Ok(());
                }
                let settings = self.multi_shard_settings_error(sql.as_bytes());
                let route = if ends.is_some() || savepoint.is_some() {
                    Ok(Route::simple(vec![], false, "transaction control".into()))
                } else if let Some(e) = settings {
                    Err(e)
                } else if analysis
                    .statements
                    .iter()
                    .any(|s| s.kind == crate::router::Kind::Transaction)
                {
                    Err(PgError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "savepoints and nested transaction control are not supported in a transaction over several shards",
                    ))
                } else {
                    let types = self.statement_types(stmt);
                    let bound = bind.params(types.as_deref());
                    self.router.route(&sql, &bound, &self.hints)
                };
                match route {
                    Err(e) => self.multi_extended_fail(e),
                    Ok(route) => {
                        self.multi_portal = Some(MultiPortal {
                            route,
                            sql,
                            param_types,
                            params: Bytes::copy_from_slice(bind.params_part),
                            result_formats: bind.result_formats(),
                            described: false,
                            ends,
                            savepoint,
                        });
                        self.pending
                            .push_back(Pending::Synthetic(be::BIND_COMPLETE));
                    }
                }
            }
            fe::DESCRIBE if body.first() == Some(&b'P') => {
                if let Some(p) = self.multi_portal.as_mut() {
                    p.described = true;
                }
            }
            fe::DESCRIBE => {
                let Ok((name, _)) = split_name(body.get(1..).unwrap_or(b""), "Describe") else {
                    return Err(self.client_protocol_error("malformed Describe".into()));
                };
                let name = name.to_string();
                self.multi_describe(&name).await;
            }
            fe::EXECUTE => {
                let max_rows = body
                    .iter()
                    .position(|b| *b == 0)
                    .and_then(|nul| body.get(nul + 1..nul + 5))
                    .map_or(0, |b| i32::from_be_bytes(b.try_into().unwrap()));
                match self.multi_portal.take() {
                    None => self.multi_extended_fail(PgError::error(
                        sqlstate::INVALID_CURSOR_NAME,
                        "portal does not exist (a transaction over several shards keeps only the last bound portal)",
                    )),
                    Some(p) => self.multi_execute(p, max_rows).await,
                }
            }
            fe::CLOSE => {
                if body.first() == Some(&b'S') {
                    if let Ok((name, _)) = split_name(&body[1..], "Close") {
                        if !name.is_empty() {
                            let name = name.to_string();
                            self.statements.remove(&name);
                        }
                    }
                } else {
                    self.multi_portal = None;
                }
                self.pending
                    .push_back(Pending::Synthetic(be::CLOSE_COMPLETE));
            }
            _ => {
                if self.multi.is_some() {
                    self.multi_refuse_extended();
                }
                return Ok(());
            }
        }
        self.emit_synthetic();
        Ok(())
    }

    /// The client's Sync in a transaction over several shards: an implicit
    /// transaction ends here (committed unless it failed).
    pub(super) async fn multi_sync(&mut self) {
        self.skip_until_sync = false;
        self.multi_portal = None;
        if self.multi.as_ref().is_some_and(|m| m.implicit) {
            let failed = self.multi.as_ref().is_some_and(|m| m.failed);
            if let Some(f) = self.multi_finish(!failed).await {
                if !failed {
                    self.note_errors(&f);
                    self.pending.push_back(Pending::SyntheticFrame(f.freeze()));
                }
            }
        }
        self.pending.push_back(Pending::SyntheticReady);
        self.emit_synthetic();
    }

    /// An error in the extended protocol that aborts the transaction: the
    /// rest of the batch is skipped up to Sync.
    fn multi_extended_fail(&mut self, e: PgError) {
        let mut out = BytesMut::new();
        e.encode(&mut out);
        self.multi_extended_failed_with(out);
    }

    fn multi_extended_failed_with(&mut self, frame: BytesMut) {
        if let Some(m) = self.multi.as_mut() {
            m.failed = true;
        }
        self.multi_portal = None;
        self.tx_status = TxStatus::Failed;
        self.note_errors(&frame);
        self.pending
            .push_back(Pending::SyntheticFrame(frame.freeze()));
        self.skip_until_sync = true;
        self.emit_synthetic();
    }

    /// Describe a statement on one of the transaction's connections (it may
    /// use tables the transaction created).
    async fn multi_describe(&mut self, name: &str) {
        let sql = if name.is_empty() {
            self.unnamed_sql.clone()
        } else {
            self.statements.get(name).map(|s| s.sql.clone())
        };
        let (Some(sql), Some(types)) = (sql, self.statement_param_types(name)) else {
            return self.multi_extended_fail(PgError::error(
                sqlstate::INVALID_SQL_STATEMENT_NAME,
                format!("prepared statement \"{name}\" does not exist"),
            ));
        };
        if self.multi.as_ref().is_some_and(|m| m.failed) {
            // The shards' transactions failed: they would describe only
            // COMMIT or ROLLBACK, which take no parameters and return no
            // rows, and end their Sync in 'E'.
            let analysis = self.router.analysis(&sql);
            let rollback_to = matches!(
                control::savepoint_op(&sql, &analysis),
                Some(control::SavepointOp::RollbackTo(_))
            );
            if !rollback_to && !ends_transaction(&sql, &analysis) {
                return self.multi_extended_fail(in_failed_transaction());
            }
            let mut out = BytesMut::new();
            let at = protocol::begin_frame(&mut out, be::PARAMETER_DESCRIPTION);
            out.extend_from_slice(&0i16.to_be_bytes());
            protocol::finish_frame(&mut out, at);
            out.extend_from_slice(&protocol::empty_frame(be::NO_DATA));
            self.pending
                .push_back(Pending::SyntheticFrame(out.freeze()));
            return;
        }
        let shard = self
            .multi
            .as_ref()
            .and_then(|m| m.conns.iter().position(Option::is_some))
            .unwrap_or(self.default_shard);
        let request = describe_request(&sql, &types);
        if let Some(results) = self.multi_requests(&[(shard, request)]).await {
            self.note_description(name, &results);
            self.pending
                .push_back(Pending::SyntheticFrame(descriptions(&results).freeze()));
        }
    }

    /// Run a bound portal on its shards in the transaction. A row limit
    /// (`max_rows`, 0 for none) is fine for answers within it (JDBC sets
    /// one on writes); more rows cannot be held for a later Execute here.
    async fn multi_execute(&mut self, p: MultiPortal, max_rows: i32) {
        if let Some(op) = &p.savepoint {
            let request =
                portal_request(&p.sql, &p.param_types, &p.params, &p.result_formats, true);
            match self.multi_savepoint(op, request).await {
                Ok(frames) => {
                    let out = extended_answer(&frames, p.described);
                    self.pending
                        .push_back(Pending::SyntheticFrame(out.freeze()));
                }
                Err(frame) => self.multi_extended_failed_with(frame),
            }
            return;
        }
        if let Some(commit) = p.ends {
            let failed = self.multi.as_ref().is_some_and(|m| m.failed);
            let failure = self.multi_finish(commit && !failed).await;
            let mut out = BytesMut::new();
            match failure {
                Some(f) if commit && !failed => out = f,
                _ => protocol::command_complete(
                    &mut out,
                    if commit && !failed {
                        "COMMIT"
                    } else {
                        "ROLLBACK"
                    },
                ),
            }
            self.note_errors(&out);
            self.pending
                .push_back(Pending::SyntheticFrame(out.freeze()));
            return;
        }
        if self.multi.as_ref().is_some_and(|m| m.failed) {
            return self.multi_extended_fail(in_failed_transaction());
        }
        if p.route.is_broadcast() {
            // Maybe DDL: the column cache is cleared now and at COMMIT.
            if let Some(m) = self.multi.as_mut() {
                m.ran_ddl = true;
            }
            self.schema_may_change();
        }
        let merge = p.route.merge().cloned();
        let merged_in_text = matches!(
            merge,
            Some(Merge::Aggregate { .. } | Merge::Grouped { .. } | Merge::CountDistinct { .. })
        );
        let shard_sql = merge
            .as_ref()
            .and_then(Merge::shard_sql)
            .unwrap_or(&p.sql)
            .to_string();
        let formats: &[i16] = if merged_in_text {
            &[]
        } else {
            &p.result_formats
        };
        let request = portal_request(&shard_sql, &p.param_types, &p.params, formats, true);
        let shards = if p.route.shards.is_empty() {
            vec![self.default_shard]
        } else {
            p.route.shards.clone()
        };
        if let Plan::Gather(g) = &p.route.plan {
            return self.multi_gathered(&p, &p.route, g).await;
        }
        if let Plan::InsertSelect(is) = &p.route.plan {
            let params = Some((&p.param_types[..], &p.params[..]));
            let ran = self
                .run_insert_select(&p.route, is, params, &p.result_formats)
                .await;
            return self.multi_answered(ran, p.described);
        }
        if let Plan::SplitInsert(rows) = &p.route.plan {
            let work = match super::portal::split_insert_work(
                &p.sql,
                rows,
                &p.route.shards,
                &p.param_types,
                &p.params,
                &p.result_formats,
            ) {
                Ok(w) => w,
                Err(e) => return self.multi_extended_fail(e),
            };
            let Some(results) = self.multi_requests(&work).await else {
                return;
            };
            let how = Shape::SplitInsert {
                row_shards: rows,
                shards: &p.route.shards,
            };
            return match shape(how, &results) {
                Ok(frames) => {
                    let out = extended_answer(&frames, p.described);
                    self.pending
                        .push_back(Pending::SyntheticFrame(out.freeze()));
                }
                Err(e) => self.multi_extended_fail(e),
            };
        }
        if matches!(p.route.plan, Plan::SplitCopy(_)) {
            return self.multi_extended_fail(PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "statement needs shards {} ({}) and cannot be split over them in the extended query protocol",
                    shards.iter().map(|&s| self.shard_name(s)).collect::<Vec<_>>().join(", "),
                    p.route.reason
                ),
            )
            .with_hint("insert the rows of each shard with a separate statement"));
        }
        let work: Vec<(usize, BytesMut)> = shards.iter().map(|&s| (s, request.clone())).collect();
        let Some(results) = self.multi_requests(&work).await else {
            return;
        };
        // Every plan named: one that combines answers another way must
        // never fall back to the first shard's answer.
        let how = match &p.route.plan {
            Plan::Scatter(m) => Shape::Merged(m, merged_in_text.then_some(&p.result_formats[..])),
            Plan::SumWrites(tag) => Shape::SummedWrite(tag),
            Plan::Single | Plan::Broadcast { .. } => Shape::First,
            Plan::Gather(_) | Plan::SplitInsert(_) | Plan::SplitCopy(_) | Plan::InsertSelect(_) => {
                return self.multi_extended_fail(self.router.several_shards_error(&p.route))
            }
        };
        let answer = shape(how, &results);
        match answer {
            Ok(frames) => {
                let rows = results
                    .iter()
                    .flat_map(|r| r.frames.iter())
                    .filter(|f| f[0] == be::DATA_ROW)
                    .count();
                if max_rows > 0 && rows > max_rows as usize {
                    return self.multi_extended_fail(
                        PgError::error(
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            format!("fetching {rows} rows in parts of {max_rows} (Execute with a row limit) is not supported in a transaction over several shards"),
                        )
                        .with_hint("fetch all rows at once (no fetch size), or keep the transaction on one shard"),
                    );
                }
                let out = extended_answer(&frames, p.described);
                self.pending
                    .push_back(Pending::SyntheticFrame(out.freeze()));
            }
            // A column the merge cannot combine exactly: PostgreSQL
            // answers from the gathered rows instead.
            Err(e) if e.code == sqlstate::FEATURE_NOT_SUPPORTED && p.route.merge().is_some() => {
                let analysis = self.router.analysis(&p.sql);
                match self.router.gather_instead(&analysis) {
                    Some(r) => match &r.plan {
                        Plan::Gather(g) => self.multi_gathered(&p, &r, g).await,
                        _ => self.multi_extended_fail(e),
                    },
                    None => self.multi_extended_fail(e),
                }
            }
            Err(e) => self.multi_extended_fail(e),
        }
    }

    /// A portal answered from gathered rows (tier 3, gathered.rs) inside
    /// the transaction.
    async fn multi_gathered(&mut self, p: &MultiPortal, route: &Route, g: &Gather) {
        let request =
            |sql: &str| portal_request(sql, &p.param_types, &p.params, &p.result_formats, true);
        let ran = self
            .gather_and_run(route, g, Some(&request))
            .await
            .map(|r| {
                r.map(|c| {
                    let mut frames = BytesMut::new();
                    for f in c.map(|c| c.frames).unwrap_or_default() {
                        frames.extend_from_slice(&f);
                    }
                    frames
                })
            });
        self.multi_answered(ran, p.described);
    }

    /// Queue the answer (or error, which fails the transaction) of a
    /// statement the proxy ran over several shards for a portal.
    fn multi_answered(
        &mut self,
        ran: Result<Result<BytesMut, BytesMut>, SessionEnd>,
        described: bool,
    ) {
        match ran {
            Ok(Ok(frames)) => {
                let out = extended_answer(&frames, described);
                self.pending
                    .push_back(Pending::SyntheticFrame(out.freeze()));
            }
            Ok(Err(frame)) => self.multi_extended_failed_with(frame),
            // Only the simple protocol's streaming meets the client.
            Err(_) => self.multi_extended_fail(PgError::error(
                sqlstate::INTERNAL_ERROR,
                "a statement over several shards in the extended protocol ended the session",
            )),
        }
    }

    /// Send each request (ending in Sync) to its shard's connection in the
    /// transaction, then read the answers. None when one failed (the
    /// client has the error and the transaction is aborted).
    async fn multi_requests(&mut self, work: &[(usize, BytesMut)]) -> Option<Vec<Collected>> {
        match self.multi_exchange(work).await {
            Ok(results) => Some(results),
            Err(f) => {
                self.multi_extended_failed_with(f);
                None
            }
        }
    }
}

/// PostgreSQL's answer to a statement in a failed transaction.
pub(super) fn in_failed_transaction() -> PgError {
    PgError::error(
        sqlstate::IN_FAILED_SQL_TRANSACTION,
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

/// COMMIT/END/ROLLBACK/ABORT: what a failed transaction still takes.
fn ends_transaction(sql: &str, analysis: &crate::router::Analysis) -> bool {
    matches!(control::tx_control(sql, analysis), Some(TxControl::End(_)))
}

//! Cross-shard statements in the extended query protocol: a Bind whose
//! statement (with its parameters) needs several shards becomes a "scatter
//! portal". The proxy answers the Bind itself, remembers whether the
//! client asked to Describe the portal, and at the portal's Execute runs
//! Parse/Bind/Describe/Execute/Sync on one connection per shard at once
//! (multi.rs `run_on_shards`), then merges the answers as for a simple
//! query (execute::scatter) and sends them in the client's result formats.
//!
//! What runs this way: merged SELECTs, UPDATE/DELETE on several shards
//! and statements on every shard (reference-table writes, DDL), the writes
//! all-or-nothing as in multi.rs. Only outside a transaction block, with
//! no single-shard statement earlier in the same batch (those run in a
//! transaction over several shards instead, multiext.rs). An Execute with a row limit
//! gets that many rows and PortalSuspended; the rest of the merged answer
//! waits in the proxy for the next Execute (until Sync).

use super::bind::Bind;
use super::*;
use crate::backend::conn::Collected;
use crate::execute::scatter::{shape, Shape};
use crate::router::{Analysis, Kind, Merge};

/// A portal bound to a statement that runs on several shards.
pub(super) struct ScatterPortal {
    /// The client's portal name.
    name: Vec<u8>,
    /// The client's SQL (describing) and the shards' (running).
    sql: Arc<str>,
    shard_sql: Arc<str>,
    /// Its plan is a scatter, a summed write or an atomic broadcast
    /// (`runs_as_portal`).
    route: Route,
    /// The client's Parse after the SQL: parameter type count and OIDs.
    param_types: Bytes,
    /// The client's Bind after the statement name, without the result
    /// formats: parameter formats and values.
    params: Bytes,
    result_formats: Vec<i16>,
    described: bool,
    /// The rows not fetched yet by an Execute with a row limit, and the
    /// frames after them (CommandComplete, notices).
    suspended: Option<(std::collections::VecDeque<Bytes>, Bytes)>,
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// A Bind routed to several shards (`route`): start a scatter portal,
    /// or refuse it.
    pub(super) async fn scatter_bind(
        &mut self,
        frame: BytesMut,
        route: Route,
        sql: Arc<str>,
    ) -> Result<(), SessionEnd> {
        let analysis = self.router.analysis(&sql);
        if !runs_as_portal(&route, &analysis) {
            let e = self.router.several_shards_error(&route);
            self.refuse(e, false);
            return Ok(());
        }
        if let Some(e) = self
            .pinned_error()
            .or_else(|| self.multi_shard_settings_error(sql.as_bytes()))
        {
            self.refuse(e, false);
            return Ok(());
        }
        if self.server.is_none()
            && self.deferred_begin.is_some()
            && self.multi.is_none()
            && self.pool_mode == PoolMode::Transaction
        {
            // The first statement of a transaction: it spans shards from
            // the start (multiext.rs).
            let held = std::mem::take(&mut self.held);
            self.replica.batch = None;
            self.replica.batch_mixed = false;
            self.enter_multi_tx();
            for f in held {
                self.multi_extended(f).await?;
            }
            return self.multi_extended(frame).await;
        }
        if self.server.is_some()
            || self.deferred_begin.is_some()
            || self.tx_status != TxStatus::Idle
            || self.multi.is_some()
            || self.replica.batch.is_some()
            || self.replica.batch_mixed
        {
            let names: Vec<&str> = route.shards.iter().map(|&i| self.shard_name(i)).collect();
            let e = PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "statement needs shards {} ({}); in the extended query protocol a multi-shard statement runs only outside a transaction block, in a batch without other statements before it",
                    names.join(", "),
                    route.reason
                ),
            )
            .with_hint("run it outside the transaction (or send Sync before it), or as a simple query");
            self.refuse(e, false);
            return Ok(());
        }
        let body = protocol::body(&frame);
        let Ok(bind) = Bind::decode(body) else {
            return Err(self.client_protocol_error("malformed Bind message".into()));
        };
        let stmt = bind.statement;
        let Some(param_types) = self.statement_param_types(stmt) else {
            let e = PgError::error(
                sqlstate::INVALID_SQL_STATEMENT_NAME,
                format!("prepared statement \"{stmt}\" does not exist"),
            );
            self.refuse(e, false);
            return Ok(());
        };
        // The frames held before this Bind: Parse and Describe of
        // statements, answered here since no server runs this batch.
        for held in std::mem::take(&mut self.held) {
            let body = protocol::body(&held);
            match (held[0], body.first()) {
                (fe::PARSE, _) => self
                    .pending
                    .push_back(Pending::Synthetic(be::PARSE_COMPLETE)),
                (fe::DESCRIBE, Some(b'S')) => {
                    let Ok((name, _)) = split_name(&body[1..], "Describe") else {
                        return Err(self.client_protocol_error("malformed Describe".into()));
                    };
                    let name = name.to_string();
                    if !self.describe_statement(&name, route.shards[0]).await {
                        return Ok(());
                    }
                }
                (fe::CLOSE, Some(b'S')) if body.len() > 2 => self.on_close(held).await?,
                _ => {
                    self.refuse(
                        PgError::error(
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            "a multi-shard statement cannot share an extended-protocol batch with this message",
                        )
                        .with_hint("send Sync before the multi-shard statement"),
                        false,
                    );
                    return Ok(());
                }
            }
        }
        let shard_sql: Arc<str> = match route.merge().and_then(Merge::shard_sql) {
            Some(s) => s.into(),
            None => sql.clone(),
        };
        self.portal = Some(ScatterPortal {
            name: bind.portal.to_vec(),
            sql,
            shard_sql,
            route,
            param_types,
            params: Bytes::copy_from_slice(bind.params_part),
            result_formats: bind.result_formats(),
            described: false,
            suspended: None,
        });
        self.pending
            .push_back(Pending::Synthetic(be::BIND_COMPLETE));
        self.emit_synthetic();
        Ok(())
    }

    /// A client message while a scatter portal is open. Returns true when
    /// it was about the portal (and is handled); otherwise the portal is
    /// closed (answering a Describe of it) and the caller goes on as usual.
    pub(super) async fn portal_frame(&mut self, frame: &BytesMut) -> Result<bool, SessionEnd> {
        let body = protocol::body(frame);
        let Some(portal) = self.portal.as_mut() else {
            return Ok(false);
        };
        let names_portal = |body: &[u8]| {
            body.first() == Some(&b'P')
                && body.get(1..) == Some(&[portal.name.as_slice(), b"\0"].concat()[..])
        };
        match frame[0] {
            fe::FLUSH => return Ok(true),
            fe::DESCRIBE if names_portal(body) => {
                portal.described = true;
                return Ok(true);
            }
            fe::DESCRIBE if body.first() == Some(&b'S') => {
                // tokio-postgres's unnamed statements: Parse, Bind,
                // Describe of the statement, Execute.
                let Ok((name, _)) = split_name(&body[1..], "Describe") else {
                    return Err(self.client_protocol_error("malformed Describe".into()));
                };
                let (name, shard) = (name.to_string(), portal.route.shards[0]);
                if !self.describe_statement(&name, shard).await {
                    self.portal = None;
                }
                return Ok(true);
            }
            fe::CLOSE if names_portal(body) => {
                self.portal = None;
                self.pending
                    .push_back(Pending::Synthetic(be::CLOSE_COMPLETE));
                self.emit_synthetic();
                return Ok(true);
            }
            fe::EXECUTE
                if body.len() == portal.name.len() + 5
                    && body[..portal.name.len()] == portal.name[..]
                    && body[portal.name.len()] == 0 =>
            {
                let max_rows =
                    i32::from_be_bytes(body[portal.name.len() + 1..].try_into().unwrap());
                let mut portal = self.portal.take().expect("open");
                if portal.suspended.is_none() {
                    match self.execute_portal(frame, &portal).await {
                        Some(answer) => {
                            portal.suspended = Some(split_rows(&answer, portal.described))
                        }
                        None => return Ok(true),
                    }
                }
                // Rows up to the limit (0: all), then PortalSuspended or the
                // end of the answer.
                let (rows, tail) = portal.suspended.as_mut().expect("run");
                let mut out = BytesMut::new();
                if portal.described {
                    // Answered with the first Execute only.
                    portal.described = false;
                    if rows.front().is_some_and(|f| f[0] != be::DATA_ROW) {
                        out.extend_from_slice(&rows.pop_front().expect("front"));
                    }
                }
                let take = if max_rows > 0 {
                    (max_rows as usize).min(rows.len())
                } else {
                    rows.len()
                };
                for f in rows.drain(..take) {
                    out.extend_from_slice(&f);
                }
                if rows.is_empty() {
                    out.extend_from_slice(tail);
                } else {
                    out.extend_from_slice(&protocol::empty_frame(be::PORTAL_SUSPENDED));
                    self.portal = Some(portal);
                }
                self.pending
                    .push_back(Pending::SyntheticFrame(out.freeze()));
                self.emit_synthetic();
                return Ok(true);
            }
            _ => {}
        }
        let portal = self.portal.take().expect("open");
        if portal.described {
            self.describe_portal(&portal).await;
        }
        Ok(false)
    }

    /// Run the portal on its shards: the client's answer (see
    /// `extended_answer`), or None when the client got an error.
    async fn execute_portal(
        &mut self,
        frame: &BytesMut,
        portal: &ScatterPortal,
    ) -> Option<BytesMut> {
        let timing = self.timing_for(frame, true);
        let merge = portal.route.merge().cloned();
        // Aggregates and groups are merged in text and written back in the
        // client's formats; passed-through rows come in them already.
        let merged_in_text = matches!(
            merge,
            Some(Merge::Aggregate { .. } | Merge::Grouped { .. } | Merge::CountDistinct { .. })
        );
        let shard_formats: &[i16] = if merged_in_text {
            &[]
        } else {
            &portal.result_formats
        };
        let request = portal_request(
            &portal.shard_sql,
            &portal.param_types,
            &portal.params,
            shard_formats,
            true,
        );
        let work: Vec<(usize, BytesMut)> = portal
            .route
            .shards
            .iter()
            .map(|&s| (s, request.clone()))
            .collect();
        if let Plan::Gather(g) = &portal.route.plan {
            let answer = self.portal_gathered(portal, &portal.route, g).await;
            return self.portal_answered(answer, portal, timing, RouteKind::Gather);
        }
        if let Plan::InsertSelect(is) = &portal.route.plan {
            let params = Some((&portal.param_types[..], &portal.params[..]));
            let answer = match self
                .run_insert_select(&portal.route, is, params, &portal.result_formats)
                .await
            {
                Ok(a) => a,
                // Only the simple protocol's streaming meets the client.
                Err(_) => Err(BytesMut::new()),
            };
            return self.portal_answered(answer, portal, timing, RouteKind::Scatter);
        }
        if let Plan::SplitInsert(rows) = &portal.route.plan {
            let answer = match split_insert_work(
                &portal.sql,
                rows,
                &portal.route.shards,
                &portal.param_types,
                &portal.params,
                &portal.result_formats,
            ) {
                Ok(work) => match self.run_on_shards(&work, true).await {
                    Ok(results) => {
                        let how = Shape::SplitInsert {
                            row_shards: rows,
                            shards: &portal.route.shards,
                        };
                        shape(how, &results).map_err(|e| {
                            let mut out = BytesMut::new();
                            e.encode(&mut out);
                            out
                        })
                    }
                    Err(frame) => Err(frame),
                },
                Err(e) => {
                    let mut out = BytesMut::new();
                    e.encode(&mut out);
                    Err(out)
                }
            };
            return self.portal_answered(answer, portal, timing, RouteKind::Scatter);
        }
        let atomic = merge.is_none();
        // A statement on every shard may be DDL that changes a table's
        // columns (router::columns: cleared before and after it runs).
        if portal.route.is_broadcast() {
            self.schema_may_change();
        }
        let result = self.run_on_shards(&work, atomic).await;
        if portal.route.is_broadcast() {
            self.schema_may_change();
        }
        let answer = match result {
            Err(frame) => Err(frame),
            Ok(results) => {
                let how = match &portal.route.plan {
                    Plan::Scatter(m) => {
                        Shape::Merged(m, merged_in_text.then_some(&portal.result_formats[..]))
                    }
                    Plan::SumWrites(tag) => Shape::SummedWrite(tag),
                    Plan::Single | Plan::Broadcast { .. } => Shape::First,
                    // Run above (Gather) or never as a portal.
                    Plan::Gather(_)
                    | Plan::SplitInsert(_)
                    | Plan::SplitCopy(_)
                    | Plan::InsertSelect(_) => {
                        let mut out = BytesMut::new();
                        self.router
                            .several_shards_error(&portal.route)
                            .encode(&mut out);
                        return self.portal_answered(Err(out), portal, timing, RouteKind::Scatter);
                    }
                };
                match shape(how, &results) {
                    Ok(frames) => Ok(frames),
                    // A column the merge cannot combine exactly:
                    // PostgreSQL answers from the gathered rows instead.
                    Err(e) => match self
                        .router
                        .gather_instead(&self.router.analysis(&portal.sql))
                    {
                        Some(r) if e.code == sqlstate::FEATURE_NOT_SUPPORTED => {
                            let Plan::Gather(g) = &r.plan else {
                                unreachable!("gather_instead gives gathers")
                            };
                            let answer = self.portal_gathered(portal, &r, g).await;
                            return self.portal_answered(answer, portal, timing, RouteKind::Gather);
                        }
                        _ => {
                            let mut out = BytesMut::new();
                            e.encode(&mut out);
                            Err(out)
                        }
                    },
                }
            }
        };
        let kind = if portal.route.is_broadcast() {
            RouteKind::Broadcast
        } else {
            RouteKind::Scatter
        };
        self.portal_answered(answer, portal, timing, kind)
    }

    /// Run a tier-3 portal: its rows gathered, its statement run on the
    /// merge connection with the client's parameters and formats.
    async fn portal_gathered(
        &mut self,
        portal: &ScatterPortal,
        route: &Route,
        g: &crate::router::gather::Gather,
    ) -> Result<BytesMut, BytesMut> {
        let request = |sql: &str| {
            portal_request(
                sql,
                &portal.param_types,
                &portal.params,
                &portal.result_formats,
                true,
            )
        };
        match self.gather_and_run(route, g, Some(&request)).await {
            Ok(ran) => ran.map(|c| {
                let mut out = BytesMut::new();
                for f in c.map(|c| c.frames).unwrap_or_default() {
                    out.extend_from_slice(&f);
                }
                out
            }),
            // Only the simple protocol's streaming reaches the client.
            Err(_) => Err(BytesMut::new()),
        }
    }

    /// Record a portal's statement and queue its answer (or error).
    fn portal_answered(
        &mut self,
        answer: Result<BytesMut, BytesMut>,
        portal: &ScatterPortal,
        timing: Option<Timing>,
        kind: RouteKind,
    ) -> Option<BytesMut> {
        let failed = answer.is_err();
        if let Some(t) = timing {
            self.record_statement(&portal.route.shards, kind, t, failed);
        }
        match answer {
            Ok(frames) => Some(extended_answer(&frames, portal.described)),
            Err(error) => {
                self.note_errors(&error);
                self.pending
                    .push_back(Pending::SyntheticFrame(error.freeze()));
                self.skip_until_sync = true;
                self.emit_synthetic();
                None
            }
        }
    }

    /// Answer a Describe of a portal that was not executed: the first
    /// shard describes the client's statement with the client's formats.
    async fn describe_portal(&mut self, portal: &ScatterPortal) {
        let request = portal_request(
            &portal.sql,
            &portal.param_types,
            &portal.params,
            &portal.result_formats,
            false,
        );
        let shard = portal.route.shards[0];
        self.describe_on(shard, request, None).await;
    }

    /// Answer a Describe of statement `name` (ParameterDescription, then
    /// RowDescription or NoData) from `shard`. False when it failed (the
    /// client has the error and the batch is skipped).
    async fn describe_statement(&mut self, name: &str, shard: usize) -> bool {
        let sql = if name.is_empty() {
            self.unnamed_sql.clone()
        } else {
            self.statements.get(name).map(|s| s.sql.clone())
        };
        let (Some(sql), Some(types)) = (sql, self.statement_param_types(name)) else {
            self.refuse(
                PgError::error(
                    sqlstate::INVALID_SQL_STATEMENT_NAME,
                    format!("prepared statement \"{name}\" does not exist"),
                ),
                false,
            );
            return false;
        };
        self.describe_on(shard, describe_request(&sql, &types), Some(name))
            .await
    }

    /// Note the ParameterDescription in `results` (a shard's answer to a
    /// Describe of the client's statement `name`) as the statement's
    /// parameter types.
    pub(super) fn note_description(&self, name: &str, results: &[Collected]) {
        let Some(types) = self.statement_types(name) else {
            return;
        };
        if let Some(f) = results
            .iter()
            .flat_map(|r| r.frames.iter())
            .find(|f| f[0] == be::PARAMETER_DESCRIPTION)
        {
            types.describe(f);
        }
    }

    /// Run a describing request on `shard` and pass its descriptions on;
    /// for a Describe of the client's statement `statement`, note its
    /// parameter types.
    async fn describe_on(
        &mut self,
        shard: usize,
        request: BytesMut,
        statement: Option<&str>,
    ) -> bool {
        match self.run_on_shards(&[(shard, request)], false).await {
            Ok(results) => {
                if let Some(name) = statement {
                    self.note_description(name, &results);
                }
                self.pending
                    .push_back(Pending::SyntheticFrame(descriptions(&results).freeze()));
                self.emit_synthetic();
                true
            }
            Err(error) => {
                self.note_errors(&error);
                self.pending
                    .push_back(Pending::SyntheticFrame(error.freeze()));
                self.skip_until_sync = true;
                self.emit_synthetic();
                false
            }
        }
    }

    /// The parameter types (count and OIDs, as in Parse) of a statement.
    pub(super) fn statement_param_types(&self, name: &str) -> Option<Bytes> {
        let parse = if name.is_empty() {
            self.unnamed.as_ref().map(|(_, f)| f.clone())?
        } else {
            self.statements.get(name)?.parse_frame.clone()
        };
        let body = protocol::body(&parse);
        let (_, rest) = split_name(body, "Parse").ok()?;
        let sql_end = rest.iter().position(|b| *b == 0)?;
        Some(Bytes::copy_from_slice(&rest[sql_end + 1..]))
    }
}

/// Whether a multi-shard statement runs as a portal in the extended
/// protocol: merged reads, summed writes and broadcasts that run in a
/// transaction, alone in their string.
fn runs_as_portal(route: &Route, analysis: &Analysis) -> bool {
    match route.plan {
        Plan::Scatter(_)
        | Plan::SumWrites(_)
        | Plan::Gather(_)
        | Plan::SplitInsert(_)
        | Plan::InsertSelect(_) => true,
        Plan::Broadcast { atomic } => {
            atomic
                && analysis
                    .statements
                    .iter()
                    .all(|s| !matches!(s.kind, Kind::Copy | Kind::Transaction))
        }
        Plan::Single | Plan::SplitCopy(_) => false,
    }
}

/// Each shard's request (as `portal_request`) for its rows of a multi-row
/// INSERT with parameters: its own INSERT, with the parameters its rows
/// use, renumbered.
pub(super) fn split_insert_work(
    sql: &str,
    row_shards: &[usize],
    shards: &[usize],
    param_types: &[u8],
    params: &[u8],
    result_formats: &[i16],
) -> Result<Vec<(usize, BytesMut)>, PgError> {
    let parts =
        crate::router::rewrite::split_insert_params(sql, row_shards, shards).map_err(|m| {
            PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("cannot split this INSERT across shards: {m}"),
            )
            .with_hint("insert the rows of each shard with a separate statement")
        })?;
    parts
        .iter()
        .map(|p| {
            let values = super::bind::pick_params(params, &p.params).ok_or_else(|| {
                PgError::error(
                    sqlstate::PROTOCOL_VIOLATION,
                    "Bind has fewer parameters than the INSERT uses",
                )
            })?;
            let types = super::bind::pick_types(param_types, &p.params);
            Ok((
                p.shard,
                portal_request(&p.sql, &types, &values, result_formats, true),
            ))
        })
        .collect()
}

pub(super) fn parse_frame(out: &mut BytesMut, sql: &str, param_types: &[u8]) {
    let at = protocol::begin_frame(out, fe::PARSE);
    out.extend_from_slice(b"\0");
    out.extend_from_slice(sql.as_bytes());
    out.extend_from_slice(b"\0");
    out.extend_from_slice(param_types);
    protocol::finish_frame(out, at);
}

/// Parse of the unnamed statement, its Describe and Sync.
pub(super) fn describe_request(sql: &str, param_types: &[u8]) -> BytesMut {
    let mut request = BytesMut::new();
    parse_frame(&mut request, sql, param_types);
    let at = protocol::begin_frame(&mut request, fe::DESCRIBE);
    request.extend_from_slice(b"S\0");
    protocol::finish_frame(&mut request, at);
    sync_frame(&mut request);
    request
}

/// The descriptions (ParameterDescription, RowDescription or NoData) in
/// the shards' answers to a describing request.
pub(super) fn descriptions(results: &[Collected]) -> BytesMut {
    let mut out = BytesMut::new();
    for f in results.iter().flat_map(|r| r.frames.iter()) {
        if matches!(
            f[0],
            be::PARAMETER_DESCRIPTION | be::ROW_DESCRIPTION | be::NO_DATA
        ) {
            out.extend_from_slice(f);
        }
    }
    out
}

pub(super) fn sync_frame(out: &mut BytesMut) {
    let at = protocol::begin_frame(out, fe::SYNC);
    protocol::finish_frame(out, at);
}

/// Parse, Bind and Describe of the unnamed portal, Execute (when
/// `execute`) and Sync: one shard's part of a scatter portal.
pub(super) fn portal_request(
    sql: &str,
    param_types: &[u8],
    params: &[u8],
    result_formats: &[i16],
    execute: bool,
) -> BytesMut {
    let mut out = BytesMut::with_capacity(64 + sql.len() + params.len());
    portal_frames(&mut out, sql, param_types, params, result_formats, execute);
    sync_frame(&mut out);
    out
}

/// `portal_request` without its Sync, for several statements under one.
pub(super) fn portal_frames(
    out: &mut BytesMut,
    sql: &str,
    param_types: &[u8],
    params: &[u8],
    result_formats: &[i16],
    execute: bool,
) {
    parse_frame(out, sql, param_types);
    let at = protocol::begin_frame(out, fe::BIND);
    out.extend_from_slice(b"\0\0");
    out.extend_from_slice(params);
    out.extend_from_slice(&(result_formats.len() as i16).to_be_bytes());
    for f in result_formats {
        out.extend_from_slice(&f.to_be_bytes());
    }
    protocol::finish_frame(out, at);
    let at = protocol::begin_frame(out, fe::DESCRIBE);
    out.extend_from_slice(b"P\0");
    protocol::finish_frame(out, at);
    if execute {
        let at = protocol::begin_frame(out, fe::EXECUTE);
        out.extend_from_slice(b"\0");
        out.extend_from_slice(&0i32.to_be_bytes());
        protocol::finish_frame(out, at);
    }
}

/// An Execute's answer cut for fetching in parts: the description (when
/// `described`) and the DataRows, one by one, then the rest (CommandComplete,
/// notices) as one piece.
fn split_rows(answer: &[u8], described: bool) -> (std::collections::VecDeque<Bytes>, Bytes) {
    let mut rows = std::collections::VecDeque::new();
    let mut tail = BytesMut::new();
    for (i, f) in protocol::frames(answer).enumerate() {
        if (i == 0 && described) || f[0] == be::DATA_ROW {
            rows.push_back(Bytes::copy_from_slice(f));
        } else {
            tail.extend_from_slice(f);
        }
    }
    (rows, tail.freeze())
}

/// The client's answer to Execute (after a Describe of the portal when
/// `described`): the merged frames without the shards' own Parse/Bind
/// answers, the description first only if it was asked for.
pub(super) fn extended_answer(frames: &[u8], described: bool) -> BytesMut {
    let mut out = BytesMut::with_capacity(frames.len());
    let mut description: Option<&[u8]> = None;
    let mut rest = BytesMut::new();
    for f in protocol::frames(frames) {
        match f[0] {
            be::PARSE_COMPLETE | be::BIND_COMPLETE | be::NO_DATA => {}
            be::ROW_DESCRIPTION => {
                description.get_or_insert(f);
            }
            _ => rest.extend_from_slice(f),
        }
    }
    if described {
        match description {
            Some(d) => out.extend_from_slice(d),
            None => out.extend_from_slice(&protocol::empty_frame(be::NO_DATA)),
        }
    }
    out.extend_from_slice(&rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_keeps_the_description_only_when_asked() {
        let mut frames = BytesMut::new();
        frames.extend_from_slice(&protocol::empty_frame(be::PARSE_COMPLETE));
        protocol::row_description_text(&mut frames, &["n"]);
        protocol::data_row_text(&mut frames, &[Some("1")]);
        protocol::command_complete(&mut frames, "SELECT 1");
        let with = extended_answer(&frames, true);
        assert_eq!(with[0], be::ROW_DESCRIPTION);
        let without = extended_answer(&frames, false);
        assert_eq!(without[0], be::DATA_ROW);
        let mut write = BytesMut::new();
        protocol::command_complete(&mut write, "UPDATE 3");
        assert_eq!(extended_answer(&write, true)[0], be::NO_DATA);
    }
}

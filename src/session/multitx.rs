//! Transactions over several shards (simple query protocol, transaction
//! pooling): once a transaction needs a second shard, or a multi-shard
//! statement (DDL, a split INSERT, a COPY split by key), the session holds
//! one connection per shard it touched, each in a transaction begun with
//! the client's BEGIN at first use. Each statement runs as a proxy-sent
//! query on its shards' connections and the client gets the answer as one
//! server would give it. COMMIT commits every shard in order, ROLLBACK rolls
//! back every shard.
//!
//! COMMIT of a transaction open on several shards is a two-phase commit
//! (execute/twophase.rs): all shards commit or none.
//!
//! Extended-protocol messages in such a transaction are multiext.rs.

use super::multi::{
    failed_error, lost_error, overflow_error, shaped, shard_error, End, CONTROL_TIMEOUT,
    MAX_COLLECT,
};
use super::*;
use crate::backend::conn::{Collected, ServerConn};
use crate::execute::fanout::{self, Exchange};
use crate::execute::scatter::{shape, Shape};
use crate::router::Kind;

/// The connections of a transaction over several shards.
pub(super) struct MultiTx {
    /// By shard index.
    pub(super) conns: Vec<Option<PooledConn>>,
    /// The client's BEGIN, sent to each shard at its first use.
    begin: String,
    /// A statement failed: everything but ROLLBACK/COMMIT is refused.
    pub(super) failed: bool,
    /// The implicit transaction of one extended batch (multiext.rs): the
    /// client's Sync commits it.
    pub(super) implicit: bool,
    /// A statement of the transaction was DDL (see `multi_finish`).
    pub(super) ran_ddl: bool,
    /// By shard index: the shard began its part of the transaction (its
    /// connection may have been lost since, with its part).
    joined: Vec<bool>,
    /// The savepoints set in the transaction over several shards, oldest
    /// first (names as PostgreSQL reads them): set on every shard, and on
    /// a shard that joins later right after its BEGIN, so that ROLLBACK TO
    /// and RELEASE mean the same on all of them.
    savepoints: Vec<String>,
}

const OUTCOME: &str = "; the transaction is aborted on every shard";

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Whether a statement routed to `route` inside a transaction should
    /// turn it into a multi-shard transaction.
    pub(super) fn wants_multi_tx(&self, route: &Route) -> bool {
        let in_tx = self.deferred_begin.is_some()
            || (self.server.is_some() && self.tx_status == TxStatus::InBlock);
        let other_shard = match (&self.server, route.shards.as_slice()) {
            (_, s) if s.len() > 1 => true,
            (Some(_), [one]) => *one != self.server_shard,
            _ => false,
        };
        in_tx
            && other_shard
            && self.pool_mode == PoolMode::Transaction
            && self.pending.is_empty()
            && self.server_out.is_empty()
            && !self.copy_in
            && !self.copy_open
            && self.held.is_empty()
    }

    /// Follow a savepoint statement sent to the transaction's one server.
    pub(super) fn note_savepoint(&mut self, op: control::SavepointOp) {
        match op {
            control::SavepointOp::Set(n) => self.tx_savepoints.push(n),
            control::SavepointOp::Release(n) => {
                if let Some(at) = self.tx_savepoints.iter().rposition(|s| *s == n) {
                    self.tx_savepoints.truncate(at);
                }
            }
            control::SavepointOp::RollbackTo(n) => {
                if let Some(at) = self.tx_savepoints.iter().rposition(|s| *s == n) {
                    self.tx_savepoints.truncate(at + 1);
                }
            }
        }
    }

    /// Turn the current transaction into a multi-shard one.
    pub(super) fn enter_multi_tx(&mut self) {
        let mut conns: Vec<Option<PooledConn>> = (0..self.pools.len()).map(|_| None).collect();
        let begin = match self.deferred_begin.take() {
            Some(frame) => {
                let body = protocol::body(&frame);
                String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(body)).into_owned()
            }
            None => "BEGIN".to_string(),
        };
        let mut joined = vec![false; conns.len()];
        if let Some(conn) = self.server.take() {
            // Already in the transaction.
            self.cancel.clear();
            conns[self.server_shard] = Some(conn);
            joined[self.server_shard] = true;
        }
        // A deferred transaction that failed stays failed (the session
        // routes nothing of it, see failed_tx_gate; this is for safety).
        let failed = std::mem::take(&mut self.deferred_failed);
        self.tx_status = if failed {
            TxStatus::Failed
        } else {
            TxStatus::InBlock
        };
        self.multi = Some(MultiTx {
            conns,
            begin,
            failed,
            implicit: false,
            ran_ddl: false,
            joined,
            savepoints: std::mem::take(&mut self.tx_savepoints),
        });
    }

    /// An extended-protocol message in a multi-shard transaction.
    pub(super) fn multi_refuse_extended(&mut self) {
        if let Some(m) = self.multi.as_mut() {
            m.failed = true;
        }
        self.tx_status = TxStatus::Failed;
        if self.skip_until_sync {
            return;
        }
        self.refuse(
            PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "the extended query protocol is not supported in a transaction over several shards",
            )
            .with_hint("use simple queries in such transactions"),
            false,
        );
    }

    /// A simple query in a multi-shard transaction.
    pub(super) async fn multi_query(&mut self, sql: &str) -> Result<(), SessionEnd> {
        let analysis = self.router.analysis(sql);
        let failed = self.multi.as_ref().is_some_and(|m| m.failed);
        match control::tx_control(sql, &analysis) {
            Some(TxControl::Begin) if !failed => {
                let mut out = BytesMut::new();
                crate::protocol::command_complete(&mut out, "BEGIN");
                self.answer(out);
                return Ok(());
            }
            Some(TxControl::End(tag)) => {
                self.multi_end(tag == "COMMIT").await;
                return Ok(());
            }
            _ => {}
        }
        if let Some(op) = control::savepoint_op(sql, &analysis) {
            let mut request = BytesMut::new();
            crate::protocol::query_frame(&mut request, sql);
            match self.multi_savepoint(&op, request).await {
                Ok(out) => self.answer(out),
                Err(frame) => self.multi_failed_with(frame),
            }
            return Ok(());
        }
        if failed {
            // As PostgreSQL: everything but COMMIT/ROLLBACK (BEGIN too),
            // except ROLLBACK TO SAVEPOINT, which PostgreSQL allows and
            // the shards cannot do together: refused as unsupported.
            let e = match control::tx_control(sql, &analysis) {
                Some(TxControl::RollbackToSavepoint) => PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "ROLLBACK TO SAVEPOINT is not supported in a transaction over several shards",
                )
                .with_hint("roll back the whole transaction and run it again"),
                _ => super::multiext::in_failed_transaction(),
            };
            self.multi_fail(e);
            return Ok(());
        }
        if let Err(e) = self.learn_columns(&analysis).await {
            self.multi_fail(e);
            return Ok(());
        }
        if analysis
            .statements
            .iter()
            .any(|s| s.kind == Kind::Transaction)
        {
            self.multi_fail(PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "savepoints and transaction control inside a query string are not supported in a transaction over several shards",
            ));
            return Ok(());
        }
        if let Some(e) = self.multi_shard_settings_error(sql.as_bytes()) {
            self.multi_fail(e);
            return Ok(());
        }
        if analysis.statements.iter().any(|s| s.kind == Kind::Ddl) {
            if let Some(m) = self.multi.as_mut() {
                m.ran_ddl = true;
            }
            // Cleared again at COMMIT (router::columns).
            self.schema_may_change();
        }
        let held: Vec<usize> = self.multi_shards();
        if control::is_neutral(&analysis) {
            // SET and the like: on every shard the transaction holds.
            let work: Vec<(usize, String)> = held.iter().map(|&s| (s, sql.to_string())).collect();
            return {
                self.multi_run(work, Shape::First).await;
                Ok(())
            };
        }
        let route = match self.router.route(sql, &[], &self.hints) {
            Ok(r) => r,
            Err(e) => {
                self.multi_fail(e);
                return Ok(());
            }
        };
        let work = |sql: &str| -> Vec<(usize, String)> {
            route.shards.iter().map(|&s| (s, sql.to_string())).collect()
        };
        match &route.plan {
            Plan::SplitCopy(split) => return self.multi_copy(sql, &route, split).await,
            Plan::SplitInsert(rows) => {
                match crate::router::rewrite::split_insert(sql, rows, &route.shards) {
                    Ok(work) => {
                        let how = Shape::SplitInsert {
                            row_shards: rows,
                            shards: &route.shards,
                        };
                        self.multi_run(work, how).await;
                    }
                    Err(m) => self.multi_fail(PgError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!("cannot split this INSERT across shards: {m}"),
                    )),
                }
            }
            // A merged SELECT may run a rewritten statement on the shards
            // (LIMIT offset+limit, no OFFSET).
            Plan::Scatter(merge) => {
                let work = work(merge.shard_sql().unwrap_or(sql));
                if let Some(e) = self.multi_run(work, Shape::Merged(merge, None)).await {
                    // A column the merge cannot combine exactly: PostgreSQL
                    // answers from the gathered rows instead.
                    match self.router.gather_instead(&analysis) {
                        Some(r) if e.code == sqlstate::FEATURE_NOT_SUPPORTED => {
                            if let Plan::Gather(g) = &r.plan {
                                match self.gather_and_run(&r, g, None).await? {
                                    Ok(_) => self.answer(BytesMut::new()),
                                    Err(frame) => self.multi_failed_with(frame),
                                }
                            }
                        }
                        _ => self.multi_fail(e),
                    }
                }
            }
            Plan::SumWrites(tag) => {
                self.multi_run(work(sql), Shape::SummedWrite(tag)).await;
            }
            Plan::InsertSelect(is) => match self.run_insert_select(&route, is, None, &[]).await? {
                Ok(out) => self.answer(out),
                Err(frame) => self.multi_failed_with(frame),
            },
            Plan::Gather(g) => match self.gather_and_run(&route, g, None).await? {
                Ok(_) => self.answer(BytesMut::new()),
                Err(frame) => self.multi_failed_with(frame),
            },
            Plan::Broadcast { .. } | Plan::Single => {
                self.multi_run(work(sql), Shape::First).await;
            }
        }
        Ok(())
    }

    fn multi_shards(&self) -> Vec<usize> {
        self.multi
            .as_ref()
            .map(|m| {
                m.conns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.is_some())
                    .map(|(i, _)| i)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// An error that aborts the transaction.
    fn multi_fail(&mut self, e: PgError) {
        let mut out = BytesMut::new();
        e.encode(&mut out);
        self.multi_failed_with(out);
    }

    fn multi_failed_with(&mut self, frame: BytesMut) {
        if let Some(m) = self.multi.as_mut() {
            m.failed = true;
        }
        self.tx_status = TxStatus::Failed;
        self.answer(frame);
    }

    /// A savepoint statement (`request`: its Query, or its extended
    /// frames ending in Sync) on every shard the transaction holds. ROLLBACK
    /// TO revives a failed transaction, as in PostgreSQL, unless a shard's
    /// connection (and its part of the transaction) was lost. Ok: the
    /// first shard's answer; Err: the ErrorResponse (the caller fails the
    /// transaction).
    pub(super) async fn multi_savepoint(
        &mut self,
        op: &control::SavepointOp,
        request: BytesMut,
    ) -> Result<BytesMut, BytesMut> {
        let encode = |e: PgError| {
            let mut out = BytesMut::new();
            e.encode(&mut out);
            out
        };
        let Some(m) = self.multi.as_ref() else {
            return Err(BytesMut::new());
        };
        let rollback = matches!(op, control::SavepointOp::RollbackTo(_));
        if m.failed && !rollback {
            return Err(encode(super::multiext::in_failed_transaction()));
        }
        if rollback {
            if let Some(lost) = (0..m.conns.len()).find(|&s| m.joined[s] && m.conns[s].is_none()) {
                return Err(encode(
                    PgError::error(
                        sqlstate::IN_FAILED_SQL_TRANSACTION,
                        format!(
                            "cannot roll back to savepoint \"{}\": shard \"{}\" lost its part of the transaction",
                            op.name(),
                            self.shard_name(lost)
                        ),
                    )
                    .with_hint("roll back the whole transaction"),
                ));
            }
        }
        let held = self.multi_shards();
        let work: Vec<(usize, BytesMut)> = held.iter().map(|&s| (s, request.clone())).collect();
        let results = self.multi_exchange(&work).await?;
        let Some(m) = self.multi.as_mut() else {
            return Err(BytesMut::new());
        };
        match op {
            control::SavepointOp::Set(n) => m.savepoints.push(n.clone()),
            control::SavepointOp::Release(n) | control::SavepointOp::RollbackTo(n) => {
                if let Some(at) = m.savepoints.iter().rposition(|s| s == n) {
                    // RELEASE drops it too; ROLLBACK TO keeps it.
                    m.savepoints.truncate(if rollback { at + 1 } else { at });
                }
            }
        }
        if rollback {
            m.failed = false;
            self.tx_status = TxStatus::InBlock;
        }
        Ok(shaped(Shape::First, &results[..1.min(results.len())]))
    }

    /// The connection of `shard` in the transaction, checked out and begun
    /// at first use.
    pub(super) async fn multi_conn(&mut self, shard: usize) -> Result<(), BytesMut> {
        let Some(m) = self.multi.as_ref() else {
            return Err(BytesMut::new());
        };
        if m.conns[shard].is_some() {
            return Ok(());
        }
        // The savepoints set before it joined: ROLLBACK TO one of them then
        // undoes what this shard did since, as on the others.
        let mut begin = m.begin.clone();
        for sp in &m.savepoints {
            begin.push_str("; SAVEPOINT ");
            begin.push_str(&control::quoted_savepoint(sp));
        }
        let mut conns = self.checkout_all(&[shard]).await?;
        let mut conn = conns.pop().expect("one connection");
        let name = self.shard_name(shard).to_string();
        match conn.run_collect(&begin, CONTROL_TIMEOUT, 64 * 1024).await {
            Ok(c) if c.error.is_none() && c.status == TxStatus::InBlock => {
                if let Some(m) = self.multi.as_mut() {
                    m.conns[shard] = Some(conn);
                    m.joined[shard] = true;
                }
                Ok(())
            }
            Ok(c) => {
                if c.status == TxStatus::Idle {
                    conn.release();
                }
                Err(shard_error(c.error, &name, OUTCOME))
            }
            Err(e) => Err(lost_error(&e, &name, OUTCOME)),
        }
    }

    /// Send each request to its shard's connection in the transaction
    /// (checked out and begun at first use) and read every answer, the
    /// shards working in parallel (execute/fanout.rs). Err is the client's
    /// ErrorResponse when any shard failed; a lost connection is dropped.
    pub(super) async fn multi_exchange(
        &mut self,
        work: &[(usize, BytesMut)],
    ) -> Result<Vec<Collected>, BytesMut> {
        for (shard, _) in work {
            self.multi_conn(*shard).await?;
        }
        let timeout = self.multi_statement_timeout();
        let names: Vec<String> = work
            .iter()
            .map(|(s, _)| self.shard_name(*s).to_string())
            .collect();
        let proxy = self.proxy.clone();
        let Some(m) = self.multi.as_mut() else {
            return Err(BytesMut::new());
        };
        let mut by_shard: Vec<Option<&mut PooledConn>> =
            m.conns.iter_mut().map(|c| c.as_mut()).collect();
        let mut servers: Vec<&mut ServerConn> = Vec::with_capacity(work.len());
        for (shard, _) in work {
            match by_shard.get_mut(*shard).and_then(|c| c.take()) {
                Some(c) => servers.push(&mut **c),
                // Each shard once; a repeated shard is a caller's bug.
                None => return Err(BytesMut::new()),
            }
        }
        let requests: Vec<&[u8]> = work.iter().map(|(_, r)| &r[..]).collect();
        let started = Instant::now();
        let answers = fanout::exchange(&mut servers, &requests, timeout, MAX_COLLECT).await;
        let timed_out = (started.elapsed() >= timeout).then_some(timeout);
        let mut results = Vec::with_capacity(work.len());
        let mut failure = None;
        for (i, answer) in answers.into_iter().enumerate() {
            let trouble = match answer {
                Exchange::Answered(c)
                    if c.error.is_none() && c.status == TxStatus::InBlock && !c.overflow =>
                {
                    results.push(c);
                    None
                }
                Exchange::Answered(c) if c.overflow => Some(overflow_error(&names[i], OUTCOME)),
                Exchange::Answered(c) => Some(shard_error(c.error, &names[i], OUTCOME)),
                Exchange::Lost(e) => {
                    m.conns[work[i].0] = None; // closes it
                    Some(failed_error(
                        &e,
                        &names[i],
                        OUTCOME,
                        timed_out,
                        &proxy.metrics,
                    ))
                }
                Exchange::NotSent => None,
            };
            failure = super::multi::earlier_error(failure, trouble);
        }
        match failure {
            Some(f) => Err(f),
            None => Ok(results),
        }
    }

    /// Run `work` on the transaction's shards; answer as `how` says. A
    /// merge that cannot combine the answers is returned unanswered (the
    /// shards' transactions are as after any read).
    async fn multi_run(&mut self, work: Vec<(usize, String)>, how: Shape<'_>) -> Option<PgError> {
        let first = matches!(how, Shape::First);
        let merged = matches!(how, Shape::Merged(..));
        let requests: Vec<(usize, BytesMut)> = work
            .iter()
            .map(|(shard, sql)| {
                let mut frame = BytesMut::new();
                crate::protocol::query_frame(&mut frame, sql);
                (*shard, frame)
            })
            .collect();
        let results = match self.multi_exchange(&requests).await {
            Ok(results) => results,
            Err(f) => {
                self.multi_failed_with(f);
                return None;
            }
        };
        let mut out = match shape(how, &results) {
            Ok(frames) => frames,
            Err(e) if merged => return Some(e),
            Err(e) => {
                self.multi_fail(e);
                return None;
            }
        };
        if results.is_empty() && first {
            // SET with no shard held yet: nothing ran.
            crate::protocol::command_complete(&mut out, "SET");
        }
        self.answer(out);
        None
    }

    /// COPY FROM STDIN split by key inside the transaction.
    async fn multi_copy(
        &mut self,
        sql: &str,
        route: &Route,
        split: &crate::router::CopySplit,
    ) -> Result<(), SessionEnd> {
        let Some(table) = self.router.table(&split.table).cloned() else {
            self.multi_fail(PgError::error(sqlstate::INTERNAL_ERROR, "no table rule"));
            return Ok(());
        };
        let fmt = match crate::router::rewrite::CopyFormat::from_sql(sql) {
            Ok(f) => f,
            Err(m) => {
                self.multi_fail(PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("COPY into sharded table \"{}\": {m}", table.name),
                ));
                return Ok(());
            }
        };
        for s in &route.shards {
            if let Err(f) = self.multi_conn(*s).await {
                self.multi_failed_with(f);
                return Ok(());
            }
        }
        let mut conns: Vec<PooledConn> = Vec::with_capacity(route.shards.len());
        if let Some(m) = self.multi.as_mut() {
            for s in &route.shards {
                conns.extend(m.conns[*s].take());
            }
        }
        let names: Vec<String> = route
            .shards
            .iter()
            .map(|s| self.shard_name(*s).to_string())
            .collect();
        let key_column = match split.key_column {
            Some(k) => Ok(k),
            None => super::catalog::key_position(&mut conns[0], &table).await,
        };
        let mut clean = vec![true; conns.len()];
        let result = match key_column {
            Ok(k) => {
                self.copy_stream(
                    &mut conns, &mut clean, &names, sql, &fmt, &table, k, OUTCOME,
                )
                .await?
            }
            Err(e) => {
                let mut out = BytesMut::new();
                e.encode(&mut out);
                Err(out)
            }
        };
        if let Some(m) = self.multi.as_mut() {
            for (i, (s, c)) in route.shards.iter().zip(conns).enumerate() {
                if clean[i] {
                    m.conns[*s] = Some(c);
                }
            }
        }
        match result {
            Ok(total) => {
                let mut out = BytesMut::new();
                crate::protocol::command_complete(&mut out, &format!("COPY {total}"));
                self.answer(out);
            }
            Err(f) => self.multi_failed_with(f),
        }
        Ok(())
    }

    /// COMMIT (`commit`) or ROLLBACK of every shard, in shard order.
    async fn multi_end(&mut self, commit: bool) {
        let commit = commit && !self.multi.as_ref().is_some_and(|m| m.failed);
        let failure = self.multi_finish(commit).await;
        match failure {
            Some(f) if commit => self.answer(f),
            _ => {
                let mut out = BytesMut::new();
                crate::protocol::command_complete(
                    &mut out,
                    if commit { "COMMIT" } else { "ROLLBACK" },
                );
                self.answer(out);
            }
        }
    }

    /// End the transaction on every shard: commit (two-phase when several
    /// take part) or roll back. The client's error when a commit failed.
    pub(super) async fn multi_finish(&mut self, commit: bool) -> Option<BytesMut> {
        let m = self.multi.take()?;
        let commit = commit && !m.failed;
        let ran_ddl = m.ran_ddl;
        let mut conns = Vec::new();
        let mut names = Vec::new();
        let mut shards = Vec::new();
        for (s, c) in m.conns.into_iter().enumerate() {
            if let Some(c) = c {
                conns.push(c);
                names.push(self.shard_name(s).to_string());
                shards.push(s);
            }
        }
        let begun = vec![true; conns.len()];
        let clean = vec![true; conns.len()];
        let end = if commit {
            End::Commit
        } else {
            End::RollBack(None)
        };
        let failure = self
            .end_multi(conns, &begun, clean, end, &names, &shards)
            .await;
        self.tx_status = TxStatus::Idle;
        if commit && ran_ddl {
            // A migration changed tables: INSERTs without a column list
            // read their column order again.
            self.schema_may_change();
        }
        failure
    }
}

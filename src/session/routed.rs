//! Routing statements to shards: a simple Query, a Bind and an extended
//! batch held until it can be routed, each sent to the one shard the router
//! names or handed to the multi-shard paths.

use super::*;

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) fn shard_name(&self, shard: usize) -> &str {
        self.router
            .shard_names()
            .get(shard)
            .map(String::as_str)
            .unwrap_or("?")
    }

    /// The one shard a route goes to, or the 0A000 for a multi-shard one
    /// that cannot run as such here.
    pub(super) fn single_shard(&self, r: &Route) -> Result<usize, PgError> {
        match r.shards[..] {
            [one] => Ok(one),
            _ => Err(self.router.several_shards_error(r)),
        }
    }

    /// Send the held messages of this batch to the server now held.
    pub(super) async fn replay_held(&mut self) -> Result<(), SessionEnd> {
        for frame in std::mem::take(&mut self.held) {
            self.extended(frame).await?;
        }
        Ok(())
    }

    pub(super) async fn routed_query(&mut self, frame: BytesMut) -> Result<(), SessionEnd> {
        let body = protocol::body(&frame);
        let sql = String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(body)).into_owned();
        if self.multi.as_ref().is_some_and(|m| m.failed) {
            // Even `SET shardwire.*` gets 25P02 in a failed transaction.
            return self.timed_multi_query(&frame, &sql).await;
        }
        if let Some(cmd) = control::proxy_command(&sql) {
            if matches!(cmd, Ok(ProxyCommand::Show(HintVar::CausalToken))) {
                if let Err(e) = self.resolve_written_lsns().await {
                    self.refuse(e, true);
                    return Ok(());
                }
            }
            self.proxy_command(cmd);
            return Ok(());
        }
        if self.multi.is_some() {
            return self.timed_multi_query(&frame, &sql).await;
        }
        let analysis = self.router.analysis(&sql);
        if let Err(e) = self.learn_columns(&analysis).await {
            self.refuse(e, true);
            return Ok(());
        }
        let synthetic = |s: &mut Self, tag: &str| {
            let mut buf = BytesMut::new();
            protocol::command_complete(&mut buf, tag);
            s.pending.push_back(Pending::SyntheticFrame(buf.freeze()));
            s.pending.push_back(Pending::SyntheticReady);
            s.emit_synthetic();
        };
        // PostgreSQL's tag for START TRANSACTION is its own.
        let begin_tag = match sql.trim_start().get(..5) {
            Some(w) if w.eq_ignore_ascii_case("start") => "START TRANSACTION",
            _ => "BEGIN",
        };
        match control::tx_control(&sql, &analysis) {
            Some(TxControl::Begin) if self.deferred_begin.is_some() => {
                return {
                    synthetic(self, begin_tag);
                    Ok(())
                }
            }
            Some(TxControl::Begin) if self.server.is_none() || self.tx_status == TxStatus::Idle => {
                self.deferred_begin = Some(frame.freeze());
                synthetic(self, begin_tag);
                return Ok(());
            }
            Some(TxControl::End(tag)) if self.deferred_begin.is_some() => {
                self.deferred_begin = None;
                synthetic(self, tag);
                return Ok(());
            }
            _ => {}
        }
        // Savepoints a transaction over several shards must know of, set
        // while it is on one server (cleared when its server is idle).
        for op in control::savepoint_ops(&sql, &analysis) {
            self.note_savepoint(op);
        }
        if control::is_neutral(&analysis) && self.server.is_some() {
            // Transaction control and SET stay with the held server.
            self.send_query(frame);
            return Ok(());
        }
        let analysis = match self.hold_moving_write(&sql, &[]).await {
            Ok(false) => analysis,
            Ok(true) => self.router.analysis(&sql),
            Err(e) => {
                self.refuse(e, true);
                return Ok(());
            }
        };
        let route = match self
            .router
            .route_analyzed(&sql, &analysis, &[], &self.hints)
        {
            Ok(r) => r,
            Err(e) => {
                self.refuse(e, true);
                return Ok(());
            }
        };
        self.settle_for(&route.shards).await?;
        if route.shards.len() > 1 {
            if let Some(e) = self.pinned_error() {
                self.refuse(e, true);
                return Ok(());
            }
            let timing = self.timing_for(&frame, true);
            let kind = match route.plan {
                Plan::Broadcast { .. } => RouteKind::Broadcast,
                Plan::Gather(_) => RouteKind::Gather,
                _ => RouteKind::Scatter,
            };
            if self.try_multi_shard(&sql, &route, &analysis).await? {
                if let Some(t) = timing {
                    let failed = std::mem::take(&mut self.request_failed);
                    self.record_statement(&route.shards, kind, t, failed);
                }
                return Ok(());
            }
        }
        if self.wants_multi_tx(&route) {
            if let Some(e) = self.pinned_error() {
                self.refuse(e, true);
                return Ok(());
            }
            if self.settings_changed {
                // The SET ran on this transaction's one server; the other
                // shards' servers would run without it.
                self.refuse(
                    PgError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "this transaction changed session settings, so it cannot go on over several shards",
                    )
                    .with_hint("SET before BEGIN (it then follows the session to every shard), or use SET LOCAL"),
                    true,
                );
                return Ok(());
            }
            self.enter_multi_tx();
            return self.timed_multi_query(&frame, &sql).await;
        }
        let shard = match self.single_shard(&route) {
            Ok(s) => s,
            Err(e) => {
                self.refuse(e, true);
                return Ok(());
            }
        };
        let target = route.role.unwrap_or(self.read_from);
        let read = target != crate::config::ReadFrom::Primary
            && self.server.is_none()
            && self.deferred_begin.is_none()
            && self.tx_status == TxStatus::Idle
            && self.router.is_read(&analysis);
        if read {
            self.replica.next = Some(target);
        } else if !control::is_neutral(&analysis) {
            self.writes.in_tx = true;
        }
        if self.ensure_shard(shard, true, true).await {
            self.route_kind = route_kind(&route);
            if self.replica.held_on {
                self.replica.running = Some(vec![frame.clone()]);
                self.replica.answered = false;
            }
            self.send_query(frame);
        }
        self.replica.next = None;
        Ok(())
    }

    pub(super) async fn routed_bind(&mut self, frame: BytesMut) -> Result<(), SessionEnd> {
        let routed = {
            let bind = match bind::Bind::decode(protocol::body(&frame)) {
                Ok(x) => x,
                Err(e) => return Err(self.client_protocol_error(e.to_string())),
            };
            let stmt = bind.statement;
            let (sql, types) = if stmt.is_empty() {
                (self.unnamed_sql.clone(), self.unnamed_types.as_deref())
            } else {
                match self.statements.get(stmt) {
                    Some(s) => (Some(s.sql.clone()), Some(&*s.types)),
                    None => (None, None),
                }
            };
            let params = bind.params(types);
            match sql {
                // An unknown statement: the server reports it.
                None => Some(Ok((self.server_shard_or_default(), self.route_kind, None))),
                Some(sql) => {
                    if let Err(e) = self.hold_moving_write(&sql, &params).await {
                        self.refuse(e, false);
                        return Ok(());
                    }
                    let analysis = self.router.analysis(&sql);
                    if let Err(e) = self.learn_columns(&analysis).await {
                        self.refuse(e, false);
                        return Ok(());
                    }
                    if control::is_neutral(&analysis) {
                        for op in control::savepoint_ops(&sql, &analysis) {
                            self.note_savepoint(op);
                        }
                        None
                    } else {
                        let read = self.router.is_read(&analysis);
                        let route =
                            self.router
                                .route_analyzed(&sql, &analysis, &params, &self.hints);
                        if let Ok(r) = &route {
                            let shards = r.shards.clone();
                            self.settle_for(&shards).await?;
                            // Still held: its batch or transaction goes on,
                            // over several shards now.
                            let elsewhere =
                                shards.len() > 1 || shards.first() != Some(&self.server_shard);
                            if self.server.is_some() && elsewhere {
                                drop(params);
                                if self.enter_multi_extended().await? {
                                    return self.multi_extended(frame).await;
                                }
                                if self.skip_until_sync {
                                    return Ok(()); // the batch failed meanwhile
                                }
                                let e = self.single_shard(&route.expect("ok")).err();
                                let e = e.unwrap_or_else(|| {
                                    PgError::error(
                                        sqlstate::FEATURE_NOT_SUPPORTED,
                                        "this statement needs another shard than the transaction's",
                                    )
                                });
                                self.refuse(e, false);
                                return Ok(());
                            }
                            if r.shards.len() > 1 {
                                let r = route.expect("ok");
                                drop(params);
                                return self.scatter_bind(frame, r, sql).await;
                            }
                        }
                        if !read {
                            self.writes.in_tx = true;
                        }
                        Some(route.and_then(|r| {
                            let target = r.role.unwrap_or(self.read_from);
                            let replica_ok = read
                                && target != crate::config::ReadFrom::Primary
                                && self.server.is_none()
                                && self.deferred_begin.is_none()
                                && self.tx_status == TxStatus::Idle;
                            Ok((
                                self.single_shard(&r)?,
                                route_kind(&r),
                                replica_ok.then_some(target),
                            ))
                        }))
                    }
                }
            }
        };
        match routed {
            // Transaction control and SET: with the rest of the batch.
            None if self.server.is_none() => {
                self.replica.batch_mixed = true;
                self.held.push(frame)
            }
            None => self.on_bind(frame).await?,
            Some(Err(e)) => self.refuse(e, false),
            Some(Ok((shard, kind, read))) => {
                // A read joins the held batch, to go to a replica at Sync
                // if the whole batch is such reads of one shard (bounded).
                let held_bytes: usize = self.held.iter().map(|f| f.len()).sum();
                if let Some(target) = read {
                    if !self.replica.batch_mixed
                        && self.replica.batch.is_none_or(|(s, ..)| s == shard)
                        && held_bytes < HIGH_WATER
                    {
                        self.replica.batch = Some((shard, kind, target));
                        self.held.push(frame);
                        return Ok(());
                    }
                }
                // Held reads go first, to their shard's primary.
                if let Some((held_shard, held_kind, _)) = self.replica.batch.take() {
                    if self.ensure_shard(held_shard, false, true).await {
                        self.route_kind = held_kind;
                        self.replay_held().await?;
                    } else {
                        return Ok(());
                    }
                }
                self.replica.batch_mixed = false;
                if self.ensure_shard(shard, false, true).await {
                    self.route_kind = kind;
                    self.replay_held().await?;
                    self.on_bind(frame).await?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn server_shard_or_default(&self) -> usize {
        if self.server.is_some() {
            self.server_shard
        } else {
            self.default_shard
        }
    }

    /// A Sync or Flush ends a batch with no routable Bind (Parse, Describe,
    /// transaction control): route it by its SQL if that names one shard,
    /// else to the default shard (describing is the same everywhere).
    pub(super) async fn route_held_batch(&mut self, at_sync: bool) -> Result<(), SessionEnd> {
        let mixed = std::mem::take(&mut self.replica.batch_mixed);
        if let Some((shard, kind, target)) = self.replica.batch.take() {
            // Only a batch that ends here, with nothing but reads, may go
            // to a replica: after a Flush more may follow on this server.
            if at_sync && !mixed {
                self.replica.next = Some(target);
            }
            let ok = self.ensure_shard(shard, false, true).await;
            self.replica.next = None;
            if ok {
                self.route_kind = kind;
                self.replay_held().await?;
            }
            return Ok(());
        }
        let mut shard = None;
        let mut kind = RouteKind::Default;
        let mut has_bind = false;
        for f in &self.held {
            match f[0] {
                fe::BIND => has_bind = true,
                fe::PARSE if shard.is_none() => {
                    let Ok((_, rest)) = split_name(protocol::body(f), "Parse") else {
                        continue;
                    };
                    let sql = statements::parse_sql(rest);
                    if !control::is_neutral(&self.router.analysis(&sql)) {
                        let routed = self
                            .router
                            .route(&sql, &[], &self.hints)
                            .ok()
                            .and_then(|r| {
                                let one = self.single_shard(&r).ok()?;
                                Some((one, route_kind(&r)))
                            });
                        let (one, k) = routed.unwrap_or((self.default_shard, RouteKind::Default));
                        shard = Some(one);
                        kind = k;
                    }
                }
                _ => {}
            }
        }
        let shard = shard.unwrap_or(self.default_shard);
        // Only transaction control executes in such a batch: it starts the
        // deferred transaction. A Parse/Describe does not.
        if self.ensure_shard(shard, false, has_bind).await {
            self.route_kind = kind;
            self.replay_held().await?;
        }
        Ok(())
    }
}

/// The metrics' name for how a single-shard route chose its shard.
pub(super) fn route_kind(r: &Route) -> RouteKind {
    if r.is_keyed() {
        RouteKind::Single
    } else {
        RouteKind::Default
    }
}

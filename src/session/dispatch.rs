//! What a client frame leads to: the rate limit, the gate of a failed
//! transaction, a config reload between transactions, and the choice
//! between routing it, holding it, and forwarding it to the held server.

use super::*;

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) async fn drain_client_frames(&mut self) -> Result<(), SessionEnd> {
        loop {
            if self.server_out.len() >= HIGH_WATER {
                return Ok(());
            }
            // A replica serves exactly one read, and an LSN probe ends a
            // write: what the client pipelined behind them waits until the
            // server is released (it may be a write, or for another shard).
            let probing = matches!(
                self.pending.front(),
                Some(Pending::Request { probe: Some(_), .. })
            );
            if ((self.replica.held_on && !self.pending.is_empty()) || probing)
                && self.server.is_some()
            {
                return Ok(());
            }
            let frame = match self.client_rd.try_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return self.client_went_quiet().await,
                Err(e) => return Err(self.client_protocol_error(e.to_string())),
            };
            if matches!(frame[0], fe::QUERY | fe::EXECUTE)
                && tracing::enabled!(tracing::Level::DEBUG)
            {
                // A span per statement, when debug logging is on (it costs
                // an allocation per statement, too much for the default).
                let n = self.client.info.queries.load(Ordering::Relaxed) + 1;
                let span = tracing::debug_span!("statement", n);
                self.on_client_frame(frame).instrument(span).await?;
            } else {
                self.on_client_frame(frame).await?;
            }
        }
    }

    /// The client sent everything it had: what it sent reaches the server
    /// now, as PostgreSQL itself starts executing each message as it
    /// arrives and sends an error at once, without waiting for a Sync or
    /// Flush (libpq's pipeline mode waits for that error). Results still
    /// wait for the client's Sync or Flush, in the server's own buffer.
    /// A batch held for routing goes out as at a Flush once it holds an
    /// Execute: nothing else will come to route it by.
    async fn client_went_quiet(&mut self) -> Result<(), SessionEnd> {
        if self.server.is_some() {
            if !self.copy_open {
                self.flush_point();
            }
        } else if self.routing
            && self.multi.is_none()
            && self.held.iter().any(|f| f[0] == fe::EXECUTE)
        {
            self.route_held_batch(false).await?;
        }
        Ok(())
    }

    pub(super) async fn on_client_frame(&mut self, frame: BytesMut) -> Result<(), SessionEnd> {
        let tag = frame[0];
        if self.settings_lost {
            return Err(self.settings_lost_end());
        }
        if self.skip_until_sync && tag != fe::SYNC {
            if tag == fe::TERMINATE {
                return Err(SessionEnd::ClientTerminated);
            }
            return Ok(());
        }
        if (tag == fe::QUERY || tag == fe::EXECUTE) && !self.replica.replaying {
            self.client.info.queries.fetch_add(1, Ordering::Relaxed);
            if !self.take_rate_token(tag == fe::QUERY).await {
                return Ok(());
            }
        }
        if self.portal.is_some() && self.portal_frame(&frame).await? {
            return Ok(());
        }
        if self.server.is_none()
            && self.multi.is_none()
            && self.held.is_empty()
            && self.deferred_begin.is_none()
        {
            self.follow_config();
        }
        if tag == fe::BIND && self.try_lane(&frame).await? {
            return Ok(());
        }
        if self.multi.is_some() {
            match tag {
                fe::PARSE | fe::BIND | fe::DESCRIBE | fe::EXECUTE | fe::CLOSE => {
                    return self.multi_extended(frame).await
                }
                fe::FUNCTION_CALL => {
                    self.multi_refuse_extended();
                    return Ok(());
                }
                fe::SYNC => {
                    self.multi_sync().await;
                    return Ok(());
                }
                fe::FLUSH => return Ok(()),
                _ => {}
            }
        }
        let mut route = self.routing;
        if route
            && (self.tx_status == TxStatus::Failed || self.deferred_failed || self.abort_in_flight)
        {
            match self.failed_tx_gate(&frame).await? {
                FailedTx::Answered => return Ok(()),
                FailedTx::AsIs => route = false,
                FailedTx::Route => {}
            }
        }
        if tag == fe::QUERY {
            let effect = control::effects(protocol::body(&frame)).settings;
            if let Some(e) = self.settings_refusal(effect) {
                self.refuse(e, true);
                return Ok(());
            }
        }
        if route {
            if matches!(tag, fe::QUERY | fe::PARSE | fe::BIND) && self.only_probes_pending() {
                // The statement may need several shards (no held server).
                self.settle_held_server().await?;
            }
            match tag {
                fe::QUERY => return self.routed_query(frame).await,
                fe::BIND => return self.routed_bind(frame).await,
                fe::PARSE | fe::DESCRIBE | fe::EXECUTE | fe::CLOSE if self.server.is_none() => {
                    if tag == fe::PARSE {
                        self.note_parse(&frame)?;
                    }
                    self.held.push(frame);
                    return Ok(());
                }
                fe::SYNC | fe::FLUSH if !self.held.is_empty() => {
                    let batch = (tag == fe::SYNC).then(|| {
                        let mut frames = self.held.clone();
                        frames.push(frame.clone());
                        frames
                    });
                    self.route_held_batch(tag == fe::SYNC).await?;
                    if self.replica.held_on {
                        self.replica.running = batch;
                        self.replica.answered = false;
                    }
                }
                _ => {}
            }
        }
        match tag {
            fe::QUERY => {
                if !self.ensure_server(true).await {
                    return Ok(());
                }
                self.send_query(frame);
            }
            fe::PARSE | fe::BIND | fe::DESCRIBE | fe::EXECUTE | fe::CLOSE => {
                self.extended(frame).await?
            }
            fe::SYNC => {
                self.skip_until_sync = false;
                if self.server.is_some() && self.copy_open {
                    // Ignored by the server during COPY FROM STDIN: no
                    // ReadyForQuery will answer it.
                    self.server_out.extend_from_slice(&frame);
                    self.flush_point();
                } else if self.server.is_some() {
                    self.send(&frame, Expect::Ready, true, None);
                    self.flush_point();
                } else {
                    // Nothing was sent to a server since the last Sync.
                    self.pending.push_back(Pending::SyntheticReady);
                    self.emit_synthetic();
                }
            }
            fe::FLUSH => {
                if self.server.is_some() {
                    self.server_out.extend_from_slice(&frame);
                    self.flush_point();
                }
            }
            fe::FUNCTION_CALL => {
                // It may call set_config.
                self.settings_changed = true;
                if self.ensure_server(true).await {
                    self.send(&frame, Expect::Ready, true, None);
                    self.flush_point();
                }
            }
            fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL => {
                // Without a server the COPY already ended in an error; the
                // protocol says such leftovers are dropped.
                if tag != fe::COPY_DATA {
                    self.copy_open = false;
                }
                if self.server.is_some() {
                    self.server_out.extend_from_slice(&frame);
                    if tag != fe::COPY_DATA || self.server_out.len() >= HIGH_WATER {
                        self.flush_point();
                    }
                }
            }
            fe::TERMINATE => return Err(SessionEnd::ClientTerminated),
            other => {
                return Err(
                    self.client_protocol_error(format!("invalid frontend message type {}", other))
                )
            }
        }
        Ok(())
    }

    /// A client message while its transaction has failed, or may have
    /// (rare: `on_client_frame` calls this only then). PostgreSQL answers
    /// every statement of a failed transaction with 25P02 until it ends
    /// (COMMIT answering ROLLBACK); ROLLBACK TO SAVEPOINT may revive it.
    /// Routing such a statement could answer another error, or send it to
    /// another shard, so it goes as is to the server that holds the failed
    /// transaction, which answers as PostgreSQL does. A failed deferred
    /// transaction (no server has it) ends here at a lone COMMIT or
    /// ROLLBACK; anything else first makes a server hold it, failed.
    pub(super) async fn failed_tx_gate(&mut self, frame: &[u8]) -> Result<FailedTx, SessionEnd> {
        let tag = frame[0];
        if self.multi.is_some() {
            return Ok(FailedTx::Route); // multitx.rs has its own failed flag
        }
        if self.deferred_failed {
            // Sync (ReadyForQuery says 'E'), Flush, and Close (which works
            // the same in a failed transaction) need no server.
            if !matches!(
                tag,
                fe::QUERY | fe::PARSE | fe::BIND | fe::DESCRIBE | fe::EXECUTE | fe::FUNCTION_CALL
            ) {
                return Ok(FailedTx::Route);
            }
            if tag == fe::QUERY {
                let body = protocol::body(frame);
                let sql = String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(body));
                let analysis = self.router.analysis(&sql);
                if let Some(TxControl::End(_)) = control::tx_control(&sql, &analysis) {
                    // No server has the transaction: end it here.
                    self.deferred_begin = None;
                    self.deferred_failed = false;
                    let mut out = BytesMut::new();
                    protocol::command_complete(&mut out, "ROLLBACK");
                    self.pending
                        .push_back(Pending::SyntheticFrame(out.freeze()));
                    self.pending.push_back(Pending::SyntheticReady);
                    self.emit_synthetic();
                    return Ok(FailedTx::Answered);
                }
            }
            // The BEGIN and a failing statement go first (`ensure_shard`);
            // then the server answers this message as PostgreSQL would.
            let shard = self.server_shard_or_default();
            let simple = matches!(tag, fe::QUERY | fe::FUNCTION_CALL);
            if self.ensure_shard(shard, simple, true).await {
                // Messages held for routing go first, in order.
                self.replay_held().await?;
                return Ok(FailedTx::AsIs);
            }
            return Ok(FailedTx::Answered); // the client has the checkout's error
        }
        if self.server.is_none() {
            self.abort_in_flight = false; // the server answered and went
            return Ok(FailedTx::Route);
        }
        // Only a Query or a Bind is routed while a server is held.
        if self.copy_open || !matches!(tag, fe::QUERY | fe::BIND) {
            return Ok(FailedTx::Route);
        }
        let owes = self
            .pending
            .iter()
            .any(|p| matches!(p, Pending::Request { .. }));
        if owes {
            // What the server still owes may change its status (the
            // proxy's abort, a pipelined ROLLBACK): learn it first,
            // including the current batch's answers so far.
            self.flush_and_drain().await?;
        }
        self.abort_in_flight = false;
        if self.skip_until_sync {
            // The server failed this batch meanwhile: this message is
            // skipped, as the server would skip it.
            return Ok(FailedTx::Answered);
        }
        if self.server.is_some() && self.tx_status == TxStatus::Failed {
            return Ok(FailedTx::AsIs);
        }
        Ok(FailedTx::Route)
    }

    /// Wait for (or be refused) a token of the user's query rate limit.
    /// Returns false when the statement was refused (the client has its
    /// error).
    pub(super) async fn take_rate_token(&mut self, simple: bool) -> bool {
        let Some(bucket) = self.client.bucket.clone() else {
            return true;
        };
        match bucket.admit(self.config.limits.rate_limit_max_wait) {
            Admission::Now => true,
            Admission::After(wait) => {
                self.proxy
                    .metrics
                    .rate_limited
                    .fetch_add(1, Ordering::Relaxed);
                self.flush_client_now().await;
                let before = self.client.info.state();
                self.client.info.set_state(ClientState::Throttled);
                tokio::time::sleep(wait).await;
                self.client.info.set_state(before);
                true
            }
            Admission::Refused { per_second } => {
                self.proxy
                    .metrics
                    .rate_limited
                    .fetch_add(1, Ordering::Relaxed);
                let e = PgError::error(
                    sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                    format!(
                        "query rate limit exceeded for user \"{}\" ({per_second} statements per second)",
                        self.setup_user
                    ),
                )
                .with_hint("slow down and retry; the limit is rate_limit in the user's [[users]] entry");
                self.refuse(e, simple);
                false
            }
        }
    }

    /// Move to the newest config, if a reload happened. Called only
    /// between transactions (no server held), so a transaction always runs
    /// on one topology. A session whose user or database the reload
    /// removed keeps its config until it ends.
    pub(super) fn follow_config(&mut self) {
        let generation = self.proxy.topology_generation();
        if generation == self.config_generation {
            return;
        }
        self.config_generation = generation;
        // Pools may have changed (or their server been banned): the next
        // transaction checks out afresh.
        self.release_parked();
        self.park = None;
        let config = self.proxy.config();
        let (Some(db), Some(user)) = (
            config.databases.get(&self.setup_database),
            config.users.get(&self.setup_user),
        ) else {
            tracing::warn!(client = self.client_id, user = %self.setup_user, database = %self.setup_database,
                "the reloaded config no longer has this session's user or database; the session keeps the old config");
            return;
        };
        let pools = self.proxy.session_pools(&config, db, user);
        self.pools = pools.primaries;
        self.replicas = pools.replicas;
        self.read_from = config.read_from(db, user);
        let shards = self.pools.len();
        self.writes.lsn.resize(shards, 0);
        self.writes.at.resize(shards, None);
        self.writes.unresolved.resize(shards, false);
        self.router = config.router.clone();
        self.routing = self.router.tables().next().is_some()
            || self.read_from != crate::config::ReadFrom::Primary;
        self.default_shard = config.default_shard;
        self.server_shard = config.default_shard;
        self.max_prepared_per_server = config.pool.max_prepared_statements as usize;
        self.route_stats = vec![Default::default(); self.pools.len()];
        self.config = config;
    }
}

//! Holding a server: checkout from the shard's pool (with the session's
//! settings synced), settling the held server's answers before it moves or
//! goes back, PAUSE, and releasing or parking it between transactions.

use super::*;

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Make sure a server is held, checking one out of the default shard
    /// if needed. On failure the client gets the error (and ReadyForQuery
    /// for a simple query, or the rest of its extended batch is skipped up
    /// to Sync); returns false.
    pub(super) async fn ensure_server(&mut self, simple: bool) -> bool {
        if self.server.is_some() {
            return true;
        }
        self.ensure_shard(self.default_shard, simple, false).await
    }

    /// Make sure a server of `shard` is held. Refuses (like
    /// `ensure_server`) when the held server is on another shard. With
    /// `start_tx`, a deferred BEGIN is sent first.
    pub(super) async fn ensure_shard(
        &mut self,
        shard: usize,
        simple: bool,
        start_tx: bool,
    ) -> bool {
        if self.server.is_some() {
            if self.server_shard != shard {
                let err = PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "this transaction already runs on shard \"{}\"; statement needs shard \"{}\", and a transaction cannot take in another shard inside one pipelined batch or a pinned session",
                        self.shard_name(self.server_shard),
                        self.shard_name(shard)
                    ),
                )
                .with_hint("keep the statements of one transaction (or one pipelined batch) on one shard");
                self.refuse(err, simple);
                return false;
            }
        } else if !self.checkout(shard, simple).await {
            return false;
        }
        if start_tx {
            if let Some(begin) = self.deferred_begin.take() {
                self.send(&begin, Expect::Ready, false, None);
                if std::mem::take(&mut self.deferred_failed) {
                    // A statement of this transaction was refused before
                    // any server saw it: the server's transaction starts
                    // failed, and answers what follows as PostgreSQL.
                    self.abort_server_tx(false);
                }
            }
        }
        true
    }

    pub(super) async fn checkout(&mut self, shard: usize, simple: bool) -> bool {
        self.flush_client_now().await;
        let result = self.checkout_synced(shard).await;
        match result {
            Ok(conn) => {
                self.attach(conn);
                self.server_shard = shard;
                self.client.info.set_shard(Some(shard));
                true
            }
            Err(err) => {
                tracing::warn!(client = self.client_id, user = %self.setup_user, database = %self.setup_database, error = %err, "no server for client");
                self.refuse(err, simple);
                false
            }
        }
    }

    /// The held server is busy only with earlier batches (each ended by
    /// its Sync or Query) or the read-your-writes LSN probe of the last
    /// write, and the client's current batch has executed nothing on it:
    /// wait for those answers, so the server goes back to the pool and the
    /// current statement may go to another shard, or to several. A batch
    /// that already executed something on the server, or a transaction,
    /// stays there.
    pub(super) async fn settle_held_server(&mut self) -> Result<(), SessionEnd> {
        if self.server.is_none()
            || self.pinned.is_some()
            || self.pool_mode != PoolMode::Transaction
            || self.tx_status != TxStatus::Idle
            || self.deferred_begin.is_some()
            || self.multi.is_some()
            || self.copy_in
            || self.copy_open
        {
            return Ok(());
        }
        let current = self
            .pending
            .iter()
            .rposition(|p| {
                matches!(
                    p,
                    Pending::Request {
                        expect: Expect::Ready,
                        ..
                    }
                )
            })
            .map_or(0, |i| i + 1);
        let executed = self.pending.iter().skip(current).any(|p| {
            matches!(
                p,
                Pending::Abort
                    | Pending::Request {
                        expect: Expect::BindComplete | Expect::ExecuteDone,
                        ..
                    }
            )
        });
        if executed {
            return Ok(());
        }
        // The current batch ran only Parse/Describe/Close here (or it was
        // flushed and answered): end its implicit transaction on this
        // server with a Sync of the proxy's own, so the server can go.
        let mut sync = BytesMut::new();
        let at = protocol::begin_frame(&mut sync, fe::SYNC);
        protocol::finish_frame(&mut sync, at);
        self.send(&sync, Expect::Ready, false, None);
        self.flush_point();
        self.drain_requests(true).await
    }

    /// Wait until the held server has answered everything it owes (its
    /// answers go to the client as usual). With `release`, the server is
    /// then released if idle, which after a write first asks for its LSN
    /// (maybe_release): that answer is waited for too. Without, it stays
    /// held (its batch goes on).
    pub(super) async fn drain_requests(&mut self, release: bool) -> Result<(), SessionEnd> {
        let is_request = |p: &Pending| matches!(p, Pending::Request { .. });
        let deadline = tokio::time::Instant::now() + self.multi_statement_timeout();
        while self.server.is_some() && self.pending.iter().any(is_request) {
            let upto = self.server_flush_upto;
            let Some(s) = self.server.as_deref_mut() else {
                break;
            };
            let io = async {
                if upto > 0 {
                    s.writer.write_all(&self.server_out[..upto]).await?;
                }
                s.reader
                    .fill()
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
            };
            match tokio::time::timeout_at(deadline, io).await {
                Ok(Ok(_)) => {
                    self.server_out.advance(upto);
                    self.server_flush_upto = 0;
                }
                Ok(Err(e)) => return self.lose_server(e.to_string()),
                Err(_) => return self.lose_server("no answer to earlier statements".into()),
            }
            self.drain_server_frames()?;
            // Answers beyond HIGH_WATER wait in the server's buffer until
            // the client takes what is due: give it now, or the next read
            // would wait for data the server already sent.
            while self.client_out.len() >= HIGH_WATER {
                let (wr, out) = (&mut self.client_wr, &self.client_out);
                let written = async {
                    wr.write_all(out).await?;
                    wr.flush().await
                };
                match tokio::time::timeout_at(deadline, written).await {
                    Ok(Ok(())) => {
                        self.client_out.clear();
                        self.client_unflushed = false;
                    }
                    Ok(Err(e)) => return Err(SessionEnd::ClientGone(e.to_string())),
                    Err(_) => {
                        return Err(SessionEnd::ClientGone(
                            "the client took no data while earlier answers were due".into(),
                        ))
                    }
                }
                self.drain_server_frames()?;
            }
            if release && !self.pending.iter().any(is_request) {
                self.maybe_release();
            }
        }
        Ok(())
    }

    /// Have the held server answer everything sent so far, without ending
    /// the batch (a Flush of the proxy's own), and wait for those answers,
    /// which reach the client in order. The server stays held.
    pub(super) async fn flush_and_drain(&mut self) -> Result<(), SessionEnd> {
        let mut flush = BytesMut::new();
        let at = protocol::begin_frame(&mut flush, fe::FLUSH);
        protocol::finish_frame(&mut flush, at);
        self.server_out.extend_from_slice(&flush);
        self.flush_point();
        self.drain_requests(false).await
    }

    /// The held server owes nothing but the proxy's probes (the LSN of the
    /// last write, the settings after a SET).
    pub(super) fn only_probes_pending(&self) -> bool {
        self.server.is_some()
            && !self.pending.is_empty()
            && self
                .pending
                .iter()
                .all(|p| matches!(p, Pending::Request { probe: Some(_), .. }))
    }

    /// Before routing a statement to `shards`: a held server of another
    /// shard may be settled (see `settle_held_server`).
    pub(super) async fn settle_for(&mut self, shards: &[usize]) -> Result<(), SessionEnd> {
        if self.server.is_some() && (shards.len() > 1 || shards.first() != Some(&self.server_shard))
        {
            self.settle_held_server().await?;
        }
        Ok(())
    }

    /// A server of `shard` from its pool, with the client's parameters.
    pub(super) async fn checkout_synced(&mut self, shard: usize) -> Result<PooledConn, PgError> {
        let starts_transaction = self.server.is_none()
            && self
                .multi
                .as_ref()
                .is_none_or(|m| m.conns.iter().all(Option::is_none));
        // Every rare path's future is boxed: this one runs at each
        // transaction, and its future's size is copied each time.
        if starts_transaction && self.is_paused() {
            let waited = Box::pin(self.wait_while_paused()).await;
            self.paused_now = *self.paused.borrow_and_update();
            waited?;
        }
        // Before the primary's pool: the server this session parked, or a
        // replica for a read. One that fails here costs the statement
        // nothing: the pool's primary follows.
        let candidate = match self.replica.next.take() {
            None => self.unpark(shard),
            Some(target) => {
                self.release_parked();
                self.client.info.set_state(ClientState::Waiting);
                Box::pin(self.read_checkout(shard, target)).await
            }
        };
        if let Some(mut conn) = candidate {
            if align_params(&mut conn, &mut self.wanted_params)
                .await
                .is_ok()
            {
                self.client.info.set_state(ClientState::Active);
                return Ok(conn);
            }
        }
        self.client.info.set_state(ClientState::Waiting);
        let result = match self.pools[shard].checkout().await {
            Ok(mut conn) => match align_params(&mut conn, &mut self.wanted_params).await {
                Ok(()) => Ok(conn),
                Err(e) => Err(e),
            },
            Err(e) => Err(e.to_pg()),
        };
        self.client.info.set_state(match result {
            Ok(_) => ClientState::Active,
            Err(_) if self.server.is_some() || self.multi.is_some() => ClientState::Active,
            Err(_) => ClientState::Idle,
        });
        result
    }

    /// Whether PAUSE is in effect. Reading the watch takes a lock all
    /// sessions share, while whether it changed is a plain load: the value
    /// is kept, and read again only after a change.
    pub(super) fn is_paused(&mut self) -> bool {
        if self.paused.has_changed().unwrap_or(true) {
            self.paused_now = *self.paused.borrow_and_update();
        }
        self.paused_now
    }

    /// PAUSE holds new transactions until RESUME, up to
    /// `limits.pause_timeout`.
    pub(super) async fn wait_while_paused(&mut self) -> Result<(), PgError> {
        if !*self.paused.borrow() {
            return Ok(());
        }
        self.client.info.set_state(ClientState::Waiting);
        let limit = self.config.limits.pause_timeout;
        let resumed = tokio::time::timeout(limit, self.paused.wait_for(|p| !*p)).await;
        self.client.info.set_state(ClientState::Idle);
        match resumed {
            Ok(Ok(_)) => Ok(()),
            _ => {
                self.proxy
                    .metrics
                    .pause_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                Err(PgError::error(
                    sqlstate::CANNOT_CONNECT_NOW,
                    format!("shardwire is paused; no new transaction could start within {limit:?}"),
                )
                .with_hint("an operator ran PAUSE in the admin console; retry after RESUME"))
            }
        }
    }

    pub(super) fn attach(&mut self, conn: PooledConn) {
        self.replica.held_on = !self.pools.iter().any(|p| Arc::ptr_eq(p, conn.pool()));
        self.cancel
            .set(&conn.target, conn.backend_pid, conn.backend_secret);
        self.server = Some(conn);
    }

    pub(super) fn maybe_release(&mut self) {
        if self.changed_schema && self.is_idle() {
            // Done now: statements prepared while it ran may predate it.
            self.changed_schema = false;
            crate::backend::conn::schema_changed();
        }
        if self.probe_settings() {
            return; // released once the settings are read back
        }
        if self.pool_mode == PoolMode::Transaction
            && self.server.is_some()
            && self.is_idle()
            && self.pinned.is_none()
        {
            if std::mem::take(&mut self.writes.in_tx) && !self.replica.held_on && self.after_write()
            {
                return; // released once the LSN probe answers
            }
            if let Some(conn) = self.server.take() {
                self.release_conn(conn);
            }
        }
        // Multi-shard statements check out and release inside their call;
        // whatever path ran, a session holding nothing is idle.
        if self.server.is_none() && self.multi.is_none() {
            self.client.info.set_state(ClientState::Idle);
        }
    }

    pub(super) fn release_conn(&mut self, conn: PooledConn) {
        self.cancel.clear();
        self.abort_in_flight = false;
        let on_replica = std::mem::take(&mut self.replica.held_on);
        self.replica.running = None;
        self.client.info.set_shard(None);
        if std::mem::take(&mut self.discard_server) {
            drop(conn); // closes it
        } else if on_replica || !conn.pool().may_park() {
            conn.release();
        } else {
            self.park_conn(conn);
        }
    }

    /// Keep a primary's connection for the next transaction (see
    /// backend::pool); it goes back at once if a checkout came to wait.
    pub(super) fn park_conn(&mut self, conn: PooledConn) {
        if !self
            .park
            .as_ref()
            .is_some_and(|slot| Arc::ptr_eq(slot.pool(), conn.pool()))
        {
            self.release_parked();
            self.park = Some(conn.pool().park_slot());
        }
        if let Some(conn) = self.park.as_ref().and_then(|slot| slot.park(conn)) {
            conn.release();
        }
    }

    /// The parked connection, if it is `shard`'s primary and still there;
    /// one of another pool goes back to it.
    pub(super) fn unpark(&mut self, shard: usize) -> Option<PooledConn> {
        let slot = self.park.as_ref()?;
        if Arc::ptr_eq(slot.pool(), &self.pools[shard]) {
            slot.unpark()
        } else {
            self.release_parked();
            None
        }
    }

    /// Give the parked connection (if any) back to its pool.
    pub(super) fn release_parked(&mut self) {
        if let Some(conn) = self.park.as_ref().and_then(|slot| slot.take()) {
            conn.release();
        }
    }
}

/// Bring a server whose client left in the middle of a pipeline (Binds
/// and Executes with no Sync yet, or answers not read) back to idle, so
/// that it can be reset rather than closed: a Sync ends the batch, the
/// answers still due (`readies` ReadyForQuery, plus the Sync's) are read
/// and dropped, and a transaction left open is rolled back. False when
/// that does not happen within a second or two; the server is closed then.
pub(super) async fn end_pipeline(conn: &mut ServerConn, readies: usize) -> bool {
    let within = Duration::from_secs(2);
    let mut sync = BytesMut::new();
    let at = protocol::begin_frame(&mut sync, fe::SYNC);
    protocol::finish_frame(&mut sync, at);
    if conn.send_frames(&sync, within).await.is_err() {
        return false;
    }
    let deadline = tokio::time::Instant::now() + within;
    let mut left = readies + 1;
    let mut status = TxStatus::Idle;
    while left > 0 {
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        match conn.recv_frame(wait).await {
            Ok(f) if f[0] == protocol::be::READY_FOR_QUERY => {
                status = TxStatus::of_ready(&f);
                left -= 1;
            }
            // COPY FROM STDIN waits for data a Sync does not end.
            Ok(f) if f[0] == protocol::be::COPY_IN_RESPONSE => return false,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    status == TxStatus::Idle || conn.run_internal("ROLLBACK", within).await.is_ok()
}

/// Reset a session-pooled server for its next client: DISCARD ALL drops
/// prepared statements, temporary tables, settings and advisory locks.
pub(super) async fn discard_session(conn: &mut ServerConn) -> bool {
    match conn.run_internal("DISCARD ALL", INTERNAL_TIMEOUT).await {
        Ok(()) => {
            conn.prepared.clear();
            conn.unnamed = None;
            conn.forget_custom_params();
            true
        }
        Err(e) => {
            tracing::warn!(server = %conn.target.describe(), error = ?e, "could not reset a session-pooled connection; closing it");
            false
        }
    }
}

//! Deadlines and timing: the statement and idle-in-transaction timeouts,
//! and the per-statement timing behind the latency metrics and slow log.

use super::*;

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// The next timeout that applies now, if any.
    pub(super) fn next_deadline(&self) -> Option<(Instant, Deadline)> {
        if let Some(at) = self.cancelled_at {
            return Some((at + CANCEL_GRACE, Deadline::CancelIgnored));
        }
        let limits = &self.config.limits;
        if !limits.statement_timeout.is_zero() {
            let running = self.pending.iter().find_map(|p| match p {
                Pending::Request {
                    timing: Some(t), ..
                } => Some(t.started),
                _ => None,
            });
            if let Some(started) = running {
                return Some((started + limits.statement_timeout, Deadline::Statement));
            }
        }
        let in_transaction = self.tx_status != TxStatus::Idle || self.multi.is_some();
        if !limits.idle_in_transaction_timeout.is_zero()
            && in_transaction
            && self.pending.is_empty()
            && (self.server.is_some() || self.multi.is_some())
        {
            return Some((
                self.last_client_input + limits.idle_in_transaction_timeout,
                Deadline::IdleInTransaction,
            ));
        }
        None
    }

    pub(super) async fn on_deadline(&mut self, what: Deadline) -> Result<(), SessionEnd> {
        match what {
            Deadline::Statement => {
                self.proxy
                    .metrics
                    .statement_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    client = self.client_id,
                    timeout = ?self.config.limits.statement_timeout,
                    "statement timeout: cancelling the statement"
                );
                self.cancelled_at = Some(Instant::now());
                self.discard_server = true;
                self.cancel
                    .cancel_running(self.config.pool.connect_timeout)
                    .await;
                Ok(())
            }
            Deadline::CancelIgnored => Err(self.server_lost(format!(
                "the server did not answer the cancel of a statement over limits.statement_timeout within {CANCEL_GRACE:?}"
            ))),
            Deadline::IdleInTransaction => {
                self.proxy
                    .metrics
                    .idle_in_transaction_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                let e = PgError::fatal(
                    sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                    "terminating connection due to idle-in-transaction timeout",
                )
                .with_detail(format!(
                    "the session was idle in a transaction for longer than limits.idle_in_transaction_timeout ({:?}); the transaction was rolled back",
                    self.config.limits.idle_in_transaction_timeout
                ));
                self.proxy.metrics.error(e.code);
                e.encode(&mut self.client_out);
                Err(SessionEnd::IdleInTransactionTimeout)
            }
        }
    }

    /// A statement of a multi-shard transaction, counted on the shards the
    /// transaction holds afterwards.
    pub(super) async fn timed_multi_query(
        &mut self,
        frame: &[u8],
        sql: &str,
    ) -> Result<(), SessionEnd> {
        let timing = self.timing_for(frame, true);
        let held = |s: &Self| -> Vec<usize> {
            s.multi
                .as_ref()
                .map(|m| {
                    (0..m.conns.len())
                        .filter(|&i| m.conns[i].is_some())
                        .collect()
                })
                .unwrap_or_default()
        };
        let before = held(self);
        let result = self.multi_query(sql).await;
        if let Some(t) = timing {
            let mut shards = held(self);
            if shards.is_empty() {
                shards = before; // COMMIT or ROLLBACK released them
            }
            if shards.is_empty() {
                shards.push(self.default_shard);
            }
            let failed = std::mem::take(&mut self.request_failed);
            self.record_statement(&shards, RouteKind::MultiTx, t, failed);
        }
        result
    }

    /// A client statement finished (its completion, or its error and the
    /// end of its batch): metrics and the slow log.
    pub(super) fn statement_done(&mut self, mut t: Timing) {
        let failed = std::mem::take(&mut self.request_failed);
        if let Some(stmt) = t.lane_trial.take() {
            Self::lane_trial_done(&stmt, t.started.elapsed(), failed);
        }
        self.cancelled_at = None;
        let (shard, kind) = (self.server_shard, self.route_kind);
        self.record_statement(&[shard], kind, t, failed);
    }

    /// Count a statement on `shards` and log it if slow.
    pub(super) fn record_statement(
        &mut self,
        shards: &[usize],
        kind: RouteKind,
        t: Timing,
        failed: bool,
    ) {
        let took = t.started.elapsed();
        for &shard in shards {
            let stats = self.route_stats_of(shard, kind);
            stats.queries.fetch_add(1, Ordering::Relaxed);
            if failed {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            stats.latency.observe(took);
        }
        tracing::debug!(
            duration_ms = took.as_secs_f64() * 1000.0,
            shards = ?shards,
            kind = kind.name(),
            failed,
            "statement done"
        );
        let slow = self.config.log.slow_statement;
        if !slow.is_zero() && took >= slow {
            let shards: Vec<&str> = shards.iter().map(|&s| self.shard_name(s)).collect();
            let sql = t.sql.as_deref().unwrap_or("");
            let sql = match sql.char_indices().nth(SLOW_LOG_SQL_MAX) {
                Some((cut, _)) => &sql[..cut],
                None => sql,
            };
            tracing::warn!(
                target: "shardwire::slow",
                client = self.client_id,
                duration_ms = took.as_secs_f64() * 1000.0,
                shards = %shards.join(","),
                kind = kind.name(),
                failed,
                user = %self.setup_user,
                sql,
                "slow statement"
            );
        }
    }

    /// The series of `shard` and `kind`, borrowed: every session shares
    /// it, so a clone per statement would bump a count all of them write.
    pub(super) fn route_stats_of(&mut self, shard: usize, kind: RouteKind) -> &RouteStats {
        if shard >= self.route_stats.len() {
            self.route_stats.resize(shard + 1, Default::default());
        }
        if self.route_stats[shard][kind.index()].is_none() {
            let name = self.shard_name(shard).to_string();
            self.route_stats[shard][kind.index()] = Some(self.proxy.metrics.route(&name, kind));
        }
        self.route_stats[shard][kind.index()]
            .as_deref()
            .expect("filled above")
    }

    /// The timing of a client statement about to be sent, if `frame` is one.
    pub(super) fn timing_for(&mut self, frame: &[u8], forward: bool) -> Option<Timing> {
        if !forward {
            return None;
        }
        let sql = match frame[0] {
            fe::QUERY => {
                if self.config.log.slow_statement.is_zero() {
                    None
                } else {
                    let body = protocol::body(frame);
                    Some(String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(body)).into())
                }
            }
            fe::EXECUTE => self.bound_sql.clone(),
            _ => return None,
        };
        let lane_trial = if frame[0] == fe::EXECUTE {
            self.lane_trial.take()
        } else {
            None
        };
        Some(Timing {
            started: Instant::now(),
            sql,
            lane_trial,
        })
    }
}

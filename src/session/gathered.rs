//! Tier-3 reads (router::gather) in the simple protocol outside a
//! transaction: PostgreSQL answers the statement on the default shard's
//! primary (the merge connection) from temporary copies of its sharded
//! tables, filled from every shard (execute::gather), and the answer
//! streams to the client.
//!
//! Outside a transaction block it all happens, on the merge connection,
//! in one transaction that is rolled back at the end, so the copies vanish
//! with it and the connection goes back to its pool as it came, whatever
//! failed. Each shard's rows are read by their own statement; like the
//! other cross-shard reads, the shards' snapshots are not one snapshot.
//!
//! Inside a transaction over several shards (multitx.rs, multiext.rs) the
//! rows are read on the transaction's own connections, so the statement
//! sees the transaction's uncommitted writes and snapshots, and the copies
//! live in a savepoint on the merge connection, rolled back to and
//! released after the statement. A failure fails the transaction, as an
//! error in a statement does in PostgreSQL.

use tokio::time::Instant as Deadline;

use super::multi::{failed_error, lost_error, release_clean, shard_error};
use super::*;
use crate::backend::conn::Collected;
use crate::backend::pool::PooledConn;
use crate::execute::gather::{copy_rows, GatherError};
use crate::execute::stream::{self, ServerAnswer, StreamError};
use crate::router::gather::{quote_ident, Gather};

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Answer a tier-3 read in the simple protocol: gather, run with the
    /// answer streamed to the client, roll back.
    pub(super) async fn gather_and_answer(
        &mut self,
        route: &Route,
        g: &Gather,
    ) -> Result<(), SessionEnd> {
        let out = self.gather_and_run(route, g, None).await?;
        self.answer(out.err().unwrap_or_default());
        Ok(())
    }

    /// Gather `g`'s rows and run its statement on the merge connection:
    /// streamed to the client as a simple query (`portal` None), or as the
    /// extended-protocol `portal` request (Parse/Bind/Describe/Execute/
    /// Sync), whose answer is returned. The merge connection's transaction
    /// is rolled back either way. Err: the client's ErrorResponse.
    pub(super) async fn gather_and_run(
        &mut self,
        route: &Route,
        g: &Gather,
        portal: Option<BytesMut>,
    ) -> Result<Result<Option<Collected>, BytesMut>, SessionEnd> {
        let Some(merge_at) = route.shards.iter().position(|&s| s == self.default_shard) else {
            let mut out = BytesMut::new();
            PgError::error(
                sqlstate::INTERNAL_ERROR,
                "a gathered read has no merge shard",
            )
            .encode(&mut out);
            return Ok(Err(out));
        };
        let in_tx = self.multi.is_some();
        let conns = if in_tx {
            self.take_multi_conns(&route.shards).await
        } else {
            self.checkout_all(&route.shards).await
        };
        let mut conns = match conns {
            Ok(c) => c,
            Err(frame) => return Ok(Err(frame)),
        };
        let timeout = self.multi_statement_timeout();
        let deadline = Deadline::now() + timeout;
        let mut clean = vec![true; conns.len()];
        let merge_name = self.shard_name(self.default_shard).to_string();
        let mut outcome = self
            .gather_rows(&mut conns, merge_at, route, g, deadline, &mut clean)
            .await
            .map(|()| None);
        if outcome.is_ok() && clean[merge_at] {
            outcome = match portal {
                Some(request) => {
                    let merge = &mut conns[merge_at];
                    let left = deadline.saturating_duration_since(Deadline::now());
                    let ran = match merge.send_frames(&request, left).await {
                        Ok(()) => merge.collect_within(left, super::multi::MAX_COLLECT).await,
                        Err(e) => Err(e),
                    };
                    match ran {
                        Ok(c) if c.overflow => Err(too_large_answer()),
                        Ok(c) => match c.error.clone() {
                            Some(e) => Err(shard_error(Some(e), &merge_name, "")),
                            None => Ok(Some(c)),
                        },
                        Err(e) => {
                            clean[merge_at] = false;
                            Err(lost_error(&e, &merge_name, ""))
                        }
                    }
                }
                None => match self
                    .run_gathered(&mut conns[merge_at], &g.sql, deadline)
                    .await
                {
                    Ok(()) => Ok(None),
                    Err(StreamError::Client(e)) => return Err(SessionEnd::ClientGone(e.0)),
                    Err(StreamError::Shard { error, .. }) => Err(error),
                    Err(StreamError::Lost { error, .. }) => {
                        clean[merge_at] = false;
                        let timed_out = (Deadline::now() >= deadline).then_some(timeout);
                        Err(failed_error(
                            &error,
                            &merge_name,
                            "",
                            timed_out,
                            &self.proxy.metrics,
                        ))
                    }
                    Err(StreamError::Merge(e)) => {
                        let mut out = BytesMut::new();
                        e.encode(&mut out);
                        Err(out)
                    }
                },
            };
        }
        if in_tx {
            // The copies go with the savepoint; after a failure the whole
            // transaction is failed and its ROLLBACK takes them.
            if outcome.is_ok() && clean[merge_at] {
                let undo =
                    "ROLLBACK TO SAVEPOINT shardwire_gather; RELEASE SAVEPOINT shardwire_gather";
                let undone = conns[merge_at]
                    .run_collect(undo, super::multi::CONTROL_TIMEOUT, 64 * 1024)
                    .await;
                match undone {
                    Ok(c) if c.error.is_none() && c.status == TxStatus::InBlock => {}
                    Ok(c) => outcome = Err(shard_error(c.error, &merge_name, "")),
                    Err(e) => {
                        clean[merge_at] = false;
                        outcome = Err(lost_error(&e, &merge_name, ""));
                    }
                }
            }
            let m = self
                .multi
                .as_mut()
                .expect("in a transaction over several shards");
            for ((conn, shard), ok) in conns.into_iter().zip(&route.shards).zip(&clean) {
                if *ok {
                    m.conns[*shard] = Some(conn);
                }
            }
            if outcome.is_err() {
                m.failed = true;
                self.tx_status = TxStatus::Failed;
            }
            return Ok(outcome);
        }
        // The copies go with the transaction.
        if clean[merge_at]
            && conns[merge_at]
                .run_internal("ROLLBACK", super::multi::CONTROL_TIMEOUT)
                .await
                .is_err()
        {
            clean[merge_at] = false;
        }
        release_clean(conns, &clean);
        Ok(outcome)
    }

    /// The transaction's connections to `shards` (opened with its BEGIN
    /// where it has none yet), taken out of it for a gather: the caller
    /// puts back those still usable.
    async fn take_multi_conns(&mut self, shards: &[usize]) -> Result<Vec<PooledConn>, BytesMut> {
        for &s in shards {
            self.multi_conn(s).await?;
        }
        let m = self.multi.as_mut().ok_or_else(BytesMut::new)?;
        let mut out = Vec::with_capacity(shards.len());
        for &s in shards {
            match m.conns[s].take() {
                Some(c) => out.push(c),
                None => {
                    for (c, &back) in out.into_iter().zip(shards) {
                        m.conns[back] = Some(c);
                    }
                    return Err(BytesMut::new());
                }
            }
        }
        Ok(out)
    }

    /// Open the merge connection's transaction and fill the copies: the
    /// merge shard's own rows by CREATE TABLE AS, every other shard's by
    /// COPY. The client's ErrorResponse on failure (`clean` says which
    /// connections must not go back to their pool).
    async fn gather_rows(
        &mut self,
        conns: &mut [PooledConn],
        merge_at: usize,
        route: &Route,
        g: &Gather,
        deadline: Deadline,
        clean: &mut [bool],
    ) -> Result<(), BytesMut> {
        let max = self.config.limits.max_intermediate_rows;
        let shard_count = self.router.shard_names().len();
        let merge_shard = route.shards[merge_at];
        let merge_name = self.shard_name(merge_shard).to_string();
        let left = || deadline.saturating_duration_since(Deadline::now());
        // Outside a transaction block the copies get one of their own;
        // inside one, a savepoint.
        let mut setup = String::from(if self.multi.is_some() {
            "SAVEPOINT shardwire_gather"
        } else {
            "BEGIN"
        });
        let mut holders: Vec<Vec<usize>> = Vec::with_capacity(g.tables.len());
        for t in &g.tables {
            let Some(rule) = self.router.table(&t.rule).cloned() else {
                let mut out = BytesMut::new();
                PgError::error(
                    sqlstate::INTERNAL_ERROR,
                    format!("no rule for table \"{}\"", t.rule),
                )
                .encode(&mut out);
                return Err(out);
            };
            let held = rule.shards(shard_count);
            // The merge shard's own rows, if it holds the table (else only
            // its columns: rows left there by a move are not its rows).
            let own = if held.contains(&merge_shard) {
                ""
            } else {
                " WHERE false"
            };
            setup.push_str(&format!(
                "; CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT * FROM {}{own}",
                quote_ident(&t.temp),
                t.source
            ));
            holders.push(held);
        }
        let merge = &mut conns[merge_at];
        let c = match merge.run_collect(&setup, left(), 64 * 1024).await {
            Ok(c) => c,
            Err(e) => {
                clean[merge_at] = false;
                return Err(lost_error(&e, &merge_name, ""));
            }
        };
        if let Some(e) = c.error {
            return Err(shard_error(Some(e), &merge_name, ""));
        }
        let mut rows: u64 = c
            .frames
            .iter()
            .filter(|f| f[0] == be::COMMAND_COMPLETE)
            .filter_map(|f| {
                let body = protocol::body(f);
                std::str::from_utf8(body.strip_suffix(b"\0").unwrap_or(body))
                    .ok()?
                    .strip_prefix("SELECT ")?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        let too_many = |s: &Self| {
            s.proxy
                .metrics
                .gather_too_large
                .fetch_add(1, Ordering::Relaxed);
            let mut out = BytesMut::new();
            PgError::error(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "this query needs more than {max} rows of its sharded tables gathered on one server (limits.max_intermediate_rows)"
                ),
            )
            .with_hint("add conditions on the shard key so that the shards can answer it, or raise limits.max_intermediate_rows")
            .encode(&mut out);
            out
        };
        if rows > max {
            return Err(too_many(self));
        }
        for (t, held) in g.tables.iter().zip(&holders) {
            let select = format!("SELECT * FROM {}", t.source);
            for &shard in held.iter().filter(|&&s| s != merge_shard) {
                let Some(at) = route.shards.iter().position(|&s| s == shard) else {
                    continue;
                };
                let name = self.shard_name(shard).to_string();
                let (source, merge) = pair(conns, at, merge_at);
                let copied =
                    copy_rows(source, merge, &select, &t.temp_ref(), max - rows, deadline).await;
                match copied {
                    Ok(c) => {
                        rows += c.rows;
                        self.proxy
                            .metrics
                            .gathered_rows
                            .fetch_add(c.rows, Ordering::Relaxed);
                        if rows > max {
                            return Err(too_many(self));
                        }
                    }
                    Err(GatherError::TooMany) => {
                        clean[at] = false;
                        return Err(too_many(self));
                    }
                    Err(GatherError::Source(e)) => return Err(shard_error(Some(e), &name, "")),
                    Err(GatherError::Merge(e)) => {
                        return Err(shard_error(Some(e), &merge_name, ""))
                    }
                    Err(GatherError::SourceLost(e)) => {
                        clean[at] = false;
                        return Err(lost_error(&e, &name, ""));
                    }
                    Err(GatherError::MergeLost(e)) => {
                        clean[merge_at] = false;
                        return Err(lost_error(&e, &merge_name, ""));
                    }
                }
            }
        }
        Ok(())
    }

    /// Run the rewritten statement on the merge connection, its answer
    /// streamed to the client.
    async fn run_gathered(
        &mut self,
        merge: &mut PooledConn,
        sql: &str,
        deadline: Deadline,
    ) -> Result<(), StreamError> {
        let mut request = BytesMut::new();
        protocol::query_frame(&mut request, sql);
        let left = deadline.saturating_duration_since(Deadline::now());
        merge
            .send_frames(&request, left)
            .await
            .map_err(|error| StreamError::Lost { shard: 0, error })?;
        let mut sources = [ServerAnswer::new(merge, deadline)];
        let mut sink = super::streamed::ClientSink {
            wr: &mut self.client_wr,
            out: &mut self.client_out,
            deadline,
            sent: 0,
        };
        let streamed = stream::concat(&mut sources, &mut sink).await;
        // What is left of the answer (after an error) up to ReadyForQuery.
        if !sources[0].drain(usize::MAX).await && sources[0].ended.is_none() {
            return Err(StreamError::Lost {
                shard: 0,
                error: crate::backend::BackendError::Lost {
                    server: self.shard_name(self.default_shard).to_string(),
                    cause: "the answer did not end".into(),
                },
            });
        }
        streamed.map(|_| ())
    }
}

/// The ErrorResponse for an answer larger than the proxy keeps.
fn too_large_answer() -> BytesMut {
    let mut out = BytesMut::new();
    PgError::error(
        sqlstate::PROGRAM_LIMIT_EXCEEDED,
        format!(
            "the answer of this cross-shard query is larger than {} MiB, which the proxy holds at most in the extended query protocol",
            super::multi::MAX_COLLECT / (1024 * 1024)
        ),
    )
    .with_hint("send it as a simple query, whose answer streams, or fetch fewer rows")
    .encode(&mut out);
    out
}

/// Two distinct connections of `conns`, mutably.
fn pair(conns: &mut [PooledConn], a: usize, b: usize) -> (&mut PooledConn, &mut PooledConn) {
    assert_ne!(a, b, "a shard's rows are never copied onto itself");
    if a < b {
        let (lo, hi) = conns.split_at_mut(b);
        (&mut lo[a], &mut hi[0])
    } else {
        let (lo, hi) = conns.split_at_mut(a);
        (&mut hi[0], &mut lo[b])
    }
}

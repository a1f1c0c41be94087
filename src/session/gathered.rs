//! Tier-3 reads (router::gather): PostgreSQL answers the statement on the
//! default shard's primary (the merge connection) from temporary copies
//! of the tables it reads, filled from the shards (execute::gather), in
//! both protocols: the simple protocol's answer streams to the client, the
//! extended protocol's is collected and returned.
//!
//! The merge connection does its work in a transaction of its own that is
//! rolled back at the end, so the copies vanish with it and the connection
//! goes back to its pool as it came, whatever failed.
//!
//! Outside a transaction block the merge connection is one of the
//! statement's shard connections: it copies its own rows of each sharded
//! table with CREATE TABLE AS and reads the unsharded and reference tables
//! itself; each other shard's rows come by COPY. Each shard's rows are
//! read by their own statement; like the other cross-shard reads, the
//! shards' snapshots are not one snapshot.
//!
//! Inside a transaction over several shards (multitx.rs, multiext.rs) the
//! rows are read on the transaction's own connections, so the statement
//! sees the transaction's uncommitted writes and snapshots, and every
//! table the statement names (unsharded and reference ones too, from the
//! default shard) is copied onto a merge connection apart from the
//! transaction: PostgreSQL cannot PREPARE a transaction that used
//! temporary tables, and the transaction may need two-phase commit. A
//! statement that calls a function whose answer belongs to the
//! transaction (`now()`, `current_setting()`) is refused there. A failure
//! fails the transaction, as an error does in PostgreSQL.

use tokio::time::Instant as Deadline;

use super::multi::{failed_error, lost_error, shard_error};
use super::*;
use crate::backend::conn::Collected;
use crate::backend::pool::PooledConn;
use crate::execute::gather::{copy_rows, GatherError};
use crate::execute::stream::{self, ServerAnswer, StreamError};
use crate::router::gather::{quote_ident, Gather, GatheredTable};

/// The connections of one gather: the merge connection and the sources
/// (by shard), each with whether it may go back to where it came from.
struct GatherConns {
    merge: PooledConn,
    merge_shard: usize,
    merge_clean: bool,
    sources: Vec<(usize, PooledConn, bool)>,
    /// The merge connection's own rows of sharded tables are copied with
    /// CREATE TABLE AS (outside a transaction, where it is one of the
    /// statement's shard connections).
    merge_holds_rows: bool,
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Answer a tier-3 read in the simple protocol.
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
    /// Sync) built by `portal` from the statement to run, whose answer is
    /// returned. Err: the client's ErrorResponse.
    pub(super) async fn gather_and_run(
        &mut self,
        route: &Route,
        g: &Gather,
        portal: Option<&(dyn Fn(&str) -> BytesMut + Sync)>,
    ) -> Result<Result<Option<Collected>, BytesMut>, SessionEnd> {
        let in_tx = self.multi.is_some();
        let sql = if in_tx {
            if let Some(f) = &g.transaction_bound {
                return Ok(Err(encoded(
                    PgError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!(
                            "this read is answered from rows gathered from several shards, apart from the transaction, and calls {f}(), whose answer belongs to the transaction"
                        ),
                    )
                    .with_hint("run it outside the transaction block, or compute the value in a separate statement"),
                )));
            }
            match &g.sql_all {
                Some(s) => s.as_str(),
                None => {
                    return Ok(Err(encoded(PgError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "this read needs rows gathered from several shards, and inside a transaction every table it names must be copied, which shardwire cannot do for one of them",
                    ).with_hint("run it outside the transaction block"))))
                }
            }
        } else {
            g.sql.as_str()
        };
        let mut conns = match self.gather_conns(route, in_tx).await {
            Ok(c) => c,
            Err(frame) => return Ok(Err(frame)),
        };
        let timeout = self.multi_statement_timeout();
        let deadline = Deadline::now() + timeout;
        let merge_name = self.shard_name(conns.merge_shard).to_string();
        let tables: Vec<&GatheredTable> = g.tables.iter().filter(|t| in_tx || !t.local).collect();
        let mut outcome = self
            .gather_rows(&mut conns, &tables, deadline)
            .await
            .map(|()| None);
        if outcome.is_ok() && conns.merge_clean {
            outcome = match portal {
                Some(request) => {
                    let merge = &mut conns.merge;
                    let left = deadline.saturating_duration_since(Deadline::now());
                    let ran = match merge.send_frames(&request(sql), left).await {
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
                            conns.merge_clean = false;
                            Err(lost_error(&e, &merge_name, ""))
                        }
                    }
                }
                None => match self.run_gathered(&mut conns.merge, sql, deadline).await {
                    Ok(()) => Ok(None),
                    Err(StreamError::Client(e)) => return Err(SessionEnd::ClientGone(e.0)),
                    Err(StreamError::Shard { error, .. }) => Err(error),
                    Err(StreamError::Lost { error, .. }) => {
                        conns.merge_clean = false;
                        let timed_out = (Deadline::now() >= deadline).then_some(timeout);
                        Err(failed_error(
                            &error,
                            &merge_name,
                            "",
                            timed_out,
                            &self.proxy.metrics,
                        ))
                    }
                    Err(StreamError::Merge(e)) => Err(encoded(e)),
                },
            };
        }
        // The copies go with the merge connection's transaction.
        if conns.merge_clean
            && conns
                .merge
                .run_internal("ROLLBACK", super::multi::CONTROL_TIMEOUT)
                .await
                .is_err()
        {
            conns.merge_clean = false;
        }
        if conns.merge_clean {
            conns.merge.release();
        }
        if in_tx {
            let m = self
                .multi
                .as_mut()
                .expect("in a transaction over several shards");
            for (shard, conn, clean) in conns.sources {
                if clean {
                    m.conns[shard] = Some(conn);
                }
            }
            if outcome.is_err() {
                // As after an error in a statement: the transaction is
                // aborted (its COPYs may have failed on its connections).
                m.failed = true;
                self.tx_status = TxStatus::Failed;
            }
        } else {
            for (_, conn, clean) in conns.sources {
                if clean {
                    conn.release();
                }
            }
        }
        Ok(outcome)
    }

    /// The merge connection and the sources: outside a transaction, one
    /// connection per shard of the route, the default shard's merging;
    /// inside one, the transaction's connections as sources (begun where
    /// it had none yet) and a merge connection of its own.
    async fn gather_conns(&mut self, route: &Route, in_tx: bool) -> Result<GatherConns, BytesMut> {
        let merge_shard = self.default_shard;
        if !in_tx {
            let conns = self.checkout_all(&route.shards).await?;
            let mut merge = None;
            let mut sources = Vec::with_capacity(conns.len());
            for (conn, &shard) in conns.into_iter().zip(&route.shards) {
                if shard == merge_shard {
                    merge = Some(conn);
                } else {
                    sources.push((shard, conn, true));
                }
            }
            let Some(merge) = merge else {
                for (_, c, _) in sources {
                    c.release();
                }
                return Err(encoded(PgError::error(
                    sqlstate::INTERNAL_ERROR,
                    "a gathered read has no merge shard",
                )));
            };
            return Ok(GatherConns {
                merge,
                merge_shard,
                merge_clean: true,
                sources,
                merge_holds_rows: true,
            });
        }
        for &s in &route.shards {
            self.multi_conn(s).await?;
        }
        let mut merge = self.checkout_all(&[merge_shard]).await?;
        let merge = merge.pop().expect("one connection");
        let m = self.multi.as_mut().ok_or_else(BytesMut::new)?;
        let sources = route
            .shards
            .iter()
            .filter_map(|&s| m.conns[s].take().map(|c| (s, c, true)))
            .collect();
        Ok(GatherConns {
            merge,
            merge_shard,
            merge_clean: true,
            sources,
            merge_holds_rows: false,
        })
    }

    /// Open the merge connection's transaction and fill the copies of
    /// `tables`. The client's ErrorResponse on failure (the connections
    /// that must not be reused are marked).
    async fn gather_rows(
        &mut self,
        c: &mut GatherConns,
        tables: &[&GatheredTable],
        deadline: Deadline,
    ) -> Result<(), BytesMut> {
        let max = self.config.limits.max_intermediate_rows;
        let shard_count = self.router.shard_names().len();
        let merge_name = self.shard_name(c.merge_shard).to_string();
        let left = || deadline.saturating_duration_since(Deadline::now());
        let mut setup = String::from("BEGIN");
        // Each table's shards, in the order of `tables`.
        let mut holders: Vec<Vec<usize>> = Vec::with_capacity(tables.len());
        for t in tables {
            let held = if t.local {
                vec![c.merge_shard]
            } else {
                match self.router.table(&t.rule) {
                    Some(rule) => rule.shards(shard_count),
                    None => {
                        return Err(encoded(PgError::error(
                            sqlstate::INTERNAL_ERROR,
                            format!("no rule for table \"{}\"", t.rule),
                        )))
                    }
                }
            };
            // The merge connection's own rows when it holds them (else only
            // the columns: rows left by a move are not its rows).
            let own = if c.merge_holds_rows && held.contains(&c.merge_shard) {
                ""
            } else {
                " WHERE false"
            };
            // Its columns, by name: each shard's rows are read by these
            // names, so a shard whose columns are in another order (DDL
            // run on it apart) still fills the right ones.
            setup.push_str(&format!(
                "; CREATE TEMP TABLE {temp} ON COMMIT DROP AS SELECT * FROM {}{own}; SELECT * FROM pg_temp.{temp} LIMIT 0",
                t.source,
                temp = quote_ident(&t.temp),
            ));
            holders.push(held);
        }
        let answer = match c.merge.run_collect(&setup, left(), 64 * 1024).await {
            Ok(a) => a,
            Err(e) => {
                c.merge_clean = false;
                return Err(lost_error(&e, &merge_name, ""));
            }
        };
        if let Some(e) = answer.error {
            return Err(shard_error(Some(e), &merge_name, ""));
        }
        let mut rows: u64 = answer
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
        if rows > max {
            return Err(self.too_many_rows(max));
        }
        // The copies' columns, in the order of `tables`.
        let described: Vec<Vec<String>> = answer
            .frames
            .iter()
            .filter(|f| f[0] == be::ROW_DESCRIPTION)
            .map(|f| {
                crate::execute::merge::columns(f)
                    .map(|cols| {
                        cols.into_iter()
                            .map(|(name, _, _)| quote_ident(&name))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect();
        if described.len() != tables.len() {
            return Err(encoded(PgError::error(
                sqlstate::INTERNAL_ERROR,
                "the merge server did not describe every gathered table",
            )));
        }
        for ((t, held), cols) in tables.iter().zip(&holders).zip(&described) {
            let select = format!("SELECT {} FROM {}", cols.join(", "), t.source);
            for &shard in held {
                if c.merge_holds_rows && shard == c.merge_shard {
                    continue;
                }
                let Some(at) = c.sources.iter().position(|(s, _, _)| *s == shard) else {
                    continue;
                };
                let name = self.shard_name(shard).to_string();
                let source = &mut c.sources[at].1;
                let copied = copy_rows(
                    source,
                    &mut c.merge,
                    &select,
                    &t.temp_ref(),
                    max - rows,
                    deadline,
                )
                .await;
                match copied {
                    Ok(n) => {
                        rows += n.rows;
                        self.proxy
                            .metrics
                            .gathered_rows
                            .fetch_add(n.rows, Ordering::Relaxed);
                        if rows > max {
                            return Err(self.too_many_rows(max));
                        }
                    }
                    Err(GatherError::TooMany) => {
                        c.sources[at].2 = false;
                        return Err(self.too_many_rows(max));
                    }
                    Err(GatherError::Source(e)) => return Err(shard_error(Some(e), &name, "")),
                    Err(GatherError::Merge(e)) => {
                        return Err(shard_error(Some(e), &merge_name, ""))
                    }
                    Err(GatherError::SourceLost(e)) => {
                        c.sources[at].2 = false;
                        return Err(lost_error(&e, &name, ""));
                    }
                    Err(GatherError::MergeLost(e)) => {
                        c.merge_clean = false;
                        return Err(lost_error(&e, &merge_name, ""));
                    }
                }
            }
        }
        Ok(())
    }

    /// The 54000 for a gather over limits.max_intermediate_rows.
    fn too_many_rows(&self, max: u64) -> BytesMut {
        self.proxy
            .metrics
            .gather_too_large
            .fetch_add(1, Ordering::Relaxed);
        encoded(
            PgError::error(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "this query needs more than {max} rows of its tables gathered on one server (limits.max_intermediate_rows)"
                ),
            )
            .with_hint("add conditions on the shard key so that the shards can answer it, or raise limits.max_intermediate_rows"),
        )
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

fn encoded(e: PgError) -> BytesMut {
    let mut out = BytesMut::new();
    e.encode(&mut out);
    out
}

/// The ErrorResponse for an answer larger than the proxy keeps.
fn too_large_answer() -> BytesMut {
    encoded(
        PgError::error(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!(
                "the answer of this cross-shard query is larger than {} MiB, which the proxy holds at most in the extended query protocol",
                super::multi::MAX_COLLECT / (1024 * 1024)
            ),
        )
        .with_hint("send it as a simple query, whose answer streams, or fetch fewer rows"),
    )
}

//! Cross-shard SELECTs whose answer streams to the client (plain rows
//! concatenated, rows merged by ORDER BY/LIMIT; execute::stream), in the
//! simple protocol outside a transaction. The session's part: check out a
//! connection per shard, send the query to all of them, give the merge
//! the client's socket as its sink, then settle the connections: an
//! answer read to its end goes back to its pool, one cut short (an error
//! on another shard, a LIMIT reached, a lost client) is drained a little
//! or closed.
//!
//! Rows already sent stay sent when a shard fails later: the client sees
//! them followed by the error, as PostgreSQL sends the rows of a scan
//! before an error in it. Every client takes the statement as failed.

use tokio::time::Instant as Deadline;

use super::multi::{failed_error, lost_error, release_clean, shard_error};
use super::*;
use crate::execute::stream::{self, FrameSink, ServerAnswer, SinkClosed, StreamError};
use crate::router::Merge;

/// The client's buffer is written out once it holds this much.
const FLUSH_AT: usize = 64 * 1024;
/// What the proxy reads and drops of an answer cut short before it rather
/// closes the connection (a new one costs less than a long drain).
const DRAIN_BUDGET: usize = 256 * 1024;

/// Whether `merge` can stream (the others need every shard's whole answer).
pub(super) fn streams(merge: &Merge) -> bool {
    matches!(merge, Merge::Concat | Merge::Sorted { .. })
}

/// The client's socket as a stream's sink: frames gather in the session's
/// client buffer, which is written out whenever it is large, all by the
/// statement's deadline.
pub(super) struct ClientSink<'a, W> {
    pub(super) wr: &'a mut W,
    pub(super) out: &'a mut BytesMut,
    pub(super) deadline: Deadline,
    /// Frames passed on so far.
    pub(super) sent: usize,
}

impl<W: AsyncWrite + Unpin> FrameSink for ClientSink<'_, W> {
    async fn send(&mut self, frame: &[u8]) -> Result<(), SinkClosed> {
        self.sent += 1;
        self.out.extend_from_slice(frame);
        if self.out.len() < FLUSH_AT {
            return Ok(());
        }
        let write = async {
            self.wr.write_all(self.out).await?;
            self.wr.flush().await
        };
        match tokio::time::timeout_at(self.deadline, write).await {
            Ok(Ok(())) => {
                self.out.clear();
                Ok(())
            }
            Ok(Err(e)) => Err(SinkClosed(e.to_string())),
            Err(_) => Err(SinkClosed(
                "the client took no rows before the statement's deadline".into(),
            )),
        }
    }
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Answer a cross-shard SELECT that `streams` by streaming it. A
    /// merge that refuses the shards' answers before anything reached the
    /// client (a column type it cannot order) is returned unanswered, so
    /// the caller may answer the statement another way.
    pub(super) async fn stream_scatter(
        &mut self,
        merge: &Merge,
        sql: &str,
        shards: &[usize],
    ) -> Result<Option<PgError>, SessionEnd> {
        let mut conns = match self.checkout_all(shards).await {
            Ok(c) => c,
            Err(frame) => {
                self.answer(frame);
                return Ok(None);
            }
        };
        let names: Vec<String> = shards
            .iter()
            .map(|s| self.shard_name(*s).to_string())
            .collect();
        let timeout = self.multi_statement_timeout();
        let deadline = Deadline::now() + timeout;
        let mut request = BytesMut::new();
        protocol::query_frame(&mut request, merge.shard_sql().unwrap_or(sql));

        // Every shard gets the query before any answer is read.
        let mut sent = 0;
        let mut failure = None;
        // The connection that failed: it is dropped, not pooled.
        let mut lost = None;
        for (i, conn) in conns.iter_mut().enumerate() {
            let left = deadline.saturating_duration_since(Deadline::now());
            match conn.send_frames(&request, left).await {
                Ok(()) => sent += 1,
                Err(e) => {
                    failure = Some(lost_error(&e, &names[i], ""));
                    lost = Some(i);
                    break;
                }
            }
        }
        let mut client_gone = None;
        let mut refused = None;
        let mut sources: Vec<ServerAnswer> = conns[..sent]
            .iter_mut()
            .map(|c| ServerAnswer::new(c, deadline))
            .collect();
        if failure.is_none() {
            let mut sink = ClientSink {
                wr: &mut self.client_wr,
                out: &mut self.client_out,
                deadline,
                sent: 0,
            };
            let streamed = match merge {
                Merge::Sorted {
                    keys,
                    limit,
                    offset,
                    ..
                } => stream::merge_sorted(keys, *limit, *offset, &mut sources, &mut sink).await,
                _ => stream::concat(&mut sources, &mut sink).await,
            };
            match streamed {
                Ok(_) => {}
                Err(StreamError::Shard { shard, error }) => {
                    failure = Some(shard_error(Some(error), &names[shard], ""));
                }
                Err(StreamError::Lost { shard, error }) => {
                    lost = Some(shard);
                    let timed_out = (Deadline::now() >= deadline).then_some(timeout);
                    failure = Some(failed_error(
                        &error,
                        &names[shard],
                        "",
                        timed_out,
                        &self.proxy.metrics,
                    ));
                }
                Err(StreamError::Merge(e)) if sink.sent == 0 => refused = Some(e),
                Err(StreamError::Merge(e)) => {
                    let mut out = BytesMut::new();
                    e.encode(&mut out);
                    failure = Some(out);
                }
                Err(StreamError::Client(e)) => client_gone = Some(e.0),
            }
        }
        if let Some(cause) = client_gone {
            // The connections close with the session's end; their servers
            // stop at their next write.
            return Err(SessionEnd::ClientGone(cause));
        }
        // An answer read to its end (or drained) goes back to its pool, as
        // does a connection that was sent nothing.
        let mut clean: Vec<bool> = (0..shards.len()).map(|i| lost != Some(i)).collect();
        for (i, source) in sources.iter_mut().enumerate() {
            clean[i] = clean[i] && source.drain(DRAIN_BUDGET).await;
        }
        drop(sources);
        release_clean(conns, &clean);
        if refused.is_some() {
            return Ok(refused);
        }
        self.answer(failure.unwrap_or_default());
        Ok(None)
    }
}

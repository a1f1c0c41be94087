//! The one way a statement goes out to several servers at once: every
//! request is written first, then every answer is read concurrently, all
//! within one deadline. So the shards work in parallel and a fan-out takes
//! about the slowest shard's time, never the sum of their times.
//!
//! Why write everything before reading anything: a shard starts working as
//! soon as its request arrives, so the second shard must not wait for the
//! first one's answer. Reading concurrently (not shard by shard) keeps a
//! large answer from one shard from stalling in its socket buffer while the
//! proxy waits for another.
//!
//! What an answer means (an error, a wrong transaction status, a lost
//! connection) is for the caller: a scatter outside a transaction, a
//! statement inside a multi-shard transaction and a broadcast DDL each
//! react differently. This module only promises that every request that
//! was written has had its answer read (or its connection reported lost),
//! so no connection is left with an unread answer.

use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use crate::backend::conn::{BackendError, Collected, ServerConn};

/// What became of one server's request.
#[derive(Debug)]
pub enum Exchange {
    /// The server answered up to ReadyForQuery (possibly with an error or
    /// an overflow; see `Collected`).
    Answered(Collected),
    /// The connection failed while writing or reading: it must be dropped.
    Lost(BackendError),
    /// Not written, because writing to an earlier server failed; the
    /// connection is as it was.
    NotSent,
}

/// Write `requests[i]` (whole frames, ending in Sync or a Query) to
/// `conns[i]` for every i, then read every answer, each up to `limit`
/// bytes, all within `timeout` from now. The result is in the order of
/// `conns`.
pub async fn exchange(
    conns: &mut [&mut ServerConn],
    requests: &[&[u8]],
    timeout: Duration,
    limit: usize,
) -> Vec<Exchange> {
    debug_assert_eq!(conns.len(), requests.len());
    let deadline = Instant::now() + timeout;
    let mut written = vec![false; conns.len()];
    let mut lost: Vec<Option<BackendError>> = (0..conns.len()).map(|_| None).collect();
    for (i, conn) in conns.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.send_frames(requests[i], left).await {
            Ok(()) => written[i] = true,
            Err(e) => {
                // Stop here: the servers written so far are still read, so
                // the caller can end their transactions cleanly.
                lost[i] = Some(e);
                break;
            }
        }
    }
    let reads = conns
        .iter_mut()
        .zip(&written)
        .filter(|(_, w)| **w)
        .map(|(conn, _)| {
            let left = deadline.saturating_duration_since(Instant::now());
            conn.collect_within(left, limit)
        });
    let mut answers = join_all(reads).await.into_iter();
    written
        .iter()
        .zip(lost)
        .map(|(w, lost)| match (w, lost) {
            (true, _) => match answers.next() {
                Some(Ok(c)) => Exchange::Answered(c),
                Some(Err(e)) => Exchange::Lost(e),
                None => Exchange::NotSent,
            },
            (false, Some(e)) => Exchange::Lost(e),
            (false, None) => Exchange::NotSent,
        })
        .collect()
}

//! Cross-shard answers that stream: plain rows concatenated in shard order
//! and rows merged by ORDER BY (then OFFSET and LIMIT) go to the client as
//! they arrive, so the proxy holds about one row per shard plus its
//! socket buffers however large the answer is. (The collecting merges of
//! `merge` and the session's aggregates keep every shard's whole answer,
//! up to a limit, which a scan of a large sharded table exceeds.)
//!
//! The nodes read from `FrameSource`s (a server's answer, frame by frame,
//! or a fake one in the tests) and write to a `FrameSink` (the client).
//! Reading one shard while the others wait is safe: a waiting server
//! blocks on its full socket, and nothing it sends is lost.
//!
//! What a node does not do: drain what a shard still had to say after an
//! error or a LIMIT (the caller does, or closes the connection), and say
//! that the answer ended (the caller adds the ReadyForQuery).

use std::cmp::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;

use super::merge::{compare_keys, key_values, resolve, Resolved};
use crate::backend::conn::{BackendError, ServerConn};
use crate::protocol::{self, be, PgError, TxStatus};
use crate::router::SortKey;

/// One shard's answer, frame by frame.
#[allow(async_fn_in_trait)] // used generically, never as a trait object
pub trait FrameSource {
    /// The next frame of the answer, or None once it ended (after the
    /// server's ReadyForQuery, which the source keeps to itself).
    async fn next_frame(&mut self) -> Result<Option<BytesMut>, BackendError>;
}

/// Where a streamed answer goes.
#[allow(async_fn_in_trait)]
pub trait FrameSink {
    /// Pass on one frame; may wait until the client took earlier ones.
    async fn send(&mut self, frame: &[u8]) -> Result<(), SinkClosed>;
}

/// The client stopped taking data (gone, or nothing taken in time).
#[derive(Debug)]
pub struct SinkClosed(pub String);

/// Why a streamed answer stopped early. The client may have been sent
/// rows already, as PostgreSQL sends the rows before an error in a scan.
#[derive(Debug)]
pub enum StreamError {
    /// Source `shard` answered this ErrorResponse.
    Shard { shard: usize, error: BytesMut },
    /// Source `shard`'s connection failed.
    Lost { shard: usize, error: BackendError },
    /// The answers cannot be merged (a type without an order, rows out of
    /// the merge's order).
    Merge(PgError),
    /// The client is gone.
    Client(SinkClosed),
}

impl From<SinkClosed> for StreamError {
    fn from(e: SinkClosed) -> Self {
        StreamError::Client(e)
    }
}

/// Every shard's rows in shard order: the first RowDescription, shard 0's
/// notices, every DataRow and `SELECT n`. Returns n.
pub async fn concat<S: FrameSource, K: FrameSink>(
    sources: &mut [S],
    sink: &mut K,
) -> Result<u64, StreamError> {
    let mut described = false;
    let mut rows = 0u64;
    for (shard, source) in sources.iter_mut().enumerate() {
        while let Some(frame) = next_row(source, shard, &mut described, sink).await? {
            if frame[0] == be::DATA_ROW {
                rows += 1;
            }
            sink.send(&frame).await?;
        }
    }
    complete(sink, rows).await?;
    Ok(rows)
}

/// The shards' rows, each shard's sorted by `keys`, merged in order; rows
/// from `offset` on, at most `limit` of them, then `SELECT n`. Ties go to
/// the lower shard. Returns n. Once `limit` rows are out, the sources are
/// left where they are (the caller drains or drops them).
pub async fn merge_sorted<S: FrameSource, K: FrameSink>(
    keys: &[SortKey],
    limit: Option<u64>,
    offset: u64,
    sources: &mut [S],
    sink: &mut K,
) -> Result<u64, StreamError> {
    let end = limit.map(|l| offset.saturating_add(l));
    // Every shard's first row (and the description) before any row is out.
    let mut described = false;
    let mut resolved: Option<Vec<Resolved>> = None;
    let mut heads: Vec<Option<BytesMut>> = Vec::with_capacity(sources.len());
    for (shard, source) in sources.iter_mut().enumerate() {
        let head = loop {
            match next_row(source, shard, &mut described, sink).await? {
                Some(d) if d[0] == be::ROW_DESCRIPTION => {
                    resolved = Some(resolve(keys, &d).map_err(StreamError::Merge)?);
                    sink.send(&d).await?;
                }
                row => break row,
            }
        };
        heads.push(head);
    }
    let Some(resolved) = resolved else {
        return Err(StreamError::Merge(super::merge::bad("no row description")));
    };
    let (mut taken, mut sent) = (0u64, 0u64);
    while end.is_none_or(|e| taken < e) {
        let Some(shard) = least(&resolved, &heads)? else {
            break;
        };
        let row = heads[shard].take().expect("least is a present head");
        if taken >= offset {
            sink.send(&row).await?;
            sent += 1;
        }
        taken += 1;
        if end.is_some_and(|e| taken >= e) {
            break;
        }
        // The description came already: only rows follow.
        let following = next_row(&mut sources[shard], shard, &mut described, sink).await?;
        if let Some(following) = &following {
            let (now, before) = (
                key_values(&resolved, following).map_err(StreamError::Merge)?,
                key_values(&resolved, &row).map_err(StreamError::Merge)?,
            );
            if compare_keys(&resolved, &now, &before) == Ordering::Less {
                return Err(StreamError::Merge(super::merge::out_of_order(shard)));
            }
        }
        heads[shard] = following;
    }
    complete(sink, sent).await?;
    Ok(sent)
}

/// The shard whose head row comes first (the lowest shard among equals).
fn least(keys: &[Resolved], heads: &[Option<BytesMut>]) -> Result<Option<usize>, StreamError> {
    let mut best: Option<(usize, Vec<Option<super::merge::Val<'_>>>)> = None;
    for (shard, head) in heads.iter().enumerate() {
        let Some(row) = head else { continue };
        let vals = key_values(keys, row).map_err(StreamError::Merge)?;
        let better = match &best {
            None => true,
            Some((_, b)) => compare_keys(keys, &vals, b) == Ordering::Less,
        };
        if better {
            best = Some((shard, vals));
        }
    }
    Ok(best.map(|(s, _)| s))
}

/// Source `shard`'s next frame that matters to a merge: a DataRow, or the
/// first RowDescription of all the sources (`described`: one came
/// already; the other shards' copies are dropped). None at the end of its
/// answer. Shard 0's notices on the way are passed on; the rest
/// (CommandComplete, ...) is dropped: the merge writes its own.
async fn next_row<S: FrameSource, K: FrameSink>(
    source: &mut S,
    shard: usize,
    described: &mut bool,
    sink: &mut K,
) -> Result<Option<BytesMut>, StreamError> {
    while let Some(frame) = next(source, shard).await? {
        match frame[0] {
            be::ROW_DESCRIPTION if !*described => {
                *described = true;
                return Ok(Some(frame));
            }
            be::DATA_ROW => return Ok(Some(frame)),
            be::NOTICE_RESPONSE if shard == 0 => sink.send(&frame).await?,
            _ => {}
        }
    }
    Ok(None)
}

/// The next frame of source `shard`, its ErrorResponse and failure as the
/// stream's error.
async fn next<S: FrameSource>(
    source: &mut S,
    shard: usize,
) -> Result<Option<BytesMut>, StreamError> {
    match source.next_frame().await {
        Ok(Some(f)) if f[0] == be::ERROR_RESPONSE => Err(StreamError::Shard { shard, error: f }),
        Ok(f) => Ok(f),
        Err(error) => Err(StreamError::Lost { shard, error }),
    }
}

async fn complete<K: FrameSink>(sink: &mut K, rows: u64) -> Result<(), SinkClosed> {
    let mut tag = BytesMut::new();
    protocol::command_complete(&mut tag, &format!("SELECT {rows}"));
    sink.send(&tag).await
}

/// A server's answer to a query as a `FrameSource`, every frame within
/// one deadline. ParameterStatus is noted on the connection, not passed
/// on; ReadyForQuery ends it and its status is kept.
pub struct ServerAnswer<'a> {
    conn: &'a mut ServerConn,
    deadline: Instant,
    /// The transaction status of the ReadyForQuery, once it came.
    pub ended: Option<TxStatus>,
}

impl<'a> ServerAnswer<'a> {
    pub fn new(conn: &'a mut ServerConn, deadline: Instant) -> Self {
        ServerAnswer {
            conn,
            deadline,
            ended: None,
        }
    }

    /// Read and drop what is left of the answer, at most `budget` bytes
    /// and until the deadline. Whether the answer ended with the
    /// connection idle and healthy (it can go back to its pool); false
    /// means the caller drops it.
    pub async fn drain(&mut self, budget: usize) -> bool {
        let mut read = 0usize;
        while self.ended.is_none() {
            match self.next_frame().await {
                Ok(Some(f)) => {
                    read += f.len();
                    if read > budget {
                        return false;
                    }
                }
                Ok(None) => break,
                Err(_) => return false,
            }
        }
        self.ended == Some(TxStatus::Idle)
    }
}

impl FrameSource for ServerAnswer<'_> {
    async fn next_frame(&mut self) -> Result<Option<BytesMut>, BackendError> {
        if self.ended.is_some() {
            return Ok(None);
        }
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            let frame = self
                .conn
                .recv_frame(left.max(Duration::from_millis(1)))
                .await?;
            match frame[0] {
                be::PARAMETER_STATUS => self.conn.note_parameter(protocol::body(&frame)),
                be::READY_FOR_QUERY => {
                    self.ended = Some(TxStatus::of_ready(&frame));
                    return Ok(None);
                }
                _ => return Ok(Some(frame)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execute::merge::oid::{INT4, TEXT};
    use crate::router::SortColumn;
    use std::collections::VecDeque;

    /// A shard's answer from memory; counts how far it was read.
    struct Fake {
        frames: VecDeque<BytesMut>,
        read: usize,
    }

    impl FrameSource for Fake {
        async fn next_frame(&mut self) -> Result<Option<BytesMut>, BackendError> {
            self.read += 1;
            Ok(self.frames.pop_front())
        }
    }

    #[derive(Default)]
    struct Sink {
        frames: Vec<BytesMut>,
    }

    impl FrameSink for Sink {
        async fn send(&mut self, frame: &[u8]) -> Result<(), SinkClosed> {
            self.frames.push(BytesMut::from(frame));
            Ok(())
        }
    }

    impl Sink {
        /// The rows' first values and the CommandComplete tag.
        fn rows(&self) -> (Vec<String>, String) {
            let mut rows = vec![];
            let mut tag = String::new();
            for f in &self.frames {
                match f[0] {
                    be::DATA_ROW => {
                        let v = protocol::data_row_values(f).unwrap();
                        rows.push(String::from_utf8_lossy(v[0].unwrap()).into_owned());
                    }
                    be::COMMAND_COMPLETE => {
                        let body = protocol::body(f);
                        tag = String::from_utf8_lossy(&body[..body.len() - 1]).into_owned();
                    }
                    _ => {}
                }
            }
            (rows, tag)
        }
    }

    fn shard(rows: &[&str]) -> Fake {
        let mut frames = VecDeque::new();
        let mut f = BytesMut::new();
        protocol::row_description_text(&mut f, &["v"]);
        frames.push_back(f);
        for r in rows {
            let mut f = BytesMut::new();
            protocol::data_row_text(&mut f, &[Some(r)]);
            frames.push_back(f);
        }
        let mut f = BytesMut::new();
        protocol::command_complete(&mut f, &format!("SELECT {}", rows.len()));
        frames.push_back(f);
        Fake { frames, read: 0 }
    }

    /// The same with an int4 column, so the merge compares numbers.
    fn int_shard(rows: &[i32]) -> Fake {
        let mut s = shard(&[]);
        s.frames.pop_back();
        let desc = s.frames.pop_front().unwrap();
        let retyped = retype(&desc, INT4);
        s.frames.push_front(retyped);
        for r in rows {
            let mut f = BytesMut::new();
            protocol::data_row_text(&mut f, &[Some(&r.to_string())]);
            s.frames.push_back(f);
        }
        let mut f = BytesMut::new();
        protocol::command_complete(&mut f, &format!("SELECT {}", rows.len()));
        s.frames.push_back(f);
        s
    }

    /// A one-column RowDescription with another type OID.
    fn retype(desc: &[u8], oid: i32) -> BytesMut {
        let mut out = BytesMut::from(desc);
        // tag, length, count(2), "v\0", table oid(4), attnum(2), then the type.
        let at = 1 + 4 + 2 + 2 + 4 + 2;
        assert_eq!(
            i32::from_be_bytes(out[at..at + 4].try_into().unwrap()),
            TEXT
        );
        out[at..at + 4].copy_from_slice(&oid.to_be_bytes());
        out
    }

    fn by_first(descending: bool) -> Vec<SortKey> {
        vec![SortKey {
            column: SortColumn::Position(0),
            descending,
            nulls_first: descending,
        }]
    }

    /// A merge ordered by the first column, run to its end.
    fn sorted(
        descending: bool,
        limit: Option<u64>,
        offset: u64,
        sources: &mut [Fake],
        sink: &mut Sink,
    ) -> Result<u64, StreamError> {
        run(merge_sorted(
            &by_first(descending),
            limit,
            offset,
            sources,
            sink,
        ))
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn concat_passes_rows_in_shard_order_with_one_description() {
        let mut sources = vec![shard(&["a", "b"]), shard(&[]), shard(&["c"])];
        let mut sink = Sink::default();
        let n = run(concat(&mut sources, &mut sink)).unwrap();
        assert_eq!(n, 3);
        let descriptions = sink
            .frames
            .iter()
            .filter(|f| f[0] == be::ROW_DESCRIPTION)
            .count();
        assert_eq!(descriptions, 1);
        assert_eq!(
            sink.rows(),
            (vec!["a".into(), "b".into(), "c".into()], "SELECT 3".into())
        );
    }

    #[test]
    fn sorted_merge_interleaves_and_limits_without_reading_everything() {
        let mut sources = vec![int_shard(&[1, 4, 5, 9, 10, 11]), int_shard(&[2, 3, 8, 12])];
        let mut sink = Sink::default();
        let n = sorted(false, Some(3), 1, &mut sources, &mut sink).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            sink.rows(),
            (vec!["2".into(), "3".into(), "4".into()], "SELECT 3".into())
        );
        // Shard 0 was read up to its third row, not to its end.
        assert!(sources[0].frames.len() >= 4, "{}", sources[0].frames.len());
    }

    #[test]
    fn sorted_merge_descending_and_ties_go_to_the_lower_shard() {
        let mut sources = vec![int_shard(&[9, 5, 5]), int_shard(&[7, 5, 1])];
        let mut sink = Sink::default();
        sorted(true, None, 0, &mut sources, &mut sink).unwrap();
        let (rows, tag) = sink.rows();
        assert_eq!(rows, ["9", "7", "5", "5", "5", "1"]);
        assert_eq!(tag, "SELECT 6");
    }

    #[test]
    fn a_shard_out_of_order_is_refused_not_merged() {
        let mut sources = vec![int_shard(&[1, 3, 2]), int_shard(&[10])];
        let mut sink = Sink::default();
        let e = sorted(false, None, 0, &mut sources, &mut sink).unwrap_err();
        assert!(
            matches!(e, StreamError::Merge(ref p) if p.code == "0A000"),
            "{e:?}"
        );
    }

    #[test]
    fn a_shard_error_stops_the_stream_with_that_shard_named() {
        let mut bad = shard(&["x"]);
        bad.frames.pop_back();
        let mut f = BytesMut::new();
        PgError::error("22012", "division by zero").encode(&mut f);
        bad.frames.push_back(f);
        let mut sources = vec![shard(&["a"]), bad, shard(&["z"])];
        let mut sink = Sink::default();
        let e = run(concat(&mut sources, &mut sink)).unwrap_err();
        assert!(matches!(e, StreamError::Shard { shard: 1, .. }), "{e:?}");
        // The third shard was never read.
        assert_eq!(sources[2].read, 0);
    }

    #[test]
    fn no_row_description_is_refused_for_a_sorted_merge() {
        let mut empty = Fake {
            frames: VecDeque::new(),
            read: 0,
        };
        let mut f = BytesMut::new();
        protocol::command_complete(&mut f, "SELECT 0");
        empty.frames.push_back(f);
        let mut sources = vec![empty];
        let mut sink = Sink::default();
        let e = sorted(false, None, 0, &mut sources, &mut sink).unwrap_err();
        assert!(matches!(e, StreamError::Merge(_)), "{e:?}");
    }
}

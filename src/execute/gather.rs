//! Tier 3's data movement (router::gather): one shard's rows of a table
//! streamed into the temporary copy on the merge connection, as binary
//! COPY from one server straight into COPY on the other. The proxy holds
//! one buffer of rows at a time, whatever the table's size, and counts the
//! rows so that a job larger than `max_intermediate_rows` stops early.
//!
//! Binary COPY carries every value in its type's own send format, so a
//! value arrives exactly as it left (no text round trip through DateStyle,
//! extra_float_digits or a client encoding).

use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;

use crate::backend::conn::{BackendError, ServerConn};
use crate::protocol::{self, be, fe};

/// Rows bound for the merge connection are sent once this much is
/// buffered.
const CHUNK: usize = 64 * 1024;

/// Why rows could not be gathered.
#[derive(Debug)]
pub enum GatherError {
    /// The shard the rows come from answered this ErrorResponse.
    Source(BytesMut),
    /// The merge connection answered this ErrorResponse.
    Merge(BytesMut),
    /// The shard's connection failed (it is unusable).
    SourceLost(BackendError),
    /// The merge connection failed (it is unusable).
    MergeLost(BackendError),
    /// More rows than allowed; the source connection is left mid-COPY.
    TooMany,
}

/// What one `copy_rows` moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub rows: u64,
}

/// Copy the rows `select` gives on `source` into `temp` on `merge` (which
/// is in a transaction), allowing at most `max_rows` of them. On an error
/// the merge connection's transaction is aborted (the caller rolls it
/// back); `TooMany` and `SourceLost` leave `source` unusable.
pub async fn copy_rows(
    source: &mut ServerConn,
    merge: &mut ServerConn,
    select: &str,
    temp: &str,
    max_rows: u64,
    deadline: Instant,
) -> Result<Copied, GatherError> {
    let left = |d: Instant| {
        d.saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut out = BytesMut::new();
    protocol::query_frame(&mut out, &format!("COPY {temp} FROM STDIN (FORMAT binary)"));
    merge
        .send_frames(&out, left(deadline))
        .await
        .map_err(GatherError::MergeLost)?;
    // The merge side takes COPY, or says why not.
    loop {
        let f = merge
            .recv_frame(left(deadline))
            .await
            .map_err(GatherError::MergeLost)?;
        match f[0] {
            be::COPY_IN_RESPONSE => break,
            be::ERROR_RESPONSE => {
                finish_merge(merge, deadline).await?;
                return Err(GatherError::Merge(f));
            }
            be::PARAMETER_STATUS => merge.note_parameter(protocol::body(&f)),
            _ => {}
        }
    }
    out.clear();
    protocol::query_frame(
        &mut out,
        &format!("COPY ({select}) TO STDOUT (FORMAT binary)"),
    );
    if let Err(e) = source.send_frames(&out, left(deadline)).await {
        fail_copy(merge, "the shard's connection was lost", deadline).await?;
        return Err(GatherError::SourceLost(e));
    }
    out.clear();
    // CopyData messages: one per row, one for the header (PostgreSQL may
    // send it with the first row) and one for the trailer.
    let mut messages = 0u64;
    let mut source_error = None;
    loop {
        let f = match source.recv_frame(left(deadline)).await {
            Ok(f) => f,
            Err(e) => {
                fail_copy(merge, "the shard's connection was lost", deadline).await?;
                return Err(GatherError::SourceLost(e));
            }
        };
        match f[0] {
            fe::COPY_DATA => {
                messages += 1;
                if messages > max_rows.saturating_add(2) {
                    fail_copy(merge, "too many rows", deadline).await?;
                    return Err(GatherError::TooMany);
                }
                // CopyData is the same message both ways.
                out.extend_from_slice(&f);
                if out.len() >= CHUNK {
                    merge
                        .send_frames(&out, left(deadline))
                        .await
                        .map_err(GatherError::MergeLost)?;
                    out.clear();
                }
            }
            be::ERROR_RESPONSE => {
                source_error.get_or_insert(f);
            }
            be::PARAMETER_STATUS => source.note_parameter(protocol::body(&f)),
            be::READY_FOR_QUERY => break,
            // CopyOutResponse, CopyDone, CommandComplete, notices.
            _ => {}
        }
    }
    if let Some(e) = source_error {
        fail_copy(merge, "the shard answered an error", deadline).await?;
        return Err(GatherError::Source(e));
    }
    out.extend_from_slice(&protocol::empty_frame(fe::COPY_DONE));
    merge
        .send_frames(&out, left(deadline))
        .await
        .map_err(GatherError::MergeLost)?;
    let (tag, error) = finish_merge(merge, deadline).await?;
    if let Some(e) = error {
        return Err(GatherError::Merge(e));
    }
    let rows = tag
        .as_deref()
        .and_then(|t| t.strip_prefix("COPY "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok(Copied { rows })
}

/// End the merge connection's COPY with CopyFail and read its answer.
async fn fail_copy(
    merge: &mut ServerConn,
    why: &str,
    deadline: Instant,
) -> Result<(), GatherError> {
    let mut out = BytesMut::new();
    let at = protocol::begin_frame(&mut out, fe::COPY_FAIL);
    out.extend_from_slice(why.as_bytes());
    out.extend_from_slice(b"\0");
    protocol::finish_frame(&mut out, at);
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    merge
        .send_frames(&out, left)
        .await
        .map_err(GatherError::MergeLost)?;
    finish_merge(merge, deadline).await.map(|_| ())
}

/// Read the merge connection's answer to its end: its CommandComplete tag
/// and its error, if any.
async fn finish_merge(
    merge: &mut ServerConn,
    deadline: Instant,
) -> Result<(Option<String>, Option<BytesMut>), GatherError> {
    let (mut tag, mut error) = (None, None);
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let f = merge
            .recv_frame(left)
            .await
            .map_err(GatherError::MergeLost)?;
        match f[0] {
            be::COMMAND_COMPLETE => {
                let body = protocol::body(&f);
                tag = Some(
                    String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(body)).into_owned(),
                );
            }
            be::ERROR_RESPONSE => {
                error.get_or_insert(f);
            }
            be::PARAMETER_STATUS => merge.note_parameter(protocol::body(&f)),
            be::READY_FOR_QUERY => return Ok((tag, error)),
            _ => {}
        }
    }
}

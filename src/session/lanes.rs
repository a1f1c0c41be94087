//! Which batches a session sends to a lane (backend::lane), and sending
//! them.
//!
//! A lane shares one server among many sessions, so only a batch that
//! cannot leave anything behind on it may go there, and only from a
//! session that holds nothing: no server, no transaction, nothing in
//! flight or held back. Reads must go to primaries (a batch on a sharded
//! table goes to the lane of the shard its key routes it to), and no
//! statement timeout (cancelling a shared server's statement could hit
//! another session's) or rate limit may apply.
//!
//! The batch must be a Bind of a named statement followed, all already
//! read, by Describe or Close of a portal, one Execute, and Sync. Its
//! statement must be a single SELECT that writes nothing (no FOR UPDATE,
//! no data-modifying WITH) and calls only functions from [`LANE_FUNCTIONS`]
//! (no `set_config`, advisory locks or user functions that might), and it
//! must have run fast on the ordinary path first: the lane serves batches
//! in order, so a slow statement would hold up every session queued
//! behind it.

use crate::protocol::TxStatus;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use super::bind::Bind;
use super::statements::{rename_bind, Statement};
use super::{Session, SessionEnd, Timing};
use crate::backend::lane::{self, Batch};
use crate::config::{PoolMode, ReadFrom};
use crate::protocol::{self, fe, BodyReader};
use crate::router::Kind;
use crate::stats::metrics::RouteKind;

/// Functions a statement on a lane may call: built-ins that change no
/// session state.
const LANE_FUNCTIONS: &[&str] = &[
    "abs",
    "avg",
    "ceil",
    "char_length",
    "coalesce",
    "count",
    "floor",
    "greatest",
    "least",
    "length",
    "lower",
    "max",
    "min",
    "nullif",
    "round",
    "sum",
    "upper",
];

/// `Statement::lane` states. A candidate's next ordinary run is its
/// trial; from CANDIDATE + n, n more ordinary runs come first (a statement
/// that was slow on a lane waits [`COOLDOWN`] runs before another trial).
const UNCHECKED: u8 = 0;
const CANDIDATE: u8 = 1;
const COOLDOWN: u8 = 32;
/// Not a plain read: never on a lane.
const NEVER: u8 = 254;
const LANE: u8 = 255;
/// A trial this fast (the ordinary way, queueing for a server included)
/// puts the statement on lanes.
const FAST: Duration = Duration::from_millis(2);

/// The length of what follows a lane batch's Bind at the start of `buf`:
/// Describe and Close of a portal, one Execute, then Sync, all complete.
/// None if it is anything else or not all read yet.
fn batch_rest_len(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    let mut executes = 0;
    loop {
        let rest = buf.get(at..)?;
        let header = rest.get(..5)?;
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let len = usize::try_from(len).ok().filter(|l| *l >= 4)? + 1;
        if rest.len() < len {
            return None;
        }
        match header[0] {
            fe::DESCRIBE | fe::CLOSE if rest.get(5) == Some(&b'P') => {}
            fe::EXECUTE => executes += 1,
            fe::SYNC => return (executes == 1).then_some(at + len),
            _ => return None,
        }
        at += len;
    }
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Lanes may serve this session's batches at all.
    pub(super) fn lanes_apply(&self) -> bool {
        self.config.pool.pipeline_lanes > 0
            && self.pool_mode == PoolMode::Transaction
            && self.read_from == ReadFrom::Primary
            && self.config.limits.statement_timeout.is_zero()
            && self.client.bucket.is_none()
    }

    /// The statement of an ordinary Bind, if it may become one for lanes:
    /// its next Execute's time decides (see `lane_trial_done`).
    pub(super) fn lane_candidate(&self, name: &str) -> Option<Arc<Statement>> {
        let stmt = self.statements.get(name)?;
        let mut state = stmt.lane.load(Ordering::Relaxed);
        if state == UNCHECKED {
            state = if self.lane_safe(&stmt.sql) {
                CANDIDATE
            } else {
                NEVER
            };
            stmt.lane.store(state, Ordering::Relaxed);
        }
        (CANDIDATE..=CANDIDATE + COOLDOWN)
            .contains(&state)
            .then(|| stmt.clone())
    }

    /// A candidate's Execute finished on the ordinary path.
    pub(super) fn lane_trial_done(stmt: &Statement, took: Duration, failed: bool) {
        let state = stmt.lane.load(Ordering::Relaxed);
        if !(CANDIDATE..=CANDIDATE + COOLDOWN).contains(&state) {
            return;
        }
        let next = if state > CANDIDATE {
            state - 1
        } else if !failed && took < FAST {
            LANE
        } else {
            CANDIDATE
        };
        stmt.lane.store(next, Ordering::Relaxed);
    }

    /// The one shard a lane batch runs on: the default shard, or with
    /// sharded tables, where its Bind's key routes it (on the primary;
    /// None for anything else, which the ordinary path handles).
    fn lane_shard(&self, bind: &[u8], stmt: &Statement) -> Option<(usize, RouteKind)> {
        if !self.routing {
            return Some((self.default_shard, RouteKind::Default));
        }
        let params = Bind::decode(protocol::body(bind))
            .ok()?
            .params(Some(&stmt.types));
        let analysis = self.router.analysis(&stmt.sql);
        let route = self
            .router
            .route_analyzed(&stmt.sql, &analysis, &params, &self.hints)
            .ok()?;
        let [shard] = route.shards[..] else {
            return None;
        };
        if route.role.is_some_and(|r| r != ReadFrom::Primary) || shard >= self.pools.len() {
            return None;
        }
        Some((shard, super::routed::route_kind(&route)))
    }

    fn lane_safe(&self, sql: &str) -> bool {
        let analysis = self.router.analysis(sql);
        let [plan] = analysis.statements.as_slice() else {
            return false;
        };
        plan.kind == Kind::Select
            && !plan.writes
            && plan
                .functions
                .iter()
                .all(|f| LANE_FUNCTIONS.contains(&f.as_str()))
    }

    /// Run a Bind's whole batch on a lane if it is one for lanes; the
    /// client gets the answer. Returns false, having taken nothing, when
    /// the batch goes the ordinary way.
    pub(super) async fn try_lane(&mut self, bind: &BytesMut) -> Result<bool, SessionEnd> {
        if self.server.is_some()
            || !self.pending.is_empty()
            || !self.held.is_empty()
            || self.multi.is_some()
            || self.portal.is_some()
            || self.deferred_begin.is_some()
            || self.tx_status != TxStatus::Idle
            || self.replica.replaying
            || !self.lanes_apply()
            || self.is_paused()
        {
            return Ok(false);
        }
        let mut r = BodyReader::new(protocol::body(bind), "Bind");
        let (Ok(portal), Ok(name)) = (r.cstr_bytes(), r.cstr()) else {
            return Ok(false); // the ordinary path reports it
        };
        let rest = r.remaining();
        let Some(stmt) = self
            .statements
            .get(name)
            .filter(|s| {
                s.lane.load(Ordering::Relaxed) == LANE && !s.is_stale() && !s.needs_shape_check()
            })
            .cloned()
        else {
            return Ok(false);
        };
        let Some(rest_len) = batch_rest_len(self.client_rd.peek()) else {
            return Ok(false);
        };
        let Some((shard, kind)) = self.lane_shard(bind, &stmt) else {
            return Ok(false);
        };
        let lane = match &self.lane {
            Some(l)
                if !l.is_closed()
                    && l.is_of(&self.pools[shard])
                    && l.serves(&self.wanted_params) =>
            {
                l.clone()
            }
            _ => {
                let lane = self.pools[shard].lane(
                    &self.wanted_params,
                    self.client_id,
                    self.max_prepared_per_server,
                    &self.paused,
                );
                let Some(lane) = lane else {
                    return Ok(false);
                };
                self.lane = Some(lane.clone());
                lane
            }
        };
        // Earlier answers first: the wait below writes nothing.
        if !self.client_out.is_empty() {
            self.flush_client_now().await;
        }
        let Some(permit) = lane.admit() else {
            return Ok(false);
        };
        // Committed: the batch is the lane's now.
        let mut frames = BytesMut::with_capacity(bind.len() + 40 + rest_len);
        rename_bind(portal, &stmt.server_name, rest, &mut frames);
        frames.extend_from_slice(&self.client_rd.peek()[..rest_len]);
        self.client_rd.consume(rest_len);
        self.client.info.queries.fetch_add(1, Ordering::Relaxed);
        // The parked server is of no use while batches go to a lane.
        self.release_parked();
        let (tx, rx) = oneshot::channel();
        let started = Instant::now();
        permit.send(Batch {
            frames,
            statement: stmt.server_name.clone(),
            parse: stmt.parse_frame.clone(),
            answer: tx,
        });
        // A lane answers every batch it took, unless its task ended.
        let answer = rx
            .await
            .unwrap_or_else(|_| lane::failure(&lane::lost_error("the lane went away")));
        self.client_out.extend_from_slice(&answer.out);
        if answer.slow {
            stmt.lane.store(CANDIDATE + COOLDOWN, Ordering::Relaxed);
        }
        let sql = (!self.config.log.slow_statement.is_zero()).then(|| stmt.sql.clone());
        let timing = Timing {
            started,
            sql,
            lane_trial: None,
        };
        self.record_statement(&[shard], kind, timing, answer.failed);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn a_lane_batch_is_portal_messages_one_execute_and_sync() {
        let describe = frame(fe::DESCRIBE, b"P\0");
        let execute = frame(fe::EXECUTE, b"\0\0\0\0\0");
        let sync = frame(fe::SYNC, b"");
        let batch = [describe.clone(), execute.clone(), sync.clone()].concat();
        assert_eq!(batch_rest_len(&batch), Some(batch.len()));
        // What follows the Sync is not part of it.
        let more = [batch.clone(), execute.clone()].concat();
        assert_eq!(batch_rest_len(&more), Some(batch.len()));
        // Not all read yet.
        assert_eq!(batch_rest_len(&batch[..batch.len() - 1]), None);
        // No Execute, two Executes, a Parse, a statement Describe.
        assert_eq!(batch_rest_len(&sync), None);
        let two = [execute.clone(), execute.clone(), sync.clone()].concat();
        assert_eq!(batch_rest_len(&two), None);
        let parse = [
            frame(fe::PARSE, b"\0select 1\0\0\0"),
            execute.clone(),
            sync.clone(),
        ]
        .concat();
        assert_eq!(batch_rest_len(&parse), None);
        let stmt = [frame(fe::DESCRIBE, b"Ss\0"), execute, sync].concat();
        assert_eq!(batch_rest_len(&stmt), None);
        // A length that cannot be.
        assert_eq!(batch_rest_len(&[fe::SYNC, 0, 0, 0, 1]), None);
    }
}

//! Writes held during a rebalance's cutover (DESIGN.md §7).
//!
//! While the mover fences the moving rows, the catalog's shard map carries
//! the map it is about to change to (`Config::fenced`). A write that
//! starts a transaction and would go to other shards under that map than
//! under the map in force touches moving rows: instead of sending it to
//! the source, where the guard trigger would reject it, the session waits
//! for the next map (the move published, or the fence lifted) and routes
//! the write under it. Reads go on to the source, which keeps every row
//! until the new map is in force. A write inside a transaction that
//! already holds a server is not held (waiting while holding locks could
//! stall the cutover); the guard decides for it.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::Session;
use crate::protocol::{sqlstate, PgError};
use crate::router::{Analysis, Param};
use crate::stats::clients::ClientState;

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Wait while `sql` is a write to rows a cutover is moving. Returns
    /// whether it waited (the session then follows the newer config, and
    /// the caller routes again). Fails when the cutover outlasts
    /// `rebalance.hold_timeout`.
    pub(super) async fn hold_moving_write(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<bool, PgError> {
        let mut waited = false;
        // The read-your-writes probe of the previous statement may have
        // kept the server past the point where the session follows a new
        // config; a write must be routed on the newest map.
        if self.server.is_none() && self.multi.is_none() && self.replica.batch.is_none() {
            self.follow_config();
        }
        loop {
            let Some(next) = self.config.fenced.clone() else {
                return Ok(waited);
            };
            if self.server.is_some() || self.multi.is_some() {
                return Ok(waited);
            }
            let analysis: Arc<Analysis> = self.router.analysis(sql);
            if self.router.is_read(&analysis) || crate::router::control::is_neutral(&analysis) {
                return Ok(waited);
            }
            let now = self
                .router
                .route_analyzed(sql, &analysis, params, &self.hints);
            // An analysis carries its router's table rules: the new map's
            // route needs its own.
            let then = next.route_analyzed(sql, &next.analysis(sql), params, &self.hints);
            let moving = match (&now, &then) {
                (Ok(a), Ok(b)) => a.shards != b.shards,
                _ => false,
            };
            if !moving {
                return Ok(waited);
            }
            let mut changes = self.proxy.config_changes();
            let seen = self.config_generation.0;
            let limit = self.config.rebalance.hold_timeout;
            self.client.info.set_state(ClientState::Waiting);
            self.proxy
                .metrics
                .rebalance_held_writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let changed = tokio::time::timeout(limit, changes.wait_for(|g| *g != seen)).await;
            self.client.info.set_state(ClientState::Idle);
            if !matches!(changed, Ok(Ok(_))) {
                let table = now.ok().and_then(|r| r.table).unwrap_or_default();
                return Err(PgError::error(
                    sqlstate::T_R_SERIALIZATION_FAILURE,
                    format!(
                        "rows of table \"{table}\" are being moved to another shard and the cutover did not finish within {limit:?}"
                    ),
                )
                .with_hint("retry the statement; REBALANCE STATUS in the admin console shows the move"));
            }
            waited = true;
            self.follow_config();
        }
    }
}

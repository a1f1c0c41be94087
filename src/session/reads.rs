//! Replica reads and read-your-writes (DESIGN.md §5).
//!
//! A read (a query string the router calls a read, outside any transaction)
//! may go to a replica of its shard. The session remembers, per shard, the
//! WAL position of its last write there (`writes.lsn`): after a write
//! commits, the proxy asks the same primary connection for
//! `pg_current_wal_insert_lsn()` before the connection goes back to the
//! pool, while the client already has its answer. A later read goes only to
//! a replica known to have replayed that far; if none is, the read checks a
//! replica's live position, waiting up to `read_your_writes_max_wait`, then
//! falls back to the primary. The positions also travel as the causal
//! token (`SHOW`/`SET shardwire.causal_token`), so another connection,
//! through any proxy of the same shards, reads at least as fresh.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::Session;
use crate::backend::health::{format_lsn, last_record_end, parse_lsn};
use crate::backend::{Pool, PooledConn, ReplicaPool};
use crate::config::{LoadBalance, ReadFrom, ReadYourWrites, Reads};
use crate::protocol::{self, PgError, TxStatus};
use crate::stats::metrics::{ReadDecision, RouteKind};

/// Prefix (and version) of causal tokens.
const TOKEN_PREFIX: &str = "sw1:";

/// Rotation shared by all sessions, so round robin is global.
static NEXT_TURN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How often a read waiting for a replica to catch up asks it again.
const CATCH_UP_POLL: Duration = Duration::from_millis(5);

/// `sw1:s0=0/3000060,s1=0/30000D8` from per-shard positions (0 = none).
pub fn format_token(shards: &[String], lsns: &[u64]) -> String {
    let parts: Vec<String> = shards
        .iter()
        .zip(lsns)
        .filter(|(_, &l)| l > 0)
        .map(|(s, &l)| format!("{s}={}", format_lsn(l)))
        .collect();
    format!("{TOKEN_PREFIX}{}", parts.join(","))
}

/// The positions of a causal token, by shard index; an error says what is
/// wrong with it.
pub fn parse_token(token: &str, shards: &[String]) -> Result<Vec<u64>, String> {
    let body = token
        .trim()
        .strip_prefix(TOKEN_PREFIX)
        .ok_or_else(|| format!("a causal token starts with \"{TOKEN_PREFIX}\""))?;
    let mut out = vec![0; shards.len()];
    for part in body.split(',').filter(|p| !p.is_empty()) {
        let (name, lsn) = part
            .split_once('=')
            .ok_or_else(|| format!("\"{part}\" is not shard=position"))?;
        let i = shards.iter().position(|s| s == name).ok_or_else(|| {
            format!("the token names shard \"{name}\", which this proxy does not have")
        })?;
        out[i] = parse_lsn(lsn).ok_or_else(|| format!("\"{lsn}\" is not a WAL position"))?;
    }
    Ok(out)
}

/// Where the session's writes are, per shard: what a read must wait for
/// on a replica to see them (read-your-writes).
pub(super) struct Writes {
    /// WAL position of the session's last write (0: none).
    pub(super) lsn: Vec<u64>,
    /// When the session last wrote (primary_after_write).
    pub(super) at: Vec<Option<Instant>>,
    /// A write whose position is not known yet (resolved when the causal
    /// token is asked for).
    pub(super) unresolved: Vec<bool>,
    /// The transaction on the held primary wrote (or may have).
    pub(super) in_tx: bool,
}

impl Writes {
    pub(super) fn new(shards: usize) -> Self {
        Writes {
            lsn: vec![0; shards],
            at: vec![None; shards],
            unresolved: vec![false; shards],
            in_tx: false,
        }
    }
}

/// A read on, or headed for, a replica, and what it takes to run it again
/// elsewhere when the replica dies before answering.
#[derive(Default)]
pub(super) struct ReplicaRead {
    /// The next checkout is for a read that may go to a replica.
    pub(super) next: Option<ReadFrom>,
    /// The held server is not its shard's primary (a read runs on it).
    pub(super) held_on: bool,
    /// The frames of the read a replica is running (a Query, or an
    /// extended batch through its Sync).
    pub(super) running: Option<Vec<BytesMut>>,
    /// The replica has started answering it.
    pub(super) answered: bool,
    /// A read to run again (see `lose_server`).
    pub(super) retry: Option<Vec<BytesMut>>,
    /// The replica's answer so far, not yet given to the client.
    pub(super) hold: BytesMut,
    /// The held extended batch so far is made of reads of this shard that
    /// may go to a replica (decided at its Sync).
    pub(super) batch: Option<(usize, RouteKind, ReadFrom)>,
    /// The held batch has something that is not such a read.
    pub(super) batch_mixed: bool,
    /// Frames being run again after a replica was lost: not counted twice.
    pub(super) replaying: bool,
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Replica reads are possible for this session at all.
    pub(super) fn read_split(&self) -> bool {
        self.read_from != ReadFrom::Primary
    }

    /// A server for a read on `shard` other than the primary, checked out;
    /// None sends the read to the primary. Counts the decision.
    pub(super) async fn read_checkout(
        &mut self,
        shard: usize,
        target: ReadFrom,
    ) -> Option<PooledConn> {
        let reads = self.config.reads.clone();
        let required = match reads.read_your_writes {
            ReadYourWrites::Lsn => self.writes.lsn.get(shard).copied().unwrap_or(0),
            _ => 0,
        };
        if reads.read_your_writes == ReadYourWrites::PrimaryAfterWrite
            && self
                .writes
                .at
                .get(shard)
                .copied()
                .flatten()
                .is_some_and(|t| t.elapsed() < reads.read_your_writes_window)
        {
            self.count_read(shard, ReadDecision::PrimaryAfterWrite);
            return None;
        }
        let candidates = self.read_candidates(shard, &reads);
        if candidates.is_empty() {
            self.count_read(shard, ReadDecision::NoReplica);
            return None;
        }
        if target == ReadFrom::Any && self.pools[shard].checked_out() < candidates[0].checked_out()
        {
            self.count_read(shard, ReadDecision::Primary);
            return None;
        }
        // Known fresh enough: go. Known again after the checkout, which
        // may have opened a connection to a server that restarted since
        // the checks saw it (backend::health::ask_position).
        let fresh = |pool: &Pool| {
            required == 0
                || pool
                    .health()
                    .and_then(|h| h.lsn())
                    .is_some_and(|l| l >= required)
        };
        for pool in &candidates {
            if fresh(pool) {
                if let Ok(conn) = pool.checkout().await {
                    if fresh(pool) {
                        self.count_read(shard, ReadDecision::Replica);
                        return Some(conn);
                    }
                    conn.release();
                }
            }
        }
        // Ask a replica where it is, waiting up to the bound for it to
        // replay the session's last write.
        let deadline = Instant::now() + reads.read_your_writes_max_wait;
        for pool in &candidates {
            let Ok(mut conn) = pool.checkout().await else {
                continue;
            };
            loop {
                let replayed = match conn
                    .run_collect(
                        "SELECT pg_last_wal_replay_lsn()",
                        Duration::from_secs(5),
                        4096,
                    )
                    .await
                {
                    Ok(c) if c.error.is_none() => c.first_value().and_then(|v| parse_lsn(&v)),
                    _ => None,
                };
                let Some(replayed) = replayed else {
                    break; // the connection is dropped, not pooled
                };
                if let Some(h) = pool.health() {
                    h.observe_lsn(replayed);
                }
                if replayed >= required {
                    self.count_read(shard, ReadDecision::ReplicaAfterWait);
                    return Some(conn);
                }
                if Instant::now() + CATCH_UP_POLL > deadline {
                    conn.release();
                    self.count_read(shard, ReadDecision::PrimaryFallback);
                    return None;
                }
                tokio::time::sleep(CATCH_UP_POLL).await;
            }
        }
        self.count_read(shard, ReadDecision::PrimaryFallback);
        None
    }

    /// The replicas of `shard` that may take a read now, in the order to
    /// try them: usable (up, not banned, a replica, within the lag
    /// limits), those in the proxy's region only if there are any, then
    /// ordered by `reads.load_balance`.
    fn read_candidates(&mut self, shard: usize, reads: &Reads) -> Vec<Arc<Pool>> {
        let usable: Vec<ReplicaPool> = self
            .replicas
            .get(shard)
            .map(|r| {
                r.iter()
                    .filter(|r| {
                        r.pool.health().is_some_and(|h| {
                            h.usable_replica()
                                && self.proxy.health.follows_primary(&h)
                                && (reads.max_replica_lag_bytes == 0
                                    || self
                                        .proxy
                                        .health
                                        .lag_bytes(&h)
                                        .is_some_and(|l| l <= reads.max_replica_lag_bytes))
                                && (reads.max_replica_lag.is_zero()
                                    || h.replay_delay() <= reads.max_replica_lag)
                        })
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut usable: Vec<ReplicaPool> = if usable.iter().any(|r| r.local) {
            usable.into_iter().filter(|r| r.local).collect()
        } else {
            usable
        };
        if usable.is_empty() {
            return Vec::new();
        }
        let turn = NEXT_TURN.fetch_add(1, Ordering::Relaxed);
        let n = usable.len();
        usable.rotate_left(turn % n);
        match reads.load_balance {
            LoadBalance::RoundRobin => {}
            LoadBalance::LeastOutstanding => usable.sort_by_key(|r| r.pool.checked_out()),
            LoadBalance::Weighted => {
                // One weighted draw picks the first; the rest follow as
                // fallbacks.
                let total: u64 = usable.iter().map(|r| u64::from(r.weight)).sum();
                let mut draw = rand::random::<u64>() % total.max(1);
                if let Some(i) = usable.iter().position(|r| {
                    let w = u64::from(r.weight);
                    if draw < w {
                        true
                    } else {
                        draw -= w;
                        false
                    }
                }) {
                    usable.swap(0, i);
                }
            }
        }
        usable.into_iter().map(|r| r.pool).collect()
    }

    fn count_read(&mut self, shard: usize, d: ReadDecision) {
        if shard >= self.read_stats.len() {
            self.read_stats.resize(shard + 1, Default::default());
        }
        let slot = &mut self.read_stats[shard][d as usize];
        if slot.is_none() {
            let name = self
                .router
                .shard_names()
                .get(shard)
                .cloned()
                .unwrap_or_default();
            *slot = Some(self.proxy.metrics.read_decision(&name, d));
        }
        if let Some(c) = slot {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A transaction that wrote on the held primary just ended: learn the
    /// position read-your-writes needs. Returns true when a probe was sent
    /// (the server is released once it answers).
    pub(super) fn after_write(&mut self) -> bool {
        let shard = self.server_shard;
        match self.config.reads.read_your_writes {
            ReadYourWrites::Off => false,
            ReadYourWrites::PrimaryAfterWrite => {
                if let Some(t) = self.writes.at.get_mut(shard) {
                    *t = Some(Instant::now());
                }
                false
            }
            ReadYourWrites::Lsn if self.read_split() => {
                self.send_probe("SELECT pg_current_wal_insert_lsn()", super::Probe::Lsn);
                true
            }
            // Only a causal token can need it: resolved when asked for.
            ReadYourWrites::Lsn => {
                if let Some(d) = self.writes.unresolved.get_mut(shard) {
                    *d = true;
                }
                false
            }
        }
    }

    /// The DataRow answering an LSN probe.
    pub(super) fn on_lsn_probe_row(&mut self, frame: &[u8]) {
        let lsn = protocol::first_text_value(frame)
            .and_then(|v| parse_lsn(&v))
            .map(last_record_end);
        if let (Some(lsn), Some(slot)) = (lsn, self.writes.lsn.get_mut(self.server_shard)) {
            *slot = (*slot).max(lsn);
        }
    }

    /// A statement or transaction committed on several shards' primaries
    /// (`conns`, of `shards`; `clean` says which may be used): note the
    /// writes as `after_write` does for one server, so the session's later
    /// reads on replicas see them. A connection whose probe fails is marked
    /// unclean (dropped, not pooled).
    pub(super) async fn note_multi_writes(
        &mut self,
        conns: &mut [PooledConn],
        shards: &[usize],
        clean: &mut [bool],
    ) {
        match self.config.reads.read_your_writes {
            ReadYourWrites::Off => {}
            ReadYourWrites::PrimaryAfterWrite => {
                for &s in shards {
                    if let Some(t) = self.writes.at.get_mut(s) {
                        *t = Some(Instant::now());
                    }
                }
            }
            ReadYourWrites::Lsn if self.read_split() => {
                for (i, conn) in conns.iter_mut().enumerate() {
                    if !clean[i] {
                        continue;
                    }
                    let c = conn
                        .run_collect(
                            "SELECT pg_current_wal_insert_lsn()",
                            Duration::from_secs(10),
                            4096,
                        )
                        .await;
                    let lsn = match &c {
                        Ok(c) if c.status == TxStatus::Idle && c.error.is_none() => c
                            .first_value()
                            .and_then(|v| parse_lsn(&v))
                            .map(last_record_end),
                        _ => None,
                    };
                    match (lsn, self.writes.lsn.get_mut(shards[i])) {
                        (Some(lsn), Some(slot)) => *slot = (*slot).max(lsn),
                        _ => {
                            clean[i] = false;
                            // Unknown position: fall back to asking when needed.
                            if let Some(d) = self.writes.unresolved.get_mut(shards[i]) {
                                *d = true;
                            }
                        }
                    }
                }
            }
            ReadYourWrites::Lsn => {
                for &s in shards {
                    if let Some(d) = self.writes.unresolved.get_mut(s) {
                        *d = true;
                    }
                }
            }
        }
    }

    /// Writes whose position nobody asked for yet (read_from = primary):
    /// the primary's current position covers them.
    pub(super) async fn resolve_written_lsns(&mut self) -> Result<(), PgError> {
        for shard in 0..self.writes.unresolved.len() {
            if !self.writes.unresolved[shard] {
                continue;
            }
            let mut conn = self.pools[shard].checkout().await.map_err(|e| e.to_pg())?;
            let c = conn
                .run_collect(
                    "SELECT pg_current_wal_insert_lsn()",
                    Duration::from_secs(10),
                    4096,
                )
                .await
                .map_err(|e| e.to_pg())?;
            let lsn = c
                .first_value()
                .and_then(|v| parse_lsn(&v))
                .map(last_record_end);
            if c.status == TxStatus::Idle && c.error.is_none() {
                conn.release();
            }
            if let Some(lsn) = lsn {
                self.writes.lsn[shard] = self.writes.lsn[shard].max(lsn);
            }
            self.writes.unresolved[shard] = false;
        }
        Ok(())
    }

    /// The session's causal token.
    pub(super) fn causal_token(&self) -> String {
        format_token(self.router.shard_names(), &self.writes.lsn)
    }

    /// Adopt a causal token: reads become at least as fresh as its positions.
    pub(super) fn adopt_token(&mut self, token: &str) -> Result<(), String> {
        let lsns = parse_token(token, self.router.shard_names())?;
        for (mine, theirs) in self.writes.lsn.iter_mut().zip(lsns) {
            *mine = (*mine).max(theirs);
        }
        Ok(())
    }
}

/// Per-shard counters of read decisions, as cached by a session.
pub(super) type ReadStats = [Option<Arc<AtomicU64>>; ReadDecision::COUNT];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let shards = vec!["s0".to_string(), "s1".to_string()];
        let t = format_token(&shards, &[0x3000060, 0]);
        assert_eq!(t, "sw1:s0=0/3000060");
        assert_eq!(parse_token(&t, &shards).unwrap(), vec![0x3000060, 0]);
        assert_eq!(parse_token("sw1:", &shards).unwrap(), vec![0, 0]);
        let both = format_token(&shards, &[1 << 32, 5]);
        assert_eq!(parse_token(&both, &shards).unwrap(), vec![1 << 32, 5]);
        assert!(parse_token("garbage", &shards).is_err());
        assert!(parse_token("sw1:s9=0/1", &shards).is_err());
        assert!(parse_token("sw1:s0=zz", &shards).is_err());
        assert!(parse_token("sw1:s0", &shards).is_err());
    }
}

//! Health checks: one task per configured server logs in on its own
//! connection (not a pooled one, so checks never compete with clients) and
//! asks, every `health.interval`, whether the server is in recovery and
//! where its WAL is (the current position on a primary, the replayed one on
//! a replica). `/readyz`, `SHOW SHARDS` and the metrics read the results;
//! replica lag in bytes is the primary's position minus the replica's.
//!
//! The results steer routing. A server that fails a check (or a client's
//! connection attempt) is banned: not used for a backoff that doubles with
//! each failure in a row (1 s up to 60 s), and unbanned as soon as a check
//! passes (a circuit breaker). A shard's primary is the server that says it
//! is not in recovery, so writes follow a promoted replica without a
//! restart; every change that affects routing bumps `generation`, which
//! sessions watch.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::conn::{BackendError, ServerConn, ServerTarget};
use crate::config::{Config, Role};
use crate::protocol;

/// First and longest ban of a failing server.
const FIRST_BAN: Duration = Duration::from_secs(1);
const MAX_BAN: Duration = Duration::from_secs(60);

/// Recovery state, WAL position, and a replica's replay delay: the time
/// since its last replayed transaction while received WAL waits for replay
/// (0 when it has replayed all it received; before its first replayed
/// transaction, the time since it started). Then the timeline (see
/// TIMELINE_SQL) and when the server started (a restart is noticed).
const CHECK_SQL: &str = "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() \
     THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, \
     CASE WHEN pg_is_in_recovery() AND pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn() \
     THEN extract(epoch FROM now() - coalesce(pg_last_xact_replay_timestamp(), \
     pg_postmaster_start_time())) ELSE 0 END, \
     CASE WHEN pg_is_in_recovery() THEN greatest(\
     (SELECT timeline_id FROM pg_control_checkpoint()), \
     (SELECT min_recovery_end_timeline FROM pg_control_recovery()), \
     (SELECT received_tli FROM pg_stat_wal_receiver)) \
     ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
     (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::int8";

/// Where a replica is, asked on each new connection to it: its replay
/// position and when it started. A server that restarted between two
/// checks replays its own WAL again from its last restartpoint while it
/// already takes connections; the position the checks knew is then too
/// high, and a read-your-writes decision on it would be wrong.
const POSITION_SQL: &str = "SELECT pg_last_wal_replay_lsn()::text, \
     (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::int8::text";

// Timelines. A WAL position means something only with its timeline: after
// a failover, a replica left on the old timeline may have replayed WAL the
// promoted server never had, so its bare position is past writes made on
// the new timeline that it will never have. A replica takes reads only on
// the timeline of its shard's primary. A primary's timeline is exact (its
// current WAL file's name). A replica's is the highest it shows an
// unprivileged user: its last restartpoint's, its minimum recovery point's,
// and, when the health user may read pg_stat_wal_receiver (pg_monitor),
// the timeline it receives. Each is proof that it follows that timeline (a
// replica past a fork cannot receive or replay the new timeline), so the
// rule fails closed: after a failover, a replica that follows the new
// primary takes reads again at its next restartpoint, or at once with
// pg_monitor.

/// Up or down, as the last check found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Not checked yet.
    Unknown,
    Up,
    Down,
}

impl ServerState {
    pub fn name(self) -> &'static str {
        match self {
            ServerState::Unknown => "unknown",
            ServerState::Up => "up",
            ServerState::Down => "down",
        }
    }
}

/// What the checks know of one server.
pub struct ServerHealth {
    pub target: Arc<ServerTarget>,
    state: AtomicU8,
    /// 0 unknown, 1 primary, 2 in recovery.
    recovery: AtomicU8,
    /// WAL position (bytes); 0 when unknown.
    lsn: AtomicU64,
    /// Replay delay of a replica, in microseconds (see CHECK_SQL).
    replay_delay_micros: AtomicU64,
    /// The timeline it is on (see CHECK_SQL); 0 when unknown.
    timeline: AtomicU32,
    /// When the server started (microseconds since the epoch); 0 unknown.
    started: AtomicU64,
    pub checks: AtomicU64,
    pub failures: AtomicU64,
    /// Times the server went from up (or unknown) to down.
    pub went_down: AtomicU64,
    /// Duration of the last successful check, in microseconds.
    pub last_check_micros: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Set when a reload removed the server; its task ends.
    retired: AtomicBool,
    ban: Mutex<Ban>,
    /// The monitor's generation counter, bumped on routing-relevant changes.
    generation: Arc<AtomicU64>,
}

/// The circuit breaker of one server.
#[derive(Default)]
struct Ban {
    until: Option<Instant>,
    /// The next ban's length (doubles with each failure in a row).
    next: Duration,
}

impl ServerHealth {
    fn new(target: ServerTarget, generation: Arc<AtomicU64>) -> Self {
        ServerHealth {
            ban: Mutex::new(Ban::default()),
            generation,
            target: Arc::new(target),
            state: AtomicU8::new(0),
            recovery: AtomicU8::new(0),
            lsn: AtomicU64::new(0),
            replay_delay_micros: AtomicU64::new(0),
            timeline: AtomicU32::new(0),
            started: AtomicU64::new(0),
            checks: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            went_down: AtomicU64::new(0),
            last_check_micros: AtomicU64::new(0),
            last_error: Mutex::new(None),
            retired: AtomicBool::new(false),
        }
    }

    pub fn state(&self) -> ServerState {
        match self.state.load(Ordering::Relaxed) {
            1 => ServerState::Up,
            2 => ServerState::Down,
            _ => ServerState::Unknown,
        }
    }

    /// Whether the server said it is in recovery (a replica); None before
    /// the first successful check.
    pub fn in_recovery(&self) -> Option<bool> {
        match self.recovery.load(Ordering::Relaxed) {
            1 => Some(false),
            2 => Some(true),
            _ => None,
        }
    }

    /// How far a replica's replay trails (0 for a caught-up replica or a
    /// primary), as of the last check.
    pub fn replay_delay(&self) -> Duration {
        Duration::from_micros(self.replay_delay_micros.load(Ordering::Relaxed))
    }

    pub fn lsn(&self) -> Option<u64> {
        match self.lsn.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// The timeline the last check found (None before one).
    pub fn timeline(&self) -> Option<u32> {
        match self.timeline.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// What a new connection to a replica found (POSITION_SQL): a server
    /// that started since the checks last saw it has replayed only this
    /// far, whatever they knew; otherwise positions only move forward.
    pub fn note_connection_position(&self, lsn: Option<u64>, started: Option<u64>) {
        let before = self.started.load(Ordering::Relaxed);
        match (lsn, started) {
            (Some(lsn), Some(started)) if before == 0 || before == started => {
                self.started.store(started, Ordering::Relaxed);
                self.observe_lsn(lsn);
            }
            (Some(lsn), Some(started)) => {
                tracing::info!(server = %self.target.describe(), "server restarted since its last check; its position is read again");
                self.started.store(started, Ordering::Relaxed);
                self.lsn.store(lsn, Ordering::Relaxed);
                // Its timeline too is to be found again.
                self.timeline.store(0, Ordering::Relaxed);
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            _ => self.lsn.store(0, Ordering::Relaxed),
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// `up`, `down`, `banned` (failed recently; not used until the ban
    /// ends or a check passes) or `unknown`, for the admin console.
    pub fn status(&self) -> &'static str {
        if self.banned() {
            "banned"
        } else {
            self.state().name()
        }
    }

    /// May take reads: up, not banned, and a replica by its own account.
    pub fn usable_replica(&self) -> bool {
        self.state() == ServerState::Up && !self.banned() && self.in_recovery() == Some(true)
    }

    /// A position seen outside the checks (a read asked the replica);
    /// positions only move forward.
    pub fn observe_lsn(&self, lsn: u64) {
        self.lsn.fetch_max(lsn, Ordering::Relaxed);
    }

    /// Banned now: routing skips it (a primary's shard fails fast).
    pub fn banned(&self) -> bool {
        self.ban
            .lock()
            .map(|b| b.until.is_some_and(|u| Instant::now() < u))
            .unwrap_or(false)
    }

    /// Ban (or ban longer) after a failure.
    fn ban(&self) {
        if let Ok(mut b) = self.ban.lock() {
            let length = if b.next.is_zero() { FIRST_BAN } else { b.next };
            b.until = Some(Instant::now() + length);
            b.next = (length * 2).min(MAX_BAN);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn unban(&self) {
        let was = self
            .ban
            .lock()
            .map(|mut b| {
                let was = b.until.take().is_some() || !b.next.is_zero();
                b.next = Duration::ZERO;
                was
            })
            .unwrap_or(false);
        if was {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A client's connection attempt to this server failed: ban it now
    /// rather than at the next check.
    pub fn report_failure(&self, error: String) {
        self.record_down(error);
    }

    fn record_up(&self, found: Checked, took: Duration) {
        let Checked {
            in_recovery,
            lsn,
            replay_delay,
            timeline,
            started,
        } = found;
        let timeline = timeline.unwrap_or(0);
        if self.timeline.swap(timeline, Ordering::Relaxed) != timeline {
            // Which replicas may take reads may have changed.
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(started) = started {
            let before = self.started.swap(started, Ordering::Relaxed);
            if before != 0 && before != started {
                tracing::info!(server = %self.target.describe(), "server restarted");
            }
        }
        self.replay_delay_micros
            .store(replay_delay.as_micros() as u64, Ordering::Relaxed);
        let recovery = if in_recovery { 2 } else { 1 };
        if self.recovery.swap(recovery, Ordering::Relaxed) != recovery {
            // A promotion (or a first look): primaries may have changed.
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        self.advance_lsn(lsn);
        self.last_check_micros
            .store(took.as_micros() as u64, Ordering::Relaxed);
        self.state.store(1, Ordering::Relaxed);
        self.unban();
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
    }

    /// The server answered but refused the check's login: it is up (not
    /// banned), its role and position unknown.
    fn record_reachable(&self, error: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if self.state.swap(1, Ordering::Relaxed) != 1 {
            tracing::warn!(server = %self.target.describe(), %error,
                "the health check cannot log in; set [health] user and database to ones the servers accept");
        }
        self.unban();
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(error);
        }
    }

    /// Learn a WAL position: the current one of a primary, the replayed one
    /// of a replica.
    fn advance_lsn(&self, lsn: Option<u64>) {
        self.lsn.store(lsn.unwrap_or(0), Ordering::Relaxed);
    }

    fn record_down(&self, error: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        // Whatever it was, it is to be found again when it is back.
        self.lsn.store(0, Ordering::Relaxed);
        self.timeline.store(0, Ordering::Relaxed);
        self.ban();
        if self.state.swap(2, Ordering::Relaxed) != 2 {
            self.went_down.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(server = %self.target.describe(), %error, "server is down");
        }
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(error);
        }
    }
}

/// The health of every configured server.
#[derive(Default)]
pub struct HealthMonitor {
    servers: RwLock<Vec<Arc<ServerHealth>>>,
    /// Bumped whenever a ban starts or ends, a server's recovery state
    /// changes, or a reload changes the servers.
    generation: Arc<AtomicU64>,
}

impl HealthMonitor {
    /// Start checking the servers of `config`; after a reload, keep the
    /// checks of unchanged servers and stop those of removed ones.
    pub fn apply(&self, config: &Config) {
        let wanted: Vec<ServerTarget> = match &config.health.login {
            None => Vec::new(),
            Some((database, user)) => {
                let db = &config.databases[database];
                let user = &config.users[user];
                config
                    .shards
                    .iter()
                    .flat_map(|shard| {
                        shard.servers.iter().map(|s| ServerTarget {
                            shard: shard.name.clone(),
                            host: s.host.clone(),
                            port: s.port,
                            role: s.role,
                            database: db.server_database.clone(),
                            user: user.server_user.clone(),
                            password: user.server_password.clone(),
                        })
                    })
                    .collect()
            }
        };
        let mut servers = self.servers.write().unwrap_or_else(|e| e.into_inner());
        let mut next = Vec::with_capacity(wanted.len());
        for target in wanted {
            match servers.iter().position(|h| *h.target == target) {
                Some(i) => next.push(servers.swap_remove(i)),
                None => {
                    let h = Arc::new(ServerHealth::new(target, self.generation.clone()));
                    spawn_checks(h.clone(), config.health.interval, config.health.timeout);
                    next.push(h);
                }
            }
        }
        for gone in servers.drain(..) {
            gone.retired.store(true, Ordering::Relaxed);
        }
        *servers = next;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Changes whenever routing should look again (see the module comment).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The health of one configured server, if it is checked.
    pub fn of(&self, shard: &str, host: &str, port: u16) -> Option<Arc<ServerHealth>> {
        self.servers
            .read()
            .ok()?
            .iter()
            .find(|h| h.target.shard == shard && h.target.host == host && h.target.port == port)
            .cloned()
    }

    /// The index (in the shard's server list) of the server writes go to:
    /// the one that is not in recovery and not banned, the configured
    /// primary first; failing that the configured primary, or the first
    /// server, so the caller gets that server's own error.
    pub fn primary_index(&self, config: &Config, shard: usize) -> usize {
        let s = &config.shards[shard];
        let configured = s.servers.iter().position(|v| v.role == Role::Primary);
        let writable = |i: usize| {
            let v = &s.servers[i];
            self.of(&s.name, &v.host, v.port)
                .is_some_and(|h| h.in_recovery() == Some(false) && !h.banned())
        };
        configured
            .filter(|&i| writable(i))
            .or_else(|| (0..s.servers.len()).find(|&i| writable(i)))
            .or(configured)
            .or_else(|| {
                // Roles not learned yet: a server not known to be a replica.
                (0..s.servers.len()).find(|&i| {
                    let v = &s.servers[i];
                    self.of(&s.name, &v.host, v.port)
                        .is_none_or(|h| h.in_recovery() != Some(true))
                })
            })
            .unwrap_or(0)
    }

    /// Every checked server, in config order.
    pub fn servers(&self) -> Vec<Arc<ServerHealth>> {
        self.servers.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// The primary of `shard` as the checks found it: up, not banned, not
    /// in recovery (a primary that went down may still say so).
    fn primary_of(&self, shard: &str) -> Option<Arc<ServerHealth>> {
        self.servers().into_iter().find(|s| {
            s.target.shard == shard
                && s.in_recovery() == Some(false)
                && s.state() == ServerState::Up
                && !s.banned()
        })
    }

    /// Replay lag of a replica behind its shard's primary, in bytes; None
    /// when unknown, or when the replica is not on the primary's timeline
    /// (positions of two timelines do not compare).
    pub fn lag_bytes(&self, replica: &ServerHealth) -> Option<u64> {
        if replica.in_recovery() != Some(true) {
            return None;
        }
        let primary = self.primary_of(&replica.target.shard)?;
        if !same_timeline(&primary, replica) {
            return None;
        }
        Some(primary.lsn()?.saturating_sub(replica.lsn()?))
    }

    /// A replica is on its shard's primary's timeline, so its position
    /// compares with the primary's (and with positions of writes made
    /// there). False while either is unknown.
    pub fn follows_primary(&self, replica: &ServerHealth) -> bool {
        self.primary_of(&replica.target.shard)
            .is_some_and(|p| same_timeline(&p, replica))
    }

    /// Ready means every shard has at least one server that passed its
    /// last check. Err names the shards that have none.
    pub fn ready(&self, config: &Config) -> Result<(), String> {
        if config.health.login.is_none() {
            return Err("health checks are off: no [[users]] entry can log in to the servers, and no [health] user is set".into());
        }
        let servers = self.servers();
        let down: Vec<&str> = config
            .shards
            .iter()
            .filter(|shard| {
                !servers
                    .iter()
                    .any(|s| s.target.shard == shard.name && s.state() == ServerState::Up)
            })
            .map(|s| s.name.as_str())
            .collect();
        if down.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "no reachable server in shard(s): {}",
                down.join(", ")
            ))
        }
    }
}

fn spawn_checks(health: Arc<ServerHealth>, interval: Duration, timeout: Duration) {
    tokio::spawn(async move {
        let mut conn: Option<ServerConn> = None;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if health.retired.load(Ordering::Relaxed) {
                break;
            }
            health.checks.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            match check(&health.target, &mut conn, timeout).await {
                Ok(found) => {
                    if health.state() == ServerState::Down {
                        tracing::info!(server = %health.target.describe(), "server is up again");
                    }
                    health.record_up(found, started.elapsed());
                }
                Err(CheckError::Server(e)) => {
                    conn = None;
                    health.record_down(e);
                }
                Err(CheckError::Login(e)) => {
                    // The server answers but refuses the check's login (a
                    // wrong password, a missing database): reachable, so not
                    // banned, but worth saying.
                    conn = None;
                    health.record_reachable(e);
                }
            }
        }
    });
}

/// Why a check failed.
enum CheckError {
    /// The server is down, unreachable or not accepting connections.
    Server(String),
    /// The server refused the check's credentials or database.
    Login(String),
}

impl From<BackendError> for CheckError {
    fn from(e: BackendError) -> Self {
        if e.is_server_failure() {
            CheckError::Server(e.to_string())
        } else {
            CheckError::Login(e.to_string())
        }
    }
}

fn same_timeline(primary: &ServerHealth, replica: &ServerHealth) -> bool {
    matches!((primary.timeline(), replica.timeline()), (Some(p), Some(r)) if p == r)
}

/// What one check found.
struct Checked {
    in_recovery: bool,
    lsn: Option<u64>,
    replay_delay: Duration,
    timeline: Option<u32>,
    started: Option<u64>,
}

/// One check, on the kept connection or a new one.
async fn check(
    target: &Arc<ServerTarget>,
    conn: &mut Option<ServerConn>,
    timeout: Duration,
) -> Result<Checked, CheckError> {
    if conn.is_none() {
        *conn = Some(ServerConn::connect(target.clone(), timeout).await?);
    }
    let c = conn.as_mut().expect("just connected");
    let answer = c.run_collect(CHECK_SQL, timeout, 64 * 1024).await?;
    if let Some(e) = answer.error {
        return Err(CheckError::Server(protocol::describe_error(
            protocol::body(&e),
        )));
    }
    let row = answer
        .frames
        .iter()
        .find(|f| f[0] == protocol::be::DATA_ROW)
        .ok_or_else(|| CheckError::Server("the health check query returned no row".into()))?;
    let values = protocol::data_row_values(row).map_err(|e| CheckError::Server(e.to_string()))?;
    let in_recovery = values.first().copied().flatten() == Some(&b"t"[..]);
    let lsn = values
        .get(1)
        .copied()
        .flatten()
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(parse_lsn);
    let replay_delay = values
        .get(2)
        .copied()
        .flatten()
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or_default();
    let number = |i: usize| {
        values
            .get(i)
            .copied()
            .flatten()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<i64>().ok())
    };
    Ok(Checked {
        in_recovery,
        lsn,
        replay_delay,
        timeline: number(3)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0),
        started: number(4)
            .and_then(|t| u64::try_from(t).ok())
            .filter(|t| *t > 0),
    })
}

/// A replica's replay position and start time, asked on a connection
/// (POSITION_SQL); None for what could not be read.
pub async fn ask_position(c: &mut ServerConn, timeout: Duration) -> (Option<u64>, Option<u64>) {
    let Ok(answer) = c.run_collect(POSITION_SQL, timeout, 4096).await else {
        return (None, None);
    };
    let Some(row) = answer
        .frames
        .iter()
        .find(|f| answer.error.is_none() && f[0] == protocol::be::DATA_ROW)
    else {
        return (None, None);
    };
    let Ok(values) = protocol::data_row_values(row) else {
        return (None, None);
    };
    let text = |i: usize| {
        values
            .get(i)
            .copied()
            .flatten()
            .and_then(|v| std::str::from_utf8(v).ok())
    };
    (
        text(0).and_then(parse_lsn),
        text(1).and_then(|v| v.parse().ok()),
    )
}

/// 0x16_B374D848 → "16/B374D848", as PostgreSQL writes an LSN.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// "16/B374D848" → 0x16_B374D848.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The end of the last WAL record at or before `insert`, a
/// `pg_current_wal_insert_lsn()`. Right after a page header the insert
/// position is past the header (24 bytes, 40 at a segment's start), where
/// no record ends: a replica that replayed everything reports the page's
/// start, and would never reach the insert position while the primary is
/// idle, so reads would stay on the primary. No record ends 24 or 40 bytes
/// into a page (a record is at least 24 bytes, after a header of at least
/// 24), so those offsets are headers whatever the segment size.
pub fn last_record_end(insert: u64) -> u64 {
    const XLOG_BLCKSZ: u64 = 8192;
    const SHORT_PAGE_HEADER: u64 = 24;
    const LONG_PAGE_HEADER: u64 = 40;
    match insert % XLOG_BLCKSZ {
        SHORT_PAGE_HEADER => insert - SHORT_PAGE_HEADER,
        LONG_PAGE_HEADER => insert - LONG_PAGE_HEADER,
        _ => insert,
    }
}

/// The role a server was configured with, or the one its checks found.
pub fn observed_role(h: &ServerHealth) -> Role {
    match h.in_recovery() {
        Some(true) => Role::Replica,
        Some(false) => Role::Primary,
        None => h.target.role,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_parses() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("x"), None);
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn(&format_lsn(12345)), Some(12345));
        // An insert position right after a page header: the last record
        // ended at the page's start.
        assert_eq!(last_record_end(0x1_0000_2018), 0x1_0000_2000);
        assert_eq!(last_record_end(0x1_0100_0028), 0x1_0100_0000);
        assert_eq!(last_record_end(0x1_0000_2030), 0x1_0000_2030);
        assert_eq!(last_record_end(0x1_0000_2000), 0x1_0000_2000);
    }
}

//! A pool of connections to one server, as one user, to one database.
//!
//! Size is bounded by a semaphore (one permit per checked-out connection;
//! idle ones come only from returned ones, so idle plus in use stays within
//! `max_size`); waiting for a permit is bounded by `checkout_timeout` and the
//! number of waiters by `max_waiting`, opening a connection by
//! `connect_timeout`. Idle connections are reused newest first (so the
//! oldest can age out), checked for breakage before use, and closed by a
//! reaper once past `idle_timeout` or `max_lifetime`.
//!
//! A reload may change the settings of a live pool: a larger `max_size`
//! adds permits at once; a smaller one retires permits as connections come
//! back (`permit_debt`), so no running transaction is disturbed.
//!
//! In transaction pooling a session keeps its connection between
//! transactions in a [`ParkSlot`] while the pool has room and no checkout
//! is waiting ([`Pool::may_park`]): its next transaction takes it back
//! without going through the semaphore and the idle list, which every
//! session shares. A parked connection is idle, and anyone may take it: a
//! checkout that would wait steals one, the reaper takes back those not
//! used for a whole period, and a reload that shrinks the pool takes back
//! all of them.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use tokio::sync::watch;

use super::conn::{BackendError, ParamSet, ServerConn, ServerTarget};
use super::health::ServerHealth;
use super::lane::Lane;
use crate::config::RawPool;
use crate::protocol::{sqlstate, PgError};

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("no connection to {server} became free within {after:?} (pool max_size is {max})")]
    Timeout {
        server: String,
        after: Duration,
        max: u32,
    },
    #[error("{server} is unavailable: it failed recently ({reason}); shardwire retries it in the background")]
    Unavailable { server: String, reason: String },
    #[error("too many clients are already waiting for a connection to {server} (pool max_waiting is {max_waiting})")]
    QueueFull { server: String, max_waiting: u32 },
    #[error("{0}")]
    Backend(#[from] BackendError),
}

impl CheckoutError {
    pub fn to_pg(&self) -> PgError {
        match self {
            CheckoutError::Timeout { .. } => {
                PgError::error(sqlstate::TOO_MANY_CONNECTIONS, self.to_string()).with_hint(
                    "the pool is busy: raise pool.max_size or pool.checkout_timeout, or make transactions shorter",
                )
            }
            CheckoutError::Unavailable { .. } => {
                PgError::error(sqlstate::CONNECTION_FAILURE, self.to_string()).with_hint(
                    "retry later; if a replica was promoted, writes move to it once its health check sees it",
                )
            }
            CheckoutError::QueueFull { .. } => {
                PgError::error(sqlstate::TOO_MANY_CONNECTIONS, self.to_string()).with_hint(
                    "the pool is overloaded: retry later, raise pool.max_size or pool.max_waiting, or make transactions shorter",
                )
            }
            CheckoutError::Backend(e) => e.to_pg(),
        }
    }
}

/// Counters read by the admin console and metrics.
#[derive(Default)]
pub struct PoolStats {
    pub checkouts: AtomicU64,
    pub connects: AtomicU64,
    pub connect_errors: AtomicU64,
    pub checkout_timeouts: AtomicU64,
    pub queue_full: AtomicU64,
    pub wait_micros: AtomicU64,
    /// Checkouts that had to wait for a permit.
    pub waited: AtomicU64,
    /// Batches run on lanes (backend::lane).
    pub lane_batches: AtomicU64,
}

/// A duration in nanoseconds, saturated (past 500 years: never).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A server's startup ParameterStatus values, sorted by name.
pub type ServerParams = Arc<Vec<(String, String)>>;

pub struct Pool {
    pub target: Arc<ServerTarget>,
    /// Replaced by a reload; read at each use.
    settings: RwLock<RawPool>,
    /// `settings.max_lifetime` in nanoseconds, checked at every checkout
    /// and checkin without taking the lock all sessions share.
    max_lifetime_nanos: AtomicU64,
    /// `settings.sticky_servers`, read at every park.
    sticky: AtomicBool,
    /// Boxed: a connection changes hands (pool, session, pool) twice per
    /// transaction, and moving the box is cheaper than moving the struct.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<ServerConn>>>,
    permits: Arc<Semaphore>,
    /// Permits to retire as they are returned, after a reload shrank the pool.
    permit_debt: AtomicUsize,
    /// Connections checked out now.
    in_use: AtomicUsize,
    /// Checkouts waiting for a permit now.
    waiting: AtomicUsize,
    /// Connections parked in sessions' slots now.
    parked: AtomicUsize,
    /// The server's health: a banned server fails checkouts at once, and
    /// a failed connection attempt bans it.
    health: RwLock<Option<Arc<ServerHealth>>>,
    /// ParameterStatus values of the first connection made, sent to clients
    /// at login so they see the server's version, encoding and so on.
    server_params: Mutex<Option<ServerParams>>,
    /// The park slots of live sessions (dead ones are pruned as met).
    park_slots: Mutex<Vec<Weak<ParkSlot>>>,
    /// Lanes per set of session parameters (see [`Pool::lane`]).
    lanes_per_params: AtomicUsize,
    /// The open lanes (closed ones are pruned as met).
    lanes: Mutex<Vec<Arc<Lane>>>,
    pub stats: PoolStats,
}

/// `pool.pipeline_lanes`, within [`max_lanes`].
fn lanes_per_params(settings: &RawPool) -> usize {
    (settings.pipeline_lanes as usize).min(max_lanes(settings))
}

/// Lanes of one pool, whatever their parameters: at most half of
/// `max_size`, so most connections stay for transactions.
fn max_lanes(settings: &RawPool) -> usize {
    settings.max_size as usize / 2
}

/// A session's place for the connection it keeps between transactions
/// (see the module comment). Only its session parks in it and takes back
/// from it, so its lock is uncontended but for the rare steal.
pub struct ParkSlot {
    pool: Arc<Pool>,
    conn: Mutex<Option<PooledConn>>,
    /// Set at each park and take back, cleared by the reaper: a
    /// connection that stayed parked a whole reaper period goes back to
    /// the pool.
    used: AtomicBool,
    /// Take backs so far: checkouts that did not go through the pool,
    /// counted here rather than in a counter every session shares.
    reuses: AtomicU64,
}

impl Drop for ParkSlot {
    fn drop(&mut self) {
        let reuses = *self.reuses.get_mut();
        self.pool
            .stats
            .checkouts
            .fetch_add(reuses, Ordering::Relaxed);
        // A session that ended without giving its connection back (a
        // parked connection is idle and clean).
        if let Some(conn) = self.take() {
            conn.release();
        }
    }
}

impl ParkSlot {
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    fn lock(&self) -> MutexGuard<'_, Option<PooledConn>> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep `conn` (of this slot's pool, idle and clean) here. Returns it
    /// when a checkout waits for a connection: the caller releases it, so
    /// the waiter gets it through the semaphore.
    pub fn park(&self, conn: PooledConn) -> Option<PooledConn> {
        *self.lock() = Some(conn);
        self.used.store(true, Ordering::Relaxed);
        // A checkout joins `waiting` before it reads `parked`; this counts
        // itself in `parked` before it reads `waiting` (all SeqCst): either
        // the checkout sees a connection parked and looks for it, or this
        // sees the checkout waiting.
        self.pool.parked.fetch_add(1, Ordering::SeqCst);
        if self.pool.waiting.load(Ordering::SeqCst) > 0 {
            return self.take();
        }
        None
    }

    /// The connection parked here, if nobody took it and it still works.
    pub fn unpark(&self) -> Option<PooledConn> {
        let mut conn = self.take()?;
        self.used.store(true, Ordering::Relaxed);
        self.reuses.fetch_add(1, Ordering::Relaxed);
        self.pool
            .reusable(&mut conn, Instant::now())
            .then_some(conn)
    }

    /// The connection parked here, as it is.
    pub fn take(&self) -> Option<PooledConn> {
        self.take_if(|_| true)
    }

    /// The connection parked here, if `wanted` says so.
    fn take_if(&self, wanted: impl FnOnce(&PooledConn) -> bool) -> Option<PooledConn> {
        let mut parked = self.lock();
        let conn = parked.take_if(|c| wanted(c));
        drop(parked);
        if conn.is_some() {
            self.pool.parked.fetch_sub(1, Ordering::AcqRel);
        }
        conn
    }
}
impl Pool {
    pub fn new(target: ServerTarget, settings: RawPool) -> Arc<Self> {
        let per_params = lanes_per_params(&settings);
        Arc::new(Pool {
            target: Arc::new(target),
            permits: Arc::new(Semaphore::new(settings.max_size as usize)),
            max_lifetime_nanos: AtomicU64::new(nanos(settings.max_lifetime)),
            sticky: AtomicBool::new(settings.sticky_servers),
            settings: RwLock::new(settings),
            permit_debt: AtomicUsize::new(0),
            in_use: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            health: RwLock::new(None),
            idle: Mutex::new(Vec::new()),
            server_params: Mutex::new(None),
            park_slots: Mutex::new(Vec::new()),
            lanes_per_params: AtomicUsize::new(per_params),
            lanes: Mutex::new(Vec::new()),
            stats: PoolStats::default(),
        })
    }

    /// Whether a session may keep its connection for its next
    /// transaction: sticky servers are on, no checkout waits, and the pool
    /// has room for another connection. A full pool hands connections over
    /// in turn instead (a connection storm): stealing parked ones there
    /// would cost every waiter a look through the slots.
    pub fn may_park(&self) -> bool {
        self.sticky.load(Ordering::Relaxed)
            && self.waiting.load(Ordering::Relaxed) == 0
            && self.permits.available_permits() > 0
    }

    /// A new slot for one session to park this pool's connections in.
    pub fn park_slot(self: &Arc<Self>) -> Arc<ParkSlot> {
        let slot = Arc::new(ParkSlot {
            pool: self.clone(),
            conn: Mutex::new(None),
            used: AtomicBool::new(false),
            reuses: AtomicU64::new(0),
        });
        let mut slots = self.park_slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.len() >= 16 && slots.len().is_power_of_two() {
            slots.retain(|s| s.strong_count() > 0);
        }
        slots.push(Arc::downgrade(&slot));
        slot
    }

    /// A lane for a session with `params` (see backend::lane): one of up
    /// to `pipeline_lanes` for that parameter set, chosen by `pick`; a new
    /// one opens while there are fewer. None when lanes are off.
    pub fn lane(
        self: &Arc<Self>,
        params: &ParamSet,
        pick: u64,
        max_prepared: usize,
        paused: &watch::Receiver<bool>,
    ) -> Option<Arc<Lane>> {
        let per_params = self.lanes_per_params.load(Ordering::Relaxed);
        if per_params == 0 {
            return None;
        }
        let max = max_lanes(&self.settings());
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        lanes.retain(|l| !l.is_closed());
        let serving: Vec<&Arc<Lane>> = lanes.iter().filter(|l| l.serves(params)).collect();
        if serving.len() >= per_params || (lanes.len() >= max && !serving.is_empty()) {
            let i = usize::try_from(pick % serving.len() as u64).unwrap_or(0);
            return Some(serving[i].clone());
        }
        if lanes.len() >= max {
            return None; // other parameter sets have them all
        }
        let lane = Lane::open(self.clone(), params.clone(), max_prepared, paused.clone());
        lanes.push(lane.clone());
        Some(lane)
    }

    /// The live park slots (pruning the dead ones).
    fn live_park_slots(&self) -> Vec<Arc<ParkSlot>> {
        let mut slots = self.park_slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|s| s.strong_count() > 0);
        slots.iter().filter_map(Weak::upgrade).collect()
    }

    /// Connections parked by sessions right now.
    pub fn parked_count(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }

    /// Checkouts so far, parked connections taken back included.
    pub fn checkouts(&self) -> u64 {
        // The pool's count first: a slot that ends in between is missed
        // this once, not counted twice (the counter never goes down).
        let pooled = self.stats.checkouts.load(Ordering::Relaxed);
        let reused: u64 = self
            .live_park_slots()
            .iter()
            .map(|s| s.reuses.load(Ordering::Relaxed))
            .sum();
        pooled + reused
    }

    /// A parked connection for a checkout that found no permit; called
    /// only while counted in `waiting` (see [`ParkSlot::park`]).
    fn steal_parked(&self) -> Option<PooledConn> {
        if self.parked.load(Ordering::SeqCst) == 0 {
            return None;
        }
        for slot in self.live_park_slots() {
            let Some(mut conn) = slot.take() else {
                continue;
            };
            if self.reusable(&mut conn, Instant::now()) {
                return Some(conn);
            }
        }
        None
    }

    /// Put parked connections back in the pool: all of them, or those not
    /// used since the last call and those past their lifetime.
    fn reclaim_parked(&self, all: bool) {
        let now = Instant::now();
        for slot in self.live_park_slots() {
            let reclaimed = slot.take_if(|conn| {
                let used = slot.used.swap(false, Ordering::Relaxed);
                all || !used || self.expired(conn, now)
            });
            if let Some(conn) = reclaimed {
                conn.release();
            }
        }
    }

    pub fn settings(&self) -> RawPool {
        self.settings
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Take new settings (a reload). See the module comment for `max_size`.
    pub fn reconfigure(&self, new: RawPool) {
        let old_max = {
            let mut s = self.settings.write().unwrap_or_else(|e| e.into_inner());
            let old = s.max_size as usize;
            *s = new.clone();
            self.max_lifetime_nanos
                .store(nanos(new.max_lifetime), Ordering::Relaxed);
            self.sticky.store(new.sticky_servers, Ordering::Relaxed);
            self.lanes_per_params
                .store(lanes_per_params(&new), Ordering::Relaxed);
            old
        };
        if !new.sticky_servers {
            self.reclaim_parked(true);
        }
        let new_max = new.max_size as usize;
        if new_max > old_max {
            let grow = new_max - old_max;
            // Cancel retirements still owed before adding permits.
            let owed = self
                .permit_debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    Some(d - d.min(grow))
                })
                .unwrap_or(0);
            let grow = grow - owed.min(grow);
            self.permits.add_permits(grow);
        } else if new_max < old_max {
            // Parked connections hold permits: back to the pool, so the
            // retirements owed below happen now, not at the sessions' leisure.
            self.reclaim_parked(true);
            let shrink = old_max - new_max;
            let retired = self.permits.forget_permits(shrink);
            self.permit_debt
                .fetch_add(shrink - retired, Ordering::AcqRel);
        }
    }

    pub fn set_health(&self, health: Option<Arc<ServerHealth>>) {
        if let Ok(mut h) = self.health.write() {
            *h = health;
        }
    }

    pub fn health(&self) -> Option<Arc<ServerHealth>> {
        self.health.read().ok().and_then(|h| h.clone())
    }

    /// Idle connections: in the pool, or parked by a session.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0) + self.parked_count()
    }

    /// Connections running something right now (checked out, not parked).
    pub fn in_use(&self) -> usize {
        // Read before the parked ones: a connection parked in between is
        // counted as idle, not twice.
        let checked_out = self.checked_out();
        checked_out.saturating_sub(self.parked_count())
    }

    /// Connections checked out right now, parked ones included: one
    /// atomic load, for choosing between pools at every read.
    pub fn checked_out(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Checkouts waiting for a connection right now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Give a permit back, or retire it if a reload shrank the pool.
    fn return_permit(&self, permit: OwnedSemaphorePermit) {
        let retire = self
            .permit_debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if retire {
            permit.forget();
        }
    }

    /// The server's startup parameters, connecting once if none is known yet.
    pub async fn server_params(self: &Arc<Self>) -> Result<ServerParams, CheckoutError> {
        if let Some(p) = self.server_params.lock().ok().and_then(|p| p.clone()) {
            return Ok(p);
        }
        let conn = self.checkout().await?;
        let params = self.remember_params(&conn);
        conn.release();
        Ok(params)
    }

    fn remember_params(&self, conn: &ServerConn) -> ServerParams {
        let mut params: Vec<(String, String)> = conn
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.sort();
        let params = Arc::new(params);
        if let Ok(mut p) = self.server_params.lock() {
            *p = Some(params.clone());
        }
        params
    }

    /// Take a connection: an idle one if a healthy one exists, else a new
    /// one, waiting up to `checkout_timeout` for room in the pool.
    pub async fn checkout(self: &Arc<Self>) -> Result<PooledConn, CheckoutError> {
        // Checked under the read lock: cloning the Arc would bump a
        // reference count every session's checkout shares.
        let banned = self
            .health
            .read()
            .ok()
            .and_then(|h| h.as_ref().filter(|h| h.banned()).map(|h| h.last_error()));
        if let Some(last_error) = banned {
            return Err(CheckoutError::Unavailable {
                server: self.target.describe(),
                reason: last_error.unwrap_or_else(|| "no detail".into()),
            });
        }
        // The clock is read only once there is something to wait for: a
        // free permit and an idle connection count as no wait at all.
        let (permit, start) = match self.permits.clone().try_acquire_owned() {
            Ok(p) => (p, None),
            // The wait's future is boxed: it is large, and building it
            // inline would cost every checkout, waiting or not.
            Err(_) => {
                let start = Instant::now();
                match Box::pin(self.wait_for_permit()).await? {
                    Ok(p) => (p, Some(start)),
                    Err(mut stolen) => {
                        self.stats.checkouts.fetch_add(1, Ordering::Relaxed);
                        stolen.last_used = Instant::now();
                        return Ok(stolen);
                    }
                }
            }
        };
        self.checkout_with(permit, start).await
    }

    /// Queue for a permit, up to `checkout_timeout`; or take a connection
    /// a session parked (`Err` of the inner result).
    async fn wait_for_permit(
        self: &Arc<Self>,
    ) -> Result<Result<OwnedSemaphorePermit, PooledConn>, CheckoutError> {
        let settings = self.settings();
        // Join the queue only if it has room (one atomic step).
        let joined = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < settings.max_waiting as usize).then_some(w + 1)
            });
        if joined.is_err() {
            self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
            return Err(CheckoutError::QueueFull {
                server: self.target.describe(),
                max_waiting: settings.max_waiting,
            });
        }
        if let Some(conn) = self.steal_parked() {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Ok(Err(conn));
        }
        self.stats.waited.fetch_add(1, Ordering::Relaxed);
        let acquired = tokio::time::timeout(
            settings.checkout_timeout,
            self.permits.clone().acquire_owned(),
        )
        .await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match acquired {
            Ok(Ok(p)) => Ok(Ok(p)),
            _ => {
                self.stats.checkout_timeouts.fetch_add(1, Ordering::Relaxed);
                Err(CheckoutError::Timeout {
                    server: self.target.describe(),
                    after: settings.checkout_timeout,
                    max: settings.max_size,
                })
            }
        }
    }

    /// Like [`Pool::checkout`], but only if the pool has room right now.
    pub async fn try_checkout(self: &Arc<Self>) -> Option<Result<PooledConn, CheckoutError>> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(self.checkout_with(permit, None).await)
    }

    async fn checkout_with(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        start: Option<Instant>,
    ) -> Result<PooledConn, CheckoutError> {
        self.stats.checkouts.fetch_add(1, Ordering::Relaxed);
        // Counted from here so the permit's return and the count's
        // decrement happen together, whichever way this ends.
        self.in_use.fetch_add(1, Ordering::Relaxed);
        let mut held = PooledConn {
            conn: None,
            pool: self.clone(),
            permit: Some(permit),
        };
        while let Some(mut c) = self.idle.lock().ok().and_then(|mut v| v.pop()) {
            let now = Instant::now();
            if !self.reusable(&mut c, now) {
                continue; // dropped: closes the socket
            }
            c.last_used = now;
            if let Some(start) = start {
                self.record_wait(start, now);
            }
            held.conn = Some(c);
            return Ok(held);
        }
        let start = start.unwrap_or_else(Instant::now);
        // Boxed like the permit wait: connecting is rare and its future large.
        let conn = Box::pin(self.open()).await?;
        self.record_wait(start, Instant::now());
        held.conn = Some(Box::new(conn));
        Ok(held)
    }

    fn record_wait(&self, start: Instant, now: Instant) {
        self.stats.wait_micros.fetch_add(
            now.saturating_duration_since(start).as_micros() as u64,
            Ordering::Relaxed,
        );
    }

    async fn open(&self) -> Result<ServerConn, BackendError> {
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        let timeout = self.settings().connect_timeout;
        match ServerConn::connect(self.target.clone(), timeout).await {
            Ok(mut c) => {
                if let Some(h) = self.health().filter(|h| h.in_recovery() == Some(true)) {
                    // A replica may have restarted since it was checked.
                    let (lsn, started) = super::health::ask_position(&mut c, timeout).await;
                    h.note_connection_position(lsn, started);
                }
                let known = self
                    .server_params
                    .lock()
                    .map(|p| p.is_some())
                    .unwrap_or(true);
                if !known {
                    self.remember_params(&c);
                }
                Ok(c)
            }
            Err(e) => {
                self.stats.connect_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(h) = self.health().filter(|_| e.is_server_failure()) {
                    h.report_failure(e.to_string());
                }
                Err(e)
            }
        }
    }

    /// Whether an idle connection (pooled or parked) may serve again: not
    /// past its lifetime, and not closed or spoken to by its server since.
    fn reusable(&self, c: &mut ServerConn, now: Instant) -> bool {
        !self.expired(c, now) && !c.is_broken()
    }

    fn expired(&self, c: &ServerConn, now: Instant) -> bool {
        let max_lifetime = Duration::from_nanos(self.max_lifetime_nanos.load(Ordering::Relaxed));
        now.saturating_duration_since(c.created) >= max_lifetime
    }

    fn checkin(&self, mut conn: Box<ServerConn>) {
        // An expired connection is closed by the next checkout that finds
        // it, or by the reaper: not checked here, once per transaction.
        conn.last_used = Instant::now();
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }

    /// Close idle connections past their idle timeout or lifetime, and open
    /// connections up to `min_size`. Called periodically by [`Pool::maintain`].
    pub async fn reap_and_fill(self: &Arc<Self>) {
        self.reclaim_parked(false);
        let settings = self.settings();
        let min = settings.min_size as usize;
        let max = settings.max_size as usize;
        let closed: Vec<Box<ServerConn>> = {
            let Ok(mut idle) = self.idle.lock() else {
                return;
            };
            let total = idle.len() + self.checked_out();
            let mut keep = Vec::with_capacity(idle.len());
            let mut closed = Vec::new();
            let mut remaining = total;
            // Oldest first are at the front of the stack.
            for c in idle.drain(..) {
                let too_idle = c.last_used.elapsed() >= settings.idle_timeout && remaining > min;
                // After a reload shrank the pool, idle ones beyond it go.
                let too_many = remaining > max;
                if too_idle || too_many || c.created.elapsed() >= settings.max_lifetime {
                    remaining -= 1;
                    closed.push(c);
                } else {
                    keep.push(c);
                }
            }
            *idle = keep;
            closed
        };
        drop(closed);
        // Fill to min_size, one at a time, only while permits are free.
        loop {
            let total = {
                let Ok(idle) = self.idle.lock() else { return };
                idle.len() + self.checked_out()
            };
            if total >= min {
                break;
            }
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                break;
            };
            match self.open().await {
                Ok(c) => {
                    self.return_permit(permit);
                    self.checkin(Box::new(c));
                }
                Err(e) => {
                    self.return_permit(permit);
                    tracing::warn!(server = %self.target.describe(), error = %e, "could not open a pooled connection");
                    break;
                }
            }
        }
    }

    /// Run [`Pool::reap_and_fill`] forever, at a period derived from the
    /// timeouts. Spawned once per pool; ends when the pool is dropped.
    pub fn spawn_maintenance(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let period = (self.settings().idle_timeout / 4)
            .clamp(Duration::from_millis(200), Duration::from_secs(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { break };
                pool.reap_and_fill().await;
            }
        });
    }
}

/// A checked-out connection. Return it with [`PooledConn::release`] when it
/// is idle and clean; dropping it instead closes the connection (used
/// whenever its state is unknown, for example a client gone mid-transaction).
pub struct PooledConn {
    conn: Option<Box<ServerConn>>,
    pool: Arc<Pool>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        self.pool.in_use.fetch_sub(1, Ordering::Relaxed);
        if let Some(p) = self.permit.take() {
            self.pool.return_permit(p);
        }
    }
}

impl PooledConn {
    pub fn release(mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.checkin(c);
        }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

impl std::ops::Deref for PooledConn {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        self.conn
            .as_ref()
            .expect("connection present until release")
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn
            .as_mut()
            .expect("connection present until release")
    }
}

//! A pool of connections to one server, as one user, to one database.
//!
//! Size is bounded by a semaphore (one permit per connection, idle or in
//! use); waiting for a permit is bounded by `checkout_timeout`, opening a
//! connection by `connect_timeout`. Idle connections are reused newest first
//! (so the oldest can age out), checked for breakage before use, and closed
//! by a reaper once past `idle_timeout` or `max_lifetime`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::conn::{BackendError, ServerConn, ServerTarget};
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
    pub wait_micros: AtomicU64,
}

/// A server's startup ParameterStatus values, sorted by name.
pub type ServerParams = Arc<Vec<(String, String)>>;

pub struct Pool {
    pub target: Arc<ServerTarget>,
    settings: RawPool,
    idle: Mutex<Vec<ServerConn>>,
    permits: Arc<Semaphore>,
    /// ParameterStatus values of the first connection made, sent to clients
    /// at login so they see the server's version, encoding and so on.
    server_params: Mutex<Option<ServerParams>>,
    pub stats: PoolStats,
}

impl Pool {
    pub fn new(target: ServerTarget, settings: RawPool) -> Arc<Self> {
        Arc::new(Pool {
            target: Arc::new(target),
            permits: Arc::new(Semaphore::new(settings.max_size as usize)),
            settings,
            idle: Mutex::new(Vec::new()),
            server_params: Mutex::new(None),
            stats: PoolStats::default(),
        })
    }

    pub fn settings(&self) -> &RawPool {
        &self.settings
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Connections checked out right now (each holds a permit; idle ones do not).
    pub fn in_use(&self) -> usize {
        (self.settings.max_size as usize).saturating_sub(self.permits.available_permits())
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
        let start = Instant::now();
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => match tokio::time::timeout(
                self.settings.checkout_timeout,
                self.permits.clone().acquire_owned(),
            )
            .await
            {
                Ok(Ok(p)) => p,
                _ => {
                    self.stats.checkout_timeouts.fetch_add(1, Ordering::Relaxed);
                    return Err(CheckoutError::Timeout {
                        server: self.target.describe(),
                        after: self.settings.checkout_timeout,
                        max: self.settings.max_size,
                    });
                }
            },
        };
        self.checkout_with(permit, start).await
    }

    /// Like [`Pool::checkout`], but only if the pool has room right now.
    pub async fn try_checkout(self: &Arc<Self>) -> Option<Result<PooledConn, CheckoutError>> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(self.checkout_with(permit, Instant::now()).await)
    }

    async fn checkout_with(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        start: Instant,
    ) -> Result<PooledConn, CheckoutError> {
        self.stats.checkouts.fetch_add(1, Ordering::Relaxed);
        while let Some(mut c) = self.idle.lock().ok().and_then(|mut v| v.pop()) {
            if self.expired(&c) || c.is_broken() {
                continue; // dropped: closes the socket
            }
            c.last_used = Instant::now();
            self.record_wait(start);
            return Ok(PooledConn::new(c, self.clone(), permit));
        }
        let conn = self.open().await?;
        self.record_wait(start);
        Ok(PooledConn::new(conn, self.clone(), permit))
    }

    fn record_wait(&self, start: Instant) {
        self.stats
            .wait_micros
            .fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    async fn open(&self) -> Result<ServerConn, BackendError> {
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        match ServerConn::connect(self.target.clone(), self.settings.connect_timeout).await {
            Ok(c) => {
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
                Err(e)
            }
        }
    }

    fn expired(&self, c: &ServerConn) -> bool {
        c.created.elapsed() >= self.settings.max_lifetime
    }

    fn checkin(&self, mut conn: ServerConn) {
        if self.expired(&conn) {
            return;
        }
        conn.last_used = Instant::now();
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }

    /// Close idle connections past their idle timeout or lifetime, and open
    /// connections up to `min_size`. Called periodically by [`Pool::maintain`].
    pub async fn reap_and_fill(self: &Arc<Self>) {
        let min = self.settings.min_size as usize;
        let closed: Vec<ServerConn> = {
            let Ok(mut idle) = self.idle.lock() else {
                return;
            };
            let total = idle.len() + self.in_use();
            let mut keep = Vec::with_capacity(idle.len());
            let mut closed = Vec::new();
            let mut remaining = total;
            // Oldest first are at the front of the stack.
            for c in idle.drain(..) {
                let too_idle =
                    c.last_used.elapsed() >= self.settings.idle_timeout && remaining > min;
                if too_idle || self.expired(&c) {
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
                idle.len() + self.in_use()
            };
            if total >= min {
                break;
            }
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                break;
            };
            match self.open().await {
                Ok(c) => {
                    drop(permit);
                    self.checkin(c);
                }
                Err(e) => {
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
        let period = (self.settings.idle_timeout / 4)
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
    conn: Option<ServerConn>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl PooledConn {
    fn new(conn: ServerConn, pool: Arc<Pool>, permit: OwnedSemaphorePermit) -> Self {
        PooledConn {
            conn: Some(conn),
            pool,
            _permit: permit,
        }
    }

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

//! Who is connected: one entry per client session, for `SHOW CLIENTS`, the
//! per-user connection limits and the per-user query rate limits.
//!
//! Sessions update their own entry with relaxed atomics (state, counters);
//! the registry's lock is taken only at login and logout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::task::AtomicWaker;

use crate::config::RateLimit;

/// What a session is doing, as `SHOW CLIENTS` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Between transactions, holding no server.
    Idle = 0,
    /// Holding a server (a statement or transaction in progress).
    Active = 1,
    /// Waiting for a server connection (pool busy, or the proxy paused).
    Waiting = 2,
    /// Waiting for its turn under the user's query rate limit.
    Throttled = 3,
}

impl ClientState {
    pub fn name(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
            ClientState::Throttled => "throttled",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => ClientState::Active,
            2 => ClientState::Waiting,
            3 => ClientState::Throttled,
            _ => ClientState::Idle,
        }
    }
}

/// One client session.
pub struct ClientInfo {
    pub id: u64,
    pub user: String,
    pub database: String,
    pub peer: Option<SocketAddr>,
    pub tls: bool,
    pub connected_at: SystemTime,
    state: AtomicU8,
    pub queries: AtomicU64,
    /// Shard index of the held server plus one; 0 when none is held.
    shard: AtomicU64,
    /// What pins the client's server, if anything (session::state). A lock
    /// taken only when that changes and by SHOW CLIENTS.
    pinned_by: std::sync::Mutex<Option<&'static str>>,
    /// Wakes the session when shutdown begins (see `Proxy::begin_shutdown`).
    /// Its own waker, not a shared channel: an idle session waits on it
    /// after every transaction, and a shared one would be a lock every
    /// session takes each time.
    pub shutdown_waker: AtomicWaker,
}

impl ClientInfo {
    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn set_state(&self, s: ClientState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    pub fn shard(&self) -> Option<usize> {
        match self.shard.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n as usize - 1),
        }
    }

    pub fn pinned_by(&self) -> Option<&'static str> {
        *self.pinned_by.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_pinned_by(&self, what: Option<&'static str>) {
        *self.pinned_by.lock().unwrap_or_else(|e| e.into_inner()) = what;
    }

    pub fn set_shard(&self, shard: Option<usize>) {
        self.shard
            .store(shard.map_or(0, |s| s as u64 + 1), Ordering::Relaxed);
    }
}

/// Per user: sessions open and the shared rate-limit bucket.
#[derive(Default)]
struct UserEntry {
    sessions: u32,
    bucket: Option<Arc<TokenBucket>>,
}

#[derive(Default)]
pub struct ClientRegistry {
    inner: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    clients: HashMap<u64, Arc<ClientInfo>>,
    users: HashMap<String, UserEntry>,
}

/// Why a login was refused by [`ClientRegistry::admit`].
#[derive(Debug)]
pub struct UserLimitReached {
    pub limit: u32,
}

/// Removes the client from the registry when the session ends.
pub struct Registration {
    registry: Arc<ClientRegistry>,
    pub info: Arc<ClientInfo>,
    pub bucket: Option<Arc<TokenBucket>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut r = self
            .registry
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        r.clients.remove(&self.info.id);
        if let Some(u) = r.users.get_mut(&self.info.user) {
            u.sessions = u.sessions.saturating_sub(1);
            if u.sessions == 0 {
                r.users.remove(&self.info.user);
            }
        }
    }
}

impl ClientRegistry {
    /// Register a session of `user`, unless the user already has
    /// `max_connections` sessions. The check and the count are one step, so
    /// concurrent logins cannot overshoot the limit.
    #[allow(clippy::too_many_arguments)]
    pub fn admit(
        self: &Arc<Self>,
        id: u64,
        user: &str,
        database: &str,
        peer: Option<SocketAddr>,
        tls: bool,
        max_connections: Option<u32>,
        rate_limit: Option<RateLimit>,
    ) -> Result<Registration, UserLimitReached> {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = r.users.entry(user.to_string()).or_default();
        if let Some(limit) = max_connections {
            if entry.sessions >= limit {
                if entry.sessions == 0 {
                    r.users.remove(user);
                }
                return Err(UserLimitReached { limit });
            }
        }
        entry.sessions += 1;
        let bucket = rate_limit.map(|limit| match &entry.bucket {
            Some(b) => {
                b.set_limit(limit);
                b.clone()
            }
            None => {
                let b = Arc::new(TokenBucket::new(limit));
                entry.bucket = Some(b.clone());
                b
            }
        });
        if bucket.is_none() {
            entry.bucket = None;
        }
        let info = Arc::new(ClientInfo {
            id,
            user: user.to_string(),
            database: database.to_string(),
            peer,
            tls,
            connected_at: SystemTime::now(),
            state: AtomicU8::new(ClientState::Idle as u8),
            queries: AtomicU64::new(0),
            shard: AtomicU64::new(0),
            pinned_by: std::sync::Mutex::new(None),
            shutdown_waker: AtomicWaker::new(),
        });
        r.clients.insert(id, info.clone());
        Ok(Registration {
            registry: self.clone(),
            info,
            bucket,
        })
    }

    /// Every session, oldest first.
    pub fn list(&self) -> Vec<Arc<ClientInfo>> {
        let r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = r.clients.values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }

    pub fn count(&self) -> usize {
        self.inner
            .lock()
            .map(|r| r.clients.len())
            .unwrap_or_default()
    }

    /// Apply reloaded rate limits to the buckets of connected users.
    pub fn update_rate_limits(&self, limit_of: impl Fn(&str) -> Option<RateLimit>) {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (user, entry) in r.users.iter_mut() {
            match (limit_of(user), &entry.bucket) {
                (Some(l), Some(b)) => b.set_limit(l),
                // Sessions pick up a new or removed bucket at their next
                // login; existing ones keep what they have, so a limit
                // switched off is off at once only for new sessions.
                (Some(l), None) => entry.bucket = Some(Arc::new(TokenBucket::new(l))),
                (None, Some(b)) => b.set_limit(RateLimit {
                    per_second: f64::MAX,
                    burst: f64::MAX,
                    action: crate::config::RateLimitAction::Queue,
                }),
                (None, None) => {}
            }
        }
    }
}

/// A token bucket shared by all sessions of one user. Tokens may go
/// negative: a statement that must queue reserves its token and sleeps until
/// the bucket would have refilled to it, so waiters are served in order.
pub struct TokenBucket {
    state: Mutex<BucketState>,
}

struct BucketState {
    limit: RateLimit,
    tokens: f64,
    refilled: Instant,
}

/// What a statement gets from the bucket.
#[derive(Debug, PartialEq)]
pub enum Admission {
    Now,
    /// Run after sleeping this long (the token is already taken).
    After(Duration),
    /// Over the limit and not allowed to wait that long.
    Refused {
        per_second: f64,
    },
}

impl TokenBucket {
    pub fn new(limit: RateLimit) -> Self {
        TokenBucket {
            state: Mutex::new(BucketState {
                limit,
                tokens: limit.burst,
                refilled: Instant::now(),
            }),
        }
    }

    pub fn set_limit(&self, limit: RateLimit) {
        if let Ok(mut s) = self.state.lock() {
            s.limit = limit;
            s.tokens = s.tokens.min(limit.burst);
        }
    }

    /// Take a token for one statement, waiting at most `max_wait`.
    pub fn admit(&self, max_wait: Duration) -> Admission {
        let Ok(mut s) = self.state.lock() else {
            return Admission::Now;
        };
        let now = Instant::now();
        let elapsed = now.duration_since(s.refilled).as_secs_f64();
        s.refilled = now;
        s.tokens = (s.tokens + elapsed * s.limit.per_second).min(s.limit.burst);
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            return Admission::Now;
        }
        let per_second = s.limit.per_second;
        let wait = Duration::from_secs_f64(((1.0 - s.tokens) / per_second).min(1e6));
        if s.limit.action == crate::config::RateLimitAction::Error || wait > max_wait {
            return Admission::Refused { per_second };
        }
        s.tokens -= 1.0;
        Admission::After(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimitAction;

    fn limit(per_second: f64, burst: f64, action: RateLimitAction) -> RateLimit {
        RateLimit {
            per_second,
            burst,
            action,
        }
    }

    #[test]
    fn bucket_allows_burst_then_queues_or_refuses() {
        let b = TokenBucket::new(limit(10.0, 2.0, RateLimitAction::Queue));
        let max = Duration::from_secs(1);
        assert_eq!(b.admit(max), Admission::Now);
        assert_eq!(b.admit(max), Admission::Now);
        // Empty: the next waits ~0.1 s, the one after ~0.2 s.
        let Admission::After(w1) = b.admit(max) else {
            panic!("expected a wait")
        };
        let Admission::After(w2) = b.admit(max) else {
            panic!("expected a wait")
        };
        assert!(w1 > Duration::from_millis(80) && w1 <= Duration::from_millis(100));
        assert!(w2 > w1);
        let e = TokenBucket::new(limit(10.0, 1.0, RateLimitAction::Error));
        assert_eq!(e.admit(max), Admission::Now);
        assert_eq!(e.admit(max), Admission::Refused { per_second: 10.0 });
    }

    #[test]
    fn user_limit_is_enforced_and_released() {
        let reg = Arc::new(ClientRegistry::default());
        let a = reg.admit(1, "u", "d", None, false, Some(1), None).unwrap();
        assert!(reg.admit(2, "u", "d", None, false, Some(1), None).is_err());
        assert_eq!(reg.count(), 1);
        drop(a);
        assert_eq!(reg.count(), 0);
        assert!(reg.admit(3, "u", "d", None, false, Some(1), None).is_ok());
    }
}

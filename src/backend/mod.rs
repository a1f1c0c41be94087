//! The server side of the wire: connections to PostgreSQL servers and the
//! pools that hold them, one pool per (server, database, user).

pub mod cancel;
pub mod conn;
pub mod health;
pub mod lane;
pub mod pool;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use conn::{BackendError, ServerConn, ServerTarget};
pub use pool::{CheckoutError, ParkSlot, Pool, PooledConn};

use crate::config::{Config, Database, User};

/// A server a session may read from, with what load balancing needs.
#[derive(Clone)]
pub struct ReplicaPool {
    pub pool: Arc<Pool>,
    /// `weight` of the server (0: no reads).
    pub weight: u32,
    /// The server is in the proxy's `region` (or no regions are set).
    pub local: bool,
}

/// Identifies a pool: which server, which backend database, which backend role.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    host: String,
    port: u16,
    database: String,
    user: String,
}

/// Every pool of the running proxy, created on first use and kept for the
/// life of the process so connections are shared by all clients.
pub struct Backends {
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
}

impl Default for Backends {
    fn default() -> Self {
        Self::new()
    }
}

impl Backends {
    pub fn new() -> Self {
        Backends {
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The pool for a client of `user` on `database`, to server `server` of shard `shard`.
    pub fn pool(
        &self,
        config: &Config,
        shard: usize,
        server: usize,
        database: &Database,
        user: &User,
    ) -> Arc<Pool> {
        let shard_cfg = &config.shards[shard];
        let srv = &shard_cfg.servers[server];
        let key = PoolKey {
            host: srv.host.clone(),
            port: srv.port,
            database: database.server_database.clone(),
            user: user.server_user.clone(),
        };
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        // A reload that changed the user's server password: new logins get
        // a fresh pool, sessions on the old one keep it until they are done.
        if pools
            .get(&key)
            .is_some_and(|p| p.target.password != user.server_password)
        {
            pools.remove(&key);
        }
        pools
            .entry(key)
            .or_insert_with(|| {
                let pool = Pool::new(
                    ServerTarget {
                        shard: shard_cfg.name.clone(),
                        host: srv.host.clone(),
                        port: srv.port,
                        role: srv.role,
                        database: database.server_database.clone(),
                        user: user.server_user.clone(),
                        password: user.server_password.clone(),
                    },
                    config.pool.clone(),
                );
                pool.spawn_maintenance();
                pool
            })
            .clone()
    }

    /// A session's pools: one primary pool per shard, by shard index, the
    /// primary being server `primary_of(shard)` of the shard. Without
    /// [[tables]] only the default shard is used, so every index gets its
    /// pool and other shards' pools are not even created.
    pub fn session_pools(
        &self,
        config: &Config,
        database: &Database,
        user: &User,
        primary_of: impl Fn(usize) -> usize,
    ) -> Vec<Arc<Pool>> {
        let pool_of = |shard: usize| self.pool(config, shard, primary_of(shard), database, user);
        let default = pool_of(config.default_shard);
        let routing = config.router.tables().next().is_some();
        (0..config.shards.len())
            .map(|shard| {
                if routing && shard != config.default_shard {
                    pool_of(shard)
                } else {
                    default.clone()
                }
            })
            .collect()
    }

    /// Apply a reloaded config: every pool takes the new `[pool]` settings;
    /// pools of servers no longer configured are forgotten (sessions still
    /// using one keep it alive until they move to the new topology).
    pub fn reconfigure(&self, config: &Config) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|k, _| {
            config
                .shards
                .iter()
                .flat_map(|s| s.servers.iter())
                .any(|s| s.host == k.host && s.port == k.port)
        });
        for p in pools.values() {
            p.reconfigure(config.pool.clone());
        }
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.pools
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }
}

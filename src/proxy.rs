//! The runtime root: the state one running proxy shares between its tasks
//! (the config in force and its reloads, server pools, health checks,
//! cancel keys, the client registry, metrics, shutdown and PAUSE). Built
//! once by `main`, shared by `Arc`; the modules below it (frontend,
//! session, execute, topology, rebalance, admin) read it, and it reads
//! none of them back except to build what it owns.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use crate::backend::cancel::CancelRegistry;
use crate::backend::health::HealthMonitor;
use crate::backend::{Backends, ReplicaPool};
use crate::config::secret::ScramVerifier;
use crate::config::{Config, ConfigError, PoolMode, User};
use crate::stats::clients::ClientRegistry;
use crate::stats::metrics::Metrics;

/// Shared state of the running proxy.
pub struct Proxy {
    /// The config in force; a reload swaps it. Sessions take a snapshot at
    /// login and move to the newest one between transactions.
    config: RwLock<Arc<Config>>,
    /// Bumped by every applied reload, so sessions notice with one atomic
    /// load instead of taking the lock.
    config_generation: AtomicU64,
    /// The same generation, for sessions that wait for the next config
    /// (writes held during a rebalance's cutover).
    config_changed: watch::Sender<u64>,
    pub backends: Backends,
    pub cancels: CancelRegistry,
    pub clients: Arc<ClientRegistry>,
    pub metrics: Metrics,
    pub health: HealthMonitor,
    /// TLS is set up once at start (a reload cannot change it).
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: watch::Sender<bool>,
    /// PAUSE: new transactions wait until RESUME.
    paused: watch::Sender<bool>,
    pub(crate) next_client_id: AtomicU64,
    /// Connections alive right now, logged in or not (shutdown waits for
    /// this to reach zero).
    pub active_clients: AtomicUsize,
    /// Client sessions admitted under `limits.max_client_connections`
    /// (admin console sessions are not counted).
    sessions: AtomicUsize,
    /// The Postgres listener is accepting (for `/readyz`).
    pub listening: AtomicBool,
    /// A SCRAM verifier for unknown users, so that a login attempt for a user
    /// that does not exist looks the same as one with a wrong password.
    pub(crate) dummy_verifier: ScramVerifier,
    /// Serializes reloads (SIGHUP and RELOAD at once).
    reloading: Mutex<()>,
}

/// The pools a session uses, by shard index.
pub struct SessionPools {
    pub primaries: Vec<Arc<crate::backend::Pool>>,
    /// The other servers of each shard, when the session may read from
    /// replicas.
    pub replicas: Vec<Vec<ReplicaPool>>,
}

/// What a reload changed, for the log and the RELOAD command.
#[derive(Debug, Default)]
pub struct ReloadOutcome {
    /// Settings that only a restart applies, left as they were.
    pub needs_restart: Vec<&'static str>,
}

impl Proxy {
    /// Build the proxy's state and start the health checks (needs a Tokio
    /// runtime).
    pub fn new(config: Config) -> Result<Arc<Self>, String> {
        let tls = match &config.tls {
            Some(t) => Some(
                crate::config::tls::load_server_config(&t.cert, &t.key)
                    .map_err(|(k, r)| format!("tls.{k}: {r}"))?,
            ),
            None => None,
        };
        let (shutdown, _) = watch::channel(false);
        let (paused, _) = watch::channel(false);
        let health = HealthMonitor::default();
        health.apply(&config);
        Ok(Arc::new(Proxy {
            config: RwLock::new(Arc::new(config)),
            config_generation: AtomicU64::new(0),
            config_changed: watch::channel(0).0,
            backends: Backends::new(),
            cancels: CancelRegistry::default(),
            clients: Arc::new(ClientRegistry::default()),
            metrics: Metrics::default(),
            health,
            tls,
            shutdown,
            paused,
            next_client_id: AtomicU64::new(1),
            active_clients: AtomicUsize::new(0),
            sessions: AtomicUsize::new(0),
            listening: AtomicBool::new(false),
            dummy_verifier: ScramVerifier::from_password(&format!("{:x}", rand::random::<u128>())),
            reloading: Mutex::new(()),
        }))
    }

    /// The config in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Wakes when a new config is in force.
    pub fn config_changes(&self) -> watch::Receiver<u64> {
        self.config_changed.subscribe()
    }

    pub fn config_generation(&self) -> u64 {
        self.config_generation.load(Ordering::Acquire)
    }

    /// Re-read the config file and apply it without dropping sessions:
    /// users, pool settings, limits, servers and table rules change; new
    /// logins see the new config at once, running sessions at their next
    /// transaction. An invalid file changes nothing. `listen`,
    /// `http_listen` and `[tls]` need a restart (reported, not applied).
    pub fn reload(&self) -> Result<ReloadOutcome, ConfigError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.config();
        // A shard map from the catalog stays in force: the file only
        // changes the rest.
        let map = old.topology_map.clone();
        let from_catalog = (old.topology_version > 0).then_some((old.topology_version, &*map));
        self.apply(old.clone(), Config::load_with_map(&old.file, from_catalog))
    }

    /// Put shard map `version` from the catalog in force, when it is newer
    /// than the one in force (None otherwise). An invalid map changes
    /// nothing.
    pub fn apply_topology(
        &self,
        version: u64,
        map: &serde_json::Value,
    ) -> Result<Option<ReloadOutcome>, ConfigError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.config();
        if version <= old.topology_version {
            return Ok(None);
        }
        self.apply(
            old.clone(),
            Config::load_with_map(&old.file, Some((version, map))),
        )
        .map(Some)
    }

    /// Apply a newly loaded config (reload or new shard map), under the
    /// reload lock.
    fn apply(
        &self,
        old: Arc<Config>,
        new: Result<Config, ConfigError>,
    ) -> Result<ReloadOutcome, ConfigError> {
        let new = match new {
            Ok(c) => c,
            Err(e) => {
                self.metrics.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "reload rejected; the previous config stays in force");
                return Err(e);
            }
        };
        if let Err(e) = check_servable(&new) {
            self.metrics.reload_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "reload rejected; the previous config stays in force");
            return Err(e);
        }
        let mut outcome = ReloadOutcome::default();
        let mut new = new;
        if new.listen != old.listen {
            outcome.needs_restart.push("listen");
            new.listen = old.listen.clone();
        }
        if new.http_listen != old.http_listen {
            outcome.needs_restart.push("http_listen");
            new.http_listen = old.http_listen.clone();
        }
        let tls_key = |c: &Config| c.tls.as_ref().map(|t| (t.cert.clone(), t.key.clone()));
        if tls_key(&new) != tls_key(&old) {
            outcome.needs_restart.push("tls");
            new.tls = old.tls.clone();
        }
        self.backends.reconfigure(&new);
        self.health.apply(&new);
        self.clients
            .update_rate_limits(|u| new.users.get(u).and_then(|u| u.rate_limit));
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        let generation = self.config_generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.config_changed.send_replace(generation);
        self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(needs_restart = ?outcome.needs_restart, "config reloaded");
        Ok(outcome)
    }

    /// Ask every session to end at its next idle point, and stop accepting.
    pub fn begin_shutdown(&self) {
        let _ = self.shutdown.send(true);
        for client in self.clients.list() {
            client.shutdown_waker.wake();
        }
    }

    pub fn shutdown_requested(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// PAUSE (true) or RESUME (false).
    pub fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    pub fn paused(&self) -> watch::Receiver<bool> {
        self.paused.subscribe()
    }

    /// A session's primary pool of every shard (see
    /// `Backends::session_pools`), primaries as the health checks know them.
    pub fn session_pools(
        &self,
        config: &Config,
        database: &crate::config::Database,
        user: &User,
    ) -> SessionPools {
        let primaries: Vec<usize> = (0..config.shards.len())
            .map(|shard| self.health.primary_index(config, shard))
            .collect();
        let pools = self
            .backends
            .session_pools(config, database, user, |shard| primaries[shard]);
        // Replicas only where reads may use them; only the default shard
        // without [[tables]].
        let routing = config.router.tables().next().is_some();
        let read_split = config.read_from(database, user) != crate::config::ReadFrom::Primary;
        let replicas: Vec<Vec<ReplicaPool>> = (0..config.shards.len())
            .map(|shard| {
                if !read_split || (!routing && shard != config.default_shard) {
                    return Vec::new();
                }
                let servers = &config.shards[shard].servers;
                (0..servers.len())
                    .filter(|&i| i != primaries[shard] && servers[i].weight > 0)
                    .map(|i| ReplicaPool {
                        pool: self.backends.pool(config, shard, i, database, user),
                        weight: servers[i].weight,
                        local: config.region.is_none() || servers[i].region == config.region,
                    })
                    .collect()
            })
            .collect();
        for p in pools
            .iter()
            .chain(replicas.iter().flatten().map(|r| &r.pool))
        {
            let t = &p.target;
            p.set_health(self.health.of(&t.shard, &t.host, t.port));
        }
        SessionPools {
            primaries: pools,
            replicas,
        }
    }

    /// Config and health generations together: when either moves, a
    /// session re-resolves its pools (a reload, a promotion, a ban).
    pub fn topology_generation(&self) -> (u64, u64) {
        (self.config_generation(), self.health.generation())
    }

    /// Server connections checked out by sessions right now.
    pub fn servers_in_use(&self) -> usize {
        self.backends.all().iter().map(|p| p.in_use()).sum()
    }

    /// Take a session slot under `limits.max_client_connections`.
    pub(crate) fn admit_session(self: &Arc<Self>) -> Option<SessionSlot> {
        let max = self.config().limits.max_client_connections as usize;
        self.sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| SessionSlot(self.clone()))
    }
}

/// Settings `serve` refuses to start with (and a reload refuses to apply).
pub fn check_servable(config: &Config) -> Result<(), ConfigError> {
    // Routing holds one server per transaction; session pooling would pin
    // a client to one shard for good.
    if config.router.tables().next().is_some() {
        if let Some(d) = config
            .databases
            .values()
            .find(|d| d.pool_mode == PoolMode::Session)
        {
            return Err(ConfigError {
                file: config.file.clone(),
                key: "databases".into(),
                reason: format!(
                    "database \"{}\" uses session pooling, which does not support [[tables]] yet; use pool_mode = \"transaction\"",
                    d.name
                ),
            });
        }
    }
    Ok(())
}

/// A slot under `limits.max_client_connections`, freed when dropped.
pub(crate) struct SessionSlot(Arc<Proxy>);
impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::AcqRel);
    }
}

//! The configuration file: its TOML schema, defaults and validation.
//!
//! Loading happens in two steps. `RawConfig` is exactly what the file says
//! (unknown keys are errors, so a typo never silently falls back to a
//! default); `Config` is the validated, resolved form the proxy runs on
//! (addresses parsed, secrets turned into verifiers, defaults applied). Every
//! error names the file, the key and the reason.

mod duration;
pub mod secret;
pub mod tls;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::router::{KeyType, Placement, Router, TableRule};
use crate::sharding::{GeoMap, HashRing, RangeBound, RangeMap, RangeSpec, DEFAULT_VNODES};
use std::sync::Arc;

use secret::StoredSecret;

pub use duration::parse_duration;

/// A configuration error: which file, which key, and why.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(
                f,
                "{}: key `{}`: {}",
                self.file.display(),
                self.key,
                self.reason
            )
        }
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Where this proxy runs: replicas of the same `region` are preferred.
    pub region: Option<String>,
    /// Address the Postgres wire protocol listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Address of the HTTP endpoints (metrics, health).
    #[serde(default = "default_http_listen")]
    pub http_listen: String,
    /// Shard for tables not declared as sharded; defaults to the first shard.
    pub default_shard: Option<String>,
    /// Largest protocol message accepted from a client, in bytes.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: u64,
    /// How long SIGTERM waits for running transactions before closing.
    #[serde(
        default = "default_shutdown_timeout",
        with = "duration::serde_duration"
    )]
    pub shutdown_timeout: Duration,
    /// Threads that run sessions (default: one per CPU). Read at start.
    pub worker_threads: Option<usize>,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub pool: RawPool,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub health: RawHealth,
    #[serde(default)]
    pub reads: Reads,
    #[serde(default)]
    pub transactions: Transactions,
    #[serde(default)]
    pub topology: TopologySettings,
    #[serde(default)]
    pub rebalance: RebalanceSettings,
    #[serde(default)]
    pub users: Vec<RawUser>,
    #[serde(default)]
    pub databases: Vec<RawDatabase>,
    #[serde(default)]
    pub shards: Vec<RawShard>,
    /// Sharded and reference tables; tables not listed live on the default shard.
    #[serde(default)]
    pub tables: Vec<RawTable>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Hash,
    Range,
    Geo,
    Reference,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTable {
    pub name: String,
    /// The shard key column (not for reference tables).
    pub key: Option<String>,
    pub strategy: Strategy,
    /// int, text or uuid; hash keys default to int, range keys follow their
    /// bounds, geo keys are text.
    pub key_type: Option<KeyType>,
    /// hash: virtual nodes per shard on the ring.
    pub vnodes: Option<u32>,
    /// hash: the shards on the ring (default: every shard). A shard added
    /// to the cluster joins a ring only when a rebalance moves its arcs.
    pub shards: Option<Vec<String>>,
    /// range: `[{ shard = "s0", from = 1, to = 500001 }, ...]`, from inclusive,
    /// to exclusive, either end may be left open.
    pub ranges: Option<Vec<RawRange>>,
    /// geo: `{ s0 = ["us", "ca"], s1 = ["de", "fr"] }`.
    pub regions: Option<BTreeMap<String, Vec<String>>>,
    /// geo: shard for regions not listed; defaults to the global default shard.
    pub default_shard: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRange {
    pub shard: String,
    pub from: Option<toml::Value>,
    pub to: Option<toml::Value>,
}

fn default_listen() -> String {
    "127.0.0.1:6432".into()
}
fn default_http_listen() -> String {
    "127.0.0.1:9930".into()
}
fn default_max_message_size() -> u64 {
    256 * 1024 * 1024
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain presented to clients.
    pub cert: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
    /// Refuse clients that do not ask for TLS.
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A backend connection is held only for the length of a transaction.
    Transaction,
    /// A backend connection is held for the whole client session.
    Session,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    #[serde(default = "default_pool_mode")]
    pub mode: PoolMode,
    /// Connections kept open per server even when idle.
    #[serde(default)]
    pub min_size: u32,
    /// Most connections per server (per database and user).
    #[serde(default = "default_max_size")]
    pub max_size: u32,
    #[serde(default = "default_5s", with = "duration::serde_duration")]
    pub connect_timeout: Duration,
    /// How long a client waits for a free backend connection.
    #[serde(default = "default_5s", with = "duration::serde_duration")]
    pub checkout_timeout: Duration,
    #[serde(default = "default_idle_timeout", with = "duration::serde_duration")]
    pub idle_timeout: Duration,
    #[serde(default = "default_max_lifetime", with = "duration::serde_duration")]
    pub max_lifetime: Duration,
    /// Prepared statements kept per backend connection before the least
    /// recently used is closed (bounds server memory).
    #[serde(default = "default_max_prepared")]
    pub max_prepared_statements: u32,
    /// Clients allowed to wait for a connection of one pool at once; the
    /// next one gets 53300 at once instead of joining an ever longer queue.
    #[serde(default = "default_max_waiting")]
    pub max_waiting: u32,
    /// Transaction pooling: a session keeps its server between
    /// transactions while its pool has room and no other client waits (it
    /// skips the shared pool at each transaction); false: every
    /// transaction goes back to the pool and may land on any server.
    #[serde(default = "default_sticky_servers")]
    pub sticky_servers: bool,
    /// Transaction pooling: server connections per pool (and set of
    /// session parameters) that short reads of many sessions share,
    /// written back to back (see backend::lane); at most half of
    /// `max_size` are used; 0 turns lanes off.
    #[serde(default = "default_pipeline_lanes")]
    pub pipeline_lanes: u32,
}

fn default_sticky_servers() -> bool {
    true
}

fn default_pipeline_lanes() -> u32 {
    1
}

/// Protection of the proxy and the servers from too many or too greedy
/// clients. Durations of zero turn a timeout off.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Client sessions at once (admin console sessions not counted, so an
    /// operator can always get in); the next client gets 53300.
    #[serde(default = "default_max_clients")]
    pub max_client_connections: u32,
    /// A statement running longer is cancelled on its server (57014).
    #[serde(default, with = "duration::serde_duration")]
    pub statement_timeout: Duration,
    /// A session idle inside a transaction longer is closed (25P03), which
    /// rolls the transaction back and frees its server connection.
    #[serde(default, with = "duration::serde_duration")]
    pub idle_in_transaction_timeout: Duration,
    /// How long a new transaction waits while the proxy is PAUSEd.
    #[serde(default = "default_pause_timeout", with = "duration::serde_duration")]
    pub pause_timeout: Duration,
    /// With `rate_limit_action = "queue"`, the longest a statement waits for
    /// its turn before it fails anyway.
    #[serde(default = "default_5s", with = "duration::serde_duration")]
    pub rate_limit_max_wait: Duration,
    /// The most rows a read answered from gathered rows (tier 3) may copy
    /// onto its merge connection, over all its sharded tables; a larger
    /// job is refused (54000) rather than let one query fill a server's
    /// temporary space.
    #[serde(default = "default_max_intermediate_rows")]
    pub max_intermediate_rows: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_client_connections: default_max_clients(),
            statement_timeout: Duration::ZERO,
            idle_in_transaction_timeout: Duration::ZERO,
            pause_timeout: default_pause_timeout(),
            rate_limit_max_wait: default_5s(),
            max_intermediate_rows: default_max_intermediate_rows(),
        }
    }
}

fn default_max_intermediate_rows() -> u64 {
    1_000_000
}

fn default_max_clients() -> u32 {
    1000
}
fn default_pause_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Where the shard map comes from: `[topology]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopologySettings {
    /// `file`: `[[shards]]` and `[[tables]]` of this file are the map.
    /// `catalog`: the map is versioned in the catalog (schema `shardwire`
    /// on the first shard's primary); this file's map only seeds version 1
    /// when the catalog has none, and every proxy follows the newest.
    #[serde(default)]
    pub source: TopologySource,
    /// The map's name in the catalog: proxies of one cluster share it.
    #[serde(default = "default_topology_name")]
    pub name: String,
    /// How often the catalog is checked besides LISTEN/NOTIFY.
    #[serde(default = "default_5s", with = "duration::serde_duration")]
    pub check_interval: Duration,
}

impl Default for TopologySettings {
    fn default() -> Self {
        TopologySettings {
            source: TopologySource::File,
            name: default_topology_name(),
            check_interval: default_5s(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TopologySource {
    #[default]
    File,
    Catalog,
}

fn default_topology_name() -> String {
    "default".into()
}

/// The keys of the config file that make up the shard map (the topology).
pub const TOPOLOGY_KEYS: [&str; 3] = ["shards", "tables", "default_shard"];

/// The mover of rebalances: `[rebalance]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RebalanceSettings {
    /// The login the mover uses on every shard's primary. It creates
    /// publications, subscriptions (superuser before PostgreSQL 16) and
    /// guard triggers, and the target shard connects to the source with
    /// it, so it also needs the REPLICATION attribute.
    pub user: Option<String>,
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    /// How long a write to moving rows is held during a cutover before it
    /// fails with a retryable error (40001).
    #[serde(default = "default_10s", with = "duration::serde_duration")]
    pub hold_timeout: Duration,
    /// Cleanup deletes at most this many moved rows a second on the
    /// source (0: no limit).
    #[serde(default)]
    pub rows_per_second: u64,
    /// Copying and cleanup wait while a replica of the source or target
    /// lags more than this behind its primary.
    #[serde(default = "default_10s", with = "duration::serde_duration")]
    pub max_replica_lag: Duration,
}

impl Default for RebalanceSettings {
    fn default() -> Self {
        RebalanceSettings {
            user: None,
            password: None,
            hold_timeout: default_10s(),
            rows_per_second: 0,
            max_replica_lag: default_10s(),
        }
    }
}

fn default_10s() -> Duration {
    Duration::from_secs(10)
}

/// Two-phase commit recovery: `[transactions]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Transactions {
    /// A transaction prepared longer ago without a recorded decision is
    /// decided "abort" by recovery (its proxy is presumed gone).
    #[serde(default = "default_in_doubt_after", with = "duration::serde_duration")]
    pub in_doubt_after: Duration,
    /// Time between recovery passes (one runs at start).
    #[serde(
        default = "default_recovery_interval",
        with = "duration::serde_duration"
    )]
    pub recovery_interval: Duration,
    /// The longest a commit over several shards may take from its first
    /// PREPARE TRANSACTION to recording its decision; past it the commit
    /// rolls back instead. Must be shorter than `in_doubt_after`, or
    /// recovery could roll back a transaction its proxy then commits.
    /// Default: half of `in_doubt_after`, at most 10 s.
    #[serde(default, with = "duration::serde_opt_duration")]
    pub prepare_timeout: Option<Duration>,
}

impl Transactions {
    /// `prepare_timeout`, or its default.
    pub fn prepare_timeout(&self) -> Duration {
        self.prepare_timeout
            .unwrap_or_else(|| (self.in_doubt_after / 2).min(Duration::from_secs(10)))
    }
}

impl Default for Transactions {
    fn default() -> Self {
        Transactions {
            in_doubt_after: default_in_doubt_after(),
            recovery_interval: default_recovery_interval(),
            prepare_timeout: None,
        }
    }
}

fn default_in_doubt_after() -> Duration {
    Duration::from_secs(30)
}
fn default_recovery_interval() -> Duration {
    Duration::from_secs(10)
}

/// Where reads may go (`read_from`); a routing notion, so the router
/// (a `/* shardwire: role=... */` hint) and the config share it.
pub use crate::router::ReadFrom;

/// How a session sees its own writes on replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadYourWrites {
    /// A read after a write goes only to a replica that has replayed the
    /// write's WAL position.
    Lsn,
    /// Reads go to the primary for `read_your_writes_window` after a write.
    PrimaryAfterWrite,
    /// No guarantee.
    Off,
}

/// Replica reads: `[reads]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Reads {
    #[serde(default = "default_read_from")]
    pub read_from: ReadFrom,
    #[serde(default = "default_ryw")]
    pub read_your_writes: ReadYourWrites,
    /// `lsn`: how long a read waits for a replica to replay the session's
    /// last write before it goes to the primary.
    #[serde(default = "default_ryw_wait", with = "duration::serde_duration")]
    pub read_your_writes_max_wait: Duration,
    /// `primary_after_write`: how long reads stay on the primary.
    #[serde(default = "default_ryw_window", with = "duration::serde_duration")]
    pub read_your_writes_window: Duration,
    /// Replicas further behind their primary (WAL bytes) take no reads; 0 is no limit.
    #[serde(default = "default_max_lag_bytes")]
    pub max_replica_lag_bytes: u64,
    /// Replicas whose replay is further behind (time since the last
    /// replayed transaction, while WAL waits to be replayed) take no
    /// reads; "0" is no limit.
    #[serde(default, with = "duration::serde_duration")]
    pub max_replica_lag: Duration,
    #[serde(default = "default_load_balance")]
    pub load_balance: LoadBalance,
    /// Functions that write, beyond the built-in ones (nextval, setval,
    /// advisory locks, ...): a SELECT calling one goes to the primary.
    #[serde(default)]
    pub write_functions: Vec<String>,
}

impl Default for Reads {
    fn default() -> Self {
        Reads {
            read_from: default_read_from(),
            read_your_writes: default_ryw(),
            read_your_writes_max_wait: default_ryw_wait(),
            read_your_writes_window: default_ryw_window(),
            max_replica_lag_bytes: default_max_lag_bytes(),
            max_replica_lag: Duration::ZERO,
            load_balance: default_load_balance(),
            write_functions: Vec::new(),
        }
    }
}

/// How reads are spread over eligible replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalance {
    /// The replica with the fewest connections in use.
    LeastOutstanding,
    /// Each in turn.
    RoundRobin,
    /// At random, in proportion to each server's `weight`.
    Weighted,
}

fn default_load_balance() -> LoadBalance {
    LoadBalance::LeastOutstanding
}

fn default_read_from() -> ReadFrom {
    ReadFrom::Primary
}
fn default_ryw() -> ReadYourWrites {
    ReadYourWrites::Lsn
}
fn default_ryw_wait() -> Duration {
    Duration::from_millis(200)
}
fn default_ryw_window() -> Duration {
    Duration::from_secs(1)
}
fn default_max_lag_bytes() -> u64 {
    16 * 1024 * 1024
}

/// Health checks of every configured server (`/readyz`, `SHOW SHARDS`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    #[serde(default = "default_5s", with = "duration::serde_duration")]
    pub interval: Duration,
    #[serde(default = "default_2s", with = "duration::serde_duration")]
    pub timeout: Duration,
    /// Configured user whose server credentials the checks log in with;
    /// defaults to the first non-admin user with a server password (or trust).
    pub user: Option<String>,
    /// Configured database the checks connect to; defaults to the first.
    pub database: Option<String>,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            interval: default_5s(),
            timeout: default_2s(),
            user: None,
            database: None,
        }
    }
}

fn default_2s() -> Duration {
    Duration::from_secs(2)
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Statements taking longer are logged at WARN with their SQL (zero: off).
    #[serde(default, with = "duration::serde_duration")]
    pub slow_statement: Duration,
}

/// What a statement over its user's rate limit gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitAction {
    /// Wait for its turn (up to `limits.rate_limit_max_wait`).
    Queue,
    /// Fail at once with 53400.
    Error,
}

/// A user's query rate limit: a token bucket refilled at `per_second`
/// holding at most `burst` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
    pub action: RateLimitAction,
}

impl Default for RawPool {
    fn default() -> Self {
        RawPool {
            mode: default_pool_mode(),
            min_size: 0,
            max_size: default_max_size(),
            connect_timeout: default_5s(),
            checkout_timeout: default_5s(),
            idle_timeout: default_idle_timeout(),
            max_lifetime: default_max_lifetime(),
            max_prepared_statements: default_max_prepared(),
            max_waiting: default_max_waiting(),
            sticky_servers: default_sticky_servers(),
            pipeline_lanes: default_pipeline_lanes(),
        }
    }
}

fn default_pool_mode() -> PoolMode {
    PoolMode::Transaction
}
fn default_max_size() -> u32 {
    20
}
fn default_5s() -> Duration {
    Duration::from_secs(5)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_max_lifetime() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_prepared() -> u32 {
    500
}
fn default_max_waiting() -> u32 {
    1000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum AuthMethod {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "trust")]
    Trust,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub name: String,
    /// Plain text, a SCRAM verifier (`SCRAM-SHA-256$...`) or an md5 hash (`md5...`).
    pub password: Option<String>,
    #[serde(default = "default_auth")]
    pub auth: AuthMethod,
    /// May use the admin console (database `shardwire`).
    #[serde(default)]
    pub admin: bool,
    /// Role used on the backends; defaults to `name`.
    pub server_user: Option<String>,
    /// Password used on the backends; defaults to `password` when plain text.
    pub server_password: Option<String>,
    /// Sessions of this user at once (53300 beyond).
    pub max_connections: Option<u32>,
    /// Overrides the database's and `reads.read_from` for this user.
    pub read_from: Option<ReadFrom>,
    /// Statements per second over all of this user's sessions.
    pub rate_limit: Option<f64>,
    /// Statements allowed at once above the rate; defaults to one second's worth.
    pub rate_limit_burst: Option<f64>,
    #[serde(default = "default_rate_action")]
    pub rate_limit_action: RateLimitAction,
}

fn default_rate_action() -> RateLimitAction {
    RateLimitAction::Queue
}

fn default_auth() -> AuthMethod {
    AuthMethod::ScramSha256
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub name: String,
    /// Database name on the backends; defaults to `name`.
    pub server_database: Option<String>,
    /// Overrides `pool.mode` for this database.
    pub pool_mode: Option<PoolMode>,
    /// Overrides `reads.read_from` for this database.
    pub read_from: Option<ReadFrom>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShard {
    pub name: String,
    pub servers: Vec<RawServer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
    /// Not fixed: the health checks learn it with `pg_is_in_recovery()`.
    Auto,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Auto => "auto",
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub host: String,
    pub port: u16,
    /// `primary`, `replica`, or `auto` (the default): learned from the
    /// server, and followed through a failover.
    #[serde(default = "default_role")]
    pub role: Role,
    /// Share of reads among replicas with `load_balance = "weighted"`; 0
    /// takes no reads.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Where the server runs; replicas in the proxy's `region` are
    /// preferred for reads.
    pub region: Option<String>,
}

fn default_weight() -> u32 {
    1
}

fn default_role() -> Role {
    Role::Auto
}

// ---------------------------------------------------------------------------
// The resolved configuration.

#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub region: Option<String>,
    pub listen: String,
    pub http_listen: String,
    pub default_shard: usize,
    pub max_message_size: usize,
    pub shutdown_timeout: Duration,
    pub worker_threads: Option<usize>,
    pub tls: Option<TlsConfig>,
    pub pool: RawPool,
    pub limits: Limits,
    pub log: LogSettings,
    pub health: Health,
    pub reads: Reads,
    pub transactions: Transactions,
    pub topology: TopologySettings,
    /// The version of the shard map in force (0: from this file, not the
    /// catalog) and the map itself, as the file's keys in JSON.
    pub topology_version: u64,
    pub topology_map: Arc<serde_json::Value>,
    /// During a rebalance's cutover (a map with a `fence`): the routing
    /// the map is about to change to. A write whose shards differ under
    /// it is held until the next version (see `session::fence`).
    pub fenced: Option<Arc<Router>>,
    pub rebalance: RebalanceSettings,
    pub users: BTreeMap<String, User>,
    pub databases: BTreeMap<String, Database>,
    pub shards: Vec<Shard>,
    /// Built from `[[tables]]` at load, so ranges and regions are validated
    /// before the proxy starts.
    pub router: Arc<Router>,
}

/// Resolved `[health]`: `login` is None when no user or database can log in.
#[derive(Debug, Clone)]
pub struct Health {
    pub interval: Duration,
    pub timeout: Duration,
    /// (database, user) the checks connect as.
    pub login: Option<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub required: bool,
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub auth: AuthMethod,
    /// What the client must prove knowledge of; `None` only for trust.
    pub secret: Option<StoredSecret>,
    pub admin: bool,
    pub server_user: String,
    pub server_password: Option<String>,
    pub max_connections: Option<u32>,
    pub rate_limit: Option<RateLimit>,
    pub read_from: Option<ReadFrom>,
}

#[derive(Debug, Clone)]
pub struct Database {
    pub name: String,
    pub server_database: String,
    pub pool_mode: PoolMode,
    pub read_from: Option<ReadFrom>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Shard {
    pub name: String,
    pub servers: Vec<Server>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Server {
    pub host: String,
    pub port: u16,
    pub role: Role,
    pub weight: u32,
    pub region: Option<String>,
}

impl Server {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The name of the admin console's database.
pub const ADMIN_DATABASE: &str = "shardwire";

impl Config {
    /// Where reads of `user` on `database` may go: the user's setting, else
    /// the database's, else `reads.read_from`.
    /// Every configured user's role on the servers, once each, sorted.
    pub fn server_roles(&self) -> Vec<String> {
        let mut roles: Vec<String> = self.users.values().map(|u| u.server_user.clone()).collect();
        roles.sort();
        roles.dedup();
        roles
    }

    pub fn read_from(&self, database: &Database, user: &User) -> ReadFrom {
        user.read_from
            .or(database.read_from)
            .unwrap_or(self.reads.read_from)
    }

    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_map(path, None)
    }

    /// Load the file with its shard map replaced by `map` (version, the
    /// `TOPOLOGY_KEYS` as JSON) from the catalog.
    pub fn load_with_map(
        path: &Path,
        map: Option<(u64, &serde_json::Value)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: String::new(),
            reason: format!("cannot read the file: {e}"),
        })?;
        match map {
            None => Self::from_str(path, &text),
            Some((version, map)) => Self::from_str_with_map(path, &text, version, map),
        }
    }

    /// The file's own shard map (`TOPOLOGY_KEYS`) as JSON: what seeds the
    /// catalog.
    pub fn file_map(text: &str) -> Result<serde_json::Value, String> {
        let value: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut map = serde_json::Map::new();
        for k in TOPOLOGY_KEYS {
            if let Some(v) = value.get(k) {
                map.insert(
                    k.to_string(),
                    serde_json::to_value(v).map_err(|e| e.to_string())?,
                );
            }
        }
        Ok(serde_json::Value::Object(map))
    }

    fn from_str_with_map(
        path: &Path,
        text: &str,
        version: u64,
        map: &serde_json::Value,
    ) -> Result<Config, ConfigError> {
        let err = |key: String, reason: String| ConfigError {
            file: path.to_path_buf(),
            key,
            reason,
        };
        let mut value: toml::Value =
            toml::from_str(text).map_err(|e| err(String::new(), e.to_string()))?;
        let table = value
            .as_table_mut()
            .ok_or_else(|| err(String::new(), "not a TOML table".into()))?;
        for k in TOPOLOGY_KEYS {
            table.remove(k);
            if let Some(v) = map.get(k) {
                let v = toml::Value::try_from(v).map_err(|e| {
                    err(
                        k.to_string(),
                        format!("catalog topology version {version}: {e}"),
                    )
                })?;
                table.insert(k.to_string(), v);
            }
        }
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            err(
                if key == "." { String::new() } else { key },
                format!("catalog topology version {version}: {}", e.into_inner()),
            )
        })?;
        let mut config = Self::resolve(path, raw).map_err(|mut e| {
            e.reason = format!("catalog topology version {version}: {}", e.reason);
            e
        })?;
        config.topology_version = version;
        config.topology_map = Arc::new(map.clone());
        if let Some(tables) = map.get("fence").and_then(|f| f.get("tables")) {
            let mut next = map.clone();
            if let Some(obj) = next.as_object_mut() {
                obj.remove("fence");
                obj.insert("tables".into(), tables.clone());
            }
            let next = Self::from_str_with_map(path, text, version, &next).map_err(|mut e| {
                e.key = format!("fence.{}", e.key);
                e
            })?;
            config.fenced = Some(next.router);
        }
        Ok(config)
    }

    /// Parse and validate config text; `path` is used in error messages and
    /// to resolve relative paths (TLS files).
    pub fn from_str(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let err = |key: String, reason: String| ConfigError {
            file: path.to_path_buf(),
            key,
            reason,
        };
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let mut reason = inner.message().to_string();
            if let Some(span) = inner.span() {
                let (line, col) = line_col(text, span.start);
                reason = format!("{reason} (line {line}, column {col})");
            }
            err(if key == "." { String::new() } else { key }, reason)
        })?;
        let mut config = Self::resolve(path, raw)?;
        config.topology_map = Arc::new(Self::file_map(text).map_err(|r| err(String::new(), r))?);
        Ok(config)
    }

    fn resolve(path: &Path, raw: RawConfig) -> Result<Config, ConfigError> {
        let err = |key: &str, reason: String| ConfigError {
            file: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        check_host_port(&raw.listen).map_err(|r| err("listen", r))?;
        check_host_port(&raw.http_listen).map_err(|r| err("http_listen", r))?;
        if raw.worker_threads.is_some_and(|n| !(1..=1024).contains(&n)) {
            return Err(err("worker_threads", "must be between 1 and 1024".into()));
        }
        if raw.max_message_size < 1024 || raw.max_message_size > 1 << 30 {
            return Err(err(
                "max_message_size",
                "must be between 1024 and 1073741824 bytes".into(),
            ));
        }

        // Shards.
        if raw.shards.is_empty() {
            return Err(err("shards", "at least one shard is required".into()));
        }
        let mut shard_names = HashSet::new();
        let mut seen_servers = HashSet::new();
        let mut shards = Vec::new();
        for (i, s) in raw.shards.iter().enumerate() {
            let key = format!("shards[{i}]");
            check_name(&s.name).map_err(|r| err(&format!("{key}.name"), r))?;
            if !shard_names.insert(s.name.clone()) {
                return Err(err(
                    &format!("{key}.name"),
                    format!("shard \"{}\" is defined twice", s.name),
                ));
            }
            if s.servers.is_empty() {
                return Err(err(
                    &format!("{key}.servers"),
                    format!("shard \"{}\" has no servers", s.name),
                ));
            }
            let primaries = s.servers.iter().filter(|v| v.role == Role::Primary).count();
            let auto = s.servers.iter().any(|v| v.role == Role::Auto);
            if primaries > 1 || (primaries == 0 && !auto) {
                return Err(err(
                    &format!("{key}.servers"),
                    format!(
                        "shard \"{}\" must have one server with role = \"primary\" (or servers with role = \"auto\", whose roles shardwire learns), found {primaries} primaries",
                        s.name
                    ),
                ));
            }
            let mut servers = Vec::new();
            for (j, v) in s.servers.iter().enumerate() {
                let skey = format!("{key}.servers[{j}]");
                if v.host.trim().is_empty() {
                    return Err(err(&format!("{skey}.host"), "must not be empty".into()));
                }
                if v.port == 0 {
                    return Err(err(&format!("{skey}.port"), "must be 1-65535".into()));
                }
                if !seen_servers.insert((v.host.clone(), v.port)) {
                    return Err(err(
                        &skey,
                        format!("server {}:{} is listed twice", v.host, v.port),
                    ));
                }
                servers.push(Server {
                    host: v.host.clone(),
                    port: v.port,
                    role: v.role,
                    weight: v.weight,
                    region: v.region.clone(),
                });
            }
            shards.push(Shard {
                name: s.name.clone(),
                servers,
            });
        }
        let default_shard = match &raw.default_shard {
            None => 0,
            Some(name) => shards.iter().position(|s| &s.name == name).ok_or_else(|| {
                err(
                    "default_shard",
                    format!("no shard is named \"{name}\" (shards: {})", names(&shards)),
                )
            })?,
        };

        // Pool.
        let p = &raw.pool;
        if p.max_size == 0 {
            return Err(err("pool.max_size", "must be at least 1".into()));
        }
        if p.min_size > p.max_size {
            return Err(err(
                "pool.min_size",
                format!(
                    "{} is larger than pool.max_size ({})",
                    p.min_size, p.max_size
                ),
            ));
        }
        for (k, d) in [
            ("pool.connect_timeout", p.connect_timeout),
            ("pool.checkout_timeout", p.checkout_timeout),
            ("pool.idle_timeout", p.idle_timeout),
            ("pool.max_lifetime", p.max_lifetime),
        ] {
            if d.is_zero() {
                return Err(err(k, "must be greater than zero".into()));
            }
        }
        if p.max_waiting == 0 {
            return Err(err("pool.max_waiting", "must be at least 1".into()));
        }
        for (k, d) in [
            (
                "transactions.in_doubt_after",
                raw.transactions.in_doubt_after,
            ),
            (
                "transactions.recovery_interval",
                raw.transactions.recovery_interval,
            ),
        ] {
            if d.is_zero() {
                return Err(err(k, "must be greater than zero".into()));
            }
        }
        let t = &raw.transactions;
        if t.prepare_timeout.is_some_and(|p| p.is_zero()) {
            return Err(err(
                "transactions.prepare_timeout",
                "must be greater than zero".into(),
            ));
        }
        if t.prepare_timeout() >= t.in_doubt_after {
            return Err(err(
                "transactions.prepare_timeout",
                format!(
                    "{:?} is not shorter than transactions.in_doubt_after ({:?}): recovery could roll back a transaction while its proxy still commits it",
                    t.prepare_timeout(),
                    t.in_doubt_after
                ),
            ));
        }
        let l = &raw.limits;
        if l.max_client_connections == 0 {
            return Err(err(
                "limits.max_client_connections",
                "must be at least 1".into(),
            ));
        }
        for (k, d) in [
            ("limits.pause_timeout", l.pause_timeout),
            ("limits.rate_limit_max_wait", l.rate_limit_max_wait),
        ] {
            if d.is_zero() {
                return Err(err(k, "must be greater than zero".into()));
            }
        }

        // Users.
        let mut users = BTreeMap::new();
        for (i, u) in raw.users.iter().enumerate() {
            let key = format!("users[{i}]");
            if u.name.is_empty() {
                return Err(err(&format!("{key}.name"), "must not be empty".into()));
            }
            if users.contains_key(&u.name) {
                return Err(err(
                    &format!("{key}.name"),
                    format!("user \"{}\" is defined twice", u.name),
                ));
            }
            let secret = match (&u.password, u.auth) {
                (None, AuthMethod::Trust) => None,
                (None, _) => {
                    return Err(err(
                        &format!("{key}.password"),
                        format!(
                            "user \"{}\" uses {} authentication and needs a password",
                            u.name,
                            auth_name(u.auth)
                        ),
                    ))
                }
                (Some(p), _) => {
                    Some(StoredSecret::parse(p).map_err(|r| err(&format!("{key}.password"), r))?)
                }
            };
            if u.auth == AuthMethod::ScramSha256 {
                if let Some(StoredSecret::Md5(_)) = secret {
                    return Err(err(
                        &format!("{key}.password"),
                        "an md5 hash cannot be used for scram-sha-256 authentication; give the plain password or a SCRAM-SHA-256 verifier".into(),
                    ));
                }
            }
            if u.auth == AuthMethod::Md5 {
                if let Some(StoredSecret::Scram(_)) = secret {
                    return Err(err(
                        &format!("{key}.password"),
                        "a SCRAM verifier cannot be used for md5 authentication; give the plain password or an md5 hash".into(),
                    ));
                }
            }
            let server_password = match (&u.server_password, &secret) {
                (Some(p), _) => Some(p.clone()),
                (None, Some(StoredSecret::Plain { password, .. })) => Some(password.clone()),
                _ => None,
            };
            if u.max_connections == Some(0) {
                return Err(err(
                    &format!("{key}.max_connections"),
                    "must be at least 1 (remove the user to lock it out)".into(),
                ));
            }
            let rate_limit = match u.rate_limit {
                None => {
                    if u.rate_limit_burst.is_some() {
                        return Err(err(
                            &format!("{key}.rate_limit_burst"),
                            "needs rate_limit (statements per second)".into(),
                        ));
                    }
                    None
                }
                Some(r) if !(r.is_finite() && r > 0.0) => {
                    return Err(err(
                        &format!("{key}.rate_limit"),
                        format!("must be a positive number of statements per second, got {r}"),
                    ))
                }
                Some(per_second) => {
                    let burst = u.rate_limit_burst.unwrap_or(per_second.max(1.0));
                    if !(burst.is_finite() && burst >= 1.0) {
                        return Err(err(
                            &format!("{key}.rate_limit_burst"),
                            format!("must be at least 1, got {burst}"),
                        ));
                    }
                    Some(RateLimit {
                        per_second,
                        burst,
                        action: u.rate_limit_action,
                    })
                }
            };
            users.insert(
                u.name.clone(),
                User {
                    max_connections: u.max_connections,
                    read_from: u.read_from,
                    rate_limit,
                    name: u.name.clone(),
                    auth: u.auth,
                    secret,
                    admin: u.admin,
                    server_user: u.server_user.clone().unwrap_or_else(|| u.name.clone()),
                    server_password,
                },
            );
        }

        // Databases.
        let mut databases = BTreeMap::new();
        for (i, d) in raw.databases.iter().enumerate() {
            let key = format!("databases[{i}]");
            if d.name.is_empty() {
                return Err(err(&format!("{key}.name"), "must not be empty".into()));
            }
            if d.name == ADMIN_DATABASE {
                return Err(err(
                    &format!("{key}.name"),
                    format!("\"{ADMIN_DATABASE}\" is reserved for the admin console"),
                ));
            }
            if databases.contains_key(&d.name) {
                return Err(err(
                    &format!("{key}.name"),
                    format!("database \"{}\" is defined twice", d.name),
                ));
            }
            databases.insert(
                d.name.clone(),
                Database {
                    name: d.name.clone(),
                    server_database: d.server_database.clone().unwrap_or_else(|| d.name.clone()),
                    pool_mode: d.pool_mode.unwrap_or(raw.pool.mode),
                    read_from: d.read_from,
                },
            );
        }

        // Health checks.
        let h = &raw.health;
        for (k, d) in [
            ("health.interval", h.interval),
            ("health.timeout", h.timeout),
        ] {
            if d.is_zero() {
                return Err(err(k, "must be greater than zero".into()));
            }
        }
        let check_user = match &h.user {
            Some(u) => match users.get(u) {
                Some(user) => Some(user.name.clone()),
                None => {
                    return Err(err(
                        "health.user",
                        format!("no user is named \"{u}\" in [[users]]"),
                    ))
                }
            },
            // The first application user (in file order) that can log in
            // to the servers: admin users are often proxy-only.
            None => {
                let can_login =
                    |u: &&User| u.server_password.is_some() || u.auth == AuthMethod::Trust;
                let in_order = || raw.users.iter().filter_map(|r| users.get(&r.name));
                in_order()
                    .filter(|u| !u.admin)
                    .find(can_login)
                    .or_else(|| in_order().find(can_login))
                    .map(|u| u.name.clone())
            }
        };
        let check_db = match &h.database {
            Some(d) => match databases.get(d) {
                Some(db) => Some(db.name.clone()),
                None => {
                    return Err(err(
                        "health.database",
                        format!("no database is named \"{d}\" in [[databases]]"),
                    ))
                }
            },
            None => raw.databases.first().map(|d| d.name.clone()),
        };
        let health = Health {
            interval: h.interval,
            timeout: h.timeout,
            login: check_db.zip(check_user),
        };
        if raw.topology.source == TopologySource::Catalog {
            if health.login.is_none() {
                return Err(err(
                    "topology.source",
                    "\"catalog\" needs a user and database the proxy can log in to the servers with (see [health] user and database)".into(),
                ));
            }
            check_name(&raw.topology.name).map_err(|r| err("topology.name", r))?;
            if raw.topology.check_interval.is_zero() {
                return Err(err(
                    "topology.check_interval",
                    "must be greater than zero".into(),
                ));
            }
        }

        // TLS files are read now so a bad path fails `check`, not the first client.
        let tls = match &raw.tls {
            None => None,
            Some(t) => {
                let base = path.parent().unwrap_or(Path::new("."));
                let cert = base.join(&t.cert);
                let key = base.join(&t.key);
                tls::load_server_config(&cert, &key)
                    .map_err(|(which, r)| err(&format!("tls.{which}"), r))?;
                Some(TlsConfig {
                    cert,
                    key,
                    required: t.required,
                })
            }
        };

        let router = Arc::new(
            build_router(&raw.tables, &shards, default_shard, &err)?
                .with_write_functions(&raw.reads.write_functions)
                .with_gather(raw.limits.max_intermediate_rows > 0),
        );

        Ok(Config {
            router,
            file: path.to_path_buf(),
            region: raw.region,
            listen: raw.listen,
            http_listen: raw.http_listen,
            default_shard,
            max_message_size: raw.max_message_size as usize,
            shutdown_timeout: raw.shutdown_timeout,
            worker_threads: raw.worker_threads,
            tls,
            pool: raw.pool,
            limits: raw.limits,
            log: raw.log,
            health,
            reads: raw.reads,
            transactions: raw.transactions,
            topology: raw.topology,
            rebalance: raw.rebalance,
            fenced: None,
            topology_version: 0,
            topology_map: Arc::new(serde_json::Value::Null),
            users,
            databases,
            shards,
        })
    }

    /// The resolved topology as JSON (for `shardwire check --json`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "file": self.file.display().to_string(),
            "listen": self.listen,
            "http_listen": self.http_listen,
            "default_shard": self.shards[self.default_shard].name,
            "tls": self.tls.is_some(),
            "pool": self.pool,
            "limits": self.limits,
            "log": self.log,
            "reads": self.reads,
            "transactions": self.transactions,
            "topology": self.topology,
            "topology_version": self.topology_version,
            "shards": self.shards,
            "databases": self.databases.values().map(|d| serde_json::json!({
                "name": d.name,
                "server_database": d.server_database,
                "pool_mode": d.pool_mode,
            })).collect::<Vec<_>>(),
            "tables": self.router.tables().map(|t| serde_json::json!({
                "name": t.name,
                "key": t.key,
                "strategy": t.strategy(),
                "key_type": t.key_type,
            })).collect::<Vec<_>>(),
            "users": self.users.values().map(|u| serde_json::json!({
                "name": u.name,
                "auth": u.auth,
                "admin": u.admin,
                "server_user": u.server_user,
                "max_connections": u.max_connections,
                "rate_limit": u.rate_limit,
            })).collect::<Vec<_>>(),
        })
    }

    /// A human summary of the resolved topology (for `shardwire check`).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "config {} is valid\nlisten {}  http {}  tls {}\n",
            self.file.display(),
            self.listen,
            self.http_listen,
            if self.tls.is_some() { "on" } else { "off" }
        );
        for (i, shard) in self.shards.iter().enumerate() {
            let default = if i == self.default_shard {
                " (default)"
            } else {
                ""
            };
            s.push_str(&format!("shard {}{default}\n", shard.name));
            for v in &shard.servers {
                s.push_str(&format!("  {:<8} {}\n", v.role.to_string(), v.addr()));
            }
        }
        for d in self.databases.values() {
            s.push_str(&format!(
                "database {} -> {} ({:?} pooling)\n",
                d.name, d.server_database, d.pool_mode
            ));
        }
        let mut tables: Vec<_> = self.router.tables().collect();
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        for t in tables {
            if t.key.is_empty() {
                s.push_str(&format!("table {} ({})\n", t.name, t.strategy()));
            } else {
                s.push_str(&format!(
                    "table {} ({} on {})\n",
                    t.name,
                    t.strategy(),
                    t.key
                ));
            }
        }
        for u in self.users.values() {
            s.push_str(&format!(
                "user {} ({}{})\n",
                u.name,
                auth_name(u.auth),
                if u.admin { ", admin" } else { "" }
            ));
        }
        s
    }
}

/// Turn `[[tables]]` into routing rules, checking each against the shards.
fn build_router(
    raw: &[RawTable],
    shards: &[Shard],
    default_shard: usize,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Router, ConfigError> {
    let shard_index = |key: &str, name: &str| -> Result<usize, ConfigError> {
        shards.iter().position(|s| s.name == name).ok_or_else(|| {
            err(
                key,
                format!("no shard is named \"{name}\" (shards: {})", names(shards)),
            )
        })
    };
    let shard_names: Vec<&str> = shards.iter().map(|s| s.name.as_str()).collect();
    let mut rules: Vec<TableRule> = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let key = |k: &str| format!("tables[{i}].{k}");
        let name = t.name.trim().to_lowercase();
        if name.is_empty() {
            return Err(err(&key("name"), "must not be empty".into()));
        }
        if rules.iter().any(|r| r.name == name) {
            return Err(err(
                &key("name"),
                format!("table \"{name}\" is declared twice"),
            ));
        }
        let not_for = |field: &str, present: bool| -> Result<(), ConfigError> {
            if present {
                Err(err(
                    &key(field),
                    format!(
                        "`{field}` does not apply to strategy = \"{}\"",
                        strategy_name(t.strategy)
                    ),
                ))
            } else {
                Ok(())
            }
        };
        if t.strategy != Strategy::Geo {
            not_for("regions", t.regions.is_some())?;
            not_for("default_shard", t.default_shard.is_some())?;
        }
        if t.strategy != Strategy::Range {
            not_for("ranges", t.ranges.is_some())?;
        }
        if t.strategy != Strategy::Hash {
            not_for("vnodes", t.vnodes.is_some())?;
            not_for("shards", t.shards.is_some())?;
        }
        let column = match (&t.key, t.strategy) {
            (Some(_), Strategy::Reference) => {
                return Err(err(
                    &key("key"),
                    "reference tables have no shard key".into(),
                ))
            }
            (None, Strategy::Reference) => String::new(),
            (None, _) => {
                return Err(err(
                    &key("key"),
                    format!("table \"{name}\" needs `key`, the shard key column"),
                ))
            }
            (Some(k), _) if k.trim().is_empty() => {
                return Err(err(&key("key"), "must not be empty".into()))
            }
            (Some(k), _) => k.trim().to_lowercase(),
        };
        let (placement, key_type, placement_id) = match t.strategy {
            Strategy::Reference => (Placement::Reference, KeyType::Text, "reference".to_string()),
            Strategy::Hash => {
                let vnodes = t.vnodes.unwrap_or(DEFAULT_VNODES);
                if !(1..=10_000).contains(&vnodes) {
                    return Err(err(&key("vnodes"), "must be between 1 and 10000".into()));
                }
                let (names, members): (Vec<&str>, Vec<usize>) = match &t.shards {
                    None => (shard_names.clone(), (0..shard_names.len()).collect()),
                    Some(list) => {
                        let mut members = Vec::with_capacity(list.len());
                        for (j, n) in list.iter().enumerate() {
                            members.push(shard_index(&key(&format!("shards[{j}]")), n)?);
                        }
                        (list.iter().map(String::as_str).collect(), members)
                    }
                };
                let ring = HashRing::new(&names, vnodes).map_err(|e| err(&key("shards"), e))?;
                let kt = t.key_type.unwrap_or(KeyType::Int);
                // Co-located only with rings of the same members.
                let mut sorted = names.clone();
                sorted.sort_unstable();
                let id = match &t.shards {
                    None => format!("hash:{vnodes}"),
                    Some(_) => format!("hash:{vnodes}:{}", sorted.join(",")),
                };
                (Placement::Hash(ring, members), kt, id)
            }
            Strategy::Range => {
                let Some(ranges) = &t.ranges else {
                    return Err(err(
                        &key("ranges"),
                        "strategy = \"range\" needs `ranges`".into(),
                    ));
                };
                if ranges.is_empty() {
                    return Err(err(&key("ranges"), "must list at least one range".into()));
                }
                let mut specs = Vec::new();
                for (j, r) in ranges.iter().enumerate() {
                    let rk = key(&format!("ranges[{j}]"));
                    let shard = shard_index(&format!("{rk}.shard"), &r.shard)?;
                    let bound = |v: &Option<toml::Value>,
                                 which: &str|
                     -> Result<Option<RangeBound>, ConfigError> {
                        match v {
                            None => Ok(None),
                            Some(toml::Value::Integer(n)) => Ok(Some(RangeBound::Int(*n))),
                            Some(toml::Value::String(s)) => Ok(Some(RangeBound::Text(s.clone()))),
                            Some(other) => Err(err(
                                &format!("{rk}.{which}"),
                                format!("must be an integer or a string, not {}", other.type_str()),
                            )),
                        }
                    };
                    specs.push(RangeSpec::new(
                        bound(&r.from, "from")?,
                        bound(&r.to, "to")?,
                        shard,
                    ));
                }
                let bound_type = specs
                    .iter()
                    .flat_map(|s| [s.from.as_ref(), s.to.as_ref()])
                    .flatten()
                    .map(|b| match b {
                        RangeBound::Int(_) => KeyType::Int,
                        RangeBound::Text(_) => KeyType::Text,
                    })
                    .next()
                    .unwrap_or(KeyType::Int);
                let kt = t.key_type.unwrap_or(bound_type);
                if kt != bound_type {
                    return Err(err(
                        &key("key_type"),
                        format!("is {kt:?} but the range bounds are {bound_type:?}").to_lowercase(),
                    ));
                }
                let canonical: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
                let map = RangeMap::new(specs).map_err(|e| err(&key("ranges"), e))?;
                (
                    Placement::Range(map),
                    kt,
                    format!("range:{}", canonical.join(";")),
                )
            }
            Strategy::Geo => {
                let Some(regions) = &t.regions else {
                    return Err(err(
                        &key("regions"),
                        "strategy = \"geo\" needs `regions`".into(),
                    ));
                };
                let mut assignments = Vec::new();
                for (shard, list) in regions {
                    let idx = shard_index(&key(&format!("regions.{shard}")), shard)?;
                    assignments.push((idx, list.clone()));
                }
                let default = match &t.default_shard {
                    Some(n) => shard_index(&key("default_shard"), n)?,
                    None => default_shard,
                };
                if t.key_type.is_some_and(|k| k != KeyType::Text) {
                    return Err(err(
                        &key("key_type"),
                        "geo keys are text (region names)".into(),
                    ));
                }
                let id = format!("geo:{assignments:?}:{default}");
                let map = GeoMap::new(assignments, default).map_err(|e| err(&key("regions"), e))?;
                (Placement::Geo(map), KeyType::Text, id)
            }
        };
        rules.push(TableRule {
            name,
            key: column,
            key_type,
            placement,
            placement_id,
        });
    }
    Ok(Router::new(
        rules,
        shards.iter().map(|s| s.name.clone()).collect(),
        default_shard,
    ))
}

fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::Hash => "hash",
        Strategy::Range => "range",
        Strategy::Geo => "geo",
        Strategy::Reference => "reference",
    }
}

pub fn auth_name(m: AuthMethod) -> &'static str {
    match m {
        AuthMethod::ScramSha256 => "scram-sha-256",
        AuthMethod::Md5 => "md5",
        AuthMethod::Trust => "trust",
    }
}

fn names(shards: &[Shard]) -> String {
    shards
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "\"{name}\" may contain only letters, digits, '_' and '-'"
        ));
    }
    Ok(())
}

fn check_host_port(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("\"{s}\" is not of the form host:port")),
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "127.0.0.1:6432"
[pool]
max_size = 5
connect_timeout = "2s"
[[users]]
name = "app"
password = "app"
[[databases]]
name = "app"
[[shards]]
name = "s0"
[[shards.servers]]
host = "127.0.0.1"
port = 5432
role = "primary"
[[shards.servers]]
host = "127.0.0.1"
port = 5433
role = "replica"
"#;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_str(Path::new("test.toml"), text)
    }

    #[test]
    fn good_config_resolves() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.pool.max_size, 5);
        assert_eq!(c.pool.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.shards[0].servers[0].role, Role::Primary);
        assert_eq!(c.users["app"].server_password.as_deref(), Some("app"));
        let j = c.to_json();
        assert_eq!(j["shards"][0]["servers"][1]["role"], "replica");
        assert_eq!(j["shards"][0]["servers"][0]["port"], 5432);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let e = load(&GOOD.replace("max_size = 5", "max_sise = 5")).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("test.toml: key `pool"), "{s}");
        assert!(s.contains("max_sise"), "{s}");
    }

    #[test]
    fn wrong_type_names_key() {
        let e = load(&GOOD.replace("port = 5433", "port = \"x\"")).unwrap_err();
        assert_eq!(e.key, "shards[0].servers[1].port", "{e}");
    }

    #[test]
    fn bad_duration() {
        let e = load(&GOOD.replace("\"2s\"", "\"2 parsecs\"")).unwrap_err();
        assert_eq!(e.key, "pool.connect_timeout", "{e}");
    }

    #[test]
    fn semantic_errors() {
        let e = load(&GOOD.replace("role = \"replica\"", "role = \"primary\"")).unwrap_err();
        assert_eq!(e.key, "shards[0].servers");
        // No primary and nothing to discover one from.
        let e = load(&GOOD.replace("role = \"primary\"", "role = \"replica\"")).unwrap_err();
        assert_eq!(e.key, "shards[0].servers");
        // Roles left out: learned from the servers.
        let c = load(
            &GOOD
                .replace("role = \"primary\"", "")
                .replace("role = \"replica\"", ""),
        )
        .unwrap();
        assert!(c.shards[0].servers.iter().all(|s| s.role == Role::Auto));
        let e = load(&format!("default_shard = \"nope\"\n{GOOD}")).unwrap_err();
        assert_eq!(e.key, "default_shard");
        let e = load(&GOOD.replace("password = \"app\"", "")).unwrap_err();
        assert_eq!(e.key, "users[0].password");
        let e = load(&GOOD.replace("max_size = 5", "max_size = 5\nmin_size = 9")).unwrap_err();
        assert_eq!(e.key, "pool.min_size");
        // Recovery must never act on a transaction its proxy still commits.
        let tx = |t: &str| load(&format!("{GOOD}\n[transactions]\n{t}\n"));
        let e = tx("in_doubt_after = \"2s\"\nprepare_timeout = \"5s\"").unwrap_err();
        assert_eq!(e.key, "transactions.prepare_timeout");
        assert!(e.reason.contains("in_doubt_after"), "{}", e.reason);
        let c = tx("in_doubt_after = \"2s\"").unwrap();
        assert_eq!(c.transactions.prepare_timeout(), Duration::from_secs(1));
        let c = tx("").unwrap();
        assert_eq!(c.transactions.prepare_timeout(), Duration::from_secs(10));
    }

    const TWO_SHARDS: &str = r#"
[[users]]
name = "app"
password = "app"
[[databases]]
name = "app"
[[shards]]
name = "s0"
servers = [{ host = "127.0.0.1", port = 5432, role = "primary" }]
[[shards]]
name = "s1"
servers = [{ host = "127.0.0.1", port = 5433, role = "primary" }]
"#;

    fn with_tables(tables: &str) -> Result<Config, ConfigError> {
        load(&format!("{TWO_SHARDS}\n{tables}"))
    }

    #[test]
    fn tables_of_every_strategy() {
        let c = with_tables(
            r#"
[[tables]]
name = "pgbench_accounts"
key = "aid"
strategy = "hash"
[[tables]]
name = "events"
key = "id"
strategy = "range"
ranges = [{ shard = "s0", to = 100 }, { shard = "s1", from = 100 }]
[[tables]]
name = "users"
key = "country"
strategy = "geo"
regions = { s0 = ["us", "ca"], s1 = ["de", "fr"] }
default_shard = "s1"
[[tables]]
name = "countries"
strategy = "reference"
"#,
        )
        .unwrap();
        assert_eq!(c.router.tables().count(), 4);
        let j = c.to_json();
        assert_eq!(j["tables"].as_array().unwrap().len(), 4);
        let events = c.router.table("events").unwrap();
        assert_eq!(events.key_type, KeyType::Int);
    }

    #[test]
    fn table_errors_name_the_key() {
        let cases = [
            ("[[tables]]\nname = \"t\"\nstrategy = \"hash\"", "tables[0].key"),
            (
                "[[tables]]\nname = \"t\"\nkey = \"id\"\nstrategy = \"range\"\nranges = [{ shard = \"s0\", from = 1, to = 10 }, { shard = \"s1\", from = 5, to = 20 }]",
                "tables[0].ranges",
            ),
            (
                "[[tables]]\nname = \"t\"\nkey = \"id\"\nstrategy = \"range\"\nranges = [{ shard = \"s0\", from = 1, to = 10 }, { shard = \"s1\", from = 11, to = 20 }]",
                "tables[0].ranges",
            ),
            (
                "[[tables]]\nname = \"t\"\nkey = \"id\"\nstrategy = \"range\"\nranges = [{ shard = \"s7\", from = 1 }]",
                "tables[0].ranges[0].shard",
            ),
            (
                "[[tables]]\nname = \"t\"\nkey = \"c\"\nstrategy = \"geo\"\nregions = { s0 = [\"us\"], s1 = [\"us\"] }",
                "tables[0].regions",
            ),
            (
                "[[tables]]\nname = \"t\"\nkey = \"c\"\nstrategy = \"geo\"\nregions = { s9 = [\"us\"] }",
                "tables[0].regions.s9",
            ),
            ("[[tables]]\nname = \"t\"\nkey = \"id\"\nstrategy = \"hash\"\nranges = []", "tables[0].ranges"),
            ("[[tables]]\nname = \"t\"\nkey = \"id\"\nstrategy = \"reference\"", "tables[0].key"),
            ("[[tables]]\nname = \"t\"\nkey = \"id\"\nstrategy = \"modulo\"", "tables[0].strategy"),
        ];
        for (toml, key) in cases {
            let e = with_tables(toml).unwrap_err();
            assert_eq!(e.key, key, "{toml}: {e}");
        }
    }

    #[test]
    fn syntax_error_has_line() {
        let e = load("listen = \n").unwrap_err();
        assert!(e.reason.contains("line 1"), "{e}");
    }
}

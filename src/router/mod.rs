//! SQL to Route: which shards a statement goes to, and why.
//!
//! `analyze` turns SQL text into a parameter-independent analysis, cached by
//! text in a bounded LRU so a repeated statement is not parsed again. `route`
//! then binds the parameter values (from Bind, text or binary), applies
//! hints, and maps key values to shards with the table's sharding function.
//! No I/O happens here.

pub mod analyze;
pub mod columns;
pub mod control;
pub mod fallback;
pub mod gather;
pub mod hints;
pub mod insert_select;
pub mod mergeable;
pub mod occurrences;
pub mod params;
pub mod plan;
pub mod rewrite;

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::protocol::sqlstate;
use crate::protocol::PgError;
use crate::sharding::{GeoMap, HashRing, KeyValue, RangeMap};
pub use analyze::{
    Agg, Analysis, CmpOp, Having, KeyExpr, Kind, Merge, Operand, Refusal, SortColumn, SortKey,
    Target,
};
pub use hints::{Hint, ReadFrom};
pub use params::{Param, ParamCasts};
pub use plan::{CopySplit, Plan, Route};

/// Statements whose analysis is kept. Applications repeat a small set of
/// statements; a bound keeps ad-hoc SQL from growing memory.
pub const PARSE_CACHE_SIZE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Int,
    Text,
    Uuid,
}

/// How a table's rows are placed on shards.
#[derive(Debug)]
pub enum Placement {
    /// The ring and its members: the ring's shard `i` is shard
    /// `members[i]` of the config (a new shard joins a ring only when a
    /// rebalance has moved its arcs).
    Hash(HashRing, Vec<usize>),
    Range(RangeMap),
    Geo(GeoMap),
    /// A full copy on every shard.
    Reference,
}

/// A configured table.
#[derive(Debug)]
pub struct TableRule {
    /// Lower-case table name (schema ignored).
    pub name: String,
    /// Lower-case key column (empty for reference tables).
    pub key: String,
    pub key_type: KeyType,
    pub placement: Placement,
    /// Equal for tables placed identically (co-located), so a join on their
    /// keys stays on one shard.
    pub placement_id: String,
}

impl TableRule {
    pub fn placement_id(&self) -> &str {
        &self.placement_id
    }

    pub fn strategy(&self) -> &'static str {
        match self.placement {
            Placement::Hash(..) => "hash",
            Placement::Range(_) => "range",
            Placement::Geo(_) => "geo",
            Placement::Reference => "reference",
        }
    }

    /// The shards that hold the table's rows (for a reference table, all
    /// `shard_count` of them), sorted.
    pub fn shards(&self, shard_count: usize) -> Vec<usize> {
        let mut v = match &self.placement {
            Placement::Hash(_, members) => members.clone(),
            Placement::Range(ranges) => ranges.ranges().iter().map(|r| r.shard).collect(),
            Placement::Geo(geo) => geo.shards(),
            Placement::Reference => (0..shard_count).collect(),
        };
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The shard that holds `key`.
    pub fn shard_for(&self, key: &KeyValue) -> Result<usize, String> {
        match &self.placement {
            Placement::Hash(ring, members) => Ok(members[ring.shard_for(key)]),
            Placement::Range(ranges) => ranges.shard_for(key).map_err(|e| e.to_string()),
            Placement::Geo(geo) => match key {
                KeyValue::Text(region) => Ok(geo.shard_for(region)),
                other => Ok(geo.shard_for(&display_key(other))),
            },
            Placement::Reference => Err(format!("table \"{}\" is a reference table", self.name)),
        }
    }

    /// Interpret a key as this table's key type.
    pub fn key_value(&self, k: &KeyExpr, params: &[Param<'_>]) -> Result<Vec<KeyValue>, PgError> {
        let bad = |what: String| {
            PgError::error(
                sqlstate::INVALID_TEXT_REPRESENTATION,
                format!(
                    "invalid shard key for table \"{}\" (column \"{}\"): {what}",
                    self.name, self.key
                ),
            )
        };
        match k {
            KeyExpr::Null => Err(PgError::error(
                sqlstate::NOT_NULL_VIOLATION,
                format!(
                    "the shard key \"{}\" of table \"{}\" must not be NULL",
                    self.key, self.name
                ),
            )),
            KeyExpr::Number(n) | KeyExpr::String(n) => {
                Ok(vec![parse_key(self.key_type, n).map_err(bad)?])
            }
            KeyExpr::Param(i) => {
                let p = params
                    .get(*i)
                    .ok_or_else(|| bad(format!("parameter ${} has no value", i + 1)))?;
                match p.value {
                    None => Err(PgError::error(
                        sqlstate::NOT_NULL_VIOLATION,
                        format!(
                            "the shard key \"{}\" of table \"{}\" must not be NULL",
                            self.key, self.name
                        ),
                    )),
                    Some(bytes) => Ok(vec![params::decode(
                        self.key_type,
                        p.type_oid,
                        p.binary,
                        bytes,
                    )
                    .map_err(|e| self.bad_param(*i, p, e))?]),
                }
            }
            KeyExpr::AnyParam(i) => {
                let p = params
                    .get(*i)
                    .ok_or_else(|| bad(format!("parameter ${} has no value", i + 1)))?;
                let Some(bytes) = p.value else {
                    return Ok(vec![]);
                };
                params::decode_array(self.key_type, p.type_oid, p.binary, bytes)
                    .map_err(|e| self.bad_param(*i, p, e))
            }
        }
    }

    /// The client's error for key parameter `i` that cannot be routed:
    /// the table, column, parameter, type and value, and a hint.
    fn bad_param(&self, i: usize, p: &Param<'_>, e: params::BadParam) -> PgError {
        PgError::error(
            e.code,
            format!(
                "invalid shard key for table \"{}\" (column \"{}\"): parameter ${} (type {}) is {}: {}",
                self.name,
                self.key,
                i + 1,
                params::type_name(p.type_oid),
                e.value,
                e.reason
            ),
        )
        .with_hint(e.hint)
    }
}

pub fn parse_key(t: KeyType, s: &str) -> Result<KeyValue, String> {
    match t {
        KeyType::Int => s
            .trim()
            .parse::<i64>()
            .map(KeyValue::Int)
            .map_err(|_| format!("\"{s}\" is not an integer")),
        KeyType::Text => Ok(KeyValue::Text(s.to_string())),
        KeyType::Uuid => parse_uuid(s).map(KeyValue::Uuid),
    }
}

pub fn parse_uuid(s: &str) -> Result<[u8; 16], String> {
    let hex: String = s
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .chars()
        .filter(|c| *c != '-')
        .collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("\"{s}\" is not a uuid"));
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("\"{s}\" is not a uuid"))?;
    }
    Ok(out)
}

pub fn display_key(k: &KeyValue) -> String {
    match k {
        KeyValue::Int(i) => i.to_string(),
        KeyValue::Text(s) => s.clone(),
        KeyValue::Uuid(u) => {
            let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        }
    }
}

/// Whether a plan may share its query string with other statements: the
/// same statement text runs on each of its shards.
fn combines(plan: &Plan) -> bool {
    matches!(plan, Plan::Single | Plan::Broadcast { .. })
}

fn refusal_error(r: &Refusal) -> PgError {
    let e = PgError::error(r.code, r.message.clone());
    match &r.hint {
        Some(h) => e.with_hint(h.clone()),
        None => e,
    }
}

/// What the session knows that routing needs besides the SQL.
#[derive(Debug, Clone, Default)]
pub struct SessionHints {
    /// `SET shardwire.shard = 's1'`
    pub shard: Option<String>,
    /// `SET shardwire.shard_key = '42'`
    pub shard_key: Option<String>,
}

/// Parse cache lookups of every router of the process (a reload builds a
/// new router; the counters must not go back to zero with it).
pub static PARSE_CACHE_HITS: AtomicU64 = AtomicU64::new(0);
pub static PARSE_CACHE_MISSES: AtomicU64 = AtomicU64::new(0);

/// Built-in functions that write or take locks a replica cannot give: a
/// SELECT calling one is not a read.
pub const WRITE_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
    "pg_notify",
    "txid_current",
    "pg_current_xact_id",
    "set_config",
    "lo_create",
    "lo_creat",
    "lo_import",
    "lo_unlink",
    "lo_put",
    "lo_from_bytea",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_create_logical_replication_slot",
    "pg_create_physical_replication_slot",
    "pg_drop_replication_slot",
];

/// The parse cache every session of a router shares, split in stripes
/// by a hash of the text so that sessions on different workers rarely
/// wait on the same lock (one global lock was taken on every statement).
/// Each stripe is its own LRU of an equal share of the capacity.
struct ParseCache {
    stripes: Box<[Mutex<CacheStripe>]>,
    hasher: foldhash::fast::RandomState,
}

type CacheStripe = lru::LruCache<String, Arc<Analysis>>;

/// Enough stripes that two cores (or sixteen) seldom meet on one.
const PARSE_CACHE_STRIPES: usize = 16;

impl ParseCache {
    fn new(capacity: usize) -> Self {
        let each = NonZeroUsize::new(capacity.div_ceil(PARSE_CACHE_STRIPES).max(1))
            .expect("at least one entry per stripe");
        ParseCache {
            stripes: (0..PARSE_CACHE_STRIPES)
                .map(|_| Mutex::new(lru::LruCache::new(each)))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn stripe(&self, sql: &str) -> &Mutex<CacheStripe> {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(sql);
        // The high bits: the stripes' own maps use the low ones.
        &self.stripes[(h >> 58) as usize % PARSE_CACHE_STRIPES]
    }
}

/// Every configured table and the parse cache.
pub struct Router {
    tables: analyze::Tables,
    /// `reads.write_functions`, lower case.
    write_functions: Vec<String>,
    /// Reads the shards cannot answer together are answered from gathered
    /// rows (tier 3) instead of refused; off when
    /// `limits.max_intermediate_rows` is 0.
    gather: bool,
    shard_names: Vec<String>,
    default_shard: usize,
    cache: ParseCache,
    /// Column order of tables INSERTed without a column list.
    pub columns: columns::ColumnCache,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("tables", &self.tables.keys().collect::<Vec<_>>())
            .field("shards", &self.shard_names)
            .finish()
    }
}

impl Router {
    pub fn tables(&self) -> impl Iterator<Item = &Arc<TableRule>> {
        self.tables.values()
    }

    pub fn new(tables: Vec<TableRule>, shard_names: Vec<String>, default_shard: usize) -> Self {
        Router {
            tables: tables
                .into_iter()
                .map(|t| (t.name.clone(), Arc::new(t)))
                .collect(),
            shard_names,
            default_shard,
            write_functions: Vec::new(),
            gather: false,
            cache: ParseCache::new(PARSE_CACHE_SIZE),
            columns: columns::ColumnCache::default(),
        }
    }

    /// Answer reads the shards cannot answer together from gathered rows
    /// (tier 3) rather than refuse them.
    pub fn with_gather(mut self, on: bool) -> Self {
        self.gather = on;
        self
    }

    /// Add functions that write (`reads.write_functions`).
    pub fn with_write_functions(mut self, names: &[String]) -> Self {
        self.write_functions = names.iter().map(|n| n.to_lowercase()).collect();
        self
    }

    /// Whether a query string only reads, so a replica may answer it: every
    /// statement is a SELECT that locks nothing, modifies nothing and calls
    /// no function known to write.
    pub fn is_read(&self, analysis: &Analysis) -> bool {
        !analysis.statements.is_empty() && analysis.statements.iter().all(|s| self.reads_only(s))
    }

    /// Whether one statement only reads (see `is_read`).
    fn reads_only(&self, s: &analyze::StatementPlan) -> bool {
        s.kind == Kind::Select
            && !s.writes
            && !s
                .functions
                .iter()
                .any(|f| WRITE_FUNCTIONS.contains(&f.as_str()) || self.write_functions.contains(f))
    }

    pub fn shard_names(&self) -> &[String] {
        &self.shard_names
    }

    pub fn table(&self, name: &str) -> Option<&Arc<TableRule>> {
        self.tables.get(name)
    }

    /// The analysis of `sql`, from the cache when possible.
    pub fn analysis(&self, sql: &str) -> Arc<Analysis> {
        let stripe = self.cache.stripe(sql);
        if let Some(a) = stripe.lock().ok().and_then(|mut c| c.get(sql).cloned()) {
            PARSE_CACHE_HITS.fetch_add(1, Ordering::Relaxed);
            return a;
        }
        PARSE_CACHE_MISSES.fetch_add(1, Ordering::Relaxed);
        // Parsed outside the lock: another session may parse the same text
        // meanwhile, and the later insert simply wins.
        let a = Arc::new(analyze::analyze(sql, &self.tables));
        if let Ok(mut c) = stripe.lock() {
            c.put(sql.to_string(), a.clone());
        }
        a
    }

    fn shard_by_name(&self, name: &str) -> Result<usize, PgError> {
        self.shard_names
            .iter()
            .position(|s| s == name)
            .ok_or_else(|| {
                PgError::error(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!("unknown shard \"{name}\" in routing hint"),
                )
                .with_hint(format!("shards: {}", self.shard_names.join(", ")))
            })
    }

    /// Route `sql` with parameter values and the session's hints.
    pub fn route(
        &self,
        sql: &str,
        params: &[Param<'_>],
        session: &SessionHints,
    ) -> Result<Route, PgError> {
        self.route_analyzed(sql, &self.analysis(sql), params, session)
    }

    /// [`Router::route`] for a caller that already holds `sql`'s analysis
    /// (from [`Router::analysis`]): one parse cache lookup, and one lock of
    /// the cache every session shares, instead of two.
    pub fn route_analyzed(
        &self,
        sql: &str,
        analysis: &Analysis,
        params: &[Param<'_>],
        session: &SessionHints,
    ) -> Result<Route, PgError> {
        let comment_hints = if sql.contains("/*") {
            hints::parse_hints(sql)
                .map_err(|m| PgError::error(sqlstate::INVALID_PARAMETER_VALUE, m))?
        } else {
            Vec::new()
        };
        let shard_hint = comment_hints
            .iter()
            .find_map(|h| match h {
                Hint::Shard(s) => Some(s.clone()),
                _ => None,
            })
            .or_else(|| session.shard.clone());
        let key_hint = comment_hints
            .iter()
            .find_map(|h| match h {
                Hint::ShardKey(k) => Some(k.clone()),
                _ => None,
            })
            .or_else(|| session.shard_key.clone());

        // A parameter the client left untyped takes the type of a cast on
        // it in the SQL, as on the server.
        let with_casts = analysis.param_casts.apply(params);
        let params = with_casts.as_deref().unwrap_or(params);
        let role = comment_hints.iter().find_map(|h| match h {
            Hint::Role(r) => Some(*r),
            _ => None,
        });
        // Without [[tables]] there is one database, on the default shard:
        // nothing is broadcast or split (sessions then route only to tell
        // reads from writes).
        let mut route = if self.tables.is_empty() {
            let writes = analysis.statements.iter().any(|s| s.writes);
            Route::simple(
                vec![self.default_shard],
                writes,
                "no [[tables]]: default shard".into(),
            )
        } else {
            self.route_with(analysis, params, shard_hint, key_hint)?
        };
        route.role = role;
        self.finish(route, sql, analysis)
    }

    /// The last word on a route: a broadcast runs in a transaction unless a
    /// statement of the string cannot, and a statement over several shards
    /// with no plan to run it there is refused now, before anything runs.
    fn finish(&self, mut route: Route, sql: &str, analysis: &Analysis) -> Result<Route, PgError> {
        let several = route.shards.len() > 1;
        match &mut route.plan {
            Plan::Broadcast { atomic } => {
                if several && analysis.statements.iter().any(|s| s.kind == Kind::Copy) {
                    return Err(PgError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "COPY into a reference table is not supported yet",
                    )
                    .with_hint("insert the rows with INSERT, which writes every shard"));
                }
                *atomic = !control::needs_no_transaction(sql, analysis);
            }
            Plan::Single if several => return Err(self.several_shards_error(&route)),
            _ => {}
        }
        Ok(route)
    }

    /// The 0A000 for a statement that needs several shards in a form no plan
    /// runs there.
    pub fn several_shards_error(&self, r: &Route) -> PgError {
        let names: Vec<&str> = r
            .shards
            .iter()
            .map(|&i| self.shard_names.get(i).map(String::as_str).unwrap_or("?"))
            .collect();
        let hint = match r.plan {
            Plan::Gather(_) => "reads that PostgreSQL answers from rows gathered from several shards run outside a transaction block, or inside one in transaction pooling",
            Plan::SplitInsert(_) => "insert the rows of each shard with a separate statement",
            Plan::SplitCopy(_) => {
                "copy the rows of each shard separately, pinned with /* shardwire: shard=NAME */"
            }
            _ => "run it on each shard, pinned with /* shardwire: shard=NAME */ or SET shardwire.shard",
        };
        PgError::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "statement needs shards {} ({}) and cannot run on several shards in this form",
                names.join(", "),
                r.reason
            ),
        )
        .with_hint(hint)
    }

    fn route_with(
        &self,
        analysis: &Analysis,
        params: &[Param<'_>],
        shard_hint: Option<String>,
        key_hint: Option<String>,
    ) -> Result<Route, PgError> {
        let writes = analysis.statements.iter().any(|s| s.writes);
        if let Some(name) = shard_hint {
            let shard = self.shard_by_name(&name)?;
            let mut route =
                Route::simple(vec![shard], writes, format!("routing hint shard={name}"));
            route.hinted = true;
            return Ok(route);
        }

        let mut combined: Option<Route> = None;
        for stmt in &analysis.statements {
            // Transaction control and SET go wherever the rest goes.
            if matches!(stmt.kind, Kind::Transaction | Kind::Set) && analysis.statements.len() > 1 {
                continue;
            }
            let r = self.route_statement(stmt, params, key_hint.as_deref())?;
            // A merge, split or sum reads or rewrites the answer of its one
            // statement: another in the string (even a SET) would be lost
            // or run on every shard unnoticed.
            if !combines(&r.plan) && analysis.statements.len() > 1 {
                let what = if r.merge().is_some() {
                    "a cross-shard SELECT".to_string()
                } else {
                    format!("a statement over several shards ({})", r.reason)
                };
                return Err(PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("{what} must be the only statement of its query string"),
                )
                .with_hint("send it as a separate query"));
            }
            combined = Some(match combined {
                None => r,
                Some(prev) if prev.shards == r.shards && prev.plan == r.plan => prev,
                Some(_) => {
                    return Err(PgError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "the statements of this query string go to different shards",
                    )
                    .with_hint("send them as separate queries"))
                }
            });
        }
        Ok(combined.unwrap_or_else(|| {
            Route::simple(
                vec![self.default_shard],
                writes,
                "no table: default shard".into(),
            )
        }))
    }

    fn all(&self) -> Vec<usize> {
        (0..self.shard_names.len()).collect()
    }

    fn route_statement(
        &self,
        stmt: &analyze::StatementPlan,
        params: &[Param<'_>],
        key_hint: Option<&str>,
    ) -> Result<Route, PgError> {
        match self.route_by_target(stmt, params, key_hint) {
            // What the shards cannot run together: a read PostgreSQL
            // answers from gathered rows (tier 3), an INSERT ... SELECT
            // run as such a read feeding a split insert. Any other
            // refusal (a bad key value) stands, as does a hint's.
            Err(e) if e.code == sqlstate::FEATURE_NOT_SUPPORTED && key_hint.is_none() => self
                .gathered_route(stmt)
                .or_else(|| self.insert_select_route(stmt))
                .ok_or(e),
            other => other,
        }
    }

    fn route_by_target(
        &self,
        stmt: &analyze::StatementPlan,
        params: &[Param<'_>],
        key_hint: Option<&str>,
    ) -> Result<Route, PgError> {
        let mut route = Route::simple(vec![self.default_shard], stmt.writes, String::new());
        match &stmt.target {
            Target::Default => route.reason = "no sharded table: default shard".into(),
            Target::AnyShard => route.reason = "reference tables only: any shard".into(),
            Target::AllShards => {
                route.shards = self.all();
                // Whether it may run in a transaction is decided with the
                // whole query string (Router::finish).
                route.plan = Plan::Broadcast { atomic: true };
                route.reason = match stmt.kind {
                    Kind::Ddl => "DDL: every shard".into(),
                    Kind::Maintenance => "maintenance: every shard".into(),
                    _ => "write to a reference table: every shard".into(),
                };
            }
            Target::Refused(r) => {
                if let Some(k) = key_hint {
                    // A key hint routes what the parser could not.
                    return self.route_by_key_hint(stmt, k, route);
                }
                return Err(refusal_error(r));
            }
            Target::Keyed(conds) => {
                return self.route_keyed(stmt, conds, params, key_hint, route);
            }
            Target::Insert { table, rows } => {
                self.route_insert(stmt, table, rows, params, key_hint, &mut route)?;
            }
            Target::InsertPositional { table, rows } => {
                let rows = self.positional_keys(table, rows)?;
                self.route_insert(stmt, table, &rows, params, key_hint, &mut route)?;
            }
            Target::CopyIn { table, key_column } => {
                route.shards = self.all();
                route.table = Some(table.name.clone());
                route.strategy = Some(table.strategy());
                route.plan = Plan::SplitCopy(CopySplit {
                    table: table.name.clone(),
                    key_column: *key_column,
                });
                route.reason = format!("COPY into \"{}\": rows split by key", table.name);
            }
        }
        Ok(route)
    }

    /// A statement on sharded tables with their key conditions: one
    /// shard, a merged read, or writes summed over shards.
    fn route_keyed(
        &self,
        stmt: &analyze::StatementPlan,
        conds: &[analyze::KeyCondition],
        params: &[Param<'_>],
        key_hint: Option<&str>,
        mut route: Route,
    ) -> Result<Route, PgError> {
        // Every occurrence without a key condition makes the
        // statement need all of its table's shards: possible for
        // a merged SELECT or an UPDATE/DELETE of one table, each
        // shard changing its own rows, and nothing else.
        let everywhere = stmt.unsharded.is_none()
            && (stmt.merge.is_some()
                || conds.len() == 1 && matches!(stmt.kind, Kind::Update | Kind::Delete));
        let mut shards: Option<BTreeSet<usize>> = None;
        for c in conds {
            route.table.get_or_insert_with(|| c.table.name.clone());
            route.strategy.get_or_insert(c.table.strategy());
            let set: BTreeSet<usize> = match (&c.alternatives, key_hint) {
                (_, Some(k)) => {
                    let v = parse_key(c.table.key_type, k).map_err(|m| {
                        PgError::error(
                            sqlstate::INVALID_TEXT_REPRESENTATION,
                            format!("routing hint shard_key: {m}"),
                        )
                    })?;
                    route.keys.push(display_key(&v));
                    [c.table
                        .shard_for(&v)
                        .map_err(|m| PgError::error(sqlstate::INVALID_PARAMETER_VALUE, m))?]
                    .into()
                }
                (Some(alts), None) => {
                    let mut set = BTreeSet::new();
                    for a in alts {
                        for v in c.table.key_value(a, params)? {
                            route.keys.push(display_key(&v));
                            set.insert(c.table.shard_for(&v).map_err(|m| {
                                PgError::error(sqlstate::INVALID_PARAMETER_VALUE, m)
                            })?);
                        }
                    }
                    if set.is_empty() {
                        // `key = ANY('{}')`: no row of this
                        // occurrence qualifies, on any shard.
                        continue;
                    }
                    set
                }
                (None, None) if everywhere => {
                    c.table.shards(self.shard_names.len()).into_iter().collect()
                }
                (None, None) => {
                    if let Some(r) = stmt.merge_refusal.as_ref().filter(|_| conds.len() == 1) {
                        return Err(refusal_error(r));
                    }
                    let why = if conds.len() > 1 {
                        format!(
                            "one of its {} references to sharded tables has no condition on the shard key \"{}\"",
                            conds.len(),
                            c.table.key
                        )
                    } else {
                        format!("no condition on its shard key \"{}\"", c.table.key)
                    };
                    return Err(PgError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!(
                            "this statement needs every shard of table \"{}\" ({why}); cross-shard queries of this shape are not supported yet",
                            c.table.name,
                        ),
                    )
                    .with_hint(analyze::HINT_ADD_KEY));
                }
            };
            // Every shard any occurrence's rows may be on: one
            // shard answers only when that is a single one (an
            // IN list over two shards needs both, whatever the
            // other occurrences need).
            shards = Some(match shards {
                None => set,
                Some(prev) => prev.union(&set).copied().collect(),
            });
        }
        let shards = match shards {
            Some(s) => s,
            // Every key condition matches no row: one shard
            // answers that as well as all of them.
            None => {
                let held = conds[0].table.shards(self.shard_names.len());
                let one = if held.contains(&self.default_shard) {
                    self.default_shard
                } else {
                    held.first().copied().unwrap_or(self.default_shard)
                };
                [one].into()
            }
        };
        // A merged co-located join runs on every shard its keys allow,
        // each with its own rows.
        if shards.len() > 1 && conds.len() > 1 && stmt.merge.is_none() {
            let names: Vec<&str> = shards
                .iter()
                .map(|&s| self.shard_names[s].as_str())
                .collect();
            return Err(PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "the {} references to sharded tables in this statement need rows of shards {} ({}); cross-shard statements of this shape are not supported yet",
                    conds.len(),
                    names.join(", "),
                    route.keys.join(", ")
                ),
            )
            .with_hint("join sharded tables only on co-located keys, and give each the same key"));
        }
        let shards = self.with_unsharded(stmt, shards, route.table.as_deref())?;
        route.shards = shards.into_iter().collect();
        route.reason = format!(
            "{} key of \"{}\"{}",
            route.strategy.unwrap_or(""),
            route.table.as_deref().unwrap_or(""),
            match &stmt.unsharded {
                Some(u) => format!(", with unsharded \"{u}\" on the default shard"),
                None => String::new(),
            }
        );
        if let Some(merge) = stmt.merge.as_ref().filter(|_| route.shards.len() > 1) {
            route.plan = Plan::Scatter(merge.clone());
            route.reason = format!(
                "{} of \"{}\" on {} shards: {}",
                if route.keys.is_empty() {
                    "no key"
                } else {
                    "keys"
                },
                route.table.as_deref().unwrap_or(""),
                route.shards.len(),
                match &stmt.merge {
                    Some(Merge::Concat) => "rows concatenated",
                    Some(Merge::Sorted { .. }) => "rows merged in order",
                    Some(Merge::Grouped { .. }) => "groups merged",
                    Some(Merge::CountDistinct { .. }) => "distinct values merged and counted",
                    _ => "aggregates merged",
                }
            );
        } else if route.shards.len() > 1
            && matches!(stmt.kind, Kind::Update | Kind::Delete)
            && conds.len() == 1
        {
            route.plan = Plan::SumWrites(if stmt.kind == Kind::Update {
                "UPDATE"
            } else {
                "DELETE"
            });
            route.reason = format!(
                "{} of \"{}\" on {} shards: each changes its own rows",
                if route.keys.is_empty() {
                    "no key"
                } else {
                    "keys"
                },
                route.table.as_deref().unwrap_or(""),
                route.shards.len()
            );
        } else if route.shards.len() > 1 && stmt.kind != Kind::Insert {
            if let Some(r) = &stmt.merge_refusal {
                return Err(refusal_error(r));
            }
            return Err(PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "the keys of this statement ({}) are on {} shards of table \"{}\"; cross-shard statements are not supported yet",
                    route.keys.join(", "),
                    route.shards.len(),
                    route.table.as_deref().unwrap_or("")
                ),
            )
            .with_hint("send one statement per key"));
        }
        Ok(route)
    }

    /// The tier-3 route of a one-statement read whose merge turned out to
    /// be impossible once the shards had answered (a column type the merge
    /// does not combine exactly), if it can be gathered.
    pub fn gather_instead(&self, analysis: &Analysis) -> Option<Route> {
        match analysis.statements.as_slice() {
            [one] => self
                .gathered_route(one)
                .filter(|r| matches!(r.plan, Plan::Gather(_))),
            _ => None,
        }
    }

    /// An INSERT ... SELECT as a gathered read feeding a split insert
    /// (router::insert_select), when its source only reads.
    fn insert_select_route(&self, stmt: &analyze::StatementPlan) -> Option<Route> {
        let is = stmt.insert_select.as_ref().filter(|_| self.gather)?;
        let writes_in_source = stmt
            .functions
            .iter()
            .any(|f| WRITE_FUNCTIONS.contains(&f.as_str()) || self.write_functions.contains(f));
        if writes_in_source {
            return None;
        }
        let n = self.shard_names.len();
        let mut shards = BTreeSet::from([self.default_shard]);
        for t in is.source.tables.iter().filter(|t| !t.local) {
            shards.extend(self.tables.get(&t.rule)?.shards(n));
        }
        match is.destination {
            insert_select::Destination::Sharded => {
                shards.extend(self.tables.get(&is.target)?.shards(n));
            }
            insert_select::Destination::Reference => shards.extend(0..n),
            insert_select::Destination::Unsharded => {}
        }
        let mut route = Route::simple(
            shards.into_iter().collect(),
            true,
            format!(
                "INSERT ... SELECT into \"{}\": the SELECT answered on the default shard \"{}\" from gathered rows, its rows inserted by key",
                is.target, self.shard_names[self.default_shard]
            ),
        );
        route.table = Some(is.target.clone());
        route.plan = Plan::InsertSelect(Box::new((**is).clone()));
        Some(route)
    }

    /// Tier 3 (router::gather): every sharded table of a read gathered on
    /// the default shard, which answers it; None when the statement cannot
    /// be gathered or writes.
    fn gathered_route(&self, stmt: &analyze::StatementPlan) -> Option<Route> {
        let g = stmt.gather.as_ref().filter(|_| self.gather)?;
        if !self.reads_only(stmt) {
            return None;
        }
        let mut shards = BTreeSet::from([self.default_shard]);
        // Unsharded and reference tables are read on the default shard.
        for t in g.tables.iter().filter(|t| !t.local) {
            shards.extend(self.tables.get(&t.rule)?.shards(self.shard_names.len()));
        }
        let names: Vec<String> = g
            .tables
            .iter()
            .filter(|t| !t.local)
            .map(|t| format!("\"{}\"", t.rule))
            .collect();
        let mut route = Route::simple(shards.into_iter().collect(), false, String::new());
        route.table = g.tables.iter().find(|t| !t.local).map(|t| t.rule.clone());
        if route.shards.len() == 1 {
            route.reason = format!("{} on the default shard only", names.join(", "));
            return Some(route);
        }
        route.reason = format!(
            "rows of {} from {} shards gathered on the default shard \"{}\", which answers",
            names.join(", "),
            route.shards.len(),
            self.shard_names[self.default_shard]
        );
        route.plan = Plan::Gather(Box::new((**g).clone()));
        Some(route)
    }

    /// An INSERT's rows: which shard each goes to.
    fn route_insert(
        &self,
        stmt: &analyze::StatementPlan,
        table: &Arc<TableRule>,
        rows: &[KeyExpr],
        params: &[Param<'_>],
        key_hint: Option<&str>,
        route: &mut Route,
    ) -> Result<(), PgError> {
        let mut row_shards = Vec::with_capacity(rows.len());
        if let Some(k) = key_hint {
            let v = parse_key(table.key_type, k).map_err(|m| {
                PgError::error(
                    sqlstate::INVALID_TEXT_REPRESENTATION,
                    format!("routing hint shard_key: {m}"),
                )
            })?;
            let s = table
                .shard_for(&v)
                .map_err(|m| PgError::error(sqlstate::INVALID_PARAMETER_VALUE, m))?;
            route.keys.push(display_key(&v));
            row_shards.resize(rows.len(), s);
        } else {
            for r in rows {
                let vs = table.key_value(r, params)?;
                let v = vs.first().ok_or_else(|| {
                    PgError::error(sqlstate::INVALID_TEXT_REPRESENTATION, "empty key")
                })?;
                route.keys.push(display_key(v));
                row_shards.push(
                    table
                        .shard_for(v)
                        .map_err(|m| PgError::error(sqlstate::INVALID_PARAMETER_VALUE, m))?,
                );
            }
        }
        let set: BTreeSet<usize> = row_shards.iter().copied().collect();
        let set = self.with_unsharded(stmt, set, Some(&table.name))?;
        route.shards = set.into_iter().collect();
        route.table = Some(table.name.clone());
        route.strategy = Some(table.strategy());
        route.reason = format!("{} key of \"{}\" in INSERT", table.strategy(), table.name);
        if route.shards.len() > 1 {
            route.plan = Plan::SplitInsert(row_shards);
        }
        Ok(())
    }

    /// The key of each row of an INSERT without a column list, by the
    /// key's position among the table's columns (the column cache).
    fn positional_keys(
        &self,
        table: &TableRule,
        rows: &[Vec<Option<KeyExpr>>],
    ) -> Result<Vec<KeyExpr>, PgError> {
        let columns = self.columns.get(&table.name).ok_or_else(|| {
            PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "the column order of table \"{}\" is not known here, so an INSERT without a column list cannot be routed",
                    table.name
                ),
            )
            .with_hint("list the columns: INSERT INTO t (col, ...) VALUES ...")
        })?;
        let pos = columns
            .iter()
            .position(|c| *c == table.key)
            .ok_or_else(|| {
                PgError::error(
                    sqlstate::UNDEFINED_COLUMN,
                    format!(
                        "table \"{}\" has no column \"{}\", its configured shard key",
                        table.name, table.key
                    ),
                )
            })?;
        rows.iter()
            .map(|row| match row.get(pos) {
                Some(Some(k)) => Ok(k.clone()),
                Some(None) => Err(PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "the shard key \"{}\" of table \"{}\" must be a literal or a parameter in INSERT",
                        table.key, table.name
                    ),
                )
                .with_hint("compute the key in the application, or route with /* shardwire: shard=... */")),
                None => Err(PgError::error(
                    sqlstate::NOT_NULL_VIOLATION,
                    format!(
                        "INSERT into sharded table \"{}\" does not set the shard key \"{}\" (column {} of the table)",
                        table.name,
                        table.key,
                        pos + 1
                    ),
                )
                .with_hint("give the shard key a value")),
            })
            .collect()
    }

    /// A statement that names an unsharded table runs on the default
    /// shard, where that table's rows are, or is refused.
    fn with_unsharded(
        &self,
        stmt: &analyze::StatementPlan,
        shards: BTreeSet<usize>,
        sharded: Option<&str>,
    ) -> Result<BTreeSet<usize>, PgError> {
        let Some(unsharded) = &stmt.unsharded else {
            return Ok(shards);
        };
        if shards.len() == 1 && shards.contains(&self.default_shard) {
            return Ok(shards);
        }
        let names: Vec<&str> = shards
            .iter()
            .map(|&s| self.shard_names[s].as_str())
            .collect();
        Err(PgError::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "this statement reads unsharded table \"{unsharded}\", which lives on the default shard \"{}\", and sharded table \"{}\" on shard(s) {}",
                self.shard_names[self.default_shard],
                sharded.unwrap_or(""),
                names.join(", ")
            ),
        )
        .with_hint("query the unsharded table separately, or make it a reference table ([[tables]] strategy = \"reference\")"))
    }

    /// Tables of INSERTs without a column list in `analysis` whose column
    /// order the router does not know (the session reads it first).
    pub fn missing_columns(&self, analysis: &Analysis) -> Vec<Arc<TableRule>> {
        analysis
            .statements
            .iter()
            .filter_map(|s| match &s.target {
                Target::InsertPositional { table, .. }
                    if self.columns.get(&table.name).is_none() =>
                {
                    Some(table.clone())
                }
                _ => None,
            })
            .collect()
    }

    fn route_by_key_hint(
        &self,
        stmt: &analyze::StatementPlan,
        k: &str,
        mut route: Route,
    ) -> Result<Route, PgError> {
        // The first sharded table of the statement decides.
        let table = match &stmt.target {
            Target::Keyed(c) => c.first().map(|c| c.table.clone()),
            Target::Insert { table, .. }
            | Target::InsertPositional { table, .. }
            | Target::CopyIn { table, .. } => Some(table.clone()),
            _ => None,
        }
        .or_else(|| {
            // Only unambiguous when exactly one table is sharded.
            let mut sharded = self.tables.values().filter(|t| !t.is_reference());
            let only = sharded.next()?;
            sharded.next().is_none().then(|| only.clone())
        })
        .ok_or_else(|| {
            PgError::error(
                sqlstate::INVALID_PARAMETER_VALUE,
                "the routing hint shard_key does not say which table's key it is",
            )
            .with_hint("use /* shardwire: shard=<name> */ for this statement")
        })?;
        let v = parse_key(table.key_type, k).map_err(|m| {
            PgError::error(
                sqlstate::INVALID_TEXT_REPRESENTATION,
                format!("routing hint shard_key: {m}"),
            )
        })?;
        route.shards = vec![table
            .shard_for(&v)
            .map_err(|m| PgError::error(sqlstate::INVALID_PARAMETER_VALUE, m))?];
        route.keys = vec![display_key(&v)];
        route.table = Some(table.name.clone());
        route.strategy = Some(table.strategy());
        route.reason = format!("routing hint shard_key={k}");
        route.hinted = true;
        Ok(route)
    }
}

#[cfg(test)]
mod invariant_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sharding::{RangeBound, RangeSpec};

    pub(super) fn router() -> Router {
        let shards = ["s0", "s1"];
        let ring = || HashRing::new(&shards, 64).unwrap();
        let tables = vec![
            TableRule {
                name: "accounts".into(),
                key: "aid".into(),
                key_type: KeyType::Int,
                placement: Placement::Hash(ring(), vec![0, 1]),
                placement_id: "hash:64".into(),
            },
            TableRule {
                name: "history".into(),
                key: "aid".into(),
                key_type: KeyType::Int,
                placement: Placement::Hash(ring(), vec![0, 1]),
                placement_id: "hash:64".into(),
            },
            TableRule {
                name: "events".into(),
                key: "id".into(),
                key_type: KeyType::Int,
                placement: Placement::Range(
                    RangeMap::new(vec![
                        RangeSpec::new(None, Some(RangeBound::Int(100)), 0),
                        RangeSpec::new(Some(RangeBound::Int(100)), Some(RangeBound::Int(200)), 1),
                    ])
                    .unwrap(),
                ),
                placement_id: "range:events".into(),
            },
            TableRule {
                name: "users".into(),
                key: "region".into(),
                key_type: KeyType::Text,
                placement: Placement::Geo(
                    GeoMap::new(vec![(0usize, vec!["us", "ca"]), (1, vec!["de", "fr"])], 0)
                        .unwrap(),
                ),
                placement_id: "geo:users".into(),
            },
            TableRule {
                name: "countries".into(),
                key: String::new(),
                key_type: KeyType::Text,
                placement: Placement::Reference,
                placement_id: "reference".into(),
            },
        ];
        Router::new(tables, vec!["s0".into(), "s1".into()], 0)
    }

    fn route(sql: &str) -> Result<Route, PgError> {
        router().route(sql, &[], &SessionHints::default())
    }

    pub(super) fn shard_of(aid: i64) -> usize {
        HashRing::new(&["s0", "s1"], 64)
            .unwrap()
            .shard_for(&KeyValue::Int(aid))
    }

    #[test]
    fn literal_and_param_keys() {
        let r = route("select * from accounts where aid = 7").unwrap();
        assert_eq!(r.shards, vec![shard_of(7)]);
        assert_eq!(r.keys, vec!["7"]);
        let text = b"7".as_slice();
        let r = router()
            .route(
                "select abalance from accounts where aid = $1",
                &[Param::text(text)],
                &SessionHints::default(),
            )
            .unwrap();
        assert_eq!(r.shards, vec![shard_of(7)]);
        let bin = 7i32.to_be_bytes();
        let r = router()
            .route(
                "select abalance from accounts where aid = $1",
                &[Param {
                    value: Some(&bin),
                    binary: true,
                    type_oid: 0,
                }],
                &SessionHints::default(),
            )
            .unwrap();
        assert_eq!(r.shards, vec![shard_of(7)]);
    }

    #[test]
    fn in_lists_and_any() {
        // keys on one shard route; on two shards scatter (rows concatenated)
        let (a, b) = (1..100)
            .map(|i| (i, shard_of(i)))
            .fold((None, None), |(a, b), (i, s)| {
                if s == 0 {
                    (a.or(Some(i)), b)
                } else {
                    (a, b.or(Some(i)))
                }
            });
        let (a, b) = (a.unwrap(), b.unwrap());
        let r = route(&format!("select * from accounts where aid in ({a}, {b})")).unwrap();
        assert_eq!(r.shards, vec![0, 1]);
        assert_eq!(r.merge().cloned(), Some(Merge::Concat));
        let e = route(&format!(
            "select * from accounts where aid in ({a}, {b}) order by aid + 1"
        ))
        .unwrap_err();
        assert_eq!(e.code, "0A000");
        assert!(e.message.contains("accounts"), "{}", e.message);
        let r = route(&format!(
            "select * from accounts where aid = any(array[{a}, {a}])"
        ))
        .unwrap();
        assert_eq!(r.shards, vec![0]);
        let arr = format!("{{{a},{b}}}");
        let r = router()
            .route(
                "select * from accounts where aid = any($1)",
                &[Param::text(arr.as_bytes())],
                &SessionHints::default(),
            )
            .unwrap();
        assert_eq!(r.shards, vec![0, 1]);
        assert_eq!(r.merge().cloned(), Some(Merge::Concat));
        // A write whose keys span shards runs on each (the session sums).
        let r = route(&format!(
            "update accounts set abalance = 0 where aid in ({a}, {b})"
        ))
        .unwrap();
        assert_eq!(r.shards, vec![0, 1]);
        assert_eq!(r.merge().cloned(), None);
    }

    #[test]
    fn cross_shard_selects_merge_or_refuse() {
        let r = route("select count(*), count(abalance) n, sum(abalance), min(aid), max(aid) from accounts a join countries c on c.code = a.country where abalance > 0").unwrap();
        assert_eq!(r.shards, vec![0, 1]);
        assert_eq!(
            r.merge().cloned(),
            Some(Merge::Aggregate {
                aggs: vec![Agg::Count, Agg::Count, Agg::Sum, Agg::Min, Agg::Max],
                shard_sql: None,
            })
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.contains("\"plan\":{\"scatter\":{\"aggregate\":{\"aggs\":[\"count\""),
            "{json}"
        );
        let r = route("select aid, abalance from accounts where filler like 'x%'").unwrap();
        assert_eq!(r.merge().cloned(), Some(Merge::Concat));
        // avg runs on the shards as sum and count, named as the client's column.
        let r = route("select count(*), avg(abalance) as \"Mean\", pg_catalog.avg(aid) from accounts where abalance > 0").unwrap();
        assert_eq!(
            r.merge().cloned(),
            Some(Merge::Aggregate {
                aggs: vec![Agg::Count, Agg::Avg, Agg::Avg],
                shard_sql: Some("SELECT count(*), sum(abalance) AS \"Mean\", count(abalance), sum(aid) AS \"avg\", count(aid) FROM accounts WHERE abalance > 0".into()),
            })
        );
        // GROUP BY select-list columns: partials per group, positions named.
        let r = route("select avg(abalance), aid, count(*) from accounts group by 2 order by 3 desc, aid limit 5").unwrap();
        assert_eq!(
            r.merge().cloned(),
            Some(Merge::Grouped {
                items: vec![Some(Agg::Avg), None, Some(Agg::Count)],
                keys: vec![
                    SortKey { column: SortColumn::Position(2), descending: true, nulls_first: true },
                    SortKey { column: SortColumn::Position(1), descending: false, nulls_first: false },
                ],
                collated: vec![false, false],
                limit: Some(5),
                offset: 0,
                shard_sql: Some("SELECT sum(abalance) AS \"avg\", count(abalance), aid, count(*) FROM accounts GROUP BY aid".into()),
                having: None,
                hidden: 0,
            })
        );
        // Known scalar functions may be concatenated; an unknown function in
        // the select list might be a user-defined aggregate: refused.
        let r =
            route("select lower(filler), aid from accounts where upper(filler) like 'X%'").unwrap();
        assert_eq!(r.merge().cloned(), Some(Merge::Concat));
        let e = route("select my_sum(abalance) from accounts").unwrap_err();
        assert_eq!(e.code, "0A000");
        let e = route("select aid, my_fn(abalance) from accounts").unwrap_err();
        assert_eq!(e.code, "0A000");
        assert!(!r.writes);
        // A join on co-located keys merges as one table does: each row of
        // the join is made of one shard's rows.
        let r =
            route("select count(distinct h.aid) from accounts a join history h on h.aid = a.aid")
                .unwrap();
        assert!(
            matches!(r.merge(), Some(Merge::CountDistinct { .. })),
            "{r:?}"
        );
        assert_eq!(r.shards, [0, 1]);
        let r = route("select a.bid, count(*) from accounts a left join history h on h.aid = a.aid group by a.bid")
            .unwrap();
        assert!(matches!(r.merge(), Some(Merge::Grouped { .. })), "{r:?}");
        // Not on the keys, or with the sharded side only nullable: no merge.
        for sql in [
            "select count(*) from accounts a join history h on h.bid = a.bid",
            "select count(*) from accounts a join history h on h.aid = a.aid + 1",
            "select count(*) from countries c left join accounts a on a.aid = c.code",
            "select count(*) from accounts a full join history h on h.aid = a.aid",
        ] {
            let e = route(sql).unwrap_err();
            assert_eq!(e.code, "0A000", "{sql}");
        }
        for sql in [
            "select aid from accounts order by abalance",
            "select abalance, count(*) from accounts group by abalance having count(*) > (select 1)",
            "select abalance, count(*) from accounts group by abalance having abalance = 'x'",
            "select abalance, count(*) from accounts group by abalance having stddev(aid) > 1",
            "select abalance + 1, count(*) from accounts group by abalance + 1",
            "select abalance, count(*) from accounts group by abalance, aid",
            "select abalance, aid, count(*) from accounts group by abalance",
            "select abalance, count(*) from accounts group by rollup (abalance)",
            "select count(*) from accounts having count(*) > 1",
            "select avg(distinct abalance) from accounts",
            "select avg(abalance) from accounts limit 1",
            "select count(*), aid from accounts",
            "select count(distinct abalance), count(distinct bid) from accounts",
            "select count(distinct abalance), sum(aid) from accounts",
            "select sum(abalance) filter (where aid > 1) from accounts",
            "select distinct on (abalance) abalance from accounts",
            "select distinct * from accounts",
            "select distinct count(*) from accounts",
            "select distinct abalance, count(*) from accounts group by abalance",
            "select * from accounts limit $1",
            "select * from accounts offset 1 + 1",
            "select * from accounts order by aid fetch first 1 rows with ties",
            "select count(*) from accounts order by 1",
            "select count(*) from accounts limit 1",
            "select row_number() over () from accounts",
            "select * from accounts for update",
            "select aid from accounts union all select aid from accounts",
            "select * from accounts a join history h on h.aid > a.aid",
            "select * from accounts where aid in (select aid from accounts where abalance > 0)",
            "with x as (select * from accounts) select * from x",
            "select * from (select * from accounts) s",
            "select array_agg(aid) from accounts",
            "select * into t2 from accounts",
            "select 1; select count(*) from accounts",
        ] {
            let e = route(sql).unwrap_err();
            assert_eq!(e.code, "0A000", "{sql}");
        }
    }

    #[test]
    fn distinct_count_distinct_and_having_merge_as_groups() {
        // DISTINCT: every item a key; the shards keep ORDER BY, not LIMIT.
        let r =
            route("select distinct abalance, aid from accounts order by 1 desc limit 3").unwrap();
        assert_eq!(
            r.merge().cloned(),
            Some(Merge::Grouped {
                items: vec![None, None],
                keys: vec![SortKey {
                    column: SortColumn::Position(0),
                    descending: true,
                    nulls_first: true
                }],
                collated: vec![false],
                limit: Some(3),
                offset: 0,
                shard_sql: Some(
                    "SELECT DISTINCT abalance, aid FROM accounts ORDER BY 1 DESC".into()
                ),
                having: None,
                hidden: 0,
            })
        );
        // count(DISTINCT key) adds up across shards; of another column it
        // is refused, saying why.
        let r = route("select count(distinct a.aid), count(*) from accounts a").unwrap();
        assert_eq!(
            r.merge().cloned(),
            Some(Merge::Aggregate {
                aggs: vec![Agg::Count, Agg::Count],
                shard_sql: None
            })
        );
        let e = route("select count(distinct abalance), count(*) from accounts").unwrap_err();
        assert!(
            e.message.contains("other than the shard key"),
            "{}",
            e.message
        );
        // Of another column alone (and group keys): distinct (keys, column)
        // rows from the shards, counted by the proxy.
        let r = route(
            "select bid, count(distinct abalance) as n from accounts group by 1 order by n desc",
        )
        .unwrap();
        assert_eq!(
            r.merge().cloned(),
            Some(Merge::CountDistinct {
                items: vec![None, Some("n".into())],
                keys: vec![SortKey {
                    column: SortColumn::Position(1),
                    descending: true,
                    nulls_first: true
                }],
                collated: vec![false],
                limit: None,
                offset: 0,
                shard_sql: Some("SELECT DISTINCT bid, abalance FROM accounts".into()),
            })
        );
        // HAVING: evaluated after the merge; its own aggregates are hidden
        // items the shards return after the select list.
        let r = route(
            "select abalance, count(*) from accounts group by abalance having count(*) > 1 and (avg(aid) <= -2.5 or not abalance is null)",
        )
        .unwrap();
        assert_eq!(
            r.merge().cloned(),
            Some(Merge::Grouped {
                items: vec![None, Some(Agg::Count), Some(Agg::Avg)],
                keys: vec![],
                collated: vec![],
                limit: None,
                offset: 0,
                shard_sql: Some("SELECT abalance, count(*), sum(aid) AS \"avg\", count(aid) FROM accounts GROUP BY abalance".into()),
                having: Some(Having::And(
                    Box::new(Having::Compare { left: Operand::Item(1), op: CmpOp::Gt, right: Operand::Number("1".into()) }),
                    Box::new(Having::Or(
                        Box::new(Having::Compare { left: Operand::Item(2), op: CmpOp::LtEq, right: Operand::Number("-2.5".into()) }),
                        Box::new(Having::Not(Box::new(Having::IsNull { operand: Operand::Item(0), negated: false }))),
                    )),
                )),
                hidden: 1,
            })
        );
    }

    fn sorted(sql: &str) -> (Vec<SortKey>, Option<u64>, u64, Option<String>) {
        match route(sql).unwrap().merge().cloned() {
            Some(Merge::Sorted {
                keys,
                limit,
                offset,
                shard_sql,
            }) => (keys, limit, offset, shard_sql),
            m => panic!("{sql}: {m:?}"),
        }
    }

    fn key(column: SortColumn, descending: bool, nulls_first: bool) -> SortKey {
        SortKey {
            column,
            descending,
            nulls_first,
        }
    }

    /// FETCH FIRST n ROWS ONLY is LIMIT n: each shard runs LIMIT
    /// offset+n, and OFFSET and the count apply after the merge.
    #[test]
    fn fetch_first_merges_as_limit() {
        use SortColumn::Position;
        let (keys, limit, offset, sql) = sorted(
            "select aid from accounts order by aid desc offset 2 rows fetch next 3 rows only",
        );
        assert_eq!(keys, vec![key(Position(0), true, true)]);
        assert_eq!((limit, offset), (Some(3), 2));
        assert_eq!(
            sql.as_deref(),
            Some("SELECT aid FROM accounts ORDER BY aid DESC LIMIT 5")
        );
        // No count: one row.
        let (_, limit, offset, sql) =
            sorted("select aid from accounts order by aid fetch first row only");
        assert_eq!((limit, offset), (Some(1), 0));
        assert_eq!(
            sql.as_deref(),
            Some("SELECT aid FROM accounts ORDER BY aid LIMIT 1")
        );
    }

    #[test]
    fn order_by_and_limit_merge_in_order() {
        use SortColumn::{Name, Position};
        // By position, alias, column name and identical expression; the
        // PostgreSQL NULLS defaults (ASC: last, DESC: first).
        let (keys, limit, offset, sql) = sorted(
            "select aid, abalance b, lower(filler) from accounts order by 2 desc, aid, lower(filler) nulls first, b asc nulls first",
        );
        assert_eq!(
            keys,
            vec![
                key(Position(1), true, true),
                key(Position(0), false, false),
                key(Position(2), false, true),
                key(Position(1), false, true),
            ]
        );
        assert_eq!((limit, offset, sql), (None, 0, None));
        // An expression selected under an alias; a qualified column.
        let (keys, ..) =
            sorted("select a.aid, abalance * 2 as dbl from accounts a order by abalance * 2 desc nulls last, a.aid");
        assert_eq!(
            keys,
            vec![
                key(Position(1), true, false),
                key(Position(0), false, false)
            ]
        );
        // After a `*`: by name, resolved against the shards' columns.
        let (keys, ..) = sorted("select * from accounts order by abalance desc, \"Aid\"");
        assert_eq!(
            keys,
            vec![
                key(Name("abalance".into()), true, true),
                key(Name("Aid".into()), false, false)
            ]
        );
        // LIMIT offset+limit pushed down, OFFSET dropped on the shards.
        let (keys, limit, offset, sql) =
            sorted("select aid from accounts order by aid limit 10 offset 5");
        assert_eq!(keys, vec![key(Position(0), false, false)]);
        assert_eq!((limit, offset), (Some(10), 5));
        assert_eq!(
            sql.as_deref(),
            Some("SELECT aid FROM accounts ORDER BY aid LIMIT 15")
        );
        // PostgreSQL syntax in the rewritten statement.
        let (_, _, _, sql) = sorted(
            "select aid, filler::text f from accounts where filler ~~ E'a\\'b%' and abalance between -1 and $$x$$::int order by f limit 2 offset 1",
        );
        let sql = sql.unwrap();
        assert!(sql.ends_with("ORDER BY f LIMIT 3"), "{sql}");
        assert!(!sql.contains("OFFSET"), "{sql}");
        let (_, limit, offset, sql) = sorted("select aid from accounts offset 3");
        assert_eq!((limit, offset), (None, 3));
        assert_eq!(sql.as_deref(), Some("SELECT aid FROM accounts"));
        let (_, limit, offset, sql) = sorted("select aid from accounts order by 1 limit all");
        assert_eq!((limit, offset, sql), (None, 0, None));
        let (_, limit, _, sql) = sorted("select aid from accounts limit 0");
        assert_eq!(limit, Some(0));
        assert_eq!(sql.as_deref(), Some("SELECT aid FROM accounts LIMIT 0"));
        // COLLATE "C" is the merge's own order.
        let (keys, ..) = sorted("select filler from accounts order by filler collate \"C\" desc");
        assert_eq!(keys, vec![key(Position(0), true, true)]);
        let r = route("select aid from accounts order by aid limit 3").unwrap();
        assert!(r.reason.contains("merged in order"), "{}", r.reason);
        // One shard: no merge, the statement as it is.
        let r = route(
            "select aid from accounts where aid = 1 order by abalance collate \"de_DE\" limit $1",
        )
        .unwrap();
        assert!(r.merge().cloned().is_none());

        for (sql, why) in [
            ("select aid from accounts order by abalance", "select list"),
            ("select aid from accounts order by aid + 1", "select list"),
            ("select aid from accounts order by 2", "position 2"),
            (
                "select filler from accounts order by filler collate \"de_DE\"",
                "COLLATE",
            ),
            (
                "select filler collate \"de_DE\" f from accounts order by f",
                "COLLATE",
            ),
            ("select aid from accounts order by aid using <", "USING"),
            ("select aid from accounts limit $1", "LIMIT $1"),
            ("select aid from accounts limit 2 + 1", "LIMIT"),
            ("select aid from accounts offset $1", "OFFSET $1"),
            (
                "select aid from accounts order by aid fetch first 3 rows with ties",
                "WITH TIES",
            ),
            (
                "select aid from accounts limit 2 fetch first 3 rows only",
                "FETCH FIRST",
            ),
            (
                "select aid, abalance aid from accounts order by aid",
                "ambiguous",
            ),
            (
                "select *, lower(filler) from accounts order by lower(filler)",
                "alias",
            ),
            ("select count(*) from accounts order by 1", "aggregates"),
        ] {
            let e = route(sql).unwrap_err();
            assert_eq!(e.code, "0A000", "{sql}");
            assert!(e.message.contains(why), "{sql}: {}", e.message);
            assert!(e.message.contains("\"accounts\""), "{sql}: {}", e.message);
            assert!(
                e.hint.as_deref().unwrap_or("").contains("shard key"),
                "{sql}"
            );
        }
    }

    #[test]
    fn no_key_is_refused_with_hint() {
        let e = route("select distinct on (aid) aid from accounts").unwrap_err();
        assert_eq!(e.code, "0A000");
        assert!(e.message.contains("\"accounts\""));
        let e = route("select aid from accounts order by abalance").unwrap_err();
        assert_eq!(e.code, "0A000");
        assert!(e.message.contains("\"accounts\""), "{}", e.message);
        assert!(e.hint.unwrap().contains("shard_key"));
    }

    #[test]
    fn inserts_split_by_row() {
        let r = route("insert into accounts (aid, abalance) values (1, 0)").unwrap();
        assert_eq!(r.shards, vec![shard_of(1)]);
        assert_eq!(r.plan, Plan::Single);
        let sql = format!(
            "insert into accounts (aid) values {}",
            (1..20)
                .map(|i| format!("({i})"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let r = route(&sql).unwrap();
        assert_eq!(r.shards, vec![0, 1]);
        let Plan::SplitInsert(rows) = r.plan else {
            panic!("not split: {:?}", r.plan)
        };
        assert_eq!(rows.len(), 19);
        for (i, s) in rows.iter().enumerate() {
            assert_eq!(*s, shard_of(i as i64 + 1));
        }
        let e = route("insert into accounts (aid) values (null)").unwrap_err();
        assert_eq!(e.code, "23502");
        let e = route("insert into accounts (abalance) values (1)").unwrap_err();
        assert_eq!(e.code, "23502");
        assert!(e.message.contains("\"aid\""));
        // Without a column list, the key's position comes from the
        // column cache the session fills from the catalog.
        let r = router();
        let e = r
            .route(
                "insert into accounts values (1, 2)",
                &[],
                &SessionHints::default(),
            )
            .unwrap_err();
        assert_eq!(e.code, "0A000");
        assert!(e.message.contains("column order"), "{}", e.message);
        assert_eq!(
            r.missing_columns(&r.analysis("insert into accounts values (1, 2)"))
                .len(),
            1
        );
        r.columns.put(
            "accounts",
            vec!["bid".into(), "aid".into(), "abalance".into()],
            r.columns.generation(),
        );
        let one = r
            .route(
                "insert into accounts values (10, 7, 0)",
                &[],
                &SessionHints::default(),
            )
            .unwrap();
        assert_eq!(one.shards, vec![shard_of(7)]);
        let two = r
            .route(
                "insert into accounts values (10, 7, 0), (10, $1, 0)",
                &[Param::text(b"8")],
                &SessionHints::default(),
            )
            .unwrap();
        assert_eq!(two.keys, vec!["7", "8"]);
        let e = r
            .route(
                "insert into accounts values (10)",
                &[],
                &SessionHints::default(),
            )
            .unwrap_err();
        assert_eq!(e.code, "23502");
        let e = r
            .route(
                "insert into accounts values (10, 3 + 4)",
                &[],
                &SessionHints::default(),
            )
            .unwrap_err();
        assert_eq!(e.code, "0A000");
    }

    #[test]
    fn update_and_delete() {
        let r = route("update accounts set abalance = abalance + 1 where aid = 3").unwrap();
        assert_eq!(r.shards, vec![shard_of(3)]);
        assert!(r.writes);
        let e = route("update accounts set aid = 4 where aid = 3").unwrap_err();
        assert!(e.message.contains("shard key"), "{}", e.message);
        let r = route("delete from accounts where aid = 5").unwrap();
        assert_eq!(r.shards, vec![shard_of(5)]);
        // No key: every shard, each deleting its own rows.
        assert_eq!(route("delete from accounts").unwrap().shards, vec![0, 1]);
        // Two sharded tables without co-located keys: refused.
        assert!(
            route("delete from accounts using history where accounts.aid = history.aid + 1")
                .is_err()
        );
    }

    #[test]
    fn range_edges() {
        assert_eq!(
            route("select * from events where id = -1000000")
                .unwrap()
                .shards,
            vec![0]
        );
        assert_eq!(
            route("select * from events where id = 99").unwrap().shards,
            vec![0]
        );
        assert_eq!(
            route("select * from events where id = 100").unwrap().shards,
            vec![1]
        );
        assert_eq!(
            route("select * from events where id = 199").unwrap().shards,
            vec![1]
        );
        let e = route("select * from events where id = 200").unwrap_err();
        assert!(e.message.contains("200"), "{}", e.message);
    }

    #[test]
    fn geo_and_default_region() {
        assert_eq!(
            route("select * from users where region = 'de'")
                .unwrap()
                .shards,
            vec![1]
        );
        assert_eq!(
            route("select * from users where region = 'us'")
                .unwrap()
                .shards,
            vec![0]
        );
        assert_eq!(
            route("select * from users where region = 'jp'")
                .unwrap()
                .shards,
            vec![0]
        );
    }

    #[test]
    fn reference_tables() {
        let r = route("select * from countries").unwrap();
        assert!(!r.is_broadcast());
        let r = route("insert into countries (code) values ('de')").unwrap();
        assert!(r.is_broadcast());
        assert_eq!(r.shards, vec![0, 1]);
        // join of a sharded table with a reference table stays on the key's shard
        let r = route(
            "select * from accounts a join countries c on c.code = a.country where a.aid = 9",
        )
        .unwrap();
        assert_eq!(r.shards, vec![shard_of(9)]);
        // writing a reference table from a sharded one would diverge the copies
        let e = route("update countries set n = a.abalance from accounts a where a.aid = 9")
            .unwrap_err();
        assert_eq!(e.code, "0A000");
        assert!(
            e.message.contains("\"countries\"") && e.message.contains("\"accounts\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn colocated_join_follows_key_equality() {
        let r = route("select * from accounts a join history h on h.aid = a.aid where a.aid = 11")
            .unwrap();
        assert_eq!(r.shards, vec![shard_of(11)]);
        assert!(
            route("select * from accounts a join events e on e.id = a.aid where a.aid = 11")
                .is_err()
        );
    }

    #[test]
    fn ddl_and_maintenance_broadcast() {
        for sql in [
            "create table t (id int)",
            "create index on accounts (abalance)",
            "alter table accounts add column x int",
            "drop table t",
            "truncate accounts",
            "vacuum accounts",
            "analyze",
        ] {
            let r = route(sql).unwrap();
            assert!(r.is_broadcast(), "{sql}");
        }
    }

    #[test]
    fn hints_override_parser() {
        let r = route("/* shardwire: shard=s1 */ select count(*) from accounts").unwrap();
        assert_eq!(r.shards, vec![1]);
        let r = route("/* shardwire: shard_key=42 */ select count(*) from accounts").unwrap();
        assert_eq!(r.shards, vec![shard_of(42)]);
        let r =
            route("/* shardwire: shard_key=42 */ select * from accounts where aid = 1").unwrap();
        assert_eq!(r.shards, vec![shard_of(42)]);
        let hints = SessionHints {
            shard: Some("s1".into()),
            shard_key: None,
        };
        let r = router()
            .route("select count(*) from accounts", &[], &hints)
            .unwrap();
        assert_eq!(r.shards, vec![1]);
        assert!(route("/* shardwire: shard=s9 */ select 1").is_err());
    }

    #[test]
    fn unparseable_statements_fall_back() {
        let r = router();
        for sql in [
            "VACUUM (VERBOSE, PARALLEL 2) accounts",
            "REINDEX TABLE accounts",
            "CLUSTER accounts USING accounts_pkey",
        ] {
            assert!(
                r.route(sql, &[], &SessionHints::default())
                    .unwrap()
                    .is_broadcast(),
                "{sql}"
            );
        }
        assert!(r.analysis("REINDEX TABLE accounts").fallback);
        // Unparseable, unknown, no sharded table: default shard.
        assert_eq!(
            route("do $$ begin perform 1; end $$").unwrap().shards,
            vec![0]
        );
        // Unparseable and naming a sharded table: refused, not guessed.
        let e = route("frobnicate accounts").unwrap_err();
        assert_eq!(e.code, "0A000");
    }

    #[test]
    fn copy_in_splits() {
        let r = route("copy accounts (aid, abalance) from stdin").unwrap();
        let Plan::SplitCopy(split) = r.plan else {
            panic!("not a COPY split: {:?}", r.plan)
        };
        assert_eq!(split.key_column, Some(0));
        assert!(route("copy accounts (abalance) from stdin").is_err());
        assert!(route("copy accounts to stdout").is_err());
    }

    #[test]
    fn transaction_statements_are_neutral_in_multi_statement_strings() {
        let r = route("begin; update accounts set abalance = 1 where aid = 3; commit").unwrap();
        assert_eq!(r.shards, vec![shard_of(3)]);
    }

    #[test]
    fn uuid_and_arrays_parse() {
        assert_eq!(
            parse_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap()[0],
            0xa0
        );
        assert!(parse_uuid("nope").is_err());
        assert_eq!(
            params::parse_text_array("{1, 2,\"a,b\",NULL}").unwrap(),
            vec![Some("1".into()), Some("2".into()), Some("a,b".into()), None]
        );
    }

    #[test]
    fn cache_is_used() {
        let r = router();
        let a = r.analysis("select * from accounts where aid = 1");
        let b = r.analysis("select * from accounts where aid = 1");
        assert!(std::sync::Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn reads_and_writes_are_told_apart() {
        let r = router().with_write_functions(&["Audit_Touch".to_string()]);
        let read = |sql: &str| r.is_read(&r.analysis(sql));
        assert!(read("select abalance from accounts where aid = 1"));
        assert!(read(
            "select now(), lower('A'), coalesce(null, 1), inet_server_port()"
        ));
        assert!(read("select 1; select 2"));
        assert!(!read("select * from accounts where aid = 1 for update"));
        assert!(!read("select * from accounts for share"));
        assert!(!read("select nextval('s')"));
        assert!(!read("select pg_advisory_lock(1)"));
        assert!(!read("select audit_touch(1)"));
        assert!(!read("select * into t2 from accounts"));
        assert!(!read(
            "with x as (insert into accounts values (1) returning *) select * from x"
        ));
        assert!(!read("update accounts set abalance = 1 where aid = 1"));
        assert!(!read(
            "select 1; update accounts set abalance = 1 where aid = 1"
        ));
        assert!(!read("begin"));
        assert!(!read("set search_path = x"));
        assert!(!read("vacuum"));
    }
}

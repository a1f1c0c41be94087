//! The versioned shard map in the catalog (`[topology] source =
//! "catalog"`): table `shardwire.topology` on the first shard's primary
//! holds every version of the map (the config file's `[[shards]]`,
//! `[[tables]]` and `default_shard`, as JSON) under the map's name. The
//! config file seeds version 1 when the catalog has none; after that the
//! catalog is the truth. Every proxy loads the newest version at start,
//! then follows new ones: a NOTIFY on `shardwire_topology` wakes it at
//! once, a check every `topology.check_interval` catches what a lost
//! connection missed, so every proxy converges on the newest version.
//! Each statement is routed against one immutable config snapshot, so a
//! version change never splits a statement.
//!
//! A version is published by inserting `version + 1`: the primary key
//! makes two publishers race safely (one wins, the other must re-read).

use std::sync::Arc;
use std::time::Duration;

use crate::backend::conn::{ServerConn, ServerTarget};
use crate::config::{Config, Role, TopologySource};
use crate::protocol::TxStatus;
use crate::proxy::Proxy;

/// The LISTEN/NOTIFY channel; the payload is `name:version`.
pub const CHANNEL: &str = "shardwire_topology";

const CATALOG_DDL: &str = "CREATE SCHEMA IF NOT EXISTS shardwire; \
    CREATE TABLE IF NOT EXISTS shardwire.topology (\
        name text NOT NULL, \
        version bigint NOT NULL CHECK (version > 0), \
        map jsonb NOT NULL, \
        note text NOT NULL DEFAULT '', \
        created_at timestamptz NOT NULL DEFAULT now(), \
        PRIMARY KEY (name, version))";

const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a starting proxy keeps trying to reach the catalog.
const START_TIMEOUT: Duration = Duration::from_secs(30);

use crate::protocol::quote_literal as literal;

/// The catalog's server: the first shard's primary, as the proxy's health
/// login (user and database) sees it.
fn catalog_target(config: &Config, primary: usize) -> Result<ServerTarget, String> {
    health_login_target(config, 0, primary)
        .ok_or_else(|| "no user and database to reach the catalog with".to_string())
}

/// Server `server` of shard `shard`, as a primary, logged in to as the
/// proxy's health login (user and database); None without one.
pub fn health_login_target(config: &Config, shard: usize, server: usize) -> Option<ServerTarget> {
    let (db, user) = config.health.login.clone()?;
    let shard = &config.shards[shard];
    let server = &shard.servers[server];
    let user = &config.users[&user];
    Some(ServerTarget {
        shard: shard.name.clone(),
        host: server.host.clone(),
        port: server.port,
        role: Role::Primary,
        database: config.databases[&db].server_database.clone(),
        user: user.server_user.clone(),
        password: user.server_password.clone(),
    })
}

/// The first shard's configured primary (before health checks know more).
fn configured_primary(config: &Config) -> usize {
    config.shards[0]
        .servers
        .iter()
        .position(|s| s.role == Role::Primary)
        .unwrap_or(0)
}

async fn run(conn: &mut ServerConn, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    run_within(conn, sql, QUERY_TIMEOUT).await
}

/// Run `sql` (simple query; several statements allowed) and return every
/// row's values as text; the first error fails it.
pub(crate) async fn run_within(
    conn: &mut ServerConn,
    sql: &str,
    timeout: Duration,
) -> Result<Vec<Vec<Option<String>>>, String> {
    let c = conn
        .run_collect(sql, timeout, 16 * 1024 * 1024)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(e) = &c.error {
        let message = crate::protocol::describe_error(crate::protocol::body(e));
        if c.status != TxStatus::Idle {
            // A BEGIN in `sql` left the connection in the failed block.
            conn.run_collect("ROLLBACK", timeout, 1024)
                .await
                .map_err(|e| e.to_string())?;
        }
        return Err(message);
    }
    let mut rows = Vec::new();
    for f in &c.frames {
        if f[0] == crate::protocol::be::DATA_ROW {
            let values = crate::protocol::data_row_values(f).map_err(|_| "malformed row")?;
            rows.push(
                values
                    .into_iter()
                    .map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned()))
                    .collect(),
            );
        }
    }
    Ok(rows)
}

/// The newest version of map `name`, if any.
pub async fn latest(
    conn: &mut ServerConn,
    name: &str,
) -> Result<Option<(u64, serde_json::Value)>, String> {
    let rows = run(
        conn,
        &format!(
            "SELECT version, map::text FROM shardwire.topology WHERE name = {} \
             ORDER BY version DESC LIMIT 1",
            literal(name)
        ),
    )
    .await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let version = row
        .first()
        .cloned()
        .flatten()
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or("the catalog's topology version is not a number")?;
    let map = row
        .get(1)
        .cloned()
        .flatten()
        .ok_or("the catalog's topology map is NULL")?;
    let map = serde_json::from_str(&map).map_err(|e| format!("topology map: {e}"))?;
    Ok(Some((version, map)))
}

/// Insert `map` as version `version` of `name` and tell every proxy.
/// Fails (unique violation) when that version exists already.
pub async fn publish(
    conn: &mut ServerConn,
    name: &str,
    version: u64,
    map: &serde_json::Value,
    note: &str,
) -> Result<(), String> {
    publish_with(conn, name, version, map, note, "").await
}

/// `publish`, with `also` (SQL on the catalog, e.g. a journal update) in
/// the same transaction, so both happen or neither.
pub async fn publish_with(
    conn: &mut ServerConn,
    name: &str,
    version: u64,
    map: &serde_json::Value,
    note: &str,
    also: &str,
) -> Result<(), String> {
    run(
        conn,
        &format!(
            "BEGIN; INSERT INTO shardwire.topology (name, version, map, note) \
             VALUES ({}, {version}, {}::jsonb, {}); {also}; NOTIFY {CHANNEL}, {}; COMMIT",
            literal(name),
            literal(&map.to_string()),
            literal(note),
            literal(&format!("{name}:{version}")),
        ),
    )
    .await
    .map(|_| ())
}

/// Connect to the catalog and make sure its table exists.
pub(crate) async fn open(config: &Config, primary: usize) -> Result<ServerConn, String> {
    let target = catalog_target(config, primary)?;
    let describe = target.describe();
    let mut conn = ServerConn::connect(Arc::new(target), QUERY_TIMEOUT)
        .await
        .map_err(|e| format!("cannot reach the catalog on {describe}: {e}"))?;
    run(&mut conn, CATALOG_DDL).await?;
    Ok(conn)
}

/// The config to start with: as loaded, or (catalog source) with the
/// catalog's newest shard map, seeding version 1 from the file when the
/// catalog has none. Retries an unreachable catalog for a while: starting
/// on a stale map could send writes to the wrong shard.
pub async fn load_at_start(config: Config) -> Result<Config, String> {
    if config.topology.source != TopologySource::Catalog {
        return Ok(config);
    }
    let started = tokio::time::Instant::now();
    let name = config.topology.name.clone();
    let (version, map) = loop {
        let attempt = async {
            let mut conn = open(&config, configured_primary(&config)).await?;
            if latest(&mut conn, &name).await?.is_none() {
                // Two proxies seeding at once: one insert wins.
                let seed = publish(
                    &mut conn,
                    &name,
                    1,
                    &config.topology_map,
                    &format!("seeded from {}", config.file.display()),
                )
                .await;
                if let Err(e) = seed {
                    tracing::info!(error = %e, "another proxy seeded the topology first");
                }
            }
            latest(&mut conn, &name)
                .await?
                .ok_or_else(|| "the topology vanished from the catalog".to_string())
        };
        match attempt.await {
            Ok(found) => break found,
            Err(e) if started.elapsed() < START_TIMEOUT => {
                tracing::warn!(error = %e, "cannot load the topology from the catalog yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                return Err(format!(
                    "cannot load topology \"{name}\" from the catalog within {START_TIMEOUT:?}: {e}"
                ))
            }
        }
    };
    let loaded = Config::load_with_map(&config.file, Some((version, &map))).map_err(|e| {
        format!("the catalog's topology \"{name}\" version {version} is not valid: {e}")
    })?;
    tracing::info!(name = %name, version, "topology loaded from the catalog");
    Ok(loaded)
}

/// Follow the catalog: apply every newer version of the map.
pub fn spawn_follower(proxy: Arc<Proxy>) {
    if proxy.config().topology.source != TopologySource::Catalog {
        return;
    }
    tokio::spawn(async move {
        let mut shutdown = proxy.shutdown_requested();
        loop {
            let followed = follow(&proxy);
            tokio::select! {
                r = followed => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "lost the topology catalog; reconnecting");
                    }
                }
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    });
}

/// One catalog connection's life: LISTEN, then check on every
/// notification and every check interval.
async fn follow(proxy: &Arc<Proxy>) -> Result<(), String> {
    let config = proxy.config();
    let primary = proxy.health.primary_index(&config, 0);
    let mut conn = open(&config, primary).await?;
    run(&mut conn, &format!("LISTEN {CHANNEL}")).await?;
    // A version published while this connection was down.
    let mut skipped: Option<u64> = None;
    loop {
        let config = proxy.config();
        let name = config.topology.name.clone();
        if let Some((version, map)) = latest(&mut conn, &name).await? {
            if version > config.topology_version && skipped != Some(version) {
                match proxy.apply_topology(version, &map) {
                    Ok(_) => {
                        tracing::info!(name = %name, version, "new topology version in force");
                    }
                    Err(e) => {
                        // Logged by apply; not retried until a newer one.
                        tracing::error!(name = %name, version, error = %e, "topology version rejected; the previous one stays in force");
                        skipped = Some(version);
                    }
                }
            }
        }
        // Wait for a notification (any: the check above is cheap) or the
        // interval.
        let wait = config.topology.check_interval;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, conn.next_frame()).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(e.to_string()),
                Ok(Ok(frame)) if frame[0] == crate::protocol::be::NOTIFICATION_RESPONSE => break,
                Ok(Ok(_)) => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------
// DBA commands that publish a new version.

use crate::protocol::{sqlstate, PgError};

pub(crate) fn refuse(code: &'static str, message: impl Into<String>) -> PgError {
    PgError::error(code, message.into())
}

/// `host:port`.
fn parse_addr(addr: &str) -> Result<(String, u16), PgError> {
    let bad = || {
        refuse(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("\"{addr}\" is not host:port (for example '10.0.0.5:5432')"),
        )
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((
        host.trim_matches(|c| c == '[' || c == ']').to_string(),
        port,
    ))
}

/// Check that a map change can be made: catalog source, and the catalog's
/// newest version is the one in force (so the change is made to it).
pub(crate) fn catalog_only(config: &Config, command: &str) -> Result<(), PgError> {
    if config.topology.source != TopologySource::Catalog {
        return Err(refuse(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("{command} works on the shard map in the catalog, and here the map comes from the config file"),
        )
        .with_hint("set [topology] source = \"catalog\" so the map is versioned in the catalog and every proxy follows it"));
    }
    Ok(())
}

/// Validate `map` as the next version, publish it and put it in force.
async fn publish_next(
    proxy: &Arc<Proxy>,
    map: serde_json::Value,
    note: &str,
) -> Result<u64, PgError> {
    let config = proxy.config();
    let next = config.topology_version + 1;
    Config::load_with_map(&config.file, Some((next, &map))).map_err(|e| {
        refuse(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("the new shard map would not be valid: {e}"),
        )
    })?;
    let primary = proxy.health.primary_index(&config, 0);
    let mut conn = open(&config, primary)
        .await
        .map_err(|e| refuse(sqlstate::CONNECTION_FAILURE, e))?;
    let newest = latest(&mut conn, &config.topology.name)
        .await
        .map_err(|e| refuse(sqlstate::CONNECTION_FAILURE, e))?
        .map_or(0, |(v, _)| v);
    if newest != config.topology_version {
        return Err(refuse(
            sqlstate::T_R_SERIALIZATION_FAILURE,
            format!(
                "the shard map changed meanwhile (version {newest} in the catalog, {} here); nothing was changed",
                config.topology_version
            ),
        )
        .with_hint("run the command again once SHOW TOPOLOGY shows the newest version"));
    }
    publish(&mut conn, &config.topology.name, next, &map, note)
        .await
        .map_err(|e| {
            refuse(
                sqlstate::T_R_SERIALIZATION_FAILURE,
                format!("publishing version {next} failed (another proxy may have published it first): {e}"),
            )
        })?;
    proxy
        .apply_topology(next, &map)
        .map_err(|e| refuse(sqlstate::INTERNAL_ERROR, e.to_string()))?;
    tracing::info!(version = next, note, "published a new topology version");
    Ok(next)
}

/// `ADD SHARD name PRIMARY 'host:port' [REPLICAS 'host:port', ...]`: the
/// shard joins the map (no ring or range sends it rows until a rebalance
/// moves them: every hash table's ring is pinned to its current shards).
/// The new primary must be reachable with the proxy's login and not in
/// recovery.
pub async fn add_shard(
    proxy: &Arc<Proxy>,
    name: &str,
    primary: &str,
    replicas: &[String],
) -> Result<u64, PgError> {
    let config = proxy.config();
    catalog_only(&config, "ADD SHARD")?;
    if config.shards.iter().any(|s| s.name == name) {
        return Err(refuse(
            sqlstate::DUPLICATE_OBJECT,
            format!("shard \"{name}\" already exists"),
        ));
    }
    let (host, port) = parse_addr(primary)?;
    let mut servers = vec![serde_json::json!({ "host": host, "port": port, "role": "primary" })];
    for r in replicas {
        let (h, p) = parse_addr(r)?;
        servers.push(serde_json::json!({ "host": h, "port": p, "role": "replica" }));
    }
    // The new primary must answer as a primary, with the proxy's login.
    let mut probe = catalog_target(&config, 0)
        .map_err(|e| refuse(sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE, e))?;
    probe.shard = name.to_string();
    probe.host = host.clone();
    probe.port = port;
    let mut conn = ServerConn::connect(Arc::new(probe), QUERY_TIMEOUT)
        .await
        .map_err(|e| {
            refuse(
                sqlstate::CONNECTION_FAILURE,
                format!(
                    "cannot reach the new shard's primary {host}:{port}: {e}; nothing was changed"
                ),
            )
        })?;
    let rows = run(&mut conn, "SELECT pg_is_in_recovery()")
        .await
        .map_err(|e| refuse(sqlstate::CONNECTION_FAILURE, e))?;
    if rows.first().and_then(|r| r[0].as_deref()) != Some("f") {
        return Err(refuse(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("{host}:{port} is in recovery (a replica), not a primary; nothing was changed"),
        ));
    }
    let mut map = (*config.topology_map).clone();
    let names: Vec<String> = config.shards.iter().map(|s| s.name.clone()).collect();
    if let Some(tables) = map.get_mut("tables").and_then(|t| t.as_array_mut()) {
        for t in tables {
            if t.get("strategy").and_then(|s| s.as_str()) == Some("hash")
                && t.get("shards").is_none()
            {
                t["shards"] = serde_json::json!(names);
            }
        }
    }
    let shards = map
        .as_object_mut()
        .ok_or_else(|| refuse(sqlstate::INTERNAL_ERROR, "the shard map is not an object"))?
        .entry("shards")
        .or_insert_with(|| serde_json::json!([]));
    shards
        .as_array_mut()
        .ok_or_else(|| refuse(sqlstate::INTERNAL_ERROR, "the map's shards are not a list"))?
        .push(serde_json::json!({ "name": name, "servers": servers }));
    publish_next(proxy, map, &format!("ADD SHARD {name}")).await
}

/// The table rules that put rows on shard `index` (reference tables
/// aside: every shard has a copy).
pub fn tables_on_shard(config: &Config, index: usize) -> Vec<&str> {
    config
        .router
        .tables()
        .filter(|t| !t.is_reference() && t.shards(config.shards.len()).contains(&index))
        .map(|t| t.name.as_str())
        .collect()
}

/// `REMOVE SHARD name`: only a shard no table rule uses (and not the
/// default shard) leaves the map; moving its rows away is a rebalance.
pub async fn remove_shard(proxy: &Arc<Proxy>, name: &str) -> Result<u64, PgError> {
    let config = proxy.config();
    catalog_only(&config, "REMOVE SHARD")?;
    let Some(index) = config.shards.iter().position(|s| s.name == name) else {
        return Err(refuse(
            sqlstate::UNDEFINED_OBJECT,
            format!("shard \"{name}\" does not exist"),
        ));
    };
    if index == config.default_shard {
        return Err(refuse(
            sqlstate::OBJECT_IN_USE,
            format!("shard \"{name}\" is the default shard (unsharded tables live there)"),
        ));
    }
    let using = tables_on_shard(&config, index);
    if !using.is_empty() {
        return Err(refuse(
            sqlstate::OBJECT_IN_USE,
            format!(
                "shard \"{name}\" still holds rows of {}; nothing was changed",
                using.join(", ")
            ),
        )
        .with_hint("move them to other shards first (REBALANCE), then remove the shard"));
    }
    let mut map = (*config.topology_map).clone();
    if let Some(shards) = map.get_mut("shards").and_then(|s| s.as_array_mut()) {
        shards.retain(|s| s.get("name").and_then(|n| n.as_str()) != Some(name));
    }
    publish_next(proxy, map, &format!("REMOVE SHARD {name}")).await
}

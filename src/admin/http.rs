//! HTTP on `http_listen`: `/metrics` (Prometheus text format), `/healthz`
//! (the process answers) and `/readyz` (listening, and every shard has a
//! server that passed its last health check).
//!
//! A deliberately small HTTP/1.1 server: GET and HEAD only, one request per
//! connection, the request head bounded in size and time. Scrapers and
//! probes need nothing more, and it keeps a web framework off the
//! dependency list.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::backend::health::{observed_role, ServerState};
use crate::proxy::Proxy;
use crate::router::{PARSE_CACHE_HITS, PARSE_CACHE_MISSES};
use crate::stats::metrics::Exposition;

const MAX_REQUEST_HEAD: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serve until shutdown.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    let mut shutdown = proxy.shutdown_requested();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    tokio::spawn(handle(proxy.clone(), tcp));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn handle(proxy: Arc<Proxy>, mut tcp: TcpStream) {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut tcp)).await {
        Ok(Some(h)) => h,
        _ => return,
    };
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", render_metrics(&proxy)),
        ("GET" | "HEAD", "/healthz") => ("200 OK", "ok\n".to_string()),
        ("GET" | "HEAD", "/readyz") => ready(&proxy),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "not found; try /metrics, /healthz or /readyz\n".into(),
        ),
        _ => ("405 Method Not Allowed", "only GET and HEAD\n".into()),
    };
    let content_type = if path == "/metrics" {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        response.push_str(&body);
    }
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
}

/// The request line and headers, up to the blank line; None if the client
/// sends too much or closes early.
async fn read_head(tcp: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
            return Some(String::from_utf8_lossy(&buf[..line_end]).into_owned());
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return None;
        }
    }
}

fn ready(proxy: &Proxy) -> (&'static str, String) {
    if !proxy.listening.load(Ordering::Relaxed) {
        return ("503 Service Unavailable", "not listening\n".into());
    }
    if proxy.is_shutting_down() {
        return ("503 Service Unavailable", "shutting down\n".into());
    }
    match proxy.health.ready(&proxy.config()) {
        Ok(()) => ("200 OK", "ready\n".into()),
        Err(why) => ("503 Service Unavailable", format!("{why}\n")),
    }
}

/// Every metric, in the Prometheus text format. Names and labels are
/// documented in the README ("Metrics").
pub fn render_metrics(proxy: &Proxy) -> String {
    let m = &proxy.metrics;
    let mut e = Exposition::new();
    let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;

    e.family("shardwire_info", "gauge", "Version of the running proxy.")
        .sample("shardwire_info", &[("version", crate::VERSION)], 1.0);
    e.family(
        "shardwire_uptime_seconds",
        "gauge",
        "Seconds since the proxy started.",
    )
    .sample(
        "shardwire_uptime_seconds",
        &[],
        m.started.elapsed().as_secs_f64(),
    );

    // Clients.
    e.family(
        "shardwire_client_connections_total",
        "counter",
        "Client connections accepted (before login).",
    )
    .sample(
        "shardwire_client_connections_total",
        &[],
        c(&m.clients_accepted),
    );
    e.family(
        "shardwire_client_rejections_total",
        "counter",
        "Logins refused, by reason.",
    );
    for (reason, n) in [
        ("max_client_connections", &m.rejected_max_clients),
        ("user_max_connections", &m.rejected_user_limit),
        ("authentication", &m.rejected_auth),
    ] {
        e.sample(
            "shardwire_client_rejections_total",
            &[("reason", reason)],
            c(n),
        );
    }
    let clients = proxy.clients.list();
    e.family(
        "shardwire_clients",
        "gauge",
        "Client sessions logged in now, by state (admin console sessions included).",
    );
    for state in ["idle", "active", "waiting", "throttled"] {
        let n = clients.iter().filter(|c| c.state().name() == state).count();
        e.sample("shardwire_clients", &[("state", state)], n as f64);
    }

    // Queries.
    let routes = m.routes();
    e.family(
        "shardwire_queries_total",
        "counter",
        "Statements run (simple Query or extended Execute), by shard and route kind.",
    );
    for (shard, kind, r) in &routes {
        e.sample(
            "shardwire_queries_total",
            &[("shard", shard), ("kind", kind.name())],
            c(&r.queries),
        );
    }
    e.family(
        "shardwire_query_errors_total",
        "counter",
        "Statements that ended in an error, by shard and route kind.",
    );
    for (shard, kind, r) in &routes {
        e.sample(
            "shardwire_query_errors_total",
            &[("shard", shard), ("kind", kind.name())],
            c(&r.errors),
        );
    }
    e.family(
        "shardwire_query_duration_seconds",
        "histogram",
        "Statement latency seen by the proxy, from the client's message to the server's completion.",
    );
    for (shard, kind, r) in &routes {
        e.histogram(
            "shardwire_query_duration_seconds",
            &[("shard", shard), ("kind", kind.name())],
            &r.latency,
        );
    }
    e.family(
        "shardwire_reads_total",
        "counter",
        "Replica-eligible reads by shard and where they went (decision).",
    );
    for (shard, d, n) in m.read_decisions() {
        e.sample(
            "shardwire_reads_total",
            &[("shard", &shard), ("decision", d.name())],
            n as f64,
        );
    }
    e.family(
        "shardwire_errors_total",
        "counter",
        "Errors sent to clients, by SQLSTATE class (first two characters).",
    );
    for (class, n) in m.errors_by_class() {
        e.sample("shardwire_errors_total", &[("class", &class)], n as f64);
    }
    e.family(
        "shardwire_parse_cache_hits_total",
        "counter",
        "Statement analyses served from the parse cache.",
    )
    .sample(
        "shardwire_parse_cache_hits_total",
        &[],
        PARSE_CACHE_HITS.load(Ordering::Relaxed) as f64,
    );
    e.family(
        "shardwire_parse_cache_misses_total",
        "counter",
        "Statement analyses that had to parse the SQL.",
    )
    .sample(
        "shardwire_parse_cache_misses_total",
        &[],
        PARSE_CACHE_MISSES.load(Ordering::Relaxed) as f64,
    );

    // Limits.
    for (name, help, n) in [
        (
            "shardwire_rate_limited_total",
            "Statements that waited for or were refused by a user's rate limit.",
            &m.rate_limited,
        ),
        (
            "shardwire_pins_total",
            "Sessions in transaction pooling that kept their server to themselves for state that cannot follow them (LISTEN, temporary tables, session advisory locks, PREPARE, WITH HOLD cursors, LOAD).",
            &m.pins,
        ),
        (
            "shardwire_read_retries_total",
            "Replica reads run again on another server after their replica failed before answering.",
            &m.read_retries,
        ),
        (
            "shardwire_statement_timeouts_total",
            "Statements cancelled by limits.statement_timeout.",
            &m.statement_timeouts,
        ),
        (
            "shardwire_gathered_rows_total",
            "Rows copied from the shards onto a merge connection for reads PostgreSQL answers there (tier 3).",
            &m.gathered_rows,
        ),
        (
            "shardwire_gather_too_large_total",
            "Tier-3 reads refused because they needed more than limits.max_intermediate_rows rows.",
            &m.gather_too_large,
        ),
        (
            "shardwire_idle_in_transaction_timeouts_total",
            "Sessions closed by limits.idle_in_transaction_timeout.",
            &m.idle_in_transaction_timeouts,
        ),
        (
            "shardwire_pause_timeouts_total",
            "Transactions refused after waiting limits.pause_timeout during PAUSE.",
            &m.pause_timeouts,
        ),
        (
            "shardwire_rebalance_held_writes_total",
            "Writes to moving rows held during a rebalance's cutover.",
            &m.rebalance_held_writes,
        ),
    ] {
        e.family(name, "counter", help).sample(name, &[], c(n));
    }
    e.family("shardwire_paused", "gauge", "1 while PAUSEd.")
        .sample(
            "shardwire_paused",
            &[],
            if *proxy.paused().borrow() { 1.0 } else { 0.0 },
        );
    e.family(
        "shardwire_config_reloads_total",
        "counter",
        "Config reloads (SIGHUP or RELOAD), by result.",
    )
    .sample(
        "shardwire_config_reloads_total",
        &[("result", "applied")],
        c(&m.reloads),
    )
    .sample(
        "shardwire_config_reloads_total",
        &[("result", "rejected")],
        c(&m.reload_failures),
    );

    // Pools.
    let pools = proxy.backends.all();
    type PoolGauge = fn(&crate::backend::Pool) -> f64;
    let pool_families: [(&str, &str, &str, PoolGauge); 11] = [
        (
            "shardwire_pool_active_connections",
            "gauge",
            "Server connections checked out by clients.",
            |p| p.in_use() as f64,
        ),
        (
            "shardwire_pool_idle_connections",
            "gauge",
            "Server connections open and idle in the pool.",
            |p| p.idle_count() as f64,
        ),
        (
            "shardwire_pool_waiting_clients",
            "gauge",
            "Clients waiting for a connection of the pool.",
            |p| p.waiting() as f64,
        ),
        (
            "shardwire_pool_max_connections",
            "gauge",
            "The pool's max_size.",
            |p| p.settings().max_size as f64,
        ),
        (
            "shardwire_pool_checkouts_total",
            "counter",
            "Connections handed to clients.",
            |p| p.checkouts() as f64,
        ),
        (
            "shardwire_pool_checkout_wait_seconds_total",
            "counter",
            "Time clients spent getting a connection (waiting and connecting).",
            |p| p.stats.wait_micros.load(Ordering::Relaxed) as f64 / 1e6,
        ),
        (
            "shardwire_pool_checkout_timeouts_total",
            "counter",
            "Checkouts that gave up after pool.checkout_timeout.",
            |p| p.stats.checkout_timeouts.load(Ordering::Relaxed) as f64,
        ),
        (
            "shardwire_pool_queue_full_total",
            "counter",
            "Checkouts refused at once because pool.max_waiting clients were already waiting.",
            |p| p.stats.queue_full.load(Ordering::Relaxed) as f64,
        ),
        (
            "shardwire_pool_server_connects_total",
            "counter",
            "Server connections opened.",
            |p| p.stats.connects.load(Ordering::Relaxed) as f64,
        ),
        (
            "shardwire_pool_lane_batches_total",
            "counter",
            "Batches of short reads that ran on a lane (a server shared by sessions).",
            |p| p.stats.lane_batches.load(Ordering::Relaxed) as f64,
        ),
        (
            "shardwire_pool_server_connect_errors_total",
            "counter",
            "Server connections that failed to open.",
            |p| p.stats.connect_errors.load(Ordering::Relaxed) as f64,
        ),
    ];
    for (name, kind, help, get) in pool_families {
        e.family(name, kind, help);
        for p in &pools {
            let addr = p.target.addr();
            e.sample(
                name,
                &[
                    ("shard", &p.target.shard),
                    ("server", &addr),
                    ("database", &p.target.database),
                    ("user", &p.target.user),
                ],
                get(p),
            );
        }
    }

    // Servers.
    let servers = proxy.health.servers();
    e.family(
        "shardwire_server_up",
        "gauge",
        "1 if the server passed its last health check.",
    );
    for s in &servers {
        let addr = s.target.addr();
        let role = observed_role(s).to_string();
        e.sample(
            "shardwire_server_up",
            &[
                ("shard", &s.target.shard),
                ("server", &addr),
                ("role", &role),
            ],
            if s.state() == ServerState::Up {
                1.0
            } else {
                0.0
            },
        );
    }
    e.family(
        "shardwire_server_banned",
        "gauge",
        "1 while the server is banned after a failure (circuit breaker open).",
    );
    for s in &servers {
        let addr = s.target.addr();
        e.sample(
            "shardwire_server_banned",
            &[("shard", &s.target.shard), ("server", &addr)],
            if s.banned() { 1.0 } else { 0.0 },
        );
    }
    e.family(
        "shardwire_server_down_total",
        "counter",
        "Times a server's health check found it down after it was up (the ban count until replica bans exist).",
    );
    for s in &servers {
        let addr = s.target.addr();
        e.sample(
            "shardwire_server_down_total",
            &[("shard", &s.target.shard), ("server", &addr)],
            c(&s.went_down),
        );
    }
    e.family(
        "shardwire_replica_lag_bytes",
        "gauge",
        "WAL bytes a replica's replay is behind its shard's primary.",
    );
    for s in &servers {
        if let Some(lag) = proxy.health.lag_bytes(s) {
            let addr = s.target.addr();
            e.sample(
                "shardwire_replica_lag_bytes",
                &[("shard", &s.target.shard), ("server", &addr)],
                lag as f64,
            );
        }
    }
    e.finish()
}

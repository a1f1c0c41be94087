//! The `shardwire` command: parses arguments, loads the config, and hands
//! over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use shardwire::config::Config;
use shardwire::frontend;
use shardwire::proxy::{self, Proxy};
use shardwire::router::{Param, Plan, SessionHints};

#[derive(Parser)]
#[command(
    name = "shardwire",
    version,
    about = "A PostgreSQL-wire-compatible sharding proxy"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "SHARDWIRE_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// Config file (TOML).
        #[arg(long, short, env = "SHARDWIRE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file and print the resolved topology.
    Check {
        #[arg(long, short, env = "SHARDWIRE_CONFIG")]
        config: PathBuf,
        /// Print the topology as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Explain how a statement would be routed, as JSON (no database needed).
    Route {
        #[arg(long, short, env = "SHARDWIRE_CONFIG")]
        config: PathBuf,
        /// The SQL statement.
        sql: String,
        /// Values of $1, $2, ... in order (text format).
        #[arg(long = "param")]
        params: Vec<String>,
        /// Session routing hint, as `SET shardwire.shard = ...` would set it.
        #[arg(long)]
        shard: Option<String>,
        /// Session routing hint, as `SET shardwire.shard_key = ...` would set it.
        #[arg(long)]
        shard_key: Option<String>,
    },
    /// Plan, run and watch rebalancing on a running proxy, through its
    /// admin console.
    Rebalance(shardwire::cli::rebalance::RebalanceArgs),
}

fn init_logging(format: LogFormat) {
    let spec = std::env::var("SHARDWIRE_LOG").ok();
    if let Some(targets) = targets_only(spec.as_deref()) {
        // Same filtering as EnvFilter for such a spec. EnvFilter also
        // takes a lock all threads share at each enter and exit of a span,
        // which every session's span does at each poll.
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let builder = tracing_subscriber::fmt()
            .with_max_level(tracing::level_filters::LevelFilter::TRACE)
            .with_writer(std::io::stderr);
        match format {
            LogFormat::Text => builder.finish().with(targets).init(),
            LogFormat::Json => builder.json().finish().with(targets).init(),
        }
        return;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHARDWIRE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The log filter as a [`Targets`](tracing_subscriber::filter::Targets)
/// when the spec (None: unset, meaning `info`) is only `level` and
/// `target=level` items, where both filters mean the same; None for
/// anything else (span or field filters, odd spellings), left to EnvFilter.
fn targets_only(spec: Option<&str>) -> Option<tracing_subscriber::filter::Targets> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let spec = spec.unwrap_or("info");
    let mut seen = std::collections::HashSet::new();
    let plain = !spec.is_empty()
        && spec.split(',').all(|item| {
            // Repeated targets: which one wins is EnvFilter's business.
            if !seen.insert(item.rsplit_once('=').map_or("", |(t, _)| t)) {
                return false;
            }
            let (target, level) = item.rsplit_once('=').unwrap_or(("", item));
            LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level))
                && (target.is_empty() && !item.contains('=')
                    || !target.is_empty()
                        && target
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        });
    if !plain {
        return None;
    }
    spec.parse().ok()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Rebalance(args) => shardwire::cli::rebalance::run(args),
        Command::Check { config, json } => match Config::load(&config) {
            Ok(c) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&c.to_json()).unwrap_or_default()
                    );
                } else {
                    print!("{}", c.summary());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shardwire: invalid config: {e}");
                ExitCode::from(2)
            }
        },
        Command::Route {
            config,
            sql,
            params,
            shard,
            shard_key,
        } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("shardwire: invalid config: {e}");
                    return ExitCode::from(2);
                }
            };
            let params: Vec<Param<'_>> = params.iter().map(|p| Param::text(p.as_bytes())).collect();
            let hints = SessionHints { shard, shard_key };
            let names = config.router.shard_names();
            let out = match config.router.route(&sql, &params, &hints) {
                Ok(r) => serde_json::json!({
                    "ok": true,
                    "shards": r.shards.iter().map(|i| names[*i].clone()).collect::<Vec<_>>(),
                    "plan": r.plan.name(),
                    "tier": r.plan.tier(),
                    "all_shards": r.is_broadcast(),
                    "role": "primary",
                    "writes": r.writes,
                    "table": r.table,
                    "strategy": r.strategy,
                    "keys": r.keys,
                    "row_shards": match &r.plan {
                        Plan::SplitInsert(rs) => Some(rs.iter().map(|i| names[*i].clone()).collect::<Vec<_>>()),
                        _ => None,
                    },
                    "copy_split": match &r.plan {
                        Plan::SplitCopy(c) => Some(c),
                        _ => None,
                    },
                    "merge": r.merge(),
                    "gather": match &r.plan {
                        Plan::Gather(g) => Some(g),
                        _ => None,
                    },
                    "reason": r.reason,
                }),
                Err(e) => serde_json::json!({
                    "ok": false,
                    "sqlstate": e.code,
                    "error": e.message,
                    "hint": e.hint,
                }),
            };
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            if out["ok"] == true {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Serve { config } => {
            init_logging(cli.log_format);
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("shardwire: invalid config: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = config.worker_threads {
                builder.worker_threads(n);
            }
            let runtime = match builder.enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("shardwire: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("shardwire: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    let config = shardwire::topology::load_at_start(config).await?;
    proxy::check_servable(&config).map_err(|e| e.to_string())?;
    let listen = config.listen.clone();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let http_listen = config.http_listen.clone();
    let http = tokio::net::TcpListener::bind(&http_listen)
        .await
        .map_err(|e| format!("cannot listen on {http_listen} (http_listen): {e}"))?;
    let proxy = Proxy::new(config)?;
    tracing::info!(version = shardwire::VERSION, %listen, %http_listen, "shardwire listening");
    spawn_signal_handlers(proxy.clone());
    tokio::spawn(shardwire::admin::http::serve(proxy.clone(), http));
    shardwire::execute::twophase::spawn_recovery(proxy.clone());
    shardwire::topology::spawn_follower(proxy.clone());
    frontend::serve(proxy, listener).await;
    Ok(())
}

/// SIGHUP reloads the config. SIGTERM or SIGINT: stop accepting and
/// drain; a second one exits at once.
fn spawn_signal_handlers(proxy: Arc<Proxy>) {
    use tokio::signal::unix::{signal, SignalKind};
    let reloader = proxy.clone();
    tokio::spawn(async move {
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::error!(
                "cannot install the SIGHUP handler; reload with RELOAD in the admin console"
            );
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config");
            // Errors are logged by reload; the old config stays in force.
            let _ = reloader.reload();
        }
    });
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("shutdown requested");
        proxy.begin_shutdown();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::warn!("second signal: exiting now");
        std::process::exit(1);
    });
}

#[cfg(test)]
mod tests {
    use super::targets_only;
    use tracing::Level;

    #[test]
    fn plain_log_specs_become_targets() {
        let t = targets_only(None).expect("the default");
        assert!(t.would_enable("shardwire::session", &Level::INFO));
        assert!(!t.would_enable("shardwire::session", &Level::DEBUG));
        let t = targets_only(Some("warn,shardwire=DEBUG,shardwire::slow=off")).expect("plain");
        assert!(t.would_enable("shardwire::session", &Level::DEBUG));
        assert!(!t.would_enable("shardwire::slow", &Level::ERROR));
        assert!(!t.would_enable("tokio", &Level::INFO));
        assert!(t.would_enable("tokio", &Level::WARN));
        let t = targets_only(Some("shardwire=debug")).expect("plain");
        assert!(!t.would_enable("tokio", &Level::ERROR));
        // Left to EnvFilter.
        for spec in [
            "",
            "info,",
            "info,debug",
            "=info",
            "shardwire[session]=debug",
            "shardwire[session{client=1}]=trace",
            "shardwire=loud",
            "a-b=info",
        ] {
            assert!(targets_only(Some(spec)).is_none(), "{spec}");
        }
    }
}

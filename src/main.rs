//! The `shardwire` command: parses arguments, loads the config, and hands
//! over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use shardwire::config::Config;
use shardwire::frontend::{self, Proxy};

#[derive(Parser)]
#[command(name = "shardwire", version, about = "A PostgreSQL-wire-compatible sharding proxy")]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text", env = "SHARDWIRE_LOG_FORMAT")]
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
}

fn init_logging(format: LogFormat) {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, json } => match Config::load(&config) {
            Ok(c) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&c.to_json()).unwrap_or_default());
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
        Command::Serve { config } => {
            init_logging(cli.log_format);
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("shardwire: invalid config: {e}");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
    let listen = config.listen.clone();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let proxy = Proxy::new(config)?;
    tracing::info!(version = shardwire::VERSION, %listen, "shardwire listening");
    spawn_signal_handler(proxy.clone());
    frontend::serve(proxy, listener).await;
    Ok(())
}

/// SIGTERM or SIGINT: stop accepting and drain. A second signal exits at once.
fn spawn_signal_handler(proxy: Arc<Proxy>) {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
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

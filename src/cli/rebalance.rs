//! `shardwire rebalance ...`: steer a running proxy's rebalancing from a
//! shell or a script rather than from psql. Each subcommand sends one
//! admin console command (`REBALANCE PLAN`, `ADD SHARD`, ...) over the
//! simple query protocol and prints the answer for people: rows as an
//! aligned table, `REBALANCE STATUS` as progress bars, server errors with
//! their SQLSTATE, detail and hint, notices on stderr as psql shows them.
//!
//! Every network wait is bounded, so a script calling this never hangs on
//! a proxy that does not answer; the exit code is 0 on success, 1 when the
//! proxy refused or could not be reached, 2 for bad arguments.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use futures_util::StreamExt;
use tokio_postgres::config::Host;
use tokio_postgres::error::DbError;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

use crate::rebalance::StatusRow;

/// Covers TCP connect and login: a proxy that accepts but never answers
/// must not hold a script forever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than the proxy's own 60 s bound on catalog and shard queries
/// (REBALANCE PLAN counts rows), so its error arrives before ours.
const QUERY_TIMEOUT: Duration = Duration::from_secs(65);
/// How long `start --wait` tolerates a status without a rebalance, in case
/// the proxy records the start after answering it.
const START_GRACE: Duration = Duration::from_secs(30);
const BAR_WIDTH: usize = 20;
const DEFAULT_PORT: u16 = 6432;

#[derive(Args, Debug)]
pub struct RebalanceArgs {
    /// The proxy's admin console, postgres://USER:PASSWORD@HOST:PORT/shardwire.
    /// Without it: PGHOST (127.0.0.1), PGPORT (6432), PGUSER, PGPASSWORD.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "SHARDWIRE_ADMIN_URL",
        hide_env_values = true
    )]
    pub admin: Option<String>,
    #[command(subcommand)]
    pub command: RebalanceCommand,
}

#[derive(Subcommand, Debug)]
pub enum RebalanceCommand {
    /// Show the moves that would put every hash ring on all shards.
    Plan,
    /// Start moving rows as the plan says.
    Start {
        /// Follow the progress until the rebalance ends; exit code 0 only
        /// when it is done. Ctrl-C stops following, not the rebalance.
        #[arg(long)]
        wait: bool,
        /// How often --wait asks for the status.
        #[arg(long, default_value = "1s", value_parser = interval)]
        interval: Duration,
    },
    /// Show the progress of the current or last rebalance.
    Status {
        /// Redraw every interval until the rebalance ends; then exit code 0
        /// when it is done, 1 when it failed or was cancelled.
        #[arg(long)]
        watch: bool,
        /// How often --watch asks for the status.
        #[arg(long, default_value = "1s", value_parser = interval)]
        interval: Duration,
    },
    /// Cancel the running rebalance.
    Cancel,
    /// Add a shard to the shard map (catalog topology).
    AddShard {
        #[arg(value_parser = word)]
        name: String,
        #[arg(long, value_name = "HOST:PORT", value_parser = word)]
        primary: String,
        /// May be given several times.
        #[arg(long = "replica", value_name = "HOST:PORT", value_parser = word)]
        replicas: Vec<String>,
    },
    /// Remove a shard that no table rule uses from the shard map.
    RemoveShard {
        #[arg(value_parser = word)]
        name: String,
    },
    /// Move a range table's keys from VALUE up to the next bound to SHARD.
    SplitRange {
        #[arg(value_parser = word)]
        table: String,
        #[arg(value_parser = literal)]
        value: String,
        #[arg(value_parser = word)]
        shard: String,
    },
    /// Move a geo table's region to SHARD.
    MoveRegion {
        #[arg(value_parser = literal)]
        region: String,
        #[arg(value_parser = word)]
        shard: String,
    },
}

impl RebalanceCommand {
    /// The admin console command this subcommand sends.
    pub fn sql(&self) -> String {
        match self {
            RebalanceCommand::Plan => "REBALANCE PLAN".into(),
            RebalanceCommand::Start { .. } => "REBALANCE START".into(),
            RebalanceCommand::Status { .. } => "REBALANCE STATUS".into(),
            RebalanceCommand::Cancel => "REBALANCE CANCEL".into(),
            RebalanceCommand::AddShard {
                name,
                primary,
                replicas,
            } => {
                let mut sql = format!("ADD SHARD {name} PRIMARY {}", quote(primary));
                if !replicas.is_empty() {
                    let list: Vec<String> = replicas.iter().map(|r| quote(r)).collect();
                    sql.push_str(&format!(" REPLICAS {}", list.join(", ")));
                }
                sql
            }
            RebalanceCommand::RemoveShard { name } => format!("REMOVE SHARD {name}"),
            RebalanceCommand::SplitRange {
                table,
                value,
                shard,
            } => format!("SPLIT RANGE {table} AT {} TO {shard}", quote(value)),
            RebalanceCommand::MoveRegion { region, shard } => {
                format!("MOVE REGION {} TO {shard}", quote(region))
            }
        }
    }
}

/// A SQL string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn interval(s: &str) -> Result<Duration, String> {
    let d = crate::config::parse_duration(s)?;
    // Zero would poll the proxy in a busy loop.
    if d < Duration::from_millis(100) {
        return Err("must be at least 100ms".into());
    }
    Ok(d)
}

/// Names and addresses: the console splits commands on whitespace and
/// commas and strips quotes instead of parsing SQL, so these characters
/// would silently change what the command says.
fn word(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || "'\",;".contains(c))
    {
        return Err("must be one word, without spaces, quotes, commas or semicolons".into());
    }
    Ok(s.to_string())
}

/// Values sent as literals: quotes are doubled, but the console splits
/// commands at every `;`, even inside quotes, so a `;` would end the
/// command early and run the rest as another one.
fn literal(s: &str) -> Result<String, String> {
    if s.contains(';') || s.contains('\0') {
        return Err(
            "must not contain ';' or NUL (the admin console splits commands at ';')".into(),
        );
    }
    Ok(s.to_string())
}

/// Why the command failed, ready to print, and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: 1,
        }
    }

    /// A driver error: the server's fields when it sent an ErrorResponse,
    /// otherwise the driver's own message after `context`.
    fn postgres(context: &str, e: &tokio_postgres::Error) -> Failure {
        match e.as_db_error() {
            Some(db) => Failure::new(format_db_error(db)),
            None => Failure::new(format!("{context}: {}", with_causes(e))),
        }
    }
}

/// The driver's message says only "error connecting to server"; the
/// reason (refused, no route, TLS) is in its source chain.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// `message`, then SQLSTATE, DETAIL and HINT lines when present.
pub fn format_db_error(db: &DbError) -> String {
    let mut s = format!("{}\nSQLSTATE: {}", db.message(), db.code().code());
    if let Some(d) = db.detail() {
        s.push_str(&format!("\nDETAIL: {d}"));
    }
    if let Some(h) = db.hint() {
        s.push_str(&format!("\nHINT: {h}"));
    }
    s
}

/// Run `shardwire rebalance ...` to completion: what main returns.
pub fn run(args: RebalanceArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shardwire: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(args)) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("shardwire: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn execute(args: RebalanceArgs) -> Result<ExitCode, Failure> {
    let (config, target) = admin_config(args.admin.as_deref(), &|k| std::env::var(k).ok())?;
    let session = Session::connect(&config, &target).await?;
    let sql = args.command.sql();
    match args.command {
        RebalanceCommand::Status { watch, interval } => {
            if watch {
                follow(&session, interval, false).await
            } else {
                let set = status_set(&session).await?;
                let mut out = std::io::stdout().lock();
                match set {
                    None => writeln!(out, "no rebalance has run"),
                    Some(s) => write!(out, "{}", render_status(&s).join("\n") + "\n"),
                }
                .map_err(|e| Failure::new(format!("cannot write the output: {e}")))?;
                Ok(ExitCode::SUCCESS)
            }
        }
        RebalanceCommand::Start { wait, interval } => {
            print_sets(&session.query(&sql).await?)?;
            if wait {
                follow(&session, interval, true).await
            } else {
                Ok(ExitCode::SUCCESS)
            }
        }
        _ => {
            let sets = session.query(&sql).await?;
            print_sets(&sets)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The admin console's connection settings and how to name it in
/// messages (without the password).
pub fn admin_config(
    url: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(tokio_postgres::Config, String), Failure> {
    let mut config = match url {
        Some(url) => {
            let mut config: tokio_postgres::Config = url.parse().map_err(|e| Failure {
                message: format!(
                    "invalid --admin URL: {e}; write it like postgres://admin:PASSWORD@127.0.0.1:6432/shardwire"
                ),
                code: 1,
            })?;
            // As libpq does, so the password need not be on the command
            // line, where ps shows it.
            if config.get_password().is_none() {
                if let Some(p) = env("PGPASSWORD") {
                    config.password(p);
                }
            }
            if config.get_user().is_none() {
                return Err(Failure::new(
                    "the --admin URL names no user; write it like postgres://admin:PASSWORD@127.0.0.1:6432/shardwire",
                ));
            }
            config
        }
        None => {
            let mut config = tokio_postgres::Config::new();
            config.host(env("PGHOST").as_deref().unwrap_or("127.0.0.1"));
            let port = match env("PGPORT") {
                Some(p) => p
                    .trim()
                    .parse::<u16>()
                    .map_err(|_| Failure::new(format!("PGPORT is not a port number: {p:?}")))?,
                None => DEFAULT_PORT,
            };
            config.port(port);
            // As libpq does: the login name when PGUSER is not set.
            let Some(user) = env("PGUSER").or_else(|| env("USER")) else {
                return Err(Failure::new(
                    "no admin user: set --admin postgres://USER:PASSWORD@HOST:PORT/shardwire or PGUSER",
                ));
            };
            config.user(&user);
            if let Some(p) = env("PGPASSWORD") {
                config.password(p);
            }
            config
        }
    };
    // The console is a virtual database of the proxy; a URL without one
    // would otherwise ask for the user's name as the database.
    if config.get_dbname().is_none() {
        config.dbname("shardwire");
    }
    if config.get_hosts().is_empty() {
        config.host("127.0.0.1");
    }
    if config.get_ports().is_empty() {
        config.port(DEFAULT_PORT);
    }
    config.connect_timeout(CONNECT_TIMEOUT);
    config.application_name("shardwire rebalance");
    let host = match &config.get_hosts()[0] {
        Host::Tcp(h) => h.clone(),
        #[cfg(unix)]
        Host::Unix(p) => p.display().to_string(),
    };
    let target = format!(
        "{}@{}:{}/{}",
        config.get_user().unwrap_or_default(),
        host,
        config.get_ports()[0],
        config.get_dbname().unwrap_or_default()
    );
    Ok((config, target))
}

/// One result set of a simple query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResultSet {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

/// Result sets in order; commands that return no rows (ADD SHARD) have
/// none, unlike a SELECT that matched nothing.
fn result_sets(messages: Vec<SimpleQueryMessage>) -> Vec<ResultSet> {
    let mut sets: Vec<ResultSet> = Vec::new();
    let mut open = false;
    for m in messages {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                sets.push(ResultSet {
                    columns: cols.iter().map(|c| c.name().to_string()).collect(),
                    rows: Vec::new(),
                });
                open = true;
            }
            SimpleQueryMessage::Row(row) => {
                if !open {
                    sets.push(ResultSet {
                        columns: row.columns().iter().map(|c| c.name().to_string()).collect(),
                        rows: Vec::new(),
                    });
                    open = true;
                }
                let values = (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect();
                if let Some(set) = sets.last_mut() {
                    set.rows.push(values);
                }
            }
            SimpleQueryMessage::CommandComplete(_) => open = false,
            _ => {}
        }
    }
    sets
}

struct Session {
    client: Client,
    /// Set by the connection task when the connection ends with an error,
    /// which explains a query's "connection closed" better than it does.
    closed_by: Arc<Mutex<Option<String>>>,
    target: String,
}

impl Session {
    async fn connect(config: &tokio_postgres::Config, target: &str) -> Result<Session, Failure> {
        let context = format!("cannot connect to the admin console at {target}");
        let (client, mut connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls))
            .await
            .map_err(|_| {
                Failure::new(format!(
                    "{context}: no answer within {}s",
                    CONNECT_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| Failure::postgres(&context, &e))?;
        let closed_by = Arc::new(Mutex::new(None));
        let slot = closed_by.clone();
        // Driving the connection through poll_message is what surfaces
        // notices (ADD SHARD reports the new map version in one); printing
        // them here keeps them ahead of the answer they precede.
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notice(n)) => eprintln!("{}", format_notice(&n)),
                    Ok(_) => {}
                    Err(e) => {
                        let text = match e.as_db_error() {
                            Some(db) => format_db_error(db),
                            None => with_causes(&e),
                        };
                        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
                        break;
                    }
                }
            }
        });
        Ok(Session {
            client,
            closed_by,
            target: target.to_string(),
        })
    }

    async fn query(&self, sql: &str) -> Result<Vec<ResultSet>, Failure> {
        match tokio::time::timeout(QUERY_TIMEOUT, self.client.simple_query(sql)).await {
            Err(_) => Err(Failure::new(format!(
                "{sql}: no answer from {} within {}s",
                self.target,
                QUERY_TIMEOUT.as_secs()
            ))),
            Ok(Ok(messages)) => Ok(result_sets(messages)),
            Ok(Err(e)) => {
                if e.as_db_error().is_none() && e.is_closed() {
                    // The connection task records why just after the
                    // client learns the connection is gone.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let why = self
                        .closed_by
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    if let Some(why) = why {
                        return Err(Failure::new(format!(
                            "{sql}: the proxy closed the connection: {why}"
                        )));
                    }
                }
                Err(Failure::postgres(sql, &e))
            }
        }
    }
}

/// As psql shows them: `NOTICE:  message`, then DETAIL and HINT.
fn format_notice(n: &DbError) -> String {
    let mut s = format!("{}:  {}", n.severity(), n.message());
    if let Some(d) = n.detail() {
        s.push_str(&format!("\nDETAIL:  {d}"));
    }
    if let Some(h) = n.hint() {
        s.push_str(&format!("\nHINT:  {h}"));
    }
    s
}

fn print_sets(sets: &[ResultSet]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    for (i, set) in sets.iter().enumerate() {
        if i > 0 {
            writeln!(out).map_err(write_failed)?;
        }
        write!(out, "{}", format_table(set)).map_err(write_failed)?;
    }
    out.flush().map_err(write_failed)
}

fn write_failed(e: std::io::Error) -> Failure {
    Failure::new(format!("cannot write the output: {e}"))
}

/// An aligned text table: header, rule, rows, row count. NULL prints as
/// nothing; the last column is not padded so lines carry no trailing
/// blanks.
pub fn format_table(set: &ResultSet) -> String {
    let width = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = set.columns.iter().map(|c| width(c)).collect();
    for row in &set.rows {
        for (i, v) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(width(v.as_deref().unwrap_or("")));
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(c);
            if i < last {
                s.push_str(&" ".repeat(widths[i].saturating_sub(width(c))));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(set.columns.iter().map(String::as_str).collect());
    let rules: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&line(rules.iter().map(String::as_str).collect()));
    for row in &set.rows {
        out.push_str(&line(
            (0..set.columns.len())
                .map(|i| row.get(i).and_then(|v| v.as_deref()).unwrap_or(""))
                .collect(),
        ));
    }
    let n = set.rows.len();
    out.push_str(&format!("({n} row{})\n", if n == 1 { "" } else { "s" }));
    out
}

/// REBALANCE STATUS, parsed: the overall row and the moves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    pub overall: StatusRow,
    pub moves: Vec<StatusRow>,
}

/// The states after which nothing changes any more.
pub fn is_final(state: &str) -> bool {
    matches!(state, "done" | "failed" | "cancelled")
}

/// None when no rebalance ever ran (no rows).
pub fn parse_status(set: &ResultSet) -> Result<Option<Status>, String> {
    if set.rows.is_empty() {
        return Ok(None);
    }
    for needed in ["move", "state"] {
        if !set.columns.iter().any(|c| c == needed) {
            return Err(format!(
                "REBALANCE STATUS answered without a \"{needed}\" column (columns: {}); \
                 this shardwire and the proxy disagree on its format",
                set.columns.join(", ")
            ));
        }
    }
    let mut overall = None;
    let mut moves = Vec::new();
    for values in &set.rows {
        let row = StatusRow::from_columns(&set.columns, values);
        if row.move_no == "all" && overall.is_none() {
            overall = Some(row);
        } else {
            moves.push(row);
        }
    }
    let overall =
        overall.ok_or("REBALANCE STATUS answered without the overall row (move 'all')")?;
    Ok(Some(Status { overall, moves }))
}

fn bar(progress: Option<f64>) -> String {
    match progress {
        Some(p) => {
            let filled = ((p / 100.0) * BAR_WIDTH as f64).floor() as usize;
            let filled = filled.min(BAR_WIDTH);
            format!("[{}{}]", "#".repeat(filled), ".".repeat(BAR_WIDTH - filled))
        }
        // Unknown progress is not zero progress: an empty frame.
        None => format!("[{}]", " ".repeat(BAR_WIDTH)),
    }
}

fn percent_text(progress: Option<f64>) -> String {
    match progress {
        // Floor, like the bar: 99.7% is not "100%" while rows remain.
        Some(p) => format!("{:>3}%", p.floor() as u64),
        None => "   -".into(),
    }
}

/// 12345678 -> "12,345,678".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in pg_size_pretty's units: "512 B", "1.2 MB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The optional tail of a progress line: rows, lag, ETA, detail.
fn tail(row: &StatusRow, with_eta: bool) -> Vec<String> {
    let mut parts = Vec::new();
    match (row.rows_copied, row.rows_total) {
        (Some(c), Some(t)) => parts.push(format!(
            "{}/{} rows",
            thousands(c.max(0) as u64),
            thousands(t.max(0) as u64)
        )),
        (Some(c), None) => parts.push(format!("{} rows", thousands(c.max(0) as u64))),
        _ => {}
    }
    if let Some(lag) = row.lag_bytes {
        parts.push(format!("lag {}", human_bytes(lag.max(0) as u64)));
    }
    if let Some(eta) = row.eta.as_ref().filter(|_| with_eta) {
        parts.push(format!("ETA {eta}"));
    }
    if !row.detail.is_empty() {
        parts.push(row.detail.clone());
    }
    parts
}

/// The status as lines without newlines: the overall line, then one
/// aligned line per move. A failed rebalance's reason (detail) is on the
/// overall line, where it is seen first.
pub fn render_status(status: &Status) -> Vec<String> {
    let o = &status.overall;
    let progress = o.progress();
    let mut first = format!(
        "rebalance {}: {}  {} {}",
        o.rebalance.map_or("?".to_string(), |n| n.to_string()),
        o.state,
        bar(progress),
        percent_text(progress)
    );
    let mut rest = tail(o, true);
    // The detail is the tail's last part; when the rebalance failed it is
    // the reason, and should read as one.
    if o.state == "failed" && !o.detail.is_empty() {
        rest.pop();
        rest.push(format!("error: {}", o.detail));
    }
    for part in rest {
        first.push_str("  ");
        first.push_str(&part);
    }
    let mut lines = vec![first];
    let w = |f: &dyn Fn(&StatusRow) -> usize| status.moves.iter().map(f).max().unwrap_or(0);
    let id_w = w(&|m| m.move_no.chars().count());
    let table_w = w(&|m| m.table.chars().count());
    let route = |m: &StatusRow| format!("{} -> {}", m.source, m.target);
    let route_w = w(&|m| route(m).chars().count());
    let state_w = w(&|m| m.state.chars().count());
    for m in &status.moves {
        let p = m.progress();
        let mut line = format!(
            "  {:>id_w$}  {:<table_w$}  {:<route_w$}  {:<state_w$}  {} {}",
            m.move_no,
            m.table,
            route(m),
            m.state,
            bar(p),
            percent_text(p),
        );
        for part in tail(m, true) {
            line.push_str("  ");
            line.push_str(&part);
        }
        lines.push(line.trim_end().to_string());
    }
    lines
}

/// The REBALANCE STATUS result set, None when no rebalance has run.
async fn status_set(session: &Session) -> Result<Option<Status>, Failure> {
    let sets = session.query("REBALANCE STATUS").await?;
    let set = sets.into_iter().next().unwrap_or_default();
    parse_status(&set).map_err(Failure::new)
}

/// Poll the status every `interval` until the rebalance ends. On a
/// terminal the block is redrawn in place; otherwise (a log, a pipe) each
/// poll appends a block, which reads back as a history.
async fn follow(
    session: &Session,
    interval: Duration,
    after_start: bool,
) -> Result<ExitCode, Failure> {
    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut drawn = 0usize;
    loop {
        let status = status_set(session).await?;
        let Some(status) = status else {
            if !after_start {
                let mut out = std::io::stdout().lock();
                writeln!(out, "no rebalance has run").map_err(write_failed)?;
                return Ok(ExitCode::SUCCESS);
            }
            if started.elapsed() > START_GRACE {
                return Err(Failure::new(format!(
                    "REBALANCE STATUS shows no rebalance {}s after REBALANCE START",
                    START_GRACE.as_secs()
                )));
            }
            tokio::time::sleep(interval).await;
            continue;
        };
        let lines = render_status(&status);
        let mut block = String::new();
        if tty && drawn > 0 {
            // Up to the first line of the previous block, then clear to the
            // end of the screen in case this block is shorter.
            block.push_str(&format!("\x1b[{drawn}A\x1b[J"));
        } else if drawn > 0 {
            block.push('\n');
        }
        for l in &lines {
            block.push_str(l);
            block.push('\n');
        }
        {
            let mut out = std::io::stdout().lock();
            out.write_all(block.as_bytes()).map_err(write_failed)?;
            out.flush().map_err(write_failed)?;
        }
        drawn = lines.len();
        let state = status.overall.state.as_str();
        if is_final(state) {
            if state == "done" {
                return Ok(ExitCode::SUCCESS);
            }
            let id = status
                .overall
                .rebalance
                .map_or("?".to_string(), |n| n.to_string());
            let why = if status.overall.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", status.overall.detail)
            };
            return Err(Failure::new(format!("rebalance {id} {state}{why}")));
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: [&str; 12] = crate::rebalance::STATUS_COLUMNS;

    fn set(rows: &[[&str; 12]]) -> ResultSet {
        ResultSet {
            columns: COLUMNS.iter().map(|c| c.to_string()).collect(),
            rows: rows
                .iter()
                .map(|r| {
                    r.iter()
                        .map(|v| (!v.is_empty()).then(|| v.to_string()))
                        .collect()
                })
                .collect(),
        }
    }

    fn render(rows: &[[&str; 12]]) -> Vec<String> {
        render_status(&parse_status(&set(rows)).expect("parses").expect("rows"))
    }

    #[test]
    fn copying_rebalance_renders_bars_counts_and_lag() {
        let lines = render(&[
            [
                "3", "all", "", "", "", "copying", "12345", "60000", "48", "", "12s", "",
            ],
            [
                "3", "1", "orders", "s0", "s2", "copying", "12345", "30000", "41.15", "1258291",
                "12s", "",
            ],
            [
                "3",
                "2",
                "line_items",
                "s1",
                "s2",
                "catching up",
                "30000",
                "30000",
                "100",
                "0",
                "",
                "",
            ],
        ]);
        assert_eq!(
            lines,
            [
                "rebalance 3: copying  [#########...........]  48%  12,345/60,000 rows  ETA 12s",
                "  1  orders      s0 -> s2  copying      [########............]  41%  12,345/30,000 rows  lag 1.2 MB  ETA 12s",
                "  2  line_items  s1 -> s2  catching up  [####################] 100%  30,000/30,000 rows  lag 0 B",
            ]
        );
    }

    #[test]
    fn failed_rebalance_shows_the_reason_on_the_first_line() {
        let lines = render(&[
            [
                "7",
                "all",
                "",
                "",
                "",
                "failed",
                "",
                "",
                "",
                "",
                "",
                "slot vanished on s0",
            ],
            [
                "7",
                "1",
                "orders",
                "s0",
                "s1",
                "failed",
                "10",
                "",
                "",
                "",
                "",
                "slot vanished on s0",
            ],
        ]);
        assert_eq!(
            lines[0],
            "rebalance 7: failed  [                    ]    -  error: slot vanished on s0"
        );
        assert_eq!(
            lines[1],
            "  1  orders  s0 -> s1  failed  [                    ]    -  10 rows  slot vanished on s0"
        );
    }

    #[test]
    fn failed_rebalance_without_a_reason_keeps_its_counts() {
        let lines = render(&[["8", "all", "", "", "", "failed", "3", "9", "", "", "4s", ""]]);
        assert_eq!(
            lines,
            ["rebalance 8: failed  [######..............]  33%  3/9 rows  ETA 4s"]
        );
    }

    #[test]
    fn percent_comes_from_the_counts_when_missing_and_stays_in_range() {
        let lines = render(&[
            [
                "1",
                "all",
                "",
                "",
                "",
                "verifying",
                "",
                "",
                "130",
                "",
                "",
                "",
            ],
            ["1", "1", "t", "a", "b", "copying", "1", "4", "", "", "", ""],
            ["1", "2", "t", "a", "b", "copying", "5", "0", "", "", "", ""],
        ]);
        assert!(
            lines[0].contains("[####################] 100%"),
            "{lines:?}"
        );
        assert!(
            lines[1].contains("[#####...............]  25%"),
            "{lines:?}"
        );
        // Zero rows in total: no division, unknown progress.
        assert!(
            lines[2].contains("[                    ]    -"),
            "{lines:?}"
        );
    }

    #[test]
    fn columns_are_found_by_name_and_odd_numbers_are_ignored() {
        let columns: Vec<String> = ["state", "extra", "move", "percent", "rows_copied"]
            .iter()
            .map(|c| c.to_string())
            .collect();
        let row = StatusRow::from_columns(
            &columns,
            &[
                Some("done".into()),
                Some("x".into()),
                Some("all".into()),
                Some("99.5%".into()),
                Some("lots".into()),
            ],
        );
        assert_eq!(row.state, "done");
        assert_eq!(row.move_no, "all");
        assert_eq!(row.percent, Some(99.5));
        assert_eq!(row.rows_copied, None);
        assert_eq!(row.table, "");
    }

    #[test]
    fn no_rows_means_no_rebalance_and_a_missing_overall_row_is_an_error() {
        assert_eq!(parse_status(&set(&[])), Ok(None));
        let e = parse_status(&set(&[[
            "1", "1", "t", "a", "b", "copying", "", "", "", "", "", "",
        ]]))
        .expect_err("no overall row");
        assert!(e.contains("overall"), "{e}");
        let wrong = ResultSet {
            columns: vec!["table".into()],
            rows: vec![vec![Some("t".into())]],
        };
        assert!(parse_status(&wrong)
            .expect_err("wrong shape")
            .contains("\"move\""));
    }

    #[test]
    fn final_states() {
        for s in ["done", "failed", "cancelled"] {
            assert!(is_final(s), "{s}");
        }
        for s in [
            "planned",
            "copying",
            "catching up",
            "cutover",
            "verifying",
            "cleaning up",
            "cancelling",
        ] {
            assert!(!is_final(s), "{s}");
        }
    }

    #[test]
    fn numbers_read_like_people_write_them() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 kB");
        assert_eq!(human_bytes(1_258_291), "1.2 MB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GB");
    }

    #[test]
    fn table_is_aligned_with_a_header_and_a_count() {
        let t = format_table(&ResultSet {
            columns: vec!["table".into(), "source".into(), "estimated_rows".into()],
            rows: vec![
                vec![Some("orders".into()), Some("s0".into()), Some("12".into())],
                vec![Some("t".into()), None, Some("3".into())],
            ],
        });
        assert_eq!(
            t,
            "table   source  estimated_rows\n\
             ------  ------  --------------\n\
             orders  s0      12\n\
             t               3\n\
             (2 rows)\n"
        );
    }

    #[test]
    fn commands_quote_values_and_list_replicas() {
        let add = RebalanceCommand::AddShard {
            name: "s2".into(),
            primary: "10.0.0.5:5432".into(),
            replicas: vec!["10.0.0.6:5432".into(), "10.0.0.7:5432".into()],
        };
        assert_eq!(
            add.sql(),
            "ADD SHARD s2 PRIMARY '10.0.0.5:5432' REPLICAS '10.0.0.6:5432', '10.0.0.7:5432'"
        );
        let split = RebalanceCommand::SplitRange {
            table: "events".into(),
            value: "O'Brien".into(),
            shard: "s3".into(),
        };
        assert_eq!(split.sql(), "SPLIT RANGE events AT 'O''Brien' TO s3");
        let region = RebalanceCommand::MoveRegion {
            region: "eu-west".into(),
            shard: "s1".into(),
        };
        assert_eq!(region.sql(), "MOVE REGION 'eu-west' TO s1");
        assert!(word("s 2").is_err());
        assert!(word("s2;SHUTDOWN").is_err());
        assert!(literal("1; SHUTDOWN").is_err());
        assert!(interval("0").is_err());
        assert_eq!(interval("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn connection_comes_from_the_url_or_the_pg_environment() {
        let none = |_: &str| None;
        let (c, target) =
            admin_config(Some("postgres://admin:secret@db.example:7000"), &none).expect("url");
        assert_eq!(c.get_dbname(), Some("shardwire"));
        assert_eq!(target, "admin@db.example:7000/shardwire");
        assert!(!target.contains("secret"));
        let env = |k: &str| match k {
            "PGUSER" => Some("ops".to_string()),
            "PGPASSWORD" => Some("pw".to_string()),
            _ => None,
        };
        let (c, target) = admin_config(None, &env).expect("env");
        assert_eq!(target, "ops@127.0.0.1:6432/shardwire");
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
        // A URL without a password takes PGPASSWORD; one with it keeps its own.
        let (c, _) = admin_config(Some("postgres://admin@h/shardwire"), &env).expect("url");
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
        let (c, _) = admin_config(Some("postgres://admin:own@h/shardwire"), &env).expect("url");
        assert_eq!(c.get_password(), Some(&b"own"[..]));
        let bad_port = |k: &str| match k {
            "PGPORT" => Some("x".to_string()),
            "PGUSER" => Some("ops".to_string()),
            _ => None,
        };
        assert!(admin_config(None, &bad_port)
            .expect_err("bad port")
            .message
            .contains("PGPORT"));
        assert!(admin_config(Some("http://[::1"), &none).is_err());
    }
}

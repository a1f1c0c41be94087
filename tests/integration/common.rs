//! Test harness: one PostgreSQL shard cluster per test binary (started on
//! first use, removed at process exit), and one proxy per test.
//!
//! Everything that waits on the network or a subprocess is bounded in time,
//! so a broken proxy fails the suite instead of hanging it.

#![allow(dead_code)]

use std::collections::HashSet;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// Servers per cluster: 2 shards, each a primary and one replica.
const SHARDS: u16 = 2;
const REPLICAS: u16 = 1;
const CLUSTER_PORTS: u16 = SHARDS * (REPLICAS + 1);

/// Ports are taken from below Linux's ephemeral range (32768+), so outgoing
/// connections never sit on a port a server is about to bind.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn cluster_script() -> PathBuf {
    repo_root().join("scripts/cluster.sh")
}

// ---------------------------------------------------------------------------
// Subprocesses

pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics with the whole output unless the command succeeded.
    pub fn ok(self, what: &str) -> Self {
        assert!(
            self.status.success(),
            "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs a command with optional stdin, capturing stdout and stderr; kills it
/// and panics if it runs longer than `timeout`.
pub fn run_cmd(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> CmdOutput {
    let desc = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let writer = stdin.map(|data| {
        let data = data.to_vec();
        let mut pipe = child.stdin.take().expect("stdin piped");
        std::thread::spawn(move || {
            // A command that exits early closes the pipe: not our error.
            let _ = pipe.write_all(&data);
        })
    });
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
            let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
            panic!("{desc} did not finish within {timeout:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    CmdOutput {
        status,
        stdout: String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned(),
    }
}

/// A command with the caller's libpq environment removed, so nothing but
/// the explicit arguments decides where a client connects.
pub fn pg_command(program: &str) -> Command {
    let mut c = Command::new(program);
    for v in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
        "PGPASSFILE",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGOPTIONS",
        "PGSSLMODE",
        "PGAPPNAME",
        "PGTZ",
        "PGDATESTYLE",
        "PGCLIENTENCODING",
    ] {
        c.env_remove(v);
    }
    c.env("PGCONNECT_TIMEOUT", "10");
    c
}

/// `psql -X` (no psqlrc) with `-v ON_ERROR_STOP=0|1`, connecting with
/// `conninfo` (a URL or key=value string) and `password`.
pub fn psql(
    conninfo: &str,
    password: &str,
    on_error_stop: bool,
    args: &[&str],
    stdin: Option<&str>,
) -> CmdOutput {
    let mut c = pg_command("psql");
    c.env("PGPASSWORD", password)
        .arg("-X")
        .arg("-v")
        .arg(format!("ON_ERROR_STOP={}", on_error_stop as u8))
        .arg("-d")
        .arg(conninfo)
        .args(args);
    run_cmd(&mut c, stdin.map(str::as_bytes), Duration::from_secs(60))
}

/// Serializes tests that (re)create the fixed pgbench_* tables.
pub fn pgbench_tables_lock() -> std::sync::MutexGuard<'static, ()> {
    static L: OnceLock<Mutex<()>> = OnceLock::new();
    L.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The number after `label` on the line that starts with it.
pub fn number_after(output: &str, label: &str) -> f64 {
    let line = output
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no line starting with {label:?} in pgbench output:\n{output}"));
    let rest = line.trim_start()[label.len()..].trim_start();
    let num: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse()
        .unwrap_or_else(|_| panic!("no number after {label:?} in line {line:?}"))
}

/// A pgbench run that completed with no failed or aborted transaction.
pub fn assert_pgbench_clean(out: &CmdOutput) {
    assert!(
        out.success(),
        "pgbench failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(!out.stderr.contains("aborted"), "{}", out.stderr);
    if let Some(line) = out
        .stdout
        .lines()
        .find(|l| l.contains("number of failed transactions"))
    {
        assert!(line.contains(": 0 "), "{line}");
    }
}

/// `pgbench ARGS` against the proxy at `port` as app/app, database app.
pub fn pgbench(port: u16, args: &[&str], timeout: Duration) -> CmdOutput {
    let mut c = pg_command("pgbench");
    c.env("PGPASSWORD", "app")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "app"])
        .args(args)
        .arg("app");
    run_cmd(&mut c, None, timeout)
}

/// A minimal HTTP/1.1 GET against 127.0.0.1:`port`: (status code, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to http port {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {raw}"));
    (status, body.to_string())
}

/// The value of one Prometheus sample, e.g.
/// `metric(&text, "shardwire_queries_total", &[("shard", "s0")])` sums every
/// series of that name whose labels include the given ones.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

// ---------------------------------------------------------------------------
// Ports

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(Default::default)
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// `n` consecutive loopback ports that are free now and were not handed out
/// before in this process.
pub fn free_port_block(n: u16) -> u16 {
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let base = rng.gen_range(PORT_RANGE.start..PORT_RANGE.end - n);
        let mut taken = handed_out().lock().unwrap_or_else(|e| e.into_inner());
        if (base..base + n).any(|p| taken.contains(&p)) {
            continue;
        }
        if (base..base + n).all(bindable) {
            taken.extend(base..base + n);
            return base;
        }
    }
    panic!("found no block of {n} free loopback ports");
}

pub fn free_port() -> u16 {
    free_port_block(1)
}

// ---------------------------------------------------------------------------
// The cluster

pub struct Cluster {
    pub dir: PathBuf,
    /// Port of s0's primary; s0's replica is +1, s1's primary +2, its replica +3.
    pub base_port: u16,
    /// The proxy config cluster.sh wrote.
    pub config_text: String,
}

impl Cluster {
    /// (primary, replica) ports of shard `i`.
    pub fn shard_ports(&self, i: u16) -> (u16, u16) {
        let p = self.base_port + i * (REPLICAS + 1);
        (p, p + 1)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("shardwire.toml")
    }

    /// `postgres://app:app@...` straight to s0's primary, bypassing the proxy.
    pub fn direct_url(&self) -> String {
        format!("postgres://app:app@127.0.0.1:{}/app", self.base_port)
    }
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// Directories of clusters this process started, removed at exit.
fn cluster_dirs() -> &'static Mutex<Vec<PathBuf>> {
    static DIRS: OnceLock<Mutex<Vec<PathBuf>>> = OnceLock::new();
    DIRS.get_or_init(Default::default)
}

/// The shared cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    match CLUSTER.get_or_init(start_cluster) {
        Ok(c) => c,
        Err(e) => panic!("the test cluster could not be started:\n{e}"),
    }
}

extern "C" fn teardown_at_exit() {
    let dirs = std::mem::take(&mut *cluster_dirs().lock().unwrap_or_else(|e| e.into_inner()));
    for dir in dirs {
        cluster_down(&dir);
    }
}

fn cluster_down(dir: &Path) {
    let _ = Command::new(cluster_script())
        .arg("down")
        .arg("--dir")
        .arg(dir)
        .arg("--purge")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status();
}

/// Removes the cluster even when this process dies without running atexit
/// handlers (SIGKILL, Ctrl-C): a detached shell waits for our pid to go away.
/// After a normal exit the atexit handler has already purged DIR and this
/// `down` is a no-op.
fn spawn_watchdog(dir: &Path) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; exec \"$0\" down --dir \"$1\" --purge",
        pid = std::process::id()
    );
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(script)
        .arg(cluster_script())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Own session: a terminal's Ctrl-C must not kill the watchdog too.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    // Best effort: without it, the atexit handler still covers normal exits.
    let _ = c.spawn();
}

fn start_cluster() -> Result<Cluster, String> {
    start_cluster_with(&[])
}

/// A cluster of its own, for a test that breaks it (stops or promotes
/// servers); removed when dropped (or at exit).
pub struct PrivateCluster(pub Cluster);

impl PrivateCluster {
    /// Starts a 2-shard, 1-replica cluster; `extra` goes to `cluster.sh up`.
    pub fn start(extra: &[&str]) -> PrivateCluster {
        match start_cluster_with(extra) {
            Ok(c) => PrivateCluster(c),
            Err(e) => panic!("a private test cluster could not be started:\n{e}"),
        }
    }

    /// `cluster.sh CMD --dir DIR ARGS...`, which must succeed.
    pub fn run(&self, cmd: &str, args: &[&str]) -> CmdOutput {
        run_cmd(
            Command::new(cluster_script())
                .arg(cmd)
                .arg("--dir")
                .arg(&self.0.dir)
                .args(args),
            None,
            Duration::from_secs(120),
        )
        .ok(&format!("cluster.sh {cmd} {args:?}"))
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        cluster_down(&self.0.dir);
    }
}

fn start_cluster_with(extra: &[&str]) -> Result<Cluster, String> {
    static ATEXIT: Once = Once::new();
    ATEXIT.call_once(|| unsafe {
        libc::atexit(teardown_at_exit);
    });
    let mut errors = String::new();
    for attempt in 1..=4 {
        let base = free_port_block(CLUSTER_PORTS);
        let dir = PathBuf::from(format!(
            "/tmp/swit-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        cluster_dirs()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(dir.clone());
        spawn_watchdog(&dir);
        let t = Instant::now();
        let out = run_cmd(
            Command::new(cluster_script())
                .arg("up")
                .arg("--dir")
                .arg(&dir)
                .args(["--shards", &SHARDS.to_string()])
                .args(["--replicas", &REPLICAS.to_string()])
                .args(["--port", &base.to_string()])
                .args(extra),
            None,
            Duration::from_secs(180),
        );
        if out.success() {
            eprintln!(
                "test cluster up in {:.1}s: {} (ports {base}..{})",
                t.elapsed().as_secs_f64(),
                dir.display(),
                base + CLUSTER_PORTS - 1
            );
            let config_text = std::fs::read_to_string(dir.join("shardwire.toml"))
                .map_err(|e| format!("cannot read {}/shardwire.toml: {e}", dir.display()))?;
            return Ok(Cluster {
                dir,
                base_port: base,
                config_text,
            });
        }
        errors.push_str(&format!(
            "attempt {attempt} (ports from {base}): {}\n{}{}\n",
            out.status, out.stdout, out.stderr
        ));
        cluster_down(&dir);
    }
    Err(errors)
}

/// Serializes superuser commands: concurrent DDL on shared catalogs (roles,
/// grants) can fail with "tuple concurrently updated".
fn superuser_lock() -> &'static Mutex<()> {
    static L: OnceLock<Mutex<()>> = OnceLock::new();
    L.get_or_init(Default::default)
}

/// Runs SQL as the superuser on shard `shard`'s primary (cluster.sh psql);
/// returns the unaligned, tuples-only output. Panics on error.
pub fn superuser_sql_on(shard: &str, sql: &str) -> String {
    let c = cluster();
    let _guard = superuser_lock().lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = pg_command(cluster_script().to_str().expect("utf-8 path"));
    cmd.arg("psql")
        .arg("--dir")
        .arg(&c.dir)
        .args(["--shard", shard])
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql]);
    run_cmd(&mut cmd, None, Duration::from_secs(60))
        .ok(&format!("superuser SQL on {shard}: {sql}"))
        .stdout
        .trim_end()
        .to_string()
}

pub fn superuser_sql(sql: &str) -> String {
    superuser_sql_on("s0", sql)
}

/// Creates a login role on s0 (what the proxy routes to) with a password
/// stored as `encryption` ("md5" or "scram-sha-256").
pub fn create_role(name: &str, password: &str, encryption: &str) {
    superuser_sql(&format!(
        "SET password_encryption = '{encryption}'; CREATE ROLE {name} LOGIN PASSWORD '{password}'"
    ));
}

// ---------------------------------------------------------------------------
// The proxy

pub struct TestProxy {
    child: Option<Child>,
    pub port: u16,
    /// `http_listen`'s port (/metrics, /healthz, /readyz).
    pub http_port: u16,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl TestProxy {
    /// Starts a proxy on the cluster's config with fresh ports, after
    /// `modify` has edited the config. Panics (with the log) if it does not
    /// accept connections within 10 s.
    pub fn start(modify: impl FnOnce(&mut toml::Value)) -> TestProxy {
        Self::start_on(cluster(), modify)
    }

    /// Like [`TestProxy::start`], in front of `cluster`.
    pub fn start_on(cluster: &Cluster, modify: impl FnOnce(&mut toml::Value)) -> TestProxy {
        Self::start_with_env(cluster, &[], modify)
    }

    /// Like [`TestProxy::start_on`], with extra environment variables for
    /// the proxy process (failpoints).
    pub fn start_with_env(
        cluster: &Cluster,
        env: &[(&str, &str)],
        modify: impl FnOnce(&mut toml::Value),
    ) -> TestProxy {
        let mut config: toml::Value =
            toml::from_str(&cluster.config_text).expect("cluster.sh wrote valid TOML");
        // Quick exits when a test ends with clients still in a transaction.
        set(&mut config, "shutdown_timeout", "2s");
        // Opening a backend connection costs a SCRAM key derivation, about
        // 170 ms of CPU in a debug build; a busy 2-core machine opening many
        // at once needs more than the cluster's 5 s. Tests of the timeout
        // itself set their own.
        set(&mut config, "pool.connect_timeout", "20s");
        modify(&mut config);
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(&config, env) {
                Ok(p) => return p,
                // Someone took the port between our check and the proxy's bind.
                Err(e) if e.contains("Address already in use") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{last}");
    }

    fn try_start(config: &toml::Value, env: &[(&str, &str)]) -> Result<TestProxy, String> {
        let mut config = config.clone();
        let port = free_port();
        let http_port = free_port();
        set(&mut config, "listen", format!("127.0.0.1:{port}"));
        set(&mut config, "http_listen", format!("127.0.0.1:{http_port}"));
        let dir = tempfile::Builder::new()
            .prefix("swproxy-")
            .tempdir()
            .expect("temp dir");
        let config_path = dir.path().join("shardwire.toml");
        let log_path = dir.path().join("shardwire.log");
        std::fs::write(
            &config_path,
            toml::to_string(&config).expect("serialize config"),
        )
        .expect("write config");
        let log = std::fs::File::create(&log_path).expect("create log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardwire"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("SHARDWIRE_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log fd"))
            .stderr(log);
        // The proxy dies with the test thread that started it, whatever happens.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start shardwire: {e}"))?;
        let mut proxy = TestProxy {
            child: Some(child),
            port,
            http_port,
            config_path,
            log_path,
            dir: Some(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if let Some(status) = proxy
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                proxy.child = None;
                return Err(format!(
                    "shardwire exited during startup ({status}); log:\n{}",
                    proxy.log()
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(proxy);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "shardwire did not accept connections on {addr} within 10s; log:\n{}",
                    proxy.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("proxy running").id() as i32
    }

    /// `postgres://app:app@127.0.0.1:PORT/app`
    pub fn url(&self) -> String {
        self.url_as("app", "app")
    }

    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/app", self.port)
    }

    /// A tokio-postgres config for this proxy, database app.
    pub fn pg_config(&self, user: &str, password: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname("app")
            .connect_timeout(Duration::from_secs(10));
        c
    }

    /// A tokio-postgres session as app/app (its connection task spawned).
    pub async fn app_client(&self) -> Client {
        connect(&self.pg_config("app", "app")).await.0
    }

    /// GET `path` from the HTTP endpoints: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http_port, path)
    }

    /// Run `sql` in the admin console with psql as admin/admin; the rows
    /// come back unaligned, `|`-separated, without headers. Panics (with
    /// psql's stderr) on failure.
    pub fn admin(&self, sql: &str) -> Vec<Vec<String>> {
        self.admin_psql(sql)
            .ok(&format!("admin console: {sql}"))
            .stdout
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('|').map(str::to_string).collect())
            .collect()
    }

    /// Like [`TestProxy::admin`], returning psql's whole output.
    pub fn admin_psql(&self, sql: &str) -> CmdOutput {
        let url = format!("postgres://admin@127.0.0.1:{}/shardwire", self.port);
        psql(&url, "admin", true, &["-A", "-t", "-c", sql], None)
    }

    /// Rewrite the running proxy's config file (the next reload reads it).
    pub fn rewrite_config(&self, modify: impl FnOnce(&mut toml::Value)) {
        let text = std::fs::read_to_string(&self.config_path).expect("read config");
        let mut config: toml::Value = toml::from_str(&text).expect("config is TOML");
        modify(&mut config);
        std::fs::write(
            &self.config_path,
            toml::to_string(&config).expect("serialize config"),
        )
        .expect("write config");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits up to `timeout` for the proxy to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGTERM);
                }
                let deadline = Instant::now() + Duration::from_secs(5);
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if std::thread::panicking() {
            // Keep the config and the whole log for a post-mortem.
            let kept = self.dir.take().map(|d| d.keep());
            eprintln!(
                "--- shardwire log tail ({}; kept in {:?}) ---\n{}\n---",
                self.log_path.display(),
                kept,
                self.log_tail(40)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Config editing

/// Sets a dotted key ("pool.max_size") in a TOML document, creating tables.
pub fn set(config: &mut toml::Value, key: &str, value: impl Into<toml::Value>) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("non-empty key");
    let mut t = config.as_table_mut().expect("config is a table");
    for p in parts {
        t = t
            .entry(p)
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .unwrap_or_else(|| panic!("{key}: {p} is not a table"));
    }
    t.insert(last.to_string(), value.into());
}

/// Appends a `[[users]]` entry given as TOML text (`name = "x"\n...`).
pub fn add_user(config: &mut toml::Value, user_toml: &str) {
    let user: toml::Value = toml::from_str(user_toml).expect("valid user TOML");
    config
        .as_table_mut()
        .expect("table")
        .entry("users")
        .or_insert_with(|| toml::Value::Array(Vec::new()))
        .as_array_mut()
        .expect("users is an array")
        .push(user);
}

/// Adds user `fast` (password `fast`, md5, backend role app). tokio-postgres
/// derives a SCRAM key on every login, which costs a debug-build client
/// ~170 ms of CPU: tests that time the proxy log in with md5 instead.
pub fn add_fast_user(config: &mut toml::Value) {
    add_user(
        config,
        "name = \"fast\"\npassword = \"fast\"\nauth = \"md5\"\nserver_user = \"app\"\nserver_password = \"app\"",
    );
}

// ---------------------------------------------------------------------------
// Async clients

/// Runs an async test body on a fresh runtime, failing it after `limit`.
pub fn block_on<F: Future>(limit: Duration, f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        match tokio::time::timeout(limit, f).await {
            Ok(v) => v,
            Err(_) => panic!("test body did not finish within {limit:?}"),
        }
    })
}

/// Bounds one await; panics with `what` when it takes longer than `secs`.
pub async fn within<F: Future>(secs: u64, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {secs}s"),
    }
}

pub type ConnTask = JoinHandle<Result<(), tokio_postgres::Error>>;

/// Connects (bounded by 10 s) and drives the connection in a task whose
/// result (e.g. a FATAL sent by the server) the caller can inspect.
pub async fn try_connect(
    config: &tokio_postgres::Config,
) -> Result<(Client, ConnTask), tokio_postgres::Error> {
    let (client, conn) = within(15, "connect", config.connect(NoTls)).await?;
    Ok((client, tokio::spawn(conn)))
}

pub async fn connect(config: &tokio_postgres::Config) -> (Client, ConnTask) {
    match try_connect(config).await {
        Ok(x) => x,
        Err(e) => panic!(
            "connect to {:?} failed: {e} ({:?})",
            config.get_ports(),
            e.code()
        ),
    }
}

pub async fn connect_url(url: &str) -> (Client, ConnTask) {
    let config: tokio_postgres::Config = url.parse().expect("valid URL");
    connect(&config).await
}

/// A direct connection to s0's primary as app.
pub async fn connect_direct() -> Client {
    connect_url(&cluster().direct_url()).await.0
}

/// The SQLSTATE of an error, or a panic describing what came instead.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    match e.code() {
        Some(c) => c.code().to_string(),
        None => panic!("expected a server error with a SQLSTATE, got: {e:?}"),
    }
}

/// The message of a server error, or the error's text.
pub fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// Unique-ish table names: tests run in parallel on one database.
pub fn table_name(prefix: &str) -> String {
    format!("{prefix}_{:08x}", rand::random::<u32>())
}

/// Add `[[tables]]` (TOML text) to a proxy config.
pub fn set_tables(config: &mut toml::Value, tables_toml: &str) {
    let t: toml::Value = toml::from_str(tables_toml).expect("tables TOML");
    config.as_table_mut().expect("config is a table").insert(
        "tables".into(),
        t.get("tables").expect("[[tables]]").clone(),
    );
}

/// A direct connection as app to shard `i`'s primary.
pub async fn connect_shard(i: u16) -> Client {
    let port = cluster().shard_ports(i).0;
    connect_url(&format!("postgres://app:app@127.0.0.1:{port}/app"))
        .await
        .0
}

/// Direct connections to both shards' primaries, after running `sql`
/// (typically cleanup or table setup) on each.
pub async fn connect_shards(sql: &str) -> [Client; 2] {
    let shards = [connect_shard(0).await, connect_shard(1).await];
    for s in &shards {
        s.batch_execute(sql).await.expect(sql);
    }
    shards
}

/// The single integer a query returns (for example a count).
pub async fn query_count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.expect(sql).get(0)
}

/// The one shard `shardwire route` names for `sql` with `params`.
pub fn route_shard(proxy: &TestProxy, sql: &str, params: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardwire"));
    cmd.args(["route", "--config"])
        .arg(&proxy.config_path)
        .arg(sql);
    for p in params {
        cmd.args(["--param", p]);
    }
    let out = run_cmd(&mut cmd, None, Duration::from_secs(30)).ok("shardwire route");
    let r: serde_json::Value = serde_json::from_str(&out.stdout).expect("route JSON");
    assert_eq!(r["shards"].as_array().map(Vec::len), Some(1), "{r:#}");
    r["shards"][0].as_str().expect("shard").to_string()
}

/// Rows of a simple_query result, as text.
pub fn simple_rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// PostgreSQL's binary numeric (numeric_send): ndigits, weight, sign,
/// dscale, then base-10000 digits, for a plain decimal like `-12.50`
/// (tokio-postgres has no numeric type of its own).
pub fn numeric_send(s: &str) -> Result<Vec<u8>, String> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return Err(format!("not a decimal: {s}"));
    }
    let dscale = frac.len() as i16;
    let int = int.trim_start_matches('0');
    let pad_int = format!("{}{int}", "0".repeat((4 - int.len() % 4) % 4));
    let pad_frac = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
    let mut digits: Vec<i16> = Vec::new();
    for chunk in pad_int
        .as_bytes()
        .chunks(4)
        .chain(pad_frac.as_bytes().chunks(4))
    {
        let chunk = std::str::from_utf8(chunk).map_err(|e| e.to_string())?;
        digits.push(chunk.parse().map_err(|e| format!("{chunk}: {e}"))?);
    }
    let mut weight = (pad_int.len() / 4) as i16 - 1;
    while digits.first() == Some(&0) {
        digits.remove(0);
        weight -= 1;
    }
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    let mut out = Vec::with_capacity(8 + 2 * digits.len());
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    let sign: u16 = if neg && !digits.is_empty() { 0x4000 } else { 0 };
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
    Ok(out)
}

// Differential tests (differential.rs, tenant_corpus.rs): values compared
// with one database.

/// A value as the server sent it in binary, whatever its type.
pub struct Raw(pub Option<Vec<u8>>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }
    fn from_sql_null(
        _: &tokio_postgres::types::Type,
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }
    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// A binary numeric with its display scale and trailing zero digits
/// dropped: 1.0 and 1.00 become the same bytes.
pub fn numeric_canonical(v: &[u8]) -> Vec<u8> {
    if v.len() < 8 {
        return v.to_vec();
    }
    let mut digits: Vec<[u8; 2]> = v[8..]
        .chunks(2)
        .map(|c| [c[0], c.get(1).copied().unwrap_or(0)])
        .collect();
    while digits.last() == Some(&[0, 0]) {
        digits.pop();
    }
    let mut out = (digits.len() as i16).to_be_bytes().to_vec();
    if digits.is_empty() {
        // Zero: weight and sign do not matter.
        out.extend_from_slice(&[0, 0, 0, 0]);
    } else {
        out.extend_from_slice(&v[2..6]);
    }
    out.extend_from_slice(&[0, 0]);
    for d in digits {
        out.extend_from_slice(&d);
    }
    out
}

/// `1.50` -> `1.5`, `2.00` -> `2`, `0.000` -> `0` (only plain decimals).
pub fn strip_zeros(v: &str) -> String {
    let plain = v.strip_prefix('-').unwrap_or(v);
    match plain.split_once('.') {
        Some((i, f))
            if !i.is_empty()
                && i.bytes().all(|b| b.is_ascii_digit())
                && f.bytes().all(|b| b.is_ascii_digit()) =>
        {
            let t = v.trim_end_matches('0').trim_end_matches('.');
            if t == "-0" {
                "0".to_string()
            } else {
                t.to_string()
            }
        }
        _ => v.to_string(),
    }
}

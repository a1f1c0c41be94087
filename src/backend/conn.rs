//! One connection from the proxy to a PostgreSQL server: connecting,
//! authenticating with the configured credentials, and the state the proxy
//! tracks about it (session parameters, which prepared statements it holds).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::protocol::reader::FrameError;
use crate::protocol::sqlstate;
use crate::protocol::TxStatus;
use crate::protocol::{self, be, fe, BodyReader, FrameReader, PgError, PROTOCOL_3_0};

/// Session parameters a client wants on its servers, by name. Shared
/// copy-on-write, so a server can keep the set it was last aligned to and a
/// checkout can tell by pointer that there is nothing to align.
pub type ParamSet = Arc<BTreeMap<String, String>>;

/// Largest message we accept from a server. Servers are trusted, but a bound
/// keeps a broken one from exhausting memory.
const MAX_SERVER_FRAME: usize = 1 << 30;

/// Where a pool connects and as whom. Shared by every connection of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerTarget {
    pub shard: String,
    pub host: String,
    pub port: u16,
    pub role: crate::config::Role,
    pub database: String,
    pub user: String,
    pub password: Option<String>,
}

impl ServerTarget {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// `shard "s0" (primary 127.0.0.1:5432)`, for error messages.
    pub fn describe(&self) -> String {
        format!("shard \"{}\" ({} {})", self.shard, self.role, self.addr())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("could not connect to {server}: {cause}")]
    Connect { server: String, cause: String },
    #[error("could not connect to {server}: timed out after {after:?}")]
    ConnectTimeout { server: String, after: Duration },
    #[error("{server} rejected the connection: {message}")]
    Rejected {
        server: String,
        message: String,
        code: String,
    },
    #[error("{server} broke the protocol: {cause}")]
    Protocol { server: String, cause: String },
    #[error("connection to {server} lost: {cause}")]
    Lost { server: String, cause: String },
}

impl BackendError {
    /// The server itself is unreachable or not accepting connections (as
    /// opposed to refusing these credentials or this database): the kind
    /// of failure that bans a server.
    pub fn is_server_failure(&self) -> bool {
        match self {
            BackendError::Rejected { code, .. } => {
                code.starts_with("57P") || code == sqlstate::TOO_MANY_CONNECTIONS
            }
            _ => true,
        }
    }

    /// The error as a client sees it.
    pub fn to_pg(&self) -> PgError {
        match self {
            BackendError::Rejected { code, .. } if code.starts_with("28") => PgError::error(
                sqlstate::SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION,
                self.to_string(),
            )
            .with_hint(
                "check server_user and server_password for this user in the shardwire config",
            ),
            BackendError::Rejected { code, .. } if code == sqlstate::INVALID_CATALOG_NAME => {
                PgError::error(
                    sqlstate::SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION,
                    self.to_string(),
                )
                .with_hint("check server_database for this database in the shardwire config")
            }
            BackendError::Connect { .. } | BackendError::ConnectTimeout { .. } => {
                PgError::error(protocol::sqlstate::CONNECTION_FAILURE, self.to_string())
                    .with_hint("check that the server is running and reachable")
            }
            _ => PgError::error(protocol::sqlstate::CONNECTION_FAILURE, self.to_string()),
        }
    }
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Bumped whenever a statement that may change a table's shape (CREATE,
/// ALTER, DROP, ...) passes through the proxy, before it runs and again
/// once it is done. It is part of the server-side name of every statement
/// a client prepares (session::statements), so a client that prepares
/// after a migration gets a plan of the new schema, as from PostgreSQL
/// alone, never the plan another client's same SQL got before it; a
/// client whose statement predates the migration gets PostgreSQL's own
/// answer to it.
static SCHEMA_GENERATION: AtomicU64 = AtomicU64::new(0);

/// A schema may have changed (see above).
pub fn schema_changed() {
    SCHEMA_GENERATION.fetch_add(1, Ordering::Relaxed);
}

pub fn schema_generation() -> u64 {
    SCHEMA_GENERATION.load(Ordering::Relaxed)
}

/// Prepared statements a server connection holds, by proxy-chosen name, with
/// a use counter for least-recently-used eviction.
#[derive(Default)]
pub struct PreparedOnServer {
    /// Looked up at every Bind, so not SipHash.
    names: foldhash::HashMap<Arc<str>, u64>,
    tick: u64,
}

impl PreparedOnServer {
    pub fn contains(&mut self, name: &str) -> bool {
        self.tick += 1;
        match self.names.get_mut(name) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    pub fn insert(&mut self, name: Arc<str>) {
        self.tick += 1;
        self.names.insert(name, self.tick);
    }

    pub fn remove(&mut self, name: &str) {
        self.names.remove(name);
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The least recently used name, to close when the cache is full.
    pub fn evict_lru(&mut self) -> Option<Arc<str>> {
        let victim = self
            .names
            .iter()
            .min_by_key(|(_, t)| **t)
            .map(|(n, _)| n.clone())?;
        self.names.remove(&victim);
        Some(victim)
    }

    pub fn clear(&mut self) {
        self.names.clear();
    }
}

pub struct ServerConn {
    pub id: u64,
    pub target: Arc<ServerTarget>,
    pub reader: FrameReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
    /// Key for CancelRequest to this server process.
    pub backend_pid: i32,
    pub backend_secret: i32,
    /// Session parameters in effect on this connection, as the server reported
    /// them (ParameterStatus) or as we set them.
    pub params: HashMap<String, String>,
    /// Settings the proxy SET on this connection that the server does not
    /// report, so they can be RESET for a client that did not ask for them.
    pub custom_params: Vec<String>,
    /// The client parameters `params` last agreed with (see
    /// `session::sync_params`). Whatever changes `params` or
    /// `custom_params` must clear it, or a client would keep another
    /// client's settings.
    pub aligned_to: Option<ParamSet>,
    /// Named prepared statements this connection holds (proxy names).
    pub prepared: PreparedOnServer,
    /// Identity of the client Parse that created this connection's unnamed
    /// statement, so a later Bind to "" can tell whether it is still there.
    pub unnamed: Option<u64>,

    pub created: Instant,
    pub last_used: Instant,
}

impl ServerConn {
    /// Open and authenticate a connection; the whole exchange is bounded by `timeout`.
    pub async fn connect(
        target: Arc<ServerTarget>,
        timeout: Duration,
    ) -> Result<Self, BackendError> {
        let server = target.describe();
        match tokio::time::timeout(timeout, Self::connect_inner(target)).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::ConnectTimeout {
                server,
                after: timeout,
            }),
        }
    }

    async fn connect_inner(target: Arc<ServerTarget>) -> Result<Self, BackendError> {
        let server = target.describe();
        let stream = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| BackendError::Connect {
                server: server.clone(),
                cause: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let mut conn = ServerConn {
            id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
            target: target.clone(),
            reader: FrameReader::new(rd, MAX_SERVER_FRAME),
            writer: wr,
            backend_pid: 0,
            backend_secret: 0,
            params: HashMap::new(),
            custom_params: Vec::new(),
            aligned_to: None,
            prepared: PreparedOnServer::default(),
            unnamed: None,
            created: Instant::now(),
            last_used: Instant::now(),
        };
        conn.startup().await?;
        Ok(conn)
    }

    fn lost(&self, e: impl std::fmt::Display) -> BackendError {
        BackendError::Lost {
            server: self.target.describe(),
            cause: e.to_string(),
        }
    }

    fn protocol_error(&self, cause: impl Into<String>) -> BackendError {
        BackendError::Protocol {
            server: self.target.describe(),
            cause: cause.into(),
        }
    }

    async fn send(&mut self, buf: &[u8]) -> Result<(), BackendError> {
        self.writer.write_all(buf).await.map_err(|e| self.lost(e))
    }

    async fn recv(&mut self) -> Result<BytesMut, BackendError> {
        match self.reader.next().await {
            Ok(f) => Ok(f),
            Err(FrameError::Closed) => Err(self.lost("server closed the connection")),
            Err(e) => Err(self.lost(e)),
        }
    }

    async fn startup(&mut self) -> Result<(), BackendError> {
        let mut out = BytesMut::new();
        out.put_i32(0);
        out.put_i32(PROTOCOL_3_0);
        for (k, v) in [
            ("user", self.target.user.as_str()),
            ("database", self.target.database.as_str()),
            ("application_name", "shardwire"),
        ] {
            out.put_slice(k.as_bytes());
            out.put_u8(0);
            out.put_slice(v.as_bytes());
            out.put_u8(0);
        }
        out.put_u8(0);
        let len = out.len() as i32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        self.send(&out).await?;

        let mut scram: Option<ScramSha256> = None;
        loop {
            let frame = self.recv().await?;
            let body = protocol::body(&frame);
            match frame[0] {
                be::AUTHENTICATION => {
                    let mut r = BodyReader::new(body, "Authentication");
                    let code = r.i32().map_err(|e| self.protocol_error(e.to_string()))?;
                    match code {
                        0 => {}
                        3 => {
                            let pw = self.password()?;
                            self.send_password(pw.as_bytes()).await?;
                        }
                        5 => {
                            let salt: [u8; 4] = r
                                .bytes(4)
                                .ok()
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| self.protocol_error("short md5 salt"))?;
                            let pw = self.password()?;
                            let hash = postgres_protocol::authentication::md5_hash(
                                self.target.user.as_bytes(),
                                pw.as_bytes(),
                                salt,
                            );
                            self.send_password(hash.as_bytes()).await?;
                        }
                        10 => {
                            let mut mechanisms = Vec::new();
                            while let Ok(m) = r.cstr() {
                                if m.is_empty() {
                                    break;
                                }
                                mechanisms.push(m.to_string());
                            }
                            if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                                return Err(self.protocol_error(format!(
                                    "server offers only SASL mechanisms {mechanisms:?}"
                                )));
                            }
                            let pw = self.password()?;
                            let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                            let mut out = BytesMut::new();
                            let at = protocol::begin_frame(&mut out, fe::PASSWORD);
                            out.put_slice(b"SCRAM-SHA-256\0");
                            out.put_i32(s.message().len() as i32);
                            out.put_slice(s.message());
                            protocol::finish_frame(&mut out, at);
                            self.send(&out).await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| self.protocol_error("SASL continue before start"))?;
                            s.update(r.remaining())
                                .map_err(|e| BackendError::Protocol {
                                    server: self.target.describe(),
                                    cause: format!("SCRAM: {e}"),
                                })?;
                            let msg = s.message().to_vec();
                            let mut out = BytesMut::new();
                            let at = protocol::begin_frame(&mut out, fe::PASSWORD);
                            out.put_slice(&msg);
                            protocol::finish_frame(&mut out, at);
                            self.send(&out).await?;
                        }
                        12 => {
                            let mut s = scram
                                .take()
                                .ok_or_else(|| self.protocol_error("SASL final before start"))?;
                            s.finish(r.remaining())
                                .map_err(|e| BackendError::Protocol {
                                    server: self.target.describe(),
                                    cause: format!("SCRAM server signature invalid: {e}"),
                                })?;
                        }
                        other => {
                            return Err(self.protocol_error(format!(
                                "unsupported authentication request {other}"
                            )))
                        }
                    }
                }
                be::PARAMETER_STATUS => self.note_parameter(body),
                be::BACKEND_KEY_DATA => {
                    let mut r = BodyReader::new(body, "BackendKeyData");
                    self.backend_pid = r.i32().unwrap_or(0);
                    self.backend_secret = r.i32().unwrap_or(0);
                }
                be::ERROR_RESPONSE => {
                    let fields = protocol::error_fields(body);
                    let get = |c: u8| {
                        fields
                            .iter()
                            .find(|(k, _)| *k == c)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    return Err(BackendError::Rejected {
                        server: self.target.describe(),
                        message: get(b'M'),
                        code: get(b'C'),
                    });
                }
                be::NOTICE_RESPONSE | be::NEGOTIATE_PROTOCOL_VERSION => {}
                be::READY_FOR_QUERY => return Ok(()),
                other => {
                    return Err(self.protocol_error(format!(
                        "unexpected message {:?} during startup",
                        other as char
                    )))
                }
            }
        }
    }

    fn password(&self) -> Result<String, BackendError> {
        self.target
            .password
            .clone()
            .ok_or_else(|| BackendError::Rejected {
                server: self.target.describe(),
                message: format!(
                    "the server asks for a password for user \"{}\" but none is configured",
                    self.target.user
                ),
                code: sqlstate::INVALID_PASSWORD.into(),
            })
    }

    async fn send_password(&mut self, pw: &[u8]) -> Result<(), BackendError> {
        let mut out = BytesMut::new();
        let at = protocol::begin_frame(&mut out, fe::PASSWORD);
        out.put_slice(pw);
        out.put_u8(0);
        protocol::finish_frame(&mut out, at);
        self.send(&out).await
    }

    /// Record a ParameterStatus body (name\0value\0).
    pub fn note_parameter(&mut self, body: &[u8]) {
        let mut r = BodyReader::new(body, "ParameterStatus");
        if let (Ok(k), Ok(v)) = (r.cstr(), r.cstr()) {
            self.set_param(k, v);
        }
    }

    /// Record a parameter's value on this connection.
    pub fn set_param(&mut self, k: &str, v: &str) {
        self.aligned_to = None;
        self.params.insert(k.to_string(), v.to_string());
    }

    /// The settings the proxy made that the server does not report are
    /// gone (RESET ALL, DISCARD ALL): forget them.
    /// What a read-back of this session's settings found after a client
    /// changed them (session::settings): `now` is every setting the session
    /// holds beyond the pool's defaults, `client` the client's whole set,
    /// which the connection now agrees with. Each of `now` is reset for a
    /// next client that does not want it; what is not in `now` any more
    /// (RESET) is forgotten.
    pub fn note_session_settings(
        &mut self,
        now: &std::collections::BTreeMap<String, String>,
        client: &ParamSet,
    ) {
        for k in std::mem::take(&mut self.custom_params) {
            if !now.contains_key(&k) {
                self.params.remove(&k);
            }
        }
        for (k, v) in now {
            self.params.insert(k.clone(), v.clone());
            self.custom_params.push(k.clone());
        }
        self.aligned_to = Some(client.clone());
    }

    pub fn forget_custom_params(&mut self) {
        self.aligned_to = None;
        for k in std::mem::take(&mut self.custom_params) {
            self.params.remove(&k);
        }
    }

    /// Run proxy-internal SQL (for example SETs that align session
    /// parameters) and wait for ReadyForQuery. Nothing reaches the client.
    pub async fn run_internal(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<(), InternalError> {
        match tokio::time::timeout(timeout, self.run_internal_inner(sql)).await {
            Ok(r) => r,
            Err(_) => Err(InternalError::Backend(
                self.lost(format!("no answer to an internal query within {timeout:?}")),
            )),
        }
    }

    async fn run_internal_inner(&mut self, sql: &str) -> Result<(), InternalError> {
        let mut out = BytesMut::new();
        protocol::query_frame(&mut out, sql);
        self.send(&out).await?;
        self.unnamed = None;
        let mut error = None;
        loop {
            let frame = self.recv().await?;
            match frame[0] {
                be::PARAMETER_STATUS => self.note_parameter(protocol::body(&frame)),
                be::ERROR_RESPONSE => {
                    error = Some(protocol::error_fields(protocol::body(&frame)));
                }
                be::READY_FOR_QUERY => {
                    let status = TxStatus::of_ready(&frame);
                    return match error {
                        Some(fields) => Err(InternalError::Sql(fields)),
                        None if status != TxStatus::Idle => Err(InternalError::Backend(
                            self.protocol_error("internal query left a transaction open"),
                        )),
                        None => Ok(()),
                    };
                }
                _ => {}
            }
        }
    }

    /// Run a simple query the proxy sends on its own and collect what the
    /// server answers, up to ReadyForQuery: every frame but ParameterStatus
    /// (noted) and ReadyForQuery, the first ErrorResponse apart. At most
    /// `limit` bytes of frames are kept; past that the rest is read and
    /// dropped (`overflow`), so the connection stays usable. Unlike
    /// `run_internal`, a transaction may stay open (`status`).
    pub async fn run_collect(
        &mut self,
        sql: &str,
        timeout: Duration,
        limit: usize,
    ) -> Result<Collected, BackendError> {
        let mut out = BytesMut::new();
        protocol::query_frame(&mut out, sql);
        match tokio::time::timeout(timeout, async {
            self.send(&out).await?;
            self.collect_until_ready(limit).await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(self.lost(format!("no answer to a query within {timeout:?}"))),
        }
    }

    /// Read frames up to ReadyForQuery (see `run_collect`), within `timeout`.
    pub async fn collect_within(
        &mut self,
        timeout: Duration,
        limit: usize,
    ) -> Result<Collected, BackendError> {
        match tokio::time::timeout(timeout, self.collect_until_ready(limit)).await {
            Ok(r) => r,
            Err(_) => Err(self.lost(format!("no answer to a query within {timeout:?}"))),
        }
    }

    /// Read frames up to ReadyForQuery (see `run_collect`).
    pub async fn collect_until_ready(&mut self, limit: usize) -> Result<Collected, BackendError> {
        self.unnamed = None;
        let mut c = Collected::default();
        let mut size = 0usize;
        loop {
            let frame = self.recv().await?;
            match frame[0] {
                be::PARAMETER_STATUS => self.note_parameter(protocol::body(&frame)),
                be::ERROR_RESPONSE => {
                    if c.error.is_none() {
                        c.error = Some(frame);
                    }
                }
                be::READY_FOR_QUERY => {
                    c.status = TxStatus::of_ready(&frame);
                    return Ok(c);
                }
                be::COPY_IN_RESPONSE | be::COPY_OUT_RESPONSE | be::COPY_BOTH_RESPONSE => {
                    // The caller drops the connection.
                    return Err(self.protocol_error("unexpected COPY in a proxy query"));
                }
                _ => {
                    size += frame.len();
                    if size > limit {
                        c.overflow = true;
                    } else {
                        c.frames.push(frame);
                    }
                }
            }
        }
    }

    /// Send raw bytes (frames the caller built) to the server.
    pub async fn send_frames(&mut self, buf: &[u8], timeout: Duration) -> Result<(), BackendError> {
        match tokio::time::timeout(timeout, self.send(buf)).await {
            Ok(r) => r,
            Err(_) => Err(self.lost(format!("could not write within {timeout:?}"))),
        }
    }

    /// The next frame from the server, however long it takes. Cancel-safe
    /// (wrap it in a timeout to wait for something unsolicited, such as a
    /// NOTIFY, without losing the connection when nothing comes).
    pub async fn next_frame(&mut self) -> Result<BytesMut, BackendError> {
        self.recv().await
    }

    /// The next frame from the server, within `timeout`.
    pub async fn recv_frame(&mut self, timeout: Duration) -> Result<BytesMut, BackendError> {
        match tokio::time::timeout(timeout, self.recv()).await {
            Ok(r) => r,
            Err(_) => Err(self.lost(format!("no answer within {timeout:?}"))),
        }
    }

    /// Whether the server has closed this idle connection (or sent something
    /// unsolicited, such as a FATAL on shutdown), checked without blocking.
    pub fn is_broken(&mut self) -> bool {
        if self.reader.buffered() > 0 {
            return true;
        }
        let mut probe = [0u8; 1];
        !matches!(
            self.reader.get_ref().try_read(&mut probe),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }
}

/// Failure of a proxy-internal query.
#[derive(Debug)]
pub enum InternalError {
    /// The server answered with an error (its fields, passed to the client).
    Sql(Vec<(u8, String)>),
    Backend(BackendError),
}

impl From<BackendError> for InternalError {
    fn from(e: BackendError) -> Self {
        InternalError::Backend(e)
    }
}

/// A server's answer to a proxy-sent simple query (see `run_collect`).
#[derive(Debug, Default)]
pub struct Collected {
    /// Frames in order, without ParameterStatus, ErrorResponse and
    /// ReadyForQuery.
    pub frames: Vec<BytesMut>,
    /// The first ErrorResponse frame.
    pub error: Option<BytesMut>,
    /// Transaction status of the final ReadyForQuery.
    pub status: TxStatus,
    /// More than the limit was answered; frames past it were dropped.
    pub overflow: bool,
}

impl Collected {
    /// The first column of the first row, as text.
    pub fn first_value(&self) -> Option<String> {
        let row = self.frames.iter().find(|f| f[0] == be::DATA_ROW)?;
        protocol::first_text_value(row)
    }
}

/// How long the proxy's own statements on a server (parameter alignment,
/// DISCARD ALL) may take.
pub const INTERNAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Bring a server's session parameters in line with what the client wants,
/// in one round trip, and adopt the server's canonical spelling of each
/// value (so "ISO" becomes "ISO, MDY" and is not set again next time).
///
/// This runs at every checkout, and almost always finds nothing to do: a
/// server remembers the set it was last aligned to, so that case costs a
/// pointer comparison (or one map comparison, after which the client shares
/// the server's copy and the next time is a pointer comparison again).
pub async fn sync_params(conn: &mut ServerConn, wanted: &mut ParamSet) -> Result<(), PgError> {
    if params_aligned(conn, wanted) {
        return Ok(());
    }
    // Settings another client asked for that this one did not: back to
    // defaults, first (RESET role would undo a role set below).
    let mut sql = String::new();
    let (keep, reset): (Vec<String>, Vec<String>) = std::mem::take(&mut conn.custom_params)
        .into_iter()
        .partition(|k| wanted.contains_key(k));
    conn.custom_params = keep;
    for k in reset {
        sql.push_str(&format!("RESET {};", protocol::quote_ident(&k)));
        conn.params.remove(&k);
    }
    // set_config takes a value as SHOW prints it: a list (search_path
    // "a, b") stays a list, where SET with one quoted literal would make it
    // one quoted name.
    let mut sets = Vec::new();
    for (k, v) in wanted.iter() {
        if conn.params.get(k) != Some(v) {
            sets.push(format!(
                "pg_catalog.set_config({}, {}, false)",
                protocol::quote_literal(k),
                protocol::quote_literal(v)
            ));
        }
    }
    if !sets.is_empty() {
        sql.push_str("SELECT ");
        sql.push_str(&sets.join(", "));
    }
    if sql.is_empty() {
        conn.aligned_to = Some(wanted.clone());
        return Ok(());
    }
    match conn.run_internal(&sql, INTERNAL_TIMEOUT).await {
        Ok(()) => {
            // Copied only when the server spelled a value its own way.
            let canonical = wanted
                .iter()
                .any(|(k, v)| conn.params.get(k).is_some_and(|r| r != v));
            if canonical {
                for (k, v) in Arc::make_mut(wanted).iter_mut() {
                    if let Some(reported) = conn.params.get(k) {
                        *v = reported.clone();
                    }
                }
            }
            for (k, v) in wanted.iter() {
                // Not reported by the server (not GUC_REPORT): we know it now.
                if !conn.params.contains_key(k) {
                    conn.params.insert(k.clone(), v.clone());
                    if !conn.custom_params.contains(k) {
                        conn.custom_params.push(k.clone());
                    }
                }
            }
            conn.aligned_to = Some(wanted.clone());
            Ok(())
        }
        Err(InternalError::Sql(fields)) => {
            let msg = fields
                .iter()
                .find(|(c, _)| *c == b'M')
                .map(|(_, m)| m.clone())
                .unwrap_or_default();
            Err(PgError::error(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("invalid session parameter: {msg}"),
            ))
        }
        Err(InternalError::Backend(e)) => Err(e.to_pg()),
    }
}

/// Whether the server's parameters already are the client's; then the
/// client shares the server's copy of the set, so that next time a pointer
/// comparison tells.
fn params_aligned(conn: &ServerConn, wanted: &mut ParamSet) -> bool {
    match &conn.aligned_to {
        Some(aligned) if Arc::ptr_eq(aligned, wanted) => true,
        Some(aligned) if **aligned == **wanted => {
            *wanted = aligned.clone();
            true
        }
        _ => false,
    }
}

/// [`sync_params`] for the checkout of every transaction: the usual case,
/// nothing to do, is decided before building (and copying) its future.
pub async fn align_params(conn: &mut ServerConn, wanted: &mut ParamSet) -> Result<(), PgError> {
    if params_aligned(conn, wanted) {
        return Ok(());
    }
    Box::pin(sync_params(conn, wanted)).await
}

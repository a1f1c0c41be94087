//! One client session after login: the loop that moves frames between the
//! client and the backend connection serving it, and the state that lets
//! transaction pooling stay invisible to the client.
//!
//! The loop is full duplex: it reads the client and the server and writes to
//! both as each side allows, with bounded buffers in each direction. That
//! keeps pipelining clients from deadlocking the proxy (the proxy never
//! blocks writing to a server that is itself blocked writing results back)
//! and bounds memory per session.
//!
//! Three pieces of state make pooling transparent:
//! - `pending`: what the server owes us, in order (one entry per request
//!   sent), plus responses the proxy produces itself (ParseComplete for a
//!   statement the server already has, CloseComplete for a client's named
//!   statement). It decides what is forwarded, what is swallowed, when an
//!   error skips to Sync, and when the server can go back to the pool.
//! - `statements`: the client's named prepared statements, re-created on
//!   whichever server serves the client, only where missing.
//! - `wanted_params`: the client's session parameters (client_encoding,
//!   DateStyle, application_name, ...) applied to each server at checkout.

mod bind;
mod catalog;
mod copysplit;
mod fence;
mod lanes;
mod multi;
mod multiext;
mod multitx;
mod portal;
mod reads;
mod scatter;
pub mod statements;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::Instrument;

use crate::backend::cancel::CancelSlot;
pub use crate::backend::conn::sync_params;
use crate::backend::conn::{align_params, ParamSet, INTERNAL_TIMEOUT};
use crate::backend::{ParkSlot, Pool, PooledConn, ServerConn};
use crate::config::{Config, PoolMode};
use crate::protocol::reader::{frame_len, FrameError};
use crate::protocol::TxStatus;
use crate::protocol::{self, be, fe, sqlstate, BodyReader, FrameReader, PgError};
use crate::proxy::Proxy;
use crate::router::control::{self, server_state_reset, HintVar, ProxyCommand, TxControl};
use crate::router::{Route, Router, SessionHints};
use crate::stats::clients::{Admission, ClientState, Registration};
use crate::stats::metrics::{RouteKind, RouteStats};
use statements::{rebuild, rename_bind, split_name, ParamTypes, Statements};

/// Bytes buffered toward one side before the proxy stops reading the other
/// side (backpressure), and the point at which a partial batch (COPY data)
/// is flushed to the server.
const HIGH_WATER: usize = 64 * 1024;

/// Session parameters that servers report (GUC_REPORT) and clients may set;
/// they follow the client from server to server.
const TRACKED_PARAMS: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
    "search_path",
    "default_transaction_read_only",
];

/// Whether a session parameter follows the client from server to server.
pub fn is_tracked(name: &str) -> bool {
    TRACKED_PARAMS.iter().any(|t| t.eq_ignore_ascii_case(name))
}

/// How long a server has to answer the cancel the proxy sent for a
/// statement over `limits.statement_timeout` before the proxy gives up on
/// the connection.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Longest SQL text written to the slow-statement log.
const SLOW_LOG_SQL_MAX: usize = 2000;

/// Gives each unnamed Parse an identity, so the proxy can tell whether a
/// server's unnamed statement is still the one this client created.
static NEXT_UNNAMED_ID: AtomicU64 = AtomicU64::new(1);

/// Where `failed_tx_gate` sends a client message.
enum FailedTx {
    /// Routed as usual: no transaction has failed.
    Route,
    /// To the held server as it is: its transaction has failed.
    AsIs,
    /// Answered already (or skipped).
    Answered,
}

/// What a server response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    ParseComplete,
    BindComplete,
    /// Describe: ends with RowDescription or NoData.
    Description,
    /// Execute: ends with CommandComplete, EmptyQueryResponse or PortalSuspended.
    ExecuteDone,
    CloseComplete,
    /// Sync, Query or FunctionCall: ends with ReadyForQuery.
    Ready,
}

impl Expect {
    fn ended_by(self, tag: u8) -> bool {
        match self {
            Expect::ParseComplete => tag == be::PARSE_COMPLETE,
            Expect::BindComplete => tag == be::BIND_COMPLETE,
            Expect::Description => tag == be::ROW_DESCRIPTION || tag == be::NO_DATA,
            Expect::ExecuteDone => matches!(
                tag,
                be::COMMAND_COMPLETE | be::EMPTY_QUERY_RESPONSE | be::PORTAL_SUSPENDED
            ),
            Expect::CloseComplete => tag == be::CLOSE_COMPLETE,
            Expect::Ready => tag == be::READY_FOR_QUERY,
        }
    }
}

/// A statement a Parse creates on the server, forgotten again if it fails.
#[derive(Debug)]
enum Creates {
    Named(Arc<str>),
    Unnamed,
}

#[derive(Debug)]
enum Pending {
    /// A request sent to the server; `forward` says whether the client sees
    /// the response (false for statements the proxy injected).
    Request {
        expect: Expect,
        forward: bool,
        creates: Option<Creates>,
        /// A client statement (Query or Execute): when it was sent, and its
        /// SQL when the slow-statement log is on.
        timing: Option<Timing>,
        /// The proxy's `pg_current_wal_insert_lsn()` after a write: its
        /// DataRow is read-your-writes' position (see reads.rs).
        lsn_probe: bool,
        /// A Describe of a client statement: its ParameterDescription tells
        /// the statement's parameter types (for routing its Binds).
        describes: Option<Arc<ParamTypes>>,
    },
    /// A response the proxy makes itself, emitted when it reaches the head.
    Synthetic(u8),
    /// A whole message the proxy makes itself (an error, CommandComplete).
    SyntheticFrame(Bytes),
    /// ReadyForQuery with the status the client sees when it is emitted.
    SyntheticReady,
    /// The answer to `SHOW shardwire.causal_token`, rendered when it
    /// reaches the head (after any LSN probe sent before it).
    CausalToken,
    /// A statement of invalid SQL the proxy sent to make the server fail
    /// as the client's statement would have, after the proxy refused that
    /// statement (see `refuse`): a Parse fails the extended batch (and its
    /// transaction), a Query the transaction block. Its ErrorResponse is
    /// swallowed.
    Abort,
}

/// When a client statement was sent, for its latency metric and the slow log.
#[derive(Debug)]
struct Timing {
    started: Instant,
    sql: Option<Arc<str>>,
    /// The statement may go to lanes if this run is fast (lanes.rs).
    lane_trial: Option<Arc<statements::Statement>>,
}

/// What the session's deadline timer is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    /// `limits.statement_timeout` of the oldest running statement.
    Statement,
    /// The server did not answer the proxy's cancel within CANCEL_GRACE.
    CancelIgnored,
    /// `limits.idle_in_transaction_timeout`.
    IdleInTransaction,
}

/// Why a session ended (for the log).
#[derive(Debug)]
pub enum SessionEnd {
    ClientTerminated,
    ClientGone(String),
    ServerLost(String),
    ProtocolViolation(String),
    Shutdown,
    IdleInTransactionTimeout,
}

/// Everything a session needs from the proxy, fixed at login.
pub struct SessionSetup {
    pub proxy: Arc<Proxy>,
    /// The config the login used; the session moves to newer ones between
    /// transactions.
    pub config: Arc<Config>,
    /// The client's entry in the registry (SHOW CLIENTS, user limits).
    pub registration: Registration,
    /// Other servers of each shard, for reads (empty when reads stay on
    /// primaries).
    pub replicas: Vec<Vec<crate::backend::ReplicaPool>>,
    pub read_from: crate::config::ReadFrom,
    pub user: String,
    pub database: String,
    /// The primary pool of each shard, by shard index.
    pub pools: Vec<Arc<Pool>>,
    pub default_shard: usize,
    /// Routing rules; statements are routed only when it has tables.
    pub router: Arc<Router>,
    pub pool_mode: PoolMode,
    pub max_prepared_per_server: usize,
    /// Parameters to apply on every server (canonicalized at login).
    pub wanted_params: ParamSet,
    pub cancel: Arc<CancelSlot>,
    pub shutdown: watch::Receiver<bool>,
    /// Session pooling: the server checked out at login.
    pub server: Option<PooledConn>,
}

pub struct Session<R, W> {
    proxy: Arc<Proxy>,
    config: Arc<Config>,
    /// The proxy's config and health generations `config` and `pools`
    /// belong to.
    config_generation: (u64, u64),
    client: Registration,
    paused: watch::Receiver<bool>,
    /// The last value read from `paused` (see `is_paused`).
    paused_now: bool,
    /// How statements on the held server were routed (for metrics).
    route_kind: RouteKind,
    /// Metric series by shard index and route kind, filled on first use.
    route_stats: Vec<[Option<Arc<RouteStats>>; RouteKind::ALL.len()]>,
    /// An ErrorResponse ended the client statement at the head of `pending`.
    request_failed: bool,
    /// SQL of the statement of the last Bind (the slow log of Executes).
    bound_sql: Option<Arc<str>>,
    /// The statement of the last Bind, while it is on trial for lanes.
    lane_trial: Option<Arc<statements::Statement>>,
    /// The lane this session's lane batches go to (lanes.rs).
    lane: Option<Arc<crate::backend::lane::Lane>>,
    /// Fires at the next deadline (statement or idle-in-transaction
    /// timeout); armed only when one applies.
    timer: Pin<Box<tokio::time::Sleep>>,
    timer_at: Option<Instant>,
    /// When the proxy cancelled the running statement (statement timeout).
    cancelled_at: Option<Instant>,
    /// The held server must not return to the pool: a cancel the proxy sent
    /// might still reach whatever it runs next.
    discard_server: bool,
    /// Last time the client sent something (idle-in-transaction timeout).
    last_client_input: Instant,
    /// Replica pools by shard (reads.rs).
    replicas: Vec<Vec<crate::backend::ReplicaPool>>,
    read_from: crate::config::ReadFrom,
    /// Per shard: WAL position of the session's last write (0: none).
    written_lsn: Vec<u64>,
    /// Per shard: when the session last wrote (primary_after_write).
    written_at: Vec<Option<Instant>>,
    /// Per shard: a write whose position is not known yet (resolved when
    /// the causal token is asked for).
    unresolved_writes: Vec<bool>,
    /// The transaction on the held primary wrote (or may have).
    tx_wrote: bool,
    /// The next checkout is for a read that may go to a replica.
    next_read: Option<crate::config::ReadFrom>,
    /// The held server is not its shard's primary (a read runs on it).
    on_replica: bool,
    read_stats: Vec<reads::ReadStats>,
    /// The frames of the read a replica is running (a Query, or an
    /// extended batch through its Sync), to run again elsewhere if the
    /// replica dies before answering.
    replica_read: Option<Vec<BytesMut>>,
    replica_answered: bool,
    /// A read to run again (see `lose_server`).
    retry_read: Option<Vec<BytesMut>>,
    /// The replica's answer so far, not yet given to the client.
    replica_hold: BytesMut,
    /// The held extended batch so far is made of reads of this shard that
    /// may go to a replica (decided at its Sync).
    held_read: Option<(usize, RouteKind, crate::config::ReadFrom)>,
    /// The held batch has something that is not such a read.
    held_mixed: bool,
    /// Frames being run again after a replica was lost: not counted twice.
    replaying: bool,
    setup_user: String,
    setup_database: String,
    client_id: u64,
    pools: Vec<Arc<Pool>>,
    default_shard: usize,
    router: Arc<Router>,
    /// The router has tables: statements are routed to shards.
    routing: bool,
    /// The shard of the held server.
    server_shard: usize,
    /// `SET shardwire.shard` / `shardwire.shard_key`.
    hints: SessionHints,
    /// A BEGIN the client sent that no shard has seen yet: it goes to the
    /// shard of the transaction's first statement.
    deferred_begin: Option<Bytes>,
    /// A statement of the deferred transaction failed before any server
    /// saw the BEGIN (the proxy refused it): the client's transaction is
    /// aborted with no server holding it (see `failed_tx_gate`).
    deferred_failed: bool,
    /// The proxy sent the held server a statement that fails on purpose
    /// (`abort_server_tx`, `Pending::Abort`) and has maybe not seen its
    /// ReadyForQuery yet, so `tx_status` may be stale: the next routed
    /// statement first waits for the server's answers.
    abort_in_flight: bool,
    /// Extended-protocol messages held until their batch is routed (only
    /// while no server is held).
    held: Vec<BytesMut>,
    /// The SQL of the client's unnamed statement.
    unnamed_sql: Option<Arc<str>>,
    /// The parameter types of the client's unnamed statement.
    unnamed_types: Option<Arc<ParamTypes>>,
    pool_mode: PoolMode,
    max_prepared_per_server: usize,
    cancel: Arc<CancelSlot>,
    shutdown: watch::Receiver<bool>,
    shutting_down: bool,

    client_rd: FrameReader<R>,
    client_wr: W,
    /// Bytes on their way to the client.
    client_out: BytesMut,
    /// Written to the client stream but maybe still buffered in it (TLS
    /// keeps records until flushed).
    client_unflushed: bool,

    server: Option<PooledConn>,
    /// Where the server of the last transaction waits for the next one
    /// (transaction pooling; see backend::pool).
    park: Option<Arc<ParkSlot>>,
    /// Bytes on their way to the server; only `..server_flush_upto` is
    /// written (a batch is held until it is complete).
    server_out: BytesMut,
    server_flush_upto: usize,
    pending: VecDeque<Pending>,
    /// After an error in the extended protocol, messages up to Sync are
    /// dropped (the server would discard them anyway).
    skip_until_sync: bool,
    /// Last transaction status reported to the client.
    tx_status: TxStatus,
    /// The client is streaming COPY data.
    copy_in: bool,
    /// The server is in COPY FROM STDIN and the client has not sent CopyDone
    /// or CopyFail yet: the server ignores the Syncs it reads meanwhile.
    copy_open: bool,

    statements: Statements,
    /// The client's last unnamed Parse (its identity and frame), re-sent to a
    /// server that does not hold it.
    unnamed: Option<(u64, Bytes)>,
    wanted_params: ParamSet,
    /// Scratch buffer for rewritten frames.
    scratch: BytesMut,
    /// A transaction over several shards (see multitx.rs).
    multi: Option<multitx::MultiTx>,
    /// An extended-protocol portal that runs on several shards (portal.rs).
    portal: Option<portal::ScatterPortal>,
    /// The bound portal of a transaction over several shards (multiext.rs).
    multi_portal: Option<multiext::MultiPortal>,
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub fn new(setup: SessionSetup, client_rd: FrameReader<R>, client_wr: W) -> Self {
        let server = setup.server;
        // Replica reads need every statement classified, tables or not.
        let routing = setup.router.tables().next().is_some()
            || setup.read_from != crate::config::ReadFrom::Primary;
        let shards = setup.pools.len();
        let shutting_down = *setup.shutdown.borrow();
        let mut s = Session {
            replicas: setup.replicas,
            read_from: setup.read_from,
            written_lsn: vec![0; shards],
            written_at: vec![None; shards],
            unresolved_writes: vec![false; shards],
            tx_wrote: false,
            next_read: None,
            on_replica: false,
            read_stats: vec![Default::default(); shards],
            replica_read: None,
            replica_answered: false,
            retry_read: None,
            replica_hold: BytesMut::new(),
            held_read: None,
            held_mixed: false,
            replaying: false,
            config_generation: setup.proxy.topology_generation(),
            paused: setup.proxy.paused(),
            paused_now: false,
            proxy: setup.proxy,
            config: setup.config,
            client_id: setup.registration.info.id,
            client: setup.registration,
            route_kind: RouteKind::Default,
            route_stats: vec![Default::default(); shards],
            request_failed: false,
            bound_sql: None,
            lane_trial: None,
            lane: None,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            timer_at: None,
            cancelled_at: None,
            discard_server: false,
            last_client_input: Instant::now(),
            setup_user: setup.user,
            setup_database: setup.database,
            routing,
            pools: setup.pools,
            server_shard: setup.default_shard,
            default_shard: setup.default_shard,
            router: setup.router,
            hints: SessionHints::default(),
            deferred_begin: None,
            deferred_failed: false,
            abort_in_flight: false,
            held: Vec::new(),
            unnamed_sql: None,
            unnamed_types: None,
            pool_mode: setup.pool_mode,
            max_prepared_per_server: setup.max_prepared_per_server,
            cancel: setup.cancel,
            shutdown: setup.shutdown,
            shutting_down,
            client_rd,
            client_wr,
            client_out: BytesMut::with_capacity(16 * 1024),
            client_unflushed: false,
            server: None,
            park: None,
            server_out: BytesMut::with_capacity(4 * 1024),
            server_flush_upto: 0,
            pending: VecDeque::new(),
            skip_until_sync: false,
            tx_status: TxStatus::Idle,
            copy_in: false,
            copy_open: false,
            statements: Statements::default(),
            unnamed: None,
            wanted_params: setup.wanted_params,
            scratch: BytesMut::new(),
            multi: None,
            portal: None,
            multi_portal: None,
        };
        s.paused_now = *s.paused.borrow_and_update();
        if let Some(conn) = server {
            s.attach(conn);
        }
        s
    }

    /// Run until the client leaves, the server is lost, or shutdown.
    pub async fn run(mut self) -> SessionEnd {
        let end = self.run_loop().await;
        // Best effort: deliver what is buffered (errors, the last results).
        let out = std::mem::take(&mut self.client_out);
        let wr = &mut self.client_wr;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            wr.write_all(&out).await?;
            wr.flush().await
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client_wr.shutdown()).await;
        if let Some(mut conn) = self.server.take() {
            self.cancel.clear();
            // Only a server with nothing in flight goes back to the pool; in
            // session pooling, only after the session's state is discarded.
            if self.is_idle()
                && !self.discard_server
                && (self.pool_mode == PoolMode::Transaction || discard_session(&mut conn).await)
            {
                conn.release();
            }
        }
        self.release_parked();
        self.client.info.set_state(ClientState::Idle);
        end
    }

    async fn run_loop(&mut self) -> SessionEnd {
        loop {
            // 1. Everything the server already sent; a server that is done
            // goes back now, so the client's next statement is routed
            // afresh (to a replica, say) rather than to the held server.
            if let Err(end) = self.drain_server_frames() {
                return end;
            }
            self.maybe_release();
            // A read whose replica died before answering: run it again.
            if let Some(frames) = self.retry_read.take() {
                self.replaying = true;
                for f in frames {
                    if let Err(end) = self.on_client_frame(f).await {
                        return end;
                    }
                }
                self.replaying = false;
            }
            // 2. Everything the client already sent.
            if let Err(end) = self.drain_client_frames().await {
                return end;
            }
            // 3. Back to the pool at the end of a transaction.
            self.maybe_release();
            // 4. Most writes complete at once: done here, they save a
            // pass through wait_io per message.
            match self.write_now() {
                Err(end) => return end,
                // Frames held back while a buffer was full can go now.
                Ok(true) if self.frames_waiting() => continue,
                Ok(_) => {}
            }
            if self.retry_read.is_some() {
                continue; // the write found the replica gone: run the read again
            }
            // 5. A pending shutdown ends the session once it is idle.
            if self.shutting_down && self.is_idle() {
                PgError::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    "terminating connection due to administrator command",
                )
                .with_detail("shardwire is shutting down")
                .encode(&mut self.client_out);
                return SessionEnd::Shutdown;
            }
            // 6. Wait for I/O.
            if let Err(end) = self.wait_io().await {
                return end;
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.pending.is_empty()
            && self.server_out.is_empty()
            && self.tx_status == TxStatus::Idle
            && !self.copy_in
            && !self.skip_until_sync
    }

    async fn wait_io(&mut self) -> Result<(), SessionEnd> {
        enum Event {
            /// Bytes written to the client, or 0 after a flush.
            ClientWrote(std::io::Result<usize>),
            ServerWrote(std::io::Result<usize>),
            ServerRead(Result<usize, FrameError>),
            ClientRead(Result<usize, FrameError>),
            Shutdown,
            Deadline,
        }
        let read_server = self.client_out.len() < HIGH_WATER;
        let read_client = self.server_out.len() < HIGH_WATER;
        let write_server = self.server_flush_upto > 0;
        let write_client = !self.client_out.is_empty();
        let flush_client = self.client_unflushed && !write_client;
        // A shutdown ends only an idle session (see `run_loop`), so the
        // signal is watched only then. A busy session sees it at its first
        // idle wait.
        let watch_shutdown = !self.shutting_down && self.is_idle();
        let deadline = self.next_deadline();
        let at = deadline.map(|(at, _)| at);
        if at != self.timer_at {
            if let Some(at) = at {
                self.timer.as_mut().reset(at.into());
            }
            self.timer_at = at;
        }
        // One hand-written future over everything worth waiting for, in
        // this order: it is built at every wait, and a select! of async
        // blocks would build (and poll) a future per stream.
        let client_wr = &mut self.client_wr;
        let client_out = &self.client_out;
        let client_rd = &mut self.client_rd;
        let mut server = self.server.as_deref_mut();
        let server_bytes = &self.server_out[..self.server_flush_upto];
        let shutdown_waker = &self.client.info.shutdown_waker;
        let shutdown = &self.shutdown;
        let timer = &mut self.timer;
        let event = std::future::poll_fn(|cx| {
            if write_client {
                match Pin::new(&mut *client_wr).poll_write(cx, client_out) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Event::ClientWrote(Err(
                            std::io::ErrorKind::WriteZero.into()
                        )))
                    }
                    Poll::Ready(r) => return Poll::Ready(Event::ClientWrote(r)),
                    Poll::Pending => {}
                }
            } else if flush_client {
                if let Poll::Ready(r) = Pin::new(&mut *client_wr).poll_flush(cx) {
                    return Poll::Ready(Event::ClientWrote(r.map(|()| 0)));
                }
            }
            if let Some(s) = server.as_deref_mut() {
                if write_server {
                    match Pin::new(&mut s.writer).poll_write(cx, server_bytes) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Event::ServerWrote(Err(
                                std::io::ErrorKind::WriteZero.into(),
                            )))
                        }
                        Poll::Ready(r) => return Poll::Ready(Event::ServerWrote(r)),
                        Poll::Pending => {}
                    }
                }
                if read_server {
                    if let Poll::Ready(r) = s.reader.poll_fill(cx) {
                        return Poll::Ready(Event::ServerRead(r));
                    }
                }
            }
            if read_client {
                if let Poll::Ready(r) = client_rd.poll_fill(cx) {
                    return Poll::Ready(Event::ClientRead(r));
                }
            }
            if watch_shutdown {
                // Registered before the check, so a shutdown that begins
                // in between still wakes us.
                shutdown_waker.register(cx.waker());
                if shutdown.has_changed().unwrap_or(true) {
                    return Poll::Ready(Event::Shutdown);
                }
            }
            if deadline.is_some() && std::future::Future::poll(timer.as_mut(), cx).is_ready() {
                return Poll::Ready(Event::Deadline);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::ClientWrote(Ok(n)) => self.client_wrote(n)?,
            Event::ClientWrote(Err(e)) => return Err(SessionEnd::ClientGone(e.to_string())),
            Event::ServerWrote(Ok(n)) => self.server_wrote(n),
            Event::ServerWrote(Err(e)) => return self.lose_server(e.to_string()),
            Event::ServerRead(Ok(_)) => {}
            Event::ServerRead(Err(e)) => {
                let cause = match e {
                    FrameError::Closed => "the server closed the connection".to_string(),
                    e => e.to_string(),
                };
                return self.lose_server(cause);
            }
            Event::ClientRead(Ok(_)) => {
                if !self.config.limits.idle_in_transaction_timeout.is_zero() {
                    self.last_client_input = Instant::now();
                }
            }
            Event::ClientRead(Err(FrameError::Closed)) => {
                return Err(SessionEnd::ClientGone(
                    "client closed the connection".into(),
                ))
            }
            Event::ClientRead(Err(e)) => return Err(self.client_protocol_error(e.to_string())),
            Event::Shutdown => self.shutting_down = true,
            Event::Deadline => {
                self.timer_at = None;
                if let Some((_, what)) = deadline {
                    self.on_deadline(what).await?;
                }
            }
        }
        Ok(())
    }

    /// Complete frames already read but left unhandled, as the drains do
    /// when their output buffer is full.
    fn frames_waiting(&self) -> bool {
        self.client_rd.has_frame() || self.server.as_deref().is_some_and(|s| s.reader.has_frame())
    }

    /// Write to the server and the client what can be written without
    /// waiting; the rest is left to `wait_io`. Returns whether anything
    /// was written.
    fn write_now(&mut self) -> Result<bool, SessionEnd> {
        let mut wrote = false;
        if self.server_flush_upto > 0 {
            if let Some(s) = self.server.as_deref_mut() {
                let written = match s
                    .writer
                    .try_write(&self.server_out[..self.server_flush_upto])
                {
                    Ok(0) => Err("the server accepts no more data".to_string()),
                    Ok(n) => Ok(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
                    Err(e) => Err(e.to_string()),
                };
                match written {
                    Ok(0) => {}
                    Ok(n) => {
                        self.server_wrote(n);
                        wrote = true;
                    }
                    Err(cause) => {
                        // A lost replica read is run again (retry_read):
                        // nothing more to write now either way.
                        self.lose_server(cause)?;
                        return Ok(false);
                    }
                }
            }
        }
        if !self.client_out.is_empty() {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match Pin::new(&mut self.client_wr).poll_write(&mut cx, &self.client_out) {
                Poll::Ready(Ok(0)) => {
                    return Err(SessionEnd::ClientGone(
                        "the client accepts no more data".into(),
                    ))
                }
                Poll::Ready(Ok(n)) => {
                    self.client_wrote(n)?;
                    wrote = true;
                }
                Poll::Ready(Err(e)) => return Err(SessionEnd::ClientGone(e.to_string())),
                Poll::Pending => {}
            }
        }
        Ok(wrote)
    }

    fn server_wrote(&mut self, n: usize) {
        self.server_out.advance(n);
        self.server_flush_upto -= n;
    }

    fn client_wrote(&mut self, n: usize) -> Result<(), SessionEnd> {
        self.client_out.advance(n);
        self.client_unflushed = n > 0;
        if n > 0 && self.client_out.is_empty() {
            // Plain TCP has nothing to flush: settle it now rather than in
            // one more pass of the loop per response.
            self.try_flush_client()?;
        }
        Ok(())
    }

    /// Flush the client's stream if that completes without waiting (always,
    /// for plain TCP); a flush that would wait is left to `wait_io`.
    fn try_flush_client(&mut self) -> Result<(), SessionEnd> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut self.client_wr).poll_flush(&mut cx) {
            std::task::Poll::Ready(Ok(())) => {
                self.client_unflushed = false;
                Ok(())
            }
            std::task::Poll::Ready(Err(e)) => Err(SessionEnd::ClientGone(e.to_string())),
            std::task::Poll::Pending => Ok(()),
        }
    }

    /// The next timeout that applies now, if any.
    fn next_deadline(&self) -> Option<(Instant, Deadline)> {
        if let Some(at) = self.cancelled_at {
            return Some((at + CANCEL_GRACE, Deadline::CancelIgnored));
        }
        let limits = &self.config.limits;
        if !limits.statement_timeout.is_zero() {
            let running = self.pending.iter().find_map(|p| match p {
                Pending::Request {
                    timing: Some(t), ..
                } => Some(t.started),
                _ => None,
            });
            if let Some(started) = running {
                return Some((started + limits.statement_timeout, Deadline::Statement));
            }
        }
        let in_transaction = self.tx_status != TxStatus::Idle || self.multi.is_some();
        if !limits.idle_in_transaction_timeout.is_zero()
            && in_transaction
            && self.pending.is_empty()
            && (self.server.is_some() || self.multi.is_some())
        {
            return Some((
                self.last_client_input + limits.idle_in_transaction_timeout,
                Deadline::IdleInTransaction,
            ));
        }
        None
    }

    async fn on_deadline(&mut self, what: Deadline) -> Result<(), SessionEnd> {
        match what {
            Deadline::Statement => {
                self.proxy
                    .metrics
                    .statement_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    client = self.client_id,
                    timeout = ?self.config.limits.statement_timeout,
                    "statement timeout: cancelling the statement"
                );
                self.cancelled_at = Some(Instant::now());
                self.discard_server = true;
                self.cancel
                    .cancel_running(self.config.pool.connect_timeout)
                    .await;
                Ok(())
            }
            Deadline::CancelIgnored => Err(self.server_lost(format!(
                "the server did not answer the cancel of a statement over limits.statement_timeout within {CANCEL_GRACE:?}"
            ))),
            Deadline::IdleInTransaction => {
                self.proxy
                    .metrics
                    .idle_in_transaction_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                let e = PgError::fatal(
                    sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                    "terminating connection due to idle-in-transaction timeout",
                )
                .with_detail(format!(
                    "the session was idle in a transaction for longer than limits.idle_in_transaction_timeout ({:?}); the transaction was rolled back",
                    self.config.limits.idle_in_transaction_timeout
                ));
                self.proxy.metrics.error(e.code);
                e.encode(&mut self.client_out);
                Err(SessionEnd::IdleInTransactionTimeout)
            }
        }
    }

    /// The held server's connection broke. A read on a replica that had
    /// not answered anything yet is retried elsewhere (the replica is
    /// banned); anything else ends the session.
    fn lose_server(&mut self, cause: String) -> Result<(), SessionEnd> {
        if !self.on_replica || self.replica_answered {
            return Err(self.server_lost(cause));
        }
        let Some(read) = self.replica_read.take() else {
            return Err(self.server_lost(cause));
        };
        if let Some(conn) = self.server.take() {
            tracing::warn!(client = self.client_id, server = %conn.target.describe(), %cause, "replica lost during a read; retrying it elsewhere");
            if let Some(h) = conn.pool().health() {
                h.report_failure(format!("connection lost during a read: {cause}"));
            }
        }
        self.proxy
            .metrics
            .read_retries
            .fetch_add(1, Ordering::Relaxed);
        self.pending.clear();
        self.server_out.clear();
        self.server_flush_upto = 0;
        self.replica_hold.clear();
        self.cancel.clear();
        self.on_replica = false;
        self.retry_read = Some(read);
        Ok(())
    }

    fn server_lost(&mut self, cause: String) -> SessionEnd {
        let server = self
            .server
            .as_ref()
            .map(|s| s.target.describe())
            .unwrap_or_default();
        PgError::fatal(
            sqlstate::CONNECTION_FAILURE,
            format!("lost the connection to {server}: {cause}"),
        )
        .with_hint("the transaction in progress, if any, was rolled back; reconnect and retry")
        .encode(&mut self.client_out);
        self.pending.clear();
        self.server = None;
        self.cancel.clear();
        SessionEnd::ServerLost(format!("{server}: {cause}"))
    }

    fn client_protocol_error(&mut self, reason: String) -> SessionEnd {
        PgError::fatal(sqlstate::PROTOCOL_VIOLATION, reason.clone()).encode(&mut self.client_out);
        SessionEnd::ProtocolViolation(reason)
    }

    // ----------------------------------------------------------------------
    // Server to client.

    fn drain_server_frames(&mut self) -> Result<(), SessionEnd> {
        // The frames are looked at in the reader's own buffer, lent out
        // meanwhile: nothing here reads the server, and what replaces or
        // drops the server (lose_server) also ends the loop.
        let Some(s) = self.server.as_deref_mut() else {
            return Ok(());
        };
        let max_frame = s.reader.max_frame();
        let mut buf = s.reader.take_buffer();
        let result = self.handle_server_frames(&mut buf, max_frame);
        if let Some(s) = self.server.as_deref_mut() {
            s.reader.restore_buffer(buf);
        }
        result
    }

    fn handle_server_frames(
        &mut self,
        buf: &mut BytesMut,
        max_frame: usize,
    ) -> Result<(), SessionEnd> {
        loop {
            if self.client_out.len() >= HIGH_WATER {
                return Ok(());
            }
            let len = match frame_len(buf, max_frame) {
                Ok(Some(len)) => len,
                Ok(None) => return Ok(()),
                Err(e) => return self.lose_server(e.to_string()),
            };
            let frame = &buf[..len];
            // A replica shutting down tells its sessions with a FATAL
            // (57P01, ...) before closing: for a read it had not answered
            // yet, that is a lost server, not the client's error.
            if frame[0] == be::ERROR_RESPONSE && self.on_replica && !self.replica_answered {
                let fields = protocol::error_fields(protocol::body(frame));
                if fields.iter().any(|(k, v)| *k == b'V' && v == "FATAL") {
                    return self.lose_server(protocol::describe_error(protocol::body(frame)));
                }
            }
            // A replica's answer is held back until its ReadyForQuery (up
            // to HIGH_WATER), so the read can still run again elsewhere if
            // the replica dies midway; once the client has seen part of it,
            // it cannot.
            let tag = frame[0];
            let before = self.client_out.len();
            self.on_server_frame(frame);
            buf.advance(len);
            if self.on_replica && !self.replica_answered && self.client_out.len() != before {
                let answer = self.client_out.split_off(before);
                self.replica_hold.extend_from_slice(&answer);
                if tag == be::READY_FOR_QUERY || self.replica_hold.len() >= HIGH_WATER {
                    let held = std::mem::take(&mut self.replica_hold);
                    self.client_out.extend_from_slice(&held);
                    self.replica_answered = true;
                }
            }
        }
    }

    fn on_server_frame(&mut self, frame: &[u8]) {
        let tag = frame[0];
        match tag {
            be::NOTICE_RESPONSE | be::NOTIFICATION_RESPONSE => {
                self.client_out.extend_from_slice(frame);
                return;
            }
            be::PARAMETER_STATUS => {
                self.on_parameter_status(frame);
                self.client_out.extend_from_slice(frame);
                return;
            }
            be::ERROR_RESPONSE => {
                if matches!(self.pending.front(), Some(Pending::Abort)) {
                    self.pending.pop_front();
                } else if matches!(
                    self.pending.front(),
                    Some(Pending::Request {
                        lsn_probe: true,
                        ..
                    })
                ) {
                    // The proxy's own query; its ReadyForQuery still comes.
                    // The position is unknown now, so reads of this shard
                    // stay on the primary rather than risk a stale answer.
                    if let Some(l) = self.written_lsn.get_mut(self.server_shard) {
                        *l = u64::MAX;
                    }
                } else {
                    self.forward_error(frame);
                }
                self.on_server_error();
                return;
            }
            be::COPY_IN_RESPONSE => {
                self.copy_in = true;
                self.copy_open = true;
                self.forget_syncs_sent_into_copy();
            }
            be::COMMAND_COMPLETE => self.copy_in = false,
            // No COPY is open once the server is ready again, whatever the
            // client sent or did not send.
            be::READY_FOR_QUERY => {
                self.copy_in = false;
                self.copy_open = false;
            }
            _ => {}
        }
        if tag == be::PARAMETER_DESCRIPTION {
            if let Some(Pending::Request {
                describes: Some(types),
                ..
            }) = self.pending.front()
            {
                types.describe(frame);
            }
        }
        if tag == be::DATA_ROW
            && matches!(
                self.pending.front(),
                Some(Pending::Request {
                    lsn_probe: true,
                    ..
                })
            )
        {
            self.on_lsn_probe_row(frame);
            return;
        }
        let head = match self.pending.front() {
            Some(Pending::Request {
                expect, forward, ..
            }) => Some((*expect, *forward)),
            _ => None,
        };
        match head {
            Some((expect, forward)) if expect.ended_by(tag) => {
                if let Some(Pending::Request {
                    timing: Some(t), ..
                }) = self.pending.pop_front()
                {
                    self.statement_done(t);
                }
                if tag == be::READY_FOR_QUERY {
                    self.tx_status = TxStatus::of_ready(frame);
                }
                if forward && tag == be::READY_FOR_QUERY && self.deferred_begin.is_some() {
                    // The client is in a transaction no server has seen yet.
                    let status = self.client_status();
                    protocol::ready_for_query(&mut self.client_out, status);
                } else if forward {
                    self.client_out.extend_from_slice(frame);
                }
                self.emit_synthetic();
            }
            Some((_, forward)) => {
                if forward {
                    self.client_out.extend_from_slice(frame);
                }
            }
            None => {
                // Nothing was asked: a server bug or a message we do not
                // model. Forwarding keeps the client informed.
                tracing::warn!(client = self.client_id, tag = %(tag as char), "unexpected message from server");
                self.client_out.extend_from_slice(frame);
            }
        }
    }

    fn on_parameter_status(&mut self, frame: &[u8]) {
        let mut r = BodyReader::new(protocol::body(frame), "ParameterStatus");
        if let (Ok(k), Ok(v)) = (r.cstr(), r.cstr()) {
            if let Some(s) = self.server.as_deref_mut() {
                s.set_param(k, v);
            }
            if is_tracked(k) && self.wanted_params.get(k).map(String::as_str) != Some(v) {
                Arc::make_mut(&mut self.wanted_params).insert(k.to_string(), v.to_string());
            }
        }
    }

    /// Forward a server's ErrorResponse, counting it, and say "statement
    /// timeout" where the server says "cancelled" because the proxy
    /// cancelled the statement for running too long.
    fn forward_error(&mut self, frame: &[u8]) {
        let fields = protocol::error_fields(protocol::body(frame));
        let code = fields
            .iter()
            .find(|(k, _)| *k == b'C')
            .map(|(_, v)| v.as_str())
            .unwrap_or(sqlstate::INTERNAL_ERROR);
        self.request_failed = true;
        if self.cancelled_at.take().is_some() && code == sqlstate::QUERY_CANCELED {
            let e = PgError::error(
                sqlstate::QUERY_CANCELED,
                "canceling statement due to statement timeout",
            )
            .with_detail(format!(
                "shardwire cancelled it after limits.statement_timeout ({:?})",
                self.config.limits.statement_timeout
            ));
            self.proxy.metrics.error(e.code);
            e.encode(&mut self.client_out);
            return;
        }
        self.proxy.metrics.error(code);
        self.client_out.extend_from_slice(frame);
    }

    /// A statement of a multi-shard transaction, counted on the shards the
    /// transaction holds afterwards.
    async fn timed_multi_query(&mut self, frame: &[u8], sql: &str) -> Result<(), SessionEnd> {
        let timing = self.timing_for(frame, true);
        let held = |s: &Self| -> Vec<usize> {
            s.multi
                .as_ref()
                .map(|m| {
                    (0..m.conns.len())
                        .filter(|&i| m.conns[i].is_some())
                        .collect()
                })
                .unwrap_or_default()
        };
        let before = held(self);
        let result = self.multi_query(sql).await;
        if let Some(t) = timing {
            let mut shards = held(self);
            if shards.is_empty() {
                shards = before; // COMMIT or ROLLBACK released them
            }
            if shards.is_empty() {
                shards.push(self.default_shard);
            }
            let failed = std::mem::take(&mut self.request_failed);
            self.record_statement(&shards, RouteKind::MultiTx, t, failed);
        }
        result
    }

    /// Count the ErrorResponses in an answer the proxy built itself.
    fn note_errors(&mut self, frames: &[u8]) {
        for f in protocol::frames(frames) {
            if f[0] == be::ERROR_RESPONSE {
                let fields = protocol::error_fields(protocol::body(f));
                if let Some((_, code)) = fields.iter().find(|(k, _)| *k == b'C') {
                    self.proxy.metrics.error(code);
                }
                self.request_failed = true;
            }
        }
    }

    /// A client statement finished (its completion, or its error and the
    /// end of its batch): metrics and the slow log.
    fn statement_done(&mut self, mut t: Timing) {
        let failed = std::mem::take(&mut self.request_failed);
        if let Some(stmt) = t.lane_trial.take() {
            Self::lane_trial_done(&stmt, t.started.elapsed(), failed);
        }
        self.cancelled_at = None;
        let (shard, kind) = (self.server_shard, self.route_kind);
        self.record_statement(&[shard], kind, t, failed);
    }

    /// Count a statement on `shards` and log it if slow.
    fn record_statement(&mut self, shards: &[usize], kind: RouteKind, t: Timing, failed: bool) {
        let took = t.started.elapsed();
        for &shard in shards {
            let stats = self.route_stats_of(shard, kind);
            stats.queries.fetch_add(1, Ordering::Relaxed);
            if failed {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            stats.latency.observe(took);
        }
        tracing::debug!(
            duration_ms = took.as_secs_f64() * 1000.0,
            shards = ?shards,
            kind = kind.name(),
            failed,
            "statement done"
        );
        let slow = self.config.log.slow_statement;
        if !slow.is_zero() && took >= slow {
            let shards: Vec<&str> = shards.iter().map(|&s| self.shard_name(s)).collect();
            let sql = t.sql.as_deref().unwrap_or("");
            let sql = match sql.char_indices().nth(SLOW_LOG_SQL_MAX) {
                Some((cut, _)) => &sql[..cut],
                None => sql,
            };
            tracing::warn!(
                target: "shardwire::slow",
                client = self.client_id,
                duration_ms = took.as_secs_f64() * 1000.0,
                shards = %shards.join(","),
                kind = kind.name(),
                failed,
                user = %self.setup_user,
                sql,
                "slow statement"
            );
        }
    }

    /// The series of `shard` and `kind`, borrowed: every session shares
    /// it, so a clone per statement would bump a count all of them write.
    fn route_stats_of(&mut self, shard: usize, kind: RouteKind) -> &RouteStats {
        if shard >= self.route_stats.len() {
            self.route_stats.resize(shard + 1, Default::default());
        }
        if self.route_stats[shard][kind.index()].is_none() {
            let name = self.shard_name(shard).to_string();
            self.route_stats[shard][kind.index()] = Some(self.proxy.metrics.route(&name, kind));
        }
        self.route_stats[shard][kind.index()]
            .as_deref()
            .expect("filled above")
    }

    /// The timing of a client statement about to be sent, if `frame` is one.
    fn timing_for(&mut self, frame: &[u8], forward: bool) -> Option<Timing> {
        if !forward {
            return None;
        }
        let sql = match frame[0] {
            fe::QUERY => {
                if self.config.log.slow_statement.is_zero() {
                    None
                } else {
                    let body = protocol::body(frame);
                    Some(String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(body)).into())
                }
            }
            fe::EXECUTE => self.bound_sql.clone(),
            _ => return None,
        };
        let lane_trial = if frame[0] == fe::EXECUTE {
            self.lane_trial.take()
        } else {
            None
        };
        Some(Timing {
            started: Instant::now(),
            sql,
            lane_trial,
        })
    }

    /// An ErrorResponse (already forwarded). In the extended protocol the
    /// server now discards everything up to Sync, so the responses we were
    /// waiting for up to there will never come.
    fn on_server_error(&mut self) {
        self.copy_in = false;
        self.copy_open = false;
        let mut skipped_any = false;
        loop {
            match self.pending.front() {
                Some(Pending::Request {
                    expect: Expect::Ready,
                    ..
                }) => return,
                None => {
                    // The batch's Sync is not sent yet: drop the client's
                    // messages up to it. (An error with nothing pending is
                    // unsolicited, e.g. a FATAL before the server closes.)
                    if skipped_any && self.server.is_some() {
                        self.skip_until_sync = true;
                    }
                    return;
                }
                Some(_) => skipped_any = true,
            }
            if let Some(Pending::Request {
                creates, timing, ..
            }) = self.pending.pop_front()
            {
                if let (Some(c), Some(s)) = (creates, self.server.as_deref_mut()) {
                    match c {
                        Creates::Named(n) => s.prepared.remove(&n),
                        Creates::Unnamed => s.unnamed = None,
                    }
                }
                // The statement that failed; the ones behind it never ran.
                if let Some(t) = timing {
                    if self.request_failed {
                        self.statement_done(t);
                    }
                }
            }
        }
    }

    /// The server just entered COPY FROM STDIN for the Execute at the head of
    /// `pending`. Syncs the client sent behind that Execute (tokio-postgres
    /// sends Bind/Execute/Sync, libpq may too) are read by the server in copy
    /// mode, which ignores them: stop waiting for their ReadyForQuery.
    /// (Clients wait for CopyInResponse before sending CopyDone, so none of
    /// these Syncs can belong after the copy.)
    fn forget_syncs_sent_into_copy(&mut self) {
        if !matches!(
            self.pending.front(),
            Some(Pending::Request {
                expect: Expect::ExecuteDone,
                ..
            })
        ) {
            return;
        }
        let mut behind = self.pending.split_off(1);
        behind.retain(|p| {
            !matches!(
                p,
                Pending::Request {
                    expect: Expect::Ready,
                    ..
                }
            )
        });
        self.pending.append(&mut behind);
    }

    /// Emit proxy-made responses that have reached the head of the queue.
    fn emit_synthetic(&mut self) {
        loop {
            match self.pending.front() {
                Some(Pending::Synthetic(tag)) => self
                    .client_out
                    .extend_from_slice(&protocol::empty_frame(*tag)),
                Some(Pending::SyntheticFrame(f)) => self.client_out.extend_from_slice(f),
                Some(Pending::SyntheticReady) => {
                    let status = self.client_status();
                    protocol::ready_for_query(&mut self.client_out, status);
                }
                Some(Pending::CausalToken) => {
                    let token = self.causal_token();
                    protocol::row_description_text(
                        &mut self.client_out,
                        &["shardwire.causal_token"],
                    );
                    protocol::data_row_text(&mut self.client_out, &[Some(token.as_str())]);
                    protocol::command_complete(&mut self.client_out, "SHOW");
                }
                _ => return,
            }
            self.pending.pop_front();
        }
    }

    /// The transaction status the client sees: a deferred BEGIN counts,
    /// failed or not.
    fn client_status(&self) -> TxStatus {
        if self.deferred_begin.is_some() && self.tx_status == TxStatus::Idle {
            if self.deferred_failed {
                TxStatus::Failed
            } else {
                TxStatus::InBlock
            }
        } else {
            self.tx_status
        }
    }

    // ----------------------------------------------------------------------
    // Client to server.

    async fn drain_client_frames(&mut self) -> Result<(), SessionEnd> {
        loop {
            if self.server_out.len() >= HIGH_WATER {
                return Ok(());
            }
            // A replica serves exactly one read, and an LSN probe ends a
            // write: what the client pipelined behind them waits until the
            // server is released (it may be a write, or for another shard).
            let probing = matches!(
                self.pending.front(),
                Some(Pending::Request {
                    lsn_probe: true,
                    ..
                })
            );
            if ((self.on_replica && !self.pending.is_empty()) || probing) && self.server.is_some() {
                return Ok(());
            }
            let frame = match self.client_rd.try_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.client_protocol_error(e.to_string())),
            };
            if matches!(frame[0], fe::QUERY | fe::EXECUTE)
                && tracing::enabled!(tracing::Level::DEBUG)
            {
                // A span per statement, when debug logging is on (it costs
                // an allocation per statement, too much for the default).
                let n = self.client.info.queries.load(Ordering::Relaxed) + 1;
                let span = tracing::debug_span!("statement", n);
                self.on_client_frame(frame).instrument(span).await?;
            } else {
                self.on_client_frame(frame).await?;
            }
        }
    }

    async fn on_client_frame(&mut self, frame: BytesMut) -> Result<(), SessionEnd> {
        let tag = frame[0];
        if self.skip_until_sync && tag != fe::SYNC {
            if tag == fe::TERMINATE {
                return Err(SessionEnd::ClientTerminated);
            }
            return Ok(());
        }
        if (tag == fe::QUERY || tag == fe::EXECUTE) && !self.replaying {
            self.client.info.queries.fetch_add(1, Ordering::Relaxed);
            if !self.take_rate_token(tag == fe::QUERY).await {
                return Ok(());
            }
        }
        if self.portal.is_some() && self.portal_frame(&frame).await? {
            return Ok(());
        }
        if self.server.is_none()
            && self.multi.is_none()
            && self.held.is_empty()
            && self.deferred_begin.is_none()
        {
            self.follow_config();
        }
        if tag == fe::BIND && self.try_lane(&frame).await? {
            return Ok(());
        }
        if self.multi.is_some() {
            match tag {
                fe::PARSE | fe::BIND | fe::DESCRIBE | fe::EXECUTE | fe::CLOSE => {
                    return self.multi_extended(frame).await
                }
                fe::FUNCTION_CALL => {
                    self.multi_refuse_extended();
                    return Ok(());
                }
                fe::SYNC => {
                    self.multi_sync().await;
                    return Ok(());
                }
                fe::FLUSH => return Ok(()),
                _ => {}
            }
        }
        let mut route = self.routing;
        if route
            && (self.tx_status == TxStatus::Failed || self.deferred_failed || self.abort_in_flight)
        {
            match self.failed_tx_gate(&frame).await? {
                FailedTx::Answered => return Ok(()),
                FailedTx::AsIs => route = false,
                FailedTx::Route => {}
            }
        }
        if route {
            if matches!(tag, fe::QUERY | fe::PARSE | fe::BIND) && self.only_lsn_probe_pending() {
                // The statement may need several shards (no held server).
                self.settle_held_server().await?;
            }
            match tag {
                fe::QUERY => return self.routed_query(frame).await,
                fe::BIND => return self.routed_bind(frame).await,
                fe::PARSE | fe::DESCRIBE | fe::EXECUTE | fe::CLOSE if self.server.is_none() => {
                    if tag == fe::PARSE {
                        self.note_parse(&frame)?;
                    }
                    self.held.push(frame);
                    return Ok(());
                }
                fe::SYNC | fe::FLUSH if !self.held.is_empty() => {
                    let batch = (tag == fe::SYNC).then(|| {
                        let mut frames = self.held.clone();
                        frames.push(frame.clone());
                        frames
                    });
                    self.route_held_batch(tag == fe::SYNC).await?;
                    if self.on_replica {
                        self.replica_read = batch;
                        self.replica_answered = false;
                    }
                }
                _ => {}
            }
        }
        match tag {
            fe::QUERY => {
                if !self.ensure_server(true).await {
                    return Ok(());
                }
                self.send_query(frame);
            }
            fe::PARSE | fe::BIND | fe::DESCRIBE | fe::EXECUTE | fe::CLOSE => {
                self.extended(frame).await?
            }
            fe::SYNC => {
                self.skip_until_sync = false;
                if self.server.is_some() && self.copy_open {
                    // Ignored by the server during COPY FROM STDIN: no
                    // ReadyForQuery will answer it.
                    self.server_out.extend_from_slice(&frame);
                    self.flush_point();
                } else if self.server.is_some() {
                    self.send(&frame, Expect::Ready, true, None);
                    self.flush_point();
                } else {
                    // Nothing was sent to a server since the last Sync.
                    self.pending.push_back(Pending::SyntheticReady);
                    self.emit_synthetic();
                }
            }
            fe::FLUSH => {
                if self.server.is_some() {
                    self.server_out.extend_from_slice(&frame);
                    self.flush_point();
                }
            }
            fe::FUNCTION_CALL => {
                if self.ensure_server(true).await {
                    self.send(&frame, Expect::Ready, true, None);
                    self.flush_point();
                }
            }
            fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL => {
                // Without a server the COPY already ended in an error; the
                // protocol says such leftovers are dropped.
                if tag != fe::COPY_DATA {
                    self.copy_open = false;
                }
                if self.server.is_some() {
                    self.server_out.extend_from_slice(&frame);
                    if tag != fe::COPY_DATA || self.server_out.len() >= HIGH_WATER {
                        self.flush_point();
                    }
                }
            }
            fe::TERMINATE => return Err(SessionEnd::ClientTerminated),
            other => {
                return Err(
                    self.client_protocol_error(format!("invalid frontend message type {}", other))
                )
            }
        }
        Ok(())
    }

    /// A client message while its transaction has failed, or may have
    /// (rare: `on_client_frame` calls this only then). PostgreSQL answers
    /// every statement of a failed transaction with 25P02 until it ends
    /// (COMMIT answering ROLLBACK); ROLLBACK TO SAVEPOINT may revive it.
    /// Routing such a statement could answer another error, or send it to
    /// another shard, so it goes as is to the server that holds the failed
    /// transaction, which answers as PostgreSQL does. A failed deferred
    /// transaction (no server has it) ends here at a lone COMMIT or
    /// ROLLBACK; anything else first makes a server hold it, failed.
    async fn failed_tx_gate(&mut self, frame: &[u8]) -> Result<FailedTx, SessionEnd> {
        let tag = frame[0];
        if self.multi.is_some() {
            return Ok(FailedTx::Route); // multitx.rs has its own failed flag
        }
        if self.deferred_failed {
            // Sync (ReadyForQuery says 'E'), Flush, and Close (which works
            // the same in a failed transaction) need no server.
            if !matches!(
                tag,
                fe::QUERY | fe::PARSE | fe::BIND | fe::DESCRIBE | fe::EXECUTE | fe::FUNCTION_CALL
            ) {
                return Ok(FailedTx::Route);
            }
            if tag == fe::QUERY {
                let body = protocol::body(frame);
                let sql = String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(body));
                let analysis = self.router.analysis(&sql);
                if let Some(TxControl::End(_)) = control::tx_control(&sql, &analysis) {
                    // No server has the transaction: end it here.
                    self.deferred_begin = None;
                    self.deferred_failed = false;
                    let mut out = BytesMut::new();
                    protocol::command_complete(&mut out, "ROLLBACK");
                    self.pending
                        .push_back(Pending::SyntheticFrame(out.freeze()));
                    self.pending.push_back(Pending::SyntheticReady);
                    self.emit_synthetic();
                    return Ok(FailedTx::Answered);
                }
            }
            // The BEGIN and a failing statement go first (`ensure_shard`);
            // then the server answers this message as PostgreSQL would.
            let shard = self.server_shard_or_default();
            let simple = matches!(tag, fe::QUERY | fe::FUNCTION_CALL);
            if self.ensure_shard(shard, simple, true).await {
                // Messages held for routing go first, in order.
                self.replay_held().await?;
                return Ok(FailedTx::AsIs);
            }
            return Ok(FailedTx::Answered); // the client has the checkout's error
        }
        if self.server.is_none() {
            self.abort_in_flight = false; // the server answered and went
            return Ok(FailedTx::Route);
        }
        // Only a Query or a Bind is routed while a server is held.
        if self.copy_open || !matches!(tag, fe::QUERY | fe::BIND) {
            return Ok(FailedTx::Route);
        }
        let owes = self
            .pending
            .iter()
            .any(|p| matches!(p, Pending::Request { .. }));
        if owes {
            // What the server still owes may change its status (the
            // proxy's abort, a pipelined ROLLBACK): learn it first,
            // including the current batch's answers so far.
            self.flush_and_drain().await?;
        }
        self.abort_in_flight = false;
        if self.skip_until_sync {
            // The server failed this batch meanwhile: this message is
            // skipped, as the server would skip it.
            return Ok(FailedTx::Answered);
        }
        if self.server.is_some() && self.tx_status == TxStatus::Failed {
            return Ok(FailedTx::AsIs);
        }
        Ok(FailedTx::Route)
    }

    /// Wait for (or be refused) a token of the user's query rate limit.
    /// Returns false when the statement was refused (the client has its
    /// error).
    async fn take_rate_token(&mut self, simple: bool) -> bool {
        let Some(bucket) = self.client.bucket.clone() else {
            return true;
        };
        match bucket.admit(self.config.limits.rate_limit_max_wait) {
            Admission::Now => true,
            Admission::After(wait) => {
                self.proxy
                    .metrics
                    .rate_limited
                    .fetch_add(1, Ordering::Relaxed);
                self.flush_client_now().await;
                let before = self.client.info.state();
                self.client.info.set_state(ClientState::Throttled);
                tokio::time::sleep(wait).await;
                self.client.info.set_state(before);
                true
            }
            Admission::Refused { per_second } => {
                self.proxy
                    .metrics
                    .rate_limited
                    .fetch_add(1, Ordering::Relaxed);
                let e = PgError::error(
                    sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                    format!(
                        "query rate limit exceeded for user \"{}\" ({per_second} statements per second)",
                        self.setup_user
                    ),
                )
                .with_hint("slow down and retry; the limit is rate_limit in the user's [[users]] entry");
                self.refuse(e, simple);
                false
            }
        }
    }

    /// Move to the newest config, if a reload happened. Called only
    /// between transactions (no server held), so a transaction always runs
    /// on one topology. A session whose user or database the reload
    /// removed keeps its config until it ends.
    fn follow_config(&mut self) {
        let generation = self.proxy.topology_generation();
        if generation == self.config_generation {
            return;
        }
        self.config_generation = generation;
        // Pools may have changed (or their server been banned): the next
        // transaction checks out afresh.
        self.release_parked();
        self.park = None;
        let config = self.proxy.config();
        let (Some(db), Some(user)) = (
            config.databases.get(&self.setup_database),
            config.users.get(&self.setup_user),
        ) else {
            tracing::warn!(client = self.client_id, user = %self.setup_user, database = %self.setup_database,
                "the reloaded config no longer has this session's user or database; the session keeps the old config");
            return;
        };
        let pools = self.proxy.session_pools(&config, db, user);
        self.pools = pools.primaries;
        self.replicas = pools.replicas;
        self.read_from = config.read_from(db, user);
        let shards = self.pools.len();
        self.written_lsn.resize(shards, 0);
        self.written_at.resize(shards, None);
        self.unresolved_writes.resize(shards, false);
        self.router = config.router.clone();
        self.routing = self.router.tables().next().is_some()
            || self.read_from != crate::config::ReadFrom::Primary;
        self.default_shard = config.default_shard;
        self.server_shard = config.default_shard;
        self.max_prepared_per_server = config.pool.max_prepared_statements as usize;
        self.route_stats = vec![Default::default(); self.pools.len()];
        self.config = config;
    }

    /// An extended-protocol message for the held (or default) server.
    async fn extended(&mut self, frame: BytesMut) -> Result<(), SessionEnd> {
        match frame[0] {
            fe::PARSE => self.on_parse(frame).await?,
            fe::BIND => self.on_bind(frame).await?,
            fe::DESCRIBE => self.on_describe(frame).await?,
            fe::EXECUTE => {
                if self.ensure_server(false).await {
                    self.send(&frame, Expect::ExecuteDone, true, None);
                }
            }
            _ => self.on_close(frame).await?,
        }
        Ok(())
    }

    /// Send a simple Query to the held server.
    fn send_query(&mut self, frame: BytesMut) {
        let resets = server_state_reset(protocol::body(&frame));
        let s = self.server_mut();
        s.unnamed = None;
        if resets.statements {
            s.prepared.clear();
        }
        if resets.settings {
            // Reported parameters come back as ParameterStatus; the
            // unreported ones we set are simply gone.
            s.forget_custom_params();
        }
        self.send(&frame, Expect::Ready, true, None);
        self.flush_point();
    }

    async fn on_parse(&mut self, frame: BytesMut) -> Result<(), SessionEnd> {
        let (name, rest) = match split_name(protocol::body(&frame), "Parse") {
            Ok(x) => x,
            Err(e) => return Err(self.client_protocol_error(e.to_string())),
        };
        if name.is_empty() {
            self.unnamed_sql = Some(statements::parse_sql(rest).into());
            self.unnamed_types = Some(Arc::new(ParamTypes::from_parse(rest)));
            let id = NEXT_UNNAMED_ID.fetch_add(1, Ordering::Relaxed);
            let frame = frame.freeze();
            self.unnamed = Some((id, frame.clone()));
            if self.ensure_server(false).await {
                self.server_mut().unnamed = Some(id);
                self.send(&frame, Expect::ParseComplete, true, Some(Creates::Unnamed));
            }
            return Ok(());
        }
        let stmt = self.statements.define(name, rest);
        if !self.ensure_server(false).await {
            return Ok(());
        }
        if self.server_mut().prepared.contains(&stmt.server_name) {
            self.pending
                .push_back(Pending::Synthetic(be::PARSE_COMPLETE));
            self.emit_synthetic();
        } else {
            self.prepare_on_server(&stmt, true);
        }
        Ok(())
    }

    /// Send a statement's Parse to the held server, evicting the least
    /// recently used statement there if the server holds too many.
    fn prepare_on_server(&mut self, stmt: &statements::Statement, forward: bool) {
        let max = self.max_prepared_per_server;
        let s = self.server_mut();
        let evicted = if s.prepared.len() >= max {
            s.prepared.evict_lru()
        } else {
            None
        };
        s.prepared.insert(stmt.server_name.clone());
        if let Some(victim) = evicted {
            let mut close = BytesMut::new();
            rebuild(fe::CLOSE, b"S", &victim, b"", &mut close);
            self.send(&close, Expect::CloseComplete, false, None);
        }
        self.send(
            &stmt.parse_frame,
            Expect::ParseComplete,
            forward,
            Some(Creates::Named(stmt.server_name.clone())),
        );
    }

    /// Make sure the statement a Bind or Describe names exists on the held
    /// server, and return the name to use there.
    fn statement_on_server(&mut self, client_name: &str) -> Option<Arc<str>> {
        if client_name.is_empty() {
            if let Some((id, frame)) = self.unnamed.clone() {
                if self.server_mut().unnamed != Some(id) {
                    self.server_mut().unnamed = Some(id);
                    self.send(&frame, Expect::ParseComplete, false, Some(Creates::Unnamed));
                }
            }
            return None;
        }
        let stmt = self.statements.get(client_name)?;
        let server = self
            .server
            .as_deref_mut()
            .expect("callers check ensure_server first");
        if server.prepared.contains(&stmt.server_name) {
            return Some(stmt.server_name.clone());
        }
        let stmt = stmt.clone();
        self.prepare_on_server(&stmt, false);
        Some(stmt.server_name.clone())
    }

    async fn on_bind(&mut self, frame: BytesMut) -> Result<(), SessionEnd> {
        let mut r = BodyReader::new(protocol::body(&frame), "Bind");
        let parsed = r
            .cstr_bytes()
            .and_then(|portal| Ok((portal, r.cstr()?, r.remaining())));
        let (portal, stmt, rest) = match parsed {
            Ok(x) => x,
            Err(e) => return Err(self.client_protocol_error(e.to_string())),
        };
        if !self.config.log.slow_statement.is_zero() {
            self.bound_sql = if stmt.is_empty() {
                self.unnamed_sql.clone()
            } else {
                self.statements.get(stmt).map(|s| s.sql.clone())
            };
        }
        if self.lanes_apply() {
            self.lane_trial = self.lane_candidate(stmt);
        }
        if !self.ensure_server(false).await {
            return Ok(());
        }
        match self.statement_on_server(stmt) {
            Some(server_name) => {
                let mut scratch = std::mem::take(&mut self.scratch);
                scratch.clear();
                rename_bind(portal, &server_name, rest, &mut scratch);
                self.send(&scratch, Expect::BindComplete, true, None);
                self.scratch = scratch;
            }
            None => self.send(&frame, Expect::BindComplete, true, None),
        }
        Ok(())
    }

    async fn on_describe(&mut self, frame: BytesMut) -> Result<(), SessionEnd> {
        let body = protocol::body(&frame);
        let kind = body.first().copied();
        let name = match split_name(body.get(1..).unwrap_or(b""), "Describe") {
            Ok((n, _)) => n,
            Err(e) => return Err(self.client_protocol_error(e.to_string())),
        };
        if !self.ensure_server(false).await {
            return Ok(());
        }
        match kind {
            Some(b'S') => {
                let types = self.statement_types(name);
                match self.statement_on_server(name) {
                    Some(server_name) => {
                        let mut scratch = std::mem::take(&mut self.scratch);
                        scratch.clear();
                        rebuild(fe::DESCRIBE, b"S", &server_name, b"", &mut scratch);
                        self.send(&scratch, Expect::Description, true, None);
                        self.scratch = scratch;
                    }
                    None => self.send(&frame, Expect::Description, true, None),
                }
                if let Some(Pending::Request { describes, .. }) = self.pending.back_mut() {
                    *describes = types;
                }
            }
            // Portals (and invalid kinds, which the server rejects) as is.
            _ => self.send(&frame, Expect::Description, true, None),
        }
        Ok(())
    }

    /// The parameter types of the client's statement `name` ("" for the
    /// unnamed one).
    fn statement_types(&self, name: &str) -> Option<Arc<ParamTypes>> {
        if name.is_empty() {
            self.unnamed_types.clone()
        } else {
            self.statements.get(name).map(|s| s.types.clone())
        }
    }

    async fn on_close(&mut self, frame: BytesMut) -> Result<(), SessionEnd> {
        let body = protocol::body(&frame);
        let kind = body.first().copied();
        let name = match split_name(body.get(1..).unwrap_or(b""), "Close") {
            Ok((n, _)) => n,
            Err(e) => return Err(self.client_protocol_error(e.to_string())),
        };
        if kind == Some(b'S') && !name.is_empty() {
            // The server-side copy may serve other clients; only this
            // client's name goes away.
            self.statements.remove(name);
            self.pending
                .push_back(Pending::Synthetic(be::CLOSE_COMPLETE));
            self.emit_synthetic();
            return Ok(());
        }
        if kind == Some(b'S') {
            self.unnamed = None;
            self.unnamed_sql = None;
            self.unnamed_types = None;
        }
        if self.ensure_server(false).await {
            if kind == Some(b'S') {
                self.server_mut().unnamed = None;
            }
            self.send(&frame, Expect::CloseComplete, true, None);
        }
        Ok(())
    }

    /// Queue a frame for the server and remember what it owes us.
    fn send(&mut self, frame: &[u8], expect: Expect, forward: bool, creates: Option<Creates>) {
        self.server_out.extend_from_slice(frame);
        let timing = self.timing_for(frame, forward);
        self.pending.push_back(Pending::Request {
            expect,
            forward,
            creates,
            timing,
            lsn_probe: false,
            describes: None,
        });
        if self.server_out.len() >= HIGH_WATER {
            self.flush_point();
        }
    }

    /// Everything queued for the server so far may be written.
    fn flush_point(&mut self) {
        self.server_flush_upto = self.server_out.len();
    }

    fn server_mut(&mut self) -> &mut ServerConn {
        self.server
            .as_deref_mut()
            .expect("callers check ensure_server first")
    }

    // ----------------------------------------------------------------------
    // Getting and giving back servers.

    /// Make sure a server is held, checking one out of the default shard
    /// if needed. On failure the client gets the error (and ReadyForQuery
    /// for a simple query, or the rest of its extended batch is skipped up
    /// to Sync); returns false.
    async fn ensure_server(&mut self, simple: bool) -> bool {
        if self.server.is_some() {
            return true;
        }
        self.ensure_shard(self.default_shard, simple, false).await
    }

    /// Make sure a server of `shard` is held. Refuses (like
    /// `ensure_server`) when the held server is on another shard. With
    /// `start_tx`, a deferred BEGIN is sent first.
    async fn ensure_shard(&mut self, shard: usize, simple: bool, start_tx: bool) -> bool {
        if self.server.is_some() {
            if self.server_shard != shard {
                let err = PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "this transaction already runs on shard \"{}\"; statement needs shard \"{}\", and a transaction cannot take in another shard inside one pipelined batch or a pinned session",
                        self.shard_name(self.server_shard),
                        self.shard_name(shard)
                    ),
                )
                .with_hint("keep the statements of one transaction (or one pipelined batch) on one shard");
                self.refuse(err, simple);
                return false;
            }
        } else if !self.checkout(shard, simple).await {
            return false;
        }
        if start_tx {
            if let Some(begin) = self.deferred_begin.take() {
                self.send(&begin, Expect::Ready, false, None);
                if std::mem::take(&mut self.deferred_failed) {
                    // A statement of this transaction was refused before
                    // any server saw it: the server's transaction starts
                    // failed, and answers what follows as PostgreSQL.
                    self.abort_server_tx(false);
                }
            }
        }
        true
    }

    async fn checkout(&mut self, shard: usize, simple: bool) -> bool {
        self.flush_client_now().await;
        let result = self.checkout_synced(shard).await;
        match result {
            Ok(conn) => {
                self.attach(conn);
                self.server_shard = shard;
                self.client.info.set_shard(Some(shard));
                true
            }
            Err(err) => {
                tracing::warn!(client = self.client_id, user = %self.setup_user, database = %self.setup_database, error = %err, "no server for client");
                self.refuse(err, simple);
                false
            }
        }
    }

    /// The held server is busy only with earlier batches (each ended by
    /// its Sync or Query) or the read-your-writes LSN probe of the last
    /// write, and the client's current batch has executed nothing on it:
    /// wait for those answers, so the server goes back to the pool and the
    /// current statement may go to another shard, or to several. A batch
    /// that already executed something on the server, or a transaction,
    /// stays there.
    async fn settle_held_server(&mut self) -> Result<(), SessionEnd> {
        if self.server.is_none()
            || self.pool_mode != PoolMode::Transaction
            || self.tx_status != TxStatus::Idle
            || self.deferred_begin.is_some()
            || self.multi.is_some()
            || self.copy_in
            || self.copy_open
        {
            return Ok(());
        }
        let current = self
            .pending
            .iter()
            .rposition(|p| {
                matches!(
                    p,
                    Pending::Request {
                        expect: Expect::Ready,
                        ..
                    }
                )
            })
            .map_or(0, |i| i + 1);
        let executed = self.pending.iter().skip(current).any(|p| {
            matches!(
                p,
                Pending::Abort
                    | Pending::Request {
                        expect: Expect::BindComplete | Expect::ExecuteDone,
                        ..
                    }
            )
        });
        if executed {
            return Ok(());
        }
        // The current batch ran only Parse/Describe/Close here (or it was
        // flushed and answered): end its implicit transaction on this
        // server with a Sync of the proxy's own, so the server can go.
        let mut sync = BytesMut::new();
        let at = protocol::begin_frame(&mut sync, fe::SYNC);
        protocol::finish_frame(&mut sync, at);
        self.send(&sync, Expect::Ready, false, None);
        self.flush_point();
        self.drain_requests(true).await
    }

    /// Wait until the held server has answered everything it owes (its
    /// answers go to the client as usual). With `release`, the server is
    /// then released if idle, which after a write first asks for its LSN
    /// (maybe_release): that answer is waited for too. Without, it stays
    /// held (its batch goes on).
    async fn drain_requests(&mut self, release: bool) -> Result<(), SessionEnd> {
        let is_request = |p: &Pending| matches!(p, Pending::Request { .. });
        let deadline = tokio::time::Instant::now() + self.multi_statement_timeout();
        while self.server.is_some() && self.pending.iter().any(is_request) {
            let upto = self.server_flush_upto;
            let Some(s) = self.server.as_deref_mut() else {
                break;
            };
            let io = async {
                if upto > 0 {
                    s.writer.write_all(&self.server_out[..upto]).await?;
                }
                s.reader
                    .fill()
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
            };
            match tokio::time::timeout_at(deadline, io).await {
                Ok(Ok(_)) => {
                    self.server_out.advance(upto);
                    self.server_flush_upto = 0;
                }
                Ok(Err(e)) => return self.lose_server(e.to_string()),
                Err(_) => return self.lose_server("no answer to earlier statements".into()),
            }
            self.drain_server_frames()?;
            // Answers beyond HIGH_WATER wait in the server's buffer until
            // the client takes what is due: give it now, or the next read
            // would wait for data the server already sent.
            while self.client_out.len() >= HIGH_WATER {
                let (wr, out) = (&mut self.client_wr, &self.client_out);
                let written = async {
                    wr.write_all(out).await?;
                    wr.flush().await
                };
                match tokio::time::timeout_at(deadline, written).await {
                    Ok(Ok(())) => {
                        self.client_out.clear();
                        self.client_unflushed = false;
                    }
                    Ok(Err(e)) => return Err(SessionEnd::ClientGone(e.to_string())),
                    Err(_) => {
                        return Err(SessionEnd::ClientGone(
                            "the client took no data while earlier answers were due".into(),
                        ))
                    }
                }
                self.drain_server_frames()?;
            }
            if release && !self.pending.iter().any(is_request) {
                self.maybe_release();
            }
        }
        Ok(())
    }

    /// Have the held server answer everything sent so far, without ending
    /// the batch (a Flush of the proxy's own), and wait for those answers,
    /// which reach the client in order. The server stays held.
    async fn flush_and_drain(&mut self) -> Result<(), SessionEnd> {
        let mut flush = BytesMut::new();
        let at = protocol::begin_frame(&mut flush, fe::FLUSH);
        protocol::finish_frame(&mut flush, at);
        self.server_out.extend_from_slice(&flush);
        self.flush_point();
        self.drain_requests(false).await
    }

    /// The held server owes nothing but the LSN probe of the last write.
    fn only_lsn_probe_pending(&self) -> bool {
        self.server.is_some()
            && !self.pending.is_empty()
            && self.pending.iter().all(|p| {
                matches!(
                    p,
                    Pending::Request {
                        lsn_probe: true,
                        ..
                    }
                )
            })
    }

    /// Before routing a statement to `shards`: a held server of another
    /// shard may be settled (see `settle_held_server`).
    async fn settle_for(&mut self, shards: &[usize]) -> Result<(), SessionEnd> {
        if self.server.is_some() && (shards.len() > 1 || shards.first() != Some(&self.server_shard))
        {
            self.settle_held_server().await?;
        }
        Ok(())
    }

    /// Deliver what the client is owed before possibly waiting for a server.
    async fn flush_client_now(&mut self) {
        if !self.client_out.is_empty() {
            let written = async {
                self.client_wr.write_all(&self.client_out).await?;
                self.client_wr.flush().await
            };
            if let Err(e) = written.await {
                tracing::debug!(client = self.client_id, error = %e, "client write failed");
            }
            self.client_out.clear();
            self.client_unflushed = false;
        }
    }

    /// A server of `shard` from its pool, with the client's parameters.
    async fn checkout_synced(&mut self, shard: usize) -> Result<PooledConn, PgError> {
        let starts_transaction = self.server.is_none()
            && self
                .multi
                .as_ref()
                .is_none_or(|m| m.conns.iter().all(Option::is_none));
        // Every rare path's future is boxed: this one runs at each
        // transaction, and its future's size is copied each time.
        if starts_transaction && self.is_paused() {
            let waited = Box::pin(self.wait_while_paused()).await;
            self.paused_now = *self.paused.borrow_and_update();
            waited?;
        }
        // Before the primary's pool: the server this session parked, or a
        // replica for a read. One that fails here costs the statement
        // nothing: the pool's primary follows.
        let candidate = match self.next_read.take() {
            None => self.unpark(shard),
            Some(target) => {
                self.release_parked();
                self.client.info.set_state(ClientState::Waiting);
                Box::pin(self.read_checkout(shard, target)).await
            }
        };
        if let Some(mut conn) = candidate {
            if align_params(&mut conn, &mut self.wanted_params)
                .await
                .is_ok()
            {
                self.client.info.set_state(ClientState::Active);
                return Ok(conn);
            }
        }
        self.client.info.set_state(ClientState::Waiting);
        let result = match self.pools[shard].checkout().await {
            Ok(mut conn) => match align_params(&mut conn, &mut self.wanted_params).await {
                Ok(()) => Ok(conn),
                Err(e) => Err(e),
            },
            Err(e) => Err(e.to_pg()),
        };
        self.client.info.set_state(match result {
            Ok(_) => ClientState::Active,
            Err(_) if self.server.is_some() || self.multi.is_some() => ClientState::Active,
            Err(_) => ClientState::Idle,
        });
        result
    }

    /// Whether PAUSE is in effect. Reading the watch takes a lock all
    /// sessions share, while whether it changed is a plain load: the value
    /// is kept, and read again only after a change.
    fn is_paused(&mut self) -> bool {
        if self.paused.has_changed().unwrap_or(true) {
            self.paused_now = *self.paused.borrow_and_update();
        }
        self.paused_now
    }

    /// PAUSE holds new transactions until RESUME, up to
    /// `limits.pause_timeout`.
    async fn wait_while_paused(&mut self) -> Result<(), PgError> {
        if !*self.paused.borrow() {
            return Ok(());
        }
        self.client.info.set_state(ClientState::Waiting);
        let limit = self.config.limits.pause_timeout;
        let resumed = tokio::time::timeout(limit, self.paused.wait_for(|p| !*p)).await;
        self.client.info.set_state(ClientState::Idle);
        match resumed {
            Ok(Ok(_)) => Ok(()),
            _ => {
                self.proxy
                    .metrics
                    .pause_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                Err(PgError::error(
                    sqlstate::CANNOT_CONNECT_NOW,
                    format!("shardwire is paused; no new transaction could start within {limit:?}"),
                )
                .with_hint("an operator ran PAUSE in the admin console; retry after RESUME"))
            }
        }
    }

    /// Answer the client with an error instead of the server: then
    /// ReadyForQuery for a simple query, or skip the rest of the extended
    /// batch up to Sync.
    ///
    /// The statement failed, so its transaction fails too, exactly as a
    /// server's error would fail it (DESIGN §3): later statements get
    /// `25P02` and COMMIT answers ROLLBACK. Where that transaction lives
    /// decides how:
    /// - on the held server: the server is made to fail too
    ///   (`abort_server_tx`, or a Parse of invalid SQL in the extended
    ///   protocol), so from then on the server itself answers as
    ///   PostgreSQL does (25P02, ROLLBACK TO SAVEPOINT, COMMIT's ROLLBACK);
    ///   `failed_tx_gate` sends it the client's statements as they are;
    /// - in a deferred BEGIN no server has seen: `deferred_failed`;
    /// - over several shards: `MultiTx::failed`.
    ///
    /// Outside a transaction nothing else changes.
    fn refuse(&mut self, err: PgError, simple: bool) {
        self.proxy.metrics.error(err.code);
        // The server may still owe answers that change its status (a
        // pipelined "BEGIN; ..." string), so only an idle server outside a
        // transaction is known to need no abort.
        let server_busy = self.tx_status != TxStatus::Idle || !self.pending.is_empty();
        let mut buf = BytesMut::new();
        err.encode(&mut buf);
        self.pending
            .push_back(Pending::SyntheticFrame(buf.freeze()));
        if let Some(m) = self.multi.as_mut() {
            m.failed = true;
            self.tx_status = TxStatus::Failed;
        } else if self.deferred_begin.is_some() {
            self.deferred_failed = true;
        }
        // A server in COPY FROM STDIN takes no statements.
        let server_tx = self.server.is_some() && !self.copy_open;
        if simple {
            if server_tx && server_busy {
                // The server's ReadyForQuery ('E' in a transaction block)
                // is the client's.
                self.abort_server_tx(true);
            } else {
                self.pending.push_back(Pending::SyntheticReady);
            }
        } else {
            self.skip_until_sync = true;
            self.held.clear();
            self.held_read = None;
            self.held_mixed = false;
            if server_tx {
                // Earlier statements of this batch run in its implicit
                // transaction, or in the client's transaction block:
                // PostgreSQL would roll back the one and fail the other
                // with the failed statement, so make the server fail too.
                // The client's Sync brings the server's ReadyForQuery.
                let mut parse = BytesMut::new();
                rebuild(
                    fe::PARSE,
                    b"",
                    "",
                    b"SHARDWIRE ABORT BATCH\0\0\0",
                    &mut parse,
                );
                self.server_out.extend_from_slice(&parse);
                self.pending.push_back(Pending::Abort);
                self.abort_in_flight = true;
                if let Some(s) = self.server.as_deref_mut() {
                    s.unnamed = None;
                }
            }
        }
        self.emit_synthetic();
    }

    /// Fail the held server's transaction block (if it is in one) with a
    /// Query of invalid SQL, whose error is swallowed; its ReadyForQuery
    /// goes to the client when `forward`. Outside a transaction block it
    /// changes nothing (the Query's implicit transaction holds nothing).
    fn abort_server_tx(&mut self, forward: bool) {
        let mut query = BytesMut::new();
        protocol::query_frame(&mut query, "SHARDWIRE ABORT TRANSACTION");
        self.server_out.extend_from_slice(&query);
        self.pending.push_back(Pending::Abort);
        // Not `send`: this is no client statement to time or count.
        self.pending.push_back(Pending::Request {
            expect: Expect::Ready,
            forward,
            creates: None,
            timing: None,
            lsn_probe: false,
            describes: None,
        });
        // A simple Query drops the server's unnamed statement.
        if let Some(s) = self.server.as_deref_mut() {
            s.unnamed = None;
        }
        self.abort_in_flight = true;
        self.flush_point();
    }

    fn shard_name(&self, shard: usize) -> &str {
        self.router
            .shard_names()
            .get(shard)
            .map(String::as_str)
            .unwrap_or("?")
    }

    // ----------------------------------------------------------------------
    // Routing (only when the config has [[tables]]).

    /// The one shard a route goes to, or the 0A000 for a multi-shard one.
    fn single_shard(&self, r: &Route) -> Result<usize, PgError> {
        if let [one] = r.shards[..] {
            return Ok(one);
        }
        let names: Vec<&str> = r.shards.iter().map(|&i| self.shard_name(i)).collect();
        let hint = if r.row_shards.is_some() {
            "insert the rows of each shard with a separate statement"
        } else if r.copy_split.is_some() {
            "copy the rows of each shard separately, pinned with /* shardwire: shard=NAME */"
        } else {
            "run it on each shard, pinned with /* shardwire: shard=NAME */ or SET shardwire.shard"
        };
        Err(PgError::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "statement needs shards {} ({}) and cannot run on several shards in this form",
                names.join(", "),
                r.reason
            ),
        )
        .with_hint(hint))
    }

    /// Record a held Parse's statement, so a Bind can be routed by its SQL.
    fn note_parse(&mut self, frame: &[u8]) -> Result<(), SessionEnd> {
        let (name, rest) = match split_name(protocol::body(frame), "Parse") {
            Ok(x) => x,
            Err(e) => return Err(self.client_protocol_error(e.to_string())),
        };
        if name.is_empty() {
            self.unnamed_sql = Some(statements::parse_sql(rest).into());
            self.unnamed_types = Some(Arc::new(ParamTypes::from_parse(rest)));
            let id = NEXT_UNNAMED_ID.fetch_add(1, Ordering::Relaxed);
            self.unnamed = Some((id, Bytes::copy_from_slice(frame)));
        } else {
            self.statements.define(name, rest);
        }
        Ok(())
    }

    /// Send the held messages of this batch to the server now held.
    async fn replay_held(&mut self) -> Result<(), SessionEnd> {
        for frame in std::mem::take(&mut self.held) {
            self.extended(frame).await?;
        }
        Ok(())
    }

    async fn routed_query(&mut self, frame: BytesMut) -> Result<(), SessionEnd> {
        let body = protocol::body(&frame);
        let sql = String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(body)).into_owned();
        if self.multi.as_ref().is_some_and(|m| m.failed) {
            // Even `SET shardwire.*` gets 25P02 in a failed transaction.
            return self.timed_multi_query(&frame, &sql).await;
        }
        if let Some(cmd) = control::proxy_command(&sql) {
            if matches!(cmd, Ok(ProxyCommand::Show(HintVar::CausalToken))) {
                if let Err(e) = self.resolve_written_lsns().await {
                    self.refuse(e, true);
                    return Ok(());
                }
            }
            self.proxy_command(cmd);
            return Ok(());
        }
        if self.multi.is_some() {
            return self.timed_multi_query(&frame, &sql).await;
        }
        let analysis = self.router.analysis(&sql);
        if let Err(e) = self.learn_columns(&analysis).await {
            self.refuse(e, true);
            return Ok(());
        }
        let synthetic = |s: &mut Self, tag: &str| {
            let mut buf = BytesMut::new();
            protocol::command_complete(&mut buf, tag);
            s.pending.push_back(Pending::SyntheticFrame(buf.freeze()));
            s.pending.push_back(Pending::SyntheticReady);
            s.emit_synthetic();
        };
        // PostgreSQL's tag for START TRANSACTION is its own.
        let begin_tag = match sql.trim_start().get(..5) {
            Some(w) if w.eq_ignore_ascii_case("start") => "START TRANSACTION",
            _ => "BEGIN",
        };
        match control::tx_control(&sql, &analysis) {
            Some(TxControl::Begin) if self.deferred_begin.is_some() => {
                return {
                    synthetic(self, begin_tag);
                    Ok(())
                }
            }
            Some(TxControl::Begin) if self.server.is_none() || self.tx_status == TxStatus::Idle => {
                self.deferred_begin = Some(frame.freeze());
                synthetic(self, begin_tag);
                return Ok(());
            }
            Some(TxControl::End(tag)) if self.deferred_begin.is_some() => {
                self.deferred_begin = None;
                synthetic(self, tag);
                return Ok(());
            }
            _ => {}
        }
        if control::is_neutral(&analysis) && self.server.is_some() {
            // Transaction control and SET stay with the held server.
            self.send_query(frame);
            return Ok(());
        }
        let analysis = match self.hold_moving_write(&sql, &[]).await {
            Ok(false) => analysis,
            Ok(true) => self.router.analysis(&sql),
            Err(e) => {
                self.refuse(e, true);
                return Ok(());
            }
        };
        let route = match self
            .router
            .route_analyzed(&sql, &analysis, &[], &self.hints)
        {
            Ok(r) => r,
            Err(e) => {
                self.refuse(e, true);
                return Ok(());
            }
        };
        self.settle_for(&route.shards).await?;
        if route.shards.len() > 1 {
            let timing = self.timing_for(&frame, true);
            let kind = if route.all_shards {
                RouteKind::Broadcast
            } else {
                RouteKind::Scatter
            };
            if self.try_multi_shard(&sql, &route, &analysis).await? {
                if let Some(t) = timing {
                    let failed = std::mem::take(&mut self.request_failed);
                    self.record_statement(&route.shards, kind, t, failed);
                }
                return Ok(());
            }
        }
        if self.wants_multi_tx(&route) {
            self.enter_multi_tx();
            return self.timed_multi_query(&frame, &sql).await;
        }
        let shard = match self.single_shard(&route) {
            Ok(s) => s,
            Err(e) => {
                self.refuse(e, true);
                return Ok(());
            }
        };
        let target = route.role.unwrap_or(self.read_from);
        let read = target != crate::config::ReadFrom::Primary
            && self.server.is_none()
            && self.deferred_begin.is_none()
            && self.tx_status == TxStatus::Idle
            && self.router.is_read(&analysis);
        if read {
            self.next_read = Some(target);
        } else if !control::is_neutral(&analysis) {
            self.tx_wrote = true;
        }
        if self.ensure_shard(shard, true, true).await {
            self.route_kind = route_kind(&route);
            if self.on_replica {
                self.replica_read = Some(vec![frame.clone()]);
                self.replica_answered = false;
            }
            self.send_query(frame);
        }
        self.next_read = None;
        Ok(())
    }

    async fn routed_bind(&mut self, frame: BytesMut) -> Result<(), SessionEnd> {
        let routed = {
            let bind = match bind::Bind::decode(protocol::body(&frame)) {
                Ok(x) => x,
                Err(e) => return Err(self.client_protocol_error(e.to_string())),
            };
            let stmt = bind.statement;
            let (sql, types) = if stmt.is_empty() {
                (self.unnamed_sql.clone(), self.unnamed_types.as_deref())
            } else {
                match self.statements.get(stmt) {
                    Some(s) => (Some(s.sql.clone()), Some(&*s.types)),
                    None => (None, None),
                }
            };
            let params = bind.params(types);
            match sql {
                // An unknown statement: the server reports it.
                None => Some(Ok((self.server_shard_or_default(), self.route_kind, None))),
                Some(sql) => {
                    if let Err(e) = self.hold_moving_write(&sql, &params).await {
                        self.refuse(e, false);
                        return Ok(());
                    }
                    let analysis = self.router.analysis(&sql);
                    if let Err(e) = self.learn_columns(&analysis).await {
                        self.refuse(e, false);
                        return Ok(());
                    }
                    if control::is_neutral(&analysis) {
                        None
                    } else {
                        let read = self.router.is_read(&analysis);
                        let route =
                            self.router
                                .route_analyzed(&sql, &analysis, &params, &self.hints);
                        if let Ok(r) = &route {
                            let shards = r.shards.clone();
                            self.settle_for(&shards).await?;
                            // Still held: its batch or transaction goes on,
                            // over several shards now.
                            let elsewhere =
                                shards.len() > 1 || shards.first() != Some(&self.server_shard);
                            if self.server.is_some() && elsewhere {
                                drop(params);
                                if self.enter_multi_extended().await? {
                                    return self.multi_extended(frame).await;
                                }
                                if self.skip_until_sync {
                                    return Ok(()); // the batch failed meanwhile
                                }
                                let e = self.single_shard(&route.expect("ok")).err();
                                let e = e.unwrap_or_else(|| {
                                    PgError::error(
                                        sqlstate::FEATURE_NOT_SUPPORTED,
                                        "this statement needs another shard than the transaction's",
                                    )
                                });
                                self.refuse(e, false);
                                return Ok(());
                            }
                            if r.shards.len() > 1 {
                                let r = route.expect("ok");
                                drop(params);
                                return self.scatter_bind(frame, r, sql).await;
                            }
                        }
                        if !read {
                            self.tx_wrote = true;
                        }
                        Some(route.and_then(|r| {
                            let target = r.role.unwrap_or(self.read_from);
                            let replica_ok = read
                                && target != crate::config::ReadFrom::Primary
                                && self.server.is_none()
                                && self.deferred_begin.is_none()
                                && self.tx_status == TxStatus::Idle;
                            Ok((
                                self.single_shard(&r)?,
                                route_kind(&r),
                                replica_ok.then_some(target),
                            ))
                        }))
                    }
                }
            }
        };
        match routed {
            // Transaction control and SET: with the rest of the batch.
            None if self.server.is_none() => {
                self.held_mixed = true;
                self.held.push(frame)
            }
            None => self.on_bind(frame).await?,
            Some(Err(e)) => self.refuse(e, false),
            Some(Ok((shard, kind, read))) => {
                // A read joins the held batch, to go to a replica at Sync
                // if the whole batch is such reads of one shard (bounded).
                let held_bytes: usize = self.held.iter().map(|f| f.len()).sum();
                if let Some(target) = read {
                    if !self.held_mixed
                        && self.held_read.is_none_or(|(s, ..)| s == shard)
                        && held_bytes < HIGH_WATER
                    {
                        self.held_read = Some((shard, kind, target));
                        self.held.push(frame);
                        return Ok(());
                    }
                }
                // Held reads go first, to their shard's primary.
                if let Some((held_shard, held_kind, _)) = self.held_read.take() {
                    if self.ensure_shard(held_shard, false, true).await {
                        self.route_kind = held_kind;
                        self.replay_held().await?;
                    } else {
                        return Ok(());
                    }
                }
                self.held_mixed = false;
                if self.ensure_shard(shard, false, true).await {
                    self.route_kind = kind;
                    self.replay_held().await?;
                    self.on_bind(frame).await?;
                }
            }
        }
        Ok(())
    }

    fn server_shard_or_default(&self) -> usize {
        if self.server.is_some() {
            self.server_shard
        } else {
            self.default_shard
        }
    }

    /// A Sync or Flush ends a batch with no routable Bind (Parse, Describe,
    /// transaction control): route it by its SQL if that names one shard,
    /// else to the default shard (describing is the same everywhere).
    async fn route_held_batch(&mut self, at_sync: bool) -> Result<(), SessionEnd> {
        let mixed = std::mem::take(&mut self.held_mixed);
        if let Some((shard, kind, target)) = self.held_read.take() {
            // Only a batch that ends here, with nothing but reads, may go
            // to a replica: after a Flush more may follow on this server.
            if at_sync && !mixed {
                self.next_read = Some(target);
            }
            let ok = self.ensure_shard(shard, false, true).await;
            self.next_read = None;
            if ok {
                self.route_kind = kind;
                self.replay_held().await?;
            }
            return Ok(());
        }
        let mut shard = None;
        let mut kind = RouteKind::Default;
        let mut has_bind = false;
        for f in &self.held {
            match f[0] {
                fe::BIND => has_bind = true,
                fe::PARSE if shard.is_none() => {
                    let Ok((_, rest)) = split_name(protocol::body(f), "Parse") else {
                        continue;
                    };
                    let sql = statements::parse_sql(rest);
                    if !control::is_neutral(&self.router.analysis(&sql)) {
                        let routed = self
                            .router
                            .route(&sql, &[], &self.hints)
                            .ok()
                            .and_then(|r| {
                                let one = self.single_shard(&r).ok()?;
                                Some((one, route_kind(&r)))
                            });
                        let (one, k) = routed.unwrap_or((self.default_shard, RouteKind::Default));
                        shard = Some(one);
                        kind = k;
                    }
                }
                _ => {}
            }
        }
        let shard = shard.unwrap_or(self.default_shard);
        // Only transaction control executes in such a batch: it starts the
        // deferred transaction. A Parse/Describe does not.
        if self.ensure_shard(shard, false, has_bind).await {
            self.route_kind = kind;
            self.replay_held().await?;
        }
        Ok(())
    }

    /// `SET/RESET/SHOW shardwire.*`, answered by the proxy.
    fn proxy_command(&mut self, cmd: Result<ProxyCommand, String>) {
        let mut buf = BytesMut::new();
        match cmd {
            Err(m) => {
                self.refuse(PgError::error(sqlstate::UNDEFINED_OBJECT, m), true);
                return;
            }
            Ok(ProxyCommand::Show(HintVar::CausalToken)) => {
                // Rendered in turn, after an LSN probe still in flight.
                self.pending.push_back(Pending::CausalToken);
                self.pending.push_back(Pending::SyntheticReady);
                self.emit_synthetic();
                return;
            }
            Ok(ProxyCommand::Set {
                var: HintVar::CausalToken,
                value,
                reset,
            }) => {
                if let Err(m) = value.as_deref().map_or(Ok(()), |t| self.adopt_token(t)) {
                    let err = PgError::error(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!("invalid value for parameter \"shardwire.causal_token\": {m}"),
                    )
                    .with_hint("pass the exact string SHOW shardwire.causal_token returned");
                    self.refuse(err, true);
                    return;
                }
                protocol::command_complete(&mut buf, if reset { "RESET" } else { "SET" });
            }
            Ok(ProxyCommand::Show(var)) => {
                let value = match var {
                    HintVar::Shard => self.hints.shard.clone(),
                    HintVar::ShardKey | HintVar::CausalToken => self.hints.shard_key.clone(),
                }
                .unwrap_or_default();
                protocol::row_description_text(&mut buf, &[var.name()]);
                protocol::data_row_text(&mut buf, &[Some(value.as_str())]);
                protocol::command_complete(&mut buf, "SHOW");
            }
            Ok(ProxyCommand::Set { var, value, reset }) => {
                if let (HintVar::Shard, Some(v)) = (var, &value) {
                    if !self.router.shard_names().iter().any(|s| s == v) {
                        let err = PgError::error(
                            sqlstate::INVALID_PARAMETER_VALUE,
                            format!("invalid value for parameter \"shardwire.shard\": \"{v}\""),
                        )
                        .with_hint(format!("shards: {}", self.router.shard_names().join(", ")));
                        self.refuse(err, true);
                        return;
                    }
                }
                match var {
                    HintVar::Shard => self.hints.shard = value,
                    HintVar::ShardKey | HintVar::CausalToken => self.hints.shard_key = value,
                }
                protocol::command_complete(&mut buf, if reset { "RESET" } else { "SET" });
            }
        }
        self.pending
            .push_back(Pending::SyntheticFrame(buf.freeze()));
        self.pending.push_back(Pending::SyntheticReady);
        self.emit_synthetic();
    }

    fn attach(&mut self, conn: PooledConn) {
        self.on_replica = !self.pools.iter().any(|p| Arc::ptr_eq(p, conn.pool()));
        self.cancel
            .set(&conn.target, conn.backend_pid, conn.backend_secret);
        self.server = Some(conn);
    }

    fn maybe_release(&mut self) {
        if self.pool_mode == PoolMode::Transaction && self.server.is_some() && self.is_idle() {
            if std::mem::take(&mut self.tx_wrote) && !self.on_replica && self.after_write() {
                return; // released once the LSN probe answers
            }
            if let Some(conn) = self.server.take() {
                self.release_conn(conn);
            }
        }
        // Multi-shard statements check out and release inside their call;
        // whatever path ran, a session holding nothing is idle.
        if self.server.is_none() && self.multi.is_none() {
            self.client.info.set_state(ClientState::Idle);
        }
    }

    fn release_conn(&mut self, conn: PooledConn) {
        self.cancel.clear();
        self.abort_in_flight = false;
        let on_replica = std::mem::take(&mut self.on_replica);
        self.replica_read = None;
        self.client.info.set_shard(None);
        if std::mem::take(&mut self.discard_server) {
            drop(conn); // closes it
        } else if on_replica || !conn.pool().may_park() {
            conn.release();
        } else {
            self.park_conn(conn);
        }
    }

    /// Keep a primary's connection for the next transaction (see
    /// backend::pool); it goes back at once if a checkout came to wait.
    fn park_conn(&mut self, conn: PooledConn) {
        if !self
            .park
            .as_ref()
            .is_some_and(|slot| Arc::ptr_eq(slot.pool(), conn.pool()))
        {
            self.release_parked();
            self.park = Some(conn.pool().park_slot());
        }
        if let Some(conn) = self.park.as_ref().and_then(|slot| slot.park(conn)) {
            conn.release();
        }
    }

    /// The parked connection, if it is `shard`'s primary and still there;
    /// one of another pool goes back to it.
    fn unpark(&mut self, shard: usize) -> Option<PooledConn> {
        let slot = self.park.as_ref()?;
        if Arc::ptr_eq(slot.pool(), &self.pools[shard]) {
            slot.unpark()
        } else {
            self.release_parked();
            None
        }
    }

    /// Give the parked connection (if any) back to its pool.
    fn release_parked(&mut self) {
        if let Some(conn) = self.park.as_ref().and_then(|slot| slot.take()) {
            conn.release();
        }
    }
}

/// Reset a session-pooled server for its next client: DISCARD ALL drops
/// prepared statements, temporary tables, settings and advisory locks.
async fn discard_session(conn: &mut ServerConn) -> bool {
    match conn.run_internal("DISCARD ALL", INTERNAL_TIMEOUT).await {
        Ok(()) => {
            conn.prepared.clear();
            conn.unnamed = None;
            conn.forget_custom_params();
            true
        }
        Err(e) => {
            tracing::warn!(server = %conn.target.describe(), error = ?e, "could not reset a session-pooled connection; closing it");
            false
        }
    }
}

/// The metrics' name for how a single-shard route chose its shard.
fn route_kind(r: &Route) -> RouteKind {
    if r.is_keyed() {
        RouteKind::Single
    } else {
        RouteKind::Default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_terminals() {
        assert!(Expect::Description.ended_by(b'n'));
        assert!(!Expect::Description.ended_by(b't'));
        assert!(Expect::ExecuteDone.ended_by(b's'));
        assert!(!Expect::Ready.ended_by(b'C'));
    }
}

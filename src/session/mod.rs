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
//!
//! The files, one concern each: io.rs (the loop's waiting and writing),
//! dispatch.rs (what a client frame leads to), replies.rs (what the server
//! answers), extended.rs (Parse/Bind/Describe/Close on the held server),
//! checkout.rs (holding, settling, releasing servers), deadlines.rs
//! (timeouts and timing), routed.rs (statements routed to a shard),
//! refusal.rs (refused statements abort transactions), commands.rs (SET
//! shardwire.*), state.rs (what a client leaves on its server: settings
//! that follow it, prepared statements, pins); reads.rs, fence.rs and lanes.rs (replicas, rebalance
//! fences, lanes); multi.rs, multitx.rs, multiext.rs, portal.rs and
//! streamed.rs (statements over several shards, on execute/'s fan-out,
//! merges and COPY splitting).

mod bind;
mod catalog;
mod checkout;
mod commands;
mod deadlines;
mod dispatch;
mod extended;
mod fence;
mod gathered;
mod insert_select;
mod io;
mod lanes;
mod multi;
mod multiext;
mod multitx;
mod portal;
mod reads;
mod refusal;
mod replies;
mod routed;
mod state;
pub mod statements;
mod streamed;

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
use crate::router::control::{self, HintVar, ProxyCommand, TxControl};
use crate::router::{Plan, Route, Router, SessionHints};
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

/// A query the proxy sends on the held server after a client's statement
/// and answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// `pg_current_wal_insert_lsn()` after a write: read-your-writes'
    /// position (reads.rs).
    Lsn,
    /// The session's settings after a statement that may have changed them
    /// (state.rs).
    Settings,
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
        /// A query of the proxy's own whose rows it reads (see `Probe`).
        probe: Option<Probe>,
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
    /// Where the session's writes are, per shard (read-your-writes).
    writes: reads::Writes,
    read_stats: Vec<reads::ReadStats>,
    /// A read on, or headed for, a replica.
    replica: reads::ReplicaRead,
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
    /// The savepoints the client set in its transaction on one server,
    /// oldest first: a transaction that then spans shards sets them on
    /// each shard that joins (multitx.rs).
    tx_savepoints: Vec<String>,
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
    /// A statement that may have changed settings ran on the held server
    /// since they were last read back (settings.rs).
    settings_changed: bool,
    /// The settings probe's rows so far.
    settings_rows: Option<Vec<(String, String)>>,
    /// The settings probe failed: the session ends (state.rs).
    settings_lost: bool,
    /// A statement that may change tables ran since the session was last
    /// idle: the schema generation is bumped again then (state.rs).
    changed_schema: bool,
    /// Transaction pooling: the server holds state of this client that
    /// cannot follow it (what, for errors): it stays this client's, and is
    /// reset with DISCARD ALL when the client leaves (state.rs).
    pinned: Option<&'static str>,
    /// The statement sent is a DISCARD ALL and nothing that pins: its
    /// completion unpins (state.rs).
    unpin_on_discard: bool,
    /// What the unnamed statement may do to the server session.
    unnamed_effects: control::Effects,
    /// The schema generation when the unnamed statement was defined.
    unnamed_generation: u64,
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
            writes: reads::Writes::new(shards),
            read_stats: vec![Default::default(); shards],
            replica: reads::ReplicaRead::default(),
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
            tx_savepoints: Vec::new(),
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
            settings_changed: false,
            settings_rows: None,
            settings_lost: false,
            changed_schema: false,
            pinned: None,
            unpin_on_discard: false,
            unnamed_effects: control::Effects::NONE,
            unnamed_generation: 0,
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
            // A server to be reset anyway (session pooling, or pinned) whose
            // client left mid-pipeline is brought back to idle first.
            let resets = self.pool_mode == PoolMode::Session || self.pinned.is_some();
            if resets
                && !self.is_idle()
                && self.server_out.is_empty()
                && !self.copy_in
                && !self.discard_server
            {
                let readies = self
                    .pending
                    .iter()
                    .filter(|p| {
                        matches!(
                            p,
                            Pending::Request {
                                expect: Expect::Ready,
                                ..
                            }
                        )
                    })
                    .count();
                if checkout::end_pipeline(&mut conn, readies).await {
                    self.pending.clear();
                    self.tx_status = TxStatus::Idle;
                    self.skip_until_sync = false;
                }
            }
            // Only a server with nothing in flight goes back to the pool; in
            // session pooling, only after the session's state is discarded.
            // A SET not read back yet would go to the next client unseen;
            // a pinned server is reset as in session pooling.
            if self.is_idle()
                && !self.discard_server
                && !self.settings_changed
                && ((self.pool_mode == PoolMode::Transaction && self.pinned.is_none())
                    || checkout::discard_session(&mut conn).await)
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
            if let Some(frames) = self.replica.retry.take() {
                self.replica.replaying = true;
                for f in frames {
                    if let Err(end) = self.on_client_frame(f).await {
                        return end;
                    }
                }
                self.replica.replaying = false;
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
            if self.replica.retry.is_some() {
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

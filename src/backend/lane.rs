//! Lanes: short reads of many sessions pipelined on a few shared server
//! connections.
//!
//! Why: on a small machine most of what a pooled one-statement transaction
//! costs is waking processes up. A backend that serves one client sleeps in
//! recv between statements and is woken for each one; so is the proxy task
//! that waits for its answer. A lane writes the statements of many sessions
//! to one server back to back: the backend finds the next one already in
//! its socket and answers them in a row without sleeping, and the lane
//! reads many answers per read.
//!
//! What may go through a lane is narrow, so that sharing a server cannot
//! carry one session's state into another's (the session decides; see
//! `Session::try_lane`): a complete extended-protocol batch (Bind, Describe
//! and Close of the portal, Execute, then Sync) sent outside a transaction,
//! of a named prepared SELECT that writes nothing and calls no function
//! outside a short list, and that has already run fast. Each batch ends
//! with its own Sync, so it is an implicit transaction of its own: an error
//! skips only to that batch's Sync, and the next session's batch runs as if
//! alone. The lane checks what the server says: every ReadyForQuery must
//! be idle, or it drops the connection and fails whatever is still in
//! flight on it; a setting that changes retires the lane (its connection
//! is closed once what is in flight is answered).
//!
//! A statement that runs long holds up the batches queued behind it on the
//! same server. Sessions therefore stay out of a lane whose oldest batch has
//! run longer than [`STALL`], and a statement seen slow in a lane goes back
//! to ordinary transaction pooling for that session ([`Answer::slow`]).
//!
//! A lane is a task that owns one pooled connection. It opens lazily, when
//! a session first wants it, and gives its connection back to the pool when
//! it has had nothing to do for a while, when PAUSE is in effect, or when
//! the connection reaches `max_lifetime`. Its queue is bounded; a session
//! that finds it full runs its batch the ordinary way.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, oneshot, watch};

use super::conn::{align_params, ParamSet};
use super::{Pool, PooledConn};
use crate::protocol::reader::{frame_len, FrameError};
use crate::protocol::TxStatus;
use crate::protocol::{self, be, fe, sqlstate, PgError};

/// Batches waiting for a lane to take them; a full queue sends sessions
/// the ordinary way.
const QUEUE: usize = 64;
/// Batches written to the server and not yet answered.
const MAX_IN_FLIGHT: usize = 64;
/// Sessions do not join a lane whose oldest batch has run this long.
pub const STALL: Duration = Duration::from_millis(5);
/// A batch that took this long on the server, or whose answer is this
/// large, marks its statement as not for lanes.
const SLOW: Duration = Duration::from_millis(20);
const LARGE_ANSWER: usize = 64 * 1024;
/// A lane with nothing to do for this long gives its connection back.
const IDLE: Duration = Duration::from_secs(1);
/// Bytes written to the server before the lane stops taking batches for
/// a moment (the server is not reading).
const HIGH_WATER: usize = 64 * 1024;

/// One session's batch: the frames from Bind through Sync, the statement
/// already renamed to `statement`, and where its answer goes.
pub struct Batch {
    pub frames: BytesMut,
    /// The statement's name on servers and the Parse that creates it there.
    pub statement: Arc<str>,
    pub parse: Bytes,
    pub answer: oneshot::Sender<Answer>,
}

/// What came back for a batch.
pub struct Answer {
    /// The server's messages through ReadyForQuery, for the client as they
    /// are (or an error and ReadyForQuery, if the lane lost its server).
    pub out: BytesMut,
    /// The answer has an ErrorResponse.
    pub failed: bool,
    /// The statement is not one for lanes after all (it ran long or
    /// answered a lot).
    pub slow: bool,
}

pub struct Lane {
    /// The pool's address, to tell which pool the lane is of (the lane's
    /// task holds the pool itself: the pool holds its lanes).
    pool: usize,
    /// The session parameters the lane's server is aligned to.
    params: ParamSet,
    queue: mpsc::Sender<Batch>,
    closed: AtomicBool,
    started: Instant,
    /// When the batch the server works on became the oldest in flight, in
    /// nanoseconds since `started`, plus one; 0: nothing in flight.
    head_since: AtomicU64,
}

impl Lane {
    /// Open a lane of `pool` for sessions with `params`; its task takes a
    /// connection from the pool, and batches queue meanwhile.
    pub fn open(
        pool: Arc<Pool>,
        params: ParamSet,
        max_prepared: usize,
        paused: watch::Receiver<bool>,
    ) -> Arc<Lane> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let lane = Arc::new(Lane {
            pool: Arc::as_ptr(&pool) as usize,
            params,
            queue: tx,
            closed: AtomicBool::new(false),
            started: Instant::now(),
            head_since: AtomicU64::new(0),
        });
        let task = LaneTask {
            pool,
            lane: lane.clone(),
            rx,
            max_prepared,
            paused,
            in_flight: VecDeque::new(),
            out: BytesMut::new(),
            retire: false,
        };
        tokio::spawn(task.run());
        lane
    }

    /// Whether the lane is one of `pool`'s.
    pub fn is_of(&self, pool: &Arc<Pool>) -> bool {
        self.pool == Arc::as_ptr(pool) as usize
    }

    /// Whether the lane serves sessions with these parameters.
    pub fn serves(&self, params: &ParamSet) -> bool {
        Arc::ptr_eq(&self.params, params) || *self.params == **params
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Whether a batch may join now: the lane is open and its oldest batch
    /// has not run for long. Returns a place in the queue.
    pub fn admit(&self) -> Option<mpsc::Permit<'_, Batch>> {
        if self.is_closed() {
            return None;
        }
        let head = self.head_since.load(Ordering::Relaxed);
        if head != 0 {
            let now = nanos(self.started.elapsed());
            if now.saturating_sub(head - 1) > nanos(STALL) {
                return None;
            }
        }
        self.queue.try_reserve().ok()
    }

    fn mark_head(&self, since: Option<Instant>) {
        let v = since.map_or(0, |t| nanos(t.duration_since(self.started)) + 1);
        self.head_since.store(v, Ordering::Relaxed);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A batch written to the server, waiting for its answer.
struct InFlight {
    answer: Option<oneshot::Sender<Answer>>,
    out: BytesMut,
    /// ParseComplete/CloseComplete the lane asked for (a statement it
    /// created or evicted), not shown to the client.
    swallow: u8,
    /// The statement the lane created for this batch (forgotten if its
    /// Parse fails).
    creates: Option<Arc<str>>,
    failed: bool,
}

struct LaneTask {
    pool: Arc<Pool>,
    lane: Arc<Lane>,
    rx: mpsc::Receiver<Batch>,
    max_prepared: usize,
    paused: watch::Receiver<bool>,
    in_flight: VecDeque<InFlight>,
    /// Bytes on their way to the server.
    out: BytesMut,
    /// The server's settings changed: close the lane and its connection.
    retire: bool,
}

/// Why a lane stops.
enum Stop {
    /// Idle, paused or old: its connection goes back to the pool.
    Done,
    /// The server is gone or misbehaved: in-flight batches fail.
    Lost(String),
}

impl LaneTask {
    async fn run(mut self) {
        let mut conn = match self.connect().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(server = %self.pool.target.describe(), error = %e, "lane could not get a server connection");
                self.fail_all(e).await;
                return;
            }
        };
        let stop = self.serve(&mut conn).await;
        match stop {
            // Only stops with nothing in flight and the queue closed.
            Stop::Done if self.retire => drop(conn), // closes it
            Stop::Done => conn.release(),
            Stop::Lost(cause) => {
                tracing::warn!(server = %self.pool.target.describe(), cause = %cause, "lane lost its server connection");
                self.fail_all(lost_error(&cause)).await;
                drop(conn); // closes it
            }
        }
    }

    async fn connect(&mut self) -> Result<PooledConn, PgError> {
        let mut conn = self.pool.checkout().await.map_err(|e| e.to_pg())?;
        let mut params = self.lane.params.clone();
        align_params(&mut conn, &mut params).await?;
        Ok(conn)
    }

    /// Stop taking batches; answer those still queued.
    fn close(&mut self) {
        self.lane.closed.store(true, Ordering::Relaxed);
        self.rx.close();
    }

    /// Fail every batch in flight and queued (the queue closed first, so
    /// none is left unanswered).
    async fn fail_all(&mut self, err: PgError) {
        self.close();
        self.lane.mark_head(None);
        for f in self.in_flight.drain(..) {
            if let Some(tx) = f.answer {
                let _ = tx.send(failure(&err));
            }
        }
        while let Some(batch) = self.rx.recv().await {
            let _ = batch.answer.send(failure(&err));
        }
    }

    async fn serve(&mut self, conn: &mut PooledConn) -> Stop {
        let max_lifetime = self.pool.settings().max_lifetime;
        let mut tick = tokio::time::interval(IDLE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        let mut served_since_tick = false;
        let mut closing = false;
        loop {
            // Take what is queued and write it, then read what came back.
            if !closing {
                while self.in_flight.len() < MAX_IN_FLIGHT && self.out.len() < HIGH_WATER {
                    match self.rx.try_recv() {
                        Ok(batch) => {
                            self.take(conn, batch);
                            served_since_tick = true;
                        }
                        Err(_) => break,
                    }
                }
            }
            if !self.out.is_empty() {
                match conn.writer.try_write(&self.out) {
                    Ok(0) => return Stop::Lost("the server accepts no more data".into()),
                    Ok(n) => self.out.advance(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Stop::Lost(e.to_string()),
                }
            }
            if let Err(cause) = self.drain_answers(conn) {
                return Stop::Lost(cause);
            }
            if self.retire && !closing {
                closing = true;
                self.close();
            }
            if closing && self.in_flight.is_empty() && self.out.is_empty() {
                // The queue is closed: what is left in it still runs.
                match self.rx.recv().await {
                    Some(batch) => {
                        self.take(conn, batch);
                        continue;
                    }
                    None => return Stop::Done,
                }
            }
            enum Event {
                Batch(Option<Batch>),
                Wrote(std::io::Result<usize>),
                Read(Result<usize, FrameError>),
                Tick,
            }
            let accept = !closing && self.in_flight.len() < MAX_IN_FLIGHT;
            let write = !self.out.is_empty();
            let idle = self.in_flight.is_empty() && self.out.is_empty();
            let rx = &mut self.rx;
            let out = &self.out;
            let server = &mut **conn;
            let event = std::future::poll_fn(|cx| {
                if accept {
                    if let Poll::Ready(b) = rx.poll_recv(cx) {
                        return Poll::Ready(Event::Batch(b));
                    }
                }
                if write {
                    if let Poll::Ready(r) = Pin::new(&mut server.writer).poll_write(cx, out) {
                        return Poll::Ready(Event::Wrote(r));
                    }
                }
                // Read even when idle: a server that ends the connection
                // (shutdown, terminate) says so, and the lane stops.
                if let Poll::Ready(r) = server.reader.poll_fill(cx) {
                    return Poll::Ready(Event::Read(r));
                }
                if idle && tick.poll_tick(cx).is_ready() {
                    return Poll::Ready(Event::Tick);
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Batch(Some(batch)) => {
                    self.take(conn, batch);
                    served_since_tick = true;
                }
                Event::Batch(None) => closing = true,
                Event::Wrote(Ok(0)) => return Stop::Lost("the server accepts no more data".into()),
                Event::Wrote(Ok(n)) => self.out.advance(n),
                Event::Wrote(Err(e)) => return Stop::Lost(e.to_string()),
                Event::Read(Ok(_)) => {}
                Event::Read(Err(FrameError::Closed)) => {
                    return Stop::Lost("the server closed the connection".into())
                }
                Event::Read(Err(e)) => return Stop::Lost(e.to_string()),
                Event::Tick => {
                    // PAUSE waits for servers in use: a lane gives its
                    // server back (sessions stop sending while paused).
                    let old = conn.created.elapsed() >= max_lifetime;
                    let paused = *self.paused.borrow();
                    if !std::mem::take(&mut served_since_tick) || old || paused {
                        closing = true;
                        self.close();
                    }
                }
            }
        }
    }

    /// Queue a batch for the server, creating its statement there first if
    /// the server lacks it.
    fn take(&mut self, conn: &mut PooledConn, batch: Batch) {
        let mut swallow = 0;
        let mut creates = None;
        if !conn.prepared.contains(&batch.statement) {
            if conn.prepared.len() >= self.max_prepared {
                if let Some(victim) = conn.prepared.evict_lru() {
                    protocol::rebuild(fe::CLOSE, b"S", &victim, b"", &mut self.out);
                    swallow += 1;
                }
            }
            conn.prepared.insert(batch.statement.clone());
            self.out.extend_from_slice(&batch.parse);
            swallow += 1;
            creates = Some(batch.statement);
        }
        self.out.extend_from_slice(&batch.frames);
        self.pool.stats.lane_batches.fetch_add(1, Ordering::Relaxed);
        if self.in_flight.is_empty() {
            self.lane.mark_head(Some(Instant::now()));
        }
        self.in_flight.push_back(InFlight {
            answer: Some(batch.answer),
            out: BytesMut::new(),
            swallow,
            creates,
            failed: false,
        });
    }

    /// Hand out the answers read so far, each to its batch's session.
    fn drain_answers(&mut self, conn: &mut PooledConn) -> Result<(), String> {
        let max_frame = conn.reader.max_frame();
        let mut buf = conn.reader.take_buffer();
        let result = self.answers_in(conn, &mut buf, max_frame);
        conn.reader.restore_buffer(buf);
        result
    }

    fn answers_in(
        &mut self,
        conn: &mut PooledConn,
        buf: &mut BytesMut,
        max_frame: usize,
    ) -> Result<(), String> {
        let mut head_started: Option<Instant> = None;
        while let Some(len) = frame_len(buf, max_frame).map_err(|e| e.to_string())? {
            let frame = &buf[..len];
            let tag = frame[0];
            if tag == be::PARAMETER_STATUS {
                // A setting changed (the server reloaded its config, or a
                // statement set one): the server no longer has the lane's
                // parameters. What is in flight runs; then the lane closes
                // and the connection with it.
                self.retire = true;
                buf.advance(len);
                continue;
            }
            let Some(head) = self.in_flight.front_mut() else {
                return Err(format!(
                    "the server sent a message ({}) with nothing in flight: {}",
                    tag as char,
                    if tag == be::ERROR_RESPONSE {
                        protocol::describe_error(protocol::body(frame))
                    } else {
                        String::new()
                    }
                ));
            };
            match tag {
                be::PARSE_COMPLETE | be::CLOSE_COMPLETE if head.swallow > 0 => {
                    head.swallow -= 1;
                    buf.advance(len);
                    continue;
                }
                be::ERROR_RESPONSE => {
                    if head.swallow > 0 {
                        // The lane's own Parse failed: the statement is
                        // not on the server after all.
                        head.swallow = 0;
                        if let Some(name) = head.creates.take() {
                            conn.prepared.remove(&name);
                        }
                    }
                    head.failed = true;
                }
                be::COPY_IN_RESPONSE | be::COPY_OUT_RESPONSE | be::COPY_BOTH_RESPONSE => {
                    return Err("a statement started COPY on a shared server".into())
                }
                _ => {}
            }
            head.out.extend_from_slice(frame);
            let idle = tag == be::READY_FOR_QUERY && TxStatus::of_ready(frame) == TxStatus::Idle;
            buf.advance(len);
            if tag != be::READY_FOR_QUERY {
                continue;
            }
            if !idle {
                return Err("a statement left a shared server inside a transaction".into());
            }
            let done = self.in_flight.pop_front().expect("head exists");
            let now = Instant::now();
            let began = head_started.unwrap_or_else(|| self.head_began());
            let slow = now.duration_since(began) >= SLOW || done.out.len() >= LARGE_ANSWER;
            head_started = Some(now);
            if let Some(tx) = done.answer {
                let _ = tx.send(Answer {
                    out: done.out,
                    failed: done.failed,
                    slow,
                });
            }
        }
        if head_started.is_some() {
            self.lane
                .mark_head(head_started.filter(|_| !self.in_flight.is_empty()));
        }
        Ok(())
    }

    /// When the oldest batch in flight became the oldest.
    fn head_began(&self) -> Instant {
        let v = self.lane.head_since.load(Ordering::Relaxed);
        self.lane.started + Duration::from_nanos(v.saturating_sub(1))
    }
}

pub fn lost_error(cause: &str) -> PgError {
    PgError::error(
        sqlstate::CONNECTION_FAILURE,
        format!("the server connection this statement shared with other sessions failed: {cause}"),
    )
    .with_hint("the statement may or may not have run; it only read, so it is safe to retry")
}

/// An answer that is an error, as the client sees it: the error, then
/// ReadyForQuery (the batch ended with Sync).
pub fn failure(err: &PgError) -> Answer {
    let mut out = BytesMut::new();
    err.encode(&mut out);
    protocol::ready_for_query(&mut out, TxStatus::Idle);
    Answer {
        out,
        failed: true,
        slow: false,
    }
}

//! The session's full-duplex loop: waiting on the client, the held server
//! and the deadlines at once, writing what is due both ways with bounded
//! buffers, and what happens when either side goes away.

use super::*;

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) async fn wait_io(&mut self) -> Result<(), SessionEnd> {
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
    pub(super) fn frames_waiting(&self) -> bool {
        self.client_rd.has_frame() || self.server.as_deref().is_some_and(|s| s.reader.has_frame())
    }

    /// Write to the server and the client what can be written without
    /// waiting; the rest is left to `wait_io`. Returns whether anything
    /// was written.
    pub(super) fn write_now(&mut self) -> Result<bool, SessionEnd> {
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
                        // A lost replica read is run again (replica.retry):
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

    pub(super) fn server_wrote(&mut self, n: usize) {
        self.server_out.advance(n);
        self.server_flush_upto -= n;
    }

    pub(super) fn client_wrote(&mut self, n: usize) -> Result<(), SessionEnd> {
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
    pub(super) fn try_flush_client(&mut self) -> Result<(), SessionEnd> {
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

    /// Deliver what the client is owed before possibly waiting for a server.
    pub(super) async fn flush_client_now(&mut self) {
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

    /// The held server's connection broke. A read on a replica that had
    /// not answered anything yet is retried elsewhere (the replica is
    /// banned); anything else ends the session.
    pub(super) fn lose_server(&mut self, cause: String) -> Result<(), SessionEnd> {
        if !self.replica.held_on || self.replica.answered {
            return Err(self.server_lost(cause));
        }
        let Some(read) = self.replica.running.take() else {
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
        self.replica.hold.clear();
        self.cancel.clear();
        self.replica.held_on = false;
        self.replica.retry = Some(read);
        Ok(())
    }

    pub(super) fn server_lost(&mut self, cause: String) -> SessionEnd {
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

    pub(super) fn client_protocol_error(&mut self, reason: String) -> SessionEnd {
        PgError::fatal(sqlstate::PROTOCOL_VIOLATION, reason.clone()).encode(&mut self.client_out);
        SessionEnd::ProtocolViolation(reason)
    }
}

//! Pending replies: what the held server answers, matched against what was
//! sent (`Pending`), forwarded to the client or answered by the proxy
//! itself (synthetic replies), and the transaction status the client sees.

use super::*;

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) fn drain_server_frames(&mut self) -> Result<(), SessionEnd> {
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

    pub(super) fn handle_server_frames(
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
            if frame[0] == be::ERROR_RESPONSE && self.replica.held_on && !self.replica.answered {
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
            if self.replica.held_on && !self.replica.answered && self.client_out.len() != before {
                let answer = self.client_out.split_off(before);
                self.replica.hold.extend_from_slice(&answer);
                if tag == be::READY_FOR_QUERY || self.replica.hold.len() >= HIGH_WATER {
                    let held = std::mem::take(&mut self.replica.hold);
                    self.client_out.extend_from_slice(&held);
                    self.replica.answered = true;
                }
            }
        }
    }

    pub(super) fn on_server_frame(&mut self, frame: &[u8]) {
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
                } else if let Some(Pending::Request {
                    probe: Some(probe), ..
                }) = self.pending.front()
                {
                    // The proxy's own query; its ReadyForQuery still comes.
                    match probe {
                        // The position is unknown now, so reads of this
                        // shard stay on the primary rather than risk a stale
                        // answer.
                        Probe::Lsn => {
                            if let Some(l) = self.writes.lsn.get_mut(self.server_shard) {
                                *l = u64::MAX;
                            }
                        }
                        Probe::Settings => self.settings_unreadable(frame),
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
            be::COMMAND_COMPLETE => {
                self.copy_in = false;
                if self.pinned.is_some() && protocol::body(frame).starts_with(b"DISCARD ALL") {
                    self.discarded();
                }
            }
            // No COPY is open once the server is ready again, whatever the
            // client sent or did not send.
            be::READY_FOR_QUERY => {
                self.copy_in = false;
                self.copy_open = false;
            }
            _ => {}
        }
        if matches!(
            tag,
            be::PARAMETER_DESCRIPTION | be::ROW_DESCRIPTION | be::NO_DATA
        ) {
            if let Some(Pending::Request {
                describes: Some(types),
                ..
            }) = self.pending.front()
            {
                if tag == be::PARAMETER_DESCRIPTION {
                    types.describe(frame);
                } else {
                    types.describe_result(frame);
                }
            }
        }
        if tag == be::DATA_ROW {
            if let Some(Pending::Request {
                probe: Some(probe), ..
            }) = self.pending.front()
            {
                match probe {
                    Probe::Lsn => self.on_lsn_probe_row(frame),
                    Probe::Settings => self.on_settings_row(frame),
                }
                return;
            }
        }
        let head = match self.pending.front() {
            Some(Pending::Request {
                expect, forward, ..
            }) => Some((*expect, *forward)),
            _ => None,
        };
        match head {
            Some((expect, forward)) if expect.ended_by(tag) => {
                match self.pending.pop_front() {
                    Some(Pending::Request {
                        timing: Some(t), ..
                    }) => self.statement_done(t),
                    Some(Pending::Request {
                        probe: Some(Probe::Settings),
                        ..
                    }) => self.settings_read(),
                    _ => {}
                }
                if tag == be::READY_FOR_QUERY {
                    self.tx_status = TxStatus::of_ready(frame);
                    // The client's transaction ended (not a probe's answer,
                    // which may come after the client's next statement).
                    if forward && self.tx_status == TxStatus::Idle {
                        self.tx_savepoints.clear();
                    }
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

    pub(super) fn on_parameter_status(&mut self, frame: &[u8]) {
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
    pub(super) fn forward_error(&mut self, frame: &[u8]) {
        let fields = protocol::error_fields(protocol::body(frame));
        let code = fields
            .iter()
            .find(|(k, _)| *k == b'C')
            .map(|(_, v)| v.as_str())
            .unwrap_or(sqlstate::INTERNAL_ERROR);
        self.request_failed = true;
        self.note_statement_error(code, &fields);
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

    /// Count the ErrorResponses in an answer the proxy built itself.
    pub(super) fn note_errors(&mut self, frames: &[u8]) {
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

    /// An ErrorResponse (already forwarded). In the extended protocol the
    /// server now discards everything up to Sync, so the responses we were
    /// waiting for up to there will never come.
    pub(super) fn on_server_error(&mut self) {
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
    pub(super) fn forget_syncs_sent_into_copy(&mut self) {
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
    pub(super) fn emit_synthetic(&mut self) {
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
    pub(super) fn client_status(&self) -> TxStatus {
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
}

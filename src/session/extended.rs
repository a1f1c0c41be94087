//! The extended query protocol on the held server: Parse, Bind, Describe,
//! Close and Execute, with client statement names mapped to the names the
//! server holds them under, and what each message expects back.

use super::*;

/// Where the body after the (empty) name starts in an unnamed Parse
/// frame: the tag, the length, the name's NUL.
const UNNAMED_PARSE_REST: usize = 6;

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// An extended-protocol message for the held (or default) server.
    pub(super) async fn extended(&mut self, frame: BytesMut) -> Result<(), SessionEnd> {
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
    pub(super) fn send_query(&mut self, frame: BytesMut) {
        // What cannot follow the client was refused before this point.
        self.server_mut().unnamed = None;
        let sql = protocol::body(&frame);
        let sql = std::str::from_utf8(sql.strip_suffix(b"\0").unwrap_or(sql)).unwrap_or("");
        let effects = control::effects(protocol::body(&frame));
        self.note_effects(effects, sql);
        self.send(&frame, Expect::Ready, true, None);
        self.flush_point();
    }

    pub(super) async fn on_parse(&mut self, frame: BytesMut) -> Result<(), SessionEnd> {
        let (name, rest) = match split_name(protocol::body(&frame), "Parse") {
            Ok(x) => x,
            Err(e) => return Err(self.client_protocol_error(e.to_string())),
        };
        if name.is_empty() {
            // The body after the name is the frame's tail (no copy).
            let rest_len = rest.len();
            let frame = frame.freeze();
            let id = self.define_unnamed(&frame[frame.len() - rest_len..], frame.clone());
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
    pub(super) fn prepare_on_server(&mut self, stmt: &statements::Statement, forward: bool) {
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
    pub(super) fn statement_on_server(&mut self, client_name: &str) -> Option<Arc<str>> {
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

    pub(super) async fn on_bind(&mut self, frame: BytesMut) -> Result<(), SessionEnd> {
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
        let effects = if stmt.is_empty() {
            self.unnamed_effects
        } else {
            self.statements
                .get(stmt)
                .map_or(control::Effects::NONE, |s| s.effects)
        };
        if let Some(e) = self.settings_refusal(effects.settings) {
            self.refuse(e, false);
            return Ok(());
        }
        if !self.ensure_server(false).await {
            return Ok(());
        }
        if let Some(s) = self.statements.get(stmt).cloned() {
            if (s.is_stale() || s.needs_shape_check()) && !self.shape_holds(stmt, &s).await? {
                self.refuse(
                    PgError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "cached plan must not change result type",
                    ),
                    false,
                );
                return Ok(());
            }
            if self.skip_until_sync || self.server.is_none() {
                return Ok(()); // the batch failed meanwhile (its error went out)
            }
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
        // After the Bind, which may need its own statement re-made here:
        // a DEALLOCATE ALL drops it only when it runs.
        if effects != control::Effects::NONE {
            let sql = if stmt.is_empty() {
                self.unnamed_sql.clone()
            } else {
                self.statements.get(stmt).map(|s| s.sql.clone())
            };
            self.note_effects(effects, sql.as_deref().unwrap_or(""));
        }
        Ok(())
    }

    /// Whether the client's statement `name` still has the result columns
    /// the client was told, checked on the held server after a schema
    /// change passed through the proxy: there it may be prepared afresh,
    /// where PostgreSQL alone would refuse the older plan with `0A000
    /// cached plan must not change result type`. The statement is
    /// described there (the answers before it reach the client first) and
    /// compared; a change makes it stale for good, as in PostgreSQL, until
    /// the client prepares it again. One round trip per statement per
    /// schema change.
    async fn shape_holds(
        &mut self,
        name: &str,
        stmt: &Arc<statements::Statement>,
    ) -> Result<bool, SessionEnd> {
        if stmt.is_stale() {
            return Ok(false);
        }
        let generation = crate::backend::conn::schema_generation();
        let Some(server_name) = self.statement_on_server(name) else {
            return Ok(true);
        };
        let mut describe = BytesMut::new();
        rebuild(fe::DESCRIBE, b"S", &server_name, b"", &mut describe);
        self.send(&describe, Expect::Description, false, None);
        let found = Arc::new(ParamTypes::default());
        if let Some(Pending::Request { describes, .. }) = self.pending.back_mut() {
            *describes = Some(found.clone());
        }
        self.flush_and_drain().await?;
        match (found.shape(), stmt.types.shape()) {
            (Some(now), Some(then)) if now != then => {
                tracing::info!(client = self.client_id, statement = %stmt.sql, "a prepared statement's result columns changed with the schema; it fails as in PostgreSQL until prepared again");
                stmt.mark_stale();
                Ok(false)
            }
            // Unchanged, or not described (an error, which the client got).
            (Some(_), _) => {
                stmt.shape_verified(generation);
                Ok(true)
            }
            _ => Ok(true),
        }
    }

    pub(super) async fn on_describe(&mut self, frame: BytesMut) -> Result<(), SessionEnd> {
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
    pub(super) fn statement_types(&self, name: &str) -> Option<Arc<ParamTypes>> {
        if name.is_empty() {
            self.unnamed_types.clone()
        } else {
            self.statements.get(name).map(|s| s.types.clone())
        }
    }

    pub(super) async fn on_close(&mut self, frame: BytesMut) -> Result<(), SessionEnd> {
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
    pub(super) fn send(
        &mut self,
        frame: &[u8],
        expect: Expect,
        forward: bool,
        creates: Option<Creates>,
    ) {
        self.server_out.extend_from_slice(frame);
        let timing = self.timing_for(frame, forward);
        self.pending.push_back(Pending::Request {
            expect,
            forward,
            creates,
            timing,
            probe: None,
            describes: None,
        });
        if self.server_out.len() >= HIGH_WATER {
            self.flush_point();
        }
    }

    /// Everything queued for the server so far may be written.
    pub(super) fn flush_point(&mut self) {
        self.server_flush_upto = self.server_out.len();
    }

    pub(super) fn server_mut(&mut self) -> &mut ServerConn {
        self.server
            .as_deref_mut()
            .expect("callers check ensure_server first")
    }

    /// The client's unnamed statement is now this Parse frame (`rest`: its
    /// body after the empty name); returns the identity it has on servers.
    fn define_unnamed(&mut self, rest: &[u8], frame: Bytes) -> u64 {
        // Drivers send the same unnamed Parse again and again: its text,
        // types and effects are those worked out last time, unless a
        // schema change came through since (its result columns may differ).
        let generation = crate::backend::conn::schema_generation();
        let same = self.unnamed_sql.is_some()
            && self.unnamed_types.is_some()
            && self.unnamed_generation == generation
            && matches!(&self.unnamed, Some((_, old)) if old.get(UNNAMED_PARSE_REST..) == Some(rest));
        if !same {
            let sql = statements::parse_sql(rest);
            self.unnamed_effects = control::effects(sql.as_bytes());
            self.unnamed_sql = Some(sql.into());
            self.unnamed_types = Some(Arc::new(ParamTypes::from_parse(rest)));
            self.unnamed_generation = generation;
        }
        let id = NEXT_UNNAMED_ID.fetch_add(1, Ordering::Relaxed);
        self.unnamed = Some((id, frame));
        id
    }

    /// Record a held Parse's statement, so a Bind can be routed by its SQL.
    pub(super) fn note_parse(&mut self, frame: &[u8]) -> Result<(), SessionEnd> {
        let (name, rest) = match split_name(protocol::body(frame), "Parse") {
            Ok(x) => x,
            Err(e) => return Err(self.client_protocol_error(e.to_string())),
        };
        if name.is_empty() {
            self.define_unnamed(rest, Bytes::copy_from_slice(frame));
        } else {
            self.statements.define(name, rest);
        }
        Ok(())
    }
}

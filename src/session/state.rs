//! What a client leaves on its server session (DESIGN §3), by the effects
//! `router::control::effects` finds in each statement:
//!
//! - **Settings follow their client.** PostgreSQL reports only a few
//!   settings (GUC_REPORT) with ParameterStatus; `search_path`,
//!   `statement_timeout`, `work_mem`, `role` and the rest change silently.
//!   After a statement that may have changed them (SET, RESET, DISCARD,
//!   `set_config`, DO, CALL), once its server is idle and before it goes
//!   to anyone else, the session reads that server's session-level
//!   settings back and makes them the client's: applied to every server the
//!   client gets next (`backend::conn::sync_params`) and reset on the server
//!   before another client gets it (the server's `custom_params`).
//! - **Prepared statements**: a DEALLOCATE ALL or DISCARD ALL is followed;
//!   a schema change gives later prepares new server-side names
//!   (`backend::conn::schema_changed`).
//! - **State that cannot follow** (LISTEN, temporary tables, session
//!   advisory locks, SQL PREPARE, WITH HOLD cursors, LOAD) pins the server
//!   to its client until it disconnects.
//!
//! A statement over several shards with any of these is refused: its
//! servers go back to their pools at once, with no one to read them back.

use std::collections::BTreeMap;

use super::*;
use crate::router::control::{Effects, SettingsEffect};

/// The server's session-level settings: everything a SET, RESET or
/// `set_config` of a session left (source `session`), every setting the
/// proxy tracks whatever its source, and the role. The client's own
/// statement_timeout (say 1ms) must not cancel the scan of pg_settings:
/// its value is read first (a one-column row, cheap), then set to 0 for the
/// rest of the string's implicit transaction only.
const SETTINGS_QUERY: &str = "SELECT pg_catalog.current_setting('statement_timeout'); \
     SET LOCAL statement_timeout = 0; \
     SELECT name, current_setting(name) FROM pg_catalog.pg_settings \
     WHERE (source = 'session' OR name IN ('application_name', 'client_encoding', 'DateStyle', \
     'IntervalStyle', 'TimeZone', 'standard_conforming_strings', 'search_path', \
     'default_transaction_read_only')) \
     AND name NOT IN ('role', 'session_authorization', 'statement_timeout') \
     UNION ALL SELECT 'role', pg_catalog.current_setting('role') \
     WHERE pg_catalog.current_setting('role') <> 'none'";

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// A client statement with these effects goes to the held server now
    /// (what cannot follow the client was refused before). Settings are
    /// read back once the server is idle; statements it drops are
    /// forgotten; a schema change gives later prepares new names; state
    /// that cannot follow pins the server.
    /// `sql` is the statement, for the log.
    pub(super) fn note_effects(&mut self, effects: Effects, sql: &str) {
        if effects.settings != SettingsEffect::None {
            self.settings_changed = true;
        }
        if effects.schema {
            self.schema_may_change();
        }
        if let Some(what) = effects.pins {
            self.pin(what, sql);
        }
        // DISCARD ALL ends what pins the server once it has run (its
        // CommandComplete: `discarded`), unless the same string makes more.
        self.unpin_on_discard =
            effects.drops_statements && effects.resets_settings && effects.pins.is_none();
        let Some(s) = self.server.as_deref_mut() else {
            return;
        };
        if effects.drops_statements {
            s.prepared.clear();
            s.unnamed = None;
        }
        if effects.resets_settings {
            // Reported parameters come back as ParameterStatus, the rest
            // with the settings read-back.
            s.forget_custom_params();
        }
    }

    /// The 0A000 for a change that cannot follow the client, where servers
    /// are shared. In session pooling DISCARD ALL resets it before the
    /// server is anyone else's.
    pub(super) fn settings_refusal(&self, effect: SettingsEffect) -> Option<PgError> {
        match effect {
            SettingsEffect::Unfollowable(why) if self.pool_mode == PoolMode::Transaction => Some(
                PgError::error(sqlstate::FEATURE_NOT_SUPPORTED, why).with_hint(
                    "use a database with pool_mode = \"session\", or SET ROLE, which follows the client",
                ),
            ),
            _ => None,
        }
    }

    /// A statement that may change tables runs now: statements prepared
    /// from now on get new server-side names (backend::conn::schema_changed),
    /// and again once it is done (`maybe_release`), and INSERTs without a
    /// column list read their column order again (router::columns).
    pub(super) fn schema_may_change(&mut self) {
        crate::backend::conn::schema_changed();
        self.changed_schema = true;
        self.router.columns.clear();
    }

    /// A server error that says the proxy's idea of its prepared
    /// statements may be wrong. A plan that no longer fits its table, where
    /// the proxy saw no schema change (DDL sent to the shard directly), may
    /// be another client's older statement under the same name: a new
    /// generation makes later prepares fresh, and this server, whose other
    /// statements may be as old, is closed once released. A proxy-named
    /// statement the server lacks (a DEALLOCATE inside a function, say):
    /// the server is closed too, as what else it lacks is unknown.
    pub(super) fn note_statement_error(&mut self, code: &str, fields: &[(u8, String)]) {
        let message = || {
            fields
                .iter()
                .find(|(k, _)| *k == b'M')
                .map_or("", |(_, m)| m.as_str())
        };
        // A cached plan whose parameter or result type was dropped (an enum
        // recreated) fails with "cache lookup failed for type N".
        let stale_plan = (code == sqlstate::FEATURE_NOT_SUPPORTED
            && message() == "cached plan must not change result type")
            || (code == sqlstate::INTERNAL_ERROR && message().starts_with("cache lookup failed"));
        if stale_plan {
            crate::backend::conn::schema_changed();
            self.discard_server = true;
        } else if code == sqlstate::INVALID_SQL_STATEMENT_NAME && message().contains("\"sw_") {
            self.discard_server = true;
        }
    }

    /// Keep the held server for this client: `what` lives on it and must
    /// reach no one else (transaction pooling; in session pooling the
    /// server is the client's anyway). Logged once per client.
    pub(super) fn pin(&mut self, what: &'static str, sql: &str) {
        if self.pool_mode != PoolMode::Transaction || self.pinned.is_some() {
            return;
        }
        self.pinned = Some(what);
        self.client.info.set_pinned_by(Some(what));
        self.proxy.metrics.pins.fetch_add(1, Ordering::Relaxed);
        // The statement, cut short at a character boundary.
        let mut end = sql.len().min(200);
        while !sql.is_char_boundary(end) {
            end -= 1;
        }
        tracing::info!(
            client = self.client_id,
            shard = %self.shard_name(self.server_shard),
            statement = &sql[..end],
            "{what} pins this client's server until it disconnects or runs DISCARD ALL (transaction pooling)"
        );
    }

    /// The server ran a DISCARD ALL: temporary tables, LISTEN, advisory
    /// locks, prepared statements and cursors are gone, and the server may
    /// be shared again once idle.
    pub(super) fn discarded(&mut self) {
        if std::mem::take(&mut self.unpin_on_discard) && self.pinned.take().is_some() {
            self.client.info.set_pinned_by(None);
        }
    }

    /// The 0A000 for a statement that needs servers other than the one
    /// this client has pinned.
    pub(super) fn pinned_error(&self) -> Option<PgError> {
        let what = self.pinned?;
        Some(
            PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "this session keeps its server on shard \"{}\" for {what}, so a statement over several shards cannot run in it",
                    self.shard_name(self.server_shard)
                ),
            )
            .with_hint("run it from another connection, or use a database with pool_mode = \"session\""),
        )
    }

    /// The 0A000 for a statement over several shards that may change
    /// settings, if `sql` is one.
    pub(super) fn multi_shard_settings_error(&self, sql: &[u8]) -> Option<PgError> {
        let effects = control::effects(sql);
        if let Some(what) = effects.pins {
            return Some(
                PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("{what} cannot be made on several shards at once"),
                )
                .with_hint("make it in a statement of its own that runs on one shard"),
            );
        }
        match effects.settings {
            SettingsEffect::None => None,
            _ => Some(
                PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "a statement that changes session settings cannot run over several shards",
                )
                .with_hint(
                    "SET outside a transaction over several shards (or SET LOCAL inside one), as a query of its own",
                ),
            ),
        }
    }

    /// Ask the held, idle server for its settings (see the module comment).
    /// Returns true when the probe was sent: the server stays held until it
    /// answers.
    pub(super) fn probe_settings(&mut self) -> bool {
        if !self.settings_changed || self.server.is_none() || !self.is_idle() {
            return false;
        }
        self.settings_changed = false;
        self.settings_rows = Some(Vec::new());
        self.send_probe(SETTINGS_QUERY, Probe::Settings);
        true
    }

    /// Send a query of the proxy's own to the held server, its answer read
    /// by the proxy (`probe`), not the client's.
    pub(super) fn send_probe(&mut self, sql: &str, probe: Probe) {
        let mut q = BytesMut::new();
        protocol::query_frame(&mut q, sql);
        self.server_out.extend_from_slice(&q);
        self.pending.push_back(Pending::Request {
            expect: Expect::Ready,
            forward: false,
            creates: None,
            timing: None,
            probe: Some(probe),
            describes: None,
        });
        self.flush_point();
    }

    /// A row of the settings probe: a name and its value.
    pub(super) fn on_settings_row(&mut self, frame: &[u8]) {
        let Ok(values) = protocol::data_row_values(frame) else {
            return;
        };
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let row = match &values[..] {
            [Some(timeout)] => ("statement_timeout".to_string(), text(timeout)),
            [Some(name), Some(value)] => (text(name), text(value)),
            _ => return,
        };
        if let Some(rows) = self.settings_rows.as_mut() {
            rows.push(row);
        }
    }

    /// The probe failed: what the server's session holds is unknown, so it
    /// is closed rather than handed to anyone, and the client, whose
    /// settings could not follow it, is disconnected at its next message
    /// (`settings_lost_end`) rather than run without them.
    pub(super) fn settings_unreadable(&mut self, frame: &[u8]) {
        let fields = protocol::error_fields(protocol::body(frame));
        tracing::error!(client = self.client_id, error = ?fields, "could not read a server's settings back after a SET; closing that server and the session");
        self.settings_rows = None;
        self.discard_server = true;
        self.settings_lost = true;
    }

    /// The end of a session whose settings could not be read back.
    pub(super) fn settings_lost_end(&mut self) -> SessionEnd {
        let why = "the session's settings could not be read back after a SET";
        PgError::fatal(sqlstate::CONNECTION_FAILURE, why)
            .with_hint("reconnect and SET again")
            .encode(&mut self.client_out);
        SessionEnd::ServerLost(why.into())
    }

    /// The probe answered: its settings are the client's now, and the
    /// server knows which of them to reset for its next client.
    pub(super) fn settings_read(&mut self) {
        let Some(rows) = self.settings_rows.take() else {
            return;
        };
        let now: BTreeMap<String, String> = rows.into_iter().collect();
        let wanted = Arc::make_mut(&mut self.wanted_params);
        // A setting the client RESET is gone from `now`; the tracked ones
        // stay (their defaults are part of every client's set).
        wanted.retain(|k, _| is_tracked(k) || now.contains_key(k));
        for (k, v) in &now {
            wanted.insert(k.clone(), v.clone());
        }
        if let Some(conn) = self.server.as_deref_mut() {
            conn.note_session_settings(&now, &self.wanted_params);
        }
    }
}

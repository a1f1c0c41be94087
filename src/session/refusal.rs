//! A statement the proxy refuses: the client's error, and, inside a
//! transaction, aborting it as a server error would (issue 19, case 8).

use super::*;

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
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
    pub(super) fn refuse(&mut self, err: PgError, simple: bool) {
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
            self.replica.batch = None;
            self.replica.batch_mixed = false;
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
    pub(super) fn abort_server_tx(&mut self, forward: bool) {
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
            probe: None,
            describes: None,
        });
        // A simple Query drops the server's unnamed statement.
        if let Some(s) = self.server.as_deref_mut() {
            s.unnamed = None;
        }
        self.abort_in_flight = true;
        self.flush_point();
    }
}

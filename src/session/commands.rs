//! The proxy's own commands: `SET/RESET/SHOW shardwire.*`.

use super::*;

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// `SET/RESET/SHOW shardwire.*`, answered by the proxy.
    pub(super) fn proxy_command(&mut self, cmd: Result<ProxyCommand, String>) {
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
}

//! What the session reads from a shard's catalog so that statements can be
//! routed: the column order of a sharded table, for an INSERT or COPY
//! without a column list (where among a row's values the shard key is).
//! The router keeps the answer (router::columns) and does no I/O itself.

use super::*;
use crate::backend::PooledConn;
use crate::router::{Analysis, TableRule};

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Make sure the router knows the column order of every table the
    /// statements of `analysis` INSERT into without a column list. The
    /// catalog is read on a connection of the default shard (every shard
    /// has the same schema), with the client's settings (search_path).
    pub(super) async fn learn_columns(&mut self, analysis: &Analysis) -> Result<(), PgError> {
        let missing = self.router.missing_columns(analysis);
        if missing.is_empty() {
            return Ok(());
        }
        let generation = self.router.columns.generation();
        let pool = self.pools[self.default_shard].clone();
        let mut conn = pool.checkout().await.map_err(|e| e.to_pg())?;
        align_params(&mut conn, &mut self.wanted_params).await?;
        for table in missing {
            let columns = table_columns(&mut conn, &table).await?;
            self.router.columns.put(&table.name, columns, generation);
        }
        conn.release();
        Ok(())
    }
}

/// The columns of `table` in order (dropped ones left out).
pub(super) async fn table_columns(
    conn: &mut PooledConn,
    table: &TableRule,
) -> Result<Vec<String>, PgError> {
    let name = protocol::quote_literal(&protocol::quote_ident(&table.name));
    let sql = format!(
        "select array_to_json(array_agg(attname::text order by attnum))::text from pg_attribute \
         where attrelid = to_regclass({name}) and attnum > 0 and not attisdropped"
    );
    let c = conn
        .run_collect(&sql, INTERNAL_TIMEOUT, 1024 * 1024)
        .await
        .map_err(|e| e.to_pg())?;
    if let Some(e) = c.error {
        return Err(PgError::error(
            sqlstate::INTERNAL_ERROR,
            format!(
                "cannot read the columns of table \"{}\": {}",
                table.name,
                protocol::describe_error(protocol::body(&e))
            ),
        ));
    }
    let columns: Option<Vec<String>> = c
        .first_value()
        .and_then(|json| serde_json::from_str(&json).ok());
    columns.ok_or_else(|| {
        PgError::error(
            sqlstate::UNDEFINED_TABLE,
            format!("relation \"{}\" does not exist", table.name),
        )
    })
}

/// The position of the table's shard key among all its columns (a COPY
/// without a column list copies them all).
pub(super) async fn key_position(
    conn: &mut PooledConn,
    table: &TableRule,
) -> Result<usize, PgError> {
    let columns = table_columns(conn, table).await?;
    columns.iter().position(|c| *c == table.key).ok_or_else(|| {
        PgError::error(
            sqlstate::UNDEFINED_COLUMN,
            format!(
                "COPY into sharded table \"{}\": cannot find its shard key column \"{}\"",
                table.name, table.key
            ),
        )
        .with_hint("list the columns: COPY table (col, ...) FROM STDIN")
    })
}

//! `INSERT ... SELECT` whose rows the target's shards cannot compute
//! themselves (tier 2 of DESIGN §6: a plan feeding a split insert). The
//! SELECT runs as a tier-3 read on the merge connection (router::gather),
//! inserting into a temporary table shaped like the target's listed
//! columns, so PostgreSQL itself resolves the SELECT's types against the
//! target's (assignment casts, untyped literals) exactly as the INSERT
//! would; the rows are then read back and inserted into the target's
//! shards by key, with the statement's own ON CONFLICT and RETURNING.
//!
//! The SELECT reaches the merge connection as the client wrote it (cut
//! from the text at the place sqlparser found it, and checked by parsing
//! the cut again), with its sharded tables' names rewritten.

use serde::Serialize;
use sqlparser::ast::{Insert, Query, SetExpr, Spanned, Statement, TableObject};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::analyze::{lookup, Tables};
use super::gather::{gather, quote_ident, Gather};
use super::occurrences::footprint;

/// Where the rows go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    /// A sharded table: each row to its key's shard.
    Sharded,
    /// A reference table: every row to every shard.
    Reference,
    /// An unsharded table: the default shard.
    Unsharded,
}

/// An INSERT ... SELECT run as a read, then a split insert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InsertSelect {
    /// The target's rule name (or, unsharded, its name).
    pub target: String,
    pub destination: Destination,
    /// The target as the statement writes it.
    pub target_source: String,
    /// The column list as written, with its parentheses ("" for all).
    pub columns: String,
    /// The SELECT, gathered (its `sql`/`sql_all` are the SELECT alone).
    pub source: Gather,
    /// Each shard's INSERT is `prefix` + `VALUES (...), ...` + `suffix`.
    pub prefix: String,
    pub suffix: String,
}

/// The name of the temporary table the SELECT's rows go to.
pub const ROWS_TABLE: &str = "shardwire_rows";

impl InsertSelect {
    /// The statement that fills the rows table on the merge connection
    /// from `select` (the source's `sql` or `sql_all`).
    pub fn fill_sql(&self, select: &str) -> String {
        format!(
            "INSERT INTO pg_temp.{} {} {select}",
            quote_ident(ROWS_TABLE),
            self.columns
        )
    }

    /// The rows table, shaped like the target's listed columns.
    pub fn create_sql(&self) -> String {
        let cols = self
            .columns
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')');
        format!(
            "CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WHERE false",
            quote_ident(ROWS_TABLE),
            if cols.trim().is_empty() { "*" } else { cols },
            self.target_source
        )
    }
}

/// The plan of an INSERT whose source is a query (not VALUES), or None
/// when the text cannot be cut as needed.
pub fn insert_select(
    sql: &str,
    ins: &Insert,
    tables: &Tables,
    functions: &[String],
) -> Option<InsertSelect> {
    let TableObject::TableName(name) = &ins.table else {
        return None;
    };
    let source = ins.source.as_deref()?;
    if matches!(source.body.as_ref(), SetExpr::Values(_)) || ins.table_alias.is_some() {
        return None;
    }
    let (start, end) = cut(sql, source)?;
    let select = &sql[start..end];
    // The SELECT alone, analyzed as a statement of its own (its places
    // are then places in `select`).
    let parsed = Parser::parse_sql(&PostgreSqlDialect {}, select).ok()?;
    let [stmt @ Statement::Query(_)] = &parsed[..] else {
        return None;
    };
    let fp = footprint(stmt, tables);
    if fp.not_understood.is_some() {
        return None;
    }
    let gathered = gather(select, &fp.names, functions, false)?;
    let (target, destination) = match lookup(name, tables) {
        Some(t) if t.is_reference() => (t.name.clone(), Destination::Reference),
        Some(t) => (t.name.clone(), Destination::Sharded),
        None => (name.to_string(), Destination::Unsharded),
    };
    let columns = if ins.columns.is_empty() {
        String::new()
    } else {
        format!(
            "({})",
            ins.columns
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    // Each shard's INSERT: the statement with its source replaced by one
    // VALUES row that marks where the rows go.
    let mut one = ins.clone();
    let marker = "$2147483647";
    let marker_rows =
        match &Parser::parse_sql(&PostgreSqlDialect {}, &format!("VALUES ({marker})")).ok()?[..] {
            [Statement::Query(q)] => q.body.clone(),
            _ => return None,
        };
    let mut rows = Box::new(source.clone());
    rows.body = marker_rows;
    rows.with = None;
    rows.order_by = None;
    rows.limit_clause = None;
    rows.fetch = None;
    rows.locks.clear();
    one.source = Some(rows);
    let text = Statement::Insert(one).to_string();
    let values = format!("VALUES ({marker})");
    let at = text.find(&values)?;
    if text[at + values.len()..].contains(marker) {
        return None;
    }
    Some(InsertSelect {
        target,
        destination,
        target_source: name.to_string(),
        columns,
        source: gathered,
        prefix: text[..at].to_string(),
        suffix: text[at + values.len()..].to_string(),
    })
}

/// The byte range of `q` in `sql`: from where sqlparser places it to
/// where it ends, checked by parsing the cut (as its own statement) into
/// the same query. sqlparser's end can fall short of the last words (an
/// ORDER BY's `DESC`), so the end is tried at each word boundary from
/// there on.
fn cut(sql: &str, q: &Query) -> Option<(usize, usize)> {
    let span = q.span();
    let start = super::gather::byte_offset(sql, span.start.line, span.start.column)?;
    let end = super::gather::byte_offset(sql, span.end.line, span.end.column)
        .unwrap_or(sql.len())
        .max(start);
    let boundaries = (end..=sql.len()).filter(|&e| {
        sql.is_char_boundary(e)
            && (e == sql.len() || sql[e..].starts_with(|c: char| c.is_whitespace() || c == ';'))
    });
    for e in boundaries.take(64) {
        let piece = &sql[start..e];
        let Ok(parsed) = Parser::parse_sql(&PostgreSqlDialect {}, piece) else {
            continue;
        };
        if let [Statement::Query(p)] = &parsed[..] {
            if **p == *q {
                return Some((start, e));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{KeyType, Placement, TableRule};
    use crate::sharding::HashRing;
    use std::sync::Arc;

    fn tables() -> Tables {
        ["orders", "customers"]
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    Arc::new(TableRule {
                        name: n.to_string(),
                        key: "id".into(),
                        key_type: KeyType::Int,
                        placement: Placement::Hash(
                            HashRing::new(&["s0", "s1"], 16).unwrap(),
                            vec![0, 1],
                        ),
                        placement_id: "hash:16".into(),
                    }),
                )
            })
            .collect()
    }

    fn plan(sql: &str) -> Option<InsertSelect> {
        let parsed = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        let Statement::Insert(ins) = &parsed[0] else {
            panic!("not an insert")
        };
        insert_select(sql, ins, &tables(), &[])
    }

    #[test]
    fn the_select_is_cut_from_the_text_and_the_insert_keeps_its_clauses() {
        let p = plan(
            "insert into orders (id, total) select c.id + 1000, sum(o.total) from customers c join orders o on o.id = c.id group by c.id order by 1 limit 5 on conflict (id) do update set total = excluded.total returning id, total",
        )
        .unwrap();
        assert_eq!(p.destination, Destination::Sharded);
        assert_eq!(p.columns, "(id, total)");
        assert_eq!(
            p.fill_sql(&p.source.sql),
            "INSERT INTO pg_temp.\"shardwire_rows\" (id, total) select c.id + 1000, sum(o.total) from pg_temp.\"customers\" c join pg_temp.\"orders\" o on o.id = c.id group by c.id order by 1 limit 5"
        );
        assert_eq!(p.prefix, "INSERT INTO orders (id, total) ");
        assert_eq!(
            p.suffix,
            " ON CONFLICT(id) DO UPDATE SET total = excluded.total RETURNING id, total"
        );
        assert_eq!(
            p.create_sql(),
            "CREATE TEMP TABLE \"shardwire_rows\" ON COMMIT DROP AS SELECT id, total FROM orders WHERE false"
        );
        // Into an unsharded table, no column list, a CTE in the SELECT.
        let p =
            plan("insert into audit with x as (select id from customers) select id, 'x' from x")
                .unwrap();
        assert_eq!(p.destination, Destination::Unsharded);
        assert_eq!(
            p.source.sql,
            "with x as (select id from pg_temp.\"customers\") select id, 'x' from x"
        );
        assert!(p.create_sql().contains("SELECT * FROM audit WHERE false"));
    }

    #[test]
    fn a_select_ending_in_desc_is_cut_whole() {
        let p =
            plan("insert into orders (id) select id from customers order by id desc returning id")
                .unwrap();
        assert!(
            p.source.sql.ends_with("order by id desc"),
            "{}",
            p.source.sql
        );
        assert_eq!(p.suffix, " RETURNING id");
    }

    #[test]
    fn values_and_odd_forms_are_not_planned() {
        assert!(plan("insert into orders (id) values (1)").is_none());
        assert!(plan("insert into orders as o (id) select id from customers").is_none());
    }
}

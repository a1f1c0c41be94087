//! Tier 3 of cross-shard reads (DESIGN §6): a SELECT whose answer the
//! shards cannot give together (a join of tables that are not co-located,
//! a set operation, a window over every row, an aggregate the proxy does
//! not combine, a sharded table with an unsharded one) is answered by
//! PostgreSQL itself. Each sharded table it reads is copied, from every
//! shard that holds it, into a temporary table of the same name on one
//! merge connection (the default shard's primary, where the unsharded
//! tables and a copy of every reference table live), and the statement
//! runs there with each sharded table's name replaced by its copy's
//! (`pg_temp."orders"`). Types, NULLs, collations and every function then
//! behave exactly as in one database, because one database answers.
//!
//! This module decides whether a statement can be gathered and writes the
//! statement for the merge connection; `execute::gather` moves the rows.
//! The rewrite works on the text, at the places sqlparser found each name,
//! so the rest of the statement reaches PostgreSQL exactly as written. A
//! name whose written form cannot be found again at its place is not
//! rewritten and the statement is not gathered (it stays refused).

use serde::Serialize;
use sqlparser::ast::{ObjectName, ObjectNamePart};

use super::analyze::normalize_ident;
use super::occurrences::Relation;

/// A statement answered on the merge connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gather {
    /// Each table read, once: the sharded ones, then (`local`) the
    /// unsharded and reference ones.
    pub tables: Vec<GatheredTable>,
    /// The statement with every sharded table's name replaced by its
    /// temporary copy's (the merge connection reads the others itself).
    pub sql: String,
    /// The statement with every table's name replaced by its copy's: for
    /// a merge connection outside the client's transaction, which must
    /// read even the unsharded and reference tables as the transaction
    /// sees them. None when one of those names could not be placed.
    pub sql_all: Option<String>,
    /// A function the statement calls whose answer belongs to the client's
    /// transaction or server session (`now()`, `txid_current()`,
    /// `current_setting()`, `currval()`): inside a transaction the merge
    /// connection is not the transaction's, so such a read is refused
    /// there.
    pub transaction_bound: Option<String>,
}

/// Functions whose answer depends on the transaction or server session
/// they run in.
pub const TRANSACTION_BOUND: &[&str] = &[
    "now",
    "transaction_timestamp",
    "current_timestamp",
    "current_time",
    "current_date",
    "localtime",
    "localtimestamp",
    "txid_current",
    "txid_current_if_assigned",
    "txid_current_snapshot",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "pg_current_snapshot",
    "pg_export_snapshot",
    "current_setting",
    "currval",
    "lastval",
    "pg_backend_pid",
    "pg_trigger_depth",
];

/// One table whose rows are gathered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatheredTable {
    /// Its configured name (the rule); for an unsharded table, its name.
    pub rule: String,
    /// An unsharded or reference table: copied from the default shard
    /// only, and only for `Gather::sql_all`.
    pub local: bool,
    /// Its name as the statement writes it, which is how the shards find
    /// it (the client's search_path applies there too).
    pub source: String,
    /// The temporary copy's name: the table's own, so that a column
    /// qualified by the table's name (`orders.id`) still finds it.
    pub temp: String,
}

impl GatheredTable {
    /// The copy, as the rewritten statement names it.
    pub fn temp_ref(&self) -> String {
        format!("pg_temp.{}", quote_ident(&self.temp))
    }
}

/// The gather of a read-only SELECT whose table occurrences are `names`
/// (each with its name as written), or None when a sharded one cannot be
/// placed in the text.
pub fn gather(
    sql: &str,
    names: &[(Relation, Option<ObjectName>)],
    functions: &[String],
    need_sharded: bool,
) -> Option<Gather> {
    let mut tables: Vec<GatheredTable> = Vec::new();
    let mut edits: Vec<(usize, usize, usize)> = Vec::new();
    let mut all_placed = true;
    // Sharded tables first: they must all be placed.
    for local in [false, true] {
        for (relation, written) in names {
            let rule = match (relation, local) {
                (Relation::Sharded(t), false) => t.name.clone(),
                (Relation::Reference(t), true) => t.name.clone(),
                (Relation::Unsharded(n), true) => n.clone(),
                _ => continue,
            };
            let Some((start, end, parts)) = written.as_ref().and_then(|n| locate(sql, n)) else {
                if local {
                    all_placed = false;
                    continue;
                }
                return None;
            };
            let temp = parts.last()?.clone();
            let source = sql[start..end].to_string();
            let at = match tables
                .iter()
                .position(|t| t.rule == rule && t.local == local)
            {
                Some(i) => {
                    // One rule written as two different names may be two
                    // tables (`public.orders`, `archive.orders`).
                    if normalized(&tables[i].source) != normalized(&source) {
                        if local {
                            all_placed = false;
                            continue;
                        }
                        return None;
                    }
                    i
                }
                None => {
                    // Two tables with one relation name would need one
                    // temporary name twice.
                    if tables.iter().any(|t| t.temp == temp) {
                        if local {
                            all_placed = false;
                            continue;
                        }
                        return None;
                    }
                    tables.push(GatheredTable {
                        rule,
                        local,
                        source,
                        temp,
                    });
                    tables.len() - 1
                }
            };
            edits.push((start, end, at));
        }
    }
    if need_sharded && !tables.iter().any(|t| !t.local) {
        return None;
    }
    edits.sort_unstable();
    if edits.windows(2).any(|w| w[0].1 > w[1].0) {
        return None;
    }
    let rewrite = |only_sharded: bool| {
        let mut out = String::with_capacity(sql.len() + 16 * edits.len());
        let mut from = 0;
        for &(start, end, t) in &edits {
            if only_sharded && tables[t].local {
                continue;
            }
            out.push_str(&sql[from..start]);
            out.push_str(&tables[t].temp_ref());
            from = end;
        }
        out.push_str(&sql[from..]);
        out
    };
    Some(Gather {
        sql: rewrite(true),
        sql_all: all_placed.then(|| rewrite(false)),
        tables,
        transaction_bound: functions
            .iter()
            .find(|f| TRANSACTION_BOUND.contains(&f.as_str()))
            .cloned(),
    })
}

/// A name's written form with the case PostgreSQL folds removed and the
/// spaces around its dots dropped, to compare two written forms.
fn normalized(written: &str) -> Vec<String> {
    lex_name(written, 0)
        .map(|(_, parts)| parts)
        .unwrap_or_default()
}

/// Where `name` is written in `sql` (byte range) and its parts as
/// PostgreSQL reads them; None unless the text at the name's recorded
/// place reads as exactly that name.
fn locate(sql: &str, name: &ObjectName) -> Option<(usize, usize, Vec<String>)> {
    let first = match name.0.first()? {
        ObjectNamePart::Identifier(i) => i,
        _ => return None,
    };
    let start = byte_offset(sql, first.span.start.line, first.span.start.column)?;
    let (end, parts) = lex_name(sql, start)?;
    let expected: Vec<String> = name
        .0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(normalize_ident(&i.value, i.quote_style)),
            _ => None,
        })
        .collect::<Option<_>>()?;
    (parts == expected).then_some((start, end, parts))
}

/// The byte offset of sqlparser's (line, column), both counted from 1 in
/// characters, a new line at each `\n`.
pub(super) fn byte_offset(sql: &str, line: u64, column: u64) -> Option<usize> {
    if line == 0 || column == 0 {
        return None;
    }
    let (mut l, mut c) = (1u64, 1u64);
    for (i, ch) in sql.char_indices() {
        if l == line && c == column {
            return Some(i);
        }
        if ch == '\n' {
            l += 1;
            c = 1;
        } else {
            c += 1;
        }
    }
    None
}

/// A dotted name read from `at`: where it ends and its parts (unquoted
/// ones folded to lower case, quoted ones with `""` undoubled).
fn lex_name(sql: &str, at: usize) -> Option<(usize, Vec<String>)> {
    let b = sql.as_bytes();
    let mut i = at;
    let mut parts = Vec::new();
    loop {
        if b.get(i) == Some(&b'"') {
            let mut v = String::new();
            i += 1;
            loop {
                let rest = &sql[i..];
                let q = rest.find('"')?;
                v.push_str(&rest[..q]);
                i += q + 1;
                if b.get(i) == Some(&b'"') {
                    v.push('"');
                    i += 1;
                } else {
                    break;
                }
            }
            parts.push(v);
        } else {
            let s = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80)
            {
                i += 1;
            }
            if i == s {
                return None;
            }
            parts.push(sql[s..i].to_lowercase());
        }
        // Another part follows a dot (spaces around it are allowed).
        let mut j = i;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if b.get(j) != Some(&b'.') {
            return Some((i, parts));
        }
        j += 1;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        i = j;
    }
}

/// An identifier quoted for SQL, always (the copy's name is then read
/// exactly as given, whatever its case).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::analyze::analyze;
    use crate::router::{KeyType, Placement, TableRule};
    use crate::sharding::HashRing;
    use std::sync::Arc;

    fn rule(name: &str) -> Arc<TableRule> {
        Arc::new(TableRule {
            name: name.into(),
            key: "id".into(),
            key_type: KeyType::Int,
            placement: Placement::Hash(HashRing::new(&["s0", "s1"], 16).unwrap(), vec![0, 1]),
            placement_id: "hash:16".into(),
        })
    }

    fn gathered(sql: &str) -> Option<Gather> {
        let tables: crate::router::analyze::Tables = ["orders", "customers"]
            .iter()
            .map(|n| (n.to_string(), rule(n)))
            .collect();
        let a = analyze(sql, &tables);
        a.statements[0].gather.as_deref().cloned()
    }

    #[test]
    fn every_sharded_name_becomes_its_copy() {
        let g = gathered(
            "select c.name, o.total from customers c join orders o on o.customer_id = c.id\n where o.total > 3 union all select 'x', 1 from ORDERS",
        )
        .unwrap();
        assert_eq!(
            g.sql,
            "select c.name, o.total from pg_temp.\"customers\" c join pg_temp.\"orders\" o on o.customer_id = c.id\n where o.total > 3 union all select 'x', 1 from pg_temp.\"orders\""
        );
        let t: Vec<(&str, &str)> = g
            .tables
            .iter()
            .map(|t| (t.rule.as_str(), t.source.as_str()))
            .collect();
        assert_eq!(t, [("customers", "customers"), ("orders", "orders")]);
        assert_eq!(g.sql_all.as_deref(), Some(g.sql.as_str()));
        // A qualified name, spaces around its dot, is read from its schema.
        let g =
            gathered("select count(*) from public . orders o join customers c on c.id = o.id + 1")
                .unwrap();
        assert_eq!(g.tables[0].source, "public . orders");
        assert!(
            g.sql.contains("from pg_temp.\"orders\" o join"),
            "{}",
            g.sql
        );
    }

    #[test]
    fn quoted_multibyte_and_subquery_names_are_placed() {
        let g = gathered(
            "select 'é', (select count(*) from \"orders\" x where x.id = c.id) from Customers c",
        )
        .unwrap();
        assert_eq!(
            g.sql,
            "select 'é', (select count(*) from pg_temp.\"orders\" x where x.id = c.id) from pg_temp.\"customers\" c"
        );
    }

    #[test]
    fn unsharded_names_are_rewritten_only_in_sql_all() {
        let g = gathered("select * from orders o join plans p on p.id = o.id join customers c on c.id = o.id + 1")
            .unwrap();
        assert_eq!(
            g.sql,
            "select * from pg_temp.\"orders\" o join plans p on p.id = o.id join pg_temp.\"customers\" c on c.id = o.id + 1"
        );
        assert_eq!(
            g.sql_all.as_deref(),
            Some("select * from pg_temp.\"orders\" o join pg_temp.\"plans\" p on p.id = o.id join pg_temp.\"customers\" c on c.id = o.id + 1")
        );
        assert!(g.tables.iter().any(|t| t.local && t.rule == "plans"));
        // A catalog stays itself.
        let g = gathered("select count(*) from orders o join pg_class c on c.oid = o.id join customers x on x.id = o.id + 1").unwrap();
        assert_eq!(g.sql_all.as_deref(), Some(g.sql.as_str()));
    }

    #[test]
    fn two_schemas_for_one_table_are_not_gathered() {
        assert!(
            gathered("select * from public.orders a join archive.orders b on a.id = b.id")
                .is_none()
        );
    }

    #[test]
    fn table_command_and_writes_are_not_gathered() {
        assert!(gathered("table orders").is_none());
        assert!(gathered("select * from orders for update").is_none());
        assert!(gathered("with d as (delete from orders returning *) select * from d").is_none());
    }
}

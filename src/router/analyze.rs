//! Statement analysis: from SQL text to what routing needs to know, before
//! any parameter value is known (so the result can be cached by SQL text).
//!
//! For each statement: what kind it is, whether it writes, and where it
//! may go: from every table reference it makes (occurrences.rs), the key
//! values that pin each sharded one (literals, `$n` parameters, INSERT
//! rows, COPY columns), the unsharded tables that pin it to the default
//! shard; for a SELECT that may run on several shards, how the answers
//! merge (mergeable.rs); or why it is refused. Statements sqlparser cannot
//! parse fall back to a keyword classifier (fallback.rs).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use sqlparser::ast::{
    visit_expressions, visit_relations, visit_statements, CopySource, CopyTarget, Expr, FromTable,
    ObjectName, ObjectNamePart, Query, SetExpr, Statement, TableFactor, TableObject, Visit,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::fallback;
use super::gather::{gather, Gather};
use super::insert_select::{insert_select, InsertSelect};
use super::mergeable::merge_kind;
pub use super::mergeable::{Agg, CmpOp, Having, Merge, Operand, SortColumn, SortKey};
use super::occurrences::{footprint, query_footprint, Footprint};
pub use super::occurrences::{key_expr, last_ident};
use super::{Placement, TableRule};
use crate::protocol::sqlstate;

/// Where a key value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyExpr {
    /// A numeric literal, as written.
    Number(String),
    /// A string literal.
    String(String),
    /// `$n`, zero-based.
    Param(usize),
    /// `= ANY($n)`: every element of an array parameter, zero-based.
    AnyParam(usize),
    Null,
}

/// The key conditions found for one sharded table.
#[derive(Debug, Clone)]
pub struct KeyCondition {
    pub table: Arc<TableRule>,
    /// Values the key may take (one for `=`, several for `IN`); `None` when
    /// the statement does not restrict the key.
    pub alternatives: Option<Vec<KeyExpr>>,
}

/// A statement the proxy refuses to route, with the client-facing error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Target {
    /// No sharded or reference table: the default shard.
    Default,
    /// Reads of reference tables only: any one shard.
    AnyShard,
    /// Every shard: DDL, maintenance, writes to reference tables.
    AllShards,
    /// Sharded tables with their key conditions.
    Keyed(Vec<KeyCondition>),
    /// INSERT into a sharded table: one key per row.
    Insert {
        table: Arc<TableRule>,
        rows: Vec<KeyExpr>,
    },
    /// INSERT into a sharded table without a column list: each row's values
    /// (as key values where they are literals or parameters), the key's
    /// position known from the catalog at routing time.
    InsertPositional {
        table: Arc<TableRule>,
        rows: Vec<Vec<Option<KeyExpr>>>,
    },
    /// COPY ... FROM STDIN into a sharded table.
    CopyIn {
        table: Arc<TableRule>,
        /// Position of the key among the copied columns, when columns are listed.
        key_column: Option<usize>,
    },
    Refused(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Select,
    Insert,
    Update,
    Delete,
    Ddl,
    Maintenance,
    Copy,
    Transaction,
    Set,
    Other,
}

#[derive(Debug, Clone)]
pub struct StatementPlan {
    pub kind: Kind,
    pub writes: bool,
    /// Names (lower case, without schema) of the functions a SELECT calls,
    /// so the router can tell reads from writes by function.
    pub functions: Vec<String>,
    pub target: Target,
    /// How the answers of several shards combine into one, for a SELECT on
    /// one sharded table that may run on several shards; `None` when they
    /// cannot (the statement is then refused if it needs several shards).
    pub merge: Option<Merge>,
    /// Why the answers cannot be merged, when there is a more precise
    /// reason than "cross-shard queries of this shape are not supported".
    pub merge_refusal: Option<Refusal>,
    /// An unsharded table the statement reads or writes: it runs on the
    /// default shard, where that table's rows are, or not at all.
    pub unsharded: Option<String>,
    /// For a SELECT that writes nothing: how PostgreSQL answers it on one
    /// server from its sharded tables' gathered rows (tier 3), when the
    /// shards cannot answer it together.
    pub gather: Option<Arc<Gather>>,
    /// For an INSERT ... SELECT: how it runs as a read and a split insert
    /// when the target's shards cannot run it themselves.
    pub insert_select: Option<Arc<InsertSelect>>,
}

/// The analysis of one SQL string (which may hold several statements).
#[derive(Debug, Clone)]
pub struct Analysis {
    pub statements: Vec<StatementPlan>,
    /// Set when sqlparser could not parse the text and the keyword
    /// classifier decided instead.
    pub fallback: bool,
    /// The types casts in the SQL give its parameters (for parameters the
    /// client leaves untyped).
    pub param_casts: super::ParamCasts,
}

pub type Tables = HashMap<String, Arc<TableRule>>;

/// Analyze SQL text against the configured tables.
pub fn analyze(sql: &str, tables: &Tables) -> Analysis {
    if let Some((stmts, text)) = parse(sql) {
        return Analysis {
            statements: stmts
                .iter()
                .map(|s| plan_statement(s, tables, &text))
                .collect(),
            fallback: false,
            param_casts: super::ParamCasts::collect(&stmts),
        };
    }
    // sqlparser cannot read the whole string: analyze it statement by
    // statement, so that one statement it cannot read does not decide for
    // the others (a BEGIN before it, say); that one is classified by its
    // keywords, which refuses it if it names a configured table.
    let mut statements = Vec::new();
    let mut parsed = Vec::new();
    let mut fallback = false;
    for piece in fallback::split_statements(sql) {
        match parse(piece) {
            Some((stmts, text)) => {
                statements.extend(stmts.iter().map(|s| plan_statement(s, tables, &text)));
                parsed.extend(stmts);
            }
            None => {
                fallback = true;
                statements.push(fallback::classify_keywords(piece, tables));
            }
        }
    }
    Analysis {
        statements,
        fallback,
        // Casts in a statement that could not be parsed are not seen: such
        // a parameter keeps the type the client or the server gave.
        param_casts: super::ParamCasts::collect(&parsed),
    }
}

/// The statements of `sql`, if sqlparser reads it (with COPY options it
/// does not take rewritten), and the text their places in it refer to.
fn parse(sql: &str) -> Option<(Vec<Statement>, std::borrow::Cow<'_, str>)> {
    match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(stmts) => Some((stmts, sql.into())),
        Err(_) => {
            let lenient = fallback::lenient_copy(sql)?;
            let stmts = Parser::parse_sql(&PostgreSqlDialect {}, &lenient).ok()?;
            Some((stmts, lenient.into()))
        }
    }
}

pub(super) fn plan(kind: Kind, writes: bool, target: Target) -> StatementPlan {
    StatementPlan {
        kind,
        writes,
        functions: Vec::new(),
        target,
        merge: None,
        merge_refusal: None,
        unsharded: None,
        gather: None,
        insert_select: None,
    }
}

pub(super) fn refuse(code: &'static str, message: String, hint: Option<&str>) -> Target {
    Target::Refused(Refusal {
        code,
        message,
        hint: hint.map(str::to_string),
    })
}

pub(super) const NOT_SUPPORTED: &str = sqlstate::FEATURE_NOT_SUPPORTED;
pub const HINT_ADD_KEY: &str =
    "add a condition on the shard key, or a routing hint such as /* shardwire: shard_key=... */";

fn plan_statement(stmt: &Statement, tables: &Tables, text: &str) -> StatementPlan {
    match stmt {
        Statement::Query(q) => {
            // FOR UPDATE/SHARE, SELECT INTO and data-modifying CTEs write.
            let into = matches!(&*q.body, SetExpr::Select(sel) if sel.into.is_some());
            let modifies = visit_statements(q, |st| match st {
                Statement::Insert(_)
                | Statement::Update { .. }
                | Statement::Delete(_)
                | Statement::Merge { .. } => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            })
            .is_break();
            let writes = !q.locks.is_empty() || into || modifies;
            let fp = footprint(stmt, tables);
            let mut target = footprint_target(&fp, stmt, tables, Target::AnyShard);
            if into {
                if let Some(t) = fp.sharded.first() {
                    target = refuse(
                        NOT_SUPPORTED,
                        format!(
                            "SELECT INTO from sharded table \"{}\" is not supported: the new table would hold one shard's rows",
                            t.table.name
                        ),
                        Some("create the table, then INSERT the rows through shardwire"),
                    );
                }
            }
            // Merged across shards: one sharded table, read once, in the
            // top-level FROM, with nothing that lives on one shard only.
            // Merged across shards: every sharded occurrence in the
            // top-level FROM, one of them not on the nullable side of an
            // outer join (else rows without it would come from every
            // shard), and either one table or a join on co-located keys
            // (each row of it made of one shard's rows); nothing that
            // lives on one shard only.
            let mergeable = fp.unsharded.is_none()
                && fp.sharded_top_level >= 1
                && (fp.sharded.len() == 1 && fp.sharded_top_level == 1
                    || fp.sharded.len() > 1 && fp.colocated_join);
            let (merge, merge_refusal) = match &target {
                Target::Keyed(conds) if mergeable => match merge_kind(q, &conds[0].table, tables) {
                    Ok(m) => (Some(m), None),
                    Err(r) => (None, r),
                },
                _ => (None, None),
            };
            let mut functions = called_functions(q);
            for f in fp.functions {
                if !functions.contains(&f) {
                    functions.push(f);
                }
            }
            let gather = match &target {
                Target::Keyed(_) if !writes => {
                    gather(text, &fp.names, &functions, true).map(Arc::new)
                }
                _ => None,
            };
            StatementPlan {
                merge,
                merge_refusal,
                functions,
                gather,
                unsharded: fp.unsharded,
                ..plan(Kind::Select, writes, target)
            }
        }
        Statement::Insert(ins) => {
            let fp = footprint(stmt, tables);
            let target = plan_insert(ins, stmt, &fp, tables);
            // Functions the source calls: a write there keeps the
            // statement from running as a read plus a split insert.
            let functions = ins
                .source
                .as_deref()
                .map(called_functions)
                .unwrap_or_default();
            let modifies = ins.source.as_deref().is_some_and(|q| {
                visit_statements(q, |st| match st {
                    Statement::Insert(_)
                    | Statement::Update { .. }
                    | Statement::Delete(_)
                    | Statement::Merge { .. } => ControlFlow::Break(()),
                    _ => ControlFlow::Continue(()),
                })
                .is_break()
            });
            let insert_select = if fp.not_understood.is_none() && !modifies {
                insert_select(text, ins, tables, &functions).map(Arc::new)
            } else {
                None
            };
            StatementPlan {
                unsharded: fp.unsharded,
                functions,
                insert_select,
                ..plan(Kind::Insert, true, target)
            }
        }
        Statement::Update(upd) => {
            let fp = footprint(stmt, tables);
            let target = plan_update(upd, stmt, &fp, tables);
            StatementPlan {
                unsharded: fp.unsharded,
                ..plan(Kind::Update, true, target)
            }
        }
        Statement::Delete(del) => {
            let fp = footprint(stmt, tables);
            let from = match &del.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            let target = plan_write(stmt, from.first().map(|t| &t.relation), &fp, tables);
            StatementPlan {
                unsharded: fp.unsharded,
                ..plan(Kind::Delete, true, target)
            }
        }
        Statement::Copy {
            source, to, target, ..
        } => {
            let (t, unsharded) = plan_copy(stmt, source, *to, target, tables);
            StatementPlan {
                unsharded,
                ..plan(Kind::Copy, !to, t)
            }
        }
        Statement::CreateTable(ct) => {
            let target = match ct.query.as_deref().map(|q| query_footprint(q, tables)) {
                Some(fp) if !fp.sharded.is_empty() => refuse(
                    NOT_SUPPORTED,
                    format!(
                        "CREATE TABLE ... AS from sharded table \"{}\" is not supported: every shard would fill the new table with its own rows",
                        fp.sharded[0].table.name
                    ),
                    Some("create the table, then INSERT the rows through shardwire"),
                ),
                // A temporary table belongs to one server session: the
                // default shard's, where the statements naming it (an
                // unsharded table) go; that session keeps its server.
                _ if ct.temporary => Target::Default,
                _ => Target::AllShards,
            };
            plan(Kind::Ddl, true, target)
        }
        Statement::CreateView(cv) => {
            let fp = query_footprint(&cv.query, tables);
            let target = match fp.sharded.first() {
                Some(c) => refuse(
                    NOT_SUPPORTED,
                    format!(
                        "a view over sharded table \"{}\" is not supported: each shard's view would see that shard's rows only",
                        c.table.name
                    ),
                    Some("query the table itself through shardwire"),
                ),
                None => Target::AllShards,
            };
            plan(Kind::Ddl, true, target)
        }
        // What changes the database's shape or rights reaches every shard,
        // all or nothing.
        Statement::CreateIndex(_)
        | Statement::AlterTable(_)
        | Statement::Drop { .. }
        | Statement::Truncate(_)
        | Statement::CreateSchema { .. }
        | Statement::AlterSchema(_)
        | Statement::CreateType { .. }
        | Statement::AlterType(_)
        | Statement::CreateDomain(_)
        | Statement::DropDomain(_)
        | Statement::CreateFunction(_)
        | Statement::AlterFunction(_)
        | Statement::DropFunction(_)
        | Statement::CreateProcedure { .. }
        | Statement::DropProcedure { .. }
        | Statement::CreateExtension(_)
        | Statement::DropExtension(_)
        | Statement::CreateSequence { .. }
        | Statement::CreateTrigger(_)
        | Statement::DropTrigger(_)
        | Statement::CreatePolicy(_)
        | Statement::AlterPolicy(_)
        | Statement::DropPolicy(_)
        | Statement::CreateRole(_)
        | Statement::AlterRole { .. }
        | Statement::CreateUser(_)
        | Statement::AlterUser(_)
        | Statement::CreateOperator(_)
        | Statement::CreateOperatorFamily(_)
        | Statement::CreateOperatorClass(_)
        | Statement::AlterOperator(_)
        | Statement::AlterOperatorFamily(_)
        | Statement::AlterOperatorClass(_)
        | Statement::DropOperator(_)
        | Statement::DropOperatorFamily(_)
        | Statement::DropOperatorClass(_)
        | Statement::CreateCollation(_)
        | Statement::AlterCollation(_)
        | Statement::CreateTextSearch(_)
        | Statement::AlterTextSearch(_)
        | Statement::AlterView { .. }
        | Statement::AlterIndex { .. }
        | Statement::Grant(_)
        | Statement::Revoke(_)
        | Statement::Comment { .. } => plan(Kind::Ddl, true, Target::AllShards),
        Statement::Vacuum(_) | Statement::Analyze(_) => {
            plan(Kind::Maintenance, true, Target::AllShards)
        }
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => plan(Kind::Transaction, false, Target::Default),
        Statement::Set(_) | Statement::ShowVariable { .. } => {
            plan(Kind::Set, false, Target::Default)
        }
        Statement::Explain {
            statement, analyze, ..
        } => plan_explain(statement, *analyze, tables),
        // Anything else (CALL, LISTEN, ...) goes to the default shard,
        // unless it names a configured table.
        other => {
            let target = match sharded_tables_in(other, tables).first() {
                Some(t) => refuse(
                    NOT_SUPPORTED,
                    format!("this statement on table \"{}\" cannot be routed", t.name),
                    Some("use a routing hint such as /* shardwire: shard=s0 */ to pick the shard"),
                ),
                None => Target::Default,
            };
            plan(Kind::Other, true, target)
        }
    }
}

/// EXPLAIN goes where the statement it explains would go, when that is
/// one shard: its answer is a plan, which no merge could combine.
fn plan_explain(inner: &Statement, analyze: bool, tables: &Tables) -> StatementPlan {
    if !matches!(
        inner,
        Statement::Query(_) | Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_)
    ) {
        return match sharded_tables_in(inner, tables).first() {
            Some(t) => plan(
                Kind::Other,
                true,
                refuse(
                    NOT_SUPPORTED,
                    format!(
                        "EXPLAIN of this statement on table \"{}\" cannot be routed",
                        t.name
                    ),
                    None,
                ),
            ),
            None => plan(Kind::Other, analyze, Target::Default),
        };
    }
    // No text: an EXPLAIN is never gathered (its plan would be the merge
    // connection's, over temporary tables).
    let p = plan_statement(inner, tables, "");
    let target = match p.target {
        Target::Insert { table, rows } => Target::Keyed(vec![KeyCondition {
            table,
            alternatives: Some(rows),
        }]),
        // Without ANALYZE nothing is written: any copy explains it.
        Target::AllShards if !analyze => Target::AnyShard,
        Target::AllShards | Target::InsertPositional { .. } | Target::CopyIn { .. } => refuse(
            NOT_SUPPORTED,
            "EXPLAIN of this statement cannot be routed to one shard".into(),
            Some("route it with /* shardwire: shard=... */"),
        ),
        t => t,
    };
    StatementPlan {
        kind: Kind::Other,
        writes: analyze && p.writes,
        functions: p.functions,
        target,
        merge: None,
        merge_refusal: None,
        unsharded: p.unsharded,
        gather: None,
        insert_select: None,
    }
}

/// The functions a query calls, lower case, without schema.
fn called_functions(q: &Query) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let _ = visit_expressions(q, |e: &Expr| {
        if let Expr::Function(f) = e {
            if let Some(ObjectNamePart::Identifier(i)) = f.name.0.last() {
                let n = normalize_ident(&i.value, i.quote_style);
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    names
}

/// Every configured table the statement mentions anywhere (FROM, joins,
/// subqueries, CTE bodies), in order of first mention.
fn sharded_tables_in<V: sqlparser::ast::Visit>(v: &V, tables: &Tables) -> Vec<Arc<TableRule>> {
    let mut found: Vec<Arc<TableRule>> = Vec::new();
    let _ = visit_relations(v, |name: &ObjectName| {
        if let Some(t) = lookup(name, tables) {
            if !found.iter().any(|f| Arc::ptr_eq(f, &t)) {
                found.push(t);
            }
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

/// The configured table for a (possibly schema-qualified) name. Only the
/// last part is compared: shardwire shards tables by name, whatever the
/// schema (the default `public` in practice).
pub(super) fn lookup(name: &ObjectName, tables: &Tables) -> Option<Arc<TableRule>> {
    let last = name.0.last()?;
    let ident = match last {
        ObjectNamePart::Identifier(i) => i,
        _ => return None,
    };
    tables
        .get(&normalize_ident(&ident.value, ident.quote_style))
        .cloned()
}

/// PostgreSQL folds unquoted identifiers to lower case.
pub(super) fn normalize_ident(value: &str, quote: Option<char>) -> String {
    if quote.is_some() {
        value.to_string()
    } else {
        value.to_lowercase()
    }
}

/// The table a write names, as a footprint relation.
fn written_relation(name: &ObjectName, tables: &Tables) -> Option<Arc<TableRule>> {
    lookup(name, tables)
}

/// Where a statement that reads (or writes a table that is not a reference
/// table) goes, from its footprint: a statement touching a configured
/// table whose references were not all understood is refused.
fn footprint_target<V: Visit>(
    fp: &Footprint,
    stmt: &V,
    tables: &Tables,
    reference_only: Target,
) -> Target {
    if let Some(why) = &fp.not_understood {
        if let Some(t) = sharded_tables_in(stmt, tables).first() {
            return refuse(
                NOT_SUPPORTED,
                format!(
                    "shardwire cannot tell which shards this statement on table \"{}\" needs: it has {why}",
                    t.name
                ),
                Some("rewrite it with plain FROM items, or route it with /* shardwire: shard=... */"),
            );
        }
    }
    if let Some((table, key, upsert)) = &fp.moves_key {
        return refuse(
            NOT_SUPPORTED,
            format!(
                "{} of the shard key \"{key}\" of table \"{table}\" is not supported: it could move the row to another shard",
                if *upsert { "INSERT ... ON CONFLICT DO UPDATE" } else { "UPDATE" }
            ),
            Some("DELETE the row and INSERT it with the new key"),
        );
    }
    if let Some(t) = &fp.nested_reference_write {
        return refuse(
            NOT_SUPPORTED,
            format!(
                "a data-modifying WITH that writes reference table \"{t}\" is not supported: every shard's copy must be written"
            ),
            Some("write the reference table with a statement of its own"),
        );
    }
    if !fp.sharded.is_empty() {
        return Target::Keyed(fp.sharded.clone());
    }
    if fp.unsharded.is_some() || !fp.reference {
        Target::Default
    } else {
        reference_only
    }
}

/// A write to reference table `table`: every shard runs it, so every
/// shard must compute the same rows; it may read reference tables only.
fn reference_write<V: Visit>(
    table: &TableRule,
    fp: &Footprint,
    stmt: &V,
    tables: &Tables,
) -> Target {
    let other = fp
        .sharded
        .first()
        .map(|c| format!("sharded table \"{}\"", c.table.name))
        .or_else(|| {
            fp.unsharded
                .as_ref()
                .map(|u| format!("unsharded table \"{u}\""))
        });
    if let Some(other) = other {
        return refuse(
            NOT_SUPPORTED,
            format!(
                "writing reference table \"{}\" from {other} is not supported: every shard writes its own copy and must compute the same rows",
                table.name
            ),
            Some("read the values first and write them as literals"),
        );
    }
    match footprint_target(fp, stmt, tables, Target::AllShards) {
        Target::Refused(r) => Target::Refused(r),
        _ => Target::AllShards,
    }
}

fn plan_insert(
    ins: &sqlparser::ast::Insert,
    stmt: &Statement,
    fp: &Footprint,
    tables: &Tables,
) -> Target {
    let TableObject::TableName(name) = &ins.table else {
        return footprint_target(fp, stmt, tables, Target::Default);
    };
    let Some(table) = written_relation(name, tables) else {
        // An unsharded table (on the default shard): its sources decide.
        return footprint_target(fp, stmt, tables, Target::Default);
    };
    if table.is_reference() {
        return reference_write(&table, fp, stmt, tables);
    }
    if let Target::Refused(r) = footprint_target(fp, stmt, tables, Target::Default) {
        return Target::Refused(r);
    }
    if let Some(other) = fp.sharded.get(1) {
        return refuse(
            NOT_SUPPORTED,
            format!(
                "INSERT into sharded table \"{}\" that also reads sharded table \"{}\" is not supported",
                table.name, other.table.name
            ),
            Some("read the values first, then insert them with VALUES"),
        );
    }
    let columns: Vec<String> = ins.columns.iter().filter_map(last_ident).collect();
    let Some(source) = &ins.source else {
        return refuse(
            sqlstate::NOT_NULL_VIOLATION,
            format!(
                "INSERT into sharded table \"{}\" does not set the shard key \"{}\"",
                table.name, table.key
            ),
            Some("give the shard key a value"),
        );
    };
    let SetExpr::Values(values) = source.body.as_ref() else {
        return refuse(
            NOT_SUPPORTED,
            format!(
                "INSERT ... SELECT into sharded table \"{}\" cannot be routed",
                table.name
            ),
            Some("insert the rows with VALUES, or route with /* shardwire: shard=... */"),
        );
    };
    let literal_key = || {
        refuse(
            NOT_SUPPORTED,
            format!(
                "the shard key \"{}\" of table \"{}\" must be a literal or a parameter in INSERT",
                table.key, table.name
            ),
            Some("compute the key in the application, or route with /* shardwire: shard=... */"),
        )
    };
    if columns.is_empty() {
        // No column list: the key's position comes from the catalog, at
        // routing time (the router's column cache).
        let rows = values
            .rows
            .iter()
            .map(|row| row.content.iter().map(key_expr).collect())
            .collect();
        return Target::InsertPositional { table, rows };
    }
    let Some(key_pos) = columns.iter().position(|c| *c == table.key) else {
        return refuse(
            sqlstate::NOT_NULL_VIOLATION,
            format!(
                "INSERT into sharded table \"{}\" does not set the shard key \"{}\"",
                table.name, table.key
            ),
            Some("name the columns and give the shard key a value"),
        );
    };
    let mut rows = Vec::with_capacity(values.rows.len());
    for row in &values.rows {
        match row.content.get(key_pos).and_then(key_expr) {
            Some(k) => rows.push(k),
            None => return literal_key(),
        }
    }
    Target::Insert { table, rows }
}

/// UPDATE and DELETE: a reference table is written on every shard; any
/// other write goes where its footprint says.
fn plan_write(
    stmt: &Statement,
    written: Option<&TableFactor>,
    fp: &Footprint,
    tables: &Tables,
) -> Target {
    let table = match written {
        Some(TableFactor::Table { name, .. }) => written_relation(name, tables),
        _ => None,
    };
    match table {
        Some(t) if t.is_reference() => reference_write(&t, fp, stmt, tables),
        _ => footprint_target(fp, stmt, tables, Target::AllShards),
    }
}

fn plan_update(
    upd: &sqlparser::ast::Update,
    stmt: &Statement,
    fp: &Footprint,
    tables: &Tables,
) -> Target {
    plan_write(stmt, Some(&upd.table.relation), fp, tables)
}

fn plan_copy(
    stmt: &Statement,
    source: &CopySource,
    to: bool,
    target: &CopyTarget,
    tables: &Tables,
) -> (Target, Option<String>) {
    match source {
        CopySource::Table {
            table_name,
            columns,
        } => {
            let Some(table) = lookup(table_name, tables) else {
                return (Target::Default, None);
            };
            if to {
                return (
                    if table.is_reference() {
                        Target::AnyShard
                    } else {
                        refuse(
                            NOT_SUPPORTED,
                            format!(
                                "COPY {} TO is not supported yet for sharded tables",
                                table.name
                            ),
                            Some(
                                "use COPY (SELECT ... WHERE <shard key> = ...) TO STDOUT for one shard",
                            ),
                        )
                    },
                    None,
                );
            }
            if !matches!(target, CopyTarget::Stdin) {
                return (
                    refuse(
                        NOT_SUPPORTED,
                        "COPY into a sharded table must read FROM STDIN".into(),
                        None,
                    ),
                    None,
                );
            }
            if table.is_reference() {
                return (Target::AllShards, None);
            }
            let key_column = if columns.is_empty() {
                None
            } else {
                match columns
                    .iter()
                    .position(|c| normalize_ident(&c.value, c.quote_style) == table.key)
                {
                    Some(p) => Some(p),
                    None => {
                        return (
                            refuse(
                                sqlstate::NOT_NULL_VIOLATION,
                                format!(
                                "COPY into sharded table \"{}\" must include the shard key \"{}\"",
                                table.name, table.key
                            ),
                                None,
                            ),
                            None,
                        )
                    }
                }
            };
            (Target::CopyIn { table, key_column }, None)
        }
        CopySource::Query(q) => {
            let fp = query_footprint(q, tables);
            (
                footprint_target(&fp, stmt, tables, Target::AnyShard),
                fp.unsharded,
            )
        }
    }
}

impl TableRule {
    pub fn is_reference(&self) -> bool {
        matches!(self.placement, Placement::Reference)
    }
}

//! Statement analysis: from SQL text to what routing needs to know, before
//! any parameter value is known (so the result can be cached by SQL text).
//!
//! For each statement: what kind it is, whether it writes, which sharded
//! tables it touches and where their key values come from (literals, `$n`
//! parameters, INSERT rows, COPY columns). Statements sqlparser cannot parse
//! fall back to a keyword classifier.
//!
//! For a SELECT that may run on several shards, also how the shards'
//! answers merge (`Merge`): concatenated, one row of aggregates, merged in
//! ORDER BY order, or grouped (GROUP BY with mergeable aggregates and a
//! HAVING the proxy evaluates after merging; SELECT DISTINCT as groups
//! without aggregates; `count(DISTINCT shard key)` as a count that adds
//! up; `count(DISTINCT column)` from the shards' distinct rows), with the
//! statement the shards run instead; or why they cannot be merged (refused
//! with 0A000).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use sqlparser::ast::{
    visit_expressions, visit_relations, visit_statements, AssignmentTarget, BinaryOperator,
    CopySource, CopyTarget, Expr, FromTable, FunctionArg, FunctionArgExpr, FunctionArguments,
    Ident, JoinConstraint, JoinOperator, ObjectName, ObjectNamePart, Query, SelectItem, SetExpr,
    Statement, TableFactor, TableObject, TableWithJoins, UnaryOperator, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use serde::Serialize;

use super::{Placement, TableRule};

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
}

/// How a cross-shard SELECT's per-shard answers are merged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Merge {
    /// Plain rows: every shard's rows, in shard order.
    Concat,
    /// One row of aggregates, one per select item.
    Aggregate {
        aggs: Vec<Agg>,
        /// The statement each shard runs when it differs from the client's:
        /// each `avg(e)` becomes `sum(e) AS "<name>", count(e)`.
        shard_sql: Option<String>,
    },
    /// Plain rows with ORDER BY and/or LIMIT/OFFSET: every shard's rows
    /// (sorted by the shard) merged in order, then OFFSET and LIMIT applied.
    Sorted {
        /// The ORDER BY items, in order; empty for LIMIT/OFFSET alone.
        keys: Vec<SortKey>,
        limit: Option<u64>,
        offset: u64,
        /// The statement each shard runs when it differs from the client's
        /// (`LIMIT offset+limit`, no OFFSET).
        shard_sql: Option<String>,
    },
    /// GROUP BY select-list columns with count/sum/min/max/avg: each shard
    /// returns its groups' partials (no HAVING, ORDER BY, LIMIT); the proxy
    /// combines rows of equal keys, keeps the groups HAVING holds for,
    /// orders them by key (or by the ORDER BY keys), then applies OFFSET
    /// and LIMIT. Also SELECT DISTINCT: every item a key, no aggregate.
    Grouped {
        /// Per select item: its aggregate, or `None` for a group key.
        items: Vec<Option<Agg>>,
        keys: Vec<SortKey>,
        /// Per ORDER BY key: written with COLLATE "C" (text keys must be,
        /// the groups are ordered in byte order).
        collated: Vec<bool>,
        limit: Option<u64>,
        offset: u64,
        shard_sql: Option<String>,
        /// A HAVING evaluated by the proxy on the merged groups.
        having: Option<Having>,
        /// Trailing items of `items` the shards return only for HAVING (its
        /// aggregates not in the select list): never sent to the client.
        hidden: usize,
    },
    /// `count(DISTINCT e)` of a column other than the shard key (every
    /// aggregate of the select list, of the same `e`), with GROUP BY
    /// select-list columns or none: each shard returns its distinct (group
    /// keys, e) rows; the proxy merges equal rows across shards, counts
    /// each group's non-NULL `e`, orders the groups, then OFFSET and LIMIT.
    CountDistinct {
        /// Per select item: `None` for a group key, else the output name of
        /// its count.
        items: Vec<Option<String>>,
        keys: Vec<SortKey>,
        collated: Vec<bool>,
        limit: Option<u64>,
        offset: u64,
        shard_sql: Option<String>,
    },
}

/// A HAVING predicate over merged groups (SQL's three-valued logic: a
/// group is kept when it is true).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Having {
    And(Box<Having>, Box<Having>),
    Or(Box<Having>, Box<Having>),
    Not(Box<Having>),
    Compare {
        left: Operand,
        op: CmpOp,
        right: Operand,
    },
    /// `IS NULL` (`negated`: `IS NOT NULL`).
    IsNull {
        operand: Operand,
        negated: bool,
    },
}

/// A value in a HAVING comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Operand {
    /// The merged value of this item of `Merge::Grouped::items`.
    Item(usize),
    /// A numeric literal, as written (with its sign).
    Number(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl Merge {
    /// The SQL each shard runs instead of the client's text, if any.
    pub fn shard_sql(&self) -> Option<&str> {
        match self {
            Merge::CountDistinct { shard_sql, .. }
            | Merge::Sorted { shard_sql, .. }
            | Merge::Aggregate { shard_sql, .. }
            | Merge::Grouped { shard_sql, .. } => shard_sql.as_deref(),
            _ => None,
        }
    }
}

/// One ORDER BY item of a merged cross-shard SELECT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SortKey {
    pub column: SortColumn,
    pub descending: bool,
    pub nulls_first: bool,
}

/// Which result column a sort key orders by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SortColumn {
    /// Zero-based position in the result.
    Position(usize),
    /// The result column of this name (the select list has a `*`, so the
    /// position is known only from the shards' RowDescription).
    Name(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Agg {
    Count,
    Sum,
    Min,
    Max,
    /// Merged from per-shard `sum(e)` and `count(e)` partials.
    Avg,
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
    match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(stmts) => Analysis {
            statements: stmts.iter().map(|s| plan_statement(s, tables)).collect(),
            fallback: false,
            param_casts: super::ParamCasts::collect(&stmts),
        },
        Err(_) => match lenient_copy(sql)
            .and_then(|s| Parser::parse_sql(&PostgreSqlDialect {}, &s).ok())
        {
            Some(stmts) => Analysis {
                statements: stmts.iter().map(|s| plan_statement(s, tables)).collect(),
                fallback: false,
                param_casts: super::ParamCasts::collect(&stmts),
            },
            None => Analysis {
                statements: vec![classify_keywords(sql, tables)],
                fallback: true,
                param_casts: Default::default(),
            },
        },
    }
}

/// COPY option spellings sqlparser does not take (`FREEZE ON`, as pgbench
/// sends it) rewritten to ones it does, for analysis only; None when there
/// is nothing to rewrite.
pub fn lenient_copy(sql: &str) -> Option<String> {
    let lower = sql.to_ascii_lowercase();
    if !lower.trim_start().starts_with("copy") {
        return None;
    }
    let words: Vec<&str> = sql.split_whitespace().collect();
    let mut out = Vec::with_capacity(words.len());
    let mut changed = false;
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        let next = words.get(i + 1).map(|n| n.to_ascii_lowercase());
        if w.eq_ignore_ascii_case("freeze") || w.eq_ignore_ascii_case("(freeze") {
            if let Some(n) = next {
                let (value, tail) = n.split_at(n.find([',', ')']).unwrap_or(n.len()));
                let flag = match value {
                    "on" | "true" | "1" => Some(""),
                    "off" | "false" | "0" => Some(" false"),
                    _ => None,
                };
                if let Some(flag) = flag {
                    out.push(format!("{w}{flag}{tail}"));
                    changed = true;
                    i += 2;
                    continue;
                }
            }
        }
        out.push(w.to_string());
        i += 1;
    }
    changed.then(|| out.join(" "))
}

fn plan(kind: Kind, writes: bool, target: Target) -> StatementPlan {
    StatementPlan {
        kind,
        writes,
        functions: Vec::new(),
        target,
        merge: None,
        merge_refusal: None,
    }
}

fn refuse(code: &'static str, message: String, hint: Option<&str>) -> Target {
    Target::Refused(Refusal {
        code,
        message,
        hint: hint.map(str::to_string),
    })
}

const NOT_SUPPORTED: &str = "0A000";
pub const HINT_ADD_KEY: &str =
    "add a condition on the shard key, or a routing hint such as /* shardwire: shard_key=... */";

fn plan_statement(stmt: &Statement, tables: &Tables) -> StatementPlan {
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
            let target = plan_query(q, tables);
            let (merge, merge_refusal) = match &target {
                Target::Keyed(conds) if conds.len() == 1 => {
                    match merge_kind(q, &conds[0].table, tables) {
                        Ok(m) => (Some(m), None),
                        Err(r) => (None, r),
                    }
                }
                _ => (None, None),
            };
            StatementPlan {
                merge,
                merge_refusal,
                functions: called_functions(q),
                ..plan(Kind::Select, writes, target)
            }
        }
        Statement::Insert(ins) => plan(Kind::Insert, true, plan_insert(ins, tables)),
        Statement::Update(upd) => plan(Kind::Update, true, plan_update(upd, tables)),
        Statement::Delete(del) => {
            let from = match &del.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            let target = plan_tables_where(stmt, from, del.selection.as_ref(), tables, true);
            plan(Kind::Delete, true, target)
        }
        Statement::Copy {
            source, to, target, ..
        } => plan(
            Kind::Copy,
            !to,
            plan_copy(stmt, source, *to, target, tables),
        ),
        Statement::CreateTable(_)
        | Statement::CreateIndex(_)
        | Statement::AlterTable(_)
        | Statement::Drop { .. }
        | Statement::Truncate(_) => plan(Kind::Ddl, true, Target::AllShards),
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
        // Anything else (CREATE FUNCTION, GRANT, EXPLAIN, ...) goes to the
        // default shard, unless it names a sharded table.
        other => {
            let target = match sharded_tables_in(other, tables).first() {
                Some(t) => refuse(
                    NOT_SUPPORTED,
                    format!(
                        "this statement on sharded table \"{}\" cannot be routed",
                        t.name
                    ),
                    Some("use a routing hint such as /* shardwire: shard=s0 */ to pick the shard"),
                ),
                None => Target::Default,
            };
            plan(Kind::Other, true, target)
        }
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
fn lookup(name: &ObjectName, tables: &Tables) -> Option<Arc<TableRule>> {
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
fn normalize_ident(value: &str, quote: Option<char>) -> String {
    if quote.is_some() {
        value.to_string()
    } else {
        value.to_lowercase()
    }
}

/// The sharded (not reference) tables a statement mentions. When there are
/// none, the statement's target instead: the default shard when no
/// configured table is mentioned, else `reference_only`.
fn sharded_tables_or<V: sqlparser::ast::Visit>(
    v: &V,
    tables: &Tables,
    reference_only: Target,
) -> Result<Vec<Arc<TableRule>>, Target> {
    let found = sharded_tables_in(v, tables);
    if found.is_empty() {
        return Err(Target::Default);
    }
    let sharded: Vec<_> = found
        .iter()
        .filter(|t| !t.is_reference())
        .cloned()
        .collect();
    if sharded.is_empty() {
        return Err(reference_only);
    }
    Ok(sharded)
}

fn plan_query(q: &Query, tables: &Tables) -> Target {
    let sharded = match sharded_tables_or(q, tables, Target::AnyShard) {
        Ok(sharded) => sharded,
        Err(target) => return target,
    };
    // Key conditions come from the top-level SELECT's WHERE and JOIN ... ON.
    let (from, selection) = match q.body.as_ref() {
        SetExpr::Select(s) => (&s.from[..], s.selection.as_ref()),
        _ => (&[][..], None),
    };
    key_conditions(&sharded, from, selection)
}

/// Aggregates that combine across shards without knowing more than each
/// shard's result.
const MERGEABLE: [(&str, Agg); 5] = [
    ("avg", Agg::Avg),
    ("count", Agg::Count),
    ("sum", Agg::Sum),
    ("min", Agg::Min),
    ("max", Agg::Max),
];

/// Aggregate (and window) functions: a plain-row query calling one of
/// these cannot be concatenated. User-defined aggregates are not known.
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "bit_xor",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "json_agg_strict",
    "jsonb_agg_strict",
    "json_objectagg",
    "json_arrayagg",
    "xmlagg",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "row_number",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    "range_agg",
    "range_intersect_agg",
    "any_value",
];

/// How a SELECT whose only sharded table is `table` merges across shards:
/// a single SELECT (no set operation, CTE, window, locking or INTO)
/// reading `table` once, in its top-level FROM; then either every item is
/// a mergeable aggregate (one merged row), or GROUP BY select-list columns
/// with mergeable aggregates and an optional HAVING the proxy evaluates
/// after merging (`Grouped`), or SELECT DISTINCT of plain rows (`Grouped`
/// with every item a key), or no aggregate is called (rows concatenated,
/// or merged in order with ORDER BY / LIMIT / OFFSET). `Err(Some(_))` says
/// precisely why a query of an otherwise mergeable shape is refused;
/// `Err(None)` is the general "not supported across shards".
fn merge_kind(
    q: &Query,
    table: &Arc<TableRule>,
    tables: &Tables,
) -> Result<Merge, Option<Refusal>> {
    let refusal = |m: String| {
        Some(Refusal {
            code: NOT_SUPPORTED,
            message: format!(
                "cannot merge this query across the shards of table \"{}\": {m}",
                table.name
            ),
            hint: Some(HINT_ADD_KEY.into()),
        })
    };
    let key = KeyRef::of(q, table);
    if let SetExpr::Select(s) = q.body.as_ref() {
        if let Some(e) = s.projection.iter().filter_map(item_expr).find_map(|e| {
            let mut found = None;
            let _ = visit_expressions(e, |x: &Expr| {
                if count_distinct_arg(x).is_some_and(|a| !key.is_key(a)) {
                    found = Some(x.clone());
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            });
            found
        }) {
            return count_distinct_merge(q, s, table, tables).map_err(|m| {
                refusal(format!(
                    "{e}: count(DISTINCT ...) of a column other than the shard key \"{}\" is merged across shards only when every aggregate of the select list is count(DISTINCT) of that same column, the other items GROUP BY columns, without HAVING ({m})",
                    table.key
                ))
            });
        }
        if s.distinct.is_some() {
            return distinct_merge(q, s, table, tables).map_err(|m| m.and_then(refusal));
        }
        if let Some(having) = &s.having {
            return having_merge(q, s, having, table, tables, &key)
                .map_err(|m| m.and_then(refusal));
        }
    }
    let base = merge_base(q, table, tables).ok_or(None)?;
    if let Merge::Grouped { items, .. } = base {
        let (keys, collated, limit, offset) =
            grouped_order(q).map_err(|m| Some(sort_refusal(table, m)))?;
        return Ok(Merge::Grouped {
            items,
            keys,
            collated,
            limit,
            offset,
            shard_sql: Some(shard_partials(q, true).map_err(|m| Some(sort_refusal(table, m)))?),
            having: None,
            hidden: 0,
        });
    }
    if q.order_by.is_none() && q.limit_clause.is_none() && q.fetch.is_none() {
        return match base {
            Merge::Aggregate { aggs, .. } if aggs.contains(&Agg::Avg) => Ok(Merge::Aggregate {
                shard_sql: Some(
                    shard_partials(q, false).map_err(|m| Some(sort_refusal(table, m)))?,
                ),
                aggs,
            }),
            base => Ok(base),
        };
    }
    if base != Merge::Concat {
        return Err(Some(sort_refusal(
            table,
            "ORDER BY, LIMIT or OFFSET on aggregates is not supported".into(),
        )));
    }
    let SetExpr::Select(s) = q.body.as_ref() else {
        return Err(None);
    };
    sorted_merge(q, &s.projection).map_err(|m| Some(sort_refusal(table, m)))
}

/// The ORDER BY keys (with whether each is written with COLLATE), LIMIT
/// and OFFSET of a query whose groups (or DISTINCT rows) the proxy orders.
type GroupOrder = (Vec<SortKey>, Vec<bool>, Option<u64>, u64);

fn grouped_order(q: &Query) -> Result<GroupOrder, String> {
    let SetExpr::Select(s) = q.body.as_ref() else {
        return Err("not a single SELECT".into());
    };
    let (keys, limit, offset) =
        if q.order_by.is_none() && q.limit_clause.is_none() && q.fetch.is_none() {
            (vec![], None, 0)
        } else {
            match sorted_merge(q, &s.projection)? {
                Merge::Sorted {
                    keys,
                    limit,
                    offset,
                    ..
                } => (keys, limit, offset),
                _ => return Err("not a sorted merge".into()),
            }
        };
    // Written with COLLATE (sort_column accepts only "C"), in ORDER BY or
    // in the select item it names.
    let collated = match &q.order_by {
        Some(ob) => match &ob.kind {
            sqlparser::ast::OrderByKind::Expressions(e) => e
                .iter()
                .zip(&keys)
                .map(|(i, k)| {
                    matches!(i.expr, Expr::Collate { .. })
                        || matches!(k.column, SortColumn::Position(p)
                            if matches!(s.projection.get(p).and_then(item_expr), Some(Expr::Collate { .. })))
                })
                .collect(),
            _ => vec![],
        },
        None => vec![],
    };
    Ok((keys, collated, limit, offset))
}

/// SELECT DISTINCT of plain rows: each shard runs the query without
/// LIMIT/OFFSET (its rows already distinct there), the proxy merges
/// equal rows across shards like groups without aggregates, then orders
/// and limits. `Err(Some(m))`: refused because of `m`.
fn distinct_merge(
    q: &Query,
    s: &sqlparser::ast::Select,
    table: &Arc<TableRule>,
    tables: &Tables,
) -> Result<Merge, Option<String>> {
    if !matches!(s.distinct, Some(sqlparser::ast::Distinct::Distinct)) {
        return Err(Some("DISTINCT ON is not supported".into()));
    }
    let grouped = !matches!(&s.group_by, sqlparser::ast::GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty());
    if grouped || s.having.is_some() {
        return Err(Some(
            "DISTINCT together with GROUP BY or HAVING is not supported".into(),
        ));
    }
    if s.projection.iter().any(|i| item_expr(i).is_none()) {
        return Err(Some(
            "SELECT DISTINCT * is not supported; list the columns".into(),
        ));
    }
    let mut plain = q.clone();
    plain.order_by = None;
    plain.limit_clause = None;
    plain.fetch = None;
    if let SetExpr::Select(ps) = plain.body.as_mut() {
        ps.distinct = None;
    }
    if merge_base(&plain, table, tables) != Some(Merge::Concat) {
        return Err(Some(
            "DISTINCT is merged across shards for columns and scalar expressions only (no aggregates)".into(),
        ));
    }
    let (keys, collated, limit, offset) = grouped_order(q).map_err(Some)?;
    // The shards keep ORDER BY (so that what PostgreSQL refuses in it, the
    // shards refuse as PostgreSQL would); LIMIT/OFFSET apply after the merge.
    let mut sq = q.clone();
    sq.limit_clause = None;
    Ok(Merge::Grouped {
        items: vec![None; s.projection.len()],
        keys,
        collated,
        limit,
        offset,
        shard_sql: Some(shard_partials(&sq, false).map_err(Some)?),
        having: None,
        hidden: 0,
    })
}

/// GROUP BY with HAVING: the shards run the query without HAVING (and
/// without ORDER BY/LIMIT), returning besides the select list the partials
/// of HAVING's aggregates that are not in it; the proxy merges the groups,
/// then evaluates HAVING on the merged values.
fn having_merge(
    q: &Query,
    s: &sqlparser::ast::Select,
    having: &Expr,
    table: &Arc<TableRule>,
    tables: &Tables,
    key: &KeyRef,
) -> Result<Merge, Option<String>> {
    let mut plain = q.clone();
    plain.order_by = None;
    plain.limit_clause = None;
    plain.fetch = None;
    if let SetExpr::Select(ps) = plain.body.as_mut() {
        ps.having = None;
    }
    let Some(Merge::Grouped { mut items, .. }) = merge_base(&plain, table, tables) else {
        return Err(Some(
            "HAVING is merged across shards only with GROUP BY of select-list columns and mergeable aggregates".into(),
        ));
    };
    let visible = items.len();
    let mut extra: Vec<Expr> = Vec::new();
    let predicate = having_predicate(having, &s.projection, &mut items, &mut extra, key)
        .map_err(|m| Some(format!("HAVING {having}: {m}")))?;
    let (keys, collated, limit, offset) = grouped_order(q).map_err(Some)?;
    let mut sq = q.clone();
    if let SetExpr::Select(ss) = sq.body.as_mut() {
        ss.having = None;
        ss.projection
            .extend(extra.into_iter().map(SelectItem::UnnamedExpr));
    }
    Ok(Merge::Grouped {
        hidden: items.len() - visible,
        items,
        keys,
        collated,
        limit,
        offset,
        shard_sql: Some(shard_partials(&sq, true).map_err(Some)?),
        having: Some(predicate),
    })
}

const HAVING_SUPPORTED: &str = "across shards HAVING may compare aggregates (count, sum, min, max, avg) and group keys with each other and with numbers (=, <>, <, <=, >, >=, IS [NOT] NULL), combined with AND, OR and NOT";

fn having_predicate(
    e: &Expr,
    projection: &[SelectItem],
    items: &mut Vec<Option<Agg>>,
    extra: &mut Vec<Expr>,
    key: &KeyRef,
) -> Result<Having, String> {
    let mut sub = |x: &Expr| having_predicate(x, projection, items, extra, key).map(Box::new);
    Ok(match e {
        Expr::Nested(inner) => return having_predicate(inner, projection, items, extra, key),
        Expr::BinaryOp { left, op, right } => {
            let cmp = match op {
                BinaryOperator::And => return Ok(Having::And(sub(left)?, sub(right)?)),
                BinaryOperator::Or => return Ok(Having::Or(sub(left)?, sub(right)?)),
                BinaryOperator::Eq => CmpOp::Eq,
                BinaryOperator::NotEq => CmpOp::NotEq,
                BinaryOperator::Lt => CmpOp::Lt,
                BinaryOperator::LtEq => CmpOp::LtEq,
                BinaryOperator::Gt => CmpOp::Gt,
                BinaryOperator::GtEq => CmpOp::GtEq,
                _ => return Err(HAVING_SUPPORTED.into()),
            };
            Having::Compare {
                left: having_operand(left, projection, items, extra, key)?,
                op: cmp,
                right: having_operand(right, projection, items, extra, key)?,
            }
        }
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => Having::Not(sub(expr)?),
        Expr::IsNull(x) | Expr::IsNotNull(x) => Having::IsNull {
            operand: having_operand(x, projection, items, extra, key)?,
            negated: matches!(e, Expr::IsNotNull(_)),
        },
        _ => return Err(HAVING_SUPPORTED.into()),
    })
}

fn having_operand(
    e: &Expr,
    projection: &[SelectItem],
    items: &mut Vec<Option<Agg>>,
    extra: &mut Vec<Expr>,
    key: &KeyRef,
) -> Result<Operand, String> {
    let e = match e {
        Expr::Nested(inner) => return having_operand(inner, projection, items, extra, key),
        e => e,
    };
    let number = |x: &Expr| match x {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some(n.to_string()),
            _ => None,
        },
        _ => None,
    };
    if let Some(n) = number(e) {
        return Ok(Operand::Number(n));
    }
    if let Expr::UnaryOp {
        op: UnaryOperator::Minus,
        expr,
    } = e
    {
        if let Some(n) = number(expr) {
            return Ok(Operand::Number(format!("-{n}")));
        }
    }
    let text = e.to_string();
    if let Some(i) = projection
        .iter()
        .position(|p| item_expr(p).is_some_and(|x| x.to_string() == text))
    {
        return Ok(Operand::Item(i));
    }
    let Some(agg) = mergeable_aggregate(e, Some(key)) else {
        return Err(format!(
            "{e} is neither a mergeable aggregate nor a group key in the select list; {HAVING_SUPPORTED}"
        ));
    };
    let visible = projection.len();
    if let Some(k) = extra.iter().position(|x| x.to_string() == text) {
        return Ok(Operand::Item(visible + k));
    }
    extra.push(e.clone());
    items.push(Some(agg));
    Ok(Operand::Item(items.len() - 1))
}

/// `count(DISTINCT e)` of a non-key column: each shard runs `SELECT
/// DISTINCT <group keys>, e` (same FROM and WHERE), the proxy merges equal
/// rows across shards and counts each group's non-NULL `e`. Every
/// aggregate must be count(DISTINCT) of the same `e`, a column; the other
/// items group keys. `Err(m)`: why not.
fn count_distinct_merge(
    q: &Query,
    s: &sqlparser::ast::Select,
    table: &Arc<TableRule>,
    tables: &Tables,
) -> Result<Merge, String> {
    if s.distinct.is_some() || s.having.is_some() {
        return Err("with DISTINCT or HAVING it is not supported".into());
    }
    let group: &[Expr] = match &s.group_by {
        sqlparser::ast::GroupByExpr::Expressions(e, m) if m.is_empty() => e,
        _ => return Err("this GROUP BY form is not supported".into()),
    };
    let position = |g: &Expr| match g {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse::<usize>().ok(),
            _ => None,
        },
        _ => None,
    };
    let mut arg: Option<String> = None;
    let mut x: Option<Expr> = None;
    let mut items = Vec::with_capacity(s.projection.len());
    let mut key_items = Vec::new();
    let mut keyed = vec![false; group.len()];
    for (i, item) in s.projection.iter().enumerate() {
        let e = item_expr(item).ok_or("SELECT * is not supported")?;
        if let Some(a) = count_distinct_arg(e) {
            let a = match a {
                Expr::Nested(inner) => inner.as_ref(),
                a => a,
            };
            if !matches!(a, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
                return Err(format!("{a} is not a column"));
            }
            if arg.get_or_insert_with(|| a.to_string()) != &a.to_string() {
                return Err("two different count(DISTINCT) columns".into());
            }
            x = Some(a.clone());
            items.push(Some(
                output_name(item).unwrap_or_else(|| "count".to_string()),
            ));
            continue;
        }
        if !matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
            return Err(format!(
                "{e} is neither a GROUP BY column nor count(DISTINCT)"
            ));
        }
        let mut found = false;
        for (k, g) in group.iter().enumerate() {
            if position(g) == Some(i + 1) || g.to_string() == e.to_string() {
                keyed[k] = true;
                found = true;
            }
        }
        if !found {
            return Err(format!("{e} is not a GROUP BY column"));
        }
        key_items.push(item.clone());
        items.push(None);
    }
    if !keyed.iter().all(|k| *k) {
        return Err("a GROUP BY item is not in the select list".into());
    }
    let x = x.ok_or("no count(DISTINCT)")?;
    let (keys, collated, limit, offset) = grouped_order(q)?;
    let mut sq = q.clone();
    sq.order_by = None;
    sq.limit_clause = None;
    let SetExpr::Select(ss) = sq.body.as_mut() else {
        return Err("not a single SELECT".into());
    };
    ss.group_by = sqlparser::ast::GroupByExpr::Expressions(vec![], vec![]);
    ss.projection = key_items;
    ss.projection.push(SelectItem::UnnamedExpr(x));
    // The rest must be a shape whose rows concatenate (one mention of the
    // table, no subquery, ...).
    if merge_base(&sq, table, tables) != Some(Merge::Concat) {
        return Err("the query's shape is not supported".into());
    }
    if let SetExpr::Select(ss) = sq.body.as_mut() {
        ss.distinct = Some(sqlparser::ast::Distinct::Distinct);
    }
    let stmt = Statement::Query(Box::new(sq));
    let text = stmt.to_string();
    match Parser::parse_sql(&PostgreSqlDialect {}, &text) {
        Ok(again) if again.len() == 1 && again[0] == stmt => {}
        _ => return Err("the statement cannot be rewritten for the shards".into()),
    }
    Ok(Merge::CountDistinct {
        items,
        keys,
        collated,
        limit,
        offset,
        shard_sql: Some(text),
    })
}

/// The shard key of the one sharded table of a SELECT, and the names by
/// which the query may qualify it (the table's name, its alias).
struct KeyRef {
    key: String,
    qualifiers: Vec<String>,
}

impl KeyRef {
    fn of(q: &Query, table: &TableRule) -> KeyRef {
        let mut qualifiers = vec![table.name.clone()];
        if let SetExpr::Select(s) = q.body.as_ref() {
            for twj in &s.from {
                for f in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation))
                {
                    if let TableFactor::Table {
                        name,
                        alias: Some(a),
                        ..
                    } = f
                    {
                        if lookup_name_matches(name, table) {
                            qualifiers.push(normalize_ident(&a.name.value, a.name.quote_style));
                        }
                    }
                }
            }
        }
        KeyRef {
            key: table.key.clone(),
            qualifiers,
        }
    }

    /// Whether `e` is the shard key column (`key`, `t.key`, `alias.key`).
    fn is_key(&self, e: &Expr) -> bool {
        match e {
            Expr::Nested(inner) => self.is_key(inner),
            Expr::Identifier(i) => normalize_ident(&i.value, i.quote_style) == self.key,
            Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [.., q, c] => {
                    normalize_ident(&c.value, c.quote_style) == self.key
                        && self
                            .qualifiers
                            .contains(&normalize_ident(&q.value, q.quote_style))
                }
                _ => false,
            },
            _ => false,
        }
    }
}

/// The argument of `count(DISTINCT e)` (no FILTER/OVER/ORDER BY).
fn count_distinct_arg(e: &Expr) -> Option<&Expr> {
    let Expr::Function(f) = e else {
        return None;
    };
    if function_name(&f.name).as_deref() != Some("count")
        || f.over.is_some()
        || f.filter.is_some()
        || !f.within_group.is_empty()
    {
        return None;
    }
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    if !matches!(
        list.duplicate_treatment,
        Some(sqlparser::ast::DuplicateTreatment::Distinct)
    ) || !list.clauses.is_empty()
        || list.args.len() != 1
    {
        return None;
    }
    match &list.args[0] {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(a)) => Some(a),
        _ => None,
    }
}

fn sort_refusal(table: &TableRule, message: String) -> Refusal {
    Refusal {
        code: NOT_SUPPORTED,
        message: format!(
            "cannot merge this query across the shards of table \"{}\": {message}",
            table.name
        ),
        hint: Some(format!("{HINT_SORTED}; or {HINT_ADD_KEY}")),
    }
}

const HINT_SORTED: &str = "across shards, ORDER BY may name select-list columns (by position, by name or alias, or by the same expression as in the select list) with ASC/DESC and NULLS FIRST/LAST, and LIMIT/OFFSET must be integer literals";

/// The merge of a plain-rows query with ORDER BY and/or LIMIT/OFFSET.
fn sorted_merge(q: &Query, projection: &[SelectItem]) -> Result<Merge, String> {
    use sqlparser::ast::{LimitClause, OrderByKind, OrderBySort};
    if q.fetch.is_some() {
        return Err("FETCH FIRST is not supported; use LIMIT".into());
    }
    let mut keys = Vec::new();
    if let Some(ob) = &q.order_by {
        let OrderByKind::Expressions(items) = &ob.kind else {
            return Err("ORDER BY ALL is not supported".into());
        };
        if ob.interpolate.is_some() {
            return Err("ORDER BY ... INTERPOLATE is not supported".into());
        }
        for item in items {
            let descending = match &item.options.sort {
                None | Some(OrderBySort::Asc) => false,
                Some(OrderBySort::Desc) => true,
                Some(OrderBySort::Using(_)) => {
                    return Err(format!(
                        "ORDER BY {item}: USING an operator is not supported"
                    ))
                }
            };
            if item.with_fill.is_some() {
                return Err(format!("ORDER BY {item}: WITH FILL is not supported"));
            }
            keys.push(SortKey {
                column: sort_column(&item.expr, projection)?,
                descending,
                // PostgreSQL: NULLs sort as larger than any value.
                nulls_first: item.options.nulls_first.unwrap_or(descending),
            });
        }
    }
    let (mut limit, mut offset) = (None, 0);
    match &q.limit_clause {
        None => {}
        Some(LimitClause::LimitOffset {
            limit: l,
            offset: o,
            limit_by,
        }) => {
            if !limit_by.is_empty() {
                return Err("LIMIT BY is not supported".into());
            }
            if let Some(l) = l {
                limit = count_literal(l, "LIMIT")?;
            }
            if let Some(o) = o {
                offset = count_literal(&o.value, "OFFSET")?.unwrap_or(0);
            }
        }
        Some(LimitClause::OffsetCommaLimit { .. }) => {
            return Err("LIMIT offset, count is not supported".into())
        }
    }
    // Each shard sends at most offset+limit rows, already sorted; OFFSET
    // applies only after the merge.
    let shard_sql = if limit.is_some() || offset > 0 {
        let mut sq = q.clone();
        sq.limit_clause = limit.map(|l| LimitClause::LimitOffset {
            limit: Some(Expr::value(sqlparser::ast::Value::Number(
                l.saturating_add(offset).to_string(),
                false,
            ))),
            offset: None,
            limit_by: vec![],
        });
        let stmt = Statement::Query(Box::new(sq));
        let text = stmt.to_string();
        // The rewritten text must mean what the AST says: sqlparser's
        // printing of some PostgreSQL syntax may not round-trip.
        match Parser::parse_sql(&PostgreSqlDialect {}, &text) {
            Ok(again) if again.len() == 1 && again[0] == stmt => Some(text),
            _ => {
                return Err(
                    "the statement cannot be rewritten for the shards (LIMIT offset+limit)".into(),
                )
            }
        }
    } else {
        None
    };
    Ok(Merge::Sorted {
        keys,
        limit,
        offset,
        shard_sql,
    })
}

/// The statement for the shards of a one-row aggregate query with `avg`:
/// each `avg(e)` item becomes `sum(e) AS "<output name>", count(e)` (the
/// proxy divides the merged sum by the merged count).
/// With `whole`, ORDER BY and LIMIT/OFFSET are dropped too (a GROUP BY
/// query: each shard returns all its groups).
fn shard_partials(q: &Query, whole: bool) -> Result<String, String> {
    let mut sq = q.clone();
    if whole {
        sq.order_by = None;
        sq.limit_clause = None;
    }
    let SetExpr::Select(s) = sq.body.as_mut() else {
        return Err("not a single SELECT".into());
    };
    // GROUP BY positions name the client's select items: the shards'
    // select list differs, so name the (plain column) items instead.
    if let sqlparser::ast::GroupByExpr::Expressions(group, _) = &mut s.group_by {
        for g in group.iter_mut() {
            if let Expr::Value(v) = g {
                if let Value::Number(n, _) = &v.value {
                    let item = n
                        .parse::<usize>()
                        .ok()
                        .and_then(|p| p.checked_sub(1))
                        .and_then(|p| s.projection.get(p))
                        .and_then(item_expr)
                        .ok_or_else(|| format!("GROUP BY {n} is not a select-list position"))?;
                    *g = item.clone();
                }
            }
        }
    }
    let mut projection = Vec::with_capacity(s.projection.len() + 1);
    for item in s.projection.drain(..) {
        let (e, alias) = match &item {
            SelectItem::UnnamedExpr(e) => (e, None),
            SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias)),
            _ => {
                projection.push(item);
                continue;
            }
        };
        let Expr::Function(f) = e else {
            projection.push(item);
            continue;
        };
        if mergeable_aggregate(e, None) != Some(Agg::Avg) {
            projection.push(item);
            continue;
        }
        let name = alias.map_or_else(
            || "avg".to_string(),
            |a| normalize_ident(&a.value, a.quote_style),
        );
        let renamed = |n: &str| {
            let mut g = f.clone();
            g.name = ObjectName::from(vec![Ident::new(n)]);
            Expr::Function(g)
        };
        projection.push(SelectItem::ExprWithAlias {
            expr: renamed("sum"),
            alias: Ident::with_quote('"', name),
        });
        projection.push(SelectItem::UnnamedExpr(renamed("count")));
    }
    s.projection = projection;
    let stmt = Statement::Query(Box::new(sq));
    let text = stmt.to_string();
    match Parser::parse_sql(&PostgreSqlDialect {}, &text) {
        Ok(again) if again.len() == 1 && again[0] == stmt => Ok(text),
        _ => Err("the statement cannot be rewritten for the shards (avg as sum and count)".into()),
    }
}

/// LIMIT/OFFSET value: a non-negative integer literal (`None` for NULL,
/// which means no limit).
fn count_literal(e: &Expr, what: &str) -> Result<Option<u64>, String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n
                .parse::<u64>()
                .map(Some)
                .map_err(|_| format!("{what} {n} is not a non-negative integer literal")),
            Value::Null => Ok(None),
            _ => Err(format!("{what} {e} is not an integer literal")),
        },
        _ => Err(format!(
            "{what} {e} is not an integer literal (parameters and expressions are not supported)"
        )),
    }
}

/// The output name of a select item, as PostgreSQL would name its column,
/// for aliases and column references (other expressions: none known).
fn output_name(item: &SelectItem) -> Option<String> {
    match item {
        SelectItem::ExprWithAlias { alias, .. } => {
            Some(normalize_ident(&alias.value, alias.quote_style))
        }
        SelectItem::UnnamedExpr(Expr::Identifier(i)) => {
            Some(normalize_ident(&i.value, i.quote_style))
        }
        SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => parts
            .last()
            .map(|i| normalize_ident(&i.value, i.quote_style)),
        _ => None,
    }
}

fn item_expr(item: &SelectItem) -> Option<&Expr> {
    match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => Some(e),
        _ => None,
    }
}

/// Which result column an ORDER BY expression names: a position number,
/// an output column name (alias or column), or an expression textually
/// identical to a select item. Text is merged in byte order, so COLLATE is
/// accepted only for "C" / "POSIX".
fn sort_column(e: &Expr, projection: &[SelectItem]) -> Result<SortColumn, String> {
    let c_collation = |name: &ObjectName| {
        function_name(name)
            .is_some_and(|n| n.eq_ignore_ascii_case("c") || n.eq_ignore_ascii_case("posix"))
    };
    let e = match e {
        Expr::Collate { expr, collation } => {
            if !c_collation(collation) {
                return Err(format!(
                    "ORDER BY {e}: text is merged in byte order (the C collation); only COLLATE \"C\" is supported"
                ));
            }
            expr.as_ref()
        }
        e => e,
    };
    let wildcard = projection.iter().any(|i| item_expr(i).is_none());
    // A select item chosen by the key: its position, or (after a `*`) its
    // output name.
    let column = |i: usize| -> Result<SortColumn, String> {
        if let Some(Expr::Collate { collation, .. }) = item_expr(&projection[i]) {
            if !c_collation(collation) {
                return Err(format!(
                    "ORDER BY {e}: the select item has a COLLATE other than \"C\" (text is merged in byte order)"
                ));
            }
        }
        if !wildcard {
            return Ok(SortColumn::Position(i));
        }
        output_name(&projection[i])
            .map(SortColumn::Name)
            .ok_or_else(|| {
                format!("ORDER BY {e}: name the column with an alias (the select list has a *)")
            })
    };
    if let Expr::Value(v) = e {
        if let Value::Number(n, _) = &v.value {
            let p = n
                .parse::<usize>()
                .ok()
                .filter(|p| *p >= 1)
                .ok_or_else(|| format!("ORDER BY {n} is not a select-list position"))?;
            if p <= projection.len() && !wildcard {
                return column(p - 1);
            }
            if wildcard {
                return Ok(SortColumn::Position(p - 1));
            }
            return Err(format!("ORDER BY position {p} is not in the select list"));
        }
    }
    if let Expr::Identifier(id) = e {
        // A bare name is first an output column name (PostgreSQL's rule).
        let name = normalize_ident(&id.value, id.quote_style);
        let named: Vec<usize> = (0..projection.len())
            .filter(|&i| output_name(&projection[i]).as_deref() == Some(name.as_str()))
            .collect();
        if let Some(&first) = named.first() {
            let same = named.iter().all(|&i| {
                item_expr(&projection[i]).map(|x| x.to_string())
                    == item_expr(&projection[first]).map(|x| x.to_string())
            });
            if !same {
                return Err(format!("ORDER BY {e} is ambiguous"));
            }
            return column(first);
        }
        if wildcard {
            // Resolved against the shards' RowDescription: must then be
            // exactly one result column of that name.
            return Ok(SortColumn::Name(name));
        }
    }
    let text = e.to_string();
    let strip = |x: &Expr| match x {
        Expr::Collate { expr, .. } => expr.to_string(),
        x => x.to_string(),
    };
    match (0..projection.len())
        .find(|&i| item_expr(&projection[i]).is_some_and(|x| x.to_string() == text || strip(x) == text))
    {
        Some(i) => column(i),
        None => Err(format!(
            "ORDER BY {e}: only select-list columns can be merged in order (add it to the select list)"
        )),
    }
}

/// Whether a SELECT is of the shape whose per-shard answers merge (see
/// `merge_kind`), ignoring ORDER BY and LIMIT/OFFSET; which merge then.
fn merge_base(q: &Query, table: &Arc<TableRule>, tables: &Tables) -> Option<Merge> {
    if q.with.is_some()
        || !q.locks.is_empty()
        || q.for_clause.is_some()
        || q.settings.is_some()
        || q.format_clause.is_some()
        || !q.pipe_operators.is_empty()
    {
        return None;
    }
    let SetExpr::Select(s) = q.body.as_ref() else {
        return None;
    };
    let group: Option<&[Expr]> = match &s.group_by {
        sqlparser::ast::GroupByExpr::Expressions(e, m) if m.is_empty() => Some(e),
        _ => None,
    };
    if s.distinct.is_some()
        || s.top.is_some()
        || s.into.is_some()
        || group.is_none()
        || s.having.is_some()
        || !s.named_window.is_empty()
        || s.qualify.is_some()
        || !s.sort_by.is_empty()
        || !s.cluster_by.is_empty()
        || !s.distribute_by.is_empty()
        || !s.lateral_views.is_empty()
        || s.prewhere.is_some()
        || !s.connect_by.is_empty()
        || s.projection.is_empty()
    {
        return None;
    }
    // The sharded table once, as a plain table of the top-level FROM: a
    // subquery or a second mention would read only the local shard's rows.
    let mut mentions = 0;
    let _ = visit_relations(q, |name: &ObjectName| {
        if lookup(name, tables).is_some_and(|t| Arc::ptr_eq(&t, table)) {
            mentions += 1;
        }
        ControlFlow::<()>::Continue(())
    });
    let in_from = s.from.iter().any(|twj| {
        std::iter::once(&twj.relation)
            .chain(twj.joins.iter().map(|j| &j.relation))
            .any(|f| matches!(f, TableFactor::Table { name, .. } if lookup(name, tables).is_some_and(|t| Arc::ptr_eq(&t, table))))
    });
    if mentions != 1 || !in_from {
        return None;
    }
    let group = group.unwrap_or_default();
    let key = KeyRef::of(q, table);
    if !group.is_empty() {
        return grouped_items(&s.projection, group, &key).map(|items| Merge::Grouped {
            items,
            keys: vec![],
            collated: vec![],
            limit: None,
            offset: 0,
            shard_sql: None,
            having: None,
            hidden: 0,
        });
    }
    let aggs: Vec<Option<Agg>> = s
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                mergeable_aggregate(e, Some(&key))
            }
            _ => None,
        })
        .collect();
    if aggs.iter().all(Option::is_some) {
        return Some(Merge::Aggregate {
            aggs: aggs.into_iter().flatten().collect(),
            shard_sql: None,
        });
    }
    // Plain rows: no aggregate or window anywhere in the statement.
    let mut aggregate = false;
    let _ = sqlparser::ast::visit_expressions(q, |e: &Expr| {
        if let Expr::Function(f) = e {
            let name = function_name(&f.name);
            if f.over.is_some()
                || f.filter.is_some()
                || !f.within_group.is_empty()
                || name.as_deref().is_none_or(|n| AGGREGATES.contains(&n))
            {
                aggregate = true;
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    if aggregate {
        return None;
    }
    // A user-defined aggregate looks like any other function call. So the
    // select list of a concatenated query may call only functions known to
    // be scalar; an unknown one is refused rather than risked (aggregates
    // cannot appear in WHERE, ORDER BY may only repeat select items, and
    // HAVING and subqueries are refused).
    let mut unknown = false;
    for item in &s.projection {
        let _ = sqlparser::ast::visit_expressions(item, |e: &Expr| {
            if let Expr::Function(f) = e {
                let known =
                    function_name(&f.name).is_some_and(|n| SCALAR_FUNCTIONS.contains(&n.as_str()));
                if !known {
                    unknown = true;
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        });
    }
    (!unknown).then_some(Merge::Concat)
}

/// The select items of a GROUP BY query that merges: each a mergeable
/// aggregate or a plain column that is a group key (by the same text or by
/// position); every GROUP BY item names such a select item.
fn grouped_items(
    projection: &[SelectItem],
    group: &[Expr],
    key: &KeyRef,
) -> Option<Vec<Option<Agg>>> {
    let position = |g: &Expr| match g {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse::<usize>().ok(),
            _ => None,
        },
        _ => None,
    };
    let mut items = Vec::with_capacity(projection.len());
    let mut keyed = vec![false; group.len()];
    for (i, item) in projection.iter().enumerate() {
        let e = item_expr(item)?;
        if let Some(a) = mergeable_aggregate(e, Some(key)) {
            items.push(Some(a));
            continue;
        }
        if !matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
            return None;
        }
        let text = e.to_string();
        let mut found = false;
        for (k, g) in group.iter().enumerate() {
            if position(g) == Some(i + 1) || g.to_string() == text {
                keyed[k] = true;
                found = true;
            }
        }
        if !found {
            return None;
        }
        items.push(None);
    }
    keyed.iter().all(|k| *k).then_some(items)
}

/// Built-in functions known not to be aggregates, allowed in the select
/// list of a query concatenated across shards.
const SCALAR_FUNCTIONS: &[&str] = &[
    "abs",
    "age",
    "btrim",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "coalesce",
    "concat",
    "concat_ws",
    "current_date",
    "current_timestamp",
    "date_part",
    "date_trunc",
    "floor",
    "format",
    "greatest",
    "hashint8extended",
    "hashtextextended",
    "initcap",
    "json_build_object",
    "jsonb_build_object",
    "jsonb_extract_path_text",
    "json_extract_path_text",
    "least",
    "left",
    "length",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "md5",
    "mod",
    "now",
    "nullif",
    "octet_length",
    "position",
    "power",
    "replace",
    "right",
    "round",
    "row_to_json",
    "rpad",
    "rtrim",
    "sign",
    "split_part",
    "sqrt",
    "strpos",
    "substr",
    "substring",
    "to_char",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "trim",
    "trunc",
    "upper",
];

/// The lower-case name of a function, unqualified or in pg_catalog.
fn function_name(name: &ObjectName) -> Option<String> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(normalize_ident(&i.value, i.quote_style)),
            _ => None,
        })
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [n] => Some(n.clone()),
        [schema, n] if schema == "pg_catalog" => Some(n.clone()),
        _ => None,
    }
}

/// `count(*)`, `count(e)`, `sum(e)`, `min(e)`, `max(e)`, `avg(e)` without DISTINCT,
/// FILTER, ORDER BY or OVER; and `count(DISTINCT key)` of the shard key
/// (given `key`): a key value is on one shard only, so the shards'
/// distinct counts add up.
fn mergeable_aggregate(e: &Expr, key: Option<&KeyRef>) -> Option<Agg> {
    if count_distinct_arg(e).is_some_and(|a| key.is_some_and(|k| k.is_key(a))) {
        return Some(Agg::Count);
    }
    let Expr::Function(f) = e else {
        return None;
    };
    if f.over.is_some()
        || f.filter.is_some()
        || !f.within_group.is_empty()
        || f.null_treatment.is_some()
    {
        return None;
    }
    if !matches!(f.parameters, FunctionArguments::None) {
        return None;
    }
    let name = function_name(&f.name)?;
    let agg = MERGEABLE.iter().find(|(n, _)| *n == name)?.1;
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    if list.duplicate_treatment.is_some() || !list.clauses.is_empty() || list.args.len() != 1 {
        return None;
    }
    match &list.args[0] {
        FunctionArg::Unnamed(FunctionArgExpr::Wildcard) if agg == Agg::Count => Some(agg),
        FunctionArg::Unnamed(FunctionArgExpr::Expr(_)) => Some(agg),
        _ => None,
    }
}

/// Key conditions for each sharded table from the conjuncts of `selection`
/// and of every JOIN ... ON. Tables equated on their keys (`a.k = b.k`)
/// share conditions when they are placed alike.
fn key_conditions(
    sharded: &[Arc<TableRule>],
    from: &[TableWithJoins],
    selection: Option<&Expr>,
) -> Target {
    // Aliases and names by which each sharded table can be referred to.
    let mut names: Vec<(String, Arc<TableRule>)> = Vec::new();
    let mut conjuncts: Vec<&Expr> = Vec::new();
    if let Some(e) = selection {
        split_and(e, &mut conjuncts);
    }
    for twj in from {
        note_factor(&twj.relation, sharded, &mut names);
        for j in &twj.joins {
            note_factor(&j.relation, sharded, &mut names);
            if let Some(JoinConstraint::On(e)) = join_constraint(&j.join_operator) {
                split_and(e, &mut conjuncts);
            }
        }
    }
    let single = sharded.len() == 1;
    let resolve = |parts: &[String]| -> Option<Arc<TableRule>> {
        match parts {
            [col] if single && *col == sharded[0].key => Some(sharded[0].clone()),
            [col] => {
                // Unqualified: the one sharded table whose key it is.
                let mut m = sharded.iter().filter(|t| t.key == *col);
                let first = m.next()?;
                m.next().is_none().then(|| first.clone())
            }
            [.., qual, col] => names
                .iter()
                .find(|(n, t)| n == qual && t.key == *col)
                .map(|(_, t)| t.clone()),
            [] => None,
        }
    };
    let mut conds: Vec<KeyCondition> = sharded
        .iter()
        .map(|t| KeyCondition {
            table: t.clone(),
            alternatives: None,
        })
        .collect();
    let mut equated: Vec<(Arc<TableRule>, Arc<TableRule>)> = Vec::new();
    for c in conjuncts {
        match key_predicate(c) {
            Some(KeyPredicate::Values(col, values)) => {
                if let Some(t) = resolve(&col) {
                    let slot = conds
                        .iter_mut()
                        .find(|k| Arc::ptr_eq(&k.table, &t))
                        .expect("resolved tables are in sharded");
                    slot.alternatives = Some(match slot.alternatives.take() {
                        // Two conditions on the same key: both must hold; keep
                        // the narrower (a single value beats a list).
                        Some(prev) if prev.len() <= values.len() => prev,
                        _ => values,
                    });
                }
            }
            Some(KeyPredicate::Equated(a, b)) => {
                if let (Some(ta), Some(tb)) = (resolve(&a), resolve(&b)) {
                    equated.push((ta, tb));
                }
            }
            None => {}
        }
    }
    // Propagate through key equalities between co-located tables.
    for _ in 0..conds.len() {
        for (a, b) in &equated {
            if a.placement_id() != b.placement_id() {
                continue;
            }
            let va = conds
                .iter()
                .find(|k| Arc::ptr_eq(&k.table, a))
                .and_then(|k| k.alternatives.clone());
            let vb = conds
                .iter()
                .find(|k| Arc::ptr_eq(&k.table, b))
                .and_then(|k| k.alternatives.clone());
            for (t, v) in [(b, va), (a, vb)] {
                if let Some(v) = v {
                    if let Some(k) = conds.iter_mut().find(|k| Arc::ptr_eq(&k.table, t)) {
                        if k.alternatives.is_none() {
                            k.alternatives = Some(v);
                        }
                    }
                }
            }
        }
    }
    Target::Keyed(conds)
}

fn join_constraint(op: &JoinOperator) -> Option<&JoinConstraint> {
    match op {
        JoinOperator::Join(c)
        | JoinOperator::Inner(c)
        | JoinOperator::Left(c)
        | JoinOperator::LeftOuter(c)
        | JoinOperator::Right(c)
        | JoinOperator::RightOuter(c)
        | JoinOperator::FullOuter(c)
        | JoinOperator::Semi(c)
        | JoinOperator::LeftSemi(c)
        | JoinOperator::RightSemi(c)
        | JoinOperator::Anti(c)
        | JoinOperator::LeftAnti(c)
        | JoinOperator::RightAnti(c) => Some(c),
        _ => None,
    }
}

fn note_factor(
    f: &TableFactor,
    sharded: &[Arc<TableRule>],
    names: &mut Vec<(String, Arc<TableRule>)>,
) {
    if let TableFactor::Table { name, alias, .. } = f {
        let Some(t) = sharded.iter().find(|t| lookup_name_matches(name, t)) else {
            return;
        };
        names.push((t.name.clone(), t.clone()));
        if let Some(a) = alias {
            names.push((
                normalize_ident(&a.name.value, a.name.quote_style),
                t.clone(),
            ));
        }
    }
}

fn lookup_name_matches(name: &ObjectName, t: &TableRule) -> bool {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(i)) => normalize_ident(&i.value, i.quote_style) == t.name,
        _ => false,
    }
}

fn split_and<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_and(left, out);
            split_and(right, out);
        }
        Expr::Nested(inner) => split_and(inner, out),
        other => out.push(other),
    }
}

enum KeyPredicate {
    /// `col = v`, `col IN (...)`, `col = ANY($n)`: the column (as written,
    /// normalized parts) and the values.
    Values(Vec<String>, Vec<KeyExpr>),
    /// `a.col = b.col`
    Equated(Vec<String>, Vec<String>),
}

fn column_parts(e: &Expr) -> Option<Vec<String>> {
    match e {
        Expr::Identifier(i) => Some(vec![normalize_ident(&i.value, i.quote_style)]),
        Expr::CompoundIdentifier(parts) => Some(
            parts
                .iter()
                .map(|i| normalize_ident(&i.value, i.quote_style))
                .collect(),
        ),
        Expr::Nested(inner) => column_parts(inner),
        // `key::text = '42'` and the like still name the key.
        Expr::Cast { expr, .. } => column_parts(expr),
        _ => None,
    }
}

fn key_predicate(e: &Expr) -> Option<KeyPredicate> {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            if let (Some(a), Some(b)) = (column_parts(left), column_parts(right)) {
                return Some(KeyPredicate::Equated(a, b));
            }
            if let (Some(col), Some(v)) = (column_parts(left), key_expr(right)) {
                return Some(KeyPredicate::Values(col, vec![v]));
            }
            if let (Some(col), Some(v)) = (column_parts(right), key_expr(left)) {
                return Some(KeyPredicate::Values(col, vec![v]));
            }
            None
        }
        Expr::InList {
            expr,
            list,
            negated: false,
        } => {
            let col = column_parts(expr)?;
            let values: Option<Vec<KeyExpr>> = list.iter().map(key_expr).collect();
            Some(KeyPredicate::Values(col, values?))
        }
        Expr::AnyOp {
            left,
            compare_op: BinaryOperator::Eq,
            right,
            ..
        } => {
            let col = column_parts(left)?;
            match strip_casts(right) {
                Expr::Value(v) => match &v.value {
                    Value::Placeholder(p) => Some(KeyPredicate::Values(
                        col,
                        vec![KeyExpr::AnyParam(param_index(p)?)],
                    )),
                    _ => None,
                },
                Expr::Array(arr) => {
                    let values: Option<Vec<KeyExpr>> = arr.elem.iter().map(key_expr).collect();
                    Some(KeyPredicate::Values(col, values?))
                }
                _ => None,
            }
        }
        Expr::Nested(inner) => key_predicate(inner),
        _ => None,
    }
}

fn strip_casts(e: &Expr) -> &Expr {
    match e {
        Expr::Cast { expr, .. } => strip_casts(expr),
        Expr::Nested(inner) => strip_casts(inner),
        other => other,
    }
}

/// A key value expression: a literal, a `$n` parameter or NULL (through casts).
pub fn key_expr(e: &Expr) -> Option<KeyExpr> {
    match strip_casts(e) {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some(KeyExpr::Number(n.to_string())),
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => {
                Some(KeyExpr::String(s.clone()))
            }
            Value::DollarQuotedString(s) => Some(KeyExpr::String(s.value.clone())),
            Value::Placeholder(p) => Some(KeyExpr::Param(param_index(p)?)),
            Value::Null => Some(KeyExpr::Null),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match strip_casts(expr) {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => Some(KeyExpr::Number(format!("-{n}"))),
                _ => None,
            },
            _ => None,
        },
        Expr::TypedString(ts) => match &ts.value.value {
            Value::SingleQuotedString(s) => Some(KeyExpr::String(s.clone())),
            _ => None,
        },
        _ => None,
    }
}

/// `$3` -> 2.
fn param_index(p: &str) -> Option<usize> {
    p.strip_prefix('$')?.parse::<usize>().ok()?.checked_sub(1)
}

fn plan_insert(ins: &sqlparser::ast::Insert, tables: &Tables) -> Target {
    let TableObject::TableName(name) = &ins.table else {
        return Target::Default;
    };
    let Some(table) = lookup(name, tables) else {
        // Inserting into an unsharded table: fine unless the SELECT part
        // reads sharded tables.
        return match ins.source.as_ref().map(|q| sharded_tables_in(q.as_ref(), tables)) {
            Some(found) if found.iter().any(|t| !t.is_reference()) => refuse(
                NOT_SUPPORTED,
                format!(
                    "INSERT ... SELECT from sharded table \"{}\" into an unsharded table is not supported",
                    found[0].name
                ),
                None,
            ),
            _ => Target::Default,
        };
    };
    if table.is_reference() {
        return Target::AllShards;
    }
    let columns: Vec<String> = ins
        .columns
        .iter()
        .filter_map(|c| match c.0.last() {
            Some(ObjectNamePart::Identifier(i)) => Some(normalize_ident(&i.value, i.quote_style)),
            _ => None,
        })
        .collect();
    let Some(key_pos) = columns.iter().position(|c| *c == table.key) else {
        return refuse(
            "23502",
            if columns.is_empty() {
                format!(
                    "INSERT into sharded table \"{}\" must list its columns, including the shard key \"{}\"",
                    table.name, table.key
                )
            } else {
                format!(
                    "INSERT into sharded table \"{}\" does not set the shard key \"{}\"",
                    table.name, table.key
                )
            },
            Some("name the columns and give the shard key a value"),
        );
    };
    let Some(source) = &ins.source else {
        return refuse(NOT_SUPPORTED, "INSERT without VALUES".into(), None);
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
    let mut rows = Vec::with_capacity(values.rows.len());
    for row in &values.rows {
        match row.content.get(key_pos).and_then(key_expr) {
            Some(k) => rows.push(k),
            None => {
                return refuse(
                    NOT_SUPPORTED,
                    format!(
                        "the shard key \"{}\" of table \"{}\" must be a literal or a parameter in INSERT",
                        table.key, table.name
                    ),
                    Some("compute the key in the application, or route with /* shardwire: shard=... */"),
                )
            }
        }
    }
    Target::Insert { table, rows }
}

fn plan_update(upd: &sqlparser::ast::Update, tables: &Tables) -> Target {
    if let TableFactor::Table { name, .. } = &upd.table.relation {
        if let Some(t) = lookup(name, tables) {
            let sets_key = upd.assignments.iter().any(|a| match &a.target {
                AssignmentTarget::ColumnName(c) => last_ident(c).as_deref() == Some(t.key.as_str()),
                AssignmentTarget::Tuple(cs) => cs
                    .iter()
                    .any(|c| last_ident(c).as_deref() == Some(t.key.as_str())),
            });
            if sets_key && !t.is_reference() {
                return refuse(
                    NOT_SUPPORTED,
                    format!(
                        "UPDATE of the shard key \"{}\" of table \"{}\" is not supported: it could move the row to another shard",
                        t.key, t.name
                    ),
                    Some("DELETE the row and INSERT it with the new key"),
                );
            }
        }
    }
    let stmt_tables = std::slice::from_ref(&upd.table);
    plan_tables_where(upd, stmt_tables, upd.selection.as_ref(), tables, true)
}

fn last_ident(n: &ObjectName) -> Option<String> {
    match n.0.last() {
        Some(ObjectNamePart::Identifier(i)) => Some(normalize_ident(&i.value, i.quote_style)),
        _ => None,
    }
}

/// UPDATE and DELETE: reference tables are written everywhere; sharded
/// ones need key conditions.
fn plan_tables_where<V: sqlparser::ast::Visit>(
    stmt: &V,
    from: &[TableWithJoins],
    selection: Option<&Expr>,
    tables: &Tables,
    writes: bool,
) -> Target {
    let reference_only = if writes {
        Target::AllShards
    } else {
        Target::AnyShard
    };
    let sharded = match sharded_tables_or(stmt, tables, reference_only) {
        Ok(x) => x,
        Err(target) => return target,
    };
    let written = from.first().and_then(|t| match &t.relation {
        TableFactor::Table { name, .. } => lookup(name, tables),
        _ => None,
    });
    if let Some(reference) = written.filter(|t| t.is_reference()) {
        return refuse(
            NOT_SUPPORTED,
            format!(
                "writing reference table \"{}\" from sharded table \"{}\" is not supported",
                reference.name, sharded[0].name
            ),
            None,
        );
    }
    key_conditions(&sharded, from, selection)
}

fn plan_copy(
    stmt: &Statement,
    source: &CopySource,
    to: bool,
    target: &CopyTarget,
    tables: &Tables,
) -> Target {
    match source {
        CopySource::Table {
            table_name,
            columns,
        } => {
            let Some(table) = lookup(table_name, tables) else {
                return Target::Default;
            };
            if to {
                return if table.is_reference() {
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
                };
            }
            if !matches!(target, CopyTarget::Stdin) {
                return refuse(
                    NOT_SUPPORTED,
                    "COPY into a sharded table must read FROM STDIN".into(),
                    None,
                );
            }
            if table.is_reference() {
                return Target::AllShards;
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
                        return refuse(
                            "23502",
                            format!(
                                "COPY into sharded table \"{}\" must include the shard key \"{}\"",
                                table.name, table.key
                            ),
                            None,
                        )
                    }
                }
            };
            Target::CopyIn { table, key_column }
        }
        CopySource::Query(q) => {
            let _ = stmt;
            plan_query(q, tables)
        }
    }
}

/// The keyword fallback for statements sqlparser cannot parse.
fn classify_keywords(sql: &str, tables: &Tables) -> StatementPlan {
    let words: Vec<String> = strip_comments(sql)
        .split(|c: char| c.is_whitespace() || c == ';' || c == '(')
        .filter(|w| !w.is_empty())
        .take(3)
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let first = words.first().map(String::as_str).unwrap_or("");
    let second = words.get(1).map(String::as_str).unwrap_or("");
    match (first, second) {
        ("vacuum" | "analyze" | "analyse" | "cluster" | "reindex", _) => {
            plan(Kind::Maintenance, true, Target::AllShards)
        }
        ("create" | "alter" | "drop", "table" | "index" | "unique") | ("truncate", _) => {
            plan(Kind::Ddl, true, Target::AllShards)
        }
        (
            "begin" | "start" | "commit" | "end" | "rollback" | "abort" | "savepoint" | "release"
            | "prepare",
            _,
        ) if first != "prepare" || second == "transaction" => {
            plan(Kind::Transaction, false, Target::Default)
        }
        ("set" | "reset" | "show", _) => plan(Kind::Set, false, Target::Default),
        _ => {
            // Anything else: the default shard, unless a sharded table is named.
            let lower = sql.to_ascii_lowercase();
            let named = tables.values().find(|t| {
                !t.is_reference()
                    && lower
                        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .any(|w| w == t.name)
            });
            match named {
                Some(t) => plan(
                    Kind::Other,
                    true,
                    refuse(
                        NOT_SUPPORTED,
                        format!(
                            "shardwire could not parse this statement, and it names sharded table \"{}\"",
                            t.name
                        ),
                        Some("route it with /* shardwire: shard=... */ or /* shardwire: shard_key=... */"),
                    ),
                ),
                None => plan(Kind::Other, true, Target::Default),
            }
        }
    }
}

fn strip_comments(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    loop {
        let block = rest.find("/*");
        let line = rest.find("--");
        match (block, line) {
            (Some(b), l) if l.is_none_or(|l| b < l) => {
                out.push_str(&rest[..b]);
                rest = rest[b + 2..].split_once("*/").map(|(_, r)| r).unwrap_or("");
                out.push(' ');
            }
            (_, Some(l)) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].split_once('\n').map(|(_, r)| r).unwrap_or("");
                out.push(' ');
            }
            _ => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

impl TableRule {
    pub fn is_reference(&self) -> bool {
        matches!(self.placement, Placement::Reference)
    }
}

//! Which cross-shard SELECTs the proxy can merge, and how (DESIGN §6,
//! tier 1): for a SELECT whose only sharded table occurrence is in its
//! top-level FROM, the `Merge` that combines the shards' answers into the
//! one a single database would give, and the statement each shard runs
//! instead when it differs (partials of `avg`, `LIMIT offset+limit`, ...);
//! or why it cannot be merged. The merging itself is execute::merge.
//!
//! Answers concatenate, make one row of aggregates, merge in ORDER BY
//! order, or group (GROUP BY with mergeable aggregates and a HAVING the
//! proxy evaluates after merging; SELECT DISTINCT as groups without
//! aggregates; `count(DISTINCT shard key)` as a count that adds up;
//! `count(DISTINCT column)` from the shards' distinct rows).

use std::ops::ControlFlow;
use std::sync::Arc;

use serde::Serialize;
use sqlparser::ast::{
    visit_expressions, visit_relations, BinaryOperator, Expr, FunctionArg, FunctionArgExpr,
    FunctionArguments, Ident, ObjectName, ObjectNamePart, Query, SelectItem, SetExpr, Statement,
    TableFactor, UnaryOperator, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::analyze::{lookup, normalize_ident, Refusal, Tables, HINT_ADD_KEY, NOT_SUPPORTED};
use super::occurrences::last_ident;
use super::TableRule;

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

fn lookup_name_matches(name: &ObjectName, t: &TableRule) -> bool {
    last_ident(name).as_deref() == Some(t.name.as_str())
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
pub(super) fn merge_kind(
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
    sq.fetch = None;
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
    sq.fetch = None;
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
    // FETCH FIRST n ROWS ONLY is LIMIT n (FIRST and NEXT, ROW and ROWS
    // alike; no count is 1 row).
    let fetched = match &q.fetch {
        None => None,
        Some(f) if f.with_ties => {
            return Err("FETCH FIRST ... WITH TIES is not supported; use ONLY".into())
        }
        Some(f) if f.percent => return Err("FETCH FIRST ... PERCENT is not supported".into()),
        Some(f) => Some(match &f.quantity {
            None => Some(1),
            Some(e) => count_literal(e, "FETCH FIRST")?,
        }),
    };
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
    if let Some(fetched) = fetched {
        if limit.is_some() {
            // PostgreSQL refuses it too ("multiple LIMIT clauses").
            return Err("LIMIT and FETCH FIRST together are not supported".into());
        }
        limit = fetched;
    }
    // Each shard sends at most offset+limit rows, already sorted; OFFSET
    // applies only after the merge.
    let shard_sql = if limit.is_some() || offset > 0 {
        let mut sq = q.clone();
        sq.fetch = None;
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
        sq.fetch = None;
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

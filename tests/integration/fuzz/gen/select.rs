//! SELECT statements: FROM lists with inner and left joins (self-joins,
//! co-located, with the reference and the unsharded table, others),
//! select lists, ORDER BY (also by expressions outside the select list)
//! and LIMIT / OFFSET / FETCH FIRST ... ONLY or WITH TIES (counts also as
//! parameters) only where the rows they pick are deterministic,
//! aggregates (also string_agg/array_agg with ORDER BY) with GROUP BY and
//! HAVING (aggregates, group keys, dates and timestamps, subqueries,
//! parameters), window functions, CTEs, subqueries in FROM, functions in
//! FROM, set operations, DISTINCT and DISTINCT ON.

use rand::seq::SliceRandom;
use rand::Rng;

use super::super::schema::{self, Fam, Pool, Table, Ty};
use super::super::sql::*;
use super::*;

impl<'a> Gen<'a> {
    // ------------------------------------------------------------------
    // FROM

    /// A FROM list of 1..=max relations with join conditions.
    pub(super) fn scope_from(&mut self, max: usize) -> (Vec<FromItem>, Vec<Rel>) {
        let first = self.any_table();
        let alias = self.next_alias("a");
        let mut scope = vec![self.rel_of(first, alias.clone())];
        let mut from = vec![FromItem {
            join: None,
            source: Source::Table(first.name.into()),
            alias,
        }];
        let mut tables = vec![first];
        let n = if max > 1 && self.p(0.45) {
            self.rng.gen_range(2..=max)
        } else {
            1
        };
        for _ in 1..n {
            let (t, how) = self.join_partner(&tables);
            let alias = self.next_alias("b");
            let rel = self.rel_of(t, alias.clone());
            let on = self.join_on(&scope, &rel, how);
            let kind = if self.p(0.3) {
                self.tag("join:left");
                JoinKind::Left
            } else {
                JoinKind::Inner
            };
            from.push(FromItem {
                join: Some((kind, on)),
                source: Source::Table(t.name.into()),
                alias,
            });
            scope.push(rel);
            tables.push(t);
        }
        (from, scope)
    }

    /// Which table joins next, and whether to join on shard keys.
    pub(super) fn join_partner(&mut self, present: &[&'a Table]) -> (&'a Table, bool) {
        let base = *present.choose(&mut self.rng).expect("present");
        match self.rng.gen_range(0..100) {
            0..=24 if base.is_sharded() => {
                self.tag("join:self");
                (base, true)
            }
            25..=44 if base.coloc.is_some() && base.is_sharded() => {
                let mates: Vec<&Table> = self
                    .tables
                    .iter()
                    .filter(|t| t.coloc == base.coloc && t.name != base.name)
                    .collect();
                match mates.choose(&mut self.rng) {
                    Some(m) => {
                        self.tag("join:co-located");
                        (*m, true)
                    }
                    None => {
                        self.tag("join:self");
                        (base, true)
                    }
                }
            }
            45..=59 => {
                self.tag("join:reference");
                (self.table("fz_ref"), false)
            }
            60..=72 => {
                self.tag("join:unsharded");
                (self.table("fz_plain"), false)
            }
            _ => {
                self.tag("join:other");
                (self.any_table(), self.p(0.3))
            }
        }
    }

    pub(super) fn join_on(&mut self, scope: &[Rel], rel: &Rel, on_keys: bool) -> Expr {
        let mut pairs = Vec::new();
        for ic in &rel.cols {
            for (orel, oc) in Self::cols_of(scope, |o| o.ty.fam() == ic.ty.fam()) {
                let both_keys = ic.key && oc.key;
                pairs.push((
                    orel.alias.clone(),
                    oc.name.clone(),
                    ic.name.clone(),
                    both_keys,
                ));
            }
        }
        let keyed: Vec<_> = pairs.iter().filter(|p| p.3).cloned().collect();
        let pool = if on_keys && !keyed.is_empty() {
            keyed
        } else {
            pairs
        };
        let Some((oa, oc, ic, _)) = pool.choose(&mut self.rng).cloned() else {
            // No comparable columns (a CTE of uuids joined to a table
            // without one): a cross join.
            self.tag("join:cross");
            return lit("true");
        };
        let on = bin(col(&oa, &oc), "=", col(&rel.alias, &ic));
        if self.p(0.15) {
            let extra = self.cmp_pred(std::slice::from_ref(rel));
            and(on, extra)
        } else {
            on
        }
    }

    // ------------------------------------------------------------------
    // SELECT

    pub fn select_stmt(&mut self, depth: u32) -> Select {
        match self.rng.gen_range(0..100) {
            0..=27 => self.plain_select(1),
            28..=52 => self.plain_select(3),
            53..=69 => self.aggregate_select(),
            70..=76 => self.cte_select(depth),
            77..=81 => self.subquery_in_from_select(),
            82..=85 => self.function_from_select(),
            86..=91 => self.set_op_select(),
            92..=96 => {
                self.tag("distinct");
                self.plain_select_as(2, true)
            }
            _ => self.distinct_on_select(),
        }
    }

    /// Columns (and a few expressions) of the scope as select items.
    pub(super) fn items(&mut self, scope: &[Rel], n: usize) -> Vec<(Expr, Option<String>)> {
        let all = Self::cols_of(scope, |_| true);
        let mut chosen: Vec<(Expr, Option<String>)> = Vec::new();
        for _ in 0..n {
            let (r, c) = *all.choose(&mut self.rng).expect("cols");
            let base = col(&r.alias, &c.name);
            let e = match self.rng.gen_range(0..100) {
                0..=79 => base,
                80..=86 if c.ty.is_int() => bin(base, "+", lit("1")),
                87..=92 if c.ty == Ty::Text => Expr::Func("lower".into(), vec![base]),
                93..=96 => Expr::Func(
                    "coalesce".into(),
                    vec![
                        base,
                        lit(schema::pool_literal(&mut self.rng, c.pool, false)),
                    ],
                ),
                _ => base,
            };
            if !chosen.iter().any(|(x, _)| *x == e) {
                chosen.push((e, None));
            }
        }
        if self.p(0.08) {
            self.tag("subquery:scalar-item");
            let (q, _) = self.scalar_sub(scope, 1);
            chosen.push((Expr::Scalar(Box::new(q)), Some("sub".into())));
        }
        chosen
    }

    /// ORDER BY (total or partial) and LIMIT/OFFSET, only when
    /// deterministic, over positions in the select list.
    pub(super) fn order_limit(&mut self, q: &mut Select) {
        self.order_limit_in(q, &[]);
    }

    /// ORDER BY and LIMIT/OFFSET/FETCH FIRST, only where the rows they
    /// pick are deterministic. With the FROM list's relations in `scope`
    /// also ORDER BY expressions not in the select list (not under
    /// DISTINCT or a set operation, where PostgreSQL refuses them), and
    /// orders made total by every relation's primary key.
    pub(super) fn order_limit_in(&mut self, q: &mut Select, scope: &[Rel]) {
        let n = q.items.len();
        let free = !scope.is_empty() && !q.distinct && q.set_op.is_none();
        let keys = if free { Self::key_order(scope) } else { None };
        let roll = self.rng.gen_range(0..100);
        match roll {
            0..=34 => {}
            35..=74 => {
                let mut order = Vec::new();
                if free && self.p(0.15) {
                    self.tag("order:expression");
                    order.push(self.order_expr(scope));
                }
                let mut pos: Vec<usize> = (1..=n).collect();
                pos.shuffle(&mut self.rng);
                order.extend(pos.into_iter().map(|i| self.order_item(i)));
                q.order_by = order;
                self.limit_clause(q);
            }
            75..=84 if keys.is_some() => {
                // Total without naming the select list: ends with every
                // relation's primary key.
                self.tag("order:primary-key");
                let mut order = Vec::new();
                if self.p(0.6) {
                    self.tag("order:expression");
                    order.push(self.order_expr(scope));
                }
                order.extend(self.key_items(keys.expect("checked")));
                q.order_by = order;
                q.order_total = true;
                self.limit_clause(q);
            }
            85..=91 => {
                // WITH TIES after a partial order: which rows tie with the
                // last one does not depend on the order among them, so the
                // set of rows is deterministic (compared as a multiset).
                self.tag("fetch:with-ties-partial-order");
                q.order_by = vec![if free && self.p(0.4) {
                    self.tag("order:expression");
                    self.order_expr(scope)
                } else {
                    let i = self.rng.gen_range(1..=n);
                    self.order_item(i)
                }];
                q.fetch = Fetch::WithTies;
                q.limit = Some(Box::new(self.count_value(0, 6, "fetch")));
            }
            _ => {
                self.tag("order:partial");
                let i = self.rng.gen_range(1..=n);
                q.order_by = vec![self.order_item(i)];
            }
        }
    }

    /// LIMIT/OFFSET after a total ORDER BY: `LIMIT n OFFSET m`, `FETCH
    /// FIRST n ROWS ONLY` or `WITH TIES` (ties are identical rows), `OFFSET
    /// m ROWS` alone; the counts sometimes parameters.
    pub(super) fn limit_clause(&mut self, q: &mut Select) {
        match self.rng.gen_range(0..100) {
            0..=34 => {}
            35..=64 => {
                self.tag("order+limit");
                q.limit = Some(Box::new(self.count_value(0, 8, "limit")));
                if self.p(0.25) {
                    self.tag("offset");
                    q.offset = Some(Box::new(self.count_value(0, 5, "offset")));
                }
            }
            65..=77 => {
                self.tag("fetch:only");
                q.fetch = Fetch::Only;
                q.limit = Some(Box::new(self.count_value(0, 8, "fetch")));
                if self.p(0.3) {
                    self.tag("offset:rows");
                    q.offset = Some(Box::new(self.count_value(0, 5, "offset")));
                }
            }
            78..=87 => {
                self.tag("fetch:with-ties");
                q.fetch = Fetch::WithTies;
                q.limit = Some(Box::new(self.count_value(0, 6, "fetch")));
                if self.p(0.3) {
                    self.tag("offset:rows");
                    q.offset = Some(Box::new(self.count_value(0, 5, "offset")));
                }
            }
            88..=92 => {
                self.tag("offset:rows");
                q.fetch = Fetch::Only;
                q.offset = Some(Box::new(self.count_value(0, 5, "offset")));
            }
            _ => {
                self.tag("offset");
                q.offset = Some(Box::new(self.count_value(0, 5, "offset")));
            }
        }
    }

    /// A row count for LIMIT, OFFSET or FETCH FIRST: a number, or in the
    /// extended protocol often a parameter (integer types, sometimes
    /// numeric or float8, or left for the server to infer).
    pub(super) fn count_value(&mut self, lo: u32, hi: u32, what: &str) -> Expr {
        let n = self.rng.gen_range(lo..=hi);
        if !self.params || self.p(0.5) {
            return lit(n.to_string());
        }
        let ty = self.pick(&[
            PType::Int8,
            PType::Int8,
            PType::Int4,
            PType::Int4,
            PType::Int2,
            PType::Numeric,
            PType::Float8,
        ]);
        let declared = !self.p(0.2);
        let binary = declared && self.p(0.5);
        self.tag(format!(
            "{what}:param:{}:{}",
            if declared { ty.sql() } else { "unknown" },
            if binary { "binary" } else { "text" }
        ));
        // NULL is no limit (no offset); a fraction is rounded to bigint
        // by PostgreSQL (half away from zero for numeric, to even for
        // float8).
        let value = match ty {
            _ if self.p(0.04) => {
                self.tag(format!("{what}:param:null"));
                None
            }
            PType::Numeric | PType::Float8 if declared && self.p(0.25) => {
                self.tag(format!("{what}:param:fractional"));
                Some(PValue::Scalar(format!("{n}.5")))
            }
            _ => Some(PValue::Scalar(n.to_string())),
        };
        Expr::Param(Param {
            ty,
            value,
            binary,
            declared,
        })
    }

    /// Every relation's primary key, when each one has (tables only).
    pub(super) fn key_order(scope: &[Rel]) -> Option<Vec<Expr>> {
        if scope.is_empty() || scope.iter().any(|r| r.pk.is_empty()) {
            return None;
        }
        Some(
            scope
                .iter()
                .flat_map(|r| r.pk.iter().map(move |c| col(&r.alias, c)))
                .collect(),
        )
    }

    pub(super) fn key_items(&mut self, keys: Vec<Expr>) -> Vec<OrderItem> {
        keys.into_iter()
            .map(|expr| OrderItem {
                expr,
                desc: self.p(0.3),
                nulls_first: if self.p(0.15) {
                    Some(self.rng.gen())
                } else {
                    None
                },
            })
            .collect()
    }

    /// An expression over the scope's columns for ORDER BY (or a window's
    /// ORDER BY), not necessarily in the select list.
    pub(super) fn order_expr(&mut self, scope: &[Rel]) -> OrderItem {
        let all = Self::cols_of(scope, |_| true);
        let (r, c) = *all.choose(&mut self.rng).expect("cols");
        let e = col(&r.alias, &c.name);
        let ints: Vec<Expr> = Self::cols_of(scope, |o| o.ty.is_int())
            .into_iter()
            .map(|(r, o)| col(&r.alias, &o.name))
            .collect();
        let expr = match c.ty {
            Ty::Int4 | Ty::Int8 => match self.rng.gen_range(0..3) {
                0 => bin(e, "+", ints.choose(&mut self.rng).expect("an int").clone()),
                1 => bin(e, "%", lit("3")),
                _ => bin(e, "*", lit("-1")),
            },
            Ty::Numeric => Expr::Func("abs".into(), vec![e]),
            Ty::Text if self.p(0.5) => Expr::Func("lower".into(), vec![e]),
            Ty::Text => Expr::Func("length".into(), vec![e]),
            Ty::Uuid => Expr::Case(
                Box::new(Expr::IsNull(Box::new(e), false)),
                Box::new(lit("0")),
                Box::new(lit("1")),
            ),
        };
        OrderItem {
            expr,
            desc: self.p(0.3),
            nulls_first: if self.p(0.2) {
                Some(self.rng.gen())
            } else {
                None
            },
        }
    }

    pub(super) fn order_item(&mut self, i: usize) -> OrderItem {
        OrderItem {
            expr: lit(i.to_string()),
            desc: self.p(0.3),
            nulls_first: if self.p(0.2) {
                Some(self.rng.gen())
            } else {
                None
            },
        }
    }

    pub(super) fn plain_select(&mut self, max_rels: usize) -> Select {
        self.plain_select_as(max_rels, false)
    }

    /// A SELECT over 1..=max_rels tables; `distinct`: SELECT DISTINCT
    /// (its ORDER BY names the select list only).
    pub(super) fn plain_select_as(&mut self, max_rels: usize, distinct: bool) -> Select {
        let (from, scope) = self.scope_from(max_rels);
        let n = self.rng.gen_range(1..=4);
        let mut q = Select {
            items: self.items(&scope, n),
            from,
            distinct,
            ..Default::default()
        };
        if self.p(0.85) {
            q.where_ = Some(self.pred(&scope, 0));
        }
        if self.p(0.07) {
            self.window_item(&mut q, &scope);
            if self.p(0.25) {
                self.window_item(&mut q, &scope);
            }
        }
        self.order_limit_in(&mut q, &scope);
        // FOR UPDATE is refused by PostgreSQL itself next to outer joins,
        // DISTINCT and window functions: only on plain one-table queries.
        if scope.len() == 1
            && !distinct
            && q.items.iter().all(|(e, _)| !matches!(e, Expr::Window(..)))
            && self.p(0.03)
        {
            self.tag("for-update");
            q.suffix = Some("for update".into());
        }
        q
    }

    /// A window function over tables with primary keys: row_number(),
    /// lag() (over a total order: ending with every relation's primary
    /// key), rank(), dense_rank(), sum(), count(*) (deterministic over a
    /// partial order too: peers get the same value), partitioned by a
    /// shard key, by another column, or not at all.
    pub(super) fn window_item(&mut self, q: &mut Select, scope: &[Rel]) {
        let Some(keys) = Self::key_order(scope) else {
            return;
        };
        let mut r = Render::new(true);
        let all: Vec<(String, RCol)> = Self::cols_of(scope, |_| true)
            .into_iter()
            .map(|(r, c)| (r.alias.clone(), c.clone()))
            .collect();
        let nums: Vec<&(String, RCol)> =
            all.iter().filter(|(_, c)| c.ty.fam() == Fam::Num).collect();
        let (func, total) = match self.rng.gen_range(0..7) {
            0 => ("row_number()".to_string(), true),
            1 => ("rank()".to_string(), false),
            2 => ("dense_rank()".to_string(), false),
            3 | 4 => {
                let (a, c) = all.choose(&mut self.rng).expect("cols");
                let off = if self.p(0.3) { ", 2" } else { "" };
                (format!("lag({a}.{}{off})", c.name), true)
            }
            5 if !nums.is_empty() => {
                let (a, c) = *nums.choose(&mut self.rng).expect("nums");
                (format!("sum({a}.{})", c.name), false)
            }
            _ => ("count(*)".to_string(), false),
        };
        let name = func.split('(').next().unwrap_or_default().to_string();
        self.tag(format!("window:{name}"));
        let shard_keys: Vec<&(String, RCol)> = all.iter().filter(|(_, c)| c.key).collect();
        let partition = match self.rng.gen_range(0..100) {
            0..=34 => {
                self.tag("window:global");
                None
            }
            35..=74 if !shard_keys.is_empty() => {
                self.tag("window:partition-by-shard-key");
                let (a, c) = *shard_keys.choose(&mut self.rng).expect("keys");
                Some(format!("{a}.{}", c.name))
            }
            _ => {
                self.tag("window:partition-by-column");
                let (a, c) = all.choose(&mut self.rng).expect("cols");
                Some(format!("{a}.{}", c.name))
            }
        };
        let mut order = Vec::new();
        if self.p(0.6) {
            let o = self.order_expr(scope);
            order.push(o);
        }
        // rank() and friends give peers one value: a leading order alone
        // is deterministic for them.
        if !total && !order.is_empty() && self.p(0.35) {
            self.tag("window:peers");
        } else {
            order.extend(self.key_items(keys));
        }
        let order_sql = format!("order by {}", r.order_items(&order));
        let over = match partition {
            Some(p) => format!("partition by {p} {order_sql}"),
            None => order_sql,
        };
        let alias = format!("win{}", q.items.len() + 1);
        q.items
            .push((Expr::Window(func, over.trim().to_string()), Some(alias)));
    }

    /// `SELECT DISTINCT ON (e, ...) ... ORDER BY e, ..., <the rest>` where
    /// the rest makes the order total (every relation's primary key, or
    /// every output column), so the row kept for each value is known.
    pub(super) fn distinct_on_select(&mut self) -> Select {
        self.tag("distinct-on");
        let (from, scope) = self.scope_from(2);
        let n = self.rng.gen_range(1..=3);
        let mut q = Select {
            items: self.items(&scope, n),
            from,
            ..Default::default()
        };
        if self.p(0.85) {
            q.where_ = Some(self.pred(&scope, 0));
        }
        let k = if self.p(0.7) { 1 } else { 2 };
        let mut on: Vec<Expr> = Vec::new();
        for _ in 0..k {
            let keys = Self::cols_of(&scope, |c| c.key);
            let e = if !keys.is_empty() && self.p(0.4) {
                self.tag("distinct-on:shard-key");
                let (r, c) = *keys.choose(&mut self.rng).expect("keys");
                col(&r.alias, &c.name)
            } else if self.p(0.2) {
                self.tag("distinct-on:expression");
                self.order_expr(&scope).expr
            } else {
                let all = Self::cols_of(&scope, |_| true);
                let (r, c) = *all.choose(&mut self.rng).expect("cols");
                col(&r.alias, &c.name)
            };
            if !on.contains(&e) {
                on.push(e);
            }
        }
        let mut order: Vec<OrderItem> = on
            .iter()
            .map(|e| OrderItem {
                expr: e.clone(),
                desc: self.p(0.3),
                nulls_first: if self.p(0.15) {
                    Some(self.rng.gen())
                } else {
                    None
                },
            })
            .collect();
        match Self::key_order(&scope) {
            Some(keys) if self.p(0.6) => {
                self.tag("distinct-on:then-primary-key");
                if self.p(0.3) {
                    self.tag("order:expression");
                    order.push(self.order_expr(&scope));
                }
                order.extend(self.key_items(keys));
                q.order_total = true;
            }
            _ => {
                self.tag("distinct-on:then-select-list");
                let mut pos: Vec<usize> = (1..=q.items.len()).collect();
                pos.shuffle(&mut self.rng);
                order.extend(pos.into_iter().map(|i| self.order_item(i)));
            }
        }
        q.distinct_on = on;
        q.order_by = order;
        self.limit_clause(&mut q);
        q
    }

    pub(super) fn aggregate_select(&mut self) -> Select {
        self.tag("aggregate");
        let (from, scope) = self.scope_from(2);
        let all: Vec<(String, RCol)> = Self::cols_of(&scope, |_| true)
            .into_iter()
            .map(|(r, c)| (r.alias.clone(), c.clone()))
            .collect();
        let groups = if self.p(0.55) {
            self.tag("group-by");
            self.rng.gen_range(1..=2)
        } else {
            0
        };
        let mut items: Vec<(Expr, Option<String>)> = Vec::new();
        let mut group_by = Vec::new();
        let mut keys: Vec<(String, RCol)> = Vec::new();
        for _ in 0..groups {
            let (a, c) = all.choose(&mut self.rng).expect("cols").clone();
            let e = col(&a, &c.name);
            if !group_by.contains(&e) {
                group_by.push(e.clone());
                items.push((e, None));
                keys.push((a, c));
            }
        }
        let naggs = self.rng.gen_range(1..=3);
        for _ in 0..naggs {
            let (a, c) = all.choose(&mut self.rng).expect("cols").clone();
            let e = match self.p(0.12).then(|| self.ordered_agg(&scope, &a, &c)) {
                Some(Some(e)) => e,
                _ => self.aggregate(&a, &c),
            };
            items.push((e, None));
        }
        let mut q = Select {
            items,
            from,
            group_by,
            ..Default::default()
        };
        if self.p(0.7) {
            q.where_ = Some(self.pred(&scope, 0));
        }
        if !q.group_by.is_empty() && self.p(0.4) {
            self.tag("having");
            q.having = Some(self.having(&all, &keys));
        }
        if q.group_by.is_empty() {
            // One row: ORDER BY/LIMIT change nothing but the proxy's path.
            if self.p(0.1) {
                q.order_by = vec![self.order_item(1)];
                q.limit = Some(Box::new(lit("1")));
            }
        } else {
            self.order_limit(&mut q);
            if !q.order_by.is_empty() && self.p(0.2) {
                // An aggregate not in the select list leads the order.
                self.tag("order:aggregate-expression");
                let (a, c) = all.choose(&mut self.rng).expect("cols").clone();
                let e = match c.ty {
                    Ty::Int4 | Ty::Int8 | Ty::Numeric if self.p(0.5) => {
                        agg("sum", false, vec![col(&a, &c.name)])
                    }
                    Ty::Uuid => agg("count", true, vec![col(&a, &c.name)]),
                    _ if self.p(0.5) => agg("max", false, vec![col(&a, &c.name)]),
                    _ => agg("count", false, vec![]),
                };
                q.order_by.insert(
                    0,
                    OrderItem {
                        expr: e,
                        desc: self.p(0.5),
                        nulls_first: None,
                    },
                );
            }
        }
        q
    }

    /// `string_agg(cast(c as text), ',' ORDER BY ...)` or `array_agg(c
    /// ORDER BY ...)` over an order made total by every relation's
    /// primary key (none when a relation has none).
    pub(super) fn ordered_agg(&mut self, scope: &[Rel], a: &str, c: &RCol) -> Option<Expr> {
        let keys = Self::key_order(scope)?;
        let mut order = Vec::new();
        if self.p(0.3) {
            order.push(self.order_expr(scope));
        }
        order.extend(self.key_items(keys));
        let e = col(a, &c.name);
        Some(if self.p(0.5) {
            self.tag("string_agg:ordered-by-key");
            Expr::Agg {
                name: "string_agg".into(),
                distinct: false,
                args: vec![Expr::Cast(Box::new(e), "text"), lit("','")],
                order,
            }
        } else {
            self.tag("array_agg:ordered-by-key");
            Expr::Agg {
                name: "array_agg".into(),
                distinct: false,
                args: vec![e],
                order,
            }
        })
    }

    /// A HAVING condition: aggregates against constants; a text group
    /// key's lower(); date and timestamp arithmetic on integer columns;
    /// count(*) against a scalar subquery of another table; parameters.
    pub(super) fn having(&mut self, all: &[(String, RCol)], keys: &[(String, RCol)]) -> Expr {
        let (a, c) = all.choose(&mut self.rng).expect("cols").clone();
        let ints: Vec<&(String, RCol)> = all.iter().filter(|(_, c)| c.ty.is_int()).collect();
        let int_keys: Vec<&(String, RCol)> = keys.iter().filter(|(_, c)| c.ty.is_int()).collect();
        let text_keys: Vec<&(String, RCol)> =
            keys.iter().filter(|(_, c)| c.ty == Ty::Text).collect();
        let days = |g: &mut Self| format!("(date '2024-01-01' + {})", g.rng.gen_range(-10..=25));
        match self.rng.gen_range(0..12) {
            0 => bin(
                agg("count", false, vec![]),
                ">",
                lit(self.rng.gen_range(0..3).to_string()),
            ),
            1 if c.ty.is_int() => bin(
                agg("sum", false, vec![col(&a, &c.name)]),
                ">",
                lit(self.rng.gen_range(-5..20).to_string()),
            ),
            4 | 5 if !text_keys.is_empty() => {
                self.tag("having:lower-text-key");
                let (ka, kc) = *text_keys.choose(&mut self.rng).expect("text key");
                let op = self.pick(&[">", "<=", "="]);
                let v = self.pick(&["'m'", "'a'", "'delta'", "''"]);
                bin(
                    Expr::Func("lower".into(), vec![col(ka, &kc.name)]),
                    op,
                    lit(v),
                )
            }
            6 if !ints.is_empty() => {
                // date + int is a date: on a group key, or in an aggregate.
                let op = self.pick(&["<", ">=", "=", "<>"]);
                let rhs = if self.params && self.p(0.5) {
                    self.tag("having:param-date");
                    let d = 1 + self.rng.gen_range(0..25);
                    Expr::Cast(Box::new(self.text_param(format!("2024-01-{d:02}"))), "date")
                } else {
                    lit(days(self))
                };
                let lhs = if !int_keys.is_empty() && self.p(0.5) {
                    self.tag("having:date-group-key");
                    let (ka, kc) = *int_keys.choose(&mut self.rng).expect("int key");
                    bin(
                        lit("date '2024-01-01'"),
                        "+",
                        Expr::Cast(Box::new(col(ka, &kc.name)), "int"),
                    )
                } else {
                    self.tag("having:date-aggregate");
                    let (ia, ic) = *ints.choose(&mut self.rng).expect("int");
                    agg(
                        self.pick(&["max", "min"]),
                        false,
                        vec![bin(
                            lit("date '2024-01-01'"),
                            "+",
                            Expr::Cast(Box::new(col(ia, &ic.name)), "int"),
                        )],
                    )
                };
                bin(lhs, op, rhs)
            }
            7 if !ints.is_empty() => {
                self.tag("having:timestamp-aggregate");
                let (ia, ic) = *ints.choose(&mut self.rng).expect("int");
                let hours = bin(
                    Expr::Cast(Box::new(col(ia, &ic.name)), "int"),
                    "*",
                    lit("interval '1 hour'"),
                );
                let f = self.pick(&["max", "min"]);
                let op = self.pick(&["<", ">=", "<>"]);
                bin(
                    agg(
                        f,
                        false,
                        vec![bin(lit("timestamp '2024-01-01 00:00:00'"), "+", hours)],
                    ),
                    op,
                    lit(format!(
                        "timestamp '2024-01-01 {:02}:30:00'",
                        self.rng.gen_range(0..20)
                    )),
                )
            }
            8 => {
                self.tag("having:subquery");
                let t = self.any_table();
                let alias = self.next_alias("h");
                let rel = self.rel_of(t, alias.clone());
                let mut sub = Select {
                    items: vec![(
                        if self.p(0.5) {
                            agg("count", false, vec![])
                        } else {
                            bin(agg("count", false, vec![]), "/", lit("10"))
                        },
                        None,
                    )],
                    from: vec![FromItem {
                        join: None,
                        source: Source::Table(t.name.into()),
                        alias,
                    }],
                    ..Default::default()
                };
                if self.p(0.7) {
                    sub.where_ = Some(self.pred(&[rel], 1));
                }
                let op = self.pick(&[">", "<=", ">="]);
                bin(agg("count", false, vec![]), op, Expr::Scalar(Box::new(sub)))
            }
            9 | 10 if self.params => {
                self.tag("having:param");
                if c.ty != Ty::Uuid && self.p(0.5) {
                    let v = self.param_for(&c, false);
                    let f = self.pick(&["max", "min"]);
                    bin(agg(f, false, vec![col(&a, &c.name)]), ">=", v)
                } else {
                    let n = RCol {
                        name: "count".into(),
                        ty: Ty::Int8,
                        pool: Pool::Small,
                        key: false,
                        not_null: true,
                    };
                    let v = self.param_for(&n, false);
                    let op = self.pick(&[">", "<=", ">="]);
                    bin(agg("count", false, vec![]), op, v)
                }
            }
            // No max(uuid) before PostgreSQL 18.
            _ => Expr::IsNull(
                Box::new(agg(
                    if c.ty == Ty::Uuid { "count" } else { "max" },
                    false,
                    vec![col(&a, &c.name)],
                )),
                true,
            ),
        }
    }

    /// A text parameter (declared text, or left for the server to infer
    /// from where it stands).
    pub(super) fn text_param(&mut self, value: String) -> Expr {
        let declared = !self.p(0.4);
        let binary = declared && self.p(0.5);
        Expr::Param(Param {
            ty: PType::Text,
            value: Some(PValue::Scalar(value)),
            binary,
            declared,
        })
    }

    pub(super) fn aggregate(&mut self, a: &str, c: &RCol) -> Expr {
        let e = col(a, &c.name);
        let roll = self.rng.gen_range(0..100);
        match roll {
            0..=24 => agg("count", false, vec![]),
            25..=34 => agg("count", false, vec![e]),
            35..=41 => {
                self.tag("count-distinct");
                agg("count", true, vec![e])
            }
            42..=56 if c.ty.fam() == Fam::Num => agg("sum", false, vec![e]),
            57..=66 if c.ty.fam() == Fam::Num => agg("avg", false, vec![e]),
            67..=82 if c.ty != Ty::Uuid => agg("min", false, vec![e]),
            83..=95 if c.ty != Ty::Uuid => agg("max", false, vec![e]),
            96..=99 if c.ty == Ty::Text => {
                self.tag("string_agg");
                Expr::Agg {
                    name: "string_agg".into(),
                    distinct: false,
                    args: vec![e.clone(), lit("','")],
                    order: vec![OrderItem {
                        expr: e,
                        desc: false,
                        nulls_first: None,
                    }],
                }
            }
            _ => agg("count", false, vec![e]),
        }
    }

    /// `WITH c AS (SELECT ... FROM t WHERE ...) SELECT ... FROM c [JOIN t2]`.
    pub(super) fn cte_select(&mut self, depth: u32) -> Select {
        self.tag("cte");
        let t = self.any_table();
        let inner_alias = self.next_alias("i");
        let inner_rel = self.rel_of(t, inner_alias.clone());
        let k = self.rng.gen_range(1..=t.cols.len());
        let mut cols: Vec<RCol> = inner_rel.cols.clone();
        cols.shuffle(&mut self.rng);
        cols.truncate(k);
        let mut body = Select {
            items: cols
                .iter()
                .map(|c| (col(&inner_alias, &c.name), None))
                .collect(),
            from: vec![FromItem {
                join: None,
                source: Source::Table(t.name.into()),
                alias: inner_alias,
            }],
            ..Default::default()
        };
        if self.p(0.7) {
            body.where_ = Some(self.pred(&[inner_rel], depth + 1));
        }
        let name = self.next_alias("cte");
        let alias = self.next_alias("c");
        // Columns of a CTE are not a table's shard key any more.
        let rel = Rel {
            alias: alias.clone(),
            cols: cols.into_iter().map(|c| RCol { key: false, ..c }).collect(),
            pk: Vec::new(),
        };
        let mut scope = vec![rel];
        let mut from = vec![FromItem {
            join: None,
            source: Source::Table(name.clone()),
            alias,
        }];
        if self.p(0.4) {
            self.tag("cte:joined");
            let t2 = self.any_table();
            let a2 = self.next_alias("b");
            let rel2 = self.rel_of(t2, a2.clone());
            let on = self.join_on(&scope, &rel2, false);
            from.push(FromItem {
                join: Some((JoinKind::Inner, on)),
                source: Source::Table(t2.name.into()),
                alias: a2,
            });
            scope.push(rel2);
        }
        let n = self.rng.gen_range(1..=3);
        let mut q = Select {
            ctes: vec![Cte {
                name,
                body: Box::new(Stmt::Select(body)),
            }],
            items: self.items(&scope, n),
            from,
            ..Default::default()
        };
        if self.p(0.5) {
            q.where_ = Some(self.pred(&scope, 1));
        }
        self.order_limit_in(&mut q, &scope);
        q
    }

    /// `SELECT s.c1 ... FROM (SELECT ... ) s WHERE ...`.
    pub(super) fn subquery_in_from_select(&mut self) -> Select {
        self.tag("subquery:from");
        let inner = self.plain_select(2);
        let alias = self.next_alias("s");
        // Name the inner items c1..cn so the outer query can refer to them.
        let mut inner = inner;
        inner.suffix = None;
        let n = inner.items.len();
        inner.items.retain(|(e, _)| !matches!(e, Expr::Scalar(_)));
        if inner.items.len() < n {
            // Its ORDER BY positions (and the LIMIT they made
            // deterministic) were for the longer list.
            inner.order_by.clear();
            inner.order_total = false;
            inner.limit = None;
            inner.offset = None;
            inner.fetch = Fetch::Limit;
        }
        if inner.items.is_empty() {
            return self.plain_select(1);
        }
        for (i, it) in inner.items.iter_mut().enumerate() {
            it.1 = Some(format!("c{}", i + 1));
        }
        // ORDER BY positions of the inner query stay valid.
        let ncols = inner.items.len();
        let outer_cols: Vec<RCol> = (1..=ncols)
            .map(|i| RCol {
                name: format!("c{i}"),
                ty: Ty::Text,
                pool: Pool::Text,
                key: false,
                not_null: false,
            })
            .collect();
        let mut q = Select {
            items: outer_cols
                .iter()
                .map(|c| (col(&alias, &c.name), None))
                .collect(),
            from: vec![FromItem {
                join: None,
                source: Source::Sub(Box::new(inner)),
                alias: alias.clone(),
            }],
            ..Default::default()
        };
        if self.p(0.4) {
            q.where_ = Some(Expr::IsNull(Box::new(col(&alias, "c1")), self.rng.gen()));
        }
        self.order_limit(&mut q);
        q
    }

    /// Functions in FROM joined to a table: `generate_series`, `unnest`.
    pub(super) fn function_from_select(&mut self) -> Select {
        self.tag("function-in-from");
        let t = self.any_table();
        let alias = self.next_alias("a");
        let rel = self.rel_of(t, alias.clone());
        let target = rel
            .cols
            .iter()
            .find(|c| c.key)
            .or_else(|| rel.cols.iter().find(|c| c.ty.is_int()))
            .unwrap_or(&rel.cols[0])
            .clone();
        let g = self.next_alias("g");
        let call = match target.ty {
            Ty::Int4 | Ty::Int8 | Ty::Numeric => {
                let lo = self.rng.gen_range(-15..120);
                let hi = lo + self.rng.gen_range(0..6);
                if self.p(0.5) {
                    format!("generate_series({lo}, {hi})")
                } else {
                    let vals: Vec<String> = (lo..=hi).map(|v| v.to_string()).collect();
                    format!("unnest(array[{}])", vals.join(", "))
                }
            }
            _ => {
                let n = self.rng.gen_range(1..=3);
                let vals: Vec<String> = (0..n)
                    .map(|_| {
                        let l = schema::pool_literal(&mut self.rng, target.pool, false);
                        format!(
                            "{l}::{}",
                            if target.ty == Ty::Uuid {
                                "uuid"
                            } else {
                                "text"
                            }
                        )
                    })
                    .collect();
                format!("unnest(array[{}])", vals.join(", "))
            }
        };
        let on = bin(col(&g, "x"), "=", col(&alias, &target.name));
        let mut q = Select {
            items: vec![
                (col(&g, "x"), None),
                (col(&alias, &rel.cols[rel.cols.len() - 1].name), None),
            ],
            from: vec![
                FromItem {
                    join: None,
                    source: Source::Func(call, vec!["x".into()]),
                    alias: g,
                },
                FromItem {
                    join: Some((
                        if self.p(0.3) {
                            JoinKind::Left
                        } else {
                            JoinKind::Inner
                        },
                        on,
                    )),
                    source: Source::Table(t.name.into()),
                    alias,
                },
            ],
            ..Default::default()
        };
        self.order_limit(&mut q);
        q
    }

    pub(super) fn set_op_select(&mut self) -> Select {
        self.tag("set-operation");
        let fam = self.pick(&[Fam::Num, Fam::Num, Fam::Text, Fam::Uuid]);
        let side = |g: &mut Self| -> Select {
            let t = g.table_with_fam(fam);
            let alias = g.next_alias("u");
            let rel = g.rel_of(t, alias.clone());
            let c = rel
                .cols
                .iter()
                .filter(|c| c.ty.fam() == fam)
                .collect::<Vec<_>>()
                .choose(&mut g.rng)
                .map(|c| (*c).clone())
                .expect("same family");
            // int, bigint and numeric columns unify in a set operation.
            let mut q = Select {
                items: vec![(col(&alias, &c.name), None)],
                from: vec![FromItem {
                    join: None,
                    source: Source::Table(t.name.into()),
                    alias,
                }],
                ..Default::default()
            };
            if g.p(0.8) {
                q.where_ = Some(g.pred(&[rel], 1));
            }
            q
        };
        let mut left = side(self);
        let right = side(self);
        let op = self.pick(&["union", "union all", "except", "intersect", "union all"]);
        left.set_op = Some((op, Box::new(right)));
        if self.p(0.5) {
            left.order_by = vec![self.order_item(1)];
            if self.p(0.5) {
                self.limit_clause(&mut left);
            }
        }
        left
    }
}

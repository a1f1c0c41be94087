//! SELECT statements: FROM lists with inner and left joins (self-joins,
//! co-located, with the reference and the unsharded table, others),
//! select lists, ORDER BY and LIMIT only where the rows they pick are
//! deterministic, aggregates with GROUP BY and HAVING, CTEs, subqueries in
//! FROM, functions in FROM, set operations and DISTINCT.

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
            0..=29 => self.plain_select(1),
            30..=54 => self.plain_select(3),
            55..=71 => self.aggregate_select(),
            72..=78 => self.cte_select(depth),
            79..=83 => self.subquery_in_from_select(),
            84..=87 => self.function_from_select(),
            88..=93 => self.set_op_select(),
            _ => {
                let mut q = self.plain_select(2);
                self.tag("distinct");
                q.distinct = true;
                q.suffix = None;
                q
            }
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

    /// ORDER BY (total or partial) and LIMIT/OFFSET, only when deterministic.
    pub(super) fn order_limit(&mut self, q: &mut Select) {
        let n = q.items.len();
        match self.rng.gen_range(0..100) {
            0..=39 => {}
            40..=84 => {
                let mut pos: Vec<usize> = (1..=n).collect();
                pos.shuffle(&mut self.rng);
                q.order_by = pos.into_iter().map(|i| self.order_item(i)).collect();
                if self.p(0.5) {
                    self.tag("order+limit");
                    q.limit = Some(self.rng.gen_range(0..=8));
                }
                if self.p(0.2) {
                    self.tag("offset");
                    q.offset = Some(self.rng.gen_range(0..=5));
                }
            }
            _ => {
                self.tag("order:partial");
                let i = self.rng.gen_range(1..=n);
                q.order_by = vec![self.order_item(i)];
            }
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
        let (from, scope) = self.scope_from(max_rels);
        let n = self.rng.gen_range(1..=4);
        let mut q = Select {
            items: self.items(&scope, n),
            from,
            ..Default::default()
        };
        if self.p(0.85) {
            q.where_ = Some(self.pred(&scope, 0));
        }
        if scope.len() == 1 && self.p(0.04) {
            self.window_item(&mut q, &scope[0]);
        }
        self.order_limit(&mut q);
        // FOR UPDATE is refused by PostgreSQL itself next to outer joins,
        // DISTINCT and window functions: only on plain one-table queries.
        if scope.len() == 1
            && q.items.iter().all(|(e, _)| !matches!(e, Expr::Window(..)))
            && self.p(0.03)
        {
            self.tag("for-update");
            q.suffix = Some("for update".into());
        }
        q
    }

    /// `row_number() OVER (ORDER BY <primary key>)`: deterministic on one
    /// table.
    pub(super) fn window_item(&mut self, q: &mut Select, rel: &Rel) {
        let Some(t) = self.tables.iter().find(|t| {
            t.cols.len() == rel.cols.len()
                && t.cols.iter().zip(&rel.cols).all(|(a, b)| a.name == b.name)
        }) else {
            return;
        };
        self.tag("window");
        let order: Vec<String> = t.pk.iter().map(|c| format!("{}.{c}", rel.alias)).collect();
        q.items.push((
            Expr::Window(
                "row_number()".into(),
                format!("order by {}", order.join(", ")),
            ),
            Some("rn".into()),
        ));
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
        for _ in 0..groups {
            let (a, c) = all.choose(&mut self.rng).expect("cols").clone();
            let e = col(&a, &c.name);
            if !group_by.contains(&e) {
                group_by.push(e.clone());
                items.push((e, None));
            }
        }
        let naggs = self.rng.gen_range(1..=3);
        for _ in 0..naggs {
            let (a, c) = all.choose(&mut self.rng).expect("cols").clone();
            let e = self.aggregate(&a, &c);
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
        if !q.group_by.is_empty() && self.p(0.25) {
            self.tag("having");
            let (a, c) = all.choose(&mut self.rng).expect("cols").clone();
            let h = match self.rng.gen_range(0..3) {
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
                // No max(uuid) before PostgreSQL 18.
                _ => Expr::IsNull(
                    Box::new(agg(
                        if c.ty == Ty::Uuid { "count" } else { "max" },
                        false,
                        vec![col(&a, &c.name)],
                    )),
                    true,
                ),
            };
            q.having = Some(h);
        }
        if q.group_by.is_empty() {
            // One row: ORDER BY/LIMIT change nothing but the proxy's path.
            if self.p(0.1) {
                q.order_by = vec![self.order_item(1)];
                q.limit = Some(1);
            }
        } else {
            self.order_limit(&mut q);
        }
        q
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
                    order: Some(Box::new(e)),
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
        self.order_limit(&mut q);
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
            inner.limit = None;
            inner.offset = None;
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
                left.limit = Some(self.rng.gen_range(0..6));
            }
        }
        left
    }
}

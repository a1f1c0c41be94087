//! WHERE conditions: shard-key conditions of every form the router reads
//! (=, IN, = ANY, BETWEEN, OR of keys), comparisons, NULL tests, AND/OR/NOT,
//! and subqueries (IN, EXISTS, scalar), correlated or not.

use rand::seq::SliceRandom;
use rand::Rng;

use super::super::schema::{Fam, Table, Ty};
use super::super::sql::*;
use super::*;

impl<'a> Gen<'a> {
    // ------------------------------------------------------------------
    // Predicates

    pub(super) fn cols_of(scope: &[Rel], f: impl Fn(&RCol) -> bool) -> Vec<(&Rel, &RCol)> {
        scope
            .iter()
            .flat_map(|r| r.cols.iter().map(move |c| (r, c)))
            .filter(|(_, c)| f(c))
            .collect()
    }

    pub(super) fn pred(&mut self, scope: &[Rel], depth: u32) -> Expr {
        let keys = Self::cols_of(scope, |c| c.key);
        let roll = self.rng.gen_range(0..100);
        if roll < 35 && !keys.is_empty() {
            let (r, c) = *keys.choose(&mut self.rng).expect("key");
            let (a, c) = (r.alias.clone(), c.clone());
            return self.key_pred(&a, &c);
        }
        if roll < 55 || depth >= 2 {
            return self.cmp_pred(scope);
        }
        match roll {
            55..=62 => {
                let (r, c) = *Self::cols_of(scope, |_| true)
                    .choose(&mut self.rng)
                    .expect("cols");
                Expr::IsNull(Box::new(col(&r.alias, &c.name)), self.rng.gen())
            }
            63..=74 => {
                let l = self.pred(scope, depth + 1);
                let r = self.pred(scope, depth + 1);
                if self.p(0.6) {
                    and(l, r)
                } else {
                    Expr::Or(Box::new(l), Box::new(r))
                }
            }
            75..=78 => Expr::Not(Box::new(self.pred(scope, depth + 1))),
            79..=84 => self.in_subquery(scope, depth),
            85..=91 => self.exists_subquery(scope, depth),
            92..=96 => self.scalar_cmp(scope, depth),
            _ => {
                let texts = Self::cols_of(scope, |c| c.ty == Ty::Text);
                match texts.choose(&mut self.rng) {
                    Some((r, c)) => {
                        let e = col(&r.alias, &c.name);
                        let pat = self.pick(&["'a%'", "'%e%'", "'_'", "'%'"]);
                        bin(e, "like", lit(pat))
                    }
                    None => self.cmp_pred(scope),
                }
            }
        }
    }

    pub(super) fn key_pred(&mut self, alias: &str, c: &RCol) -> Expr {
        let k = col(alias, &c.name);
        match self.rng.gen_range(0..100) {
            0..=59 => {
                self.tag("where:key=");
                let v = self.value(c, false);
                if self.p(0.1) {
                    self.tag("where:value=key");
                    bin(v, "=", k)
                } else {
                    bin(k, "=", v)
                }
            }
            60..=74 => {
                self.tag("where:key-in-list");
                let n = self.rng.gen_range(1..=4);
                let list = (0..n).map(|_| self.value(c, false)).collect();
                Expr::InList(Box::new(k), list, false)
            }
            75..=89 => {
                self.tag("where:key=any");
                let arr = self.key_array(c);
                Expr::Any(Box::new(k), Box::new(arr))
            }
            90..=94 if c.ty.is_int() => {
                self.tag("where:key-between");
                let lo = self.value(c, false);
                let hi = self.value(c, false);
                Expr::Between(Box::new(k), Box::new(lo), Box::new(hi))
            }
            _ => {
                self.tag("where:key-or-key");
                let a = self.value(c, false);
                let b = self.value(c, false);
                Expr::Or(Box::new(bin(k.clone(), "=", a)), Box::new(bin(k, "=", b)))
            }
        }
    }

    pub(super) fn cmp_pred(&mut self, scope: &[Rel]) -> Expr {
        let all = Self::cols_of(scope, |_| true);
        let (r, c) = *all.choose(&mut self.rng).expect("cols");
        let (a, c) = (r.alias.clone(), c.clone());
        let e = col(&a, &c.name);
        // Column against column of the same family, sometimes.
        if self.p(0.15) {
            let same: Vec<(String, String)> = Self::cols_of(scope, |o| o.ty.fam() == c.ty.fam())
                .into_iter()
                .map(|(r, o)| (r.alias.clone(), o.name.clone()))
                .collect();
            if let Some((ra, rc)) = same.choose(&mut self.rng) {
                let op = self.pick(&["=", "<>", "<", ">="]);
                return bin(e, op, col(ra, rc));
            }
        }
        let op = match c.ty.fam() {
            Fam::Uuid => self.pick(&["=", "<>", "<"]),
            _ => self.pick(&["=", "<>", "<", "<=", ">", ">="]),
        };
        let v = self.value(&c, false);
        if c.ty.is_int() && self.p(0.15) {
            return bin(bin(e, "+", lit("1")), op, v);
        }
        bin(e, op, v)
    }

    /// `x IN (SELECT col FROM t ...)`, sometimes correlated.
    pub(super) fn in_subquery(&mut self, scope: &[Rel], depth: u32) -> Expr {
        self.tag("subquery:in");
        let (r, c) = *Self::cols_of(scope, |_| true)
            .choose(&mut self.rng)
            .expect("cols");
        let (outer_alias, outer) = (r.alias.clone(), c.clone());
        let t = self.table_with_fam(outer.ty.fam());
        let alias = self.next_alias("s");
        let rel = self.rel_of(t, alias.clone());
        let cand: Vec<RCol> = rel
            .cols
            .iter()
            .filter(|x| x.ty.fam() == outer.ty.fam())
            .cloned()
            .collect();
        let inner = cand.choose(&mut self.rng).expect("same family").clone();
        let mut q = Select {
            items: vec![(col(&alias, &inner.name), None)],
            from: vec![FromItem {
                join: None,
                source: Source::Table(t.name.into()),
                alias: alias.clone(),
            }],
            ..Default::default()
        };
        if self.p(0.6) {
            q.where_ = Some(self.sub_where(scope, &rel, depth));
        }
        Expr::InSub(
            Box::new(col(&outer_alias, &outer.name)),
            Box::new(q),
            self.p(0.25),
        )
    }

    /// WHERE of a subquery: its own predicate, a correlation with the outer
    /// scope, or both.
    pub(super) fn sub_where(&mut self, outer: &[Rel], rel: &Rel, depth: u32) -> Expr {
        let own = self.pred(std::slice::from_ref(rel), depth + 1);
        if self.p(0.5) {
            if let Some(corr) = self.correlation(outer, rel) {
                self.tag("subquery:correlated");
                return if self.p(0.5) { and(corr, own) } else { corr };
            }
        }
        own
    }

    pub(super) fn correlation(&mut self, outer: &[Rel], rel: &Rel) -> Option<Expr> {
        let mut pairs = Vec::new();
        for ic in &rel.cols {
            for (orel, oc) in Self::cols_of(outer, |o| o.ty.fam() == ic.ty.fam()) {
                pairs.push((ic.name.clone(), orel.alias.clone(), oc.name.clone(), ic.key));
            }
        }
        // Prefer the inner table's key (a key joined to the outer row).
        let keyed: Vec<_> = pairs.iter().filter(|p| p.3).cloned().collect();
        let pool = if !keyed.is_empty() && self.p(0.6) {
            keyed
        } else {
            pairs
        };
        let (ic, oa, oc, _) = pool.choose(&mut self.rng)?.clone();
        Some(bin(col(&rel.alias, &ic), "=", col(&oa, &oc)))
    }

    pub(super) fn exists_subquery(&mut self, scope: &[Rel], depth: u32) -> Expr {
        self.tag("subquery:exists");
        let t = self.any_table();
        let alias = self.next_alias("e");
        let rel = self.rel_of(t, alias.clone());
        let w = self.sub_where(scope, &rel, depth);
        let q = Select {
            items: vec![(lit("1"), None)],
            from: vec![FromItem {
                join: None,
                source: Source::Table(t.name.into()),
                alias,
            }],
            where_: Some(w),
            ..Default::default()
        };
        Expr::Exists(Box::new(q), self.p(0.3))
    }

    /// `x op (SELECT count(*)/max(c)/min(c) FROM t ...)`.
    pub(super) fn scalar_cmp(&mut self, scope: &[Rel], depth: u32) -> Expr {
        self.tag("subquery:scalar");
        let (q, fam) = self.scalar_sub(scope, depth);
        let (r, c) = match Self::cols_of(scope, |c| c.ty.fam() == fam).choose(&mut self.rng) {
            Some((r, c)) => ((*r).clone(), (*c).clone()),
            None => return self.cmp_pred(scope),
        };
        let op = self.pick(&["=", "<", ">="]);
        bin(col(&r.alias, &c.name), op, Expr::Scalar(Box::new(q)))
    }

    pub(super) fn scalar_sub(&mut self, scope: &[Rel], depth: u32) -> (Select, Fam) {
        let t = self.any_table();
        let alias = self.next_alias("x");
        let rel = self.rel_of(t, alias.clone());
        let (item, fam) = if self.p(0.4) {
            (agg("count", false, vec![]), Fam::Num)
        } else {
            let c = rel
                .cols
                .iter()
                .filter(|c| c.ty != Ty::Uuid)
                .collect::<Vec<_>>()
                .choose(&mut self.rng)
                .map(|c| (*c).clone())
                .expect("a non-uuid column");
            let f = self.pick(&["max", "min"]);
            (agg(f, false, vec![col(&alias, &c.name)]), c.ty.fam())
        };
        let mut q = Select {
            items: vec![(item, None)],
            from: vec![FromItem {
                join: None,
                source: Source::Table(t.name.into()),
                alias,
            }],
            ..Default::default()
        };
        if self.p(0.7) {
            q.where_ = Some(self.sub_where(scope, &rel, depth));
        }
        (q, fam)
    }

    pub(super) fn table_with_fam(&mut self, fam: Fam) -> &'a Table {
        loop {
            let t = self.any_table();
            if t.cols.iter().any(|c| c.ty.fam() == fam) {
                return t;
            }
        }
    }
}

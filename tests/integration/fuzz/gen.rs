//! The statement generator: random but valid SQL over the fuzz schema,
//! from a seeded RNG, grouped into units (a statement, a multi-statement
//! query string, an explicit transaction, a TLP or NoREC group, DDL).
//!
//! "Valid" means PostgreSQL accepts it and its answer is deterministic on
//! one database: LIMIT only under an ORDER BY that fixes which rows are
//! chosen, scalar subqueries are aggregates, no volatile functions, no
//! float sums, key-assigning writes touch one row and move it to a fresh
//! key (a multi-row key shuffle can hit a unique violation or not
//! depending on physical row order, on one database as on several).
//! Everything else is fair game, including statements the proxy is known
//! to get wrong or refuse: the point is to find them.

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::schema::{self, Fam, Pool, Table, Ty};
use super::sql::*;

/// What a unit checks beyond comparing each step with the oracle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    None,
    /// Steps: Q, Q where P, Q where NOT P, Q where P IS NULL; through the
    /// proxy the first's rows must be the union of the others'.
    Tlp,
    /// Steps: count(*) where P, sum(case when P then 1 else 0 end); equal.
    NoRec,
}

#[derive(Clone, Debug)]
pub struct Unit {
    pub kind: &'static str,
    pub steps: Vec<Step>,
    pub tags: BTreeSet<String>,
    pub check: Check,
}

impl Unit {
    pub fn writes(&self) -> bool {
        self.steps.iter().any(Step::writes)
    }

    pub fn statements(&self) -> usize {
        self.steps.iter().map(|s| s.stmts.len()).sum()
    }
}

/// A relation in scope: a table, CTE, subquery or function, by alias.
#[derive(Clone, Debug)]
struct Rel {
    alias: String,
    cols: Vec<RCol>,
}

#[derive(Clone, Debug)]
struct RCol {
    name: String,
    ty: Ty,
    pool: Pool,
    /// The shard key of a configured sharded table.
    key: bool,
    not_null: bool,
}

pub struct Gen<'a> {
    rng: StdRng,
    tables: &'a [Table],
    /// Counter behind fresh keys (never in a pool, never reused).
    fresh: i64,
    alias: u32,
    /// Counter behind DDL object names.
    objects: u32,
    /// Whether value sites of the statement being built may be parameters.
    params: bool,
    tags: BTreeSet<String>,
}

fn col(a: &str, c: &str) -> Expr {
    Expr::Col(a.to_string(), c.to_string())
}

fn lit(s: impl Into<String>) -> Expr {
    Expr::Lit(s.into())
}

fn bin(l: Expr, op: &'static str, r: Expr) -> Expr {
    Expr::Bin(Box::new(l), op, Box::new(r))
}

fn and(l: Expr, r: Expr) -> Expr {
    Expr::And(Box::new(l), Box::new(r))
}

fn agg(name: &str, distinct: bool, args: Vec<Expr>) -> Expr {
    Expr::Agg {
        name: name.into(),
        distinct,
        args,
        order: None,
    }
}

impl<'a> Gen<'a> {
    pub fn new(seed: u64, tables: &'a [Table]) -> Gen<'a> {
        Gen {
            rng: StdRng::seed_from_u64(seed),
            tables,
            fresh: 0,
            alias: 0,
            objects: 0,
            params: false,
            tags: BTreeSet::new(),
        }
    }

    fn tag(&mut self, t: impl Into<String>) {
        self.tags.insert(t.into());
    }

    fn p(&mut self, p: f64) -> bool {
        self.rng.gen_bool(p)
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        *xs.choose(&mut self.rng).expect("non-empty choice")
    }

    fn next_alias(&mut self, prefix: &str) -> String {
        self.alias += 1;
        format!("{prefix}{}", self.alias)
    }

    fn table(&self, name: &str) -> &'a Table {
        self.tables
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("table {name}"))
    }

    /// A table, sharded ones more often.
    fn any_table(&mut self) -> &'a Table {
        let tables = self.tables;
        if self.p(0.75) {
            let sharded: Vec<&Table> = tables.iter().filter(|t| t.is_sharded()).collect();
            sharded.choose(&mut self.rng).expect("sharded")
        } else {
            tables.choose(&mut self.rng).expect("tables")
        }
    }

    fn rel_of(&mut self, t: &Table, alias: String) -> Rel {
        Rel {
            alias,
            cols: t
                .cols
                .iter()
                .map(|c| RCol {
                    name: c.name.to_string(),
                    ty: c.ty,
                    pool: c.pool,
                    key: t.key == Some(c.name),
                    not_null: c.not_null,
                })
                .collect(),
        }
    }

    // ------------------------------------------------------------------
    // Units

    pub fn unit(&mut self) -> Unit {
        self.tags.clear();
        self.alias = 0;
        let roll = self.rng.gen_range(0..100);
        let (kind, steps, check) = match roll {
            0..=34 => {
                let proto = self.proto();
                let s = self.select_stmt(0);
                (
                    "select",
                    vec![self.step(proto, vec![Stmt::Select(s)])],
                    Check::None,
                )
            }
            35..=58 => {
                let proto = self.proto();
                let w = self.write_stmt();
                ("write", vec![self.step(proto, vec![w])], Check::None)
            }
            59..=67 => ("multi", vec![self.multi_statement()], Check::None),
            68..=81 => ("transaction", self.transaction(), Check::None),
            82..=85 => {
                let proto = self.proto();
                let s = self.modifying_cte();
                ("cte-write", vec![self.step(proto, vec![s])], Check::None)
            }
            86..=89 => ("tlp", self.tlp(), Check::Tlp),
            90..=92 => ("norec", self.norec(), Check::NoRec),
            93..=97 => {
                let proto = self.proto();
                let s = self.odd_syntax();
                ("odd-syntax", vec![self.step(proto, vec![s])], Check::None)
            }
            _ => ("ddl", vec![self.ddl()], Check::None),
        };
        Unit {
            kind,
            steps,
            tags: std::mem::take(&mut self.tags),
            check,
        }
    }

    fn proto(&mut self) -> Proto {
        let p = match self.rng.gen_range(0..10) {
            0..=4 => Proto::Simple,
            5..=7 => Proto::Prepared,
            _ => Proto::Pipelined,
        };
        self.params = p != Proto::Simple;
        p
    }

    fn step(&mut self, proto: Proto, stmts: Vec<Stmt>) -> Step {
        self.tag(match proto {
            Proto::Simple => "proto:simple",
            Proto::Prepared => "proto:prepared",
            Proto::Pipelined => "proto:pipelined",
        });
        Step { stmts, proto }
    }

    fn multi_statement(&mut self) -> Step {
        self.params = false;
        self.tag("multi-statement");
        let n = self.rng.gen_range(2..=4);
        let mut stmts: Vec<Stmt> = (0..n)
            .map(|_| {
                if self.p(0.5) {
                    Stmt::Select(self.select_stmt(0))
                } else {
                    self.write_stmt()
                }
            })
            .collect();
        if self.p(0.15) {
            self.tag("multi-statement:begin-commit");
            stmts.insert(0, Stmt::Tx(TxCmd::Begin, "begin".into()));
            stmts.push(if self.p(0.7) {
                Stmt::Tx(TxCmd::Commit, "commit".into())
            } else {
                Stmt::Tx(TxCmd::Rollback, "rollback".into())
            });
        }
        self.step(Proto::Simple, stmts)
    }

    fn transaction(&mut self) -> Vec<Step> {
        self.tag("transaction");
        let begin = *[
            "begin",
            "BEGIN",
            "start transaction",
            "begin isolation level read committed",
        ]
        .choose(&mut self.rng)
        .expect("begin");
        let proto = if self.p(0.7) {
            Proto::Simple
        } else {
            Proto::Prepared
        };
        let mut steps = vec![self.step(proto, vec![Stmt::Tx(TxCmd::Begin, begin.into())])];
        let n = self.rng.gen_range(1..=5);
        let fail_at = if self.p(0.2) {
            Some(self.rng.gen_range(0..n))
        } else {
            None
        };
        let savepoint_at = if self.p(0.05) {
            Some(self.rng.gen_range(0..n))
        } else {
            None
        };
        for i in 0..n {
            if savepoint_at == Some(i) {
                self.tag("transaction:savepoint");
                steps.push(self.step(
                    Proto::Simple,
                    vec![Stmt::Tx(TxCmd::Savepoint, "savepoint sp1".into())],
                ));
            }
            let proto = self.proto();
            let stmt = if fail_at == Some(i) {
                self.tag("transaction:failing-statement");
                self.failing_stmt()
            } else if self.p(0.06) {
                self.odd_syntax()
            } else if self.p(0.5) {
                Stmt::Select(self.select_stmt(0))
            } else {
                self.write_stmt()
            };
            steps.push(self.step(proto, vec![stmt]));
            if savepoint_at == Some(i) && self.p(0.5) {
                steps.push(self.step(
                    Proto::Simple,
                    vec![Stmt::Tx(
                        TxCmd::RollbackTo,
                        "rollback to savepoint sp1".into(),
                    )],
                ));
            }
        }
        let end = if self.p(0.7) {
            Stmt::Tx(TxCmd::Commit, "commit".into())
        } else {
            self.tag("transaction:rollback");
            Stmt::Tx(TxCmd::Rollback, "rollback".into())
        };
        let proto = if self.p(0.7) {
            Proto::Simple
        } else {
            Proto::Prepared
        };
        steps.push(self.step(proto, vec![end]));
        steps
    }

    /// A statement that fails on one database too: a duplicate key within
    /// one INSERT, or a NOT NULL violation.
    fn failing_stmt(&mut self) -> Stmt {
        let t = self.any_table();
        let cols: Vec<String> = t.pk.iter().map(|c| c.to_string()).collect();
        let row: Vec<Expr> =
            t.pk.iter()
                .map(|c| {
                    let cd = t.col(c);
                    lit(schema::pool_literal(&mut self.rng, cd.pool, false))
                })
                .collect();
        let rows = if self.p(0.7) {
            vec![row.clone(), row]
        } else {
            let mut r = row;
            r[0] = lit("null");
            vec![r]
        };
        Stmt::Insert(Insert {
            table: t.name.into(),
            cols: Some(cols),
            source: InsertSource::Values(rows),
            on_conflict: None,
            returning: vec![],
        })
    }

    // ------------------------------------------------------------------
    // Values

    /// A value of `c`'s kind: a literal from its pool, a fresh key, or (in
    /// the extended protocol) a parameter of one of several types.
    fn value(&mut self, c: &RCol, nullable: bool) -> Expr {
        if self.params && self.p(0.6) {
            return self.param_for(c, nullable);
        }
        lit(schema::pool_literal(&mut self.rng, c.pool, nullable))
    }

    fn param_for(&mut self, c: &RCol, nullable: bool) -> Expr {
        let text = schema::pool_literal(&mut self.rng, c.pool, false);
        let raw = text.trim_matches('\'').replace("''", "'");
        let null = nullable && self.p(0.05);
        let (ty, value) = match c.ty {
            Ty::Int4 | Ty::Int8 => {
                let n: i64 = raw.parse().expect("int pool");
                let ty = self.pick(&[
                    PType::Int4,
                    PType::Int8,
                    PType::Int8,
                    PType::Int2,
                    PType::Float8,
                    PType::Numeric,
                ]);
                let v = match ty {
                    PType::Float8 | PType::Numeric if self.p(0.1) => {
                        self.tag("param:fractional");
                        format!("{n}.5")
                    }
                    PType::Numeric if self.p(0.3) => format!("{n}.0"),
                    _ => n.to_string(),
                };
                (ty, v)
            }
            Ty::Numeric => (PType::Numeric, raw),
            Ty::Text => (PType::Text, raw),
            Ty::Uuid => (PType::Uuid, raw),
        };
        let declared = !self.p(0.15);
        let binary = declared && self.p(0.5);
        self.tag(format!(
            "param:{}:{}",
            if declared { ty.sql() } else { "unknown" },
            if binary { "binary" } else { "text" }
        ));
        if null {
            self.tag("param:null");
        }
        Expr::Param(Param {
            ty,
            value: if null {
                None
            } else {
                Some(PValue::Scalar(value))
            },
            binary,
            declared,
        })
    }

    /// A fresh shard key for column `c` (never in the pools, never reused).
    fn fresh_key(&mut self, c: &RCol) -> Expr {
        self.fresh += 1;
        let f = self.fresh;
        match c.pool {
            Pool::IntKey => {
                if self.p(0.5) {
                    lit((1000 + f).to_string())
                } else {
                    lit((-1000 - f).to_string())
                }
            }
            Pool::Word => {
                let letter = (b'a' + self.rng.gen_range(0..26u8)) as char;
                lit(format!("'{letter}fresh{f}'"))
            }
            Pool::Uuid => {
                let hi: u64 = self.rng.gen();
                lit(format!(
                    "'{:08x}-{:04x}-4000-9000-{:012x}'",
                    hi >> 32,
                    (hi >> 16) & 0xffff,
                    f
                ))
            }
            Pool::Region => lit(schema::pool_literal(&mut self.rng, Pool::Region, false)),
            _ => lit(schema::pool_literal(&mut self.rng, c.pool, false)),
        }
    }

    /// `ARRAY[...]` or an array parameter of keys for `c`, maybe empty.
    fn key_array(&mut self, c: &RCol) -> Expr {
        let n = if self.p(0.2) {
            self.tag("any:empty-array");
            0
        } else {
            self.rng.gen_range(1..=4)
        };
        let items: Vec<String> = (0..n)
            .map(|_| {
                schema::pool_literal(&mut self.rng, c.pool, false)
                    .trim_matches('\'')
                    .to_string()
            })
            .collect();
        let (elem, arr_ty) = match c.ty {
            Ty::Int4 | Ty::Int8 => (
                "int8",
                self.pick(&[PType::Int4Arr, PType::Int8Arr, PType::Float8Arr]),
            ),
            Ty::Text => ("text", PType::TextArr),
            Ty::Uuid => ("uuid", PType::UuidArr),

            Ty::Numeric => ("numeric", PType::TextArr),
        };
        if self.params && c.ty != Ty::Numeric && self.p(0.7) {
            let declared = !self.p(0.15);
            let binary = declared && self.p(0.5);
            self.tag(format!(
                "any:param:{}:{}",
                if declared { arr_ty.sql() } else { "unknown" },
                if binary { "binary" } else { "text" }
            ));
            return Expr::Param(Param {
                ty: arr_ty,
                value: Some(PValue::Array(items)),
                binary,
                declared,
            });
        }
        self.tag("any:literal-array");
        if items.is_empty() {
            lit(format!("array[]::{elem}[]"))
        } else {
            let quoted: Vec<String> = items
                .iter()
                .map(|i| match c.ty {
                    Ty::Int4 | Ty::Int8 | Ty::Numeric => i.clone(),
                    _ => format!("'{i}'"),
                })
                .collect();
            let cast = if c.ty == Ty::Uuid { "::uuid[]" } else { "" };
            lit(format!("array[{}]{cast}", quoted.join(", ")))
        }
    }

    // ------------------------------------------------------------------
    // Predicates

    fn cols_of(scope: &[Rel], f: impl Fn(&RCol) -> bool) -> Vec<(&Rel, &RCol)> {
        scope
            .iter()
            .flat_map(|r| r.cols.iter().map(move |c| (r, c)))
            .filter(|(_, c)| f(c))
            .collect()
    }

    fn pred(&mut self, scope: &[Rel], depth: u32) -> Expr {
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

    fn key_pred(&mut self, alias: &str, c: &RCol) -> Expr {
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

    fn cmp_pred(&mut self, scope: &[Rel]) -> Expr {
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
    fn in_subquery(&mut self, scope: &[Rel], depth: u32) -> Expr {
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
    fn sub_where(&mut self, outer: &[Rel], rel: &Rel, depth: u32) -> Expr {
        let own = self.pred(std::slice::from_ref(rel), depth + 1);
        if self.p(0.5) {
            if let Some(corr) = self.correlation(outer, rel) {
                self.tag("subquery:correlated");
                return if self.p(0.5) { and(corr, own) } else { corr };
            }
        }
        own
    }

    fn correlation(&mut self, outer: &[Rel], rel: &Rel) -> Option<Expr> {
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

    fn exists_subquery(&mut self, scope: &[Rel], depth: u32) -> Expr {
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
    fn scalar_cmp(&mut self, scope: &[Rel], depth: u32) -> Expr {
        self.tag("subquery:scalar");
        let (q, fam) = self.scalar_sub(scope, depth);
        let (r, c) = match Self::cols_of(scope, |c| c.ty.fam() == fam).choose(&mut self.rng) {
            Some((r, c)) => ((*r).clone(), (*c).clone()),
            None => return self.cmp_pred(scope),
        };
        let op = self.pick(&["=", "<", ">="]);
        bin(col(&r.alias, &c.name), op, Expr::Scalar(Box::new(q)))
    }

    fn scalar_sub(&mut self, scope: &[Rel], depth: u32) -> (Select, Fam) {
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

    fn table_with_fam(&mut self, fam: Fam) -> &'a Table {
        loop {
            let t = self.any_table();
            if t.cols.iter().any(|c| c.ty.fam() == fam) {
                return t;
            }
        }
    }

    // ------------------------------------------------------------------
    // FROM

    /// A FROM list of 1..=max relations with join conditions.
    fn scope_from(&mut self, max: usize) -> (Vec<FromItem>, Vec<Rel>) {
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
    fn join_partner(&mut self, present: &[&'a Table]) -> (&'a Table, bool) {
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

    fn join_on(&mut self, scope: &[Rel], rel: &Rel, on_keys: bool) -> Expr {
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
        let (oa, oc, ic, _) = pool.choose(&mut self.rng).expect("a join pair").clone();
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
    fn items(&mut self, scope: &[Rel], n: usize) -> Vec<(Expr, Option<String>)> {
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
    fn order_limit(&mut self, q: &mut Select) {
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

    fn order_item(&mut self, i: usize) -> OrderItem {
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

    fn plain_select(&mut self, max_rels: usize) -> Select {
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
    fn window_item(&mut self, q: &mut Select, rel: &Rel) {
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

    fn aggregate_select(&mut self) -> Select {
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

    fn aggregate(&mut self, a: &str, c: &RCol) -> Expr {
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
    fn cte_select(&mut self, depth: u32) -> Select {
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
    fn subquery_in_from_select(&mut self) -> Select {
        self.tag("subquery:from");
        let inner = self.plain_select(2);
        let alias = self.next_alias("s");
        // Name the inner items c1..cn so the outer query can refer to them.
        let mut inner = inner;
        inner.suffix = None;
        inner.items.retain(|(e, _)| !matches!(e, Expr::Scalar(_)));
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
    fn function_from_select(&mut self) -> Select {
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

    fn set_op_select(&mut self) -> Select {
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

    // ------------------------------------------------------------------
    // Writes

    pub fn write_stmt(&mut self) -> Stmt {
        match self.rng.gen_range(0..100) {
            0..=39 => Stmt::Insert(self.insert()),
            40..=64 => Stmt::Update(self.update()),
            65..=79 => Stmt::Delete(self.delete()),
            _ => Stmt::Insert(self.upsert()),
        }
    }

    /// Values for `cols` of table `t`: keys from the pool or fresh.
    fn row(&mut self, t: &Table, cols: &[&str]) -> Vec<Expr> {
        cols.iter()
            .map(|name| {
                let c = t.col(name);
                let rc = RCol {
                    name: c.name.into(),
                    ty: c.ty,
                    pool: c.pool,
                    key: t.key == Some(c.name),
                    not_null: c.not_null,
                };
                if t.pk.contains(name) && t.pk.len() == 1 && self.p(0.3) {
                    self.fresh_key(&rc)
                } else if c.default && self.p(0.08) {
                    self.tag("insert:default-keyword");
                    lit("default")
                } else {
                    self.value(&rc, !c.not_null)
                }
            })
            .collect()
    }

    fn insert(&mut self) -> Insert {
        let t = self.any_table();
        let all: Vec<&str> = t.cols.iter().map(|c| c.name).collect();
        let (cols, list) = match self.rng.gen_range(0..100) {
            0..=49 => {
                let mut c = all.clone();
                c.shuffle(&mut self.rng);
                (c.clone(), Some(c))
            }
            50..=74 => {
                // The required columns plus some others.
                let mut c: Vec<&str> = t
                    .cols
                    .iter()
                    .filter(|c| c.not_null || self.rng.gen_bool(0.5))
                    .map(|c| c.name)
                    .collect();
                c.shuffle(&mut self.rng);
                self.tag("insert:column-subset");
                (c.clone(), Some(c))
            }
            _ => {
                self.tag("insert:no-column-list");
                (all.clone(), None)
            }
        };
        let source = if self.p(0.12) {
            self.insert_select(t, &cols)
        } else {
            let n = if self.p(0.4) {
                self.tag("insert:multi-row");
                self.rng.gen_range(2..=5)
            } else {
                1
            };
            InsertSource::Values((0..n).map(|_| self.row(t, &cols)).collect())
        };
        let returning = self.returning(t);
        Insert {
            table: t.name.into(),
            cols: list.map(|l| l.iter().map(|s| s.to_string()).collect()),
            source,
            on_conflict: None,
            returning,
        }
    }

    /// `INSERT INTO t (cols) SELECT ... FROM other`, keys offset by a fresh
    /// amount so they rarely collide.
    fn insert_select(&mut self, t: &Table, cols: &[&str]) -> InsertSource {
        self.tag("insert:select");
        let src = self.any_table();
        let alias = self.next_alias("src");
        let rel = self.rel_of(src, alias.clone());
        self.fresh += 1;
        let offset = 100_000 + self.fresh * 1000;
        let items: Vec<(Expr, Option<String>)> = cols
            .iter()
            .map(|name| {
                let c = t.col(name);
                let same: Vec<&RCol> = rel.cols.iter().filter(|x| x.ty == c.ty).collect();
                let e = match (same.choose(&mut self.rng), c.ty) {
                    (Some(x), Ty::Int4 | Ty::Int8) if t.pk.contains(name) => Expr::Func(
                        "coalesce".into(),
                        vec![
                            bin(col(&alias, &x.name), "+", lit(offset.to_string())),
                            lit("0"),
                        ],
                    ),
                    (Some(x), Ty::Text) if t.pk.contains(name) => {
                        bin(col(&alias, &x.name), "||", lit(format!("'#{offset}'")))
                    }
                    (Some(x), _) if !t.pk.contains(name) => col(&alias, &x.name),
                    _ => lit(schema::pool_literal(&mut self.rng, c.pool, false)),
                };
                let e = if c.not_null && !matches!(e, Expr::Lit(_)) {
                    Expr::Func(
                        "coalesce".into(),
                        vec![e, lit(schema::pool_literal(&mut self.rng, c.pool, false))],
                    )
                } else {
                    e
                };
                (e, None)
            })
            .collect();
        let mut q = Select {
            items,
            from: vec![FromItem {
                join: None,
                source: Source::Table(src.name.into()),
                alias,
            }],
            ..Default::default()
        };
        q.where_ = Some(self.pred(&[rel], 1));
        InsertSource::Select(Box::new(q))
    }

    fn returning(&mut self, t: &Table) -> Vec<Expr> {
        if self.p(0.3) {
            self.tag("returning");
            let mut cols: Vec<Expr> = t.cols.iter().map(|c| col("", c.name)).collect();
            cols.shuffle(&mut self.rng);
            cols.truncate(self.rng.gen_range(1..=t.cols.len()));
            cols
        } else {
            vec![]
        }
    }

    fn upsert(&mut self) -> Insert {
        let mut ins = self.insert();
        if matches!(ins.source, InsertSource::Select(_)) {
            ins.source = {
                let t = self.table(&ins.table);
                let cols: Vec<&str> = match &ins.cols {
                    Some(c) => c.iter().map(|s| t.col(s).name).collect(),
                    None => t.cols.iter().map(|c| c.name).collect(),
                };
                InsertSource::Values(vec![self.row(t, &cols)])
            };
        }
        let t = self.table(&ins.table);
        let target: Vec<String> = t.pk.iter().map(|s| s.to_string()).collect();
        let rows = match &ins.source {
            InsertSource::Values(r) => r.len(),
            InsertSource::Select(_) => 2,
        };
        let non_key: Vec<&str> = t
            .cols
            .iter()
            .filter(|c| !t.pk.contains(&c.name))
            .map(|c| c.name)
            .collect();
        ins.on_conflict = Some(match self.rng.gen_range(0..100) {
            0..=34 => {
                self.tag("upsert:do-nothing");
                OnConflict::Nothing(target)
            }
            // Assigning the shard key: one row, to a fresh key.
            35..=54 if rows == 1 && t.key.is_some() => {
                self.tag("upsert:assigns-shard-key");
                let key = t.key_col().expect("key");
                let rc = RCol {
                    name: key.name.into(),
                    ty: key.ty,
                    pool: key.pool,
                    key: true,
                    not_null: true,
                };
                let v = self.fresh_key(&rc);
                OnConflict::Update {
                    target,
                    sets: vec![(key.name.into(), v)],
                    where_: None,
                }
            }
            _ if !non_key.is_empty() => {
                self.tag("upsert:do-update");
                let n = self.rng.gen_range(1..=non_key.len());
                let mut cols = non_key.clone();
                cols.shuffle(&mut self.rng);
                let sets = cols[..n]
                    .iter()
                    .map(|c| {
                        let e = if self.p(0.6) {
                            col("excluded", c)
                        } else if t.col(c).ty.is_int() {
                            Expr::Func(
                                "coalesce".into(),
                                vec![bin(col(t.name, c), "+", lit("1")), lit("0")],
                            )
                        } else {
                            lit(schema::pool_literal(&mut self.rng, t.col(c).pool, true))
                        };
                        (c.to_string(), e)
                    })
                    .collect();
                let where_ = if self.p(0.2) {
                    self.tag("upsert:where");
                    let c = t.col(non_key[0]);
                    Some(Expr::IsNull(Box::new(col(t.name, c.name)), true))
                } else {
                    None
                };
                OnConflict::Update {
                    target,
                    sets,
                    where_,
                }
            }
            _ => OnConflict::Nothing(target),
        });
        ins
    }

    fn update(&mut self) -> Update {
        let t = self.any_table();
        let alias = self.next_alias("w");
        let rel = self.rel_of(t, alias.clone());
        // Assign the shard key of one row to a fresh key.
        if t.key.is_some() && self.p(0.12) {
            self.tag("update:assigns-shard-key");
            let key = rel.cols.iter().find(|c| c.key).expect("key").clone();
            let fresh = self.fresh_key(&key);
            let mut w: Option<Expr> = None;
            for pk in t.pk {
                let c = rel.cols.iter().find(|c| c.name == *pk).expect("pk").clone();
                let v = self.value(&c, false);
                let e = bin(col(&alias, pk), "=", v);
                w = Some(match w {
                    None => e,
                    Some(prev) => and(prev, e),
                });
            }
            return Update {
                table: t.name.into(),
                alias,
                sets: vec![(key.name.clone(), fresh)],
                from: None,
                where_: w,
                returning: self.returning(t),
            };
        }
        let settable: Vec<RCol> = rel
            .cols
            .iter()
            .filter(|c| !t.pk.contains(&c.name.as_str()))
            .cloned()
            .collect();
        let n = self.rng.gen_range(1..=settable.len().clamp(1, 3));
        let mut cols = settable.clone();
        cols.shuffle(&mut self.rng);
        let mut sets = Vec::new();
        for c in cols.into_iter().take(n) {
            let e = match self.rng.gen_range(0..100) {
                0..=29 if c.ty.is_int() => Expr::Func(
                    "coalesce".into(),
                    vec![bin(col("", &c.name), "+", lit("1")), lit("0")],
                ),
                30..=37 if c.ty.is_int() && t.name == "fz_acct" => {
                    self.tag("update:correlated-subquery");
                    let ia = self.next_alias("it");
                    Expr::Scalar(Box::new(Select {
                        items: vec![(agg("count", false, vec![]), None)],
                        from: vec![FromItem {
                            join: None,
                            source: Source::Table("fz_item".into()),
                            alias: ia.clone(),
                        }],
                        where_: Some(bin(col(&ia, "acct_id"), "=", col(&alias, "id"))),
                        ..Default::default()
                    }))
                }
                _ => self.value(&c, !c.not_null),
            };
            sets.push((c.name.clone(), e));
        }
        let mut scope = vec![rel];
        let from = if t.cols.iter().any(|c| c.name == "code") && self.p(0.12) {
            self.tag("update:from");
            let ra = self.next_alias("r");
            scope.push(self.rel_of(self.table("fz_ref"), ra.clone()));
            Some(("fz_ref".to_string(), ra))
        } else {
            None
        };
        let mut where_ = if self.p(0.92) {
            Some(self.pred(&scope[..1], 0))
        } else {
            self.tag("update:no-where");
            None
        };
        if let Some((_, ra)) = &from {
            let j = bin(col(ra, "code"), "=", col(&alias, "code"));
            where_ = Some(match where_ {
                Some(w) => and(j, w),
                None => j,
            });
        }
        Update {
            table: t.name.into(),
            alias,
            sets,
            from,
            where_,
            returning: self.returning(t),
        }
    }

    fn delete(&mut self) -> Delete {
        let t = self.any_table();
        let alias = self.next_alias("d");
        let rel = self.rel_of(t, alias.clone());
        let using = if t.cols.iter().any(|c| c.name == "code") && self.p(0.12) {
            self.tag("delete:using");
            Some(("fz_ref".to_string(), self.next_alias("r")))
        } else {
            None
        };
        let mut where_ = if self.p(0.97) {
            Some(self.pred(std::slice::from_ref(&rel), 0))
        } else {
            self.tag("delete:no-where");
            None
        };
        if let Some((_, ra)) = &using {
            let j = bin(col(ra, "code"), "=", col(&alias, "code"));
            where_ = Some(match where_ {
                Some(w) => and(j, w),
                None => j,
            });
        }
        Delete {
            table: t.name.into(),
            alias,
            using,
            where_,
            returning: self.returning(t),
        }
    }

    /// `WITH w AS (INSERT/UPDATE/DELETE ... RETURNING ...) SELECT ... FROM w`.
    fn modifying_cte(&mut self) -> Stmt {
        self.tag("cte:data-modifying");
        let mut w = self.write_stmt();
        let table = match &w {
            Stmt::Insert(i) => i.table.clone(),
            Stmt::Update(u) => u.table.clone(),
            Stmt::Delete(d) => d.table.clone(),
            _ => unreachable!("write_stmt writes"),
        };
        let t = self.table(&table);
        let key = t.key.unwrap_or(t.pk[0]);
        let ret = vec![col("", key)];
        match &mut w {
            Stmt::Insert(i) => i.returning = ret,
            Stmt::Update(u) => u.returning = ret,
            Stmt::Delete(d) => d.returning = ret,
            _ => {}
        }
        let name = self.next_alias("wcte");
        let alias = self.next_alias("m");
        let mut q = Select {
            ctes: vec![Cte {
                name: name.clone(),
                body: Box::new(w),
            }],
            from: vec![FromItem {
                join: None,
                source: Source::Table(name),
                alias: alias.clone(),
            }],
            ..Default::default()
        };
        match self.rng.gen_range(0..3) {
            0 => q.items = vec![(agg("count", false, vec![]), None)],
            1 => q.items = vec![(col(&alias, key), None)],
            _ => {
                // Join the returned keys back to another table.
                let other = self.any_table();
                let oa = self.next_alias("o");
                let orel = self.rel_of(other, oa.clone());
                let kc = t.col(key);
                let same: Vec<&RCol> = orel
                    .cols
                    .iter()
                    .filter(|c| c.ty.fam() == kc.ty.fam())
                    .collect();
                match same.choose(&mut self.rng) {
                    Some(oc) => {
                        self.tag("cte:data-modifying-joined");
                        q.from.push(FromItem {
                            join: Some((
                                JoinKind::Left,
                                bin(col(&alias, key), "=", col(&oa, &oc.name)),
                            )),
                            source: Source::Table(other.name.into()),
                            alias: oa.clone(),
                        });
                        q.items = vec![
                            (col(&alias, key), None),
                            (agg("count", false, vec![col(&oa, &oc.name)]), None),
                        ];
                        q.group_by = vec![col(&alias, key)];
                    }
                    None => q.items = vec![(agg("count", false, vec![]), None)],
                }
            }
        }
        Stmt::Select(q)
    }

    // ------------------------------------------------------------------
    // Metamorphic groups

    /// A plain query and its three partitions by a predicate (SQLancer's
    /// ternary logic partitioning).
    fn tlp(&mut self) -> Vec<Step> {
        self.tag("tlp");
        let proto = self.proto();
        let (from, scope) = self.scope_from(2);
        let n = self.rng.gen_range(1..=3);
        let mut items = self.items(&scope, n);
        items.retain(|(e, _)| !matches!(e, Expr::Scalar(_)));
        let base = Select {
            items,
            from,
            ..Default::default()
        };
        let p = self.pred(&scope, 0);
        let parts = [
            p.clone(),
            Expr::Not(Box::new(p.clone())),
            Expr::IsNull(Box::new(p), false),
        ];
        let mut steps = vec![Step {
            stmts: vec![Stmt::Select(base.clone())],
            proto,
        }];
        for part in parts {
            let mut q = base.clone();
            q.where_ = Some(part);
            steps.push(Step {
                stmts: vec![Stmt::Select(q)],
                proto,
            });
        }
        steps
    }

    /// `count(*) WHERE P` against `sum(CASE WHEN P THEN 1 ELSE 0 END)`
    /// (SQLancer's non-optimizing reference engine construction).
    fn norec(&mut self) -> Vec<Step> {
        self.tag("norec");
        let proto = self.proto();
        let (from, scope) = self.scope_from(2);
        let p = self.pred(&scope, 0);
        let counted = Select {
            items: vec![(agg("count", false, vec![]), None)],
            from: from.clone(),
            where_: Some(p.clone()),
            ..Default::default()
        };
        let summed = Select {
            items: vec![(
                agg(
                    "sum",
                    false,
                    vec![Expr::Case(
                        Box::new(p),
                        Box::new(lit("1")),
                        Box::new(lit("0")),
                    )],
                ),
                None,
            )],
            from,
            ..Default::default()
        };
        vec![
            Step {
                stmts: vec![Stmt::Select(counted)],
                proto,
            },
            Step {
                stmts: vec![Stmt::Select(summed)],
                proto,
            },
        ]
    }

    // ------------------------------------------------------------------
    // Odd syntax and DDL

    /// Valid PostgreSQL the router's parser may not read, or reads in a
    /// way that is easy to get wrong: key conditions written unusually.
    fn odd_syntax(&mut self) -> Stmt {
        let sharded: Vec<&Table> = self.tables.iter().filter(|t| t.is_sharded()).collect();
        let t = *sharded.choose(&mut self.rng).expect("sharded");
        let key = t.key_col().expect("key");
        let kv = schema::pool_literal(&mut self.rng, key.pool, false);
        let k2 = schema::pool_literal(&mut self.rng, key.pool, false);
        let other = t.cols.iter().find(|c| c.name != key.name).expect("2 cols");
        let (n, k, o, tn) = (t.name, key.name, other.name, t.name);
        let pk =
            t.pk.iter()
                .map(|c| format!("a.{c}"))
                .collect::<Vec<_>>()
                .join(", ");
        let templates: Vec<(&str, String)> = vec![
            ("operator-syntax", format!("select a.{k}, a.{o} from {tn} a where a.{k} operator(pg_catalog.=) {kv}")),
            ("row-constructor", format!("select a.{k} from {tn} a where (a.{k}, 1) = ({kv}, 1)")),
            ("reversed-equality", format!("select a.{k}, a.{o} from {tn} a where {kv} = a.{k}")),
            ("schema-qualified", format!("select a.{k}, a.{o} from public.{tn} a where a.{k} = {kv}")),
            ("quoted-identifiers", format!("select a.\"{k}\" from \"{tn}\" a where a.\"{k}\" = {kv}")),
            ("upper-case", format!("SELECT A.{} FROM {} A WHERE A.{} = {kv}", k.to_uppercase(), n.to_uppercase(), k.to_uppercase())),
            ("contradiction", format!("select a.{k} from {tn} a where a.{k} = {kv} and a.{k} = {k2}")),
            ("or-with-non-key", format!("select a.{k}, a.{o} from {tn} a where a.{k} = {kv} or a.{o} is null")),
            ("not-not-equal", format!("select a.{k} from {tn} a where not (a.{k} <> {kv})")),
            ("in-values", format!("select a.{k} from {tn} a where a.{k} in (values ({kv}), ({k2}))")),
            ("only", format!("select a.{k} from only {tn} a where a.{k} = {kv}")),
            ("is-not-distinct", format!("select a.{k} from {tn} a where a.{k} is not distinct from {kv}")),
            ("comment-first", format!("/* note */ select a.{k}, a.{o} from {tn} a where a.{k} = {kv}")),
            ("line-comment", format!("-- note\nselect a.{k}, a.{o} from {tn} a where a.{k} = {kv}")),
            ("table-command", format!("table {tn}")),
            ("no-alias", format!("select {k}, {o} from {tn} where {k} = {kv}")),
            ("fetch-first", format!("select {pk} from {tn} a order by {pk} fetch first 3 rows only")),
            ("for-no-key-update", format!("select a.{k} from {tn} a where a.{k} = {kv} for no key update")),
            ("values-only", "values (1, 'a'), (2, 'b')".to_string()),
            ("cast-key", format!("select a.{k} from {tn} a where a.{k}::text = {kv}::text")),
            ("string-literal-key", format!("select a.{k} from {tn} a where a.{k} = '{}'", kv.trim_matches('\''))),
            ("arith-key", match key.ty {
                Ty::Int4 | Ty::Int8 => format!("select a.{k} from {tn} a where a.{k} = 2 + 3"),
                Ty::Uuid => format!("select a.{k} from {tn} a where a.{k} = ({kv}::uuid)"),
                _ => format!("select a.{k} from {tn} a where a.{k} = {kv} || ''"),
            }),
            ("case-in-where", format!("select a.{k} from {tn} a where case when a.{k} = {kv} then true else false end")),
            ("lateral", format!("select a.{k}, l.c from {tn} a, lateral (select count(*) as c from fz_ref r where r.code < 3) l where a.{k} = {kv}")),
            ("any-untyped", format!("select a.{k} from {tn} a where a.{k} = any('{{{}}}')", kv.trim_matches('\''))),
        ];
        let (name, sql) = templates.choose(&mut self.rng).expect("templates").clone();
        self.tag(format!("odd:{name}"));
        Stmt::Raw {
            sql,
            writes: name == "for-no-key-update",
        }
    }

    fn ddl(&mut self) -> Step {
        self.params = false;
        self.objects += 1;
        let n = self.objects;
        let m = self.rng.gen_range(1..=n);
        let tables = self.tables;
        let t = tables.choose(&mut self.rng).expect("tables");
        let c = t.cols.choose(&mut self.rng).expect("cols");
        let (name, sql) = match self.rng.gen_range(0..9) {
            0 => ("create-schema", format!("create schema fzs_{n}")),
            1 => ("drop-schema", format!("drop schema if exists fzs_{m}")),
            2 => (
                "create-index",
                format!("create index fzi_{n} on {} ({})", t.name, c.name),
            ),
            3 => ("drop-index", format!("drop index if exists fzi_{m}")),
            4 => ("grant", format!("grant select on {} to public", t.name)),
            5 => ("revoke", format!("revoke select on {} from public", t.name)),
            6 => (
                "create-table",
                format!("create table fzx_{n} (id int primary key, v int)"),
            ),
            7 => ("drop-table", format!("drop table if exists fzx_{m}")),
            _ => ("truncate", format!("truncate {}", t.name)),
        };
        self.tag(format!("ddl:{name}"));
        self.step(Proto::Simple, vec![Stmt::Raw { sql, writes: true }])
    }
}

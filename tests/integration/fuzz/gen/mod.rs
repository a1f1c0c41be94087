//! The statement generator: random but valid SQL over the fuzz schema,
//! from a seeded RNG, grouped into units (a statement, a multi-statement
//! query string, an explicit transaction, a TLP or NoREC group, DDL).
//!
//! "Valid" means PostgreSQL accepts it and its answer is deterministic on
//! one database: LIMIT only under an ORDER BY that fixes which rows are
//! chosen (FETCH ... WITH TIES also under a partial one: the rows that tie
//! come too), DISTINCT ON, row_number() and lag() and ordered aggregates
//! only over a total order (ending with every relation's primary key),
//! scalar subqueries are aggregates, no volatile functions, no
//! float sums, key-assigning writes touch one row and move it to a fresh
//! key (a multi-row key shuffle can hit a unique violation or not
//! depending on physical row order, on one database as on several).
//! Everything else is fair game, including statements the proxy is known
//! to get wrong or refuse: the point is to find them.

mod predicate;
mod select;
mod special;
mod write;

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::schema::{self, Pool, Table, Ty};
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
    /// The primary key's columns of a table (empty for a CTE): with every
    /// relation's, an ORDER BY is total.
    pk: Vec<String>,
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
        order: Vec::new(),
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
            pk: t.pk.iter().map(|c| c.to_string()).collect(),
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
                if self.p(0.08) {
                    // Text the router's parser cannot read makes the whole
                    // string unreadable to it.
                    self.odd_syntax()
                } else if self.p(0.5) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many units from many seeds, rendered both ways, without a database:
    /// a generator that panics on some rare path would otherwise end a
    /// long fuzzing run.
    #[test]
    fn generates_and_renders_without_panicking() {
        let tables = schema::tables();
        for seed in 0..20 {
            let mut g = Gen::new(seed, &tables);
            for _ in 0..1000 {
                let u = g.unit();
                assert!(!u.steps.is_empty());
                for step in &u.steps {
                    let (sql, params) = step.render();
                    assert!(!sql.is_empty());
                    if step.proto == Proto::Simple {
                        assert!(params.is_empty(), "{sql}");
                    }
                    let _ = step.describe();
                }
            }
        }
    }
}

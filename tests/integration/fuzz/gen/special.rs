//! Units beyond plain statements: TLP and NoREC groups (SQLancer's
//! metamorphic oracles), valid syntax the router may misread, and DDL
//! (schemas, indexes, grants, tables, TRUNCATE) that must reach every shard.

use rand::seq::SliceRandom;
use rand::Rng;

use super::super::schema::{self, Table, Ty};
use super::super::sql::*;
use super::*;

impl<'a> Gen<'a> {
    // ------------------------------------------------------------------
    // Metamorphic groups

    /// A plain query and its three partitions by a predicate (SQLancer's
    /// ternary logic partitioning).
    pub(super) fn tlp(&mut self) -> Vec<Step> {
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
    pub(super) fn norec(&mut self) -> Vec<Step> {
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
    pub(super) fn odd_syntax(&mut self) -> Stmt {
        let sharded: Vec<&Table> = self.tables.iter().filter(|t| t.is_sharded()).collect();
        let t = *sharded.choose(&mut self.rng).expect("sharded");
        let key = t.key_col().expect("key");
        let kv = schema::pool_literal(&mut self.rng, key.pool, false);
        let k2 = schema::pool_literal(&mut self.rng, key.pool, false);
        // VALUES of quoted literals are text: uuid keys need a cast.
        let cast = if key.ty == Ty::Uuid { "::uuid" } else { "" };
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
            ("in-values", format!("select a.{k} from {tn} a where a.{k} in (values ({kv}{cast}), ({k2}{cast}))")),
            // Writes sqlparser cannot read (OPERATOR syntax).
            ("update-operator-syntax", format!("update {tn} set {o} = {o} where {k} operator(pg_catalog.=) {kv}")),
            ("delete-operator-syntax", format!("delete from {tn} where {k} operator(pg_catalog.=) {kv}")),
            ("only", format!("select a.{k} from only {tn} a where a.{k} = {kv}")),
            ("is-not-distinct", format!("select a.{k} from {tn} a where a.{k} is not distinct from {kv}")),
            ("comment-first", format!("/* note */ select a.{k}, a.{o} from {tn} a where a.{k} = {kv}")),
            ("line-comment", format!("-- note\nselect a.{k}, a.{o} from {tn} a where a.{k} = {kv}")),
            ("table-command", format!("table {tn}")),
            ("no-alias", format!("select {k}, {o} from {tn} where {k} = {kv}")),
            ("fetch-first", format!("select {pk} from {tn} a order by {pk} fetch first 3 rows only")),
            ("for-no-key-update", format!("select a.{k} from {tn} a where a.{k} = {kv} for no key update")),
            ("values-only", "values (1, 'a'), (2, 'b')".to_string()),
            ("cast-key", format!("select a.{k} from {tn} a where a.{k}::text = ({kv})::text")),
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
            writes: matches!(
                name,
                "for-no-key-update" | "update-operator-syntax" | "delete-operator-syntax"
            ),
        }
    }

    pub(super) fn ddl(&mut self) -> Step {
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

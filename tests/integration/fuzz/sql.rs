//! A small SQL syntax tree for the statements the generator writes, so a
//! failing statement can be shrunk clause by clause, and so one statement
//! can be sent either way: in the simple protocol with its parameters
//! written inline as typed literals, or in the extended protocol with `$n`
//! placeholders and the values bound (text or binary).

use std::fmt::Write as _;

/// How a parameter is declared and sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PType {
    Int2,
    Int4,
    Int8,
    Float8,
    Numeric,
    Text,
    Uuid,
    Int4Arr,
    Int8Arr,
    Float8Arr,
    TextArr,
    UuidArr,
}

impl PType {
    pub fn sql(self) -> &'static str {
        match self {
            PType::Int2 => "int2",
            PType::Int4 => "int4",
            PType::Int8 => "int8",
            PType::Float8 => "float8",
            PType::Numeric => "numeric",
            PType::Text => "text",
            PType::Uuid => "uuid",
            PType::Int4Arr => "int4[]",
            PType::Int8Arr => "int8[]",
            PType::Float8Arr => "float8[]",
            PType::TextArr => "text[]",
            PType::UuidArr => "uuid[]",
        }
    }
}

/// A bound parameter: its value as PostgreSQL text (`None` is NULL;
/// arrays as a list of element texts), its declared type, and the wire
/// format. `declared == false` sends the type as unknown, so the server
/// infers it (text format only: a binary value needs a known type).
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub ty: PType,
    pub value: Option<PValue>,
    pub binary: bool,
    pub declared: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PValue {
    Scalar(String),
    Array(Vec<String>),
}

impl Param {
    /// The value's text in PostgreSQL's input syntax (arrays as `{...}`).
    pub fn text(&self) -> Option<String> {
        self.value.as_ref().map(|v| match v {
            PValue::Scalar(s) => s.clone(),
            PValue::Array(items) => {
                let quoted: Vec<String> = items
                    .iter()
                    .map(|i| format!("\"{}\"", i.replace('\\', "\\\\").replace('"', "\\\"")))
                    .collect();
                format!("{{{}}}", quoted.join(","))
            }
        })
    }

    /// As an inline literal with the same type (or untyped when the
    /// parameter is not declared, like an unknown-typed parameter).
    pub fn inline(&self) -> String {
        match self.text() {
            None if self.declared => format!("null::{}", self.ty.sql()),
            None => "null".into(),
            Some(t) => {
                let lit = format!("'{}'", t.replace('\'', "''"));
                if self.declared {
                    format!("{lit}::{}", self.ty.sql())
                } else {
                    lit
                }
            }
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} {}{} = {}",
            if self.declared {
                self.ty.sql()
            } else {
                "unknown"
            },
            if self.binary { "binary" } else { "text" },
            if self.declared || self.binary {
                ""
            } else {
                " (server infers the type)"
            },
            self.text()
                .map(|t| format!("'{t}'"))
                .unwrap_or("NULL".into())
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// `alias.column`, or a bare name when the alias is empty.
    Col(String, String),
    /// Literal SQL text (numbers, quoted strings, NULL, `count(*)`, ...).
    Lit(String),
    Param(Param),
    Func(String, Vec<Expr>),
    /// An aggregate with optional DISTINCT and ORDER BY inside.
    Agg {
        name: String,
        distinct: bool,
        args: Vec<Expr>,
        order: Vec<OrderItem>,
    },
    /// `cast(e as type)`.
    Cast(Box<Expr>, &'static str),
    Bin(Box<Expr>, &'static str, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    IsNull(Box<Expr>, bool),
    InList(Box<Expr>, Vec<Expr>, bool),
    InSub(Box<Expr>, Box<Select>, bool),
    Exists(Box<Select>, bool),
    Scalar(Box<Select>),
    /// `e = ANY(x)` where x is a parameter or an ARRAY literal.
    Any(Box<Expr>, Box<Expr>),
    Between(Box<Expr>, Box<Expr>, Box<Expr>),
    Case(Box<Expr>, Box<Expr>, Box<Expr>),
    /// A window function with its OVER clause written out.
    Window(String, String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct OrderItem {
    pub expr: Expr,
    pub desc: bool,
    pub nulls_first: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    Left,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    Table(String),
    Sub(Box<Select>),
    /// A function in FROM, written out (`generate_series(1, 5)`), with
    /// its column alias list.
    Func(String, Vec<String>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct FromItem {
    /// None for the first item (or a comma-joined one).
    pub join: Option<(JoinKind, Expr)>,
    pub source: Source,
    pub alias: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Cte {
    pub name: String,
    pub body: Box<Stmt>,
}

/// How LIMIT and OFFSET are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Fetch {
    /// `LIMIT n OFFSET m`.
    #[default]
    Limit,
    /// `OFFSET m ROWS FETCH FIRST n ROWS ONLY`.
    Only,
    /// `OFFSET m ROWS FETCH FIRST n ROWS WITH TIES`: the rows that tie
    /// with the last one come too (so its set of rows is deterministic
    /// even when the ORDER BY is not total).
    WithTies,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Select {
    pub ctes: Vec<Cte>,
    pub distinct: bool,
    /// `DISTINCT ON (...)`; ORDER BY starts with the same expressions.
    pub distinct_on: Vec<Expr>,
    pub items: Vec<(Expr, Option<String>)>,
    pub from: Vec<FromItem>,
    pub where_: Option<Expr>,
    pub group_by: Vec<Expr>,
    pub having: Option<Expr>,
    /// `UNION ALL`, `EXCEPT`, ... and the right side (no ORDER BY of its own).
    pub set_op: Option<(&'static str, Box<Select>)>,
    pub order_by: Vec<OrderItem>,
    /// The generator made ORDER BY total by other means than naming every
    /// output column (it ends with every relation's primary key).
    pub order_total: bool,
    /// A number or a parameter (LIMIT $n, FETCH FIRST $n ROWS).
    pub limit: Option<Box<Expr>>,
    pub offset: Option<Box<Expr>>,
    pub fetch: Fetch,
    /// Written after everything (`FOR UPDATE`), or odd syntax the parser
    /// may not know.
    pub suffix: Option<String>,
}

impl Select {
    /// Whether ORDER BY orders the whole result: every output column is
    /// an ORDER BY position, so rows that tie are identical (or the
    /// generator ended it with every relation's primary key).
    pub fn total_order(&self) -> bool {
        if self.items.is_empty() || self.order_by.is_empty() {
            return false;
        }
        if self.order_total {
            return true;
        }
        let mut covered = vec![false; self.items.len()];
        for o in &self.order_by {
            if let Expr::Lit(s) = &o.expr {
                if let Ok(i) = s.parse::<usize>() {
                    if (1..=covered.len()).contains(&i) {
                        covered[i - 1] = true;
                    }
                }
            }
        }
        covered.iter().all(|c| *c)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum OnConflict {
    Nothing(Vec<String>),
    Update {
        target: Vec<String>,
        sets: Vec<(String, Expr)>,
        where_: Option<Expr>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum InsertSource {
    Values(Vec<Vec<Expr>>),
    Select(Box<Select>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Insert {
    pub table: String,
    pub cols: Option<Vec<String>>,
    pub source: InsertSource,
    pub on_conflict: Option<OnConflict>,
    pub returning: Vec<Expr>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub table: String,
    pub alias: String,
    pub sets: Vec<(String, Expr)>,
    pub from: Option<(String, String)>,
    pub where_: Option<Expr>,
    pub returning: Vec<Expr>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Delete {
    pub table: String,
    pub alias: String,
    pub using: Option<(String, String)>,
    pub where_: Option<Expr>,
    pub returning: Vec<Expr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxCmd {
    Begin,
    Commit,
    Rollback,
    Savepoint,
    RollbackTo,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    Select(Select),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    /// Transaction control, written as `text`.
    Tx(TxCmd, String),
    /// DDL and other statements kept as written.
    Raw {
        sql: String,
        writes: bool,
    },
}

impl Stmt {
    /// Whether the statement may change table contents or catalogs.
    pub fn writes(&self) -> bool {
        match self {
            Stmt::Select(s) => {
                s.ctes.iter().any(|c| c.body.writes())
                    || s.suffix.as_deref().is_some_and(|x| x.contains("for "))
            }
            Stmt::Insert(_) | Stmt::Update(_) | Stmt::Delete(_) => true,
            Stmt::Tx(..) => false,
            Stmt::Raw { writes, .. } => *writes,
        }
    }

    /// Whether rows must be compared in order: a SELECT with a total
    /// ORDER BY, and INSERT ... VALUES ... RETURNING (one database returns
    /// the rows in VALUES order) unless ON CONFLICT DO NOTHING leaves some
    /// out.
    pub fn ordered(&self) -> bool {
        match self {
            Stmt::Select(s) => s.total_order(),
            // ON CONFLICT DO UPDATE ... WHERE leaves rows out too: the
            // proxy documents that it cannot know their order then.
            Stmt::Insert(i) => {
                matches!(i.source, InsertSource::Values(_))
                    && !i.returning.is_empty()
                    && !matches!(
                        i.on_conflict,
                        Some(OnConflict::Nothing(_))
                            | Some(OnConflict::Update {
                                where_: Some(_),
                                ..
                            })
                    )
            }
            _ => false,
        }
    }
}

/// Renders statements: inline (simple protocol) or with `$n` (extended).
pub struct Render {
    pub inline: bool,
    pub params: Vec<Param>,
}

impl Render {
    pub fn new(inline: bool) -> Render {
        Render {
            inline,
            params: Vec::new(),
        }
    }

    fn param(&mut self, p: &Param) -> String {
        if self.inline {
            p.inline()
        } else {
            self.params.push(p.clone());
            format!("${}", self.params.len())
        }
    }

    pub fn stmt(&mut self, s: &Stmt) -> String {
        match s {
            Stmt::Select(q) => self.select(q),
            Stmt::Insert(i) => self.insert(i),
            Stmt::Update(u) => self.update(u),
            Stmt::Delete(d) => self.delete(d),
            Stmt::Tx(_, text) => text.clone(),
            Stmt::Raw { sql, .. } => sql.clone(),
        }
    }

    fn ctes(&mut self, ctes: &[Cte], out: &mut String) {
        if ctes.is_empty() {
            return;
        }
        out.push_str("with ");
        for (i, c) in ctes.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let body = self.stmt(&c.body);
            let _ = write!(out, "{} as ({body})", c.name);
        }
        out.push(' ');
    }

    pub fn select(&mut self, q: &Select) -> String {
        let mut out = String::new();
        self.ctes(&q.ctes, &mut out);
        self.select_core(q, &mut out);
        if let Some((op, rhs)) = &q.set_op {
            let _ = write!(out, " {op} ");
            self.select_core(rhs, &mut out);
        }
        if !q.order_by.is_empty() {
            let items = self.order_items(&q.order_by);
            let _ = write!(out, " order by {items}");
        }
        match q.fetch {
            Fetch::Limit => {
                if let Some(l) = &q.limit {
                    let _ = write!(out, " limit {}", self.expr(l));
                }
                if let Some(o) = &q.offset {
                    let _ = write!(out, " offset {}", self.expr(o));
                }
            }
            Fetch::Only | Fetch::WithTies => {
                // These take a number or a parenthesized expression.
                if let Some(o) = &q.offset {
                    let _ = write!(out, " offset {} rows", self.fetch_value(o));
                }
                if let Some(l) = &q.limit {
                    let _ = write!(
                        out,
                        " fetch first {} rows {}",
                        self.fetch_value(l),
                        if q.fetch == Fetch::Only {
                            "only"
                        } else {
                            "with ties"
                        }
                    );
                }
            }
        }
        if let Some(s) = &q.suffix {
            let _ = write!(out, " {s}");
        }
        out
    }

    /// ORDER BY items, comma-separated (without the keywords).
    pub fn order_items(&mut self, items: &[OrderItem]) -> String {
        let items: Vec<String> = items
            .iter()
            .map(|o| {
                let mut s = self.expr(&o.expr);
                if o.desc {
                    s.push_str(" desc");
                }
                match o.nulls_first {
                    Some(true) => s.push_str(" nulls first"),
                    Some(false) => s.push_str(" nulls last"),
                    None => {}
                }
                s
            })
            .collect();
        items.join(", ")
    }

    /// A FETCH FIRST or OFFSET ... ROWS count: a plain number or `$n` as
    /// is, anything else (an inline parameter's typed literal) in
    /// parentheses, as PostgreSQL's grammar wants.
    fn fetch_value(&mut self, e: &Expr) -> String {
        match e {
            Expr::Lit(s) if s.bytes().all(|b| b.is_ascii_digit()) => s.clone(),
            Expr::Param(_) if !self.inline => self.expr(e),
            _ => format!("({})", self.expr(e)),
        }
    }

    fn select_core(&mut self, q: &Select, out: &mut String) {
        out.push_str("select ");
        if q.distinct {
            out.push_str("distinct ");
        }
        if !q.distinct_on.is_empty() {
            let on: Vec<String> = q.distinct_on.iter().map(|e| self.expr(e)).collect();
            let _ = write!(out, "distinct on ({}) ", on.join(", "));
        }
        let items: Vec<String> = q
            .items
            .iter()
            .map(|(e, alias)| match alias {
                Some(a) => format!("{} as {a}", self.expr(e)),
                None => self.expr(e),
            })
            .collect();
        out.push_str(&items.join(", "));
        if !q.from.is_empty() {
            out.push_str(" from ");
            for (i, f) in q.from.iter().enumerate() {
                let src = match &f.source {
                    Source::Table(t) => format!("{t} {}", f.alias),
                    Source::Sub(s) => format!("({}) {}", self.select(s), f.alias),
                    Source::Func(call, cols) => {
                        format!("{call} as {}({})", f.alias, cols.join(", "))
                    }
                };
                match &f.join {
                    None if i == 0 => out.push_str(&src),
                    None => {
                        let _ = write!(out, ", {src}");
                    }
                    Some((kind, on)) => {
                        let k = match kind {
                            JoinKind::Inner => "join",
                            JoinKind::Left => "left join",
                        };
                        let on = self.expr(on);
                        let _ = write!(out, " {k} {src} on {on}");
                    }
                }
            }
        }
        if let Some(w) = &q.where_ {
            let _ = write!(out, " where {}", self.expr(w));
        }
        if !q.group_by.is_empty() {
            let g: Vec<String> = q.group_by.iter().map(|e| self.expr(e)).collect();
            let _ = write!(out, " group by {}", g.join(", "));
        }
        if let Some(h) = &q.having {
            let _ = write!(out, " having {}", self.expr(h));
        }
    }

    fn returning(&mut self, r: &[Expr], out: &mut String) {
        if !r.is_empty() {
            let items: Vec<String> = r.iter().map(|e| self.expr(e)).collect();
            let _ = write!(out, " returning {}", items.join(", "));
        }
    }

    fn insert(&mut self, i: &Insert) -> String {
        let mut out = format!("insert into {}", i.table);
        if let Some(cols) = &i.cols {
            let _ = write!(out, " ({})", cols.join(", "));
        }
        match &i.source {
            InsertSource::Values(rows) => {
                let rows: Vec<String> = rows
                    .iter()
                    .map(|r| {
                        let v: Vec<String> = r.iter().map(|e| self.expr(e)).collect();
                        format!("({})", v.join(", "))
                    })
                    .collect();
                let _ = write!(out, " values {}", rows.join(", "));
            }
            InsertSource::Select(s) => {
                let _ = write!(out, " {}", self.select(s));
            }
        }
        match &i.on_conflict {
            None => {}
            Some(OnConflict::Nothing(target)) => {
                let _ = write!(out, " on conflict ({}) do nothing", target.join(", "));
            }
            Some(OnConflict::Update {
                target,
                sets,
                where_,
            }) => {
                let sets: Vec<String> = sets
                    .iter()
                    .map(|(c, e)| format!("{c} = {}", self.expr(e)))
                    .collect();
                let _ = write!(
                    out,
                    " on conflict ({}) do update set {}",
                    target.join(", "),
                    sets.join(", ")
                );
                if let Some(w) = where_ {
                    let _ = write!(out, " where {}", self.expr(w));
                }
            }
        }
        self.returning(&i.returning, &mut out);
        out
    }

    fn update(&mut self, u: &Update) -> String {
        let sets: Vec<String> = u
            .sets
            .iter()
            .map(|(c, e)| format!("{c} = {}", self.expr(e)))
            .collect();
        let mut out = format!("update {} {} set {}", u.table, u.alias, sets.join(", "));
        if let Some((t, a)) = &u.from {
            let _ = write!(out, " from {t} {a}");
        }
        if let Some(w) = &u.where_ {
            let _ = write!(out, " where {}", self.expr(w));
        }
        self.returning(&u.returning, &mut out);
        out
    }

    fn delete(&mut self, d: &Delete) -> String {
        let mut out = format!("delete from {} {}", d.table, d.alias);
        if let Some((t, a)) = &d.using {
            let _ = write!(out, " using {t} {a}");
        }
        if let Some(w) = &d.where_ {
            let _ = write!(out, " where {}", self.expr(w));
        }
        self.returning(&d.returning, &mut out);
        out
    }

    pub fn expr(&mut self, e: &Expr) -> String {
        match e {
            Expr::Col(a, c) if a.is_empty() => c.clone(),
            Expr::Col(a, c) => format!("{a}.{c}"),
            Expr::Lit(s) => s.clone(),
            Expr::Param(p) => self.param(p),
            Expr::Func(name, args) => {
                let a: Vec<String> = args.iter().map(|x| self.expr(x)).collect();
                format!("{name}({})", a.join(", "))
            }
            Expr::Agg {
                name,
                distinct,
                args,
                order,
            } => {
                let a: Vec<String> = args.iter().map(|x| self.expr(x)).collect();
                let mut s = format!(
                    "{name}({}{}",
                    if *distinct { "distinct " } else { "" },
                    if a.is_empty() {
                        "*".to_string()
                    } else {
                        a.join(", ")
                    }
                );
                if !order.is_empty() {
                    let o = self.order_items(order);
                    let _ = write!(s, " order by {o}");
                }
                s.push(')');
                s
            }
            Expr::Cast(x, ty) => format!("cast({} as {ty})", self.expr(x)),
            Expr::Bin(l, op, r) => format!("({} {op} {})", self.expr(l), self.expr(r)),
            Expr::And(l, r) => format!("({} and {})", self.expr(l), self.expr(r)),
            Expr::Or(l, r) => format!("({} or {})", self.expr(l), self.expr(r)),
            Expr::Not(x) => format!("(not {})", self.expr(x)),
            Expr::IsNull(x, neg) => format!(
                "({} is {}null)",
                self.expr(x),
                if *neg { "not " } else { "" }
            ),
            Expr::InList(x, list, neg) => {
                let x = self.expr(x);
                let l: Vec<String> = list.iter().map(|i| self.expr(i)).collect();
                format!(
                    "({x} {}in ({}))",
                    if *neg { "not " } else { "" },
                    l.join(", ")
                )
            }
            Expr::InSub(x, q, neg) => {
                let x = self.expr(x);
                format!(
                    "({x} {}in ({}))",
                    if *neg { "not " } else { "" },
                    self.select(q)
                )
            }
            Expr::Exists(q, neg) => format!(
                "({}exists ({}))",
                if *neg { "not " } else { "" },
                self.select(q)
            ),
            Expr::Scalar(q) => format!("({})", self.select(q)),
            Expr::Any(x, arr) => format!("({} = any({}))", self.expr(x), self.expr(arr)),
            Expr::Between(x, lo, hi) => format!(
                "({} between {} and {})",
                self.expr(x),
                self.expr(lo),
                self.expr(hi)
            ),
            Expr::Case(c, a, b) => format!(
                "(case when {} then {} else {} end)",
                self.expr(c),
                self.expr(a),
                self.expr(b)
            ),
            Expr::Window(f, over) => format!("{f} over ({over})"),
        }
    }
}

/// The protocol a step is sent with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// One Query message (several statements allowed).
    Simple,
    /// Parse (named, types given) and Describe, then Bind/Execute with the
    /// values: `prepare_typed` + `query_raw`.
    Prepared,
    /// Parse/Bind/Describe/Execute/Sync in one go (`query_typed_raw`).
    Pipelined,
}

/// What is sent in one round: one or more statements (several only in the
/// simple protocol).
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub stmts: Vec<Stmt>,
    pub proto: Proto,
}

impl Step {
    /// The SQL text sent and the parameters bound.
    pub fn render(&self) -> (String, Vec<Param>) {
        let mut r = Render::new(self.proto == Proto::Simple);
        let parts: Vec<String> = self.stmts.iter().map(|s| r.stmt(s)).collect();
        (parts.join("; "), r.params)
    }

    pub fn writes(&self) -> bool {
        self.stmts.iter().any(Stmt::writes)
    }

    pub fn tx(&self) -> Option<TxCmd> {
        match self.stmts.as_slice() {
            [Stmt::Tx(c, _)] => Some(*c),
            _ => None,
        }
    }

    /// A readable reproduction: the SQL, its protocol, and the parameters.
    pub fn describe(&self) -> String {
        let (sql, params) = self.render();
        let mut s = match self.proto {
            Proto::Simple => format!("[simple] {sql}"),
            Proto::Prepared => format!("[extended, prepared] {sql}"),
            Proto::Pipelined => format!("[extended, one round trip] {sql}"),
        };
        for (i, p) in params.iter().enumerate() {
            let _ = write!(s, "\n      ${} = {}", i + 1, p.describe());
        }
        if self.proto != Proto::Simple && !params.is_empty() {
            let inline = Step {
                stmts: self.stmts.clone(),
                proto: Proto::Simple,
            };
            let _ = write!(s, "\n      (inline: {})", inline.render().0);
        }
        s
    }
}

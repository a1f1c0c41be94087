//! Every table reference of a statement, and the shard key values that pin
//! each one (DESIGN §4, the routing invariant).
//!
//! A statement may run on one shard only when every occurrence of every
//! sharded table in it is pinned to that shard by its own conditions, and
//! every unsharded table lives there. This walk lists the occurrences
//! wherever SQL can name a table: FROM and JOIN items, subqueries at any
//! depth (scalar, IN, EXISTS, correlated), derived tables, CTEs (data
//! modifying ones too), set operations, `TABLE t`, UPDATE ... FROM,
//! DELETE ... USING, INSERT targets and sources, ON CONFLICT, RETURNING,
//! and functions called in FROM.
//!
//! For each occurrence of a sharded table it finds the key values allowed
//! by the conjuncts of its own query block: WHERE, and JOIN ... ON where
//! the join type makes the condition restrict that side (an ON condition
//! never filters the preserved side of an outer join). Key equalities
//! carry values to co-located occurrences: both ways inside one block's
//! WHERE or inner join, one way where only one side is restricted (the
//! nullable side of an outer join, the inner side of a correlated
//! subquery). Names resolve as PostgreSQL resolves them: an alias hides the
//! table's name, a CTE name shadows a table, an unqualified column belongs
//! to its own block, a qualified one to the nearest block that has that
//! name. Anything it cannot resolve for certain is left unpinned, which can
//! only send a statement to more shards (or have it refused), never to a
//! wrong one.
//!
//! What the walk does not model is reported (`not_understood`): the table
//! references it saw are counted against every relation sqlparser's own
//! visitor finds, so a construct it skips cannot go unnoticed. The router
//! refuses such a statement when it touches a configured table.

use std::ops::ControlFlow;
use std::sync::Arc;

use sqlparser::ast::{
    visit_relations, Assignment, AssignmentTarget, BinaryOperator, Delete, Expr, FromTable, Insert,
    JoinConstraint, JoinOperator, ObjectName, ObjectNamePart, OnConflictAction, OnInsert, Query,
    Select, SetExpr, Statement, TableFactor, TableObject, TableWithJoins, UnaryOperator, Update,
    UpdateTableFromKind, Value, Visit, Visitor,
};

use super::analyze::{lookup, normalize_ident, KeyCondition, KeyExpr, Tables};
use super::TableRule;

/// What one table reference names.
#[derive(Debug, Clone)]
pub enum Relation {
    Sharded(Arc<TableRule>),
    Reference(Arc<TableRule>),
    /// A table that is not configured: it lives on the default shard.
    Unsharded(String),
    /// `pg_catalog` and `information_schema`: the same on every shard.
    Catalog,
    /// A CTE of the statement (its body is walked where it is defined).
    Cte,
    /// A function called in FROM.
    Function,
}

#[derive(Debug, Clone)]
struct Occurrence {
    relation: Relation,
    /// The key values its own conditions allow; `None`: not pinned.
    alternatives: Option<Vec<KeyExpr>>,
    /// In the FROM of the statement's top-level SELECT.
    top_level: bool,
    /// On the nullable side of an outer join of its block: rows of the
    /// other side appear whether or not it has a match.
    nullable: bool,
    /// The name as the statement wrote it (with its place in the text),
    /// when it was written as an object name (`TABLE t` is not).
    written: Option<ObjectName>,
}

/// What a statement touches, for routing.
#[derive(Debug, Clone, Default)]
pub struct Footprint {
    /// One entry per occurrence of a sharded table, with its key values.
    pub sharded: Vec<KeyCondition>,
    /// How many of `sharded` are in the FROM of the top-level SELECT and
    /// not on the nullable side of an outer join there: the answer of
    /// such a query is the union of every shard's answer only when each of
    /// its rows has a row of that table (else the rows of the preserved
    /// side without a match would come from every shard).
    pub sharded_top_level: usize,
    /// A reference table is read or written.
    pub reference: bool,
    /// The first unsharded table named (it lives on the default shard).
    pub unsharded: Option<String>,
    /// Functions called in FROM, lower case, without schema.
    pub functions: Vec<String>,
    /// Why some table reference was not understood.
    pub not_understood: Option<String>,
    /// A reference table written by a data-modifying CTE (every shard
    /// needs that write, and the statement runs on one).
    pub nested_reference_write: Option<String>,
    /// Every occurrence of a sharded table is in the FROM of the top-level
    /// SELECT, all of them co-located, and key equalities in their join
    /// conditions (or WHERE) connect them all: each row of the join is
    /// made of rows of one shard, so every shard answering it for its own
    /// rows answers the whole (tier 1 merges apply, router::mergeable).
    pub colocated_join: bool,
    /// Every table occurrence with its name as written (tier 3 puts a
    /// gathered copy in its place).
    pub names: Vec<(Relation, Option<ObjectName>)>,
    /// An UPDATE (or, `true`, an upsert's DO UPDATE), anywhere in the
    /// statement, that assigns a sharded table's key (table, key): the row
    /// would stay on the shard of its old key.
    pub moves_key: Option<(String, String, bool)>,
}

/// The footprint of a whole statement.
pub fn footprint(stmt: &Statement, tables: &Tables) -> Footprint {
    let mut w = Walker::new(tables);
    w.statement(stmt, true);
    w.finish(count_relations(stmt))
}

/// The footprint of a query (COPY (query) TO, CREATE ... AS query).
pub fn query_footprint(q: &Query, tables: &Tables) -> Footprint {
    let mut w = Walker::new(tables);
    w.query(q, true);
    w.finish(count_relations(q))
}

fn count_relations<V: Visit>(v: &V) -> usize {
    let mut n = 0;
    let _ = visit_relations(v, |_: &ObjectName| {
        n += 1;
        ControlFlow::<()>::Continue(())
    });
    n
}

/// The FROM items of one query block.
#[derive(Debug, Default)]
struct Scope {
    /// Names a column may be qualified with, and the occurrence each is
    /// (None: a derived table, function, CTE or unsharded relation).
    items: Vec<(String, Option<usize>)>,
    /// The occurrences in this block's FROM (nested joins included).
    members: Vec<usize>,
    /// False while a non-LATERAL derived table of this block is walked:
    /// PostgreSQL does not let it see its siblings.
    hidden: bool,
}

struct Walker<'t> {
    tables: &'t Tables,
    occ: Vec<Occurrence>,
    /// `(from, to)`: `to`'s key takes `from`'s values.
    edges: Vec<(usize, usize)>,
    scopes: Vec<Scope>,
    /// CTE names visible here, a frame per WITH.
    ctes: Vec<Vec<String>>,
    /// Relations seen, to compare with sqlparser's visitor.
    relations: usize,
    functions: Vec<String>,
    unknown: Option<String>,
    nested_reference_write: Option<String>,
    moves_key: Option<(String, String, bool)>,
}

impl<'t> Walker<'t> {
    fn new(tables: &'t Tables) -> Self {
        Walker {
            tables,
            occ: Vec::new(),
            edges: Vec::new(),
            scopes: Vec::new(),
            ctes: Vec::new(),
            relations: 0,
            functions: Vec::new(),
            unknown: None,
            nested_reference_write: None,
            moves_key: None,
        }
    }

    fn not_modelled(&mut self, what: &str) {
        if self.unknown.is_none() {
            self.unknown = Some(what.to_string());
        }
    }

    fn finish(mut self, relations: usize) -> Footprint {
        if relations != self.relations {
            self.not_modelled("a table reference in a position shardwire does not analyze");
        }
        self.propagate();
        let colocated_join = self.colocated_join();
        let mut fp = Footprint {
            colocated_join,
            functions: self.functions,
            not_understood: self.unknown,
            nested_reference_write: self.nested_reference_write,
            moves_key: self.moves_key,
            ..Default::default()
        };
        for o in self.occ {
            fp.names.push((o.relation.clone(), o.written.clone()));
            match o.relation {
                Relation::Sharded(table) => {
                    if o.top_level && !o.nullable {
                        fp.sharded_top_level += 1;
                    }
                    fp.sharded.push(KeyCondition {
                        table,
                        alternatives: o.alternatives,
                    });
                }
                Relation::Reference(_) => fp.reference = true,
                Relation::Unsharded(name) => {
                    fp.unsharded.get_or_insert(name);
                }
                Relation::Catalog | Relation::Cte | Relation::Function => {}
            }
        }
        fp
    }

    /// See `Footprint::colocated_join`.
    fn colocated_join(&self) -> bool {
        let sharded: Vec<usize> = (0..self.occ.len())
            .filter(|&o| matches!(self.occ[o].relation, Relation::Sharded(_)))
            .collect();
        let Some(&first) = sharded.first() else {
            return false;
        };
        let placed = |o: usize| match &self.occ[o].relation {
            Relation::Sharded(t) => Some((t.placement_id().to_string(), t.key_type)),
            _ => None,
        };
        if sharded
            .iter()
            .any(|&o| !self.occ[o].top_level || placed(o) != placed(first))
        {
            return false;
        }
        // Connected through key equalities (either way).
        let mut reached = vec![first];
        let mut grew = true;
        while grew {
            grew = false;
            for &(a, b) in &self.edges {
                for (x, y) in [(a, b), (b, a)] {
                    if reached.contains(&x) && !reached.contains(&y) && sharded.contains(&y) {
                        reached.push(y);
                        grew = true;
                    }
                }
            }
        }
        reached.len() == sharded.len()
    }

    /// Carry key values along key equalities between co-located
    /// occurrences, until nothing changes.
    fn propagate(&mut self) {
        let colocated = |a: &Occurrence, b: &Occurrence| match (&a.relation, &b.relation) {
            (Relation::Sharded(x), Relation::Sharded(y)) => {
                x.placement_id() == y.placement_id() && x.key_type == y.key_type
            }
            _ => false,
        };
        loop {
            let mut changed = false;
            for &(from, to) in &self.edges {
                if self.occ[to].alternatives.is_none()
                    && self.occ[from].alternatives.is_some()
                    && colocated(&self.occ[from], &self.occ[to])
                {
                    self.occ[to].alternatives = self.occ[from].alternatives.clone();
                    changed = true;
                }
            }
            if !changed {
                return;
            }
        }
    }

    // ------------------------------------------------------------------
    // Statements and queries

    fn statement(&mut self, st: &Statement, top: bool) {
        match st {
            Statement::Query(q) => self.query(q, top),
            Statement::Insert(ins) => self.insert(ins, !top),
            Statement::Update(u) => self.update(u, !top),
            Statement::Delete(d) => self.delete(d, !top),
            _ => self.not_modelled("a statement of this kind inside a query"),
        }
    }

    fn query(&mut self, q: &Query, top: bool) {
        let with = q.with.as_ref();
        if let Some(with) = with {
            let names: Vec<String> = with
                .cte_tables
                .iter()
                .map(|c| normalize_ident(&c.alias.name.value, c.alias.name.quote_style))
                .collect();
            // WITH RECURSIVE: every CTE sees all of them; otherwise a CTE
            // sees only the ones before it.
            if with.recursive {
                self.ctes.push(names);
                for cte in &with.cte_tables {
                    self.query(&cte.query, false);
                }
            } else {
                self.ctes.push(Vec::new());
                for (cte, name) in with.cte_tables.iter().zip(names) {
                    self.query(&cte.query, false);
                    if let Some(frame) = self.ctes.last_mut() {
                        frame.push(name);
                    }
                }
            }
        }
        self.set_expr(&q.body, top);
        self.children(&q.order_by);
        self.children(&q.limit_clause);
        self.children(&q.fetch);
        if with.is_some() {
            self.ctes.pop();
        }
    }

    fn set_expr(&mut self, e: &SetExpr, top: bool) {
        match e {
            SetExpr::Select(s) => self.select(s, top),
            SetExpr::Query(q) => self.query(q, false),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left, false);
                self.set_expr(right, false);
            }
            SetExpr::Values(v) => self.children(v),
            SetExpr::Insert(st) | SetExpr::Update(st) | SetExpr::Delete(st) => {
                self.statement(st, false)
            }
            SetExpr::Merge(_) => self.not_modelled("MERGE"),
            SetExpr::Table(t) => {
                // `TABLE name`: a relation sqlparser's visitor does not
                // count (its name is plain strings).
                let Some(name) = &t.table_name else {
                    return self.not_modelled("TABLE without a name");
                };
                let mut parts: Vec<String> = Vec::new();
                if let Some(s) = &t.schema_name {
                    parts.push(s.to_lowercase());
                }
                parts.push(name.to_lowercase());
                let relation = self.classify_parts(&parts);
                self.scopes.push(Scope::default());
                self.add_occurrence(
                    relation,
                    top,
                    parts.last().cloned().unwrap_or_default(),
                    None,
                );
                self.scopes.pop();
            }
        }
    }

    fn select(&mut self, s: &Select, top: bool) {
        self.scopes.push(Scope::default());
        for twj in &s.from {
            self.table_with_joins(twj, top);
        }
        if let Some(w) = &s.selection {
            let members = self.block().members.clone();
            self.conjuncts(w, &members);
            self.children(w);
        }
        self.children(&s.projection);
        self.children(&s.distinct);
        self.children(&s.group_by);
        self.children(&s.having);
        self.children(&s.named_window);
        self.children(&s.qualify);
        self.children(&s.sort_by);
        self.children(&s.lateral_views);
        self.children(&s.prewhere);
        self.children(&s.connect_by);
        self.children(&s.top);
        self.scopes.pop();
    }

    /// An INSERT (`nested`: in a CTE of another statement).
    fn insert(&mut self, ins: &Insert, nested: bool) {
        let TableObject::TableName(name) = &ins.table else {
            return self.not_modelled("INSERT INTO a table function");
        };
        self.relations += 1;
        let relation = self.classify(name);
        let item = match &ins.table_alias {
            Some(a) => normalize_ident(&a.alias.value, a.alias.quote_style),
            None => last_ident(name).unwrap_or_default(),
        };
        // The source does not see the target.
        if let Some(src) = &ins.source {
            self.query(src, false);
        }
        self.scopes.push(Scope::default());
        let target = self.add_occurrence(relation, false, item, Some(name));
        if nested {
            self.note_nested_write(target);
        }
        self.block_mut().items.push(("excluded".into(), None));
        if let Relation::Sharded(t) = &self.occ[target].relation {
            self.occ[target].alternatives = insert_keys(ins, t);
        }
        // ON CONFLICT and RETURNING see the target (and EXCLUDED).
        if let Some(on) = &ins.on {
            match on {
                OnInsert::OnConflict(oc) => {
                    if let OnConflictAction::DoUpdate(du) = &oc.action {
                        self.note_assignments(target, &du.assignments, true);
                        self.children(&du.assignments);
                        self.children(&du.selection);
                    }
                }
                _ => self.not_modelled("ON DUPLICATE KEY UPDATE"),
            }
        }
        self.children(&ins.assignments);
        self.children(&ins.returning);
        self.scopes.pop();
    }

    fn update(&mut self, u: &Update, nested: bool) {
        self.scopes.push(Scope::default());
        let first = self.occ.len();
        self.table_with_joins(&u.table, false);
        if nested {
            self.note_nested_write(first);
        }
        self.note_assignments(first, &u.assignments, false);
        if let Some(from) = &u.from {
            let (UpdateTableFromKind::BeforeSet(f) | UpdateTableFromKind::AfterSet(f)) = from;
            for twj in f {
                self.table_with_joins(twj, false);
            }
        }
        if let Some(w) = &u.selection {
            let members = self.block().members.clone();
            self.conjuncts(w, &members);
            self.children(w);
        }
        self.children(&u.assignments);
        self.children(&u.returning);
        self.children(&u.order_by);
        self.children(&u.limit);
        self.scopes.pop();
    }

    fn delete(&mut self, d: &Delete, nested: bool) {
        self.scopes.push(Scope::default());
        let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
        let first = self.occ.len();
        for twj in from {
            self.table_with_joins(twj, false);
        }
        if nested {
            self.note_nested_write(first);
        }
        if let Some(using) = &d.using {
            for twj in using {
                self.table_with_joins(twj, false);
            }
        }
        if let Some(w) = &d.selection {
            let members = self.block().members.clone();
            self.conjuncts(w, &members);
            self.children(w);
        }
        self.children(&d.returning);
        self.children(&d.order_by);
        self.children(&d.limit);
        self.scopes.pop();
    }

    // ------------------------------------------------------------------
    // FROM

    fn table_with_joins(&mut self, twj: &TableWithJoins, top: bool) {
        let start = self.block().members.len();
        self.factor(&twj.relation, top);
        for j in &twj.joins {
            let left: Vec<usize> = self.block().members[start..].to_vec();
            let before = self.block().members.len();
            self.factor(&j.relation, top);
            let right: Vec<usize> = self.block().members[before..].to_vec();
            let both = || left.iter().chain(&right).copied().collect::<Vec<_>>();
            // Which side an ON condition filters: an outer join keeps the
            // rows of its preserved side whatever the condition says.
            let (restricted, constraint) = match &j.join_operator {
                JoinOperator::Join(c) | JoinOperator::Inner(c) | JoinOperator::CrossJoin(c) => {
                    (both(), c)
                }
                JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (right.clone(), c),
                JoinOperator::Right(c) | JoinOperator::RightOuter(c) => (left.clone(), c),
                JoinOperator::FullOuter(c) => (Vec::new(), c),
                other => {
                    self.not_modelled("a join type PostgreSQL does not have");
                    self.children(other);
                    continue;
                }
            };
            let nullable: &[usize] = match &j.join_operator {
                JoinOperator::Left(_) | JoinOperator::LeftOuter(_) => &right,
                JoinOperator::Right(_) | JoinOperator::RightOuter(_) => &left,
                JoinOperator::FullOuter(_) => &both(),
                _ => &[],
            };
            for &o in nullable {
                self.occ[o].nullable = true;
            }
            match constraint {
                JoinConstraint::On(e) => {
                    self.conjuncts(e, &restricted);
                    self.children(e);
                }
                JoinConstraint::Using(cols) => {
                    for c in cols {
                        if let Some(col) = last_ident(c) {
                            self.using_equality(&col, &left, &right, &restricted);
                        }
                    }
                }
                JoinConstraint::Natural | JoinConstraint::None => {}
            }
        }
    }

    fn factor(&mut self, f: &TableFactor, top: bool) {
        match f {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                self.relations += 1;
                let alias = alias
                    .as_ref()
                    .map(|a| normalize_ident(&a.name.value, a.name.quote_style));
                if let Some(args) = args {
                    // A function in FROM (`select * from nextval('s')`).
                    let fname = last_ident(name).unwrap_or_default();
                    self.functions.push(fname.clone());
                    self.children(args);
                    self.block_mut().items.push((alias.unwrap_or(fname), None));
                    return;
                }
                let relation = self.classify(name);
                let item = alias.unwrap_or_else(|| last_ident(name).unwrap_or_default());
                self.add_occurrence(relation, top, item, Some(name));
            }
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
                ..
            } => {
                if !lateral {
                    self.block_mut().hidden = true;
                }
                self.query(subquery, false);
                self.block_mut().hidden = false;
                if let Some(a) = alias {
                    let n = normalize_ident(&a.name.value, a.name.quote_style);
                    self.block_mut().items.push((n, None));
                }
            }
            TableFactor::TableFunction { expr, alias } => {
                if let Expr::Function(fun) = expr {
                    self.functions.extend(last_ident(&fun.name));
                }
                self.children(expr);
                self.alias_item(alias.as_ref());
            }
            TableFactor::Function {
                name, args, alias, ..
            } => {
                self.functions.extend(last_ident(name));
                self.children(args);
                self.alias_item(alias.as_ref());
            }
            TableFactor::UNNEST {
                array_exprs, alias, ..
            } => {
                self.children(array_exprs);
                self.alias_item(alias.as_ref());
            }
            TableFactor::JsonTable {
                json_expr, alias, ..
            } => {
                self.children(json_expr);
                self.alias_item(alias.as_ref());
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                self.table_with_joins(table_with_joins, top);
                self.alias_item(alias.as_ref());
            }
            _ => self.not_modelled("a FROM item of this kind"),
        }
    }

    /// Occurrence `o` is written by a statement nested in another one (a
    /// data-modifying CTE): a reference table written there would be
    /// written on the one shard the statement runs on.
    fn note_nested_write(&mut self, o: usize) {
        if let Some(Relation::Reference(t)) = self.occ.get(o).map(|x| &x.relation) {
            if self.nested_reference_write.is_none() {
                self.nested_reference_write = Some(t.name.clone());
            }
        }
    }

    /// Assignments to written occurrence `o`: one that sets a sharded
    /// table's key would leave the row on the shard of its old key.
    fn note_assignments(&mut self, o: usize, assignments: &[Assignment], upsert: bool) {
        let Some(Relation::Sharded(t)) = self.occ.get(o).map(|x| &x.relation) else {
            return;
        };
        let is_key = |c: &ObjectName| last_ident(c).as_deref() == Some(t.key.as_str());
        let sets_key = assignments.iter().any(|a| match &a.target {
            AssignmentTarget::ColumnName(c) => is_key(c),
            AssignmentTarget::Tuple(cs) => cs.iter().any(is_key),
        });
        if sets_key && self.moves_key.is_none() {
            self.moves_key = Some((t.name.clone(), t.key.clone(), upsert));
        }
    }

    fn alias_item(&mut self, alias: Option<&sqlparser::ast::TableAlias>) {
        if let Some(a) = alias {
            let n = normalize_ident(&a.name.value, a.name.quote_style);
            self.block_mut().items.push((n, None));
        }
    }

    fn add_occurrence(
        &mut self,
        relation: Relation,
        top: bool,
        item: String,
        written: Option<&ObjectName>,
    ) -> usize {
        let idx = self.occ.len();
        self.occ.push(Occurrence {
            relation,
            alternatives: None,
            top_level: top,
            nullable: false,
            written: written.cloned(),
        });
        let block = self.block_mut();
        block.items.push((item, Some(idx)));
        block.members.push(idx);
        idx
    }

    fn classify(&self, name: &ObjectName) -> Relation {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| match p {
                ObjectNamePart::Identifier(i) => normalize_ident(&i.value, i.quote_style),
                other => other.to_string().to_lowercase(),
            })
            .collect();
        if let [one] = parts.as_slice() {
            if self.ctes.iter().any(|frame| frame.contains(one)) {
                return Relation::Cte;
            }
        }
        match lookup(name, self.tables) {
            Some(t) if t.is_reference() => Relation::Reference(t),
            Some(t) => Relation::Sharded(t),
            None => self.classify_parts(&parts),
        }
    }

    /// A name that is no configured table (or `TABLE name`).
    fn classify_parts(&self, parts: &[String]) -> Relation {
        if let [one] = parts {
            if self.ctes.iter().any(|frame| frame.contains(one)) {
                return Relation::Cte;
            }
        }
        if let Some(t) = parts.last().and_then(|n| self.tables.get(n)) {
            return if t.is_reference() {
                Relation::Reference(t.clone())
            } else {
                Relation::Sharded(t.clone())
            };
        }
        let catalog = match parts {
            [one] => one.starts_with("pg_"),
            [.., schema, _] => schema == "pg_catalog" || schema == "information_schema",
            [] => false,
        };
        if catalog {
            Relation::Catalog
        } else {
            Relation::Unsharded(parts.join("."))
        }
    }

    fn block(&self) -> &Scope {
        self.scopes
            .last()
            .expect("a block is open while FROM is walked")
    }

    fn block_mut(&mut self) -> &mut Scope {
        self.scopes
            .last_mut()
            .expect("a block is open while FROM is walked")
    }

    // ------------------------------------------------------------------
    // Conditions

    /// Apply the conjuncts of `e` to the occurrences in `restricted`.
    fn conjuncts(&mut self, e: &Expr, restricted: &[usize]) {
        let mut cs = Vec::new();
        split_and(e, &mut cs);
        for c in cs {
            match key_predicate(c) {
                Some(KeyPredicate::Values(col, values)) => {
                    if let Some(o) = self.resolve(&col).filter(|o| restricted.contains(o)) {
                        let slot = &mut self.occ[o].alternatives;
                        // Two conditions on one key: both hold; the
                        // narrower one is enough to route by.
                        *slot = Some(match slot.take() {
                            Some(prev) if prev.len() <= values.len() => prev,
                            _ => values,
                        });
                    }
                }
                Some(KeyPredicate::Equated(a, b)) => {
                    if let (Some(x), Some(y)) = (self.resolve(&a), self.resolve(&b)) {
                        if x != y {
                            if restricted.contains(&y) {
                                self.edges.push((x, y));
                            }
                            if restricted.contains(&x) {
                                self.edges.push((y, x));
                            }
                        }
                    }
                }
                None => {}
            }
        }
    }

    /// `JOIN ... USING (col)`: the one sharded occurrence on each side
    /// whose key is `col` are equal.
    fn using_equality(&mut self, col: &str, left: &[usize], right: &[usize], restricted: &[usize]) {
        let one = |side: &[usize]| {
            let mut m = side
                .iter()
                .copied()
                .filter(|&o| matches!(&self.occ[o].relation, Relation::Sharded(t) if t.key == col));
            let first = m.next()?;
            m.next().is_none().then_some(first)
        };
        if let (Some(x), Some(y)) = (one(left), one(right)) {
            if restricted.contains(&y) {
                self.edges.push((x, y));
            }
            if restricted.contains(&x) {
                self.edges.push((y, x));
            }
        }
    }

    /// The sharded occurrence whose key a column reference names, if that
    /// is certain.
    fn resolve(&self, parts: &[String]) -> Option<usize> {
        let is_key = |o: usize, col: &str| matches!(&self.occ[o].relation, Relation::Sharded(t) if t.key == col);
        match parts {
            // Unqualified: its own block's only sharded occurrence with
            // that key (a column of another block is not certain).
            [col] => {
                let block = self.scopes.last()?;
                let mut m = block.members.iter().copied().filter(|&o| is_key(o, col));
                let first = m.next()?;
                m.next().is_none().then_some(first)
            }
            [.., qual, col] => {
                for scope in self.scopes.iter().rev().filter(|s| !s.hidden) {
                    if let Some((_, o)) = scope.items.iter().rev().find(|(n, _)| n == qual) {
                        return o.filter(|&o| is_key(o, col));
                    }
                }
                None
            }
            [] => None,
        }
    }

    /// Walk the queries nested in `v` (subqueries of expressions), each as
    /// a block of its own that sees the current ones.
    fn children<V: Visit>(&mut self, v: &V) {
        struct Nested {
            depth: usize,
            found: Vec<Query>,
        }
        impl Visitor for Nested {
            type Break = ();
            fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
                if self.depth == 0 {
                    self.found.push(q.clone());
                }
                self.depth += 1;
                ControlFlow::Continue(())
            }
            fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
                self.depth -= 1;
                ControlFlow::Continue(())
            }
        }
        let mut nested = Nested {
            depth: 0,
            found: Vec::new(),
        };
        let _ = v.visit(&mut nested);
        for q in nested.found {
            self.query(&q, false);
        }
    }
}

/// The key values of an INSERT's rows, when the key column is listed and
/// every row gives it as a literal or parameter.
fn insert_keys(ins: &Insert, table: &TableRule) -> Option<Vec<KeyExpr>> {
    let pos = ins
        .columns
        .iter()
        .position(|c| last_ident(c).as_deref() == Some(table.key.as_str()))?;
    let SetExpr::Values(values) = ins.source.as_ref()?.body.as_ref() else {
        return None;
    };
    values
        .rows
        .iter()
        .map(|row| row.content.get(pos).and_then(key_expr))
        .collect()
}

pub fn last_ident(n: &ObjectName) -> Option<String> {
    match n.0.last() {
        Some(ObjectNamePart::Identifier(i)) => Some(normalize_ident(&i.value, i.quote_style)),
        _ => None,
    }
}

pub(super) fn split_and<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
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
    /// `col = v`, `col IN (...)`, `col = ANY(...)`: the column (as written,
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

pub(super) fn strip_casts(e: &Expr) -> &Expr {
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

//! Smaller variants of a unit, for shrinking a difference: each candidate
//! leaves out one thing (a step, a statement, a clause, a join, a row, one
//! side of an AND/OR) or sends a step in the simple protocol. The runner
//! keeps a candidate when the difference persists. Candidates that break
//! the SQL fail the same way on both sides, so they are rejected by that
//! test alone; no validity tracking is needed here.

use super::gen::{Check, Unit};
use super::sql::*;

pub fn candidates(u: &Unit) -> Vec<Unit> {
    let mut out = Vec::new();
    let with_steps = |steps: Vec<Step>| Unit {
        kind: u.kind,
        steps,
        tags: u.tags.clone(),
        check: Check::None,
    };
    let n = u.steps.len();
    // Drop a transaction's BEGIN and its end together: does it happen
    // outside a transaction too?
    if n >= 2 && u.steps[0].tx() == Some(TxCmd::Begin) {
        if let Some(TxCmd::Commit | TxCmd::Rollback) = u.steps[n - 1].tx() {
            out.push(with_steps(u.steps[1..n - 1].to_vec()));
        }
    }
    for i in 0..n {
        // BEGIN and its COMMIT/ROLLBACK go only together (above): a
        // transaction left open would be a different test.
        if matches!(
            u.steps[i].tx(),
            Some(TxCmd::Begin | TxCmd::Commit | TxCmd::Rollback)
        ) {
            continue;
        }
        let mut steps = u.steps.clone();
        steps.remove(i);
        if !steps.is_empty() {
            out.push(with_steps(steps));
        }
    }
    for i in 0..n {
        let step = &u.steps[i];
        if step.proto != Proto::Simple {
            let mut steps = u.steps.clone();
            steps[i].proto = Proto::Simple;
            out.push(with_steps(steps));
        }
        if step.stmts.len() > 1 {
            // Not BEGIN/COMMIT inside a string: a transaction left open
            // would be a different test.
            for j in (0..step.stmts.len()).filter(|&j| !matches!(step.stmts[j], Stmt::Tx(..))) {
                let mut steps = u.steps.clone();
                steps[i].stmts.remove(j);
                out.push(with_steps(steps));
            }
        }
        for j in 0..step.stmts.len() {
            for s in stmt(&step.stmts[j]) {
                let mut steps = u.steps.clone();
                steps[i].stmts[j] = s;
                out.push(with_steps(steps));
            }
        }
    }
    out
}

fn stmt(s: &Stmt) -> Vec<Stmt> {
    match s {
        Stmt::Select(q) => select(q).into_iter().map(Stmt::Select).collect(),
        Stmt::Insert(i) => insert(i).into_iter().map(Stmt::Insert).collect(),
        Stmt::Update(u) => update(u).into_iter().map(Stmt::Update).collect(),
        Stmt::Delete(d) => delete(d).into_iter().map(Stmt::Delete).collect(),
        Stmt::Tx(..) | Stmt::Raw { .. } => vec![],
    }
}

fn where_variants(w: &Option<Expr>) -> Vec<Option<Expr>> {
    match w {
        None => vec![],
        Some(e) => {
            let mut v = vec![None];
            v.extend(expr(e).into_iter().map(Some));
            v
        }
    }
}

fn select(q: &Select) -> Vec<Select> {
    let mut out = Vec::new();
    let mut push = |f: &dyn Fn(&mut Select)| {
        let mut c = q.clone();
        f(&mut c);
        if c != *q {
            out.push(c);
        }
    };
    push(&|c| c.set_op = None);
    push(&|c| c.limit = None);
    push(&|c| c.offset = None);
    if q.fetch == Fetch::Only {
        // The same rows: FETCH FIRST n ROWS ONLY is LIMIT n.
        push(&|c| c.fetch = Fetch::Limit);
    }
    // DISTINCT ON without its ORDER BY picks rows at random.
    if q.limit.is_none() && q.offset.is_none() && q.distinct_on.is_empty() {
        push(&|c| c.order_by.clear());
    }
    push(&|c| c.having = None);
    push(&|c| c.distinct = false);
    push(&|c| c.distinct_on.clear());
    push(&|c| c.suffix = None);
    if q.items.len() > 1 {
        for i in 0..q.items.len() {
            push(&|c| {
                c.items.remove(i);
                // Keep ORDER BY positions inside the smaller select list.
                let n = c.items.len();
                c.order_by.retain(|o| match &o.expr {
                    Expr::Lit(s) => s.parse::<usize>().map_or(true, |p| p <= n),
                    _ => true,
                });
            });
        }
    }
    // A CTE or a joined relation goes only when nothing else names it: a
    // statement the proxy refuses for naming a missing table would still
    // "reproduce" a refusal-related difference, as a useless repro.
    for i in 0..q.ctes.len() {
        let mut c = q.clone();
        let cte = c.ctes.remove(i);
        if !mentions(&Render::new(true).select(&c), &cte.name) {
            out.push(c);
        }
    }
    for i in 1..q.from.len() {
        let mut c = q.clone();
        let f = c.from.remove(i);
        if !mentions(&Render::new(true).select(&c), &f.alias) {
            out.push(c);
        }
    }
    for w in where_variants(&q.where_) {
        let mut c = q.clone();
        c.where_ = w;
        out.push(c);
    }
    // Inside: CTE bodies, subqueries in FROM, the set operation's right side.
    for (i, cte) in q.ctes.iter().enumerate() {
        for b in stmt(&cte.body) {
            let mut c = q.clone();
            *c.ctes[i].body = b;
            out.push(c);
        }
    }
    for (i, f) in q.from.iter().enumerate() {
        if let Source::Sub(inner) = &f.source {
            for s in select(inner) {
                let mut c = q.clone();
                c.from[i].source = Source::Sub(Box::new(s));
                out.push(c);
            }
        }
        if let Some((kind, on)) = &f.join {
            for e in expr(on) {
                let mut c = q.clone();
                c.from[i].join = Some((*kind, e));
                out.push(c);
            }
            if *kind == JoinKind::Left {
                let mut c = q.clone();
                c.from[i].join = Some((JoinKind::Inner, on.clone()));
                out.push(c);
            }
        }
    }
    if let Some((op, rhs)) = &q.set_op {
        for s in select(rhs) {
            let mut c = q.clone();
            c.set_op = Some((op, Box::new(s)));
            out.push(c);
        }
    }
    out
}

/// Smaller expressions: a side of AND/OR, the inside of NOT, a shrunk
/// subquery.
fn expr(e: &Expr) -> Vec<Expr> {
    let mut out = Vec::new();
    match e {
        Expr::And(a, b) | Expr::Or(a, b) => {
            out.push((**a).clone());
            out.push((**b).clone());
            let and = matches!(e, Expr::And(..));
            let mk = |x: Expr, y: Expr| {
                if and {
                    Expr::And(Box::new(x), Box::new(y))
                } else {
                    Expr::Or(Box::new(x), Box::new(y))
                }
            };
            for x in expr(a) {
                out.push(mk(x, (**b).clone()));
            }
            for y in expr(b) {
                out.push(mk((**a).clone(), y));
            }
        }
        Expr::Not(x) => {
            out.push((**x).clone());
            out.extend(expr(x).into_iter().map(|y| Expr::Not(Box::new(y))));
        }
        Expr::InSub(x, q, neg) => {
            out.extend(
                select(q)
                    .into_iter()
                    .map(|s| Expr::InSub(x.clone(), Box::new(s), *neg)),
            );
        }
        Expr::Exists(q, neg) => {
            out.extend(
                select(q)
                    .into_iter()
                    .map(|s| Expr::Exists(Box::new(s), *neg)),
            );
        }
        Expr::Bin(l, op, r) => {
            if let Expr::Scalar(q) = &**r {
                out.extend(
                    select(q)
                        .into_iter()
                        .map(|s| Expr::Bin(l.clone(), op, Box::new(Expr::Scalar(Box::new(s))))),
                );
            }
        }
        Expr::InList(x, list, neg) if list.len() > 1 => {
            for i in 0..list.len() {
                let mut l = list.clone();
                l.remove(i);
                out.push(Expr::InList(x.clone(), l, *neg));
            }
        }
        _ => {}
    }
    out
}

fn insert(i: &Insert) -> Vec<Insert> {
    let mut out = Vec::new();
    if let InsertSource::Values(rows) = &i.source {
        if rows.len() > 1 {
            for k in 0..rows.len() {
                let mut c = i.clone();
                if let InsertSource::Values(r) = &mut c.source {
                    r.remove(k);
                }
                out.push(c);
            }
        }
    }
    if let InsertSource::Select(q) = &i.source {
        // Keep the select list: it must match the INSERT's columns.
        for s in select(q)
            .into_iter()
            .filter(|s| s.items.len() == q.items.len())
        {
            let mut c = i.clone();
            c.source = InsertSource::Select(Box::new(s));
            out.push(c);
        }
    }
    if i.on_conflict.is_some() {
        let mut c = i.clone();
        c.on_conflict = None;
        out.push(c);
    }
    if let Some(OnConflict::Update {
        target,
        sets,
        where_,
    }) = &i.on_conflict
    {
        if where_.is_some() {
            let mut c = i.clone();
            c.on_conflict = Some(OnConflict::Update {
                target: target.clone(),
                sets: sets.clone(),
                where_: None,
            });
            out.push(c);
        }
        if sets.len() > 1 {
            for k in 0..sets.len() {
                let mut s = sets.clone();
                s.remove(k);
                let mut c = i.clone();
                c.on_conflict = Some(OnConflict::Update {
                    target: target.clone(),
                    sets: s,
                    where_: where_.clone(),
                });
                out.push(c);
            }
        }
    }
    if !i.returning.is_empty() {
        let mut c = i.clone();
        c.returning.clear();
        out.push(c);
    }
    out
}

fn update(u: &Update) -> Vec<Update> {
    let mut out = Vec::new();
    if u.sets.len() > 1 {
        for k in 0..u.sets.len() {
            let mut c = u.clone();
            c.sets.remove(k);
            out.push(c);
        }
    }
    if u.from.is_some() {
        let mut c = u.clone();
        c.from = None;
        out.push(c);
    }
    for w in where_variants(&u.where_) {
        let mut c = u.clone();
        c.where_ = w;
        out.push(c);
    }
    if !u.returning.is_empty() {
        let mut c = u.clone();
        c.returning.clear();
        out.push(c);
    }
    out
}

fn delete(d: &Delete) -> Vec<Delete> {
    let mut out = Vec::new();
    if d.using.is_some() {
        let mut c = d.clone();
        c.using = None;
        out.push(c);
    }
    for w in where_variants(&d.where_) {
        let mut c = d.clone();
        c.where_ = w;
        out.push(c);
    }
    if !d.returning.is_empty() {
        let mut c = d.clone();
        c.returning.clear();
        out.push(c);
    }
    out
}

/// Whether `sql` names `name` as a whole word.
fn mentions(sql: &str, name: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    sql.match_indices(name).any(|(i, _)| {
        let before = sql[..i].chars().next_back();
        let after = sql[i + name.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn mentions_whole_words_only() {
        assert!(super::mentions("select c5.x from cte2 c5", "c5"));
        assert!(super::mentions("select c5.x from cte2 c5", "cte2"));
        assert!(!super::mentions("select src5.x from t src5", "c5"));
        assert!(!super::mentions("select x from cte21 c", "cte2"));
    }
}

//! Comparing the proxy's answer with the oracle's, and telling a refusal
//! (a feature the proxy does not have: fine, counted) from a wrong answer
//! (a bug).

use super::exec::{show, ErrInfo, Outcome, StmtOut, Value};
use super::sql::Step;

/// How a problem is classified; shrinking keeps the class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// Both answered, differently.
    Answer,
    /// One side failed where the other succeeded, or with another SQLSTATE.
    Error,
    /// No answer in time, or the connection broke.
    Hang,
    /// Rows not where they belong, or the union differs from the oracle.
    Effects,
    /// A metamorphic check on the proxy alone (TLP, NoREC).
    Metamorphic,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Answer => "different answer",
            Class::Error => "different error/success",
            Class::Hang => "hang or broken connection",
            Class::Effects => "different effects",
            Class::Metamorphic => "metamorphic check failed",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Problem {
    pub class: Class,
    /// What kind of disagreement, finer than the class (for an error
    /// mismatch the two outcomes, `25P02/ok`): shrinking keeps it, so it
    /// does not drift to another bug of the same class.
    pub shape: String,
    pub text: String,
}

impl Problem {
    pub fn new(class: Class, text: String) -> Problem {
        let shape = format!("{class:?}");
        Problem { class, shape, text }
    }
}

fn kind_of(o: &Outcome) -> String {
    match o {
        Outcome::Ok(_) => "ok".into(),
        Outcome::Err(e) => e.code.clone(),
        Outcome::Timeout => "timeout".into(),
        Outcome::Lost(_) => "lost".into(),
    }
}

/// An error the proxy raised itself because it cannot (or will not) run
/// the statement: 0A000, or a routing error that names the shard key or
/// a routing hint, or a detail/hint from shardwire that is not a shard's
/// own error passed on.
pub fn is_refusal(e: &ErrInfo) -> bool {
    if e.code == "0A000" {
        return true;
    }
    let msg = e.message.to_lowercase();
    if msg.contains("shard key") || msg.contains("routing hint") || msg.contains("shardwire") {
        return true;
    }
    let passed_on = |s: &Option<String>| {
        s.as_deref()
            .is_some_and(|d| d.contains("shardwire") && !d.contains("failed on shard"))
    };
    passed_on(&e.detail) || passed_on(&e.hint)
}

/// A refusal's reason with literals and numbers taken out, so equal
/// reasons count together.
pub fn reason(e: &ErrInfo) -> String {
    let mut out = String::new();
    let mut chars = e.message.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                }
                out.push_str("<?>");
            }
            '$' if chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                while chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                    chars.next();
                }
                out.push_str("$N");
            }
            c if c.is_ascii_digit() => {
                while chars
                    .peek()
                    .is_some_and(|d| d.is_ascii_digit() || *d == '.')
                {
                    chars.next();
                }
                out.push('N');
            }
            c => out.push(c),
        }
    }
    format!("{}: {}", e.code, out)
}

fn fmt_row(cols: &[(String, u32)], row: &[Value]) -> String {
    let vals: Vec<String> = row
        .iter()
        .enumerate()
        .map(|(i, v)| show(cols.get(i).map(|c| c.1).unwrap_or(0), v))
        .collect();
    format!("({})", vals.join(", "))
}

fn fmt_rows(cols: &[(String, u32)], rows: &[Vec<Value>], limit: usize) -> String {
    let mut s: Vec<String> = rows.iter().take(limit).map(|r| fmt_row(cols, r)).collect();
    if rows.len() > limit {
        s.push(format!("... {} more", rows.len() - limit));
    }
    format!("[{}]", s.join(", "))
}

/// A short rendering of an outcome for reports.
pub fn summary(o: &Outcome) -> String {
    match o {
        Outcome::Ok(outs) => {
            let parts: Vec<String> = outs
                .iter()
                .map(|s| {
                    let names: Vec<&str> = s.cols.iter().map(|c| c.0.as_str()).collect();
                    if s.cols.is_empty() && s.rows.is_empty() {
                        format!(
                            "ok, count {}",
                            s.count.map_or("-".into(), |c| c.to_string())
                        )
                    } else {
                        format!(
                            "columns ({}), {} rows {}, count {}",
                            names.join(", "),
                            s.rows.len(),
                            fmt_rows(&s.cols, &s.rows, 8),
                            s.count.map_or("-".into(), |c| c.to_string())
                        )
                    }
                })
                .collect();
            parts.join("; ")
        }
        Outcome::Err(e) => e.to_string(),
        Outcome::Timeout => "no answer within the step timeout".into(),
        Outcome::Lost(m) => format!("connection problem: {m}"),
    }
}

fn sorted(rows: &[Vec<Value>]) -> Vec<Vec<Value>> {
    let mut r = rows.to_vec();
    r.sort();
    r
}

/// Rows in `a` not matched in `b` (multiset difference).
fn minus(a: &[Vec<Value>], b: &[Vec<Value>]) -> Vec<Vec<Value>> {
    let mut rest = sorted(b);
    let mut out = Vec::new();
    for r in sorted(a) {
        match rest.binary_search(&r) {
            Ok(i) => {
                rest.remove(i);
            }
            Err(_) => out.push(r),
        }
    }
    out
}

fn compare_out(i: usize, ordered: bool, p: &StmtOut, o: &StmtOut) -> Option<String> {
    let names = |s: &StmtOut| s.cols.iter().map(|c| c.0.clone()).collect::<Vec<_>>();
    if names(p) != names(o) {
        return Some(format!(
            "statement {i}: columns differ: proxy {:?}, oracle {:?}",
            names(p),
            names(o)
        ));
    }
    if p.cols != o.cols {
        return Some(format!(
            "statement {i}: column types differ: proxy {:?}, oracle {:?}",
            p.cols, o.cols
        ));
    }
    let same_rows = if ordered {
        p.rows == o.rows
    } else {
        sorted(&p.rows) == sorted(&o.rows)
    };
    if !same_rows {
        let extra = minus(&p.rows, &o.rows);
        let missing = minus(&o.rows, &p.rows);
        let how = if extra.is_empty() && missing.is_empty() {
            "same rows in another order (the ORDER BY is total)".to_string()
        } else {
            format!(
                "only through the proxy: {}; only on the oracle: {}",
                fmt_rows(&p.cols, &extra, 10),
                fmt_rows(&o.cols, &missing, 10)
            )
        };
        return Some(format!(
            "statement {i}: rows differ ({} via proxy, {} on the oracle): {how}",
            p.rows.len(),
            o.rows.len()
        ));
    }
    if p.count != o.count {
        return Some(format!(
            "statement {i}: row counts differ: proxy {:?}, oracle {:?}",
            p.count, o.count
        ));
    }
    None
}

/// Compares one step's outcomes; `None` when they agree.
pub fn compare(step: &Step, p: &Outcome, o: &Outcome) -> Option<Problem> {
    let problem = |class, text: String| {
        let mut pr = Problem::new(class, text);
        if class == Class::Error {
            pr.shape = format!("{}/{}", kind_of(p), kind_of(o));
        }
        Some(pr)
    };
    match (p, o) {
        (Outcome::Ok(ps), Outcome::Ok(os)) => {
            if ps.len() != os.len() {
                return problem(
                    Class::Answer,
                    format!(
                        "{} results through the proxy, {} on the oracle",
                        ps.len(),
                        os.len()
                    ),
                );
            }
            for (i, (pp, oo)) in ps.iter().zip(os).enumerate() {
                let ordered = step.stmts.get(i).is_some_and(|s| s.ordered());
                if let Some(d) = compare_out(i + 1, ordered, pp, oo) {
                    return problem(Class::Answer, d);
                }
            }
            None
        }
        (Outcome::Err(pe), Outcome::Err(oe)) if pe.code == oe.code => None,
        (Outcome::Timeout | Outcome::Lost(_), _) | (_, Outcome::Timeout | Outcome::Lost(_)) => {
            problem(
                Class::Hang,
                format!("proxy: {}; oracle: {}", summary(p), summary(o)),
            )
        }
        _ => problem(
            Class::Error,
            format!("proxy: {}; oracle: {}", summary(p), summary(o)),
        ),
    }
}

/// All rows of a statement's outcome, sorted (for the metamorphic checks).
pub fn rows_of(o: &Outcome) -> Option<Vec<Vec<Value>>> {
    match o {
        Outcome::Ok(outs) if outs.len() == 1 => Some(sorted(&outs[0].rows)),
        _ => None,
    }
}

/// The single number of a one-row, one-column answer (NULL as 0: the
/// sum of no rows), the same in either protocol.
pub fn number_of(o: &Outcome) -> Option<String> {
    match o {
        Outcome::Ok(outs) if outs.len() == 1 && outs[0].rows.len() == 1 => {
            let s = &outs[0];
            Some(match s.rows[0].first()? {
                None => "0".into(),
                Some(b) if s.cols.first().map_or(0, |c| c.1) == 0 => {
                    String::from_utf8_lossy(b).into_owned()
                }
                v => show(s.cols[0].1, v),
            })
        }
        _ => None,
    }
}

pub fn describe_rows(o: &Outcome) -> String {
    match o {
        Outcome::Ok(outs) if outs.len() == 1 => fmt_rows(&outs[0].cols, &outs[0].rows, 10),
        other => summary(other),
    }
}

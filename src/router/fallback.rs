//! What the router does with SQL that sqlparser cannot read: split a query
//! string into its statements (so one unreadable statement does not hide
//! the others), rewrite COPY option spellings sqlparser does not take, and
//! classify a statement by its keywords. The classifier fails closed: an
//! unreadable statement that names a configured table is refused, unless
//! it is DDL, which goes to every shard like all DDL.

use super::analyze::{plan, refuse, StatementPlan, Tables, NOT_SUPPORTED};
use super::analyze::{Kind, Target};

/// The keyword fallback for a statement sqlparser cannot parse.
pub fn classify_keywords(sql: &str, tables: &Tables) -> StatementPlan {
    let stripped = strip_comments(sql);
    let words: Vec<String> = stripped
        .split(|c: char| c.is_whitespace() || c == ';' || c == '(')
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    let (first, second) = (word(0), word(1));
    // The configured table it names, if any (as a whole word).
    let lower = stripped.to_ascii_lowercase();
    let named = || {
        let mut names = lower
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty());
        names.find_map(|w| tables.get(w).cloned())
    };
    match (first, second) {
        ("vacuum" | "analyze" | "analyse" | "cluster" | "reindex", _) => {
            plan(Kind::Maintenance, true, Target::AllShards)
        }
        // Per-server objects, not the database's shape: the default shard.
        (
            "create" | "alter" | "drop",
            "database" | "subscription" | "publication" | "tablespace" | "system",
        ) => plan(Kind::Other, true, Target::Default),
        ("create", _) if words.iter().any(|w| w == "view" || w == "as") && named().is_some_and(|t| !t.is_reference()) => {
            let t = named().map(|t| t.name.clone()).unwrap_or_default();
            plan(
                Kind::Ddl,
                true,
                refuse(
                    NOT_SUPPORTED,
                    format!(
                        "shardwire could not parse this statement, which creates a view or table from sharded table \"{t}\""
                    ),
                    Some("a view or CREATE TABLE AS over a sharded table would see one shard's rows only"),
                ),
            )
        }
        // What changes the database's shape or rights: every shard.
        ("create" | "alter" | "drop" | "comment" | "grant" | "revoke" | "security" | "reassign", _)
        | ("truncate", _) => plan(Kind::Ddl, true, Target::AllShards),
        // Transaction control only when that is all the statement is.
        ("begin" | "start" | "commit" | "end" | "rollback" | "abort" | "savepoint" | "release", _)
            if named().is_none() =>
        {
            plan(Kind::Transaction, false, Target::Default)
        }
        ("prepare", "transaction") | ("commit" | "rollback", "prepared") => {
            plan(Kind::Transaction, false, Target::Default)
        }
        // A setting's value may spell a table's name; it reads no table.
        ("set" | "reset" | "show", _) => plan(Kind::Set, false, Target::Default),
        _ => match named() {
            // Anything else naming a configured table: where it would have
            // to go (which shards, every copy of a reference table) is not
            // known, so it is refused rather than guessed.
            Some(t) => plan(
                Kind::Other,
                true,
                refuse(
                    NOT_SUPPORTED,
                    format!(
                        "shardwire could not parse this statement, and it names {} table \"{}\"",
                        if t.is_reference() { "reference" } else { "sharded" },
                        t.name
                    ),
                    Some("route it with /* shardwire: shard=... */ or /* shardwire: shard_key=... */"),
                ),
            ),
            None => plan(Kind::Other, true, Target::Default),
        },
    }
}

/// The statements of a query string, as slices of it: split at semicolons
/// outside quotes, dollar quotes, quoted identifiers and comments. Empty
/// statements are left out. A string with a SQL-standard function body
/// (`BEGIN ATOMIC ... END`, whose statements end in semicolons too) is
/// kept whole.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut words_since_begin: u8 = 0;
    let mut saw_begin = false;
    while i < b.len() {
        match b[i] {
            b'\'' => {
                // E'...' strings take backslash escapes.
                let escapes = i > 0
                    && matches!(b[i - 1], b'e' | b'E')
                    && (i < 2 || !(b[i - 2].is_ascii_alphanumeric() || b[i - 2] == b'_'));
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += 1;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i += block_comment_len(&b[i..]),
            b'$' if i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') => {
                // $tag$ ... $tag$ (not a $1 parameter).
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(e)
                        if b[e] == b'$' && !b[i + 1..e].first().is_some_and(u8::is_ascii_digit) =>
                    {
                        let tag = &sql[i..=e];
                        match sql[e + 1..].find(tag) {
                            Some(close) => i = e + 1 + close + tag.len(),
                            None => i = b.len(),
                        }
                    }
                    _ => i += 1,
                }
            }
            b';' => {
                push_piece(&mut out, &sql[start..i]);
                start = i + 1;
                i += 1;
            }
            c if c.is_ascii_alphabetic() => {
                let s = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let w = &sql[s..i];
                if w.eq_ignore_ascii_case("begin") {
                    saw_begin = true;
                    words_since_begin = 0;
                } else if saw_begin {
                    if words_since_begin == 0 && w.eq_ignore_ascii_case("atomic") {
                        return vec![sql];
                    }
                    words_since_begin = words_since_begin.saturating_add(1);
                }
            }
            _ => i += 1,
        }
    }
    push_piece(&mut out, &sql[start.min(sql.len())..]);
    out
}

fn push_piece<'a>(out: &mut Vec<&'a str>, piece: &'a str) {
    if !strip_comments(piece).trim().is_empty() {
        out.push(piece);
    }
}

/// COPY option spellings sqlparser does not take (`FREEZE ON`, as pgbench
/// sends it) rewritten to ones it does, for analysis only; None when there
/// is nothing to rewrite.
pub fn lenient_copy(sql: &str) -> Option<String> {
    let lower = sql.to_ascii_lowercase();
    if !lower.trim_start().starts_with("copy") {
        return None;
    }
    let words: Vec<&str> = sql.split_whitespace().collect();
    let mut out = Vec::with_capacity(words.len());
    let mut changed = false;
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        let next = words.get(i + 1).map(|n| n.to_ascii_lowercase());
        if w.eq_ignore_ascii_case("freeze") || w.eq_ignore_ascii_case("(freeze") {
            if let Some(n) = next {
                let (value, tail) = n.split_at(n.find([',', ')']).unwrap_or(n.len()));
                let flag = match value {
                    "on" | "true" | "1" => Some(""),
                    "off" | "false" | "0" => Some(" false"),
                    _ => None,
                };
                if let Some(flag) = flag {
                    out.push(format!("{w}{flag}{tail}"));
                    changed = true;
                    i += 2;
                    continue;
                }
            }
        }
        out.push(w.to_string());
        i += 1;
    }
    changed.then(|| out.join(" "))
}

fn strip_comments(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    loop {
        let block = rest.find("/*");
        let line = rest.find("--");
        match (block, line) {
            (Some(b), l) if l.is_none_or(|l| b < l) => {
                out.push_str(&rest[..b]);
                rest = rest[b + 2..].split_once("*/").map(|(_, r)| r).unwrap_or("");
                out.push(' ');
            }
            (_, Some(l)) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].split_once('\n').map(|(_, r)| r).unwrap_or("");
                out.push(' ');
            }
            _ => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

/// The length of the block comment `s` starts with (`/*`), through its
/// closing `*/`; block comments nest in PostgreSQL. An unclosed one runs
/// to the end.
pub(super) fn block_comment_len(s: &[u8]) -> usize {
    let mut depth = 0usize;
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'/' && s.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if s[i] == b'*' && s.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                break;
            }
        } else {
            i += 1;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_outside_quotes_and_comments() {
        assert_eq!(
            split_statements("begin; select 1; commit;"),
            ["begin", " select 1", " commit"]
        );
        assert_eq!(
            split_statements("select ';', \"a;b\", $$x;y$$, $t$;$t$ -- c;\n; select 2"),
            ["select ';', \"a;b\", $$x;y$$, $t$;$t$ -- c;\n", " select 2"]
        );
        assert_eq!(
            split_statements("select E'\\';'; select 3"),
            ["select E'\\';'", " select 3"]
        );
        assert_eq!(
            split_statements("select 'it''s;'; /* a; /* b; */ c; */ select $1"),
            ["select 'it''s;'", " /* a; /* b; */ c; */ select $1"]
        );
        assert_eq!(split_statements(" ; ;select 1;;"), ["select 1"]);
        let atomic =
            "create function f() returns int language sql begin atomic select 1; end; select 2";
        assert_eq!(split_statements(atomic), [atomic]);
    }
}

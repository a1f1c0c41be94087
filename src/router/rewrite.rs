//! SQL the proxy writes for shards out of a client's statement: a
//! multi-row INSERT cut into one INSERT per shard, and the data format a
//! COPY FROM STDIN announces (so its rows can be cut by key). Parsing
//! stays here, in router/: execute/ and session/ only use the results.

use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions, visit_expressions_mut, CopyLegacyCsvOption, CopyLegacyOption, CopyOption,
    Expr, SetExpr, Statement, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// The INSERT for each shard with only that shard's rows (`row_shards`: row
/// index -> shard, from the router's analysis of the same text).
pub fn split_insert(
    sql: &str,
    row_shards: &[usize],
    shards: &[usize],
) -> Result<Vec<(usize, String)>, String> {
    Ok(split_statements(sql, row_shards, shards)?
        .into_iter()
        .map(|(s, st)| (s, st.to_string()))
        .collect())
}

/// One shard's part of a split INSERT with parameters (the extended
/// protocol): its SQL, whose parameters are numbered from `$1` again, and
/// for each of them (in order) the index of the client's parameter it
/// takes. PostgreSQL cannot type a parameter a statement does not use, so
/// each shard gets only the parameters of its rows (and of the shared
/// parts: ON CONFLICT, RETURNING).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInsert {
    pub shard: usize,
    pub sql: String,
    pub params: Vec<usize>,
}

/// [`split_insert`] for a statement with `$n` parameters.
pub fn split_insert_params(
    sql: &str,
    row_shards: &[usize],
    shards: &[usize],
) -> Result<Vec<ShardInsert>, String> {
    let mut out = Vec::new();
    for (shard, mut st) in split_statements(sql, row_shards, shards)? {
        let mut used: Vec<usize> = Vec::new();
        let mut bad = None;
        let _ = visit_expressions(&st, |e: &Expr| {
            if let Expr::Value(v) = e {
                if let Value::Placeholder(p) = &v.value {
                    match placeholder_index(p) {
                        Some(i) => used.push(i),
                        None => bad = Some(p.clone()),
                    }
                }
            }
            ControlFlow::<()>::Continue(())
        });
        if let Some(p) = bad {
            return Err(format!("parameter {p} cannot be renumbered"));
        }
        used.sort_unstable();
        used.dedup();
        let _ = visit_expressions_mut(&mut st, |e: &mut Expr| {
            if let Expr::Value(v) = e {
                if let Value::Placeholder(p) = &mut v.value {
                    if let Some(new) =
                        placeholder_index(p).and_then(|i| used.binary_search(&i).ok())
                    {
                        *p = format!("${}", new + 1);
                    }
                }
            }
            ControlFlow::<()>::Continue(())
        });
        out.push(ShardInsert {
            shard,
            sql: st.to_string(),
            params: used,
        });
    }
    Ok(out)
}

/// `$3` -> 2.
fn placeholder_index(p: &str) -> Option<usize> {
    p.strip_prefix('$')?.parse::<usize>().ok()?.checked_sub(1)
}

/// Each shard's INSERT statement with only its rows.
fn split_statements(
    sql: &str,
    row_shards: &[usize],
    shards: &[usize],
) -> Result<Vec<(usize, Statement)>, String> {
    let parsed = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| e.to_string())?;
    let [Statement::Insert(ins)] = &parsed[..] else {
        return Err("not a single INSERT statement".into());
    };
    let rows = match ins.source.as_deref().map(|q| q.body.as_ref()) {
        Some(SetExpr::Values(v)) => &v.rows,
        _ => return Err("only INSERT ... VALUES can be split".into()),
    };
    if rows.len() != row_shards.len() {
        return Err("the rows do not match the routing analysis".into());
    }
    let mut out = Vec::with_capacity(shards.len());
    for &shard in shards {
        let mut one = ins.clone();
        if let Some(SetExpr::Values(v)) = one.source.as_deref_mut().map(|q| q.body.as_mut()) {
            v.rows = rows
                .iter()
                .zip(row_shards)
                .filter(|(_, s)| **s == shard)
                .map(|(r, _)| r.clone())
                .collect();
        }
        out.push((shard, Statement::Insert(one)));
    }
    Ok(out)
}

/// How a COPY's data is written: text or CSV and their options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFormat {
    pub csv: bool,
    pub delimiter: u8,
    pub quote: u8,
    pub escape: u8,
    pub null: Vec<u8>,
    /// The first line is a header (CSV).
    pub header: bool,
}

impl CopyFormat {
    /// The format of a `COPY ... FROM STDIN` statement; binary is refused.
    pub fn from_sql(sql: &str) -> Result<Self, String> {
        let parsed = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .or_else(|e| match crate::router::fallback::lenient_copy(sql) {
                Some(s) => Parser::parse_sql(&PostgreSqlDialect {}, &s),
                None => Err(e),
            })
            .map_err(|e| e.to_string())?;
        let [Statement::Copy {
            options,
            legacy_options,
            ..
        }] = &parsed[..]
        else {
            return Err("not a single COPY statement".into());
        };
        let mut csv = false;
        let mut delimiter = None;
        let mut quote = b'"';
        let mut escape = None;
        let mut null = None;
        let mut header = false;
        let byte = |c: char| -> Result<u8, String> {
            if c.is_ascii() {
                Ok(c as u8)
            } else {
                Err(format!("non-ASCII COPY option character {c:?}"))
            }
        };
        for o in options {
            match o {
                CopyOption::Format(f) => match f.value.to_ascii_lowercase().as_str() {
                    "csv" => csv = true,
                    "text" => csv = false,
                    other => return Err(format!("COPY format \"{other}\" cannot be split by key")),
                },
                CopyOption::Delimiter(c) => delimiter = Some(byte(*c)?),
                CopyOption::Null(s) => null = Some(s.as_bytes().to_vec()),
                CopyOption::Header(h) => header = *h,
                CopyOption::Quote(c) => quote = byte(*c)?,
                CopyOption::Escape(c) => escape = Some(byte(*c)?),
                _ => {}
            }
        }
        for o in legacy_options {
            match o {
                CopyLegacyOption::Binary => {
                    return Err("COPY format \"binary\" cannot be split by key".into())
                }
                CopyLegacyOption::Delimiter(c) => delimiter = Some(byte(*c)?),
                CopyLegacyOption::Null(s) => null = Some(s.as_bytes().to_vec()),
                CopyLegacyOption::Csv(opts) => {
                    csv = true;
                    for c in opts {
                        match c {
                            CopyLegacyCsvOption::Header => header = true,
                            CopyLegacyCsvOption::Quote(q) => quote = byte(*q)?,
                            CopyLegacyCsvOption::Escape(e) => escape = Some(byte(*e)?),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(CopyFormat {
            csv,
            delimiter: delimiter.unwrap_or(if csv { b',' } else { b'\t' }),
            quote,
            escape: escape.unwrap_or(quote),
            null: null.unwrap_or_else(|| if csv { Vec::new() } else { b"\\N".to_vec() }),
            header,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_insert_rows_by_shard() {
        let w = split_insert(
            "insert into t (id, v) values (1, 'a'), (2, 'b'), (3, 'c') returning id",
            &[0, 1, 0],
            &[0, 1],
        )
        .unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(
            w[0].1,
            "INSERT INTO t (id, v) VALUES (1, 'a'), (3, 'c') RETURNING id"
        );
        assert_eq!(w[1].1, "INSERT INTO t (id, v) VALUES (2, 'b') RETURNING id");
        assert!(split_insert("insert into t (id) select 1", &[0], &[0]).is_err());
        assert!(split_insert("insert into t (id) values (1)", &[0, 1], &[0, 1]).is_err());
    }

    #[test]
    fn split_insert_renumbers_each_shards_parameters() {
        let w = split_insert_params(
            "insert into t (id, v) values ($1, $2), ($3, $4), ($5, $2) on conflict (id) do update set v = $6 returning id",
            &[0, 1, 0],
            &[0, 1],
        )
        .unwrap();
        assert_eq!(
            w[0],
            ShardInsert {
                shard: 0,
                sql: "INSERT INTO t (id, v) VALUES ($1, $2), ($3, $2) ON CONFLICT(id) DO UPDATE SET v = $4 RETURNING id".into(),
                params: vec![0, 1, 4, 5],
            }
        );
        assert_eq!(
            w[1],
            ShardInsert {
                shard: 1,
                sql: "INSERT INTO t (id, v) VALUES ($1, $2) ON CONFLICT(id) DO UPDATE SET v = $3 RETURNING id".into(),
                params: vec![2, 3, 5],
            }
        );
    }

    #[test]
    fn formats_from_sql() {
        let f = CopyFormat::from_sql("copy t from stdin").unwrap();
        assert!(!f.csv && f.delimiter == b'\t' && f.null == b"\\N");
        let f = CopyFormat::from_sql("COPY t (a, b) FROM STDIN WITH (FORMAT csv, HEADER)").unwrap();
        assert!(f.csv && f.header && f.delimiter == b',' && f.null.is_empty());
        let f = CopyFormat::from_sql("copy t from stdin csv header delimiter ';'").unwrap();
        assert!(f.csv && f.header && f.delimiter == b';');
        assert!(CopyFormat::from_sql("copy t from stdin (format binary)").is_err());
        let f = CopyFormat::from_sql("copy pgbench_accounts from stdin with (freeze on)").unwrap();
        assert!(!f.csv);
        assert_eq!(
            crate::router::fallback::lenient_copy("copy t from stdin with (freeze on, format csv)")
                .as_deref(),
            Some("copy t from stdin with (freeze, format csv)")
        );
    }
}

//! Parameter types the SQL text gives: PostgreSQL types a parameter the
//! client left unspecified by an explicit cast on it.

use sqlparser::ast::{Expr, Statement, Value};

use super::oid;
use super::Param;

/// What the SQL says of each parameter's type: PostgreSQL gives a
/// parameter the client left unspecified the type of an explicit cast on
/// it (`$1::float8`, `CAST($1 AS bigint)`). Part of the analysis, so it is
/// worked out once per SQL text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamCasts(Box<[u32]>);

/// PostgreSQL's limit on parameters of one statement.
const MAX_PARAMS: usize = 65_535;

impl ParamCasts {
    /// Collect the casts on `$n` of parsed statements. A parameter cast to
    /// one type everywhere it appears has that type; one cast to several
    /// types, or also used uncast, gets [`oid::AMBIGUOUS`] (its type then
    /// depends on the order PostgreSQL analyzes the statement in).
    pub fn collect(statements: &[Statement]) -> ParamCasts {
        // Per parameter: uses, casts directly on it, and their type.
        let mut seen: Vec<(u32, u32, u32)> = Vec::new();
        let mut note = |i: usize, cast: Option<u32>| {
            if i >= MAX_PARAMS {
                return;
            }
            if seen.len() <= i {
                seen.resize(i + 1, (0, 0, oid::UNSPECIFIED));
            }
            let s = &mut seen[i];
            match cast {
                None => s.0 += 1,
                Some(t) => {
                    s.1 += 1;
                    s.2 = if s.1 == 1 || s.2 == t {
                        t
                    } else {
                        oid::AMBIGUOUS
                    };
                }
            }
        };
        let mut visit = |e: &Expr| {
            match e {
                Expr::Value(v) => {
                    if let Value::Placeholder(p) = &v.value {
                        if let Some(i) = placeholder_index(p) {
                            note(i, None);
                        }
                    }
                }
                Expr::Cast {
                    expr, data_type, ..
                } => {
                    let mut inner = expr.as_ref();
                    while let Expr::Nested(x) = inner {
                        inner = x;
                    }
                    if let Expr::Value(v) = inner {
                        if let Value::Placeholder(p) = &v.value {
                            if let Some(i) = placeholder_index(p) {
                                note(i, Some(cast_oid(&data_type.to_string())));
                            }
                        }
                    }
                }
                _ => {}
            }
            std::ops::ControlFlow::<()>::Continue(())
        };
        for st in statements {
            let _ = sqlparser::ast::visit_expressions(st, &mut visit);
        }
        if seen.iter().all(|(_, casts, _)| *casts == 0) {
            // Nothing cast (most statements): nothing to look at per Bind.
            return ParamCasts::default();
        }
        ParamCasts(
            seen.into_iter()
                .map(|(uses, casts, t)| match (uses, casts) {
                    (_, 0) => oid::UNSPECIFIED,
                    // Every use is under a cast (a use is also visited as
                    // the cast's operand).
                    (u, c) if u == c => t,
                    _ => oid::AMBIGUOUS,
                })
                .collect(),
        )
    }

    /// The cast type of parameter `i` (zero-based), or 0.
    pub fn get(&self, i: usize) -> u32 {
        self.0.get(i).copied().unwrap_or(oid::UNSPECIFIED)
    }

    /// `params` with each unspecified type taken from its cast; `None`
    /// when no cast applies (the common case costs no copy).
    pub fn apply<'a>(&self, params: &[Param<'a>]) -> Option<Vec<Param<'a>>> {
        let applies = |(i, p): (usize, &Param<'_>)| {
            p.type_oid == oid::UNSPECIFIED && self.get(i) != oid::UNSPECIFIED
        };
        if self.0.is_empty() || !params.iter().enumerate().any(applies) {
            return None;
        }
        Some(
            params
                .iter()
                .enumerate()
                .map(|(i, p)| Param {
                    type_oid: if p.type_oid == oid::UNSPECIFIED {
                        self.get(i)
                    } else {
                        p.type_oid
                    },
                    ..*p
                })
                .collect(),
        )
    }
}

/// `$3` -> 2.
fn placeholder_index(p: &str) -> Option<usize> {
    p.strip_prefix('$')?.parse::<usize>().ok()?.checked_sub(1)
}

/// The OID of a type named in a cast, as sqlparser prints it (`BIGINT`,
/// `DOUBLE PRECISION`, `NUMERIC(10,2)`, `pg_catalog.int8`, `INT8[]`).
fn cast_oid(printed: &str) -> u32 {
    let lower = printed.trim().to_ascii_lowercase();
    if let Some(elem) = lower.strip_suffix("[]") {
        return match cast_oid(elem) {
            oid::INT2 => oid::INT2_ARRAY,
            oid::INT4 => oid::INT4_ARRAY,
            oid::INT8 => oid::INT8_ARRAY,
            oid::FLOAT4 => oid::FLOAT4_ARRAY,
            oid::FLOAT8 => oid::FLOAT8_ARRAY,
            oid::NUMERIC => oid::NUMERIC_ARRAY,
            oid::TEXT => oid::TEXT_ARRAY,
            oid::VARCHAR => oid::VARCHAR_ARRAY,
            oid::BPCHAR => oid::BPCHAR_ARRAY,
            oid::NAME => oid::NAME_ARRAY,
            oid::UUID => oid::UUID_ARRAY,
            oid::DATE => oid::DATE_ARRAY,
            oid::TIMESTAMP => oid::TIMESTAMP_ARRAY,
            oid::TIMESTAMPTZ => oid::TIMESTAMPTZ_ARRAY,
            _ => oid::OTHER,
        };
    }
    // A quoted name (`"int8"`) is taken as written: not mapped.
    let name = lower.trim_start_matches("pg_catalog.");
    // `float(p)`: float4 up to 24 bits of precision, float8 beyond.
    if let Some(p) = name
        .strip_prefix("float(")
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|p| p.trim().parse::<u32>().ok())
    {
        return if p <= 24 { oid::FLOAT4 } else { oid::FLOAT8 };
    }
    let base = name.split('(').next().unwrap_or("").trim();
    match base {
        "smallint" | "int2" => oid::INT2,
        "integer" | "int" | "int4" => oid::INT4,
        "bigint" | "int8" => oid::INT8,
        "real" | "float4" => oid::FLOAT4,
        "double precision" | "double" | "float8" | "float" => oid::FLOAT8,
        "numeric" | "decimal" | "dec" => oid::NUMERIC,
        "text" => oid::TEXT,
        "varchar" | "character varying" | "char varying" => oid::VARCHAR,
        "char" | "character" | "bpchar" => oid::BPCHAR,
        "name" => oid::NAME,
        "uuid" => oid::UUID,
        "date" => oid::DATE,
        "timestamp" | "timestamp without time zone" => oid::TIMESTAMP,
        "timestamptz" | "timestamp with time zone" => oid::TIMESTAMPTZ,
        _ => oid::OTHER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn casts(sql: &str) -> Vec<u32> {
        let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        let c = ParamCasts::collect(&stmts);
        (0..4).map(|i| c.get(i)).collect()
    }

    #[test]
    fn casts_name_types() {
        use oid::*;
        for (cast, want) in [
            ("int2", INT2),
            ("smallint", INT2),
            ("int", INT4),
            ("integer", INT4),
            ("int4", INT4),
            ("bigint", INT8),
            ("pg_catalog.int8", INT8),
            ("real", FLOAT4),
            ("float4", FLOAT4),
            ("float(24)", FLOAT4),
            ("float(25)", FLOAT8),
            ("float", FLOAT8),
            ("double precision", FLOAT8),
            ("float8", FLOAT8),
            ("numeric", NUMERIC),
            ("numeric(10, 2)", NUMERIC),
            ("decimal(5)", NUMERIC),
            ("text", TEXT),
            ("varchar(10)", VARCHAR),
            ("character varying", VARCHAR),
            ("char(3)", BPCHAR),
            ("bpchar", BPCHAR),
            ("name", NAME),
            ("uuid", UUID),
            ("date", DATE),
            ("timestamp", TIMESTAMP),
            ("timestamptz", TIMESTAMPTZ),
            ("timestamp with time zone", TIMESTAMPTZ),
            ("bigint[]", INT8_ARRAY),
            ("int8[]", INT8_ARRAY),
            ("float8[]", FLOAT8_ARRAY),
            ("numeric[]", NUMERIC_ARRAY),
            ("text[]", TEXT_ARRAY),
            ("uuid[]", UUID_ARRAY),
            ("my_enum", OTHER),
            ("\"int8\"", OTHER),
            ("bool[]", OTHER),
        ] {
            let sql = format!("select * from t where k = $1::{cast}");
            assert_eq!(casts(&sql)[0], want, "{cast}");
            let sql = format!("select * from t where k = CAST($1 AS {cast})");
            assert_eq!(casts(&sql)[0], want, "CAST AS {cast}");
        }
    }

    #[test]
    fn every_use_must_agree() {
        use oid::*;
        assert_eq!(casts("select * from t where k = $2"), [0, 0, 0, 0]);
        assert_eq!(
            casts("update t set v = $1::text where k = $2::int8 and j = $3"),
            [TEXT, INT8, 0, 0]
        );
        // Cast the same everywhere; nested parentheses.
        assert_eq!(
            casts("select ($1)::float8 from t where k = $1::float8")[0],
            FLOAT8
        );
        // An outer cast of a cast: the parameter's type is the inner one.
        assert_eq!(
            casts("select * from t where k = $1::float8::int8")[0],
            FLOAT8
        );
        // Differently, or also uncast: ambiguous.
        assert_eq!(
            casts("select $1::int4 from t where k = $1::int8")[0],
            AMBIGUOUS
        );
        assert_eq!(casts("select $1::float8 from t where k = $1")[0], AMBIGUOUS);
        // In every statement of the string, in INSERT rows, in ANY.
        assert_eq!(
            casts(
                "insert into t (k) values ($1::numeric); select * from t where k = any($2::int8[])"
            ),
            [NUMERIC, INT8_ARRAY, 0, 0]
        );
    }

    #[test]
    fn apply_fills_only_unspecified_types() {
        let stmts =
            Parser::parse_sql(&PostgreSqlDialect {}, "select $1::float8, $2::int4, $3").unwrap();
        let c = ParamCasts::collect(&stmts);
        let v = [0u8; 8];
        let p = |t: u32| Param {
            value: Some(&v),
            binary: true,
            type_oid: t,
        };
        let out = c.apply(&[p(0), p(oid::INT8), p(0)]).unwrap();
        let types: Vec<u32> = out.iter().map(|p| p.type_oid).collect();
        assert_eq!(types, [oid::FLOAT8, oid::INT8, 0]);
        // Nothing to fill: no copy.
        assert!(c.apply(&[p(oid::FLOAT8), p(oid::INT4)]).is_none());
        assert!(ParamCasts::default().apply(&[p(0)]).is_none());
    }
}

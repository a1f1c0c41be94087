//! Runs one step on one connection and records what came back, in a form
//! both sides can be compared in: column names and types, each value's
//! raw bytes (text in the simple protocol, binary in the extended one, as
//! tokio-postgres asks for), row counts, or the error's SQLSTATE and text.
//!
//! Parameters are encoded here by hand, so the fuzzer controls their wire
//! format: text or binary for every type, including `numeric` (which
//! tokio-postgres cannot send without an extra crate) and arrays.

use std::error::Error;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_util::TryStreamExt;
use postgres_protocol::types as pgt;
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::sql::{PType, PValue, Param, Proto, Render, Step, Stmt};
use crate::common::numeric_send;

/// How long one step may take before it counts as hung.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrInfo {
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for ErrInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ERROR {}: {}", self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (DETAIL: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (HINT: {h})")?;
        }
        Ok(())
    }
}

pub type Value = Option<Vec<u8>>;

/// One statement's answer: columns (name, type OID; OID 0 in the simple
/// protocol, which does not say), rows, and the command's row count.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StmtOut {
    pub cols: Vec<(String, u32)>,
    pub rows: Vec<Vec<Value>>,
    pub count: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(Vec<StmtOut>),
    Err(ErrInfo),
    /// No answer within STEP_TIMEOUT.
    Timeout,
    /// Not a server error: the connection broke, or the client library
    /// could not make sense of what came back.
    Lost(String),
}

impl Outcome {
    pub fn err(&self) -> Option<&ErrInfo> {
        match self {
            Outcome::Err(e) => Some(e),
            _ => None,
        }
    }
}

fn outcome_of_error(e: tokio_postgres::Error) -> Outcome {
    match e.as_db_error() {
        Some(d) => Outcome::Err(ErrInfo {
            code: d.code().code().to_string(),
            message: d.message().to_string(),
            detail: d.detail().map(str::to_string),
            hint: d.hint().map(str::to_string),
        }),
        None => Outcome::Lost(e.to_string()),
    }
}

pub async fn run_step(client: &Client, step: &Step) -> Outcome {
    let (sql, params) = step.render();
    match tokio::time::timeout(STEP_TIMEOUT, run(client, step.proto, &sql, &params)).await {
        Ok(o) => o,
        Err(_) => Outcome::Timeout,
    }
}

async fn run(client: &Client, proto: Proto, sql: &str, params: &[Param]) -> Outcome {
    match proto {
        Proto::Simple => match client.simple_query(sql).await {
            Ok(msgs) => Outcome::Ok(simple_outs(&msgs)),
            Err(e) => outcome_of_error(e),
        },
        Proto::Prepared => {
            let types: Vec<Type> = params.iter().map(declared_type).collect();
            let stmt = match client.prepare_typed(sql, &types).await {
                Ok(s) => s,
                Err(e) => return outcome_of_error(e),
            };
            let cols: Vec<(String, u32)> = stmt
                .columns()
                .iter()
                .map(|c| (c.name().to_string(), c.type_().oid()))
                .collect();
            let binds: Vec<Bind<'_>> = params.iter().map(Bind).collect();
            match client.query_raw(&stmt, binds.iter()).await {
                Ok(stream) => collect(stream, Some(cols)).await,
                Err(e) => outcome_of_error(e),
            }
        }
        Proto::Pipelined => {
            let typed: Vec<(Bind<'_>, Type)> =
                params.iter().map(|p| (Bind(p), declared_type(p))).collect();
            match client
                .query_typed_raw(sql, typed.iter().map(|(b, t)| (b as &dyn ToSql, t.clone())))
                .await
            {
                Ok(stream) => collect(stream, None).await,
                Err(e) => outcome_of_error(e),
            }
        }
    }
}

async fn collect(stream: tokio_postgres::RowStream, cols: Option<Vec<(String, u32)>>) -> Outcome {
    let mut stream = std::pin::pin!(stream);
    let mut out = StmtOut {
        cols: cols.unwrap_or_default(),
        ..Default::default()
    };
    loop {
        match stream.try_next().await {
            Ok(Some(row)) => {
                if out.cols.is_empty() {
                    out.cols = row
                        .columns()
                        .iter()
                        .map(|c| (c.name().to_string(), c.type_().oid()))
                        .collect();
                }
                let mut vals = Vec::with_capacity(row.len());
                for i in 0..row.len() {
                    match row.try_get::<_, Raw>(i) {
                        Ok(Raw(v)) => vals.push(v),
                        Err(e) => return Outcome::Lost(format!("column {i}: {e}")),
                    }
                }
                out.rows.push(vals);
            }
            Ok(None) => break,
            Err(e) => return outcome_of_error(e),
        }
    }
    out.count = stream.rows_affected();
    Outcome::Ok(vec![out])
}

fn simple_outs(msgs: &[SimpleQueryMessage]) -> Vec<StmtOut> {
    let mut outs = Vec::new();
    let mut cur: Option<StmtOut> = None;
    for m in msgs {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                cur = Some(StmtOut {
                    cols: cols.iter().map(|c| (c.name().to_string(), 0)).collect(),
                    ..Default::default()
                });
            }
            SimpleQueryMessage::Row(r) => {
                let row = (0..r.len())
                    .map(|i| r.get(i).map(|s| s.as_bytes().to_vec()))
                    .collect();
                cur.get_or_insert_with(StmtOut::default).rows.push(row);
            }
            SimpleQueryMessage::CommandComplete(n) => {
                let mut o = cur.take().unwrap_or_default();
                o.count = Some(*n);
                outs.push(o);
            }
            _ => {}
        }
    }
    if let Some(o) = cur {
        outs.push(o);
    }
    outs
}

/// Whether PostgreSQL accepts each statement of `step` (parse analysis
/// only: Parse and Describe, nothing runs): `false` on a class-42 error
/// (syntax, undefined or ambiguous names, types).
pub async fn valid(client: &Client, step: &Step) -> bool {
    for stmt in &step.stmts {
        if matches!(stmt, Stmt::Tx(..) | Stmt::Raw { .. }) {
            continue;
        }
        let mut r = Render::new(false);
        let sql = r.stmt(stmt);
        let types: Vec<Type> = r.params.iter().map(declared_type).collect();
        match tokio::time::timeout(STEP_TIMEOUT, client.prepare_typed(&sql, &types)).await {
            Ok(Err(e)) if e.code().is_some_and(|c| c.code().starts_with("42")) => return false,
            _ => {}
        }
    }
    true
}

// ---------------------------------------------------------------------------
// Values out: raw bytes of any type

struct Raw(Value);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A value for humans: text as is, binary decoded for the common types.
pub fn show(oid: u32, v: &Value) -> String {
    let Some(b) = v else {
        return "NULL".into();
    };
    let be = |n: usize| -> Option<i64> {
        (b.len() == n).then(|| match n {
            2 => i16::from_be_bytes([b[0], b[1]]) as i64,
            4 => i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64,
            _ => i64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
        })
    };
    let text = || format!("'{}'", String::from_utf8_lossy(b));
    match oid {
        0 | 25 | 1043 | 19 | 1042 => text(),
        16 if b.len() == 1 => (b[0] != 0).to_string(),
        21 => be(2).map(|n| n.to_string()).unwrap_or_else(|| hex(b)),
        23 => be(4).map(|n| n.to_string()).unwrap_or_else(|| hex(b)),
        20 => be(8).map(|n| n.to_string()).unwrap_or_else(|| hex(b)),
        701 if b.len() == 8 => f64::from_be_bytes(b[..8].try_into().expect("8 bytes")).to_string(),
        1700 => decode_numeric(b).unwrap_or_else(|| hex(b)),
        2950 => match <[u8; 16]>::try_from(b.as_slice()) {
            Ok(u) => shardwire::router::display_key(&shardwire::sharding::KeyValue::Uuid(u)),
            Err(_) => hex(b),
        },
        _ => format!("<oid {oid}> {}", hex(b)),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn decode_numeric(b: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<i16> {
        Some(i16::from_be_bytes([*b.get(2 * i)?, *b.get(2 * i + 1)?]))
    };
    let ndigits = word(0)? as usize;
    let weight = word(1)? as i32;
    let sign = word(2)? as u16;
    let dscale = word(3)? as usize;
    if sign == 0xC000 {
        return Some("NaN".into());
    }
    let digits: Vec<i16> = (0..ndigits).map(|i| word(4 + i)).collect::<Option<_>>()?;
    let digit = |i: i32| -> i16 {
        if i >= 0 {
            digits.get(i as usize).copied().unwrap_or(0)
        } else {
            0
        }
    };
    let mut int = String::new();
    if weight < 0 {
        int.push('0');
    } else {
        for w in 0..=weight {
            if w == 0 {
                int = digit(0).to_string();
            } else {
                int.push_str(&format!("{:04}", digit(w)));
            }
        }
    }
    let mut frac = String::new();
    let mut i = weight + 1;
    while frac.len() < dscale {
        frac.push_str(&format!("{:04}", digit(i)));
        i += 1;
    }
    frac.truncate(dscale);
    let sign = if sign == 0x4000 { "-" } else { "" };
    Some(if dscale > 0 {
        format!("{sign}{int}.{frac}")
    } else {
        format!("{sign}{int}")
    })
}

// ---------------------------------------------------------------------------
// Values in: parameters in the format the generator chose

pub fn declared_type(p: &Param) -> Type {
    if !p.declared {
        return Type::UNKNOWN;
    }
    match p.ty {
        PType::Int2 => Type::INT2,
        PType::Int4 => Type::INT4,
        PType::Int8 => Type::INT8,
        PType::Float8 => Type::FLOAT8,
        PType::Numeric => Type::NUMERIC,
        PType::Text => Type::TEXT,
        PType::Uuid => Type::UUID,
        PType::Int4Arr => Type::INT4_ARRAY,
        PType::Int8Arr => Type::INT8_ARRAY,
        PType::Float8Arr => Type::FLOAT8_ARRAY,
        PType::TextArr => Type::TEXT_ARRAY,
        PType::UuidArr => Type::UUID_ARRAY,
    }
}

#[derive(Debug)]
struct Bind<'a>(&'a Param);

type BoxErr = Box<dyn Error + Sync + Send>;

impl ToSql for Bind<'_> {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxErr> {
        let p = self.0;
        let Some(v) = &p.value else {
            return Ok(IsNull::Yes);
        };
        if !p.binary {
            out.put_slice(p.text().unwrap_or_default().as_bytes());
            return Ok(IsNull::No);
        }
        match v {
            PValue::Scalar(s) => encode_scalar(p.ty, s, out)?,
            PValue::Array(items) => {
                let (elem, oid) = match p.ty {
                    PType::Int4Arr => (PType::Int4, Type::INT4.oid()),
                    PType::Int8Arr => (PType::Int8, Type::INT8.oid()),
                    PType::Float8Arr => (PType::Float8, Type::FLOAT8.oid()),
                    PType::TextArr => (PType::Text, Type::TEXT.oid()),
                    PType::UuidArr => (PType::Uuid, Type::UUID.oid()),
                    other => return Err(format!("{other:?} is not an array type").into()),
                };
                let dims = if items.is_empty() {
                    vec![]
                } else {
                    vec![pgt::ArrayDimension {
                        len: items.len() as i32,
                        lower_bound: 1,
                    }]
                };
                pgt::array_to_sql(
                    dims,
                    oid,
                    items.iter(),
                    |s, buf| {
                        encode_scalar(elem, s, buf)?;
                        Ok(postgres_protocol::IsNull::No)
                    },
                    out,
                )?;
            }
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> tokio_postgres::types::Format {
        if self.0.binary {
            tokio_postgres::types::Format::Binary
        } else {
            tokio_postgres::types::Format::Text
        }
    }

    to_sql_checked!();
}

fn encode_scalar(ty: PType, s: &str, out: &mut BytesMut) -> Result<(), BoxErr> {
    match ty {
        PType::Int2 => out.put_i16(s.parse()?),
        PType::Int4 => out.put_i32(s.parse()?),
        PType::Int8 => out.put_i64(s.parse()?),
        PType::Float8 => out.put_f64(s.parse()?),
        PType::Numeric => out.put_slice(&numeric_send(s)?),
        PType::Text => out.put_slice(s.as_bytes()),
        PType::Uuid => {
            let h: String = s.chars().filter(|c| *c != '-').collect();
            if h.len() != 32 {
                return Err(format!("bad uuid {s}").into());
            }
            for i in 0..16 {
                out.put_u8(u8::from_str_radix(&h[2 * i..2 * i + 2], 16)?);
            }
        }
        other => return Err(format!("{other:?} is not a scalar type").into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_round_trips() {
        for s in [
            "0", "7", "-7", "7.0", "12345.5", "0.05", "-12.50", "10000", "140.5",
        ] {
            let b = numeric_send(s).expect(s);
            assert_eq!(decode_numeric(&b).as_deref(), Some(s), "{s}");
        }
    }
}

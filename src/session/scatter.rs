//! Merging the answers of several shards to one cross-shard SELECT (simple
//! query protocol): plain rows are concatenated in shard order; a row of
//! count/sum/min/max aggregates is combined into one row; rows with ORDER
//! BY / LIMIT / OFFSET are merged in order by `execute::merge`.
//!
//! Values are in text format (the simple protocol). Sums are added as
//! exact decimals (int8 and numeric results); min/max compare integers,
//! numeric and floats. Anything else is refused with 0A000 rather than
//! guessed (text min/max would depend on the column's collation).

use std::cmp::Ordering;

use bytes::{BufMut, BytesMut};

use crate::backend::conn::Collected;
use crate::execute::merge::{bad, columns, malformed};
use crate::protocol::{self, be, PgError};
use crate::router::{Agg, Merge};

const INT2: i32 = 21;
const INT4: i32 = 23;
const INT8: i32 = 20;
const NUMERIC: i32 = 1700;
const FLOAT4: i32 = 700;
const FLOAT8: i32 = 701;

/// The client's frames (without ReadyForQuery) for the shards' answers.
pub(super) fn merge_answers(merge: &Merge, results: &[Collected]) -> Result<BytesMut, PgError> {
    match merge {
        Merge::Concat => Ok(concat(results)),
        Merge::Aggregate(aggs) => aggregate(aggs, results),
        Merge::Sorted {
            keys,
            limit,
            offset,
            ..
        } => {
            let answers: Vec<&[BytesMut]> = results.iter().map(|r| r.frames.as_slice()).collect();
            crate::execute::merge::merge_sorted(keys, *limit, *offset, &answers)
        }
    }
}

fn concat(results: &[Collected]) -> BytesMut {
    let (mut out, rows, _) = concat_rows(results);
    crate::protocol::command_complete(&mut out, &format!("SELECT {rows}"));
    out
}

/// Every shard's answer as one: the first RowDescription, all DataRows in
/// shard order, the first shard's notices. Returns them with the number of
/// rows and the sum of the shards' CommandComplete counts; the caller adds
/// the CommandComplete it means (SELECT n, INSERT 0 n).
pub(super) fn concat_rows(results: &[Collected]) -> (BytesMut, u64, u64) {
    let mut out = BytesMut::new();
    let mut described = false;
    let (mut rows, mut counted) = (0u64, 0u64);
    for (i, r) in results.iter().enumerate() {
        for f in &r.frames {
            match f[0] {
                be::ROW_DESCRIPTION if !described => {
                    described = true;
                    out.extend_from_slice(f);
                }
                b'D' => {
                    rows += 1;
                    out.extend_from_slice(f);
                }
                be::COMMAND_COMPLETE => counted += super::multi::tag_count(f),
                be::NOTICE_RESPONSE if i == 0 => out.extend_from_slice(f),
                _ => {}
            }
        }
    }
    (out, rows, counted)
}

/// Column type OIDs of a RowDescription.
fn column_types(frame: &[u8]) -> Result<Vec<i32>, PgError> {
    Ok(columns(frame)?.into_iter().map(|(_, t, _)| t).collect())
}

fn row_values(frame: &[u8]) -> Result<Vec<Option<String>>, PgError> {
    protocol::data_row_values(frame)
        .map_err(malformed)?
        .into_iter()
        .map(|v| {
            v.map(|b| String::from_utf8(b.to_vec()).map_err(|_| bad("a value is not UTF-8")))
                .transpose()
        })
        .collect()
}

fn aggregate(aggs: &[Agg], results: &[Collected]) -> Result<BytesMut, PgError> {
    let mut out = BytesMut::new();
    let mut types: Option<Vec<i32>> = None;
    let mut merged: Vec<Option<String>> = vec![None; aggs.len()];
    let mut counts: Vec<i128> = vec![0; aggs.len()];
    for (i, r) in results.iter().enumerate() {
        let mut rows = 0;
        for f in &r.frames {
            match f[0] {
                be::ROW_DESCRIPTION if types.is_none() => {
                    let t = column_types(f)?;
                    if t.len() != aggs.len() {
                        return Err(bad("unexpected columns"));
                    }
                    for (agg, t) in aggs.iter().zip(&t) {
                        check_type(*agg, *t)?;
                    }
                    types = Some(t);
                    out.extend_from_slice(f);
                }
                b'D' => {
                    rows += 1;
                    let values = row_values(f)?;
                    let types = types.as_ref().ok_or_else(|| bad("no row description"))?;
                    if values.len() != aggs.len() {
                        return Err(bad("unexpected columns"));
                    }
                    for (c, v) in values.into_iter().enumerate() {
                        let Some(v) = v else { continue };
                        match aggs[c] {
                            Agg::Count => {
                                counts[c] += v
                                    .trim()
                                    .parse::<i128>()
                                    .map_err(|_| bad(format!("count \"{v}\"")))?;
                            }
                            agg => {
                                merged[c] = Some(match merged[c].take() {
                                    None => {
                                        check_value(types[c], &v)?;
                                        v
                                    }
                                    Some(prev) => combine(agg, types[c], prev, v)?,
                                });
                            }
                        }
                    }
                }
                be::NOTICE_RESPONSE if i == 0 => out.extend_from_slice(f),
                _ => {}
            }
        }
        if rows != 1 {
            return Err(bad(format!("a shard answered {rows} rows to an aggregate")));
        }
    }
    let mut row = BytesMut::new();
    row.put_i16(aggs.len() as i16);
    for (c, agg) in aggs.iter().enumerate() {
        let v = match agg {
            Agg::Count => Some(counts[c].to_string()),
            _ => merged[c].take(),
        };
        match v {
            Some(v) => {
                row.put_i32(v.len() as i32);
                row.put_slice(v.as_bytes());
            }
            None => row.put_i32(-1),
        }
    }
    out.put_u8(b'D');
    out.put_i32(row.len() as i32 + 4);
    out.extend_from_slice(&row);
    crate::protocol::command_complete(&mut out, "SELECT 1");
    Ok(out)
}

fn check_type(agg: Agg, t: i32) -> Result<(), PgError> {
    let ok = match agg {
        Agg::Count => true,
        // sum(int2/int4) is int8, sum(int8/numeric) is numeric.
        Agg::Sum => matches!(t, INT8 | NUMERIC),
        Agg::Min | Agg::Max => matches!(t, INT2 | INT4 | INT8 | NUMERIC | FLOAT4 | FLOAT8),
    };
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "{agg:?} of a column of type OID {t} across shards is not supported (integers, numeric{} only)",
            if agg == Agg::Sum { "" } else { ", floats" }
        ))
        .with_hint("add a condition on the shard key, or run it on each shard"))
    }
}

fn check_value(t: i32, v: &str) -> Result<(), PgError> {
    match t {
        FLOAT4 | FLOAT8 => parse_float(v).map(|_| ()),
        _ => Decimal::parse(v).map(|_| ()),
    }
}

fn combine(agg: Agg, t: i32, a: String, b: String) -> Result<String, PgError> {
    let ord = match t {
        FLOAT4 | FLOAT8 => float_cmp(parse_float(&a)?, parse_float(&b)?),
        _ => {
            let (x, y) = (Decimal::parse(&a)?, Decimal::parse(&b)?);
            if agg == Agg::Sum {
                return Ok(x.add(&y).to_string());
            }
            x.cmp(&y)
        }
    };
    let keep_a = match agg {
        Agg::Min => ord != Ordering::Greater,
        _ => ord != Ordering::Less,
    };
    Ok(if keep_a { a } else { b })
}

fn parse_float(v: &str) -> Result<f64, PgError> {
    v.trim()
        .parse::<f64>()
        .map_err(|_| bad(format!("float \"{v}\"")))
}

/// PostgreSQL orders NaN above every other float.
fn float_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// A finite decimal in text: sign, integer digits, fraction digits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decimal {
    neg: bool,
    int: Vec<u8>,
    frac: Vec<u8>,
}

impl Decimal {
    fn parse(s: &str) -> Result<Decimal, PgError> {
        let t = s.trim();
        let (neg, t) = match t.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, t.strip_prefix('+').unwrap_or(t)),
        };
        let (i, f) = t.split_once('.').unwrap_or((t, ""));
        let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
        if i.is_empty() || !digits(i) || !digits(f) {
            // NaN, Infinity, exponents: not merged.
            return Err(bad(format!("the value \"{s}\" is not a plain decimal")));
        }
        let int: Vec<u8> = i
            .trim_start_matches('0')
            .bytes()
            .map(|b| b - b'0')
            .collect();
        let frac = f.bytes().map(|b| b - b'0').collect();
        Ok(Decimal { neg, int, frac })
    }

    fn is_zero(&self) -> bool {
        self.int.iter().chain(&self.frac).all(|d| *d == 0)
    }

    /// Digits of the magnitude at `scale` fraction digits, `width` integer digits.
    fn aligned(&self, width: usize, scale: usize) -> Vec<u8> {
        let mut v = vec![0; width - self.int.len()];
        v.extend_from_slice(&self.int);
        v.extend_from_slice(&self.frac);
        v.resize(width + scale, 0);
        v
    }

    fn add(&self, other: &Decimal) -> Decimal {
        let width = self.int.len().max(other.int.len()) + 1;
        let scale = self.frac.len().max(other.frac.len());
        let a = self.aligned(width, scale);
        let b = other.aligned(width, scale);
        let (neg, digits) = if self.neg == other.neg {
            let mut r = vec![0u8; a.len()];
            let mut carry = 0;
            for k in (0..a.len()).rev() {
                let s = a[k] + b[k] + carry;
                r[k] = s % 10;
                carry = s / 10;
            }
            (self.neg, r)
        } else {
            let (big, small, neg) = if a >= b {
                (&a, &b, self.neg)
            } else {
                (&b, &a, other.neg)
            };
            let mut r = vec![0u8; a.len()];
            let mut borrow = 0i8;
            for k in (0..a.len()).rev() {
                let mut d = big[k] as i8 - small[k] as i8 - borrow;
                borrow = 0;
                if d < 0 {
                    d += 10;
                    borrow = 1;
                }
                r[k] = d as u8;
            }
            (neg, r)
        };
        let (int, frac) = digits.split_at(width);
        let first = int.iter().position(|d| *d != 0).unwrap_or(int.len());
        let mut d = Decimal {
            neg,
            int: int[first..].to_vec(),
            frac: frac.to_vec(),
        };
        if d.is_zero() {
            d.neg = false;
        }
        d
    }

    fn cmp(&self, other: &Decimal) -> Ordering {
        let (za, zb) = (self.is_zero(), other.is_zero());
        let na = self.neg && !za;
        let nb = other.neg && !zb;
        if na != nb {
            return if na {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        let width = self.int.len().max(other.int.len());
        let scale = self.frac.len().max(other.frac.len());
        let mag = self.aligned(width, scale).cmp(&other.aligned(width, scale));
        if na {
            mag.reverse()
        } else {
            mag
        }
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.neg {
            f.write_str("-")?;
        }
        if self.int.is_empty() {
            f.write_str("0")?;
        }
        for d in &self.int {
            write!(f, "{d}")?;
        }
        if !self.frac.is_empty() {
            f.write_str(".")?;
            for d in &self.frac {
                write!(f, "{d}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(a: &str, b: &str) -> String {
        Decimal::parse(a)
            .unwrap()
            .add(&Decimal::parse(b).unwrap())
            .to_string()
    }

    #[test]
    fn decimal_addition() {
        assert_eq!(add("1", "2"), "3");
        assert_eq!(add("999", "1"), "1000");
        assert_eq!(add("-5", "3"), "-2");
        assert_eq!(add("5", "-7.50"), "-2.50");
        assert_eq!(add("1.25", "-1.25"), "0.00");
        assert_eq!(add("0", "0"), "0");
        assert_eq!(
            add("99999999999999999999999999999999999999", "1"),
            "100000000000000000000000000000000000000"
        );
        assert_eq!(add("-0.001", "-0.1"), "-0.101");
        assert!(Decimal::parse("NaN").is_err());
        assert!(Decimal::parse("Infinity").is_err());
        assert!(Decimal::parse("1e5").is_err());
    }

    #[test]
    fn ordering() {
        let c = |a: &str, b: &str| Decimal::parse(a).unwrap().cmp(&Decimal::parse(b).unwrap());
        assert_eq!(c("-3", "2"), Ordering::Less);
        assert_eq!(c("-3", "-20"), Ordering::Greater);
        assert_eq!(c("10.5", "9.99"), Ordering::Greater);
        assert_eq!(c("1.50", "1.5"), Ordering::Equal);
        assert_eq!(c("-0", "0"), Ordering::Equal);
        assert_eq!(float_cmp(f64::NAN, 1e300), Ordering::Greater);
        assert_eq!(
            combine(Agg::Min, INT4, "-2".into(), "1".into()).unwrap(),
            "-2"
        );
        assert_eq!(
            combine(Agg::Max, FLOAT8, "Infinity".into(), "NaN".into()).unwrap(),
            "NaN"
        );
        assert!(check_type(Agg::Min, 25).is_err());
        assert!(check_type(Agg::Sum, FLOAT8).is_err());
    }
}

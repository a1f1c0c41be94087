//! ORDER BY across shards: a k-way merge of the shards' rows, each shard's
//! rows already sorted by the same ORDER BY, then OFFSET and LIMIT.
//!
//! Values are in text format (the simple query protocol) and are compared
//! by the column's type OID from the RowDescription:
//!
//! - int2/int4/int8: as integers;
//! - numeric: as exact decimals (no float conversion), with PostgreSQL's
//!   order `-Infinity < numbers < Infinity < NaN`;
//! - float4/float8: as floats, NaN above every number (PostgreSQL's order);
//! - text/varchar/name: in byte order, which is the C collation (for UTF-8
//!   also code point order); bpchar the same after dropping trailing
//!   spaces, which are not significant for it. A column with another
//!   collation (en_US, ICU, ...) is sorted differently by the shards; the
//!   merge notices when a shard's rows are not in byte order and refuses the
//!   query, but data that happen to be in both orders can still merge in an
//!   order the one-database query would not give. Use COLLATE "C" for text
//!   columns ordered across shards;
//! - date, timestamp, timestamptz: parsed from the ISO output format
//!   (DateStyle ISO) to an instant, so BC dates, years past 9999 and
//!   timestamptz offsets (daylight saving) compare correctly; a value in
//!   another DateStyle is refused rather than compared as text;
//! - uuid: lower-case hex text, whose byte order is the uuid order;
//! - bool: false < true.
//!
//! Binary-format columns of these types are decoded by `binary`. Any
//! other type is refused with 0A000.
//! Ties keep shard order (the shards' order among equal rows is not
//! defined anyway).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

use bytes::BytesMut;

use crate::protocol::{self, be, sqlstate, BodyReader, PgError};
use crate::router::{SortColumn, SortKey};

/// Type OIDs the merge knows how to order.
pub mod oid {
    pub const BOOL: i32 = 16;
    pub const NAME: i32 = 19;
    pub const INT8: i32 = 20;
    pub const INT2: i32 = 21;
    pub const INT4: i32 = 23;
    pub const TEXT: i32 = 25;
    pub const FLOAT4: i32 = 700;
    pub const FLOAT8: i32 = 701;
    pub const BPCHAR: i32 = 1042;
    pub const VARCHAR: i32 = 1043;
    pub const DATE: i32 = 1082;
    pub const TIMESTAMP: i32 = 1114;
    pub const TIMESTAMPTZ: i32 = 1184;
    pub const NUMERIC: i32 = 1700;
    pub const UUID: i32 = 2950;
}

/// How the values of a column compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortType {
    Int,
    Numeric,
    Float,
    Text,
    Bpchar,
    Date,
    Timestamp,
    TimestampTz,
    Uuid,
    Bool,
}

impl SortType {
    pub fn of(type_oid: i32) -> Option<SortType> {
        Some(match type_oid {
            oid::INT2 | oid::INT4 | oid::INT8 => SortType::Int,
            oid::NUMERIC => SortType::Numeric,
            oid::FLOAT4 | oid::FLOAT8 => SortType::Float,
            oid::TEXT | oid::VARCHAR | oid::NAME => SortType::Text,
            oid::BPCHAR => SortType::Bpchar,
            oid::DATE => SortType::Date,
            oid::TIMESTAMP => SortType::Timestamp,
            oid::TIMESTAMPTZ => SortType::TimestampTz,
            oid::UUID => SortType::Uuid,
            oid::BOOL => SortType::Bool,
            _ => return None,
        })
    }
}

/// A non-NULL value, parsed once for comparing.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    Int(i64),
    Num(Num<'a>),
    Float(f64),
    Bytes(&'a [u8]),
    /// Microseconds from 1970-01-01 (UTC for timestamptz); infinities at
    /// the ends.
    Time(i128),
}

/// A numeric in text: its magnitude's digits without leading (integer) or
/// trailing (fraction) zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Num<'a> {
    NegInf,
    Finite {
        neg: bool,
        int: Cow<'a, str>,
        frac: Cow<'a, str>,
    },
    PosInf,
    NaN,
}

impl Num<'_> {
    fn rank(&self) -> u8 {
        match self {
            Num::NegInf => 0,
            Num::Finite { .. } => 1,
            Num::PosInf => 2,
            Num::NaN => 3,
        }
    }

    fn cmp(&self, other: &Num) -> Ordering {
        match (self, other) {
            (
                Num::Finite { neg, int, frac },
                Num::Finite {
                    neg: n2,
                    int: i2,
                    frac: f2,
                },
            ) => {
                let sign = |neg: bool, int: &str, frac: &str| -> i8 {
                    if int.is_empty() && frac.is_empty() {
                        0
                    } else if neg {
                        -1
                    } else {
                        1
                    }
                };
                let (sa, sb) = (sign(*neg, int, frac), sign(*n2, i2, f2));
                if sa != sb {
                    return sa.cmp(&sb);
                }
                let mag = int
                    .len()
                    .cmp(&i2.len())
                    .then_with(|| int.cmp(i2))
                    .then_with(|| frac.cmp(f2));
                if sa < 0 {
                    mag.reverse()
                } else {
                    mag
                }
            }
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

fn parse_num(s: &str) -> Option<Num<'_>> {
    match s {
        "NaN" => return Some(Num::NaN),
        "Infinity" => return Some(Num::PosInf),
        "-Infinity" => return Some(Num::NegInf),
        _ => {}
    }
    let (neg, t) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (i, f) = t.split_once('.').unwrap_or((t, ""));
    let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
    if i.is_empty() || !digits(i) || !digits(f) {
        return None;
    }
    Some(Num::Finite {
        neg,
        int: Cow::Borrowed(i.trim_start_matches('0')),
        frac: Cow::Borrowed(f.trim_end_matches('0')),
    })
}

/// PostgreSQL orders NaN above every other float (and -0 equal to 0).
pub fn float_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

impl Val<'_> {
    /// The order of two values of one column.
    pub fn compare(&self, other: &Val) -> Ordering {
        match (self, other) {
            (Val::Int(a), Val::Int(b)) => a.cmp(b),
            (Val::Num(a), Val::Num(b)) => a.cmp(b),
            (Val::Float(a), Val::Float(b)) => float_cmp(*a, *b),
            (Val::Bytes(a), Val::Bytes(b)) => a.cmp(b),
            (Val::Time(a), Val::Time(b)) => a.cmp(b),
            // One column has one type.
            _ => Ordering::Equal,
        }
    }
}

/// Parse a text-format value of type `t`; `Err` names what is wrong.
pub fn parse_value(t: SortType, v: &[u8]) -> Result<Val<'_>, String> {
    let text = || std::str::from_utf8(v).map_err(|_| "a value is not UTF-8".to_string());
    let bad = |what: &str| {
        format!(
            "the {what} value \"{}\" is not in a format the proxy can order",
            String::from_utf8_lossy(v)
        )
    };
    Ok(match t {
        SortType::Int => Val::Int(text()?.parse().map_err(|_| bad("integer"))?),
        SortType::Numeric => Val::Num(parse_num(text()?).ok_or_else(|| bad("numeric"))?),
        SortType::Float => Val::Float(parse_float(text()?).ok_or_else(|| bad("float"))?),
        SortType::Text | SortType::Uuid => Val::Bytes(v),
        SortType::Bpchar => {
            let end = v.iter().rposition(|b| *b != b' ').map_or(0, |p| p + 1);
            Val::Bytes(&v[..end])
        }
        SortType::Bool => match v {
            b"f" => Val::Int(0),
            b"t" => Val::Int(1),
            _ => return Err(bad("boolean")),
        },
        SortType::Date | SortType::Timestamp | SortType::TimestampTz => {
            Val::Time(parse_time(t, text()?).ok_or_else(|| {
                format!(
                    "{} (dates and timestamps are merged from the ISO format: SET DateStyle = ISO)",
                    bad("date/time")
                )
            })?)
        }
    })
}

/// A float as PostgreSQL prints it (`1.5`, `-2e-07`, `NaN`, `Infinity`,
/// `-Infinity`); anything else is None, not a guess.
pub fn parse_float(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ if s
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (astronomical year).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn num(s: &str, len: std::ops::RangeInclusive<usize>) -> Option<i64> {
    if !len.contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// An ISO date/time value as microseconds (UTC for timestamptz):
/// `YYYY-MM-DD[ HH:MM:SS[.f]][+hh[:mm[:ss]]][ BC]`, or +-infinity.
fn parse_time(t: SortType, s: &str) -> Option<i128> {
    match s {
        "infinity" => return Some(i128::MAX),
        "-infinity" => return Some(i128::MIN),
        _ => {}
    }
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(r) => (r, true),
        None => (s, false),
    };
    let (date, time) = match s.split_once(' ') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    if (t == SortType::Date) != time.is_none() {
        return None;
    }
    let mut parts = date.splitn(3, '-');
    let (y, m, d) = (
        num(parts.next()?, 4..=9)?,
        num(parts.next()?, 2..=2)?,
        num(parts.next()?, 2..=2)?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if bc { 1 - y } else { y };
    let mut micros = days_from_civil(y, m, d) as i128 * 86_400_000_000;
    if let Some(time) = time {
        // The offset starts at the first sign after the seconds.
        let split = time.find(['+', '-']).unwrap_or(time.len());
        let (clock, offset) = time.split_at(split);
        if (t == SortType::TimestampTz) == offset.is_empty() {
            return None;
        }
        let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
        let mut f = hms.splitn(3, ':');
        let (h, mi, se) = (
            num(f.next()?, 2..=2)?,
            num(f.next()?, 2..=2)?,
            num(f.next()?, 2..=2)?,
        );
        if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let frac_us = format!("{frac:0<6}").parse::<i64>().ok()?;
        micros += ((h * 3600 + mi * 60 + se) * 1_000_000 + frac_us) as i128;
        if !offset.is_empty() {
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            let mut o = offset[1..].splitn(3, ':');
            let oh = num(o.next()?, 2..=2)?;
            let om = o.next().map_or(Some(0), |x| num(x, 2..=2))?;
            let os = o.next().map_or(Some(0), |x| num(x, 2..=2))?;
            micros -= (sign * (oh * 3600 + om * 60 + os) * 1_000_000) as i128;
        }
    }
    Some(micros)
}

/// A sort key resolved against the result's columns.
#[derive(Debug, Clone, Copy)]
pub struct Resolved {
    pub column: usize,
    pub sort: SortType,
    /// The column's type OID and whether its values are in binary format.
    pub type_oid: i32,
    pub binary: bool,
    pub descending: bool,
    pub nulls_first: bool,
}

/// Compare two rows' key values (`None` is NULL) by the keys.
pub fn compare_keys(keys: &[Resolved], a: &[Option<Val>], b: &[Option<Val>]) -> Ordering {
    for (k, (x, y)) in keys.iter().zip(a.iter().zip(b)) {
        let o = match (x, y) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) if k.nulls_first => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) if k.nulls_first => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) if k.descending => y.compare(x),
            (Some(x), Some(y)) => x.compare(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// A cross-shard answer that cannot be merged correctly (0A000).
pub(crate) fn bad(m: impl Into<String>) -> PgError {
    PgError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!("cannot merge the shards' answers: {}", m.into()),
    )
}

pub(crate) fn malformed(_: protocol::Malformed) -> PgError {
    PgError::error(sqlstate::INTERNAL_ERROR, "malformed answer of a shard")
}

/// A RowDescription's columns: name, type OID, format code.
pub(crate) fn columns(frame: &[u8]) -> Result<Vec<(String, i32, i16)>, PgError> {
    let mut r = BodyReader::new(protocol::body(frame), "RowDescription");
    let n = r.i16().map_err(malformed)?;
    let mut cols = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n.max(0) {
        let name = String::from_utf8_lossy(r.cstr_bytes().map_err(malformed)?).into_owned();
        r.i32().map_err(malformed)?;
        r.i16().map_err(malformed)?;
        let t = r.i32().map_err(malformed)?;
        r.i16().map_err(malformed)?;
        r.i32().map_err(malformed)?;
        let format = r.i16().map_err(malformed)?;
        cols.push((name, t, format));
    }
    Ok(cols)
}

fn fields(frame: &[u8]) -> Result<Vec<Option<&[u8]>>, PgError> {
    protocol::data_row_values(frame).map_err(malformed)
}

/// The sort keys against a RowDescription.
pub fn resolve(keys: &[SortKey], description: &[u8]) -> Result<Vec<Resolved>, PgError> {
    let cols = columns(description)?;
    keys.iter()
        .map(|k| {
            let column = match &k.column {
                SortColumn::Position(p) if *p < cols.len() => *p,
                SortColumn::Position(p) => {
                    return Err(bad(format!("ORDER BY position {} is not in the result", p + 1)))
                }
                SortColumn::Name(n) => {
                    let found: Vec<usize> = (0..cols.len()).filter(|&i| cols[i].0 == *n).collect();
                    match found.as_slice() {
                        [i] => *i,
                        [] => {
                            return Err(bad(format!(
                                "ORDER BY \"{n}\" is not a column of the result; only result columns can be merged in order"
                            ))
                            .with_hint("add it to the select list"))
                        }
                        _ => {
                            return Err(bad(format!(
                                "ORDER BY \"{n}\" names several columns of the result"
                            )))
                        }
                    }
                }
            };
            let (name, t, format) = &cols[column];
            let sort = SortType::of(*t).ok_or_else(|| {
                bad(format!(
                    "ORDER BY column \"{name}\" of type OID {t} is not supported across shards"
                ))
                .with_hint("integer, numeric, float, text, varchar, char, name, date, timestamp, timestamptz, uuid and boolean columns can be ordered across shards; or add a condition on the shard key")
            })?;
            Ok(Resolved {
                column,
                sort,
                type_oid: *t,
                binary: *format == 1,
                descending: k.descending,
                nulls_first: k.nulls_first,
            })
        })
        .collect()
}

/// The head row of one shard in the merge.
struct Head<'a> {
    keys: &'a [Resolved],
    vals: Vec<Option<Val<'a>>>,
    shard: usize,
    row: usize,
}

impl Head<'_> {
    fn order(&self, other: &Self) -> Ordering {
        compare_keys(self.keys, &self.vals, &other.vals)
            .then(self.shard.cmp(&other.shard))
            .then(self.row.cmp(&other.row))
    }
}

impl PartialEq for Head<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.order(other) == Ordering::Equal
    }
}
impl Eq for Head<'_> {}
impl PartialOrd for Head<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head<'_> {
    /// Reversed: BinaryHeap pops its greatest, the merge wants the least.
    fn cmp(&self, other: &Self) -> Ordering {
        other.order(self)
    }
}

pub(crate) fn key_values<'a>(
    keys: &[Resolved],
    row: &'a [u8],
) -> Result<Vec<Option<Val<'a>>>, PgError> {
    let f = fields(row)?;
    keys.iter()
        .map(|k| match f.get(k.column) {
            None => Err(bad("a row has fewer columns than its description")),
            Some(None) => Ok(None),
            Some(Some(v)) if k.binary => super::binary::decode_key(k.sort, k.type_oid, v)
                .map(Some)
                .map_err(bad),
            Some(Some(v)) => parse_value(k.sort, v).map(Some).map_err(bad),
        })
        .collect()
}

/// Shard `shard`'s rows (counted from 0) are not sorted as the merge
/// compares them.
pub(crate) fn out_of_order(shard: usize) -> PgError {
    bad(format!(
        "the rows of shard #{} are not in the order the proxy merges by",
        shard + 1
    ))
    .with_detail("text is merged in byte order (the C collation); the shard sorted by another collation")
    .with_hint("order text columns across shards with COLLATE \"C\" (in the query or the column definition)")
}

/// Merge the shards' answers (frames of each shard, in shard order; each
/// shard's rows sorted by `keys`): RowDescription, the first shard's
/// notices, the rows in order from `offset` on, at most `limit` of them,
/// and `SELECT n`. Without keys the rows are taken in shard order.
pub fn merge_sorted(
    keys: &[SortKey],
    limit: Option<u64>,
    offset: u64,
    answers: &[&[BytesMut]],
) -> Result<BytesMut, PgError> {
    let mut out = BytesMut::new();
    let description = answers
        .iter()
        .flat_map(|a| a.iter())
        .find(|f| f[0] == be::ROW_DESCRIPTION)
        .ok_or_else(|| bad("no row description"))?;
    let resolved = resolve(keys, description)?;
    out.extend_from_slice(description);
    if let Some(first) = answers.first() {
        for f in first.iter().filter(|f| f[0] == be::NOTICE_RESPONSE) {
            out.extend_from_slice(f);
        }
    }
    let rows: Vec<Vec<&BytesMut>> = answers
        .iter()
        .map(|a| a.iter().filter(|f| f[0] == be::DATA_ROW).collect())
        .collect();
    let mut heap = BinaryHeap::with_capacity(rows.len());
    for (shard, r) in rows.iter().enumerate() {
        if let Some(first) = r.first() {
            heap.push(Head {
                keys: &resolved,
                vals: key_values(&resolved, first)?,
                shard,
                row: 0,
            });
        }
    }
    let end = limit.map(|l| offset.saturating_add(l));
    let (mut taken, mut sent) = (0u64, 0u64);
    while end.is_none_or(|e| taken < e) {
        let Some(head) = heap.pop() else { break };
        if taken >= offset {
            out.extend_from_slice(rows[head.shard][head.row]);
            sent += 1;
        }
        taken += 1;
        if let Some(next) = rows[head.shard].get(head.row + 1) {
            let vals = key_values(&resolved, next)?;
            if compare_keys(&resolved, &vals, &head.vals) == Ordering::Less {
                return Err(out_of_order(head.shard));
            }
            heap.push(Head {
                keys: &resolved,
                vals,
                shard: head.shard,
                row: head.row + 1,
            });
        }
    }
    protocol::command_complete(&mut out, &format!("SELECT {sent}"));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn cmp(t: SortType, a: &str, b: &str) -> Ordering {
        parse_value(t, a.as_bytes())
            .unwrap()
            .compare(&parse_value(t, b.as_bytes()).unwrap())
    }

    #[test]
    fn compares_by_type() {
        use Ordering::*;
        use SortType::*;
        assert_eq!(cmp(Int, "-3", "2"), Less);
        assert_eq!(cmp(Int, "10", "9"), Greater);
        assert_eq!(cmp(Numeric, "10.5", "9.99"), Greater);
        assert_eq!(cmp(Numeric, "1.50", "1.5"), Equal);
        assert_eq!(cmp(Numeric, "-0.00", "0"), Equal);
        assert_eq!(cmp(Numeric, "-3", "-20"), Greater);
        assert_eq!(cmp(Numeric, "-0.5", "0.1"), Less);
        assert_eq!(cmp(Numeric, "0.05", "0.5"), Less);
        assert_eq!(
            cmp(
                Numeric,
                "12345678901234567890.000000000000000001",
                "12345678901234567890"
            ),
            Greater
        );
        assert_eq!(cmp(Numeric, "Infinity", "99999999999999999999"), Greater);
        assert_eq!(cmp(Numeric, "NaN", "Infinity"), Greater);
        assert_eq!(cmp(Numeric, "-Infinity", "-99999"), Less);
        assert_eq!(cmp(Float, "NaN", "Infinity"), Greater);
        assert_eq!(cmp(Float, "-Infinity", "-1e+300"), Less);
        assert_eq!(cmp(Float, "-0", "0"), Equal);
        assert_eq!(cmp(Float, "1.5e-05", "0.0001"), Less);
        assert_eq!(cmp(Text, "B", "a"), Less);
        assert_eq!(cmp(Text, "ab", "abc"), Less);
        assert_eq!(cmp(Text, "é", "z"), Greater);
        assert_eq!(cmp(Bpchar, "a\t  ", "a   "), Greater);
        assert_eq!(cmp(Bpchar, "a  ", "a"), Equal);
        assert_eq!(cmp(Bool, "f", "t"), Less);
        assert_eq!(
            cmp(
                Uuid,
                "0a000000-0000-0000-0000-000000000000",
                "a0000000-0000-0000-0000-000000000000"
            ),
            Less
        );
        assert_eq!(cmp(Date, "2024-01-31", "2024-02-01"), Less);
        assert_eq!(cmp(Date, "10000-01-01", "9999-12-31"), Greater);
        assert_eq!(cmp(Date, "0044-03-15 BC", "0001-01-01"), Less);
        assert_eq!(cmp(Date, "0044-03-15 BC", "0045-03-15 BC"), Greater);
        assert_eq!(cmp(Date, "infinity", "294276-12-31"), Greater);
        assert_eq!(cmp(Date, "-infinity", "4713-01-01 BC"), Less);
        assert_eq!(
            cmp(
                Timestamp,
                "2024-01-01 10:00:00",
                "2024-01-01 09:59:59.999999"
            ),
            Greater
        );
        assert_eq!(
            cmp(Timestamp, "2024-01-01 10:00:00.5", "2024-01-01 10:00:00.25"),
            Greater
        );
        // Across a daylight-saving change: later in time, earlier as text.
        assert_eq!(
            cmp(
                TimestampTz,
                "2024-10-27 02:30:00+02",
                "2024-10-27 02:15:00+01"
            ),
            Less
        );
        assert_eq!(
            cmp(
                TimestampTz,
                "2024-01-01 00:00:00+05:30",
                "2023-12-31 18:30:00+00"
            ),
            Equal
        );
        assert_eq!(
            cmp(
                TimestampTz,
                "1900-01-01 00:00:00+00:53:28",
                "1900-01-01 00:00:00+00"
            ),
            Less
        );
        // Other DateStyles and malformed values are refused, not guessed.
        for (t, v) in [
            (Date, "01/31/2024"),
            (Date, "31.01.2024"),
            (Timestamp, "Wed Jan 31 10:00:00 2024"),
            (Timestamp, "2024-01-31 10:00:00+00"),
            (TimestampTz, "2024-01-31 10:00:00"),
            (Int, "1.5"),
            (Numeric, "1e5"),
            (Float, "abc"),
            (Bool, "true"),
        ] {
            assert!(parse_value(t, v.as_bytes()).is_err(), "{v}");
        }
        assert_eq!(SortType::of(oid::INT8), Some(Int));
        assert_eq!(SortType::of(114), None); // json
    }

    fn description(cols: &[(&str, i32)]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i16(cols.len() as i16);
        for (name, t) in cols {
            b.put_slice(name.as_bytes());
            b.put_u8(0);
            b.put_i32(0);
            b.put_i16(0);
            b.put_i32(*t);
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_i16(0);
        }
        frame(be::ROW_DESCRIPTION, &b)
    }

    fn frame(tag: u8, body: &[u8]) -> BytesMut {
        let mut f = BytesMut::new();
        f.put_u8(tag);
        f.put_i32(body.len() as i32 + 4);
        f.put_slice(body);
        f
    }

    fn row(values: &[Option<&str>]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
        frame(be::DATA_ROW, &b)
    }

    /// One shard's answer: (id int4, name text) rows.
    fn shard(rows: &[(i32, Option<&str>)]) -> Vec<BytesMut> {
        let mut v = vec![description(&[("id", oid::INT4), ("name", oid::TEXT)])];
        for (id, name) in rows {
            v.push(row(&[Some(&id.to_string()), *name]));
        }
        let mut cc = BytesMut::new();
        protocol::command_complete(&mut cc, &format!("SELECT {}", rows.len()));
        v.push(cc);
        v
    }

    /// The merged rows as "id:name" and the CommandComplete tag.
    fn run(
        keys: &[SortKey],
        limit: Option<u64>,
        offset: u64,
        shards: &[Vec<BytesMut>],
    ) -> Result<(Vec<String>, String), PgError> {
        let answers: Vec<&[BytesMut]> = shards.iter().map(|s| s.as_slice()).collect();
        let out = merge_sorted(keys, limit, offset, &answers)?;
        let (mut rows, mut tag) = (Vec::new(), String::new());
        let mut buf = &out[..];
        while !buf.is_empty() {
            let len = i32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
            let f = &buf[..len + 1];
            match f[0] {
                be::DATA_ROW => {
                    let v = fields(f).unwrap();
                    let s = |x: Option<&[u8]>| {
                        x.map_or("NULL".to_string(), |b| String::from_utf8_lossy(b).into())
                    };
                    rows.push(format!("{}:{}", s(v[0]), s(v[1])));
                }
                be::COMMAND_COMPLETE => {
                    tag = String::from_utf8_lossy(&f[5..f.len() - 1]).into();
                }
                _ => {}
            }
            buf = &buf[len + 1..];
        }
        Ok((rows, tag))
    }

    fn key(column: usize, descending: bool, nulls_first: bool) -> SortKey {
        SortKey {
            column: SortColumn::Position(column),
            descending,
            nulls_first,
        }
    }

    #[test]
    fn merges_in_order_with_limit_and_offset() {
        let shards = vec![
            shard(&[(1, Some("a")), (4, Some("d")), (4, Some("s0")), (9, None)]),
            shard(&[]),
            shard(&[(2, Some("b")), (4, Some("s2")), (10, Some("j"))]),
        ];
        let asc = [key(0, false, false)];
        let (rows, tag) = run(&asc, None, 0, &shards).unwrap();
        // Ties across shards keep shard order.
        assert_eq!(
            rows,
            ["1:a", "2:b", "4:d", "4:s0", "4:s2", "9:NULL", "10:j"]
        );
        assert_eq!(tag, "SELECT 7");
        let (rows, tag) = run(&asc, Some(3), 2, &shards).unwrap();
        assert_eq!(rows, ["4:d", "4:s0", "4:s2"]);
        assert_eq!(tag, "SELECT 3");
        // LIMIT/OFFSET beyond the rows.
        let (rows, _) = run(&asc, Some(100), 5, &shards).unwrap();
        assert_eq!(rows, ["9:NULL", "10:j"]);
        let (rows, tag) = run(&asc, Some(5), 50, &shards).unwrap();
        assert!(rows.is_empty());
        assert_eq!(tag, "SELECT 0");
        let (rows, _) = run(&asc, Some(0), 0, &shards).unwrap();
        assert!(rows.is_empty());
        // No keys: LIMIT/OFFSET over the rows in shard order.
        let (rows, _) = run(&[], Some(2), 3, &shards).unwrap();
        assert_eq!(rows, ["9:NULL", "2:b"]);
        // All shards empty.
        let (rows, tag) = run(&asc, None, 0, &[shard(&[]), shard(&[])]).unwrap();
        assert!(rows.is_empty());
        assert_eq!(tag, "SELECT 0");
    }

    #[test]
    fn nulls_first_last_and_desc() {
        // name DESC (NULLS FIRST by default), each shard sorted so.
        let shards = vec![
            shard(&[(1, None), (2, Some("z")), (3, Some("b"))]),
            shard(&[(4, None), (5, Some("c")), (6, Some("a"))]),
        ];
        let (rows, _) = run(&[key(1, true, true)], None, 0, &shards).unwrap();
        assert_eq!(rows, ["1:NULL", "4:NULL", "2:z", "5:c", "3:b", "6:a"]);
        // name ASC NULLS FIRST.
        let shards = vec![
            shard(&[(1, None), (3, Some("b")), (2, Some("z"))]),
            shard(&[(6, Some("a")), (5, Some("c"))]),
        ];
        let (rows, _) = run(&[key(1, false, true)], None, 0, &shards).unwrap();
        assert_eq!(rows, ["1:NULL", "6:a", "3:b", "5:c", "2:z"]);
        // name DESC NULLS LAST, then id ASC.
        let shards = vec![
            shard(&[(2, Some("b")), (7, Some("b")), (1, None)]),
            shard(&[(3, Some("c")), (5, Some("b")), (0, None)]),
        ];
        let keys = [key(1, true, false), key(0, false, false)];
        let (rows, _) = run(&keys, None, 0, &shards).unwrap();
        assert_eq!(rows, ["3:c", "2:b", "5:b", "7:b", "0:NULL", "1:NULL"]);
        // By name after a `*`.
        let by_name = [SortKey {
            column: SortColumn::Name("id".into()),
            descending: true,
            nulls_first: true,
        }];
        let shards = vec![shard(&[(5, None), (1, None)]), shard(&[(7, None)])];
        let (rows, _) = run(&by_name, Some(2), 0, &shards).unwrap();
        assert_eq!(rows, ["7:NULL", "5:NULL"]);
    }

    #[test]
    fn refuses_what_it_cannot_order() {
        // A shard's rows out of byte order (another collation).
        let shards = vec![
            shard(&[(1, Some("a")), (2, Some("B"))]),
            shard(&[(3, Some("c"))]),
        ];
        let e = run(&[key(1, false, false)], None, 0, &shards).unwrap_err();
        assert_eq!(e.code, "0A000");
        assert!(e.message.contains("not in the order"), "{}", e.message);
        // A type it does not know, a missing column.
        let json = vec![description(&[("j", 114)]), row(&[Some("{}")])];
        let e = run(&[key(0, false, false)], None, 0, &[json]).unwrap_err();
        assert!(e.message.contains("OID 114"), "{}", e.message);
        let e = run(&[key(5, false, false)], None, 0, &shards).unwrap_err();
        assert!(e.message.contains("position 6"), "{}", e.message);
        let missing = [SortKey {
            column: SortColumn::Name("nope".into()),
            descending: false,
            nulls_first: false,
        }];
        let e = run(&missing, None, 0, &shards).unwrap_err();
        assert!(e.message.contains("\"nope\""), "{}", e.message);
    }
}

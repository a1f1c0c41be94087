//! Bind parameters as routing reads them: a key parameter is decoded by its
//! type, never guessed from its length.
//!
//! A binary float8 `3.0` and a binary int8 `4613937818241073152` are the
//! same eight bytes; only the type tells them apart, and reading one as the
//! other sends the statement to the wrong shard (a row written there is
//! lost to every later lookup). So a parameter's type comes, in order,
//! from the client's Parse, from the server's ParameterDescription of the
//! statement (both filled in by the session: [`Param::type_oid`]), from an
//! explicit cast on `$n` in the SQL ([`ParamCasts`], part of the cached
//! analysis), and only when nothing says, from the value's length, which
//! for an integer key is what PostgreSQL itself infers for an uncast
//! `key = $1`.
//!
//! A value is mapped to the key's type the way PostgreSQL compares or
//! assigns it: int2/int4/int8/numeric/float4/float8 to an integer key when
//! the value is integral, text types spelling the key, uuid to a uuid key
//! or its text. What cannot be mapped exactly (3.5 for an integer key, a
//! timestamp, a float beyond the range where floats are exact) is refused
//! ([`BadParam`]), never rounded or guessed.
//!
//! Dates and timestamps are refused for every key type. Integer keys hold
//! integers (time ranges are routed as integers the application computes,
//! such as epoch microseconds, see sharding::range), which PostgreSQL
//! cannot compare with a timestamp; a text key is routed by the bytes of
//! one text form, and a timestamp has many (DateStyle, precision, time
//! zone), so no choice of ours would be certain to match the rows'.

mod casts;
mod numbers;
pub mod oid;

use std::fmt::Write as _;

pub use casts::ParamCasts;
use numbers::{decimal_text, float_key, float_value, int_binary, int_text, numeric_binary};
pub use oid::type_name;

use super::{display_key, parse_key, parse_uuid, KeyType};
use crate::protocol::sqlstate;
use crate::sharding::KeyValue;

/// A Bind parameter as routing sees it.
#[derive(Debug, Clone, Copy)]
pub struct Param<'a> {
    /// The value as sent; `None` is NULL.
    pub value: Option<&'a [u8]>,
    /// Format code 1 (binary) rather than 0 (text).
    pub binary: bool,
    /// The parameter's type OID as the client's Parse declared it or, when
    /// it declared 0, as the server described the statement; 0 when
    /// neither said (then a cast in the SQL, or the value itself, decides).
    pub type_oid: u32,
}

impl<'a> Param<'a> {
    /// A text value of unspecified type (`shardwire route --param`).
    pub fn text(value: &'a [u8]) -> Param<'a> {
        Param {
            value: Some(value),
            binary: false,
            type_oid: oid::UNSPECIFIED,
        }
    }
}

/// Why a parameter value cannot be a key: a SQLSTATE, what is wrong, and
/// what the client can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadParam {
    pub code: &'static str,
    /// The value as the message shows it.
    pub value: String,
    pub reason: String,
    pub hint: String,
}

/// SQLSTATEs of refusals (PostgreSQL's own for the same faults).
const INVALID_TEXT: &str = sqlstate::INVALID_TEXT_REPRESENTATION;
const INVALID_BINARY: &str = sqlstate::INVALID_BINARY_REPRESENTATION;
const OUT_OF_RANGE: &str = sqlstate::NUMERIC_VALUE_OUT_OF_RANGE;
const NOT_SUPPORTED: &str = sqlstate::FEATURE_NOT_SUPPORTED;

/// How the router reads a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// No type known: length-based for binary integers, a literal for text.
    Unspecified,
    /// Cast differently in different places of the SQL.
    Ambiguous,
    /// A database's own type (enum, domain) or an unnamed cast: its text
    /// form reads like a literal, its binary form is unknown.
    UserDefined,
    /// A built-in type the router does not map to keys (dates,
    /// timestamps, bool, bytea, ...).
    Unsupported,
    /// int2, int4, int8 by byte width.
    Int(usize),
    Numeric,
    Float4,
    Float8,
    Text(TextKind),
    Uuid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextKind {
    Plain,
    /// `char(n)`: trailing spaces do not count.
    Bpchar,
    /// `name`: at most NAMEDATALEN - 1 = 63 bytes.
    Name,
}

fn class(t: u32) -> Class {
    match t {
        oid::UNSPECIFIED => Class::Unspecified,
        oid::AMBIGUOUS => Class::Ambiguous,
        oid::OTHER => Class::UserDefined,
        oid::INT2 => Class::Int(2),
        oid::INT4 => Class::Int(4),
        oid::INT8 => Class::Int(8),
        oid::NUMERIC => Class::Numeric,
        oid::FLOAT4 => Class::Float4,
        oid::FLOAT8 => Class::Float8,
        oid::TEXT | oid::VARCHAR | oid::UNKNOWN => Class::Text(TextKind::Plain),
        oid::BPCHAR => Class::Text(TextKind::Bpchar),
        oid::NAME => Class::Text(TextKind::Name),
        oid::UUID => Class::Uuid,
        t if t >= oid::FIRST_USER => Class::UserDefined,
        _ => Class::Unsupported,
    }
}

/// The element type of an array type; `None` for a type known not to be
/// an array. Unspecified and user-defined types pass through (their text
/// form is read as an array literal of literals).
fn element_of(array: u32) -> Option<u32> {
    Some(match array {
        oid::NAME_ARRAY => oid::NAME,
        oid::INT2_ARRAY => oid::INT2,
        oid::INT4_ARRAY => oid::INT4,
        oid::TEXT_ARRAY => oid::TEXT,
        oid::BPCHAR_ARRAY => oid::BPCHAR,
        oid::VARCHAR_ARRAY => oid::VARCHAR,
        oid::INT8_ARRAY => oid::INT8,
        oid::FLOAT4_ARRAY => oid::FLOAT4,
        oid::FLOAT8_ARRAY => oid::FLOAT8,
        oid::TIMESTAMP_ARRAY => oid::TIMESTAMP,
        oid::DATE_ARRAY => oid::DATE,
        oid::TIMESTAMPTZ_ARRAY => oid::TIMESTAMPTZ,
        oid::NUMERIC_ARRAY => oid::NUMERIC,
        oid::UUID_ARRAY => oid::UUID,
        // `'{1,2}'` sent as text or unknown: an array literal.
        oid::UNSPECIFIED | oid::UNKNOWN | oid::TEXT | oid::VARCHAR => oid::UNSPECIFIED,
        oid::AMBIGUOUS => oid::AMBIGUOUS,
        t if t == oid::OTHER || t >= oid::FIRST_USER => oid::OTHER,
        _ => return None,
    })
}

fn key_type_name(k: KeyType) -> &'static str {
    match k {
        KeyType::Int => "an integer",
        KeyType::Text => "text",
        KeyType::Uuid => "a uuid",
    }
}

/// The types a key of type `k` is routed by, for hints.
fn accepted(k: KeyType) -> &'static str {
    match k {
        KeyType::Int => "int2, int4, int8, or numeric/float4/float8 holding an integral value, or text spelling an integer",
        KeyType::Text => "text, varchar, bpchar, name, an integer type or uuid",
        KeyType::Uuid => "uuid, or text spelling a uuid",
    }
}

/// How an undecodable value shows in a message: its text, or its bytes
/// in hex (the first 32).
fn shown(binary: bool, b: &[u8]) -> String {
    if !binary {
        if let Ok(s) = std::str::from_utf8(b) {
            let mut s: String = s.chars().take(64).collect();
            if s.len() < b.len() {
                s.push_str("...");
            }
            return format!("'{s}'");
        }
    }
    let mut out = String::from("'\\x");
    for byte in b.iter().take(32) {
        let _ = write!(out, "{byte:02x}");
    }
    if b.len() > 32 {
        out.push_str("...");
    }
    out.push('\'');
    out
}

fn unmappable(k: KeyType, t: u32, value: String) -> BadParam {
    BadParam {
        code: NOT_SUPPORTED,
        value,
        reason: format!(
            "the shard key is {} and the proxy does not route it by a {} value",
            key_type_name(k),
            type_name(t)
        ),
        hint: format!(
            "send the key as {}, or cast the parameter in the SQL to the key's type",
            accepted(k)
        ),
    }
}

fn not_integral(value: String) -> BadParam {
    BadParam {
        code: INVALID_TEXT,
        value,
        reason: "the shard key is an integer and this value is not".into(),
        hint: "an integer shard key is routed only by integral values (the proxy never rounds); send the key as an integer".into(),
    }
}

fn malformed(t: u32, binary: bool, b: &[u8], what: &str) -> BadParam {
    BadParam {
        code: if binary { INVALID_BINARY } else { INVALID_TEXT },
        value: shown(binary, b),
        reason: format!("not a valid {} value: {what}", type_name(t)),
        hint: "the value's bytes do not match the parameter's declared type".into(),
    }
}

fn utf8(t: u32, binary: bool, b: &[u8]) -> Result<&str, BadParam> {
    std::str::from_utf8(b).map_err(|_| malformed(t, binary, b, "not UTF-8"))
}

/// A text value read the way the router reads a literal of the key.
fn literal(k: KeyType, s: &str) -> Result<KeyValue, BadParam> {
    parse_key(k, s).map_err(|reason| BadParam {
        code: INVALID_TEXT,
        value: format!("'{s}'"),
        reason,
        hint: format!("send the key as {}", accepted(k)),
    })
}

/// Decode one (non-NULL) key parameter of type `t` as a key of type `k`.
pub fn decode(k: KeyType, t: u32, binary: bool, b: &[u8]) -> Result<KeyValue, BadParam> {
    match class(t) {
        Class::Unspecified if binary => unspecified_binary(k, b),
        Class::Unspecified => literal(k, utf8(t, binary, b)?),
        Class::Ambiguous | Class::UserDefined if binary => Err(BadParam {
            code: NOT_SUPPORTED,
            value: shown(true, b),
            reason: format!(
                "the proxy cannot read a binary value of {} as {} key",
                type_name(t),
                key_type_name(k)
            ),
            hint: format!(
                "declare the parameter's type in Parse as one of {}, cast each use of it in the SQL to the key's type, or send it in text format",
                accepted(k)
            ),
        }),
        Class::Ambiguous | Class::UserDefined => literal(k, utf8(t, binary, b)?),
        Class::Unsupported => Err(unmappable(k, t, shown(binary, b))),
        Class::Int(width) => {
            let v = if binary {
                int_binary(t, width, b)?
            } else {
                int_text(t, width, utf8(t, binary, b)?)?
            };
            match k {
                KeyType::Int => Ok(KeyValue::Int(v)),
                // What PostgreSQL's assignment to a text column stores.
                KeyType::Text => Ok(KeyValue::Text(v.to_string())),
                KeyType::Uuid => Err(unmappable(k, t, v.to_string())),
            }
        }
        Class::Float4 | Class::Float8 => {
            let (v, exact) = float_value(t, binary, b)?;
            match k {
                KeyType::Int => float_key(t, v, exact).map(KeyValue::Int),
                _ => Err(unmappable(k, t, format!("{v:?}"))),
            }
        }
        Class::Numeric => {
            if k != KeyType::Int {
                return Err(unmappable(k, t, shown(binary, b)));
            }
            let v = if binary {
                numeric_binary(b)
            } else {
                decimal_text(utf8(t, binary, b)?)
            };
            v.map(KeyValue::Int).map_err(|e| e.into_bad(t, binary, b))
        }
        Class::Text(kind) => {
            let s = utf8(t, binary, b)?;
            let s = match kind {
                TextKind::Plain => s,
                TextKind::Bpchar => s.trim_end_matches(' '),
                TextKind::Name => clip(s, 63),
            };
            literal(k, s)
        }
        Class::Uuid => {
            let u = if binary {
                b.try_into()
                    .map_err(|_| malformed(t, true, b, "not 16 bytes"))?
            } else {
                let s = utf8(t, binary, b)?;
                parse_uuid(s).map_err(|m| malformed(t, false, b, &m))?
            };
            match k {
                KeyType::Uuid => Ok(KeyValue::Uuid(u)),
                KeyType::Text => Ok(KeyValue::Text(display_key(&KeyValue::Uuid(u)))),
                KeyType::Int => Err(unmappable(k, t, display_key(&KeyValue::Uuid(u)))),
            }
        }
    }
}

/// A binary value nobody typed: an integer key by its width (what the
/// server infers for an uncast `key = $1` against an integer column, and
/// what the client encoded), text as UTF-8, a uuid as its 16 bytes.
fn unspecified_binary(k: KeyType, b: &[u8]) -> Result<KeyValue, BadParam> {
    match k {
        KeyType::Int => match b.len() {
            2 | 4 | 8 => int_binary(oid::UNSPECIFIED, b.len(), b).map(KeyValue::Int),
            n => Err(malformed(
                oid::UNSPECIFIED,
                true,
                b,
                &format!("a binary integer of {n} bytes"),
            )),
        },
        KeyType::Text => Ok(KeyValue::Text(utf8(oid::UNSPECIFIED, true, b)?.to_string())),
        KeyType::Uuid => b
            .try_into()
            .map(KeyValue::Uuid)
            .map_err(|_| malformed(oid::UUID, true, b, "not 16 bytes")),
    }
}

/// `s` cut to at most `max` bytes on a character boundary (a `name`).
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Decode an array parameter of type `t` (for `key = ANY($n)`) into its
/// keys; NULL elements match no row and are left out.
pub fn decode_array(k: KeyType, t: u32, binary: bool, b: &[u8]) -> Result<Vec<KeyValue>, BadParam> {
    let Some(elem) = element_of(t) else {
        return Err(BadParam {
            code: NOT_SUPPORTED,
            value: shown(binary, b),
            reason: format!(
                "`= ANY($n)` needs an array, and {} is not one",
                type_name(t)
            ),
            hint: "declare the parameter as an array type (for example int8[])".into(),
        });
    };
    if binary && !matches!(t, oid::TEXT | oid::VARCHAR | oid::UNKNOWN) {
        return binary_array(k, b);
    }
    let s = utf8(t, binary, b)?;
    parse_text_array(s)
        .map_err(|m| malformed(t, binary, b, &m))?
        .into_iter()
        .flatten()
        .map(|e| decode(k, elem, false, e.as_bytes()))
        .collect()
}

/// array_recv's format: ndim, has-nulls flag, element OID, (length, lower
/// bound) per dimension, then each element as length and bytes (-1:
/// NULL). `= ANY` looks at every element, whatever the dimensions.
fn binary_array(k: KeyType, b: &[u8]) -> Result<Vec<KeyValue>, BadParam> {
    let t = oid::UNSPECIFIED;
    let mut r = crate::protocol::BodyReader::new(b, "array");
    let m = |e: crate::protocol::Malformed| malformed(t, true, b, &format!("array: {e}"));
    let ndim = r.i32().map_err(m)?;
    let _has_nulls = r.i32().map_err(m)?;
    // PostgreSQL checks it against the parameter's element type: it is
    // the type of every element.
    let elem = r.i32().map_err(m)? as u32;
    if ndim == 0 {
        return Ok(vec![]);
    }
    if !(1..=6).contains(&ndim) {
        return Err(malformed(t, true, b, &format!("{ndim} array dimensions")));
    }
    let mut count: usize = 1;
    for _ in 0..ndim {
        let len = r.i32().map_err(m)?;
        let _lower = r.i32().map_err(m)?;
        count = usize::try_from(len)
            .ok()
            .and_then(|l| count.checked_mul(l))
            .filter(|c| *c <= b.len())
            .ok_or_else(|| malformed(t, true, b, "array dimensions do not fit its data"))?;
    }
    let mut out = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let len = r.i32().map_err(m)?;
        if len < 0 {
            continue; // NULL matches no row
        }
        let v = r.bytes(len as usize).map_err(m)?;
        out.push(decode(k, elem, true, v)?);
    }
    if !r.remaining().is_empty() {
        return Err(malformed(t, true, b, "bytes after the last array element"));
    }
    Ok(out)
}

/// `{1,2,"a b",NULL}` -> elements (None for NULL).
pub fn parse_text_array(s: &str) -> Result<Vec<Option<String>>, String> {
    let inner = s
        .trim()
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .ok_or_else(|| format!("\"{s}\" is not an array literal"))?;
    let mut out = Vec::new();
    if inner.trim().is_empty() {
        return Ok(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut cur = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => cur.extend(chars.next()),
                    '"' => break,
                    c => cur.push(c),
                }
            }
            while chars.peek().is_some_and(|c| *c != ',') {
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                cur.push(c);
                chars.next();
            }
            cur = cur.trim().to_string();
        }
        out.push(if !quoted && cur.eq_ignore_ascii_case("null") {
            None
        } else {
            Some(cur)
        });
        if chars.next().is_none() {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests;

//! Binary-format values of the types a cross-shard merge orders or
//! computes. A client that asks for binary results (tokio-postgres, sqlx,
//! asyncpg, JDBC after a few executions) gets them from the shards as is
//! where the proxy only passes rows through; the merge then reads its sort
//! keys from binary (`decode_key`). Aggregates and group keys are merged
//! in text, and the merged values are written back in binary for such a
//! client (`encode_text`).
//!
//! Only the types the merges know (merge::SortType, plus numeric) are
//! covered; any other binary column the proxy would have to read is
//! refused with 0A000 by the callers.

use std::borrow::Cow;

use super::merge::{oid, Num, SortType, Val};

/// Microseconds from 1970-01-01 to 2000-01-01, PostgreSQL's binary epoch.
const EPOCH_2000_US: i128 = 946_684_800_000_000;
const DAY_US: i128 = 86_400_000_000;

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

fn fixed<const N: usize>(v: &[u8], what: &str) -> Result<[u8; N], String> {
    v.try_into()
        .map_err(|_| format!("a binary {what} value has {} bytes, not {N}", v.len()))
}

/// A binary value of type `type_oid` as the merge compares it.
pub fn decode_key(sort: SortType, type_oid: i32, v: &[u8]) -> Result<Val<'_>, String> {
    Ok(match (sort, type_oid) {
        (SortType::Int, oid::INT2) => Val::Int(i16::from_be_bytes(fixed(v, "int2")?) as i64),
        (SortType::Int, oid::INT4) => Val::Int(i32::from_be_bytes(fixed(v, "int4")?) as i64),
        (SortType::Int, _) => Val::Int(i64::from_be_bytes(fixed(v, "int8")?)),
        (SortType::Float, oid::FLOAT4) => {
            Val::Float(f32::from_be_bytes(fixed(v, "float4")?) as f64)
        }
        (SortType::Float, _) => Val::Float(f64::from_be_bytes(fixed(v, "float8")?)),
        (SortType::Numeric, _) => Val::Num(decode_numeric(v)?),
        (SortType::Text, _) => Val::Bytes(v),
        (SortType::Bpchar, _) => {
            let end = v.iter().rposition(|b| *b != b' ').map_or(0, |p| p + 1);
            Val::Bytes(&v[..end])
        }
        // Big-endian bytes order as the hex text does.
        (SortType::Uuid, _) => {
            fixed::<16>(v, "uuid")?;
            Val::Bytes(v)
        }
        (SortType::Bool, _) => Val::Int(fixed::<1>(v, "bool")?[0].min(1) as i64),
        (SortType::Date, _) => Val::Time(match i32::from_be_bytes(fixed(v, "date")?) {
            i32::MAX => i128::MAX,
            i32::MIN => i128::MIN,
            d => d as i128 * DAY_US + EPOCH_2000_US,
        }),
        (SortType::Timestamp | SortType::TimestampTz, _) => {
            Val::Time(match i64::from_be_bytes(fixed(v, "timestamp")?) {
                i64::MAX => i128::MAX,
                i64::MIN => i128::MIN,
                t => t as i128 + EPOCH_2000_US,
            })
        }
    })
}

/// A binary numeric: digit count, weight, sign, display scale, then
/// base-10000 digits.
fn decode_numeric(v: &[u8]) -> Result<Num<'static>, String> {
    let short = || "a binary numeric value is truncated".to_string();
    let word = |i: usize| -> Result<u16, String> {
        Ok(u16::from_be_bytes(
            v.get(i * 2..i * 2 + 2)
                .ok_or_else(short)?
                .try_into()
                .unwrap(),
        ))
    };
    let ndigits = word(0)? as usize;
    let weight = word(1)? as i16 as i64;
    let sign = word(2)?;
    match sign {
        NUMERIC_NAN => return Ok(Num::NaN),
        NUMERIC_PINF => return Ok(Num::PosInf),
        NUMERIC_NINF => return Ok(Num::NegInf),
        NUMERIC_POS | NUMERIC_NEG => {}
        _ => return Err(format!("a binary numeric value has sign {sign:#x}")),
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|k| word(4 + k))
        .collect::<Result<_, _>>()?;
    // Group k (0-based) has weight `weight - k`: weight 0 is the units group.
    let (mut int, mut frac) = (String::new(), String::new());
    for w in (0..=weight.max(-1)).rev() {
        let k = weight - w;
        let d = digits.get(k as usize).copied().unwrap_or(0);
        int.push_str(&format!("{d:04}"));
    }
    for w in 1..=(ndigits as i64 - weight - 1).max(0) {
        let k = weight + w;
        let d = if k < 0 {
            0
        } else {
            digits.get(k as usize).copied().unwrap_or(0)
        };
        frac.push_str(&format!("{d:04}"));
    }
    let int = int.trim_start_matches('0').to_string();
    let frac = frac.trim_end_matches('0').to_string();
    Ok(Num::Finite {
        neg: sign == NUMERIC_NEG,
        int: Cow::Owned(int),
        frac: Cow::Owned(frac),
    })
}

/// The binary form of a text value of type `type_oid` (merged aggregates
/// and group keys); `Err` when the proxy cannot write that type in binary.
pub fn encode_text(type_oid: i32, text: &str) -> Result<Vec<u8>, String> {
    let bad = |what: &str| format!("the {what} value \"{text}\" cannot be written in binary");
    Ok(match type_oid {
        oid::INT2 => text
            .parse::<i16>()
            .map_err(|_| bad("int2"))?
            .to_be_bytes()
            .to_vec(),
        oid::INT4 => text
            .parse::<i32>()
            .map_err(|_| bad("int4"))?
            .to_be_bytes()
            .to_vec(),
        oid::INT8 => text
            .parse::<i64>()
            .map_err(|_| bad("int8"))?
            .to_be_bytes()
            .to_vec(),
        oid::FLOAT4 => super::merge::parse_float(text)
            .map(|f| (f as f32).to_be_bytes().to_vec())
            .ok_or_else(|| bad("float4"))?,
        oid::FLOAT8 => super::merge::parse_float(text)
            .map(|f| f.to_be_bytes().to_vec())
            .ok_or_else(|| bad("float8"))?,
        oid::NUMERIC => encode_numeric(text).ok_or_else(|| bad("numeric"))?,
        oid::TEXT | oid::VARCHAR | oid::NAME | oid::BPCHAR => text.as_bytes().to_vec(),
        oid::BOOL => match text {
            "t" => vec![1],
            "f" => vec![0],
            _ => return Err(bad("boolean")),
        },
        oid::UUID => {
            let hex: String = text.chars().filter(|c| *c != '-').collect();
            if hex.len() != 32 {
                return Err(bad("uuid"));
            }
            (0..16)
                .map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| bad("uuid"))?
        }
        oid::DATE => {
            let t = super::merge::parse_value(SortType::Date, text.as_bytes())?;
            let Val::Time(us) = t else { unreachable!() };
            let days = match us {
                i128::MAX => i32::MAX,
                i128::MIN => i32::MIN,
                us => i32::try_from((us - EPOCH_2000_US).div_euclid(DAY_US))
                    .map_err(|_| bad("date"))?,
            };
            days.to_be_bytes().to_vec()
        }
        oid::TIMESTAMP | oid::TIMESTAMPTZ => {
            let sort = if type_oid == oid::TIMESTAMP {
                SortType::Timestamp
            } else {
                SortType::TimestampTz
            };
            let t = super::merge::parse_value(sort, text.as_bytes())?;
            let Val::Time(us) = t else { unreachable!() };
            let v = match us {
                i128::MAX => i64::MAX,
                i128::MIN => i64::MIN,
                us => i64::try_from(us - EPOCH_2000_US).map_err(|_| bad("timestamp"))?,
            };
            v.to_be_bytes().to_vec()
        }
        _ => {
            return Err(format!(
                "type OID {type_oid} cannot be written in binary by the proxy"
            ))
        }
    })
}

/// Text numeric (`-12.340`, `NaN`, `Infinity`) to PostgreSQL's binary form.
fn encode_numeric(text: &str) -> Option<Vec<u8>> {
    let header = |ndigits: u16, weight: i16, sign: u16, dscale: u16| {
        let mut out = Vec::with_capacity(8);
        for w in [ndigits, weight as u16, sign, dscale] {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out
    };
    match text {
        "NaN" => return Some(header(0, 0, NUMERIC_NAN, 0)),
        "Infinity" => return Some(header(0, 0, NUMERIC_PINF, 0)),
        "-Infinity" => return Some(header(0, 0, NUMERIC_NINF, 0)),
        _ => {}
    }
    let (neg, t) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (i, f) = t.split_once('.').unwrap_or((t, ""));
    if i.is_empty() || !i.bytes().chain(f.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let dscale = u16::try_from(f.len()).ok()?;
    let i = i.trim_start_matches('0');
    // Pad to whole base-10000 groups: the integer part on the left, the
    // fraction on the right.
    let mut digits = "0".repeat((4 - i.len() % 4) % 4);
    digits.push_str(i);
    let int_groups = digits.len() / 4;
    digits.push_str(f);
    digits.push_str(&"0".repeat((4 - f.len() % 4) % 4));
    let mut groups: Vec<u16> = digits
        .as_bytes()
        .chunks(4)
        .map(|c| c.iter().fold(0u16, |a, d| a * 10 + (d - b'0') as u16))
        .collect();
    let mut weight = int_groups as i64 - 1;
    let lead = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..lead);
    weight -= lead as i64;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        return Some(header(0, 0, NUMERIC_POS, dscale));
    }
    let sign = if neg { NUMERIC_NEG } else { NUMERIC_POS };
    let mut out = header(
        groups.len() as u16,
        i16::try_from(weight).ok()?,
        sign,
        dscale,
    );
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num_text(n: &Num) -> String {
        match n {
            Num::Finite { neg, int, frac } => format!(
                "{}{}{}{}",
                if *neg { "-" } else { "" },
                if int.is_empty() { "0" } else { int },
                if frac.is_empty() { "" } else { "." },
                frac
            ),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn numeric_round_trips_through_binary() {
        // Binary forms as PostgreSQL sends them (numeric_send).
        for (text, canonical) in [
            ("0", "0"),
            ("1", "1"),
            ("-1", "-1"),
            ("12345.678", "12345.678"),
            ("0.0001", "0.0001"),
            ("0.00001", "0.00001"),
            ("10000", "10000"),
            ("-99999999.99990000", "-99999999.9999"),
            (
                "123456789012345678901234567890.5",
                "123456789012345678901234567890.5",
            ),
        ] {
            let b = encode_numeric(text).unwrap();
            let n = decode_numeric(&b).unwrap();
            assert_eq!(num_text(&n), canonical, "{text}");
        }
        // 12345.678: 3 groups [1, 2345, 6780], weight 1, dscale 3.
        assert_eq!(
            encode_numeric("12345.678").unwrap(),
            [0, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1a, 0x7c]
        );
        assert_eq!(
            decode_numeric(&encode_numeric("NaN").unwrap()).unwrap(),
            Num::NaN
        );
        assert!(encode_numeric("1e5").is_none());
    }

    #[test]
    fn keys_decode_in_value_order() {
        let minus5 = (-5i32).to_be_bytes();
        assert_eq!(
            decode_key(SortType::Int, oid::INT4, &minus5).unwrap(),
            Val::Int(-5)
        );
        let date = encode_text(oid::DATE, "2000-01-02").unwrap();
        assert_eq!(date, 1i32.to_be_bytes());
        let ts = encode_text(oid::TIMESTAMPTZ, "2000-01-01 00:00:01+00").unwrap();
        assert_eq!(ts, 1_000_000i64.to_be_bytes());
        assert_eq!(
            decode_key(SortType::TimestampTz, oid::TIMESTAMPTZ, &ts).unwrap(),
            super::super::merge::parse_value(SortType::TimestampTz, b"2000-01-01 00:00:01+00")
                .unwrap()
        );
        let u = encode_text(oid::UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
        assert_eq!(u[0], 0xa0);
        assert_eq!(u.len(), 16);
        assert!(encode_text(3802, "{}").is_err());
    }
}

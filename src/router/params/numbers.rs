//! Numbers as PostgreSQL sends them, read exactly: integers, floats and
//! numerics in binary and text form, each to an integer key only when the
//! value is one (a key is never rounded).

use std::fmt::Write as _;

use super::oid::{self, type_name};
use super::{malformed, not_integral, utf8, BadParam, INVALID_TEXT, NOT_SUPPORTED, OUT_OF_RANGE};

/// Floats are exact integers only below these magnitudes: beyond, several
/// integer keys compare equal to one float (`9007199254740993::int8 =
/// 9007199254740992::float8` is true), so no one shard holds its matches.
const FLOAT8_EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
const FLOAT4_EXACT: f64 = 16_777_216.0; // 2^24

/// int2recv/int4recv/int8recv: exactly the type's width, big-endian (a
/// value of another length is the client's mistake, as on the server).
pub(super) fn int_binary(t: u32, width: usize, b: &[u8]) -> Result<i64, BadParam> {
    match (width, b) {
        (2, &[a, b0]) => Ok(i16::from_be_bytes([a, b0]) as i64),
        (4, &[a, b0, c, d]) => Ok(i32::from_be_bytes([a, b0, c, d]) as i64),
        (8, _) if b.len() == 8 => {
            let mut x = [0u8; 8];
            x.copy_from_slice(b);
            Ok(i64::from_be_bytes(x))
        }
        _ => Err(malformed(
            t,
            true,
            b,
            &format!("{} bytes, not {width}", b.len()),
        )),
    }
}

/// PostgreSQL's int2in/int4in/int8in, without the PostgreSQL 16 spellings
/// (`1_000`, `0x10`): those are refused rather than misread.
pub(super) fn int_text(t: u32, width: usize, s: &str) -> Result<i64, BadParam> {
    let v = s.trim().parse::<i64>().map_err(|_| BadParam {
        code: INVALID_TEXT,
        value: format!("'{s}'"),
        reason: format!("invalid input syntax for type {}", type_name(t)),
        hint: "send an integer as decimal digits".into(),
    })?;
    let fits = match width {
        2 => i16::try_from(v).is_ok(),
        4 => i32::try_from(v).is_ok(),
        _ => true,
    };
    if !fits {
        return Err(BadParam {
            code: OUT_OF_RANGE,
            value: v.to_string(),
            reason: format!("value out of range for type {}", type_name(t)),
            hint: "declare the parameter with a wider integer type".into(),
        });
    }
    Ok(v)
}

/// A float parameter's value, and the magnitude below which it is exact.
pub(super) fn float_value(t: u32, binary: bool, b: &[u8]) -> Result<(f64, f64), BadParam> {
    let single = t == oid::FLOAT4;
    let exact = if single { FLOAT4_EXACT } else { FLOAT8_EXACT };
    let v = if binary {
        match (single, b) {
            (true, &[a, b0, c, d]) => f32::from_be_bytes([a, b0, c, d]) as f64,
            (false, _) if b.len() == 8 => {
                let mut x = [0u8; 8];
                x.copy_from_slice(b);
                f64::from_be_bytes(x)
            }
            _ => {
                return Err(malformed(
                    t,
                    true,
                    b,
                    &format!("{} bytes, not {}", b.len(), if single { 4 } else { 8 }),
                ))
            }
        }
    } else {
        // float4in/float8in: strtod with surrounding blanks; Rust's parse
        // rounds exactly as strtod does.
        let s = utf8(t, false, b)?.trim();
        let parsed = if single {
            s.parse::<f32>().map(f64::from)
        } else {
            s.parse::<f64>()
        };
        parsed.map_err(|_| BadParam {
            code: INVALID_TEXT,
            value: format!("'{s}'"),
            reason: format!("invalid input syntax for type {}", type_name(t)),
            hint: "send the key as an integer".into(),
        })?
    };
    Ok((v, exact))
}

pub(super) fn float_key(t: u32, v: f64, exact: f64) -> Result<i64, BadParam> {
    if !v.is_finite() || v.fract() != 0.0 {
        return Err(not_integral(format!("{v:?}")));
    }
    if v.abs() >= exact {
        return Err(BadParam {
            code: NOT_SUPPORTED,
            value: format!("{v:?}"),
            reason: format!(
                "a {} is an exact integer only below {exact:.0} in magnitude; beyond, several integer keys compare equal to it",
                type_name(t)
            ),
            hint: "send the key as int8 or numeric".into(),
        });
    }
    Ok(v as i64)
}

/// Why a numeric is not an integer key.
pub(super) enum NumericFault {
    Malformed(String),
    /// The value as text.
    NotIntegral(String),
    OutOfRange(String),
}

impl NumericFault {
    pub(super) fn into_bad(self, t: u32, binary: bool, b: &[u8]) -> BadParam {
        match self {
            NumericFault::Malformed(what) => malformed(t, binary, b, &what),
            NumericFault::NotIntegral(v) => not_integral(v),
            NumericFault::OutOfRange(v) => BadParam {
                code: OUT_OF_RANGE,
                value: v,
                reason: "bigint out of range".into(),
                hint: "an integer shard key is a bigint at most".into(),
            },
        }
    }
}

/// numeric_recv's format: ndigits, weight, sign, dscale (i16 each), then
/// ndigits base-10000 digits, most significant first; the value is
/// sum(digit[i] * 10000^(weight - i)).
pub(super) fn numeric_binary(b: &[u8]) -> Result<i64, NumericFault> {
    let bad = |m: &str| NumericFault::Malformed(m.to_string());
    let word = |i: usize| -> Result<u16, NumericFault> {
        b.get(2 * i..2 * i + 2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]))
            .ok_or_else(|| bad("too short"))
    };
    let ndigits = word(0)? as i16;
    let weight = word(1)? as i16 as i64;
    let sign = word(2)?;
    let _dscale = word(3)?;
    if ndigits < 0 || b.len() != 8 + 2 * ndigits as usize {
        return Err(bad("wrong length"));
    }
    let digits: Vec<u16> = (0..ndigits as usize)
        .map(|i| word(4 + i))
        .collect::<Result<_, _>>()?;
    if digits.iter().any(|d| *d >= 10_000) {
        return Err(bad("invalid digit"));
    }
    let text = || numeric_text(weight, sign, &digits);
    let negative = match sign {
        0x0000 => false,
        0x4000 => true,
        // NaN, +Infinity, -Infinity
        0xC000 | 0xD000 | 0xF000 => return Err(NumericFault::NotIntegral(text())),
        _ => return Err(bad("invalid sign")),
    };
    // Digit i stands for 10000^(weight - i): a nonzero digit past the
    // units makes a fraction.
    if digits
        .iter()
        .enumerate()
        .any(|(i, d)| (i as i64) > weight && *d != 0)
    {
        return Err(NumericFault::NotIntegral(text()));
    }
    let mut acc: i128 = 0;
    for i in 0..=weight.max(-1) {
        let d = digits.get(i as usize).copied().unwrap_or(0) as i128;
        acc = acc
            .checked_mul(10_000)
            .and_then(|a| a.checked_add(d))
            .filter(|a| *a <= i64::MAX as i128 + 1)
            .ok_or_else(|| NumericFault::OutOfRange(text()))?;
    }
    let v = if negative { -acc } else { acc };
    i64::try_from(v).map_err(|_| NumericFault::OutOfRange(text()))
}

/// A binary numeric as decimal text, for messages.
fn numeric_text(weight: i64, sign: u16, digits: &[u16]) -> String {
    match sign {
        0xC000 => return "NaN".into(),
        0xD000 => return "Infinity".into(),
        0xF000 => return "-Infinity".into(),
        _ => {}
    }
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    // The digit of weight p (10000^p); zero outside the stored digits.
    let digit = |p: i64| {
        usize::try_from(weight - p)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let top = weight.max(0);
    let bottom = (weight - digits.len() as i64 + 1).min(0);
    if top > 16 || bottom < -16 {
        // Only messages show this: an order of magnitude will do.
        let _ = write!(out, "a {}-digit number", 4 * (top - bottom + 1));
        return out;
    }
    let mut int_part = String::new();
    for p in (0..=top).rev() {
        let _ = write!(int_part, "{:04}", digit(p));
    }
    let mut frac_part = String::new();
    for p in (bottom..0).rev() {
        let _ = write!(frac_part, "{:04}", digit(p));
    }
    let int_part = int_part.trim_start_matches('0');
    out.push_str(if int_part.is_empty() { "0" } else { int_part });
    let frac_part = frac_part.trim_end_matches('0');
    if !frac_part.is_empty() {
        out.push('.');
        out.push_str(frac_part);
    }
    out
}

/// numeric_in: `[+-]digits[.digits][e[+-]digits]` with blanks around,
/// read exactly (no float in between).
pub(super) fn decimal_text(s: &str) -> Result<i64, NumericFault> {
    let t = s.trim();
    let shown = || format!("'{t}'");
    let lower = t.to_ascii_lowercase();
    if matches!(
        lower.trim_start_matches(['+', '-']),
        "nan" | "inf" | "infinity"
    ) {
        return Err(NumericFault::NotIntegral(shown()));
    }
    let (negative, rest) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let (int_digits, frac_digits) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |x: &str| x.bytes().all(|c| c.is_ascii_digit());
    if (int_digits.is_empty() && frac_digits.is_empty())
        || !all_digits(int_digits)
        || !all_digits(frac_digits)
    {
        return Err(NumericFault::Malformed("invalid input syntax".into()));
    }
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let digits = e.trim_start_matches(['+', '-']);
            if digits.is_empty() || !all_digits(digits) || e.len() - digits.len() > 1 {
                return Err(NumericFault::Malformed("invalid exponent".into()));
            }
            // Beyond this the value is 0 or out of range either way.
            let mag: i64 = digits.parse().unwrap_or(i64::MAX).min(100_000);
            if e.starts_with('-') {
                -mag
            } else {
                mag
            }
        }
    };
    // The value is DIGITS * 10^shift, DIGITS = int_digits ++ frac_digits.
    let digits = format!("{int_digits}{frac_digits}");
    let digits = digits.trim_start_matches('0');
    let shift = exponent - frac_digits.len() as i64;
    let integral: String = if shift >= 0 {
        if digits.is_empty() {
            String::new()
        } else if shift > 19 {
            return Err(NumericFault::OutOfRange(shown()));
        } else {
            format!("{digits}{}", "0".repeat(shift as usize))
        }
    } else {
        let cut = (-shift) as usize;
        let (keep, dropped) = if cut >= digits.len() {
            ("", digits)
        } else {
            digits.split_at(digits.len() - cut)
        };
        if dropped.bytes().any(|c| c != b'0') {
            return Err(NumericFault::NotIntegral(shown()));
        }
        keep.to_string()
    };
    if integral.is_empty() {
        return Ok(0);
    }
    if integral.len() > 19 {
        return Err(NumericFault::OutOfRange(shown()));
    }
    let magnitude: i128 = integral
        .parse()
        .map_err(|_| NumericFault::OutOfRange(shown()))?;
    let v = if negative { -magnitude } else { magnitude };
    i64::try_from(v).map_err(|_| NumericFault::OutOfRange(shown()))
}

//! Every parameter type against every key type, and the golden rule the
//! decoding exists for: a key routes the same whatever type carries it.

use super::oid::*;
use super::*;
use crate::router::{HashRing, Placement, Router, SessionHints, TableRule};

fn int(t: u32, binary: bool, b: &[u8]) -> Result<i64, BadParam> {
    match decode(KeyType::Int, t, binary, b)? {
        KeyValue::Int(v) => Ok(v),
        other => panic!("{other:?}"),
    }
}

fn text(t: u32, binary: bool, b: &[u8]) -> Result<String, BadParam> {
    match decode(KeyType::Text, t, binary, b)? {
        KeyValue::Text(v) => Ok(v),
        other => panic!("{other:?}"),
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, BadParam>) -> &'static str {
    r.expect_err("refused").code
}

/// numeric_send's format from its parts.
pub(super) fn numeric(weight: i16, negative: bool, dscale: i16, digits: &[u16]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    b.extend_from_slice(&weight.to_be_bytes());
    b.extend_from_slice(&(if negative { 0x4000u16 } else { 0 }).to_be_bytes());
    b.extend_from_slice(&dscale.to_be_bytes());
    for d in digits {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b
}

/// array_send's format, one dimension.
fn array(elem: u32, elems: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&1i32.to_be_bytes());
    b.extend_from_slice(&(elems.iter().any(Option::is_none) as i32).to_be_bytes());
    b.extend_from_slice(&elem.to_be_bytes());
    b.extend_from_slice(&(elems.len() as i32).to_be_bytes());
    b.extend_from_slice(&1i32.to_be_bytes());
    for e in elems {
        match e {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
        }
    }
    b
}

#[test]
fn integers_by_their_type() {
    assert_eq!(int(INT2, true, &(-3i16).to_be_bytes()), Ok(-3));
    assert_eq!(int(INT4, true, &7i32.to_be_bytes()), Ok(7));
    assert_eq!(int(INT8, true, &i64::MIN.to_be_bytes()), Ok(i64::MIN));
    assert_eq!(int(INT2, false, b" 12 "), Ok(12));
    assert_eq!(int(INT4, false, b"-2147483648"), Ok(-2147483648));
    assert_eq!(int(INT8, false, b"+9"), Ok(9));
    // The width is the type's, not the value's.
    assert_eq!(code(int(INT4, true, &7i64.to_be_bytes())), "22P03");
    assert_eq!(code(int(INT8, true, &7i32.to_be_bytes())), "22P03");
    assert_eq!(code(int(INT2, true, &[0])), "22P03");
    // PostgreSQL's errors for text: syntax, range.
    assert_eq!(code(int(INT4, false, b"3.0")), "22P02");
    assert_eq!(code(int(INT8, false, b"1_000")), "22P02");
    assert_eq!(code(int(INT2, false, b"40000")), "22003");
    assert_eq!(code(int(INT4, false, b"2147483648")), "22003");
}

#[test]
fn floats_route_by_their_integral_value() {
    assert_eq!(int(FLOAT8, true, &3f64.to_be_bytes()), Ok(3));
    assert_eq!(int(FLOAT8, true, &(-0f64).to_be_bytes()), Ok(0));
    assert_eq!(int(FLOAT4, true, &(-12f32).to_be_bytes()), Ok(-12));
    assert_eq!(int(FLOAT8, false, b" 3.0 "), Ok(3));
    assert_eq!(int(FLOAT8, false, b"1e3"), Ok(1000));
    assert_eq!(int(FLOAT4, false, b"42"), Ok(42));
    // Exact up to 2^53 (float8) and 2^24 (float4).
    let below = 9_007_199_254_740_991f64;
    assert_eq!(
        int(FLOAT8, true, &below.to_be_bytes()),
        Ok(9_007_199_254_740_991)
    );
    let e = int(FLOAT8, true, &(below + 1.0).to_be_bytes()).unwrap_err();
    assert_eq!(e.code, "0A000");
    assert!(e.reason.contains("exact"), "{e:?}");
    assert_eq!(
        code(int(FLOAT4, true, &16_777_216f32.to_be_bytes())),
        "0A000"
    );
    assert_eq!(
        int(FLOAT4, true, &16_777_215f32.to_be_bytes()),
        Ok(16_777_215)
    );
    // Not integral: refused, never rounded.
    for v in [
        3.5f64,
        -0.25,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e-300,
    ] {
        let e = int(FLOAT8, true, &v.to_be_bytes()).unwrap_err();
        assert_eq!(e.code, "22P02", "{v}");
        assert!(!e.hint.is_empty());
    }
    for s in ["3.5", "NaN", "-Infinity", "0.1"] {
        assert_eq!(code(int(FLOAT8, false, s.as_bytes())), "22P02", "{s}");
    }
    assert_eq!(code(int(FLOAT4, true, &2.5f32.to_be_bytes())), "22P02");
    // The bug this module fixes: float8 3.0 is not int8 4613937818241073152.
    assert_ne!(
        int(FLOAT8, true, &3f64.to_be_bytes()),
        Ok(i64::from_be_bytes(3f64.to_be_bytes()))
    );
    assert_eq!(code(int(FLOAT8, true, &3f32.to_be_bytes())), "22P03");
    assert_eq!(code(int(FLOAT8, false, b"three")), "22P02");
}

#[test]
fn numerics_route_by_their_integral_value() {
    assert_eq!(int(NUMERIC, true, &numeric(0, false, 0, &[42])), Ok(42));
    assert_eq!(int(NUMERIC, true, &numeric(0, false, 2, &[42])), Ok(42)); // 42.00
    assert_eq!(int(NUMERIC, true, &numeric(0, true, 0, &[7])), Ok(-7));
    assert_eq!(int(NUMERIC, true, &numeric(0, false, 0, &[])), Ok(0));
    assert_eq!(int(NUMERIC, true, &numeric(1, false, 0, &[1])), Ok(10_000));
    assert_eq!(
        int(NUMERIC, true, &numeric(1, false, 0, &[1234, 5678])),
        Ok(12_345_678)
    );
    let max = [922, 3372, 368, 5477, 5807];
    assert_eq!(
        int(NUMERIC, true, &numeric(4, false, 0, &max)),
        Ok(i64::MAX)
    );
    let min = [922, 3372, 368, 5477, 5808];
    assert_eq!(int(NUMERIC, true, &numeric(4, true, 0, &min)), Ok(i64::MIN));
    assert_eq!(
        code(int(NUMERIC, true, &numeric(4, false, 0, &min))),
        "22003"
    );
    assert_eq!(
        code(int(NUMERIC, true, &numeric(300, false, 0, &[1]))),
        "22003"
    );
    // 42.5, 0.5, NaN: not integers.
    let e = int(NUMERIC, true, &numeric(0, false, 1, &[42, 5000])).unwrap_err();
    assert_eq!((e.code, e.value.as_str()), ("22P02", "42.5"));
    let e = int(NUMERIC, true, &numeric(-1, false, 1, &[5000])).unwrap_err();
    assert_eq!((e.code, e.value.as_str()), ("22P02", "0.5"));
    let mut nan = numeric(0, false, 0, &[]);
    nan[4..6].copy_from_slice(&0xC000u16.to_be_bytes());
    assert_eq!(code(int(NUMERIC, true, &nan)), "22P02");
    // Malformed: a digit of 10000, a short body.
    assert_eq!(
        code(int(NUMERIC, true, &numeric(0, false, 0, &[10_000]))),
        "22P03"
    );
    assert_eq!(
        code(int(NUMERIC, true, &numeric(0, false, 0, &[1])[..9])),
        "22P03"
    );
    // Text form.
    for (s, v) in [
        ("42", 42),
        (" 42.000 ", 42),
        ("4.2e1", 42),
        ("-0", 0),
        ("1E+3", 1000),
        ("420e-1", 42),
        (".0", 0),
    ] {
        assert_eq!(int(NUMERIC, false, s.as_bytes()), Ok(v), "{s}");
    }
    for (s, c) in [
        ("42.5", "22P02"),
        ("4.25e1", "22P02"),
        ("NaN", "22P02"),
        ("1e19", "22003"),
        ("x", "22P02"),
        ("1e", "22P02"),
        ("", "22P02"),
    ] {
        assert_eq!(code(int(NUMERIC, false, s.as_bytes())), c, "{s}");
    }
}

#[test]
fn text_types_spell_the_key() {
    for t in [TEXT, VARCHAR, BPCHAR, NAME, UNKNOWN] {
        assert_eq!(int(t, false, b"42"), Ok(42), "{t}");
        assert_eq!(int(t, true, b"42"), Ok(42), "{t}");
        assert_eq!(code(int(t, false, b"3.0")), "22P02", "{t}");
        assert_eq!(text(t, false, b"de"), Ok("de".into()), "{t}");
    }
    // char(n) pads with blanks that do not count; a name is 63 bytes.
    assert_eq!(text(BPCHAR, true, b"de   "), Ok("de".into()));
    assert_eq!(text(TEXT, true, b"de   "), Ok("de   ".into()));
    let long = "é".repeat(40);
    let clipped = text(NAME, false, long.as_bytes()).unwrap();
    assert_eq!(clipped.len(), 62);
    assert_eq!(code(text(TEXT, true, &[0xff])), "22P03");
}

#[test]
fn text_keys() {
    // An integer assigned to a text column is its decimal form.
    assert_eq!(text(INT4, true, &5i32.to_be_bytes()), Ok("5".into()));
    assert_eq!(text(INT8, false, b"-5"), Ok("-5".into()));
    let u = *b"\xa0\xee\xbc\x99\x9c\x0b\x4e\xf8\xbb\x6d\x6b\xb9\xbd\x38\x0a\x11";
    assert_eq!(
        text(UUID, true, &u),
        Ok("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into())
    );
    // A float's or numeric's text has many spellings: refused.
    assert_eq!(code(text(FLOAT8, true, &3f64.to_be_bytes())), "0A000");
    assert_eq!(code(text(NUMERIC, false, b"3")), "0A000");
}

#[test]
fn uuid_keys() {
    let u = *b"\xa0\xee\xbc\x99\x9c\x0b\x4e\xf8\xbb\x6d\x6b\xb9\xbd\x38\x0a\x11";
    let s = b"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11";
    for (t, binary, b) in [
        (UUID, true, &u[..]),
        (UUID, false, &s[..]),
        (TEXT, false, &s[..]),
        (UNSPECIFIED, true, &u[..]),
        (UNSPECIFIED, false, &s[..]),
    ] {
        assert_eq!(
            decode(KeyType::Uuid, t, binary, b),
            Ok(KeyValue::Uuid(u)),
            "{t}"
        );
    }
    assert_eq!(code(decode(KeyType::Uuid, UUID, true, &u[..15])), "22P03");
    assert_eq!(
        code(decode(KeyType::Uuid, INT8, true, &1i64.to_be_bytes())),
        "0A000"
    );
    assert_eq!(code(decode(KeyType::Int, UUID, true, &u)), "0A000");
}

#[test]
fn dates_and_other_types_are_refused() {
    for (t, b) in [
        (DATE, &0i32.to_be_bytes()[..]),
        (TIMESTAMP, &0i64.to_be_bytes()[..]),
        (TIMESTAMPTZ, &0i64.to_be_bytes()[..]),
        (16, &[1u8][..]),              // bool
        (17, &b"ab"[..]),              // bytea
        (26, &7u32.to_be_bytes()[..]), // oid
    ] {
        for k in [KeyType::Int, KeyType::Text, KeyType::Uuid] {
            let e = decode(k, t, true, b).unwrap_err();
            assert_eq!(e.code, "0A000", "{t} {k:?}");
            assert!(e.hint.contains("send the key as"), "{e:?}");
        }
        assert_eq!(
            code(decode(KeyType::Text, t, false, b"2024-01-01")),
            "0A000"
        );
    }
}

#[test]
fn unspecified_types() {
    // Binary: an integer key by its width (what the server infers for an
    // uncast `key = $1`), text as UTF-8.
    assert_eq!(int(UNSPECIFIED, true, &7i16.to_be_bytes()), Ok(7));
    assert_eq!(int(UNSPECIFIED, true, &7i32.to_be_bytes()), Ok(7));
    assert_eq!(int(UNSPECIFIED, true, &7i64.to_be_bytes()), Ok(7));
    assert_eq!(code(int(UNSPECIFIED, true, &[0, 0, 7])), "22P03");
    assert_eq!(text(UNSPECIFIED, true, b"de"), Ok("de".into()));
    // Text: as a literal.
    assert_eq!(int(UNSPECIFIED, false, b"7"), Ok(7));
    assert_eq!(code(int(UNSPECIFIED, false, b"7.0")), "22P02");
    // A database's own type (enum, domain) and an ambiguous one: text is
    // read as a literal, binary is not read at all.
    for t in [16_385, OTHER, AMBIGUOUS] {
        assert_eq!(int(t, false, b"7"), Ok(7), "{t}");
        assert_eq!(text(t, false, b"de"), Ok("de".into()), "{t}");
        let e = int(t, true, &7i64.to_be_bytes()).unwrap_err();
        assert_eq!(e.code, "0A000", "{t}");
    }
}

#[test]
fn arrays_by_element_type() {
    let f = |v: f64| Some(v.to_be_bytes().to_vec());
    let ints = |k: KeyType, t: u32, binary: bool, b: &[u8]| -> Result<Vec<KeyValue>, BadParam> {
        decode_array(k, t, binary, b)
    };
    let want = vec![KeyValue::Int(3), KeyValue::Int(4)];
    // Binary: the element OID in the array decides, whatever the
    // parameter's declared type says.
    let floats = array(FLOAT8, &[f(3.0), None, f(4.0)]);
    for t in [FLOAT8_ARRAY, UNSPECIFIED, 16_390] {
        assert_eq!(
            ints(KeyType::Int, t, true, &floats),
            Ok(want.clone()),
            "{t}"
        );
    }
    assert_eq!(
        code(ints(
            KeyType::Int,
            FLOAT8_ARRAY,
            true,
            &array(FLOAT8, &[f(3.5)])
        )),
        "22P02"
    );
    let int4s = array(
        INT4,
        &[
            Some(3i32.to_be_bytes().to_vec()),
            Some(4i32.to_be_bytes().to_vec()),
        ],
    );
    assert_eq!(
        ints(KeyType::Int, INT4_ARRAY, true, &int4s),
        Ok(want.clone())
    );
    let nums = array(
        NUMERIC,
        &[
            Some(numeric(0, false, 0, &[3])),
            Some(numeric(0, false, 1, &[4])),
        ],
    );
    assert_eq!(
        ints(KeyType::Int, NUMERIC_ARRAY, true, &nums),
        Ok(want.clone())
    );
    // Empty (no dimensions, or a zero-length one) and two-dimensional.
    let mut empty = Vec::new();
    for x in [0i32, 0, INT8 as i32] {
        empty.extend_from_slice(&x.to_be_bytes());
    }
    assert_eq!(ints(KeyType::Int, INT8_ARRAY, true, &empty), Ok(vec![]));
    assert_eq!(
        ints(KeyType::Int, INT8_ARRAY, true, &array(INT8, &[])),
        Ok(vec![])
    );
    let mut two = Vec::new();
    for x in [2i32, 0, INT2 as i32, 2, 1, 1, 1] {
        two.extend_from_slice(&x.to_be_bytes());
    }
    for v in [3i16, 4] {
        two.extend_from_slice(&2i32.to_be_bytes());
        two.extend_from_slice(&v.to_be_bytes());
    }
    assert_eq!(ints(KeyType::Int, INT2_ARRAY, true, &two), Ok(want.clone()));
    // Malformed: cut short, or bytes left over.
    assert_eq!(
        code(ints(
            KeyType::Int,
            INT8_ARRAY,
            true,
            &floats[..floats.len() - 1]
        )),
        "22P03"
    );
    let mut long = floats.clone();
    long.push(0);
    assert_eq!(code(ints(KeyType::Int, FLOAT8_ARRAY, true, &long)), "22P03");
    // Text: by the parameter's array type.
    assert_eq!(
        ints(KeyType::Int, FLOAT8_ARRAY, false, b"{3.0,NULL,4}"),
        Ok(want.clone())
    );
    assert_eq!(
        ints(KeyType::Int, NUMERIC_ARRAY, false, b"{3,4.00}"),
        Ok(want.clone())
    );
    assert_eq!(
        code(ints(KeyType::Int, INT4_ARRAY, false, b"{3.0}")),
        "22P02"
    );
    assert_eq!(
        ints(KeyType::Int, UNSPECIFIED, false, b"{3,4}"),
        Ok(want.clone())
    );
    assert_eq!(ints(KeyType::Int, TEXT, false, b"{3,4}"), Ok(want.clone()));
    assert_eq!(ints(KeyType::Int, INT8_ARRAY, false, b"{}"), Ok(vec![]));
    assert_eq!(
        ints(KeyType::Text, VARCHAR_ARRAY, false, b"{de,\"a b\"}"),
        Ok(vec![
            KeyValue::Text("de".into()),
            KeyValue::Text("a b".into())
        ])
    );
    assert_eq!(
        ints(KeyType::Text, BPCHAR_ARRAY, false, b"{\"de  \"}"),
        Ok(vec![KeyValue::Text("de".into())])
    );
    let u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    assert_eq!(
        ints(
            KeyType::Uuid,
            UUID_ARRAY,
            false,
            format!("{{{u}}}").as_bytes()
        ),
        Ok(vec![KeyValue::Uuid(parse_uuid(u).unwrap())])
    );
    // Not an array type at all, or an array of dates.
    assert_eq!(
        code(ints(KeyType::Int, INT8, true, &7i64.to_be_bytes())),
        "0A000"
    );
    assert_eq!(
        code(ints(KeyType::Int, TIMESTAMP_ARRAY, false, b"{2024-01-01}")),
        "0A000"
    );
    assert_eq!(code(ints(KeyType::Int, UNSPECIFIED, false, b"3")), "22P02");
}

fn router() -> Router {
    let ring = HashRing::new(&["s0", "s1"], 64).unwrap();
    let accounts = TableRule {
        name: "accounts".into(),
        key: "aid".into(),
        key_type: KeyType::Int,
        placement: Placement::Hash(ring, vec![0, 1]),
        placement_id: "hash:64".into(),
    };
    Router::new(vec![accounts], vec!["s0".into(), "s1".into()], 0)
}

fn shard(sql: &str, params: &[Param<'_>]) -> Result<Vec<usize>, crate::protocol::PgError> {
    router()
        .route(sql, params, &SessionHints::default())
        .map(|r| r.shards)
}

fn typed(value: &[u8], binary: bool, type_oid: u32) -> Param<'_> {
    Param {
        value: Some(value),
        binary,
        type_oid,
    }
}

#[test]
fn golden_a_key_routes_the_same_whatever_carries_it() {
    let select = "select abalance from accounts where aid = $1";
    for key in [0i64, 1, 3, 42, -17, 1_000_003, 9_007_199_254_740_991] {
        let by_int = shard(select, &[typed(&key.to_be_bytes(), true, INT8)]).unwrap();
        let f = (key as f64).to_be_bytes();
        assert_eq!(
            shard(select, &[typed(&f, true, FLOAT8)]).unwrap(),
            by_int,
            "{key}"
        );
        let s = format!("{key}.0");
        assert_eq!(
            shard(select, &[typed(s.as_bytes(), false, FLOAT8)]).unwrap(),
            by_int
        );
        assert_eq!(
            shard(select, &[typed(s.as_bytes(), false, NUMERIC)]).unwrap(),
            by_int
        );
        let k = key.to_string();
        assert_eq!(shard(select, &[Param::text(k.as_bytes())]).unwrap(), by_int);
        if let Ok(small) = i32::try_from(key) {
            let b = small.to_be_bytes();
            assert_eq!(shard(select, &[typed(&b, true, INT4)]).unwrap(), by_int);
            assert_eq!(
                shard(select, &[typed(&b, true, UNSPECIFIED)]).unwrap(),
                by_int
            );
        }
    }
    // numeric 42 (binary) = int 42; float4 3.0 = int 3.
    let n42 = numeric(0, false, 0, &[42]);
    assert_eq!(
        shard(select, &[typed(&n42, true, NUMERIC)]).unwrap(),
        shard(select, &[Param::text(b"42")]).unwrap()
    );
    assert_eq!(
        shard(select, &[typed(&3f32.to_be_bytes(), true, FLOAT4)]).unwrap(),
        shard(select, &[Param::text(b"3")]).unwrap()
    );
    // The bug: float8 3.0 read by its length routed as int8 4613937818241073152.
    let misread = i64::from_be_bytes(3f64.to_be_bytes()).to_string();
    let three = shard(select, &[Param::text(b"3")]).unwrap();
    let wrong = shard(select, &[Param::text(misread.as_bytes())]).unwrap();
    let mut differs = three != wrong;
    // (Both may hash to one shard of two; then another key shows it.)
    for k in 4..40i64 {
        let right = shard(select, &[Param::text(k.to_string().as_bytes())]).unwrap();
        let bits = i64::from_be_bytes((k as f64).to_be_bytes()).to_string();
        let wrong = shard(select, &[Param::text(bits.as_bytes())]).unwrap();
        let typed_right = shard(select, &[typed(&(k as f64).to_be_bytes(), true, FLOAT8)]).unwrap();
        assert_eq!(typed_right, right, "{k}");
        differs |= right != wrong;
    }
    assert!(
        differs,
        "no float key whose bits land elsewhere: the test proves nothing"
    );
}

#[test]
fn refusals_name_table_column_type_and_value() {
    let select = "select abalance from accounts where aid = $1";
    let e = shard(select, &[typed(&3.5f64.to_be_bytes(), true, FLOAT8)]).unwrap_err();
    assert_eq!(e.code, "22P02");
    for part in ["\"accounts\"", "\"aid\"", "$1", "float8", "3.5"] {
        assert!(e.message.contains(part), "{part}: {}", e.message);
    }
    assert!(
        e.hint.as_deref().unwrap_or("").contains("integral"),
        "{e:?}"
    );
    let e = shard(select, &[typed(&0i64.to_be_bytes(), true, TIMESTAMPTZ)]).unwrap_err();
    assert_eq!(e.code, "0A000");
    for part in ["\"accounts\"", "\"aid\"", "$1", "timestamptz", "\\x0000"] {
        assert!(e.message.contains(part), "{part}: {}", e.message);
    }
    assert!(e.hint.is_some());
    // In INSERT rows and ANY arrays alike.
    let insert = "insert into accounts (aid, abalance) values ($1, 0), ($2, 0)";
    let e = router()
        .route(
            insert,
            &[Param::text(b"1"), typed(b"2.5", false, FLOAT8)],
            &SessionHints::default(),
        )
        .unwrap_err();
    assert!(e.message.contains("$2"), "{}", e.message);
    let any = "select * from accounts where aid = any($1)";
    let e = shard(any, &[typed(b"{1,2.5}", false, FLOAT8_ARRAY)]).unwrap_err();
    assert_eq!(e.code, "22P02");
}

#[test]
fn casts_in_the_sql_type_untyped_parameters() {
    let three = shard("select * from accounts where aid = 3", &[]).unwrap();
    let f = 3f64.to_be_bytes();
    let untyped = [typed(&f, true, UNSPECIFIED)];
    for sql in [
        "select * from accounts where aid = $1::float8",
        "select * from accounts where aid = CAST($1 AS double precision)",
        "select * from accounts where aid = ($1)::float8",
        "insert into accounts (aid) values ($1::float8)",
    ] {
        assert_eq!(shard(sql, &untyped).unwrap(), three, "{sql}");
    }
    assert_eq!(
        shard(
            "select * from accounts where aid = $1::float8",
            &[typed(b"3.0", false, UNSPECIFIED)]
        )
        .unwrap(),
        three
    );
    let n = numeric(0, false, 0, &[3]);
    assert_eq!(
        shard(
            "select * from accounts where aid = $1::numeric(10, 0)",
            &[typed(&n, true, UNSPECIFIED)]
        )
        .unwrap(),
        three
    );
    // The client's type comes first: an int8 3 cast to float8 is still 3.
    assert_eq!(
        shard(
            "select * from accounts where aid = $1::float8",
            &[typed(&3i64.to_be_bytes(), true, INT8)]
        )
        .unwrap(),
        three
    );
    // Arrays.
    let arr = array(FLOAT8, &[Some(f.to_vec())]);
    assert_eq!(
        shard(
            "select * from accounts where aid = any($1::float8[])",
            &[typed(&arr, true, UNSPECIFIED)]
        )
        .unwrap(),
        three
    );
    assert_eq!(
        shard(
            "select * from accounts where aid = any($1::float8[])",
            &[typed(b"{3.0}", false, UNSPECIFIED)]
        )
        .unwrap(),
        three
    );
    // Cast in one place, used uncast in another: the type depends on
    // PostgreSQL's order of analysis, so a binary value is not read.
    let e = shard("select $1::float8 from accounts where aid = $1", &untyped).unwrap_err();
    assert_eq!(e.code, "0A000");
    assert!(e.message.contains("ambiguous"), "{}", e.message);
}

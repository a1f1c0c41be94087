//! Merging the answers of several shards to one cross-shard SELECT (simple
//! query protocol): plain rows are concatenated in shard order; a row of
//! count/sum/min/max/avg aggregates is combined into one row; rows with
//! ORDER BY / LIMIT / OFFSET are merged in order by `execute::merge`;
//! GROUP BY groups (and SELECT DISTINCT rows, groups without aggregates)
//! of equal keys are combined into one, compared by type as the ORDER BY
//! merge compares, filtered by HAVING evaluated on the merged values
//! (hidden HAVING-only columns dropped), ordered, limited. Of equal
//! DISTINCT values that print differently (numeric 1.0 and 1.00) the
//! first shard's text, in shard order, is output. `count(DISTINCT c)` of a
//! non-key column: the shards' distinct (group keys, c) rows merged as
//! DISTINCT rows, then counted per group.
//!
//! Values are in text format (the simple protocol). Sums are added as
//! exact decimals (int8 and numeric results); min/max compare integers,
//! numeric, floats, dates and timestamps. Anything else is refused with 0A000 rather than
//! guessed (text min/max would depend on the column's collation).

use std::cmp::Ordering;

use bytes::{BufMut, BytesMut};

use crate::backend::conn::Collected;
use crate::execute::merge::{bad, columns, float_cmp, malformed};
use crate::protocol::{self, be, PgError};
use crate::router::{Agg, CmpOp, Having, Merge, Operand};

use crate::execute::merge::oid::{
    DATE, FLOAT4, FLOAT8, INT2, INT4, INT8, NUMERIC, TIMESTAMP, TIMESTAMPTZ,
};

/// What the client sees of several shards' whole answers to one
/// statement, in the one place that decides it for both protocols,
/// inside and outside transactions.
pub enum Shape<'a> {
    /// A cross-shard read, merged; with the client's result formats when
    /// the shards answered in text for the merge.
    Merged(&'a Merge, Option<&'a [i16]>),
    /// One write run on several shards: every shard's RETURNING rows in
    /// shard order and the rows counted over all shards after this tag
    /// ("INSERT 0", "UPDATE", "DELETE").
    SummedWrite(&'a str),
    /// A multi-row INSERT split over shards (row index -> shard, and the
    /// shard of each answer): RETURNING rows in the order of the VALUES
    /// rows, as one database returns them (an ORM's bulk insert matches
    /// the ids it gets back to its objects by position), then
    /// `INSERT 0 n`.
    SplitInsert {
        row_shards: &'a [usize],
        shards: &'a [usize],
    },
    /// The first shard's answer as it is (a broadcast: every shard ran the
    /// same statement).
    First,
}

/// The client's frames (without ReadyForQuery) for the shards' answers.
pub fn shape(shape: Shape, results: &[Collected]) -> Result<BytesMut, PgError> {
    match shape {
        Shape::Merged(merge, None) => merge_answers(merge, results),
        Shape::Merged(merge, Some(formats)) => in_formats(&merge_answers(merge, results)?, formats),
        Shape::SummedWrite(tag) => {
            let (mut out, _, rows) = concat_rows(results);
            protocol::command_complete(&mut out, &format!("{tag} {rows}"));
            Ok(out)
        }
        Shape::SplitInsert { row_shards, shards } => {
            let mut out = in_values_order(results, row_shards, shards)
                .unwrap_or_else(|| concat_rows(results).0);
            let rows: u64 = results
                .iter()
                .flat_map(|r| &r.frames)
                .filter(|f| f[0] == be::COMMAND_COMPLETE)
                .map(|f| tag_count(f))
                .sum();
            protocol::command_complete(&mut out, &format!("INSERT 0 {rows}"));
            Ok(out)
        }
        Shape::First => Ok(results
            .first()
            .map(|r| {
                r.frames.iter().fold(BytesMut::new(), |mut o, f| {
                    o.extend_from_slice(f);
                    o
                })
            })
            .unwrap_or_default()),
    }
}

/// The row count at the end of a CommandComplete tag (`INSERT 0 5`, `SELECT 5`).
pub fn tag_count(frame: &[u8]) -> u64 {
    let body = protocol::body(frame);
    let tag = String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(body));
    tag.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The client's frames (without ReadyForQuery) for the shards' answers.
pub fn merge_answers(merge: &Merge, results: &[Collected]) -> Result<BytesMut, PgError> {
    match merge {
        Merge::Concat => Ok(concat(results)),
        Merge::Aggregate { aggs, .. } => aggregate(aggs, results),
        Merge::Grouped {
            items,
            keys,
            collated,
            limit,
            offset,
            having,
            hidden,
            ..
        } => grouped(
            items,
            (keys, collated),
            (having.as_ref(), *hidden),
            (*limit, *offset),
            results,
        ),
        Merge::CountDistinct {
            items,
            keys,
            collated,
            limit,
            offset,
            ..
        } => count_distinct(items, (keys, collated), (*limit, *offset), results),
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
pub fn concat_rows(results: &[Collected]) -> (BytesMut, u64, u64) {
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
                be::COMMAND_COMPLETE => counted += tag_count(f),
                be::NOTICE_RESPONSE if i == 0 => out.extend_from_slice(f),
                _ => {}
            }
        }
    }
    (out, rows, counted)
}

/// The shards' RETURNING rows put back in the order of the VALUES rows
/// they came from: row i is the next row of shard `row_shards[i]`. None
/// when a shard returned fewer rows than it was given (ON CONFLICT DO
/// NOTHING skipped some), where the order cannot be known; the rows then
/// come in shard order.
fn in_values_order(
    results: &[Collected],
    row_shards: &[usize],
    shards: &[usize],
) -> Option<BytesMut> {
    let mut out = BytesMut::new();
    let mut described = false;
    let mut per_shard: Vec<std::collections::VecDeque<&BytesMut>> = Vec::new();
    for (i, r) in results.iter().enumerate() {
        let mut rows = std::collections::VecDeque::new();
        for f in &r.frames {
            match f[0] {
                be::ROW_DESCRIPTION if !described => {
                    described = true;
                    out.extend_from_slice(f);
                }
                be::DATA_ROW => rows.push_back(f),
                be::NOTICE_RESPONSE if i == 0 => out.extend_from_slice(f),
                _ => {}
            }
        }
        per_shard.push(rows);
    }
    let given = |shard: usize| row_shards.iter().filter(|s| **s == shard).count();
    let all_returned = shards
        .iter()
        .zip(&per_shard)
        .all(|(s, rows)| rows.is_empty() || rows.len() == given(*s));
    if !all_returned {
        return None;
    }
    for s in row_shards {
        let at = shards.iter().position(|x| x == s)?;
        if let Some(row) = per_shard[at].pop_front() {
            out.extend_from_slice(row);
        }
    }
    Some(out)
}

/// Merged frames (text format) in the client's result formats (Bind's
/// codes: none for all text, one for all columns, or one per column):
/// binary columns are written by `execute::binary`.
pub fn in_formats(frames: &[u8], formats: &[i16]) -> Result<BytesMut, PgError> {
    if formats.iter().all(|f| *f == 0) {
        return Ok(BytesMut::from(frames));
    }
    let format_of = |c: usize| match formats.len() {
        1 => formats[0],
        _ => formats.get(c).copied().unwrap_or(0),
    };
    let mut out = BytesMut::with_capacity(frames.len());
    let mut types: Vec<i32> = vec![];
    for f in protocol::frames(frames) {
        match f[0] {
            be::ROW_DESCRIPTION => {
                let fields = raw_fields(f)?;
                types = column_types(f)?;
                let mut body = BytesMut::new();
                body.put_i16(fields.len() as i16);
                for (c, field) in fields.iter().enumerate() {
                    body.put_slice(&field[..field.len() - 2]);
                    body.put_i16(format_of(c));
                }
                out.put_u8(be::ROW_DESCRIPTION);
                out.put_i32(body.len() as i32 + 4);
                out.extend_from_slice(&body);
            }
            be::DATA_ROW => {
                let values = protocol::data_row_values(f).map_err(malformed)?;
                let mut body = BytesMut::new();
                body.put_i16(values.len() as i16);
                for (c, v) in values.iter().enumerate() {
                    match v {
                        None => body.put_i32(-1),
                        Some(v) if format_of(c) == 1 => {
                            let text =
                                std::str::from_utf8(v).map_err(|_| bad("a value is not UTF-8"))?;
                            let ty = types.get(c).copied().unwrap_or(0);
                            let bin = crate::execute::binary::encode_text(ty, text).map_err(|m| {
                                bad(m).with_hint("ask for this column in text format, or add a condition on the shard key")
                            })?;
                            body.put_i32(bin.len() as i32);
                            body.put_slice(&bin);
                        }
                        Some(v) => {
                            body.put_i32(v.len() as i32);
                            body.put_slice(v);
                        }
                    }
                }
                out.put_u8(be::DATA_ROW);
                out.put_i32(body.len() as i32 + 4);
                out.extend_from_slice(&body);
            }
            _ => out.extend_from_slice(f),
        }
    }
    Ok(out)
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

/// The shard columns of each aggregate: `avg` is two (sum and count).
/// Where each result column starts among the shards' columns (an avg is
/// two there: sum and count, a plain column or another aggregate one),
/// and how many columns the shards answer.
fn shard_columns(items: impl Iterator<Item = Option<Agg>>) -> (Vec<usize>, usize) {
    let mut starts = Vec::new();
    let mut at = 0;
    for item in items {
        starts.push(at);
        at += if item == Some(Agg::Avg) { 2 } else { 1 };
    }
    (starts, at)
}

/// A RowDescription's fields, each as its raw bytes (name to format code).
fn raw_fields(frame: &[u8]) -> Result<Vec<&[u8]>, PgError> {
    let body = protocol::body(frame);
    let short = || bad("malformed RowDescription");
    let n = i16::from_be_bytes(body.get(..2).ok_or_else(short)?.try_into().unwrap());
    let mut at = 2;
    let mut out = Vec::new();
    for _ in 0..n.max(0) {
        let nul = body[at..].iter().position(|b| *b == 0).ok_or_else(short)?;
        let end = at + nul + 1 + 18;
        out.push(body.get(at..end).ok_or_else(short)?);
        at = end;
    }
    Ok(out)
}

/// The client's RowDescription: the shards' one with each avg's sum and
/// count columns replaced by one numeric column named as the sum column.
fn client_description(aggs: &[Option<Agg>], frame: &[u8]) -> Result<BytesMut, PgError> {
    if !aggs.contains(&Some(Agg::Avg)) {
        return Ok(BytesMut::from(frame));
    }
    let fields = raw_fields(frame)?;
    let mut body = BytesMut::new();
    body.put_i16(aggs.len() as i16);
    let mut c = 0;
    for agg in aggs {
        let f = *fields.get(c).ok_or_else(|| bad("unexpected columns"))?;
        if *agg == Some(Agg::Avg) {
            let nul = f.iter().position(|b| *b == 0).unwrap_or(0);
            body.put_slice(&f[..=nul]);
            body.put_i32(0); // table
            body.put_i16(0); // column
            body.put_i32(NUMERIC);
            body.put_i16(-1); // varlena
            body.put_i32(-1); // typmod
            body.put_i16(0); // text
            c += 2;
        } else {
            body.put_slice(f);
            c += 1;
        }
    }
    let mut out = BytesMut::new();
    out.put_u8(be::ROW_DESCRIPTION);
    out.put_i32(body.len() as i32 + 4);
    out.extend_from_slice(&body);
    Ok(out)
}

fn aggregate(aggs: &[Agg], results: &[Collected]) -> Result<BytesMut, PgError> {
    let (start, ncols) = shard_columns(aggs.iter().map(|a| Some(*a)));
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
                    if t.len() != ncols {
                        return Err(bad("unexpected columns"));
                    }
                    for (a, agg) in aggs.iter().enumerate() {
                        let ty = t[start[a]];
                        // avg's partial: its sum's type decides.
                        let as_agg = if *agg == Agg::Avg { Agg::Sum } else { *agg };
                        check_type(as_agg, ty).map_err(|e| {
                            if *agg == Agg::Avg {
                                bad(format!(
                                    "avg of a column whose sum has type OID {ty} across shards is not supported (integers and numeric only)"
                                ))
                                .with_hint("add a condition on the shard key, or run it on each shard")
                            } else {
                                e
                            }
                        })?;
                    }
                    types = Some(t);
                    let items: Vec<Option<Agg>> = aggs.iter().map(|a| Some(*a)).collect();
                    out.extend_from_slice(&client_description(&items, f)?);
                }
                b'D' => {
                    rows += 1;
                    let values = row_values(f)?;
                    let types = types.as_ref().ok_or_else(|| bad("no row description"))?;
                    if values.len() != ncols {
                        return Err(bad("unexpected columns"));
                    }
                    for (a, agg) in aggs.iter().enumerate() {
                        let c = start[a];
                        if *agg == Agg::Avg {
                            if let Some(n) = &values[c + 1] {
                                counts[a] += parse_count(n)?;
                            }
                        }
                        let Some(v) = values[c].clone() else { continue };
                        match agg {
                            Agg::Count => counts[a] += parse_count(&v)?,
                            agg => {
                                let agg = if *agg == Agg::Avg { Agg::Sum } else { *agg };
                                merged[a] = Some(match merged[a].take() {
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
    let mut values: Vec<Option<String>> = Vec::with_capacity(aggs.len());
    for (c, agg) in aggs.iter().enumerate() {
        let v = match agg {
            Agg::Count => Some(counts[c].to_string()),
            Agg::Avg => match merged[c].take() {
                Some(sum) if counts[c] > 0 => Some(average(&Decimal::parse(&sum)?, counts[c])),
                _ => None,
            },
            _ => merged[c].take(),
        };
        values.push(v);
    }
    let row: Vec<Option<&str>> = values.iter().map(|v| v.as_deref()).collect();
    protocol::data_row_text(&mut out, &row);
    crate::protocol::command_complete(&mut out, "SELECT 1");
    Ok(out)
}

/// Check an aggregate's shard column type (avg: its sum's).
fn check_item_type(agg: Agg, ty: i32) -> Result<(), PgError> {
    let as_agg = if agg == Agg::Avg { Agg::Sum } else { agg };
    check_type(as_agg, ty).map_err(|e| {
        if agg == Agg::Avg {
            bad(format!(
                "avg of a column whose sum has type OID {ty} across shards is not supported (integers and numeric only)"
            ))
            .with_hint("add a condition on the shard key, or run it on each shard")
        } else {
            e
        }
    })
}

/// A GROUP BY (or SELECT DISTINCT) query: the shards' rows of equal group
/// keys combined into one row per group, kept if HAVING holds, in key
/// order (or ORDER BY order), OFFSET and LIMIT. The last `hidden` items
/// (HAVING's own aggregates) are not sent to the client.
fn grouped(
    items: &[Option<Agg>],
    (keys, collated): (&[crate::router::SortKey], &[bool]),
    (having, hidden): (Option<&Having>, usize),
    (limit, offset): (Option<u64>, u64),
    results: &[Collected],
) -> Result<BytesMut, PgError> {
    use crate::execute::merge::{compare_keys, parse_value, resolve, Resolved, SortType};
    let (start, ncols) = shard_columns(items.iter().copied());
    let mut out = BytesMut::new();
    let mut description = None;
    let mut types: Vec<i32> = vec![];
    let mut rows: Vec<Vec<Option<String>>> = vec![];
    for (i, r) in results.iter().enumerate() {
        for f in &r.frames {
            match f[0] {
                be::ROW_DESCRIPTION if description.is_none() => {
                    let cols = columns(f)?;
                    if cols.len() != ncols {
                        return Err(bad("unexpected columns"));
                    }
                    for (a, item) in items.iter().enumerate() {
                        let (name, ty, format) = &cols[start[a]];
                        if *format != 0 {
                            return Err(bad(format!("column \"{name}\" is in binary format")));
                        }
                        match item {
                            Some(agg) => check_item_type(*agg, *ty)?,
                            None => {
                                SortType::of(*ty).ok_or_else(|| {
                                    bad(format!("GROUP BY or DISTINCT column \"{name}\" of type OID {ty} is not supported across shards"))
                                    .with_hint("integer, numeric, float, text, varchar, char, name, date, timestamp, timestamptz, uuid and boolean columns can be grouped across shards; or add a condition on the shard key")
                                })?;
                            }
                        }
                    }
                    types = cols.iter().map(|c| c.1).collect();
                    let all = client_description(items, f)?;
                    description = Some(if hidden > 0 {
                        first_fields(&all, items.len().saturating_sub(hidden))?
                    } else {
                        all
                    });
                }
                b'D' => {
                    let values = row_values(f)?;
                    if values.len() != ncols {
                        return Err(bad("unexpected columns"));
                    }
                    rows.push(values);
                }
                be::NOTICE_RESPONSE if i == 0 => out.extend_from_slice(f),
                _ => {}
            }
        }
    }
    let description = description.ok_or_else(|| bad("no row description"))?;
    // Group keys: ascending, NULLs last (one NULL group).
    let group_cols: Vec<usize> = (0..items.len())
        .filter(|a| items[*a].is_none())
        .map(|a| start[a])
        .collect();
    let group_keys: Vec<Resolved> = group_cols
        .iter()
        .map(|&c| Resolved {
            column: c,
            sort: SortType::of(types[c]).expect("checked"),
            type_oid: types[c],
            binary: false,
            descending: false,
            nulls_first: false,
        })
        .collect();
    let parse_keys =
        |keys: &[Resolved], row: &[Option<String>]| -> Result<Vec<Option<Vec<u8>>>, PgError> {
            keys.iter()
                .map(|k| match &row[k.column] {
                    None => Ok(None),
                    Some(v) => parse_value(k.sort, v.as_bytes())
                        .map(|_| Some(v.as_bytes().to_vec()))
                        .map_err(bad),
                })
                .collect()
        };
    for r in &rows {
        parse_keys(&group_keys, r)?;
    }
    let key_cmp = |keys: &[Resolved], a: &[Option<String>], b: &[Option<String>]| -> Ordering {
        let pa: Vec<_> = keys
            .iter()
            .map(|k| {
                a[k.column]
                    .as_ref()
                    .map(|v| parse_value(k.sort, v.as_bytes()).expect("checked"))
            })
            .collect();
        let pb: Vec<_> = keys
            .iter()
            .map(|k| {
                b[k.column]
                    .as_ref()
                    .map(|v| parse_value(k.sort, v.as_bytes()).expect("checked"))
            })
            .collect();
        compare_keys(keys, &pa, &pb)
    };
    rows.sort_by(|a, b| key_cmp(&group_keys, a, b));
    // The type of each item's merged value, for HAVING.
    let item_types: Vec<i32> = items
        .iter()
        .enumerate()
        .map(|(a, item)| match item {
            Some(Agg::Count) => INT8,
            Some(Agg::Avg) => NUMERIC,
            _ => types.get(start[a]).copied().unwrap_or(0),
        })
        .collect();
    // Combine runs of equal keys.
    let mut merged: Vec<Vec<Option<String>>> = vec![];
    let mut k = 0;
    while k < rows.len() {
        let mut end = k + 1;
        while end < rows.len() && key_cmp(&group_keys, &rows[k], &rows[end]) == Ordering::Equal {
            end += 1;
        }
        let mut row = Vec::with_capacity(items.len());
        for (a, item) in items.iter().enumerate() {
            let c = start[a];
            let v = match item {
                None => rows[k][c].clone(),
                Some(Agg::Count) => {
                    let mut n = 0;
                    for r in &rows[k..end] {
                        if let Some(v) = &r[c] {
                            n += parse_count(v)?;
                        }
                    }
                    Some(n.to_string())
                }
                Some(agg) => {
                    let as_agg = if *agg == Agg::Avg { Agg::Sum } else { *agg };
                    let mut acc: Option<String> = None;
                    let mut n = 0;
                    for r in &rows[k..end] {
                        if *agg == Agg::Avg {
                            if let Some(v) = &r[c + 1] {
                                n += parse_count(v)?;
                            }
                        }
                        let Some(v) = r[c].clone() else { continue };
                        acc = Some(match acc.take() {
                            None => {
                                check_value(types[c], &v)?;
                                v
                            }
                            Some(prev) => combine(as_agg, types[c], prev, v)?,
                        });
                    }
                    if *agg == Agg::Avg {
                        match acc {
                            Some(sum) if n > 0 => Some(average(&Decimal::parse(&sum)?, n)),
                            _ => None,
                        }
                    } else {
                        acc
                    }
                }
            };
            row.push(v);
        }
        let keep = match having {
            Some(h) => having_holds(h, &row, &item_types)? == Some(true),
            None => true,
        };
        if keep {
            row.truncate(items.len().saturating_sub(hidden));
            merged.push(row);
        }
        k = end;
    }
    if !keys.is_empty() {
        let order = resolve(keys, &description)?;
        for (i, k) in order.iter().enumerate() {
            if matches!(k.sort, SortType::Text | SortType::Bpchar)
                && !collated.get(i).copied().unwrap_or(false)
            {
                return Err(bad(format!(
                    "ORDER BY {} of a GROUP BY: text is ordered in byte order across shards (the C collation); write ORDER BY ... COLLATE \"C\"",
                    k.column + 1
                )));
            }
        }
        for r in &merged {
            parse_keys(&order, r)?;
        }
        merged.sort_by(|a, b| key_cmp(&order, a, b));
    }
    out.extend_from_slice(&description);
    let mut n = 0u64;
    for r in merged
        .into_iter()
        .skip(offset.min(usize::MAX as u64) as usize)
        .take(limit.map_or(usize::MAX, |l| l.min(usize::MAX as u64) as usize))
    {
        let row: Vec<Option<&str>> = r.iter().map(|v| v.as_deref()).collect();
        protocol::data_row_text(&mut out, &row);
        n += 1;
    }
    crate::protocol::command_complete(&mut out, &format!("SELECT {n}"));
    Ok(out)
}

/// `count(DISTINCT e)` of a non-key column: the shards' distinct (group
/// keys, e) rows merged as DISTINCT rows, then each row counted as 1 (0
/// for a NULL `e`) in the groups of its keys. Without GROUP BY there is
/// one row, a count of 0 when no shard has a row.
fn count_distinct(
    names: &[Option<String>],
    order: (&[crate::router::SortKey], &[bool]),
    (limit, offset): (Option<u64>, u64),
    results: &[Collected],
) -> Result<BytesMut, PgError> {
    let nk = names.iter().filter(|n| n.is_none()).count();
    let pairs = grouped(
        &vec![None; nk + 1],
        (&[], &[]),
        (None, 0),
        (None, 0),
        results,
    )?;
    let mut out = BytesMut::new();
    let mut description = None;
    let mut rows = Vec::new();
    let mut at = 0;
    while at < pairs.len() {
        let len = pairs
            .get(at + 1..at + 5)
            .map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| bad("malformed merge"))?;
        let f = pairs
            .get(at..at + 1 + len)
            .ok_or_else(|| bad("malformed merge"))?;
        match f[0] {
            be::ROW_DESCRIPTION => description = Some(BytesMut::from(f)),
            b'D' => rows.push(row_values(f)?),
            be::NOTICE_RESPONSE => out.extend_from_slice(f),
            _ => {}
        }
        at += 1 + len;
    }
    let description = description.ok_or_else(|| bad("no row description"))?;
    let fields = raw_fields(&description)?;
    let mut body = BytesMut::new();
    body.put_i16(names.len() as i16);
    let mut k = 0;
    for n in names {
        match n {
            None => {
                body.put_slice(fields.get(k).ok_or_else(|| bad("unexpected columns"))?);
                k += 1;
            }
            Some(name) => {
                body.put_slice(name.as_bytes());
                body.put_u8(0);
                body.put_i32(0); // table
                body.put_i16(0); // column
                body.put_i32(INT8);
                body.put_i16(8);
                body.put_i32(-1);
                body.put_i16(0); // text
            }
        }
    }
    let mut desc = BytesMut::new();
    desc.put_u8(be::ROW_DESCRIPTION);
    desc.put_i32(body.len() as i32 + 4);
    desc.extend_from_slice(&body);
    let mut frames = vec![desc];
    if rows.is_empty() && nk == 0 {
        rows.push(vec![None]);
    }
    for r in rows {
        if r.len() != nk + 1 {
            return Err(bad("unexpected columns"));
        }
        let counted = if r[nk].is_some() { "1" } else { "0" };
        let mut k = 0;
        let values: Vec<Option<&str>> = names
            .iter()
            .map(|n| match n {
                None => {
                    k += 1;
                    r[k - 1].as_deref()
                }
                Some(_) => Some(counted),
            })
            .collect();
        let mut f = BytesMut::new();
        protocol::data_row_text(&mut f, &values);
        frames.push(f);
    }
    let items: Vec<Option<Agg>> = names
        .iter()
        .map(|n| n.as_ref().map(|_| Agg::Count))
        .collect();
    let counted = Collected {
        frames,
        ..Collected::default()
    };
    out.extend_from_slice(&grouped(
        &items,
        order,
        (None, 0),
        (limit, offset),
        std::slice::from_ref(&counted),
    )?);
    Ok(out)
}

/// A RowDescription of the first `n` fields of `frame`.
fn first_fields(frame: &[u8], n: usize) -> Result<BytesMut, PgError> {
    let fields = raw_fields(frame)?;
    let mut body = BytesMut::new();
    body.put_i16(n as i16);
    for f in fields.iter().take(n) {
        body.put_slice(f);
    }
    let mut out = BytesMut::new();
    out.put_u8(be::ROW_DESCRIPTION);
    out.put_i32(body.len() as i32 + 4);
    out.extend_from_slice(&body);
    Ok(out)
}

/// HAVING on a merged group: `Some(true)`, `Some(false)` or `None`
/// (unknown: a NULL was compared), with SQL's three-valued AND/OR/NOT.
fn having_holds(
    h: &Having,
    row: &[Option<String>],
    types: &[i32],
) -> Result<Option<bool>, PgError> {
    let value = |o: &Operand| -> (Option<String>, Option<i32>) {
        match o {
            Operand::Item(i) => (row.get(*i).cloned().flatten(), types.get(*i).copied()),
            Operand::Number(n) => (Some(n.clone()), None),
        }
    };
    Ok(match h {
        Having::And(a, b) => match (having_holds(a, row, types)?, having_holds(b, row, types)?) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        Having::Or(a, b) => match (having_holds(a, row, types)?, having_holds(b, row, types)?) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        Having::Not(a) => having_holds(a, row, types)?.map(|b| !b),
        Having::IsNull { operand, negated } => Some(value(operand).0.is_none() != *negated),
        Having::Compare { left, op, right } => {
            let (l, lt) = value(left);
            let (r, rt) = value(right);
            let (Some(l), Some(r)) = (l, r) else {
                return Ok(None);
            };
            let numeric = |t: Option<i32>| {
                t.is_none_or(|t| matches!(t, INT2 | INT4 | INT8 | NUMERIC | FLOAT4 | FLOAT8))
            };
            if !numeric(lt) || !numeric(rt) {
                return Err(bad(format!(
                    "HAVING compares a value of type OID {} across shards (numbers only)",
                    if numeric(lt) { rt } else { lt }.unwrap_or(0)
                )));
            }
            let float = |t: Option<i32>| matches!(t, Some(FLOAT4 | FLOAT8));
            let ord = if float(lt) || float(rt) {
                float_cmp(parse_float(&l)?, parse_float(&r)?)
            } else {
                Decimal::parse(&l)?.cmp(&Decimal::parse(&r)?)
            };
            Some(match op {
                CmpOp::Eq => ord == Ordering::Equal,
                CmpOp::NotEq => ord != Ordering::Equal,
                CmpOp::Lt => ord == Ordering::Less,
                CmpOp::LtEq => ord != Ordering::Greater,
                CmpOp::Gt => ord == Ordering::Greater,
                CmpOp::GtEq => ord != Ordering::Less,
            })
        }
    })
}

fn parse_count(v: &str) -> Result<i128, PgError> {
    v.trim()
        .parse::<i128>()
        .map_err(|_| bad(format!("count \"{v}\"")))
}

/// Weight (base-10000 digit position, 0 for the units group) and value of
/// the first non-zero base-10000 digit of a decimal, as PostgreSQL's
/// numeric stores it; (0, 0) for zero.
fn first_group(d: &Decimal) -> (i64, u32) {
    // Pad the integer digits to a multiple of 4 on the left, the fraction
    // on the right, and read groups of 4 digits.
    let ipad = (4 - d.int.len() % 4) % 4;
    let mut digits = vec![0u8; ipad];
    digits.extend_from_slice(&d.int);
    let igroups = digits.len() / 4;
    digits.extend_from_slice(&d.frac);
    digits.resize(digits.len().div_ceil(4) * 4, 0);
    for (g, chunk) in digits.chunks(4).enumerate() {
        let v = chunk.iter().fold(0u32, |acc, x| acc * 10 + *x as u32);
        if v != 0 {
            return (igroups as i64 - 1 - g as i64, v);
        }
    }
    (0, 0)
}

/// `sum / count` as PostgreSQL's `avg` of integers or numeric prints it:
/// numeric division with the result scale of `select_div_scale` (at least
/// 16 significant digits, no less than the sum's scale), rounded half away
/// from zero.
fn average(sum: &Decimal, count: i128) -> String {
    let n = Decimal::parse(&count.to_string()).expect("count");
    let (w1, f1) = first_group(sum);
    let (w2, f2) = first_group(&n);
    let mut qweight = w1 - w2;
    if f1 <= f2 {
        qweight -= 1;
    }
    let rscale = (16 - qweight * 4).max(sum.frac.len() as i64).clamp(0, 1000) as usize;
    // The magnitude scaled by 10^rscale, divided by count.
    let mut digits = sum.int.clone();
    digits.extend_from_slice(&sum.frac);
    digits.resize(sum.int.len() + rscale, 0);
    let divisor = count as u128;
    let mut q = Vec::with_capacity(digits.len() + 1);
    let mut rem: u128 = 0;
    for d in digits {
        rem = rem * 10 + d as u128;
        q.push((rem / divisor) as u8);
        rem %= divisor;
    }
    if rem * 2 >= divisor {
        let mut k = q.len();
        loop {
            if k == 0 {
                q.insert(0, 1);
                break;
            }
            k -= 1;
            if q[k] == 9 {
                q[k] = 0;
            } else {
                q[k] += 1;
                break;
            }
        }
    }
    let split = q.len() - rscale;
    let int = q[..split].to_vec();
    let first = int.iter().position(|d| *d != 0).unwrap_or(int.len());
    let mut r = Decimal {
        neg: sum.neg,
        int: int[first..].to_vec(),
        frac: q[split..].to_vec(),
    };
    if r.is_zero() {
        r.neg = false;
    }
    r.to_string()
}

fn check_type(agg: Agg, t: i32) -> Result<(), PgError> {
    let ok = match agg {
        Agg::Count => true,
        // sum(int2/int4) is int8, sum(int8/numeric) is numeric.
        Agg::Sum => matches!(t, INT8 | NUMERIC),
        Agg::Avg => matches!(t, INT8 | NUMERIC),
        Agg::Min | Agg::Max => matches!(
            t,
            INT2 | INT4 | INT8 | NUMERIC | FLOAT4 | FLOAT8 | DATE | TIMESTAMP | TIMESTAMPTZ
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "{agg:?} of a column of type OID {t} across shards is not supported (integers, numeric{} only)",
            if agg == Agg::Sum { "" } else { ", floats, dates, timestamps" }
        ))
        .with_hint("add a condition on the shard key, or run it on each shard"))
    }
}

/// Dates and timestamps, compared as the ORDER BY merge does.
fn time_value(t: i32, v: &str) -> Result<crate::execute::merge::Val<'_>, PgError> {
    let sort = crate::execute::merge::SortType::of(t).ok_or_else(|| bad("unexpected type"))?;
    crate::execute::merge::parse_value(sort, v.as_bytes()).map_err(bad)
}

fn check_value(t: i32, v: &str) -> Result<(), PgError> {
    match t {
        FLOAT4 | FLOAT8 => parse_float(v).map(|_| ()),
        DATE | TIMESTAMP | TIMESTAMPTZ => time_value(t, v).map(|_| ()),
        _ => Decimal::parse(v).map(|_| ()),
    }
}

fn combine(agg: Agg, t: i32, a: String, b: String) -> Result<String, PgError> {
    let ord = match t {
        FLOAT4 | FLOAT8 => float_cmp(parse_float(&a)?, parse_float(&b)?),
        DATE | TIMESTAMP | TIMESTAMPTZ => time_value(t, &a)?.compare(&time_value(t, &b)?),
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
    crate::execute::merge::parse_float(v).ok_or_else(|| bad(format!("float \"{v}\"")))
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

    #[test]
    fn counts_at_the_end_of_a_tag() {
        let mut f = BytesMut::new();
        crate::protocol::command_complete(&mut f, "INSERT 0 42");
        assert_eq!(tag_count(&f), 42);
    }

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

    fn avg(sum: &str, count: i128) -> String {
        average(&Decimal::parse(sum).unwrap(), count)
    }

    #[test]
    fn averages_print_as_postgresql() {
        // select avg(x) from (values ...) t(x), checked on PostgreSQL.
        assert_eq!(avg("3", 2), "1.5000000000000000");
        assert_eq!(avg("2", 2), "1.00000000000000000000");
        assert_eq!(avg("10", 3), "3.3333333333333333");
        assert_eq!(avg("20", 3), "6.6666666666666667");
        assert_eq!(avg("-20", 3), "-6.6666666666666667");
        assert_eq!(avg("1", 3), "0.33333333333333333333");
        assert_eq!(avg("0", 5), "0.00000000000000000000");
        assert_eq!(avg("100000", 2), "50000.000000000000");
        assert_eq!(avg("4.50", 2), "2.2500000000000000");
        assert_eq!(avg("1.123456789012345678901", 1), "1.123456789012345678901");
        assert_eq!(first_group(&Decimal::parse("12345.6").unwrap()), (1, 1));
        assert_eq!(first_group(&Decimal::parse("0.00012").unwrap()), (-1, 1));
        assert_eq!(first_group(&Decimal::parse("0").unwrap()), (0, 0));
    }

    fn description(cols: &[(&str, i32)]) -> BytesMut {
        let mut body = BytesMut::new();
        body.put_i16(cols.len() as i16);
        for (name, t) in cols {
            body.put_slice(name.as_bytes());
            body.put_u8(0);
            body.put_i32(0);
            body.put_i16(0);
            body.put_i32(*t);
            body.put_i16(-1);
            body.put_i32(-1);
            body.put_i16(0);
        }
        let mut frame = BytesMut::new();
        frame.put_u8(be::ROW_DESCRIPTION);
        frame.put_i32(body.len() as i32 + 4);
        frame.extend_from_slice(&body);
        frame
    }

    fn data_row(values: &[Option<&str>]) -> BytesMut {
        let mut row = BytesMut::new();
        row.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    row.put_i32(v.len() as i32);
                    row.put_slice(v.as_bytes());
                }
                None => row.put_i32(-1),
            }
        }
        let mut frame = BytesMut::new();
        frame.put_u8(b'D');
        frame.put_i32(row.len() as i32 + 4);
        frame.extend_from_slice(&row);
        frame
    }

    fn answer(rows: &[&[Option<&str>]]) -> Collected {
        let mut frames = vec![description(&[
            ("g", INT4),
            ("avg", NUMERIC),
            ("count", INT8),
            ("count", INT8),
        ])];
        frames.extend(rows.iter().map(|r| data_row(r)));
        Collected {
            frames,
            ..Collected::default()
        }
    }

    #[test]
    fn groups_combine_by_key_with_nulls_as_one_group() {
        // select g, avg(x), count(*) ... group by g
        let items = [None, Some(Agg::Avg), Some(Agg::Count)];
        let a = answer(&[
            &[Some("2"), Some("3"), Some("2"), Some("2")],
            &[None, Some("1"), Some("1"), Some("4")],
            &[Some("10"), None, Some("0"), Some("1")],
        ]);
        let b = answer(&[
            &[None, Some("2"), Some("1"), Some("1")],
            &[Some("2"), Some("4.5"), Some("2"), Some("3")],
        ]);
        let c = answer(&[]);
        let out = grouped(&items, (&[], &[]), (None, 0), (None, 0), &[a, b, c]).unwrap();
        let frames: Vec<&[u8]> = {
            let mut v = vec![];
            let mut at = 0;
            while at < out.len() {
                let len = i32::from_be_bytes(out[at + 1..at + 5].try_into().unwrap()) as usize;
                v.push(&out[at..at + 1 + len]);
                at += 1 + len;
            }
            v
        };
        let cols = columns(frames[0]).unwrap();
        assert_eq!(
            cols.iter().map(|c| (c.0.as_str(), c.1)).collect::<Vec<_>>(),
            [("g", INT4), ("avg", NUMERIC), ("count", INT8)]
        );
        let rows: Vec<Vec<Option<String>>> = frames[1..frames.len() - 1]
            .iter()
            .map(|f| row_values(f).unwrap())
            .collect();
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            rows,
            [
                vec![s("2"), s("1.8750000000000000"), s("5")],
                vec![s("10"), None, s("1")],
                vec![None, s("1.5000000000000000"), s("5")],
            ]
        );
        assert_eq!(frames.last().unwrap()[0], be::COMMAND_COMPLETE);
        // ORDER BY 3 DESC, LIMIT 1 OFFSET 1.
        let keys = [crate::router::SortKey {
            column: crate::router::SortColumn::Position(2),
            descending: true,
            nulls_first: true,
        }];
        let again = [
            answer(&[&[Some("1"), Some("1"), Some("1"), Some("7")]]),
            answer(&[&[Some("2"), Some("1"), Some("1"), Some("9")]]),
        ];
        let out = grouped(&items, (&keys, &[false]), (None, 0), (Some(1), 1), &again).unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("SELECT 1"), "{text}");
        // Ordering by a text key needs COLLATE "C".
        let t = Collected {
            frames: vec![
                description(&[("t", 25), ("count", INT8)]),
                data_row(&[Some("a"), Some("1")]),
            ],
            ..Collected::default()
        };
        let keys = [crate::router::SortKey {
            column: crate::router::SortColumn::Position(0),
            descending: false,
            nulls_first: false,
        }];
        let items = [None, Some(Agg::Count)];
        assert!(grouped(
            &items,
            (&keys, &[false]),
            (None, 0),
            (None, 0),
            std::slice::from_ref(&t)
        )
        .is_err());
        assert!(grouped(&items, (&keys, &[true]), (None, 0), (None, 0), &[t]).is_ok());
    }

    #[test]
    fn having_uses_three_valued_logic_and_typed_comparisons() {
        let cmp = |i: usize, op: CmpOp, n: &str| Having::Compare {
            left: Operand::Item(i),
            op,
            right: Operand::Number(n.into()),
        };
        let types = [INT8, NUMERIC, FLOAT8];
        let row = |a: Option<&str>, b: Option<&str>, c: Option<&str>| {
            vec![
                a.map(String::from),
                b.map(String::from),
                c.map(String::from),
            ]
        };
        let r = row(Some("5"), None, Some("NaN"));
        let holds = |h: &Having| having_holds(h, &r, &types).unwrap();
        assert_eq!(holds(&cmp(0, CmpOp::Gt, "4.5")), Some(true));
        assert_eq!(holds(&cmp(0, CmpOp::LtEq, "-1")), Some(false));
        assert_eq!(holds(&cmp(1, CmpOp::Eq, "0")), None);
        assert_eq!(holds(&Having::Not(Box::new(cmp(1, CmpOp::Eq, "0")))), None);
        let or = Having::Or(
            Box::new(cmp(1, CmpOp::Eq, "0")),
            Box::new(cmp(0, CmpOp::Eq, "5")),
        );
        assert_eq!(holds(&or), Some(true));
        let and = Having::And(
            Box::new(cmp(1, CmpOp::Eq, "0")),
            Box::new(cmp(0, CmpOp::Eq, "4")),
        );
        assert_eq!(holds(&and), Some(false));
        // NaN is above every float, as in PostgreSQL.
        assert_eq!(holds(&cmp(2, CmpOp::Gt, "1e300")), Some(true));
        assert_eq!(
            holds(&Having::IsNull {
                operand: Operand::Item(1),
                negated: false
            }),
            Some(true)
        );
        // Exact decimals: 1.0 = 1.00.
        let r = row(None, Some("1.0"), None);
        assert_eq!(
            having_holds(&cmp(1, CmpOp::Eq, "1.00"), &r, &types).unwrap(),
            Some(true)
        );
        // Text is not compared.
        let r = vec![Some("a".to_string())];
        assert!(having_holds(&cmp(0, CmpOp::Eq, "1"), &r, &[25]).is_err());
    }

    #[test]
    fn avg_description_is_one_numeric_column() {
        let mut body = BytesMut::new();
        body.put_i16(3);
        for (name, t) in [("n", INT8), ("avg", INT8), ("count", INT8)] {
            body.put_slice(name.as_bytes());
            body.put_u8(0);
            body.put_i32(0);
            body.put_i16(0);
            body.put_i32(t);
            body.put_i16(8);
            body.put_i32(-1);
            body.put_i16(0);
        }
        let mut frame = BytesMut::new();
        frame.put_u8(be::ROW_DESCRIPTION);
        frame.put_i32(body.len() as i32 + 4);
        frame.extend_from_slice(&body);
        let d = client_description(&[Some(Agg::Count), Some(Agg::Avg)], &frame).unwrap();
        let cols = columns(&d).unwrap();
        assert_eq!(
            cols,
            vec![("n".to_string(), INT8, 0), ("avg".to_string(), NUMERIC, 0)]
        );
    }
}

//! Data-path micro-benchmarks: `cargo bench --bench hotpath`.
//!
//! What the proxy does per message once a statement is routed: split the
//! frames out of a read buffer and copy them into the other side's write
//! buffer (single-shard passthrough), and what a cross-shard ORDER BY costs
//! in the proxy: the k-way merge of the shards' sorted rows. Routing and the
//! parse cache are in `benches/routing.rs`.

use std::hint::black_box;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shardwire::execute::merge::merge_sorted;
use shardwire::protocol::{be, begin_frame, finish_frame, FrameReader};
use shardwire::router::{SortColumn, SortKey};

/// A frame of `tag` with `body`.
fn frame(out: &mut BytesMut, tag: u8, body: &[u8]) {
    let at = begin_frame(out, tag);
    out.put_slice(body);
    finish_frame(out, at);
}

/// RowDescription of `(name, type oid)` columns, text format.
fn row_description(out: &mut BytesMut, cols: &[(&str, i32)]) {
    let at = begin_frame(out, be::ROW_DESCRIPTION);
    out.put_i16(cols.len() as i16);
    for (name, oid) in cols {
        out.put_slice(name.as_bytes());
        out.put_u8(0);
        out.put_i32(0);
        out.put_i16(0);
        out.put_i32(*oid);
        out.put_i16(-1);
        out.put_i32(-1);
        out.put_i16(0);
    }
    finish_frame(out, at);
}

fn data_row(out: &mut BytesMut, values: &[&[u8]]) {
    let at = begin_frame(out, be::DATA_ROW);
    out.put_i16(values.len() as i16);
    for v in values {
        out.put_i32(v.len() as i32);
        out.put_slice(v);
    }
    finish_frame(out, at);
}

/// The server's answer to one `pgbench -S -M prepared` transaction:
/// BindComplete, DataRow, CommandComplete, ReadyForQuery.
fn select_answer(out: &mut BytesMut) {
    frame(out, be::BIND_COMPLETE, b"");
    data_row(out, &[b"-4242"]);
    frame(out, be::COMMAND_COMPLETE, b"SELECT 1\0");
    frame(out, be::READY_FOR_QUERY, b"I");
}

/// Split every frame out of `input` (as the session does with a server's
/// read buffer) and copy it into `out` (the client's write buffer).
fn decode_forward(input: BytesMut, out: &mut BytesMut) -> usize {
    let mut rd = FrameReader::with_buffer(tokio::io::empty(), input, 1 << 30);
    let mut n = 0;
    while let Some(f) = rd.try_frame().unwrap() {
        if f[0] == be::READY_FOR_QUERY {
            n += 1;
        }
        out.extend_from_slice(&f);
    }
    n
}

fn bench_frames(c: &mut Criterion) {
    // One transaction's answer, and a batch of 16 (the read buffer of a
    // busy connection holds several).
    for (name, answers) in [
        ("frames/select_answer_x1", 1),
        ("frames/select_answer_x16", 16),
    ] {
        let mut input = BytesMut::new();
        for _ in 0..answers {
            select_answer(&mut input);
        }
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(input.len() as u64));
        let mut out = BytesMut::with_capacity(64 * 1024);
        g.bench_function("decode_forward", |b| {
            b.iter_batched(
                || input.clone(),
                |buf| {
                    out.clear();
                    black_box(decode_forward(buf, &mut out))
                },
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }

    // A 1000-row result of ~120-byte rows (passthrough of a larger read).
    let mut input = BytesMut::new();
    row_description(&mut input, &[("aid", 23), ("filler", 25)]);
    let filler = [b'x'; 84];
    for i in 0..1000 {
        data_row(&mut input, &[i.to_string().as_bytes(), &filler]);
    }
    frame(&mut input, be::COMMAND_COMPLETE, b"SELECT 1000\0");
    frame(&mut input, be::READY_FOR_QUERY, b"I");
    let mut g = c.benchmark_group("frames/rows_1000");
    g.throughput(Throughput::Bytes(input.len() as u64));
    let mut out = BytesMut::with_capacity(256 * 1024);
    g.bench_function("decode_forward", |b| {
        b.iter_batched(
            || input.clone(),
            |buf| {
                out.clear();
                black_box(decode_forward(buf, &mut out))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// One shard's answer: RowDescription (aid int4, abalance int4), `rows`
/// rows with aid = start, start + step, ..., CommandComplete.
fn shard_answer(start: i64, step: i64, rows: usize) -> Vec<BytesMut> {
    let mut frames = Vec::with_capacity(rows + 2);
    let mut f = BytesMut::new();
    row_description(&mut f, &[("aid", 23), ("abalance", 23)]);
    frames.push(f);
    for i in 0..rows as i64 {
        let mut f = BytesMut::new();
        data_row(&mut f, &[(start + i * step).to_string().as_bytes(), b"0"]);
        frames.push(f);
    }
    let mut f = BytesMut::new();
    frame(
        &mut f,
        be::COMMAND_COMPLETE,
        format!("SELECT {rows}\0").as_bytes(),
    );
    frames.push(f);
    frames
}

fn bench_merge(c: &mut Criterion) {
    let keys = [SortKey {
        column: SortColumn::Position(0),
        descending: false,
        nulls_first: false,
    }];
    // ORDER BY aid LIMIT 10 on 2 shards: each returns its first 10.
    let a = shard_answer(1, 2, 10);
    let b = shard_answer(2, 2, 10);
    c.bench_function("merge/order_by_limit_10_2_shards", |bch| {
        bch.iter(|| merge_sorted(black_box(&keys), Some(10), 0, &[&a, &b]).unwrap())
    });
    // A full merge of 2 x 1000 interleaved rows.
    let a = shard_answer(1, 2, 1000);
    let b = shard_answer(2, 2, 1000);
    c.bench_function("merge/order_by_2x1000_rows", |bch| {
        bch.iter(|| merge_sorted(black_box(&keys), None, 0, &[&a, &b]).unwrap())
    });
    // 8 shards x 250 rows.
    let shards: Vec<Vec<BytesMut>> = (0..8).map(|s| shard_answer(s + 1, 8, 250)).collect();
    let refs: Vec<&[BytesMut]> = shards.iter().map(|s| s.as_slice()).collect();
    c.bench_function("merge/order_by_8x250_rows", |bch| {
        bch.iter(|| merge_sorted(black_box(&keys), None, 0, &refs).unwrap())
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_frames, bench_merge
}
criterion_main!(benches);

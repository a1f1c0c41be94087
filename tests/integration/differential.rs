//! Differential corpus for cross-shard SELECTs: a private 3-shard cluster
//! (no replicas) with the proxy in front, the same data loaded sharded
//! through the proxy and unsharded into a database of its own on shard 0's
//! primary, then every corpus query run both ways (simple query protocol)
//! and the answers compared: column names, and rows in order when the
//! query's ORDER BY is total, else as sorted multisets. A second list of
//! queries must be refused with 0A000, never answered wrongly.
//!
//! Tables: `dt_main` (hash on `id`, one column of each mergeable type, with
//! NULLs), `dt_child` (hash on `mid`, co-located with `dt_main`), `dt_ref`
//! (reference), `dt_few` (hash, rows only on shard 0) and `dt_empty` (hash,
//! no rows).

use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::common::*;

const TABLES: &str = r#"
[[tables]]
name = "dt_main"
key = "id"
strategy = "hash"

[[tables]]
name = "dt_child"
key = "mid"
strategy = "hash"

[[tables]]
name = "dt_ref"
strategy = "reference"

[[tables]]
name = "dt_few"
key = "id"
strategy = "hash"

[[tables]]
name = "dt_empty"
key = "id"
strategy = "hash"
"#;

const SCHEMA: &str = "
create table dt_main (id int primary key, b bigint, n numeric, f float8, t text collate \"C\",
  v varchar(20), d date, ts timestamptz, ok bool, u uuid, grp int not null, cat text collate \"C\",
  code int);
create table dt_child (mid int, seq int, amount numeric, note text collate \"C\",
  primary key (mid, seq));
create table dt_ref (code int primary key, label text collate \"C\");
create table dt_few (id int primary key, val int, name text collate \"C\");
create table dt_empty (id int primary key, val int, name text collate \"C\", amount numeric);
create table dt_local (code int primary key, descr text collate \"C\");
";

/// The rows, as INSERT statements (identical for both copies).
fn inserts(on0: &dyn Fn(i64) -> bool) -> Vec<String> {
    let null_every = |i: i64, k: i64, v: String| if i % k == 0 { "null".into() } else { v };
    let texts = [
        "'apple'",
        "'Banana'",
        "'cherry'",
        "'a b'",
        "''",
        "'Ünïcode'",
        "'zeta'",
    ];
    let main: Vec<String> = (1..=60i64)
        .map(|i| {
            let b = null_every(
                i,
                7,
                format!("{}", ((i * 7919) % 211 - 105) * 1_000_000_007),
            );
            // Equal numerics written differently (1.0, 1.00) on several rows.
            let n = match i % 10 {
                3 => "1.0".to_string(),
                8 => "1.00".to_string(),
                _ => null_every(i, 5, format!("{}.{}", (i * 37) % 41 - 20, (i * 13) % 100)),
            };
            let f = match i {
                17 => "'NaN'".to_string(),
                29 => "'-Infinity'".to_string(),
                _ => null_every(i, 6, format!("{}", (i % 13) as f64 * 0.25 - 1.5)),
            };
            let t = null_every(i, 9, texts[(i % 7) as usize].to_string());
            let v = null_every(i, 8, format!("'v{}'", i % 11));
            let d = if i == 13 {
                "'0044-03-15 BC'".to_string()
            } else {
                null_every(i, 10, format!("date '2024-01-01' + {}", (i * 37) % 400))
            };
            let ts = null_every(
                i,
                11,
                format!(
                    "timestamptz '2024-03-09 23:30:00+00' + interval '{} hours'",
                    i * 7
                ),
            );
            let ok = match i % 3 {
                0 => "true",
                1 => "false",
                _ => "null",
            };
            let u = null_every(
                i,
                12,
                format!(
                    "'{:08x}-0000-4000-8000-{:012x}'",
                    (i * 2_654_435_761) % 4_294_967_296,
                    i
                ),
            );
            let cat = ["'x'", "'y'", "null"][(i % 3) as usize];
            let code = null_every(i, 13, format!("{}", i % 5));
            format!(
                "({i}, {b}, {n}, {f}, {t}, {v}, {d}, {ts}, {ok}, {u}, {}, {cat}, {code})",
                i % 4
            )
        })
        .collect();
    let child: Vec<String> = (1..=60i64)
        .filter(|i| i % 2 == 0)
        .flat_map(|i| {
            (1..=2).map(move |s| {
                format!(
                    "({i}, {s}, {}.{}, {})",
                    i * s % 17,
                    s * 5,
                    if (i + s) % 5 == 0 {
                        "null".to_string()
                    } else {
                        format!("'note{}'", (i + s) % 4)
                    }
                )
            })
        })
        .collect();
    let few: Vec<String> = (1..=400i64)
        .filter(|&i| on0(i))
        .take(5)
        .enumerate()
        .map(|(k, i)| format!("({i}, {}, 'few{}')", k % 3, 5 - k))
        .collect();
    vec![
        format!(
            "insert into dt_main (id, b, n, f, t, v, d, ts, ok, u, grp, cat, code) values {}",
            main.join(", ")
        ),
        format!(
            "insert into dt_child (mid, seq, amount, note) values {}",
            child.join(", ")
        ),
        "insert into dt_ref (code, label) values (0, 'zero'), (1, 'one'), (2, 'two'), (3, 'three'), (4, null), (9, 'nine')".to_string(),
        format!("insert into dt_few (id, val, name) values {}", few.join(", ")),
        "insert into dt_local (code, descr) values (0, 'local zero'), (2, 'local two'), (4, 'local four')".to_string(),
    ]
}

/// A corpus query: `ordered` when its ORDER BY is total (rows compared in
/// order); `numeric_text` when equal numerics may print differently (1.0,
/// 1.00), so values are compared with trailing fraction zeros dropped.
struct Q {
    sql: &'static str,
    ordered: bool,
    numeric_text: bool,
}

const fn o(sql: &'static str) -> Q {
    Q {
        sql,
        ordered: true,
        numeric_text: false,
    }
}

const fn u(sql: &'static str) -> Q {
    Q {
        sql,
        ordered: false,
        numeric_text: false,
    }
}

/// Unordered, numeric text normalized.
const fn un(sql: &'static str) -> Q {
    Q {
        sql,
        ordered: false,
        numeric_text: true,
    }
}

/// Ordered, numeric text normalized.
const fn on(sql: &'static str) -> Q {
    Q {
        sql,
        ordered: true,
        numeric_text: true,
    }
}

const CORPUS: &[Q] = &[
    // Filters.
    u("select id, b, n from dt_main where id = 7"),
    u("select id, t from dt_main where id in (1, 2, 3, 4, 5, 6)"),
    u("select * from dt_main where id in (10, 20, 30, 40, 50)"),
    u("select id from dt_main where id = any(array[3, 33, 53])"),
    u("select id, n from dt_main where n > 0"),
    u("select id, b from dt_main where b between -10000000070 and 10000000070"),
    u("select id from dt_main where t is null"),
    u("select id, v from dt_main where v like 'v1%'"),
    u("select id, t from dt_main where t like 'a%'"),
    u("select id, d from dt_main where d >= '2024-06-01' and d < '2024-09-01'"),
    u("select id, ts from dt_main where ts > '2024-03-15 00:00:00+00'"),
    u("select id, ok from dt_main where ok"),
    u("select id, ok from dt_main where ok is null"),
    u("select id, u from dt_main where u is not null and id > 40"),
    u("select id, f from dt_main where f < 0"),
    u("select lower(t), coalesce(v, 'none'), id from dt_main where grp = 2"),
    u("select id from dt_main where id not in (1, 2, 3) and grp = 1"),
    u("select id, cat from dt_main where cat is not null and code is null"),
    // Joins with the reference table; co-located joins on the shard key.
    u("select m.id, r.label from dt_main m join dt_ref r on r.code = m.code"),
    u("select m.id, r.label from dt_main m left join dt_ref r on r.code = m.code where m.grp = 0"),
    u("select count(*) from dt_main m join dt_ref r on r.code = m.code"),
    o("select m.id, r.label from dt_main m join dt_ref r on r.code = m.code order by m.id limit 10"),
    u("select m.id, c.seq, c.amount from dt_main m join dt_child c on c.mid = m.id where m.id = 8"),
    u("select m.t, c.note from dt_main m join dt_child c on c.mid = m.id where c.mid = 14"),
    u("select c.mid, c.seq, r.label from dt_child c join dt_ref r on r.code = c.seq"),
    // Aggregates.
    u("select count(*) from dt_main"),
    u("select count(*), count(b), count(n), count(f), count(t), count(d), count(ok), count(u) from dt_main"),
    u("select sum(id), sum(b), sum(n), min(id), max(id), min(b), max(b), min(n), max(n) from dt_main"),
    u("select avg(id), avg(b), avg(n) from dt_main"),
    u("select min(f), max(f) from dt_main"),
    u("select min(f), max(f) from dt_main where f <> 'NaN'"),
    u("select count(*), sum(n), avg(n) from dt_main where id in (1, 2, 3, 4, 5, 6, 7, 8)"),
    u("select count(*), sum(b), min(n), max(f), avg(id) from dt_main where id < 0"),
    u("select sum(amount), avg(amount), count(note), max(seq) from dt_child"),
    // GROUP BY.
    o("select grp, count(*), sum(n), avg(b), min(f), max(f) from dt_main group by grp order by grp"),
    o("select cat, count(*), count(t) from dt_main group by cat order by cat collate \"C\" nulls first"),
    u("select ok, count(*), avg(id) from dt_main group by ok"),
    o("select code, min(n), max(n), sum(b) from dt_main group by code order by code nulls first"),
    o("select grp, ok, count(*) from dt_main group by grp, ok order by grp, ok"),
    o("select d, count(*) from dt_main group by d order by d"),
    o("select grp, count(*) from dt_main group by grp order by count(*) desc, grp limit 2"),
    u("select grp, count(*) from dt_main where id < 0 group by grp"),
    u("select note, count(*), sum(amount) from dt_child group by note"),
    // ORDER BY of each type, ASC/DESC, NULLS FIRST/LAST, LIMIT/OFFSET.
    o("select id, b from dt_main order by b, id"),
    o("select id, b from dt_main order by b desc nulls last, id"),
    o("select id, n from dt_main order by n nulls first, id"),
    o("select id, f from dt_main order by f desc, id"),
    o("select id, t from dt_main order by t collate \"C\", id"),
    o("select id, t from dt_main order by t collate \"C\" desc nulls last, id desc"),
    o("select id, v from dt_main order by v collate \"C\", id"),
    o("select id, d from dt_main order by d desc, id"),
    o("select id, ts from dt_main order by ts nulls first, id"),
    o("select id, u from dt_main order by u, id"),
    o("select id, ok from dt_main order by ok, id"),
    o("select id, ok from dt_main order by ok desc nulls last, id"),
    o("select id from dt_main order by id"),
    o("select id from dt_main order by id desc limit 5"),
    // FETCH FIRST is LIMIT.
    o("select id, t from dt_main order by id fetch first 4 rows only"),
    o("select id from dt_main order by id desc offset 3 rows fetch next 6 rows only"),
    o("select id from dt_main order by id fetch first row only"),
    o("select grp, count(*) from dt_main group by grp order by grp fetch first 3 rows only"),
    o("select distinct grp from dt_main order by grp offset 1 fetch first 2 rows only"),
    o("select grp, count(*) from dt_main group by grp having count(*) > 1 order by grp desc fetch first 2 rows only"),
    o("select grp, count(distinct code) from dt_main group by grp order by grp fetch first 2 rows only"),
    o("select id, t from dt_main order by id limit 5 offset 10"),
    o("select id from dt_main order by id offset 100"),
    o("select id from dt_main order by id limit 10 offset 58"),
    u("select id from dt_main limit 0"),
    o("select * from dt_main order by id limit 3"),
    o("select id, n as amount from dt_main order by amount desc nulls last, id limit 7"),
    o("select id, grp from dt_main order by 2, 1 desc"),
    o("select mid, seq, amount from dt_child order by amount desc, mid, seq limit 6 offset 2"),
    // The empty table, and the table with rows on one shard only.
    u("select * from dt_empty"),
    u("select count(*), sum(val), min(val), max(amount), avg(val) from dt_empty"),
    o("select id, name from dt_empty order by id limit 3"),
    u("select name, count(*) from dt_empty group by name"),
    u("select * from dt_few"),
    u("select count(*), sum(val), avg(val), max(val) from dt_few"),
    o("select id, name from dt_few order by name collate \"C\", id"),
    o("select val, count(*) from dt_few group by val order by val"),
    o("select id from dt_few order by id offset 3"),
    u("select f.id, r.label from dt_few f join dt_ref r on r.code = f.val"),
    o("select * from dt_ref order by code"),
    // SELECT DISTINCT: rows equal across shards merged; equal numerics
    // written differently (1.0, 1.00) are one row, its text either.
    u("select distinct grp from dt_main"),
    o("select distinct grp from dt_main order by grp"),
    o("select distinct grp, ok from dt_main order by grp, ok"),
    on("select distinct n from dt_main order by n nulls first"),
    un("select distinct n from dt_main where id in (3, 8, 13, 18, 23, 28)"),
    o("select distinct f from dt_main order by f"),
    o("select distinct d from dt_main order by d desc limit 5"),
    o("select distinct ts from dt_main order by ts limit 3 offset 2"),
    o("select distinct ok from dt_main order by ok nulls first"),
    o("select distinct u from dt_main order by u limit 4"),
    o("select distinct b from dt_main order by b desc nulls last offset 100"),
    u("select distinct lower(t), grp from dt_main where grp = 1"),
    u("select distinct m.grp, r.label from dt_main m join dt_ref r on r.code = m.code"),
    u("select distinct val from dt_few"),
    u("select distinct name from dt_empty"),
    o("select distinct v collate \"C\" as v from dt_main order by v limit 6"),
    // count(DISTINCT shard key): per-shard counts add up.
    u("select count(distinct id) from dt_main"),
    u("select count(distinct id), count(*), sum(n) from dt_main where grp > 0"),
    o("select grp, count(distinct id) from dt_main group by grp order by grp"),
    o("select c.note, count(distinct c.mid) from dt_child c group by c.note order by c.note collate \"C\" nulls first"),
    u("select count(distinct m.id) from dt_main m join dt_ref r on r.code = m.code"),
    // count(DISTINCT) of another column: distinct (group keys, column)
    // rows merged across shards, then counted.
    u("select count(distinct grp) from dt_main"),
    o("select grp, count(distinct code) from dt_main group by grp order by grp"),
    u("select count(distinct t) from dt_main"),
    o("select ok, count(distinct n) as nn from dt_main group by ok order by ok nulls first"),
    u("select count(distinct f) from dt_main"),
    u("select count(distinct val) from dt_empty"),
    u("select name, count(distinct val) from dt_empty group by name"),
    u("select count(distinct val) from dt_few"),
    o("select cat, count(distinct d) from dt_main group by cat order by count(distinct d) desc, cat collate \"C\" nulls first"),
    u("select count(distinct r.label) from dt_main m join dt_ref r on r.code = m.code"),
    u("select count(distinct r.code) from dt_main m join dt_ref r on r.code = m.code"),
    o("select grp, count(distinct code) from dt_main group by grp order by grp limit 2 offset 1"),
    u("select count(distinct b) from dt_main where id in (1, 2, 3, 4, 5, 6, 7, 14, 21)"),
    // HAVING, evaluated by the proxy on the merged groups.
    o("select grp, count(*) from dt_main group by grp having count(*) > 14 order by grp"),
    o("select code, sum(n) from dt_main group by code having sum(n) > 0 order by code nulls first"),
    o("select grp, avg(b) from dt_main group by grp having avg(b) < 0 or max(f) >= 1 order by grp"),
    o("select cat, count(*) from dt_main group by cat having not (min(n) < -10) and count(t) >= 2 order by cat collate \"C\" nulls first"),
    o("select code, count(*) from dt_main group by code having code is null or code >= 3 order by code nulls first"),
    o("select grp, ok, count(*) from dt_main group by grp, ok having count(*) <> 5 and ok is not null order by grp, ok"),
    o("select d, count(*) from dt_main group by d having count(*) = 1 order by d limit 5"),
    u("select note, sum(amount) from dt_child group by note having sum(amount) >= 100"),
    o("select grp, count(*) from dt_main group by grp having avg(id) > 30.5 order by count(*) desc, grp"),
    o("select val, count(*) from dt_few group by val having count(*) > 1 order by val"),
    u("select name, count(*) from dt_empty group by name having count(*) > 0"),
    o("select grp, min(b) from dt_main group by grp having min(b) < -100000000000 and count(distinct id) > 10 order by grp"),
    o("select grp from dt_main group by grp having max(n) > -1.5 and (sum(b) is null or sum(b) <> 0) order by grp desc"),
];

/// Joins on co-located keys (dt_main.id = dt_child.mid): each shard
/// answers for its own rows and the proxy merges (tier 1).
const COLOCATED: &[Q] = &[
    un("select m.id, c.seq, c.amount from dt_main m join dt_child c on c.mid = m.id"),
    un("select m.grp, count(*), sum(c.amount) from dt_main m join dt_child c on c.mid = m.id group by m.grp"),
    o("select m.id, c.seq from dt_main m join dt_child c on c.mid = m.id order by m.id, c.seq limit 7"),
    o("select m.id, c.seq from dt_main m join dt_child c on c.mid = m.id order by m.id desc, c.seq offset 3 fetch first 5 rows only"),
    u("select m.id, c.seq from dt_main m left join dt_child c on c.mid = m.id and c.seq = 2"),
    u("select count(*), count(c.mid) from dt_main m left join dt_child c on c.mid = m.id"),
    u("select count(distinct c.mid) from dt_main m join dt_child c on c.mid = m.id where m.grp = 1"),
    u("select count(distinct m.grp) from dt_main m join dt_child c on c.mid = m.id"),
    u("select distinct m.grp from dt_main m join dt_child c on c.mid = m.id where c.amount > 5"),
    o("select m.grp, count(*) from dt_main m join dt_child c on c.mid = m.id group by m.grp having count(*) > 5 order by m.grp"),
    u("select m.id from dt_main m, dt_child c where c.mid = m.id and c.seq = 1"),
    u("select m.id from dt_child c right join dt_main m on m.id = c.mid where c.mid is null"),
    u("select r.label, count(*) from dt_main m join dt_child c on c.mid = m.id join dt_ref r on r.code = m.code group by r.label"),
    u("select m.id, c.seq from dt_main m join dt_child c on c.mid = m.id where m.id in (2, 4, 6, 8, 10)"),
    un("select avg(c.amount), min(m.b), max(m.d) from dt_main m join dt_child c on c.mid = m.id"),
];

/// Queries that must be refused with 0A000.
const REFUSED: &[&str] = &[
    "select count(*) from dt_main; select count(*) from dt_child",
    // Locks rows: the gathered copies are not the rows.
    "select * from dt_main m join dt_child c on c.mid = m.id + 1 for update",
];

/// Tier 3 (router::gather): reads the shards cannot answer together,
/// answered by PostgreSQL from the gathered rows.
const GATHERED: &[Q] = &[
    u("select m.id from dt_main m join dt_child c on c.note = m.t"),
    u("select id, row_number() over (order by id) from dt_main"),
    o("select string_agg(t, ',' order by id) from dt_main"),
    u("select id from dt_main order by grp fetch first 3 rows with ties"),
    u("select sum(f) from dt_main"),
    u("select avg(f) from dt_main"),
    u("select min(t) from dt_main"),
    u("select * from dt_main where id in (select mid from dt_child)"),
    u("select id, t from dt_main order by t collate \"default\""),
    u("select id, t from dt_main order by length(t)"),
    o("select grp, count(*) from dt_main group by grp order by grp limit $$1$$"),
    o("select distinct on (grp) grp, id from dt_main order by grp, id"),
    un("select distinct * from dt_main"),
    u("select distinct count(*) from dt_main"),
    u("select distinct ts - ts from dt_main"),
    o("select distinct t from dt_main order by t"),
    u("select grp, count(*) from dt_main group by grp having string_agg(t, ',') <> ''"),
    u("select grp from dt_main group by grp having count(*) > (select 1)"),
    u("select count(*) from dt_main having count(*) > 1"),
    u("select cat, count(*) from dt_main group by cat having cat = 'x'"),
    u("select grp, count(*) from dt_main group by grp having sum(f) > 0"),
    u("select grp, count(*) from dt_main group by grp having count(distinct code) > 1"),
    u("select count(distinct grp), count(distinct code) from dt_main"),
    un("select count(distinct grp), sum(n) from dt_main"),
    u("select grp, count(distinct code) from dt_main group by grp having count(distinct code) > 1"),
    u("select count(distinct lower(t)) from dt_main"),
    // Joins that are not co-located, outer joins, self-joins.
    un("select m.id, c.seq, c.amount from dt_main m join dt_child c on c.mid = m.id + 1"),
    u("select m.id, c.mid from dt_main m left join dt_child c on c.mid = m.id and c.seq = 1 where m.id > 50"),
    u("select a.id, b.id from dt_main a join dt_main b on a.grp = b.grp and a.id < b.id where a.id < 8"),
    u("select m.id, f.id from dt_main m full join dt_few f on f.val = m.grp where m.id is null or m.id < 5"),
    u("select m.grp, count(c.mid) from dt_main m left join dt_child c on c.seq = m.grp group by m.grp"),
    // Set operations.
    u("select grp from dt_main union select val from dt_few"),
    u("select id from dt_main intersect select mid from dt_child"),
    u("select id from dt_main except select mid from dt_child"),
    u("select cat from dt_main except all select name from dt_few"),
    o("select id from dt_main where id < 5 union all select mid from dt_child where mid < 5 order by 1"),
    // CTEs and subqueries.
    u("with c as (select mid, sum(amount) s from dt_child group by mid) select m.id, c.s from dt_main m join c on c.mid = m.id + 2"),
    u("select id from dt_main where b > (select avg(b) from dt_main)"),
    u("select id, (select count(*) from dt_child c where c.mid = m.id + 1) from dt_main m"),
    u("select id from dt_main m where exists (select 1 from dt_child c where c.seq = m.grp and c.mid > m.id)"),
    u("select x.grp, x.n from (select grp, count(*) n from dt_main group by grp) x where x.n > 10"),
    u("with recursive r(i) as (select 1 union all select i + 1 from r where i < 5) select r.i, count(m.id) from r left join dt_main m on m.grp = r.i group by r.i"),
    // Window functions over every row.
    u("select id, sum(b) over (partition by grp) from dt_main"),
    u("select id, rank() over (partition by cat order by id) from dt_main"),
    u("select id, lag(id) over (order by id) from dt_main"),
    un("select grp, avg(n) over (), count(*) over () from dt_main"),
    // Unsharded and reference tables beside sharded ones.
    u("select m.id, l.descr from dt_main m join dt_local l on l.code = m.code"),
    u("select l.descr, count(*) from dt_main m join dt_local l on l.code = m.code join dt_ref r on r.code = l.code group by l.descr"),
    u("select code from dt_local where code in (select code from dt_main)"),
    // Types survive the copy exactly.
    un("select id, b, n, f, t, v, d, ts, ok, u from dt_main m where exists (select 1 from dt_child c where c.seq = m.grp)"),
    u("select count(*), count(u), min(d), max(ts) from dt_main m join dt_few f on f.val = m.grp"),
];

/// Queries PostgreSQL rejects: the proxy must fail too, with the same
/// SQLSTATE (the shards' own error) or refusing with 0A000.
const SAME_ERROR: &[&str] = &[
    "select distinct cat from dt_main order by cat collate \"C\" nulls first",
    "select distinct t from dt_main order by t collate \"C\" desc limit 2",
    "select distinct grp from dt_main order by id",
    "select grp, count(*) from dt_main group by grp having count(*) > 'x'",
    "select nosuchcolumn from dt_main",
    "select count(distinct v::json) from dt_main",
    "select m.nosuch from dt_main m join dt_child c on c.note = m.t",
    "select 1/0 from dt_main m join dt_child c on c.note = m.t",
];

fn names(msgs: &[SimpleQueryMessage]) -> Vec<String> {
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::RowDescription(cols) => {
                Some(cols.iter().map(|c| c.name().to_string()).collect())
            }
            _ => None,
        })
        .unwrap_or_default()
}

type Answer = (Vec<String>, Vec<Vec<Option<String>>>);

async fn answer(c: &Client, q: &Q) -> Result<Answer, String> {
    match c.simple_query(q.sql).await {
        Ok(msgs) => {
            let mut rows = simple_rows(&msgs);
            if q.numeric_text {
                for r in &mut rows {
                    for v in r.iter_mut().flatten() {
                        *v = strip_zeros(v);
                    }
                }
            }
            if !q.ordered {
                rows.sort();
            }
            Ok((names(&msgs), rows))
        }
        Err(e) => Err(match e.as_db_error() {
            Some(d) => format!("{}: {}", d.code().code(), d.message()),
            None => e.to_string(),
        }),
    }
}

type RawAnswer = (Vec<String>, Vec<Vec<Option<Vec<u8>>>>);

/// The query's answer in the extended protocol (binary values).
async fn answer_extended(c: &Client, q: &Q) -> Result<RawAnswer, String> {
    let stmt = c.prepare(q.sql).await.map_err(|e| match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    })?;
    let names: Vec<String> = stmt
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    match c.query(&stmt, &[]).await {
        Ok(rows) => {
            let mut out: Vec<Vec<Option<Vec<u8>>>> = rows
                .iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| {
                            let v = r.get::<_, Raw>(i).0;
                            let numeric =
                                *r.columns()[i].type_() == tokio_postgres::types::Type::NUMERIC;
                            v.map(|v| {
                                if numeric && q.numeric_text {
                                    numeric_canonical(&v)
                                } else {
                                    v
                                }
                            })
                        })
                        .collect()
                })
                .collect();
            if !q.ordered {
                out.sort();
            }
            Ok((names, out))
        }
        Err(e) => Err(match e.as_db_error() {
            Some(d) => format!("{}: {}", d.code().code(), d.message()),
            None => e.to_string(),
        }),
    }
}

#[test]
fn corpus_matches_one_database() {
    let private = PrivateCluster::start(&["--shards", "3", "--replicas", "0"]);
    let base = private.0.base_port;
    private.run(
        "psql",
        &["--shard", "s0", "-c", "create database unsharded owner app"],
    );
    let proxy = TestProxy::start_on(&private.0, |c| set_tables(c, TABLES));
    let config = shardwire::config::Config::load(&proxy.config_path).expect("config");
    let rule = config.router.table("dt_few").expect("dt_few").clone();
    let on0 = move |id: i64| {
        rule.shard_for(&shardwire::sharding::KeyValue::Int(id))
            .expect("shard")
            == 0
    };
    block_on(Duration::from_secs(120), async {
        let (c, _t) = connect_url(&proxy.url()).await;
        let (one, _t1) =
            connect_url(&format!("postgres://app:app@127.0.0.1:{base}/unsharded")).await;
        c.batch_execute(SCHEMA)
            .await
            .expect("schema through the proxy");
        one.batch_execute(SCHEMA).await.expect("schema unsharded");
        for sql in inserts(&on0) {
            c.simple_query(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            one.batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        }
        // The data really is spread: every shard has dt_main rows, dt_few
        // is on shard 0 only, dt_ref is on all.
        for i in 0..3u16 {
            let (s, _ts) =
                connect_url(&format!("postgres://app:app@127.0.0.1:{}/app", base + i)).await;
            assert!(query_count(&s, "select count(*) from dt_main").await > 5);
            assert_eq!(query_count(&s, "select count(*) from dt_ref").await, 6);
            let few = query_count(&s, "select count(*) from dt_few").await;
            assert_eq!(few, if i == 0 { 5 } else { 0 }, "dt_few on shard {i}");
        }

        let started = Instant::now();
        let mut failures = Vec::new();
        for q in CORPUS.iter().chain(GATHERED).chain(COLOCATED) {
            let through = answer(&c, q).await;
            let want = answer(&one, q).await;
            if through != want || want.is_err() {
                failures.push(format!(
                    "query: {}\n  proxy:  {through:?}\n  direct: {want:?}",
                    q.sql
                ));
            }
            // The same statement in the extended protocol, values compared
            // in binary.
            let through = answer_extended(&c, q).await;
            let want = answer_extended(&one, q).await;
            if through != want || want.is_err() {
                failures.push(format!(
                    "query (extended protocol): {}\n  proxy:  {through:?}\n  direct: {want:?}",
                    q.sql
                ));
            }
        }
        for sql in REFUSED {
            match c.simple_query(sql).await {
                Err(e) if e.code().map(|c| c.code()) == Some("0A000") => {}
                other => failures.push(format!(
                    "query: {sql}\n  must be refused with 0A000, got: {:?}",
                    other.map(|m| simple_rows(&m))
                )),
            }
        }
        for sql in SAME_ERROR {
            let code = |r: Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>| {
                r.map(|m| simple_rows(&m))
                    .map_err(|e| e.code().map(|c| c.code().to_string()))
            };
            let through = code(c.simple_query(sql).await);
            let want = code(one.simple_query(sql).await);
            let refused = through == Err(Some("0A000".to_string()));
            if want.is_ok() || (through != want && !refused) {
                failures.push(format!(
                    "query: {sql}\n  must fail as on one database (or with 0A000)\n  proxy:  {through:?}\n  direct: {want:?}"
                ));
            }
        }
        eprintln!(
            "differential corpus: {} queries, {} refusals in {:.1}s",
            CORPUS.len() + GATHERED.len() + COLOCATED.len(),
            REFUSED.len(),
            started.elapsed().as_secs_f64()
        );
        assert!(
            failures.is_empty(),
            "{} of {} corpus queries differ:\n\n{}",
            failures.len(),
            CORPUS.len() + GATHERED.len() + COLOCATED.len() + REFUSED.len() + SAME_ERROR.len(),
            failures.join("\n\n")
        );
    });
}

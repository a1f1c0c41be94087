"""The psycopg 3 scenario of scripts/compat.sh (libpq underneath)."""

import threading
import time

import psycopg
from psycopg.types.json import Jsonb

from compat import (CA, CASTS, COLS, DB, HOST, PASSWORD, PORT, PREFIX, USER, VALUES,
                    Reporter, StepFailed, compare_row, expect)

P = PREFIX
R = Reporter("psycopg", psycopg.__version__)


def connect(sslmode="disable", **kw):
    return psycopg.connect(host=HOST, port=PORT, user=USER, password=PASSWORD, dbname=DB,
                           sslmode=sslmode, sslrootcert=CA, connect_timeout=10,
                           options="-c TimeZone=UTC", **kw)


conn = None


def connect_scram():
    global conn
    conn = connect(autocommit=True)
    expect("current_user", conn.execute("select current_user").fetchone()[0], "app")


def connect_tls():
    with connect("verify-full") as c:
        expect("ssl in use", c.pgconn.ssl_in_use, True)
        expect("select", c.execute("select 'tls'").fetchone()[0], "tls")
    return "sslmode=verify-full"


def simple_query():
    expect("rows", conn.execute("select 1, 'one' union all select 2, 'two'").fetchall(),
           [(1, "one"), (2, "two")])


def params():
    row = conn.execute("select %s::int4 + 1, %s::text, %s::int8 is null", (41, "x", None)).fetchone()
    expect("row", row, (42, "x", True))


def prepared_reuse():
    # prepare=True: a named statement at once, then reused in 40 transactions.
    # Connection b holds a transaction (and so a server connection) on every
    # other turn, so a's transactions run on different server connections.
    pids = set()
    with connect(autocommit=True) as b:
        for i in range(40):
            if i % 2:
                b.execute("begin")
                b.execute("select 1")
            with conn.transaction():
                v, pid = conn.execute("select %s::int8 * 2, pg_backend_pid()", (i,), prepare=True).fetchone()
                expect("result", v, 2 * i)
                pids.add(pid)
            if i % 2:
                b.execute("commit")
    if len(pids) < 2:
        raise StepFailed(f"40 transactions all ran on one server connection ({pids})")
    return f"40 transactions on {len(pids)} server connections"


def tx_commit():
    with conn.transaction():
        conn.execute(f"insert into {P}_tx values (%s, %s)", (1, "committed"))
    expect("count", conn.execute(f"select count(*) from {P}_tx where id = %s", (1,)).fetchone()[0], 1)


def tx_rollback():
    conn.execute("begin")
    conn.execute(f"insert into {P}_tx values (%s, %s)", (2, "rolled back"))
    conn.execute("rollback")
    expect("count", conn.execute(f"select count(*) from {P}_tx where id = %s", (2,)).fetchone()[0], 0)


def tx_error_rollback():
    conn.execute("begin")
    conn.execute(f"insert into {P}_tx values (%s, %s)", (3, "lost"))
    try:
        conn.execute("select 1 / %s", (0,))
        raise StepFailed("1/0 did not fail")
    except psycopg.errors.DivisionByZero:
        pass
    try:
        conn.execute("select 1")
        raise StepFailed("a statement after the error did not fail")
    except psycopg.errors.InFailedSqlTransaction:
        pass
    conn.execute("rollback")
    expect("count", conn.execute(f"select count(*) from {P}_tx where id = %s", (3,)).fetchone()[0], 0)


def types(binary, ids):
    ph = "%b" if binary else "%t"
    placeholders = ", ".join(f"{ph}::{c}" for c in CASTS)
    sql = f"insert into {P}_types (id, {', '.join(COLS)}) values ({ph}, {placeholders})"
    vals = [Jsonb(VALUES[c]) if c == "j" else VALUES[c] for c in COLS]
    with conn.cursor(binary=binary) as cur:
        cur.execute(sql, [ids[0], *vals])
        cur.execute(sql, [ids[1], *([None] * len(COLS))])
        cur.execute(f"select {', '.join(COLS)} from {P}_types where id = any(%s) order by id", (list(ids),))
        rows = cur.fetchall()
        expect("format", cur.pgresult.fformat(0), 1 if binary else 0)
    expect("rows", len(rows), 2)
    compare_row(rows[0])
    compare_row(rows[1], None)


def big_result():
    with conn.cursor() as cur:
        cur.execute("select g, 'row ' || g from generate_series(1, 50000) g")
        n = s = 0
        for g, v in cur:
            n += 1
            s += g
            if v != f"row {g}":
                raise StepFailed(f"row {g}: {v!r}")
    expect("rows", (n, s), (50000, 1250025000))


def cancel():
    timer = threading.Timer(1.0, conn.cancel_safe)
    start = time.monotonic()
    timer.start()
    try:
        conn.execute("select pg_sleep(60)")
        raise StepFailed("pg_sleep(60) was not cancelled")
    except psycopg.errors.QueryCanceled:
        pass
    took = time.monotonic() - start
    if took > 10:
        raise StepFailed(f"cancel took {took:.1f}s")
    expect("after cancel", conn.execute("select 'ok'").fetchone()[0], "ok")
    return f"cancelled after {took:.1f}s"


COPY_ROWS = [(i, f"copy row {i}", f"{i}.5") for i in range(1, 1001)]


def copy_in():
    with conn.cursor() as cur:
        with cur.copy(f"copy {P}_copy (id, v, n) from stdin") as cp:
            for r in COPY_ROWS:
                cp.write_row(r)
        expect("copied", cur.rowcount, 1000)
    row = conn.execute(f"select count(*), sum(id), sum(n)::text from {P}_copy").fetchone()
    expect("table", row, (1000, 500500, "501000.0"))


def copy_out():
    got = []
    with conn.cursor() as cur:
        with cur.copy(f"copy (select id, v, n from {P}_copy order by id) to stdout") as cp:
            for row in cp.rows():
                got.append(tuple(row))
    expect("rows", got, [(str(i), v, n) for i, v, n in COPY_ROWS])


KEYS = [i * 7919 for i in range(1, 1001)]


def shard_insert():
    # executemany runs in pipeline mode: 1000 Bind/Execute, one Sync.
    with conn.cursor() as cur:
        cur.executemany(f"insert into {P}_items (id, v) values (%s, %s)",
                        [(k, f"item {k}") for k in KEYS])
    return "executemany (pipeline mode)"


def ensure_items():
    """Inserts the rows the batch insert left out, one at a time, so that the
    read steps test reads even when shard_insert failed."""
    for k in KEYS:
        conn.execute(f"insert into {P}_items (id, v) values (%s, %s) on conflict (id) do nothing", (k, f"item {k}"))


def shard_read():
    for k in KEYS:
        row = conn.execute(f"select v from {P}_items where id = %s", (k,)).fetchone()
        expect(f"key {k}", row, (f"item {k}",))


def shard_count():
    row = conn.execute(f"select count(*), sum(id) from {P}_items").fetchone()
    expect("count, sum", row, (1000, sum(KEYS)))


def shard_order_limit():
    rows = conn.execute(f"select id, v from {P}_items order by id desc limit 3").fetchall()
    expect("rows", rows, [(k, f"item {k}") for k in sorted(KEYS, reverse=True)[:3]])


R.run("connect_scram", connect_scram)
if conn is None:
    raise SystemExit(1)
for name, fn in [
    ("connect_tls", connect_tls), ("simple_query", simple_query), ("params", params),
    ("prepared_reuse", prepared_reuse), ("tx_commit", tx_commit), ("tx_rollback", tx_rollback),
    ("tx_error_rollback", tx_error_rollback),
    ("types_text", lambda: types(False, (1, 2))), ("types_binary", lambda: types(True, (3, 4))),
    ("big_result", big_result), ("cancel", cancel), ("copy_in", copy_in), ("copy_out", copy_out),
    ("shard_insert", shard_insert), ("shard_read", shard_read), ("shard_count", shard_count),
    ("shard_order_limit", shard_order_limit),
]:
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()
    if name == "shard_read":
        ensure_items()
    R.run(name, fn)

"""The asyncpg scenario of scripts/compat.sh (its own protocol code, always
the extended protocol with binary values, statements cached by name)."""

import asyncio
import json
import ssl
import time
import uuid

import asyncpg

from compat import (CA, CASTS, COLS, DB, HOST, PASSWORD, PORT, PREFIX, USER, VALUES,
                    Reporter, StepFailed, compare_row, expect)

P = PREFIX
R = Reporter("asyncpg", asyncpg.__version__)
KEYS = [i * 7919 for i in range(1, 1001)]


async def connect(tls=False):
    ctx = False
    if tls:
        ctx = ssl.create_default_context(cafile=CA)  # verifies the chain and 127.0.0.1
    c = await asyncpg.connect(host=HOST, port=PORT, user=USER, password=PASSWORD, database=DB,
                              ssl=ctx, timeout=10, server_settings={"TimeZone": "UTC"})
    await c.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    return c


async def main():
    conn = None

    async def connect_scram():
        nonlocal conn
        conn = await connect()
        expect("current_user", await conn.fetchval("select current_user"), "app")

    await R.arun("connect_scram", connect_scram)
    if conn is None:
        raise SystemExit(1)

    async def connect_tls():
        c = await connect(tls=True)
        try:
            expect("tls", c._transport.get_extra_info("sslcontext") is not None, True)
            expect("select", await c.fetchval("select 'tls'"), "tls")
        finally:
            await c.close()
        return "verified against the CA"

    async def simple_query():
        # execute() without arguments is a simple Query message.
        await conn.execute("select 1; select 2")
        status = await conn.execute(f"update {P}_tx set v = v where false")
        expect("status", status, "UPDATE 0")

    async def params():
        row = await conn.fetchrow("select $1::int4 + 1, $2::text, $3::int8 is null", 41, "x", None)
        expect("row", tuple(row), (42, "x", True))

    async def prepared_reuse():
        stmt = await conn.prepare("select $1::int8 * 2, pg_backend_pid()")
        b = await connect()
        pids = set()
        try:
            for i in range(40):
                tx_b = None
                if i % 2:
                    tx_b = b.transaction()
                    await tx_b.start()
                    await b.execute("select 1")
                async with conn.transaction():
                    v, pid = await stmt.fetchrow(i)
                    expect("result", v, 2 * i)
                    pids.add(pid)
                if tx_b:
                    await tx_b.commit()
        finally:
            await b.close()
        if len(pids) < 2:
            raise StepFailed(f"40 transactions all ran on one server connection ({pids})")
        return f"40 transactions on {len(pids)} server connections"

    async def count_tx(i):
        return await conn.fetchval(f"select count(*) from {P}_tx where id = $1", i)

    async def tx_commit():
        async with conn.transaction():
            await conn.execute(f"insert into {P}_tx values ($1, $2)", 1, "committed")
        expect("count", await count_tx(1), 1)

    async def tx_rollback():
        tx = conn.transaction()
        await tx.start()
        await conn.execute(f"insert into {P}_tx values ($1, $2)", 2, "rolled back")
        await tx.rollback()
        expect("count", await count_tx(2), 0)

    async def tx_error_rollback():
        tx = conn.transaction()
        await tx.start()
        await conn.execute(f"insert into {P}_tx values ($1, $2)", 3, "lost")
        try:
            await conn.fetchval("select 1 / $1::int", 0)
            raise StepFailed("1/0 did not fail")
        except asyncpg.exceptions.DivisionByZeroError:
            pass
        try:
            await conn.fetchval("select 1")
            raise StepFailed("a statement after the error did not fail")
        except asyncpg.exceptions.InFailedSQLTransactionError:
            pass
        await tx.rollback()
        expect("count", await count_tx(3), 0)
        expect("after", await conn.fetchval("select 'continued'"), "continued")

    async def types_binary():
        ph = ", ".join(f"${i + 2}::{c}" for i, c in enumerate(CASTS))
        sql = f"insert into {P}_types (id, {', '.join(COLS)}) values ($1, {ph})"
        await conn.execute(sql, 3, *[VALUES[c] for c in COLS])
        await conn.execute(sql, 4, *([None] * len(COLS)))
        rows = await conn.fetch(f"select {', '.join(COLS)} from {P}_types where id = any($1) order by id", [3, 4])
        expect("rows", len(rows), 2)
        first = [uuid.UUID(str(v)) if c == "u" else v for c, v in zip(COLS, rows[0])]
        compare_row(first)
        compare_row(list(rows[1]), None)

    async def big_result():
        rows = await conn.fetch("select g, 'row ' || g as v from generate_series(1, 50000) g")
        expect("rows", (len(rows), sum(r[0] for r in rows)), (50000, 1250025000))
        expect("last", tuple(rows[-1]), (50000, "row 50000"))

    async def cancel():
        start = time.monotonic()
        try:
            await conn.fetchval("select pg_sleep(60)", timeout=1.0)
            raise StepFailed("pg_sleep(60) was not cancelled")
        except asyncio.TimeoutError:
            pass
        expect("after cancel", await conn.fetchval("select 'ok'"), "ok")
        took = time.monotonic() - start
        if took > 10:
            raise StepFailed(f"cancel took {took:.1f}s")
        return f"timeout=1s, connection usable after {took:.1f}s"

    copy_rows = [(i, f"copy row {i}", f"{i}.5") for i in range(1, 1001)]

    async def copy_in():
        # asyncpg's COPY FROM is binary COPY.
        import decimal
        res = await conn.copy_records_to_table(
            f"{P}_copy", records=[(i, v, decimal.Decimal(n)) for i, v, n in copy_rows], columns=["id", "v", "n"])
        expect("status", res, "COPY 1000")
        row = await conn.fetchrow(f"select count(*), sum(id), sum(n)::text from {P}_copy")
        expect("table", tuple(row), (1000, 500500, "501000.0"))
        return "binary COPY"

    async def copy_out():
        chunks = []

        async def sink(data):
            chunks.append(data)

        await conn.copy_from_query(f"select id, v, n from {P}_copy order by id", output=sink)
        lines = b"".join(chunks).decode().splitlines()
        expect("rows", lines, [f"{i}\t{v}\t{n}" for i, v, n in copy_rows])

    async def shard_insert():
        await conn.executemany(f"insert into {P}_items (id, v) values ($1, $2)", [(k, f"item {k}") for k in KEYS])
        return "executemany (pipelined)"

    async def shard_read():
        for k in KEYS:
            expect(f"key {k}", await conn.fetchval(f"select v from {P}_items where id = $1", k), f"item {k}")

    async def shard_count():
        row = await conn.fetchrow(f"select count(*), sum(id) from {P}_items")
        expect("count, sum", tuple(row), (1000, sum(KEYS)))

    async def shard_order_limit():
        rows = await conn.fetch(f"select id, v from {P}_items order by id desc limit 3")
        expect("rows", [tuple(r) for r in rows], [(k, f"item {k}") for k in sorted(KEYS, reverse=True)[:3]])

    for name, fn in [
        ("connect_tls", connect_tls), ("simple_query", simple_query), ("params", params),
        ("prepared_reuse", prepared_reuse), ("tx_commit", tx_commit), ("tx_rollback", tx_rollback),
        ("tx_error_rollback", tx_error_rollback), ("types_text", None), ("types_binary", types_binary),
        ("big_result", big_result), ("cancel", cancel), ("copy_in", copy_in), ("copy_out", copy_out),
        ("shard_insert", shard_insert), ("shard_read", shard_read), ("shard_count", shard_count),
        ("shard_order_limit", shard_order_limit),
    ]:
        if fn is None:
            R.na(name, "asyncpg exchanges every built-in type in binary")
            continue
        if conn.is_in_transaction():
            await conn.execute("rollback")
        if name == "shard_read":
            # Rows a failed batch insert left out, one at a time, so that
            # the read steps test reads.
            for k in KEYS:
                await conn.execute(f"insert into {P}_items (id, v) values ($1, $2) on conflict (id) do nothing",
                                   k, f"item {k}")
        await R.arun(name, fn)
    await conn.close()


asyncio.run(main())

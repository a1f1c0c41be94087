"""Shared parts of the Python scenarios of scripts/compat.sh: the result
lines, per-step time limits and the values every driver round-trips."""

import datetime
import decimal
import os
import sys
import threading
import traceback
import uuid

ENV = os.environ
HOST, PORT = ENV["COMPAT_HOST"], int(ENV["COMPAT_PORT"])
USER, PASSWORD, DB = ENV["COMPAT_USER"], ENV["COMPAT_PASSWORD"], ENV["COMPAT_DB"]
CA, PREFIX = ENV["COMPAT_CA"], ENV["COMPAT_PREFIX"]
STEP_TIMEOUT = float(ENV.get("COMPAT_STEP_TIMEOUT", "30"))

COLS = ["i2", "i4", "i8", "n", "f8", "t", "b", "bo", "d", "ts", "iv", "u", "j", "ia", "ta"]
CASTS = ["int2", "int4", "int8", "numeric", "float8", "text", "bytea", "bool", "date",
         "timestamptz", "interval", "uuid", "jsonb", "int4[]", "text[]"]
UTC = datetime.timezone.utc
VALUES = {
    "i2": 12345,
    "i4": -2147483648,
    "i8": 9007199254740993,
    "n": decimal.Decimal("12345678901234567890.123456789"),
    "f8": 3.25,
    "t": 'héllo "wörld" \\ \'q\' ☃',
    "b": b"\x00\xff\x10'\\",
    "bo": True,
    "d": datetime.date(2024, 2, 29),
    "ts": datetime.datetime(2024, 2, 29, 12, 34, 56, 789000, tzinfo=UTC),
    "iv": datetime.timedelta(days=1, hours=2, minutes=3, seconds=4.5),
    "u": uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    "j": {"a": [1, 2.5, {"b": None}], "s": "x"},
    "ia": [1, None, 3],
    "ta": ["a b", "c", None, 'q"x'],
}


class StepFailed(Exception):
    pass


def expect(what, got, want):
    if got != want:
        raise StepFailed(f"{what}: expected {want!r}, got {got!r}")


def compare_row(row, want=VALUES):
    for col, got in zip(COLS, row):
        expect(col, got, want[col] if want else None)


class Reporter:
    def __init__(self, driver, version):
        self.driver, self.version = driver, version

    def report(self, step, status, detail=""):
        detail = " ".join(str(detail).split())[:400]
        print(f"COMPAT\t{self.driver}\t{self.version}\t{step}\t{status}\t{detail}", flush=True)

    def na(self, step, why):
        self.report(step, "n/a", why)

    def run(self, step, fn):
        """Runs a blocking step in a thread, bounded by STEP_TIMEOUT."""
        box = {}

        def target():
            try:
                box["detail"] = fn() or ""
            except BaseException as e:  # noqa: BLE001 - any failure is the step's
                box["error"] = e
                box["tb"] = traceback.format_exc()

        t = threading.Thread(target=target, daemon=True)
        t.start()
        t.join(STEP_TIMEOUT)
        if t.is_alive():
            self.report(step, "fail", f"no answer within {STEP_TIMEOUT:.0f}s (hang)")
        elif "error" in box:
            e = box["error"]
            sqlstate = getattr(e, "sqlstate", None)
            prefix = f"SQLSTATE {sqlstate}: " if sqlstate else ""
            self.report(step, "fail", f"{prefix}{type(e).__name__}: {e}")
            print(box["tb"], file=sys.stderr)
        else:
            self.report(step, "pass", box["detail"])

    async def arun(self, step, coro_fn):
        """Runs an async step, bounded by STEP_TIMEOUT."""
        import asyncio

        try:
            detail = await asyncio.wait_for(coro_fn(), STEP_TIMEOUT)
            self.report(step, "pass", detail or "")
        except asyncio.TimeoutError:
            self.report(step, "fail", f"no answer within {STEP_TIMEOUT:.0f}s (hang)")
        except BaseException as e:  # noqa: BLE001
            sqlstate = getattr(e, "sqlstate", None)
            prefix = f"SQLSTATE {sqlstate}: " if sqlstate else ""
            self.report(step, "fail", f"{prefix}{type(e).__name__}: {e}")
            traceback.print_exc()

#!/usr/bin/env bash
# upstream-psycopg.sh - run psycopg 3's own test suite directly against
# PostgreSQL and through shardwire (transaction and session pooling), and
# list the tests whose outcome differs.
#
# Usage: scripts/upstream-psycopg.sh --src DIR [--modes direct,transaction,session]
#                                    [--pytest-args "ARGS"]
#
#   --pytest-args "ARGS"  what pytest runs (default: tests), e.g. one file
#   --src DIR   a psycopg source tree (its repository: DIR/psycopg and
#               DIR/tests); the package and its [test] extras are installed
#               from it into target/upstream/psycopg-venv, and the pure-Python
#               implementation runs (PSYCOPG_IMPL=python, over libpq).
#
# Each mode gets its own one-shard cluster (scripts/cluster.sh, free ports),
# so the runs may not see each other's tables. Reports go to
# target/upstream/psycopg-<mode>.log, and the failing test ids of each to
# target/upstream/psycopg-<mode>.failed; the last lines compare each proxy
# mode with the direct run. A full run takes about 20 minutes per mode on
# 2 cores (the modes run one after another), which is why this is a script
# and not part of the suite.
set -euo pipefail

PROG=$(basename "$0")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=""
MODES="direct,transaction,session"
PYTEST_ARGS=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --src) SRC="$2"; shift 2 ;;
        --modes) MODES="$2"; shift 2 ;;
        --pytest-args) PYTEST_ARGS="$2"; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "$PROG: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ -n "$SRC" && -d "$SRC/tests" && -d "$SRC/psycopg" ]] \
    || { echo "$PROG: --src must name a psycopg source tree (with psycopg/ and tests/)" >&2; exit 2; }
SRC=$(cd "$SRC" && pwd)

OUT="$ROOT/target/upstream"
mkdir -p "$OUT"
VENV="$OUT/psycopg-venv"
if [[ ! -x "$VENV/bin/pytest" ]]; then
    echo "$PROG: installing psycopg from $SRC into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$SRC/psycopg[test]"
fi
# The pool from the same tree: its tests use what the released pool lacks.
if [[ -d "$SRC/psycopg_pool" ]] && ! "$VENV/bin/pip" show psycopg-pool >/dev/null 2>&1; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$SRC/psycopg_pool" || true
fi

# shellcheck source=scripts/upstream-lib.sh
. "$ROOT/scripts/upstream-lib.sh"

run_mode() {   # mode
    local mode=$1 dsn
    start_mode psycopg "$mode"
    dsn="postgres://app:app@127.0.0.1:$MODE_PORT/app"
    echo "$PROG: $mode: pytest against $dsn" >&2
    # psycopg's conftest refuses to run after a run that died (its cache).
    rm -rf -- "$OUT/psycopg-$mode.cache"
    # shellcheck disable=SC2086
    (cd "$SRC" && PSYCOPG_IMPL=python timeout 3600 "$VENV/bin/python" -m pytest \
        -p no:randomly -o cache_dir="$OUT/psycopg-$mode.cache" -q --tb=line -rfE \
        --test-dsn "$dsn" ${PYTEST_ARGS:-tests}) \
        >"$OUT/psycopg-$mode.log" 2>&1 || true
    finish_mode psycopg "$mode"
}

IFS=, read -r -a modes <<<"$MODES"
for m in "${modes[@]}"; do
    run_mode "$m"
done
compare_modes psycopg "${modes[@]}"

#!/usr/bin/env bash
# upstream-sqlalchemy.sh - run SQLAlchemy's own test suite directly against
# PostgreSQL and through shardwire (transaction and session pooling), and
# list the tests whose outcome differs.
#
# Usage: scripts/upstream-sqlalchemy.sh [--src DIR] [--modes direct,transaction,session]
#                                       [--pytest-args "ARGS"] [--timeout SECS]
#
#   --pytest-args "ARGS"  what pytest runs (default: test/dialect/postgresql
#               test/sql test/engine test/orm), e.g. one file
#   --src DIR   an unpacked SQLAlchemy sdist (DIR/lib and DIR/test); without
#               it, the sdist of SQLAlchemy 2.0.59 is fetched with pip into
#               target/upstream/sqlalchemy-src. The package (no C extensions),
#               psycopg 3 (pure Python, over libpq) and pytest are installed
#               into target/upstream/sqlalchemy-venv; the tests import the
#               library from DIR/lib (the suite's conftest puts it first).
#   --timeout SECS  limit for each mode's pytest run (default: 3600)
#
# Each mode gets its own one-shard cluster (scripts/cluster.sh, free ports),
# so the runs may not see each other's tables. Before the run, the schemas
# test_schema and test_schema_2, the extensions hstore and citext and the
# English text search configuration are set up as user app on the shard
# itself. pytest gets postgresql+psycopg://app:app@127.0.0.1:PORT/app as
# --dburi. Reports go to target/upstream/sqlalchemy-<mode>.log, and the
# failing test ids of each to target/upstream/sqlalchemy-<mode>.failed; the
# last lines compare each proxy mode with the direct run. A run of the default
# paths takes long on 2 cores (the modes run one after another), which is why
# this is a script and not part of the suite.
set -euo pipefail

PROG=$(basename "$0")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SQLA_VERSION=2.0.59
SRC=""
MODES="direct,transaction,session"
PYTEST_ARGS=""
TIMEOUT=3600
while [[ $# -gt 0 ]]; do
    case "$1" in
        --src) SRC="$2"; shift 2 ;;
        --modes) MODES="$2"; shift 2 ;;
        --pytest-args) PYTEST_ARGS="$2"; shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "$PROG: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || { echo "$PROG: --timeout takes seconds" >&2; exit 2; }

OUT="$ROOT/target/upstream"
mkdir -p "$OUT"
VENV="$OUT/sqlalchemy-venv"
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
if [[ -z "$SRC" ]]; then
    SRC="$OUT/sqlalchemy-src"
    if [[ ! -d "$SRC/test" || ! -d "$SRC/lib" ]]; then
        echo "$PROG: fetching the SQLAlchemy $SQLA_VERSION sdist into $SRC" >&2
        rm -rf -- "$OUT/sqlalchemy-dl" "$SRC"
        "$VENV/bin/pip" download --quiet --disable-pip-version-check \
            --no-binary :all: --no-deps -d "$OUT/sqlalchemy-dl" "sqlalchemy==$SQLA_VERSION"
        mkdir -p "$SRC"
        tar -xzf "$OUT/sqlalchemy-dl/sqlalchemy-$SQLA_VERSION.tar.gz" -C "$SRC" --strip-components=1
        rm -rf -- "$OUT/sqlalchemy-dl"
    fi
fi
[[ -d "$SRC/test" && -d "$SRC/lib/sqlalchemy" ]] \
    || { echo "$PROG: --src must name an unpacked SQLAlchemy sdist (with lib/ and test/)" >&2; exit 2; }
SRC=$(cd "$SRC" && pwd)
if ! "$VENV/bin/python" -c "import pytest, psycopg, sqlalchemy" 2>/dev/null; then
    echo "$PROG: installing SQLAlchemy from $SRC into $VENV" >&2
    # psycopg is the postgresql_psycopg extra, named here: the venv's pip may
    # be too old to match the extra's normalized name.
    DISABLE_SQLALCHEMY_CEXT=1 "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "$SRC" "psycopg>=3.0.7" "typing-extensions>=4.13" "pytest>=7,<10"
fi

# shellcheck source=scripts/upstream-lib.sh
. "$ROOT/scripts/upstream-lib.sh"

# What the suite expects of a PostgreSQL database (README.unittests.rst),
# made as user app (the database's owner) on the shard itself: hstore and
# citext are trusted extensions, so no superuser is needed.
prepare_db() {   # base port
    "$VENV/bin/python" - "postgres://app:app@127.0.0.1:$1/app" <<'EOF'
import sys
import psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    for stmt in (
        "CREATE SCHEMA IF NOT EXISTS test_schema",
        "CREATE SCHEMA IF NOT EXISTS test_schema_2",
        "CREATE EXTENSION IF NOT EXISTS hstore",
        "CREATE EXTENSION IF NOT EXISTS citext",
        "ALTER DATABASE app SET default_text_search_config = 'pg_catalog.english'",
    ):
        conn.execute(stmt)
EOF
}

run_mode() {   # mode
    local mode=$1 dburi
    start_mode sqlalchemy "$mode"
    prepare_db "$MODE_BASE"
    dburi="postgresql+psycopg://app:app@127.0.0.1:$MODE_PORT/app"
    echo "$PROG: $mode: pytest against $dburi" >&2
    rm -rf -- "$OUT/sqlalchemy-$mode.cache"
    # The suite's pyproject.toml adds --maxfail=250; lift it, so that a proxy
    # mode's list is complete.
    # shellcheck disable=SC2086
    (cd "$SRC" && PSYCOPG_IMPL=python timeout "$TIMEOUT" "$VENV/bin/python" -m pytest \
        -p no:randomly -o cache_dir="$OUT/sqlalchemy-$mode.cache" -q --tb=line -rfE \
        --maxfail=0 --dburi "$dburi" \
        ${PYTEST_ARGS:-test/dialect/postgresql test/sql test/engine test/orm}) \
        >"$OUT/sqlalchemy-$mode.log" 2>&1 || true
    finish_mode sqlalchemy "$mode"
}

IFS=, read -r -a modes <<<"$MODES"
for m in "${modes[@]}"; do
    run_mode "$m"
done
compare_modes sqlalchemy "${modes[@]}"

#!/usr/bin/env bash
#
# install-deps.sh - make sure this machine has what shardwire's scripts and
# tests run: PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup),
# psql, pgbench and openssl (TLS test certificates), plus rustfmt and clippy.
#
# Installs Debian's packages when something is missing and we are root;
# otherwise says exactly what to install. Safe to run again: it installs
# nothing when everything is present.

set -euo pipefail

missing=()
pg_bindir=""
if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_bindir="$(pg_config --bindir)"
else
    pg_bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
fi
if [ -z "$pg_bindir" ] || [ ! -x "$pg_bindir/initdb" ] || [ ! -x "$pg_bindir/pgbench" ]; then
    missing+=(postgresql postgresql-contrib)
fi
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps.sh: missing packages; install them with:" >&2
        echo "  sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "install-deps.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${missing[@]}" >&2
fi

# pgbench lives beside the server binaries on Debian; make sure it is reachable.
if ! command -v pgbench >/dev/null 2>&1; then
    echo "install-deps.sh: pgbench not on PATH; add $pg_bindir to PATH" >&2
    exit 1
fi

if command -v rustup >/dev/null 2>&1; then
    for c in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c" >&2
    done
fi

#!/usr/bin/env bash
#
# fuzz-sql.sh - the differential SQL fuzzer (DESIGN §10) for longer than the
# test suite's fixed-seed run. Random, valid statements from a seeded
# generator run through shardwire in front of a private 3-shard cluster and
# on one plain PostgreSQL database holding the same data; answers, errors
# and effects (which shard holds each row) must agree. Refusals (0A000 and
# the proxy's own routing errors) are counted by reason, not failures.
#
# The fuzzer is the `fuzz` module of the integration tests
# (tests/integration/fuzz/); this runs its ignored `long_run` test. The
# test suite runs the same code for a fixed seed and a few thousand
# statements (`cargo test --test integration fuzz::seeded`).
#
# Usage: scripts/fuzz-sql.sh [--minutes N] [--seed S]
#   --minutes N   fuzz for N minutes, at most half of it shrinking
#                 differences (default 5; fractions allowed)
#   --seed S      the generator's seed (default: random, printed)
#
# Exits non-zero when a difference was found. The whole report (refusals by
# reason, every difference with its statements, parameters, both answers
# and a shrunk reproduction) goes to target/tmp/fuzz-sql-seed<S>.txt.
set -euo pipefail

MINUTES=5
SEED=""
while (( $# > 0 )); do
    case "$1" in
        --minutes) MINUTES="${2:?--minutes needs a value}"; shift 2 ;;
        --seed) SEED="${2:?--seed needs a value}"; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "fuzz-sql.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$MINUTES" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "fuzz-sql.sh: --minutes must be a number, got '$MINUTES'" >&2; exit 2; }
if [[ -z "$SEED" ]]; then
    SEED="$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')"
fi
[[ "$SEED" =~ ^[0-9]+$ ]] || { echo "fuzz-sql.sh: --seed must be a non-negative integer, got '$SEED'" >&2; exit 2; }

cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-deps.sh

echo "fuzz-sql.sh: seed $SEED, $MINUTES minutes (rerun with --seed $SEED)"
FUZZ_MINUTES="$MINUTES" FUZZ_SEED="$SEED" \
    exec cargo test --locked --test integration fuzz::long_run -- --ignored --exact --nocapture

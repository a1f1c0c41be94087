#!/usr/bin/env bash
# The rebalancing scenario of issue 7 at full size: a hash-sharded table
# with 1,000,000 rows on 2 shards, clients writing and reading through the
# proxy, ADD SHARD and REBALANCE START; then the mover killed at every
# journal step and resumed; then a range split and a region move under
# load. Each run checks, on every shard directly, that every row is where
# the new map says, that nothing acknowledged was lost or stale, and that
# clients saw no errors; it prints rows moved per second, the longest
# write and the write latency during and outside the move.
#
# Usage: scripts/rebalance-scenario.sh [--rows N] [--only hash|kill|range|region]
# The same tests run in `cargo test` with small sizes (tests/integration/rebalance.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

rows=1000000
only=""
while (($#)); do
    case "$1" in
        --rows) rows="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "rebalance-scenario.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

case "$only" in
    "") filter=(rebalance::rebalance_moves rebalance::rebalance_resumes rebalance::split_range rebalance::move_region) ;;
    hash) filter=(rebalance::rebalance_moves) ;;
    kill) filter=(rebalance::rebalance_resumes) ;;
    range) filter=(rebalance::split_range) ;;
    region) filter=(rebalance::move_region) ;;
    *) echo "rebalance-scenario.sh: --only takes hash, kill, range or region" >&2; exit 2 ;;
esac

scripts/install-deps.sh >/dev/null
# Release build: the proxy's own cost should not colour the latencies.
SHARDWIRE_SCENARIO_ROWS="$rows" cargo test --release --locked --test integration -- \
    "${filter[@]}" --test-threads=1 --nocapture 2>&1 |
    grep -E '^(test |preloaded|killed at|rebalance of|steps of the mover|SPLIT RANGE|MOVE REGION|[0-9]+ rows, all)|panicked|FAILED|test result'

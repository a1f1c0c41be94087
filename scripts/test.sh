#!/usr/bin/env bash
#
# test.sh - the whole test suite, from a fresh machine: installs what the
# tests need, then checks formatting and lints, and runs unit and
# integration tests. Integration tests start their own PostgreSQL shard
# clusters (scripts/cluster.sh) on free loopback ports and remove them.
# Last, scripts/compat.sh runs the client driver compatibility matrix.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --locked -- --test-threads="${SHARDWIRE_TEST_THREADS:-8}"

echo "== driver compatibility (scripts/compat.sh)"
scripts/compat.sh

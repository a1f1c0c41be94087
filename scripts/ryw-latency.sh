#!/usr/bin/env bash
# What read-your-writes by WAL position costs a writer: back-to-back
# single-row UPDATEs (pgbench, one client) through two shardwire proxies in
# front of the same local cluster, one with read_your_writes = "lsn" and
# one with "off" (both read_from = "replica"), interleaved round by round.
# Prints median and p99 latency per target, from pgbench's per-transaction
# log.
#
# Usage: scripts/ryw-latency.sh [--seconds S] [--rounds N]
# Uses $SHARDWIRE_BIN, else target/release/shardwire (built if missing).
set -euo pipefail

SECONDS_PER_RUN=10
ROUNDS=3
while (( $# > 0 )); do
    case "$1" in
        --seconds) SECONDS_PER_RUN="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "ryw-latency.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${SHARDWIRE_BIN:-$ROOT/target/release/shardwire}"
if [[ ! -x "$BIN" ]]; then
    (cd "$ROOT" && cargo build --release --locked)
fi
WORK="$(mktemp -d /tmp/ryw-latency.XXXXXX)"
chmod 755 "$WORK"
CLUSTER="$WORK/cluster"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    "$ROOT/scripts/cluster.sh" down --dir "$CLUSTER" --purge >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

BASE=$(( 42000 + RANDOM % 2000 ))
"$ROOT/scripts/cluster.sh" up --dir "$CLUSTER" --port "$BASE" --proxy-port $(( BASE + 10 )) >/dev/null

start_proxy() {  # name port ryw
    local name="$1" port="$2" ryw="$3"
    sed -e "s/^listen = .*/listen = \"127.0.0.1:$port\"/" \
        -e "s/^http_listen = .*/http_listen = \"127.0.0.1:$(( port + 1 ))\"/" \
        "$CLUSTER/shardwire.toml" > "$WORK/$name.toml"
    printf '\n[reads]\nread_from = "replica"\nread_your_writes = "%s"\n' "$ryw" >> "$WORK/$name.toml"
    "$BIN" serve --config "$WORK/$name.toml" > "$WORK/$name.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 100); do
        pg_isready -q -h 127.0.0.1 -p "$port" && return 0
        sleep 0.1
    done
    echo "proxy $name did not start; see $WORK/$name.log" >&2
    exit 1
}
P_LSN=$(( BASE + 20 )); P_OFF=$(( BASE + 30 ))
start_proxy lsn "$P_LSN" lsn
start_proxy off "$P_OFF" off

export PGPASSWORD=app
pgbench -i -s 1 -q -h 127.0.0.1 -p "$P_LSN" -U app app >/dev/null 2>&1
cat > "$WORK/update.sql" <<'SQL'
\set aid random(1, 100000)
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
SQL

for round in $(seq "$ROUNDS"); do
    for target in lsn off; do
        port=$P_LSN; [[ $target == off ]] && port=$P_OFF
        (cd "$WORK" && pgbench -n -c 1 -T "$SECONDS_PER_RUN" -f update.sql -l \
            --log-prefix="$target-$round" -h 127.0.0.1 -p "$port" -U app app >/dev/null 2>&1)
    done
done

printf '%-6s %12s %12s %10s\n' "ryw" "median_us" "p99_us" "updates"
for target in lsn off; do
    cat "$WORK/$target"-[0-9]* | awk '{print $3}' | sort -n | awk -v t="$target" '
        { v[NR] = $1 }
        END {
            if (NR == 0) { print t, "no transactions"; exit 1 }
            m = v[int((NR + 1) / 2)]; p = v[int(NR * 0.99 + 0.5)]
            printf "%-6s %12d %12d %10d\n", t, m, p, NR
        }'
done

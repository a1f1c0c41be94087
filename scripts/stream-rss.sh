#!/usr/bin/env bash
# The proxy's memory while it streams a large cross-shard answer
# (execute/stream.rs). On one local 2-shard cluster (no replicas), a
# hash-sharded table holds SIZE_MB of rows (1 KB each, half on each shard,
# loaded on the shards directly: a scan does not care which shard a row is
# on). Through shardwire, psql runs
#
#   1. SELECT id, pad FROM st_t                       (concatenation)
#   2. SELECT id, pad FROM st_t ORDER BY id           (k-way merge)
#   3. SELECT id, pad FROM st_t ORDER BY id LIMIT 10 OFFSET <rows - 20>
#      (each shard sends OFFSET + LIMIT rows, nearly all of its rows)
#
# and prints, for each, the bytes psql received, the time, and the proxy's
# peak resident memory (VmHWM of /proc/PID/status, reset before each query
# by restarting the proxy). psql itself holds the whole answer (a few GB).
#
# Usage: scripts/stream-rss.sh [--size-mb N]   (default 2048)
# Uses $SHARDWIRE_BIN, else target/release/shardwire (built if missing).
set -euo pipefail

SIZE_MB=2048
while (( $# > 0 )); do
    case "$1" in
        --size-mb) SIZE_MB="${2:?--size-mb needs a value}"; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "stream-rss.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$SIZE_MB" =~ ^[0-9]+$ ]] || { echo "stream-rss.sh: --size-mb must be a whole number" >&2; exit 2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/install-deps.sh"
BIN="${SHARDWIRE_BIN:-$ROOT/target/release/shardwire}"
if [[ ! -x "$BIN" ]]; then
    (cd "$ROOT" && cargo build --release --locked)
fi
WORK="$(mktemp -d /tmp/stream-rss.XXXXXX)"
chmod 755 "$WORK"
CLUSTER="$WORK/cluster"
PROXY_PID=""
cleanup() {
    [[ -n "$PROXY_PID" ]] && kill "$PROXY_PID" 2>/dev/null || true
    "$ROOT/scripts/cluster.sh" down --dir "$CLUSTER" --purge >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

BASE=$(( 46000 + RANDOM % 2000 ))
"$ROOT/scripts/cluster.sh" up --dir "$CLUSTER" --replicas 0 --port "$BASE" \
    --proxy-port $(( BASE + 10 )) >/dev/null
PORT=$(( BASE + 20 ))
sed -e "s/^listen = .*/listen = \"127.0.0.1:$PORT\"/" \
    -e "s/^http_listen = .*/http_listen = \"127.0.0.1:$(( PORT + 1 ))\"/" \
    "$CLUSTER/shardwire.toml" > "$WORK/shardwire.toml"
printf '[[tables]]\nname = "st_t"\nkey = "id"\nstrategy = "hash"\n' >> "$WORK/shardwire.toml"

start_proxy() {
    "$BIN" serve --config "$WORK/shardwire.toml" > "$WORK/shardwire.log" 2>&1 &
    PROXY_PID=$!
    for _ in $(seq 100); do
        pg_isready -q -h 127.0.0.1 -p "$PORT" && return 0
        sleep 0.1
    done
    echo "stream-rss.sh: the proxy did not start; see $WORK/shardwire.log" >&2
    exit 1
}
stop_proxy() { kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true; PROXY_PID=""; }

export PGPASSWORD=app
ROWS=$(( SIZE_MB * 1024 ))
HALF=$(( ROWS / 2 ))
start_proxy
psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U app app \
    -c "CREATE TABLE st_t (id int PRIMARY KEY, pad text)"
echo "loading $ROWS rows of 1 KB ($SIZE_MB MB) on the two shards"
LOADS=()
for s in 0 1; do
    psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p $(( BASE + s )) -U app app -c \
        "INSERT INTO st_t SELECT g, rpad(md5(g::text), 1000, md5((g + 1)::text)) FROM generate_series($(( s * HALF + 1 )), $(( (s + 1) * HALF ))) g" &
    LOADS+=("$!")
done
for p in "${LOADS[@]}"; do wait "$p"; done
stop_proxy

printf '%-60s %12s %8s %14s\n' query bytes_out seconds proxy_peak_MB
for q in "SELECT id, pad FROM st_t" \
         "SELECT id, pad FROM st_t ORDER BY id" \
         "SELECT id, pad FROM st_t ORDER BY id LIMIT 10 OFFSET $(( ROWS - 20 ))"; do
    start_proxy
    start=$(date +%s.%N)
    bytes=$(psql -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U app app -c "$q" | wc -c)
    end=$(date +%s.%N)
    peak_kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$PROXY_PID/status")
    awk -v q="$q" -v b="$bytes" -v s="$start" -v e="$end" -v k="$peak_kb" \
        'BEGIN { printf "%-60s %12d %8.1f %14.1f\n", q, b, e - s, k / 1024 }'
    stop_proxy
done

#!/usr/bin/env bash
# What each tier of cross-shard reads costs (DESIGN §6), on one local
# 2-shard cluster (no replicas): one client runs each query ROUNDS times
# through shardwire and on one plain database holding the same rows (a
# database of its own on shard s0's primary), with pgbench on one
# connection (-c 1), and prints each target's average latency, the ratio
# of the averages, and the proxy's peak RSS.
#
#  - tier 1: a join on co-located keys, grouped (every shard answers for
#    its own rows, the proxy merges the groups);
#  - tier 3: a join that is not on the keys (every row of both tables is
#    copied onto the default shard, PostgreSQL answers there);
#  - tier 3 with an unsharded table beside a sharded one.
#
# Usage: scripts/tier-latency.sh [--rows R] [--rounds N]
# Uses $SHARDWIRE_BIN, else target/release/shardwire (built if missing).
set -euo pipefail

ROWS=20000
ROUNDS=30
while (( $# > 0 )); do
    case "$1" in
        --rows) ROWS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "tier-latency.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${SHARDWIRE_BIN:-$ROOT/target/release/shardwire}"
if [[ ! -x "$BIN" ]]; then
    (cd "$ROOT" && cargo build --release --locked)
fi
WORK="$(mktemp -d /tmp/tier-latency.XXXXXX)"
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
P=$(( BASE + 20 ))
sed -e "s/^listen = .*/listen = \"127.0.0.1:$P\"/" \
    -e "s/^http_listen = .*/http_listen = \"127.0.0.1:$(( P + 1 ))\"/" \
    "$CLUSTER/shardwire.toml" > "$WORK/proxy.toml"
cat >> "$WORK/proxy.toml" <<'EOF'
[[tables]]
name = "tl_c"
key = "id"
strategy = "hash"

[[tables]]
name = "tl_o"
key = "cid"
strategy = "hash"
EOF
"$BIN" serve --config "$WORK/proxy.toml" > "$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
for _ in $(seq 100); do pg_isready -q -h 127.0.0.1 -p "$P" && break; sleep 0.1; done

export PGPASSWORD=app
"$ROOT/scripts/cluster.sh" psql --dir "$CLUSTER" --shard s0 -c "create database tl_one owner app" >/dev/null
SCHEMA="create table tl_c (id int8 primary key, region int, name text);
create table tl_o (cid int8, n int, amount numeric, primary key (cid, n));
create table tl_plan (id int primary key, label text);"
psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$P" -U app app -c "$SCHEMA"
psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$BASE" -U app tl_one -c "$SCHEMA"
gen_c() { awk -v n="$ROWS" 'BEGIN { for (i = 1; i <= n; i++) printf "%d\t%d\tname%d\n", i, i % 50, i }'; }
gen_o() { awk -v n="$ROWS" 'BEGIN { for (i = 1; i <= n; i++) printf "%d\t%d\t%d.%02d\n", (i * 7) % n + 1, i, i % 1000, i % 100 }'; }
for target in "$P app" "$BASE tl_one"; do
    set -- $target
    gen_c | psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U app "$2" -c "copy tl_c from stdin"
    gen_o | psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U app "$2" -c "copy tl_o from stdin"
    psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U app "$2" \
        -c "insert into tl_plan select g, 'plan' || g from generate_series(0, 49) g" -c "analyze" 2>/dev/null
done

QUERIES=(
    "tier1|select c.region, count(*), sum(o.amount) from tl_c c join tl_o o on o.cid = c.id group by c.region"
    "tier3-join|select c.region, count(*) from tl_c c join tl_o o on o.n = c.id group by c.region"
    "tier3-unsharded|select p.label, count(*) from tl_c c join tl_plan p on p.id = c.region group by p.label"
)

# One query ROUNDS times on a target, one connection: the average in ms.
timings() {  # port db sql
    printf '%s;\n' "$3" > "$WORK/q.sql"
    pgbench -n -c 1 -t "$ROUNDS" -f "$WORK/q.sql" -h 127.0.0.1 -p "$1" -U app "$2" 2>/dev/null |
        awk '/latency average/ { print $4 }'
}

printf '%-16s %12s %12s %8s\n' query "proxy avg" "one avg" ratio
for q in "${QUERIES[@]}"; do
    name="${q%%|*}"; sql="${q#*|}"
    # Same answer first.
    a=$(psql -X -At -h 127.0.0.1 -p "$P" -U app app -c "$sql" | sort)
    b=$(psql -X -At -h 127.0.0.1 -p "$BASE" -U app tl_one -c "$sql" | sort)
    if [[ "$a" != "$b" ]]; then echo "$name: answers differ" >&2; exit 1; fi
    pa=$(timings "$P" app "$sql")
    oa=$(timings "$BASE" tl_one "$sql")
    printf '%-16s %12s %12s %8s\n' "$name" "$pa" "$oa" \
        "$(awk -v a="$pa" -v b="$oa" 'BEGIN { printf "%.2f", a / b }')"
done
echo "rows per table: $ROWS; $ROUNDS runs each, ms"
echo "proxy peak RSS: $(awk '/VmHWM/ { print $2, $3 }' /proc/$PROXY_PID/status)"

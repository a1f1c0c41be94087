#!/usr/bin/env bash
# What a cross-shard query costs against the slower of its single-shard
# parts, and what two-phase commit costs TPC-B. On one local 2-shard
# cluster (no replicas), interleaved round by round:
#
#  1. One client runs `SELECT count(*)` and `SELECT ... ORDER BY v LIMIT 10`
#     over a hash-sharded table (ROWS rows) through shardwire, and the same
#     statements directly on each shard's primary. Prints p50/p99 latency
#     per target and the proxy's p50 over the slower shard's p50.
#  2. pgbench's TPC-B-like script through shardwire, -c 16: once with the
#     pgbench tables sharded (aid, tid, bid: most transactions span both
#     shards and commit with two-phase commit) and once unsharded (every
#     table on shard s0: one-phase commit). Prints TPS of each.
#
# Usage: scripts/scatter-latency.sh [--seconds S] [--rounds N] [--rows R]
# Uses $SHARDWIRE_BIN, else target/release/shardwire (built if missing).
set -euo pipefail

SECONDS_PER_RUN=10
ROUNDS=3
ROWS=100000
while (( $# > 0 )); do
    case "$1" in
        --seconds) SECONDS_PER_RUN="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --rows) ROWS="$2"; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "scatter-latency.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${SHARDWIRE_BIN:-$ROOT/target/release/shardwire}"
if [[ ! -x "$BIN" ]]; then
    (cd "$ROOT" && cargo build --release --locked)
fi
WORK="$(mktemp -d /tmp/scatter-latency.XXXXXX)"
chmod 755 "$WORK"
CLUSTER="$WORK/cluster"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    "$ROOT/scripts/cluster.sh" down --dir "$CLUSTER" --purge >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

BASE=$(( 44000 + RANDOM % 2000 ))
"$ROOT/scripts/cluster.sh" up --dir "$CLUSTER" --replicas 0 --port "$BASE" \
    --proxy-port $(( BASE + 10 )) >/dev/null
S0=$BASE
S1=$(( BASE + 1 ))

start_proxy() {  # name port tables-toml
    local name="$1" port="$2" tables="$3"
    sed -e "s/^listen = .*/listen = \"127.0.0.1:$port\"/" \
        -e "s/^http_listen = .*/http_listen = \"127.0.0.1:$(( port + 1 ))\"/" \
        "$CLUSTER/shardwire.toml" > "$WORK/$name.toml"
    printf '%s\n' "$tables" >> "$WORK/$name.toml"
    "$BIN" serve --config "$WORK/$name.toml" > "$WORK/$name.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 100); do
        pg_isready -q -h 127.0.0.1 -p "$port" && return 0
        sleep 0.1
    done
    echo "proxy $name did not start; see $WORK/$name.log" >&2
    exit 1
}
table() { printf '[[tables]]\nname = "%s"\nkey = "%s"\nstrategy = "hash"\n' "$1" "$2"; }
P_SHARDED=$(( BASE + 20 ))
P_ONE=$(( BASE + 30 ))
start_proxy sharded "$P_SHARDED" "$(table sl_t id; table pgbench_accounts aid;
    table pgbench_tellers tid; table pgbench_branches bid; table pgbench_history aid)"

export PGPASSWORD=app
psql_on() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U app app -c "$2" >/dev/null; }
psql_on "$P_SHARDED" "CREATE TABLE sl_t (id int PRIMARY KEY, v int NOT NULL, pad text)"
psql_on "$P_SHARDED" "CREATE INDEX ON sl_t (v)"
# COPY through the proxy, which sends each row to its key's shard.
awk -v n="$ROWS" 'BEGIN { for (i = 1; i <= n; i++) printf "%d\t%d\tpad%d\n", i, (i * 7919) % 100003, i }' |
    psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$P_SHARDED" -U app app \
        -c "COPY sl_t (id, v, pad) FROM STDIN" >/dev/null
psql_on "$P_SHARDED" "ANALYZE sl_t"

cat > "$WORK/count.sql" <<'SQL'
SELECT count(*) FROM sl_t;
SQL
cat > "$WORK/order.sql" <<'SQL'
SELECT id, v FROM sl_t ORDER BY v, id LIMIT 10;
SQL

for round in $(seq "$ROUNDS"); do
    for q in count order; do
        for target in proxy s0 s1; do
            case $target in proxy) port=$P_SHARDED ;; s0) port=$S0 ;; s1) port=$S1 ;; esac
            (cd "$WORK" && pgbench -n -c 1 -T "$SECONDS_PER_RUN" -f "$q.sql" -l \
                --log-prefix="lat-$q-$target-$round" -h 127.0.0.1 -p "$port" -U app app \
                >"out-$q-$target-$round.txt" 2>&1) || {
                echo "pgbench $q against $target failed:" >&2
                cat "$WORK/out-$q-$target-$round.txt" >&2
                exit 1
            }
        done
    done
done

percentiles() {  # files... -> "p50 p99 n" in microseconds (failed ones left out)
    cat "$@" | awk '$3 ~ /^[0-9]+$/ {print $3}' | sort -n | awk '
        { v[NR] = $1 }
        END {
            if (NR == 0) { print "0 0 0"; exit }
            printf "%d %d %d\n", v[int((NR + 1) / 2)], v[int(NR * 0.99 + 0.5)], NR
        }'
}

echo "== cross-shard query latency, one client, $ROWS rows on 2 shards (microseconds)"
printf '%-8s %-6s %10s %10s %10s\n' query target p50_us p99_us runs
for q in count order; do
    declare -A p50=()
    for target in proxy s0 s1; do
        read -r m p n < <(percentiles "$WORK"/lat-"$q-$target"-*)
        p50[$target]=$m
        printf '%-8s %-6s %10d %10d %10d\n' "$q" "$target" "$m" "$p" "$n"
    done
    slower=${p50[s0]}; (( ${p50[s1]} > slower )) && slower=${p50[s1]}
    awk -v a="${p50[proxy]}" -v b="$slower" -v q="$q" \
        'BEGIN { printf "%-8s proxy p50 / slower shard p50 = %.2f\n", q, (b > 0 ? a / b : 0) }'
    unset p50
done

# 2. TPC-B with and without cross-shard transactions.
start_proxy one "$P_ONE" ""
pgbench -i -s 2 -q -h 127.0.0.1 -p "$P_SHARDED" -U app app >/dev/null 2>&1
for round in $(seq "$ROUNDS"); do
    for target in sharded one; do
        port=$P_SHARDED; [[ $target == one ]] && port=$P_ONE
        if [[ $target == one ]]; then
            # Unsharded: every pgbench table on s0 (the default shard).
            pgbench -i -s 2 -q -h 127.0.0.1 -p "$S0" -U app app >/dev/null 2>&1
        fi
        pgbench -n -c 16 -j 2 -T "$SECONDS_PER_RUN" -h 127.0.0.1 -p "$port" -U app app \
            > "$WORK/tpcb-$target-$round.out" 2>&1 || true
        if [[ $target == one ]]; then
            psql_on "$S0" "DROP TABLE pgbench_accounts, pgbench_tellers, pgbench_branches, pgbench_history"
            pgbench -i -s 2 -q -h 127.0.0.1 -p "$P_SHARDED" -U app app >/dev/null 2>&1
        fi
    done
done
echo "== TPC-B-like, 16 clients, scale 2, $SECONDS_PER_RUN s per run (TPS per round; failed transactions)"
for target in sharded one; do
    tps=$(grep -h '^tps' "$WORK"/tpcb-"$target"-*.out | awk '{printf "%s ", int($3)}')
    failed=$(grep -h 'failed' "$WORK"/tpcb-"$target"-*.out | awk '{s += $NF} END {print s + 0}')
    label="2 shards, cross-shard (2PC)"; [[ $target == one ]] && label="1 shard (one-phase)"
    printf '%-30s tps: %s failed: %s\n' "$label" "$tps" "$failed"
done

#!/usr/bin/env bash
#
# bench.sh - pgbench workloads against direct PostgreSQL, PgBouncer and
# shardwire, side by side, on a throwaway local cluster.
#
# It starts its own cluster (scripts/cluster.sh: 2 shards, no replicas),
# PgBouncer (transaction pooling) and shardwire proxies with the same
# backend pool size:
#
#   shardwire      no [[tables]]: every statement goes to shard s0, like the
#                  other two targets (single-shard workloads)
#   nolanes        the same with `pool.pipeline_lanes = 0` (target
#                  `nolanes`): ordinary transaction pooling only
#   shardwire-2s   pgbench tables hash-sharded over s0 and s1 (database
#                  `app2`, loaded through the proxy with its COPY splitting)
#
# Every workload runs on every target once per round, the targets in turn,
# for --rounds rounds, so that machine noise hits all of them alike. Each
# run's latencies come from pgbench's per-transaction log (--log); the table
# shows the median of the rounds, with min and max of the TPS.
#
# Workloads (--workloads, comma separated; default all):
#   select-prepared  pgbench -S -M prepared, single shard
#   select-extended  pgbench -S -M extended (unnamed statements), single shard
#   select-simple    pgbench -S -M simple, single shard
#   lat-prepared, lat-extended, lat-simple
#                    the same with 1 client: the latency each target adds
#                    to a round trip (column "+p50 µs": p50 minus direct's)
#   select-2shard    pgbench -S -M prepared; shardwire routes over 2 shards,
#                    direct and PgBouncer use one shard as a reference
#   tpcb             pgbench TPC-B-like transactions, -M simple, single shard
#   storm            500 clients (--storm-clients) on a pool of 20 (--pool),
#                    pgbench -S -M simple, 20 transactions per client per
#                    --duration second (-t: every client logs in and finishes)
#   scatter-count    shardwire-2s only: SELECT count(*) over both shards
#   scatter-order    shardwire-2s only: ORDER BY aid LIMIT 10 over both shards
#
# PgBouncer: --pgbouncer PATH, else the 1.25.2 that
# ../shared/anchors/build-pgbouncer.sh builds when that script is there,
# else Debian's. Since 1.21 PgBouncer keeps protocol-level prepared
# statements in transaction pooling (max_prepared_statements, set to 200
# here): every workload uses its transaction pool. An older PgBouncer
# (Debian 12 has 1.18) cannot: a client's Bind may reach a server that never
# saw its Parse, so for the -M prepared workloads it serves the client from a
# session-mode pool of the same size (one server per client: its best case).
# The table names the version that ran.
#
# --cpu-hog N keeps N busy loops running beside every run: a proxy's
# speed must not collapse when the machine is busy.
#
# A second shardwire binary (SHARDWIRE_BASELINE_BIN, target `baseline`)
# runs beside the first in the same rounds, on the same one-shard config:
# before/after comparisons of a change, measured side by side.
#
# Output: the table on stdout, and in --out (default docs/): bench.md (the
# table as markdown, with the command line) and bench.svg (a TPS chart).
# Raw pgbench output and logs stay in the work dir with --keep.

set -euo pipefail

readonly PROG="bench.sh"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
readonly REPO_ROOT="${SCRIPT_DIR%/*}"

ALL_WORKLOADS="select-prepared,select-extended,select-simple,lat-prepared,lat-extended,lat-simple,select-2shard,tpcb,storm,scatter-count,scatter-order"

DURATION=10
ROUNDS=3
CLIENTS=16
STORM_CLIENTS=500
POOL=20
SCALE=10
THREADS=2
WORKLOADS="$ALL_WORKLOADS"
TARGETS="direct,pgbouncer,shardwire,nolanes"
PGBOUNCER_ARG=""
CPU_HOG=0
BASE_PORT=25432
OUT_DIR="$REPO_ROOT/docs"
DIR=""
KEEP=0
QUICK=0
SAMPLING=""   # pgbench --sampling-rate; empty: log every transaction
STORM_TX_PER_SEC=20   # storm: transactions per client per --duration second
ORIG_ARGS="$*"

usage() {
    cat <<EOF
Usage: $PROG [--quick] [--duration S] [--rounds N] [--clients N]
             [--storm-clients N] [--pool N] [--scale N] [--workloads LIST]
             [--targets LIST] [--pgbouncer PATH] [--cpu-hog N] [--port BASE]
             [--out DIR] [--dir DIR] [--keep]

Runs pgbench against direct PostgreSQL, PgBouncer and shardwire on a local
cluster it starts and stops itself, round by round, and prints a table.

  --quick            smoke run under 2 minutes: 2 rounds of 1 s runs, scale 1
                     (checks that everything works; too short to quote)
  --duration S       seconds per pgbench run (default $DURATION)
  --rounds N         rounds; each runs every workload on every target (default $ROUNDS)
  --clients N        pgbench clients for the non-storm workloads (default $CLIENTS)
  --storm-clients N  clients of the connection storm (default $STORM_CLIENTS)
  --pool N           backend pool size of PgBouncer and shardwire (default $POOL)
  --scale N          pgbench scale factor (default $SCALE; 1 = 100k accounts)
  --workloads LIST   comma separated, from: $ALL_WORKLOADS
  --targets LIST     comma separated, from: direct,pgbouncer,shardwire,nolanes,baseline
  --pgbouncer PATH   the PgBouncer binary (default: the 1.25.2 that
                     ../shared/anchors/build-pgbouncer.sh builds, else Debian's)
  --cpu-hog N        run N busy loops beside the benchmark (default 0)
  --sampling-rate R  log only this fraction of transactions (pgbench --sampling-rate)
  --port BASE        first port (default $BASE_PORT; uses BASE..BASE+10)
  --out DIR          where bench.md and bench.svg go (default docs/)
  --dir DIR          work dir (default: a new temporary dir, removed at exit)
  --keep             keep the work dir (pgbench logs, server logs)

Environment: SHARDWIRE_BIN (else cargo build --release), CARGO_TARGET_DIR,
SHARDWIRE_BASELINE_BIN (the binary of target baseline; added to the
targets when set).
EOF
}

err() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { err "$@"; exit 1; }
say() { printf '%s: %s\n' "$PROG" "$*" >&2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --duration) DURATION="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --clients) CLIENTS="$2"; shift ;;
        --storm-clients) STORM_CLIENTS="$2"; shift ;;
        --pool) POOL="$2"; shift ;;
        --scale) SCALE="$2"; shift ;;
        --workloads) WORKLOADS="$2"; shift ;;
        --targets) TARGETS="$2"; shift ;;
        --pgbouncer) PGBOUNCER_ARG="$2"; shift ;;
        --cpu-hog) CPU_HOG="$2"; shift ;;
        --sampling-rate) SAMPLING="$2"; shift ;;
        --port) BASE_PORT="$2"; shift ;;
        --out) OUT_DIR="$2"; shift ;;
        --dir) DIR="$2"; shift ;;
        --keep) KEEP=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done
if (( QUICK )); then
    # Explicit options given after --quick still win for the ones not set here.
    [[ " $ORIG_ARGS " == *" --duration "* ]] || DURATION=1
    [[ " $ORIG_ARGS " == *" --scale "* ]] || SCALE=1
    [[ " $ORIG_ARGS " == *" --rounds "* ]] || ROUNDS=2
fi
for v in DURATION ROUNDS CLIENTS STORM_CLIENTS POOL SCALE BASE_PORT; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "--${v,,} must be a positive integer, got '${!v}'"
done
[[ "$CPU_HOG" =~ ^[0-9]+$ ]] || die "--cpu-hog must be a non-negative integer, got '$CPU_HOG'"
IFS=',' read -r -a WL <<<"$WORKLOADS"
for w in "${WL[@]}"; do
    [[ ",$ALL_WORKLOADS," == *",$w,"* ]] || die "unknown workload '$w' (from: $ALL_WORKLOADS)"
done
if [[ -n "${SHARDWIRE_BASELINE_BIN:-}" && ",$TARGETS," != *",baseline,"* ]]; then
    TARGETS="$TARGETS,baseline"
fi
IFS=',' read -r -a TG <<<"$TARGETS"
for t in "${TG[@]}"; do
    [[ ",direct,pgbouncer,shardwire,nolanes,baseline," == *",$t,"* ]] || die "unknown target '$t'"
done
has_target() { [[ ",$TARGETS," == *",$1,"* ]]; }

# Ports: the cluster's 2 primaries on BASE, BASE+1; PgBouncer BASE+4;
# shardwire BASE+5 (HTTP +6); shardwire-2s BASE+7 (HTTP +8); baseline
# BASE+9 (HTTP +10); nolanes BASE+11 (HTTP +12).
readonly PG0_PORT=$BASE_PORT PGB_PORT=$((BASE_PORT + 4))
readonly SW_PORT=$((BASE_PORT + 5)) SW2_PORT=$((BASE_PORT + 7)) SWB_PORT=$((BASE_PORT + 9))
readonly SWN_PORT=$((BASE_PORT + 11))

unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSFILE PGSERVICE PGOPTIONS PGSSLMODE
export PGPASSWORD=app

# ---------------------------------------------------------------------------
# Dependencies
# ---------------------------------------------------------------------------

"$SCRIPT_DIR/install-deps.sh"
ANCHOR_PGBOUNCER="$REPO_ROOT/../shared/anchors/build-pgbouncer.sh"
if [[ -z "$PGBOUNCER_ARG" && -f "$ANCHOR_PGBOUNCER" ]] && has_target pgbouncer; then
    say "building PgBouncer from ${ANCHOR_PGBOUNCER#"$REPO_ROOT/"} (reused when built)"
    PGBOUNCER_ARG="$(bash "$ANCHOR_PGBOUNCER" | tail -n 1)" || die "build-pgbouncer.sh failed"
fi
missing=()
[[ -n "$PGBOUNCER_ARG" ]] || command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]] || missing+=(pgbouncer)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ "$(id -u)" -ne 0 ]]; then
        die "missing packages; install them with: sudo apt-get install ${missing[*]}"
    fi
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${missing[@]}" >&2
fi
if [[ -n "$PGBOUNCER_ARG" ]]; then
    [[ -x "$PGBOUNCER_ARG" ]] || die "--pgbouncer $PGBOUNCER_ARG is not executable"
    PGBOUNCER="$PGBOUNCER_ARG"
else
    PGBOUNCER="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
fi
PGB_VERSION="$("$PGBOUNCER" --version 2>/dev/null | sed -n 's/^PgBouncer \([0-9.]*\).*/\1/p' | head -n 1)"
[[ -n "$PGB_VERSION" ]] || PGB_VERSION="unknown"
# Protocol-level prepared statements in transaction pooling: 1.21 and later.
PGB_PREPARED=0
if [[ "$PGB_VERSION" =~ ^([0-9]+)\.([0-9]+) ]] \
    && (( BASH_REMATCH[1] > 1 || (BASH_REMATCH[1] == 1 && BASH_REMATCH[2] >= 21) )); then
    PGB_PREPARED=1
fi

if [[ -n "${SHARDWIRE_BIN:-}" ]]; then
    [[ -x "$SHARDWIRE_BIN" ]] || die "SHARDWIRE_BIN=$SHARDWIRE_BIN is not executable"
    SW_BIN="$SHARDWIRE_BIN"
else
    say "building shardwire (cargo build --release)"
    (cd "$REPO_ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
    SW_BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/shardwire"
    [[ "$SW_BIN" = /* ]] || SW_BIN="$REPO_ROOT/$SW_BIN"
    [[ -x "$SW_BIN" ]] || die "built, but $SW_BIN is missing"
fi

if has_target baseline; then
    [[ -x "${SHARDWIRE_BASELINE_BIN:-}" ]] || die "target baseline needs SHARDWIRE_BASELINE_BIN, an executable shardwire"
fi

# Servers and PgBouncer refuse to run as root; they run as `postgres` then.
RUN_AS=()
if [[ "$(id -u)" -eq 0 ]]; then
    RUN_AS=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi

# ---------------------------------------------------------------------------
# Setup and teardown
# ---------------------------------------------------------------------------

CREATED_DIR=0
if [[ -z "$DIR" ]]; then
    DIR="$(mktemp -d /tmp/shardwire-bench.XXXXXX)"
    CREATED_DIR=1
    # The postgres user (servers, PgBouncer) must reach the cluster inside.
    chmod 0755 "$DIR"
else
    mkdir -p "$DIR"
    DIR="$(cd "$DIR" && pwd)"
fi
CL="$DIR/cluster"
RUNS="$DIR/runs"
mkdir -p "$RUNS"
PIDS=()
CLUSTER_UP=0

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if (( CLUSTER_UP )); then
        if (( KEEP )); then
            "$SCRIPT_DIR/cluster.sh" down --dir "$CL" >/dev/null 2>&1 || true
        else
            "$SCRIPT_DIR/cluster.sh" down --dir "$CL" --purge >/dev/null 2>&1 || true
        fi
    fi
    if (( CREATED_DIR && ! KEEP )); then
        rm -rf "$DIR"
    elif (( KEEP )); then
        say "work dir kept: $DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

tcp_accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {   # port pid name log
    local i
    for (( i = 0; i < 300; i++ )); do
        tcp_accepts "$1" && return 0
        kill -0 "$2" 2>/dev/null || { tail -n 20 "$4" >&2; die "$3 exited during startup"; }
        sleep 0.1
    done
    die "$3 did not listen on port $1 within 30 s"
}
psql_q() {   # port db sql
    psql -X -q -At -h 127.0.0.1 -p "$1" -U app -d "$2" -v ON_ERROR_STOP=1 -c "$3"
}
cluster_psql() {   # shard sql (as superuser)
    "$SCRIPT_DIR/cluster.sh" psql --dir "$CL" --shard "$1" -- -X -q -At -v ON_ERROR_STOP=1 -c "$2"
}

say "starting a 2-shard cluster in $CL"
CLUSTER_UP=1
"$SCRIPT_DIR/cluster.sh" up --dir "$CL" --shards 2 --replicas 0 --port "$BASE_PORT" \
    --proxy-port "$SW_PORT" >/dev/null
# The direct storm needs a server connection per client (plus the pools').
need_conns=$(( STORM_CLIENTS + 4 * POOL + 50 ))
have_conns="$(cluster_psql s0 'show max_connections')"
if (( have_conns < need_conns )); then
    for s in s0 s1; do cluster_psql "$s" "alter system set max_connections = $need_conns" >/dev/null; done
    "$SCRIPT_DIR/cluster.sh" down --dir "$CL" >/dev/null
    "$SCRIPT_DIR/cluster.sh" up --dir "$CL" --shards 2 --replicas 0 --port "$BASE_PORT" \
        --proxy-port "$SW_PORT" >/dev/null
fi
for s in s0 s1; do
    cluster_psql "$s" "select 1 from pg_database where datname = 'app2'" | grep -q 1 \
        || cluster_psql "$s" "create database app2 owner app" >/dev/null
done

say "loading pgbench scale $SCALE into s0 (database app)"
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG0_PORT" -U app app >"$DIR/init-app.log" 2>&1 \
    || { tail -n 20 "$DIR/init-app.log" >&2; die "pgbench -i on s0 failed"; }

# shardwire configs: cluster.sh's, with the pool size and limits set, and for
# shardwire-2s the database app2 and the pgbench tables sharded.
sw_config() {   # port shards(1|2) tables(0|1) [pipeline_lanes]
    local port="$1" shards="$2" tables="$3" lanes="${4:-}" s
    cat <<EOF
listen = "127.0.0.1:$port"
http_listen = "127.0.0.1:$((port + 1))"
default_shard = "s0"

[pool]
mode = "transaction"
min_size = 0
max_size = $POOL
checkout_timeout = "30s"
max_waiting = $(( STORM_CLIENTS + 100 ))
${lanes:+pipeline_lanes = $lanes}

[limits]
max_client_connections = $(( STORM_CLIENTS + 100 ))

[[users]]
name = "app"
password = "app"
auth = "scram-sha-256"

[[databases]]
name = "app"
server_database = "$( (( tables )) && echo app2 || echo app)"
EOF
    for (( s = 0; s < shards; s++ )); do
        printf '\n[[shards]]\nname = "s%d"\n\n[[shards.servers]]\nhost = "127.0.0.1"\nport = %d\nrole = "primary"\n' \
            "$s" "$((BASE_PORT + s))"
    done
    if (( tables )); then
        for t in accounts:aid tellers:tid branches:bid history:aid; do
            printf '\n[[tables]]\nname = "pgbench_%s"\nkey = "%s"\nstrategy = "hash"\n' "${t%%:*}" "${t##*:}"
        done
    fi
}
start_shardwire() {   # name port shards tables [binary] [pipeline_lanes]
    local name="$1" port="$2" pid
    sw_config "$port" "$3" "$4" "${6:-}" >"$DIR/$name.toml"
    "${5:-$SW_BIN}" serve --config "$DIR/$name.toml" </dev/null >"$DIR/$name.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_port "$port" "$pid" "$name" "$DIR/$name.log"
    psql_q "$port" app "select 1" >/dev/null || die "$name does not answer"
}

need_2s=0
for w in "${WL[@]}"; do
    case "$w" in select-2shard|scatter-count|scatter-order) need_2s=1 ;; esac
done

say "starting shardwire ($SW_BIN, pool $POOL)"
start_shardwire shardwire "$SW_PORT" 1 0
if has_target nolanes; then
    say "starting shardwire with pipeline_lanes = 0 (target nolanes)"
    start_shardwire nolanes "$SWN_PORT" 1 0 "$SW_BIN" 0
fi
if has_target baseline; then
    say "starting baseline ($SHARDWIRE_BASELINE_BIN, pool $POOL)"
    start_shardwire baseline "$SWB_PORT" 1 0 "$SHARDWIRE_BASELINE_BIN"
fi
if (( need_2s )); then
    start_shardwire shardwire-2s "$SW2_PORT" 2 1
    say "loading pgbench scale $SCALE through shardwire-2s (split over s0 and s1)"
    pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$SW2_PORT" -U app app >"$DIR/init-app2.log" 2>&1 \
        || { tail -n 20 "$DIR/init-app2.log" >&2; die "pgbench -i through shardwire-2s failed"; }
fi

if has_target pgbouncer; then
    say "starting PgBouncer $PGB_VERSION ($PGBOUNCER; transaction pooling, default_pool_size $POOL)"
    mkdir -p "$DIR/pgbouncer"
    printf '"app" "app"\n' >"$DIR/pgbouncer/userlist.txt"
    cat >"$DIR/pgbouncer/pgbouncer.ini" <<EOF
[databases]
app = host=127.0.0.1 port=$PG0_PORT dbname=app
; -M prepared needs a session before 1.21: see the header of bench.sh.
app_session = host=127.0.0.1 port=$PG0_PORT dbname=app pool_mode=session

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $DIR/pgbouncer/userlist.txt
pool_mode = transaction
default_pool_size = $POOL
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = $(( STORM_CLIENTS + 100 ))
max_db_connections = 0
query_wait_timeout = 30
logfile = $DIR/pgbouncer/pgbouncer.log
pidfile = $DIR/pgbouncer/pgbouncer.pid
log_connections = 0
log_disconnections = 0
$( (( PGB_PREPARED )) && echo "max_prepared_statements = 200")
EOF
    if [[ "$(id -u)" -eq 0 ]]; then chown -R postgres: "$DIR/pgbouncer"; chmod 0700 "$DIR/pgbouncer"; fi
    "${RUN_AS[@]}" "$PGBOUNCER" "$DIR/pgbouncer/pgbouncer.ini" </dev/null >"$DIR/pgbouncer.out" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_port "$PGB_PORT" "$pid" pgbouncer "$DIR/pgbouncer.out"
    psql_q "$PGB_PORT" app "select 1" >/dev/null || die "pgbouncer does not answer"
fi

# Custom scripts of the scatter workloads.
echo 'SELECT count(*) FROM pgbench_accounts;' >"$DIR/scatter-count.sql"
echo 'SELECT aid, abalance FROM pgbench_accounts ORDER BY aid LIMIT 10;' >"$DIR/scatter-order.sql"

# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------

# Targets of a workload: "label port database".
targets_of() {
    local w="$1"
    case "$w" in
        scatter-count|scatter-order)
            has_target shardwire && echo "shardwire $SW2_PORT app"
            return 0 ;;
    esac
    local pgb_db=app
    if (( ! PGB_PREPARED )); then
        case "$w" in select-prepared|select-2shard|lat-prepared) pgb_db=app_session ;; esac
    fi
    has_target direct && echo "direct $PG0_PORT app"
    has_target pgbouncer && echo "pgbouncer $PGB_PORT $pgb_db"
    if has_target shardwire; then
        if [[ "$w" == select-2shard ]]; then echo "shardwire $SW2_PORT app"
        else echo "shardwire $SW_PORT app"; fi
    fi
    if has_target nolanes && [[ "$w" != select-2shard ]]; then
        echo "nolanes $SWN_PORT app"
    fi
    if has_target baseline && [[ "$w" != select-2shard ]]; then
        echo "baseline $SWB_PORT app"
    fi
    return 0
}
args_of() {
    case "$1" in
        select-prepared|select-2shard) echo "-S -M prepared -c $CLIENTS" ;;
        select-extended) echo "-S -M extended -c $CLIENTS" ;;
        select-simple) echo "-S -M simple -c $CLIENTS" ;;
        lat-prepared) echo "-S -M prepared -c 1" ;;
        lat-extended) echo "-S -M extended -c 1" ;;
        lat-simple) echo "-S -M simple -c 1" ;;
        tpcb) echo "-M simple -c $CLIENTS" ;;
        storm) echo "-S -M simple -c $STORM_CLIENTS" ;;
        scatter-count) echo "-M simple -f $DIR/scatter-count.sql -c $CLIENTS" ;;
        scatter-order) echo "-M simple -f $DIR/scatter-order.sql -c $CLIENTS" ;;
    esac
}

RESULTS="$DIR/results.tsv"
: >"$RESULTS"
run_one() {   # round workload label port db
    local round="$1" w="$2" label="$3" port="$4" db="$5" out prefix args
    prefix="$RUNS/$w.$label.r$round"
    out="$prefix.out"
    read -r -a args <<<"$(args_of "$w")"
    local extra=()
    [[ -n "$SAMPLING" ]] && extra+=(--sampling-rate "$SAMPLING")
    rm -f "$prefix".log*
    # 500 logins take pgbench seconds, which count against -T (and may use
    # it all up): the storm runs a number of transactions per client
    # instead, about --duration seconds' worth, and always completes.
    local length=(-T "$DURATION")
    [[ "$w" == storm ]] && length=(-t $(( DURATION * STORM_TX_PER_SEC )))
    local threads="$THREADS"
    [[ "$w" == lat-* ]] && threads=1
    pgbench -n -j "$threads" "${length[@]}" "${args[@]}" "${extra[@]}" \
        --log --log-prefix="$prefix.log" \
        -h 127.0.0.1 -p "$port" -U app "$db" >"$out" 2>&1 || true
    printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$w" "$label" "$prefix" "$out" >>"$RESULTS"
    # A proxy that died would make every later run of it fail: stop here.
    local pid
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || die "a proxy (pid $pid) exited during the run; logs in $DIR (use --keep)"
    done
    local tps
    tps="$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out" | tail -n 1)"
    say "round $round  $(printf '%-16s %-10s' "$w" "$label") tps ${tps:-FAILED}"
}

HOG_PIDS=()
if (( CPU_HOG > 0 )); then
    say "starting $CPU_HOG busy loop(s) beside the benchmark (--cpu-hog)"
    for (( i = 0; i < CPU_HOG; i++ )); do
        bash -c 'while :; do :; done' &
        HOG_PIDS+=("$!")
        PIDS+=("$!")
    done
fi
say "running: ${WL[*]} x {${TARGETS}}, $ROUNDS rounds of ${DURATION}s runs"
for (( round = 1; round <= ROUNDS; round++ )); do
    for w in "${WL[@]}"; do
        # Alternate the order of targets from round to round.
        mapfile -t tl < <(targets_of "$w")
        if (( round % 2 == 0 )); then
            mapfile -t tl < <(printf '%s\n' "${tl[@]}" | tac)
        fi
        for t in "${tl[@]}"; do
            [[ -n "$t" ]] || continue
            read -r label port db <<<"$t"
            run_one "$round" "$w" "$label" "$port" "$db"
        done
    done
done

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

mkdir -p "$OUT_DIR"
CMDLINE="scripts/bench.sh${ORIG_ARGS:+ $ORIG_ARGS}"
python3 - "$RESULTS" "$OUT_DIR" "$CMDLINE" "$DURATION" "$ROUNDS" "$CLIENTS" "$STORM_CLIENTS" \
    "$POOL" "$SCALE" "$PGB_VERSION" "$PGB_PREPARED" "$CPU_HOG" <<'PY'
import glob, os, re, statistics, sys

(results, out_dir, cmdline, duration, rounds, clients, storm, pool, scale,
 pgb_version, pgb_prepared, cpu_hog) = sys.argv[1:]
pgb_prepared = pgb_prepared == "1"

WORKLOAD_TITLES = {
    "select-prepared": f"select-only -M prepared, {clients} clients, 1 shard",
    "select-extended": f"select-only -M extended (unnamed statements), {clients} clients, 1 shard",
    "select-simple": f"select-only -M simple, {clients} clients, 1 shard",
    "lat-prepared": "select-only -M prepared, 1 client, 1 shard",
    "lat-extended": "select-only -M extended, 1 client, 1 shard",
    "lat-simple": "select-only -M simple, 1 client, 1 shard",
    "select-2shard": f"select-only -M prepared, {clients} clients, shardwire over 2 shards",
    "tpcb": f"TPC-B-like -M simple, {clients} clients, 1 shard",
    "storm": f"select-only -M simple, {storm} clients on a pool of {pool}",
    "scatter-count": f"2-shard scatter SELECT count(*), {clients} clients",
    "scatter-order": f"2-shard ORDER BY aid LIMIT 10, {clients} clients",
}

def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = (len(sorted_vals) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)

runs = {}   # (workload, label) -> list of dicts
order = []
for line in open(results):
    rnd, w, label, prefix, out = line.rstrip("\n").split("\t")
    text = open(out, errors="replace").read()
    m = re.search(r"^tps = ([0-9.]+)", text, re.M)
    tps = float(m.group(1)) if m else None
    failed = 0
    m = re.search(r"number of failed transactions: (\d+)", text)
    if m:
        failed += int(m.group(1))
    aborted = len(re.findall(r"^.*(aborted|error).*$", text, re.I | re.M))
    # With -t: "processed: 9000/10000" means transactions never ran.
    m = re.search(r"actually processed: (\d+)/(\d+)", text)
    if m:
        failed += int(m.group(2)) - int(m.group(1))
    lat = []
    for f in glob.glob(prefix + ".log*"):
        with open(f) as fh:
            for l in fh:
                parts = l.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    lat.append(int(parts[2]))
    lat.sort()
    key = (w, label)
    if key not in runs:
        runs[key] = []
        order.append(key)
    runs[key].append({
        "tps": tps,
        "p50": percentile(lat, 0.50),
        "p99": percentile(lat, 0.99),
        "errors": failed + aborted + (0 if tps is not None else 1),
    })

def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None

summary = {}
for key in order:
    rs = runs[key]
    tpss = [r["tps"] for r in rs if r["tps"] is not None]
    summary[key] = {
        "tps": med(tpss),
        "min": min(tpss) if tpss else None,
        "max": max(tpss) if tpss else None,
        "p50": med([r["p50"] for r in rs]),
        "p99": med([r["p99"] for r in rs]),
        "errors": sum(r["errors"] for r in rs),
        "n": len(rs),
    }

def fmt_ms(us):
    return "-" if us is None else f"{us / 1000:.2f}"

def ratio(a, b):
    return "-" if (a is None or b is None or b == 0) else f"{a / b:.2f}"

header = ["workload", "target", "TPS (median)", "TPS min-max", "p50 ms", "p99 ms",
          "+p50 µs", "TPS / direct", "TPS / pgbouncer", "p99 / pgbouncer", "errors"]
with_baseline = any(k[1] == "baseline" for k in order)
if with_baseline:
    header.insert(-1, "TPS / baseline")
rows = []
for key in order:
    w, label = key
    s = summary[key]
    d = summary.get((w, "direct"), {})
    b = summary.get((w, "pgbouncer"), {})
    name = label
    if label == "pgbouncer":
        name = f"pgbouncer {pgb_version}"
        if not pgb_prepared and w in ("select-prepared", "select-2shard", "lat-prepared"):
            name += " (session pool)"
    if label == "nolanes":
        name = "shardwire, no lanes"
    if label == "shardwire" and w in ("select-2shard", "scatter-count", "scatter-order"):
        name = "shardwire (2 shards)"
    rows.append([
        w, name,
        "-" if s["tps"] is None else f"{s['tps']:.0f}",
        "-" if s["min"] is None else f"{s['min']:.0f}-{s['max']:.0f}",
        fmt_ms(s["p50"]), fmt_ms(s["p99"]),
        "-" if label == "direct" or s["p50"] is None or d.get("p50") is None
        else f"{s['p50'] - d['p50']:+.0f}",
        "-" if label == "direct" else ratio(s["tps"], d.get("tps")),
        "-" if label == "pgbouncer" else ratio(s["tps"], b.get("tps")),
        "-" if label == "pgbouncer" else ratio(s["p99"], b.get("p99")),
        str(s["errors"]),
    ])
    if with_baseline:
        base = summary.get((w, "baseline"), {})
        rows[-1].insert(-1, ratio(s["tps"], base.get("tps")) if label == "shardwire" else "-")

widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
          for i in range(len(header))]
def line(cells):
    return "  ".join(c.ljust(widths[i]) for i, c in enumerate(cells))
print()
print(line(header))
print(line(["-" * w for w in widths]))
for r in rows:
    print(line(r))
print()

md = []
hog = f", {cpu_hog} CPU hog(s) running beside it" if cpu_hog != "0" else ""
pgb_pool = ("its transaction pool for every workload (max_prepared_statements = 200)"
            if pgb_prepared else "its transaction pool, a session pool for -M prepared")
md.append(f"Command: `{cmdline}` ({rounds} rounds of {duration} s per target and workload, "
          f"pgbench scale {scale}, backend pool {pool} for PgBouncer and shardwire{hog}). "
          f"PgBouncer {pgb_version}, {pgb_pool}. "
          "TPS is the median of the rounds (min-max beside it); p50/p99 are per-transaction "
          "latencies from pgbench's log, median of the rounds; +p50 µs is the p50 minus "
          "direct's, the latency a target adds to a round trip.")
md.append("")
md.append("| " + " | ".join(header) + " |")
md.append("|" + "|".join("---" for _ in header) + "|")
for r in rows:
    md.append("| " + " | ".join(r) + " |")
md.append("")
md.append("Workloads:")
for w in dict.fromkeys(k[0] for k in order):
    md.append(f"- `{w}`: {WORKLOAD_TITLES.get(w, w)}")
open(os.path.join(out_dir, "bench.md"), "w").write("\n".join(md) + "\n")

# SVG: one group of bars per workload, TPS relative to direct (or absolute
# TPS for shardwire-only workloads, labelled).
colors = {"direct": "#7f8c8d", "pgbouncer": "#2e86c1", "shardwire": "#e67e22",
          "nolanes": "#f5b041", "baseline": "#a04000"}
workloads = list(dict.fromkeys(k[0] for k in order))
labels = ["direct", "pgbouncer", "shardwire", "nolanes", "baseline"]
bar_h, gap, group_gap = 16, 3, 18
left, right, top = 330, 140, 50
maxtps = max([s["tps"] or 0 for s in summary.values()] + [1])
width = 900
plot_w = width - left - right
y = top
parts = []
for w in workloads:
    present = [l for l in labels if (w, l) in summary]
    parts.append(f'<text x="10" y="{y + 12}" font-size="12" font-weight="bold">{w}</text>')
    for l in present:
        s = summary[(w, l)]
        t = s["tps"] or 0
        bw = plot_w * t / maxtps
        parts.append(f'<rect x="{left}" y="{y}" width="{bw:.1f}" height="{bar_h}" fill="{colors[l]}"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 12}" font-size="11" text-anchor="end">{l}</text>')
        if s["min"] is not None:
            x0 = left + plot_w * s["min"] / maxtps
            x1 = left + plot_w * s["max"] / maxtps
            parts.append(f'<line x1="{x0:.1f}" y1="{y + bar_h / 2}" x2="{x1:.1f}" y2="{y + bar_h / 2}" stroke="#000" stroke-width="1"/>')
        p99 = "" if s["p99"] is None else f', p99 {s["p99"] / 1000:.2f} ms'
        parts.append(f'<text x="{left + bw + 6:.1f}" y="{y + 12}" font-size="11">{t:.0f} tps{p99}</text>')
        y += bar_h + gap
    y += group_gap
height = y + 20
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
       f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
       f'<rect width="{width}" height="{height}" fill="#fff"/>',
       f'<text x="10" y="22" font-size="15" font-weight="bold">pgbench TPS (median of {rounds} rounds, '
       f'line: min-max), pool {pool}, PgBouncer {pgb_version}{hog}</text>',
       f'<text x="10" y="38" font-size="11" fill="#555">{cmdline}</text>']
svg += parts
svg.append("</svg>")
open(os.path.join(out_dir, "bench.svg"), "w").write("\n".join(svg) + "\n")
print(f"wrote {os.path.join(out_dir, 'bench.md')} and {os.path.join(out_dir, 'bench.svg')}",
      file=sys.stderr)
PY

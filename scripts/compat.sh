#!/usr/bin/env bash
#
# compat.sh - the driver compatibility matrix: runs one scenario per client
# driver through shardwire in front of a 2-shard cluster with a replica per
# shard, and writes the results as a markdown table (tests/compat/RESULTS.md,
# copied into the README between the compat-matrix markers).
#
#   scripts/compat.sh [--only DRIVER[,DRIVER...]] [--keep]
#
# Drivers are installed by this script from the package registries, into a
# cache that outlives the checkout (SHARDWIRE_COMPAT_CACHE, default
# ~/.cache/shardwire-compat), so a second run installs nothing:
#   tokio-postgres, sqlx  tests/compat/rust (own Cargo.toml and Cargo.lock)
#   psycopg, asyncpg      a venv from tests/compat/python/requirements.txt
#   node-pg, postgres-js  npm ci of tests/compat/node/package-lock.json
#   jdbc                  Debian's libpostgresql-jdbc-java, plain javac
#   psql, pgbench         the PostgreSQL client binaries
#
# The proxy runs with TLS, a scram-sha-256 user, transaction pooling with a
# small pool (sessions move between server connections), reads from
# replicas and one hash-sharded table per driver. Every scenario prints one
# line per step: COMPAT<TAB>driver<TAB>version<TAB>step<TAB>pass|fail|n/a<TAB>detail.
# A step that never reports (a crash, or the scenario's time limit) fails
# with the reason. Exit status 1 when any step failed; each failure is
# printed as "FAIL driver step: reason".

set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

readonly ALL_DRIVERS=(tokio-postgres sqlx psycopg asyncpg node-pg postgres-js jdbc psql pgbench)
readonly STEPS=(connect_scram connect_tls simple_query params prepared_reuse
    tx_commit tx_rollback tx_error_rollback types_text types_binary
    big_result cancel copy_in copy_out
    shard_insert shard_read shard_count shard_order_limit)
# One scenario's whole run; each step also has its own, shorter limit
# (COMPAT_STEP_TIMEOUT) inside the scenario.
SCENARIO_TIMEOUT="${COMPAT_SCENARIO_TIMEOUT:-240}"
export COMPAT_STEP_TIMEOUT="${COMPAT_STEP_TIMEOUT:-30}"

CACHE="${SHARDWIRE_COMPAT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shardwire-compat}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
DRIVERS=("${ALL_DRIVERS[@]}")
KEEP=0

while (( $# > 0 )); do
    case "$1" in
        --only) IFS=',' read -r -a DRIVERS <<<"$2"; shift 2 ;;
        --only=*) IFS=',' read -r -a DRIVERS <<<"${1#*=}"; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '3,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "compat.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
for d in "${DRIVERS[@]}"; do
    [[ " ${ALL_DRIVERS[*]} " == *" $d "* ]] || { echo "compat.sh: unknown driver $d (known: ${ALL_DRIVERS[*]})" >&2; exit 2; }
done

log() { printf 'compat: [%3ds] %s\n' "$SECONDS" "$*" >&2; }

# libpq settings of the caller must not redirect the scenarios.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE \
      PGSERVICE PGSERVICEFILE PGOPTIONS PGSSLMODE PGSSLROOTCERT PGTZ PGDATESTYLE

WORK="$(mktemp -d /tmp/swcompat-XXXXXX)"
CLUSTER_DIR="$WORK/c"
OUT="$WORK/out"
mkdir -p "$OUT" "$CACHE"
chmod 0755 "$WORK"

cleanup() {
    local rc=$?
    if (( KEEP )); then
        log "kept the cluster and logs in $WORK (scripts/cluster.sh down --dir $CLUSTER_DIR --purge)"
    else
        scripts/cluster.sh down --dir "$CLUSTER_DIR" --purge >/dev/null 2>&1 || true
        rm -rf -- "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

want() { [[ " ${DRIVERS[*]} " == *" $1 "* ]]; }

# ---------------------------------------------------------------------------
# Installs (each writes $OUT/<driver>.install on failure)

install_rust() {
    # One binary for both Rust drivers; its own target dir in the cache.
    CARGO_TARGET_DIR="$CACHE/rust-target" cargo build --locked --quiet \
        --manifest-path tests/compat/rust/Cargo.toml >"$OUT/rust.build.log" 2>&1
}

install_python() {
    local venv="$CACHE/py" req=tests/compat/python/requirements.txt stamp
    stamp="$(sha256sum "$req" | cut -c1-16)"
    if [[ -f "$venv/.stamp" && "$(cat "$venv/.stamp")" == "$stamp" ]]; then return 0; fi
    rm -rf -- "$venv"
    python3 -m venv "$venv" >"$OUT/python.install.log" 2>&1
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >>"$OUT/python.install.log" 2>&1
    echo "$stamp" >"$venv/.stamp"
}

install_node() {
    # node_modules lives in the cache, keyed by the lock file; the scenario
    # finds it through NODE_PATH.
    local dir="$CACHE/node" stamp
    stamp="$(cat tests/compat/node/package.json tests/compat/node/package-lock.json | sha256sum | cut -c1-16)"
    if [[ -f "$dir/.stamp" && "$(cat "$dir/.stamp")" == "$stamp" ]]; then return 0; fi
    rm -rf -- "$dir"
    mkdir -p "$dir"
    cp tests/compat/node/package.json tests/compat/node/package-lock.json "$dir/"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >"$OUT/node.install.log" 2>&1
    echo "$stamp" >"$dir/.stamp"
}

JDBC_JAR=/usr/share/java/postgresql.jar
install_java() {
    if [[ ! -f "$JDBC_JAR" ]]; then
        if (( EUID != 0 )); then
            echo "libpostgresql-jdbc-java is missing; install it with: sudo apt-get install libpostgresql-jdbc-java" >"$OUT/java.install.log"
            return 1
        fi
        { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpostgresql-jdbc-java \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpostgresql-jdbc-java; }
        } >"$OUT/java.install.log" 2>&1
    fi
    local stamp
    stamp="$(cat tests/compat/java/JdbcScenario.java "$JDBC_JAR" | sha256sum | cut -c1-16)"
    if [[ -f "$CACHE/java/.stamp" && "$(cat "$CACHE/java/.stamp")" == "$stamp" ]]; then return 0; fi
    rm -rf -- "$CACHE/java"
    mkdir -p "$CACHE/java"
    javac -d "$CACHE/java" -cp "$JDBC_JAR" tests/compat/java/JdbcScenario.java >>"$OUT/java.install.log" 2>&1
    echo "$stamp" >"$CACHE/java/.stamp"
}

# Runs install function $1 (logging to $OUT/$2) for drivers $3...; a
# failure marks those drivers with the end of that log.
run_install() {
    local fn="$1" logf="$OUT/$2"; shift 2
    local t0=$SECONDS
    if "$fn"; then
        log "$fn done in $((SECONDS - t0))s"
    else
        log "$fn FAILED (see below)"
        local d
        tail -n 20 "$logf" >&2 2>/dev/null || true
        for d in "$@"; do echo "$fn failed: $(tail -n 5 "$logf" 2>/dev/null | tr '\n' ' ' | cut -c1-300)" >"$OUT/$d.install"; done
    fi
}

INSTALL_START=$SECONDS
pids=()
if want tokio-postgres || want sqlx; then run_install install_rust rust.build.log tokio-postgres sqlx & pids+=($!); fi
if want psycopg || want asyncpg; then run_install install_python python.install.log psycopg asyncpg & pids+=($!); fi
if want node-pg || want postgres-js; then run_install install_node node.install.log node-pg postgres-js & pids+=($!); fi
if want jdbc; then run_install install_java java.install.log jdbc & pids+=($!); fi

# The proxy: the debug build that `cargo test` made (cheap when up to date).
log "building shardwire"
cargo build --locked --quiet --bin shardwire
SHARDWIRE_BIN="$TARGET/debug/shardwire"
export SHARDWIRE_BIN

# ---------------------------------------------------------------------------
# Cluster and proxy

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_ports() {
    local i base
    for (( i = 0; i < 200; i++ )); do
        base=$(( 20000 + RANDOM % 11000 ))
        local p ok=1
        for (( p = base; p < base + 6; p++ )); do port_free "$p" || { ok=0; break; }; done
        (( ok )) && { echo "$base"; return 0; }
    done
    return 1
}
BASE="$(pick_ports)"
PROXY_PORT=$(( BASE + 4 ))
up_args=(--dir "$CLUSTER_DIR" --shards 2 --replicas 1 --port "$BASE" --proxy-port "$PROXY_PORT")
log "starting the cluster (ports $BASE..$((BASE + 3)), proxy $PROXY_PORT)"
scripts/cluster.sh up "${up_args[@]}" >"$OUT/cluster.log" 2>&1 \
    || { cat "$OUT/cluster.log" >&2; exit 1; }

# TLS: a CA and a server certificate for 127.0.0.1/localhost signed by it,
# so drivers that verify (rustls) can verify against the CA.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=shardwire-compat-ca -keyout "$WORK/ca.key" -out "$WORK/ca.pem" >/dev/null 2>&1
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj /CN=localhost -keyout "$WORK/server.key" -out "$WORK/server.csr" >/dev/null 2>&1
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$WORK/ext.cnf"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
    -days 2 -extfile "$WORK/ext.cnf" -out "$WORK/server.pem" >/dev/null 2>&1
chmod 0644 "$WORK"/*.pem "$WORK"/*.key

CONFIG="$CLUSTER_DIR/shardwire.toml"
# A small pool (fewer server connections than client sessions), so that a
# client's transactions land on different server connections. Each
# prepared_reuse step holds one transaction open on a second session while
# the first runs, so the pool needs more than one connection per driver
# running at once, or those steps would wait for each other; long waits
# rather than errors when nine drivers share it. Sticky servers are off:
# with them a session keeps its server while the pool has others to give,
# so those steps would never see a second server connection.
POOL_SIZE=10
sed -i -e "s/^max_size = .*/max_size = $POOL_SIZE\nsticky_servers = false/" -e 's/^checkout_timeout = .*/checkout_timeout = "30s"/' \
    -e 's/^connect_timeout = .*/connect_timeout = "20s"/' \
    -e 's/^default_shard = .*/&\nshutdown_timeout = "2s"/' "$CONFIG"
{
    printf '\n[tls]\ncert = "%s"\nkey = "%s"\nrequired = false\n' "$WORK/server.pem" "$WORK/server.key"
    printf '\n[reads]\nread_from = "replica"\n'
    printf '\n[[users]]\nname = "compat"\npassword = "compat-secret"\nauth = "scram-sha-256"\nserver_user = "app"\nserver_password = "app"\n'
    for d in "${ALL_DRIVERS[@]}"; do
        printf '\n[[tables]]\nname = "%s_items"\nkey = "id"\nstrategy = "hash"\n' "compat_${d//-/_}"
    done
} >>"$CONFIG"
log "starting the proxy"
"$SHARDWIRE_BIN" check --config "$CONFIG" >"$OUT/check.log" 2>&1 || { cat "$OUT/check.log" >&2; exit 1; }
scripts/cluster.sh up "${up_args[@]}" --proxy >>"$OUT/cluster.log" 2>&1 \
    || { cat "$OUT/cluster.log" >&2; exit 1; }

export COMPAT_HOST=127.0.0.1 COMPAT_PORT="$PROXY_PORT" COMPAT_USER=compat \
    COMPAT_PASSWORD=compat-secret COMPAT_DB=app COMPAT_CA="$WORK/ca.pem"

# Tables, made through the proxy with psql (DDL runs on every shard). Each
# driver has its own: <prefix>_items (sharded by id), _types, _tx, _copy.
schema() {
    local p="$1"
    cat <<EOF
drop table if exists ${p}_items, ${p}_types, ${p}_tx, ${p}_copy;
create table ${p}_items (id bigint primary key, v text not null);
create table ${p}_types (id int primary key, i2 int2, i4 int4, i8 int8, n numeric, f8 float8,
  t text, b bytea, bo bool, d date, ts timestamptz, iv interval, u uuid, j jsonb, ia int4[], ta text[]);
create table ${p}_tx (id int primary key, v text);
create table ${p}_copy (id int primary key, v text, n numeric);
EOF
}
log "creating the tables"
for d in "${DRIVERS[@]}"; do schema "compat_${d//-/_}"; done >"$WORK/schema.sql"
PGPASSWORD=compat-secret PGCONNECT_TIMEOUT=10 timeout 120 psql -X -q -v ON_ERROR_STOP=1 \
    "host=127.0.0.1 port=$PROXY_PORT user=compat dbname=app" -f "$WORK/schema.sql" >"$OUT/schema.log" 2>&1 \
    || { cat "$OUT/schema.log" >&2; exit 1; }

# ---------------------------------------------------------------------------
# Scenarios

for pid in "${pids[@]}"; do wait "$pid" || true; done
log "installs done in $((SECONDS - INSTALL_START))s"

scenario_cmd() {
    case "$1" in
        tokio-postgres|sqlx) echo "$CACHE/rust-target/debug/shardwire-compat $1" ;;
        psycopg) echo "$CACHE/py/bin/python tests/compat/python/psycopg_scenario.py" ;;
        asyncpg) echo "$CACHE/py/bin/python tests/compat/python/asyncpg_scenario.py" ;;
        node-pg) echo "node tests/compat/node/pg_scenario.js" ;;
        postgres-js) echo "node tests/compat/node/postgresjs_scenario.js" ;;
        jdbc) echo "java -cp $CACHE/java:$JDBC_JAR JdbcScenario" ;;
        psql) echo "bash tests/compat/psql_scenario.sh" ;;
        pgbench) echo "bash tests/compat/pgbench_scenario.sh" ;;
    esac
}

RUN_START=$SECONDS
spids=()
for d in "${DRIVERS[@]}"; do
    [[ -f "$OUT/$d.install" ]] && continue
    # shellcheck disable=SC2046  # the command is split on purpose
    (
        export COMPAT_DRIVER="$d" COMPAT_PREFIX="compat_${d//-/_}" NODE_PATH="$CACHE/node/node_modules"
        t0=$SECONDS
        rc=0
        timeout -k 5 "$SCENARIO_TIMEOUT" $(scenario_cmd "$d") >"$OUT/$d.out" 2>"$OUT/$d.err" || rc=$?
        echo "$rc $((SECONDS - t0))" >"$OUT/$d.rc"
    ) &
    spids+=($!)
done
for pid in "${spids[@]}"; do wait "$pid" || true; done
log "scenarios done in $((SECONDS - RUN_START))s"

# ---------------------------------------------------------------------------
# The matrix

failures=()
declare -A RESULT DETAIL VERSION KNOWN_TEXT KNOWN_WHY
while IFS=$'\t' read -r kd ks ktext kwhy; do
    [[ -z "$kd" || "$kd" == \#* ]] && continue
    KNOWN_TEXT[$kd.$ks]="$ktext"
    KNOWN_WHY[$kd.$ks]="$kwhy"
done <tests/compat/known-limitations.tsv
for d in "${DRIVERS[@]}"; do
    VERSION[$d]="?"
    if [[ -f "$OUT/$d.install" ]]; then
        for s in "${STEPS[@]}"; do RESULT[$d.$s]=fail; DETAIL[$d.$s]="$(cat "$OUT/$d.install")"; done
        continue
    fi
    while IFS=$'\t' read -r tag drv ver step status detail; do
        [[ "$tag" == COMPAT && "$drv" == "$d" ]] || continue
        VERSION[$d]="$ver"
        RESULT[$d.$step]="$status"
        DETAIL[$d.$step]="$detail"
    done <"$OUT/$d.out"
    read -r rc secs <"$OUT/$d.rc" || { rc=1; secs=0; }
    why="the scenario exited with status $rc before reporting it"
    (( rc == 124 || rc == 137 )) && why="the scenario was killed after ${SCENARIO_TIMEOUT}s (hang)"
    for s in "${STEPS[@]}"; do
        if [[ -z "${RESULT[$d.$s]:-}" ]]; then
            if [[ "$why" != "an earlier step did not finish" ]]; then
                # The matrix keeps 300 characters; a crash needs its trace.
                log "$d: $why; its stderr ends:"
                tail -n 40 "$OUT/$d.err" | sed 's/^/    /' >&2
            fi
            RESULT[$d.$s]=fail
            DETAIL[$d.$s]="no result: $why; stderr: $(tail -n 3 "$OUT/$d.err" | tr '\n' ' ' | cut -c1-300)"
            why="an earlier step did not finish"
        fi
    done
    for s in "${STEPS[@]}"; do
        k="$d.$s"
        [[ -n "${KNOWN_TEXT[$k]:-}" ]] || continue
        if [[ "${RESULT[$k]}" == fail && "${DETAIL[$k]}" == *"${KNOWN_TEXT[$k]}"* ]]; then
            RESULT[$k]=known
            DETAIL[$k]="${KNOWN_WHY[$k]}. The driver sees: ${DETAIL[$k]}"
        elif [[ "${RESULT[$k]}" == pass ]]; then
            log "note: $d $s passes now; remove its line from tests/compat/known-limitations.tsv"
        fi
    done
    log "$d ${VERSION[$d]}: ${secs}s"
done

# Only a run of every driver replaces the committed matrix (and the README's).
FULL=0
(( ${#DRIVERS[@]} == ${#ALL_DRIVERS[@]} )) && FULL=1
results="$OUT/RESULTS.md"
(( FULL )) && results="tests/compat/RESULTS.md"
{
    echo "Produced by \`scripts/compat.sh\` (run by \`scripts/test.sh\`): each driver's scenario through"
    echo "shardwire in front of 2 shards with a replica each, over TLS where the driver supports it,"
    echo "a scram-sha-256 user, transaction pooling with $POOL_SIZE server connections per pool, reads from replicas."
    echo "**pass**: the step worked; **n/a**: the driver has no such feature (note says why);"
    echo "**known**: shardwire refuses it with a clear error today (tests/compat/known-limitations.tsv);"
    echo "**fail**: anything else, which fails the suite."
    echo
    printf '| step |'; for d in "${DRIVERS[@]}"; do printf ' %s %s |' "$d" "${VERSION[$d]}"; done; echo
    printf '|---|'; for d in "${DRIVERS[@]}"; do printf -- '---|'; done; echo
    notes=()
    for s in "${STEPS[@]}"; do
        printf '| %s |' "$s"
        for d in "${DRIVERS[@]}"; do
            r="${RESULT[$d.$s]}"
            case "$r" in
                pass) printf ' pass |' ;;
                *)
                    notes+=("$d / $s: ${DETAIL[$d.$s]}")
                    printf ' %s [%d] |' "$r" "${#notes[@]}" ;;
            esac
            [[ "$r" == fail ]] && failures+=("FAIL $d $s: ${DETAIL[$d.$s]}")
        done
        echo
    done
    if (( ${#notes[@]} > 0 )); then
        echo
        for i in "${!notes[@]}"; do echo "$((i + 1)). ${notes[$i]}"; done
    fi
} >"$results"

# The README shows the same table between its markers.
if (( FULL )) && grep -q '<!-- compat-matrix:begin -->' README.md; then
    awk -v f="$results" '
        /<!-- compat-matrix:begin -->/ { print; while ((getline l < f) > 0) print l; skip = 1; next }
        /<!-- compat-matrix:end -->/ { skip = 0 }
        !skip { print }' README.md >"$WORK/README.md" && cat "$WORK/README.md" >README.md
fi

cat "$results"
if (( ${#failures[@]} > 0 )); then
    printf '%s\n' "${failures[@]}" >&2
    echo "compat: ${#failures[@]} step(s) failed" >&2
    exit 1
fi
echo "compat: every step passed (or is n/a, or a known limitation) for ${DRIVERS[*]}"

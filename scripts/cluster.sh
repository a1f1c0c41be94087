#!/usr/bin/env bash
#
# cluster.sh - start and stop local PostgreSQL shard clusters for shardwire
# development and tests.
#
# A cluster lives entirely inside one directory (--dir DIR):
#
#   DIR/cluster.env          layout recorded by `up` (KEY=value lines), so that
#                            down/status/psql need no layout options
#   DIR/shardwire.toml       complete proxy config for this cluster
#   DIR/s<i>-primary/        data dir of shard i's primary
#   DIR/s<i>-replica<k>/     data dir of shard i's k-th streaming replica
#   DIR/<server>.log         server log (plus initdb / pg_basebackup output)
#   DIR/shardwire.{pid,log}  the proxy, when started with --proxy
#   DIR/.cluster.lock        serializes concurrent up/down on the same DIR
#
# Settings that differ per server (port, socket dir, primary_conninfo,
# recovery_min_apply_delay) live in each data dir's cluster.conf, included at
# the end of postgresql.conf and rewritten by every `up`.
#
# Ports: with M replicas per shard, shard i's primary listens on
# BASE + i*(M+1) and its replica k (1..M) on BASE + i*(M+1) + k. Every server
# listens on 127.0.0.1 only, and has its unix socket in its own data dir (0700),
# so only the owner (or root) can use the trust-authenticated socket.
#
# Every server has role `app` (password `app`, SCRAM) owning database `app`, and
# role `replicator` (password `replicator`) for streaming replication. The
# superuser is `postgres`, reachable without a password via the unix socket
# (`cluster.sh psql`).
#
# PostgreSQL refuses to run as root, so when this script runs as root all
# server-side commands run as the `postgres` OS user and DIR is chowned to it.

set -euo pipefail

readonly PROG="cluster.sh"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
readonly REPO_ROOT="${SCRIPT_DIR%/*}"

# Defaults.
SHARDS=2
REPLICAS=1
BASE_PORT=15432
PROXY_PORT=6432
REPLICA_DELAY_MS=0
WANT_PROXY=0
PURGE=0
DIR=""
SHARD_ARG=""
SEL_DIR="" SEL_NAME="" SEL_PORT=""   # the server chosen by select_server
REPLICA_ARG=0
CRASH=0              # stop --crash: immediate shutdown, as a crash
PSQL_ARGS=()

BINDIR=""
PG_OS_USER=""        # OS user that owns and runs the servers
readonly PG_SUPERUSER="postgres"
readonly SOCKET_PATH_MAX=100   # sun_path is 108 bytes; keep a safety margin

# The invoking environment's libpq settings (PGHOST, PGPORT, PGUSER, ...) would
# silently redirect our own admin connections; everything below passes explicit
# connection parameters instead.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE \
      PGSERVICE PGSERVICEFILE PGOPTIONS PGSSLMODE PGTARGETSESSIONATTRS PGDATA

usage() {
    cat <<EOF
Usage:
  $PROG up --dir DIR [--shards N] [--replicas M] [--port BASE]
        [--proxy-port P] [--replica-delay MS] [--proxy]
  $PROG down --dir DIR [--purge]
  $PROG status --dir DIR
  $PROG psql --dir DIR --shard sI [--replica K] [[--] psql args...]
  $PROG stop --dir DIR --shard sI [--replica K] [--crash]
  $PROG start --dir DIR --shard sI [--replica K]
  $PROG promote --dir DIR --shard sI --replica K

Starts/stops a local PostgreSQL shard cluster in DIR for shardwire development
and tests: N shards (s0..s<N-1>), each a primary plus M streaming replicas,
listening on 127.0.0.1 ports BASE, BASE+1, ... (shard i's primary on
BASE + i*(M+1), its replica k on BASE + i*(M+1) + k).

Commands:
  up       create (first time) and start the cluster, write DIR/shardwire.toml,
           print its status. Idempotent: servers already running are left alone.
  down     stop the proxy and every server of DIR; data is kept. --purge also
           removes DIR.
  status   one line per server: "<shard> <role> <addr> up|down".
  psql     superuser psql into database app on one server (its unix socket).
           --replica K picks replica K (default: the primary). Other arguments
           are passed to psql.
  stop     stop one server (default: the shard's primary), to rehearse a
           failure; 'up' starts it again. --crash stops it at once, as a
           crash (no shutdown checkpoint: it replays its WAL when started).
  start    start one stopped server as it is (no other server is touched),
           to rehearse a server coming back alone (say, before a promotion).
  promote  promote replica K of a shard to a primary (pg_ctl promote), to
           rehearse a failover. Stop the old primary first. The cluster no
           longer matches the layout 'up' builds: 'down --purge' it after.

Options:
  --dir DIR            cluster directory (required)
  --shards N           number of shards (default 2)
  --replicas M         replicas per shard (default 1)
  --port BASE          first server port (default 15432)
  --proxy-port P       proxy port in shardwire.toml; HTTP port is P+1 (default 6432)
  --replica-delay MS   replicas apply commits MS milliseconds late
                       (recovery_min_apply_delay; default 0)
  --proxy              also start the shardwire proxy ("\$SHARDWIRE_BIN", or
                       built with cargo) on the proxy port
  --purge              (down) remove DIR after stopping
  -h, --help           show this help

Roles: app/app owns database app; replicator/replicator replicates;
rebalancer/rebalancer (superuser, REPLICATION) is the proxy's [rebalance]
login; the superuser postgres is reachable only through the unix socket
(cluster.sh psql).
EOF
}

# ---------------------------------------------------------------------------
# Messages and errors
# ---------------------------------------------------------------------------

err() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { err "$@"; exit 1; }
usage_error() {
    err "$@"
    err "try '$PROG --help'"
    exit 2
}

# Prints the end of a server's log, so failures are diagnosable without
# hunting for the file.
log_tail() {
    local log="$1"
    if [[ -s "$log" ]]; then
        printf '%s: --- last lines of %s ---\n' "$PROG" "$log" >&2
        tail -n 25 "$log" | sed 's/^/    /' >&2
        printf '%s: ---\n' "$PROG" >&2
    fi
}

fail_with_log() {
    local log="$1"; shift
    err "$@"
    log_tail "$log"
    exit 1
}

# ---------------------------------------------------------------------------
# Argument parsing
# ---------------------------------------------------------------------------

# Validates a non-negative decimal number and prints it normalized (no leading
# zeros), so later arithmetic never reads it as octal.
parse_uint() {
    local name="$1" value="$2"
    [[ "$value" =~ ^[0-9]+$ ]] || usage_error "$name must be a non-negative integer, got '$value'"
    (( ${#value} <= 9 )) || usage_error "$name is too large: $value"
    printf '%d' "$((10#$value))"
}

parse_args() {
    local cmd="$1"; shift
    while (( $# > 0 )); do
        local opt="$1" val="" has_val=0
        # Accept both "--opt value" and "--opt=value".
        if [[ "$opt" == --*=* ]]; then
            val="${opt#*=}"; opt="${opt%%=*}"; has_val=1
        fi
        case "$opt" in
            --help) usage; exit 0 ;;
            -h)
                if [[ "$cmd" == psql ]]; then PSQL_ARGS+=("$1"); shift; continue; fi
                usage; exit 0 ;;
            --)
                if [[ "$cmd" != psql ]]; then usage_error "unexpected '--' for '$cmd'"; fi
                shift; PSQL_ARGS+=("$@"); break ;;
        esac

        local takes_value=1
        case "$cmd:$opt" in
            *:--dir) ;;
            up:--shards|up:--replicas|up:--port|up:--proxy-port|up:--replica-delay) ;;
            psql:--shard|psql:--replica) ;;
            stop:--shard|stop:--replica|start:--shard|start:--replica|promote:--shard|promote:--replica) ;;
            up:--proxy|down:--purge|stop:--crash) takes_value=0 ;;
            psql:*)
                # Anything else is for psql itself, so that
                # `cluster.sh psql --dir D --shard s0 -c 'select 1'` works.
                PSQL_ARGS+=("$1"); shift; continue ;;
            *) usage_error "unknown option for '$cmd': $1" ;;
        esac

        if (( takes_value )); then
            if (( ! has_val )); then
                (( $# >= 2 )) || usage_error "$opt needs a value"
                val="$2"; shift
            fi
        elif (( has_val )); then
            usage_error "$opt takes no value"
        fi
        shift

        case "$opt" in
            --dir)           [[ -n "$val" ]] || usage_error "--dir must not be empty"; DIR="$val" ;;
            --shards)        SHARDS="$(parse_uint --shards "$val")" ;;
            --replicas)      REPLICAS="$(parse_uint --replicas "$val")" ;;
            --port)          BASE_PORT="$(parse_uint --port "$val")" ;;
            --proxy-port)    PROXY_PORT="$(parse_uint --proxy-port "$val")" ;;
            --replica-delay) REPLICA_DELAY_MS="$(parse_uint --replica-delay "$val")" ;;
            --proxy)         WANT_PROXY=1 ;;
            --purge)         PURGE=1 ;;
            --crash)         CRASH=1 ;;
            --shard)         SHARD_ARG="$val" ;;
            --replica)       REPLICA_ARG="$(parse_uint --replica "$val")" ;;
        esac
    done

    [[ -n "$DIR" ]] || usage_error "--dir DIR is required"
}

validate_layout() {
    (( SHARDS >= 1 && SHARDS <= 100 )) || usage_error "--shards must be between 1 and 100, got $SHARDS"
    (( REPLICAS <= 20 )) || usage_error "--replicas must be between 0 and 20, got $REPLICAS"
    # Ports below 1024 need privileges the postgres user does not have.
    (( BASE_PORT >= 1024 )) || usage_error "--port must be at least 1024, got $BASE_PORT"
    local last=$(( BASE_PORT + SHARDS * (REPLICAS + 1) - 1 ))
    (( last <= 65535 )) || usage_error "ports $BASE_PORT..$last do not fit below 65536"
    (( PROXY_PORT >= 1024 && PROXY_PORT + 1 <= 65535 )) \
        || usage_error "--proxy-port must be between 1024 and 65534, got $PROXY_PORT"
    # The proxy's listen and HTTP ports must not collide with a server port.
    if (( PROXY_PORT + 1 >= BASE_PORT && PROXY_PORT <= last )); then
        usage_error "proxy ports $PROXY_PORT/$((PROXY_PORT + 1)) overlap the server ports $BASE_PORT..$last"
    fi
}

# ---------------------------------------------------------------------------
# Running things as the PostgreSQL OS user
# ---------------------------------------------------------------------------

# Runs a command as the user that owns the servers. From a directory the
# postgres user may not be able to read (e.g. /root), pg_ctl fails with "could
# not identify current directory", hence the cd /. fd 9 holds the DIR lock and
# must not leak into the long-lived postmaster.
as_pg() {
    if (( EUID == 0 )); then
        (cd / && exec runuser -u "$PG_OS_USER" -- "$@" 9>&-)
    else
        (cd / && exec "$@" 9>&-)
    fi
}

# Makes a path we created as root usable by the postgres user.
give_to_pg() {
    if (( EUID == 0 )); then chown "$PG_OS_USER": "$@"; fi
}

# Atomically replaces FILE with stdin (temp file + mv in the same directory),
# owned by the postgres user when FILE is inside a data dir (OWNER=pg).
write_atomic() {
    local file="$1" owner="${2:-me}" tmp
    tmp="$(mktemp "${file}.tmp.XXXXXX")"
    cat >"$tmp"
    chmod 0644 "$tmp"
    if [[ "$owner" == pg ]]; then give_to_pg "$tmp"; fi
    mv -f "$tmp" "$file"
}

# Creates a log file the postgres user can append to even when our own
# redirections (as root) write to it first.
ensure_log() {
    local log="$1"
    [[ -e "$log" ]] || : >"$log"
    give_to_pg "$log"
}

# ---------------------------------------------------------------------------
# PostgreSQL binaries
# ---------------------------------------------------------------------------

find_bindir() {
    local candidate=""
    if command -v pg_config >/dev/null 2>&1; then
        candidate="$(pg_config --bindir 2>/dev/null || true)"
        if [[ -n "$candidate" && -x "$candidate/initdb" ]]; then
            printf '%s' "$candidate"; return 0
        fi
    fi
    # Debian installs server binaries outside PATH, one dir per major version.
    candidate="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' \
                    -printf '%h\n' 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -n "$candidate" ]]; then printf '%s' "$candidate"; return 0; fi
    return 1
}

ensure_binaries() {
    # Keep using the binaries the cluster was created with: a newer major
    # version could not start the existing data dirs.
    if [[ -n "$BINDIR" && -x "$BINDIR/initdb" ]]; then return 0; fi
    if BINDIR="$(find_bindir)"; then return 0; fi
    if (( EUID != 0 )); then
        err "PostgreSQL server binaries (initdb, pg_ctl, ...) not found."
        err "install them with:  sudo apt-get install postgresql postgresql-contrib"
        exit 1
    fi
    err "PostgreSQL not found; installing postgresql and postgresql-contrib with apt-get"
    apt-get update >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql postgresql-contrib >&2 \
        || die "apt-get install postgresql postgresql-contrib failed"
    BINDIR="$(find_bindir)" || die "PostgreSQL installed but initdb still not found"
}

check_binaries() {
    local b
    for b in initdb pg_ctl pg_basebackup pg_isready psql; do
        [[ -x "$BINDIR/$b" ]] || die "$BINDIR/$b not found or not executable"
    done
}

set_pg_os_user() {
    if (( EUID == 0 )); then
        id -u postgres >/dev/null 2>&1 \
            || die "running as root, but there is no 'postgres' OS user to run the servers"
        PG_OS_USER="postgres"
    else
        PG_OS_USER="$(id -un)"
    fi
}

# ---------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------

server_name() {   # shard replica(0 = primary)
    if (( $2 == 0 )); then printf 's%d-primary' "$1"; else printf 's%d-replica%d' "$1" "$2"; fi
}
server_port() {   # shard replica
    printf '%d' $(( BASE_PORT + $1 * (REPLICAS + 1) + $2 ))
}
server_dir() { printf '%s/%s' "$DIR" "$(server_name "$1" "$2")"; }
server_log() { printf '%s/%s.log' "$DIR" "$(server_name "$1" "$2")"; }

# The data dirs that exist in DIR, whatever the recorded layout says, so that
# `down` also stops servers left over from an earlier, larger layout.
existing_data_dirs() {
    local d
    for d in "$DIR"/s*-primary "$DIR"/s*-replica*; do
        [[ -d "$d" && -f "$d/PG_VERSION" ]] && printf '%s\n' "$d"
    done
    return 0
}

pg_running() {    # datadir
    [[ -f "$1/postmaster.pid" ]] || return 1
    as_pg "$BINDIR/pg_ctl" -D "$1" status >/dev/null 2>&1
}

# Is the server accepting connections on its own socket? Asking through the
# socket in its data dir cannot be fooled by another process on the same port.
pg_ready() {      # datadir port
    as_pg "$BINDIR/pg_isready" -q -h "$1" -p "$2" -d postgres -U "$PG_SUPERUSER" -t 3 >/dev/null 2>&1
}

port_in_use() {
    local port="$1"
    if command -v ss >/dev/null 2>&1; then
        [[ -n "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
    fi
}

# cluster.env is parsed, never sourced: it is data, and `up` as root should not
# execute whatever a directory happens to contain.
ENV_SHARDS="" ENV_REPLICAS="" ENV_BASE_PORT="" ENV_PROXY_PORT="" ENV_PROXY=0
load_env() {
    local file="$DIR/cluster.env" key value
    [[ -f "$file" ]] || return 1
    while IFS='=' read -r key value; do
        case "$key" in
            SHARDS)        ENV_SHARDS="$value" ;;
            REPLICAS)      ENV_REPLICAS="$value" ;;
            BASE_PORT)     ENV_BASE_PORT="$value" ;;
            PROXY_PORT)    ENV_PROXY_PORT="$value" ;;
            PROXY)         ENV_PROXY="$value" ;;
            BINDIR)        [[ -z "$BINDIR" ]] && BINDIR="$value" ;;
        esac
    done <"$file"
    [[ "$ENV_SHARDS" =~ ^[0-9]+$ && "$ENV_REPLICAS" =~ ^[0-9]+$ \
       && "$ENV_BASE_PORT" =~ ^[0-9]+$ && "$ENV_PROXY_PORT" =~ ^[0-9]+$ ]] \
        || die "$file is malformed; fix or remove it"
    return 0
}

# For down/status/psql: adopt the recorded layout.
use_recorded_layout() {
    load_env || die "no cluster in $DIR (no cluster.env; was 'up' run with this --dir?)"
    SHARDS="$ENV_SHARDS"; REPLICAS="$ENV_REPLICAS"
    BASE_PORT="$ENV_BASE_PORT"; PROXY_PORT="$ENV_PROXY_PORT"
}

write_env() {
    write_atomic "$DIR/cluster.env" <<EOF
# Written by scripts/cluster.sh up; read by down/status/psql. KEY=value lines.
SHARDS=$SHARDS
REPLICAS=$REPLICAS
BASE_PORT=$BASE_PORT
PROXY_PORT=$PROXY_PORT
PROXY=$WANT_PROXY
REPLICA_DELAY_MS=$REPLICA_DELAY_MS
BINDIR=$BINDIR
PG_OS_USER=$PG_OS_USER
PG_SUPERUSER=$PG_SUPERUSER
EOF
}

# ---------------------------------------------------------------------------
# Locking
# ---------------------------------------------------------------------------

# Serializes up/down on one DIR: tests may bring up a shared cluster from
# several processes at once.
lock_dir() {
    exec 9>>"$DIR/.cluster.lock"
    flock -w 300 9 || die "timed out waiting for another $PROG working on $DIR"
}

# ---------------------------------------------------------------------------
# Server configuration
# ---------------------------------------------------------------------------

# Per-server settings live in cluster.conf (included last from postgresql.conf)
# and are rewritten on every `up`: a replica starts as a copy of its primary's
# data dir, and a re-up may change ports or the replica delay.
cluster_conf() {  # shard replica
    local shard="$1" rep="$2" dir port
    dir="$(server_dir "$shard" "$rep")"
    port="$(server_port "$shard" "$rep")"
    cat <<EOF
# Written by scripts/cluster.sh on every 'up'; edits here are overwritten.
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
EOF
    if (( rep > 0 )); then
        cat <<EOF
primary_conninfo = 'host=127.0.0.1 port=$(server_port "$shard" 0) user=replicator password=replicator application_name=$(server_name "$shard" "$rep")'
recovery_min_apply_delay = '${REPLICA_DELAY_MS}ms'
EOF
    fi
}

# Writes cluster.conf into DATADIR (which may still be a temp dir that is
# about to be renamed); reports via exit status 0 whether the content changed.
install_cluster_conf() {   # shard replica datadir
    local target="$3/cluster.conf" new
    new="$(cluster_conf "$1" "$2")"
    if [[ -f "$target" ]] && [[ "$(cat "$target")" == "$new" ]]; then
        return 1
    fi
    printf '%s\n' "$new" | write_atomic "$target" pg
    return 0
}

primary_conf() {
    cat <<'EOF'

# --- added by scripts/cluster.sh ---
wal_level = logical
max_prepared_transactions = 64
max_wal_senders = 20
max_replication_slots = 20
# Rebalancing moves rows by logical replication: an apply worker per
# subscription plus table-sync workers while copying.
max_logical_replication_workers = 8
max_worker_processes = 16
wal_keep_size = '256MB'
hot_standby = on
hot_standby_feedback = on
max_connections = 300
# These are throwaway dev/test clusters: durability across an OS crash is not
# worth the fsync cost, which dominates test run times.
fsync = off
# Port, addresses, socket dir and replica settings differ per server.
include_if_exists = 'cluster.conf'
EOF
}

pg_hba() {
    cat <<'EOF'
# Written by scripts/cluster.sh.
local all all trust
local replication all trust
host replication all 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 md5
EOF
}

pg_start() {      # shard replica
    local dir log
    dir="$(server_dir "$1" "$2")"; log="$(server_log "$1" "$2")"
    if pg_running "$dir"; then return 0; fi
    local out
    # pg_ctl's own output matters only when it fails before the server could
    # write to the log (e.g. bad permissions).
    if ! out="$(as_pg "$BINDIR/pg_ctl" -D "$dir" -l "$log" -w -t 60 start 2>&1)"; then
        printf '%s\n' "$out" | sed "s/^/$PROG: /" >&2
        fail_with_log "$log" "$(server_name "$1" "$2") failed to start"
    fi
}

# Roles and database the proxy and tests rely on. Created only when missing so
# that a re-up keeps whatever tests changed.
ensure_roles() {  # shard
    local dir port log
    dir="$(server_dir "$1" 0)"; port="$(server_port "$1" 0)"; log="$(server_log "$1" 0)"
    as_pg "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U "$PG_SUPERUSER" \
        -d postgres >>"$log" 2>&1 <<'EOF' || fail_with_log "$log" "creating roles/database on $(server_name "$1" 0) failed"
SET password_encryption = 'scram-sha-256';
SELECT 'CREATE ROLE app LOGIN PASSWORD ''app'''
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app') \gexec
SELECT 'CREATE ROLE replicator REPLICATION LOGIN PASSWORD ''replicator'''
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'replicator') \gexec
SELECT 'CREATE ROLE rebalancer SUPERUSER REPLICATION LOGIN PASSWORD ''rebalancer'''
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rebalancer') \gexec
SELECT 'CREATE DATABASE app OWNER app'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'app') \gexec
EOF
}

# New data dirs are built under a temporary name and renamed when complete, so
# an interrupted `up` never leaves a half-made server that a later `up` would
# try to start.
init_primary() {  # shard
    local shard="$1" dir log tmp
    dir="$(server_dir "$shard" 0)"; log="$(server_log "$shard" 0)"
    tmp="$dir.partial"
    [[ -f "$dir/PG_VERSION" ]] && return 0
    rm -rf "$tmp"
    # --no-sync: see fsync = off.
    as_pg "$BINDIR/initdb" -D "$tmp" -U "$PG_SUPERUSER" --auth-local=trust \
        --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync --no-instructions \
        >>"$log" 2>&1 || fail_with_log "$log" "initdb for $(server_name "$shard" 0) failed"
    primary_conf | as_pg tee -a "$tmp/postgresql.conf" >/dev/null
    pg_hba | write_atomic "$tmp/pg_hba.conf" pg
    install_cluster_conf "$shard" 0 "$tmp" || true
    mv "$tmp" "$dir"
}

init_replica() {  # shard replica
    local shard="$1" rep="$2" dir log tmp
    dir="$(server_dir "$shard" "$rep")"; log="$(server_log "$shard" "$rep")"
    tmp="$dir.partial"
    [[ -f "$dir/PG_VERSION" ]] && return 0
    rm -rf "$tmp"
    as_pg env PGPASSWORD=replicator "$BINDIR/pg_basebackup" -h 127.0.0.1 \
        -p "$(server_port "$shard" 0)" -U replicator -D "$tmp" -R -X stream -c fast \
        --no-sync --label "cluster.sh $(server_name "$shard" "$rep")" >>"$log" 2>&1 \
        || fail_with_log "$log" "pg_basebackup for $(server_name "$shard" "$rep") failed"
    # -R also writes primary_conninfo to postgresql.auto.conf, which would
    # override ours in cluster.conf (it lacks application_name and would keep a
    # stale port if BASE changes); standby.signal from -R is what we keep.
    as_pg sed -i '/^primary_conninfo/d' "$tmp/postgresql.auto.conf"
    # The copy carries the primary's socket lock file, which is just clutter.
    rm -f -- "$tmp"/.s.PGSQL.*.lock
    install_cluster_conf "$shard" "$rep" "$tmp" || true
    mv "$tmp" "$dir"
}

# Brings up one server whose data dir already exists: refresh cluster.conf
# (reloading a running server so a changed replica delay takes effect), start.
refresh_and_start() {  # shard replica
    local shard="$1" rep="$2" dir log
    dir="$(server_dir "$shard" "$rep")"; log="$(server_log "$shard" "$rep")"
    if install_cluster_conf "$shard" "$rep" "$dir" && pg_running "$dir"; then
        as_pg "$BINDIR/pg_ctl" -D "$dir" reload >>"$log" 2>&1 || true
    fi
    pg_start "$shard" "$rep"
}

up_replica() {    # shard replica
    ensure_log "$(server_log "$1" "$2")"
    init_replica "$1" "$2"
    refresh_and_start "$1" "$2"
}

# One background job per shard: the primary, then its replicas in parallel.
up_shard() {      # shard
    local shard="$1" rep pids=() failed=0 pid
    ensure_log "$(server_log "$shard" 0)"
    init_primary "$shard"
    refresh_and_start "$shard" 0
    ensure_roles "$shard"
    for (( rep = 1; rep <= REPLICAS; rep++ )); do
        up_replica "$shard" "$rep" &
        pids+=("$!")
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=1
    done
    return "$failed"
}

# ---------------------------------------------------------------------------
# shardwire.toml
# ---------------------------------------------------------------------------

shardwire_toml() {
    local shard rep
    cat <<EOF
# shardwire config for the local cluster in $DIR, written by scripts/cluster.sh.
# Append [[tables]] entries to shard tables (see README).
listen = "127.0.0.1:$PROXY_PORT"
http_listen = "127.0.0.1:$((PROXY_PORT + 1))"      # proxy port + 1
default_shard = "s0"

[pool]
mode = "transaction"
min_size = 0
max_size = 20
connect_timeout = "5s"
checkout_timeout = "5s"
idle_timeout = "10m"
max_lifetime = "1h"

[[users]]
name = "app"
password = "app"
auth = "scram-sha-256"

[[users]]
name = "admin"
password = "admin"
auth = "scram-sha-256"
admin = true

[[databases]]
name = "app"

# The mover of REBALANCE START (and SPLIT RANGE, MOVE REGION) logs in to
# every shard's primary as this superuser to create publications,
# subscriptions and guards.
[rebalance]
user = "rebalancer"
password = "rebalancer"
EOF
    for (( shard = 0; shard < SHARDS; shard++ )); do
        printf '\n[[shards]]\nname = "s%d"\n' "$shard"
        for (( rep = 0; rep <= REPLICAS; rep++ )); do
            printf '\n[[shards.servers]]\nhost = "127.0.0.1"\nport = %d\nrole = "%s"\n' \
                "$(server_port "$shard" "$rep")" "$( (( rep == 0 )) && echo primary || echo replica)"
        done
    done
}

# The user may have appended [[tables]] to an existing file, so it is only
# replaced when the layout changed (the old one is kept as .bak).
write_toml() {
    local layout_changed="$1" file="$DIR/shardwire.toml"
    if [[ -f "$file" ]] && (( ! layout_changed )); then return 0; fi
    if [[ -f "$file" ]]; then
        cp -p "$file" "$file.bak"
        err "layout changed: rewrote $file (previous version in $file.bak)"
    fi
    shardwire_toml | write_atomic "$file"
}

# ---------------------------------------------------------------------------
# Proxy
# ---------------------------------------------------------------------------

# Alive and really our proxy: the pid in the file may have been reused by an
# unrelated process since the proxy died.
proxy_pid() {
    local pidfile="$DIR/shardwire.pid" pid
    [[ -f "$pidfile" ]] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r "/proc/$pid/cmdline" ]]; then
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$DIR/shardwire.toml" || return 1
    fi
    printf '%s' "$pid"
}

tcp_accepts() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

proxy_binary() {
    if [[ -n "${SHARDWIRE_BIN:-}" ]]; then
        [[ -x "$SHARDWIRE_BIN" ]] || die "SHARDWIRE_BIN=$SHARDWIRE_BIN is not an executable file"
        printf '%s' "$SHARDWIRE_BIN"
        return 0
    fi
    command -v cargo >/dev/null 2>&1 || die "--proxy needs cargo to build shardwire (or set SHARDWIRE_BIN)"
    (cd "$REPO_ROOT" && cargo build --release --quiet >&2) \
        || die "cargo build --release failed in $REPO_ROOT"
    [[ -x "$REPO_ROOT/target/release/shardwire" ]] \
        || die "cargo build succeeded but $REPO_ROOT/target/release/shardwire is missing"
    printf '%s' "$REPO_ROOT/target/release/shardwire"
}

start_proxy() {
    local bin pid i log="$DIR/shardwire.log"
    if proxy_pid >/dev/null; then return 0; fi
    bin="$(proxy_binary)"
    # The log is appended across runs; mark where this run starts.
    printf -- '--- %s: cluster.sh starting %s ---\n' "$(date '+%F %T')" "$bin" >>"$log"
    # setsid + nohup: the proxy must outlive this script and the terminal or
    # test harness that ran it; fd 9 (the DIR lock) must not leak into it.
    setsid nohup "$bin" serve --config "$DIR/shardwire.toml" </dev/null >>"$log" 2>&1 9>&- &
    pid=$!
    printf '%s\n' "$pid" >"$DIR/shardwire.pid"
    for (( i = 0; i < 300; i++ )); do
        if tcp_accepts "$PROXY_PORT"; then return 0; fi
        kill -0 "$pid" 2>/dev/null || {
            rm -f "$DIR/shardwire.pid"
            fail_with_log "$log" "shardwire proxy exited during startup"
        }
        sleep 0.1
    done
    stop_proxy
    fail_with_log "$log" "shardwire proxy did not accept connections on 127.0.0.1:$PROXY_PORT within 30s"
}

stop_proxy() {
    local pid i
    if pid="$(proxy_pid)"; then
        kill -TERM "$pid" 2>/dev/null || true
        for (( i = 0; i < 100; i++ )); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            err "shardwire proxy (pid $pid) ignored SIGTERM for 10s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$DIR/shardwire.pid"
}

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

print_status() {
    local shard rep role state
    for (( shard = 0; shard < SHARDS; shard++ )); do
        for (( rep = 0; rep <= REPLICAS; rep++ )); do
            role=primary; (( rep > 0 )) && role=replica
            state=down
            pg_ready "$(server_dir "$shard" "$rep")" "$(server_port "$shard" "$rep")" && state=up
            printf 's%d %s 127.0.0.1:%d %s\n' "$shard" "$role" "$(server_port "$shard" "$rep")" "$state"
        done
    done
    if (( ENV_PROXY )) || [[ -f "$DIR/shardwire.pid" ]]; then
        state=down
        proxy_pid >/dev/null && tcp_accepts "$PROXY_PORT" && state=up
        printf 'proxy - 127.0.0.1:%d %s\n' "$PROXY_PORT" "$state"
    fi
}

# Absolute DIR: it ends up in server configs, and as_pg runs from /.
absolutize_dir() {
    DIR="$(realpath -m -- "$DIR")"
}

# Only directories this script made may be chowned or purged: guards against
# `--dir ~` or `--dir /tmp` doing damage.
is_cluster_dir() {
    [[ -f "$DIR/cluster.env" || -e "$DIR/.cluster.lock" || -d "$DIR/s0-primary" ]] \
        || [[ -z "$(ls -A -- "$DIR")" ]]
}

# An `up` that fails before starting any server should not leave behind a
# directory it created.
CREATED_DIR=0
STARTED=0
cleanup_on_failure() {
    local rc=$?
    if (( rc != 0 && CREATED_DIR && ! STARTED )); then rm -rf -- "$DIR"; fi
}

prepare_dir() {
    local shard rep socket
    absolutize_dir
    if [[ -e "$DIR" && ! -d "$DIR" ]]; then die "$DIR exists and is not a directory"; fi
    if [[ -d "$DIR" ]] && ! is_cluster_dir; then
        die "$DIR exists, is not empty and is not a cluster.sh directory; use a new or empty --dir"
    fi
    # Unix socket paths are limited to 107 bytes (sun_path), and PostgreSQL
    # reports an overlong one only in the server log.
    for (( shard = 0; shard < SHARDS; shard++ )); do
        for (( rep = 0; rep <= REPLICAS; rep++ )); do
            socket="$(server_dir "$shard" "$rep")/.s.PGSQL.$(server_port "$shard" "$rep")"
            (( ${#socket} < SOCKET_PATH_MAX )) \
                || die "unix socket path $socket is ${#socket} chars, over the limit of $((SOCKET_PATH_MAX - 1)); use a shorter --dir"
        done
    done
    if [[ ! -d "$DIR" ]]; then
        trap cleanup_on_failure EXIT
        mkdir -p -- "$DIR"
        CREATED_DIR=1
    fi
    if (( EUID == 0 )); then
        [[ "$(stat -c %U -- "$DIR")" == "$PG_OS_USER" ]] || chown "$PG_OS_USER": -- "$DIR"
        as_pg test -w "$DIR" -a -x "$DIR" \
            || die "the $PG_OS_USER user cannot reach $DIR (a parent directory is not traversable by it?); use a directory such as /tmp/..."
    fi
}

cmd_up() {
    validate_layout
    set_pg_os_user
    prepare_dir
    lock_dir

    # Layout = what shardwire.toml describes. Servers cannot move while running;
    # the proxy cannot change ports while running.
    local layout_changed=1 servers_changed=1 proxy_changed=1 shard rep d port
    if load_env; then
        [[ "$ENV_SHARDS $ENV_REPLICAS $ENV_BASE_PORT" == "$SHARDS $REPLICAS $BASE_PORT" ]] \
            && servers_changed=0
        [[ "$ENV_PROXY_PORT" == "$PROXY_PORT" ]] && proxy_changed=0
        (( servers_changed || proxy_changed )) || layout_changed=0
    fi
    ensure_binaries
    check_binaries

    if (( layout_changed )) && [[ -f "$DIR/cluster.env" ]]; then
        local running=()
        if (( servers_changed )); then
            while IFS= read -r d; do
                pg_running "$d" && running+=("${d##*/}")
            done < <(existing_data_dirs)
        fi
        proxy_pid >/dev/null && running+=("proxy")
        if (( ${#running[@]} > 0 )); then
            die "$DIR is running with a different layout (shards=$ENV_SHARDS replicas=$ENV_REPLICAS port=$ENV_BASE_PORT proxy-port=$ENV_PROXY_PORT; running: ${running[*]}); run '$PROG down --dir $DIR' first"
        fi
    fi

    # Check everything up front: a half-started cluster is worse than none.
    for (( shard = 0; shard < SHARDS; shard++ )); do
        for (( rep = 0; rep <= REPLICAS; rep++ )); do
            d="$(server_dir "$shard" "$rep")"; port="$(server_port "$shard" "$rep")"
            if ! pg_running "$d" && port_in_use "$port"; then
                die "port $port (for $(server_name "$shard" "$rep")) is already in use by another process; choose another --port"
            fi
        done
    done
    if (( WANT_PROXY )) && ! proxy_pid >/dev/null; then
        for port in "$PROXY_PORT" "$((PROXY_PORT + 1))"; do
            port_in_use "$port" \
                && die "port $port (for the shardwire proxy) is already in use; choose another --proxy-port"
        done
    fi

    # A proxy still running from an earlier `up --proxy` stays recorded.
    if proxy_pid >/dev/null; then WANT_PROXY=1; fi
    write_env
    ENV_PROXY="$WANT_PROXY"

    local pids=() failed=0 pid
    STARTED=1
    for (( shard = 0; shard < SHARDS; shard++ )); do
        up_shard "$shard" &
        pids+=("$!")
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=$(( failed + 1 ))
    done
    if (( failed )); then
        die "$failed shard(s) failed to come up (see above); '$PROG down --dir $DIR' stops what did start"
    fi

    write_toml "$layout_changed"
    if (( WANT_PROXY )); then start_proxy; fi

    print_status
    if (( WANT_PROXY )); then
        printf '\nconnect: psql "postgres://app:app@127.0.0.1:%d/app"\n' "$PROXY_PORT"
    fi
}

cmd_down() {
    if [[ ! -d "$DIR" ]]; then
        (( PURGE )) && return 0
        err "$DIR does not exist; nothing to stop"
        return 0
    fi
    absolutize_dir
    if ! is_cluster_dir; then
        (( PURGE )) && die "refusing to purge $DIR: it is not a cluster.sh directory (no cluster.env)"
        err "$DIR is not a cluster.sh directory; nothing to stop"
        return 0
    fi
    set_pg_os_user
    lock_dir
    load_env || true
    stop_proxy

    local dirs=() d
    while IFS= read -r d; do dirs+=("$d"); done < <(existing_data_dirs)
    if (( ${#dirs[@]} > 0 )); then
        ensure_binaries
        check_binaries
        # Replicas first, so they do not spend the shutdown retrying their
        # primary; each group in parallel.
        local pattern pids failed=0 pid
        for pattern in '*-replica*' '*-primary'; do
            pids=()
            for d in "${dirs[@]}"; do
                # shellcheck disable=SC2053  # pattern match is intended
                [[ "${d##*/}" == $pattern ]] || continue
                pg_running "$d" || continue
                as_pg "$BINDIR/pg_ctl" -D "$d" -m fast -w -t 60 stop >/dev/null 2>&1 &
                pids+=("$!")
            done
            for pid in "${pids[@]}"; do
                wait "$pid" || failed=$(( failed + 1 ))
            done
        done
        (( failed == 0 )) || die "$failed server(s) in $DIR failed to stop"
    fi

    if (( PURGE )); then
        rm -rf -- "$DIR"
    fi
}

cmd_status() {
    [[ -d "$DIR" ]] || die "$DIR does not exist"
    absolutize_dir
    set_pg_os_user
    use_recorded_layout
    ensure_binaries
    check_binaries
    print_status
}

cmd_psql() {
    [[ -d "$DIR" ]] || die "$DIR does not exist"
    absolutize_dir
    set_pg_os_user
    use_recorded_layout
    ensure_binaries
    check_binaries
    select_server psql
    local dir="$SEL_DIR" port="$SEL_PORT"
    # Root can use the 0700 socket dir directly; running psql as the caller
    # keeps -f/-o/\copy paths relative to the caller's permissions.
    if [[ -x "$dir" ]]; then
        exec "$BINDIR/psql" -h "$dir" -p "$port" -U "$PG_SUPERUSER" -d app "${PSQL_ARGS[@]}"
    fi
    as_pg "$BINDIR/psql" -h "$dir" -p "$port" -U "$PG_SUPERUSER" -d app "${PSQL_ARGS[@]}"
}

# The server --shard/--replica name in DIR: sets SEL_DIR, SEL_NAME, SEL_PORT.
select_server() {
    [[ -n "$SHARD_ARG" ]] || usage_error "$1 needs --shard sN"
    [[ "$SHARD_ARG" =~ ^s([0-9]+)$ ]] || usage_error "--shard must look like s0, s1, ...; got '$SHARD_ARG'"
    local shard=$(( 10#${BASH_REMATCH[1]} ))
    (( shard < SHARDS )) || usage_error "no shard $SHARD_ARG in $DIR (shards: s0..s$((SHARDS - 1)))"
    (( REPLICA_ARG <= REPLICAS )) || usage_error "no replica $REPLICA_ARG of $SHARD_ARG (replicas: 1..$REPLICAS)"
    SEL_DIR="$(server_dir "$shard" "$REPLICA_ARG")"
    SEL_NAME="$(server_name "$shard" "$REPLICA_ARG")"
    SEL_PORT="$(server_port "$shard" "$REPLICA_ARG")"
}

# Common start of stop, start and promote: DIR's recorded layout, locked.
prepare_one_server_command() {
    [[ -d "$DIR" ]] || die "$DIR does not exist"
    absolutize_dir
    set_pg_os_user
    lock_dir
    use_recorded_layout
    ensure_binaries
    check_binaries
}

cmd_stop() {
    prepare_one_server_command
    select_server stop
    if ! pg_running "$SEL_DIR"; then
        err "$SEL_NAME is not running"
        return 0
    fi
    local mode=fast
    (( CRASH )) && mode=immediate
    as_pg "$BINDIR/pg_ctl" -D "$SEL_DIR" -m "$mode" -w -t 60 stop >/dev/null \
        || die "$SEL_NAME failed to stop"
    printf '%s stopped\n' "$SEL_NAME"
}

cmd_start() {
    prepare_one_server_command
    select_server start
    if pg_running "$SEL_DIR"; then
        err "$SEL_NAME is running already"
        return 0
    fi
    local shard=$(( 10#${SHARD_ARG#s} ))
    pg_start "$shard" "$REPLICA_ARG"
    printf '%s started\n' "$SEL_NAME"
}

cmd_promote() {
    prepare_one_server_command
    (( REPLICA_ARG > 0 )) || usage_error "promote needs --replica K (a primary is promoted already)"
    select_server promote
    pg_running "$SEL_DIR" || die "$SEL_NAME is not running"
    as_pg "$BINDIR/pg_ctl" -D "$SEL_DIR" -w -t 60 promote >/dev/null \
        || die "$SEL_NAME failed to promote"
    printf '%s promoted\n' "$SEL_NAME"
}

main() {
    if (( $# == 0 )); then usage >&2; exit 2; fi
    local cmd="$1"; shift
    case "$cmd" in
        -h|--help|help) usage; exit 0 ;;
        up|down|status|psql|stop|start|promote) ;;
        *) usage_error "unknown command '$cmd' (expected up, down, status, psql, stop, start or promote)" ;;
    esac
    parse_args "$cmd" "$@"
    case "$cmd" in
        up)      cmd_up ;;
        down)    cmd_down ;;
        status)  cmd_status ;;
        psql)    cmd_psql ;;
        stop)    cmd_stop ;;
        start)   cmd_start ;;
        promote) cmd_promote ;;
    esac
}

main "$@"

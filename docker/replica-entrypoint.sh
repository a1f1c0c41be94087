#!/usr/bin/env bash
#
# replica-entrypoint.sh - entrypoint of a shard's streaming replica on the
# official postgres image. On first start it waits for the primary and clones
# it with pg_basebackup -R (as scripts/cluster.sh init_replica does), then
# hands over to the image's own entrypoint, which finds an existing data dir,
# skips initdb and execs postgres with the arguments given here.
#
# Environment: PRIMARY_HOST (required), PRIMARY_PORT (default 5432),
# REPLICA_NAME (application_name on the primary; default the hostname),
# PGDATA (set by the image; compose points it below the volume).

set -euo pipefail

: "${PRIMARY_HOST:?PRIMARY_HOST must name the primary}"
PRIMARY_PORT="${PRIMARY_PORT:-5432}"
REPLICA_NAME="${REPLICA_NAME:-$(hostname)}"

as_postgres() {
    if [[ "$(id -u)" == 0 ]]; then gosu postgres "$@"; else "$@"; fi
}

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
    echo "replica-entrypoint: waiting for $PRIMARY_HOST:$PRIMARY_PORT"
    until pg_isready -q -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U replicator -d postgres; do
        sleep 1
    done

    # Built under a temporary name and renamed when complete, so an
    # interrupted clone is redone instead of started.
    partial="$PGDATA.partial"
    parent="$(dirname "$PGDATA")"
    mkdir -p "$parent"
    if [[ "$(id -u)" == 0 ]]; then chown postgres:postgres "$parent"; fi
    as_postgres rm -rf "$partial" "$PGDATA"

    echo "replica-entrypoint: pg_basebackup from $PRIMARY_HOST:$PRIMARY_PORT"
    as_postgres env PGPASSWORD=replicator pg_basebackup \
        -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U replicator \
        -D "$partial" -R -X stream -c fast --label "shardwire $REPLICA_NAME"

    # -R wrote standby.signal and a primary_conninfo; replace the latter with
    # one that names this replica, like cluster.sh's cluster.conf does.
    as_postgres sed -i '/^primary_conninfo/d' "$partial/postgresql.auto.conf"
    printf "primary_conninfo = 'host=%s port=%s user=replicator password=replicator application_name=%s'\n" \
        "$PRIMARY_HOST" "$PRIMARY_PORT" "$REPLICA_NAME" \
        | as_postgres tee -a "$partial/postgresql.auto.conf" >/dev/null
    as_postgres mv "$partial" "$PGDATA"
fi

exec docker-entrypoint.sh "$@"

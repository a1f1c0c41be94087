#!/usr/bin/env bash
#
# init-primary.sh - first-start setup of a shard primary, run by the official
# postgres image's entrypoint from /docker-entrypoint-initdb.d (only when the
# data dir is new). Mirrors ensure_roles and pg_hba in scripts/cluster.sh:
# role app (password app, SCRAM) owning database app, role replicator
# (password replicator) for streaming replication, role rebalancer
# (superuser, password rebalancer) for the proxy's [rebalance] mover;
# superuser postgres.

set -euo pipefail

psql -X -q -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<'SQL'
SET password_encryption = 'scram-sha-256';
CREATE ROLE app LOGIN PASSWORD 'app';
CREATE ROLE replicator REPLICATION LOGIN PASSWORD 'replicator';
CREATE ROLE rebalancer SUPERUSER REPLICATION LOGIN PASSWORD 'rebalancer';
CREATE DATABASE app OWNER app;
SQL

# The image already allows "host all all all scram-sha-256"; replication
# connections match only lines that name the replication pseudo-database.
# samenet: any address on a network this container is attached to, i.e. the
# compose network. Replicas copy this file with pg_basebackup.
cat >>"$PGDATA/pg_hba.conf" <<'HBA'

# Added by docker/init-primary.sh (shardwire).
host replication replicator samenet scram-sha-256
host all         all        samenet scram-sha-256
HBA

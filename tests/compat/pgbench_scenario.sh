#!/usr/bin/env bash
#
# The pgbench scenario of scripts/compat.sh: custom scripts in each of
# pgbench's protocols (-M simple, extended, prepared) with several clients,
# checking their own answers (a wrong one divides by zero, which pgbench
# counts as a failure). pgbench has no COPY, cancel or type API, so those
# steps are n/a. Environment as for psql_scenario.sh.

set -uo pipefail
DRIVER=pgbench
VERSION="$(pgbench --version | awk '{print $3}')"
P="$COMPAT_PREFIX"
T="${COMPAT_STEP_TIMEOUT:-30}"
export PGPASSWORD="$COMPAT_PASSWORD" PGCONNECT_TIMEOUT=10
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

report() { printf 'COMPAT\t%s\t%s\t%s\t%s\t%s\n' "$DRIVER" "$VERSION" "$1" "$2" "$(printf '%s' "${3:-}" | tr '\t\n' '  ' | cut -c1-400)"; }

# bench STEP SCRIPT-TEXT CLIENTS TX-PER-CLIENT pgbench-args...
bench() {
    local step="$1" script="$2" clients="$3" tx="$4"; shift 4
    printf '%s\n' "$script" >"$TMP/$step.sql"
    if timeout "$T" pgbench -n -h "$COMPAT_HOST" -p "$COMPAT_PORT" -U "$COMPAT_USER" \
        -c "$clients" -j 1 -t "$tx" -f "$TMP/$step.sql" "$@" "$COMPAT_DB" >"$TMP/out" 2>"$TMP/err" \
        && grep -q "number of transactions actually processed: $((clients * tx))/$((clients * tx))" "$TMP/out" \
        && ! grep -q 'aborted' "$TMP/err"; then
        report "$step" pass "$* -c $clients -t $tx"
    else
        report "$step" fail "$* -c $clients: $(grep -v '^progress' "$TMP/err" | head -c 300) $(grep -E 'processed|failed' "$TMP/out" | tr '\n' ' ')"
    fi
}
# Fails the transaction (division by zero) unless :ok is 1.
CHECK='\if :ok != 1
select 1/0;
\endif'

bench connect_scram "select 1 as ok \\gset
$CHECK" 2 5 -M simple -C
PGSSLMODE=verify-full PGSSLROOTCERT="$COMPAT_CA" bench connect_tls "select 1 as ok \\gset
$CHECK" 2 5 -M simple -C
bench simple_query "select (2 + 2 = 4)::int as ok \\gset
$CHECK" 2 50 -M simple
bench params "\\set x random(1, 1000000)
select (:x::int8 * 2 = 2 * :x)::int as ok \\gset
$CHECK" 2 50 -M extended
# -M prepared names its statements per client and reuses them in every
# transaction, while the proxy moves the client between pooled connections.
bench prepared_reuse "\\set x random(1, 1000000)
begin;
select (:x::int8 + 1 = :x + 1)::int as ok \\gset
$CHECK
end;" 4 100 -M prepared
bench tx_commit "\\set id random(1, 1000000000)
begin;
insert into ${P}_tx values (:id % 2000000000, 'pgbench');
select count(*) as ok from ${P}_tx where id = :id % 2000000000 \\gset
$CHECK
end;" 2 20 -M prepared
for s in tx_rollback tx_error_rollback; do report "$s" n/a "pgbench scripts cannot roll back on purpose and continue"; done
report types_text n/a "pgbench has no value API (types are covered by the other drivers)"
report types_binary n/a "pgbench has no value API"
report big_result n/a "pgbench discards result rows"
report cancel n/a "pgbench has no cancel API"
report copy_in n/a "pgbench -i copies only its own tables"
report copy_out n/a "pgbench has no COPY TO"

# Keys from a sequence (on the default shard), rows on the shard of their key.
if ! timeout "$T" psql -X -q -v ON_ERROR_STOP=1 "host=$COMPAT_HOST port=$COMPAT_PORT user=$COMPAT_USER dbname=$COMPAT_DB" \
    -c "drop sequence if exists ${P}_seq" -c "create sequence ${P}_seq" >/dev/null 2>"$TMP/err"; then
    report shard_insert fail "create sequence: $(head -c 300 "$TMP/err")"
fi
bench shard_insert "select nextval('${P}_seq') as id \\gset
insert into ${P}_items (id, v) values (:id, 'item ' || :id);" 2 500 -M prepared
bench shard_read "\\set id random(1, 1000)
select count(*) as ok from ${P}_items where id = :id and v = 'item ' || :id \\gset
$CHECK" 2 500 -M prepared
bench shard_count "select count(*) as n, sum(id) as s from ${P}_items \\gset
\\if :n != 1000 or :s != 500500
select 1/0;
\\endif" 1 5 -M extended
bench shard_order_limit "select id as third from ${P}_items order by id desc limit 1 offset 2 \\gset
\\if :third != 998
select 1/0;
\\endif" 1 5 -M extended

#!/usr/bin/env bash
#
# The psql scenario of scripts/compat.sh (libpq's command line client). It
# speaks the simple query protocol; \bind (extended protocol) only exists
# from psql 16 on. Environment: COMPAT_HOST, COMPAT_PORT, COMPAT_USER,
# COMPAT_PASSWORD, COMPAT_DB, COMPAT_CA, COMPAT_PREFIX, COMPAT_STEP_TIMEOUT.

set -uo pipefail
DRIVER=psql
VERSION="$(psql --version | awk '{print $3}')"
P="$COMPAT_PREFIX"
T="${COMPAT_STEP_TIMEOUT:-30}"
export PGPASSWORD="$COMPAT_PASSWORD" PGCONNECT_TIMEOUT=10 PGOPTIONS="-c TimeZone=UTC"
BASE="host=$COMPAT_HOST port=$COMPAT_PORT user=$COMPAT_USER dbname=$COMPAT_DB"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

report() { printf 'COMPAT\t%s\t%s\t%s\t%s\t%s\n' "$DRIVER" "$VERSION" "$1" "$2" "$(printf '%s' "${3:-}" | tr '\t\n' '  ' | cut -c1-400)"; }

# q SSLMODE SQL...: psql -At with ON_ERROR_STOP, output in $TMP/out, errors in $TMP/err.
q() {
    local mode="$1"; shift
    timeout "$T" psql -X -q -At -v ON_ERROR_STOP=1 "$BASE sslmode=$mode" "$@" >"$TMP/out" 2>"$TMP/err"
}
# check STEP EXPECTED SSLMODE psql-args...: pass when the command succeeds and prints EXPECTED.
check() {
    local step="$1" want="$2" mode="$3"; shift 3
    if ! q "$mode" "$@"; then report "$step" fail "psql failed: $(head -c 300 "$TMP/err")"; return; fi
    if [[ "$(cat "$TMP/out")" == "$want" ]]; then report "$step" pass ""
    else report "$step" fail "expected '$(head -c 150 <<<"$want")', got '$(head -c 150 "$TMP/out")'"; fi
}

check connect_scram "compat-on-app" disable -c "select 'compat-on-' || current_user"
if q "verify-full sslrootcert=$COMPAT_CA" -c "select 'tls'" -c '\conninfo' && grep -q '^tls$' "$TMP/out" && grep -q 'SSL connection (protocol: TLS' "$TMP/out"; then
    report connect_tls pass "sslmode=verify-full"
else
    report connect_tls fail "$(head -c 200 "$TMP/err") $(head -c 200 "$TMP/out")"
fi
check simple_query "1|one" prefer -c "select 1, 'one'"

if (( ${VERSION%%.*} >= 16 )); then
    check params "42|x" prefer -c "select \$1::int + 1, \$2::text \\bind 41 x \\g"
else
    report params n/a "psql $VERSION has no \\bind (psql 16+): it sends only simple queries"
fi
report prepared_reuse n/a "psql has no protocol-level prepared statements before \\parse (psql 17); SQL PREPARE does not follow a client under transaction pooling"

check tx_commit "1" prefer -c "begin" -c "insert into ${P}_tx values (1, 'committed')" -c "commit" \
    -c "select count(*) from ${P}_tx where id = 1"
check tx_rollback "0" prefer -c "begin" -c "insert into ${P}_tx values (2, 'rolled back')" -c "rollback" \
    -c "select count(*) from ${P}_tx where id = 2"
# ON_ERROR_STOP=0 for this one: the error is the point.
if timeout "$T" psql -X -q -At -v ON_ERROR_STOP=0 "$BASE sslmode=prefer" >"$TMP/out" 2>"$TMP/err" <<EOF
begin;
insert into ${P}_tx values (3, 'lost');
select 1/0;
select 'after error';
rollback;
select 'continued', count(*) from ${P}_tx where id = 3;
EOF
then
    if grep -q 'division by zero' "$TMP/err" && grep -q 'current transaction is aborted' "$TMP/err" \
        && [[ "$(cat "$TMP/out")" == "continued|0" ]]; then
        report tx_error_rollback pass ""
    else
        report tx_error_rollback fail "out '$(cat "$TMP/out")' err '$(head -c 200 "$TMP/err")'"
    fi
else
    report tx_error_rollback fail "psql failed: $(head -c 300 "$TMP/err")"
fi

cols="i2, i4, i8, n, f8, t, b, bo, d, ts, iv, u, j, ia, ta"
want1='12345|-2147483648|9007199254740993|12345678901234567890.123456789|3.25|héllo "wörld" \ '"'"'q'"'"' ☃|\x00ff10275c|t|2024-02-29|2024-02-29 12:34:56.789+00|1 day 02:03:04.5|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|{"a": [1, 2.5, {"b": null}], "s": "x"}|{1,NULL,3}|{"a b",c,NULL,"q\"x"}'
check types_text "$want1
NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL" prefer -P null=NULL -F '|' \
    -c "insert into ${P}_types (id, $cols) values (1, 12345, -2147483648, 9007199254740993,
        12345678901234567890.123456789, 3.25, 'héllo \"wörld\" \\ ''q'' ☃', '\\x00ff10275c', true,
        '2024-02-29', '2024-02-29 12:34:56.789+00', '1 day 02:03:04.5',
        'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"s\": \"x\", \"a\": [1, 2.5, {\"b\": null}]}',
        '{1,NULL,3}', '{\"a b\",c,NULL,\"q\\\"x\"}'), (2, $(printf 'NULL,%.0s' {1..14})NULL)" \
    -c "select $cols from ${P}_types order by id"
report types_binary n/a "psql reads every result in text format"

check big_result "50000|1250025000|5000" prefer \
    -c "select count(*), sum(g), count(*) filter (where v like '%0') from (select g, 'row ' || g as v from generate_series(1, 50000) g) s"
# The same rows streamed to psql, counted here.
if q prefer -c "select g, 'row ' || g from generate_series(1, 50000) g" && [[ "$(wc -l <"$TMP/out")" == 50000 && "$(tail -n 1 "$TMP/out")" == "50000|row 50000" ]]; then :; else
    report big_result fail "streamed 50000 rows: got $(wc -l <"$TMP/out") lines"; fi

# Cancel: psql sends a CancelRequest on SIGINT.
start=$SECONDS
# Wait until psql has logged in and sent the query before interrupting it.
timeout "$T" psql -X -At "$BASE sslmode=prefer" -c "select 'started'" -c "select pg_sleep(60)" >"$TMP/out" 2>"$TMP/err" &
pid=$!
for (( i = 0; i < 100; i++ )); do grep -q started "$TMP/out" && break; sleep 0.1; done
sleep 0.5
kill -INT "$pid"
wait "$pid"
if grep -q 'canceling statement due to user request' "$TMP/err" && (( SECONDS - start < 15 )); then
    check cancel "after cancel" prefer -c "select 'after cancel'"
else
    report cancel fail "after $((SECONDS - start))s: $(head -c 300 "$TMP/err")"
fi

seq 1 1000 | awk '{printf "%d\tcopy row %d\t%d.5\n", $1, $1, $1}' >"$TMP/copy.tsv"
check copy_in "1000|500500|501000.0" prefer -c "\\copy ${P}_copy from '$TMP/copy.tsv'" -c "select count(*), sum(id), sum(n) from ${P}_copy"
if q prefer -c "\\copy (select id, v, n from ${P}_copy order by id) to '$TMP/copy.out'" && cmp -s "$TMP/copy.tsv" "$TMP/copy.out"; then
    report copy_out pass ""
else
    report copy_out fail "COPY TO STDOUT differs from what was copied in: $(head -c 200 "$TMP/err")"
fi

# The sharded table: one INSERT a key, in one psql session.
seq 1 1000 | awk -v t="${P}_items" '{printf "insert into %s (id, v) values (%d, '\''item %d'\'');\n", t, $1 * 7919, $1}' >"$TMP/ins.sql"
if q prefer -q -f "$TMP/ins.sql"; then report shard_insert pass ""; else report shard_insert fail "$(head -c 300 "$TMP/err")"; fi
seq 1 1000 | awk -v t="${P}_items" '{printf "select v from %s where id = %d;\n", t, $1 * 7919}' >"$TMP/sel.sql"
if q prefer -f "$TMP/sel.sql" && [[ "$(cat "$TMP/out")" == "$(seq 1 1000 | sed 's/^/item /')" ]]; then
    report shard_read pass ""
else
    report shard_read fail "$(head -c 300 "$TMP/err") $(diff <(seq 1 1000 | sed 's/^/item /') "$TMP/out" | head -c 200)"
fi
check shard_count "1000|3963459500" prefer -c "select count(*), sum(id) from ${P}_items"
check shard_order_limit "7919000|item 1000
7911081|item 999
7903162|item 998" prefer -F '|' -c "select id, v from ${P}_items order by id desc limit 3"

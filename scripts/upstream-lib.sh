# upstream-lib.sh - what scripts/upstream-*.sh share: a one-shard cluster per
# mode (direct, transaction or session pooling through shardwire), the
# failing test ids of each run, and the comparison of each proxy mode with
# the direct run. Sourced, not run; the sourcing script sets PROG, ROOT and
# OUT, and names its files "$OUT/<suite>-<mode>.*".

cleanup=()
# shellcheck disable=SC2154
trap 'for c in "${cleanup[@]}"; do eval "$c" || true; done' EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Start the cluster of one mode: sets MODE_DIR, MODE_BASE (the shard's own
# port, for set-up as app) and MODE_PORT (the port the suite runs against).
start_mode() {   # suite mode
    local suite=$1 mode=$2 proxy
    MODE_DIR="$OUT/$suite-cluster-$mode"
    MODE_BASE=$(free_port)
    proxy=$(free_port)
    "$ROOT/scripts/cluster.sh" up --dir "$MODE_DIR" --shards 1 --replicas 0 \
        --port "$MODE_BASE" --proxy-port "$proxy" --proxy >"$OUT/$suite-$mode.cluster.log" 2>&1
    cleanup+=("'$ROOT/scripts/cluster.sh' down --dir '$MODE_DIR' --purge >/dev/null 2>&1")
    case "$mode" in
        direct) MODE_PORT=$MODE_BASE ;;
        transaction) MODE_PORT=$proxy ;;
        session)
            # A second proxy on the same servers, the database in session
            # pooling.
            local http conf="$MODE_DIR/session.toml" pid
            MODE_PORT=$(free_port)
            http=$(free_port)
            sed -e 's/^\[\[databases\]\]$/[[databases]]\npool_mode = "session"/' \
                -e "s/^listen = .*/listen = \"127.0.0.1:$MODE_PORT\"/" \
                -e "s/^http_listen = .*/http_listen = \"127.0.0.1:$http\"/" \
                "$MODE_DIR/shardwire.toml" >"$conf"
            "$ROOT/target/release/shardwire" serve --config "$conf" >"$OUT/$suite-session.proxy.log" 2>&1 &
            pid=$!
            cleanup+=("kill $pid")
            for _ in $(seq 100); do
                (exec 3<>"/dev/tcp/127.0.0.1/$MODE_PORT") 2>/dev/null && break
                sleep 0.1
            done ;;
        *) echo "$PROG: unknown mode $mode" >&2; exit 2 ;;
    esac
}

# After a mode's pytest run (its output in "$OUT/<suite>-<mode>.log"): the
# failing test ids, the summary line, and the cluster stopped.
finish_mode() {   # suite mode
    local suite=$1 mode=$2
    # "FAILED <id> - <message>": test ids may hold spaces (parameters).
    grep -E '^(FAILED|ERROR) ' "$OUT/$suite-$mode.log" | sed -E 's/^(FAILED|ERROR) //; s/ - .*$//' \
        | sort -u >"$OUT/$suite-$mode.failed" || true
    echo "$PROG: $mode: $(tail -1 "$OUT/$suite-$mode.log")"
    "$ROOT/scripts/cluster.sh" down --dir "$MODE_DIR" --purge >/dev/null 2>&1 || true
}

# Each proxy mode's failing tests against the direct run's.
compare_modes() {   # suite modes...
    local suite=$1 m
    shift
    [[ -f "$OUT/$suite-direct.failed" ]] || return 0
    for m in "$@"; do
        [[ "$m" == direct ]] && continue
        echo "== $m: failing through shardwire, not directly:"
        comm -13 "$OUT/$suite-direct.failed" "$OUT/$suite-$m.failed" || true
        echo "== $m: failing directly, not through shardwire:"
        comm -23 "$OUT/$suite-direct.failed" "$OUT/$suite-$m.failed" || true
    done
}

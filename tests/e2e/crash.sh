#!/usr/bin/env bash
# Crash points: a workload of writes, appends, renames (files and
# directories, over existing targets too), unlinks, mkdir/rmdir and fsyncs
# runs on a volume reached through a fault-injecting proxy
# (tests/tools/fault-proxy.py); the daemon is killed with SIGKILL at a
# random moment — 20 times on a healthy store, then after the proxy started
# holding every request, failing every PUT, or losing the answers to
# metadata PUTs. After each crash the cache directory is wiped and the
# volume mounted as on a fresh host: the tree must be a state the workload
# actually passed through, at or after its last fsync that returned
# (tests/e2e/crashload.py checks it against a model), and fsck must find
# nothing wrong.
#
# Usage: E2E_URL=s3://... E2E_ENDPOINT=http://... bash tests/e2e/crash.sh
# (an S3 endpoint is needed: the proxy speaks HTTP). CRASH_POINTS (default
# 20) sets the number of plain kill -9 points.
# shellcheck disable=SC2317 # functions run through `check`
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init crash

KEY=$WORK/key
LOAD=$E2E_DIR/crashload.py
PROXY_TOOL=$(cd "$E2E_DIR/../tools" && pwd)/fault-proxy.py

if [[ $E2E_URL != s3://* || -z ${E2E_ENDPOINT:-} ]]; then
    abort "the crash suite needs an S3 endpoint (E2E_URL=s3://..., E2E_ENDPOINT=...)"
fi
UPSTREAM=${E2E_ENDPOINT#http://}
PROXY_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PROXY=http://127.0.0.1:$PROXY_PORT
# Everything below reaches the store through the proxy.
E2E_ENDPOINT=$PROXY

start_proxy() {
    sv_keygen "$KEY" >/dev/null
    python3 "$PROXY_TOOL" "$PROXY_PORT" "$UPSTREAM" >"$WORK/proxy.out" 2>"$WORK/logs/proxy.err" &
    echo $! >>"$WORK/pids"
    for _ in $(seq 100); do
        grep -q ready "$WORK/proxy.out" && return 0
        sleep 0.1
    done
    echo "the fault proxy did not start"
    return 1
}

fault() { # QUERY (mode=...&...)
    curl -fsS "$PROXY/__fault?$1" >/dev/null
}

# A number in [LOW, HIGH) drawn from seed N: the run is reproducible.
pick() { # N LOW HIGH
    python3 -c "import random,sys; r=random.Random(int(sys.argv[1])); print(round(r.uniform(float(sys.argv[2]), float(sys.argv[3])), 2))" "$@"
}

sv() { # SUBCOMMAND URL ARGS...
    local opts
    mapfile -t opts < <(s3_opts "$2")
    timeout 300 "$S3VAULT" "$@" --key-file "$KEY" "${opts[@]}"
}

# crash_point N [FAULT]: one workload, killed at a random moment (after
# FAULT was set on the proxy, if given), checked from a fresh host.
crash_point() {
    local n=$1 fault=${2:-} url mp=$WORK/mnt-$1 cache=$WORK/cache-$1 load pid out rc=0
    url=$(vol_url "crash$n")
    sv init "$url" >/dev/null
    sv_mount "$url" "$mp" "$cache" --key-file "$KEY" --metadata-interval 1
    python3 "$LOAD" run "$n" "$mp" "$WORK/load-$n.log" 2>"$WORK/load-$n.err" &
    load=$!
    sleep "$(pick "$n" 0.5 4)"
    if [[ -n $fault ]]; then
        fault "$fault"
        sleep "$(pick "$((n + 1000))" 0.2 2)"
    fi
    pid=$(daemon_pids "$mp")
    kill -KILL "$pid"
    wait "$load" || true
    force_unmount "$mp"
    fault mode=pass
    echo "workload: $(grep -c '^E' "$WORK/load-$n.log") operations done, $(grep -c '^F' "$WORK/load-$n.log") fsyncs returned"
    rm -rf "$cache"
    sv_mount "$url" "$WORK/fresh-$n" "$WORK/fresh-cache-$n" --key-file "$KEY" -o ro
    python3 "$LOAD" check "$n" "$WORK/load-$n.log" "$WORK/fresh-$n" || rc=$?
    sv_umount "$WORK/fresh-$n"
    ((rc == 0)) || return 1
    out=$(sv fsck "$url") || rc=$?
    echo "$out"
    ((rc == 0)) || { echo "fsck exit $rc"; return 1; }
}

require "fault proxy" start_proxy
for n in $(seq "${CRASH_POINTS:-20}"); do
    check "kill -9 at a random point ($n)" crash_point "$n"
done
check "kill -9 while the store holds every request" crash_point 101 "mode=drop"
check "kill -9 while the store holds every request (2)" crash_point 102 "mode=drop"
check "kill -9 while every PUT fails" crash_point 103 "mode=fail&method=PUT"
check "kill -9 while metadata PUTs lose their answers" crash_point 104 "mode=cut-after&method=PUT&path=/meta/"
check "kill -9 while requests are cut before reaching the store" crash_point 105 "mode=cut"
check "kill -9 while the store is slow" crash_point 106 "mode=delay&ms=1500"
e2e_finish

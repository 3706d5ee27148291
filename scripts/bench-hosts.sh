#!/usr/bin/env bash
# Metadata operations on 1, 2 and 3 hosts writing one volume whose metadata
# is in PostgreSQL, beside an embedded volume, in one run (issue 17's
# benchmark; not run by CI). Each "host" is a mount with its own cache
# directory on this machine; each works in a directory of its own, as
# mdtest's unique-directory mode does, and all start together. Data goes
# to a local directory store: what is measured is the metadata path.
#
# Prints one markdown table: aggregate ops/s per operation (the hosts'
# total operations over the slowest host's time), the time one operation
# took on each host meanwhile, and the untar times; with 2 hosts, how long
# after a chmod on one the other shows it in an fstat of the open file.
#
# Usage: scripts/bench-hosts.sh        (builds nothing: run cargo build --release first)
#   BENCH_META_N   files per host for create/stat/rename/delete (default 2000)
#   BENCH_HOSTS    host counts to run (default "1 2 3")
#   BENCH_UNTAR_N  small files in the untar workload, split among the hosts (default 3000)
#   BENCH_LAG_N    chmods on one of 2 hosts timed until the other shows them (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."

S3VAULT=${S3VAULT:-$PWD/target/release/s3vault}
HELPER=$PWD/scripts/bench-helper.py
META_N=${BENCH_META_N:-2000}
HOSTS=${BENCH_HOSTS:-1 2 3}
UNTAR_N=${BENCH_UNTAR_N:-3000}
LAG_N=${BENCH_LAG_N:-20}
PG_BINS=(/usr/lib/postgresql/*/bin)
PG_BIN=${PG_BINS[-1]}
[[ -x $S3VAULT ]] || {
    echo "no $S3VAULT: run cargo build --release first" >&2
    exit 2
}
[[ -x $PG_BIN/postgres ]] || {
    echo "PostgreSQL is not installed (apt-get install postgresql)" >&2
    exit 2
}

WORK=$(mktemp -d /tmp/s3vault-bench-hosts.XXXXXX)
chmod 711 "$WORK"
MOUNTS=()
PG_PID=""
cleanup() {
    local mp
    for mp in "${MOUNTS[@]}"; do
        mountpoint -q "$mp" && { "$S3VAULT" umount "$mp" >/dev/null 2>&1 || umount -l "$mp"; }
    done
    [[ -z $PG_PID ]] || kill -INT "$PG_PID" 2>/dev/null || true
    [[ -z $PG_PID ]] || while kill -0 "$PG_PID" 2>/dev/null; do sleep 0.1; done
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

log() { echo "=== $(date +%T) $*" >&2; }

# A throwaway cluster as the postgres user (initdb refuses root).
mkdir "$WORK/pg"
chown postgres: "$WORK/pg"
PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }
as_postgres "$PG_BIN/initdb" -D "$WORK/pg/data" -U bench -A trust --no-sync >"$WORK/initdb.log" 2>&1
# Not through the function: `&` would put a subshell between us and the
# server, and the pid we stop at the end must be the server's.
setpriv --reuid=postgres --regid=postgres --init-groups -- "$PG_BIN/postgres" -D "$WORK/pg/data" -p "$PG_PORT" -k "$WORK/pg" \
    -c listen_addresses=127.0.0.1 >"$WORK/postgres.log" 2>&1 &
PG_PID=$!
for _ in $(seq 100); do
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
    sleep 0.1
done
DB=postgresql://bench@127.0.0.1:$PG_PORT/postgres
log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on port $PG_PORT (fsync on, as in production)"

"$S3VAULT" keygen "$WORK/key" >/dev/null
mkdir -p "$WORK/tar-src"
python3 "$HELPER" tree "$WORK/tar-src" "$UNTAR_N"

RESULTS=$WORK/results
: >"$RESULTS"

# volume NAME ARGS...: a new volume in a local directory store.
volume() {
    local name=$1
    shift
    "$S3VAULT" init "file://$WORK/store-$name" --key-file "$WORK/key" "$@" >/dev/null
    echo "file://$WORK/store-$name"
}

mount_host() { # URL MP CACHE
    mkdir -p "$2" "$3"
    MOUNTS+=("$2")
    "$S3VAULT" mount "$1" "$2" --cache-dir "$3" --key-file "$WORK/key" >/dev/null
}

# run_hosts LABEL N MP...: the four operations, N hosts at once each in its
# own directory; one line per operation into $RESULTS.
run_hosts() {
    local label=$1 n=$2 op mp slowest total i
    shift 2
    local mps=("$@")
    i=0
    for mp in "${mps[@]}"; do
        mkdir "$mp/meta-$label-$i"
        i=$((i + 1))
    done
    for op in create stat rename delete; do
        local pids=()
        i=0
        for mp in "${mps[@]}"; do
            python3 "$HELPER" meta "$mp/meta-$label-$i" "$META_N" "$op" >"$WORK/t-$i" &
            pids+=($!)
            i=$((i + 1))
        done
        for pid in "${pids[@]}"; do wait "$pid"; done
        slowest=$(cat "$WORK"/t-* | sort -g | tail -n 1)
        total=$((META_N * n))
        printf '%s\t%s\t%s\t%s\n' "$label" "$op" "$total" "$slowest" >>"$RESULTS"
        rm -f "$WORK"/t-*
    done
}

# untar_hosts LABEL MP...: the tree split among the hosts, each extracting
# its share into its own directory at once (two GNU tars extracting into
# one tree race each other even on a local disk: one's mkdir of a
# directory the other just made is taken as a failure); then each host's
# sync.
untar_hosts() {
    local label=$1 t0 i=0 mp
    shift
    local mps=("$@") pids=()
    t0=$(date +%s%N)
    for mp in "${mps[@]}"; do
        (
            cd "$WORK/tar-src"
            find . -type f | awk -v k=${#mps[@]} -v i=$i 'NR % k == i' |
                tar -cf - -T - | tar -C "$(mkdir "$mp/untar-$label-$i" && echo "$mp/untar-$label-$i")" -xf -
            sync -f "$mp/untar-$label-$i"
        ) &
        pids+=($!)
        i=$((i + 1))
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    printf '%s\tuntar\t%s\t%s\n' "$label" "$UNTAR_N" "$((($(date +%s%N) - t0) / 1000000))e-3" >>"$RESULTS"
}

log "embedded volume, one host"
url=$(volume embedded)
mount_host "$url" "$WORK/mnt-e" "$WORK/cache-e"
run_hosts embedded 1 "$WORK/mnt-e"
untar_hosts embedded "$WORK/mnt-e"
"$S3VAULT" umount "$WORK/mnt-e" >/dev/null

for n in $HOSTS; do
    log "PostgreSQL volume, $n host(s)"
    url=$(volume "pg$n" --metadata "$DB")
    mps=()
    for h in $(seq "$n"); do
        mount_host "$url" "$WORK/mnt-$n-$h" "$WORK/cache-$n-$h"
        mps+=("$WORK/mnt-$n-$h")
    done
    run_hosts "pg-$n" "$n" "${mps[@]}"
    untar_hosts "pg-$n" "${mps[@]}"
    if ((n == 2)); then
        read -r median worst < <(python3 "$HELPER" lag "${mps[0]}/lag" "${mps[1]}/lag" "$LAG_N")
        LAG="$median ms median, $worst ms worst"
    fi
    for mp in "${mps[@]}"; do "$S3VAULT" umount "$mp" >/dev/null; done
done

echo
echo "Metadata: $META_N files per host, each host in its own directory; untar: $UNTAR_N files of 1-8 KiB."
if [[ -n ${LAG:-} ]]; then
    echo "A chmod on one host shows in an fstat of the open file on another after: $LAG ($LAG_N chmods)."
fi
echo
python3 - "$RESULTS" <<'EOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
labels = list(dict.fromkeys(r[0] for r in rows))
ops = ["create", "stat", "rename", "delete"]
res = {(r[0], r[1]): (int(r[2]), float(r[3])) for r in rows}
print("| volume | " + " | ".join(f"{o} ops/s" for o in ops) + " | " +
      " | ".join(f"{o} ms/op per host" for o in ops) + " | untar s |")
print("| --- " * (2 * len(ops) + 2) + "|")
for label in labels:
    cells = []
    for o in ops:
        n, s = res[(label, o)]
        cells.append(f"{n / s:,.0f}")
    hosts = 1 if label == "embedded" else int(label.split("-")[1])
    for o in ops:
        n, s = res[(label, o)]
        cells.append(f"{s * 1000 / (n / hosts):.2f}")
    cells.append(f"{res[(label, 'untar')][1]:.1f}")
    name = "embedded (SQLite)" if label == "embedded" else f"PostgreSQL, {hosts} host{'s' if hosts > 1 else ''}"
    print(f"| {name} | " + " | ".join(cells) + " |")
EOF

#!/usr/bin/env bash
# s3vault against anchor filesystems, side by side, in one run.
#
# Contenders (all on the same machine and disk):
#   s3vault       this repo's binary, over s3s-fs
#   rclone-crypt  rclone s3 + crypt remote, --vfs-cache-mode full (write-back)
#   s3fs          s3fs-fuse with its local cache
#   bindfs        plain FUSE passthrough over a local directory (the FUSE limit, no S3)
# The anchors are mounted with the scripts in $ANCHORS (/work/shared/anchors;
# see its README.md). The S3 server is s3s-fs 0.14.1 on a free 127.0.0.1 port,
# with its data in the work dir; S3 requests are counted from its debug log, or
# by scripts/s3-count-proxy.py between the clients and it (BENCH_COUNT).
#
# Workloads, in this order, for each contender:
#   seq-write-close    dd bs=1M of BENCH_SIZE_MB MiB of random data: until close returns
#   seq-write-durable  ... until the data is in the S3 server: s3vault and s3fs: fsync of
#                      the file after close (s3fs uploads at close already); rclone:
#                      umount-rclone.sh (waits for its upload queue, then unmounts);
#                      bindfs: n/a (local)
#   seq-read-cold      unmount, drop the kernel page cache, remount with an empty local
#                      cache, dd the file to /dev/null (the data comes from S3)
#   seq-read-warm      the same read again right away (then checked against the source)
#   randread-4k        fio psync 4 KiB random reads of a BENCH_FIO_SIZE_MB file, --direct=0,
#   randwrite-4k       BENCH_FIO_RUNTIME s each (time_based); page cache dropped before
#                      the reads. IOPS as fio reports them (the close afterwards, which is
#                      when s3fs uploads, counts in the seconds column only)
#   meta-create/stat/rename/delete  BENCH_META_N empty files in one directory, ops/s
#                      (page cache, dentries and inodes dropped before the stats)
#   untar+sync         tar -x of a tarball of BENCH_TAR_FILES small files (1-8 KiB, ~sqrt(N)
#                      directories, generated once; or BENCH_TARBALL) then sync -f, seconds
#   untar+umount       ... until the contender's unmount returned (durable in S3), seconds
#   tree-untar+umount  a real tree (BENCH_TREE, default /usr/include: thousands of headers of
#                      every size) untarred, synced and unmounted (durable in S3), seconds;
#                      the note gives data PUTs per file where requests are counted
#   tree-stat          remounted with an empty cache and caches dropped: lstat of every
#                      entry (find -ls, what `git status` or a backup scan does), seconds
#   tree-read          then every file read once (tar -c to /dev/null), seconds; the copy is
#                      compared with the source afterwards (untimed)
#
# Each row also gets: times faster than rclone crypt and than bindfs (>1: faster;
# for seconds, the inverse ratio), the peak RSS of the FUSE daemon during the row
# (VmHWM reset through /proc/PID/clear_refs at the start, polled every 0.5 s),
# and the S3 requests of the row by kind (GET, PUT incl. multipart, DELETE, HEAD,
# LIST, OTHER); with BENCH_COUNT=proxy also bytes up/down and the proxy's CPU use
# (80 % or more would mean the proxy limits the row; it is flagged in the note).
# Rows measured from the same start (seq-write-close/-durable, untar+sync/+umount)
# count cumulatively: the durable row's requests include the close row's. Unmount times include the
# anchors' global `sync`, so other activity on the machine can lengthen them.
#
# A contender failing a workload records "failed (last line of its log)" for the
# rows of that workload and the run goes on; limits of s3s-fs that make a tool fail
# are reported as "n/a (reason)" where they are known (s3fs mkdir).
#
# Usage (as root, FUSE available):  scripts/bench.sh
# Environment:
#   S3VAULT             binary (default target/release/s3vault of this repo)
#   S3VAULT_MOUNT_FLAGS extra flags for `s3vault mount` (word-split)
#   S3VAULT_INIT_FLAGS  extra flags for `s3vault init` (word-split), e.g. "--chunk-size 16K"
#   BENCH_CONTENDERS    default "s3vault rclone-crypt s3fs bindfs"
#   BENCH_WORKLOADS     default "seq read fio meta untar tree" (read needs seq's file)
#   BENCH_SIZE_MB       sequential file size in MiB (default 1024)
#   BENCH_META_N        files for the metadata workload (default 5000)
#   BENCH_TAR_FILES     files in the generated tarball (default 10000)
#   BENCH_TARBALL       use this tarball instead of a generated one
#   BENCH_TREE          directory the tree workload copies (default /usr/include)
#   BENCH_TREE_WAIT     seconds the tree's untar, and its unmount, may take (default 600)
#   BENCH_FIO_SIZE_MB   fio file size (default 256)
#   BENCH_FIO_RUNTIME   seconds per fio job (default 20)
#   BENCH_WORK          work dir (default a new /tmp/s3vault-bench.XXXXXX)
#   BENCH_CSV           CSV output (default $BENCH_WORK/bench-results.csv)
#   BENCH_OUT           directory to copy the CSV and the markdown into
#   BENCH_KEEP=1        keep the S3 data, caches and logs (else only logs and results stay)
#   BENCH_COUNT         how S3 requests are counted:
#                       log (default): the clients talk to s3s-fs directly and the operations
#                         are counted from its debug log (RUST_LOG=s3s::ops=debug: one
#                         "resolved route, op: X" line per request); no extra hop
#                       proxy: through scripts/s3-count-proxy.py (also counts bytes up/down and
#                         its own CPU); same counts, but on this 2-core machine the extra hop
#                         cost cold reads ~10-25 % (rclone 124 vs 154 MiB/s, s3vault 19-24 vs
#                         24-31 MiB/s in back-to-back runs), so it is not the default
#                       none: no counting
#   BENCH_STEP_TIMEOUT  seconds any single step may take (default 1800)
#   BENCH_S3FS_OPTS     extra s3fs -o options, leading comma (default ",retries=1",
#                       so that requests s3s-fs fails do not stall for minutes)
#   ANCHORS             anchor scripts (default /work/shared/anchors)
#   S3VAULT_TOOLS       where s3s-fs is installed (default ~/.cache/s3vault-tools)
# Output: markdown tables on stdout, progress on stderr, the CSV; the work dir
# keeps the per-workload logs.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
HELPER=$REPO/scripts/bench-helper.py
PROXY_PY=$REPO/scripts/s3-count-proxy.py
S3VAULT=${S3VAULT:-$REPO/target/release/s3vault}
S3VAULT_MOUNT_FLAGS=${S3VAULT_MOUNT_FLAGS:-}
S3VAULT_INIT_FLAGS=${S3VAULT_INIT_FLAGS:-}
TREE=${BENCH_TREE:-/usr/include}
ANCHORS=${ANCHORS:-/work/shared/anchors}
TOOLS=${S3VAULT_TOOLS:-$HOME/.cache/s3vault-tools}
S3S_FS_VERSION=0.14.1
CONTENDERS=${BENCH_CONTENDERS:-s3vault rclone-crypt s3fs bindfs}
SIZE_MB=${BENCH_SIZE_MB:-1024}
META_N=${BENCH_META_N:-5000}
TAR_FILES=${BENCH_TAR_FILES:-10000}
TARBALL=${BENCH_TARBALL:-}
FIO_SIZE_MB=${BENCH_FIO_SIZE_MB:-256}
FIO_RUNTIME=${BENCH_FIO_RUNTIME:-20}
KEEP=${BENCH_KEEP:-0}
COUNT=${BENCH_COUNT:-log}
case $COUNT in proxy | log | none) ;; *) echo "BENCH_COUNT must be proxy, log or none" >&2; exit 2 ;; esac
STEP_TIMEOUT=${BENCH_STEP_TIMEOUT:-1800}
TREE_WAIT=${BENCH_TREE_WAIT:-600}
# s3fs retries a failed request 5 times by default, with pauses: its mkdir,
# which s3s-fs fails with a 500, then takes ~3 minutes instead of ~5 s.
# Retries only matter for failed requests; a local server fails none of the
# requests of the other workloads.
S3FS_OPTS=${BENCH_S3FS_OPTS-,retries=1}

export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=testtesttest AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
export S3_ACCESS_KEY=test S3_SECRET_KEY=testtesttest S3_REGION=us-east-1
# nothing of ours goes through an HTTP proxy
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost

WORK=${BENCH_WORK:-}
S3S_PID=""
PROXY_PID=""
WL_PID=""
EP=""
SERVER_EP=""
PROXY_PORT=""

# fd 3: the terminal's stderr, for progress lines from workloads whose own
# output goes to log files. Closed for every daemon we start (3>&-), so that
# a daemon never holds a pipe of the caller open.
exec 3>&2
log() { echo "[bench $(date +%H:%M:%S)] $*" >&3; }

now() { date +%s.%N; }
# sub A B: B - A
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------------------
# Tools

APT_UPDATED=0
apt_install() {
    if ((!APT_UPDATED)); then
        apt-get update -qq >&3 || true
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_tools() {
    local missing=()
    command -v fusermount3 >/dev/null || missing+=(fuse3)
    command -v fio >/dev/null || missing+=(fio)
    command -v bc >/dev/null || missing+=(bc)
    command -v curl >/dev/null || missing+=(curl)
    command -v python3 >/dev/null || missing+=(python3 python3-venv)
    [[ " $CONTENDERS " != *" rclone-crypt "* ]] || command -v rclone >/dev/null || missing+=(rclone)
    [[ " $CONTENDERS " != *" s3fs "* ]] || command -v s3fs >/dev/null || missing+=(s3fs)
    [[ " $CONTENDERS " != *" bindfs "* ]] || command -v bindfs >/dev/null || missing+=(bindfs)
    if ((${#missing[@]})); then
        log "apt-get install ${missing[*]}"
        apt_install "${missing[@]}"
    fi
    [[ -e /dev/fuse ]] || modprobe fuse 2>/dev/null || true
    [[ -e /dev/fuse ]] || { log "no /dev/fuse: FUSE is not available"; exit 1; }
    # boto3 for the anchors' mk-bucket.py (a venv when the system pip refuses)
    if [[ -x $TOOLS/venv/bin/python3 ]]; then export PATH=$TOOLS/venv/bin:$PATH; fi
    if ! python3 -c 'import boto3' 2>/dev/null; then
        log "pip install boto3"
        if ! python3 -m pip install -q boto3 2>/dev/null; then
            python3 -m venv "$TOOLS/venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$TOOLS/venv"; }
            "$TOOLS/venv/bin/python3" -m pip install -q boto3
            export PATH=$TOOLS/venv/bin:$PATH
        fi
    fi
    if ! [[ -x $TOOLS/bin/s3s-fs ]] || ! grep -q "^\"s3s-fs $S3S_FS_VERSION " "$TOOLS/.crates.toml" 2>/dev/null; then
        log "cargo install s3s-fs@$S3S_FS_VERSION (once; cached in $TOOLS)"
        mkdir -p "$TOOLS"
        flock /tmp/s3vault-cargo.lock cargo install --locked --quiet "s3s-fs@$S3S_FS_VERSION" \
            --root "$TOOLS" --features binary
    fi
}

# ---------------------------------------------------------------------------
# S3 server and counting proxy

start_s3() {
    local port
    port=$(free_port)
    mkdir -p "$WORK/s3s-root"
    local rust_log=${RUST_LOG:-}
    # log mode: s3s logs every request's resolved operation at debug level
    # (and s3s-fs's internal errors, which name_too_long counts)
    [[ $COUNT != log ]] || rust_log="s3s::ops=debug,s3s::ops::signature=info,s3s_fs_internal_error=error"
    RUST_LOG=$rust_log "$TOOLS/bin/s3s-fs" --host 127.0.0.1 --port "$port" \
        --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" \
        "$WORK/s3s-root" >"$WORK/logs/s3s-fs.log" 2>&1 3>&- &
    S3S_PID=$!
    SERVER_EP=http://127.0.0.1:$port
    local ok=0
    for _ in $(seq 100); do
        if curl -s -o /dev/null --max-time 2 "$SERVER_EP/"; then ok=1; break; fi
        kill -0 "$S3S_PID" 2>/dev/null || break
        sleep 0.1
    done
    ((ok)) || { log "s3s-fs did not come up; its log:"; tail -n 20 "$WORK/logs/s3s-fs.log" >&3; exit 1; }
    log "s3s-fs $S3S_FS_VERSION at $SERVER_EP (pid $S3S_PID, data in $WORK/s3s-root)"
    if [[ $COUNT == proxy ]]; then
        rm -f "$WORK/proxy-port"
        python3 "$PROXY_PY" 0 "127.0.0.1:$port" "$WORK/proxy-port" >"$WORK/logs/proxy.log" 2>&1 3>&- &
        PROXY_PID=$!
        for _ in $(seq 100); do [[ -s $WORK/proxy-port ]] && break; sleep 0.1; done
        PROXY_PORT=$(cat "$WORK/proxy-port")
        EP=http://127.0.0.1:$PROXY_PORT
        curl -sf --max-time 5 "$EP/__counts" >/dev/null || { log "counting proxy not answering"; exit 1; }
        log "counting proxy at $EP (pid $PROXY_PID)"
    else
        EP=$SERVER_EP
        log "BENCH_COUNT=$COUNT: the clients talk to s3s-fs directly"
    fi
}

# snap: a snapshot of the proxy's counters in a new file; prints its name
snap() {
    local f
    f=$WORK/tmp/counts.$(date +%s%N).$RANDOM
    case $COUNT in
        proxy) curl -s --max-time 10 "$EP/__counts" >"$f" 2>/dev/null || rm -f "$f" ;;
        log) python3 "$HELPER" logcounts "$WORK/logs/s3s-fs.log" "$WORK/state/logcounts" >"$f" 2>/dev/null || rm -f "$f" ;;
    esac
    echo "$f"
}

bucket() { echo "bench-$1"; }

# ---------------------------------------------------------------------------
# Mounts

# daemon_pid MP: the FUSE daemon serving MP (holds /dev/fuse, MP in its argv)
daemon_pid() {
    local mp=$1 pid cmd
    for pid in $(find /proc/[0-9]*/fd -maxdepth 1 -lname /dev/fuse 2>/dev/null | cut -d/ -f3 | sort -un); do
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
        case " $cmd " in *" $mp "* | *" $mp/ "*)
            echo "$pid"
            return 0
            ;;
        esac
    done
    return 0
}

mp_of() { echo "$WORK/mnt/$1"; }
cache_of() { cat "$WORK/state/$1.cache" 2>/dev/null || true; }

# c_mount C: mount contender C with a new, empty cache directory
c_mount() {
    local c=$1 mp n cache flags=()
    mp=$(mp_of "$c")
    n=$(($(cat "$WORK/state/$c.n" 2>/dev/null || echo 0) + 1))
    echo "$n" >"$WORK/state/$c.n"
    cache=$WORK/cache/$c-$n
    mkdir -p "$cache" "$mp" || return 1
    echo "$cache" >"$WORK/state/$c.cache"
    echo "$mp" >>"$WORK/mounts"
    echo "+ mount $c at $mp (cache $cache)"
    case $c in
        s3vault)
            # shellcheck disable=SC2206 # extra flags are word-split on purpose
            flags=($S3VAULT_MOUNT_FLAGS)
            timeout -k 5 300 "$S3VAULT" mount "s3://$(bucket "$c")/vol" "$mp" --cache-dir "$cache" \
                --key-file "$WORK/key" --endpoint "$EP" --region "$AWS_REGION" --path-style \
                "${flags[@]}" 3>&- || { tail -n 5 "$cache/s3vault.log" 2>/dev/null; return 1; }
            ;;
        rclone-crypt)
            ANCHOR_RC_PORT=$(free_port) timeout -k 5 300 "$ANCHORS/mount-rclone-crypt.sh" \
                "$EP" "$(bucket "$c")" "$mp" "$cache" 3>&- || return 1
            ;;
        s3fs)
            S3FS_EXTRA_OPTS=$S3FS_OPTS timeout -k 5 300 "$ANCHORS/mount-s3fs.sh" "$EP" "$(bucket "$c")" "$mp" "$cache" 3>&- || return 1
            ;;
        bindfs)
            timeout -k 5 300 "$ANCHORS/mount-bindfs.sh" - "$WORK/bindfs-backing" "$mp" "$cache" 3>&- || return 1
            ;;
        *)
            echo "unknown contender $c"
            return 1
            ;;
    esac
    mountpoint -q "$mp" || { echo "$mp is not a mount point after mounting $c"; return 1; }
}

# c_umount C: the contender's own unmount, which returns once data is durable
# (s3vault umount; rclone: wait for the upload queue; others: sync, unmount, wait
# for the daemon to exit). Prints what it waited for.
c_umount() {
    local c=$1 mp
    mp=$(mp_of "$c")
    mountpoint -q "$mp" || return 0
    case $c in
        s3vault) timeout -k 5 "$STEP_TIMEOUT" "$S3VAULT" umount "$mp" 3>&- || return 1 ;;
        rclone-crypt)
            ANCHOR_UPLOAD_WAIT=$STEP_TIMEOUT UMOUNT_WAIT=$STEP_TIMEOUT timeout -k 5 $((STEP_TIMEOUT * 2)) \
                "$ANCHORS/umount-rclone.sh" "$mp" "$(cache_of "$c")" 3>&- || return 1
            ;;
        *) UMOUNT_WAIT=$STEP_TIMEOUT timeout -k 5 $((STEP_TIMEOUT + 60)) "$ANCHORS/umount-anchor.sh" "$mp" 3>&- || return 1 ;;
    esac
    if mountpoint -q "$mp"; then
        echo "$mp still mounted after unmounting $c"
        return 1
    fi
}

force_unmount() {
    local mp=$1 pid
    pid=$(daemon_pid "$mp")
    if timeout 10 mountpoint -q "$mp" 2>/dev/null || grep -qF " $mp " /proc/mounts; then
        fusermount3 -u "$mp" 2>/dev/null || fusermount3 -uz "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
    fi
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

ensure_mounted() {
    local c=$1 mp
    mp=$(mp_of "$c")
    if timeout 10 mountpoint -q "$mp"; then return 0; fi
    force_unmount "$mp"
    c_mount "$c"
}

# c_settle C FILE: untimed, between phases: let the contender finish the
# uploads of FILE it does in the background, so that they do not land in the
# next phase (rclone: its upload queue empty; s3vault, s3fs: fsync of FILE)
c_settle() {
    local c=$1 f=$2 port pending
    case $c in
        rclone-crypt)
            port=$(cat "$(cache_of "$c")/rc-port")
            for _ in $(seq $((STEP_TIMEOUT * 2))); do
                pending=$(curl -s --max-time 10 -X POST "http://127.0.0.1:$port/vfs/stats" | python3 -c '
import json, sys
d = json.load(sys.stdin).get("diskCache", {})
print(d.get("uploadsInProgress", 0) + d.get("uploadsQueued", 0))' 2>/dev/null || echo "?")
                [[ $pending != 0 ]] || return 0
                [[ $pending != "?" ]] || { echo "rclone rc not answering on port $port"; return 1; }
                sleep 0.5
            done
            echo "rclone uploads still pending after ${STEP_TIMEOUT}s"
            return 1
            ;;
        s3vault | s3fs) fsync_file "$f" ;;
    esac
}

DROP_NOTE=""
drop_caches() {
    sync
    if ! echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then
        DROP_NOTE="page cache NOT dropped (not root?)"
        echo "warning: cannot drop caches"
    fi
}

# ---------------------------------------------------------------------------
# Measuring: phase_begin ... phase_mark ROW ... [phase_mark ROW ...] phase_stop
# (run inside a workload subshell; rows go to $WORK/results.jsonl)

PH_T0="" PH_C0="" PH_DPID="" PH_RSS_OUT="" PH_RSS_PID=""
phase_begin() {
    local c=$1
    phase_stop
    PH_DPID=$(daemon_pid "$(mp_of "$c")")
    PH_RSS_OUT=$(mktemp "$WORK/tmp/rss.XXXXXX")
    echo 0 >"$PH_RSS_OUT"
    if [[ -n $PH_DPID ]]; then
        # 5: reset the peak RSS (VmHWM) to the current RSS
        echo 5 >"/proc/$PH_DPID/clear_refs" 2>/dev/null || true
        python3 "$HELPER" rss "$PH_DPID" "$PH_RSS_OUT" 3>&- &
        PH_RSS_PID=$!
        echo "$PH_RSS_PID" >>"$WORK/state/samplers"
    fi
    PH_C0=$(snap)
    PH_T0=$(now)
}

# phase_mark C ROW UNIT AMOUNT [NOTE] [ELAPSED]: one result row, measured from
# phase_begin (or ELAPSED seconds if given). UNIT MiB/s and ops/s: AMOUNT per
# second; s: the elapsed seconds; IOPS: AMOUNT as is.
phase_mark() {
    local c=$1 row=$2 unit=$3 amount=$4 note=${5:-} t1 el c1 val rss v pct
    t1=$(now)
    el=${6:-$(sub "$PH_T0" "$t1")}
    c1=$(snap)
    case $unit in
        s) val=$el ;;
        IOPS) val=$amount ;;
        *) val=$(awk -v a="$amount" -v t="$el" 'BEGIN { if (t > 0) printf "%.1f", a / t; else print "n/a" }') ;;
    esac
    rss=$(cat "$PH_RSS_OUT" 2>/dev/null || echo 0)
    if [[ -n $PH_DPID ]]; then
        v=$(awk '/^VmHWM:/ { print $2 }' "/proc/$PH_DPID/status" 2>/dev/null || true)
        if [[ -n $v ]] && ((v > rss)); then rss=$v; fi
    fi
    [[ -z $DROP_NOTE ]] || note="${note:+$note; }$DROP_NOTE"
    if [[ $COUNT == proxy && -s $PH_C0 && -s $c1 ]]; then
        pct=$(python3 -c 'import json,sys; a,b=(json.load(open(p)) for p in sys.argv[1:]); w=b["wall_s"]-a["wall_s"]; print(int(100*(b["cpu_s"]-a["cpu_s"])/w) if w>0 else 0)' "$PH_C0" "$c1" 2>/dev/null || echo 0)
        if ((pct >= 80)); then note="${note:+$note; }proxy CPU ${pct}%: the proxy may limit this row"; fi
    fi
    python3 "$HELPER" row "$WORK/results.jsonl" "$c" "$row" "$unit" "$val" "$el" "$rss" "$PH_C0" "$c1" "$note"
    log "$c $row: $val $unit (${el} s)${note:+ - $note}"
}

phase_stop() {
    if [[ -n $PH_RSS_PID ]]; then
        kill "$PH_RSS_PID" 2>/dev/null || true
        wait "$PH_RSS_PID" 2>/dev/null || true
        PH_RSS_PID=""
    fi
}

# emit C ROW UNIT VALUE NOTE: a row without a measurement (n/a, failed)
emit() {
    python3 "$HELPER" row "$WORK/results.jsonl" "$1" "$2" "$3" "$4" "" 0 - - "$5"
    log "$1 $2: $4${5:+ ($5)}"
}

have_row() {
    grep -qF "\"contender\": \"$1\", \"workload\": \"$2\"" "$WORK/results.jsonl" 2>/dev/null
}

# ---------------------------------------------------------------------------
# Workloads (each runs in a subshell with set -e; C is the contender)

fsync_file() { python3 "$HELPER" fsync "$1"; }

wl_setup() {
    local c=$1
    case $c in
        s3vault)
            [[ -x $S3VAULT ]] || { echo "s3vault binary not found at $S3VAULT"; return 1; }
            "$S3VAULT" keygen "$WORK/key" >/dev/null
            python3 "$ANCHORS/mk-bucket.py" "$SERVER_EP" "$(bucket "$c")"
            # shellcheck disable=SC2086 # extra flags are word-split on purpose
            "$S3VAULT" init "s3://$(bucket "$c")/vol" --key-file "$WORK/key" \
                --endpoint "$SERVER_EP" --region "$AWS_REGION" --path-style $S3VAULT_INIT_FLAGS
            ;;
        rclone-crypt | s3fs) python3 "$ANCHORS/mk-bucket.py" "$SERVER_EP" "$(bucket "$c")" ;;
        bindfs) mkdir -p "$WORK/bindfs-backing" ;;
    esac
    c_mount "$c"
}

wl_seq() {
    local c=$1 mp f
    mp=$(mp_of "$c")
    ensure_mounted "$c"
    f=$mp/seq.dat
    cat "$WORK/src.dat" >/dev/null # the source comes from the page cache
    phase_begin "$c"
    timeout -k 5 "$STEP_TIMEOUT" dd if="$WORK/src.dat" of="$f" bs=1M status=none
    phase_mark "$c" seq-write-close MiB/s "$SIZE_MB"
    case $c in
        s3vault)
            fsync_file "$f"
            phase_mark "$c" seq-write-durable MiB/s "$SIZE_MB" "fsync after close"
            ;;
        s3fs)
            fsync_file "$f"
            phase_mark "$c" seq-write-durable MiB/s "$SIZE_MB" "uploads at close; fsync after close"
            ;;
        rclone-crypt)
            c_umount "$c" | tee "$WORK/tmp/umount.out"
            phase_mark "$c" seq-write-durable MiB/s "$SIZE_MB" \
                "until umount-rclone.sh returned ($(grep -o 'upload wait: .*' "$WORK/tmp/umount.out" || true))"
            ;;
        *) emit "$c" seq-write-durable MiB/s n/a "local disk, no S3" ;;
    esac
    phase_stop
    local t0
    t0=$(now)
    c_umount "$c"
    log "$c: unmounted after the write in $(sub "$t0" "$(now)") s"
}

wl_read() {
    local c=$1 mp f size
    mp=$(mp_of "$c")
    if timeout 10 mountpoint -q "$mp"; then c_umount "$c"; fi
    drop_caches
    c_mount "$c"
    f=$mp/seq.dat
    size=$(stat -c %s "$f")
    if ((size != SIZE_MB * 1048576)); then
        echo "seq.dat has $size bytes, expected $((SIZE_MB * 1048576))"
        return 1
    fi
    phase_begin "$c"
    timeout -k 5 "$STEP_TIMEOUT" dd if="$f" of=/dev/null bs=1M status=none
    phase_mark "$c" seq-read-cold MiB/s "$SIZE_MB" "remounted with an empty cache, page cache dropped"
    phase_begin "$c"
    timeout -k 5 "$STEP_TIMEOUT" dd if="$f" of=/dev/null bs=1M status=none
    phase_mark "$c" seq-read-warm MiB/s "$SIZE_MB"
    phase_stop
    timeout -k 5 "$STEP_TIMEOUT" cmp "$WORK/src.dat" "$f"
    echo "contents match the source"
}

wl_fio() {
    local c=$1 mp f iops common
    mp=$(mp_of "$c")
    ensure_mounted "$c"
    f=$mp/fio.dat
    common=(--filename="$f" --size="${FIO_SIZE_MB}M" --ioengine=psync --direct=0 --fallocate=none)
    timeout -k 5 "$STEP_TIMEOUT" fio --name=layout "${common[@]}" --rw=write --bs=1M --end_fsync=1 \
        --output="$WORK/tmp/fio-$c-layout.txt"
    c_settle "$c" "$f"
    drop_caches
    phase_begin "$c"
    timeout -k 5 $((FIO_RUNTIME + STEP_TIMEOUT)) fio --name=randread "${common[@]}" --rw=randread --bs=4k \
        --runtime="$FIO_RUNTIME" --time_based --output-format=json --output="$WORK/tmp/fio-$c-randread.json"
    iops=$(python3 "$HELPER" fio-iops "$WORK/tmp/fio-$c-randread.json" read)
    phase_mark "$c" randread-4k IOPS "$iops" "page cache dropped before"
    phase_begin "$c"
    timeout -k 5 $((FIO_RUNTIME + STEP_TIMEOUT)) fio --name=randwrite "${common[@]}" --rw=randwrite --bs=4k \
        --runtime="$FIO_RUNTIME" --time_based --output-format=json --output="$WORK/tmp/fio-$c-randwrite.json"
    iops=$(python3 "$HELPER" fio-iops "$WORK/tmp/fio-$c-randwrite.json" write)
    phase_mark "$c" randwrite-4k IOPS "$iops" "seconds include the close"
    phase_stop
    c_settle "$c" "$f"
    rm -f "$f"
}

wl_meta() {
    local c=$1 mp d op el note="" err
    mp=$(mp_of "$c")
    ensure_mounted "$c"
    d=$mp/meta
    if ! err=$(mkdir "$d" 2>&1); then
        echo "$err"
        # s3s-fs answers 500 to a HEAD of a key that is also a directory, so s3fs's
        # mkdir fails there: measure in the mount root instead
        d=$mp
        note="in the mount root: mkdir failed (${err##*: })"
        [[ $c != s3fs ]] || note="$note; s3s-fs answers 500 to HEAD of a key that is also a directory"
    fi
    for op in create stat rename delete; do
        [[ $op != stat ]] || drop_caches
        phase_begin "$c"
        el=$(timeout -k 5 "$STEP_TIMEOUT" python3 "$HELPER" meta "$d" "$META_N" "$op")
        local n2=$note
        [[ $op != stat ]] || n2="${note:+$note; }after drop_caches"
        phase_mark "$c" "meta-$op" ops/s "$META_N" "$n2" "$el"
    done
    phase_stop
    [[ $d == "$mp" ]] || rmdir "$d"
}

# mkdir_or_na C DIR ROW...: makes DIR, or records the rows (seconds) as n/a
# with the reason and fails
mkdir_or_na() {
    local c=$1 d=$2 err why row
    shift 2
    err=$(mkdir "$d" 2>&1) && return 0
    echo "$err"
    why="mkdir failed: ${err##*: }"
    [[ $c != s3fs ]] || why="$why; s3s-fs answers 500 to HEAD of a key that is also a directory"
    for row in "$@"; do emit "$c" "$row" s n/a "$why"; done
    return 1
}

wl_untar() {
    local c=$1 mp d t0
    mp=$(mp_of "$c")
    ensure_mounted "$c"
    d=$mp/untar
    mkdir_or_na "$c" "$d" untar+sync untar+umount || return 0
    phase_begin "$c"
    timeout -k 5 "$STEP_TIMEOUT" tar -C "$d" -xf "$TARBALL"
    sync -f "$d"
    phase_mark "$c" untar+sync s "" "$TAR_DESC"
    c_umount "$c" | tee "$WORK/tmp/umount.out"
    local extra=""
    [[ $c != rclone-crypt ]] || extra="; $(grep -o 'upload wait: .*' "$WORK/tmp/umount.out" || true)"
    phase_mark "$c" untar+umount s "" "until the unmount returned$extra"
    phase_stop
}

# name_too_long: how many requests s3s-fs has failed with ENAMETOOLONG so far
name_too_long() {
    local n
    n=$(grep -c 'File name too long' "$WORK/logs/s3s-fs.log" 2>/dev/null) || true
    echo "${n:-0}"
}

wl_tree() {
    local c=$1 mp d puts files
    mp=$(mp_of "$c")
    ensure_mounted "$c"
    d=$mp/tree
    mkdir_or_na "$c" "$d" tree-untar+umount tree-stat tree-read || return 0
    files=$(tar -tvf "$TREE_TAR" | grep -c '^-')
    local refused0 refused trc=0 urc=0
    refused0=$(name_too_long)
    phase_begin "$c"
    # A contender whose uploads s3s-fs refuses retries them for ever and
    # slows to a crawl (rclone): the untar and the unmount are bounded here.
    timeout -k 5 "$TREE_WAIT" tar -C "$d" -xf "$TREE_TAR" || trc=$?
    timeout -k 5 "$TREE_WAIT" sync -f "$d" || trc=$?
    STEP_TIMEOUT=$TREE_WAIT c_umount "$c" >/dev/null || urc=$?
    refused=$(($(name_too_long) - refused0))
    if ((refused > 0)); then
        phase_stop
        local why="s3s-fs refused $refused PUTs (File name too long: it names a metadata file after the base64 of the whole key, so keys over about 150 bytes fail; $c's deep keys exceed it)"
        for row in tree-untar+umount tree-stat tree-read; do emit "$c" "$row" s n/a "$why"; done
        return 0
    fi
    ((trc == 0)) || return "$trc"
    ((urc == 0)) || return "$urc"
    phase_mark "$c" tree-untar+umount s "" "$TREE_DESC; until the unmount returned"
    phase_stop
    puts=$(python3 -c 'import json,sys
rows=[json.loads(l) for l in open(sys.argv[1])]
r=[x for x in rows if x.get("contender")==sys.argv[2] and x.get("workload")=="tree-untar+umount"]
print(r[-1].get("PUT","") if r else "")' "$WORK/results.jsonl" "$c" 2>/dev/null || true)
    [[ -z $puts ]] || echo "tree: $puts PUTs of every kind for $files files ($(python3 -c "print(round($puts / $files, 3))") per file)"
    drop_caches
    c_mount "$c"
    phase_begin "$c"
    timeout -k 5 "$STEP_TIMEOUT" find "$d" -ls >/dev/null
    phase_mark "$c" tree-stat s "" "find -ls of every entry; new cache, caches dropped"
    phase_stop
    phase_begin "$c"
    timeout -k 5 "$STEP_TIMEOUT" tar -C "$d" -cf - . | cat >/dev/null
    phase_mark "$c" tree-read s "" "every file read once (tar -c)"
    phase_stop
    timeout -k 5 "$STEP_TIMEOUT" diff -r --no-dereference "$TREE" "$d" >/dev/null
    echo "the tree matches $TREE"
}

# rows each workload records (run_workload reads them through ${!name})
# shellcheck disable=SC2034
ROWS_seq="seq-write-close:MiB/s seq-write-durable:MiB/s"
# shellcheck disable=SC2034
ROWS_read="seq-read-cold:MiB/s seq-read-warm:MiB/s"
# shellcheck disable=SC2034
ROWS_fio="randread-4k:IOPS randwrite-4k:IOPS"
# shellcheck disable=SC2034
ROWS_meta="meta-create:ops/s meta-stat:ops/s meta-rename:ops/s meta-delete:ops/s"
# shellcheck disable=SC2034
ROWS_untar="untar+sync:s untar+umount:s"
# shellcheck disable=SC2034
ROWS_tree="tree-untar+umount:s tree-stat:s tree-read:s"
WORKLOADS=${BENCH_WORKLOADS:-seq read fio meta untar tree}

# why LOG: the reason of a failure, one line: the last line of LOG that looks
# like an error, else its last line
why() {
    local lines
    lines=$(grep -v -e '^\s*$' -e '^+ ' "$1" 2>/dev/null || true)
    { grep -iE 'error|fail|cannot|refused|denied|timed out|no such' <<<"$lines" || echo "$lines"; } |
        tail -n 1 | cut -c1-160 | tr '|,' '/;'
}

# run_workload C W: wl_W in a background subshell (so that set -e holds in it
# whatever the caller does), output to a log; rows it did not record are
# recorded as failed, with the last line of the log as the reason.
run_workload() {
    local c=$1 w=$2 rc=0 lg rows spec reason
    lg=$WORK/logs/$c-$w.log
    log "$c: $w"
    (
        trap - EXIT INT TERM
        set -euo pipefail
        "wl_$w" "$c"
    ) >>"$lg" 2>&1 </dev/null &
    WL_PID=$!
    wait "$WL_PID" || rc=$?
    WL_PID=""
    if ((rc != 0)); then
        reason=$(why "$lg")
        log "$c: $w failed (exit $rc): $reason (log: $lg)"
    fi
    rows=ROWS_$w
    for spec in ${!rows:-}; do
        have_row "$c" "${spec%%:*}" || emit "$c" "${spec%%:*}" "${spec#*:}" failed "${reason:-exit $rc}"
    done
    return 0
}

run_contender() {
    local c=$1 w mp
    mp=$(mp_of "$c")
    run_workload "$c" setup
    if ! timeout 10 mountpoint -q "$mp"; then
        local reason
        reason=$(why "$WORK/logs/$c-setup.log")
        for w in $WORKLOADS; do
            local rows=ROWS_$w spec
            for spec in ${!rows}; do emit "$c" "${spec%%:*}" "${spec#*:}" failed "setup: $reason"; done
        done
        return 0
    fi
    for w in $WORKLOADS; do
        run_workload "$c" "$w"
    done
    if timeout 10 mountpoint -q "$mp"; then
        c_umount "$c" >>"$WORK/logs/$c-final-umount.log" 2>&1 || force_unmount "$mp"
    fi
    if [[ $KEEP != 1 ]]; then
        rm -rf --one-file-system "$WORK/cache/$c-"* "$WORK/bindfs-backing" 2>/dev/null || true
    fi
}

# ---------------------------------------------------------------------------

kill_tree() { # PID: the process and its descendants
    local p=$1 ch
    for ch in $(ps -o pid= --ppid "$p" 2>/dev/null); do kill_tree "$ch"; done
    kill "$p" 2>/dev/null || true
}

stop_pid() {
    local pid=$1
    [[ -n $pid ]] || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? mp p
    set +e
    [[ -z $WL_PID ]] || kill_tree "$WL_PID"
    if [[ -n $WORK && -f $WORK/state/samplers ]]; then
        while read -r p; do kill "$p" 2>/dev/null; done <"$WORK/state/samplers"
    fi
    if [[ -n $WORK && -f $WORK/mounts ]]; then
        while read -r mp; do
            [[ -n $mp ]] || continue
            if grep -qF " $mp " /proc/mounts || [[ -n $(daemon_pid "$mp") ]]; then
                log "cleanup: unmounting $mp"
                force_unmount "$mp"
            fi
        done < <(sort -u "$WORK/mounts")
    fi
    stop_pid "$PROXY_PID"
    stop_pid "$S3S_PID"
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $KEEP == 1 ]]; then
            log "kept everything in $WORK"
        else
            rm -rf --one-file-system "${WORK:?}/s3s-root" "${WORK:?}/cache" "${WORK:?}/mnt" "${WORK:?}/src.dat" \
                "${WORK:?}/tree" "${WORK:?}/tree.tar" "${WORK:?}/bindfs-backing" "${WORK:?}/tmp" 2>/dev/null
            log "logs and results in $WORK"
        fi
    fi
    exit "$rc"
}

main() {
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    [[ $(id -u) == 0 ]] || log "warning: not root; dropping caches and clear_refs need root"
    ensure_tools
    if [[ -z $WORK ]]; then WORK=$(mktemp -d /tmp/s3vault-bench.XXXXXX); fi
    mkdir -p "$WORK"/{logs,tmp,state,mnt,cache}
    : >"$WORK/results.jsonl"
    : >"$WORK/mounts"
    local csv=${BENCH_CSV:-$WORK/bench-results.csv}
    local start=$SECONDS c

    log "work dir $WORK; contenders: $CONTENDERS; seq ${SIZE_MB} MiB, meta $META_N files, fio ${FIO_SIZE_MB} MiB x ${FIO_RUNTIME} s"
    log "s3vault binary $S3VAULT${S3VAULT_MOUNT_FLAGS:+ (mount flags: $S3VAULT_MOUNT_FLAGS)}"
    head -c "$((SIZE_MB * 1048576))" /dev/urandom >"$WORK/src.dat"
    if [[ -n $TARBALL ]]; then
        TAR_DESC="$(tar -tf "$TARBALL" | wc -l) entries from $TARBALL"
    else
        TARBALL=$WORK/tree.tar
        python3 "$HELPER" tree "$WORK/tree" "$TAR_FILES"
        tar -C "$WORK/tree" -cf "$TARBALL" .
        rm -rf "$WORK/tree"
        TAR_DESC="$TAR_FILES files of 1-8 KiB"
    fi
    TAR_DESC="$TAR_DESC, $(($(stat -c %s "$TARBALL") / 1048576)) MiB tar"
    TREE_TAR=$WORK/real-tree.tar
    tar -C "$TREE" -cf "$TREE_TAR" .
    TREE_DESC="$(tar -tvf "$TREE_TAR" | grep -c '^-') files from $TREE, $(($(stat -c %s "$TREE_TAR") / 1048576)) MiB tar"
    # The inputs reach the disk before anything is measured, and memory is
    # touched once, untimed: in a VM the first use of a page since boot (or
    # since the balloon took it back) costs a fault into the hypervisor; both
    # would otherwise slow whichever contender runs first (s3vault's 1 GiB
    # write measured 45 MiB/s cold, 185 warm).
    dd if=/dev/zero of="$WORK/warm-up" bs=1M count=$((SIZE_MB * 3)) status=none
    rm -f "$WORK/warm-up"
    sync
    start_s3

    for c in $CONTENDERS; do
        log "=== $c"
        run_contender "$c"
    done

    local md=$WORK/bench-results.md
    {
        echo "## s3vault benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, s3vault $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'))"
        echo
        echo "seq file ${SIZE_MB} MiB; fio ${FIO_SIZE_MB} MiB file, ${FIO_RUNTIME} s per job; metadata $META_N files; untar: $TAR_DESC; S3 server s3s-fs $S3S_FS_VERSION; requests counted $(case $COUNT in proxy) echo 'by the counting proxy between the clients and s3s-fs' ;; log) echo "from s3s-fs's debug log (no proxy)" ;; none) echo 'not at all' ;; esac)."
        [[ -z $S3VAULT_MOUNT_FLAGS ]] || echo "s3vault mount flags: $S3VAULT_MOUNT_FLAGS"
        echo
        python3 "$HELPER" report "$WORK/results.jsonl" "$csv" "$CONTENDERS"
    } >"$md"
    cat "$md"
    if [[ -n ${BENCH_OUT:-} ]]; then
        mkdir -p "$BENCH_OUT"
        cp "$csv" "$BENCH_OUT/"
        cp "$md" "$BENCH_OUT/"
        log "copied $(basename "$csv") and bench-results.md to $BENCH_OUT"
    fi
    log "done in $((SECONDS - start)) s; CSV $csv"
}

main "$@"

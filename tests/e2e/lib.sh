# shellcheck shell=bash
# Shared helpers for the s3vault end-to-end suites.
#
# A suite sources this file, calls `e2e_init NAME`, runs `check`s and ends
# with `e2e_finish`, which prints "N passed, N failed" as the last line and
# exits non-zero if any check failed.
#
# Environment (all optional, test.sh sets them per backend):
#   S3VAULT        the binary (default: target/release/s3vault of this repo)
#   E2E_URL        base URL under which each suite creates its volumes:
#                  file:///abs/dir or s3://bucket/prefix (default: file:// in
#                  the suite's temp dir)
#   E2E_ENDPOINT   S3 endpoint (http://127.0.0.1:PORT) for s3:// URLs
#   E2E_STORE_DISK directory holding the S3 server's objects on disk, if any
#                  (s3s-fs), scanned by the confidentiality suite
#   E2E_BACKEND    a label for messages (file, s3s, moto, pg)
#   E2E_METADATA   a PostgreSQL connection string: volumes are created with
#                  their metadata there (`init --metadata`), data in E2E_URL
#   E2E_KEEP=1     keep the temp dir (logs, caches) after the run
#   CHECK_TIMEOUT, MOUNT_TIMEOUT, UMOUNT_TIMEOUT  seconds

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$E2E_DIR/../.." && pwd)

: "${S3VAULT:=$REPO_ROOT/target/release/s3vault}"
: "${CHECK_TIMEOUT:=300}"
: "${MOUNT_TIMEOUT:=60}"
: "${UMOUNT_TIMEOUT:=300}"
: "${E2E_ENDPOINT:=}"
: "${E2E_STORE_DISK:=}"
# Test credentials for the local S3 servers; the SDK's default chain reads them.
: "${AWS_ACCESS_KEY_ID:=test}"
: "${AWS_SECRET_ACCESS_KEY:=testtesttest}"
: "${AWS_REGION:=us-east-1}"
# Without this the AWS credential chain may probe the EC2 metadata address,
# which is not ours to talk to.
AWS_EC2_METADATA_DISABLED=true
export E2E_DIR REPO_ROOT S3VAULT CHECK_TIMEOUT MOUNT_TIMEOUT UMOUNT_TIMEOUT E2E_ENDPOINT E2E_STORE_DISK \
    AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION AWS_EC2_METADATA_DISABLED

PASS=0
FAIL=0
FAILED_NAMES=""
WORK=""

# ---------------------------------------------------------------------------
# Suite lifecycle

# e2e_init NAME: make the suite's temp dir and install the cleanup trap.
e2e_init() {
    local name=$1
    WORK=$(mktemp -d "/tmp/s3vault-e2e-$name.XXXXXX")
    mkdir -p "$WORK/logs"
    : >"$WORK/mounts"
    : "${E2E_URL:=file://$WORK/stores}"
    : "${E2E_BACKEND:=${E2E_URL%%:*}}"
    export WORK E2E_URL E2E_BACKEND
    E2E_SUITE=$name
    trap e2e_cleanup EXIT
    trap 'exit 130' INT TERM
    echo "== $name on $E2E_BACKEND ($E2E_URL${E2E_ENDPOINT:+ via $E2E_ENDPOINT}); work dir $WORK"
    if [[ ! -x $S3VAULT ]]; then
        abort "s3vault binary not found at $S3VAULT (run cargo build --release)"
    fi
    # Functions run by `check` execute in a child bash (so that `timeout` can
    # kill the whole process group); that child sees exported variables only.
    set -a
}

# abort MSG: a failure that makes the rest of the suite meaningless (e.g. a
# mount that did not happen: writing on would hit the local disk instead).
abort() {
    echo "FAIL - ABORT: $*"
    FAIL=$((FAIL + 1))
    FAILED_NAMES+="  ABORT: $*"$'\n'
    e2e_finish
}

# e2e_finish: unmount leftovers (a failure), print the summary, exit.
e2e_finish() {
    local mp
    while read -r mp; do
        [[ -n $mp ]] || continue
        if mountpoint -q "$mp" 2>/dev/null; then
            echo "FAIL - $mp was still mounted at the end of the suite"
            FAIL=$((FAIL + 1))
            FAILED_NAMES+="  left mounted: $mp"$'\n'
            force_unmount "$mp"
        fi
    done < <(sort -u "$WORK/mounts" 2>/dev/null)
    echo
    if ((FAIL > 0)); then
        echo "$E2E_SUITE on $E2E_BACKEND: failed checks:"
        printf '%s' "$FAILED_NAMES"
        [[ ${E2E_KEEP:-} == 1 ]] || echo "(rerun with E2E_KEEP=1 to keep logs and caches)"
    fi
    echo "$PASS passed, $FAIL failed"
    if ((FAIL > 0)); then exit 1; fi
    exit 0
}

# EXIT trap: nothing may stay mounted and no daemon of ours may stay alive,
# whatever way the suite ends. Silent on the normal path, so that the
# summary stays the last line.
e2e_cleanup() {
    local rc=$? mp
    set +e
    if [[ -n $WORK && -f $WORK/mounts ]]; then
        while read -r mp; do
            [[ -n $mp ]] || continue
            if mountpoint -q "$mp" 2>/dev/null; then force_unmount "$mp"; fi
            kill_daemons "$mp"
        done < <(sort -u "$WORK/mounts")
        # Helper processes a suite started (servers, proxies) register here.
        if [[ -f $WORK/pids ]]; then
            # shellcheck disable=SC2046 # a list of PIDs
            kill $(cat "$WORK/pids") 2>/dev/null
        fi
        if [[ ${E2E_KEEP:-} == 1 ]]; then
            echo "kept $WORK" >&2
        else
            rm -rf --one-file-system "$WORK"
        fi
    fi
    exit "$rc"
}

force_unmount() {
    local mp=$1
    fusermount3 -u "$mp" 2>/dev/null || fusermount3 -uz "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null
    kill_daemons "$mp"
}

# daemon_pids MP: PIDs of s3vault processes serving MP (their argv holds MP).
# Only processes running our binary with this test's unique mount point match.
daemon_pids() {
    local mp=$1 d exe real
    real=$(readlink -f "$S3VAULT")
    for d in /proc/[0-9]*; do
        exe=$(readlink "$d/exe" 2>/dev/null) || continue
        [[ ${exe% (deleted)} == "$real" ]] || continue
        if tr '\0' '\n' <"$d/cmdline" 2>/dev/null | grep -qxF -- "$mp"; then
            echo "${d#/proc/}"
        fi
    done
}

kill_daemons() {
    local mp=$1 pids
    pids=$(daemon_pids "$mp")
    [[ -n $pids ]] || return 0
    # shellcheck disable=SC2086 # a list of PIDs
    kill -TERM $pids 2>/dev/null
    for _ in $(seq 50); do
        pids=$(daemon_pids "$mp")
        [[ -n $pids ]] || return 0
        sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null
    return 0
}

# ---------------------------------------------------------------------------
# Checks

# run_timed SECONDS CMD...: run CMD (a program or a shell function) in its own
# process group under `timeout`, so a command stuck on a hung FUSE mount is
# killed with everything it started.
run_timed() {
    local t=$1
    shift
    if [[ $(type -t "$1") == function ]]; then
        # shellcheck disable=SC2046 # one word per function name
        export -f $(compgen -A function)
        timeout -k 10 "$t" bash -c 'set -euo pipefail; "$@"' "$1" "$@"
    else
        timeout -k 10 "$t" "$@"
    fi
}

# check NAME CMD...: one test. Passes iff CMD exits 0 within CHECK_TIMEOUT.
# Output goes to a log file (never a pipe: a daemon that inherits a pipe
# would keep a reader waiting) and is shown when the check fails.
# Sets LAST_OK=1/0; always returns 0 so suites can go on after a failure.
check() {
    local name=$1 rc=0 log t0=$SECONDS took=""
    shift
    log="$WORK/logs/check-$((PASS + FAIL + 1)).log"
    run_timed "$CHECK_TIMEOUT" "$@" >"$log" 2>&1 </dev/null || rc=$?
    if ((SECONDS - t0 >= 5)); then took=" ($((SECONDS - t0)) s)"; fi
    if ((rc == 0)); then
        PASS=$((PASS + 1))
        LAST_OK=1
        echo "ok   - $name$took"
    else
        FAIL=$((FAIL + 1))
        LAST_OK=0
        FAILED_NAMES+="  $name"$'\n'
        if ((rc == 124 || rc == 137)); then
            echo "FAIL - $name (timed out after ${CHECK_TIMEOUT}s)"
        else
            echo "FAIL - $name (exit $rc)$took"
        fi
        tail -n 25 "$log" | sed 's/^/     | /'
    fi
    return 0
}

# require NAME CMD...: a check whose failure ends the suite.
require() {
    check "$@"
    ((LAST_OK)) || abort "cannot go on after: $1"
}

# umount_step NAME MP: unmount as a check. A failed umount that still left
# MP unmounted lets the suite go on (the failure is counted); one that left
# it mounted ends the suite.
umount_step() {
    check "$1" sv_umount "$2"
    if ((!LAST_OK)) && mountpoint -q "$2"; then
        abort "$2 is still mounted after: $1"
    fi
    if ((!LAST_OK)); then
        # the daemon may still be on its way out
        kill_daemons "$2"
    fi
}

# expect_fail PATTERN CMD...: CMD must fail (not time out) and its output
# (stdout+stderr) must match the extended regex PATTERN (if not empty).
expect_fail() {
    local pat=$1 rc=0 out
    shift
    out=$(mktemp "$WORK/out.XXXXXX")
    "$@" >"$out" 2>&1 || rc=$?
    cat "$out"
    if ((rc == 0)); then
        echo "expected failure, but the command succeeded: $*"
        return 1
    fi
    if ((rc == 124 || rc == 137)); then
        echo "the command timed out: $*"
        return 1
    fi
    if [[ -n $pat ]] && ! grep -qE -- "$pat" "$out"; then
        echo "exit $rc, but the output does not match /$pat/"
        return 1
    fi
}

# ---------------------------------------------------------------------------
# s3vault helpers

# s3_opts URL: the S3 options for s3:// URLs, one per line.
s3_opts() {
    if [[ $1 == s3://* && -n $E2E_ENDPOINT ]]; then
        printf '%s\n' --endpoint "$E2E_ENDPOINT" --region "$AWS_REGION" --path-style
    fi
}

# expect_exit CODE PATTERN CMD...: CMD must exit with CODE and print exactly
# one line on stderr, matching the extended regex PATTERN (case-insensitive).
expect_exit() {
    local code=$1 pat=$2 rc=0 err lines
    shift 2
    err=$(mktemp "$WORK/err.XXXXXX")
    "$@" 2>"$err" || rc=$?
    echo "exit $rc; stderr:"
    cat "$err"
    if ((rc != code)); then
        echo "expected exit $code"
        return 1
    fi
    lines=$(grep -c . "$err" || true)
    if ((lines != 1)); then
        echo "expected a one-line message on stderr, got $lines lines"
        return 1
    fi
    if ! grep -qiE -- "$pat" "$err"; then
        echo "the message does not match /$pat/"
        return 1
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# vol_url NAME: a fresh volume URL under E2E_URL, unique to this run.
vol_url() {
    echo "${E2E_URL%/}/$1-${WORK##*.}"
}

sv_keygen() {
    timeout 30 "$S3VAULT" keygen "$1"
}

# sv_init URL ARGS...: create a volume (with E2E_METADATA, its metadata in
# PostgreSQL).
sv_init() {
    local url=$1 opts
    shift
    mapfile -t opts < <(s3_opts "$url")
    [[ -z ${E2E_METADATA:-} ]] || opts+=(--metadata "$E2E_METADATA")
    timeout 120 "$S3VAULT" init "$url" "${opts[@]}" "$@"
}

# sv_mount URL MP CACHE ARGS...: mount and verify that MP is a mount point.
sv_mount() {
    local url=$1 mp=$2 cache=$3 opts
    shift 3
    mkdir -p "$mp" "$cache"
    echo "$mp" >>"$WORK/mounts"
    printf '%s\t%s\n' "$mp" "$cache" >>"$WORK/mount-caches"
    mapfile -t opts < <(s3_opts "$url")
    echo "+ s3vault mount $url $mp --cache-dir $cache ${opts[*]} $*"
    if ! timeout -k 5 "$MOUNT_TIMEOUT" "$S3VAULT" mount "$url" "$mp" --cache-dir "$cache" "${opts[@]}" "$@"; then
        daemon_log_tail "$mp"
        return 1
    fi
    if ! mountpoint -q "$mp"; then
        echo "s3vault mount exited 0 but $mp is not a mount point"
        return 1
    fi
}

# daemon_log_tail MP: the end of the daemon's log (in its cache dir), shown
# when a mount or umount fails.
daemon_log_tail() {
    local cache
    cache=$(awk -F'\t' -v mp="$1" '$1 == mp { c = $2 } END { print c }' "$WORK/mount-caches" 2>/dev/null)
    if [[ -n $cache && -f $cache/s3vault.log ]]; then
        echo "--- last lines of $cache/s3vault.log:"
        tail -n 15 "$cache/s3vault.log"
    fi
}

# sv_umount MP: unmount; the contract is that everything reached the store
# and the daemon has exited when this returns 0.
sv_umount() {
    local mp=$1 pids
    if ! timeout -k 5 "$UMOUNT_TIMEOUT" "$S3VAULT" umount "$mp"; then
        daemon_log_tail "$mp"
        return 1
    fi
    if mountpoint -q "$mp"; then
        echo "s3vault umount exited 0 but $mp is still mounted"
        return 1
    fi
    pids=$(daemon_pids "$mp")
    if [[ -n $pids ]]; then
        echo "s3vault umount returned but the daemon is still running: $pids"
        return 1
    fi
}

# sv_mount_refused CODE PATTERN URL MP CACHE ARGS...: the mount must exit
# with CODE, print exactly one line on stderr matching the extended regex
# PATTERN (case-insensitive; empty: any), and leave nothing mounted.
sv_mount_refused() {
    local code=$1 pat=$2 url=$3 mp=$4 cache=$5 rc=0 opts
    shift 5
    mkdir -p "$mp" "$cache"
    echo "$mp" >>"$WORK/mounts"
    mapfile -t opts < <(s3_opts "$url")
    expect_exit "$code" "$pat" \
        timeout -k 5 "$MOUNT_TIMEOUT" "$S3VAULT" mount "$url" "$mp" --cache-dir "$cache" "${opts[@]}" "$@" || rc=$?
    if mountpoint -q "$mp"; then
        echo "but $mp got mounted"
        force_unmount "$mp"
        return 1
    fi
    return "$rc"
}

# ---------------------------------------------------------------------------
# Trees: compare a mounted tree with a reference copy on local disk

manifest() {
    python3 "$E2E_DIR/manifest.py" "$@"
}

# same_tree REF DIR [manifest options]: equal manifests (names, types,
# modes, owners, sizes, SHA-256 of contents, symlink targets).
same_tree() {
    local ref=$1 dir=$2 a b
    shift 2
    a=$(mktemp "$WORK/manifest.XXXXXX")
    b=$(mktemp "$WORK/manifest.XXXXXX")
    manifest "$@" "$ref" >"$a"
    manifest "$@" "$dir" >"$b"
    if ! diff "$a" "$b" >"$b.diff"; then
        echo "trees differ ($(wc -l <"$a") entries in $ref, $(wc -l <"$b") in $dir):"
        head -n 40 "$b.diff"
        return 1
    fi
    echo "$(wc -l <"$a") entries match"
}

# same_manifest SAVED DIR [manifest options]: DIR still matches a manifest
# saved earlier (used to check mtimes across remounts).
same_manifest() {
    local saved=$1 dir=$2 b
    shift 2
    b=$(mktemp "$WORK/manifest.XXXXXX")
    manifest "$@" "$dir" >"$b"
    if ! diff "$saved" "$b"; then
        return 1
    fi
    echo "$(wc -l <"$b") entries match"
}

# ---------------------------------------------------------------------------
# Direct access to a volume's objects, for file:// and s3:// alike. Keys are
# relative to the volume root (superblock, data/<id>, meta/...).

s3tool() {
    python3 "$E2E_DIR/s3tool.py" "$@"
}

file_path() {
    local p=${1#file://}
    echo "${p%/}"
}

# store_ls URL [SUBDIR]: relative keys, sorted, one per line.
store_ls() {
    local url=$1 sub=${2:-}
    if [[ $url == file://* ]]; then
        local root
        root=$(file_path "$url")
        [[ -d $root/$sub ]] || return 0
        (cd "$root" && find "${sub:-.}" -type f | sed 's|^\./||' | LC_ALL=C sort)
    else
        s3tool ls "$url" | cut -f1 | { if [[ -n $sub ]]; then grep "^$sub/" || true; else cat; fi; } | LC_ALL=C sort
    fi
}

store_get() { # URL KEY FILE
    if [[ $1 == file://* ]]; then cp "$(file_path "$1")/$2" "$3"; else s3tool get "${1%/}/$2" "$3"; fi
}

store_put() { # FILE URL KEY
    if [[ $2 == file://* ]]; then cp "$1" "$(file_path "$2")/$3"; else s3tool put "$1" "${2%/}/$3"; fi
}

store_rm() { # URL KEY
    if [[ $1 == file://* ]]; then rm -f "$(file_path "$1")/$2"; else s3tool rm "${1%/}/$2"; fi
}

# store_dump URL DIR [METAFILE]: copy every object of the volume into DIR.
store_dump() {
    local url=$1 dir=$2 meta=${3:-}
    mkdir -p "$dir"
    if [[ $url == file://* ]]; then
        cp -a "$(file_path "$url")/." "$dir/"
        [[ -z $meta ]] || : >"$meta"
    else
        s3tool dump "$url" "$dir" ${meta:+"$meta"}
    fi
}

# store_restore DIR URL: make the volume hold exactly the objects in DIR.
store_restore() {
    local dir=$1 url=$2 p
    if [[ $url == file://* ]]; then
        p=$(file_path "$url")
        rm -rf "$p"
        mkdir -p "$p"
        cp -a "$dir/." "$p/"
    else
        s3tool restore "$dir" "$url"
    fi
}

# store_bytes URL: total size of the volume's objects.
store_bytes() {
    if [[ $1 == file://* ]]; then
        du -sb "$(file_path "$1")" | cut -f1
    else
        s3tool du "$1"
    fi
}

#!/usr/bin/env bash
# The write-back cache's promises (README "Durability"): close(2) means in the
# local cache, surviving kill -9 of the daemon; fsync(2) means in the store,
# visible from a fresh host; the cache stays under its size limit; writes go
# on while the store is unreachable and arrive when it is back; a full cache
# disk gives ENOSPC and harms nothing written before; `umount` waits for
# uploads and refuses, rather than pretends, when the store is down; a cache
# directory in memory is refused.
#
# Usage: [E2E_URL=... E2E_ENDPOINT=...] bash tests/e2e/cache.sh
# An outage of the store is made by stopping the S3 server (S3S_FS_BIN: the
# suite then runs its own s3s-fs for those checks) or, on a file:// store,
# by pointing the symlink the store is reached through at nothing.
# shellcheck disable=SC2317 # functions run through `check`
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init cache

KEY=$WORK/key
GEN=$E2E_DIR/filegen.py

setup() {
    sv_keygen "$KEY" >/dev/null
}

new_volume() {
    sv_init "$1" --key-file "$KEY" >/dev/null
}

# The pid of the daemon serving $1.
daemon_pid() {
    "$S3VAULT" status "$1" --json >/dev/null
    daemon_pids "$1" | head -n 1
}

status_field() { # MOUNTPOINT FIELD (of the cache section)
    "$S3VAULT" status "$1" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['cache']['$2'])"
}

# ---------------------------------------------------------------------------
# A store we can take down: our own s3s-fs, or a file:// store moved away.

# Set here, not in a check: checks run in child shells.
if [[ $E2E_URL == s3://* && -n ${S3S_FS_BIN:-} ]]; then
    OUTAGE_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    OUTAGE_URL=s3://outage/vol
else
    # The store is reached through a symlink that store_down and store_up
    # swap atomically; a retrying upload can then never recreate the store
    # somewhere in between.
    OUTAGE_PORT=""
    OUTAGE_URL=file://$WORK/outage-link
    mkdir -p "$WORK/outage-store"
    ln -sfn "$WORK/outage-store" "$WORK/outage-link"
fi

start_outage_store() {
    if [[ -n $OUTAGE_PORT ]]; then
        mkdir -p "$WORK/outage-root"
        outage_server_up
        E2E_ENDPOINT=http://127.0.0.1:$OUTAGE_PORT python3 "$E2E_DIR/s3tool.py" mb outage
    fi
    E2E_ENDPOINT=http://127.0.0.1:${OUTAGE_PORT:-0} new_volume "$OUTAGE_URL"
}

outage_server_up() {
    "$S3S_FS_BIN" --host 127.0.0.1 --port "$OUTAGE_PORT" \
        --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" \
        "$WORK/outage-root" >>"$WORK/logs/outage-s3s.log" 2>&1 &
    echo $! >"$WORK/outage.pid"
    E2E_ENDPOINT=http://127.0.0.1:$OUTAGE_PORT timeout 60 python3 "$E2E_DIR/s3tool.py" wait 30
}

store_down() {
    if [[ -n $OUTAGE_PORT ]]; then
        kill "$(cat "$WORK/outage.pid")"
        wait "$(cat "$WORK/outage.pid")" 2>/dev/null || true
    else
        # A dangling link: nothing can be written, nor the store recreated.
        ln -sfn "$WORK/nowhere/store" "$WORK/outage-link.new"
        mv -T "$WORK/outage-link.new" "$WORK/outage-link"
    fi
}

store_up() {
    if [[ -n $OUTAGE_PORT ]]; then
        outage_server_up
    else
        ln -sfn "$WORK/outage-store" "$WORK/outage-link.new"
        mv -T "$WORK/outage-link.new" "$WORK/outage-link"
    fi
}

outage_mount() { # MOUNTPOINT CACHE [flags...]
    local mp=$1 cache=$2
    shift 2
    E2E_ENDPOINT=http://127.0.0.1:${OUTAGE_PORT:-0} sv_mount "$OUTAGE_URL" "$mp" "$cache" --key-file "$KEY" "$@"
}

# ---------------------------------------------------------------------------

# A cache directory on tmpfs loses what is not uploaded at a reboot: refused
# with a one-line reason, accepted with --allow-volatile-cache.
tmpfs_cache_refused() {
    local url t=$WORK/tmpfs-cache
    url=$(vol_url tmpfs)
    new_volume "$url"
    mkdir -p "$t"
    mount -t tmpfs -o size=64m tmpfs "$t"
    local rc=0
    sv_mount_refused 2 "tmpfs.*--allow-volatile-cache" "$url" "$WORK/mnt-tmpfs" "$t/c" --key-file "$KEY" || rc=$?
    if ((rc == 0)); then
        sv_mount "$url" "$WORK/mnt-tmpfs" "$t/c" --key-file "$KEY" --allow-volatile-cache || rc=$?
        echo hi >"$WORK/mnt-tmpfs/x" || rc=$?
        sv_umount "$WORK/mnt-tmpfs" || rc=$?
    fi
    umount "$t"
    return "$rc"
}

# kill -9 while files are being written: what was closed is intact after a
# remount of the same cache; what was fsynced is there on a fresh host;
# nothing half-written shows as data.
KILL_URL=$(vol_url kill)
kill_during_writes() {
    new_volume "$KILL_URL"
    local mp=$WORK/mnt-kill pid writer
    sv_mount "$KILL_URL" "$mp" "$WORK/cache-kill" --key-file "$KEY" --metadata-interval 3600
    : >"$WORK/kill-closed"
    : >"$WORK/kill-fsynced"
    python3 "$GEN" write "$mp" 100000 "$WORK/kill-closed" --fsync-every 7 --fsynced "$WORK/kill-fsynced" &
    writer=$!
    # Let it write a while (some files fsynced, most only closed).
    for _ in $(seq 300); do
        (($(wc -l <"$WORK/kill-closed") >= 60)) && break
        sleep 0.1
    done
    pid=$(daemon_pids "$mp" | head -n 1)
    kill -9 "$pid"
    wait "$writer" || true
    fusermount3 -uz "$mp" 2>/dev/null || umount -l "$mp"
    echo "closed before the kill: $(wc -l <"$WORK/kill-closed"), fsynced: $(wc -l <"$WORK/kill-fsynced")"
    (($(wc -l <"$WORK/kill-fsynced") >= 3))
}

fsynced_files_on_a_fresh_host() {
    local mp=$WORK/mnt-fresh1
    sv_mount "$KILL_URL" "$mp" "$WORK/cache-fresh1" --key-file "$KEY" -o ro
    python3 "$GEN" verify "$mp" "$WORK/kill-fsynced"
    sv_umount "$mp"
}

closed_files_after_remount() {
    local mp=$WORK/mnt-kill
    sv_mount "$KILL_URL" "$mp" "$WORK/cache-kill" --key-file "$KEY"
    python3 "$GEN" verify "$mp" "$WORK/kill-closed"
    sv_umount "$mp"
}

closed_files_reach_the_store() {
    local mp=$WORK/mnt-fresh2
    sv_mount "$KILL_URL" "$mp" "$WORK/cache-fresh2" --key-file "$KEY" -o ro
    python3 "$GEN" verify "$mp" "$WORK/kill-closed"
    sv_umount "$mp"
}

# Writing three times the cache size keeps the cache under its limit, and
# everything arrives.
cache_limit_honoured() {
    local url mp=$WORK/mnt-limit cache=$WORK/cache-limit max=0 sampler
    url=$(vol_url limit)
    new_volume "$url"
    sv_mount "$url" "$mp" "$cache" --key-file "$KEY" --cache-size 64M --max-dirty 16M
    # du complains (and exits 1) when eviction removes a file under it;
    # the total it prints is still right.
    (
        set +e +o pipefail
        while :; do
            du -sb "$cache/blocks" 2>/dev/null | cut -f1
            sleep 0.2
        done
    ) >"$WORK/limit-samples" &
    sampler=$!
    : >"$WORK/limit-closed"
    python3 "$GEN" write "$mp" 48 "$WORK/limit-closed" --size-kib 4096
    sv_umount "$mp"
    kill "$sampler"
    wait "$sampler" 2>/dev/null || true
    max=$(sort -n "$WORK/limit-samples" | tail -n 1)
    echo "largest cache seen: $max bytes over $(wc -l <"$WORK/limit-samples") samples (limit 64 MiB)"
    # The limit counts sealed blocks; allow for directory entries.
    ((max <= 64 * 1024 * 1024 + 1024 * 1024))
    sv_mount "$url" "$mp" "$WORK/cache-limit2" --key-file "$KEY" -o ro
    python3 "$GEN" verify "$mp" "$WORK/limit-closed" --size-kib 4096
    sv_umount "$mp"
}

# The store goes away while files are written within the cache size: writes,
# closes and reads go on; umount refuses instead of pretending; once the
# store is back everything arrives and umount succeeds.
writes_survive_an_outage() {
    local mp=$WORK/mnt-outage rc=0 out
    outage_mount "$mp" "$WORK/cache-outage"
    echo before >"$mp/before"
    "$S3VAULT" umount "$mp" --timeout 1 >/dev/null 2>&1 || true # nothing pending: unmounts
    mountpoint -q "$mp" && return 1
    outage_mount "$mp" "$WORK/cache-outage"
    store_down
    : >"$WORK/outage-closed"
    python3 "$GEN" write "$mp" 12 "$WORK/outage-closed"
    python3 "$GEN" verify "$mp" "$WORK/outage-closed" --no-extra-check
    grep -qx before "$mp/before"
    # The SDK retries a refused connection itself (with jittered backoff)
    # before an upload counts as failed: wait for the first, up to 60 s.
    local waited
    for waited in $(seq 60); do
        (($(status_field "$mp" errors) > 0)) && break
        sleep 1
    done
    echo "pending uploads: $(status_field "$mp" pending_uploads), errors: $(status_field "$mp" errors) (after ${waited}s)"
    (($(status_field "$mp" pending_uploads) > 0))
    (($(status_field "$mp" errors) > 0))
    out=$("$S3VAULT" umount "$mp" --timeout 3 2>&1) || rc=$?
    echo "umount during the outage: exit $rc: $out"
    ((rc == 1))
    grep -q "uploads have failed" <<<"$out"
    mountpoint -q "$mp"
    store_up
    "$S3VAULT" umount "$mp"
    if mountpoint -q "$mp"; then
        echo "still mounted after umount succeeded"
        return 1
    fi
    outage_mount "$mp" "$WORK/cache-outage2" -o ro
    python3 "$GEN" verify "$mp" "$WORK/outage-closed"
    sv_umount "$mp"
}

# A full cache disk (a small tmpfs, store unreachable so nothing drains):
# writers get ENOSPC; what was closed before stays readable and arrives.
full_cache_disk() {
    local t=$WORK/small-cache mp=$WORK/mnt-full rc=0
    mkdir -p "$t"
    mount -t tmpfs -o size=48m tmpfs "$t"
    outage_mount "$mp" "$t/c" --allow-volatile-cache --cache-size 64M --max-dirty 64M \
        --cache-min-free 6M || rc=$?
    if ((rc == 0)); then
        store_down
        : >"$WORK/full-closed"
        python3 "$GEN" fill "$mp" "$WORK/full-closed" --size-kib 2048 || rc=$?
        echo "closed before the disk filled: $(wc -l <"$WORK/full-closed")"
        (($(wc -l <"$WORK/full-closed") >= 5)) || rc=1
        python3 "$GEN" verify "$mp" "$WORK/full-closed" --size-kib 2048 --no-extra-check || rc=$?
        grep -q "the cache disk is full: writes fail with ENOSPC" "$t/c/s3vault.log" || {
            echo "the daemon log does not say the cache disk is full"
            rc=1
        }
        store_up
        "$S3VAULT" umount "$mp" || rc=$?
    fi
    if ((rc == 0)); then
        outage_mount "$mp" "$WORK/cache-full2" -o ro
        python3 "$GEN" verify "$mp" "$WORK/full-closed" --size-kib 2048 --no-extra-check || rc=$?
        sv_umount "$mp" || rc=$?
    fi
    mountpoint -q "$mp" && force_unmount "$mp"
    umount "$t"
    return "$rc"
}

# status shows the cache: size, limit, dirty bytes, rates, hit ratio.
status_shows_the_cache() {
    local url mp=$WORK/mnt-status out
    url=$(vol_url status)
    new_volume "$url"
    sv_mount "$url" "$mp" "$WORK/cache-status" --key-file "$KEY" --cache-size 1G
    head -c 3000000 /dev/urandom >"$mp/f"
    cat "$mp/f" >/dev/null
    sync "$mp/f"
    out=$("$S3VAULT" status "$mp")
    echo "$out"
    for row in volume "  url +${url//./\\.}\$" "  volume id +[0-9a-f]{32}" "  mountpoint +$mp\$" "  pid +[0-9]+" \
        "  cache dir +$WORK/cache-status\$" cache "  used " "  limit +1\.0 GiB" "  dirty " "  hit ratio" \
        uploads "  pending uploads" "  upload rate" "  errors" "  last upload +20[0-9-]+T[0-9:.]+Z" \
        packs metadata audit; do
        grep -qE "^$row" <<<"$out" || {
            echo "missing row: $row"
            return 1
        }
    done
    # --json: the same facts, times in RFC 3339.
    "$S3VAULT" status "$mp" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
assert s["volume"]["url"] == sys.argv[1] and s["volume"]["pid"] > 0, s["volume"]
assert s["cache"]["last_upload"].endswith("Z") and "last_upload_ns" not in s["cache"], s["cache"]
' "$url"
    sv_umount "$mp"
}

# A second read-write mount is refused, naming the holder; with
# --force-takeover it claims the next metadata generation, so the first
# mount is fenced — writes fail with EROFS, status says so, umount unmounts
# and says where its changes are — and the lease is free again afterwards.
second_writer_fences_the_first() {
    local url a=$WORK/mnt-wa b=$WORK/mnt-wb out rc=0
    url=$(vol_url fence)
    new_volume "$url"
    sv_mount "$url" "$a" "$WORK/cache-wa" --key-file "$KEY"
    python3 -c 'import os,sys; f=open(sys.argv[1],"w"); f.write("a"); f.flush(); os.fsync(f.fileno())' "$a/from-a"
    # Both "hosts" are this one: the refusal names the live local mount
    # instead of suggesting a takeover (a takeover is still possible).
    sv_mount_refused 2 "already mounted read-write on this host by s3vault pid [0-9]+ at $a" "$url" "$b" \
        "$WORK/cache-wb" --key-file "$KEY"
    sv_mount "$url" "$b" "$WORK/cache-wb" --key-file "$KEY" --force-takeover
    python3 -c 'import os,sys; f=open(sys.argv[1],"w"); f.write("b"); f.flush(); os.fsync(f.fileno())' "$b/from-b"
    if python3 -c 'import os,sys; f=open(sys.argv[1],"w"); f.write("late"); f.flush(); os.fsync(f.fileno())' "$a/late"; then
        echo "the first writer's fsync succeeded after the second wrote"
        return 1
    fi
    [[ $("$S3VAULT" status "$a" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["fenced"])') == True ]]
    if touch "$a/after" 2>"$WORK/touch.err"; then
        echo "a fenced mount accepted a new file"
        return 1
    fi
    grep -q "Read-only file system" "$WORK/touch.err"
    out=$("$S3VAULT" umount "$a" 2>&1) || rc=$?
    echo "umount of the fenced mount: exit $rc: $out"
    ((rc == 1))
    grep -q "fenced" <<<"$out"
    if mountpoint -q "$a"; then
        echo "the fenced mount is still mounted"
        return 1
    fi
    sv_umount "$b"
    sv_mount "$url" "$b" "$WORK/cache-wc" --key-file "$KEY"
    [[ $(cat "$b/from-b") == b && ! -e $b/late ]]
    sv_umount "$b"
}

cleanup_outage_store() {
    [[ -f $WORK/outage.pid ]] || return 0
    kill "$(cat "$WORK/outage.pid")" 2>/dev/null || true
}
trap 'cleanup_outage_store; e2e_cleanup' EXIT

require "setup" setup
check "a cache directory on tmpfs is refused without --allow-volatile-cache" tmpfs_cache_refused
require "kill -9 of the daemon while files are written" kill_during_writes
check "fsynced files are on a fresh host after kill -9" fsynced_files_on_a_fresh_host
check "closed files are intact after kill -9 and remount" closed_files_after_remount
check "closed files reach the store after the remount" closed_files_reach_the_store
check "writing 3x the cache size stays under the limit" cache_limit_honoured
check "status shows the cache" status_shows_the_cache
check "a second writer is refused; a forced takeover fences the first" second_writer_fences_the_first
require "outage store" start_outage_store
check "writes go on while the store is down; umount refuses, then succeeds" writes_survive_an_outage
check "a full cache disk gives ENOSPC and keeps earlier files" full_cache_disk
e2e_finish

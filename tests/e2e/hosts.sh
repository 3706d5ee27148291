#!/usr/bin/env bash
# Several hosts writing one volume whose metadata is in PostgreSQL: three
# read-write mounts of it on this machine, each with its own cache
# directory (a host each, as on three EC2 instances). What one host closed
# opens with its contents on the others; O_EXCL creates race to exactly
# one winner; a storm of creates, renames and unlinks from all three ends
# as a model of it says; a file open on one host survives its unlink on
# another; another host's change reaches a host's kernel cache as it
# commits; flock and fcntl locks exclude across hosts; fsx on one host
# while another reads; one host killed with -9 while the others go on (its
# locks go with it); a snapshot taken while they write (restored,
# mounted, deleted), fsck while they are mounted, and gc (the live state
# read from the database) leaves nothing unreferenced. Runs on the
# "pg" backend only.
#
# Usage: E2E_METADATA=postgresql://USER@127.0.0.1:PORT/DB bash tests/e2e/hosts.sh
# Functions here are mostly run indirectly, through `check`.
# shellcheck disable=SC2317
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init hosts
[[ -n ${E2E_METADATA:-} ]] || abort "E2E_METADATA must name a PostgreSQL database"
: "${FSX:=${S3VAULT_TOOLS:-$HOME/.cache/s3vault-tools}/bin/fsx}"

KEY=$WORK/key
URL=$(vol_url hosts)
A=$WORK/mnt-a
B=$WORK/mnt-b
C=$WORK/mnt-c

mount_host() { # NAME: mount host NAME (a, b or c) from its cache directory
    sv_mount "$URL" "$WORK/mnt-$1" "$WORK/cache-$1" --key-file "$KEY"
}

require "keygen" sv_keygen "$KEY"
require "init a volume with its metadata in PostgreSQL" sv_init "$URL" --key-file "$KEY"
require "mount on host a" mount_host a
require "mount on host b too: no lease refuses it" mount_host b
require "mount on host c" mount_host c

# ---------------------------------------------------------------------------
# Close-to-open: once close returned on one host, an open on another sees
# the new contents, whoever wrote last.

close_then_open() {
    head -c 300000 /dev/urandom >"$WORK/blob"
    cp "$WORK/blob" "$A/blob"
    cmp "$WORK/blob" "$B/blob"
    cmp "$WORK/blob" "$C/blob"
    echo "rewritten on b" >"$B/blob"
    test "$(cat "$A/blob")" = "rewritten on b"
    test "$(stat -c %s "$C/blob")" = 15
}
check "a file closed on one host opens with its contents on the others" close_then_open

# ---------------------------------------------------------------------------
# O_EXCL (bash's noclobber opens with it): two hosts create the same 30
# names at once; each name has exactly one winner, whose line it holds.

excl_race() {
    local host mp
    for host in a b; do
        mp=$WORK/mnt-$host
        (
            set -C
            for i in $(seq 30); do
                if echo "$host" 2>/dev/null >"$mp/excl-$i"; then echo "$i $host"; fi
            done
        ) >"$WORK/excl-won-$host" &
    done
    wait
    sort -n "$WORK"/excl-won-* >"$WORK/excl-won"
    cat "$WORK/excl-won"
    test "$(cut -d' ' -f1 "$WORK/excl-won" | uniq | wc -l)" = 30
    test "$(wc -l <"$WORK/excl-won")" = 30
    while read -r i host; do
        test "$(cat "$C/excl-$i")" = "$host" || {
            echo "excl-$i holds $(cat "$C/excl-$i"), won by $host"
            return 1
        }
    done <"$WORK/excl-won"
}
check "O_EXCL creates racing on two hosts: one winner each" excl_race

# ---------------------------------------------------------------------------
# A storm from all three hosts at once in shared directories: each host
# creates, renames across directories and unlinks its own names, so the
# end state is known; the directories' link counts and every name are
# checked on another host.

storm_on() { # HOST: 60 rounds of namespace changes by host HOST
    local h=$1 mp=$WORK/mnt-$1 i
    for i in $(seq 60); do
        echo "$h $i" >"$mp/storm/in/$h-$i"
        mkdir "$mp/storm/dirs/$h-$i"
        mv "$mp/storm/in/$h-$i" "$mp/storm/dirs/$h-$i/file"
        if ((i % 3 == 0)); then
            rm "$mp/storm/dirs/$h-$i/file"
            rmdir "$mp/storm/dirs/$h-$i"
        elif ((i % 3 == 1)); then
            mv "$mp/storm/dirs/$h-$i" "$mp/storm/out/$h-$i"
        fi
    done
}

# The names the storm leaves: "dir/name" per line, sorted.
storm_model() {
    local h i
    for h in a b c; do
        for i in $(seq 60); do
            case $((i % 3)) in
                1) printf 'out/%s\nout/%s/file\n' "$h-$i" "$h-$i" ;;
                2) printf 'dirs/%s\ndirs/%s/file\n' "$h-$i" "$h-$i" ;;
            esac
        done
    done | sort
}

storm() {
    mkdir -p "$A/storm/in" "$A/storm/dirs" "$A/storm/out"
    local pids=() h
    for h in a b c; do
        storm_on "$h" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    # How often the hosts' transactions collided and were run again.
    local mp
    for mp in "$A" "$B" "$C"; do "$S3VAULT" status "$mp" | grep -E 'conflicts' || true; done
    diff <(cd "$B/storm" && find dirs out -mindepth 1 | sort) <(storm_model)
    test -z "$(ls -A "$C/storm/in")"
    # Each subdirectory's ".." counts: a lost update would be off.
    test "$(stat -c %h "$C/storm/dirs")" = $((2 + 3 * 20))
    test "$(stat -c %h "$C/storm/out")" = $((2 + 3 * 20))
    local f
    for f in "$C"/storm/out/*/file "$C"/storm/dirs/*/file; do
        [[ $(cat "$f") == "$(basename "$(dirname "$f")" | tr - ' ')" ]] || {
            echo "$f holds $(cat "$f")"
            return 1
        }
    done
}
check "create/rename/unlink storms from three hosts end as the model says" storm

# ---------------------------------------------------------------------------
# Two hosts moving two directories into each other at once: exactly one
# move wins, never a cycle that would cut both off the tree.

cross_renames() {
    local i
    mkdir "$A/cross"
    for i in $(seq 20); do
        mkdir "$A/cross/x$i" "$A/cross/y$i"
        # -T: rename(2) exactly this path (no "into a directory", which
        # would rename the loser's source to the winner's old name).
        mv -T "$A/cross/x$i" "$A/cross/y$i/x$i" 2>/dev/null &
        mv -T "$B/cross/y$i" "$B/cross/x$i/y$i" 2>/dev/null &
        wait
        if [[ -d $C/cross/y$i/x$i && ! -e $C/cross/x$i ]] || [[ -d $C/cross/x$i/y$i && ! -e $C/cross/y$i ]]; then
            continue
        fi
        echo "round $i left:"
        (cd "$C/cross" && find . | grep -E "[xy]$i(/|\$)")
        return 1
    done
    test "$(stat -c %h "$C/cross")" = 22
}
check "two hosts moving two directories into each other: one wins, no cycle" cross_renames

# ---------------------------------------------------------------------------
# An unlinked file stays readable on the host that has it open.

open_here_unlinked_there() {
    printf 'still readable\n' >"$A/held"
    exec 3<"$A/held"
    rm "$B/held"
    test ! -e "$C/held"
    test ! -e "$A/held"
    local line
    read -r line <&3
    exec 3<&-
    test "$line" = "still readable"
}
check "a file open on one host outlives its unlink on another" open_here_unlinked_there

# ---------------------------------------------------------------------------
# A change is heard: the kernel of a host holding the file open keeps its
# attributes for 1 s, and another host's chmod makes it drop them at once
# (NOTIFY), so an fstat 0.3 s later shows the new mode.

heard_at_once() {
    printf 'x\n' >"$A/watched"
    chmod 644 "$A/watched"
    python3 - "$A/watched" "$B/watched" <<'EOF'
import os, sys, time
here, there = sys.argv[1:]
fd = os.open(there, os.O_RDONLY)
try:
    assert os.fstat(fd).st_mode & 0o777 == 0o644
    os.chmod(here, 0o600)
    time.sleep(0.3)
    mode = os.fstat(fd).st_mode & 0o777
    assert mode == 0o600, f"host b still shows {mode:o}"
finally:
    os.close(fd)
EOF
}
check "another host's chmod shows in an fstat of an open file at once, not after the TTL" heard_at_once

# ---------------------------------------------------------------------------
# File locks reach across hosts: flock(1) and fcntl byte ranges (Python's
# fcntl module) taken on one host exclude the others, a blocking request
# waits for the release, and one with a timeout gives up when its timer
# fires (the signal interrupts the wait).

wait_for() { # FILE: waits up to 10 s for FILE to exist
    local i
    for i in $(seq 100); do
        [[ -e $1 ]] && return 0
        sleep 0.1
    done
    return 1
}

flock_across_hosts() {
    local holder started
    echo x >"$A/flocked"
    flock -x "$A/flocked" -c "touch '$WORK/flock-held'; sleep 5" &
    holder=$!
    wait_for "$WORK/flock-held"
    if flock -n "$B/flocked" true; then echo "b took a lock a holds"; return 1; fi
    if flock -n "$A/flocked" true; then echo "a second process on a took it"; return 1; fi
    if flock -s -n "$C/flocked" true; then echo "c took a shared lock"; return 1; fi
    started=$(date +%s%N)
    if flock -w 0.3 "$B/flocked" true; then echo "the timeout did not fire"; return 1; fi
    echo "flock -w 0.3 gave up after $((($(date +%s%N) - started) / 1000000)) ms"
    # Blocks until a's holder is done, then gets it.
    flock -x "$B/flocked" -c "kill -0 $holder 2>/dev/null && exit 1; exit 0"
    wait "$holder"
    flock -n "$C/flocked" true
}
check "flock across hosts: excluded, timed out, waited for, then granted" flock_across_hosts

fcntl_ranges_across_hosts() {
    local holder
    head -c 100 /dev/zero >"$A/ranges"
    python3 -c '
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)
open(sys.argv[2], "w").close()
time.sleep(3)' "$A/ranges" "$WORK/ranges-held" &
    holder=$!
    wait_for "$WORK/ranges-held"
    python3 -c '
import errno, fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 10)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 5)
    sys.exit("bytes 5-14 were granted while another host holds 0-9")
except OSError as e:
    assert e.errno in (errno.EAGAIN, errno.EACCES), e
fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, 20)
# F_GETLK names the lock in the way: bytes 0-9, held on another host (pid 0).
got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 3, 4, 0))
kind, _, start, length, pid = struct.unpack("hhqqi4x", got)
print("F_GETLK:", kind, start, length, pid)
assert (kind, start, length, pid) == (fcntl.F_WRLCK, 0, 10, 0)
' "$B/ranges"
    # Once the holder exits (its close drops its locks), b gets 0-9.
    wait "$holder"
    python3 -c '
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)' "$B/ranges"
}
check "fcntl byte ranges across hosts: conflicts by range, F_GETLK, released at close" fcntl_ranges_across_hosts

# ---------------------------------------------------------------------------
# fsx on host a while host b keeps opening and reading the same file; once
# fsx closed it, b reads exactly what a does.

cat >"$WORK/fsx.toml" <<EOF
flen = 2097152

[opsize]
max = 131072

[weights]
read = 10
write = 10
mapread = 5
mapwrite = 5
truncate = 4
close_open = 4
invalidate = 1
fsync = 1
fdatasync = 1
posix_fallocate = 0
punch_hole = 0
EOF

fsx_here_reader_there() {
    [[ -x $FSX ]] || {
        echo "fsx not found at $FSX (scripts/test.sh installs it)"
        return 1
    }
    local rc=0 reader
    : >"$A/fsx-file"
    (
        # Reads while fsx writes: never an error, whatever it sees.
        while [[ ! -e $WORK/fsx-done ]]; do
            cat "$B/fsx-file" >/dev/null || {
                echo "a read on b failed during fsx"
                exit 1
            }
        done
    ) &
    reader=$!
    NO_COLOR=1 RUST_BACKTRACE=0 "$FSX" -f "$WORK/fsx.toml" -N 3000 -S 7 -P "$WORK/logs" "$A/fsx-file" \
        >"$WORK/logs/fsx.out" 2>&1 || rc=$?
    touch "$WORK/fsx-done"
    wait "$reader" || rc=1
    tail -n 3 "$WORK/logs/fsx.out"
    ((rc == 0)) && cmp "$A/fsx-file" "$B/fsx-file"
}
check "fsx on one host while another reads: the same file once closed" fsx_here_reader_there

# ---------------------------------------------------------------------------
# Host b killed with -9 in the middle of writing: a and c go on, and every
# file b closed before is whole on them.

kill_b_mid_write() {
    local i pid writer locker
    for i in $(seq 20); do
        head -c $((i * 7000)) /dev/urandom >"$WORK/closed-$i"
        cp "$WORK/closed-$i" "$B/closed-$i"
    done
    (while true; do head -c 1000000 /dev/urandom >"$B/in-flight" || exit 0; done) &
    writer=$!
    echo x >"$B/locked-by-b"
    (flock -x 9 && touch "$WORK/b-locked" && exec sleep 600) 9<"$B/locked-by-b" &
    locker=$!
    wait_for "$WORK/b-locked"
    sleep 1
    pid=$(daemon_pids "$B")
    [[ -n $pid ]] || return 1
    kill -KILL "$pid"
    wait "$writer" || true
    for i in $(seq 20); do
        cmp "$WORK/closed-$i" "$A/closed-$i"
    done
    # The dead host's lock went with it.
    flock -w 20 "$A/locked-by-b" true
    kill "$locker" 2>/dev/null || true
    wait "$locker" 2>/dev/null || true
    touch "$A/after-kill" "$C/after-kill-too"
    test -e "$C/after-kill" && test -e "$A/after-kill-too"
}
check "one host killed with -9: the others go on, its closed files are whole, its locks are gone" kill_b_mid_write
force_unmount "$B"
check "host b mounts again from its cache directory" mount_host b
check "...and sees what the others did meanwhile" test -e "$B/after-kill"

# ---------------------------------------------------------------------------
# Snapshots, fsck and gc read the live state from the database, at one
# moment.

sv() { timeout 300 "$S3VAULT" "$@" --key-file "$KEY"; }

snapshot_while_hosts_write() {
    echo "version 1, written on a" >"$A/snap-doc"
    sv snapshot create "$URL" "before b's change"
    echo "version 2, written on b" >"$B/snap-doc"
    sv snapshot list "$URL" | tee "$WORK/snapshots.out"
    grep -q "before b's change" "$WORK/snapshots.out"
    mkdir -p "$WORK/restored"
    sv restore "$URL" /snap-doc --snapshot "before b's change" --to "$WORK/restored"
    [[ $(cat "$WORK/restored/snap-doc") == "version 1, written on a" ]]
    sv_mount "$URL" "$WORK/mnt-snap" "$WORK/cache-snap" --key-file "$KEY" --snapshot "before b's change"
    [[ $(cat "$WORK/mnt-snap/snap-doc") == "version 1, written on a" ]]
    sv_umount "$WORK/mnt-snap"
    [[ $(cat "$C/snap-doc") == "version 2, written on b" ]]
}
check "a snapshot while three hosts write: restore and a snapshot mount show it, the hosts the new file" \
    snapshot_while_hosts_write

fsck_while_mounted() {
    local out
    out=$(sv fsck "$URL")
    echo "$out"
    grep -q '^checked the live state and 1 snapshots' <<<"$out"
    if grep -q PROBLEM <<<"$out"; then return 1; fi
}
check "fsck while three hosts are mounted: the live state and the snapshot whole (exit 0)" fsck_while_mounted

umount_step "umount host a" "$A"
umount_step "umount host b" "$B"
umount_step "umount host c" "$C"

# Each host keeps its own audit chain; the commands merge them all.
audit_merges_hosts() {
    local writers out rc=0
    sv audit log "$URL" --path /snap-doc --event open --format json >"$WORK/audit.json"
    writers=$(python3 -c 'import json, sys; print(len({json.loads(l)["writer"] for l in open(sys.argv[1])}))' "$WORK/audit.json")
    echo "opens of /snap-doc recorded by $writers writers:"
    cat "$WORK/audit.json"
    ((writers == 3))
    out=$(sv audit verify "$URL") || rc=$?
    echo "$out"
    ((rc == 0)) && grep -q '^OK: ' <<<"$out"
    out=$(sv audit review "$URL" --since 1d) || rc=$?
    echo "$out" | head -n 20
    ((rc == 0)) && grep -q 'The audit trail is intact' <<<"$out"
}
check "audit log merges the three hosts' chains (opens of one file on each); verify and review pass" \
    audit_merges_hosts

# The hosts kept the old version's pack for the snapshot; deleting it
# frees that pack.
snapshot_delete_frees() {
    local out
    out=$(sv snapshot delete "$URL" "before b's change")
    echo "$out"
    grep -qE "and [1-9][0-9]* blocks only it kept" <<<"$out"
    out=$(sv snapshot list "$URL")
    if grep -q "before b's change" <<<"$out"; then return 1; fi
}
check "snapshot delete after all unmounted frees the blocks only it kept" snapshot_delete_frees

# What a host that crashed after an upload leaves: gc deletes it, and then
# nothing in the store is unreferenced.
gc_leaves_nothing_unreferenced() {
    local stray out
    stray="data/$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    echo "not a block" >"$WORK/stray"
    store_put "$WORK/stray" "$URL" "$stray"
    out=$(sv gc "$URL" --min-age 0)
    echo "$out"
    grep -q '^deleted [1-9][0-9]* unreferenced objects' <<<"$out"
    if store_ls "$URL" data | grep -qx "$stray"; then
        echo "gc left $stray"
        return 1
    fi
    out=$(sv fsck "$URL" --min-age 0)
    echo "$out"
    grep -q '^0 unreferenced objects' <<<"$out"
    if grep -q PROBLEM <<<"$out"; then return 1; fi
}
check "gc --min-age 0 after all unmounted, then fsck: nothing unreferenced, no problem" gc_leaves_nothing_unreferenced

require "mount host c alone" mount_host c
check "everything is there after all three unmounted and gc" bash -c \
    "cmp '$WORK/closed-20' '$C/closed-20' && test \"\$(cat '$C/blob')\" = 'rewritten on b' && test ! -e '$C/held' \
     && test \"\$(cat '$C/snap-doc')\" = 'version 2, written on b'"
umount_step "umount" "$C"

e2e_finish

#!/usr/bin/env bash
# Getting data back (README "Disaster recovery"): named snapshots pin a
# metadata state and the blocks it references while the live volume moves
# on; a snapshot mounts read-only and shows exactly the old contents;
# `restore` copies files out of it byte for byte, never overwriting; the
# writer does not delete a block a snapshot needs, and deleting the snapshot
# frees it; every step is in the audit trail; fsck finds objects deleted
# or added by hand, and --repair and gc delete only what nothing references;
# changes reach a fresh host through the journal without fsync.
#
# Usage: [E2E_URL=... E2E_ENDPOINT=...] bash tests/e2e/recovery.sh
# shellcheck disable=SC2317,SC2016 # functions run through `check`; wait_for evals its condition
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init recovery

KEY=$WORK/key
URL=$(vol_url recovery)
LIVE=$WORK/mnt-live
SNAP=$WORK/mnt-snap
REF=$WORK/reference

sv() { # SUBCOMMAND... (with the volume's key and endpoint options)
    local opts
    mapfile -t opts < <(s3_opts "$URL")
    timeout 300 "$S3VAULT" "$@" --key-file "$KEY" "${opts[@]}"
}

fsync_tree() {
    python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd)' "$1"
}

data_objects() {
    store_ls "$URL" data | wc -l
}

setup() {
    sv_keygen "$KEY" >/dev/null
    sv_init "$URL" --key-file "$KEY" >/dev/null
    sv_mount "$URL" "$LIVE" "$WORK/cache-live" --key-file "$KEY"
    # A tree with every kind of entry a restore must bring back.
    mkdir -p "$REF/reports/2026" "$REF/empty"
    head -c 3000000 /dev/urandom >"$REF/reports/2026/scan.dcm"
    echo "first version" >"$REF/reports/2026/summary.txt"
    printf 'x%.0s' {1..100} >"$REF/reports/small"
    chmod 640 "$REF/reports/small"
    chmod 2750 "$REF/reports/2026"
    ln -s 2026/summary.txt "$REF/reports/latest"
    ln "$REF/reports/small" "$REF/reports/small-link"
    mkfifo "$REF/reports/pipe"
    touch -d '2001-02-03 04:05:06' "$REF/reports/2026/summary.txt"
    setfattr -n user.origin -v scanner-7 "$REF/reports/2026/scan.dcm"
    # The scan first, in a pack of its own (fsync cuts the pack being
    # filled), so that once only the snapshot has it, its pack is only the
    # snapshot's; then the rest.
    mkdir -p "$LIVE/reports/2026"
    cp -a "$REF/reports/2026/scan.dcm" "$LIVE/reports/2026/"
    fsync_tree "$LIVE/reports/2026/scan.dcm"
    (cd "$REF" && tar cf - --xattrs --exclude=./reports/2026/scan.dcm .) | (cd "$LIVE" && tar xpf - --xattrs)
    fsync_tree "$LIVE/reports/small"
}

snapshot_created_and_listed() {
    sv snapshot create "$URL" "before change"
    local out rc=0
    out=$(sv snapshot list "$URL")
    echo "$out"
    grep -q '^before change ' <<<"$out"
    out=$(sv snapshot create "$URL" "before change" 2>&1) || rc=$?
    echo "$out"
    ((rc == 1)) && grep -q 'already exists' <<<"$out"
    rc=0
    out=$(sv snapshot create "$URL" "$(printf 'bad\tname')" 2>&1) || rc=$?
    ((rc == 2)) || { echo "a name with a tab: exit $rc"; return 1; }
    # Object names in the bucket carry no snapshot name.
    ! store_ls "$URL" | grep -q before
}

live_volume_moves_on() {
    echo "second version" >"$LIVE/reports/2026/summary.txt"
    rm "$LIVE/reports/2026/scan.dcm"
    mv "$LIVE/reports/small" "$LIVE/reports/renamed"
    echo new >"$LIVE/new-file"
    # fsync uploads the state and then deletes the blocks the live state no
    # longer needs, except those the snapshot keeps.
    fsync_tree "$LIVE/new-file"
    fsync_tree "$LIVE/reports/2026/summary.txt"
    [[ $(cat "$LIVE/reports/2026/summary.txt") == "second version" ]]
}

snapshot_mount_shows_old_contents() {
    sv_mount "$URL" "$SNAP" "$WORK/cache-snap" --key-file "$KEY" --snapshot "before change"
    same_tree "$REF" "$SNAP"
    [[ $(getfattr --only-values -n user.origin "$SNAP/reports/2026/scan.dcm") == scanner-7 ]]
    [[ $(stat -c %Y "$SNAP/reports/2026/summary.txt") == $(stat -c %Y "$REF/reports/2026/summary.txt") ]]
    if touch "$SNAP/new" 2>/dev/null; then
        echo "a snapshot mount accepted a write"
        return 1
    fi
    [[ ! -e $SNAP/new-file ]]
    sv_umount "$SNAP"
}

snapshot_mount_refuses_rw() {
    sv_mount_refused 2 "read-only" "$URL" "$SNAP" "$WORK/cache-snap" --key-file "$KEY" \
        --snapshot "before change" -o rw
    sv_mount_refused 2 "no snapshot named" "$URL" "$SNAP" "$WORK/cache-snap2" --key-file "$KEY" \
        --snapshot "never made"
}

restore_everything() {
    sv restore "$URL" / --snapshot "before change" --to "$WORK/restored"
    same_tree "$REF" "$WORK/restored" --mtime
    [[ $(stat -c %i "$WORK/restored/reports/small") == $(stat -c %i "$WORK/restored/reports/small-link") ]]
    [[ $(getfattr --only-values -n user.origin "$WORK/restored/reports/2026/scan.dcm") == scanner-7 ]]
}

restore_one_path_never_overwrites() {
    mkdir -p "$WORK/one"
    sv restore "$URL" /reports/2026/summary.txt --snapshot "before change" --to "$WORK/one"
    [[ $(cat "$WORK/one/summary.txt") == "first version" ]]
    echo "mine" >"$WORK/one/summary.txt"
    local rc=0 out
    out=$(sv restore "$URL" /reports/2026/summary.txt --snapshot "before change" --to "$WORK/one" 2>&1) || rc=$?
    echo "$out"
    ((rc == 1)) && grep -q 'already exists' <<<"$out"
    [[ $(cat "$WORK/one/summary.txt") == mine ]]
    rc=0
    sv restore "$URL" /no/such --snapshot "before change" --to "$WORK/one" || rc=$?
    ((rc == 1))
    # A directory to copy into that is not there yet is made, as for "/".
    sv restore "$URL" /reports/2026/summary.txt --snapshot "before change" --to "$WORK/two/deeper"
    [[ $(cat "$WORK/two/deeper/summary.txt") == "first version" ]]
    # A snapshot that does not exist is a wrong argument, as for mount: 2.
    rc=0
    out=$(sv restore "$URL" /reports --snapshot "no such snapshot" --to "$WORK/one" 2>&1) || rc=$?
    echo "$out"
    ((rc == 2)) && grep -q 'no snapshot named' <<<"$out"
}

restore_is_audited() {
    local opts
    mapfile -t opts < <(s3_opts "$URL")
    timeout 120 "$S3VAULT" audit log "$URL" --key-file "$KEY" "${opts[@]}" --format json --event restore \
        >"$WORK/log.json"
    grep -q '"/reports/2026/scan.dcm"' "$WORK/log.json"
    timeout 120 "$S3VAULT" audit log "$URL" --key-file "$KEY" "${opts[@]}" --format json \
        --event snapshot-create >"$WORK/log.json"
    grep -q 'before change' "$WORK/log.json"
}

# wait_for SECONDS CONDITION: poll until the bash CONDITION holds.
wait_for() {
    local deadline=$((SECONDS + $1))
    until eval "$2"; do
        if ((SECONDS >= deadline)); then
            echo "not within $1 s: $2"
            return 1
        fi
        sleep 0.2
    done
}

follower_sees_the_writer() {
    local f=$WORK/mnt-follow t0
    sv_mount "$URL" "$f" "$WORK/cache-follow" --key-file "$KEY" -o ro --follow-interval 1
    [[ $(cat "$f/new-file") == new ]]
    t0=$SECONDS
    echo "from the writer" >"$LIVE/followed"
    echo "short-lived" >"$LIVE/doomed"
    fsync_tree "$LIVE/followed"
    wait_for 20 '[[ $(cat "$f/followed" 2>/dev/null) == "from the writer" && -e $f/doomed ]]'
    echo "a new file appeared on the follower $((SECONDS - t0)) s after the writer's fsync"
    echo changed >"$LIVE/new-file"
    rm "$LIVE/doomed"
    fsync_tree "$LIVE/new-file"
    wait_for 20 '[[ $(cat "$f/new-file") == changed && ! -e $f/doomed ]]'
    if touch "$f/mine" 2>/dev/null; then
        echo "a follower accepted a write"
        return 1
    fi
    sv_umount "$f"
}

journal_reaches_the_store_without_fsync() {
    local f=$WORK/mnt-fresh t0=$SECONDS
    echo "closed, never fsynced" >"$LIVE/unsynced"
    wait_for 30 '"$S3VAULT" status "$LIVE" --json | grep -q "\"unsynced_metadata\":false"'
    echo "the change was in the store $((SECONDS - t0)) s after close (--metadata-interval 1)"
    store_ls "$URL" journal | grep -q .
    # A fresh host replays the newest checkpoint and the journal after it.
    sv_mount "$URL" "$f" "$WORK/cache-fresh-journal" --key-file "$KEY" -o ro --follow-interval 0
    [[ $(cat "$f/unsynced") == "closed, never fsynced" ]]
    sv_umount "$f"
}

snapshot_survives_a_fresh_host() {
    # The live writer has synced and reclaimed several times by now.
    echo more >"$LIVE/more"
    fsync_tree "$LIVE/more"
    sv_umount "$LIVE"
    rm -rf "$WORK/restored2"
    sv restore "$URL" / --snapshot "before change" --to "$WORK/restored2"
    same_tree "$REF" "$WORK/restored2"
}

delete_frees_what_only_it_kept() {
    local before after
    before=$(data_objects)
    sv snapshot delete "$URL" "before change"
    after=$(data_objects)
    echo "data objects: $before before, $after after"
    # The 3 MB scan's pack was only the snapshot's (the first summary shares
    # a pack with files still live).
    ((after <= before - 1))
    if sv snapshot list "$URL" | grep -q 'before change'; then
        echo "the deleted snapshot is still listed"
        return 1
    fi
    sv_mount "$URL" "$LIVE" "$WORK/cache-fresh" --key-file "$KEY"
    [[ $(cat "$LIVE/reports/2026/summary.txt") == "second version" && $(cat "$LIVE/more") == more ]]
    cmp "$REF/reports/small" "$LIVE/reports/renamed"
    sv_umount "$LIVE"
}

fsck_is_clean() {
    local out
    out=$(sv fsck "$URL")
    echo "$out"
    grep -q '^0 unreferenced objects' <<<"$out"
    ! grep -q PROBLEM <<<"$out"
}

stray_key() {
    echo "data/$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
}

fsck_finds_damage_and_repairs_strays() {
    local victim stray out rc=0 before after
    victim=$(store_ls "$URL" data | head -n 1)
    stray=$(stray_key)
    store_rm "$URL" "$victim"
    echo "not a block" >"$WORK/stray"
    store_put "$WORK/stray" "$URL" "$stray"
    store_put "$WORK/stray" "$URL" data/junk
    out=$(sv fsck "$URL" --min-age 0) || rc=$?
    echo "$out"
    ((rc == 4)) || { echo "exit $rc, expected 4"; return 1; }
    grep -q "PROBLEM the live state: /.* is in $victim, which is missing from the store" <<<"$out"
    grep -q '2 unreferenced objects .*--repair' <<<"$out"
    # A young stray may be an upload about to be referenced.
    out=$(sv fsck "$URL" --repair) || true
    grep -q '2 younger than 1day left alone' <<<"$out"
    before=$(data_objects)
    rc=0
    out=$(sv fsck "$URL" --repair --min-age 0) || rc=$?
    echo "$out"
    after=$(data_objects)
    ((rc == 4)) && grep -q ', 2 deleted' <<<"$out" && ((after == before - 2))
    # The damaged file is still reported, never dropped.
    grep -q "is in $victim, which is missing from the store" <<<"$out"
}

gc_deletes_only_old_strays() {
    local stray out
    stray=$(stray_key)
    store_put "$WORK/stray" "$URL" "$stray"
    out=$(sv gc "$URL")
    echo "$out"
    grep -q 'deleted 0 unreferenced objects .* 1 younger than' <<<"$out"
    store_ls "$URL" data | grep -qx "$stray"
    out=$(sv gc "$URL" --min-age 0 --dry-run)
    grep -q 'would delete 1 unreferenced' <<<"$out"
    store_ls "$URL" data | grep -qx "$stray"
    sv gc "$URL" --min-age 0
    ! store_ls "$URL" data | grep -qx "$stray"
}

require "setup: a volume with a tree of every kind of file" setup
check "snapshot create, list; a duplicate and a bad name are refused" snapshot_created_and_listed
require "the live volume changes and syncs" live_volume_moves_on
check "a snapshot mount shows the old contents, read-only" snapshot_mount_shows_old_contents
check "a snapshot mounts only read-only, and only if it exists" snapshot_mount_refuses_rw
check "restore / copies the snapshot out exactly" restore_everything
check "restore of one path; an existing file is never overwritten" restore_one_path_never_overwrites
check "restores and snapshots are in the audit trail" restore_is_audited
check "a closed file reaches a fresh host through the journal, without fsync" journal_reaches_the_store_without_fsync
check "a read-only mount on another host follows the writer" follower_sees_the_writer
check "the snapshot is whole after the writer reclaimed, from a fresh host" snapshot_survives_a_fresh_host
check "snapshot delete frees the blocks only it kept; the live volume is intact" delete_frees_what_only_it_kept
check "fsck of the volume is clean" fsck_is_clean
check "fsck finds an object deleted and objects added by hand; --repair deletes only those" fsck_finds_damage_and_repairs_strays
check "gc deletes unreferenced objects older than --min-age" gc_deletes_only_old_strays
e2e_finish

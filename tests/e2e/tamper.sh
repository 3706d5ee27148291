#!/usr/bin/env bash
# A bucket that lies (design invariant 9), played by someone with write
# access to the bucket but no key, or by a lifecycle rule that deleted
# objects: every attack is refused or reported with a one-line error, and
# nothing is lost. One check per attack of issue 15 that s3vault detects;
# FORMAT.md's threat model lists what a fresh host cannot tell.
#
# Usage: [E2E_URL=... E2E_ENDPOINT=...] bash tests/e2e/tamper.sh
# shellcheck disable=SC2317 # functions run through `check`
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init tamper

KEY=$WORK/key
URL=$(vol_url tamper)
MNT=$WORK/mnt
CACHE=$WORK/cache-writer

sv() { # SUBCOMMAND... (with the volume's key and endpoint options)
    local opts
    mapfile -t opts < <(s3_opts "$URL")
    timeout 300 "$S3VAULT" "$@" --key-file "$KEY" "${opts[@]}"
}

fsync_file() {
    python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd)' "$1"
}

newest() { # SUBDIR: the newest object key under it
    store_ls "$URL" "$1" | tail -n 1
}

# kill -9 of the daemon serving MP, then the stale mount point cleared.
kill_hard() {
    local pids
    pids=$(daemon_pids "$1")
    # shellcheck disable=SC2086 # a list of PIDs
    [[ -z $pids ]] || kill -KILL $pids
    force_unmount "$1"
}

setup() {
    sv_keygen "$KEY" >/dev/null
    sv_init "$URL" --key-file "$KEY" --chunk-size 64K >/dev/null
    sv_mount "$URL" "$MNT" "$CACHE" --key-file "$KEY"
    head -c 100000 /dev/urandom >"$WORK/a.bin"
    head -c 100000 /dev/urandom >"$WORK/b.bin"
    cp "$WORK/a.bin" "$WORK/b.bin" "$MNT/"
    echo "kept" >"$MNT/old.txt"
    sv_umount "$MNT"
    store_dump "$URL" "$WORK/dump-old"
    sv_mount "$URL" "$MNT" "$CACHE" --key-file "$KEY"
    echo "written after the dump" >"$MNT/newer.txt"
    sv_umount "$MNT"
    store_dump "$URL" "$WORK/dump-new"
}

# put_back_metadata DUMP: the store's meta/ and journal/ objects replaced by
# those of an earlier dump (everything else stays).
put_back_metadata() { # DUMP [URL]
    local key url=${2:-$URL}
    for key in $(store_ls "$url" meta) $(store_ls "$url" journal); do store_rm "$url" "$key"; done
    for key in $(cd "$1" && find meta journal -type f 2>/dev/null); do store_put "$1/$key" "$url" "$key"; done
}

# On a bucket with S3 Object Lock (moto implements it) the writer lays
# retained anchors: a host that never mounted the volume compares the store
# with the newest, even after someone "deleted" them (a delete only adds a
# delete marker; the locked versions stay).
LOCKED_BUCKET=$(tr '[:upper:]' '[:lower:]' <<<"s3vault-anchored-${WORK##*.}")
LOCKED_URL=s3://$LOCKED_BUCKET/vol
anchored_setup() {
    s3tool mb-locked "$LOCKED_BUCKET"
    sv_init "$LOCKED_URL" --key-file "$KEY" >/dev/null
    sv_mount "$LOCKED_URL" "$MNT" "$WORK/cache-anchored" --key-file "$KEY" --audit-retention-days 1
    echo "kept" >"$MNT/old.txt"
    sv_umount "$MNT"
    store_dump "$LOCKED_URL" "$WORK/dump-anchored-old"
    sv_mount "$LOCKED_URL" "$MNT" "$WORK/cache-anchored" --key-file "$KEY" --audit-retention-days 1
    echo "written after the dump" >"$MNT/newer.txt"
    sv_umount "$MNT"
}

a_fresh_host_refuses_a_rollback_below_the_anchor() {
    local out key version rc=0
    out=$(sv info "$LOCKED_URL")
    echo "$out"
    grep -q "^anchor  *anchor/" <<<"$out"
    put_back_metadata "$WORK/dump-anchored-old" "$LOCKED_URL"
    for key in $(store_ls "$LOCKED_URL" anchor); do store_rm "$LOCKED_URL" "$key"; done
    [[ -z $(store_ls "$LOCKED_URL" anchor) ]] || { echo "the anchors are still listed"; return 1; }
    # The bucket keeps the locked versions: deleting one for good is refused.
    read -r key version < <(s3tool versions "$LOCKED_URL/anchor")
    if s3tool rm-version "$LOCKED_URL/anchor/$key" "$version"; then
        echo "the bucket deleted a retained anchor version"
        return 1
    fi
    sv_mount_refused 1 "older than the volume's write-once anchor anchor/[0-9]+ records.*--accept-older-state" \
        "$LOCKED_URL" "$MNT" "$WORK/cache-fresh-anchored" --key-file "$KEY"
    out=$(sv fsck "$LOCKED_URL" --repair --min-age 0 2>&1) || rc=$?
    echo "$out"
    ((rc == 4)) && grep -q "write-once anchor" <<<"$out"
}

accepting_an_older_state_lowers_the_anchor() {
    sv_mount "$LOCKED_URL" "$MNT" "$WORK/cache-fresh-anchored" --key-file "$KEY" --accept-older-state \
        --audit-retention-days 1
    [[ -f $MNT/old.txt && ! -e $MNT/newer.txt ]] || { ls -la "$MNT"; return 1; }
    sv_umount "$MNT"
    # Another host that never mounted it takes the accepted state.
    sv_mount "$LOCKED_URL" "$MNT" "$WORK/cache-fresh-anchored2" --key-file "$KEY" --audit-retention-days 1
    [[ -f $MNT/old.txt ]]
    sv_umount "$MNT"
}

# key remove lays an anchor with the new superblock revision: the
# superblock from before it, put back, is refused by a host that never
# mounted the volume (where a removed slot would open again).
a_fresh_host_refuses_a_superblock_older_than_the_anchor() {
    local rc=0 key2=$WORK/key-anchored2 opts
    mapfile -t opts < <(s3_opts "$LOCKED_URL")
    store_get "$LOCKED_URL" superblock "$WORK/superblock-anchored-old"
    sv_keygen "$key2" >/dev/null
    sv key add "$LOCKED_URL" --new-key-file "$key2"
    # Slot 0 (the first key's) removed, unlocking with the new one.
    timeout 120 "$S3VAULT" key remove "$LOCKED_URL" 0 --key-file "$key2" "${opts[@]}"
    store_get "$LOCKED_URL" superblock "$WORK/superblock-anchored-new"
    store_put "$WORK/superblock-anchored-old" "$LOCKED_URL" superblock
    sv_mount_refused 1 "revision [0-9]+, older than the volume's write-once anchor anchor/[0-9]+ records" \
        "$LOCKED_URL" "$MNT" "$WORK/cache-fresh-anchored3" --key-file "$KEY" || rc=$?
    store_put "$WORK/superblock-anchored-new" "$LOCKED_URL" superblock
    return "$rc"
}

if [[ $E2E_BACKEND == moto ]]; then
    # The rest of the suite runs on file and s3s; moto adds Object Lock.
    sv_keygen "$KEY" >/dev/null
    require "setup: a volume on an Object Lock bucket, written twice, a copy of the store after the first" \
        anchored_setup
    check "old meta/ and journal/ put back, the anchors deleted: a fresh host and fsck refuse it by the anchor" \
        a_fresh_host_refuses_a_rollback_below_the_anchor
    check "--accept-older-state lays a lower anchor: the next fresh host mounts the accepted state" \
        accepting_an_older_state_lowers_the_anchor
    check "key remove, then the superblock before it put back: a fresh host refuses it by the anchor" \
        a_fresh_host_refuses_a_superblock_older_than_the_anchor
    e2e_finish
    exit
fi

rollback_is_refused_by_a_host_that_saw_newer() {
    put_back_metadata "$WORK/dump-old"
    sv_mount_refused 1 "older than this host has seen.*--accept-older-state" \
        "$URL" "$MNT" "$CACHE" --key-file "$KEY"
}

rollback_is_reported_by_audit_verify() {
    local out rc=0
    out=$(sv audit verify "$URL" 2>&1) || rc=$?
    echo "$out"
    ((rc != 0)) && grep -q "rollback.*older than generation" <<<"$out"
}

accepting_an_older_state_is_audited_and_sets_the_database_aside() {
    sv_mount "$URL" "$MNT" "$CACHE" --key-file "$KEY" --accept-older-state
    [[ -f $MNT/old.txt && ! -e $MNT/newer.txt ]] || { ls -la "$MNT"; return 1; }
    sv_umount "$MNT"
    compgen -G "$CACHE/metadata-superseded-*.db" >/dev/null || { ls "$CACHE"; return 1; }
    local out
    out=$(sv audit log "$URL" --event accept-older-state --format json)
    echo "$out"
    [[ $(grep -c '"accept-older-state"' <<<"$out") == 1 ]]
    grep -q 'seen generation=' <<<"$out"
    # From now on the restored state is the one this host has seen (and
    # the newer copy would be refused as another history), and the audit
    # trail agrees.
    sv_mount "$URL" "$MNT" "$CACHE" --key-file "$KEY"
    sv_umount "$MNT"
    sv audit verify "$URL"
    rm -rf "$WORK/dump-new"
    store_dump "$URL" "$WORK/dump-new"
}

missing_checkpoint_fails_closed() {
    local data_before key
    data_before=$(store_ls "$URL" data | wc -l)
    for key in $(store_ls "$URL" meta); do store_rm "$URL" "$key"; done
    sv_mount_refused 1 "no checkpoint" "$URL" "$MNT" "$WORK/cache-fresh1" --key-file "$KEY"
    # The failed mount gave its lease back.
    ! store_ls "$URL" | grep -qx lease || { echo "the lease was left behind"; return 1; }
    local rc=0
    sv fsck "$URL" --repair --min-age 0 || rc=$?
    ((rc == 4)) || { echo "fsck exit $rc, expected 4"; return 1; }
    sv gc "$URL" --min-age 0 || true
    (($(store_ls "$URL" data | wc -l) == data_before)) || { echo "data objects were deleted"; return 1; }
    store_restore "$WORK/dump-new" "$URL"
}

a_gap_in_the_journal_is_refused_not_mounted_as_an_older_state() {
    sv_mount "$URL" "$MNT" "$CACHE" --key-file "$KEY"
    local name
    for name in one two three; do
        echo "$name" >"$MNT/$name.txt"
        fsync_file "$MNT/$name.txt"
    done
    local segments
    mapfile -t segments < <(store_ls "$URL" journal)
    echo "segments: ${segments[*]}"
    ((${#segments[@]} >= 3)) || { sv_umount "$MNT"; return 1; }
    store_rm "$URL" "${segments[-2]}"
    local rc=0
    sv_mount_refused 1 "journal segment [0-9]+ is missing" \
        "$URL" "$WORK/mnt-reader" "$WORK/cache-fresh2" --key-file "$KEY" -o ro || rc=$?
    local fsck_rc=0
    sv fsck "$URL" --quick || fsck_rc=$?
    echo "fsck exit $fsck_rc"
    # The writer still has everything: its unmount checkpoints it all.
    sv_umount "$MNT"
    ((rc == 0 && fsck_rc != 0))
}

save_newest_segment() {
    sv_mount "$URL" "$MNT" "$CACHE" --key-file "$KEY"
    # The mount's first upload carries a checkpoint; the next is a segment.
    echo "first" >"$MNT/first.txt"
    fsync_file "$MNT/first.txt"
    echo "fsynced" >"$MNT/fsynced.txt"
    fsync_file "$MNT/fsynced.txt"
    kill_hard "$MNT"
    local segment
    segment=$(newest journal)
    store_get "$URL" "$segment" "$WORK/saved-segment"
    store_rm "$URL" "$segment"
    echo "deleted $segment"
    sv_mount_refused 1 "older than this host has seen" "$URL" "$MNT" "$CACHE" --key-file "$KEY" || return 1
    store_put "$WORK/saved-segment" "$URL" "$segment"
    sv_mount "$URL" "$MNT" "$CACHE" --key-file "$KEY"
    grep -qx fsynced "$MNT/fsynced.txt"
    sv_umount "$MNT"
}

an_old_superblock_is_refused_where_a_newer_was_seen() {
    store_get "$URL" superblock "$WORK/superblock-old"
    sv_keygen "$WORK/key2" >/dev/null
    sv key add "$URL" --new-key-file "$WORK/key2"
    sv_mount "$URL" "$MNT" "$CACHE" --key-file "$KEY"
    sv_umount "$MNT"
    store_get "$URL" superblock "$WORK/superblock-new"
    store_put "$WORK/superblock-old" "$URL" superblock
    local rc=0
    sv_mount_refused 1 "superblock .* revision 1, older than this host has seen \(revision 2\)" \
        "$URL" "$MNT" "$CACHE" --key-file "$KEY" || rc=$?
    store_put "$WORK/superblock-new" "$URL" superblock
    return "$rc"
}

extreme_argon2_costs_are_refused_before_any_derivation() {
    local url=$URL-argon pass=$WORK/pass
    echo "a passphrase for the argon2 check" >"$pass"
    chmod 600 "$pass"
    sv_init "$url" --passphrase-file "$pass" >/dev/null
    store_get "$url" superblock "$WORK/sb-argon"
    # The first slot's Argon2 memory cost (format 2: slots at 48, m at +10).
    python3 -c 'import sys; b = bytearray(open(sys.argv[1], "rb").read()); b[58:62] = b"\xff" * 4; open(sys.argv[1], "wb").write(b)' \
        "$WORK/sb-argon"
    store_put "$WORK/sb-argon" "$url" superblock
    local t0=$SECONDS
    sv_mount_refused 2 "argon2id m=4294967295" "$url" "$WORK/mnt-argon" "$WORK/cache-argon" --passphrase-file "$pass" || return 1
    ((SECONDS - t0 < 20)) || { echo "took $((SECONDS - t0)) s"; return 1; }
}

# read_all MP: reads every file; prints how many failed.
read_all() {
    local failed=0 f
    while IFS= read -r -d '' f; do
        timeout 60 cat "$f" >/dev/null 2>&1 || failed=$((failed + 1))
    done < <(find "$1" -type f -print0)
    echo "$failed"
}

a_swapped_data_object_is_an_error_and_never_poisons_the_cache() {
    # The largest pack holds a.bin and b.bin (written together); another
    # pack, padded to the same length, takes its place.
    local objects key size first="" second="" largest=0
    mapfile -t objects < <(store_ls "$URL" data)
    mkdir -p "$WORK/objects"
    for key in "${objects[@]}"; do
        store_get "$URL" "$key" "$WORK/objects/${key#data/}"
        size=$(stat -c %s "$WORK/objects/${key#data/}")
        if ((size > largest)); then
            [[ -n $first ]] && second=$first
            first=$key largest=$size
        else
            second=$key
        fi
    done
    [[ -n $second ]] || { echo "fewer than two data objects"; return 1; }
    echo "putting $second, padded to $largest bytes, where $first was"
    cp "$WORK/objects/${second#data/}" "$WORK/impostor"
    truncate -s "$largest" "$WORK/impostor"
    store_put "$WORK/impostor" "$URL" "$first"
    sv_mount "$URL" "$MNT" "$WORK/cache-fresh3" --key-file "$KEY" -o ro
    local failed
    failed=$(read_all "$MNT")
    echo "$failed files failed to read"
    store_put "$WORK/objects/${first#data/}" "$URL" "$first"
    # The same mount reads everything once the right object is back.
    cmp "$WORK/a.bin" "$MNT/a.bin" && cmp "$WORK/b.bin" "$MNT/b.bin"
    local ok=$?
    sv_umount "$MNT"
    ((failed >= 2 && ok == 0))
}

an_oversized_object_is_refused_without_being_read() {
    [[ $URL == file://* ]] || { echo "file:// only (a sparse 8 GiB object)"; return 0; }
    local objects path
    mapfile -t objects < <(store_ls "$URL" data)
    path=$(file_path "$URL")/${objects[0]}
    cp "$path" "$WORK/object-big"
    # 8 GiB of zeros: readers fetch only the ranges their chunks occupy.
    : >"$path"
    truncate -s 8G "$path"
    sv_mount "$URL" "$MNT" "$WORK/cache-fresh4" --key-file "$KEY" -o ro
    local failed rss
    failed=$(read_all "$MNT")
    rss=$(awk '/VmHWM/ { print $2 }' "/proc/$(daemon_pids "$MNT" | head -n 1)/status")
    echo "$failed files failed; daemon peak RSS ${rss} KiB"
    sv_umount "$MNT"
    cp "$WORK/object-big" "$path"
    ((failed >= 1 && rss < 2000000))
}

key_files_others_control_are_refused() {
    local dir opts rc=0
    mapfile -t opts < <(s3_opts "$URL")
    # Somewhere another user can reach, as /tmp is.
    dir=$(mktemp -d /tmp/s3vault-keys.XXXXXX)
    key_files_in "$dir" || rc=$?
    rm -rf "$dir"
    return "$rc"
}

key_files_in() { # DIR
    local dir=$1
    cp "$KEY" "$dir/theirs.key"
    chown nobody "$dir/theirs.key"
    expect_fail "owned by uid" timeout 60 "$S3VAULT" info "$URL" --key-file "$dir/theirs.key" "${opts[@]}" || return 1
    cp "$KEY" "$dir/mine.key"
    chmod 1777 "$dir"
    echo "a key file of ours, through a symlink of nobody's:"
    su nobody -s /bin/sh -c "ln -s '$dir/mine.key' '$dir/link.key'"
    expect_fail "owned by uid" timeout 60 "$S3VAULT" info "$URL" --key-file "$dir/link.key" "${opts[@]}"
}

a_lost_lease_loses_nothing() {
    local a=$WORK/cache-a b=$WORK/cache-b out=$WORK/recovered
    # A writes and closes a file, then dies before uploading its metadata.
    sv_mount "$URL" "$MNT" "$a" --key-file "$KEY" --metadata-interval 3600
    echo "closed on A only" >"$MNT/closed-on-a.txt"
    kill_hard "$MNT"
    # B takes the volume over and moves it on.
    sv_mount "$URL" "$WORK/mnt-b" "$b" --key-file "$KEY" --force-takeover
    echo "from B" >"$WORK/mnt-b/from-b.txt"
    sv_umount "$WORK/mnt-b"
    # A's cache is refused instead of being rebuilt over.
    sv_mount_refused 1 "never reached the store.*s3vault recover" "$URL" "$MNT" "$a" --key-file "$KEY" || return 1
    sv recover "$URL" "$a" --to "$out" || return 1
    [[ $(cat "$out/closed-on-a.txt") == "closed on A only" ]] || { ls -laR "$out"; return 1; }
    [[ $(sv audit log "$URL" --event restore --format json | grep -c 'recovered from cache_dir') -ge 1 ]] || return 1
    sv_mount "$URL" "$MNT" "$a" --key-file "$KEY" --set-aside-unuploaded
    [[ -f $MNT/from-b.txt && ! -e $MNT/closed-on-a.txt ]] || { ls -la "$MNT"; return 1; }
    sv_umount "$MNT"
    compgen -G "$a/metadata-unuploaded-*.db" >/dev/null
}

audit_writers() { # the chains in the store, one writer per line
    store_ls "$URL" audit | cut -d/ -f2 | sort -u
}

deleted_audit_chains_are_named_by_audit_verify() {
    local before snapshot_chain longest last out rc=0
    before=$(audit_writers)
    sv snapshot create "$URL" "audit witness"
    snapshot_chain=$(comm -13 <(echo "$before") <(audit_writers))
    [[ -n $snapshot_chain ]] || { echo "no chain for snapshot create"; return 1; }
    # A later chain (a mount from another cache directory: a chain of its
    # own) begins by naming every chain it finds.
    sv_mount "$URL" "$MNT" "$WORK/cache-witness" --key-file "$KEY" -o ro
    sv_umount "$MNT"
    sv audit verify "$URL" || return 1
    longest=$(store_ls "$URL" audit | cut -d/ -f2 | sort | uniq -c | sort -rn | awk 'NR == 1 { print $2 }')
    last=$(store_ls "$URL" "audit/$longest" | tail -n 1)
    # The end of the mount chain that the last mount saw, and the whole
    # one-shot chain of `snapshot create`.
    mkdir -p "$WORK/audit-saved"
    for key in "$last" $(store_ls "$URL" "audit/$snapshot_chain"); do
        store_get "$URL" "$key" "$WORK/audit-saved/${key//\//_}"
        store_rm "$URL" "$key"
    done
    out=$(sv audit verify "$URL" 2>&1) || rc=$?
    echo "$out"
    ((rc != 0)) || return 1
    grep -q "audit/$snapshot_chain.*the whole chain is missing" <<<"$out" || return 1
    grep -q "audit/$longest.*missing from its end" <<<"$out"
}

require "setup: a volume written twice, with a copy of the store after each" setup
check "old meta/ and journal/ put back: the writer's host refuses them" rollback_is_refused_by_a_host_that_saw_newer
check "... and audit verify, from any host, reports the store older than the trail has seen" \
    rollback_is_reported_by_audit_verify
check "--accept-older-state mounts it, audited, the newer database set aside" \
    accepting_an_older_state_is_audited_and_sets_the_database_aside
check "every checkpoint deleted: mount, fsck, gc refuse and delete nothing; the lease is given back" \
    missing_checkpoint_fails_closed
check "a segment between others deleted: a reader refuses, fsck reports it" \
    a_gap_in_the_journal_is_refused_not_mounted_as_an_older_state
check "kill -9 after fsync, newest segment deleted: the writer's host refuses; put back, nothing lost" \
    save_newest_segment
check "an old superblock put back after key add: refused where the newer was seen" \
    an_old_superblock_is_refused_where_a_newer_was_seen
check "Argon2 m = 4 TiB in a slot: refused at once" extreme_argon2_costs_are_refused_before_any_derivation
check "a data object swapped with another: EIO, and the right one back reads in the same mount" \
    a_swapped_data_object_is_an_error_and_never_poisons_the_cache
check "an 8 GiB object of zeros where a pack belongs: EIO without reading it whole" an_oversized_object_is_refused_without_being_read
check "a key file owned by another user, or reached through their symlink: refused" \
    key_files_others_control_are_refused
check "a writer taken over before uploading: its cache is refused, recover copies its files out" \
    a_lost_lease_loses_nothing
check "a deleted one-shot chain and a deleted chain end: audit verify names both" \
    deleted_audit_chains_are_named_by_audit_verify
e2e_finish

#!/usr/bin/env bash
# Integrity (design invariant 2) and key handling (invariant 6).
#
# The objects of a volume are tampered with directly in the store: a flipped
# byte, two chunks swapped within their pack, two packs swapped (across
# files), a truncated pack, a missing pack, a pack from a volume with
# another key, a pack from another volume with the same key, a tampered
# metadata snapshot and superblock. Each case starts from the pristine store and an empty cache
# dir (so everything is read from the store). A file whose data was touched
# must fail to read with EIO and must never yield bytes other than its own;
# the other files must still read back intact.
#
# Which data objects (packs) belong to which file cannot be told from their
# names (random ids); the files are written one per mount session instead,
# so each file is one pack of its own: the one that appears in data/ after
# its session. Chunk i of a file sealed alone starts at i × (64 KiB + 28).
#
# Then: wrong key, wrong passphrase, key files readable by group/world, bad
# options: mount exits 2 with a one-line message.
#
# Usage: [E2E_URL=... E2E_ENDPOINT=...] bash tests/e2e/integrity.sh
# Functions here are mostly run indirectly, through `check`.
# shellcheck disable=SC2317
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init integrity

KEY=$WORK/key
KEY_OTHER=$WORK/key-other
URL=$(vol_url integ)
MNT=$WORK/mnt
CACHE=$WORK/cache
SRC=$WORK/src
PRISTINE=$WORK/pristine
mkdir -p "$SRC"
B=65536
S=$((B + 28)) # a sealed 64 KiB chunk
# The files: sizes of 1, 2 and 3 chunks (the last one partial).
head -c $((B / 2)) /dev/urandom >"$SRC/one"
head -c $((2 * B)) /dev/urandom >"$SRC/two"
head -c $((2 * B + B / 2)) /dev/urandom >"$SRC/victim"
FILES="one two victim"

# ---------------------------------------------------------------------------

objs_of() { # NAME: the data objects written in the session of file NAME
    cat "$WORK/objs-$1"
}

# write_alone NAME: a mount session that writes just this file; records the
# data objects that appeared.
write_alone() {
    local name=$1
    store_ls "$URL" data >"$WORK/before"
    sv_mount "$URL" "$MNT" "$CACHE" --key-file "$KEY"
    cp "$SRC/$name" "$MNT/$name"
    sv_umount "$MNT"
    store_ls "$URL" data >"$WORK/after"
    comm -13 "$WORK/before" "$WORK/after" >"$WORK/objs-$name"
    if [[ -n $(comm -23 "$WORK/before" "$WORK/after") ]]; then
        echo "objects of earlier files disappeared when $name was written:"
        comm -23 "$WORK/before" "$WORK/after"
        return 1
    fi
    echo "$name: $(wc -l <"$WORK/objs-$name") new data objects"
}

object_count() { # NAME N
    local n
    n=$(objs_of "$1" | wc -l)
    echo "$1 has $n data objects, expected $2"
    ((n == $2))
}

# read_fails_eio NAME: reading the file fails with EIO; what was returned
# before the error is a prefix of the true content.
read_fails_eio() {
    local name=$1 out err rc=0 n
    out=$(mktemp "$WORK/read.XXXXXX")
    err=$(mktemp "$WORK/read.XXXXXX")
    cat "$MNT/$name" >"$out" 2>"$err" || rc=$?
    cat "$err"
    n=$(stat -c %s "$out")
    if ((rc == 0)); then
        if cmp -s "$out" "$SRC/$name"; then
            echo "read of the tampered $name succeeded (returned the right bytes: tampering not effective?)"
        else
            echo "read of the tampered $name SUCCEEDED AND RETURNED WRONG BYTES ($n bytes)"
        fi
        return 1
    fi
    if ((n > 0)) && ! cmp -n "$n" "$out" "$SRC/$name"; then
        echo "the $n bytes returned before the error are not the file's own"
        return 1
    fi
    if ! grep -q 'Input/output error' "$err"; then
        echo "failed, but not with EIO"
        return 1
    fi
    echo "EIO after $n good bytes"
}

# The design asks for EIO "plus a log line": an ERROR or WARN line in the
# daemon's log (in the cache dir).
logged_integrity_error() {
    local log=$CACHE/s3vault.log
    [[ -f $log ]] || {
        echo "no daemon log at $log"
        return 1
    }
    sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E 'ERROR|WARN'
}

reads_ok() { # NAME
    cmp "$MNT/$1" "$SRC/$1"
}

flip_byte() { # FILE OFFSET: xor one bit of the byte at OFFSET
    python3 -c '
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2]))
    b = f.read(1)
    f.seek(int(sys.argv[2]))
    f.write(bytes([b[0] ^ 0x01]))
' "$1" "$2"
}

# Tamper functions: change the store, report which files are affected.
t_flip() { # in the middle of the second chunk's ciphertext
    local k f
    k=$(objs_of victim | sed -n 1p)
    f=$WORK/obj
    store_get "$URL" "$k" "$f"
    flip_byte "$f" $((S + B / 2))
    store_put "$f" "$URL" "$k"
}

t_flip_last() { # the tag at the end of the first chunk
    local k f
    k=$(objs_of victim | sed -n 1p)
    f=$WORK/obj
    store_get "$URL" "$k" "$f"
    flip_byte "$f" $((S - 1))
    store_put "$f" "$URL" "$k"
}

swap() { # KEY1 KEY2
    store_get "$URL" "$1" "$WORK/obj1"
    store_get "$URL" "$2" "$WORK/obj2"
    store_put "$WORK/obj2" "$URL" "$1"
    store_put "$WORK/obj1" "$URL" "$2"
}

t_swap_within() { # the first two chunks of the victim's pack trade places
    local k f
    k=$(objs_of victim | sed -n 1p)
    f=$WORK/obj
    store_get "$URL" "$k" "$f"
    python3 -c '
import sys
s = int(sys.argv[2])
with open(sys.argv[1], "r+b") as f:
    data = f.read()
    f.seek(0)
    f.write(data[s:2 * s] + data[:s])
' "$f" "$S"
    store_put "$f" "$URL" "$k"
}

t_swap_across() {
    swap "$(objs_of victim | sed -n 1p)" "$(objs_of two | sed -n 1p)"
}

t_truncate() {
    local k f
    k=$(objs_of victim | sed -n 1p)
    f=$WORK/obj
    store_get "$URL" "$k" "$f"
    truncate -s $(($(stat -c %s "$f") / 2)) "$f"
    store_put "$f" "$URL" "$k"
}

t_empty() {
    local k
    k=$(objs_of victim | sed -n 1p)
    : >"$WORK/obj"
    store_put "$WORK/obj" "$URL" "$k"
}

t_missing() {
    store_rm "$URL" "$(objs_of victim | sed -n 1p)"
}

t_other_key() { # an object of a volume with another key, over one of ours
    store_put "$WORK/foreign-other-key" "$URL" "$(objs_of victim | sed -n 1p)"
}

t_same_key_other_volume() { # same key, same first file, same block index
    store_put "$WORK/foreign-same-key" "$URL" "$(objs_of one | sed -n 1p)"
}

# tamper_case NAME FUNC AFFECTED_FILES
tamper_case() {
    local name=$1 func=$2 affected=" $3 " f
    store_restore "$PRISTINE" "$URL" || abort "cannot restore the pristine store"
    rm -rf "$CACHE"
    if ! "$func" >"$WORK/logs/tamper.log" 2>&1; then
        abort "tampering ($name) failed (bug in the test): $(tail -n 3 "$WORK/logs/tamper.log")"
    fi
    check "$name: mount" sv_mount "$URL" "$MNT" "$CACHE" --key-file "$KEY"
    if ((!LAST_OK)); then
        return 0
    fi
    for f in $FILES; do
        if [[ $affected == *" $f "* ]]; then
            check "$name: reading '$f' fails with EIO, never wrong bytes" read_fails_eio "$f"
        else
            check "$name: '$f' still reads back intact" reads_ok "$f"
        fi
    done
    if [[ -n ${affected// /} ]]; then
        check "$name: the daemon logged the failure" logged_integrity_error
    fi
    umount_step "$name: umount" "$MNT"
}

# ---------------------------------------------------------------------------

require "keygen" sv_keygen "$KEY"
require "keygen (a second key)" sv_keygen "$KEY_OTHER"
require "init $URL (64K chunks)" sv_init "$URL" --chunk-size 64K --key-file "$KEY"
for f in $FILES; do
    require "write '$f' alone in a mount session" write_alone "$f"
done
check "'one' (half a chunk) is 1 pack" object_count one 1
check "'two' (2 chunks) is 1 pack" object_count two 1
check "'victim' (2.5 chunks) is 1 pack" object_count victim 1
pack_len() { # NAME LEN: the file's pack is LEN bytes (padded to 64 KiB)
    local f=$WORK/obj-len
    store_get "$URL" "$(objs_of "$1")" "$f"
    echo "$1's pack is $(stat -c %s "$f") bytes, expected $2"
    (($(stat -c %s "$f") == $2))
}
check "packs are padded: half a chunk takes 64 KiB" pack_len one $((64 * 1024))
check "... and 2.5 chunks 192 KiB" pack_len victim $((192 * 1024))
if (($(objs_of victim | wc -l) != 1 || $(objs_of two | wc -l) != 1 || $(objs_of one | wc -l) != 1)); then
    abort "cannot tell which data objects belong to which file"
fi
store_dump "$URL" "$PRISTINE" || abort "cannot copy the store"

# A second volume with another key, and a third with the same key, each with
# a first file like ours, to take objects from.
prepare_foreign() { # URL KEYFILE SRCFILE OUT
    local url=$1 key=$2 src=$3 out=$4 mnt=$WORK/mnt-foreign
    sv_init "$url" --chunk-size 64K --key-file "$key"
    sv_mount "$url" "$mnt" "$WORK/cache-foreign-${url##*/}" --key-file "$key"
    cp "$src" "$mnt/one"
    sv_umount "$mnt"
    store_get "$url" "$(store_ls "$url" data | head -n 1)" "$out"
}
head -c $((B / 2)) /dev/urandom >"$SRC/foreign"
require "a volume with another key, for its objects" \
    prepare_foreign "$(vol_url integ-other-key)" "$KEY_OTHER" "$SRC/foreign" "$WORK/foreign-other-key"
require "a volume with the same key, for its objects" \
    prepare_foreign "$(vol_url integ-same-key)" "$KEY" "$SRC/foreign" "$WORK/foreign-same-key"

tamper_case "pristine store (control)" true ""
tamper_case "one byte flipped in the middle of a chunk" t_flip "victim"
tamper_case "last byte (tag) of a chunk flipped" t_flip_last "victim"
tamper_case "two chunks of one file swapped within their pack" t_swap_within "victim"
tamper_case "packs of two files swapped" t_swap_across "victim two"
tamper_case "pack truncated to half" t_truncate "victim"
tamper_case "pack emptied" t_empty "victim"
tamper_case "pack missing" t_missing "victim"
tamper_case "pack from a volume with another key" t_other_key "victim"
tamper_case "pack from another volume with the same key" t_same_key_other_volume "one"

# Metadata and superblock: the mount must not come up with wrong contents.
meta_tampered_mount() {
    local k f=$WORK/obj rc=0
    for k in $(store_ls "$URL" meta); do
        store_get "$URL" "$k" "$f"
        flip_byte "$f" $(($(stat -c %s "$f") / 2))
        store_put "$f" "$URL" "$k"
    done
    rm -rf "$CACHE"
    sv_mount "$URL" "$MNT" "$CACHE" --key-file "$KEY" || rc=$?
    if ((rc == 0)); then
        echo "mounted a volume whose every metadata object was tampered with; files seen:"
        ls -la "$MNT"
        force_unmount "$MNT"
        return 1
    fi
    echo "mount refused (exit $rc)"
}
superblock_tampered_mount() {
    local f=$WORK/obj rc=0
    store_get "$URL" superblock "$f"
    flip_byte "$f" $(($(stat -c %s "$f") - 2))
    store_put "$f" "$URL" superblock
    rm -rf "$CACHE"
    sv_mount "$URL" "$MNT" "$CACHE" --key-file "$KEY" || rc=$?
    if ((rc == 0)); then
        echo "mounted with a tampered superblock"
        force_unmount "$MNT"
        return 1
    fi
    echo "mount refused (exit $rc)"
}
store_restore "$PRISTINE" "$URL" || abort "cannot restore the pristine store"
check "metadata objects present in meta/" test -n "$(store_ls "$URL" meta)"
check "every metadata object tampered: mount refuses" meta_tampered_mount
store_restore "$PRISTINE" "$URL" || abort "cannot restore the pristine store"
check "superblock tampered: mount refuses" superblock_tampered_mount
store_restore "$PRISTINE" "$URL" || abort "cannot restore the pristine store"
rm -rf "$CACHE"

# ---------------------------------------------------------------------------
# Keys and mount errors

cp "$KEY" "$WORK/key-0644"
chmod 0644 "$WORK/key-0644"
cp "$KEY" "$WORK/key-0640"
chmod 0640 "$WORK/key-0640"
check "wrong key file: mount exits 2 with one line" \
    sv_mount_refused 2 '' "$URL" "$MNT" "$CACHE" --key-file "$KEY_OTHER"
check "key file mode 0644: mount refused (exit 2), message names permissions" \
    sv_mount_refused 2 'permission|mode|group|world|0644' "$URL" "$MNT" "$CACHE" --key-file "$WORK/key-0644"
check "key file mode 0640: mount refused (exit 2)" \
    sv_mount_refused 2 'permission|mode|group|world|0640' "$URL" "$MNT" "$CACHE" --key-file "$WORK/key-0640"
check "missing key file: mount exits 2" \
    sv_mount_refused 2 '' "$URL" "$MNT" "$CACHE" --key-file "$WORK/no-such-key"
check "unknown -o option: mount exits 2" \
    sv_mount_refused 2 '' "$URL" "$MNT" "$CACHE" --key-file "$KEY" -o no_such_option
check "init with a key file of mode 0644 is refused" expect_fail '' sv_init "$(vol_url integ-badkey)" --key-file "$WORK/key-0644"

# mount must not keep the caller's stdout open (command substitution, pipes,
# systemd Type=forking would hang)
mount_through_pipe() {
    local out opts
    mapfile -t opts < <(s3_opts "$URL")
    out=$(timeout 60 bash -c '"$@" 2>&1 | cat' _ \
        "$S3VAULT" mount "$URL" "$MNT" --cache-dir "$CACHE" --key-file "$KEY" "${opts[@]}") || {
        echo "$out"
        echo "mount with its stdout on a pipe did not return within 60 s (daemon holds the pipe?)"
        return 1
    }
    mountpoint -q "$MNT"
    reads_ok victim
}
echo "$MNT" >>"$WORK/mounts"
check "mount with stdout on a pipe returns (daemon detaches from it)" mount_through_pipe
umount_step "umount after the piped mount" "$MNT"

# Passphrase volumes
URL_P=$(vol_url integ-pass)
printf 'correct horse battery staple\n' >"$WORK/pass"
printf 'wrong horse battery staple\n' >"$WORK/pass-wrong"
cp "$WORK/pass" "$WORK/pass-0644"
chmod 0600 "$WORK/pass" "$WORK/pass-wrong"
chmod 0644 "$WORK/pass-0644"
require "init with a passphrase file" sv_init "$URL_P" --chunk-size 64K --passphrase-file "$WORK/pass"
require "mount with the right passphrase" sv_mount "$URL_P" "$MNT" "$WORK/cache-p" --passphrase-file "$WORK/pass"
check "write on the passphrase volume" cp "$SRC/victim" "$MNT/victim"
umount_step "umount the passphrase volume" "$MNT"
check "wrong passphrase: mount exits 2 with one line" \
    sv_mount_refused 2 '' "$URL_P" "$MNT" "$WORK/cache-p" --passphrase-file "$WORK/pass-wrong"
check "passphrase file mode 0644: mount refused (exit 2)" \
    sv_mount_refused 2 'permission|mode|group|world|0644' "$URL_P" "$MNT" "$WORK/cache-p" --passphrase-file "$WORK/pass-0644"
check "key file on a passphrase volume: mount exits 2" \
    sv_mount_refused 2 '' "$URL_P" "$MNT" "$WORK/cache-p" --key-file "$KEY"
rm -rf "$WORK/cache-p"
require "mount the passphrase volume from an empty cache" sv_mount "$URL_P" "$MNT" "$WORK/cache-p" --passphrase-file "$WORK/pass"
check "the passphrase volume reads back" reads_ok victim
umount_step "umount the passphrase volume again" "$MNT"

e2e_finish

#!/usr/bin/env bash
# Confidentiality (design invariant 1): no plaintext file data, file name,
# path, symlink target or extended attribute reaches the store or the local
# disk. Files are written with a random marker in their names, contents,
# directory names, symlink targets and xattrs; then every byte of the store
# (through the S3 API, and on disk where the server keeps its objects on
# disk), of the cache directory, of the daemon's temp dir and of its output
# is searched for the marker. The daemon runs with S3VAULT_LOG=debug, since
# debug logs fall under the same rule.
#
# With E2E_METADATA (metadata in PostgreSQL) a pg_dump of the database and
# the server's files (E2E_PG_DATA) are searched too.
#
# Usage: [E2E_URL=... E2E_ENDPOINT=... E2E_STORE_DISK=...] bash tests/e2e/confidentiality.sh
# Functions here are mostly run indirectly, through `check`.
# shellcheck disable=SC2317
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init confidentiality

KEY=$WORK/key
URL=$(vol_url conf)
MNT=$WORK/mnt
CACHE=$WORK/cache
DAEMON_TMP=$WORK/daemon-tmp # TMPDIR of the daemon: temp files are scanned too
DAEMON_LOG=$WORK/daemon-out # stdout/stderr of every s3vault command
mkdir -p "$DAEMON_TMP" "$DAEMON_LOG"
MARK="PHI-MARKER-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
echo "marker: $MARK"

# s3vault with its output kept apart from the test's own logs (which print
# the marker when showing what was written).
sv_logged() { # FUNC ARGS...
    local rc=0
    TMPDIR=$DAEMON_TMP S3VAULT_LOG=debug RUST_LOG=debug "$@" >>"$DAEMON_LOG/s3vault.log" 2>&1 || rc=$?
    if ((rc != 0)); then
        echo "exit $rc; last lines of the s3vault output:"
        tail -n 10 "$DAEMON_LOG/s3vault.log"
    fi
    return "$rc"
}

write_markers() { # ROOT
    local r=$1 d i
    d="$r/patient-$MARK-DIR"
    mkdir "$d"
    # a multi-block file with the marker in every block
    for i in $(seq 4000); do
        echo "line $i: name=$MARK-CONTENT diagnosis=confidential"
    done >"$d/record-$MARK-NAME.txt"
    # a tiny file, in case small files are stored differently
    printf '%s' "$MARK-TINY" >"$r/tiny"
    ln -s "target-$MARK-LINK" "$r/link"
    echo "renamed" >"$r/tmpname"
    mv "$r/tmpname" "$r/renamed-$MARK-RENAMED"
    echo "$MARK-DELCONTENT" >"$r/deleted-$MARK-DELETED"
    sync "$r/deleted-$MARK-DELETED"
    rm "$r/deleted-$MARK-DELETED"
    ln "$d/record-$MARK-NAME.txt" "$r/hardlink-$MARK-HARDLINK"
    # fsync one file so that data reaches the store while mounted
    echo "$MARK-FSYNCED" >"$r/fsynced"
    sync "$r/fsynced"
}

# Extended attributes are optional for the file system; when supported they
# fall under the rule as well.
write_xattr() { # ROOT
    setfattr -n user.note -v "$MARK-XATTR" "$1/tiny"
    [[ $(getfattr --only-values -n user.note "$1/tiny") == "$MARK-XATTR" ]]
}

# Positive control: the marker really is in the file system, so that finding
# it nowhere else means something.
markers_visible() { # ROOT
    local n
    grep -q -F "$MARK-CONTENT" "$1/patient-$MARK-DIR/record-$MARK-NAME.txt"
    grep -q -F "$MARK-TINY" "$1/tiny"
    [[ $(readlink "$1/link") == "target-$MARK-LINK" ]]
    n=$(find "$1" -name "*$MARK*" | wc -l)
    echo "$n names with the marker"
    ((n == 4))
}

# no_marker DIR...: no file under the DIRs has the marker in its bytes or its
# name. Also fails when there is nothing to scan (the test would be void).
no_marker() {
    local hits files bytes f
    files=$(find "$@" -type f | wc -l)
    bytes=$(du -scb "$@" | tail -n 1 | cut -f1)
    echo "scanning $files files, $bytes bytes in $*"
    if ((files == 0)); then
        echo "nothing to scan"
        return 1
    fi
    hits=$(grep -r -a -l -F -- "$MARK" "$@" || true)
    if [[ -n $hits ]]; then
        echo "MARKER FOUND in:"
        while IFS= read -r f; do
            echo "  $f: $(grep -a -o -F -- "$MARK" "$f" | wc -l)x, kinds: $(grep -a -o -E -- "$MARK-[A-Z]+" "$f" | sed "s/^$MARK-//" | sort -u | tr '\n' ' ')"
        done <<<"$hits"
        return 1
    fi
    hits=$(find "$@" -name "*$MARK*")
    if [[ -n $hits ]]; then
        echo "MARKER FOUND in file names:"
        echo "$hits"
        return 1
    fi
}

# scan_store LABEL: dump the volume through its own protocol and scan the
# objects, their keys and (for S3) their metadata headers.
scan_store() {
    local dump
    dump=$(mktemp -d "$WORK/dump.XXXXXX")
    store_dump "$URL" "$dump/objects" "$dump/s3-keys-and-headers"
    no_marker "$dump"
}

# scan_database: with the metadata in PostgreSQL, a dump of the database
# (pg_dump, as its administrator would take one) holds the volume's tables
# and no marker; nor do the server's own files (tables, WAL).
scan_database() {
    local dump=$WORK/pgdump
    mkdir -p "$dump"
    "${E2E_PG_BIN:+$E2E_PG_BIN/}pg_dump" "$E2E_METADATA" >"$dump/dump.sql"
    grep -c 'CREATE TABLE s3vault_' "$dump/dump.sql"
    no_marker "$dump"
    if [[ -n ${E2E_PG_DATA:-} ]]; then
        no_marker "$E2E_PG_DATA"
    fi
}

read_all() { # ROOT: read every file back through the mount
    find "$1" -type f -exec cat {} + >/dev/null
}

require "keygen" sv_keygen "$KEY"
require "init $URL (64K chunks)" sv_logged sv_init "$URL" --chunk-size 64K --key-file "$KEY"
require "mount" sv_logged sv_mount "$URL" "$MNT" "$CACHE" --key-file "$KEY"
require "write files, names, dirs, symlink targets with the marker" write_markers "$MNT"
# Extended attributes are optional: ENOTSUP means there is nothing to leak.
XATTR_OK=0
probe=$(timeout 30 setfattr -n user.probe -v x "$MNT/tiny" 2>&1 || true)
if [[ $probe == *"Operation not supported"* ]]; then
    echo "note: the mount does not support extended attributes (ENOTSUP); no xattr checks"
else
    check "set an xattr with the marker" write_xattr "$MNT"
    XATTR_OK=$LAST_OK
fi
check "positive control: the marker is visible in the mount" markers_visible "$MNT"

sync
sleep 2
check "no marker in the cache dir while mounted" no_marker "$CACHE"
check "no marker in the store while mounted (after fsync)" scan_store
check "umount" sv_logged sv_umount "$MNT"
if mountpoint -q "$MNT"; then abort "still mounted after umount"; fi

check "no marker in the store (every object, key and header)" scan_store
if [[ -n $E2E_STORE_DISK ]]; then
    check "no marker in the S3 server's files on disk ($E2E_STORE_DISK)" no_marker "$E2E_STORE_DISK"
elif [[ $URL == file://* ]]; then
    check "no marker in the store directory on disk" no_marker "$(file_path "$URL")"
fi
check "no marker in the cache dir after umount" no_marker "$CACHE"
if [[ -n ${E2E_METADATA:-} ]]; then
    check "no marker in the metadata database (pg_dump, server files)" scan_database
fi
check "no marker in the daemon's output (S3VAULT_LOG=debug)" no_marker "$DAEMON_LOG"
if [[ -n $(find "$DAEMON_TMP" -type f) ]]; then
    check "no marker in the daemon's temp files" no_marker "$DAEMON_TMP"
fi

# Read everything back on a fresh host: the cache then holds data that came
# from the store, which must be kept encrypted too.
rm -rf "$CACHE"
require "mount from an empty cache dir" sv_logged sv_mount "$URL" "$MNT" "$CACHE" --key-file "$KEY"
check "positive control after remount: the marker is back" markers_visible "$MNT"
if ((XATTR_OK)); then
    check "the xattr survives a remount" test "$(getfattr --only-values -n user.note "$MNT/tiny")" = "$MARK-XATTR"
fi
check "read every file back" read_all "$MNT"
check "no marker in the cache dir after reading everything back" no_marker "$CACHE"
check "umount after reading back" sv_logged sv_umount "$MNT"
if mountpoint -q "$MNT"; then abort "still mounted after umount"; fi
check "no marker in the cache dir after the second umount" no_marker "$CACHE"
check "no marker in the daemon's output after the second mount" no_marker "$DAEMON_LOG"
if [[ -n $(find "$DAEMON_TMP" -type f) ]]; then
    check "no marker in the daemon's temp files" no_marker "$DAEMON_TMP"
fi

e2e_finish

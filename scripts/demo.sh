#!/usr/bin/env bash
# A narrated tour of s3vault on the embedded local-directory store
# (file://), no S3 server needed: build, create a key and a volume, mount it,
# use it like any directory, unmount, mount again, and look at what the store
# holds (ciphertext only), and read back the audit trail of who opened what.
#
# Usage: bash scripts/demo.sh [--no-build]   (as root, or a user allowed to
#        use FUSE; --no-build: use the binary already in target/release)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
S3VAULT=${S3VAULT:-$REPO/target/release/s3vault}
BUILD=1
if [[ ${1:-} == --no-build ]]; then BUILD=0; fi
DEMO=/tmp/s3vault-demo
STORE=$DEMO/store
MNT=$DEMO/mnt
CACHE=$DEMO/cache
URL=file://$STORE
KEYDIR=""

if [[ -t 1 ]]; then
    BOLD=$'\033[1m' OFF=$'\033[0m'
else
    BOLD="" OFF=""
fi

say() { printf '\n%s>>> %s%s\n' "$BOLD" "$*" "$OFF"; }

# run CMD...: show a command, then run it.
run() {
    printf '$ %s\n' "$*"
    "$@"
}

# Nothing may stay mounted, whichever way the demo ends.
unmount_if_mounted() {
    if mountpoint -q "$MNT" 2>/dev/null; then
        timeout 120 "$S3VAULT" umount "$MNT" 2>/dev/null ||
            fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT"
    fi
}

cleanup() {
    local rc=$?
    set +e
    unmount_if_mounted
    rm -rf "$DEMO"
    [[ -z $KEYDIR ]] || rm -rf "$KEYDIR"
    if ((rc != 0)); then echo "demo FAILED (exit $rc)" >&2; fi
    exit "$rc"
}
trap cleanup EXIT

# A leftover from an interrupted run would make `init` refuse.
unmount_if_mounted
rm -rf "$DEMO"
mkdir -p "$MNT"

if ((BUILD)); then
    say "Building s3vault (cargo build --release)"
    (cd "$REPO" && flock /tmp/s3vault-cargo.lock cargo build --release --quiet)
fi
run "$S3VAULT" --help

say "Generating a random 256-bit volume key (stored with mode 0600)"
KEYDIR=$(mktemp -d)
run "$S3VAULT" keygen "$KEYDIR/volume.key"
run ls -l "$KEYDIR/volume.key"

say "Creating a volume in a local directory (the same layout as in an S3 bucket)"
run "$S3VAULT" init "$URL" --key-file "$KEYDIR/volume.key"
run ls -l "$STORE"

say "Mounting it at $MNT (cache and encrypted metadata database in $CACHE)"
run timeout 60 "$S3VAULT" mount "$URL" "$MNT" --key-file "$KEYDIR/volume.key" --cache-dir "$CACHE"
run findmnt "$MNT"

say "Using it like any directory: copying files in"
run cp -r /usr/share/common-licenses "$MNT/licenses"
run cp /etc/os-release "$MNT/os-release"
run mkdir "$MNT/notes"
echo "Patient 4711: follow-up in two weeks" >"$MNT/notes/visit.txt"
run ls -la "$MNT"
run ls "$MNT/licenses"

say "Reading everything back and comparing with the originals"
run diff -r /usr/share/common-licenses "$MNT/licenses"
run cmp /etc/os-release "$MNT/os-release"
echo "identical"

say "Unmounting: all data and metadata are flushed to the store"
run timeout 300 "$S3VAULT" umount "$MNT"

say "Mounting again: everything is still there"
run timeout 60 "$S3VAULT" mount "$URL" "$MNT" --key-file "$KEYDIR/volume.key" --cache-dir "$CACHE"
run ls -la "$MNT"
run cat "$MNT/notes/visit.txt"
run diff -r /usr/share/common-licenses "$MNT/licenses"
echo "identical"

say "What the store holds: a superblock, encrypted data objects, encrypted metadata (a checkpoint in meta/, journal segments after it in journal/)"
run ls -l "$STORE"
run ls "$STORE/meta" "$STORE/journal"
FIRST_OBJECT=$(find "$STORE/data" -type f | sed -n 1p)
printf '$ ls %s | head -n 5\n' "$STORE/data"
find "$STORE/data" -type f -printf '%f\n' | sed -n 1,5p
echo "($(find "$STORE" -type f | wc -l) objects, $(du -sh "$STORE" | cut -f1); object names are random ids)"
run od -A d -t x1 -N 64 "$FIRST_OBJECT"

say "Searching the store and the cache for text and names that are in the mount"
found_outside() { # PHRASE: files under the store and cache holding PHRASE
    grep -r -a -l -F -- "$1" "$STORE" "$CACHE" | wc -l
}
for phrase in "GNU GENERAL PUBLIC LICENSE" "Patient 4711"; do
    printf '  text %-30s in the mount: %s files   in store + cache: %s files\n' "\"$phrase\"" \
        "$(grep -r -l -F -- "$phrase" "$MNT" | wc -l)" "$(found_outside "$phrase")"
done
for name in visit.txt licenses os-release; do
    printf '  name %-30s in the mount: %s entries in store + cache: %s files\n' "\"$name\"" \
        "$(find "$MNT" -name "$name" | wc -l)" "$(found_outside "$name")"
done
for phrase in "GNU GENERAL PUBLIC LICENSE" "Patient 4711" visit.txt; do
    if (($(found_outside "$phrase") > 0)); then
        echo "plaintext \"$phrase\" found in the store or cache!" >&2
        exit 1
    fi
done
echo "Nothing found: outside the mount there is only ciphertext."

say "Unmounting: the audit records go up to the store with the rest"
run timeout 300 "$S3VAULT" umount "$MNT"

say "Audit log: every open, by whom, with which program (read from the store with the key)"
run "$S3VAULT" audit log "$URL" --key-file "$KEYDIR/volume.key" --path '/notes/*'
say "Audit report: per user, for a compliance review"
run "$S3VAULT" audit report "$URL" --key-file "$KEYDIR/volume.key"
say "Audit verify: the hash chains are whole (a deleted or edited record would show here)"
run "$S3VAULT" audit verify "$URL" --key-file "$KEYDIR/volume.key"
say "Access review: the same trail as one HTML page for a compliance officer (opens offline)"
REVIEW=${DEMO_REVIEW:-$REPO/target/demo-review.html}
run "$S3VAULT" audit review "$URL" --key-file "$KEYDIR/volume.key" --since 1h --html "$REVIEW"
echo "Open $REVIEW in a browser."
echo "Demo complete."

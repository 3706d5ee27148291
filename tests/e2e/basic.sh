#!/usr/bin/env bash
# File system basics on a real mount: sizes around block boundaries, writes at
# random offsets, truncation, sparse files past 4 GiB, renames, symlinks, many
# files, odd names, mkdir/rmdir. Every operation is done both on the mount and
# on a reference copy on local disk; the two trees must stay equal (SHA-256 of
# every file, listing, modes, symlink targets), on the live mount, after
# umount + mount, and after a mount from an empty cache directory (a fresh
# host that has only the store and the key).
#
# Usage: [E2E_URL=... E2E_ENDPOINT=...] bash tests/e2e/basic.sh
# Functions here are mostly run indirectly, through `check`.
# shellcheck disable=SC2317
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init basic

KEY=$WORK/key
SRC=$WORK/src
mkdir -p "$SRC"
# Random source data, made once: both trees are built from the same bytes.
head -c $((4 << 20)) /dev/urandom >"$SRC/rand"
head -c $((1 << 20)) /dev/urandom >"$SRC/rand2"
head -c $((100 << 20)) /dev/urandom >"$SRC/big"

# ---------------------------------------------------------------------------
# Tree-building steps. Each takes the root to work in as $1 and is run on the
# reference copy and on the mount with the same arguments.

mk_sizes() { # ROOT BLOCK: files of 0, 1, block-1, block, block+1, ... bytes
    local r=$1 b=$2 n
    mkdir -p "$r/sizes"
    for n in 0 1 $((b - 1)) "$b" $((b + 1)) $((2 * b + 7)) $((3 * b)); do
        head -c "$n" "$SRC/rand" >"$r/sizes/f$n"
    done
}

random_writes() { # ROOT WRITES: "file:offset:len ..." overwrite in place
    local r=$1 w f off len i=0
    for w in $2; do
        IFS=: read -r f off len <<<"$w"
        i=$((i + 1))
        dd if="$SRC/rand2" of="$r/sizes/$f" bs=64K conv=notrunc status=none \
            iflag=skip_bytes,count_bytes oflag=seek_bytes \
            skip=$((i * 4099)) seek="$off" count="$len"
    done
}

truncates() { # ROOT BLOCK
    local r=$1 b=$2
    mkdir -p "$r/trunc"
    # down into the middle of a block, then up again: the gap must read as zeros
    head -c $((3 * b)) "$SRC/rand" >"$r/trunc/down-up"
    truncate -s $((b + b / 2)) "$r/trunc/down-up"
    truncate -s $((3 * b + 5)) "$r/trunc/down-up"
    # up from a partial block
    head -c 1000 "$SRC/rand" >"$r/trunc/up"
    truncate -s $((5 * b + 3)) "$r/trunc/up"
    # down to a few bytes
    head -c $((2 * b)) "$SRC/rand" >"$r/trunc/down"
    truncate -s 10 "$r/trunc/down"
    # to zero, then append
    head -c $((2 * b)) "$SRC/rand" >"$r/trunc/zero-append"
    truncate -s 0 "$r/trunc/zero-append"
    printf 'appended' >>"$r/trunc/zero-append"
    # O_TRUNC on open, shorter content
    head -c $((2 * b)) "$SRC/rand" >"$r/trunc/otrunc"
    printf 'short' >"$r/trunc/otrunc"
    # extend by writing past the end (a hole in between)
    printf 'start' >"$r/trunc/write-past-end"
    dd if="$SRC/rand2" of="$r/trunc/write-past-end" bs=100 count=1 seek=$((3 * b / 100 + 7)) \
        conv=notrunc status=none
}

renames() { # ROOT BLOCK
    local r=$1 b=$2
    mkdir -p "$r/ren/d1/sub/deeper" "$r/ren/d2"
    echo one >"$r/ren/d1/file"
    head -c $((b + 5)) "$SRC/rand" >"$r/ren/d1/sub/s1"
    echo deep >"$r/ren/d1/sub/deeper/x"
    # a file across directories, then within one
    mv "$r/ren/d1/file" "$r/ren/d2/file-moved"
    mv "$r/ren/d2/file-moved" "$r/ren/d2/file-renamed"
    # a populated directory across directories
    mv "$r/ren/d1/sub" "$r/ren/d2/sub-moved"
    # a file replacing an existing file
    echo old-target >"$r/ren/d2/target"
    head -c 3000 "$SRC/rand2" >"$r/ren/d1/replacer"
    mv -f "$r/ren/d1/replacer" "$r/ren/d2/target"
    # a directory replacing an empty directory
    mkdir "$r/ren/d2/emptydir" "$r/ren/d1/srcdir"
    echo z >"$r/ren/d1/srcdir/z"
    mv -T "$r/ren/d1/srcdir" "$r/ren/d2/emptydir"
    # a file that is written after its parent was moved
    echo later >>"$r/ren/d2/sub-moved/deeper/x"
}

symlinks() { # ROOT
    local r=$1
    mkdir -p "$r/links"
    ln -s ../sizes/f1 "$r/links/to-file"
    ln -s ../ren "$r/links/to-dir"
    ln -s /nonexistent/dangling "$r/links/dangling"
    ln -s "$LONG_TARGET" "$r/links/long-target"
}

many_files() { # ROOT
    local r=$1 i
    mkdir -p "$r/many"
    for i in $(seq 1000); do
        echo "file $i" >"$r/many/f$i"
    done
}

odd_names() { # ROOT
    local r=$1
    mkdir -p "$r/names"
    printf 'not utf-8\n' >"$r/names/"$'\xff\xfe'
    mkdir "$r/names/"$'dir\xff'
    printf 'utf-8\n' >"$r/names/"$'dir\xff/\xc3\xa9t\xc3\xa9'
    printf 'long\n' >"$r/names/$NAME255"
    mkdir "$r/names/d$NAME254"
    printf 'space\n' >"$r/names/with space"
    printf 'dash\n' >"$r/names/-dash"
}

mkdir_rmdir() { # ROOT
    local r=$1
    mkdir -p "$r/m/a/b/c"
    rmdir "$r/m/a/b/c"
    mkdir "$r/m/e"
    rmdir "$r/m/e"
    mkdir "$r/m/keep"
    chmod 0750 "$r/m/keep"
}

big_file() { # ROOT
    cp "$SRC/big" "$1/big"
}

# step NAME REF MNT FUNC ARGS...: FUNC on the reference copy (must work: a
# failure there is a bug of this script) and, as a check, on the mount.
step() {
    local name=$1 ref=$2 mnt=$3 f=$4
    shift 4
    run_timed 600 "$f" "$ref" "$@" >"$WORK/logs/ref.log" 2>&1 ||
        abort "building the reference copy failed at '$name' (bug in the test): $(tail -n 3 "$WORK/logs/ref.log")"
    check "$name" "$f" "$mnt" "$@"
}

# ---------------------------------------------------------------------------
# Checks that only make sense on the mount

count_entries() { # DIR N
    local n
    # ls on purpose: the listing as a user sees it (readdir through the mount)
    # shellcheck disable=SC2012
    n=$(ls -A "$1" | wc -l)
    echo "$n entries"
    [[ $n == "$2" ]]
}

readlinks_ok() { # ROOT
    [[ $(readlink "$1/links/to-file") == ../sizes/f1 ]]
    [[ $(readlink "$1/links/dangling") == /nonexistent/dangling ]]
    [[ $(readlink "$1/links/long-target") == "$LONG_TARGET" ]]
    # following the links works too
    cmp "$1/links/to-file" "$1/sizes/f1"
    [[ -d $1/links/to-dir/d2 ]]
}

namelen_255() {
    local l
    l=$(stat -f -c %l "$1")
    echo "statfs namelen: $l"
    [[ $l == 255 ]]
}

sparse_write() { # ROOT
    mkdir -p "$1/sparse"
    truncate -s 6G "$1/sparse/big"
    # 4 KiB of data at 5 GiB
    dd if="$SRC/rand" of="$1/sparse/big" bs=4096 count=1 seek=$((5 << 18)) conv=notrunc status=none
}

sparse_verify() { # ROOT: size, the data at 5 GiB, zeros in the holes
    local f=$1/sparse/big blk
    [[ $(stat -c %s "$f") == $((6 << 30)) ]] || {
        echo "size $(stat -c %s "$f")"
        return 1
    }
    dd if="$f" bs=4096 skip=$((5 << 18)) count=1 status=none | cmp - <(head -c 4096 "$SRC/rand")
    # holes: the start, just past 4 GiB, next to the data, the last block
    for blk in 0 $(((4 << 18) + 3)) $(((5 << 18) - 1)) $(((5 << 18) + 1)) $(((6 << 18) - 1)); do
        dd if="$f" bs=4096 skip="$blk" count=1 status=none | cmp - <(head -c 4096 /dev/zero)
    done
}

sparse_sha() { # ROOT: read all 6 GiB
    local got
    got=$(sha256sum <"$1/sparse/big" | cut -d' ' -f1)
    echo "sha256 $got, want $SPARSE_SHA"
    [[ $got == "$SPARSE_SHA" ]]
}

cache_small() { # CACHE: real disk use (not apparent size) under 1 GiB
    local k
    k=$(du -sk "$1" | cut -f1)
    echo "cache dir uses $k KiB"
    ((k < 1048576))
}

store_grew_little() { # URL BEFORE: the sparse file must not cost GBs
    local now
    now=$(store_bytes "$1")
    echo "store: $2 bytes before, $now after"
    ((now - $2 < 32 << 20))
}

# ---------------------------------------------------------------------------

LONG_TARGET=$(printf 't%.0s' $(seq 1000))
NAME254=$(printf 'n%.0s' $(seq 253)) # "d" + 253 = 254
NAME255=$(printf 'n%.0s' $(seq 255))
NAME256=$(printf 'n%.0s' $(seq 256))

require "keygen" sv_keygen "$KEY"
check "key file has mode 0600" test "$(stat -c %a "$KEY")" = 600

# Volume A: 64 KiB blocks, the file-level cases ----------------------------
BA=65536
URL_A=$(vol_url basic-64k)
MNT_A=$WORK/mnt-a
CACHE_A=$WORK/cache-a
REF_A=$WORK/ref-a
mkdir -p "$REF_A"

# Random writes: fixed edge cases plus a few random ones (E2E_SEED repeats
# a run's offsets).
SEED=${E2E_SEED:-$$}
RANDOM=$SEED
echo "random offsets from E2E_SEED=$SEED"
WRITES="f$((3 * BA)):$((BA - 10)):20 f$((3 * BA)):$BA:$BA f1:$((2 * BA + 5)):100 f0:3:10"
WRITES+=" f$((BA - 1)):$((BA - 1)):1 f$((BA + 1)):0:$((BA + 1))"
for _ in 1 2 3 4 5 6; do
    WRITES+=" f$((2 * BA + 7)):$((RANDOM * 7 % (3 * BA))):$((RANDOM % (2 * BA) + 1))"
done

require "init $URL_A (64K chunks)" sv_init "$URL_A" --chunk-size 64K --key-file "$KEY"
require "mount volume A" sv_mount "$URL_A" "$MNT_A" "$CACHE_A" --key-file "$KEY"

step "files of 0, 1, block-1, block, block+1, 2 block+7, 3 block bytes" "$REF_A" "$MNT_A" mk_sizes "$BA"
step "writes at random offsets (dd conv=notrunc)" "$REF_A" "$MNT_A" random_writes "$WRITES"
step "truncate up, down, down+up, to zero, O_TRUNC, write past end" "$REF_A" "$MNT_A" truncates "$BA"
step "renames: file, populated dir across dirs, replace file, replace empty dir" "$REF_A" "$MNT_A" renames "$BA"
step "symlinks (relative, dir, dangling, 1000-byte target)" "$REF_A" "$MNT_A" symlinks
step "1000 files in one directory" "$REF_A" "$MNT_A" many_files
step "non-UTF-8, 255-byte and other odd names" "$REF_A" "$MNT_A" odd_names
step "mkdir -p, rmdir, chmod dir" "$REF_A" "$MNT_A" mkdir_rmdir

check "ls counts 1000 files" count_entries "$MNT_A/many" 1000
check "readlink returns the targets" readlinks_ok "$MNT_A"
check "256-byte file name: ENAMETOOLONG" expect_fail 'File name too long' touch "$MNT_A/names/$NAME256"
check "256-byte dir name: ENAMETOOLONG" expect_fail 'File name too long' mkdir "$MNT_A/names/$NAME256"
check "statfs reports 255-byte names" namelen_255 "$MNT_A"
check "rmdir of a non-empty directory fails" expect_fail 'not empty' rmdir "$MNT_A/ren/d2"
check "the old names are gone after rename" expect_fail 'No such file' ls "$MNT_A/ren/d1/sub" "$MNT_A/ren/d1/file"

check "tree equals the reference (live mount)" same_tree "$REF_A" "$MNT_A"
run_timed 300 manifest --mtime "$MNT_A" >"$WORK/manifest-a" || true

umount_step "umount volume A" "$MNT_A"
STORE_BEFORE_SPARSE=$(store_bytes "$URL_A") || abort "cannot list the store of volume A"
require "mount volume A again" sv_mount "$URL_A" "$MNT_A" "$CACHE_A" --key-file "$KEY"
check "tree equals the reference after umount + mount" same_tree "$REF_A" "$MNT_A"
check "mtimes, modes and owners survive umount + mount" same_manifest "$WORK/manifest-a" "$MNT_A" --mtime

# Sparse file with holes past 4 GiB
sparse_write "$WORK/ref-sparse-root"
SPARSE_SHA=$(sha256sum <"$WORK/ref-sparse-root/sparse/big" | cut -d' ' -f1)
rm -rf "$WORK/ref-sparse-root"
check "sparse file: truncate -s 6G, 4 KiB written at 5 GiB" sparse_write "$MNT_A"
check "sparse file: size, data and holes" sparse_verify "$MNT_A"
CHECK_TIMEOUT=900 check "sparse file: SHA-256 of all 6 GiB" sparse_sha "$MNT_A"
check "cache dir stays small with a 6 GiB sparse file" cache_small "$CACHE_A"
umount_step "umount volume A (with the sparse file)" "$MNT_A"
check "the store did not grow by the holes" store_grew_little "$URL_A" "$STORE_BEFORE_SPARSE"

# A fresh host: nothing but the store and the key
rm -rf "$CACHE_A"
require "mount volume A from an empty cache dir" sv_mount "$URL_A" "$MNT_A" "$CACHE_A" --key-file "$KEY"
check "tree equals the reference from an empty cache" same_tree "$REF_A" "$MNT_A" --exclude sparse
check "mtimes, modes and owners from an empty cache" same_manifest "$WORK/manifest-a" "$MNT_A" --mtime --exclude sparse
check "sparse file from an empty cache: size, data and holes" sparse_verify "$MNT_A"
umount_step "umount volume A (fresh cache)" "$MNT_A"

# Read-only mount
require "mount volume A read-only" sv_mount "$URL_A" "$MNT_A" "$CACHE_A" --key-file "$KEY" -o ro
check "read-only mount: tree equals the reference" same_tree "$REF_A" "$MNT_A" --exclude sparse
check "read-only mount: writes fail with EROFS" expect_fail 'Read-only file system' touch "$MNT_A/new-file"
check "read-only mount: rm fails with EROFS" expect_fail 'Read-only file system' rm "$MNT_A/sizes/f1"
umount_step "umount read-only volume A" "$MNT_A"

# Volume B: 1 MiB blocks, block boundaries and a 100 MiB file ---------------
BB=$((1 << 20))
URL_B=$(vol_url basic-1m)
MNT_B=$WORK/mnt-b
CACHE_B=$WORK/cache-b
REF_B=$WORK/ref-b
mkdir -p "$REF_B"

require "init $URL_B (default 1M blocks)" sv_init "$URL_B" --key-file "$KEY"
require "mount volume B" sv_mount "$URL_B" "$MNT_B" "$CACHE_B" --key-file "$KEY"
step "1M blocks: files of 0, 1, block-1, block, block+1, ... bytes" "$REF_B" "$MNT_B" mk_sizes "$BB"
step "1M blocks: a 100 MiB file" "$REF_B" "$MNT_B" big_file
check "1M blocks: tree equals the reference (live mount)" same_tree "$REF_B" "$MNT_B"
umount_step "umount volume B" "$MNT_B"
require "mount volume B again" sv_mount "$URL_B" "$MNT_B" "$CACHE_B" --key-file "$KEY"
check "1M blocks: tree equals the reference after umount + mount" same_tree "$REF_B" "$MNT_B"
umount_step "umount volume B again" "$MNT_B"
rm -rf "$CACHE_B"
require "mount volume B from an empty cache dir" sv_mount "$URL_B" "$MNT_B" "$CACHE_B" --key-file "$KEY"
check "1M blocks: tree equals the reference from an empty cache" same_tree "$REF_B" "$MNT_B"
umount_step "umount volume B (fresh cache)" "$MNT_B"

e2e_finish

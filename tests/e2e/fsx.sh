#!/usr/bin/env bash
# Data integrity under random I/O: fsx, the File System eXerciser (the Rust
# port, crate fsx), on a real mount. fsx applies a reproducible random
# sequence of operations to one file (pread/pwrite, mmap reads and writes
# with msync, ftruncate up and down, close/open, msync(MS_INVALIDATE),
# fsync, fdatasync) and checks every read against its own model of the file;
# it exits non-zero on the first miscompare, wrong size or failed call, and
# then prints its last operations.
#
# Per volume chunk size (4K and 64K by default), one run of the operations
# above plus posix_fallocate and fallocate(PUNCH_HOLE) (FSX_FALLOCATE=0:
# without those two): seed 1 for the first chunk size, 2 for the second, and
# so on, so each chunk size sees its own sequence without repeating work
# (FSX_SEEDS runs the same seeds on every chunk size instead).
# Then umount, mount from an empty cache dir (everything comes from the
# store) and compare every file of a passed run with what fsx expects (the
# same fsx run replayed on local disk).
#
# Usage: [E2E_URL=... E2E_ENDPOINT=...] bash tests/e2e/fsx.sh
# FSX              the fsx binary (default: $S3VAULT_TOOLS/bin/fsx)
# FSX_OPS          operations per run (default 20000)
# FSX_BLOCK_SIZES  volume chunk sizes (default "4K 64K")
# FSX_SEEDS        seeds for every chunk size (default: one per chunk size)
# FSX_FLEN         maximum file size in bytes (default 4 MiB)
# FSX_FALLOCATE=0  run without fallocate and punch hole
# scripts/soak.sh runs this suite with a million operations.
# Functions here are mostly run indirectly, through `check`.
# shellcheck disable=SC2317
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init fsx

: "${FSX:=${S3VAULT_TOOLS:-$HOME/.cache/s3vault-tools}/bin/fsx}"
: "${FSX_OPS:=20000}"
: "${FSX_BLOCK_SIZES:=4K 64K}"
: "${FSX_SEEDS:=}"
: "${FSX_FLEN:=$((4 << 20))}"
: "${FSX_FALLOCATE:=1}"
[[ -x $FSX ]] || abort "fsx not found at $FSX (scripts/test.sh installs it)"
echo "fsx: $("$FSX" --version 2>&1 | head -n 1)"

# ---------------------------------------------------------------------------
# fsx configurations (fsx.toml format). Operation sizes up to 128 KiB in a
# file of up to 4 MiB: operations cross 64K block boundaries all the time
# and 1M ones often, and a run of 20000 operations stays short.

write_config() { # FILE FALLOCATE_WEIGHT
    cat >"$1" <<EOF
flen = $FSX_FLEN

[opsize]
max = 131072

[weights]
read = 10
write = 10
mapread = 10
mapwrite = 10
truncate = 4
close_open = 2
invalidate = 1
fsync = 1
fdatasync = 1
posix_fallocate = $2
punch_hole = $2
EOF
}
CONF_PLAIN=$WORK/fsx-plain.toml
CONF_FALLOC=$WORK/fsx-falloc.toml
write_config "$CONF_PLAIN" 0
write_config "$CONF_FALLOC" 3

conf_of() { # VARIANT
    if [[ $1 == falloc ]]; then echo "$CONF_FALLOC"; else echo "$CONF_PLAIN"; fi
}

# ---------------------------------------------------------------------------

# run_fsx FILE SEED VARIANT TAG: one fsx run; its whole output goes to
# $WORK/logs/fsx-TAG.out. On failure, print what went wrong and fsx's last
# operations (within the 25 lines that `check` shows).
run_fsx() {
    local file=$1 seed=$2 variant=$3 tag=$4 out rc=0 t0=$SECONDS conf
    conf=$(conf_of "$variant")
    out=$WORK/logs/fsx-$tag.out
    # Never let fsx pass on the local disk under a vanished mount.
    if ! mountpoint -q "$(dirname "$file")"; then
        echo "$(dirname "$file") is not mounted"
        return 1
    fi
    mkdir -p "$WORK/artifacts/$tag"
    echo "+ fsx -f $conf -N $FSX_OPS -S $seed -P $WORK/artifacts/$tag $file"
    # RUST_BACKTRACE=0: fsx reports an unexpected errno as a panic; its
    # message is what counts, not the backtrace.
    NO_COLOR=1 RUST_BACKTRACE=0 "$FSX" -f "$conf" -N "$FSX_OPS" -S "$seed" -P "$WORK/artifacts/$tag" "$file" \
        >"$out" 2>&1 || rc=$?
    echo "$((SECONDS - t0))" >"$WORK/logs/fsx-$tag.time"
    if ((rc == 0)); then
        tail -n 3 "$out"
        return 0
    fi
    echo "fsx exit $rc after $((SECONDS - t0)) s; whole output in $out (E2E_KEEP=1 keeps it)"
    # What went wrong: the lines before the operation log.
    sed -n '/LOG DUMP/q; p' "$out" | tail -n 9
    if grep -q 'LOG DUMP' "$out"; then
        echo "fsx's last operations:"
        sed -n '/LOG DUMP/,$p' "$out" | sed 1d | tail -n 10
    fi
    if [[ $variant == falloc ]] &&
        grep -qE 'does not support posix_fallocate|EOPNOTSUPP|ENOSYS|Operation not supported|Function not implemented' "$out"; then
        echo "=> fallocate is not supported by this s3vault (EOPNOTSUPP/ENOSYS): the run stopped there, not on a data error"
    fi
    return 1
}

# fsx_reference SEED VARIANT: the file fsx leaves after a successful run,
# made by the same run on a local file system (fsx is deterministic for a
# seed and a configuration). Prints its path. The run is made in /dev/shm
# where there is one: fsync on tmpfs costs nothing, on a disk it is slow.
fsx_reference() {
    local seed=$1 variant=$2 ref tmp rc=0
    ref=$WORK/ref/$seed-$variant
    if [[ ! -f $ref ]]; then
        mkdir -p "$WORK/ref"
        if [[ -d /dev/shm && -w /dev/shm ]]; then
            tmp=$(mktemp -d /dev/shm/s3vault-fsx-ref.XXXXXX)
        else
            tmp=$(mktemp -d "$WORK/ref/run.XXXXXX")
        fi
        NO_COLOR=1 "$FSX" -f "$(conf_of "$variant")" -N "$FSX_OPS" -S "$seed" -P "$tmp" "$tmp/file" \
            >"$WORK/logs/ref-$seed-$variant.out" 2>&1 || rc=$?
        if ((rc == 0)); then mv "$tmp/file" "$ref"; fi
        rm -rf "$tmp"
        if ((rc != 0)); then
            echo "fsx failed on a local file system (bug in the test):" >&2
            tail -n 10 "$WORK/logs/ref-$seed-$variant.out" >&2
            return 1
        fi
    fi
    echo "$ref"
}

# same_as_fsx_expects LIST: every "FILE SEED VARIANT" line of LIST (the
# passed runs) names a file equal to fsx's expected final contents.
same_as_fsx_expects() {
    local list=$1 file seed variant ref bad=0 n=0
    while read -r file seed variant; do
        ref=$(fsx_reference "$seed" "$variant")
        n=$((n + 1))
        if cmp "$ref" "$file"; then
            echo "$file: $(stat -c %s "$file") bytes, as expected"
        else
            echo "$file: $(stat -c %s "$file") bytes, expected $(stat -c %s "$ref")"
            bad=1
        fi
    done <"$list"
    echo "$n files compared"
    ((bad == 0))
}

# ---------------------------------------------------------------------------

KEY=$WORK/key
require "keygen" sv_keygen "$KEY"

N_BS=0
for BS in $FSX_BLOCK_SIZES; do
    N_BS=$((N_BS + 1))
    SEEDS=${FSX_SEEDS:-$N_BS}
    URL=$(vol_url "fsx-$BS")
    MNT=$WORK/mnt-$BS
    PASSED=$WORK/passed-$BS
    : >"$PASSED"
    require "init $URL ($BS chunks)" sv_init "$URL" --chunk-size "$BS" --key-file "$KEY"
    require "mount ($BS chunks)" sv_mount "$URL" "$MNT" "$WORK/cache-$BS" --key-file "$KEY"

    for SEED in $SEEDS; do
        # One run with every operation; FSX_FALLOCATE=0 leaves out
        # fallocate and punch hole.
        VARIANTS=falloc
        [[ $FSX_FALLOCATE != 0 ]] || VARIANTS=plain
        for VARIANT in $VARIANTS; do
            NAME="fsx $FSX_OPS ops, block $BS, seed $SEED (mmap, truncate, close/open)"
            [[ $VARIANT == plain ]] || NAME+=" with fallocate and punch hole"
            TAG=$BS-$SEED-$VARIANT
            FILE=$MNT/fsx-$SEED-$VARIANT
            check "$NAME" run_fsx "$FILE" "$SEED" "$VARIANT" "$TAG"
            if [[ -f $WORK/logs/fsx-$TAG.time ]]; then
                echo "     took $(cat "$WORK/logs/fsx-$TAG.time") s"
            fi
            if ((LAST_OK)); then
                echo "$FILE $SEED $VARIANT" >>"$PASSED"
            fi
            mountpoint -q "$MNT" || abort "$MNT is no longer mounted after: $NAME"
        done
    done

    umount_step "umount after fsx ($BS chunks)" "$MNT"
    # A fresh host: only the store and the key.
    require "mount ($BS chunks) from an empty cache dir" \
        sv_mount "$URL" "$MNT" "$WORK/cache-$BS-fresh" --key-file "$KEY"
    check "block $BS: fsx's files hold what fsx expects (from the store)" same_as_fsx_expects "$PASSED"
    umount_step "umount ($BS chunks, fresh cache)" "$MNT"
done

e2e_finish

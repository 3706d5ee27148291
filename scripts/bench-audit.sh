#!/usr/bin/env bash
# What the audit log costs: the same workloads on a mount with the audit log
# (--audit=required, the default) and without it (--audit=off, which exists
# for this measurement only), interleaved, several rounds, median reported.
#
#   open/read/close  one process opens, reads and closes 10,000 small files
#   untar            extract a tarball of 10,000 small files, then sync
#
# Prints a markdown table (and writes it as CSV to $OUT_DIR/bench-audit.csv).
# Not part of CI: timing on a shared machine is noisy, so this reports
# ratios measured in the same run and never asserts a target.
#
# Usage: scripts/bench-audit.sh [ROUNDS]   (default 3; uses the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
FILES=10000
S3VAULT=${S3VAULT:-$PWD/target/release/s3vault}
OUT_DIR=${OUT_DIR:-$PWD/target/bench}
WORK=$(mktemp -d /tmp/s3vault-bench-audit.XXXXXX)
MP=$WORK/mnt
mkdir -p "$MP" "$OUT_DIR"

cleanup() {
    if mountpoint -q "$MP"; then
        "$S3VAULT" umount "$MP" || fusermount3 -uz "$MP" || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

[[ -x $S3VAULT ]] || cargo build --release --locked

# A source tree of FILES small files (1-8 KiB) in 100 directories, as a tar.
python3 - "$WORK/tree" "$FILES" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(1)
for i in range(n):
    d = os.path.join(root, f"dir{i % 100:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"file{i:05d}.txt"), "wb") as f:
        f.write(rng.randbytes(rng.randint(1024, 8192)))
EOF
tar -C "$WORK/tree" -cf "$WORK/tree.tar" .

"$S3VAULT" keygen "$WORK/key" >/dev/null

# run MODE ROUND: prints "opens_per_s untar_s" for one fresh volume.
run() {
    local mode=$1 round=$2 url="file://$WORK/vol-$1-$2" t0 t1 opens untar
    "$S3VAULT" init "$url" --key-file "$WORK/key" >/dev/null
    "$S3VAULT" mount "$url" "$MP" --key-file "$WORK/key" --cache-dir "$WORK/cache-$mode-$round" \
        --audit "$mode" 2>/dev/null
    t0=$(date +%s.%N)
    tar -C "$MP" -xf "$WORK/tree.tar"
    sync -f "$MP"
    t1=$(date +%s.%N)
    untar=$(echo "$t1 - $t0" | bc)
    opens=$(python3 - "$MP" <<'EOF'
import os, sys, time
paths = [os.path.join(d, f) for d, _, fs in os.walk(sys.argv[1]) for f in fs]
t0 = time.perf_counter()
for p in paths:
    with open(p, "rb") as f:
        f.read()
print(f"{len(paths) / (time.perf_counter() - t0):.0f}")
EOF
)
    "$S3VAULT" umount "$MP"
    echo "$opens $untar"
}

median() { grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

declare -A OPENS UNTAR
for round in $(seq "$ROUNDS"); do
    for mode in required off; do
        read -r o u < <(run "$mode" "$round")
        echo "round $round, audit=$mode: $o opens/s, untar $u s" >&2
        OPENS[$mode]+="$o"$'\n'
        UNTAR[$mode]+="$u"$'\n'
    done
done

on_opens=$(median <<<"${OPENS[required]}")
off_opens=$(median <<<"${OPENS[off]}")
on_untar=$(median <<<"${UNTAR[required]}")
off_untar=$(median <<<"${UNTAR[off]}")
open_overhead=$(echo "scale=1; 100 * ($off_opens - $on_opens) / $off_opens" | bc)
untar_overhead=$(echo "scale=1; 100 * ($on_untar - $off_untar) / $off_untar" | bc)

{
    echo "workload,audit_on,audit_off,overhead_percent"
    echo "open/read/close opens per s,$on_opens,$off_opens,$open_overhead"
    echo "untar $FILES files s,$on_untar,$off_untar,$untar_overhead"
} >"$OUT_DIR/bench-audit.csv"

echo
echo "Audit log overhead, $FILES files, median of $ROUNDS rounds ($(nproc) cores, file:// store):"
echo
echo "| workload | audit on | audit off | overhead |"
echo "| --- | --- | --- | --- |"
echo "| open/read/close | $on_opens opens/s | $off_opens opens/s | $open_overhead % |"
echo "| untar $FILES files + sync | $on_untar s | $off_untar s | $untar_overhead % |"

#!/usr/bin/env bash
# POSIX behaviour legacy programs rely on, beyond pjdfstest and fsx: file
# locks between processes (flock and fcntl byte ranges), shared writable
# mmap surviving msync, close, unmount and remount, and a directory of
# 100,000 entries whose listing stays exact while entries come and go.
#
# Usage: [E2E_URL=... E2E_ENDPOINT=...] [POSIX_BIG_DIR=100000] bash tests/e2e/posix.sh
# shellcheck disable=SC2317 # functions run through `check`
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init posix

: "${POSIX_BIG_DIR:=100000}"
KEY=$WORK/key
URL=$(vol_url posix)
MP=$WORK/mnt
CACHE=$WORK/cache

setup() {
    sv_keygen "$KEY" >/dev/null
    sv_init "$URL" --key-file "$KEY" >/dev/null
}

mount_volume() {
    sv_mount "$URL" "$MP" "$CACHE" --key-file "$KEY"
}

# flock(2): a second process cannot take an exclusive lock another holds,
# and can once it is released.
flock_between_processes() {
    local f=$MP/flock.lock holder
    : >"$f"
    flock -x "$f" sleep 3 &
    holder=$!
    sleep 0.5
    if flock -x -n "$f" true; then
        echo "a second exclusive flock succeeded while the first was held"
        return 1
    fi
    wait "$holder"
    flock -x -n "$f" true
}

# fcntl byte-range locks: disjoint ranges coexist, overlapping ones conflict.
fcntl_ranges_between_processes() {
    python3 - "$MP/ranges.lock" <<'EOF'
import fcntl, os, sys, time
path = sys.argv[1]
open(path, "wb").write(b"\0" * 100)
r, w = os.pipe()
child = os.fork()
if child == 0:
    fd = os.open(path, os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)  # bytes 0-9
    os.write(w, b"x")
    time.sleep(3)
    os._exit(0)
os.read(r, 1)
fd = os.open(path, os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 10)  # bytes 10-19: free
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 5)  # bytes 5-9: held
    sys.exit("an overlapping range lock was granted")
except OSError:
    pass
os.waitpid(child, 0)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 5)  # released with the child
EOF
}

# A shared writable mapping: written through memory, msync'd, closed.
mmap_write() {
    python3 - "$MP/mapped" <<'EOF'
import mmap, os, sys
path = sys.argv[1]
size = 3 * 1024 * 1024 + 12345
with open(path, "wb") as f:
    f.truncate(size)
fd = os.open(path, os.O_RDWR)
m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
for i in range(0, size, 4096):
    m[i:i + 8] = (i // 4096).to_bytes(8, "little")
m[size - 5:] = b"last!"
m.flush()
m.close()
os.close(fd)
EOF
}

mmap_content_ok() {
    python3 - "$MP/mapped" <<'EOF'
import sys
data = open(sys.argv[1], "rb").read()
size = 3 * 1024 * 1024 + 12345
assert len(data) == size, len(data)
for i in range(0, size - 8, 4096):
    assert data[i:i + 8] == (i // 4096).to_bytes(8, "little"), i
assert data[-5:] == b"last!"
EOF
}

remount() {
    sv_umount "$MP" && mount_volume
}

# A 1 TiB sparse file: only what was written is stored and counted in
# st_blocks; the hole reads as zeros; a dense file counts all its bytes.
sparse_terabyte() {
    local f=$MP/sparse-1t
    truncate -s 1T "$f"
    printf 'tail-of-a-terabyte' | dd of="$f" bs=1 seek=$(((1 << 40) - 18)) conv=notrunc status=none
    printf 'head' | dd of="$f" bs=1 conv=notrunc status=none
    [[ $(stat -c %s "$f") -eq $((1 << 40)) ]]
    [[ $(tail -c 18 "$f") == tail-of-a-terabyte ]]
    [[ $(dd if="$f" bs=4096 skip=$((1 << 27)) count=1 status=none | tr -d '\0' | wc -c) -eq 0 ]]
    local blocks
    blocks=$(stat -c %b "$f")
    echo "st_blocks of the 1 TiB sparse file: $blocks"
    ((blocks * 512 <= 4 << 20))
    head -c $((3 << 20)) /dev/urandom >"$MP/dense"
    blocks=$(stat -c %b "$MP/dense")
    echo "st_blocks of a 3 MiB file: $blocks"
    ((blocks * 512 >= 3 << 20 && blocks * 512 < 4 << 20))
}

# SEEK_DATA/SEEK_HOLE on the terabyte file: two data regions, the rest a
# hole, so `cp --sparse=always` copies it in moments, not a terabyte of
# zeros through FUSE.
holes_are_visible() {
    local f=$MP/sparse-1t
    python3 - "$f" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
regions, at = [], 0
while True:
    try:
        start = os.lseek(fd, at, os.SEEK_DATA)
    except OSError:
        break
    end = os.lseek(fd, start, os.SEEK_HOLE)
    regions.append((start, end))
    at = end
print("data regions:", regions)
assert len(regions) == 2, regions
assert regions[0][0] == 0 and regions[0][1] <= 1 << 20, regions
assert regions[1][1] == size and size - regions[1][0] <= 1 << 20, regions
PY
    local t0=$SECONDS
    timeout 120 cp --sparse=always "$f" "$WORK/sparse-copy"
    echo "cp --sparse=always of the 1 TiB file took $((SECONDS - t0)) s"
    cmp <(head -c 4 "$WORK/sparse-copy") <(printf head)
    rm -f "$WORK/sparse-copy"
}

# fallocate --zero-range (util-linux) on a 3 MiB file: the range reads as
# zeros, the whole chunks inside it stop counting in st_blocks, and without
# --keep-size a range past the end grows the file; same after a remount.
zero_range() {
    local f=$MP/zeroed before after
    head -c $((3 << 20)) /dev/urandom >"$f"
    cp "$f" "$WORK/zeroed-expected"
    before=$(stat -c %b "$f")
    fallocate --zero-range --keep-size --offset $((1 << 20)) --length $((1 << 20)) "$f"
    fallocate --zero-range --offset $(((3 << 20) - 100)) --length 4196 "$f"
    python3 - "$WORK/zeroed-expected" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[1 << 20:2 << 20] = bytes(1 << 20)
b[(3 << 20) - 100:] = bytes(100)
b += bytes(4096)
open(p, "wb").write(b)
PY
    cmp "$f" "$WORK/zeroed-expected"
    sync "$f"
    after=$(stat -c %b "$f")
    echo "st_blocks before and after zeroing 1 MiB: $before, $after"
    (((before - after) * 512 >= 1 << 20))
}

zero_range_kept() {
    cmp "$MP/zeroed" "$WORK/zeroed-expected"
}

# POSIX_BIG_DIR entries; then, while a reader lists the directory over and
# over, entries are removed and others added; finally the listing must be
# exactly the expected set, live and after a remount.
big_directory_fill() {
    python3 - "$MP/big" "$POSIX_BIG_DIR" <<'EOF'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.mkdir(d)
for i in range(n):
    os.close(os.open(os.path.join(d, f"entry-{i:06d}"), os.O_CREAT | os.O_WRONLY, 0o644))
EOF
}

big_directory_churn() {
    python3 - "$MP/big" "$POSIX_BIG_DIR" <<'EOF'
import os, sys, threading
d, n = sys.argv[1], int(sys.argv[2])
stop = threading.Event()
problems = []

def reader():
    # Entries that exist for the whole churn must appear exactly once in
    # every listing taken during it.
    stable = {f"entry-{i:06d}" for i in range(0, n, 2)}
    while not stop.is_set():
        seen = os.listdir(d)
        dupes = len(seen) - len(set(seen))
        missing = stable - set(seen)
        if dupes or missing:
            problems.append((dupes, len(missing)))
            return

t = threading.Thread(target=reader)
t.start()
for i in range(1, min(n, 20000), 2):
    os.unlink(os.path.join(d, f"entry-{i:06d}"))
    os.close(os.open(os.path.join(d, f"new-{i:06d}"), os.O_CREAT | os.O_WRONLY, 0o644))
stop.set()
t.join()
if problems:
    sys.exit(f"listing during churn: {problems[0][0]} duplicates, {problems[0][1]} stable entries missing")
EOF
}

big_directory_exact() {
    python3 - "$MP/big" "$POSIX_BIG_DIR" <<'EOF'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
churned = range(1, min(n, 20000), 2)
expected = {f"entry-{i:06d}" for i in range(n)} - {f"entry-{i:06d}" for i in churned}
expected |= {f"new-{i:06d}" for i in churned}
seen = os.listdir(d)
assert len(seen) == len(set(seen)), "duplicate entries"
assert set(seen) == expected, (len(set(seen) - expected), len(expected - set(seen)))
print(f"{len(seen)} entries, exact")
EOF
}

require "set up a volume" setup
require "mount" mount_volume
check "flock: exclusive between processes, free again after release" flock_between_processes
check "fcntl byte-range locks between processes" fcntl_ranges_between_processes
check "shared writable mmap: write, msync, close" mmap_write
check "mmap'd data reads back" mmap_content_ok
check "unmount and mount again" remount
check "mmap'd data survives the remount" mmap_content_ok
check "a 1 TiB sparse file stores and counts only what was written" sparse_terabyte
check "SEEK_DATA/SEEK_HOLE show its holes; cp --sparse=always copies it quickly" holes_are_visible
check "fallocate --zero-range zeroes, frees whole chunks and grows past the end" zero_range
check "a directory of $POSIX_BIG_DIR entries" big_directory_fill
check "listing stays exact while entries are removed and added" big_directory_churn
check "the $POSIX_BIG_DIR-entry listing is exact" big_directory_exact
check "unmount and mount again" remount
check "the listing is exact after the remount" big_directory_exact
check "the zeroed file is the same after the remount" zero_range_kept
umount_step "unmount" "$MP"
e2e_finish

#!/usr/bin/env bash
# Makes tests/golden/v<VERSION>: an example volume of the current format
# version on the embedded local-directory store, made by the real binary on a real mount,
# with its key file and a manifest of what it holds. `cargo test` opens it
# from an empty cache and checks the manifest and the audit trail
# (src/fs/golden_tests.rs), so every format change is deliberate: bump the
# version in FORMAT.md, run this script and commit the new volume with it
# (older versions' volumes stay while this release still mounts them).
#
# Usage (as root, FUSE available): scripts/make-golden.sh VERSION
# S3VAULT   the binary (default target/release/s3vault)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
S3VAULT=${S3VAULT:-$REPO/target/release/s3vault}
VERSION=${1:?usage: scripts/make-golden.sh VERSION (the format version FORMAT.md names)}
grep -q "^# s3vault volume format, version $VERSION\$" "$REPO/FORMAT.md" ||
    { echo "FORMAT.md does not describe version $VERSION" >&2; exit 2; }
OUT=$REPO/tests/golden/v$VERSION
WORK=$(mktemp -d /tmp/s3vault-golden.XXXXXX)
MNT=$WORK/mnt
URL=file://$OUT/store

cleanup() {
    mountpoint -q "$MNT" 2>/dev/null && fusermount3 -u "$MNT"
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

mount_volume() { # [options...]
    "$S3VAULT" mount "$URL" "$MNT" --key-file "$WORK/key" --cache-dir "$WORK/cache-$RANDOM" "$@"
}

# name SIZE SEED: deterministic bytes, so regenerating gives the same files.
bytes() {
    python3 -c 'import sys; n, s = int(sys.argv[1]), int(sys.argv[2]); sys.stdout.buffer.write(bytes((i * 31 + s) % 251 for i in range(n)))' "$1" "$2"
}

rm -rf "$OUT"
mkdir -p "$OUT" "$MNT"
"$S3VAULT" keygen "$WORK/key" >/dev/null
cp "$WORK/key" "$OUT/key"
"$S3VAULT" init "$URL" --chunk-size 64K --key-file "$WORK/key" >/dev/null

mount_volume
mkdir -p "$MNT/patients/smith" "$MNT/empty dir"
chmod 0750 "$MNT/patients"
printf 'Patient: J. Smith\nAllergies: none known\n' >"$MNT/patients/smith/notes.txt"
chmod 0640 "$MNT/patients/smith/notes.txt"
bytes 200000 7 >"$MNT/patients/smith/scan.bin"            # four 64K chunks, the last partial
ln "$MNT/patients/smith/scan.bin" "$MNT/scan-hardlink.bin"
ln -s patients/smith/notes.txt "$MNT/notes-symlink"
truncate -s 1M "$MNT/sparse.bin"                          # a hole, then 10 bytes, then a hole
printf '0123456789' | dd of="$MNT/sparse.bin" bs=1 seek=524288 conv=notrunc status=none
: >"$MNT/empty.txt"
printf 'compte rendu\n' >"$MNT/réunion 2026 (final).txt"
setfattr -n user.s3vault.golden -v "an extended attribute" "$MNT/patients/smith/notes.txt"
"$S3VAULT" umount "$MNT"

"$S3VAULT" snapshot create "$URL" --key-file "$WORK/key" golden >/dev/null

# Changes after the snapshot: the live state and the snapshot differ.
mount_volume
printf 'Follow-up: 2026-12-01\n' >>"$MNT/patients/smith/notes.txt"
rm "$MNT/empty.txt"
bytes 70000 9 >"$MNT/patients/smith/lab.bin"
"$S3VAULT" umount "$MNT"

# manifest.json: the live state and the snapshot, as the kernel shows them.
manifest() { # ROOT
    python3 - "$1" <<'PY'
import hashlib, json, os, sys
root = sys.argv[1]
out = {}
for dirpath, dirnames, filenames in os.walk(root):
    for name in sorted(dirnames + filenames):
        path = os.path.join(dirpath, name)
        st = os.lstat(path)
        rel = os.path.relpath(path, root)
        entry = {"mode": oct(st.st_mode & 0o7777), "nlink": st.st_nlink}
        if os.path.islink(path):
            entry.update(kind="symlink", target=os.readlink(path))
        elif os.path.isdir(path):
            entry.update(kind="dir")
        else:
            data = open(path, "rb").read()
            entry.update(kind="file", size=st.st_size, sha256=hashlib.sha256(data).hexdigest())
        xattrs = {a: os.getxattr(path, a, follow_symlinks=False).decode() for a in os.listxattr(path, follow_symlinks=False)}
        if xattrs:
            entry["xattrs"] = xattrs
        out[rel] = entry
print(json.dumps(out, indent=1, sort_keys=True, ensure_ascii=False))
PY
}
mount_volume -o ro
live=$(manifest "$MNT")
"$S3VAULT" umount "$MNT"
mount_volume --snapshot golden
snapshot=$(manifest "$MNT")
"$S3VAULT" umount "$MNT"
printf '{"live": %s,\n "snapshot": %s}\n' "$live" "$snapshot" >"$OUT/manifest.json"
rm -rf "$OUT/store/.tmp"
echo "wrote $OUT ($(du -sh "$OUT" | cut -f1))"

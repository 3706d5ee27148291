#!/usr/bin/env python3
"""Print a canonical description of a directory tree, one line per entry.

  manifest.py [--mtime] [--exclude RELPATH]... ROOT

Each line: path, type, permission bits, uid:gid, then for a regular file its
size and SHA-256, for a symlink its target. Directory sizes are left out (they
differ between file systems). Names are handled as bytes and printed escaped,
so names that are not UTF-8 compare exactly. Two trees are equal for the
tests when their manifests are equal; with --mtime the modification times (in
whole seconds) are part of it too, to check that metadata survives a remount.
"""

import hashlib
import os
import stat
import sys


def esc(b: bytes) -> str:
    # repr() of bytes is unambiguous and single-line for any byte value.
    return repr(b)[2:-1]


def sha256(path: bytes) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def main(argv):
    mtime = False
    excludes = set()
    args = list(argv)
    root = None
    while args:
        a = args.pop(0)
        if a == "--mtime":
            mtime = True
        elif a == "--exclude":
            excludes.add(os.fsencode(args.pop(0)))
        else:
            root = os.fsencode(a)
    if root is None:
        sys.exit(__doc__)

    lines = []
    for dirpath, dirnames, filenames in os.walk(root):
        reldir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            relp = os.path.normpath(os.path.join(reldir, name))
            if relp in excludes:
                if name in dirnames:
                    dirnames.remove(name)
                continue
            st = os.lstat(path)
            fields = [esc(relp)]
            if stat.S_ISREG(st.st_mode):
                fields += ["f", oct(stat.S_IMODE(st.st_mode)), f"{st.st_uid}:{st.st_gid}",
                           str(st.st_size), sha256(path)]
            elif stat.S_ISLNK(st.st_mode):
                fields += ["l", "-", f"{st.st_uid}:{st.st_gid}", esc(os.readlink(path))]
            elif stat.S_ISDIR(st.st_mode):
                fields += ["d", oct(stat.S_IMODE(st.st_mode)), f"{st.st_uid}:{st.st_gid}"]
            else:
                fields += ["o", oct(st.st_mode), f"{st.st_uid}:{st.st_gid}"]
            if mtime and not stat.S_ISLNK(st.st_mode):
                fields.append(f"mtime={int(st.st_mtime)}")
            lines.append("\t".join(fields))
    lines.sort()
    sys.stdout.write("".join(line + "\n" for line in lines))


if __name__ == "__main__":
    main(sys.argv[1:])

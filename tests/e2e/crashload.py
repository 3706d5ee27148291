#!/usr/bin/env python3
"""The crash-point test's workload and its checker.

  crashload.py run SEED DIR LOG     apply operations to DIR until one fails
  crashload.py check SEED LOG DIR   is DIR a state the workload passed through?

The workload is a deterministic sequence of operations drawn from SEED:
writes (create or replace with O_TRUNC), appends, renames of files and
directories (also over an existing target), unlinks, mkdir, rmdir, and
fsyncs. Each operation is chosen from a model of the tree, so `check` can
rebuild the model after every operation from the seed alone.

`run` logs to LOG, flushed per line: "B i" before operation i, "E i" after
it, and "F i" when fsync operation i returned. It stops at the first error
(the daemon was killed: ENOTCONN) or after --max operations.

`check` reads the tree under DIR (a mount of the store from an empty cache,
after the crash) and accepts it if it equals the model after some operation
j with F <= j <= B (every fsync that returned is in it, and nothing the
workload had not started), or the model in the middle of a write
(the file created or truncated, its data not yet written). Exit 0 if so,
1 with the nearest candidate's differences otherwise.
"""
import hashlib
import os
import random
import sys

DIRS = ["d0", "d1", "d2", "d3/sub"]
FILES = [f"f{i}" for i in range(8)]
SIZES = [0, 100, 4096, 70_000, 300_000]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


class Model:
    """tree: path -> None for a directory, or the digest of the file's
    content (kept as digests, so a snapshot costs no hashing); data: the
    contents, for appends."""

    def __init__(self):
        self.tree = {}
        self.data = {}

    def set(self, path, content):
        self.tree[path] = sha(content)
        self.data[path] = content

    def remove(self, path):
        del self.tree[path]
        self.data.pop(path, None)

    def dirs(self):
        return [""] + [p for p, v in self.tree.items() if v is None]

    def files(self):
        return [p for p, v in self.tree.items() if v is not None]

    def children(self, d):
        prefix = d + "/"
        return [p for p in self.tree if p.startswith(prefix)]

    def snapshot(self):
        return dict(self.tree)


def join(d, name):
    return f"{d}/{name}" if d else name


def ops(seed):
    """Yields (kind, args) forever, applying each to a model first."""
    rng = random.Random(seed)
    m = Model()
    while True:
        files, dirs = m.files(), m.dirs()
        kind = rng.choices(
            ["write", "append", "rename", "unlink", "mkdir", "rmdir", "fsync"],
            weights=[30, 8, 14, 8, 8, 4, 8],
        )[0]
        if kind == "write":
            path = join(rng.choice(dirs), rng.choice(FILES))
            if path in m.tree and m.tree[path] is None:
                continue
            data = rng.randbytes(rng.choice(SIZES))
            yield kind, (path, data), m.snapshot()
            m.set(path, data)
        elif kind == "append" and files:
            path = rng.choice(files)
            data = rng.randbytes(rng.choice(SIZES[:3]))
            yield kind, (path, data), m.snapshot()
            m.set(path, m.data[path] + data)
        elif kind == "rename" and (files or len(dirs) > 1):
            src = rng.choice(files + dirs[1:])
            is_dir = m.tree[src] is None
            dst_dir = rng.choice(dirs)
            name = rng.choice([d.split("/")[-1] for d in DIRS] if is_dir else FILES)
            dst = join(dst_dir, name)
            if dst == src or dst_dir == src or dst_dir.startswith(src + "/"):
                continue
            if dst in m.tree:
                # POSIX: a file replaces a file, a directory an empty one.
                if (m.tree[dst] is None) != is_dir or (is_dir and m.children(dst)):
                    continue
            yield kind, (src, dst), m.snapshot()
            moved = {p: (v, m.data.get(p)) for p, v in m.tree.items() if p == src or p.startswith(src + "/")}
            for p in moved:
                m.remove(p)
            if dst in m.tree:
                m.remove(dst)
            for p, (v, content) in moved.items():
                m.tree[dst + p[len(src):]] = v
                if content is not None:
                    m.data[dst + p[len(src):]] = content
        elif kind == "unlink" and files:
            path = rng.choice(files)
            yield kind, (path,), m.snapshot()
            m.remove(path)
        elif kind == "mkdir":
            path = join(rng.choice(dirs), rng.choice(DIRS).split("/")[-1])
            if path in m.tree or path.count("/") > 3:
                continue
            yield kind, (path,), m.snapshot()
            m.tree[path] = None
        elif kind == "rmdir" and len(dirs) > 1:
            path = rng.choice(dirs[1:])
            if m.children(path):
                continue
            yield kind, (path,), m.snapshot()
            m.remove(path)
        elif kind == "fsync" and files:
            yield kind, (rng.choice(files),), m.snapshot()


def apply(root, kind, args):
    p = lambda rel: os.path.join(root, rel)  # noqa: E731
    if kind == "write":
        with open(p(args[0]), "wb") as f:
            f.write(args[1])
    elif kind == "append":
        with open(p(args[0]), "ab") as f:
            f.write(args[1])
    elif kind == "rename":
        os.rename(p(args[0]), p(args[1]))
    elif kind == "unlink":
        os.unlink(p(args[0]))
    elif kind == "mkdir":
        os.mkdir(p(args[0]))
    elif kind == "rmdir":
        os.rmdir(p(args[0]))
    elif kind == "fsync":
        fd = os.open(p(args[0]), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def run(seed, root, log_path, limit):
    with open(log_path, "w", buffering=1) as log:
        for i, (kind, args, _) in enumerate(ops(seed)):
            if i >= limit:
                return 0
            log.write(f"B {i}\n")
            try:
                apply(root, kind, args)
            except OSError as e:
                log.write(f"X {i} {e.errno}\n")
                return 0
            log.write(f"E {i}\n")
            if kind == "fsync":
                log.write(f"F {i}\n")


def read_tree(root):
    tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel
        for d in dirnames:
            tree[join(rel, d)] = None
        for f in filenames:
            with open(os.path.join(dirpath, f), "rb") as fh:
                tree[join(rel, f)] = sha(fh.read())
    return tree


def diff(a, b):
    lines = []
    for path in sorted(set(a) | set(b)):
        if a.get(path, "absent") != b.get(path, "absent"):
            lines.append(f"  {path}: store {a.get(path, 'absent')}, model {b.get(path, 'absent')}")
    return lines


def check(seed, log_path, root):
    begun, fsynced = -1, -1
    with open(log_path) as log:
        for line in log:
            tag, n = line.split()[:2]
            if tag == "B":
                begun = max(begun, int(n))
            elif tag == "F":
                fsynced = max(fsynced, int(n))
    actual = read_tree(root)
    # candidates[j]: the model after j operations (and mid-write variants).
    best = None
    for i, (kind, args, before) in enumerate(ops(seed)):
        if i > begun + 1:
            break
        if i > fsynced:
            candidates = [before]
            if kind == "write" and i <= begun:
                candidates.append({**before, args[0]: sha(b"")})
            for candidate in candidates:
                if candidate == actual:
                    print(f"ok: the state after {i} operations (begun {begun + 1}, last fsync returned at {fsynced})")
                    return 0
                d = diff(actual, candidate)
                if best is None or len(d) < len(best[1]):
                    best = (i, d)
    print(f"no state of the workload matches (begun {begun + 1} operations, last fsync returned at {fsynced})")
    if best:
        print(f"nearest: after {best[0]} operations, differing in:")
        print("\n".join(best[1][:30]))
    return 1


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "run":
        limit = int(sys.argv[5]) if len(sys.argv) > 5 else 1_000_000
        return run(int(sys.argv[2]), sys.argv[3], sys.argv[4], limit)
    if len(sys.argv) == 5 and sys.argv[1] == "check":
        return check(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

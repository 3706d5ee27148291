#!/usr/bin/env python3
"""Deterministic test files for the write-back cache suite.

Every file's content follows from its name, so a checker needs no copy:

  filegen.py write DIR COUNT CLOSED_LOG [--fsync-every K --fsynced LOG] [--size-kib N]
      writes DIR/f00000... one after another; after each close(2) (and
      fsync(2) for every K-th file) returns, appends the name to the log(s),
      flushed and fsynced, so the logs never claim more than happened. Stops
      at the first error (the daemon was killed) and exits 0.
  filegen.py verify DIR LOG [--no-extra-check]
      every file named in LOG exists with its full content; any other
      fNNNNN in DIR holds a prefix of its content (nothing half-written
      shows up as valid data). Exits 1 listing what is wrong.
  filegen.py fill DIR CLOSED_LOG --size-kib N
      writes files until one fails; exits 0 only if that failure is ENOSPC.
"""
import argparse
import errno
import hashlib
import os
import sys


def content(name, size):
    """size bytes derived from name (SHA-256 in counter mode; fast enough)."""
    out = bytearray()
    counter = 0
    seed = name.encode()
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "little")).digest() * 64
        counter += 1
    return bytes(out[:size])


def size_of(name, default_kib):
    if default_kib:
        return default_kib * 1024
    # 40 KiB .. about 2.5 MiB: small files and multi-block ones.
    n = int(name[1:])
    return 40 * 1024 + (n * 7919 % 64) * 40 * 1024


def append_log(path, name):
    with open(path, "a") as log:
        log.write(name + "\n")
        log.flush()
        os.fsync(log.fileno())


def write(args):
    for i in range(args.count):
        name = f"f{i:05d}"
        data = content(name, size_of(name, args.size_kib))
        try:
            with open(os.path.join(args.dir, name), "wb") as f:
                f.write(data)
                f.flush()
                synced = args.fsync_every and i % args.fsync_every == 0
                if synced:
                    os.fsync(f.fileno())
        except OSError as e:
            print(f"stopped at {name}: {e}")
            return 0
        append_log(args.closed, name)
        if synced:
            append_log(args.fsynced, name)
    return 0


def verify(args):
    with open(args.log) as log:
        listed = [line.strip() for line in log if line.strip()]
    bad = []
    for name in listed:
        path = os.path.join(args.dir, name)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            bad.append(f"{name}: {e}")
            continue
        if data != content(name, size_of(name, args.size_kib)):
            bad.append(f"{name}: wrong content ({len(data)} bytes)")
    if not args.no_extra_check:
        for name in sorted(set(os.listdir(args.dir)) - set(listed)):
            if not (name.startswith("f") and name[1:].isdigit()):
                continue
            with open(os.path.join(args.dir, name), "rb") as f:
                data = f.read()
            if data != content(name, size_of(name, args.size_kib))[: len(data)]:
                bad.append(f"{name} (not closed before the kill): holds data that was never written")
    for line in bad:
        print(line)
    print(f"{len(listed)} listed files checked, {len(bad)} problems")
    return 1 if bad else 0


def fill(args):
    i = 0
    while True:
        name = f"f{i:05d}"
        try:
            with open(os.path.join(args.dir, name), "wb") as f:
                f.write(content(name, size_of(name, args.size_kib)))
        except OSError as e:
            print(f"{name}: {e}")
            return 0 if e.errno == errno.ENOSPC else 1
        append_log(args.closed, name)
        i += 1
        if i > 100000:
            print("the disk never filled")
            return 1


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("dir")
    w.add_argument("count", type=int)
    w.add_argument("closed")
    w.add_argument("--fsync-every", type=int, default=0)
    w.add_argument("--fsynced")
    w.add_argument("--size-kib", type=int, default=0)
    v = sub.add_parser("verify")
    v.add_argument("dir")
    v.add_argument("log")
    v.add_argument("--no-extra-check", action="store_true")
    v.add_argument("--size-kib", type=int, default=0)
    f = sub.add_parser("fill")
    f.add_argument("dir")
    f.add_argument("closed")
    f.add_argument("--size-kib", type=int, default=4096)
    args = p.parse_args()
    return {"write": write, "verify": verify, "fill": fill}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Helpers for scripts/bench.sh (not meant to be run by hand).

  bench-helper.py tree DIR N                 generate N small files (1-8 KiB) in ~sqrt(N) dirs
  bench-helper.py meta DIR N OP              OP = create|stat|rename|delete on N files; prints seconds
  bench-helper.py lag HERE THERE N           N chmods of HERE: ms until an fstat of THERE (open) shows each
  bench-helper.py fsync PATH                 open PATH (O_WRONLY, no truncation), fsync, close
  bench-helper.py rss PID OUT                poll VmHWM/VmRSS of PID every 0.5 s, keep the max (KiB) in OUT
  bench-helper.py fio-iops JSON rw           IOPS from fio --output-format=json (rw = read|write)
  bench-helper.py logcounts S3S_LOG STATE     S3 operations so far in s3s-fs's debug log, as JSON
  bench-helper.py row ...                    append one result row (see cmd_row)
  bench-helper.py report JSONL CSV CONTENDERS  markdown tables on stdout, CSV with ratios
"""
import csv
import json
import math
import os
import random
import signal
import sys
import time


def cmd_tree(d, n):
    n = int(n)
    ndirs = max(1, int(math.sqrt(n)))
    rng = random.Random(1)
    for i in range(n):
        sub = os.path.join(d, f"d{i % ndirs:03d}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"f{i:05d}.dat"), "wb") as f:
            f.write(rng.randbytes(rng.randint(1024, 8192)))


def cmd_meta(d, n, op):
    n = int(n)
    names = [os.path.join(d, f"m{i:06d}") for i in range(n)]
    renamed = [p + ".r" for p in names]
    t0 = time.perf_counter()
    if op == "create":
        for p in names:
            os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    elif op == "stat":
        for p in names:
            os.stat(p)
    elif op == "rename":
        for a, b in zip(names, renamed):
            os.rename(a, b)
    elif op == "delete":
        for p in renamed:
            os.unlink(p)
    else:
        sys.exit(f"unknown op {op}")
    print(f"{time.perf_counter() - t0:.6f}")


def cmd_lag(here, there, n):
    """How long after a chmod on one host returned another host, holding the
    file open, shows the new mode in fstat (which the kernel answers from
    its attribute cache while that lasts). Prints the median and the worst
    in ms, or "nan" for a change never seen within 5 s."""
    with open(here, "w") as f:
        f.write("x")
    os.chmod(here, 0o644)
    fd = os.open(there, os.O_RDONLY)
    lags = []
    try:
        for i in range(int(n)):
            mode = 0o600 if i % 2 == 0 else 0o644
            os.fstat(fd)
            # A random moment within the kernel's attribute TTL.
            time.sleep(random.random())
            os.chmod(here, mode)
            t0 = time.perf_counter()
            while os.fstat(fd).st_mode & 0o777 != mode:
                if time.perf_counter() - t0 > 5:
                    lags.append(math.nan)
                    break
                time.sleep(0.0002)
            else:
                lags.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    lags.sort()
    print(f"{lags[len(lags) // 2] * 1000:.1f} {lags[-1] * 1000:.1f}")


def cmd_fsync(path):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_status(pid):
    vals = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    k, v = line.split(":", 1)
                    vals[k] = int(v.split()[0])
    except OSError:
        return None
    return max(vals.values()) if vals else None


def cmd_rss(pid, out):
    best = 0
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

    def write():
        with open(out + ".tmp", "w") as f:
            f.write(str(best))
        os.replace(out + ".tmp", out)

    while not stop:
        v = read_status(pid)
        if v is None:
            break
        if v > best:
            best = v
            write()
        time.sleep(0.5)
    v = read_status(pid)
    if v is not None and v > best:
        best = v
    write()


def cmd_fio_iops(path, rw):
    with open(path) as f:
        text = f.read()
    # fio may print warnings before the JSON document
    d = json.loads(text[text.index("{"):])
    job = d["jobs"][0]
    print(f"{job[rw]['iops']:.0f}")


KINDS = ("GET", "PUT", "DELETE", "HEAD", "LIST", "OTHER")

OP_KIND = {
    "GetObject": "GET", "GetObjectAttributes": "GET",
    "PutObject": "PUT", "UploadPart": "PUT", "UploadPartCopy": "PUT", "CopyObject": "PUT",
    "CreateMultipartUpload": "PUT", "CompleteMultipartUpload": "PUT",
    "DeleteObject": "DELETE", "DeleteObjects": "DELETE", "AbortMultipartUpload": "DELETE",
    "HeadObject": "HEAD", "HeadBucket": "HEAD",
    "ListObjects": "LIST", "ListObjectsV2": "LIST", "ListBuckets": "LIST", "ListParts": "LIST",
    "ListMultipartUploads": "LIST", "ListObjectVersions": "LIST",
}


def cmd_logcounts(path, state):
    """Count the operations s3s-fs resolved ("resolved route, op: X" at debug
    level of s3s::ops), by kind and by operation name, cumulatively. STATE
    keeps the offset read so far and the totals, so each call reads only what
    the log gained since the last one."""
    try:
        with open(state) as f:
            st = json.load(f)
    except (OSError, ValueError):
        st = {"offset": 0, "detail": {}}
    detail = st["detail"]
    marker = b"resolved route, op: "
    with open(path, "rb") as f:
        f.seek(st["offset"])
        data = f.read()
    end = data.rfind(b"\n") + 1  # complete lines only
    for line in data[:end].split(b"\n"):
        i = line.find(marker)
        if i < 0:
            continue
        op = line[i + len(marker):].split(b",", 1)[0].strip().decode("ascii", "replace")
        detail[op] = detail.get(op, 0) + 1
    st["offset"] += end
    with open(state + ".tmp", "w") as f:
        json.dump(st, f)
    os.replace(state + ".tmp", state)
    out = {k: 0 for k in KINDS}
    for op, n in detail.items():
        out[OP_KIND.get(op, "OTHER")] += n
    out["detail"] = detail
    print(json.dumps(out))


def load_counts(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def cmd_row(args):
    """row JSONL CONTENDER WORKLOAD UNIT VALUE SECONDS RSS_KIB COUNTS0 COUNTS1 NOTE

    VALUE: a number (already computed), 'failed' or 'n/a'. COUNTS*: snapshot
    files from the proxy (may be missing: counts are then empty)."""
    (jsonl, contender, workload, unit, value, seconds, rss, c0, c1, note) = args
    row = {"contender": contender, "workload": workload, "unit": unit, "value": value,
           "seconds": seconds, "peak_rss_mib": "", "note": note}
    try:
        row["peak_rss_mib"] = f"{int(rss) / 1024:.0f}" if int(rss) > 0 else ""
    except ValueError:
        pass
    a, b = load_counts(c0), load_counts(c1)
    if a and b:
        for k in KINDS:
            row[k] = b.get(k, 0) - a.get(k, 0)
        if "bytes_up" in b:  # from the proxy (not from s3s-fs's log)
            row["mib_up"] = f"{(b['bytes_up'] - a['bytes_up']) / 1048576:.1f}"
            row["mib_down"] = f"{(b['bytes_down'] - a['bytes_down']) / 1048576:.1f}"
            wall = b["wall_s"] - a["wall_s"]
            cpu = b["cpu_s"] - a["cpu_s"]
            row["proxy_cpu_pct"] = f"{100 * cpu / wall:.0f}" if wall > 0 else ""
        det = {}
        for k, v in b.get("detail", {}).items():
            dv = v - a.get("detail", {}).get(k, 0)
            if dv:
                det[k] = dv
        row["detail"] = det
    with open(jsonl, "a") as f:
        f.write(json.dumps(row) + "\n")


ORDER = ["seq-write-close", "seq-write-durable", "seq-read-cold", "seq-read-warm",
         "randread-4k", "randwrite-4k", "meta-create", "meta-stat", "meta-rename",
         "meta-delete", "untar+sync", "untar+umount", "tree-untar+umount", "tree-stat",
         "tree-read"]


def num(v):
    try:
        x = float(v)
        return x if x > 0 else None
    except (TypeError, ValueError):
        return None


def ratio(row, ref):
    """How many times faster than ref (>1: faster), whatever the unit."""
    if ref is None:
        return ""
    a, b = num(row["value"]), num(ref["value"])
    if a is None or b is None:
        return ""
    r = b / a if row["unit"] == "s" else a / b
    return f"{r:.2f}"


def fmt(v):
    x = num(v)
    if x is None:
        return str(v)
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def cmd_report(jsonl, out_csv, contenders):
    rows = []
    with open(jsonl) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    contenders = contenders.split()
    by = {(r["contender"], r["workload"]): r for r in rows}
    workloads = [w for w in ORDER if any(r["workload"] == w for r in rows)]
    workloads += sorted({r["workload"] for r in rows} - set(workloads))

    def ref(name, w):
        return by.get((name, w))

    fields = ["contender", "workload", "value", "unit", "vs_rclone_crypt", "vs_bindfs",
              "peak_rss_mib", *KINDS, "mib_up", "mib_down", "proxy_cpu_pct", "seconds", "note",
              "requests_detail"]
    table = []
    for w in workloads:
        for c in contenders:
            r = by.get((c, w))
            if r is None:
                continue
            out = {k: r.get(k, "") for k in fields}
            out["vs_rclone_crypt"] = ratio(r, ref("rclone-crypt", w))
            out["vs_bindfs"] = ratio(r, ref("bindfs", w))
            out["requests_detail"] = " ".join(f"{k}={v}" for k, v in sorted(r.get("detail", {}).items()))
            table.append(out)
    with open(out_csv, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=fields)
        wr.writeheader()
        wr.writerows(table)

    # Summary: one row per workload, one column per contender.
    print("### Summary (value; in brackets: times faster than rclone crypt / than bindfs passthrough)\n")
    print("| workload | unit | " + " | ".join(contenders) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in contenders) + " |")
    for w in workloads:
        unit = next((r["unit"] for r in rows if r["workload"] == w), "")
        cells = []
        for c in contenders:
            r = by.get((c, w))
            if r is None:
                cells.append("")
                continue
            v = fmt(r["value"])
            if num(r["value"]) is None and r.get("note"):
                v = f"{v} ({r['note']})"
            rr = [x for x in (ratio(r, ref("rclone-crypt", w)) if c != "rclone-crypt" else "",
                              ratio(r, ref("bindfs", w)) if c != "bindfs" else "") ]
            if any(rr):
                v += " [" + " / ".join(x or "-" for x in rr) + "]"
            cells.append(v)
        print(f"| {w} | {unit} | " + " | ".join(cells) + " |")

    print("\n### Details (peak RSS of the FUSE daemon, S3 requests by kind)\n")
    cols = [("workload", "workload", ""), ("contender", "contender", ""), ("value", "value", ":"),
            ("unit", "unit", ""), ("vs_rclone_crypt", "vs rclone", ":"), ("vs_bindfs", "vs bindfs", ":"),
            ("peak_rss_mib", "peak RSS MiB", ":"), *((k, k, ":") for k in KINDS)]
    if any(t.get("mib_up") for t in table):  # counted by the proxy
        cols += [("mib_up", "MiB up", ":"), ("mib_down", "MiB down", ":"), ("proxy_cpu_pct", "proxy CPU %", ":")]
    cols.append(("note", "note", ""))
    print("| " + " | ".join(c[1] for c in cols) + " |")
    print("| " + " | ".join("---" + c[2] for c in cols) + " |")
    for t in table:
        cells = []
        for key, _, _ in cols:
            v = t.get(key, "")
            if key == "value":
                v = fmt(v)
            cells.append(str(v).replace("|", "/"))
        print("| " + " | ".join(cells) + " |")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "tree":
        cmd_tree(*args)
    elif cmd == "meta":
        cmd_meta(*args)
    elif cmd == "lag":
        cmd_lag(*args)
    elif cmd == "fsync":
        cmd_fsync(*args)
    elif cmd == "rss":
        cmd_rss(int(args[0]), args[1])
    elif cmd == "fio-iops":
        cmd_fio_iops(*args)
    elif cmd == "logcounts":
        cmd_logcounts(*args)
    elif cmd == "row":
        cmd_row(args)
    elif cmd == "report":
        cmd_report(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

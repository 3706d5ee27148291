#!/usr/bin/env python3
"""A counting TCP proxy for S3 traffic (used by scripts/bench.sh).

Usage: s3-count-proxy.py LISTEN_PORT UPSTREAM_HOST:UPSTREAM_PORT [PORT_FILE]

Listens on 127.0.0.1:LISTEN_PORT and forwards every byte verbatim to the
upstream S3 server (no header is rewritten, so SigV4 signatures, which cover
the Host header the client sent, still verify: s3s-fs checks the signature
against the headers it receives, not against its own address). It parses the
request heads on the client->server side only to count them, and to find
where each request ends on a kept-alive connection (Content-Length or chunked
bodies). Responses are pumped back unparsed.

Each request is counted by kind:
  GET     GetObject (and any other object-level GET)
  PUT     PutObject, UploadPart, CopyObject, and the multipart POSTs
          (CreateMultipartUpload, CompleteMultipartUpload)
  DELETE  DeleteObject, AbortMultipartUpload, DeleteObjects (POST ?delete)
  HEAD    HeadObject, HeadBucket
  LIST    bucket-level GET (ListObjects[V2], ListMultipartUploads, ...)
  OTHER   everything else (bucket GET ?location/?object-lock, CreateBucket, ...)
plus bytes_up (request bytes, heads and bodies) and bytes_down (response bytes).

`GET /__counts` (answered by the proxy itself, never forwarded) returns the
cumulative counts as JSON, with `cpu_s` (the proxy's own CPU time, to see
whether it is a bottleneck) and `wall_s`. Callers snapshot before and after
a workload and subtract.
"""
import json
import os
import socket
import sys
import threading
import time
from urllib.parse import urlsplit, parse_qs

BUF = 1 << 20
SOCKBUF = 4 << 20

lock = threading.Lock()
counts = {k: 0 for k in ("GET", "PUT", "DELETE", "HEAD", "LIST", "OTHER")}
counts["bytes_up"] = 0
counts["bytes_down"] = 0
counts["connections"] = 0
detail = {}
START = time.monotonic()


def classify(method, target):
    parts = urlsplit(target)
    path = parts.path or "/"
    q = parse_qs(parts.query, keep_blank_values=True)
    # path-style: /bucket or /bucket/ is bucket level, /bucket/key is an object
    segs = path.lstrip("/").split("/", 1)
    bucket_level = len(segs) == 1 or segs[1] == ""
    if method == "HEAD":
        return "HEAD"
    if method == "DELETE":
        return "DELETE" if not bucket_level else "OTHER"
    if method == "POST":
        if "delete" in q:
            return "DELETE"
        if "uploads" in q or "uploadId" in q:
            return "PUT"
        return "OTHER"
    if method == "PUT":
        return "PUT" if not bucket_level else "OTHER"
    if method == "GET":
        if bucket_level:
            if path == "/":
                return "LIST"  # ListBuckets
            other = {"location", "object-lock", "versioning", "policy", "acl", "cors",
                     "lifecycle", "encryption", "tagging", "website", "logging",
                     "notification", "replication", "requestPayment", "accelerate",
                     "ownershipControls", "publicAccessBlock", "analytics", "metrics",
                     "inventory", "intelligent-tiering"}
            if other & set(q):
                return "OTHER"
            return "LIST"
        if "uploadId" in q:
            return "LIST"  # ListParts
        return "GET"
    return "OTHER"


def add(kind, label, n_up):
    with lock:
        counts[kind] += 1
        counts["bytes_up"] += n_up
        detail[label] = detail.get(label, 0) + 1


def tune(s):
    for opt, val in ((socket.SO_RCVBUF, SOCKBUF), (socket.SO_SNDBUF, SOCKBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, val)
        except OSError:
            pass
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Reader:
    """Buffered reader over the client socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def fill(self):
        data = self.sock.recv(BUF)
        if not data:
            return False
        self.buf += data
        return True

    def read_until(self, sep, limit=1 << 20):
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[: i + len(sep)])
                del self.buf[: i + len(sep)]
                return out
            if len(self.buf) > limit or not self.fill():
                return None


def pump_body(rd, up, n):
    """Forward exactly n body bytes from the client to upstream."""
    sent = 0
    if rd.buf:
        take = min(n, len(rd.buf))
        up.sendall(rd.buf[:take])
        del rd.buf[:take]
        sent = take
    mv = memoryview(bytearray(BUF))
    while sent < n:
        k = rd.sock.recv_into(mv, min(BUF, n - sent))
        if k == 0:
            raise ConnectionError("client closed mid-body")
        up.sendall(mv[:k])
        sent += k
    return n


def pump_chunked(rd, up):
    total = 0
    while True:
        line = rd.read_until(b"\r\n")
        if line is None:
            raise ConnectionError("client closed in a chunk header")
        up.sendall(line)
        total += len(line)
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            # trailers, up to the empty line
            while True:
                t = rd.read_until(b"\r\n")
                if t is None:
                    raise ConnectionError("client closed in trailers")
                up.sendall(t)
                total += len(t)
                if t == b"\r\n":
                    return total
        total += pump_body(rd, up, size + 2)


def answer_counts(client):
    with lock:
        out = dict(counts)
        out["detail"] = dict(detail)
    out["cpu_s"] = time.process_time()
    out["wall_s"] = time.monotonic() - START
    body = json.dumps(out).encode()
    client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def down(up, client):
    buf = bytearray(BUF)
    mv = memoryview(buf)
    try:
        while True:
            k = up.recv_into(mv)
            if k == 0:
                break
            client.sendall(mv[:k])
            with lock:
                counts["bytes_down"] += k
    except OSError:
        pass
    finally:
        try:
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def handle(client, upstream):
    tune(client)
    rd = Reader(client)
    up = None
    t = None
    try:
        while True:
            head = rd.read_until(b"\r\n\r\n")
            if head is None:
                break
            lines = head.split(b"\r\n")
            try:
                method, target, _ = lines[0].decode("latin-1").split(" ", 2)
            except ValueError:
                method, target = "?", "/"
            if target.startswith("/__counts"):
                answer_counts(client)
                break
            if up is None:
                up = socket.create_connection(upstream)
                tune(up)
                with lock:
                    counts["connections"] += 1
                t = threading.Thread(target=down, args=(up, client), daemon=True)
                t.start()
            clen = 0
            chunked = False
            for ln in lines[1:]:
                name, _, val = ln.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    clen = int(val.strip() or b"0")
                elif name == b"transfer-encoding" and b"chunked" in val.lower():
                    chunked = True
            kind = classify(method, target)
            q = urlsplit(target).query
            qkeys = sorted({p.split("=", 1)[0] for p in q.split("&") if p}) if q else []
            label = method + ("?" + "&".join(qkeys) if qkeys else "")
            up.sendall(head)
            n = len(head)
            if chunked:
                n += pump_chunked(rd, up)
            elif clen:
                n += pump_body(rd, up, clen)
            add(kind, label, n)
    except (OSError, ConnectionError, ValueError):
        pass
    finally:
        if up is not None:
            try:
                up.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            if t is not None:
                t.join(timeout=600)
            up.close()
        client.close()


def main():
    port = int(sys.argv[1])
    host, _, uport = sys.argv[2].rpartition(":")
    upstream = (host or "127.0.0.1", int(uport))
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(512)
    if len(sys.argv) > 3:
        with open(sys.argv[3] + ".tmp", "w") as f:
            f.write(str(srv.getsockname()[1]))
        os.replace(sys.argv[3] + ".tmp", sys.argv[3])
    while True:
        c, _ = srv.accept()
        threading.Thread(target=handle, args=(c, upstream), daemon=True).start()


if __name__ == "__main__":
    main()

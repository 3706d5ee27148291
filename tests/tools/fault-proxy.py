#!/usr/bin/env python3
"""A fault-injecting HTTP proxy for S3 crash tests.

It sits between an S3 client (s3vault, through the AWS Rust SDK) and a local
S3 server (s3s-fs or moto) and, on request, makes chosen S3 calls fail, stall,
or lose their connection, so the tests can check what the filesystem does
when the store misbehaves at a precise moment.

Usage:

    fault-proxy.py [-v] LISTEN_PORT UPSTREAM_HOST:UPSTREAM_PORT

Listens on 127.0.0.1:LISTEN_PORT and prints "ready" on stdout once it
accepts connections; nothing else is ever written to stdout. With -v, one
line per proxied request (method, target, mode applied, status) goes to
stderr.

Forwarding is verbatim: request and response bytes are copied unchanged and
no header is rewritten. This matters because SigV4 signatures cover the Host
header the client sent, and s3s-fs verifies them against the headers it
receives; a rewriting proxy would break every signature. The proxy parses
HTTP/1.1 only as far as it must to find where each request and response
ends (Content-Length, chunked, or until close), so that it can act on single
requests of a kept-alive connection. Each client connection gets its own
upstream connection, and requests on it are handled one at a time.

Control API (answered by the proxy itself, never forwarded; every answer
carries `Connection: close`):

    GET /__fault?mode=M[&method=METHOD][&path=SUBSTR][&after=N][&count=K][&ms=D]
        Replaces the single active rule and answers 200 with it as JSON.
        A request matches the rule when METHOD (if given, case-insensitive)
        is its method and SUBSTR (if given) occurs in its target (path and
        query, URL-decoded once). Of the matching requests seen since the
        rule was set, the first N (after, default 0) pass untouched; then at
        most K (count, default unlimited) get the fault; later ones pass.
        Requests that do not match always pass.

    GET /__stats
        {"requests": forwarded or faulted requests, "faulted": faulted ones,
         "by_method": {"GET": n, ...}, "rule": the current rule}

Modes:

    pass       No fault; the default at start.
    fail       Answer 503 with an S3 `SlowDown` XML error; not forwarded.
               The connection stays usable, like a real throttled answer.
    delay      Sleep D milliseconds (ms, default 1000), then forward.
    cut        Close the client connection once the request has been read;
               not forwarded (the request never reached the store).
    cut-after  Forward the request and read the whole response, then close
               the client connection without sending any of it (the request
               took effect but its answer was lost).
    drop       Neither forward nor answer: hold the connection open until the
               client gives up and closes it, or until the rule is changed
               to another mode, at which point the connection is closed with
               no answer (a store that hangs).

If the upstream server refuses or drops the connection before a response
head arrives, the client gets a 502 and the connection is closed.
"""
import json
import select
import socket
import sys
import threading
import time
import traceback
from urllib.parse import parse_qs, unquote, urlsplit

MODES = ("pass", "fail", "delay", "cut", "cut-after", "drop")
FAIL_BODY = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b'<Message>injected by fault-proxy</Message></Error>')
IO_CHUNK = 1 << 16
# A request head larger than this is not something an S3 client sends; refuse
# it rather than buffer without bound.
MAX_HEAD = 1 << 20
DROP_POLL_S = 0.05

VERBOSE = False
UPSTREAM = ("127.0.0.1", 0)


class PeerClosed(Exception):
    """The other end closed the connection (clean EOF)."""


class UpstreamError(Exception):
    """The upstream server could not be reached or broke off the exchange."""


class BadRequest(Exception):
    """The client sent something this proxy cannot frame."""


# --------------------------------------------------------------------------
# Rule and statistics, shared by all connection threads.

class Rule:
    def __init__(self, mode="pass", method=None, path=None, after=0, count=None, ms=1000):
        self.mode = mode
        self.method = method.upper() if method else None
        self.path = path
        self.after = after
        self.count = count
        self.ms = ms
        # Counters live on the rule so that setting a new rule restarts
        # after/count from zero, which is what a test expects when it arms
        # a fault for "the next K matching requests".
        self.matched = 0
        self.faulted = 0

    def matches(self, method, target):
        if self.method is not None and method.upper() != self.method:
            return False
        if self.path is not None and self.path not in unquote(target):
            return False
        return True

    def to_json(self):
        return {"mode": self.mode, "method": self.method, "path": self.path,
                "after": self.after, "count": self.count, "ms": self.ms,
                "matched": self.matched, "faulted": self.faulted}


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.rule = Rule()
        self.requests = 0
        self.faulted = 0
        self.by_method = {}

    def set_rule(self, rule):
        with self.lock:
            self.rule = rule
            return rule.to_json()

    def decide(self, method, target):
        """Count the request and return (mode to apply, rule it came from)."""
        with self.lock:
            rule = self.rule
            self.requests += 1
            self.by_method[method] = self.by_method.get(method, 0) + 1
            if rule.mode == "pass" or not rule.matches(method, target):
                return "pass", rule
            rule.matched += 1
            if rule.matched <= rule.after:
                return "pass", rule
            if rule.count is not None and rule.faulted >= rule.count:
                return "pass", rule
            rule.faulted += 1
            self.faulted += 1
            return rule.mode, rule

    def current_rule(self):
        with self.lock:
            return self.rule

    def stats(self):
        with self.lock:
            return {"requests": self.requests, "faulted": self.faulted,
                    "by_method": dict(self.by_method), "rule": self.rule.to_json()}


STATE = State()


def log(msg):
    if VERBOSE:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()


# --------------------------------------------------------------------------
# HTTP framing.

class Reader:
    """Buffered reads from a socket.

    A hand-rolled buffer rather than socket.makefile() because the proxy must
    know whether bytes are already buffered before it blocks in select() on
    the raw socket (waiting for the next request, or watching a dropped one).
    """

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def buffered(self):
        return len(self.buf)

    def fill(self):
        data = self.sock.recv(IO_CHUNK)
        if not data:
            raise PeerClosed("connection closed")
        self.buf += data

    def readline(self, limit=MAX_HEAD):
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            if len(self.buf) > limit:
                raise BadRequest("line too long")
            start = len(self.buf)
            self.fill()

    def read_some(self, n):
        """Up to n bytes; b"" only at EOF."""
        if self.buf:
            data = bytes(self.buf[:n])
            del self.buf[:n]
            return data
        return self.sock.recv(min(n, IO_CHUNK))

    def copy_exact(self, n, sink):
        while n > 0:
            data = self.read_some(min(n, IO_CHUNK))
            if not data:
                raise PeerClosed("connection closed mid-body")
            sink(data)
            n -= len(data)

    def copy_chunked(self, sink):
        """Copy a chunked body verbatim, through the last chunk and trailers."""
        while True:
            line = self.readline()
            sink(line)
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadRequest("bad chunk size %r" % size_text)
            if size == 0:
                break
            self.copy_exact(size + 2, sink)  # data and its CRLF
        while True:  # trailers, up to the empty line
            line = self.readline()
            sink(line)
            if line in (b"\r\n", b"\n"):
                return

    def copy_until_close(self, sink):
        while True:
            data = self.read_some(IO_CHUNK)
            if not data:
                return
            sink(data)


class Head:
    """A parsed message head; `raw` keeps the exact bytes for forwarding."""

    def __init__(self, raw, start_line, headers):
        self.raw = raw
        self.start_line = start_line
        self.headers = headers  # lower-cased name -> list of values

    def get(self, name):
        values = self.headers.get(name)
        return values[0] if values else None

    def tokens(self, name):
        out = set()
        for v in self.headers.get(name, ()):
            out.update(t.strip().lower() for t in v.split(","))
        return out

    def chunked(self):
        return "chunked" in self.tokens("transfer-encoding")

    def content_length(self):
        v = self.get("content-length")
        if v is None:
            return None
        try:
            # Duplicated values ("5, 5") are tolerated by taking the first.
            return int(v.split(",")[0].strip())
        except ValueError:
            raise BadRequest("bad Content-Length %r" % v)

    def wants_close(self, version):
        conn = self.tokens("connection")
        if "close" in conn:
            return True
        return version == "HTTP/1.0" and "keep-alive" not in conn


def wait_readable(socks, timeout):
    """The sockets among socks that are readable (or closed) within timeout
    seconds (None: wait forever). poll() rather than select(), which fails
    outright on descriptors above 1023 when many connections are open."""
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    events = poller.poll(None if timeout is None else timeout * 1000)
    return [by_fd[fd] for fd, _ in events]


def read_head(reader):
    lines = []
    total = 0
    while True:
        line = reader.readline()
        total += len(line)
        if total > MAX_HEAD:
            raise BadRequest("head too large")
        if not lines and line in (b"\r\n", b"\n"):
            continue  # stray CRLF between kept-alive requests is allowed
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            break
    start_line = lines[0].decode("latin-1").rstrip("\r\n")
    headers = {}
    for line in lines[1:-1]:
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    return Head(b"".join(lines), start_line, headers)


def simple_response(status, reason, body, content_type, close):
    head = ["HTTP/1.1 %d %s" % (status, reason),
            "Content-Type: " + content_type,
            "Content-Length: %d" % len(body)]
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def json_response(status, reason, obj):
    body = (json.dumps(obj, sort_keys=True) + "\n").encode()
    return simple_response(status, reason, body, "application/json", close=True)


# --------------------------------------------------------------------------
# Control requests.

def handle_control(target):
    parts = urlsplit(target)
    if parts.path == "/__stats":
        return json_response(200, "OK", STATE.stats())
    if parts.path != "/__fault":
        return json_response(404, "Not Found", {"error": "unknown control path " + parts.path})
    q = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    mode = q.get("mode", "pass")
    if mode not in MODES:
        return json_response(400, "Bad Request", {"error": "unknown mode %r" % mode,
                                                  "modes": list(MODES)})
    try:
        after = int(q.get("after", 0))
        count = int(q["count"]) if q.get("count", "") != "" else None
        ms = int(q.get("ms", 1000))
        if after < 0 or ms < 0 or (count is not None and count < 0):
            raise ValueError
    except ValueError:
        return json_response(400, "Bad Request", {"error": "after, count and ms must be integers >= 0"})
    rule = Rule(mode, q.get("method") or None, q.get("path") or None, after, count, ms)
    return json_response(200, "OK", STATE.set_rule(rule))


# --------------------------------------------------------------------------
# One client connection.

class Connection:
    def __init__(self, client):
        self.client = client
        self.creader = Reader(client)
        self.upstream = None
        self.ureader = None

    def close(self):
        for s in (self.client, self.upstream):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass

    def run(self):
        try:
            while self.wait_for_request():
                if not self.one_request():
                    break
        except (PeerClosed, BadRequest, OSError):
            pass  # a peer went away or spoke garbage: this connection ends
        except Exception:
            # A bug must cost only this connection, never the proxy.
            sys.stderr.write("fault-proxy: connection error\n" + traceback.format_exc())
            sys.stderr.flush()
        finally:
            self.close()

    def wait_for_request(self):
        """Block until the client sends more; False if either side closed.

        Watching the upstream too mirrors its closing of an idle kept-alive
        connection onto the client, as if the client were talking to it
        directly, instead of leaving the client with a connection whose next
        request would meet a dead upstream.
        """
        while not self.creader.buffered():
            watch = [self.client] + ([self.upstream] if self.upstream else [])
            readable = wait_readable(watch, None)
            if self.upstream is not None and self.upstream in readable:
                return False  # EOF, or bytes no request asked for: either way done
            if self.client in readable:
                try:
                    self.creader.fill()
                except PeerClosed:
                    return False
        return True

    def one_request(self):
        """Handle one request; return whether the connection stays open."""
        head = read_head(self.creader)
        try:
            method, target, version = head.start_line.split(" ", 2)
        except ValueError:
            raise BadRequest("bad request line %r" % head.start_line)
        chunked = head.chunked()
        length = None if chunked else head.content_length()
        has_body = chunked or (length or 0) > 0

        # Answer "Expect: 100-continue" ourselves: the body must be read
        # before any fault can be applied, and a client waiting for the
        # interim answer would otherwise stall (curl for a second, other
        # clients longer). Interim answers from the upstream are skipped.
        if has_body and "100-continue" in head.tokens("expect") and version == "HTTP/1.1":
            self.client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

        # One request body in memory at a time: it may have to be replayed to
        # the upstream after a delay, or thrown away.
        body = bytearray()
        if chunked:
            self.creader.copy_chunked(body.extend)
        elif length:
            self.creader.copy_exact(length, body.extend)

        if target.startswith("/__"):
            self.client.sendall(handle_control(target))
            return False

        client_close = head.wants_close(version)
        mode, rule = STATE.decide(method, target)

        if mode == "fail":
            self.client.sendall(simple_response(503, "Slow Down", FAIL_BODY,
                                                "application/xml", close=client_close))
            log("%s %s mode=fail status=503" % (method, target))
            return not client_close
        if mode == "cut":
            log("%s %s mode=cut status=-" % (method, target))
            return False
        if mode == "drop":
            log("%s %s mode=drop status=-" % (method, target))
            self.hold(rule)
            return False
        if mode == "delay":
            time.sleep(rule.ms / 1000.0)

        lost = mode == "cut-after"
        try:
            status, keep = self.forward(method, head, body, discard=lost)
        except UpstreamError as e:
            log("%s %s mode=%s status=502 (%s)" % (method, target, mode, e))
            if not lost:
                msg = ("fault-proxy: upstream unavailable: %s\n" % e).encode()
                try:
                    self.client.sendall(simple_response(502, "Bad Gateway", msg,
                                                        "text/plain", close=True))
                except OSError:
                    pass
            return False
        log("%s %s mode=%s status=%s" % (method, target, mode,
                                          "%d (not delivered)" % status if lost else status))
        return keep and not client_close and not lost

    def hold(self, rule):
        """Keep a dropped request's connection open, silent, until the client
        gives up or the rule is changed to something other than drop."""
        while True:
            current = STATE.current_rule()
            if current is not rule and current.mode != "drop":
                return
            readable = wait_readable([self.client], DROP_POLL_S)
            if readable:
                if not self.client.recv(IO_CHUNK):
                    return
                # Bytes from a client that did not wait for its answer
                # (pipelining) are discarded; they could never be answered.
                time.sleep(DROP_POLL_S)

    def connect_upstream(self):
        try:
            sock = socket.create_connection(UPSTREAM, timeout=10)
        except OSError as e:
            raise UpstreamError("connect to %s:%d: %s" % (UPSTREAM[0], UPSTREAM[1], e))
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.upstream = sock
        self.ureader = Reader(sock)

    def forward(self, method, head, body, discard):
        """Send the request upstream and relay (or swallow) the response.

        Returns (status, keep_alive). Raises UpstreamError if the upstream
        fails before the response head is complete; after that point the
        client has already seen part of the answer, so a failure just closes.
        """
        if self.upstream is None:
            self.connect_upstream()
        try:
            # Small requests go out in one write (one segment with
            # TCP_NODELAY); large bodies are not copied just to prepend the head.
            if len(body) < IO_CHUNK:
                self.upstream.sendall(head.raw + body)
            else:
                self.upstream.sendall(head.raw)
                self.upstream.sendall(body)
            while True:
                resp = read_head(self.ureader)
                parts = resp.start_line.split(" ", 2)
                try:
                    status = int(parts[1])
                except (IndexError, ValueError):
                    raise UpstreamError("bad status line %r" % resp.start_line)
                if 100 <= status < 200 and status != 101:
                    continue  # interim answer; 100 Continue was already sent by us
                break
        except (OSError, PeerClosed, BadRequest) as e:
            raise UpstreamError(str(e) or type(e).__name__)

        sink = (lambda data: None) if discard else self.client.sendall
        sink(resp.raw)
        version = parts[0]
        keep = not resp.wants_close(version)
        if method == "HEAD" or status in (101, 204, 304) or 100 <= status < 200:
            pass
        elif resp.chunked():
            self.ureader.copy_chunked(sink)
        else:
            length = resp.content_length()
            if length is not None:
                self.ureader.copy_exact(length, sink)
            else:
                self.ureader.copy_until_close(sink)
                keep = False
        if status == 101:
            keep = False  # no protocol switch is expected from an S3 server
        return status, keep


# --------------------------------------------------------------------------

def serve(port):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    print("ready", flush=True)
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            # Typically EMFILE under load; back off instead of spinning.
            time.sleep(0.05)
            continue
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=Connection(client).run, daemon=True).start()
        except Exception:
            client.close()


def main(argv):
    global VERBOSE, UPSTREAM
    args = argv[1:]
    if args and args[0] == "-v":
        VERBOSE = True
        args = args[1:]
    if len(args) != 2:
        sys.stderr.write("usage: fault-proxy.py [-v] LISTEN_PORT UPSTREAM_HOST:UPSTREAM_PORT\n")
        return 2
    host, _, uport = args[1].rpartition(":")
    try:
        UPSTREAM = (host or "127.0.0.1", int(uport))
        port = int(args[0])
    except ValueError:
        sys.stderr.write("fault-proxy: ports must be integers\n")
        return 2
    try:
        serve(port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

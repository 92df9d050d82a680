#!/usr/bin/python3
"""A fault-injecting HTTP/1.1 proxy for tests, in front of an S3 server.

    with FaultProxy(upstream="127.0.0.1:PORT") as p:
        client = S3Client(p.endpoint, access_key, secret_key)
        p.add_rule("status", method="PUT", key="segments/", count=1, status=503)
        ...
        p.stats()["faulted"]["PUT"]  # -> 1
        p.clear()

    python3 tests/lib/faultproxy.py --upstream HOST:PORT [--port N]
        [--control-port N] [--rule JSON]...
    prints "127.0.0.1:NNNN" (the proxy) then "control 127.0.0.1:MMMM" and
    serves until SIGTERM/SIGINT.

Forwarding.  Each request is read whole (head and Content-Length or
chunked body) and written to the upstream byte for byte, so SigV4
signatures (which cover the Host header the client sent to the proxy)
stay valid.  Responses are read whole (Content-Length, chunked, or up to
EOF) and relayed byte for byte unless a rule changes them.  One upstream
connection per client connection, kept alive as long as both sides keep
theirs.  `Expect: 100-continue` is answered by the proxy itself (the
header is still forwarded; the upstream's 100 is dropped).  Python 3.11
stdlib only; one thread per client connection.

Rules.  A rule has an action, optional filters and a budget:

    method    "PUT", "GET|HEAD" or a list; None = any
    key       substring of the percent-decoded request target
              ("/bucket/key?query"); None = any
    key_re    regular expression searched in the same string
    skip      let the first N matching requests through untouched
    count     apply to the next N matching requests, then the rule is
              spent (None: until removed)
    probability, seed
              apply to each matching request with this probability,
              drawn from random.Random(seed) (the rule's own generator)

The first rule (in the order added) that matches and fires is applied;
at most one fault per request.  Actions and their parameters:

    status    answer `status` (default 503) without forwarding; the body
              is an S3 XML <Error> with `code` (default from the status:
              SlowDown for 503, InternalError for 500, ...) and
              `message`, or `body` verbatim; extra `headers` (a dict)
    reset     close the client connection with a TCP RST (SO_LINGER 0);
              when="before" (default): the request is not forwarded;
              when="after": it is forwarded and the upstream's answer
              read (the write happened) before the reset
    delay     sleep `ms` milliseconds, when="before" (default) forwarding
              or "after" it (the write happened, the answer is late)
    truncate  forward, then relay the response head and only the first
              `bytes` (default 0) bytes of its body, then close (FIN, or
              RST with reset=True)
    corrupt   forward, then flip (xor 0xff) the body byte at `offset`
              (default: the middle; negative counts from the end)
    blackhole never answer: the connection is held open, reading and
              discarding, until the rule is removed (remove_rule/clear,
              not merely spent), the client closes or the proxy stops;
              then it is closed
    down      outage: each request is answered by an immediate RST
              (without reading its body) until the rule is removed.
              With refuse=True the proxy also stops listening, so new
              connections get ECONNREFUSED, and listens again on the
              same port when the rule is removed (filters, count and
              probability are not allowed then).  In that state only
              the control port answers control requests.

Control interface (for other processes): HTTP on the separate control
port (`control_endpoint`, always) and under /__fault__ on the proxy
port itself (never forwarded, never counted, never faulted):

    GET    /__fault__                  {"endpoint", "control", "upstream"}
    GET    /__fault__/stats            stats() as JSON
    POST   /__fault__/stats/reset      reset_stats()
    GET    /__fault__/rules            rules() as JSON
    POST   /__fault__/rules            add rules: a JSON object (or list)
                                       of add_rule arguments, e.g.
                                       {"action": "status", "status": 503,
                                        "method": "PUT", "count": 1};
                                       or the same as query parameters:
                                       ?action=reset&when=after&count=1
                                       -> {"ids": [N, ...]}; 400 on error
    DELETE /__fault__/rules            clear()
    DELETE /__fault__/rules/ID         remove_rule(ID) (404 if unknown)
    POST   /__fault__/clear            clear()
    GET    /__fault__/log              log() as JSON

e.g. from a shell or C test:
    curl -s -X POST "http://$CTL/__fault__/rules?action=status&status=500&method=PUT&count=2"
    curl -s -X POST "http://$CTL/__fault__/clear"

Counters (stats()): "seen", "forwarded", "faulted" (dicts by method),
"faults" (by action), "total" (sums of the three), "connections"
(client connections that carried at least one proxied request: a test
can check keep-alive with it), "upstream_errors" (502s sent because the
upstream could not be reached), "errors" and "last_error" (protocol
errors from clients).  A request is "seen" when its head has been read,
"forwarded" when it was written to the upstream and the answer read
(delay, reset after, truncate and corrupt are forwarded and faulted),
"faulted" when a rule fired on it.
"""

from __future__ import annotations

import argparse
import collections
import http
import http.client
import json
import random
import re
import select
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
from typing import Any

CONTROL_PREFIX = "/__fault__"
ACTIONS = ("status", "reset", "delay", "truncate", "corrupt", "blackhole", "down")
_PARAMS = {   # action -> {parameter: default}
    "status": {"status": 503, "code": None, "message": None, "body": None, "headers": None},
    "reset": {"when": "before"},
    "delay": {"ms": None, "when": "before"},
    "truncate": {"bytes": 0, "reset": False},
    "corrupt": {"offset": None},
    "blackhole": {},
    "down": {"refuse": False},
}
_S3_CODES = {400: "BadRequest", 403: "AccessDenied", 404: "NoSuchKey",
             409: "OperationAborted", 412: "PreconditionFailed", 429: "SlowDown",
             500: "InternalError", 501: "NotImplemented", 502: "BadGateway",
             503: "SlowDown", 504: "GatewayTimeout"}
MAX_HEAD = 64 * 1024
POLL = 0.05   # seconds: how often waiting loops look at their flags


class _ProtocolError(Exception):
    pass


class _UpstreamError(Exception):
    pass


# ---------------------------------------------------------------------------
# HTTP/1.1 framing on raw bytes

class _Reader:
    """Buffered reads from a socket that keep the exact bytes."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(256 * 1024)
        if not data:
            return False
        self.buf += data
        return True

    def read_head(self) -> bytes | None:
        """A message head up to and including the empty line; None on EOF
        before any byte.  Empty lines before it are dropped."""
        while True:
            while self.buf.startswith(b"\r\n"):
                del self.buf[:2]
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                head = bytes(self.buf[:i + 4])
                del self.buf[:i + 4]
                return head
            if len(self.buf) > MAX_HEAD:
                raise _ProtocolError("message head too long")
            if not self._fill():
                if self.buf.strip():
                    raise _ProtocolError("connection closed inside a message head")
                return None

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise _ProtocolError(f"connection closed after {len(self.buf)} of {n} body bytes")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                return self.read_exact(i + 2)
            if len(self.buf) > MAX_HEAD:
                raise _ProtocolError("line too long")
            if not self._fill():
                raise _ProtocolError("connection closed inside a chunked body")

    def read_to_eof(self) -> bytes:
        while self._fill():
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def read_chunked(self) -> tuple[bytes, list[tuple[int, int]]]:
        """A chunked body, raw (sizes, extensions, trailers included), and
        the [start, end) spans of the data bytes in it."""
        raw = bytearray()
        spans = []
        while True:
            line = self.read_line()
            raw += line
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _ProtocolError(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                while True:   # trailers, then the empty line
                    line = self.read_line()
                    raw += line
                    if line == b"\r\n":
                        return bytes(raw), spans
            spans.append((len(raw), len(raw) + size))
            raw += self.read_exact(size)
            crlf = self.read_exact(2)
            if crlf != b"\r\n":
                raise _ProtocolError("chunk not followed by CRLF")
            raw += crlf


class _Head:
    """A parsed request or status line and headers (names lower-cased)."""

    def __init__(self, raw: bytes):
        self.raw = raw
        lines = raw.decode("latin-1").split("\r\n")
        self.start = lines[0].split(" ", 2)
        if len(self.start) < 2:
            raise _ProtocolError(f"bad start line {lines[0][:80]!r}")
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise _ProtocolError(f"bad header line {line[:80]!r}")
            self.headers.append((name.strip().lower(), value.strip()))

    def get(self, name: str) -> str | None:
        found = [v for n, v in self.headers if n == name]
        return found[-1] if found else None

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for n, v in self.headers if n == name
                for t in v.split(",") if t.strip()}

    def content_length(self) -> int | None:
        v = self.get("content-length")
        if v is None:
            return None
        try:
            n = int(v)
        except ValueError:
            raise _ProtocolError(f"bad Content-Length {v!r}") from None
        if n < 0:
            raise _ProtocolError(f"bad Content-Length {v!r}")
        return n


def _read_body(reader: _Reader, head: _Head, eof_ok: bool) -> tuple[bytes, list, bool]:
    """The raw body framed by `head`: (raw, data spans, delimited by EOF)."""
    if "chunked" in head.tokens("transfer-encoding"):
        raw, spans = reader.read_chunked()
        return raw, spans, False
    n = head.content_length()
    if n is not None:
        return reader.read_exact(n), [(0, n)], False
    if eof_ok:
        raw = reader.read_to_eof()
        return raw, [(0, len(raw))], True
    return b"", [], False


def _raw_pos(spans: list[tuple[int, int]], k: int) -> int | None:
    """The position in the raw body of data byte `k`, or None if beyond."""
    for start, end in spans:
        if k < end - start:
            return start + k
        k -= end - start
    return None


def _rst(sock: socket.socket) -> None:
    """Close `sock` with a TCP RST."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _json_response(status: int, obj: Any, close: bool) -> bytes:
    body = (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()
    return (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n").encode() + body


# ---------------------------------------------------------------------------
# Rules

class Rule:
    """One fault rule (see the module docstring); built by add_rule."""

    def __init__(self, rule_id: int, action: str, method=None, key: str | None = None,
                 key_re: str | None = None, count: int | None = None,
                 probability: float | None = None, seed: int | None = None,
                 skip: int = 0, **params):
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
        unknown = set(params) - set(_PARAMS[action])
        if unknown:
            raise ValueError(f"{action}: unknown parameter(s) {sorted(unknown)}; "
                             f"allowed: {sorted(_PARAMS[action])}")
        self.id, self.action = rule_id, action
        if isinstance(method, str):
            method = [m for m in re.split(r"[|,\s]+", method) if m]
        self.methods = frozenset(m.upper() for m in method) if method else None
        self.key = key
        self.key_re = key_re
        self._key_re = re.compile(key_re) if key_re is not None else None
        if count is not None and int(count) < 1:
            raise ValueError("count must be >= 1 (or None)")
        self.count = None if count is None else int(count)
        if probability is not None and not 0.0 <= float(probability) <= 1.0:
            raise ValueError("probability must be in [0, 1]")
        self.probability = None if probability is None else float(probability)
        self.seed = seed
        self.rng = random.Random(seed)
        self.skip = int(skip)
        self.params = dict(_PARAMS[action], **params)
        p = self.params
        if action in ("reset", "delay") and p["when"] not in ("before", "after"):
            raise ValueError(f"{action}: when must be 'before' or 'after'")
        if action == "delay":
            if p["ms"] is None or float(p["ms"]) < 0:
                raise ValueError("delay: ms (>= 0) is required")
            p["ms"] = float(p["ms"])
        if action == "status":
            p["status"] = int(p["status"])
            if not 200 <= p["status"] <= 599:
                raise ValueError("status: status must be in 200..599")
        if action == "truncate":
            p["bytes"] = int(p["bytes"])
            if p["bytes"] < 0:
                raise ValueError("truncate: bytes must be >= 0")
        if action == "corrupt" and p["offset"] is not None:
            p["offset"] = int(p["offset"])
        if action == "down" and p["refuse"] and (
                self.methods or key or key_re is not None or count is not None
                or probability is not None or self.skip):
            raise ValueError("down with refuse=True takes no filters, count or probability")
        self.matched = 0    # requests that matched the filters
        self.fired = 0      # requests the rule was applied to
        self.released = threading.Event()   # set when removed (blackhole hold ends)

    def matches(self, method: str, target: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.key is not None and self.key not in target:
            return False
        if self._key_re is not None and not self._key_re.search(target):
            return False
        return True

    @property
    def spent(self) -> bool:
        return self.count is not None and self.fired >= self.count

    def describe(self) -> dict:
        return {"id": self.id, "action": self.action,
                "method": sorted(self.methods) if self.methods else None,
                "key": self.key, "key_re": self.key_re, "count": self.count,
                "probability": self.probability, "seed": self.seed, "skip": self.skip,
                **self.params, "matched": self.matched, "fired": self.fired,
                "active": not self.spent and not self.released.is_set()}


# ---------------------------------------------------------------------------
# The proxy

class _Conn:
    """One client connection and its upstream connection."""

    def __init__(self, csock: socket.socket):
        self.csock = csock
        self.reader = _Reader(csock)
        self.up: socket.socket | None = None
        self.up_reader: _Reader | None = None
        self.counted = False   # in stats()["connections"]

    def close_upstream(self) -> None:
        if self.up is not None:
            try:
                self.up.close()
            except OSError:
                pass
        self.up = self.up_reader = None


class FaultProxy:
    """The proxy: listens on `host`:`port` (0: a free port) and forwards
    to `upstream` ("host:port", plain HTTP).  `control_port` (0: a free
    one; None: none) is a second listener that serves only /__fault__.
    `upstream_timeout` (seconds) bounds each upstream connect/read."""

    def __init__(self, upstream: str, port: int = 0, host: str = "127.0.0.1",
                 control_port: int | None = 0, upstream_timeout: float = 120.0):
        uhost, uport = upstream.rsplit(":", 1)
        self.upstream = upstream
        self._upstream_addr = (uhost, int(uport))
        self.host, self._port, self._control_port = host, port, control_port
        self.upstream_timeout = upstream_timeout
        self.endpoint: str = ""
        self.control_endpoint: str | None = None
        self._lock = threading.Lock()
        self._rules: list[Rule] = []        # active, in order
        self._holding: list[Rule] = []      # not yet released (incl. spent)
        self._next_id = 1
        self._stopping = threading.Event()
        self._started = False
        self._listen_cv = threading.Condition(self._lock)
        self._listening = False
        self._conns: set[_Conn] = set()
        self._threads: set[threading.Thread] = set()
        self._log: collections.deque = collections.deque(maxlen=10000)
        self._accept_thread: threading.Thread | None = None
        self.reset_stats()

    # -- life cycle ---------------------------------------------------------
    def _bind(self, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((self.host, port))
            s.listen(128)
        except OSError:
            s.close()
            raise
        s.setblocking(False)
        return s

    def start(self) -> "FaultProxy":
        """Bind the listeners and start serving; returns self."""
        if self._started:
            return self
        self._listener = self._bind(self._port)
        self._port = self._listener.getsockname()[1]
        self.endpoint = f"{self.host}:{self._port}"
        self._control_sock = None
        if self._control_port is not None:
            self._control_sock = self._bind(self._control_port)
            self.control_endpoint = f"{self.host}:{self._control_sock.getsockname()[1]}"
        self._listening = True
        self._started = True
        self._accept_thread = threading.Thread(target=self._accept_loop,
                                               name="faultproxy-accept", daemon=True)
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: release held connections, close every connection
        and listener, and wait (briefly) for the threads."""
        if not self._started or self._stopping.is_set():
            return
        self._stopping.set()
        with self._lock:
            for r in self._holding:
                r.released.set()
            conns = list(self._conns)
        for c in conns:
            for s in (c.csock, c.up):
                if s is not None:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        if self._accept_thread:
            self._accept_thread.join(5)
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(5)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    # -- rules --------------------------------------------------------------
    def add_rule(self, action: str, *, method: str | list[str] | None = None,
                 key: str | None = None, key_re: str | None = None,
                 count: int | None = None, probability: float | None = None,
                 seed: int | None = None, skip: int = 0, **params) -> int:
        """Add a rule after the existing ones; returns its id.  Raises
        ValueError on an unknown action or parameter."""
        with self._lock:
            rule = Rule(self._next_id, action, method=method, key=key, key_re=key_re,
                        count=count, probability=probability, seed=seed, skip=skip,
                        **params)
            self._next_id += 1
            self._rules.append(rule)
            self._holding.append(rule)
        self._sync_listening()
        return rule.id

    def remove_rule(self, rule_id: int) -> bool:
        """Remove a rule (spent or not) and release what it holds; False
        if there is no such rule left."""
        with self._lock:
            found = [r for r in self._holding if r.id == rule_id]
            for r in found:
                r.released.set()
                self._holding.remove(r)
                if r in self._rules:
                    self._rules.remove(r)
        self._sync_listening()
        return bool(found)

    def clear(self) -> None:
        """Remove every rule: blackholed connections are closed and, after
        down(refuse=True), the proxy listens again before this returns."""
        with self._lock:
            for r in self._holding:
                r.released.set()
            self._rules.clear()
            self._holding.clear()
        self._sync_listening()

    def rules(self) -> list[dict]:
        """Every rule not yet removed (spent ones have "active": false)."""
        with self._lock:
            return [r.describe() for r in self._holding]

    def _pick(self, method: str, target: str) -> Rule | None:
        """The rule to apply to this request (counts it); with the lock."""
        for r in list(self._rules):
            if not r.matches(method, target):
                continue
            r.matched += 1
            if r.matched <= r.skip:
                continue
            if r.probability is not None and r.rng.random() >= r.probability:
                continue
            r.fired += 1
            if r.spent:
                self._rules.remove(r)
            return r
        return None

    def _want_listening(self) -> bool:
        return not any(r.action == "down" and r.params["refuse"] for r in self._rules)

    def _sync_listening(self, timeout: float = 10.0) -> None:
        """Wait until the accept loop has (un)bound the proxy port."""
        if not self._started:
            return
        with self._listen_cv:
            ok = self._listen_cv.wait_for(
                lambda: self._listening == self._want_listening() or self._stopping.is_set(),
                timeout)
        if not ok:
            raise RuntimeError(f"faultproxy: could not {'re' if self._want_listening() else 'un'}"
                               f"bind {self.endpoint}: {self._stats.get('last_error')}")

    # -- counters -----------------------------------------------------------
    def reset_stats(self) -> None:
        """Zero every counter and the request log."""
        with self._lock:
            self._stats = {"seen": collections.Counter(), "forwarded": collections.Counter(),
                           "faulted": collections.Counter(), "faults": collections.Counter(),
                           "connections": 0, "upstream_errors": 0, "errors": 0,
                           "last_error": None}
            self._log.clear()

    def stats(self) -> dict:
        """A snapshot of the counters (see the module docstring)."""
        with self._lock:
            s = {k: (dict(v) if isinstance(v, collections.Counter) else v)
                 for k, v in self._stats.items()}
        s["total"] = {k: sum(s[k].values()) for k in ("seen", "forwarded", "faulted")}
        return s

    def log(self) -> list[dict]:
        """The last 10000 proxied requests, oldest first: method, target
        (decoded), fault (action or None), rule (id or None), status (what
        the client got, None for reset/blackhole/down), forwarded."""
        with self._lock:
            return list(self._log)

    def _error(self, msg: str) -> None:
        with self._lock:
            self._stats["errors"] += 1
            self._stats["last_error"] = msg

    # -- accepting ----------------------------------------------------------
    def _accept_loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, False)
        if self._control_sock is not None:
            sel.register(self._control_sock, selectors.EVENT_READ, True)
        try:
            while not self._stopping.is_set():
                self._update_listener(sel)
                for key, _ in sel.select(POLL):
                    try:
                        sock, _ = key.fileobj.accept()
                    except OSError:
                        continue
                    self._spawn(sock, key.data)
        finally:
            for s in (self._listener, self._control_sock):
                if s is not None:
                    s.close()
            sel.close()
            with self._listen_cv:
                self._listening = False
                self._listen_cv.notify_all()

    def _update_listener(self, sel: selectors.BaseSelector) -> None:
        with self._lock:
            want = self._want_listening()
            have = self._listening
        if want == have:
            return
        if want:
            try:
                self._listener = self._bind(self._port)
            except OSError as e:
                self._error(f"rebind {self.endpoint}: {e}")
                return   # retried at the next loop
            sel.register(self._listener, selectors.EVENT_READ, False)
        else:
            sel.unregister(self._listener)
            self._listener.close()
            self._listener = None
        with self._listen_cv:
            self._listening = want
            self._listen_cv.notify_all()

    def _spawn(self, sock: socket.socket, control_only: bool) -> None:
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock)
        t = threading.Thread(target=self._serve, args=(conn, control_only),
                             name="faultproxy-conn", daemon=True)
        with self._lock:
            self._conns.add(conn)
            self._threads.add(t)
        t.start()

    def _serve(self, conn: _Conn, control_only: bool) -> None:
        closed = False
        try:
            while not self._stopping.is_set():
                raw = conn.reader.read_head()
                if raw is None:
                    break
                head = _Head(raw)
                if head.start[1].startswith(CONTROL_PREFIX) or control_only:
                    keep = self._control_request(conn, head)
                else:
                    keep, closed = self._proxy_request(conn, head)
                if not keep:
                    break
        except _ProtocolError as e:
            self._error(f"client: {e}")
        except OSError:
            pass   # the client went away (or stop())
        except Exception as e:   # a bug: keep serving others, say what
            self._error(f"{type(e).__name__}: {e}")
        finally:
            conn.close_upstream()
            if not closed:
                try:
                    conn.csock.close()
                except OSError:
                    pass
            with self._lock:
                self._conns.discard(conn)
                self._threads.discard(threading.current_thread())

    @staticmethod
    def _persistent(head: _Head) -> bool:
        conn = head.tokens("connection")
        if len(head.start) == 3 and head.start[2].strip().upper() == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn

    # -- proxying -----------------------------------------------------------
    def _proxy_request(self, conn: _Conn, head: _Head) -> tuple[bool, bool]:
        """Handle one request; returns (keep the connection, already closed).
        Counters and the log are updated before the client sees the outcome
        (answer, reset or close), so a test can read them right after."""
        method = head.start[0].upper()
        target = urllib.parse.unquote(head.start[1])
        keep = self._persistent(head)
        with self._lock:
            if not conn.counted:
                conn.counted = True
                self._stats["connections"] += 1
            self._stats["seen"][method] += 1
            rule = self._pick(method, target)
            if rule is not None:
                self._stats["faulted"][method] += 1
                self._stats["faults"][rule.action] += 1
        action = rule.action if rule else None
        p = rule.params if rule else {}
        entry = {"method": method, "target": target, "fault": action,
                 "rule": rule.id if rule else None, "status": None, "forwarded": False}
        logged = False

        def done(status: int | None = None, forwarded: bool = False) -> None:
            nonlocal logged
            if logged:
                return
            logged = True
            entry.update(status=status, forwarded=forwarded)
            with self._lock:
                if forwarded:
                    self._stats["forwarded"][method] += 1
                self._log.append(entry)

        try:
            expect = "100-continue" in head.tokens("expect")
            if action == "down" or (action == "reset" and p["when"] == "before" and expect):
                done()
                _rst(conn.csock)
                return False, True
            if action == "blackhole":
                done()
                self._hold(conn.csock, rule)
                return False, False
            if action == "status":
                if expect:   # a final answer instead of 100: the body never comes
                    keep = False
                else:
                    _read_body(conn.reader, head, eof_ok=False)
                done(p["status"])
                conn.csock.sendall(self._status_response(p, method, target, not keep))
                return keep, False
            if expect:
                conn.csock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            body, _, _ = _read_body(conn.reader, head, eof_ok=False)
            if action == "reset" and p["when"] == "before":
                done()
                _rst(conn.csock)
                return False, True
            if action == "delay" and p["when"] == "before":
                if self._stopping.wait(p["ms"] / 1000):
                    return False, False
            try:
                rhead, rbody, spans, up_close = self._forward(conn, head.raw + body, method)
            except _UpstreamError as e:
                with self._lock:
                    self._stats["upstream_errors"] += 1
                    self._stats["last_error"] = f"upstream: {e}"
                msg = f"faultproxy: upstream {self.upstream}: {e}\n".encode()
                done(502)
                conn.csock.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\n"
                                   b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(msg)
                                   + msg)
                return False, False
            status = int(rhead.start[1])
            keep = keep and not up_close and "close" not in rhead.tokens("connection")
            if action == "delay" and p["when"] == "after":
                self._stopping.wait(p["ms"] / 1000)
            if action == "reset":   # after
                done(None, True)
                _rst(conn.csock)
                return False, True
            done(status, True)
            if action == "truncate":
                pos = _raw_pos(spans, p["bytes"])
                conn.csock.sendall(rhead.raw + (rbody if pos is None else rbody[:pos]))
                if p["reset"]:
                    _rst(conn.csock)
                    return False, True
                return False, False
            if action == "corrupt":
                n = sum(e - s for s, e in spans)
                off = p["offset"] if p["offset"] is not None else n // 2
                if off < 0:
                    off += n
                pos = _raw_pos(spans, off) if off >= 0 else None
                if pos is not None:
                    b = bytearray(rbody)
                    b[pos] ^= 0xFF
                    rbody = bytes(b)
            conn.csock.sendall(rhead.raw + rbody)
            return keep, False
        finally:
            done(entry["status"], entry["forwarded"])

    def _forward(self, conn: _Conn, data: bytes, method: str):
        """Send one request upstream and read the final answer: (head, raw
        body, data spans, upstream connection closed).  A reused upstream
        connection that turns out dead before answering is replaced once."""
        for attempt in (0, 1):
            reused = conn.up is not None
            if reused and select.select([conn.up], [], [], 0)[0]:
                conn.close_upstream()   # closed (or junk) while idle
                reused = False
            try:
                if conn.up is None:
                    conn.up = socket.create_connection(self._upstream_addr,
                                                       timeout=self.upstream_timeout)
                    conn.up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conn.up_reader = _Reader(conn.up)
                conn.up.sendall(data)
                raw = conn.up_reader.read_head()
                if raw is None:
                    raise _ProtocolError("upstream closed the connection without answering")
                while True:
                    rhead = _Head(raw)
                    status = int(rhead.start[1])
                    if not 100 <= status < 200:
                        break
                    raw = conn.up_reader.read_head()   # interim (100 Continue): dropped
                    if raw is None:
                        raise _ProtocolError("upstream closed after an interim response")
                break
            except (OSError, _ProtocolError, ValueError) as e:
                conn.close_upstream()
                if reused and attempt == 0:
                    continue
                raise _UpstreamError(str(e)) from e
        try:
            if method == "HEAD" or status in (204, 304):
                rbody, spans, eof = b"", [], False
            else:
                rbody, spans, eof = _read_body(conn.up_reader, rhead, eof_ok=True)
        except (OSError, _ProtocolError) as e:
            conn.close_upstream()
            raise _UpstreamError(f"reading the response body: {e}") from e
        up_close = eof or "close" in rhead.tokens("connection")
        if up_close:
            conn.close_upstream()
        return rhead, rbody, spans, up_close

    def _hold(self, sock: socket.socket, rule: Rule) -> None:
        """Blackhole: read and drop until released, client EOF or stop."""
        while not rule.released.is_set() and not self._stopping.is_set():
            if select.select([sock], [], [], POLL)[0]:
                try:
                    if not sock.recv(65536):
                        return
                except OSError:
                    return

    def _status_response(self, p: dict, method: str, target: str, close: bool) -> bytes:
        status = p["status"]
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Fault"
        with self._lock:
            n = sum(self._stats["faults"].values())
        if p["body"] is not None:
            body = p["body"].encode() if isinstance(p["body"], str) else bytes(p["body"])
            ctype = "application/octet-stream"
        else:
            code = p["code"] or _S3_CODES.get(status, "InternalError" if status >= 500 else "Fault")
            message = p["message"] or f"faultproxy: injected {status} {phrase}"
            esc = lambda s: (s.replace("&", "&amp;").replace("<", "&lt;")  # noqa: E731
                             .replace(">", "&gt;"))
            body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{esc(code)}</Code>'
                    f"<Message>{esc(message)}</Message><Resource>{esc(target)}</Resource>"
                    f"<RequestId>faultproxy-{n}</RequestId></Error>").encode()
            ctype = "application/xml"
        headers = {"Content-Type": ctype, "Content-Length": str(len(body)),
                   "x-amz-request-id": f"faultproxy-{n}",
                   "Connection": "close" if close else "keep-alive"}
        headers.update(p["headers"] or {})
        out = f"HTTP/1.1 {status} {phrase}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        return out.encode("latin-1") + (b"" if method == "HEAD" else body)

    # -- control ------------------------------------------------------------
    def _control_request(self, conn: _Conn, head: _Head) -> bool:
        keep = self._persistent(head)
        body, _, _ = _read_body(conn.reader, head, eof_ok=False)
        method = head.start[0].upper()
        url = urllib.parse.urlsplit(head.start[1])
        path = url.path.rstrip("/")
        try:
            status, obj = self._control(method, path, url.query, body)
        except (ValueError, TypeError, re.error) as e:
            status, obj = 400, {"error": str(e)}
        conn.csock.sendall(_json_response(status, obj, not keep))
        return keep

    def _control(self, method: str, path: str, query: str, body: bytes):
        if not path.startswith(CONTROL_PREFIX):
            return 404, {"error": f"only {CONTROL_PREFIX}/... on the control port"}
        sub = path[len(CONTROL_PREFIX):]
        if sub == "" and method == "GET":
            return 200, {"endpoint": self.endpoint, "control": self.control_endpoint,
                         "upstream": self.upstream}
        if sub == "/stats" and method == "GET":
            return 200, self.stats()
        if sub == "/stats/reset" and method == "POST":
            self.reset_stats()
            return 200, {"ok": True}
        if sub == "/log" and method == "GET":
            return 200, self.log()
        if sub == "/rules" and method == "GET":
            return 200, self.rules()
        if sub == "/rules" and method == "POST":
            specs = json.loads(body) if body.strip() else {}
            if isinstance(specs, dict):
                specs = [specs]
            q = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
            if q:
                specs = [dict(q, **s) for s in specs] if specs != [{}] else [q]
            ids = [self.add_rule(**_coerce(s)) for s in specs]
            return 200, {"ids": ids}
        if (sub == "/rules" and method == "DELETE") or (sub == "/clear" and method == "POST"):
            self.clear()
            return 200, {"ok": True}
        m = re.fullmatch(r"/rules/(\d+)", sub)
        if m and method == "DELETE":
            if self.remove_rule(int(m.group(1))):
                return 200, {"ok": True}
            return 404, {"error": f"no rule {m.group(1)}"}
        return 404, {"error": f"no control route {method} {path}"}


_INTS = ("count", "seed", "skip", "status", "bytes", "offset")
_FLOATS = ("probability", "ms")
_BOOLS = ("refuse", "reset")


def _coerce(spec: dict) -> dict:
    """Rule arguments from JSON or query strings, with their types."""
    out = dict(spec)
    if "action" not in out:
        raise ValueError("a rule needs an action")
    for k, v in spec.items():
        if not isinstance(v, str) or k in ("action", "method", "key", "key_re", "when",
                                            "code", "message", "body"):
            continue
        if k in _INTS:
            out[k] = None if v in ("", "none", "null") else int(v)
        elif k in _FLOATS:
            out[k] = None if v in ("", "none", "null") else float(v)
        elif k in _BOOLS:
            out[k] = v.lower() in ("1", "true", "yes", "on")
    if isinstance(out.get("headers"), str):
        out["headers"] = json.loads(out["headers"])
    return out


class FaultControl:
    """Drive a FaultProxy in another process through its control port
    (or its proxy port: /__fault__ is answered there too).  Same method
    names as FaultProxy; errors raise RuntimeError."""

    def __init__(self, endpoint: str, timeout: float = 10.0):
        self.endpoint, self.timeout = endpoint, timeout

    def _call(self, method: str, path: str, obj: Any = None) -> Any:
        host, port = self.endpoint.rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
        try:
            body = None if obj is None else json.dumps(obj).encode()
            c.request(method, CONTROL_PREFIX + path, body=body,
                      headers={"Content-Type": "application/json"} if body else {})
            r = c.getresponse()
            data = json.loads(r.read() or b"null")
        finally:
            c.close()
        if r.status != 200:
            raise RuntimeError(f"faultproxy control {method} {path}: {r.status} {data}")
        return data

    def add_rule(self, action: str, **kw) -> int:
        return self._call("POST", "/rules", dict(kw, action=action))["ids"][0]

    def remove_rule(self, rule_id: int) -> bool:
        try:
            self._call("DELETE", f"/rules/{rule_id}")
            return True
        except RuntimeError:
            return False

    def clear(self) -> None:
        self._call("POST", "/clear")

    def rules(self) -> list[dict]:
        return self._call("GET", "/rules")

    def stats(self) -> dict:
        return self._call("GET", "/stats")

    def reset_stats(self) -> None:
        self._call("POST", "/stats/reset")

    def log(self) -> list[dict]:
        return self._call("GET", "/log")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Fault-injecting HTTP proxy (see the module docstring). Prints the "
                    "proxy endpoint, then 'control HOST:PORT', and serves until killed.")
    ap.add_argument("--upstream", required=True, help="HOST:PORT of the S3 server")
    ap.add_argument("--port", type=int, default=0, help="proxy port (default: a free one)")
    ap.add_argument("--control-port", type=int, default=0,
                    help="control port (default: a free one)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--rule", action="append", default=[], metavar="JSON",
                    help='an initial rule, e.g. \'{"action": "delay", "ms": 100}\'')
    args = ap.parse_args(argv)
    proxy = FaultProxy(args.upstream, port=args.port, host=args.host,
                       control_port=args.control_port)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: done.set())
    proxy.start()
    try:
        for spec in args.rule:
            proxy.add_rule(**_coerce(json.loads(spec)))
        print(proxy.endpoint)
        print(f"control {proxy.control_endpoint}", flush=True)
        while not done.wait(1.0):
            pass
    finally:
        proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

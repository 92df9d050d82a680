"""S3 servers for Sprite's tests: a one-node Ceph RADOS Gateway and s3rver.

Both run on free loopback ports chosen at start time, with every file under
one state directory, so several sets can run side by side.  What a started
set offers is described by environment variables (the contract shared with
the C and Python tests):

    SPRITE_TEST_RGW_ENDPOINT      host:port of radosgw (plain HTTP)
    SPRITE_TEST_RGW_ACCESS_KEY
    SPRITE_TEST_RGW_SECRET_KEY
    SPRITE_TEST_RGW_BUCKET        an existing, initially empty bucket
    SPRITE_TEST_S3RVER_*          the same four for s3rver
    SPRITE_TEST_SERVERS_DIR       the state directory

State directory layout:

    servers.json    the servers (endpoint, keys, bucket) and the processes
                    (pid, command line) to stop; rewritten after each spawn
    env.sh          the `export` lines above
    rgw/            ceph.conf, mon/osd/rgw data, rgw/log/*.log
    s3rver/         data/ and s3rver.log

Processes are only ever stopped by the PIDs recorded here, and only when
/proc/PID/cmdline still matches what we started.

S3 access for tests goes through S3Client (SigV4 implemented with hmac and
hashlib, plain http.client), which also creates uniquely named buckets.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import hashlib
import hmac
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
S3RVER_BIN = TESTS_DIR / "node_modules" / ".bin" / "s3rver"
BUCKET = "sprite-test"
REGION = "us-east-1"
KINDS = ("RGW", "S3RVER")
START_TIMEOUT = 120.0   # seconds, per server
STOP_TIMEOUT = 15.0     # seconds before SIGKILL


class ServerError(RuntimeError):
    """A server failed to start or to answer; the message has its log tail."""


@dataclasses.dataclass(frozen=True)
class Server:
    """How to reach one S3 server: `endpoint` is "host:port" (plain HTTP)."""

    kind: str   # "RGW" or "S3RVER"
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str

    def env(self) -> dict[str, str]:
        """The SPRITE_TEST_<KIND>_* variables describing this server."""
        p = f"SPRITE_TEST_{self.kind}_"
        return {p + "ENDPOINT": self.endpoint, p + "ACCESS_KEY": self.access_key,
                p + "SECRET_KEY": self.secret_key, p + "BUCKET": self.bucket}

    @classmethod
    def from_env(cls, kind: str, environ=None) -> "Server | None":
        """The server of `kind` described by the environment, or None when
        any of its four variables is missing."""
        environ = os.environ if environ is None else environ
        p = f"SPRITE_TEST_{kind}_"
        try:
            return cls(kind, environ[p + "ENDPOINT"], environ[p + "ACCESS_KEY"],
                       environ[p + "SECRET_KEY"], environ[p + "BUCKET"])
        except KeyError:
            return None

    def client(self) -> "S3Client":
        return S3Client(self.endpoint, self.access_key, self.secret_key)


def servers_from_env(environ=None) -> dict[str, Server] | None:
    """Both servers described by the environment, or None if one is missing."""
    found = {k: Server.from_env(k, environ) for k in KINDS}
    return None if None in found.values() else found


def answers(endpoint: str, timeout: float = 2.0) -> bool:
    """True if an HTTP server at `endpoint` returns any response to GET /."""
    host, port = endpoint.rsplit(":", 1)
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        conn.request("GET", "/")
        conn.getresponse().read()
        conn.close()
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------
# S3 client (SigV4, path-style, plain HTTP)

def _quote(s: str, safe: str = "") -> str:
    return urllib.parse.quote(s, safe="-_.~" + safe)


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


@dataclasses.dataclass
class Response:
    status: int
    headers: dict[str, str]   # lower-case names
    body: bytes


class S3Client:
    """A minimal S3 client: signed path-style requests over plain HTTP.

    Every method sends exactly one request (list_objects and empty_bucket
    may send several) and returns the server's answer; only the helpers
    named after an operation raise S3Error on an unexpected status.
    """

    def __init__(self, endpoint: str, access_key: str, secret_key: str,
                 region: str = REGION, timeout: float = 60.0):
        self.endpoint, self.access_key, self.secret_key = endpoint, access_key, secret_key
        self.region, self.timeout = region, timeout

    def request(self, method: str, bucket: str = "", key: str = "",
                body: bytes = b"", query: dict[str, str] | None = None,
                headers: dict[str, str] | None = None,
                unsigned_payload: bool = False,
                secret_key: str | None = None) -> Response:
        """Send one SigV4-signed request; `secret_key` overrides the
        client's (to test that a server rejects a wrong signature)."""
        path = "/" + bucket + ("/" + key if key else "")
        path = _quote(path, "/")
        query = query or {}
        qs = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))
        now = datetime.datetime.now(datetime.timezone.utc)
        amzdate = now.strftime("%Y%m%dT%H%M%SZ")
        payload_hash = ("UNSIGNED-PAYLOAD" if unsigned_payload
                        else hashlib.sha256(body).hexdigest())
        hdrs = {k.lower(): " ".join(str(v).split()) for k, v in (headers or {}).items()}
        hdrs.update({"host": self.endpoint, "x-amz-date": amzdate,
                     "x-amz-content-sha256": payload_hash})
        if body or method in ("PUT", "POST"):
            hdrs["content-length"] = str(len(body))
        names = sorted(hdrs)
        canonical = "\n".join([method, path, qs,
                               "".join(f"{n}:{hdrs[n]}\n" for n in names),
                               ";".join(names), payload_hash])
        scope = f"{amzdate[:8]}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amzdate, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        k = ("AWS4" + (secret_key or self.secret_key)).encode()
        for part in (amzdate[:8], self.region, "s3", "aws4_request"):
            k = _hmac(k, part)
        signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        hdrs["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}")
        host, port = self.endpoint.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
        try:
            conn.request(method, path + ("?" + qs if qs else ""),
                         body=body if (body or method in ("PUT", "POST")) else None,
                         headers=hdrs)
            r = conn.getresponse()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def _check(self, r: Response, what: str, ok=(200, 204)) -> Response:
        if r.status not in ok:
            raise S3Error(f"{what}: HTTP {r.status}: {r.body[:500]!r}", r)
        return r

    # Objects ----------------------------------------------------------------
    def put_object(self, bucket: str, key: str, data: bytes, **headers) -> Response:
        """PUT an object; raises S3Error unless the server answers 200."""
        return self._check(self.request("PUT", bucket, key, data, headers=headers),
                           f"PUT {bucket}/{key}")

    def get_object(self, bucket: str, key: str, range_: tuple[int, int] | None = None) -> bytes:
        """The object's bytes ([start, end] inclusive when `range_`);
        raises S3Error (status 404 when it does not exist)."""
        h = {"Range": f"bytes={range_[0]}-{range_[1]}"} if range_ else {}
        return self._check(self.request("GET", bucket, key, headers=h),
                           f"GET {bucket}/{key}", (200, 206)).body

    def head_object(self, bucket: str, key: str) -> dict[str, str] | None:
        """The object's headers, or None if it does not exist."""
        r = self.request("HEAD", bucket, key)
        if r.status == 404:
            return None
        return self._check(r, f"HEAD {bucket}/{key}").headers

    def delete_object(self, bucket: str, key: str) -> None:
        """Delete an object (succeeds if it does not exist)."""
        self._check(self.request("DELETE", bucket, key), f"DELETE {bucket}/{key}")

    def list_objects(self, bucket: str, prefix: str = "", page_size: int = 1000) -> list[dict]:
        """Every object under `prefix` (ListObjectsV2, following continuation
        tokens), as dicts with key, size, etag, sorted by key."""
        out, token = [], None
        while True:
            q = {"list-type": "2", "prefix": prefix, "max-keys": str(page_size)}
            if token:
                q["continuation-token"] = token
            r = self._check(self.request("GET", bucket, query=q), f"LIST {bucket}")
            root = ET.fromstring(r.body)
            ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            for c in root.iter(ns + "Contents"):
                out.append({"key": c.findtext(ns + "Key"),
                            "size": int(c.findtext(ns + "Size")),
                            "etag": c.findtext(ns + "ETag")})
            if root.findtext(ns + "IsTruncated") != "true":
                return sorted(out, key=lambda o: o["key"])
            token = root.findtext(ns + "NextContinuationToken")

    # Buckets ----------------------------------------------------------------
    def create_bucket(self, bucket: str) -> None:
        """Create `bucket`; raises S3Error if it cannot (e.g. exists)."""
        self._check(self.request("PUT", bucket), f"create bucket {bucket}")

    def new_bucket(self, prefix: str = "t") -> str:
        """Create a bucket with a fresh unique name starting with `prefix`
        (lower-case letters, digits, '-') and return the name."""
        name = f"{prefix}-{time.strftime('%H%M%S')}-{secrets.token_hex(6)}"[:63]
        self.create_bucket(name)
        return name

    def empty_bucket(self, bucket: str, prefix: str = "") -> int:
        """Delete every object under `prefix`; returns how many."""
        objs = self.list_objects(bucket, prefix)
        for o in objs:
            self.delete_object(bucket, o["key"])
        return len(objs)

    def delete_bucket(self, bucket: str) -> None:
        """Delete every object in `bucket`, then the bucket."""
        self.empty_bucket(bucket)
        self._check(self.request("DELETE", bucket), f"delete bucket {bucket}")


class S3Error(RuntimeError):
    """An S3 request got an unexpected status; `.response` has the answer."""

    def __init__(self, msg: str, response: Response):
        super().__init__(msg)
        self.response = response


# ---------------------------------------------------------------------------
# Process bookkeeping

def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as e:
        return f"  ({path}: {e})"
    return "\n".join(f"  | {t}" for t in text)


def _start_time(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks since boot), or None if
    there is no such process or it is a zombie.  (pid, start time) names a
    process for good: a PID reused later has a later start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else int(fields[19])


def _alive(proc: dict) -> bool:
    start_time = _start_time(proc["pid"])
    return start_time is not None and start_time == proc["start_time"]


class _State:
    """servers.json in a state directory; saved after every change so that
    `stop` finds every process even if `start` fails half way."""

    def __init__(self, root: Path):
        self.root = root
        self.file = root / "servers.json"
        self.data = {"servers": {}, "processes": []}
        self.lock = threading.Lock()   # the servers start in parallel threads
        if self.file.exists():
            self.data = json.loads(self.file.read_text())

    def save(self) -> None:
        with self.lock:
            tmp = self.file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=2) + "\n")
            os.replace(tmp, self.file)

    def spawn(self, name: str, argv: list[str], log: Path, **kw) -> subprocess.Popen:
        """Start a daemon in its own session (it outlives this process),
        stdout+stderr to `log`, and record its PID."""
        with open(log, "ab") as out:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True, **kw)
        with self.lock:
            self.data["processes"].append({"name": name, "pid": p.pid,
                                           "start_time": _start_time(p.pid),
                                           "argv": argv, "log": str(log)})
        self.save()
        return p


def _stop_process(proc: dict, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the recorded process if it still runs and wait for it to
    exit; SIGKILL it after `timeout` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if not _alive(proc):
            break
        try:
            os.kill(proc["pid"], sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while _alive(proc) and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        if _alive(proc):
            raise ServerError(f"pid {proc['pid']} ({proc['name']}) survives SIGKILL")
    try:   # reap it if it is our own child (with-servers, tests)
        os.waitpid(proc["pid"], os.WNOHANG)
    except ChildProcessError:
        pass


def _wait_answers(endpoint: str, proc: subprocess.Popen, what: str,
                  logs: list[Path], timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not answers(endpoint, timeout=1.0):
        if proc.poll() is not None or time.monotonic() > deadline:
            why = (f"exited with status {proc.returncode}" if proc.poll() is not None
                   else f"did not answer within {timeout:.0f} s")
            raise ServerError(f"{what} on {endpoint} {why}\n" +
                              "\n".join(f"{p}:\n{_tail(p)}" for p in logs))
        time.sleep(0.2)


def _run(argv: list[str], log: Path, timeout: float = 60.0) -> str:
    """Run a setup command; its output goes to `log` and is returned."""
    t0 = time.monotonic()
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise ServerError(f"timed out after {timeout} s: {' '.join(argv)}") from e
    with open(log, "a") as f:
        f.write(f"$ {' '.join(argv)}  # {time.monotonic() - t0:.2f} s\n{r.stdout}{r.stderr}")
    if r.returncode != 0:
        raise ServerError(f"failed ({r.returncode}): {' '.join(argv)}\n{r.stdout}{r.stderr}")
    return r.stdout


# ---------------------------------------------------------------------------
# Ceph RADOS Gateway (see shared/reference/ceph-rgw-recipe.md)

_CEPH_CONF = """\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
public network = 127.0.0.0/8
ms bind ipv6 = false
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
auth supported = none
run dir = {d}/run
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
log file = {d}/log/$name.log
keyring = {d}/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail warn = 1
mon data avail crit = 0
osd objectstore = memstore
[mon]
# rgw creates its pools one osdmap epoch at a time: 1 s each by default
paxos propose interval = 0.1
mon data = {d}/mon.$id
[osd]
osd data = {d}/osd.$id
memstore device bytes = {memstore_bytes}
[client.rgw.a]
# required with auth none, else rgw loops on auth errors for minutes
ms mon client mode = crc
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {d}/rgw
rgw dns name = localhost
# reclaim deleted objects' tails within a minute, not hours: the OSD is
# a memstore and long runs would fill it
rgw gc obj min wait = 30
rgw gc processor period = 30
"""


def start_rgw(root: Path, state: _State, memstore_bytes: int = 4 << 30) -> Server:
    """Start mon + memstore OSD + radosgw under `root`/rgw on free ports,
    create a user and the bucket `sprite-test`; returns once a signed
    request succeeds.  Raises ServerError with log tails on failure."""
    d = root / "rgw"
    for sub in ("run", "log", "mon.a", "osd.0", "rgw"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    log = d / "log" / "setup.log"
    conf = d / "ceph.conf"
    fsid = str(uuid.uuid4())
    mon_port, rgw_port = free_port(), free_port()
    conf.write_text(_CEPH_CONF.format(fsid=fsid, mon_port=mon_port, rgw_port=rgw_port,
                                      d=d, memstore_bytes=memstore_bytes))
    c = ["-c", str(conf)]
    _run(["ceph-authtool", "--create-keyring", str(d / "keyring"), "--gen-key",
          "-n", "mon.", "--cap", "mon", "allow *"], log)
    _run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a",
          f"[v2:127.0.0.1:{mon_port}]", str(d / "monmap")], log)
    _run(["ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(d / "monmap"),
          "--keyring", str(d / "keyring")], log)
    mon = state.spawn("ceph-mon", ["ceph-mon", *c, "-f", "-i", "a"], d / "log" / "mon.out")
    osd_uuid = str(uuid.uuid4())
    try:
        osd_id = _run(["ceph", *c, "--connect-timeout", "30", "osd", "new", osd_uuid],
                      log).strip()
    except ServerError as e:
        raise ServerError(f"{e}\n{d}/log/mon.a.log:\n{_tail(d / 'log' / 'mon.a.log')}")
    _run(["ceph-osd", *c, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid], log)
    state.spawn("ceph-osd", ["ceph-osd", *c, "-f", "-i", osd_id], d / "log" / "osd.out")
    # radosgw waits for the OSD by itself (it needs it to create its pools).
    rgw = state.spawn("radosgw", ["radosgw", *c, "-f", "-n", "client.rgw.a"],
                      d / "log" / "rgw.out")
    endpoint = f"127.0.0.1:{rgw_port}"
    _wait_answers(endpoint, rgw, "radosgw",
                  [d / "log" / n for n in ("client.rgw.a.log", "rgw.out",
                                           f"osd.{osd_id}.log", "mon.a.log")])
    if mon.poll() is not None:
        raise ServerError(f"ceph-mon exited\n{_tail(d / 'log' / 'mon.a.log')}")
    alnum = string.ascii_uppercase + string.digits
    access = "SPRITE" + "".join(secrets.choice(alnum) for _ in range(14))
    secret = secrets.token_urlsafe(30)
    _run(["radosgw-admin", *c, "user", "create", "--uid=sprite-test",
          "--display-name=sprite-test", f"--access-key={access}",
          f"--secret-key={secret}"], log)
    server = Server("RGW", endpoint, access, secret, BUCKET)
    server.client().create_bucket(BUCKET)
    return server


# ---------------------------------------------------------------------------
# s3rver

def start_s3rver(root: Path, state: _State) -> Server:
    """Start s3rver under `root`/s3rver on a free port with the bucket
    `sprite-test`; returns once it answers.  Raises ServerError on failure."""
    if not os.access(S3RVER_BIN, os.X_OK):
        raise ServerError(f"{S3RVER_BIN} missing: run ci/install-deps.sh")
    d = root / "s3rver"
    (d / "data").mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ, NODE_OPTIONS="--openssl-legacy-provider")
    log = d / "s3rver.log"
    p = state.spawn("s3rver", [str(S3RVER_BIN), "-d", str(d / "data"), "-a", "127.0.0.1",
                               "-p", str(port), "--configure-bucket", BUCKET],
                    log, env=env)
    endpoint = f"127.0.0.1:{port}"
    _wait_answers(endpoint, p, "s3rver", [log])
    server = Server("S3RVER", endpoint, "S3RVER", "S3RVER", BUCKET)
    # --configure-bucket runs before listening; make sure it is there.
    if server.client().request("HEAD", BUCKET).status != 200:
        raise ServerError(f"s3rver: bucket {BUCKET} missing\n{_tail(log)}")
    return server


# ---------------------------------------------------------------------------
# The pair

def start(state_dir: str | os.PathLike) -> dict[str, str]:
    """Start radosgw and s3rver (in parallel) under `state_dir`, write
    servers.json and env.sh there, and return the environment variables.
    The servers start empty: state of an earlier (stopped) run is wiped.
    On failure, stops whatever it started and raises ServerError."""
    root = Path(state_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    state = _State(root)
    if any(_alive(p) for p in state.data["processes"]):
        raise ServerError(f"servers already running in {root}")
    shutil.rmtree(root / "rgw", ignore_errors=True)
    shutil.rmtree(root / "s3rver", ignore_errors=True)
    (root / "env.sh").unlink(missing_ok=True)
    state.data = {"servers": {}, "processes": []}
    state.save()
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(start_rgw, root, state),
                       pool.submit(start_s3rver, root, state)]
            servers = [f.result() for f in futures]
    except BaseException:
        stop(root)
        raise
    state.data["servers"] = {s.kind: dataclasses.asdict(s) for s in servers}
    state.save()
    env = environment(root)
    (root / "env.sh").write_text(format_env(env))
    return env


def environment(state_dir: str | os.PathLike) -> dict[str, str]:
    """The SPRITE_TEST_* variables for the servers started in `state_dir`."""
    root = Path(state_dir).resolve()
    data = _State(root).data
    if set(data["servers"]) != set(KINDS):
        raise ServerError(f"no servers started in {root}")
    env = {"SPRITE_TEST_SERVERS_DIR": str(root)}
    for s in data["servers"].values():
        env.update(Server(**s).env())
    return env


def format_env(env: dict[str, str]) -> str:
    import shlex
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))


def stop(state_dir: str | os.PathLike) -> None:
    """Stop every process recorded in `state_dir` (newest first), by PID,
    and wait for each to exit.  Safe to call twice."""
    state = _State(Path(state_dir).resolve())
    for p in reversed(state.data["processes"]):
        _stop_process(p)
    state.data["processes"] = []
    state.save()


def remove(state_dir: str | os.PathLike) -> None:
    """Stop the servers and delete the state directory."""
    stop(state_dir)
    shutil.rmtree(state_dir, ignore_errors=True)


WITH_SERVERS = TESTS_DIR / "servers" / "with-servers"


def ensure_servers() -> dict[str, Server]:
    """For a Python test's main(): return both servers from the environment
    if they answer; otherwise re-exec this script under with-servers (which
    starts them for this run only).  Does not return in that case."""
    servers = servers_from_env()
    if servers and all(answers(s.endpoint) for s in servers.values()):
        return servers
    import sys
    os.execv(WITH_SERVERS, [str(WITH_SERVERS), sys.executable, *sys.argv])

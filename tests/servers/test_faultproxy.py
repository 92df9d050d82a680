#!/usr/bin/python3
"""Self-test of the fault-injecting proxy (tests/lib/faultproxy.py).

Runs against the real radosgw through the proxy (standalone it re-execs
itself under tests/servers/with-servers):

    tests/servers/with-servers python3 tests/servers/test_faultproxy.py [-v]

Checks that plain requests pass unchanged (PUT/GET/ranged GET/HEAD/list/
DELETE, signatures still verify, a wrong secret still gets 403, curl's
keep-alive and Expect: 100-continue), that each fault does what it says,
the rule budget (skip, count, probability with a seed, filters), the
counters, the control interface (HTTP, on both ports) and the CLI.
Exits non-zero on failure.
"""

import http.client
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import faultproxy  # noqa: E402
import s3servers  # noqa: E402

RGW: s3servers.Server = None   # set by main()
FAULTPROXY = Path(faultproxy.__file__).resolve()
RUN = secrets.token_hex(4)   # key prefixes unique to this run


class FaultProxyTest(unittest.TestCase):

    def setUp(self):
        self.proxy = faultproxy.FaultProxy(RGW.endpoint).start()
        self.addCleanup(self.proxy.stop)
        self.c = self.client()
        self.direct = RGW.client()
        self.bucket = RGW.bucket
        self.prefix = f"faultproxy-{RUN}/{self._testMethodName}/"
        self.addCleanup(self.direct.empty_bucket, self.bucket, self.prefix)

    def client(self, timeout: float = 5.0) -> s3servers.S3Client:
        return s3servers.S3Client(self.proxy.endpoint, RGW.access_key, RGW.secret_key,
                                  timeout=timeout)

    def key(self, name: str) -> str:
        return self.prefix + name

    def put(self, name: str, data: bytes, **headers) -> s3servers.Response:
        return self.c.request("PUT", self.bucket, self.key(name), data, headers=headers)

    def get(self, name: str, client=None) -> s3servers.Response:
        return (client or self.c).request("GET", self.bucket, self.key(name))

    def upstream(self, name: str) -> bytes | None:
        """The object as radosgw has it (not through the proxy)."""
        r = self.direct.request("GET", self.bucket, self.key(name))
        return r.body if r.status == 200 else None

    def assertCounts(self, seen=None, forwarded=None, faulted=None):
        s = self.proxy.stats()
        for what, want in (("seen", seen), ("forwarded", forwarded), ("faulted", faulted)):
            if want is not None:
                self.assertEqual(s[what], want, f"{what} in {s}")

    # -- pass-through ---------------------------------------------------------
    def test_passthrough(self):
        data = os.urandom(100_000)
        k = self.key("obj 1+é")
        self.c.put_object(self.bucket, k, data)
        self.assertEqual(self.c.get_object(self.bucket, k), data)
        self.assertEqual(self.c.get_object(self.bucket, k, (10, 4105)), data[10:4106])
        self.assertEqual(self.c.head_object(self.bucket, k)["content-length"], "100000")
        listed = self.c.list_objects(self.bucket, self.prefix)   # chunked response
        self.assertEqual([(o["key"], o["size"]) for o in listed], [(k, len(data))])
        self.assertEqual(self.upstream("obj 1+é"), data)
        self.c.delete_object(self.bucket, k)
        self.assertIsNone(self.c.head_object(self.bucket, k))
        counts = {"PUT": 1, "GET": 3, "HEAD": 2, "DELETE": 1}
        self.assertCounts(seen=counts, forwarded=counts, faulted={})
        s = self.proxy.stats()
        self.assertEqual(s["total"], {"seen": 7, "forwarded": 7, "faulted": 0})
        self.assertEqual(s["connections"], 7)   # S3Client: one connection per request
        self.assertEqual([e["status"] for e in self.proxy.log()],
                         [200, 200, 206, 200, 200, 204, 404])

    def test_signature_checked_upstream(self):
        r = self.c.request("PUT", self.bucket, self.key("bad"), b"x",
                           secret_key="wrong" + RGW.secret_key)
        self.assertEqual(r.status, 403, r.body)
        self.assertIn(b"SignatureDoesNotMatch", r.body)
        self.assertIsNone(self.upstream("bad"))
        self.assertCounts(seen={"PUT": 1}, forwarded={"PUT": 1}, faulted={})

    def curl(self, *args: str) -> subprocess.CompletedProcess:
        auth = ["--aws-sigv4", "aws:amz:us-east-1:s3", "--user",
                f"{RGW.access_key}:{RGW.secret_key}",
                "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "-sS", "--max-time", "10"]
        return subprocess.run(["curl", *auth, *args], capture_output=True, timeout=20)

    def test_curl_keepalive_and_expect(self):
        """libcurl (what the C code uses): one connection for several
        requests, and a 2 MiB upload with Expect: 100-continue."""
        data = os.urandom(2 << 20)
        url = f"http://{self.proxy.endpoint}/{self.bucket}/{self.key('big')}"
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            r = self.curl("-v", "-f", "-T", f.name, url)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"Expect: 100-continue", r.stderr)
        self.assertIn(b"< HTTP/1.1 100 Continue", r.stderr)
        self.assertEqual(self.upstream("big"), data)
        self.proxy.reset_stats()
        r = self.curl("-f", "-w", "%{num_connects}\n", "-o", "/dev/null", url,
                      "-o", "/dev/null", url, "-o", "/dev/null", url + "?x-id=GetObject")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split(), [b"1", b"0", b"0"])   # reused twice
        self.assertEqual(self.proxy.stats()["connections"], 1)
        self.assertCounts(seen={"GET": 3}, forwarded={"GET": 3}, faulted={})

    # -- faults -----------------------------------------------------------------
    def test_status(self):
        rid = self.proxy.add_rule("status", method="PUT", key=self.key("a"), count=1, status=503)
        r = self.put("a", b"1")
        self.assertEqual(r.status, 503)
        self.assertIn(b"<Error><Code>SlowDown</Code>", r.body)
        self.assertEqual(r.headers["content-type"], "application/xml")
        self.assertIsNone(self.upstream("a"))           # not forwarded
        self.assertEqual(self.put("a", b"2").status, 200)   # count=1: spent
        self.assertEqual(self.upstream("a"), b"2")
        self.assertEqual(self.proxy.rules()[0]["id"], rid)
        self.assertFalse(self.proxy.rules()[0]["active"])
        self.proxy.add_rule("status", method="GET", key_re=r"/b$", status=500,
                            code="InternalError", headers={"Retry-After": "1"})
        self.assertEqual(self.put("b", b"b").status, 200)   # PUT: not matched
        r = self.get("b")
        self.assertEqual((r.status, r.headers["retry-after"]), (500, "1"))
        self.assertIn(b"<Code>InternalError</Code>", r.body)
        self.assertEqual(self.get("a").status, 200)      # other key: not matched
        r = self.c.request("HEAD", self.bucket, self.key("b"))
        self.assertEqual(r.status, 200)                  # HEAD: not matched
        self.proxy.add_rule("status", status=404, method="HEAD")
        self.assertEqual(self.c.request("HEAD", self.bucket, self.key("b")).status, 404)
        self.assertCounts(seen={"PUT": 3, "GET": 2, "HEAD": 2},
                          forwarded={"PUT": 2, "GET": 1, "HEAD": 1},
                          faulted={"PUT": 1, "GET": 1, "HEAD": 1})
        self.assertEqual(self.proxy.stats()["faults"], {"status": 3})

    def test_reset_before(self):
        self.proxy.add_rule("reset", method="PUT", count=1)
        with self.assertRaises(ConnectionError):
            self.put("a", b"data")
        self.assertIsNone(self.upstream("a"))            # never reached radosgw
        self.assertEqual(self.put("a", b"data").status, 200)
        self.assertCounts(seen={"PUT": 2}, forwarded={"PUT": 1}, faulted={"PUT": 1})

    def test_reset_after(self):
        """The write is applied upstream but the client sees a reset: a
        retry with If-None-Match: * then finds its own object (412)."""
        self.proxy.add_rule("reset", when="after", method="PUT", count=1)
        with self.assertRaises(ConnectionError):
            self.put("seg", b"segment", **{"If-None-Match": "*"})
        self.assertEqual(self.upstream("seg"), b"segment")
        self.assertEqual(self.put("seg", b"segment", **{"If-None-Match": "*"}).status, 412)
        self.assertCounts(seen={"PUT": 2}, forwarded={"PUT": 2}, faulted={"PUT": 1})

    def test_truncate(self):
        data = os.urandom(100_000)
        self.c.put_object(self.bucket, self.key("a"), data)
        self.proxy.add_rule("truncate", method="GET", count=1, bytes=1000)
        with self.assertRaises(http.client.IncompleteRead) as cm:
            self.get("a")
        self.assertEqual(cm.exception.partial, data[:1000])
        self.assertEqual(self.get("a").body, data)       # spent
        # A chunked response (listing) cut after 10 data bytes.
        self.proxy.add_rule("truncate", method="GET", key="list-type", count=1, bytes=10)
        with self.assertRaises(http.client.IncompleteRead):
            self.c.list_objects(self.bucket, self.prefix)
        # reset=True: an RST instead of a FIN after the partial body.
        self.proxy.add_rule("truncate", method="GET", count=1, bytes=10, reset=True)
        with self.assertRaises((ConnectionError, http.client.IncompleteRead)):
            self.get("a")
        self.assertCounts(seen={"PUT": 1, "GET": 4}, forwarded={"PUT": 1, "GET": 4},
                          faulted={"GET": 3})

    def test_corrupt(self):
        data = os.urandom(100_000)
        self.c.put_object(self.bucket, self.key("a"), data)
        self.proxy.add_rule("corrupt", method="GET", count=1)
        got = self.get("a").body
        self.assertEqual(len(got), len(data))
        self.assertEqual([i for i in range(len(data)) if got[i] != data[i]], [50_000])
        self.assertEqual(got[50_000], data[50_000] ^ 0xFF)
        self.proxy.add_rule("corrupt", method="GET", count=1, offset=-1)
        got = self.c.get_object(self.bucket, self.key("a"), (100, 199))
        self.assertEqual(got[:-1], data[100:199])
        self.assertNotEqual(got[-1], data[199])
        self.assertEqual(self.get("a").body, data)       # spent
        self.proxy.add_rule("corrupt", method="GET", key="list-type", count=1, offset=1)
        r = self.c.request("GET", self.bucket, query={"list-type": "2", "prefix": self.prefix})
        self.assertTrue(r.body.startswith(b"<") and r.body[1:2] != b"?", r.body[:20])
        self.assertCounts(seen={"PUT": 1, "GET": 4}, forwarded={"PUT": 1, "GET": 4},
                          faulted={"GET": 3})

    def test_delay(self):
        self.proxy.add_rule("delay", method="PUT", count=1, ms=300)
        t0 = time.monotonic()
        self.assertEqual(self.put("a", b"1").status, 200)
        self.assertGreaterEqual(time.monotonic() - t0, 0.3)
        self.assertEqual(self.put("a", b"2").status, 200)   # count=1: spent
        self.assertEqual([e["fault"] for e in self.proxy.log()], ["delay", None])
        # when="after": the write is visible upstream before the answer.
        self.proxy.add_rule("delay", method="PUT", count=1, ms=500, when="after")
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("r", self.put("b", b"late")))
        t0 = time.monotonic()
        t.start()
        while self.upstream("b") is None and time.monotonic() - t0 < 5:
            time.sleep(0.02)
        self.assertTrue(t.is_alive(), "answer came before the delay")
        self.assertEqual(self.upstream("b"), b"late")
        t.join(5)
        self.assertGreaterEqual(time.monotonic() - t0, 0.5)
        self.assertEqual(result["r"].status, 200)
        self.assertCounts(seen={"PUT": 3}, forwarded={"PUT": 3}, faulted={"PUT": 2})

    def test_blackhole(self):
        rid = self.proxy.add_rule("blackhole", method="PUT")
        c = self.client(timeout=0.5)
        t0 = time.monotonic()
        with self.assertRaises(TimeoutError):
            c.request("PUT", self.bucket, self.key("a"), b"x")
        self.assertLess(time.monotonic() - t0, 3.0)
        self.assertIsNone(self.upstream("a"))
        self.assertEqual(self.get("b", c).status, 404)   # GET: not matched
        # A request still held is closed when the rule is removed.
        holder = s3servers.S3Client(self.proxy.endpoint, RGW.access_key, RGW.secret_key,
                                    timeout=10)
        errors = []

        def held():
            try:
                holder.request("PUT", self.bucket, self.key("a"), b"y")
            except Exception as e:
                errors.append(e)
        t = threading.Thread(target=held)
        t.start()
        time.sleep(0.2)
        self.assertTrue(t.is_alive())
        t0 = time.monotonic()
        self.assertTrue(self.proxy.remove_rule(rid))
        t.join(5)
        self.assertLess(time.monotonic() - t0, 2.0)   # not the client's 10 s timeout
        self.assertEqual(len(errors), 1)
        self.assertIsInstance(errors[0], ConnectionError)
        self.assertEqual(self.put("a", b"z").status, 200)
        self.assertEqual(self.upstream("a"), b"z")
        self.assertCounts(seen={"PUT": 3, "GET": 1}, forwarded={"PUT": 1, "GET": 1},
                          faulted={"PUT": 2})

    def test_down(self):
        self.proxy.add_rule("down")
        for op in (lambda: self.put("a", b"x"), lambda: self.get("a")):
            with self.assertRaises(ConnectionError):
                op()
        # The control interface still answers on the proxy port.
        ctl = faultproxy.FaultControl(self.proxy.endpoint)
        self.assertEqual(ctl.stats()["faulted"], {"PUT": 1, "GET": 1})
        self.assertIsNone(self.upstream("a"))
        ctl.clear()
        self.assertEqual(self.put("a", b"x").status, 200)
        self.assertCounts(seen={"PUT": 2, "GET": 1}, forwarded={"PUT": 1},
                          faulted={"PUT": 1, "GET": 1})

    def test_down_refuse(self):
        self.proxy.add_rule("down", refuse=True)
        with self.assertRaises(ConnectionRefusedError):
            self.get("a")
        with self.assertRaises(ValueError):
            self.proxy.add_rule("down", refuse=True, method="GET")
        ctl = faultproxy.FaultControl(self.proxy.control_endpoint)
        self.assertEqual(ctl.stats()["total"]["seen"], 0)   # refused by the kernel
        ctl.clear()   # listens again (same port) before answering
        self.assertEqual(self.put("a", b"x").status, 200)
        self.assertCounts(seen={"PUT": 1}, forwarded={"PUT": 1}, faulted={})

    # -- rule budget ------------------------------------------------------------
    def test_skip_count_probability(self):
        self.c.put_object(self.bucket, self.key("a"), b"a")
        self.proxy.add_rule("status", method="GET|HEAD", key=self.key("a"), skip=1, count=2,
                            status=500)
        self.assertEqual([self.get("a").status for _ in range(5)], [200, 500, 500, 200, 200])
        self.proxy.clear()
        self.proxy.reset_stats()
        self.proxy.add_rule("status", method=["GET"], probability=0.5, seed=7, status=503)
        got = [self.get("a").status for _ in range(20)]
        rng = random.Random(7)
        want = [503 if rng.random() < 0.5 else 200 for _ in range(20)]
        self.assertEqual(got, want)
        self.assertIn(200, got)
        self.assertIn(503, got)
        n = want.count(503)
        self.assertCounts(seen={"GET": 20}, forwarded={"GET": 20 - n}, faulted={"GET": n})
        self.assertEqual(self.proxy.rules()[0]["fired"], n)
        # Several rules: the first that fires wins, per request.
        self.proxy.clear()
        self.proxy.add_rule("status", status=500, method="PUT", key="/x", count=1)
        self.proxy.add_rule("status", status=503, method="PUT", count=2)
        self.assertEqual([self.put(k, b"").status for k in ("x", "x", "y", "y")],
                         [500, 503, 503, 200])
        with self.assertRaises(ValueError):
            self.proxy.add_rule("explode")
        with self.assertRaises(ValueError):
            self.proxy.add_rule("delay")                 # ms is required
        with self.assertRaises(ValueError):
            self.proxy.add_rule("status", ms=5)          # not a status parameter

    def test_concurrent(self):
        errors = []

        def worker(i):
            try:
                c = self.client()
                for j in range(5):
                    d = os.urandom(1000 + i * 100 + j)
                    c.put_object(self.bucket, self.key(f"{i}-{j}"), d)
                    assert c.get_object(self.bucket, self.key(f"{i}-{j}")) == d
            except Exception as e:
                errors.append(e)
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(errors, [])
        self.assertCounts(seen={"PUT": 40, "GET": 40}, forwarded={"PUT": 40, "GET": 40})

    # -- control interface and CLI --------------------------------------------
    def test_control_http(self):
        ctl = faultproxy.FaultControl(self.proxy.control_endpoint)
        rid = ctl.add_rule("status", method="PUT", status=500, count=1)
        self.assertEqual([r["id"] for r in ctl.rules()], [rid])
        self.assertEqual(self.put("a", b"x").status, 500)
        # Query-string form on the proxy port (as a C test would with curl).
        host, port = self.proxy.endpoint.rsplit(":", 1)
        h = http.client.HTTPConnection(host, int(port), timeout=5)
        h.request("POST", "/__fault__/rules?action=reset&when=after&method=PUT&count=1")
        r = h.getresponse()
        self.assertEqual(r.status, 200)
        (rid2,) = json.loads(r.read())["ids"]
        h.request("POST", "/__fault__/rules", body=b'{"action": "nope"}')
        r = h.getresponse()
        self.assertEqual(r.status, 400)
        self.assertIn("unknown action", json.loads(r.read())["error"])
        h.close()
        with self.assertRaises(ConnectionError):
            self.put("b", b"y")
        self.assertEqual(self.upstream("b"), b"y")
        self.assertEqual({r["id"]: r["fired"] for r in ctl.rules()}, {rid: 1, rid2: 1})
        self.assertTrue(ctl.remove_rule(rid))
        self.assertFalse(ctl.remove_rule(rid))
        rid3 = ctl.add_rule("delay", ms=1)
        ctl.clear()
        self.assertEqual(ctl.rules(), [])
        self.assertNotEqual(rid3, rid2)
        st = ctl.stats()   # control requests are not counted
        self.assertEqual((st["seen"], st["forwarded"], st["faulted"]),
                         ({"PUT": 2}, {"PUT": 1}, {"PUT": 2}))
        self.assertEqual([e["fault"] for e in ctl.log()], ["status", "reset"])
        ctl.reset_stats()
        self.assertEqual(self.proxy.stats()["total"], {"seen": 0, "forwarded": 0, "faulted": 0})
        # The control port serves nothing but /__fault__.
        r = s3servers.S3Client(self.proxy.control_endpoint, RGW.access_key,
                               RGW.secret_key).request("GET", self.bucket, self.key("b"))
        self.assertEqual(r.status, 404)

    def test_cli(self):
        p = subprocess.Popen([sys.executable, str(FAULTPROXY), "--upstream", RGW.endpoint,
                              "--rule", '{"action": "status", "status": 503, "count": 1}'],
                             stdout=subprocess.PIPE, text=True)
        try:
            endpoint = p.stdout.readline().strip()
            control = p.stdout.readline().split()[1]
            ctl = faultproxy.FaultControl(control)
            ctl.add_rule("reset", method="GET", count=1)
            c = s3servers.S3Client(endpoint, RGW.access_key, RGW.secret_key, timeout=5)
            self.assertEqual(c.request("PUT", self.bucket, self.key("a"), b"x").status, 503)
            self.assertEqual(c.request("PUT", self.bucket, self.key("a"), b"x").status, 200)
            with self.assertRaises(ConnectionError):
                c.request("GET", self.bucket, self.key("a"))
            self.assertEqual(c.request("GET", self.bucket, self.key("a")).body, b"x")
            self.assertEqual(ctl.stats()["faulted"], {"PUT": 1, "GET": 1})
        finally:
            p.terminate()
            rc = p.wait(10)
            p.stdout.close()
        self.assertEqual(rc, 0)


def main() -> int:
    global RGW
    RGW = s3servers.ensure_servers()["RGW"]
    print(f"# radosgw at {RGW.endpoint}, bucket {RGW.bucket}")
    prog = unittest.main(exit=False, verbosity=2)
    return 0 if prog.result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())

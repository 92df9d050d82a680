#!/usr/bin/python3
"""Faults between QEMU and radosgw, injected by tests/lib/faultproxy.py:
every I/O still returns the right bytes or a clean error, and flushed
writes survive.  Run through tests/servers/with-servers."""

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "lib"))
import s3servers  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402

QEMU_IMG = str(REPO / "build" / "qemu" / "qemu-img")
QEMU_IO = str(REPO / "build" / "qemu" / "qemu-io")
# Requests for a segment object (not listings of them).
SEGMENT = r"^/[^?]*/seg/[0-9a-f]{16}$"
SNAPSHOT = r"^/[^?]*/meta/[0-9a-f]{16}$"


class FaultsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.rgw = s3servers.Server.from_env("RGW")
        if cls.rgw is None:
            raise SystemExit("run through tests/servers/with-servers")
        cls.proxy = FaultProxy(upstream=cls.rgw.endpoint).start()

    @classmethod
    def tearDownClass(cls):
        cls.proxy.stop()

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="sprite-faults-"))
        self.env = dict(os.environ, XDG_CACHE_HOME=str(self.tmp / "cache"),
                        AWS_ACCESS_KEY_ID=self.rgw.access_key,
                        AWS_SECRET_ACCESS_KEY=self.rgw.secret_key)
        self.url = (f"sprite+http://{self.proxy.endpoint}/{self.rgw.bucket}/"
                    f"{self.id().split('.')[-1]}-{os.getpid()}")
        self.proxy.clear()
        subprocess.run([QEMU_IMG, "create", "-f", "raw", self.url, "8M"],
                       check=True, env=self.env, capture_output=True)

    def tearDown(self):
        self.proxy.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def io(self, *cmds, opts="", check=True):
        args = [QEMU_IO, "--image-opts"]
        for c in cmds:
            args += ["-c", c]
        args.append(f"driver=sprite,url={self.url}{opts}")
        r = subprocess.run(args, env=self.env, capture_output=True,
                           text=True, timeout=300)
        out = r.stdout + r.stderr
        if check:
            self.assertEqual(r.returncode, 0, out)
            self.assertNotIn("failed", out)
        return out

    def drop_cache(self):
        shutil.rmtree(self.tmp / "cache", ignore_errors=True)

    def test_5xx_and_throttling_are_retried(self):
        self.proxy.add_rule("status", method="PUT", key_re=SEGMENT, count=3,
                            status=503)
        self.proxy.add_rule("status", method="GET", key_re=SEGMENT, count=2,
                            status=500)
        self.io("write -P 0x41 0 1M", "flush")
        self.drop_cache()
        self.io("read -P 0x41 0 1M")
        self.assertEqual(self.proxy.stats()["faults"].get("status"), 5)

    def test_reply_lost_after_the_write(self):
        # The segment reaches the store but the reply is lost: the retry
        # must not mistake its own segment for another writer's.
        self.proxy.add_rule("reset", method="PUT", key_re=SEGMENT, count=1,
                            when="after")
        self.io("write -P 0x42 4096 64k", "flush", "write -P 0x43 0 512",
                "flush")
        self.drop_cache()
        self.io("read -P 0x43 0 512", "read -P 0x42 4096 64k")

    def test_truncated_and_corrupt_replies(self):
        self.io("write -P 0x44 0 256k", "flush")
        self.drop_cache()
        self.proxy.add_rule("truncate", method="GET", key_re=SEGMENT, count=1,
                            bytes=1000)
        self.proxy.add_rule("corrupt", method="GET", key_re=SEGMENT, count=1)
        self.io("read -P 0x44 0 256k")

    def test_corrupt_object_is_an_error_not_data(self):
        self.io("write -P 0x45 0 64k", "flush")
        self.drop_cache()
        # Every reply damaged: the read must fail, never return bytes.
        self.proxy.add_rule("corrupt", method="GET", key_re=SEGMENT)
        out = self.io("read -P 0x45 0 64k", check=False)
        self.assertIn("read failed", out)
        self.assertIn("checksum", out)

    def test_outage_stalls_then_resumes(self):
        # The store goes away 1 s after QEMU opened the volume, while it
        # sleeps, and comes back 3 s later: the flush in between waits.
        def outage():
            rule = self.proxy.add_rule("down")
            time.sleep(3.0)
            self.proxy.remove_rule(rule)
        timer = threading.Timer(1.0, outage)
        timer.start()
        t = time.monotonic()
        self.io("sleep 2000", "write -P 0x46 0 128k", "flush")
        timer.join()
        self.assertGreaterEqual(time.monotonic() - t, 3.5)
        self.drop_cache()
        self.io("read -P 0x46 0 128k")

    def test_failure_beyond_the_budget_is_clean(self):
        self.io("write -P 0x47 0 4k", "flush")
        self.proxy.add_rule("status", method="PUT", key_re=SEGMENT, status=503)
        out = self.io("write -P 0x48 0 4k", "flush",
                      opts=",retry-timeout=2", check=False)
        self.proxy.clear()
        self.assertIn("cannot upload segment", out)
        self.assertIn("503", out)
        # What was flushed before is intact.
        self.drop_cache()
        self.io("read -P 0x47 0 4k")

    def test_restore_when_metadata_snapshots_failed(self):
        # 70 flushes cross the 64-segment mark, and closing uploads a
        # snapshot too; the store refuses every snapshot meanwhile.  The
        # data is all in segments: restoring replays them all.
        volume = self.url.rsplit("/", 1)[1]

        def snapshots():
            return [o["key"] for o in self.rgw.client().list_objects(
                self.rgw.bucket, f"{volume}/meta/")]
        rule = self.proxy.add_rule("status", method="PUT", key_re=SNAPSHOT,
                                   status=503)
        writes = [f"write -P {i + 1} {i * 4096} 4k" for i in range(70)]
        self.io(*[c for w in writes for c in (w, "flush")],
                opts=",retry-timeout=1")
        self.assertGreaterEqual(self.proxy.stats()["faults"].get("status"), 2)
        self.assertEqual(snapshots(), [])
        self.proxy.remove_rule(rule)
        self.drop_cache()
        reads = [f"read -P {i + 1} {i * 4096} 4k" for i in range(70)]
        self.io(*reads)
        # Snapshots work again (that writer's close uploaded one): a
        # restore from it plus the segments after it reads the same.
        self.assertEqual(len(snapshots()), 1)
        self.io("write -P 0x49 1M 4k", "flush")
        self.drop_cache()
        self.io(*reads, "read -P 0x49 1M 4k")

if __name__ == "__main__":
    unittest.main(verbosity=2)

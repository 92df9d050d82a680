#!/usr/bin/python3
"""Faults between QEMU and radosgw, injected by tests/lib/faultproxy.py:
every I/O still returns the right bytes or a clean error, and flushed
writes survive.  Run through tests/servers/with-servers."""

import hashlib
import os
import re
import select
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
from guest import Guest, GuestError  # noqa: E402

QEMU_IMG = str(REPO / "build" / "qemu" / "qemu-img")
QEMU_IO = str(REPO / "build" / "qemu" / "qemu-io")
# Requests for a segment object (not listings of them).
SEGMENT = r"^/[^?]*/seg/[0-9a-f]{16}$"
SNAPSHOT = r"^/[^?]*/meta/[0-9a-f]{16}$"
SIZE = 8 << 20   # of each test's volume


class Writer:
    """One qemu-io process that reads its commands from a pipe: the test
    sends them one at a time and gets each one's output (stdout and
    stderr, which has the driver's error messages) once it is done, so
    that faults can change between two commands of the same writer
    without any timing.  Closing stdin closes the volume."""

    PROMPT = b"qemu-io> "

    def __init__(self, args, env):
        self.p = subprocess.Popen(args, env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
        self.buf = b""
        self.opened = self._until_prompt()

    def _until_prompt(self, timeout=120):
        deadline = time.monotonic() + timeout
        fd = self.p.stdout.fileno()
        while self.PROMPT not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"qemu-io: no prompt after {timeout} s; "
                                     f"output: {self.buf.decode()}")
            data = os.read(fd, 65536)
            if not data:
                raise AssertionError(f"qemu-io exited ({self.p.wait()}): "
                                     f"{self.buf.decode()}")
            self.buf += data
        out, self.buf = self.buf.split(self.PROMPT, 1)
        return out.decode()

    def cmd(self, command):
        """Run one qemu-io command; returns its output."""
        self.p.stdin.write(command.encode() + b"\n")
        self.p.stdin.flush()
        return self._until_prompt()

    def close(self):
        """Close the volume (EOF on stdin); returns (status, output)."""
        self.p.stdin.close()
        out = self.buf + self.p.stdout.read()
        return self.p.wait(120), out.decode()

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.p.stdin.close()
        self.p.stdout.close()


def image(writes):
    """The volume's bytes after (offset, length, pattern) writes."""
    img = bytearray(SIZE)
    for off, length, pat in writes:
        img[off:off + length] = bytes([pat]) * length
    return bytes(img)


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
        subprocess.run([QEMU_IMG, "create", "-f", "raw", self.url, str(SIZE)],
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

    def restore(self):
        """The volume as a host with an empty cache reads it from the
        store, read-only: also while a writer has it open."""
        cache, raw = self.tmp / "restore-cache", self.tmp / "restored.raw"
        r = subprocess.run([QEMU_IMG, "convert", "-O", "raw", "--image-opts",
                            f"driver=sprite,url={self.url},cache-dir={cache}",
                            str(raw)], env=self.env, capture_output=True,
                           text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        shutil.rmtree(cache, ignore_errors=True)
        data = raw.read_bytes()
        raw.unlink()
        return data

    def assertImage(self, got, want, what):
        if got != want:
            at = next(i for i in range(len(want)) if got[i] != want[i])
            self.fail(f"{what}: byte {at} (block {at // 4096}) reads "
                      f"{got[at]:#x}, not {want[at]:#x}")

    def snapshots(self):
        volume = self.url.rsplit("/", 1)[1]
        return [o["key"] for o in self.rgw.client().list_objects(
            self.rgw.bucket, f"{volume}/meta/")]

    def test_writethrough_write_is_durable_when_acknowledged(self):
        """With the write cache off (qemu-io's default), a write is
        acknowledged only once it is on the store: also the first one
        after a flush, for which the block layer's FUA emulation issued no
        flush."""
        w = Writer([QEMU_IO, "-t", "writethrough", "--image-opts",
                    f"driver=sprite,url={self.url}"], self.env)
        try:
            self.assertIn("wrote", w.cmd("write -P 0x51 0 4k"))
            w.cmd("flush")
            self.assertIn("wrote", w.cmd("write -P 0x52 4k 4k"))
            # Before QEMU closes the volume, which would flush anyway.
            self.assertImage(self.restore(),
                             image([(0, 4096, 0x51), (4096, 4096, 0x52)]),
                             "acknowledged writes")
        finally:
            w.kill()

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

    def test_outage_beyond_the_budget_stalls_the_guest(self):
        """A guest syncs while the store is down for longer than
        retry-timeout: with werror=stop the VM pauses (io-error) instead
        of the guest seeing an error; after the store is back, `cont`
        retries the flush, the guest's sync returns, and its data is on
        the store before QEMU closes the volume."""
        disk = ["-blockdev", f"driver=sprite,node-name=d0,url={self.url},"
                "retry-timeout=2",
                "-device", "virtio-blk-pci,drive=d0,werror=stop,rerror=stop"]
        with Guest(disk, env=self.env) as g:
            g.check("dd if=/dev/urandom of=/tmp/d bs=64k count=16 "
                    "2>/dev/null")
            want = g.check("md5sum < /tmp/d").split()[0]
            rule = self.proxy.add_rule("down")
            pos = g.console_position()
            t = time.monotonic()
            g.start_script("dd if=/tmp/d of=/dev/vda bs=64k seek=5 "
                           "oflag=direct conv=notrunc,fsync 2>&1 "
                           "&& echo SYNC-DONE || echo SYNC-FAILED")
            try:
                err = g.qmp.wait_event("BLOCK_IO_ERROR", timeout=30)
                g.qmp.wait_event("STOP", timeout=10)
            except GuestError as e:
                self.fail(f"the VM did not stop on the failed flush: {e}\n"
                          f"console: {g.console()[pos:]}")
            stalled = time.monotonic() - t
            # The flush was retried for the whole budget before it failed.
            self.assertGreaterEqual(stalled, 2.0)
            self.assertEqual(err["data"]["action"], "stop")
            self.assertEqual(err["data"]["node-name"], "d0")
            status = g.qmp.execute("query-status")
            self.assertEqual((status["status"], status["running"]),
                             ("io-error", False))
            self.assertNotIn("SYNC-", g.console()[pos:])
            self.assertGreater(self.proxy.stats()["faults"]["down"], 1)
            self.proxy.remove_rule(rule)
            g.qmp.execute("cont")
            m = g.wait_console(rb"SYNC-(DONE|FAILED)", pos, 60)
            self.assertEqual(m.group(1), b"DONE", g.console()[pos:])
            self.assertEqual(g.qmp.execute("query-status")["status"],
                             "running")
            self.assertEqual([e["event"] for e in g.qmp.clear_events()
                              if e["event"] == "BLOCK_IO_ERROR"], [])
            # On the store now, while QEMU still has the volume open (its
            # close would flush anyway): the guest's sync uploaded it.
            got = self.restore()[5 * 65536:21 * 65536]
            self.assertEqual(hashlib.md5(got).hexdigest(), want)
        print(f"stalled {stalled:.1f} s", flush=True)

    def lazy_disk(self, cache, takeover=False):
        return ["-blockdev", f"driver=sprite,node-name=d0,url={self.url},"
                f"cache-dir={self.tmp / cache},retry-timeout=1"
                f"{',takeover=on' if takeover else ''}",
                "-device", "virtio-blk-pci,drive=d0"]

    def wait_until(self, ready, timeout, why=lambda: ""):
        """Poll `ready()` until it is true; fail after `timeout` seconds,
        with the message `why()`."""
        deadline = time.monotonic() + timeout
        while not ready():
            self.assertLess(time.monotonic(), deadline, why())
            time.sleep(0.1)

    def wait_durable(self, g):
        self.wait_until(lambda: all(
            c["durable"] for n in g.qmp.execute("query-named-block-nodes")
            if n["node-name"] == "d0"
            for c in n["image"]["format-specific"]["data"]["checkpoints"]),
            60)

    def lazy_checkpoint(self, *setup, data="/tmp/blob"):
        """Checkpoint c1, durable, of a guest that ran the `setup`
        commands (by default, 96 MiB of random data in memory, in
        /tmp/blob); the host is then lost.  Returns the md5 of `data`."""
        setup = setup or ("dd if=/dev/urandom of=/tmp/blob bs=1M count=96 "
                          "2>/dev/null",)
        with Guest(self.lazy_disk("cache1"), env=self.env,
                   memory="384M") as g:
            for command in setup:
                g.check(command)
            want = g.check(f"md5sum <{data}").split()[0]
            g.qmp.execute("human-monitor-command",
                          {"command-line": "savevm c1"})
            self.wait_durable(g)
            g.kill()
        return want

    def lazy_restore(self, cache):
        """A new QEMU, with an empty cache, restored from c1 with
        -loadvm and tracing when all its RAM is in."""
        return Guest(self.lazy_disk(cache, takeover=True) +
                     ["-loadvm", "c1", "-trace", "ram_lazy_load_done"],
                     env=self.env, memory="384M", wait_ready=False)

    def test_outage_during_lazy_restore(self):
        """A checkpoint restored with -loadvm into a new QEMU with an
        empty cache: the guest starts before its RAM is read, and pages
        are read as it touches them (migration/ram-lazy.c).  The store
        goes down just after the guest starts, while it reads 96 MiB of
        memory: it waits for its pages, QEMU says why, and once the store
        is back the guest finishes with the checkpoint's bytes, every page
        of which was read.  A QEMU that quits while RAM is still being
        read exits cleanly."""
        want = self.lazy_checkpoint()
        # Slow GETs keep the load going long enough to cut it off.  (The
        # first rule that matches applies: the outage replaces them.)
        slow = self.proxy.add_rule("delay", method="GET", key_re=SEGMENT,
                                   ms=50)
        with self.lazy_restore("cache2") as g:
            self.proxy.remove_rule(slow)
            down = self.proxy.add_rule("down")
            pos = g.console_position()
            g.start_script("md5sum </tmp/blob")
            self.wait_until(lambda: "Could not read RAM from the snapshot"
                            in g.qemu_output(), 30, g.qemu_output)
            time.sleep(1)
            self.assertNotIn(want, g.console()[pos:])
            self.proxy.remove_rule(down)
            g.wait_console(want.encode(), pos, 60)
            self.wait_until(lambda: "ram_lazy_load_done" in g.qemu_output(),
                            60, g.qemu_output)
            log = g.qemu_output()
            self.assertIn("Reading RAM from the snapshot works again", log)
            self.assertRegex(log, r"ram_lazy_load_done \d+ pages held, "
                                  r"0 not read")
            self.assertEqual(g.shutdown(), 0, g.qemu_output())

        self.proxy.add_rule("delay", method="GET", key_re=SEGMENT, ms=50)
        with self.lazy_restore("cache3") as g:
            self.assertEqual(g.shutdown(), 0, g.qemu_output())
            self.assertRegex(g.qemu_output(), r"ram_lazy_load_done \d+ "
                                              r"pages held, [1-9]\d* not read")

    def test_guest_io_during_lazy_restore(self):
        """The guest's page cache held 8 MiB of dirty disk data when the
        checkpoint was taken.  Right after a restore, while RAM is still
        read on demand, the guest writes it back: the device reads pages
        the guest has not touched since the restore, which must be read
        from the VM state first, without the driver holding anything
        that reading needs.  Then it reads the disk into pages it has
        not touched either."""
        want = self.lazy_checkpoint(
            "dd if=/dev/urandom of=/tmp/d bs=1M count=8 2>/dev/null",
            # Free memory that held data: the page cache takes it next.
            "dd if=/dev/urandom of=/tmp/junk bs=1M count=64 2>/dev/null; "
            "rm /tmp/junk",
            # A second opener keeps dd's close from writing it back.
            "echo 360000 >/proc/sys/vm/dirty_expire_centisecs; "
            "echo 360000 >/proc/sys/vm/dirty_writeback_centisecs; "
            "sleep 100000 </dev/vda & "
            "dd if=/tmp/d of=/dev/vda bs=1M 2>/dev/null",
            data="/tmp/d")
        self.proxy.add_rule("delay", method="GET", key_re=SEGMENT, ms=50)
        with self.lazy_restore("cache2") as g:
            g.check("sync", timeout=60)
            self.assertNotIn("ram_lazy_load_done", g.qemu_output())
            got = g.check("echo 3 >/proc/sys/vm/drop_caches; dd if=/dev/vda "
                          "bs=1M count=8 2>/dev/null | md5sum",
                          timeout=60).split()[0]
            self.assertEqual(got, want)

    def test_savevm_during_lazy_restore(self):
        """A savevm while a restored guest's RAM is still being read on
        demand first waits until every page is in (it may write the area
        they are read from), and is then incremental.  A new QEMU
        restored from it sees the data, and the counter set after the
        first restore."""
        want = self.lazy_checkpoint()
        slow = self.proxy.add_rule("delay", method="GET", key_re=SEGMENT,
                                   ms=50)
        with self.lazy_restore("cache2") as g:
            g.check("echo 2 >/tmp/counter")
            self.assertNotIn("ram_lazy_load_done", g.qemu_output())
            out = g.qmp.execute("human-monitor-command",
                                {"command-line": "savevm c2"})
            self.assertEqual(out.strip(), "")
            self.assertRegex(g.qemu_output(), r"ram_lazy_load_done \d+ "
                                              r"pages held, 0 not read")
            sizes = {s["name"]: s["vm-state-size"] for n in
                     g.qmp.execute("query-named-block-nodes")
                     if n["node-name"] == "d0"
                     for s in n["image"]["snapshots"]}
            self.assertLess(sizes["c2"], sizes["c1"] // 4)
            self.proxy.remove_rule(slow)
            self.wait_durable(g)
            g.kill()
        with Guest(self.lazy_disk("cache3", takeover=True) +
                   ["-loadvm", "c2"], env=self.env, memory="384M",
                   wait_ready=False) as g:
            self.assertEqual(g.check("cat /tmp/counter; md5sum </tmp/blob")
                             .split()[:2], ["2", want])

    def test_restore_while_shipping_is_down(self):
        """The store refuses segments while a writer goes on writing and
        flushing: every flush fails, and a restore meanwhile reads the
        state of the last flush that succeeded, none of the writes since.
        Once segments are accepted again, the same writer's next flush
        uploads everything, the writes whose flushes failed included; that
        flush reaches 64 segments, so the shipper uploads a metadata
        snapshot after it, and a restore from that snapshot reads
        everything."""
        # Writeback, as a guest's disk: writes are acknowledged from the
        # cache and only the flush commands upload.
        w = Writer([QEMU_IO, "-t", "writeback", "--image-opts",
                    f"driver=sprite,url={self.url},retry-timeout=1"],
                   self.env)
        try:
            # Segments 1 to 62, flushed one by one.
            writes = [(i * 4096, 4096, i + 1) for i in range(62)]
            for off, length, pat in writes:
                out = w.cmd(f"write -P {pat} {off} {length}") + w.cmd("flush")
                self.assertNotIn("failed", out)
                self.assertNotIn("sprite:", out)
            flushed = image(writes)
            self.assertEqual(self.snapshots(), [])
            rule = self.proxy.add_rule("status", method="PUT",
                                       key_re=SEGMENT, status=503)
            # A new block, an overwrite of block 0, another new block:
            # acknowledged, readable by the writer, never durable.
            unflushed = [(62 * 4096, 4096, 0x63), (0, 4096, 0xAA),
                         (1 << 20, 65536, 0x64)]
            for off, length, pat in unflushed:
                out = w.cmd(f"write -P {pat} {off} {length}")
                self.assertIn("wrote", out)
                self.assertNotIn("failed", out)
                out = w.cmd("flush")
                self.assertIn("cannot upload segment", out)
                self.assertIn("503", out)
            self.assertNotIn("failed", w.cmd("read -P 0xaa 0 4k"))
            writes += unflushed
            self.assertGreaterEqual(self.proxy.stats()["faults"]["status"], 3)
            self.assertImage(self.restore(), flushed,
                             "restored while shipping is down")
            self.proxy.remove_rule(rule)
            out = w.cmd("flush")
            self.assertNotIn("sprite:", out)
            # That flush put segments 63 and 64; the shipper puts
            # snapshot 64 once the flush has returned.
            volume = self.url.rsplit("/", 1)[1]
            want = [f"{volume}/meta/{64:016x}"]
            self.wait_until(lambda: self.snapshots() == want, 30,
                            lambda: f"snapshots: {self.snapshots()}")
            self.proxy.reset_stats()
            self.assertImage(self.restore(), image(writes),
                             "restored after shipping resumed")
            used = [e["target"] for e in self.proxy.log()
                    if e["method"] == "GET" and re.search(SNAPSHOT,
                                                          e["target"])]
            self.assertEqual(used, [f"/{self.rgw.bucket}/{volume}/meta/"
                                    f"{64:016x}"])
            status, out = w.close()
            self.assertEqual(status, 1, out)   # for the flushes that failed
            self.assertNotIn("sprite:", out)
        finally:
            w.kill()
        self.assertImage(self.restore(), image(writes),
                         "restored after the writer closed")


if __name__ == "__main__":
    unittest.main(verbosity=2)

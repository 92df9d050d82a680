#!/usr/bin/python3
"""Checkpoints of a running guest: memory and disk together.

The guest keeps a counter in memory (a tmpfs file) and the same counter on
its sprite disk, plus 16 MiB of random data in memory.  After
snapshot-load (QMP) or loadvm (HMP), both counters and the data must be
those of the checkpoint: on this host, and on a "fresh host" (a new QEMU
with an empty cache, started with -loadvm).  A volume created from a
checkpoint boots into it too.  Bad requests fail and leave the VM
running, unchanged, even a checkpoint that does not fit the VM.  Run through tests/servers/with-servers; uses radosgw and the
file store.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "lib"))
import s3servers  # noqa: E402
from guest import Guest, QMPError  # noqa: E402

QEMU_IMG = str(REPO / "build" / "qemu" / "qemu-img")

SET = """
echo {n} >/tmp/counter
printf '%-512s' {n} | dd of=/dev/vda bs=512 count=1 oflag=direct \
    conv=notrunc 2>/dev/null
"""
GET = "cat /tmp/counter; dd if=/dev/vda bs=512 count=1 iflag=direct " \
      "2>/dev/null | tr -d ' '; echo; md5sum </tmp/blob"


def counters(g):
    """(counter in memory, counter on disk, md5 of the memory blob)."""
    mem, disk, md5 = g.check(GET).split()[:3]
    return int(mem), int(disk), md5


def run_job(g, command, **args):
    """Run a snapshot-* job to its end; returns its error or None."""
    job = f"{command}-{time.monotonic_ns()}"
    g.qmp.execute(command, dict(args, **{"job-id": job}))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for j in g.qmp.execute("query-jobs"):
            if j["id"] == job and j["status"] == "concluded":
                g.qmp.execute("job-dismiss", {"id": job})
                return j.get("error")
        time.sleep(0.05)
    raise AssertionError(f"{command} did not finish")


def first_checkpoint(g):
    """16 MiB of random data in memory, both counters at 1, then
    checkpoint c1 (QMP).  Returns the data's md5."""
    g.check("dd if=/dev/urandom of=/tmp/blob bs=1M count=16 2>/dev/null")
    g.check(SET.format(n=1))
    _, _, blob = counters(g)
    error = run_job(g, "snapshot-save", tag="c1", vmstate="d0",
                    devices=["d0"])
    if error:
        raise AssertionError(f"snapshot-save c1: {error}")
    return blob


def checkpoints(g, node="d0"):
    for n in g.qmp.execute("query-named-block-nodes"):
        if n["node-name"] == node:
            return n["image"]["format-specific"]["data"]["checkpoints"]
    raise AssertionError(f"no node {node}")


def vm_state_sizes(g, node="d0"):
    """What savevm wrote for each checkpoint, by name."""
    for n in g.qmp.execute("query-named-block-nodes"):
        if n["node-name"] == node:
            return {s["name"]: s["vm-state-size"]
                    for s in n["image"].get("snapshots", [])}
    raise AssertionError(f"no node {node}")


def wait_durable(g, deadline_s=60):
    deadline = time.monotonic() + deadline_s
    while not all(c["durable"] for c in checkpoints(g)):
        if time.monotonic() > deadline:
            raise AssertionError(f"checkpoints not durable: {checkpoints(g)}")
        time.sleep(0.1)


class CheckpointTest(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="sprite-ckpt-"))
        rgw = s3servers.Server.from_env("RGW")
        self.assertIsNotNone(rgw, "run through tests/servers/with-servers")
        (self.tmp / "store").mkdir()
        self.stores = {
            "file": (f"sprite+file://{self.tmp}/store/", {}),
            "rgw": (f"sprite+http://{rgw.endpoint}/{rgw.bucket}/",
                    {"AWS_ACCESS_KEY_ID": rgw.access_key,
                     "AWS_SECRET_ACCESS_KEY": rgw.secret_key}),
        }

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def volume(self, store, name):
        prefix, env = self.stores[store]
        url = f"{prefix}{name}-{os.getpid()}"
        subprocess.run([QEMU_IMG, "create", "-f", "raw", url, "64M"],
                       check=True, env=dict(os.environ, **env))
        return url, env

    def disk(self, url, cache, takeover=False):
        return ["-blockdev", f"driver=sprite,node-name=d0,url={url},"
                f"cache-dir={self.tmp / cache}"
                f"{',takeover=on' if takeover else ''}",
                "-device", "virtio-blk-pci,drive=d0"]

    def test_checkpoints(self):
        for store in self.stores:
            with self.subTest(store=store):
                self.checkpoint_scenario(store)

    def checkpoint_scenario(self, store):
        url, env = self.volume(store, "ckpt")
        with Guest(self.disk(url, "cache1"), env=env) as g:
            blob = first_checkpoint(g)
            g.check(SET.format(n=2))
            self.assertEqual(counters(g), (2, 2, blob))
            self.assertIsNone(run_job(g, "snapshot-load", tag="c1",
                                      vmstate="d0", devices=["d0"]))
            self.assertEqual(counters(g), (1, 1, blob))

            # HMP, and a second checkpoint after diverging from the first.
            g.check(SET.format(n=3))
            out = g.qmp.execute("human-monitor-command",
                                {"command-line": "savevm c2"})
            self.assertEqual(out.strip(), "")
            listing = g.qmp.execute("human-monitor-command",
                                    {"command-line": "info snapshots"})
            self.assertIn("c1", listing)
            self.assertIn("c2", listing)
            # Incremental: savevm wrote only the pages dirtied since the
            # loadvm of c1, and the volume stored only those.
            added = {c["name"]: c["added-bytes"] for c in checkpoints(g)}
            self.assertGreater(added["c1"], 16 << 20)
            self.assertLess(added["c2"], added["c1"] // 4)
            written = vm_state_sizes(g)
            self.assertLess(written["c2"], written["c1"] // 4)

            # Bad requests fail and the VM runs on, unchanged.
            err = run_job(g, "snapshot-load", tag="nope", vmstate="d0",
                          devices=["d0"])
            self.assertIn("nope", err or "")
            err = run_job(g, "snapshot-save", tag="c2", vmstate="d0",
                          devices=["d0"])
            self.assertIn("already exists", err or "")
            self.assertEqual(g.qmp.execute("query-status")["status"],
                             "running")
            self.assertEqual(counters(g), (3, 3, blob))

            names = [c["name"] for c in checkpoints(g)]
            self.assertEqual(names, ["c1", "c2"])
            wait_durable(g)
            g.kill()   # the host is lost

        # Another host: empty cache, straight into c1 with -loadvm.  The
        # killed QEMU still holds the lease: take it over.  The guest
        # starts before its RAM is read (see migration/ram-lazy.c), and a
        # loadvm first waits until every page of the last one is in.
        with Guest(self.disk(url, "cache2", takeover=True) +
                   ["-loadvm", "c1", "-trace", "ram_lazy_load_done"],
                   env=env, wait_ready=False) as g:
            self.assertEqual(counters(g), (1, 1, blob))
            g.qmp.execute("human-monitor-command",
                          {"command-line": "loadvm c2"})
            self.assertRegex(g.qemu_output(), r"ram_lazy_load_done \d+ "
                                              r"pages held, 0 not read")
            self.assertEqual(counters(g), (3, 3, blob))
            # This host took no checkpoint yet; c3 is written over the one
            # it loaded, and stores only what changed since.
            out = g.qmp.execute("human-monitor-command",
                                {"command-line": "savevm c3"})
            self.assertEqual(out.strip(), "")
            added = {c["name"]: c["added-bytes"] for c in checkpoints(g)}
            self.assertLess(added["c3"], added["c1"] // 4)
            written = vm_state_sizes(g)
            self.assertLess(written["c3"], written["c1"] // 4)
            self.assertIsNone(run_job(g, "snapshot-delete", tag="c1",
                                      devices=["d0"]))
            self.assertEqual([c["name"] for c in checkpoints(g)],
                             ["c2", "c3"])
            wait_durable(g)

        # A new volume (a new VM) from checkpoint c2.
        prefix, _ = self.stores[store]
        clone = f"{prefix}clone-{os.getpid()}"
        subprocess.run([QEMU_IMG, "create", "-f", "raw", "-o",
                        f"base={url},base-checkpoint=c2", clone, "0"],
                       check=True, env=dict(os.environ, **env))
        with Guest(self.disk(clone, "cache3") + ["-loadvm", "c2"], env=env,
                   wait_ready=False) as g:
            self.assertEqual(counters(g), (3, 3, blob))
            g.check(SET.format(n=4))
            self.assertEqual(counters(g), (4, 4, blob))
            # Its first checkpoint is written over c2's VM state, which
            # stays in the base: only what changed since the load.
            out = g.qmp.execute("human-monitor-command",
                                {"command-line": "savevm c5"})
            self.assertEqual(out.strip(), "")
            self.assertLess(vm_state_sizes(g)["c5"], added["c1"] // 4)
            g.check(SET.format(n=5))
            out = g.qmp.execute("human-monitor-command",
                                {"command-line": "loadvm c5"})
            self.assertEqual(out.strip(), "")
            self.assertEqual(counters(g), (4, 4, blob))
        # The original did not change.
        with Guest(self.disk(url, "cache2") + ["-loadvm", "c2"], env=env,
                   wait_ready=False) as g:
            self.assertEqual(counters(g), (3, 3, blob))

        # c3 restored on two more hosts: the first records what it reads
        # first (c3's restore set), the second fetches that ahead.
        for cache in ("cache4", "cache5"):
            with Guest(self.disk(url, cache) + ["-loadvm", "c3"], env=env,
                       wait_ready=False) as g:
                self.assertEqual(counters(g), (3, 3, blob))
                sets = {c["name"]: c["restore-set-bytes"]
                        for c in checkpoints(g)}
        self.assertGreater(sets["c3"], 0)

    def test_mismatched_checkpoint_changes_nothing(self):
        """A checkpoint taken with another memory size, or with a device
        this VM lacks, fails to load part way, after the disk was
        reverted and RAM overwritten.  The VM must run on with its memory
        and disk as they were: loadvm saved them first and went back.  An
        undo checkpoint left behind is reported."""
        url, env = self.volume("file", "mismatch")
        rng = ["-device", "virtio-rng-pci"]
        with Guest(self.disk(url, "cache1") + rng, env=env) as g:
            blob = first_checkpoint(g)
        for mismatch, args, memory in (("memory", rng, "320M"),
                                       ("devices", [], "256M")):
            with self.subTest(mismatch=mismatch), \
                    Guest(self.disk(url, "cache1") + args, memory=memory,
                          env=env) as g:
                g.check("dd if=/dev/urandom of=/tmp/blob bs=1M count=4 "
                        "2>/dev/null")
                g.check(SET.format(n=7))
                before = counters(g)
                self.assertNotEqual(before[2], blob)
                err = run_job(g, "snapshot-load", tag="c1", vmstate="d0",
                              devices=["d0"])
                self.assertIn("put back as it was", err or "")
                out = g.qmp.execute("human-monitor-command",
                                    {"command-line": "loadvm c1"})
                self.assertIn("put back as it was", out)
                self.assertEqual(g.qmp.execute("query-status")["status"],
                                 "running")
                self.assertEqual(counters(g), before)
                # The snapshot it went back to is gone again.
                self.assertEqual([c["name"] for c in checkpoints(g)], ["c1"])
        # An undo checkpoint that a loadvm left behind (QEMU died during
        # it; here one made by hand) is reported at the next loadvm, and
        # left alone: it may hold the only copy of a state.
        with Guest(self.disk(url, "cache1") + rng, env=env) as g:
            leftover = "loadvm-undo-0000beef"
            out = g.qmp.execute("human-monitor-command",
                                {"command-line": f"savevm {leftover}"})
            self.assertEqual(out.strip(), "")
            out = g.qmp.execute("human-monitor-command",
                                {"command-line": "loadvm c1"})
            self.assertIn(f"Snapshot '{leftover}' was left by a loadvm "
                          "that did not finish", out)
            self.assertEqual(counters(g), (1, 1, blob))
            self.assertEqual([c["name"] for c in checkpoints(g)],
                             ["c1", leftover])
            g.qmp.execute("human-monitor-command",
                          {"command-line": f"delvm {leftover}"})
        # A VM that savevm refuses (ivshmem as a peer registers a
        # migration blocker, and its state would not load back) loads
        # without the undo, as QEMU always did: a checkpoint that does
        # not fit leaves it stopped, and no undo checkpoint behind.
        blocker = ["-object", "memory-backend-memfd,id=shm,size=1M,share=on",
                   "-device", "ivshmem-plain,memdev=shm"]
        with Guest(self.disk(url, "cache1") + rng + blocker, memory="320M",
                   env=env) as g:
            out = g.qmp.execute("human-monitor-command",
                                {"command-line": "loadvm c1"})
            self.assertIn("Error -22 while loading VM state", out)
            self.assertNotIn("put back", out)
            self.assertEqual(g.qmp.execute("query-status")["status"],
                             "restore-vm")
            self.assertEqual([c["name"] for c in checkpoints(g)], ["c1"])
        # Where it fits, c1 loads there too.
        with Guest(self.disk(url, "cache1") + rng + blocker, env=env) as g:
            out = g.qmp.execute("human-monitor-command",
                                {"command-line": "savevm refused"})
            self.assertIn("ivshmem", out)
            out = g.qmp.execute("human-monitor-command",
                                {"command-line": "loadvm c1"})
            self.assertEqual(out.strip(), "")
            self.assertEqual(counters(g), (1, 1, blob))

    def test_cache_full_mid_checkpoint(self):
        """The cache directory runs out of room while savevm streams: the
        driver uploads what its log holds to make room, and the checkpoint
        completes.  A file size limit on QEMU (8 MiB, far below the VM
        state) stands in for a full disk: writes past it fail with EFBIG
        as they would with ENOSPC.  On radosgw, so that the store's own
        objects are not files of this process."""
        url, env = self.volume("rgw", "full")
        limit = 8 << 20
        qemu = self.tmp / "qemu-limited"
        qemu.write_text("#!/bin/sh\ntrap '' XFSZ\n"
                        f"exec prlimit --fsize={limit} "
                        f"{REPO / 'build' / 'qemu' / 'qemu-system-x86_64'} "
                        '"$@"\n')
        qemu.chmod(0o755)
        with Guest(self.disk(url, "cache1"), env=env, qemu=qemu) as g:
            blob = first_checkpoint(g)
            (c1,) = checkpoints(g)
            self.assertGreater(c1["added-bytes"], 2 * limit)
            g.check(SET.format(n=2))
            self.assertEqual(counters(g), (2, 2, blob))
            self.assertIsNone(run_job(g, "snapshot-load", tag="c1",
                                      vmstate="d0", devices=["d0"]))
            self.assertEqual(counters(g), (1, 1, blob))
            wait_durable(g)
        # No file in the cache grew past the limit: it was in force.
        sizes = [f.stat().st_size for f in (self.tmp / "cache1").rglob("*")
                 if f.is_file()]
        self.assertLessEqual(max(sizes), limit)
        # Another host restores it from the store.
        with Guest(self.disk(url, "cache2") + ["-loadvm", "c1"], env=env,
                   wait_ready=False) as g:
            self.assertEqual(counters(g), (1, 1, blob))


if __name__ == "__main__":
    unittest.main(verbosity=2)

#!/usr/bin/python3
"""qemu-img and qemu-io on sprite volumes, on the file store and radosgw.

Run through tests/servers/with-servers.  Checks the driver registration,
create/info/map/convert/compare, a differential test of random unaligned
writes, write-zeroes and discards against a raw file (warm cache and
after deleting it), clones, and that bad input fails cleanly.
"""

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "lib"))
import s3servers  # noqa: E402

QEMU = REPO / "build" / "qemu"
QEMU_IMG = str(QEMU / "qemu-img")
QEMU_IO = str(QEMU / "qemu-io")
MiB = 1 << 20


def run(*args, env=None, check=True):
    r = subprocess.run([str(a) for a in args], capture_output=True,
                       text=True, env=env, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n"
                             f"{r.stdout}\n{r.stderr}")
    return r


class Store:
    """Where volumes go: a URL prefix and the environment for the tools."""

    counter = 0

    def __init__(self, name, prefix, env):
        self.name, self.prefix, self.env = name, prefix, env

    def url(self):
        Store.counter += 1
        return f"{self.prefix}t{os.getpid()}-{Store.counter}"


def stores(tmp):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp / "xdg"))
    (tmp / "store").mkdir()
    out = [Store("file", f"sprite+file://{tmp}/store/", env)]
    rgw = s3servers.Server.from_env("RGW")
    if rgw is None:
        raise SystemExit("SPRITE_TEST_RGW_* not set: run this through "
                         "tests/servers/with-servers")
    out.append(Store("rgw", f"sprite+http://{rgw.endpoint}/{rgw.bucket}/",
                     dict(env, AWS_ACCESS_KEY_ID=rgw.access_key,
                          AWS_SECRET_ACCESS_KEY=rgw.secret_key)))
    return out


class ToolsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="sprite-tools-"))
        cls.stores = stores(cls.tmp)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_registered(self):
        r = run(QEMU_IMG, "--version")
        self.assertIn("version 10.0.2", r.stdout)
        r = run(QEMU_IMG, "--help")
        formats = r.stdout.split("Supported formats:")[1].split()
        self.assertIn("sprite", formats)

    def test_create_info_map(self):
        for s in self.stores:
            with self.subTest(store=s.name):
                url = s.url()
                run(QEMU_IMG, "create", "-f", "raw", url, "64M", env=s.env)
                run(QEMU_IO, "-f", "raw", "-c", "write -P 0x11 1M 2M",
                    "-c", "write -z 8M 1M", url, env=s.env)
                info = json.loads(run(QEMU_IMG, "info", "--output=json",
                                      url, env=s.env).stdout)
                self.assertEqual(info["virtual-size"], 64 * MiB)
                m = json.loads(run(QEMU_IMG, "map", "--output=json", "-f",
                                   "raw", url, env=s.env).stdout)
                data = [(e["start"], e["length"]) for e in m if e["data"]]
                self.assertEqual(data, [(1 * MiB, 2 * MiB)])
                zero = sum(e["length"] for e in m if e["zero"])
                self.assertEqual(zero, 62 * MiB)
                # Protocol-level facts.
                pinfo = json.loads(run(QEMU_IMG, "info", "--output=json",
                                       "-f", "sprite", url,
                                       env=s.env).stdout)
                spec = pinfo["format-specific"]
                self.assertEqual(spec["type"], "sprite")
                self.assertEqual(spec["data"]["data-bytes"], 2 * MiB)
                self.assertGreaterEqual(spec["data"]["store-bytes"], 2 * MiB)
                # qemu-io defaults to writethrough: a flush per write.
                self.assertEqual(spec["data"]["generation"], 2)

    def test_convert_compare_and_clone(self):
        raw = self.tmp / "src.raw"
        with open(raw, "wb") as f:
            f.truncate(32 * MiB)
            rnd = random.Random(7)
            for off in (0, 5 * MiB + 123, 20 * MiB):
                f.seek(off)
                f.write(rnd.randbytes(MiB))
        qcow = self.tmp / "src.qcow2"
        run(QEMU_IMG, "convert", "-O", "qcow2", raw, qcow)
        for s in self.stores:
            with self.subTest(store=s.name):
                url = s.url()
                r = run(QEMU_IMG, "convert", "-p", "-O", "raw", qcow, url,
                        env=s.env)
                run(QEMU_IMG, "compare", "-f", "raw", "-F", "raw", raw, url,
                    env=s.env)
                pinfo = json.loads(run(QEMU_IMG, "info", "--output=json",
                                       "-f", "sprite", url,
                                       env=s.env).stdout)
                stored = pinfo["format-specific"]["data"]["data-bytes"]
                # convert copies at 4 KiB granularity around the
                # unaligned megabyte.
                self.assertLessEqual(stored, 3 * MiB + 64 * 1024)
                # A clone stores only what differs.
                clone = s.url()
                # Size 0: the base's size.
                run(QEMU_IMG, "create", "-f", "raw", "-o", f"base={url}",
                    clone, "0", env=s.env)
                run(QEMU_IMG, "compare", "-f", "raw", "-F", "raw", raw,
                    clone, env=s.env)
                run(QEMU_IO, "-f", "raw", "-c", "write -P 0x77 0 4k", clone,
                    env=s.env)
                r = run(QEMU_IMG, "compare", "-f", "raw", "-F", "raw", raw,
                        clone, env=s.env, check=False)
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                pinfo = json.loads(run(QEMU_IMG, "info", "--output=json",
                                       "-f", "sprite", clone,
                                       env=s.env).stdout)
                spec = pinfo["format-specific"]["data"]
                self.assertEqual(spec["data-bytes"], 4096)
                self.assertEqual(spec["base"], url)
                run(QEMU_IMG, "compare", "-f", "raw", "-F", "raw", raw, url,
                    env=s.env)

    def test_differential(self):
        """Random unaligned writes, zeroes and discards: sprite == raw."""
        size = 16 * MiB
        for s in self.stores:
            with self.subTest(store=s.name):
                url = s.url()
                raw = self.tmp / f"diff-{s.name}.raw"
                run(QEMU_IMG, "create", "-f", "raw", raw, str(size))
                run(QEMU_IMG, "create", "-f", "raw", url, str(size),
                    env=s.env)
                rnd = random.Random(hash(url) & 0xffff)
                cmds = []
                for i in range(200):
                    n = rnd.randrange(1, 300000)
                    off = rnd.randrange(0, size - n)
                    op = rnd.random()
                    if op < 0.7:
                        cmds.append(f"write -P {rnd.randrange(256)} {off} {n}")
                    elif op < 0.8:
                        cmds.append(f"write -z {off} {n}")
                    elif op < 0.9:
                        cmds.append(f"discard {off} {n}")
                    else:
                        cmds.append("flush")
                args = [a for c in cmds for a in ("-c", c)]
                run(QEMU_IO, "-f", "raw", *args, raw)
                run(QEMU_IO, "-f", "raw", *args, url, env=s.env)
                run(QEMU_IMG, "compare", "-f", "raw", "-F", "raw", raw, url,
                    env=s.env)
                shutil.rmtree(self.tmp / "xdg" / "sprite")
                run(QEMU_IMG, "compare", "-f", "raw", "-F", "raw", raw, url,
                    env=s.env)

    def test_second_writer(self):
        """A second writer is refused, and takeover=on fences the first."""
        import time
        for s in self.stores:
            with self.subTest(store=s.name):
                url = s.url()
                run(QEMU_IMG, "create", "-f", "raw", url, "16M", env=s.env)
                first = subprocess.Popen(
                    [QEMU_IO, "-f", "raw", "-c", "write -P 0x11 0 64k",
                     "-c", "sleep 2000", "-c", "write -P 0x22 0 64k", url],
                    env=dict(s.env, XDG_CACHE_HOME=str(self.tmp / "w1")),
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    text=True)
                time.sleep(1.0)
                env2 = dict(s.env, XDG_CACHE_HOME=str(self.tmp / "w2"))
                r = run(QEMU_IO, "-f", "raw", "-c", "read 0 64k", url,
                        env=env2, check=False)
                self.assertNotEqual(r.returncode, 0)
                self.assertIn("is open for writing by", r.stdout + r.stderr)
                self.assertIn("takeover=on", r.stdout + r.stderr)
                run(QEMU_IO, "--image-opts", "-c", "write -P 0x33 0 64k",
                    f"driver=sprite,url={url},takeover=on", env=env2)
                out, _ = first.communicate(timeout=60)
                # The first writer's second write is refused: fenced off.
                self.assertIn("another writer", out)
                run(QEMU_IO, "-f", "raw", "-r", "-c", "read -P 0x33 0 64k",
                    url, env=env2)

    def test_snapshot(self):
        """qemu-img snapshot -c/-l/-a/-d, and a clone of a checkpoint."""
        for s in self.stores:
            for fmt in ("sprite", "raw"):
                with self.subTest(store=s.name, fmt=fmt):
                    self.snapshot_roundtrip(s, fmt)

    def snapshot_roundtrip(self, s, fmt):
        url = s.url()

        # qemu-img snapshot has no -f: name the driver with --image-opts,
        # or let it probe (raw over sprite, which passes snapshots down).
        target = (["--image-opts", f"driver=sprite,url={url}"]
                  if fmt == "sprite" else [url])

        def img(*args, check=True):
            return run(QEMU_IMG, "snapshot", *args, *target, env=s.env,
                       check=check)

        def io(cmd, check=True):
            return run(QEMU_IO, "-f", fmt, "-c", cmd, url, env=s.env,
                       check=check)

        def names():
            out = json.loads(run(QEMU_IMG, "info", "--output=json", "-f",
                                 fmt, url, env=s.env).stdout)
            return [sn["name"] for sn in out.get("snapshots", [])]

        run(QEMU_IMG, "create", "-f", "raw", url, "8M", env=s.env)
        io("write -P 0x11 0 1M")
        img("-c", "one")
        io("write -P 0x22 512k 1M")
        img("-c", "two")
        io("write -z 0 4M")
        self.assertEqual(names(), ["one", "two"])
        listing = img("-l").stdout
        self.assertIn("one", listing)
        self.assertIn("two", listing)
        r = img("-c", "one", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("already has a checkpoint named 'one'", r.stderr)

        img("-a", "one")
        io("read -P 0x11 0 1M")
        io("read -P 0 1M 7M")
        img("-a", "two")
        io("read -P 0x11 0 512k")
        io("read -P 0x22 512k 1M")
        r = img("-a", "three", check=False)
        self.assertNotEqual(r.returncode, 0)
        io("read -P 0x22 512k 1M")   # unchanged by the failed apply

        # A clone of checkpoint "one" reads as it, and holds it.
        clone = s.url()
        run(QEMU_IMG, "create", "-f", "raw", "-o",
            f"base={url},base-checkpoint=one", clone, "0", env=s.env)
        run(QEMU_IO, "-f", fmt, "-c", "read -P 0x11 0 1M", "-c",
            "read -P 0 1M 7M", clone, env=s.env)
        r = img("-d", "one", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("cannot be deleted", r.stderr)
        img("-d", "two")
        self.assertEqual(names(), ["one"])
        r = img("-d", "two", check=False)
        self.assertNotEqual(r.returncode, 0)
        io("read -P 0x22 512k 1M")   # deleting did not change the disk

        # Durable: the checkpoint list survives an empty cache.
        shutil.rmtree(self.tmp / "xdg" / "sprite")
        self.assertEqual(names(), ["one"])
        img("-a", "one")
        io("read -P 0x11 0 1M")

    def test_garbage_collection(self):
        # qemu-io writes through: each write is a segment.  With no grace
        # period the writer's close deletes the two overwritten ones; with
        # the default one (an hour) they stay.  store-bytes follows.
        for s in self.stores:
            with self.subTest(store=s.name):
                for grace, segments in (("0", 1), (None, 3)):
                    url = s.url()
                    run(QEMU_IMG, "create", "-f", "raw", url, "8M",
                        env=s.env)
                    opts = f"driver=sprite,url={url}"
                    if grace is not None:
                        opts += f",gc-grace={grace}"
                    run(QEMU_IO, "--image-opts", "-c", "write -P 1 0 4M",
                        "-c", "write -P 2 0 4M", "-c", "write -P 3 0 4M",
                        opts, env=s.env)
                    shutil.rmtree(self.tmp / "xdg", ignore_errors=True)
                    run(QEMU_IO, "-f", "raw", "-r", "-c", "read -P 3 0 4M",
                        url, env=s.env)
                    info = json.loads(run(QEMU_IMG, "info", "--output=json",
                                          "-f", "sprite", url,
                                          env=s.env).stdout)
                    used = info["format-specific"]["data"]["store-bytes"]
                    self.assertGreaterEqual(used, segments * 4 * MiB)
                    self.assertLess(used, (segments * 4 + 1) * MiB)
                    if s.name == "file":
                        # Those with data (close may add an empty one).
                        seg = Path(url[len("sprite+file://"):]) / "seg"
                        full = [p for p in seg.iterdir()
                                if p.stat().st_size > MiB]
                        self.assertEqual(len(full), segments)
        r = run(QEMU_IO, "--image-opts", "-c", "read 0 4k",
                f"driver=sprite,url={url},gc-grace=-1", env=s.env,
                check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("gc-grace", r.stderr)

    def test_bad_input(self):
        s = self.stores[0]
        url = s.url()
        cases = [
            (["create", "-f", "raw", "sprite+ftp://h/b/v", "1M"],
             "Unknown protocol"),
            (["create", "-f", "raw", "sprite+file://rel/v", "1M"],
             "absolute"),
            (["create", "-f", "raw", url, "1M"], None),
            (["create", "-f", "raw", url, "1M"], "already exists"),
            (["info", s.prefix + "nosuchvolume"], "does not exist"),
            (["create", "-f", "raw", "-o", f"base={s.prefix}missing",
              s.url(), "1M"], "does not exist"),
        ]
        for args, msg in cases:
            with self.subTest(args=args):
                r = run(QEMU_IMG, *args, env=s.env, check=msg is None)
                if msg:
                    self.assertNotEqual(r.returncode, 0)
                    self.assertIn(msg, r.stderr)
                    self.assertNotIn("Aborted", r.stderr)
        # Wrong credentials on radosgw: refused, secret never printed.
        rgw = self.stores[1]
        env = dict(rgw.env, AWS_SECRET_ACCESS_KEY="not-the-secret-0123")
        r = run(QEMU_IMG, "create", "-f", "raw", rgw.url(), "1M", env=env,
                check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertNotIn("not-the-secret-0123", r.stderr)
        self.assertRegex(r.stderr, "(?i)credential|denied|403|forbidden")
        # Unreachable server: fails, and in bounded time (run's timeout).
        r = run(QEMU_IMG, "create", "-f", "raw",
                f"sprite+http://127.0.0.1:{s3servers.free_port()}/b/v", "1M",
                env=rgw.env, check=False)
        self.assertNotEqual(r.returncode, 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)

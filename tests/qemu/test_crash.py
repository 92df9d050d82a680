#!/usr/bin/python3
"""Crash tests: the writer is killed at random moments.

qemu-io writes random overlapping ranges in writethrough mode, so a
"wrote" line means that write and everything before it was flushed.  It
is killed (SIGKILL) at a random moment, including in the middle of a
segment upload.  Then, with the cache kept and with it deleted, the
volume must read back exactly as the first j writes left it, for some j
no smaller than the number of writes acknowledged: no flushed write
lost, nothing torn, a prefix of the writes issued.  The next writer
needs takeover=on, since the dead one never released its lease.

test_guest does the same to QEMU running a guest that writes numbered
blocks in order, each flushed (O_DIRECT, then fsync) before the guest
prints its acknowledgement on the console.

Each kill is also a power cut for the cache directory (see
power_loss()): what a real one can do to files that were not synced is
done to them before the next life starts, as SQLite's test6.c does.

SPRITE_CRASH_ITERATIONS sets the number of kills per store (default 12).
Run through tests/servers/with-servers.
"""

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "lib"))
import s3servers  # noqa: E402
from guest import Guest  # noqa: E402

QEMU_IMG = str(REPO / "build" / "qemu" / "qemu-img")
QEMU_IO = str(REPO / "build" / "qemu" / "qemu-io")
SIZE = 2 << 20
ITERATIONS = int(os.environ.get("SPRITE_CRASH_ITERATIONS", "12"))


def make_writes(rnd, n):
    """n writes (offset, length, pattern byte), overlapping at random."""
    out = []
    for i in range(n):
        length = rnd.choice([512, 4096, 65536, 300000, rnd.randrange(1, 200000)])
        off = rnd.randrange(0, SIZE - length)
        out.append((off, length, (i % 250) + 1))
    return out


def image_after(writes, j):
    img = bytearray(SIZE)
    for off, length, pat in writes[:j]:
        img[off:off + length] = bytes([pat]) * length
    return bytes(img)


def power_loss(cache, rnd):
    """Do to the cache what losing power can: writes not yet synced are
    dropped (a file cut short) or torn (sectors of garbage or zeroes).
    Segment cache files, the pending and sealed logs are never synced:
    anything goes.  SQLite's WAL may lose or tear its unsynced tail
    (whole frames are checksummed); the shared-memory index is lost.  The
    main database file is written only by checkpoints that sync the WAL
    first, so it is left alone.  Returns the number of files damaged."""
    damaged = 0
    for path in sorted(Path(cache).rglob("*")):
        if not path.is_file() or path.name in ("lock", "meta.db"):
            continue
        if path.name == "meta.db-shm":
            path.unlink()
            continue
        size = path.stat().st_size
        action = rnd.choice(["keep", "cut", "tear", "zero"])
        if action == "keep" or size == 0:
            continue
        damaged += 1
        if action == "cut" or path.name == "meta.db-wal":
            with open(path, "r+b") as f:
                f.truncate(rnd.randrange(0, size))
            continue
        with open(path, "r+b") as f:
            for _ in range(rnd.randrange(1, 5)):
                sector = rnd.randrange(0, (size + 511) // 512)
                f.seek(sector * 512)
                f.write(rnd.randbytes(512) if action == "tear"
                        else bytes(512))
    return damaged


class CrashTest(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="sprite-crash-"))
        (self.tmp / "store").mkdir()
        self.rgw = s3servers.Server.from_env("RGW")
        if self.rgw is None:
            raise SystemExit("run through tests/servers/with-servers")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def crash_loop(self, prefix, env):
        rnd = random.Random(int(os.environ.get("SPRITE_CRASH_SEED", "4242")))
        kills = verified = damaged = 0
        for it in range(ITERATIONS):
            url = f"{prefix}crash-{os.getpid()}-{it}"
            cache = self.tmp / f"cache-{it}"
            subprocess.run([QEMU_IMG, "create", "-f", "raw", url, str(SIZE)],
                           check=True, env=env, capture_output=True)
            # A first life that is killed, then a second one that takes
            # over and is killed too: the state is cumulative.
            writes = []
            acked = 0
            for life in range(2):
                new = make_writes(rnd, 40)
                first = len(writes)
                writes += new
                args = [QEMU_IO, "--image-opts"]
                for off, length, pat in new:
                    args += ["-c", f"write -P {pat} {off} {length}"]
                args.append(f"driver=sprite,url={url},cache-dir={cache}"
                            + (",takeover=on" if life else ""))
                p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
                time.sleep(rnd.uniform(0.05, 1.0))
                p.send_signal(signal.SIGKILL)
                out, _ = p.communicate()
                kills += 1
                damaged += power_loss(cache, rnd)
                done = out.count("wrote ")
                self.assertNotIn("failed", out)
                acked = first + done
                # The next life starts from what the store holds, which
                # may include one write more than was acknowledged.
                j = self.check_prefix(url, env, cache, writes, acked,
                                      first + len(new))
                writes = writes[:j]
                verified += 1
            # Without any cache: the object store alone.
            shutil.rmtree(cache)
            self.check_prefix(url, env, self.tmp / "empty", writes,
                              len(writes), len(writes))
            shutil.rmtree(self.tmp / "empty", ignore_errors=True)
        print(f"{kills} kills, {damaged} cache files damaged, {verified} "
              "states verified", flush=True)

    def check_prefix(self, url, env, cache, writes, acked, issued):
        """The volume equals the image after j writes, acked <= j <=
        issued; returns j."""
        raw = self.tmp / "got.raw"
        subprocess.run([QEMU_IMG, "convert", "-O", "raw", "--image-opts",
                        f"driver=sprite,url={url},cache-dir={cache}",
                        str(raw)], check=True, env=env, capture_output=True)
        got = raw.read_bytes()
        for j in range(acked, issued + 1):
            if got == image_after(writes, j):
                return j
        self.fail(f"{url}: the volume is not the state after any of writes "
                  f"{acked}..{issued} (acknowledged: {acked})")

    def test_guest(self):
        """QEMU with a guest killed while the guest writes and syncs:
        every block the guest saw acknowledged is on the store, and the
        blocks written are a prefix of those issued."""
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.rgw.access_key,
                   AWS_SECRET_ACCESS_KEY=self.rgw.secret_key)
        prefix = f"sprite+http://{self.rgw.endpoint}/{self.rgw.bucket}/"
        rnd = random.Random(int(os.environ.get("SPRITE_CRASH_SEED", "4242")))
        blocks = 4096   # 4 KiB blocks the guest may write, in order
        for it in range(max(2, ITERATIONS // 4)):
            url = f"{prefix}gcrash-{os.getpid()}-{it}"
            subprocess.run([QEMU_IMG, "create", "-f", "raw", url,
                            str(blocks * 4096)], check=True, env=env,
                           capture_output=True)
            disk = ["-blockdev", f"driver=sprite,node-name=d0,url={url},"
                    f"cache-dir={self.tmp / f'gcache-{it}'}",
                    "-device", "virtio-blk-pci,drive=d0"]
            with Guest(disk, env=env) as g:
                # Block n holds its number; each write is flushed
                # (O_DIRECT, then fsync) before "ACK n" is printed.
                pos = g.console_position()
                g.start_script(
                    f"n=0; while [ $n -lt {blocks} ]; do "
                    "printf '%-4096s' $n | dd of=/dev/vda bs=4096 seek=$n "
                    "count=1 oflag=direct conv=notrunc,fsync 2>/dev/null "
                    "&& echo ACK $n; n=$((n+1)); done")
                g.wait_console(rb"ACK 3\n", pos, 60)
                time.sleep(rnd.uniform(0.0, 2.0))
                g.kill()
                acks = [int(x) for x in re.findall(r"ACK (\d+)",
                                                   g.console())]
            acked = max(acks) + 1
            raw = self.tmp / "g.raw"
            subprocess.run([QEMU_IMG, "convert", "-O", "raw", "--image-opts",
                            f"driver=sprite,url={url},cache-dir="
                            f"{self.tmp / 'gempty'}", str(raw)],
                           check=True, env=env, capture_output=True)
            shutil.rmtree(self.tmp / "gempty", ignore_errors=True)
            data = raw.read_bytes()
            written = 0
            while written < blocks and data[written * 4096:
                                            (written + 1) * 4096] == \
                    f"{written:<4096}".encode():
                written += 1
            self.assertGreaterEqual(written, acked,
                                    f"{url}: acknowledged blocks lost")
            self.assertEqual(data[written * 4096:], bytes(len(data) -
                                                          written * 4096),
                             f"{url}: blocks written out of order")
            print(f"guest killed after {acked} acknowledged writes; "
                  f"{written} on the store", flush=True)

    def test_file_store(self):
        self.crash_loop(f"sprite+file://{self.tmp}/store/",
                        dict(os.environ))

    def test_radosgw(self):
        self.crash_loop(
            f"sprite+http://{self.rgw.endpoint}/{self.rgw.bucket}/",
            dict(os.environ, AWS_ACCESS_KEY_ID=self.rgw.access_key,
                 AWS_SECRET_ACCESS_KEY=self.rgw.secret_key))


if __name__ == "__main__":
    unittest.main(verbosity=2)

#!/usr/bin/python3
"""A guest on a sprite virtio disk: it writes, powers off, and after the
host's cache is deleted boots again and reads the same bytes from the
object store (radosgw).  Run through tests/servers/with-servers."""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "lib"))
import s3servers  # noqa: E402
from guest import Guest  # noqa: E402

QEMU_IMG = str(REPO / "build" / "qemu" / "qemu-img")


class GuestTest(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="sprite-guest-"))

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_restart_with_empty_cache(self):
        rgw = s3servers.Server.from_env("RGW")
        self.assertIsNotNone(rgw, "run through tests/servers/with-servers")
        url = f"sprite+http://{rgw.endpoint}/{rgw.bucket}/guest-{os.getpid()}"
        env = dict(os.environ, AWS_ACCESS_KEY_ID=rgw.access_key,
                   AWS_SECRET_ACCESS_KEY=rgw.secret_key)
        subprocess.run([QEMU_IMG, "create", "-f", "raw", url, "64M"],
                       check=True, env=env)
        cache = self.tmp / "cache"
        # Credentials through a secret object, as a user would.
        secret = self.tmp / "secret"
        secret.write_text(rgw.secret_key)
        disk = ["-object", f"secret,id=s3key,file={secret}",
                "-blockdev", f"driver=sprite,node-name=d0,url={url},"
                f"cache-dir={cache},access-key-id={rgw.access_key},"
                "key-secret=s3key",
                "-device", "virtio-blk-pci,drive=d0"]
        with Guest(disk) as g:
            self.assertEqual(g.check("blockdev --getsize64 /dev/vda").strip(),
                             str(64 << 20))
            g.check("dd if=/dev/urandom of=/tmp/d bs=64k count=40 2>/dev/null")
            want = g.check("md5sum < /tmp/d").split()[0]
            g.check("dd if=/tmp/d of=/dev/vda bs=64k seek=7 oflag=direct "
                    "2>/dev/null; sync")
            self.assertEqual(g.check("dd if=/dev/vda bs=64k skip=7 count=40 "
                                     "iflag=direct 2>/dev/null | md5sum")
                             .split()[0], want)
            blk = g.qmp.execute("query-block")
            self.assertNotIn(rgw.secret_key, str(blk))
            g.poweroff()
        shutil.rmtree(cache)
        with Guest(disk) as g:
            got = g.check("dd if=/dev/vda bs=64k skip=7 count=40 "
                          "iflag=direct 2>/dev/null | md5sum").split()[0]
            self.assertEqual(got, want)
            g.poweroff()


if __name__ == "__main__":
    unittest.main(verbosity=2)

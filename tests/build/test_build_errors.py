#!/usr/bin/python3
"""Bad input to the QEMU build stops it with a message that says what to do.

Runs ci/build-qemu.sh from a scratch copy of the build inputs, with its
own cache directory, for: a tarball that does not exist, one with the
wrong hash, and a patch that does not apply.
"""

import os
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SPRITE_CACHE",
                            Path(os.environ.get("XDG_CACHE_HOME",
                                                Path.home() / ".cache"))
                            / "sprite"))
TARBALL = CACHE / "dl" / "qemu_10.0.2+ds.orig.tar.xz"


class BuildErrorsTest(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="sprite-build-errors-"))
        self.repo = self.tmp / "repo"
        for d in ("ci", "qemu-patches", "block-sprite/qemu"):
            shutil.copytree(REPO / d, self.repo / d)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def build(self, **env):
        e = dict(os.environ, SPRITE_CACHE=str(self.tmp / "cache"), **env)
        r = subprocess.run([self.repo / "ci" / "build-qemu.sh"], env=e,
                           capture_output=True, text=True, timeout=600)
        self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
        return r.stderr

    def test_missing_tarball(self):
        err = self.build(SPRITE_QEMU_TARBALL=str(self.tmp / "nope.tar.xz"))
        self.assertIn("does not exist", err)

    def test_wrong_hash(self):
        bad = self.tmp / "qemu_10.0.2+ds.orig.tar.xz"
        bad.write_bytes(b"not qemu")
        err = self.build(SPRITE_QEMU_TARBALL=str(bad))
        self.assertIn("wrong sha256", err)

    def test_patch_does_not_apply(self):
        self.assertTrue(TARBALL.exists(), "ci/build-qemu.sh fetches it first")
        series = (self.repo / "qemu-patches" / "series").read_text().split()
        patch = self.repo / "qemu-patches" / series[0]
        text = patch.read_text()
        # Damage a context line of the first hunk.
        patch.write_text(text.replace("\n option('rbd'", "\n option('xbd'", 1))
        err = self.build(SPRITE_QEMU_TARBALL=str(TARBALL))
        self.assertIn(f"patch {series[0]} does not apply", err)
        self.assertIn("docs/building.md", err)


if __name__ == "__main__":
    unittest.main(verbosity=2)

#!/usr/bin/python3
"""The main job: a VM whose disk is a Sprite volume.

Creates a volume on the embedded object store (sprite+file://, a local
directory laid out as S3 would hold it) or on the store given with
--url, boots the test guest with it as a virtio disk, writes data from
the guest, powers off, deletes the local cache, boots again and checks
the data came back from the object store alone.  Prints the timings.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lib"))
from guest import Guest  # noqa: E402

QEMU_IMG = REPO / "build" / "qemu" / "qemu-img"


def step(msg):
    print(f"demo: {msg}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="volume URL (default: a new sprite+file:// "
                    "volume under a temporary directory)")
    ap.add_argument("--size", default="256M")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sprite-demo-"))
    url = args.url or f"sprite+file://{work}/store/demo-vm"
    (work / "store").mkdir(exist_ok=True)
    cache = work / "cache"
    # qemu-img's cache too goes under the work directory.
    env = dict(os.environ, XDG_CACHE_HOME=str(work / "xdg"))
    try:
        t = time.monotonic()
        subprocess.run([QEMU_IMG, "create", "-f", "raw", url, args.size],
                       check=True, stdout=subprocess.DEVNULL, env=env)
        step(f"created {url} ({args.size}) in "
             f"{(time.monotonic() - t) * 1000:.0f} ms")

        disk = ["-blockdev", f"driver=sprite,node-name=disk0,url={url},"
                f"cache-dir={cache}",
                "-device", "virtio-blk-pci,drive=disk0"]
        t = time.monotonic()
        with Guest(disk) as g:
            step(f"guest booted in {time.monotonic() - t:.1f} s")
            g.check("dd if=/dev/urandom of=/tmp/data bs=1M count=16 2>/dev/null")
            want = g.check("md5sum /tmp/data").split()[0]
            t = time.monotonic()
            g.check("dd if=/tmp/data of=/dev/vda bs=1M oflag=direct "
                    "2>/dev/null && sync")
            step(f"guest wrote 16 MiB and flushed in "
                 f"{time.monotonic() - t:.2f} s (md5 {want})")
            g.poweroff()

        shutil.rmtree(cache)
        step("deleted the local cache: the volume now lives only in the "
             "object store")
        t = time.monotonic()
        with Guest(disk) as g:
            got = g.check("dd if=/dev/vda bs=1M count=16 2>/dev/null | "
                          "md5sum").split()[0]
            step(f"rebooted and read 16 MiB back in "
                 f"{time.monotonic() - t:.1f} s (md5 {got})")
            g.poweroff()
        if got != want:
            step("FAILED: the data read back differs")
            return 1
        info = subprocess.run([QEMU_IMG, "info", url], check=True,
                              capture_output=True, text=True,
                              env=env).stdout
        print(info)
        step("OK: the data survived losing the host's cache")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

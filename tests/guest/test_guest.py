#!/usr/bin/python3
"""Self-test of the test guest and tests/lib/guest.py.

Boots the guest with a virtio-blk disk on a raw file, checks that the
guest sees /dev/vda with the file's size, writes a pattern with dd in the
guest, reads it back in the guest (page cache dropped), shuts down over
QMP and checks that the host file holds the pattern.  Also checks the
command protocol (exit status, output without trailing newline, multi-line
scripts) and QMP.  Exits non-zero on the first failure.

Usage: test_guest.py [--qemu PATH]   (default: build/qemu/qemu-system-x86_64)
"""

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import guest  # noqa: E402

DISK_SIZE = 64 << 20
OFFSET = 4 << 20
PATTERN = (b"SPRITE-PATTERN-0123456789abcdef\n" * 32768)[: 1 << 20]


def check(what: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}" + (f": {detail}" if detail and not ok else ""))
    if not ok:
        sys.exit(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qemu", default=None, help="qemu-system-x86_64 to use")
    args = ap.parse_args()

    t0 = time.monotonic()
    kernel, initrd = guest.build_guest()
    print(f"# guest image {initrd} ready in {time.monotonic() - t0:.1f} s")

    with tempfile.TemporaryDirectory(prefix="sprite-test-guest-") as tmp:
        disk = Path(tmp) / "disk.raw"
        with open(disk, "wb") as f:
            f.truncate(DISK_SIZE)
        g = guest.Guest(["-blockdev", f"driver=file,filename={disk},node-name=d0",
                         "-device", "virtio-blk-pci,drive=d0"],
                        qemu=args.qemu, kernel=kernel, initrd=initrd)
        with g:
            print(f"# booted to the command loop in {g.boot_seconds:.2f} s")
            check("guest prints the ready marker", "SPRITE-GUEST-READY" in g.console())
            check("protocol: exit status and output",
                  g.run("echo hello; exit 3") == (3, "hello\n"))
            check("protocol: output without trailing newline, stderr merged",
                  g.run("printf a; printf b >&2") == (0, "ab"))
            check("protocol: multi-line script with quotes",
                  g.run("x='it''s'\nfor i in 1 2; do echo \"$x $i\"; done")
                  == (0, "its 1\nits 2\n"))
            status = g.qmp.execute("query-status")
            check("QMP: query-status says running", status["status"] == "running",
                  str(status))
            nodes = [n["node-name"] for n in g.qmp.execute("query-named-block-nodes")]
            check("QMP: node d0 exists", "d0" in nodes, str(nodes))

            size = g.check("blockdev --getsize64 /dev/vda").strip()
            check(f"guest sees /dev/vda of {DISK_SIZE} bytes", size == str(DISK_SIZE), size)
            t = time.monotonic()
            g.check("yes SPRITE-PATTERN-0123456789abcdef | head -c 1048576 >/tmp/pat && "
                    f"dd if=/tmp/pat of=/dev/vda bs=4096 seek={OFFSET // 4096} conv=fsync")
            print(f"# guest wrote 1 MiB with dd in {time.monotonic() - t:.2f} s")
            out = g.check("sync; echo 3 >/proc/sys/vm/drop_caches; "
                          f"dd if=/dev/vda bs=4096 skip={OFFSET // 4096} count=256 2>/dev/null"
                          " | sha256sum")
            check("guest reads the pattern back",
                  out.split()[0] == hashlib.sha256(PATTERN).hexdigest(), out)
            check("a failing guest command is reported",
                  g.run("dd if=/dev/vda of=/dev/null bs=4096 skip=999999 count=1 "
                        "iflag=fullblock 2>&1; test -b /dev/vdb")[0] != 0)
        check("QEMU exited with status 0 after QMP quit", g.proc.returncode == 0,
              str(g.proc.returncode))
        data = disk.read_bytes()
        check("host file holds the pattern at 4 MiB", data[OFFSET:OFFSET + len(PATTERN)] == PATTERN)
        check("the rest of the host file is zero",
              data[:OFFSET].count(0) == OFFSET and
              data[OFFSET + len(PATTERN):].count(0) == DISK_SIZE - OFFSET - len(PATTERN))
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""The main job: a VM on a Sprite volume, checkpointed and restored.

Creates a volume on the embedded object store (sprite+file://, a local
directory laid out as S3 would hold it) or on the store given with
--url, boots the test guest with it as a virtio disk, and keeps a
counter both in guest memory and on the disk.  It takes a checkpoint
(savevm: memory + disk), changes both counters, restores the checkpoint
(loadvm) and checks both went back.  Then it waits until the checkpoint
is durable on the object store, kills QEMU, deletes the local cache, and
starts a new QEMU straight into the checkpoint (-loadvm), as another
host would.  Prints the timings.
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
from guest import Guest, build_guest  # noqa: E402

QEMU_IMG = REPO / "build" / "qemu" / "qemu-img"


def step(msg):
    print(f"demo: {msg}", flush=True)


SET = """
echo {n} >/tmp/counter
printf '%-512s' {n} | dd of=/dev/vda bs=512 count=1 oflag=direct \
    conv=notrunc 2>/dev/null
"""


def set_counter(g, n):
    g.check(SET.format(n=n))


def state(g):
    """(counter in memory, counter on disk, md5 of the memory blob)."""
    out = g.check("cat /tmp/counter; dd if=/dev/vda bs=512 count=1 "
                  "iflag=direct 2>/dev/null | tr -d ' '; echo; "
                  "md5sum </tmp/blob").split()
    return int(out[0]), int(out[1]), out[2]


def hmp_ms(g, command):
    """Run an HMP command; fail on any output; return its time in ms."""
    t = time.monotonic()
    out = g.qmp.execute("human-monitor-command", {"command-line": command},
                        timeout=300)
    ms = (time.monotonic() - t) * 1000
    if out.strip():
        raise SystemExit(f"demo: {command}: {out.strip()}")
    return ms


def wait_durable(g, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for n in g.qmp.execute("query-named-block-nodes"):
            if n["node-name"] == "disk0":
                cks = n["image"]["format-specific"]["data"]["checkpoints"]
                if cks and all(c["durable"] for c in cks):
                    return
        time.sleep(0.02)
    raise SystemExit("demo: the checkpoint did not become durable")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="volume URL (default: a new sprite+file:// "
                    "volume under a temporary directory)")
    ap.add_argument("--size", default="256M")
    ap.add_argument("--memory", default="512M", help="guest RAM")
    ap.add_argument("--blob", type=int, default=64,
                    help="MiB of random data the guest keeps in memory")
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
        # Checked once: the guest build's up-to-date check is not part of
        # a boot or a restore.
        guest = dict(zip(("kernel", "initrd"), build_guest()))
        t = time.monotonic()
        with Guest(disk, memory=args.memory, **guest) as g:
            step(f"guest booted in {time.monotonic() - t:.1f} s "
                 f"({args.memory} of RAM)")
            g.check(f"dd if=/dev/urandom of=/tmp/blob bs=1M "
                    f"count={args.blob} 2>/dev/null")
            set_counter(g, 1)
            want = state(g)
            step(f"counter 1 in memory and on disk, {args.blob} MiB of random "
                 f"data in memory (md5 {want[2][:8]})")

            ms = hmp_ms(g, "savevm ck1")
            step(f"savevm ck1 (memory + disk): {ms:.0f} ms")
            set_counter(g, 2)
            if state(g)[:2] != (2, 2):
                raise SystemExit("demo: FAILED: counter did not change")
            ms = hmp_ms(g, "loadvm ck1")
            got = state(g)
            step(f"changed the counters to 2, loadvm ck1: {ms:.0f} ms, "
                 f"counters {got[0]} (memory) and {got[1]} (disk)")
            if got != want:
                step(f"FAILED: expected {want}, got {got}")
                return 1
            t = time.monotonic()
            wait_durable(g)
            step(f"ck1 durable on the object store "
                 f"{(time.monotonic() - t) * 1000:.0f} ms later")
            g.kill()

        shutil.rmtree(cache)
        step("killed QEMU and deleted the local cache: the VM now lives "
             "only in the object store")
        t = time.monotonic()
        # The dead QEMU still holds the volume's lease: take it over, as
        # an operator moving the VM to another host would.
        disk[1] += ",takeover=on"
        with Guest(disk + ["-loadvm", "ck1"], memory=args.memory,
                   wait_ready=False, **guest) as g:
            g.check("true")
            answered = time.monotonic() - t
            got = state(g)
            step(f"new QEMU with -loadvm ck1 answered in {answered:.1f} s: "
                 f"counters {got[0]} (memory) and {got[1]} (disk), md5 "
                 f"{got[2][:8]}")
            listing = g.qmp.execute("human-monitor-command",
                                    {"command-line": "info snapshots"})
        if got != want:
            step(f"FAILED: expected {want}, got {got}")
            return 1
        print(listing)
        info = subprocess.run([QEMU_IMG, "info", url], check=True,
                              capture_output=True, text=True,
                              env=env).stdout
        print(info)
        step("OK: memory and disk restored together, here and from the "
             "object store alone")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

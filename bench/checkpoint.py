#!/usr/bin/python3
"""Checkpoints of a running guest: sprite vs qcow2 internal snapshots.

The test guest (TCG) runs with `memory` of RAM and keeps `blob` MiB of
random data in memory (a tmpfs file), on a 1 GiB disk that is:

  qcow2        a qcow2 file on the local disk (-blockdev file + qcow2)
  sprite-file  a sprite volume on the embedded store (sprite+file://)
  sprite-rgw   a sprite volume on the test radosgw (when it runs)

For each, `reps` times (fresh guest each time), timed through HMP:

  save         savevm c1
  save again   1 MiB of memory changed, savevm c2
  load         loadvm c1
  durable      sprite: from the end of savevm c1 until the volume lists c1
               as durable on the object store (qcow2: 0, local file)
  restore      a new QEMU started with -loadvm c1, from exec to the guest
               answering a command; sprite with an empty cache (another
               host), qcow2 from the same file
  restore again  the same once more: sprite, with an empty cache again,
               now fetches c1's restore set (what the first restore read
               first) ahead; `restore_set_mib` says how much it was

and the bytes each checkpoint added: sprite's added-bytes, qcow2's VM
state size.  Medians are reported, with sprite/qcow2 ratios.

Run standalone:  bench/checkpoint.py [--quick]   (radosgw: under
tests/servers/with-servers)
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as c  # noqa: E402
from guest import Guest, build_guest  # noqa: E402  (tests/lib)

STEPS = ("save", "save_again", "load", "durable", "restore", "restore_again")


def params(quick: bool) -> dict:
    if quick:
        return {"memory": "256M", "blob": 32, "reps": 1}
    return {"memory": "1G", "blob": 256, "reps": 3}


def hmp_s(g, command: str) -> float:
    t = time.perf_counter()
    out = g.qmp.execute("human-monitor-command", {"command-line": command},
                        timeout=600)
    s = time.perf_counter() - t
    if out.strip():
        raise c.BenchError(f"{command}: {out.strip()}")
    return s


def sprite_checkpoints(g) -> list[dict]:
    for n in g.qmp.execute("query-named-block-nodes"):
        if n["node-name"] == "d0" and n["drv"] == "sprite":
            return n["image"]["format-specific"]["data"]["checkpoints"]
    return []


def wait_durable(g, name: str, timeout: float = 600) -> float:
    t = time.perf_counter()
    while time.perf_counter() - t < timeout:
        if any(ck["name"] == name and ck["durable"]
               for ck in sprite_checkpoints(g)):
            return time.perf_counter() - t
        time.sleep(0.005)
    raise c.BenchError(f"checkpoint {name} not durable after {timeout} s")


class Disk:
    def __init__(self, name: str, work: Path, prefix: str | None, env: dict):
        self.name, self.work, self.prefix, self.env = name, work, prefix, env
        self.rep = 0

    def create(self) -> None:
        self.rep += 1
        if self.prefix is None:
            self.path = self.work / f"disk{self.rep}.qcow2"
            c.run([c.QEMU_IMG, "create", "-f", "qcow2", self.path, "1G"])
        else:
            self.path = f"{self.prefix}{c.unique('bench-ckpt')}"
            c.run([c.QEMU_IMG, "create", "-f", "raw", self.path, "1G"],
                  env=self.env)
        self.cache = self.work / f"cache-{self.name}-{self.rep}"

    def args(self, takeover: bool = False) -> list[str]:
        if self.prefix is None:
            return ["-blockdev", f"file,filename={self.path},node-name=f0",
                    "-blockdev", "qcow2,file=f0,node-name=d0",
                    "-device", "virtio-blk-pci,drive=d0"]
        return ["-blockdev", f"driver=sprite,node-name=d0,url={self.path},"
                f"cache-dir={self.cache}{',takeover=on' if takeover else ''}",
                "-device", "virtio-blk-pci,drive=d0"]

    def forget_host(self) -> None:
        if self.prefix is not None:
            shutil.rmtree(self.cache, ignore_errors=True)


def one_rep(d: Disk, p: dict, guest: dict, log) -> dict:
    d.create()
    env = d.env if d.prefix else None
    out = {}
    with Guest(d.args(), memory=p["memory"], env=env, **guest) as g:
        g.check(f"dd if=/dev/urandom of=/tmp/blob bs=1M count={p['blob']} "
                "2>/dev/null")
        g.check("echo 1 >/tmp/counter")
        # Not the write-back of what an earlier rep left dirty.
        os.sync()
        out["save"] = hmp_s(g, "savevm c1")
        out["durable"] = wait_durable(g, "c1") if d.prefix else 0.0
        g.check("dd if=/dev/urandom of=/tmp/small bs=1M count=1 2>/dev/null")
        out["save_again"] = hmp_s(g, "savevm c2")
        out["load"] = hmp_s(g, "loadvm c1")
        if g.check("cat /tmp/counter").strip() != "1":
            raise c.BenchError("loadvm c1 did not restore the guest")
        cks = sprite_checkpoints(g)
        out["added_bytes"] = [ck["added-bytes"] for ck in cks]
        if d.prefix:
            wait_durable(g, "c2")
        g.kill()
    if not d.prefix:
        info = c.run([c.QEMU_IMG, "snapshot", "-l", d.path]).stdout
        out["added_bytes"] = vm_sizes(info)
    for step in ("restore", "restore_again"):
        d.forget_host()
        t = time.perf_counter()
        # The killed QEMU left its lease: the new host takes it over.
        with Guest(d.args(takeover=True) + ["-loadvm", "c1"],
                   memory=p["memory"], env=env, wait_ready=False,
                   **guest) as g:
            if g.check("cat /tmp/counter").strip() != "1":
                raise c.BenchError("-loadvm c1 did not restore the guest")
            out[step] = time.perf_counter() - t
            if d.prefix:
                out["restore_set_mib"] = next(
                    ck["restore-set-bytes"] for ck in sprite_checkpoints(g)
                    if ck["name"] == "c1") / c.MiB
    log(f"  checkpoint: {d.name} rep {d.rep}: " +
        ", ".join(f"{k} {out[k] * 1000:.0f} ms" for k in STEPS) +
        (f", restore set {out['restore_set_mib']:.0f} MiB" if d.prefix
         else ""))
    return out


def vm_sizes(listing: str) -> list[int]:
    """VM SIZE column of `qemu-img snapshot -l` in bytes."""
    units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    sizes = []
    for line in listing.splitlines()[2:]:
        f = line.split()
        if len(f) >= 4 and f[3] in units:
            sizes.append(int(float(f[2]) * units[f[3]]))
    return sizes


def run(quick: bool, work: Path, log=print) -> dict:
    p = params(quick)
    # Checked once here: the guest build's up-to-date check (0.4 s) is
    # not part of a restore.
    guest = dict(zip(("kernel", "initrd"), build_guest()))
    disks = [Disk("qcow2", work, None, dict(os.environ)),
             Disk("sprite-file", work, f"sprite+file://{work}/store/",
                  c.sprite_env(work / "xdg"))]
    (work / "store").mkdir()
    rgw = c.rgw_server()
    if rgw:
        disks.append(Disk("sprite-rgw", work,
                          f"sprite+http://{rgw.endpoint}/{rgw.bucket}/",
                          c.sprite_env(work / "xdg", rgw)))
    else:
        log("  checkpoint: sprite-rgw skipped: " + c.NEEDS_SERVERS)
    log(f"  checkpoint: guest with {p['memory']} RAM, {p['blob']} MiB random "
        f"data in memory, {p['reps']} reps per target")
    rows = []
    for d in disks:
        samples = [one_rep(d, p, guest, log) for _ in range(p["reps"])]
        med = {k: statistics.median(s[k] for s in samples) for k in STEPS}
        rows.append({"target": d.name, "median_s": med,
                     "added_bytes": samples[-1]["added_bytes"],
                     "restore_set_mib": [s.get("restore_set_mib")
                                         for s in samples],
                     "samples": samples})
    base = rows[0]["median_s"]
    for r in rows[1:]:
        r["ratio_vs_qcow2"] = {k: c.ratio(r["median_s"][k], base[k])
                               for k in STEPS if k != "durable"}
    if rgw:
        c.rgw_cleanup(rgw, "bench-ckpt", log)
    return {"params": p, "rows": rows}


def table(res: dict) -> str:
    rows = []
    for r in res["rows"]:
        m = r["median_s"]
        ratios = r.get("ratio_vs_qcow2", {})
        rows.append([r["target"]] + [m[k] * 1000 for k in STEPS] +
                    [ratios.get("save"), ratios.get("load"),
                     " / ".join(f"{b / c.MiB:.1f}" for b in r["added_bytes"])])
    return c.table(["checkpoint (ms, median)", "save", "save again", "load",
                    "durable after", "restore (new QEMU)", "restore again",
                    "save/qcow2", "load/qcow2", "MiB stored per ckpt"],
                   rows)


def plot(res: dict, path: Path) -> bool:
    groups = list(STEPS)
    return c.bars(path, "checkpoints of a TCG guest (median)", "ms", groups,
                  {r["target"]: [r["median_s"][k] * 1000 for k in STEPS]
                   for r in res["rows"]})


if __name__ == "__main__":
    sys.exit(c.standalone(run, table, plot, "checkpoint"))

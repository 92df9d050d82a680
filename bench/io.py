#!/usr/bin/python3
"""Warm 4 KiB I/O: sprite vs qcow2 vs raw on the same local disk.

For each of read/write x sequential/scattered x queue depth 1/32, every
target runs `qemu-img bench` back to back (interleaved, so drift in the
machine's state hits all alike), `reps` times.  The best run is kept
(other load on the machine only ever slows a run down); the median and
every sample are in the JSON too.

Targets, all in one work directory on the same filesystem:
  raw          a raw file          (-f raw FILE)
  raw-direct   the same file with O_DIRECT and Linux AIO (-t none -i native):
               no page cache and no thread pool, what a tuned VM would use
  qcow2        a qcow2 file        (-f qcow2 FILE)
  sprite-file  a sprite volume in the embedded store (-f raw sprite+file://...)
  sprite-rgw   the same on radosgw (-f raw sprite+http://...), when the
               test servers are up (tests/servers/with-servers)

Every image is first filled with data (1 MiB writes) and read once, so
that reads are served from a warm cache: the page cache for raw/qcow2,
sprite's segment cache (itself in the page cache) for sprite; reading
never-written blocks would measure only the zero path.  Host cache mode
is writeback (-t writeback) and the AIO backend QEMU's default thread
pool for all targets but raw-direct; the ratios compare sprite-file
with raw and qcow2 in that same mode.  "Scattered" uses a golden-ratio stride
(common.scatter_step) that visits each 4 KiB block of the working set
once per pass, consecutive requests ~40% of the image apart: not random,
but with no locality for read-ahead to exploit.  qemu-img bench times the
I/O loop only; writes are not flushed inside it (the close flushes),
for every target alike.

Run standalone: bench/io.py [--quick] [--json FILE] [--plot FILE]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as c  # noqa: E402

CASES = [(op, pat, qd) for op in ("read", "write") for pat in ("seq", "rand")
         for qd in (1, 32)]


def params(quick: bool) -> dict:
    # Write counts are multiples of 8192 (32 MiB of 4 KiB writes), the
    # pending size at which sprite uploads a segment without a flush, so
    # a sprite write run contains a whole number of those uploads.
    if quick:
        return {"working_set": 16 * c.MiB, "count_qd1": 2000,
                "count_qd32": 4000, "reps": 1}
    return {"working_set": 64 * c.MiB, "count_qd1": 16384,
            "count_qd32": 32768, "reps": 3}


def make_targets(work: Path, size: int, log) -> list[c.Target]:
    raw, qcow = work / "disk.raw", work / "disk.qcow2"
    c.run([c.QEMU_IMG, "create", "-f", "raw", raw, size])
    c.run([c.QEMU_IMG, "create", "-f", "qcow2", qcow, size])
    (work / "store").mkdir()
    env = c.sprite_env(work / "cache-file")
    url = f"sprite+file://{work}/store/io"
    c.run([c.QEMU_IMG, "create", "-f", "raw", url, size], env=env)
    targets = [c.Target("raw", ["-f", "raw", str(raw)]),
               c.Target("raw-direct", ["-f", "raw", str(raw)], cache="none",
                        aio="native"),
               c.Target("qcow2", ["-f", "qcow2", str(qcow)]),
               c.Target("sprite-file", ["-f", "raw", url], env)]
    rgw = c.rgw_server()
    if rgw:
        env = c.sprite_env(work / "cache-rgw", rgw)
        url = f"sprite+http://{rgw.endpoint}/{rgw.bucket}/{c.unique('bench-io')}"
        c.run([c.QEMU_IMG, "create", "-f", "raw", url, size], env=env)
        targets.append(c.Target("sprite-rgw", ["-f", "raw", url], env))
        targets[-1].cleanup = lambda: c.rgw_cleanup(
            rgw, url.rsplit("/", 1)[1] + "/", log)
    else:
        log("  io: sprite-rgw skipped: " + c.NEEDS_SERVERS)
    return targets


def run(quick: bool, work: Path, log=print) -> dict:
    p = params(quick)
    targets = make_targets(work, p["working_set"], log)
    try:
        rows = measure(p, targets, log)
    finally:
        for t in targets:   # leave radosgw's memstore as we found it
            if hasattr(t, "cleanup"):
                t.cleanup()
    return {"params": p, "targets": [t.name for t in targets], "rows": rows,
            "method": "qemu-img bench -t writeback, default (thread pool) "
                      "AIO, best of reps; rand = golden-ratio stride"}


def measure(p: dict, targets: list[c.Target], log) -> list[dict]:
    ws = p["working_set"]
    for t in targets:
        log(f"  io: fill and warm {t.name} ({ws // c.MiB} MiB)")
        c.qemu_img_bench(t, count=ws // c.MiB, depth=4, size=c.MiB,
                         write=True, pattern=0xA5)
        c.qemu_img_bench(t, count=ws // c.MiB, depth=4, size=c.MiB)
    rows = []
    for op, pat, qd in CASES:
        name = f"{op} {pat} 4k QD{qd}"
        count = p["count_qd1"] if qd == 1 else p["count_qd32"]
        step = c.scatter_step(ws) if pat == "rand" else None
        samples = {t.name: [] for t in targets}
        for _ in range(p["reps"]):
            for t in targets:
                r = c.qemu_img_bench(t, count=count, depth=qd, step=step,
                                     write=op == "write", pattern=0x5A)
                samples[t.name].append(r["iops"])
        res = {n: {"iops": max(v), "mbps": max(v) * 4096 / 1e6,
                   "median_iops": statistics.median(v), "samples": v}
               for n, v in samples.items()}
        row = {"case": name, "op": op, "pattern": pat, "depth": qd,
               "count": count, "results": res,
               "sprite/raw": c.ratio(res["sprite-file"]["iops"], res["raw"]["iops"]),
               "sprite/qcow2": c.ratio(res["sprite-file"]["iops"], res["qcow2"]["iops"])}
        if "sprite-rgw" in res:
            row["sprite-rgw/raw"] = c.ratio(res["sprite-rgw"]["iops"], res["raw"]["iops"])
        rows.append(row)
        log(f"  io: {name}: " + ", ".join(f"{n} {c.fmt(r['iops'])} IOPS"
                                          for n, r in res.items()))
    return rows


def table(res: dict) -> str:
    names = res["targets"]
    hdr = ["warm 4 KiB (IOPS, best of reps)"] + names + ["sprite/raw", "sprite/qcow2"]
    if "sprite-rgw" in names:
        hdr.append("rgw/raw")
    rows = []
    for r in res["rows"]:
        row = [r["case"]] + [r["results"][n]["iops"] for n in names]
        row += [r["sprite/raw"], r["sprite/qcow2"]]
        if "sprite-rgw" in names:
            row.append(r["sprite-rgw/raw"])
        rows.append(row)
    return c.table(hdr, rows)


def plot(res: dict, path: Path) -> bool:
    groups = [r["case"] for r in res["rows"]]
    series = {n: [r["results"][n]["iops"] for r in res["rows"]]
              for n in res["targets"]}
    return c.bars(path, "Warm 4 KiB I/O (qemu-img bench)", "IOPS", groups,
                  series)


if __name__ == "__main__":
    sys.exit(c.standalone(run, table, plot, "io"))

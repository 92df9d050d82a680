#!/usr/bin/python3
"""Opening a volume with many extents: from the object store alone.

A 1 GiB volume gets N separate extents (qemu-img bench: N writes of
512 bytes, 8 KiB apart, then a flush), and is closed, which uploads a
metadata snapshot.  Then, `reps` times, the best of each kept:

  cold   qemu-img info with an empty cache: the snapshot is fetched and
         the extent map loaded (what a fresh host does)
  warm   qemu-img info with the cache in place
  qcow2  qemu-img info of a qcow2 file given the same N writes (the
         local alternative; its metadata is in the file)

qemu-img info's time includes the process; `info` of a raw file is the
floor, reported as `process`.  N is 100k (10k with --quick) on the file
store, and on radosgw when it runs.

Run standalone:  bench/open.py [--quick]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as c  # noqa: E402


def params(quick: bool) -> dict:
    return {"extents": 10000 if quick else 100000, "reps": 3}


def write_extents(args: list[str], n: int, env=None) -> None:
    c.run([c.QEMU_IMG, "bench", "-w", "-c", str(n), "-s", "512", "-S",
           "8192", "-d", "1", "-t", "writeback", "-f", "raw"] + args,
          env=env)


def best_of(reps: int, fn) -> float:
    return min(fn() for _ in range(reps))


def run(quick: bool, work: Path, log=print) -> dict:
    p = params(quick)
    n = p["extents"]
    qcow = work / "ref.qcow2"
    raw = work / "empty.raw"
    c.run([c.QEMU_IMG, "create", "-f", "qcow2", qcow, "1G"])
    c.run([c.QEMU_IMG, "create", "-f", "raw", raw, "1G"])
    write_extents([str(qcow)], n)
    qcow2_s = best_of(p["reps"], lambda: c.timed([c.QEMU_IMG, "info", qcow]))
    process_s = best_of(p["reps"], lambda: c.timed([c.QEMU_IMG, "info", raw]))

    rows = []
    for name, prefix, env in c.stores(work, work / "xdg", "open", log):
        url = prefix + c.unique("bench-open")
        c.run([c.QEMU_IMG, "create", "-f", "raw", url, "1G"], env=env)
        log(f"  open: {name}: writing {n} extents")
        write_extents([url], n, env)

        def cold():
            shutil.rmtree(work / "xdg" / "sprite", ignore_errors=True)
            return c.timed([c.QEMU_IMG, "info", url], env=env)

        cold_s = best_of(p["reps"], cold)
        warm_s = best_of(p["reps"], lambda: c.timed([c.QEMU_IMG, "info", url],
                                                    env=env))
        rows.append({"store": name, "cold_s": cold_s, "warm_s": warm_s,
                     "cold_vs_qcow2": c.ratio(cold_s, qcow2_s),
                     "warm_vs_qcow2": c.ratio(warm_s, qcow2_s)})
        log(f"  open: {name}: cold {cold_s * 1000:.0f} ms, warm "
            f"{warm_s * 1000:.0f} ms")
    if c.rgw_server():
        c.rgw_cleanup(c.rgw_server(), "bench-open", log)
    return {"params": p, "qcow2_s": qcow2_s, "process_s": process_s,
            "rows": rows}


def table(res: dict) -> str:
    n = res["params"]["extents"]
    rows = [[r["store"], r["cold_s"] * 1000, r["warm_s"] * 1000,
             res["qcow2_s"] * 1000, r["cold_vs_qcow2"], r["warm_vs_qcow2"],
             res["process_s"] * 1000] for r in res["rows"]]
    return c.table([f"open, {n} extents (ms, best)", "cold (empty cache)",
                    "warm", "qcow2", "cold/qcow2", "warm/qcow2",
                    "process (raw)"], rows)


def plot(res: dict, path: Path) -> bool:
    groups = [r["store"] for r in res["rows"]]
    return c.bars(path, f"qemu-img info, {res['params']['extents']} extents",
                  "ms", groups,
                  {"cold": [r["cold_s"] * 1000 for r in res["rows"]],
                   "warm": [r["warm_s"] * 1000 for r in res["rows"]],
                   "qcow2": [res["qcow2_s"] * 1000 for _ in res["rows"]]})


if __name__ == "__main__":
    sys.exit(c.standalone(run, table, plot, "open"))

#!/usr/bin/python3
"""Clone creation time: from a 1 GiB base vs from a 100 GiB base.

Two empty base volumes (1 GiB and 100 GiB; volumes are sparse, so both
are cheap) are created in each store: the embedded file store and, when
the test servers are up, radosgw.  Then, alternating between the bases,
N clones are timed with
    qemu-img create -f raw -o base=BASE_URL CLONE_URL SIZE
(SIZE = the base's: qemu-img itself refuses a create without a size;
wall clock, qemu-img's start-up included), and for reference N plain
creates of a 1 GiB volume without base.  Creation must be flat in the
base's size: the ratio 100 GiB / 1 GiB should be ~1.

Note: the bases hold no data.  Creating a clone stores a reference to
the base's newest segment; whether its cost depends on how much the base
has written is a separate question that this does not measure.

Run standalone: [tests/servers/with-servers] bench/create.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as c  # noqa: E402


def params(quick: bool) -> dict:
    return {"clones": 3 if quick else 15}


def run(quick: bool, work: Path, log=print) -> dict:
    n = params(quick)["clones"]
    rows = []
    for name, prefix, env in c.stores(work, work / "cache-create", "create",
                                      log):
        tag = c.unique("bench-create")
        base = {"1G": prefix + tag + "-base1g", "100G": prefix + tag + "-base100g"}
        c.run([c.QEMU_IMG, "create", "-f", "raw", base["1G"], "1G"], env=env)
        c.run([c.QEMU_IMG, "create", "-f", "raw", base["100G"], "100G"], env=env)
        log(f"  create: {name}: {n} clones of each base, {n} plain creates")
        times = {"1G": [], "100G": [], "none": []}
        for i in range(n):
            for b in ("1G", "100G"):
                times[b].append(c.timed(
                    [c.QEMU_IMG, "create", "-f", "raw", "-o",
                     f"base={base[b]}", f"{prefix}{tag}-clone{b}-{i}", b],
                    env=env))
            times["none"].append(c.timed(
                [c.QEMU_IMG, "create", "-f", "raw", f"{prefix}{tag}-plain-{i}",
                 "1G"], env=env))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"store": name, "median_s": med, "samples": times,
                     "ratio_100g_1g": c.ratio(med["100G"], med["1G"])})
        if name == "rgw":
            c.rgw_cleanup(c.rgw_server(), tag, log)
    return {"params": params(quick), "rows": rows}


def table(res: dict) -> str:
    ms = 1000
    rows = [[r["store"], r["median_s"]["1G"] * ms, r["median_s"]["100G"] * ms,
             r["ratio_100g_1g"], r["median_s"]["none"] * ms]
            for r in res["rows"]]
    return c.table(["create clone (ms, median)", "base 1 GiB", "base 100 GiB",
                    "100G/1G", "no base"], rows)


def plot(res: dict, path: Path) -> bool:
    groups = [r["store"] for r in res["rows"]]
    return c.bars(path, "qemu-img create (median, process included)", "ms",
                  groups,
                  {k: [r["median_s"][b] * 1000 for r in res["rows"]]
                   for k, b in (("clone of 1 GiB base", "1G"),
                                ("clone of 100 GiB base", "100G"),
                                ("no base", "none"))})


if __name__ == "__main__":
    sys.exit(c.standalone(run, table, plot, "create"))

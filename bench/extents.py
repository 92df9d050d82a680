#!/usr/bin/python3
"""The extent map's cost: memory per extent and lookup time.

bench/extmap.c (built as build/sprite/bench/extmap-bench) fills an
in-memory extent map with N extents of 4 KiB separated by 4 KiB holes,
so none merge, and times random lookups (half hit an extent, half a
hole) against the same lookups by binary search in a sorted array of
the extents: the least an index of extents can cost.  Memory is what
the map allocated (glibc's mallinfo2: bytes in use, malloc's overhead
included).  The map of an
open volume holds every extent of its live map like this.

Run standalone: bench/extents.py [--quick]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as c  # noqa: E402

BINARY = c.REPO / "build" / "sprite" / "bench" / "extmap-bench"


def params(quick: bool) -> dict:
    if quick:
        return {"extents": [10_000, 100_000], "lookups": 100_000}
    return {"extents": [10_000, 100_000, 1_000_000], "lookups": 1_000_000}


def run(quick: bool, work: Path, log=print) -> dict:
    p = params(quick)
    if not BINARY.exists():
        raise c.BenchError(f"{BINARY} missing: build with ci/build.sh")
    rows = []
    for n in p["extents"]:
        log(f"  extents: {n:,} extents, {p['lookups']:,} lookups")
        out = c.run([BINARY, str(n), str(p["lookups"])]).stdout
        r = json.loads(out)
        r["ratio"] = c.ratio(r["lookup_ns"], r["bsearch_ns"])
        rows.append(r)
    return {"params": p, "rows": rows}


def table(res: dict) -> str:
    rows = [[r["extents"], r["bytes_per_extent"], r["insert_ns"],
             r["lookup_ns"], r["bsearch_ns"], r["ratio"]]
            for r in res["rows"]]
    return c.table(["extent map", "bytes/extent", "insert ns",
                    "lookup ns", "sorted array ns", "map/array"], rows)


def plot(res: dict, path: Path) -> bool:
    groups = [f"{r['extents']:,}" for r in res["rows"]]
    return c.bars(path, "extent lookup (random, mean)", "ns", groups,
                  {"extent map": [r["lookup_ns"] for r in res["rows"]],
                   "sorted array": [r["bsearch_ns"] for r in res["rows"]]})


if __name__ == "__main__":
    sys.exit(c.standalone(run, table, plot, "extents"))

#!/usr/bin/python3
"""Run Sprite's benchmarks and report them side by side.

    bench/run.py [--quick] [--out DIR] [--no-plots] [BENCH...]
    tests/servers/with-servers bench/run.py          # with radosgw

BENCH is any of io, flush, cold, create, open, extents, checkpoint
(default: all, in that order).
Each prints its progress, then its table; the results go to
DIR/latest.json (default bench/results/) and one PNG per benchmark to
DIR/<bench>.png.  --quick uses small counts (well under a minute for
all).  Benchmarks that need radosgw (flush, cold, and the sprite-rgw
target of io and create) are skipped, and say so, unless the
SPRITE_TEST_RGW_* variables describe a server that answers, as under
tests/servers/with-servers.  See docs/performance.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common as c  # noqa: E402

BENCHES = ("io", "flush", "cold", "create", "open", "extents", "checkpoint")


def load(name: str):
    """Import bench/<name>.py as module bench_<name>: a plain `import io`
    would return the standard library's io, which Python loads first."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def machine() -> dict:
    def out(args):
        try:
            return subprocess.run(args, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except OSError:
            return ""
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "host": platform.node(), "cpus": os.cpu_count(), "cpu": cpu,
            "kernel": platform.release(),
            "qemu": out([str(c.QEMU_IMG), "--version"]).splitlines()[0:1],
            "commit": out(["git", "-C", str(c.REPO), "rev-parse", "--short",
                           "HEAD"]),
            "rgw": c.rgw_server() is not None, "loadavg_start": os.getloadavg()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("benches", nargs="*", metavar="BENCH",
                    help="io, flush, cold, create, open, checkpoint (default: all)")
    ap.add_argument("--quick", action="store_true",
                    help="small counts: a smoke run, numbers are rough")
    ap.add_argument("--out", type=Path, default=c.RESULTS,
                    help="directory for latest.json and the PNGs")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where images and caches go (default: a new "
                         "directory under $TMPDIR, removed at the end)")
    a = ap.parse_args(argv)
    names = a.benches or list(BENCHES)
    for n in names:
        if n not in BENCHES:
            ap.error(f"unknown benchmark {n!r}: choose from {', '.join(BENCHES)}")
    c.check_tools()

    results = {"meta": dict(machine(), quick=a.quick, benches=names)}
    print(f"sprite bench: {', '.join(names)}{' (quick)' if a.quick else ''}; "
          f"{results['meta']['cpus']} CPUs; radosgw "
          f"{'up' if results['meta']['rgw'] else 'absent'}", flush=True)
    tables, failed = [], []
    t_all = time.monotonic()
    for name in names:
        mod = load(name)
        print(f"[{name}] running", flush=True)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"sprite-bench-{name}-",
                                         dir=a.workdir) as work:
            try:
                res = mod.run(a.quick, Path(work), lambda m: print(m, flush=True))
            except Exception as e:   # report, keep going with the others
                traceback.print_exc()
                res = {"error": f"{type(e).__name__}: {e}"}
                failed.append(name)
        res["elapsed_s"] = time.monotonic() - t0
        results[name] = res
        if "error" not in res:
            tables.append(f"== {name} ==\n{mod.table(res)}")
            if not a.no_plots:
                png = a.out / f"{name}.png"
                if mod.plot(res, png):
                    res["plot"] = str(png)
        print(f"[{name}] done in {res['elapsed_s']:.1f} s", flush=True)
        c.write_json(a.out / "latest.json", results)   # partial results too
    results["meta"]["elapsed_s"] = time.monotonic() - t_all
    results["meta"]["loadavg_end"] = os.getloadavg()
    c.write_json(a.out / "latest.json", results)
    print()
    print("\n\n".join(tables))
    if not a.no_plots and c.pyplot() is None:
        print("\nplots skipped: matplotlib not importable (use /usr/bin/python3 "
              "with Debian's python3-matplotlib)")
    print(f"\nresults: {a.out / 'latest.json'} "
          f"({results['meta']['elapsed_s']:.1f} s)")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

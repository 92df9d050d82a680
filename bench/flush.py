#!/usr/bin/python3
"""4 KiB write + flush latency on sprite (radosgw) vs one 4 KiB PUT.

sprite: one qemu-io process on a sprite+http:// volume on the test
radosgw reads commands from a pipe; each iteration sends
`write -q -P N OFF 4k` then `flush` and times each until qemu-io prints
its prompt again (common.QemuIO).  A guest flush on sprite uploads the
pending writes as one segment object (conditional PUT), records it in
SQLite, and every 64 segments also uploads a metadata snapshot, so the
p99 includes those.  The pipe round trip itself is measured with
`length` (a command that does no I/O) and reported as overhead.

baseline: a PUT of 4 KiB of random bytes to a fresh key on the same
server and bucket, with tests/lib/s3servers.S3Client (SigV4 in Python,
a new TCP connection per request), N times.

Median and p99 of each, and the ratios sprite/PUT.
Run standalone under the servers:
  tests/servers/with-servers bench/flush.py [--quick] [--json FILE]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as c  # noqa: E402


def params(quick: bool) -> dict:
    return {"iterations": 20 if quick else 200, "volume_size": 64 * c.MiB}


def run(quick: bool, work: Path, log=print) -> dict:
    p = params(quick)
    rgw = c.rgw_server()
    if rgw is None:
        log("  flush: skipped: " + c.NEEDS_SERVERS)
        return {"params": p, "skipped": c.NEEDS_SERVERS}
    n = p["iterations"]
    env = c.sprite_env(work / "cache-flush", rgw)
    vol = c.unique("bench-flush")
    url = f"sprite+http://{rgw.endpoint}/{rgw.bucket}/{vol}"
    c.run([c.QEMU_IMG, "create", "-f", "raw", url, p["volume_size"]], env=env)

    log(f"  flush: {n} x (4 KiB write + flush) on {url}")
    # -t writeback: qemu-io defaults to writethrough (a flush after every write)
    q = c.QemuIO(["-t", "writeback", "-f", "raw", url], env=env)
    writes, flushes, totals, overhead = [], [], [], []
    try:
        for i in range(min(n, 50)):
            overhead.append(q.cmd("length")[1])
        q.cmd("write -q 0 4k")      # first write/flush: warms the connection
        q.cmd("flush")
        for i in range(n):
            off = (i * 4096) % p["volume_size"]
            _, w = q.cmd(f"write -q -P {i % 256} {off} 4k")
            _, f = q.cmd("flush")
            writes.append(w)
            flushes.append(f)
            totals.append(w + f)
    finally:
        rc = q.close()
    if rc != 0:
        raise c.BenchError(f"qemu-io exited with {rc}")

    log(f"  flush: {n} x PUT 4 KiB with S3Client")
    s3 = rgw.client()
    puts = []
    s3.put_object(rgw.bucket, f"{vol}-put/warm", os.urandom(4096))
    for i in range(n):
        data = os.urandom(4096)
        t0 = time.perf_counter()
        s3.put_object(rgw.bucket, f"{vol}-put/{i}", data)
        puts.append(time.perf_counter() - t0)
    c.rgw_cleanup(rgw, vol, log)   # leave the memstore OSD as we found it

    res = {"params": p, "server": "radosgw " + rgw.endpoint,
           "sprite_write": c.summary(writes),
           "sprite_flush": c.summary(flushes),
           "sprite_write_flush": c.summary(totals),
           "put_4k": c.summary(puts),
           "pipe_overhead": c.summary(overhead)}
    res["ratio_median"] = c.ratio(res["sprite_write_flush"]["median"],
                                  res["put_4k"]["median"])
    res["ratio_p99"] = c.ratio(res["sprite_write_flush"]["p99"],
                               res["put_4k"]["p99"])
    res["samples"] = {"write_flush": totals, "put": puts}
    return res


def table(res: dict) -> str:
    if "skipped" in res:
        return "flush: skipped: " + res["skipped"]
    ms = 1000
    rows = [[k, res[key]["median"] * ms, res[key]["p99"] * ms,
             res[key]["max"] * ms]
            for k, key in (("sprite write 4 KiB", "sprite_write"),
                           ("sprite flush", "sprite_flush"),
                           ("sprite write+flush", "sprite_write_flush"),
                           ("PUT 4 KiB (S3Client)", "put_4k"),
                           ("qemu-io pipe overhead", "pipe_overhead"))]
    rows.append(["ratio write+flush / PUT", res["ratio_median"],
                 res["ratio_p99"], None])
    return c.table(["latency (ms)", "median", "p99", "max"], rows)


def plot(res: dict, path: Path) -> bool:
    if "skipped" in res:
        return False
    keys = [("sprite write+flush", "sprite_write_flush"), ("PUT 4 KiB", "put_4k")]
    return c.bars(path, f"4 KiB write+flush vs PUT ({res['server']})", "ms",
                  ["median", "p99"],
                  {k: [res[key]["median"] * 1000, res[key]["p99"] * 1000]
                   for k, key in keys})


if __name__ == "__main__":
    sys.exit(c.standalone(run, table, plot, "flush"))

#!/usr/bin/python3
"""Cold reads from radosgw: sprite with an empty cache vs parallel GETs.

A volume on the test radosgw is filled once with 1 MiB writes (so its
segments hold the volume in order) and closed.  Then, each time after
deleting the whole cache directory (segments and the SQLite map), and
`reps` times alternating sprite and baseline (the best of each is kept):

  seq QDn  sprite: qemu-img bench, 1 MiB reads at QD n (1 and 8), the
           whole volume in order
           baseline: the same byte ranges of the segment objects, 1 MiB
           ranged GETs from n threads
  rand QDn sprite: qemu-img bench, R reads of 4 KiB at QD n (1 and 32),
           golden-ratio stride over the volume (common.scatter_step)
           baseline: the same R 4 KiB ranges as ranged GETs from n threads

The baseline reads exactly the bytes sprite has to return, located by
parsing the segment headers (docs/format.md), with tests/lib/s3servers
S3Client (Python, one TCP connection per request).  qemu-img bench's
time excludes opening the volume; the cold open (restoring the map from
the store) is timed separately as `qemu-img info` with an empty cache.
After each sprite run the bytes present in the cache's segment files
are summed: what sprite fetched to serve the run (read-ahead included).

Run standalone under the servers:
  tests/servers/with-servers bench/cold.py [--quick] [--json FILE]
"""

from __future__ import annotations

import concurrent.futures
import shutil
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as c  # noqa: E402

SEQ_REQ, SEQ_DEPTH = c.MiB, 8


def params(quick: bool) -> dict:
    if quick:
        return {"volume_size": 32 * c.MiB, "rand_count": 16, "reps": 1}
    return {"volume_size": 256 * c.MiB, "rand_count": 128, "reps": 3}


def segment_map(s3, bucket: str, vol: str) -> list[tuple]:
    """(volume offset, length, key, object offset) of every DATA record,
    in segment order (later records win), from the segment headers."""
    out = []
    for o in s3.list_objects(bucket, f"{vol}/seg/"):
        head = s3.get_object(bucket, o["key"], (0, 4095))
        hlen, = struct.unpack_from("<I", head, 12)
        nrec, = struct.unpack_from("<I", head, 32)
        if 64 + 32 * nrec > len(head):
            head = s3.get_object(bucket, o["key"], (0, hlen - 1))
        for i in range(nrec):
            voff, ln, doff, kind = struct.unpack_from("<QQQI", head, 64 + 32 * i)
            if kind == 1:
                out.append((voff, ln, o["key"], hlen + doff))
    return out


def locate(smap, off: int, length: int) -> list[tuple[str, int, int]]:
    """The (key, first byte, last byte) ranges holding volume bytes
    [off, off + length)."""
    pieces, end = [], off + length
    while off < end:
        for voff, ln, key, ooff in reversed(smap):
            if voff <= off < voff + ln:
                n = min(end, voff + ln) - off
                start = ooff + off - voff
                pieces.append((key, start, start + n - 1))
                off += n
                break
        else:
            raise c.BenchError(f"volume offset {off} is not mapped")
    return pieces


def parallel_gets(s3, bucket, ranges, threads: int) -> float:
    """Seconds to GET every (key, first, last) range with `threads` workers."""
    def get(r):
        key, a, b = r
        if len(s3.get_object(bucket, key, (a, b))) != b - a + 1:
            raise c.BenchError(f"short GET {key} {a}-{b}")
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(get, ranges))
    return time.perf_counter() - t0


def cached_bytes(cache_home: Path) -> int:
    """Bytes allocated to segment files in the cache (they are sparse)."""
    total = 0
    for p in (cache_home / "sprite").glob("*/seg/*"):
        total += p.stat().st_blocks * 512
    return total


def run(quick: bool, work: Path, log=print) -> dict:
    p = params(quick)
    rgw = c.rgw_server()
    if rgw is None:
        log("  cold: skipped: " + c.NEEDS_SERVERS)
        return {"params": p, "skipped": c.NEEDS_SERVERS}
    cache = work / "cache-cold"
    vol = c.unique("bench-cold")
    url = f"sprite+http://{rgw.endpoint}/{rgw.bucket}/{vol}"
    t = c.Target("sprite-rgw", ["-f", "raw", url], c.sprite_env(cache, rgw))
    try:
        return measure(p, t, rgw, vol, cache, log)
    finally:
        shutil.rmtree(cache / "sprite", ignore_errors=True)
        c.rgw_cleanup(rgw, vol, log)


def measure(p: dict, t: c.Target, rgw, vol: str, cache: Path, log) -> dict:
    """Fill the volume, then time each case (see the module's doc)."""
    size, url, env = p["volume_size"], t.args[-1], t.env
    s3 = rgw.client()
    log(f"  cold: fill {size // c.MiB} MiB on {url}")
    c.run([c.QEMU_IMG, "create", "-f", "raw", url, size], env=env)
    c.qemu_img_bench(t, count=size // c.MiB, depth=4, size=c.MiB, write=True,
                     pattern=0xC3)
    smap = segment_map(s3, rgw.bucket, vol)

    def empty_cache():
        shutil.rmtree(cache / "sprite", ignore_errors=True)

    empty_cache()
    cold_open = c.timed([c.QEMU_IMG, "info", "-f", "raw", url], env=env)
    warm_open = c.timed([c.QEMU_IMG, "info", "-f", "raw", url], env=env)

    rows = []
    step = c.scatter_step(size)
    cases = [("seq 1 MiB QD1", SEQ_REQ, 1, size // SEQ_REQ, None),
             ("seq 1 MiB QD8", SEQ_REQ, SEQ_DEPTH, size // SEQ_REQ, None),
             ("rand 4 KiB QD1", 4096, 1, p["rand_count"], step),
             ("rand 4 KiB QD32", 4096, 32, p["rand_count"], step)]
    for name, req, depth, count, st in cases:
        log(f"  cold: {name}: sprite, then {depth} threads of ranged GETs"
            f" (x{p['reps']})")
        offs = [(i * (st or req)) % size for i in range(count)]
        ranges = [x for o in offs for x in locate(smap, o, req)]
        nbytes = count * req
        sprite, gets = [], []
        for _ in range(p["reps"]):   # alternate; keep the best of each
            empty_cache()
            sprite.append(c.qemu_img_bench(t, count=count, depth=depth,
                                           size=req, step=st))
            fetched = cached_bytes(cache)
            gets.append(parallel_gets(s3, rgw.bucket, ranges, depth))
        r = max(sprite, key=lambda x: x["mbps"])
        secs = min(gets)
        base = {"seconds": secs, "mbps": nbytes / secs / 1e6,
                "iops": count / secs, "requests": len(ranges)}
        rows.append({"case": name, "bytes": nbytes, "sprite": r,
                     "sprite_fetched_bytes": fetched, "get": base,
                     "sprite/get": c.ratio(r["mbps"], base["mbps"]),
                     "samples": {"sprite_s": [x["seconds"] for x in sprite],
                                 "get_s": gets}})
    return {"params": p, "server": "radosgw " + rgw.endpoint,
            "segments": len({k for _, _, k, _ in smap}),
            "cold_open_s": cold_open, "warm_open_s": warm_open, "rows": rows}


def table(res: dict) -> str:
    if "skipped" in res:
        return "cold: skipped: " + res["skipped"]
    rows = [[r["case"], r["bytes"] / c.MiB, r["sprite"]["mbps"],
             r["get"]["mbps"], r["sprite/get"], r["sprite"]["iops"],
             r["get"]["iops"], r["sprite_fetched_bytes"] / c.MiB]
            for r in res["rows"]]
    t = c.table(["cold read (best of reps)", "MiB", "sprite MB/s", "GETs MB/s",
                 "sprite/GETs", "sprite IOPS", "GETs IOPS",
                 "sprite fetched MiB"], rows)
    return (t + f"\nopen with empty cache (qemu-img info): "
            f"{res['cold_open_s'] * 1000:.0f} ms, warm: "
            f"{res['warm_open_s'] * 1000:.0f} ms ({res['segments']} segments)")


def plot(res: dict, path: Path) -> bool:
    if "skipped" in res:
        return False
    groups = [r["case"] for r in res["rows"]]
    return c.bars(path, f"Cold reads ({res['server']})", "MB/s", groups,
                  {"sprite (empty cache)": [r["sprite"]["mbps"] for r in res["rows"]],
                   "parallel ranged GETs": [r["get"]["mbps"] for r in res["rows"]]},
                  log=True)


if __name__ == "__main__":
    sys.exit(c.standalone(run, table, plot, "cold"))

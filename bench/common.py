"""Shared helpers for Sprite's benchmarks (stdlib only).

Paths to the patched tools, a runner for `qemu-img bench`, an interactive
`qemu-io` driver for per-request latencies, statistics, text tables, the
radosgw server from the test environment, and optional matplotlib plots.

Every benchmark module (io.py, flush.py, cold.py, create.py) exposes
`run(quick, workdir, log) -> dict`, `table(result) -> str` and
`plot(result, path) -> bool`; bench/run.py drives them.
"""

from __future__ import annotations

import json
import os
import re
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QEMU_DIR = REPO / "build" / "qemu"
QEMU_IMG = QEMU_DIR / "qemu-img"
QEMU_IO = QEMU_DIR / "qemu-io"
RESULTS = REPO / "bench" / "results"

sys.path.insert(0, str(REPO / "tests" / "lib"))
import s3servers  # noqa: E402  (S3Client, Server.from_env)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CMD_TIMEOUT = 600   # seconds: no single tool invocation may take longer


class BenchError(RuntimeError):
    """A tool failed; the message carries its command line and output."""


def check_tools() -> None:
    for tool in (QEMU_IMG, QEMU_IO):
        if not os.access(tool, os.X_OK):
            raise BenchError(f"{tool} not found: build first (ci/build.sh)")


def run(args, env=None, timeout=CMD_TIMEOUT) -> subprocess.CompletedProcess:
    """Run a command to completion; raise BenchError if it fails."""
    args = [str(a) for a in args]
    try:
        r = subprocess.run(args, capture_output=True, text=True, env=env,
                           timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"timed out after {timeout} s: {' '.join(args)}") from e
    if r.returncode != 0:
        raise BenchError(f"failed ({r.returncode}): {' '.join(args)}\n"
                         f"{r.stdout}{r.stderr}")
    return r


def timed(args, env=None) -> float:
    """Wall-clock seconds of one successful command (process included)."""
    t0 = time.perf_counter()
    run(args, env=env)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------
# Targets: how qemu-img / qemu-io name an image, and their environment

class Target:
    """An image as the tools open it: `args` end a qemu-img command (e.g.
    ["-f", "raw", path]); `cache` and `aio` are qemu-img bench's -t and -i
    (None: QEMU's default, the thread pool)."""

    def __init__(self, name: str, args: list[str], env: dict | None = None,
                 cache: str = "writeback", aio: str | None = None):
        self.name, self.args, self.env = name, args, env or dict(os.environ)
        self.cache, self.aio = cache, aio


def sprite_env(cache_home: Path, server=None) -> dict:
    """Environment for the tools on a sprite volume: the cache under
    `cache_home` (XDG_CACHE_HOME) and, for S3, the server's credentials."""
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_home))
    if server is not None:
        env.update(AWS_ACCESS_KEY_ID=server.access_key,
                   AWS_SECRET_ACCESS_KEY=server.secret_key)
    return env


def rgw_server():
    """The radosgw of tests/servers/with-servers, or None outside it."""
    s = s3servers.Server.from_env("RGW")
    if s is None or not s3servers.answers(s.endpoint):
        return None
    return s


def rgw_cleanup(server, prefix: str, log=print) -> None:
    """Delete every object under `prefix`, then ask radosgw to garbage
    collect now: it keeps the tails of deleted objects larger than 4 MiB
    for hours, and the test OSD is a memstore of a few GiB.  Best effort:
    a failure is logged, never raised."""
    try:
        server.client().empty_bucket(server.bucket, prefix)
    except (OSError, s3servers.S3Error) as e:
        log(f"  cleanup of {prefix} failed: {e}")
    conf = Path(os.environ.get("SPRITE_TEST_SERVERS_DIR", "/nonexistent")) / "rgw" / "ceph.conf"
    if conf.exists():
        try:
            subprocess.run(["radosgw-admin", "-c", str(conf), "-n", "client.rgw.a",
                            "gc", "process", "--include-all"],
                           capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            log(f"  radosgw-admin gc process failed: {e}")


NEEDS_SERVERS = ("needs radosgw: run under tests/servers/with-servers "
                 "(SPRITE_TEST_RGW_* not set or not answering)")


def stores(work: Path, cache_home: Path, bench: str,
           log=print) -> list[tuple[str, str, dict]]:
    """(name, URL prefix, environment) of each store to measure: the
    file store under `work`, and radosgw when it runs (else logged as
    skipped); caches go under `cache_home`."""
    (work / "store").mkdir(exist_ok=True)
    out = [("file", f"sprite+file://{work}/store/", sprite_env(cache_home))]
    rgw = rgw_server()
    if rgw:
        out.append(("rgw", f"sprite+http://{rgw.endpoint}/{rgw.bucket}/",
                    sprite_env(cache_home, rgw)))
    else:
        log(f"  {bench}: rgw skipped: " + NEEDS_SERVERS)
    return out


def unique(prefix: str) -> str:
    """A volume / key name unique to this process and moment."""
    return f"{prefix}-{os.getpid()}-{time.monotonic_ns() % 10**9}"


# ---------------------------------------------------------------------------
# qemu-img bench

_RUN_RE = re.compile(r"Run completed in ([0-9.]+) seconds")


def qemu_img_bench(t: Target, *, count: int, depth: int, size: int = 4096,
                   step: int | None = None, write: bool = False,
                   offset: int = 0, pattern: int | None = None) -> dict:
    """One `qemu-img bench` run; returns seconds (of the I/O loop only, as
    qemu-img reports it: opening and closing the image are excluded),
    ops, IOPS and MB/s (10^6 bytes per second)."""
    args = [QEMU_IMG, "bench", "-c", count, "-d", depth, "-s", size,
            "-o", offset, "-t", t.cache]
    if t.aio:
        args += ["-i", t.aio]
    if step:
        args += ["-S", step]
    if write:
        args.append("-w")
    if pattern is not None:
        args.append(f"--pattern={pattern}")
    r = run(args + t.args, env=t.env)
    m = _RUN_RE.search(r.stdout)
    if not m:
        raise BenchError(f"no timing in qemu-img bench output:\n{r.stdout}")
    secs = max(float(m.group(1)), 1e-6)
    return {"seconds": secs, "ops": count, "iops": count / secs,
            "mbps": count * size / secs / 1e6}


def scatter_step(image_size: int, block: int = 4096) -> int:
    """A `qemu-img bench -S` step that visits every block of the image once
    per pass in a scattered order: a golden-ratio stride (odd, so coprime
    with a power-of-two block count), so consecutive requests land about
    0.38 of the image apart and no two neighbours are adjacent."""
    blocks = image_size // block
    p = int(blocks * 0.6180339887) | 1
    return p * block


# ---------------------------------------------------------------------------
# Interactive qemu-io: one command at a time, timed from the outside

class QemuIO:
    """qemu-io reading commands from a pipe.  Without a terminal it prints
    its prompt (and flushes stdout) after each command, so a command's end
    is the prompt appearing: `cmd()` returns the output and the seconds
    between sending the line and seeing the prompt."""

    def __init__(self, args: list[str], env=None, timeout: float = 120.0):
        self.prompt = QEMU_IO.name.encode() + b"> "
        self.timeout = timeout
        self.p = subprocess.Popen([str(QEMU_IO)] + [str(a) for a in args],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, env=env)
        self._read_to_prompt()

    def _read_to_prompt(self) -> str:
        buf = b""
        deadline = time.monotonic() + self.timeout
        fd = self.p.stdout.fileno()
        while not buf.endswith(self.prompt):
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise BenchError(f"qemu-io: no prompt within {self.timeout} s:"
                                 f" {buf[-2000:]!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise BenchError(f"qemu-io exited ({self.p.wait()}): "
                                     f"{buf.decode(errors='replace')}")
                buf += chunk
        return buf[:-len(self.prompt)].decode(errors="replace")

    def cmd(self, line: str) -> tuple[str, float]:
        t0 = time.perf_counter()
        self.p.stdin.write(line.encode() + b"\n")
        self.p.stdin.flush()
        out = self._read_to_prompt()
        dt = time.perf_counter() - t0
        if "failed" in out or "sprite:" in out or "error" in out.lower():
            raise BenchError(f"qemu-io {line!r}: {out}")
        return out, dt

    def close(self) -> int:
        if self.p.poll() is None:
            try:
                self.p.stdin.write(b"quit\n")
                self.p.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.p.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return self.p.returncode


# ---------------------------------------------------------------------------
# Statistics and output

def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def summary(xs: list[float]) -> dict:
    """n, median, p99, mean, min, max of a list of seconds."""
    return {"n": len(xs), "median": statistics.median(xs),
            "p99": percentile(xs, 99), "mean": statistics.fmean(xs),
            "min": min(xs), "max": max(xs)}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(x, unit: str = "") -> str:
    """Compact number for tables: 3 significant digits, thousands grouped."""
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if abs(x) >= 1000:
        s = f"{x:,.0f}"
    elif abs(x) >= 10:
        s = f"{x:.1f}"
    else:
        s = f"{x:.3g}"
    return s + unit


def table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table, first column left-aligned, others right."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i])
                               for i, c in enumerate(r)))
        if n == 0:
            lines.append("  ".join("-" * x for x in w))
    return "\n".join(lines)


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def pyplot():
    """matplotlib.pyplot with the Agg backend, or None if unavailable
    (plots are then skipped; Debian's python3-matplotlib provides it for
    /usr/bin/python3)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def bars(path: Path, title: str, ylabel: str, groups: list[str],
         series: dict[str, list[float | None]], log: bool = False) -> bool:
    """A grouped bar chart: one group per label in `groups`, one bar per
    series in each.  Returns False if matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(groups) + 3), 4.5))
    n = max(1, len(series))
    width = 0.8 / n
    for i, (name, vals) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [v or 0 for v in vals], width, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def standalone(module_run, module_table, module_plot, name: str,
               argv: list[str] | None = None) -> int:
    """`python3 bench/NAME.py [--quick] [--json FILE] [--plot FILE]`."""
    import argparse
    import tempfile
    ap = argparse.ArgumentParser(description=f"Sprite benchmark: {name}")
    ap.add_argument("--quick", action="store_true", help="small counts")
    ap.add_argument("--json", type=Path, help="write the result here")
    ap.add_argument("--plot", type=Path, help="write a PNG plot here")
    a = ap.parse_args(argv)
    check_tools()
    with tempfile.TemporaryDirectory(prefix=f"sprite-bench-{name}-") as d:
        res = module_run(a.quick, Path(d), lambda m: print(m, flush=True))
    print(module_table(res))
    if a.json:
        write_json(a.json, res)
    if a.plot and not module_plot(res, a.plot):
        print("plot skipped (no matplotlib, or nothing to plot)")
    return 0

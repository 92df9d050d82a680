#!/usr/bin/python3
"""Smoke test of the benchmark harness: `bench/run.py --quick` runs every
benchmark, exits 0 and writes JSON with the expected keys (and PNGs when
matplotlib is available).  Timings are never asserted.

Run through tests/servers/with-servers (flush and cold need radosgw):
    tests/servers/with-servers python3 bench/test_bench.py
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# Debian's interpreter has python3-matplotlib; another python3 first in
# PATH (pyenv) may not, and then plots are skipped, not failed.
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def has_matplotlib() -> bool:
    return subprocess.run([PYTHON, "-c", "import matplotlib"],
                          capture_output=True).returncode == 0


class BenchSmokeTest(unittest.TestCase):
    def test_quick_run(self):
        if "SPRITE_TEST_RGW_ENDPOINT" not in os.environ:
            self.fail("SPRITE_TEST_RGW_* not set: run this through "
                      "tests/servers/with-servers")
        with tempfile.TemporaryDirectory(prefix="sprite-bench-test-") as d:
            out = Path(d)
            r = subprocess.run([PYTHON, str(BENCH / "run.py"), "--quick",
                                "--out", str(out)],
                               capture_output=True, text=True, timeout=840)
            log = f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
            self.assertEqual(r.returncode, 0, log)
            res = json.loads((out / "latest.json").read_text())

            self.assertTrue(res["meta"]["quick"])
            self.assertTrue(res["meta"]["rgw"], log)
            for name in ("io", "flush", "cold", "create", "open",
                         "extents", "checkpoint"):
                self.assertIn(name, res, log)
                self.assertNotIn("error", res[name], log)
                self.assertNotIn("skipped", res[name], log)

            io = res["io"]
            self.assertEqual(io["targets"],
                             ["raw", "raw-direct", "qcow2", "sprite-file",
                              "sprite-rgw"])
            self.assertEqual(len(io["rows"]), 8)
            for row in io["rows"]:
                for t in io["targets"]:
                    self.assertGreater(row["results"][t]["iops"], 0)
                self.assertIsNotNone(row["sprite/raw"])
                self.assertIsNotNone(row["sprite/qcow2"])

            fl = res["flush"]
            for k in ("sprite_write_flush", "put_4k"):
                self.assertGreater(fl[k]["median"], 0)
                self.assertGreaterEqual(fl[k]["p99"], fl[k]["median"])
            self.assertIsNotNone(fl["ratio_median"])

            cold = res["cold"]
            self.assertEqual([r["case"] for r in cold["rows"]],
                             ["seq 1 MiB QD1", "seq 1 MiB QD8",
                              "rand 4 KiB QD1", "rand 4 KiB QD32"])
            for row in cold["rows"]:
                self.assertGreater(row["sprite"]["mbps"], 0)
                self.assertGreater(row["get"]["mbps"], 0)
            self.assertGreater(cold["cold_open_s"], 0)

            create = res["create"]
            self.assertEqual([r["store"] for r in create["rows"]], ["file", "rgw"])
            for row in create["rows"]:
                self.assertEqual(set(row["median_s"]), {"1G", "100G", "none"})
                self.assertIsNotNone(row["ratio_100g_1g"])

            op = res["open"]
            self.assertEqual([r["store"] for r in op["rows"]], ["file", "rgw"])
            for row in op["rows"]:
                self.assertGreater(row["cold_s"], 0)
                self.assertIsNotNone(row["cold_vs_qcow2"])

            ex = res["extents"]
            self.assertEqual([r["extents"] for r in ex["rows"]],
                             [10_000, 100_000])
            for row in ex["rows"]:
                self.assertGreater(row["lookup_ns"], 0)
                self.assertGreater(row["bytes_per_extent"], 0)
                self.assertIsNotNone(row["ratio"])

            ck = res["checkpoint"]
            self.assertEqual([r["target"] for r in ck["rows"]],
                             ["qcow2", "sprite-file", "sprite-rgw"])
            for row in ck["rows"]:
                for step in ("save", "save_again", "load", "restore",
                             "restore_again"):
                    self.assertGreater(row["median_s"][step], 0)
                self.assertEqual(len(row["added_bytes"]), 2)
                if row["target"] != "qcow2":
                    # The first restore recorded a set, the second found it.
                    for mib in row["restore_set_mib"]:
                        self.assertGreater(mib, 0)

            if has_matplotlib():
                for name in ("io", "flush", "cold", "create", "open",
                             "extents", "checkpoint"):
                    png = out / f"{name}.png"
                    self.assertTrue(png.exists(), log)
                    self.assertEqual(png.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")


if __name__ == "__main__":
    unittest.main()

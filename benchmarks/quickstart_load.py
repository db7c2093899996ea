"""The quickstart's wall time on an idle machine and while another process keeps one core busy.

``prunelab run quickstart`` from nothing (a fresh runs folder each time), with prunelab's own thread choice
(one thread for this small work) and with ``--threads N`` forced to torch's default (one per core), idle and
against a busy core (a second Python process spinning), interleaved, min and median of ``--repeats``.

    python benchmarks/quickstart_load.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time


def _run(threads: int | None) -> float:
    with tempfile.TemporaryDirectory() as runs:
        cmd = [sys.executable, "-m", "prunelab", "run", "quickstart", "--runs-dir", runs, "--no-progress"]
        if threads:
            cmd += ["--threads", str(threads)]
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the thread choice is prunelab's
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    print(f"`prunelab run quickstart`, wall seconds from process start to exit; {cores} cores; "
          f"{datetime.date.today()}; {a.repeats} repeats interleaved\n")
    sides = {("idle", None): [], ("idle", cores): [], ("one core busy", None): [], ("one core busy", cores): []}
    for _ in range(a.repeats):
        for (load, threads), times in sides.items():
            spinner = None
            if load != "idle":
                spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                time.sleep(0.5)
            try:
                times.append(_run(threads))
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
    print("| machine | torch threads | wall s, min | median |")
    print("|---|---|---|---|")
    for (load, threads), times in sides.items():
        what = f"{threads} (`--threads {threads}`)" if threads else "prunelab's choice (1 here)"
        print(f"| {load} | {what} | {min(times):.1f} | {statistics.median(times):.1f} |")


if __name__ == "__main__":
    main()

"""Start-up cost: ``import prunelab``, ``prunelab --help`` and the first ``Pruner`` against ``import torch``.

Each side is a fresh interpreter (``python -c ...``), interleaved, min and median of ``--repeats``; the physical
floor is ``python -c pass`` measured in the same run. Targets (issue: reliability pass): ``import prunelab``
within 1.2x ``import torch``, ``prunelab --help`` within 1.5x.

    python benchmarks/import_time.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time

SIDES = {
    "python -c pass (floor)": [sys.executable, "-c", "pass"],
    "import torch": [sys.executable, "-c", "import torch"],
    "import prunelab": [sys.executable, "-c", "import prunelab"],
    "prunelab --help": [sys.executable, "-m", "prunelab", "--help"],
    "import torch + prunelab.Pruner": [sys.executable, "-c", "import torch, prunelab; prunelab.Pruner"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # start-up is single-threaded; say so and hold it fixed
    times: dict[str, list[float]] = {k: [] for k in SIDES}
    for cmd in SIDES.values():  # warm the page cache once, untimed
        subprocess.run(cmd, check=True, capture_output=True, env=env)
    for _ in range(a.repeats):
        for name, cmd in SIDES.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=env)
            times[name].append(time.perf_counter() - t0)
    torch_min = min(times["import torch"])
    print(f"start-up wall seconds, fresh interpreter each; {os.cpu_count()} cores, OMP_NUM_THREADS=1, load "
          f"{os.getloadavg()[0]:.1f}; {datetime.date.today()}; {a.repeats} repeats interleaved\n")
    print("| command | min s | median s | min / import torch |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {min(ts):.3f} | {statistics.median(ts):.3f} | {min(ts) / torch_min:.2f}x |")


if __name__ == "__main__":
    main()

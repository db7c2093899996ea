"""DropPruning against iterative magnitude pruning at the same training budget, over seeds and compressions.

A thin wrapper over ``prunelab curve`` (``prunelab.experiment.curve``) for the built-in ``MODEL_mnist_drop``
recipes: for each seed and target compression (over prunable weights), the recipe as it is and the same recipe
with ``method`` replaced by global magnitude pruning share one dense training and get the same rounds and
retraining epochs. Writes a markdown table (mean +- std over seeds), a CSV of every run and a PNG of accuracy
against compression to benchmarks/results/drop_vs_magnitude_MODEL.*; finished runs are read back, not rerun.

    python benchmarks/drop_vs_magnitude.py --model lenet300_100 --compressions 10,20,50,100 --seeds 3 \\
        --data-root ../shared/data --jobs 2 --threads 1
"""
from __future__ import annotations

import argparse
import shlex
import sys

from prunelab.experiment.curve import DEFAULT_BASELINES, curve_points, parse_compressions, run_curve, write_curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="lenet300_100", choices=["lenet300_100", "lenet5"])
    ap.add_argument("--compressions", default="10,20,50,100")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra recipe override")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per job (default: cores / jobs)")
    ap.add_argument("--out", default=None, help="output prefix (default benchmarks/results/drop_vs_magnitude_MODEL)")
    a = ap.parse_args()
    recipe = f"{a.model}_mnist_drop"
    fixed = [*a.set, f"data.root={a.data_root}"]
    points = curve_points(recipe, parse_compressions(a.compressions), DEFAULT_BASELINES, a.seeds, a.runs_dir, fixed)
    rows = run_curve(recipe, points, a.runs_dir, a.jobs, threads=a.threads, log=lambda m: print(m, file=sys.stderr))
    command = "python " + " ".join(shlex.quote(x) for x in sys.argv)
    lines = write_curve(rows, a.out or f"benchmarks/results/drop_vs_magnitude_{a.model}",
                        f"DropPruning vs iterative magnitude pruning, {a.model} on MNIST", command)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

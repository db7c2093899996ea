"""DropPruning against iterative magnitude pruning at the same training budget, over seeds and compressions.

For each model, seed and target compression (over prunable weights), two runs share one dense training and
get the same number of rounds and retraining epochs: the built-in ``MODEL_mnist_drop`` recipe, and the same
recipe with ``method`` replaced by global magnitude pruning. Writes a markdown table (mean +- std over seeds),
a CSV of every run and a PNG of accuracy against compression.

    python benchmarks/drop_vs_magnitude.py --model lenet300_100 --compressions 10,20,50,100 --seeds 0,1,2 \
        --data-root ../shared/data --jobs 2
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from prunelab.experiment.compare import mean_std as _pm

METHODS = {
    "drop_pruning": None,  # the recipe's own method
    "magnitude": "{name: magnitude, allocation: global}",
}


def _overrides(a, seed: int, compression: float, method: str) -> list[str]:
    out = [f"seed={seed}", f"prune.sparsity={1 - 1 / compression:.10f}", f"data.root={a.data_root}"]
    if a.rounds:
        out.append(f"prune.schedule.rounds={a.rounds}")
    if a.epochs:
        out.append(f"prune.retrain.epochs={a.epochs}")
    if METHODS[method]:
        out.append(f"prune.method={METHODS[method]}")
    return out


def _run(job: tuple) -> dict:
    import torch

    torch.set_num_threads(job[-1])
    from prunelab.experiment import Runner, load_recipe, run_dir_for

    recipe_name, overrides, runs_dir, method, seed, compression, _ = job
    recipe = load_recipe(recipe_name, overrides)
    s = Runner(recipe, run_dir_for(recipe, runs_dir), progress=False, log=lambda m: None).run()
    return {"method": method, "seed": seed, "target_compression": compression, "dense_acc": s["dense_acc"],
            "pruned_acc": s["pruned_acc"], "compression_prunable": s["compression_prunable"],
            "compression_model": s["compression_model"],
            "prune_seconds": sum(st["seconds"] for st in s["stages"] if st["stage"] != "dense"),
            "dense_seconds": s["stages"][0]["seconds"], "run_dir": s["run_dir"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="lenet300_100", choices=["lenet300_100", "lenet5"])
    ap.add_argument("--compressions", default="10,20,50,100")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rounds", type=int, default=0, help="override the recipe's rounds")
    ap.add_argument("--epochs", type=int, default=0, help="override the recipe's retraining epochs per round")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per job (default: 2 cores / jobs)")
    ap.add_argument("--out", default=None, help="output prefix (default benchmarks/results/drop_vs_magnitude_MODEL)")
    a = ap.parse_args()
    recipe = f"{a.model}_mnist_drop"
    seeds = [int(s) for s in a.seeds.split(",")]
    comps = [float(c) for c in a.compressions.split(",")]
    threads = a.threads or max(1, 2 // a.jobs)
    # dense trainings first (one per seed), so parallel jobs then reuse them instead of racing to train them
    first = [(recipe, _overrides(a, s, comps[0], "drop_pruning"), a.runs_dir, "drop_pruning", s, comps[0], threads)
             for s in seeds]
    rest = [(recipe, _overrides(a, s, c, m), a.runs_dir, m, s, c, threads)
            for c in comps for m in METHODS for s in seeds if not (m == "drop_pruning" and c == comps[0])]
    rows = []
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        for batch in (first, rest):
            for row in pool.map(_run, batch):
                rows.append(row)
                print(f"{row['method']:12s} seed {row['seed']} {row['target_compression']:6.1f}x: "
                      f"dense {row['dense_acc']:.4f} pruned {row['pruned_acc']:.4f} ({row['prune_seconds']:.0f}s)",
                      file=sys.stderr, flush=True)
    out = Path(a.out or f"benchmarks/results/drop_vs_magnitude_{a.model}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{out}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    dense = [r["dense_acc"] for r in rows if r["method"] == "drop_pruning" and r["target_compression"] == comps[0]]
    lines = [f"# DropPruning vs iterative magnitude pruning, {a.model} on MNIST",
             "", f"Command: `python {' '.join(sys.argv)}`", "",
             f"Seeds {seeds}; dense accuracy {_pm(dense, 100)} %. Compression over prunable weights (conv and linear "
             "weights; whole-model compression, biases included, is in the CSV). Both methods get the same dense "
             "model, rounds and retraining epochs; prune time excludes the shared dense training.", "",
             "| target compression | method | accuracy % | accuracy - dense (points) | compression (prunable) | "
             "compression (all params) | prune time s |", "|---|---|---|---|---|---|---|"]
    for c in comps:
        for m in METHODS:
            rs = [r for r in rows if r["method"] == m and r["target_compression"] == c]
            diffs = [r["pruned_acc"] - r["dense_acc"] for r in rs]
            lines.append(f"| {c:g}x | {m} | {_pm([r['pruned_acc'] for r in rs], 100)} | {_pm(diffs, 100)} | "
                         f"{statistics.mean(r['compression_prunable'] for r in rs):.1f}x | "
                         f"{statistics.mean(r['compression_model'] for r in rs):.1f}x | "
                         f"{_pm([r['prune_seconds'] for r in rs], 1, 0)} |")
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, comps, dense, f"{out}.png", a.model)


def _plot(rows, comps, dense, path, model) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, marker in zip(METHODS, "os"):
        means, sds = [], []
        for c in comps:
            accs = [r["pruned_acc"] * 100 for r in rows if r["method"] == m and r["target_compression"] == c]
            means.append(statistics.mean(accs))
            sds.append(statistics.stdev(accs) if len(accs) > 1 else 0.0)
        ax.errorbar(comps, means, yerr=sds, marker=marker, capsize=3, label=m)
    ax.axhline(statistics.mean(dense) * 100, color="gray", linestyle="--", label="dense")
    ax.set_xscale("log")
    ax.set_xticks(comps, [f"{c:g}x" for c in comps])
    ax.set_xlabel("compression over prunable weights")
    ax.set_ylabel("test accuracy %")
    ax.set_title(f"{model} on MNIST (mean +- std over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

"""Campfire on LeNet-5 / MNIST at 70% sparsity: granularities, freeze points, adversarial accuracy, bytes.

Every variant is the built-in ``lenet5_mnist_campfire`` recipe (sparse training from scratch, conv1 and fc2
dense) with one thing changed; ``dense`` is the same training at sparsity 0. Each final model is attacked
with L-inf FGSM and PGD (10 steps of eps/4, random start) in pixel space on the first SAMPLES test images.
Writes a markdown table (mean +- std over seeds), a CSV and a PNG under benchmarks/results/.

    python benchmarks/campfire_lenet5.py --seeds 0,1,2 --data-root ../shared/data --jobs 2
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from prunelab.experiment.compare import mean_std

VARIANTS = {
    "dense": ["prune.sparsity=0.0"],
    "unstructured": ["prune.method={name: campfire, granularity: element}"],
    "window": [],
    "kernel": ["prune.method={name: campfire, granularity: {name: kernel, per_filter: true}}"],
    "combined": ["prune.method={name: campfire, granularity: {name: combined, group: 10}}"],
    "filter": ["prune.method={name: campfire, granularity: filter}"],
    "window-freeze25": ["prune.schedule.end_epoch=2"],
    "window-freeze75": ["prune.schedule.end_epoch=6"],
}
EPS = (0.05, 0.1, 0.2, 0.3)


def _job(args: tuple) -> dict:
    import torch

    variant, overrides, seed, a_runs, data_root, samples, threads = args
    torch.set_num_threads(threads)
    from prunelab.analysis.robustness import accuracy_under_attack
    from prunelab.experiment import Runner, load_final, load_recipe, run_dir_for

    recipe = load_recipe("lenet5_mnist_campfire", [f"seed={seed}", f"data.root={data_root}", *overrides])
    runner = Runner(recipe, run_dir_for(recipe, a_runs), progress=False, log=lambda m: None)
    s = runner.run()
    model, _ = load_final(runner.ctx)
    data = runner.ctx.data
    row = {"variant": variant, "seed": seed, "acc": s["pruned_acc"], "sparsity": s["sparsity_prunable"],
           "bytes_dense": s["bytes_dense_file"], "bytes_compact": s["bytes_compact_file"],
           "formats": ",".join(sorted(set(s["compact_formats"].values()))), "seconds": s["wall_seconds"]}
    for attack in ("fgsm", "pgd"):
        for e in EPS:
            row[f"{attack}@{e:g}"] = accuracy_under_attack(model, data.test, attack, e, data.mean, data.std,
                                                           samples=samples, steps=10, seed=seed)
    return row


def _pm(v: list[float]) -> str:
    return mean_std(v, 100.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/campfire_lenet5")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    names = [v for v in a.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; valid: {list(VARIANTS)}")
    jobs = [(v, VARIANTS[v], s, a.runs_dir, a.data_root, a.samples, max(1, 2 // a.jobs)) for v in names for s in seeds]
    rows = []
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        for row in pool.map(_job, jobs):
            rows.append(row)
            print(f"{row['variant']:20s} seed {row['seed']}: acc {row['acc']:.4f} sparsity {row['sparsity']:.3f} "
                  f"pgd@0.1 {row['pgd@0.1']:.3f} ({row['seconds']:.0f}s)", file=sys.stderr, flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{out}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    atk = [f"{k}@{e:g}" for k in ("fgsm", "pgd") for e in EPS]
    lines = ["# Campfire on LeNet-5 / MNIST, 70% sparsity over conv2 + fc1 (conv1 and fc2 dense)", "",
             f"Command: `python {' '.join(sys.argv)}`", "",
             f"Seeds {seeds}; 8 epochs of sparse training from scratch, cubic schedule every 100 steps, masks frozen "
             f"at epoch 4 unless said; attacks on the first {a.samples} test images, eps in pixel space [0, 1]; "
             "accuracies in %, mean +- std. Bytes: the model's safetensors file vs the compact format.", "",
             "| variant | accuracy | sparsity | bytes dense -> compact (format) | " + " | ".join(atk) + " | s/run |",
             "|" + "---|" * (5 + len(atk))]
    for v in names:
        rs = [r for r in rows if r["variant"] == v]
        lines.append(f"| {v} | {_pm([r['acc'] for r in rs])} | {statistics.mean(r['sparsity'] for r in rs):.3f} | "
                     f"{rs[0]['bytes_dense']:,} -> {statistics.mean(r['bytes_compact'] for r in rs):,.0f} "
                     f"({rs[0]['formats']}) | " + " | ".join(_pm([r[k] for r in rs]) for k in atk) +
                     f" | {statistics.mean(r['seconds'] for r in rs):.0f} |")
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, names, f"{out}.png")


def _plot(rows, names, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, attack in zip(axes, ("fgsm", "pgd")):
        for v in names:
            rs = [r for r in rows if r["variant"] == v]
            ys = [statistics.mean([r["acc"] for r in rs]) * 100] + \
                 [statistics.mean([r[f"{attack}@{e:g}"] for r in rs]) * 100 for e in EPS]
            ax.plot((0.0, *EPS), ys, marker="o", label=v)
        ax.set_title(f"{attack.upper()} (L-inf, pixel space)")
        ax.set_xlabel("epsilon")
    axes[0].set_ylabel("test accuracy %")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

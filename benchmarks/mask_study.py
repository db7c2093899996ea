"""Do different iterative pruning techniques find the same sub-network? The mask study of Paganini & Forde.

Runs the grid criteria x rewind x scope x seeds of lottery-style iterative pruning on LeNet-5 / MNIST (recipe
``lenet5_mnist_mask_study``), then ``prunelab compare``'s mask report over all runs: Jaccard heatmap and table
against random masks of the same densities, accuracy against remaining weights, emergent structure per conv
layer against chance, stability. Criteria: L1 unstructured (layerwise and global scope) and random unstructured
(layerwise), to 90%,
L1, L2 and random structured by output channel (layerwise, to 60% of the filters; classifier kept).
Rewinds: to the initial weights, random reinitialization, none (continue training).

    python benchmarks/mask_study.py --seeds 0,1,2 --data-root ../shared/data --jobs 2          # < 1 h here
    python benchmarks/mask_study.py --full --seeds 0,1,2,3,4 --data-root DATA --jobs 8         # paper-sized
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

UNSTRUCTURED = {"L1": "magnitude", "random": "random"}
STRUCTURED = {"L1-filter": "magnitude", "L2-filter": "l2", "random-filter": "random"}
REWINDS = ["init", "reinit", "none"]


def grid(full: bool) -> dict[str, list[str]]:
    out = {}
    for label, crit in UNSTRUCTURED.items():
        # random scores under one global threshold give every layer the same density in expectation: the
        # layerwise random runs already are that control
        for scope in (("uniform", "global") if crit != "random" else ("uniform",)):
            for rw in REWINDS:
                out[f"{label} {'layer' if scope == 'uniform' else 'global'} rewind={rw}"] = [
                    f"prune.method={{name: imp, criterion: {crit}, allocation: {scope}, rewind: {rw}}}"]
    for label, crit in STRUCTURED.items():
        for rw in REWINDS:
            out[f"{label} layer rewind={rw}"] = [
                f"prune.method={{name: imp, criterion: {crit}, granularity: filter, rewind: {rw}}}",
                "prune.targets={keep_last_dense: true}", "prune.sparsity=0.6"]
    if full:  # the whole training set, longer training, deeper pruning
        out = {k: v + ["data.train_subset=null", "train.epochs=20", "prune.retrain.epochs=20",
                       "prune.schedule.rounds=10"] + (["prune.sparsity=0.98"] if "filter" not in k else [])
               for k, v in out.items()}
    return out


def _run(job: tuple) -> str:
    import torch

    torch.set_num_threads(job[-1])
    from prunelab.experiment import Runner, load_recipe, run_dir_for

    label, overrides, runs_dir, _ = job
    recipe = load_recipe("lenet5_mnist_mask_study", overrides)
    d = run_dir_for(recipe, runs_dir)
    t0 = time.perf_counter()
    s = Runner(recipe, d, progress=False, log=lambda m: None).run()
    print(f"{label} seed {recipe.seed}: {s['pruned_acc']:.4f} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr,
          flush=True)
    return str(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--full", action="store_true", help="the paper-sized grid (for a bigger machine)")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per job (default: 2 cores / jobs)")
    ap.add_argument("--out", default="benchmarks/results/mask_study")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    threads = a.threads or max(1, 2 // a.jobs)
    g = grid(a.full)
    jobs = [(label, over + [f"seed={s}", f"data.root={a.data_root}"], a.runs_dir, threads)
            for s in seeds for label, over in g.items()]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        # one run per seed first: it trains the dense model the others share
        dirs = list(pool.map(_run, [j for j in jobs if j[0] == next(iter(g))]))
        dirs += list(pool.map(_run, [j for j in jobs if j[0] != next(iter(g))]))
    wall = time.perf_counter() - t0
    from prunelab.cli import main as cli

    Path(a.out).mkdir(parents=True, exist_ok=True)
    cli(["compare", *dirs, "--out", a.out])
    (Path(a.out) / "command.txt").write_text(f"python {' '.join(sys.argv)}\n{len(dirs)} runs, {wall:.0f} s wall\n")


if __name__ == "__main__":
    main()

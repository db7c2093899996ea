"""One-shot pruning from calibration data on LeNet-5 or LeNet-300-100 / MNIST: magnitude, Wanda and SparseGPT
at several sparsities with no retraining, PCA at its own compression, then SparseGPT + one retraining against
iterative magnitude pruning at 12.5x (the recipes MODEL_mnist_sparsegpt and MODEL_mnist_magnitude, same dense
model).

    python benchmarks/one_shot.py --model lenet5 --data-root ../shared/data --runs-dir runs --seeds 0 --threads 1

Accuracy is top-1 on the 10,000 test images; times are wall seconds of the pruning decision (calibration
included) on this machine, and for the recipes the summed seconds of their pruning stages (retraining included).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5", choices=["lenet5", "lenet300_100"])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--sparsities", default="0.5,0.8,0.9,0.95")
    ap.add_argument("--samples", type=int, default=512, help="calibration inputs (training images)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-retrain", action="store_true", help="skip the two full recipe runs")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from prunelab import Pruner
    from prunelab.experiment import RunContext, Runner, load_recipe, run_dir_for

    sparsities = [float(s) for s in a.sparsities.split(",")]
    methods = {"magnitude (global)": {"name": "magnitude", "allocation": "global"},
               "magnitude (per layer)": "magnitude",
               "wanda": {"name": "wanda", "samples": a.samples},
               "sparsegpt": {"name": "sparsegpt", "samples": a.samples}}
    acc: dict = {}
    secs: dict = {}
    dense_acc, pca_rows, recipe_rows = [], [], []
    for seed in map(int, a.seeds.split(",")):
        over = [f"seed={seed}", f"data.root={a.data_root}"]
        recipe = load_recipe(f"{a.model}_mnist_magnitude", over)
        run_dir = run_dir_for(recipe, a.runs_dir)
        Runner(recipe, run_dir, progress=False, log=lambda m: None, stop_after="dense").run()
        ctx = RunContext(recipe, run_dir, log=lambda m: None, progress=False)
        dense = ctx.build_model(checkpoint=ctx.paths.stage("dense"))
        dense_acc.append(ctx.evaluate(dense)["acc"])
        for label, spec in methods.items():
            for s in sparsities:
                model = copy.deepcopy(dense)
                t0 = time.perf_counter()
                p = Pruner(model, spec, sparsity=s, schedule="manual", seed=seed)
                p.calibrate(ctx.data.train)
                p.prune(s)
                secs.setdefault((label, s), []).append(time.perf_counter() - t0)
                acc.setdefault((label, s), []).append(ctx.evaluate(model)["acc"])
        for tau in (0.95, 0.99):
            model = copy.deepcopy(dense)
            t0 = time.perf_counter()
            p = Pruner(model, {"name": "pca", "tau": tau, "samples": 4096}, schedule="manual", sparsity=0.5,
                       example_inputs=ctx.example_inputs())
            p.calibrate(ctx.data.train)
            p.prune(0.5)
            pca_rows.append((tau, p.masks.sparsity(), ctx.evaluate(model)["acc"], time.perf_counter() - t0))
        if not a.no_retrain:
            for name in (f"{a.model}_mnist_sparsegpt", f"{a.model}_mnist_magnitude"):
                r = load_recipe(name, over)
                s = Runner(r, run_dir_for(r, a.runs_dir), progress=False, log=lambda m: None).run()
                prune_s = sum(st["seconds"] for st in s["stages"] if st["stage"] != "dense")
                recipe_rows.append((name, seed, s["compression_prunable"], s["pruned_acc"], prune_s,
                                    len(s["stages"]) - 1))
    pm = lambda v: f"{100 * statistics.mean(v):.2f}" + (f" +- {100 * statistics.stdev(v):.2f}" if len(v) > 1 else "")  # noqa: E731
    print(f"# One-shot pruning of {a.model} / MNIST from {a.samples} calibration images\n")
    print(f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {a.threads} thread(s), seeds {a.seeds}; "
          f"dense accuracy {pm(dense_acc)} %. Test accuracy % right after pruning, no retraining "
          "(seconds of the decision, calibration included, in brackets).\n")
    print("| method | " + " | ".join(f"{s:.0%} ({1 / (1 - s):.0f}x)" for s in sparsities) + " |")
    print("|---|" + "---|" * len(sparsities))
    for label in methods:
        cells = [f"{pm(acc[label, s])} ({statistics.median(secs[label, s]):.2f} s)" for s in sparsities]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\nPCA pruning at its own compression (no retraining):\n")
    for tau, sp, ac, t in pca_rows:
        print(f"- tau {tau}: sparsity {sp:.3f} ({1 / (1 - sp):.1f}x), accuracy {100 * ac:.2f} %, {t:.1f} s")
    if recipe_rows:
        print("\nWith retraining, at 12.5x over prunable weights (the recipes as they are):\n")
        print("| recipe | seed | compression | accuracy % | pruning stages s (retraining included) | rounds |")
        print("|---|---|---|---|---|---|")
        for name, seed, comp, ac, t, rounds in recipe_rows:
            print(f"| {name} | {seed} | {comp:.2f}x | {100 * ac:.2f} | {t:.0f} | {rounds} |")


if __name__ == "__main__":
    main()

"""One-shot pruning from calibration data on LeNet-5 or LeNet-300-100, MNIST or Fashion-MNIST: magnitude, Wanda
and SparseGPT at several sparsities with no retraining and after one short retraining, PCA at its own
compression, then (``--recipes``) SparseGPT + one retraining against iterative magnitude pruning at 12.5x (the
recipes MODEL_mnist_sparsegpt and MODEL_mnist_magnitude, same dense model).

    python benchmarks/one_shot.py --model lenet5 --dataset mnist --data-root ../shared/data --runs-dir runs \
        --seeds 0,1,2 --threads 1 --recipes > benchmarks/results/one_shot_lenet5_mnist.md

Accuracy is top-1 on the 10,000 test images, mean +- std over seeds; times are wall seconds on this machine of
the pruning decision (calibration included) and of the retraining; for the recipes, the summed seconds of their
pruning stages (retraining included). Sparsity is over the recipe's prunable weights (every weight matrix and
kernel; biases stay dense). Fashion-MNIST: ``apt-get install dataset-fashion-mnist``.
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
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist"])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--sparsities", default="0.5,0.8,0.9,0.95")
    ap.add_argument("--samples", type=int, default=512, help="calibration inputs (training images)")
    ap.add_argument("--retrain-epochs", type=int, default=1, help="the short retraining after each one shot")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--recipes", action="store_true", help="also run the full recipes (SparseGPT vs iterative)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from prunelab import Pruner
    from prunelab.experiment import Runner, load_recipe, run_dir_for, trained_dense
    from prunelab.training import Trainer, build_optimizer

    sparsities = [float(s) for s in a.sparsities.split(",")]
    methods = {"magnitude (global)": {"name": "magnitude", "allocation": "global"},
               "magnitude (per layer)": "magnitude",
               "wanda": {"name": "wanda", "samples": a.samples},
               "sparsegpt": {"name": "sparsegpt", "samples": a.samples},
               "sparsegpt (global allocation)": {"name": "sparsegpt", "samples": a.samples, "allocation": "global"}}
    res: dict = {}  # (label, sparsity) -> {"acc", "acc_rt", "s", "s_rt"} lists
    dense_acc, recipe_rows = [], []

    def add(key, **vals):
        for k, v in vals.items():
            res.setdefault(key, {}).setdefault(k, []).append(v)

    for seed in map(int, a.seeds.split(",")):
        over = [f"seed={seed}", f"data.root={a.data_root}", f"data.name={a.dataset}"]
        recipe = load_recipe(f"{a.model}_mnist_magnitude", over)
        ctx, dense = trained_dense(recipe, a.runs_dir)
        dense_acc.append(ctx.evaluate(dense)["acc"])
        cfg = recipe.retrain_config().model_copy(update={"epochs": a.retrain_epochs})

        def one_shot(spec, s, key):
            model = copy.deepcopy(dense)
            t0 = time.perf_counter()
            p = Pruner(model, spec, sparsity=s, schedule="manual", seed=seed, example_inputs=ctx.example_inputs())
            p.calibrate(ctx.data.train)
            p.prune(s)
            t1 = time.perf_counter()
            acc = ctx.evaluate(model)["acc"]
            torch.manual_seed(seed)
            Trainer(model, build_optimizer(model, cfg), cfg, ctx.data.train, None, pruner=p, progress=False).fit()
            add(key, acc=acc, acc_rt=ctx.evaluate(model)["acc"], s=t1 - t0, s_rt=time.perf_counter() - t1,
                sparsity=p.masks.sparsity())

        for label, spec in methods.items():
            for s in sparsities:
                one_shot(spec, s, (label, s))
        for tau in (0.95, 0.99):
            one_shot({"name": "pca", "tau": tau, "samples": 4096}, 0.5, (f"pca (tau {tau})", None))
        if a.recipes:
            for name, extra in ((f"{a.model}_mnist_sparsegpt", []),
                                (f"{a.model}_mnist_sparsegpt", ["prune.method.allocation=global"]),
                                (f"{a.model}_mnist_magnitude", [])):
                r = load_recipe(name, over + extra)
                s = Runner(r, run_dir_for(r, a.runs_dir), progress=False, log=lambda m: None).run()
                prune_s = sum(st["seconds"] for st in s["stages"] if st["stage"] != "dense")
                recipe_rows.append((" ".join([name] + extra), seed, s["compression_prunable"], s["pruned_acc"],
                                    prune_s, len(s["stages"]) - 1))
    report(a, sparsities, methods, res, dense_acc, recipe_rows)


def pm(v: list[float]) -> str:
    return f"{100 * statistics.mean(v):.2f}" + (f" +- {100 * statistics.stdev(v):.2f}" if len(v) > 1 else "")


def report(a, sparsities, methods, res, dense_acc, recipe_rows) -> None:
    med = statistics.median
    print(f"# One-shot pruning of {a.model} / {a.dataset} from {a.samples} calibration images\n")
    print(f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {a.threads} thread(s), seeds {a.seeds}; "
          f"dense accuracy {pm(dense_acc)} %. Sparsity over the prunable weights (weights of every layer).\n")
    for title, acc, secs in (("right after pruning, no retraining (median seconds of the decision, calibration "
                              "included)", "acc", "s"),
                             (f"after one retraining of {a.retrain_epochs} epoch(s) at the recipe's retraining "
                              "learning rate (median seconds of the retraining)", "acc_rt", "s_rt")):
        print(f"Test accuracy % {title}:\n")
        print("| method | " + " | ".join(f"{s:.0%} ({1 / (1 - s):.0f}x)" for s in sparsities) + " |")
        print("|---|" + "---|" * len(sparsities))
        for label in methods:
            r = [res[label, s] for s in sparsities]
            print(f"| {label} | " + " | ".join(f"{pm(x[acc])} ({med(x[secs]):.2f} s)" for x in r) + " |")
        print()
    print("PCA pruning at its own compression (sparsity an outcome of tau):\n")
    print("| tau | sparsity | no retraining % | after retraining % | decision s |")
    print("|---|---|---|---|---|")
    for key in sorted(k for k in res if k[1] is None):
        x = res[key]
        sp = statistics.mean(x["sparsity"])
        print(f"| {key[0][9:-1]} | {sp:.3f} ({1 / (1 - sp):.1f}x) | {pm(x['acc'])} | {pm(x['acc_rt'])} | "
              f"{med(x['s']):.1f} |")
    if recipe_rows:
        print("\nFull recipes, at 12.5x over prunable weights:\n")
        print("| recipe | seed | compression | accuracy % | pruning stages s (retraining included) | rounds |")
        print("|---|---|---|---|---|---|")
        for name, seed, comp, ac, t, rounds in recipe_rows:
            print(f"| {name} | {seed} | {comp:.2f}x | {100 * ac:.2f} | {t:.0f} | {rounds} |")
    print(f"\nCommand: `python benchmarks/one_shot.py --model {a.model} --dataset {a.dataset} --seeds {a.seeds} "
          f"--samples {a.samples} --retrain-epochs {a.retrain_epochs} --threads {a.threads}"
          f"{' --recipes' if a.recipes else ''}`")


if __name__ == "__main__":
    main()
